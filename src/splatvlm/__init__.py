"""splatvlm: text to 3D Gaussian splats with multi-view SDS and a differentiable VLM reward.

The library API, re-exported here by name (imported on first use, so ``import splatvlm`` and the CLI's
start stay fast)::

    import splatvlm
    summary = splatvlm.generate("a red apple", "apple.ply", cfg="demo")   # the whole run, as the CLI does
    cfg = splatvlm.load_run_config("demo")
    prior = splatvlm.load_prior(cfg.sds, "cpu")          # SDSGuidance: prior(rgb, cams, step) -> {"loss_sds": ...}
    reward = splatvlm.load_reward(cfg.vlm, "cpu")        # VLMReward:   reward(rgb, cams, step) -> {"loss_vlm": ...}
    params = splatvlm.load_ply("scene.ply"); out = splatvlm.render(params, cams, cfg.render)
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

__version__ = "0.1.0"

# name -> module that defines it
_EXPORTS = {
    "RunConfig": "config",
    "load_run_config": "config",
    "list_presets": "config",
    "SceneConfig": "gaussians.scene",
    "init_ball": "gaussians.scene",
    "CameraConfig": "gaussians.cameras",
    "Cameras": "gaussians.cameras",
    "orbit_cameras": "gaussians.cameras",
    "eval_orbit": "gaussians.cameras",
    "sample_orbit": "gaussians.cameras",
    "RenderConfig": "gaussians.render",
    "render": "gaussians.render",
    "StrategyConfig": "gaussians.densify",
    "load_ply": "gaussians.ply",
    "save_ply": "gaussians.ply",
    "SDSConfig": "guidance.sds",
    "SDSGuidance": "guidance.sds",
    "RewardConfig": "guidance.reward",
    "VLMReward": "guidance.reward",
    "generate": "commands.generate",
    "load_prior": "models",
    "load_reward": "models",
    "check_sources": "models",
    "Term": "run.trainer",
    "Weight": "run.schedules",
    "train": "run.trainer",
    "new_state": "run.train_state",
    "SplatVLMError": "errors",
}
__all__ = [
    "__version__",
    "RunConfig",
    "load_run_config",
    "list_presets",
    "SceneConfig",
    "init_ball",
    "CameraConfig",
    "Cameras",
    "orbit_cameras",
    "eval_orbit",
    "sample_orbit",
    "RenderConfig",
    "render",
    "StrategyConfig",
    "load_ply",
    "save_ply",
    "SDSConfig",
    "SDSGuidance",
    "RewardConfig",
    "VLMReward",
    "generate",
    "load_prior",
    "load_reward",
    "check_sources",
    "Term",
    "Weight",
    "train",
    "new_state",
    "SplatVLMError",
]


def __getattr__(name: str):
    if name in _EXPORTS:
        value = getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'splatvlm' has no attribute {name!r}")


if TYPE_CHECKING:  # for type checkers and editors: the same names, imported eagerly
    from .commands.generate import generate
    from .config import RunConfig, list_presets, load_run_config
    from .errors import SplatVLMError
    from .gaussians.cameras import CameraConfig, Cameras, eval_orbit, orbit_cameras, sample_orbit
    from .gaussians.densify import StrategyConfig
    from .gaussians.ply import load_ply, save_ply
    from .gaussians.render import RenderConfig, render
    from .gaussians.scene import SceneConfig, init_ball
    from .guidance.reward import RewardConfig, VLMReward
    from .guidance.sds import SDSConfig, SDSGuidance
    from .models import check_sources, load_prior, load_reward
    from .run.schedules import Weight
    from .run.train_state import new_state
    from .run.trainer import Term, train
