"""``splatvlm toyworld build``: render the world, train the prior (models.py) and the reward (reward_model.py),
write both with build.json."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import torch

from ..errors import SplatVLMError
from .models import BuildConfig, train_prior, world_renders
from .reward_model import build_reward_folder, train_reward_model
from .world import world


def build(cfg: BuildConfig, log=print) -> dict:
    """Render the world, train both models, write ``cfg.out/{prior,reward,build.json}``; returns build.json."""
    from ..demo import save_components
    from ..hub import quiet_model_io

    torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    captions = {o.name: o.caption for o in world()}
    t0 = time.perf_counter()
    data, janus, shapeless = world_renders(cfg)
    render_s = time.perf_counter() - t0
    log(
        f"rendered {sum(r.rgb.shape[0] for r in data.values())} + {sum(r.rgb.shape[0] for r in janus.values())} janus groups in {render_s:.0f} s"
    )

    out = Path(cfg.out)
    tmp = out.parent / f".{out.name}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    stages: dict[str, dict] = {}
    if cfg.only in ("all", "prior"):
        t0 = time.perf_counter()
        parts, prior_log = train_prior(data, captions, cfg, log)
        with quiet_model_io():
            save_components(parts, tmp / "prior")
        stages["prior"] = {
            "render_s": round(render_s, 1),
            **prior_log,
            "stage_s": round(time.perf_counter() - t0 + render_s, 1),
        }
    if cfg.only in ("all", "reward"):
        t0 = time.perf_counter()
        if cfg.reward_from is not None:
            src = Path(cfg.reward_from) / "reward"
            if not (src / "config.json").is_file():
                raise SplatVLMError(
                    f"--reward-from {cfg.reward_from}: no toy reward there (missing reward/config.json)"
                )
            shutil.copytree(src, tmp / "reward")
        else:
            with quiet_model_io():
                build_reward_folder(tmp / "reward", cfg.seed)
        reward_log = train_reward_model(tmp / "reward", data, janus, shapeless, captions, cfg, log)
        stages["reward"] = {
            "render_s": round(render_s, 1),
            **reward_log,
            "stage_s": round(time.perf_counter() - t0 + render_s, 1),
        }
    config = {
        k: str(v) if isinstance(v, Path) else [str(p) for p in v] if k == "reward_hard" else v
        for k, v in vars(cfg).items()
        if k not in ("out", "only")
    }
    command = "splatvlm toyworld build" + (f" --device {cfg.device}" if cfg.device != "cpu" else "")
    for st in stages.values():
        st.update(device=cfg.device, threads=cfg.threads, config=config, command=command)
    # A one-stage build keeps the other model and its record (both stages from one seeded config).
    old = json.loads((out / "build.json").read_text()) if (out / "build.json").is_file() else {}
    kept = {
        k: old["stages"][k] for k in ("prior", "reward") if k not in stages and k in old.get("stages", {})
    }
    stages = {**kept, **stages}
    info = {
        "stages": {k: stages[k] for k in ("prior", "reward") if k in stages},
        "total_s": round(sum(st["stage_s"] for st in stages.values()), 1),
        "note": "stage_s includes the stage's renders (each stage renders the world itself when run alone)",
    }
    (tmp / "build.json").write_text(json.dumps(info, indent=2))
    out.mkdir(parents=True, exist_ok=True)
    for name in [*stages, "build.json"]:
        if (tmp / name).exists():
            target = out / name
            if target.is_dir():
                shutil.rmtree(target)
            (tmp / name).replace(target)
    for stale in out.glob("build-*.json"):
        stale.unlink()
    shutil.rmtree(tmp, ignore_errors=True)
    log(
        f"wrote {out}: {json.dumps({k: {kk: vv for kk, vv in v.items() if kk != 'config'} for k, v in stages.items()})}"
    )
    return info
