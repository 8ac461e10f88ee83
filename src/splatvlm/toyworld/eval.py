"""`splatvlm toyworld eval`: the real `generate` path on every toy caption, scored against ground truth.

For each object, method and seed: a RunConfig made from the real preset (`mvdream`: prior only; `vlm3d`:
prior + reward) with the toy models and the toy world's camera and size (every schedule's step counts
scaled to `--steps`), trained by ``generate.run_one`` (the trainer, the SDS and reward terms); the
resulting .ply is rendered on held-out cameras and scored (``scoring.py``). Writes DIR/report.json,
DIR/report.md, DIR/<object>.png (rows: ground truth, then each method's first seed, from 4 sides) and
the run folders under DIR/runs/.
"""

from __future__ import annotations

import datetime
import json
import shlex
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal

import torch
import tyro

from ..config import RunConfig, apply_overrides, apply_set, load_run_config, validate_run_config
from ..errors import SplatVLMError
from ..files import atomic_write_text
from . import sweep
from .models import (
    CAMERA_OVERRIDES,
    REWARD_SIZE,
    SCENE_POINTS,
    TORCH_CHUNK,
    TOY_SDS,
    WEIGHTS_DIR,
)
from .scoring import picture, score
from .sweep import label, report_markdown
from .world import get_objects, object_params

Method = Literal["mvdream", "vlm3d"]


@dataclass
class EvalConfig:
    """Run the toy presets on the toy world and score them against the ground truth."""

    output: Annotated[Path, tyro.conf.arg(aliases=["-o"])] = Path("toyworld-out")
    """Folder for report.json, report.md, the pictures and the run folders."""
    limit: int | None = None
    """Only the first N objects of the world."""
    objects: list[str] = field(default_factory=list)
    """Only these objects (by name; empty: all)."""
    steps: int = 400
    """Training steps per run (the presets' schedules are scaled to it)."""
    seeds: list[int] = field(default_factory=lambda: [0])
    """Seeds to run each object and method with."""
    methods: list[Method] = field(default_factory=lambda: ["mvdream", "vlm3d"])
    """Presets to compare: mvdream (prior only), vlm3d (prior + reward)."""
    device: str = "cpu"
    """'cpu', 'cuda' or 'auto'."""
    weights: Path = WEIGHTS_DIR
    """Folder with the toy prior/ and reward/ (as `toyworld build` writes)."""
    set: list[str] = field(default_factory=list)
    """Extra overrides of the toy run config as KEY=YAML (e.g. strategy.grow_grad2d=0.001), for recipe studies."""
    threads: int = 1
    """CPU threads for torch (one: the toy's ops are too small to share, and a second thread that waits for a
    busy core slows every op down)."""
    sweep: list[str] = field(default_factory=list)
    """Arms of a sweep as KEY=V1,V2,... (e.g. weights.vlm.start=20,100,300,1000): each method runs once per value,
    that value applied after ``set`` (several keys: every combination). Empty: one arm, ``set`` alone."""
    shard: str = "0/1"
    """Run only the I-th of N interleaved slices of the (object, method, arm, seed) runs, as I/N, so that N
    processes share an eval; ``--merge`` joins their folders."""
    snapshot_every: int = 0
    """Also save each run's scene every N steps (runs/*/snapshots/step-*.ply, the reward's hard negatives): the
    run stops and resumes from its checkpoint at each, which leaves its result unchanged. 0: off."""
    merge: list[Path] = field(default_factory=list)
    """Run nothing: merge these eval folders' report.json into ``output`` (report.json, report.md, the
    pictures where the runs' scenes are there, and sweep.png when there are arms)."""


def _scaled(value: int, scale: float) -> int:
    return max(1, round(value * scale))


