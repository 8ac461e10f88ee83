"""A run's state between steps (Gaussians, optimizers, densification state, RNG, step) and its checkpoints:
atomic, loadable with ``torch.load(weights_only=True)``, checked against the run's recipe on resume."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ..config import RunConfig, to_yaml
from ..errors import SplatVLMError
from ..files import atomic_path
from ..gaussians import densify
from ..gaussians.scene import make_optimizers, make_params

CHECKPOINT_VERSION = 1


@dataclass
class TrainState:
    """What a checkpoint holds besides the config."""

    params: torch.nn.ParameterDict
    optimizers: dict[str, torch.optim.Optimizer]
    strategy: Any
    strategy_state: dict[str, Any]
    step: int = 0
    generator: torch.Generator = field(default_factory=torch.Generator)
    bad_steps_total: int = 0
    elapsed_s: float = 0.0  # training time of the run so far, over every invocation (resumes)
    meta: dict[str, str] = field(default_factory=dict)  # what the run is (its prompt), checked on resume
    background: torch.nn.Parameter | None = None  # [3] logits of the learned background color ('learned')
    background_optimizer: torch.optim.Optimizer | None = None

    def all_optimizers(self) -> dict[str, torch.optim.Optimizer]:
        """The Gaussians' optimizers (one per parameter key, as gsplat's strategies edit them) and the learned
        background's."""
        if self.background_optimizer is None:
            return self.optimizers
        return {**self.optimizers, "background": self.background_optimizer}


def make_background(cfg: RunConfig, device: torch.device) -> tuple[torch.nn.Parameter | None, Any]:
    """The learned background color's logits (mid gray) and their Adam ('learned' backgrounds only)."""
    if cfg.background != "learned":
        return None, None
    logits = torch.nn.Parameter(torch.zeros(3, device=device))
    opt = torch.optim.Adam([logits], lr=cfg.background_lr, eps=1e-15, fused=logits.is_cuda or None)
    return logits, opt


def save_checkpoint(path: Path, state: TrainState, cfg: RunConfig) -> None:
    """Atomic checkpoint that loads with ``torch.load(weights_only=True)``."""
    rng = {"torch": torch.get_rng_state(), "generator": state.generator.get_state()}
    if torch.cuda.is_available():
        rng["cuda"] = torch.cuda.get_rng_state_all()
    payload = {
        "version": CHECKPOINT_VERSION,
        "step": state.step,
        "params": {k: v.detach().cpu() for k, v in state.params.items()},
        "optimizers": {k: opt.state_dict() for k, opt in state.optimizers.items()},
        "strategy_state": {
            k: (v.detach().cpu() if isinstance(v, Tensor) else v) for k, v in state.strategy_state.items()
        },
        "rng": rng,
        "bad_steps_total": state.bad_steps_total,
        "elapsed_s": state.elapsed_s,
        "meta": dict(state.meta),
        "config": to_yaml(cfg),
    }
    if state.background is not None:
        payload["background"] = {
            "logits": state.background.detach().cpu(),
            "optimizer": state.background_optimizer.state_dict(),
        }
    with atomic_path(path) as tmp:  # a full disk (torch's RuntimeError too) becomes an OSError naming path
        torch.save(payload, tmp)


def load_checkpoint(path: Path) -> dict[str, Any]:
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise SplatVLMError(f"checkpoint {path} does not exist") from None
    except Exception as e:  # noqa: BLE001 - torch raises many types for foreign or corrupt files
        raise SplatVLMError(
            f"checkpoint {path} is unreadable or not a splatvlm checkpoint ({type(e).__name__})"
        ) from None
    if not isinstance(ckpt, dict) or ckpt.get("version") != CHECKPOINT_VERSION:
        found = ckpt.get("version") if isinstance(ckpt, dict) else None
        raise SplatVLMError(
            f"checkpoint {path} has format version {found}, this splatvlm reads version {CHECKPOINT_VERSION}"
        )
    problem = _checkpoint_problem(ckpt)
    if problem:
        raise SplatVLMError(f"checkpoint {path} is not a complete splatvlm checkpoint: {problem}")
    ckpt["_path"] = str(path)
    return ckpt


PARAM_KEYS = ("means", "quats", "scales", "opacities", "sh0", "shN")