def toy_run_config(
    method: Method, steps: int, seed: int, device: str, weights: Path, extra: list[str] = ()
) -> RunConfig:
    """The real preset with the toy models, camera, size and SDS settings (``TOY_SDS``); its step counts scaled
    to ``steps``."""
    base = load_run_config(method)
    s = steps / base.steps
    st = base.strategy
    vlm_weight, vlm_ratio = (
        {"start": w.start, "end": w.end, "ramp_steps": _scaled(w.ramp_steps, s) if w.ramp_steps else 0,
         "stop_after": None if w.stop_after is None else _scaled(w.stop_after, s)}
        for w in (base.weights.vlm, base.weights.vlm_ratio)
    )  # fmt: skip
    overrides: dict[str, Any] = {
        "steps": steps,
        "seed": seed,
        "device": device,
        "log_every": max(1, steps // 10),
        "checkpoint_every": 0,
        "turntable_frames": 0,
        "scene": {"num_points": SCENE_POINTS},
        # Chunks that stay in the CPU's cache: 3-4x faster than the default at 32 px (same images).
        "render": {"torch_chunk": TORCH_CHUNK},
        "camera": dict(CAMERA_OVERRIDES),
        "strategy": {
            "refine_start_iter": _scaled(st.refine_start_iter, s),
            "refine_stop_iter": _scaled(st.refine_stop_iter, s),
            # Not scaled: every refinement can double the count, so the toy keeps the preset's spacing
            # (a few refinements in a few hundred steps) rather than its number of refinements.
            "refine_every": st.refine_every,
            "reset_every": _scaled(st.reset_every, s) if st.reset_every else 0,
        },
        "sds": {
            "model": str(Path(weights) / "prior"),
            "negative_prompt": "",  # the toy prior's unconditional branch is the empty caption
            "image_size": 0,
            **TOY_SDS,
        },
        # the question the toy reward was trained on (`toyworld build`), whatever the preset asks a real VLM
        "vlm": {
            "model": str(Path(weights) / "reward"),
            "size": REWARD_SIZE,
            "dtype": "float32",
            "question": "dual",
        },
        "weights": {"vlm": vlm_weight, "vlm_ratio": vlm_ratio},
    }
    cfg = apply_set(apply_overrides(base, overrides), extra)
    validate_run_config(cfg)
    return cfg


# ---------------------------------------------------------------------------------------------
# The benchmark


def run_eval(cfg: EvalConfig, argv: list[str] | None = None) -> dict[str, Any]:
    from ..commands.generate import Guidance, check_sources
    from ..gaussians.ply import load_ply
    from ..hub import device_name, pick_device

    # 1. check inputs
    torch.set_num_threads(cfg.threads)
    command = "splatvlm toyworld eval " + shlex.join(argv if argv is not None else sys.argv[3:])
    if cfg.merge:
        return sweep.merge(cfg.merge, Path(cfg.output), command)
    objs = get_objects(cfg.objects)
    if cfg.limit is not None:
        if cfg.limit < 1:
            raise SplatVLMError(f"--limit must be at least 1, got {cfg.limit}")
        objs = objs[: cfg.limit]
    if not cfg.seeds or not cfg.methods:
        raise SplatVLMError("give at least one --seeds and one --methods")
    if cfg.snapshot_every < 0:
        raise SplatVLMError(f"--snapshot-every must be >= 0, got {cfg.snapshot_every}")
    arms = sweep.parse_arms(cfg.sweep)
    index, count = sweep.parse_shard(cfg.shard)
    for part in ("prior/model_index.json", "reward/config.json"):
        if not (Path(cfg.weights) / part).is_file():
            raise SplatVLMError(
                f"no toy weights in {cfg.weights} (missing {part}); run `splatvlm toyworld build`"
            )
    device = pick_device(cfg.device)
    out = Path(cfg.output)
    out.mkdir(parents=True, exist_ok=True)
    jobs = [(o, m, a, s) for o in objs for m in cfg.methods for a in arms for s in cfg.seeds][index::count]

    def run_config(method: Method, arm: tuple[str, list[str]], seed: int) -> RunConfig:
        return toy_run_config(method, cfg.steps, seed, cfg.device, cfg.weights, [*cfg.set, *arm[1]])

    # 2. guidance per method and arm, the loaded models shared where their configs agree
    guidance: dict[tuple[str, str], Guidance] = {}
    for _, m, a, _ in jobs:
        if (m, a[0]) not in guidance:
            c = run_config(m, a, cfg.seeds[0])
            check_sources(c, [o.caption for o in objs])
            guidance[m, a[0]] = Guidance(c, device)
    report = {
        "suite": "toyworld",
        "device": device_name(device),
        "date": "",
        "command": command,
        "results": [],
    }
    results = report["results"]
    shard = f", shard {cfg.shard} of them" if count > 1 else ""
    print(f"toyworld eval: {len(jobs)} runs of {cfg.steps} steps ({len(objs)} objects x {len(cfg.methods)} "
          f"methods x {len(arms)} arms x {len(cfg.seeds)} seeds{shard}) into {out}; a line after each run",
          flush=True)  # fmt: skip
    for obj in objs:
        firsts = [object_params(obj)]
        for _, method, arm, seed in [j for j in jobs if j[0] is obj]:
            run_cfg = run_config(method, arm, seed)
            run_dir = out / "runs" / sweep.run_name(obj.name, method, arm[0], seed)
            run_dir.mkdir(parents=True, exist_ok=True)
            g = guidance[method, arm[0]]
            t0 = time.perf_counter()
            summary = run_with_snapshots(obj.caption, run_cfg, run_dir, g, cfg.snapshot_every)
            seconds = time.perf_counter() - t0
            for other in guidance.values():  # load each model once for every arm that shares its config
                for kind, section in (("prior", "sds"), ("reward", "vlm")):
                    same = getattr(other.cfg, section) == getattr(g.cfg, section)
                    if kind in g.models and kind not in other.models and same:
                        other.models[kind] = g.models[kind]
            params = load_ply(run_dir / "scene.ply")
            s = score(params, obj, device)
            results.append({"object": obj.name, "caption": obj.caption, "method": method, "arm": arm[0],
                            "seed": seed, **s, "front_back": obj.front_back,
                            "num_gaussians": summary["num_gaussians"], "seconds": round(seconds, 2)})  # fmt: skip
            print(f"{obj.name} {label(results[-1])} seed {seed}: IoU {s['iou']:.3f} PSNR {s['psnr']:.2f} "
                  f"Janus {s['janus']} ({seconds:.0f} s)", flush=True)  # fmt: skip
            if seed == cfg.seeds[0]:
                firsts.append(params)
        if len(firsts) > 1:
            picture(firsts, out / f"{obj.name}.png", device)
        # 3. the reports so far, after every object: a run cut short keeps the objects it finished
        report["date"] = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        atomic_write_text(out / "report.json", json.dumps(report, indent=2))
        atomic_write_text(out / "report.md", report_markdown(report))
    return report


def run_with_snapshots(prompt: str, cfg: RunConfig, run_dir: Path, guidance, every: int) -> dict[str, Any]:
    """``generate.run_one`` into run_dir/scene.ply; with ``every`` > 0 in legs of ``every`` steps, each leg's
    scene copied to run_dir/snapshots/step-<step>.ply and the next leg resumed from the checkpoint."""
    import shutil

    from ..commands import generate
    from ..commands.generate import RunControl

    control = RunControl(progress=False, overwrite=True, stop_after=every or None)
    summary = generate.run_one(prompt, cfg, run_dir / "scene.ply", run_dir, guidance, control)
    while not summary["finished"]:
        (run_dir / "snapshots").mkdir(exist_ok=True)
        shutil.copyfile(run_dir / "partial.ply", run_dir / "snapshots" / f"step-{summary['steps']:05d}.ply")
        summary = generate.run_one(
            prompt, cfg, run_dir / "scene.ply", run_dir, guidance, control, resume=True
        )
    return summary