def _checkpoint_problem(ckpt: dict[str, Any]) -> str | None:
    """What is missing or of the wrong type in a loaded checkpoint (None: the structure is right)."""
    kinds = {
        "step": int,
        "params": dict,
        "optimizers": dict,
        "strategy_state": dict,
        "rng": dict,
        "config": str,
    }
    for key, kind in kinds.items():
        if not isinstance(ckpt.get(key), kind):
            return f"'{key}' is missing or not a {kind.__name__}"
    for key in PARAM_KEYS:
        if not isinstance(ckpt["params"].get(key), Tensor):
            return f"params '{key}' is missing or not a tensor"
    if not all(isinstance(ckpt["rng"].get(k), Tensor) for k in ("torch", "generator")):
        return "the random-number state is missing"
    n = ckpt["params"]["means"].shape[0]
    if any(ckpt["params"][k].ndim == 0 or ckpt["params"][k].shape[0] != n for k in PARAM_KEYS):
        return "the Gaussian parameters disagree on the number of Gaussians"
    if ckpt["step"] < 0:
        return f"step {ckpt['step']} is negative"
    bg = ckpt.get("background")
    if bg is not None and not (
        isinstance(bg, dict)
        and isinstance(bg.get("logits"), Tensor)
        and tuple(bg["logits"].shape) == (3,)
        and isinstance(bg.get("optimizer"), dict)
    ):
        return "the learned background is malformed"
    return None


def restore_state(ckpt: dict[str, Any], cfg: RunConfig, device: torch.device) -> TrainState:
    try:
        return _restore_state(ckpt, cfg, device)
    except (
        KeyError,
        ValueError,
        RuntimeError,
        TypeError,
        IndexError,
    ) as e:  # shapes/optimizer states of another run
        where = ckpt.get("_path", "the checkpoint")
        detail = str(e).strip().splitlines()[0][:120] if str(e).strip() else type(e).__name__
        raise SplatVLMError(
            f"{where} does not fit this run's config ({type(e).__name__}: {detail})"
        ) from None


def _restore_state(ckpt: dict[str, Any], cfg: RunConfig, device: torch.device) -> TrainState:
    p = ckpt["params"]
    params = make_params(p["means"], p["quats"], p["scales"], p["opacities"], p["sh0"], p["shN"]).to(device)
    optimizers = make_optimizers(params, cfg.scene)
    for key, opt in optimizers.items():
        opt.load_state_dict(ckpt["optimizers"][key])
    strategy, strategy_state = densify.make_strategy(cfg.strategy, packed=cfg.render.packed)
    for k, v in ckpt["strategy_state"].items():
        strategy_state[k] = v.to(device) if isinstance(v, Tensor) else v
    background, background_optimizer = make_background(cfg, device)
    if background is not None:
        saved = ckpt["background"]  # a KeyError here: the checkpoint is of a run without a learned background
        with torch.no_grad():
            background.copy_(saved["logits"])
        background_optimizer.load_state_dict(saved["optimizer"])
    generator = torch.Generator()
    generator.set_state(ckpt["rng"]["generator"])
    torch.set_rng_state(ckpt["rng"]["torch"])
    if "cuda" in ckpt["rng"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(ckpt["rng"]["cuda"])
    return TrainState(
        params=params,
        optimizers=optimizers,
        strategy=strategy,
        strategy_state=strategy_state,
        step=int(ckpt["step"]),
        generator=generator,
        bad_steps_total=int(ckpt.get("bad_steps_total", 0)),
        elapsed_s=float(ckpt.get("elapsed_s", 0.0)),
        meta=dict(ckpt.get("meta") or {}),
        background=background,
        background_optimizer=background_optimizer,
    )


def new_state(params: torch.nn.ParameterDict, cfg: RunConfig, device: torch.device) -> TrainState:
    params = params.to(device)
    optimizers = make_optimizers(params, cfg.scene)
    strategy, strategy_state = densify.make_strategy(cfg.strategy, cfg.render.packed, params, optimizers)
    generator = torch.Generator()
    generator.manual_seed(cfg.seed)
    background, background_optimizer = make_background(cfg, device)
    return TrainState(
        params,
        optimizers,
        strategy,
        strategy_state,
        0,
        generator,
        background=background,
        background_optimizer=background_optimizer,
    )
