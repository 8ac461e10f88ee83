"""One text-to-3D run, or a batch of them: run folders, guidance terms, training, outputs.

Run folder layout (one per prompt):
  config.yaml     the resolved config          run.json       prompt, output path, seed
  metrics.jsonl   per-step losses and timings  checkpoint.pt  latest checkpoint (weights_only loadable)
  scene.ply       final splats (batch mode)    turntable.gif  contact.png    summary.json (written last)
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import torch
from rich.console import Console

from . import distributed, export
from .config import RunConfig, apply_overrides, read_yaml, validate_run_config
from .errors import SplatVLMError
from .files import atomic_write_text, check_output_dir, check_output_path
from .gaussians.cameras import Cameras
from .gaussians.ply import save_ply
from .gaussians.scene import init_ball, num_gaussians
from .prompts import check_prompt, slugify
from .trainer import (
    Term,
    TrainState,
    load_checkpoint,
    new_state,
    restore_state,
    terms_active,
    train,
    write_run_files,
)

console = Console(stderr=True)


@dataclass
class RunControl:
    """How to run (not what to train): viewer, stopping, extra outputs. Not saved as part of the recipe."""

    viewer: bool = False
    host: str = "127.0.0.1"
    port: int = 8080
    viewer_every: int = 50
    stop_after: int | None = None
    gpteval3d: bool = False
    gpteval3d_method: str = "splatvlm"
    overwrite: bool = False
    progress: bool = True
    profile: bool = False
    placement: Literal["single", "split"] = "single"  # split: the reward on its own GPU (see distributed.py)
    mesh: Any = None  # a mesh.MeshConfig: also write <output stem>.glb beside the .ply


@dataclass
class Guidance:
    """The loaded guidance models, shared by every prompt of a batch (loaded once, lazily)."""

    cfg: RunConfig
    device: torch.device  # the prior's, the scene's and the renderer's
    sds: Any = None
    vlm: Any = None
    loaded: dict[str, float] = field(default_factory=dict)
    vlm_device: torch.device | None = None  # the reward's, when not `device` (--placement split)

    def terms(self, prompt: str) -> dict[str, Term]:
        active = terms_active(self.cfg)
        terms: dict[str, Term] = {}
        if active["sds"]:
            if self.sds is None:
                from .guidance.sds import SDSGuidance

                t0 = time.perf_counter()
                self.sds = SDSGuidance(self.cfg.sds, self.device).load()
                self.loaded["sds_s"] = time.perf_counter() - t0
            self.sds.set_prompt(prompt)
            terms["sds"] = Term(self.sds, weights=("sds",))
        if active["vlm"]:
            vlm_device = self.device if self.vlm_device is None else self.vlm_device
            if self.vlm is None:
                from .guidance.reward import VLMReward

                t0 = time.perf_counter()
                with distributed.on_device(vlm_device):
                    self.vlm = VLMReward(self.cfg.vlm, vlm_device)
                self.loaded["vlm_s"] = time.perf_counter() - t0
            self.vlm.set_prompt(prompt)
            reward, main = self.vlm, self.device

            def reward_term(rgb: torch.Tensor, cams: Cameras, step: int) -> dict[str, Any]:
                if vlm_device == main:
                    return reward(rgb, step)
                # Split placement: the renders move to the reward's GPU (`.to` keeps autograd, and the
                # graphed path's surrogate moves its gradient back); the loss comes back to the prior's.
                with distributed.on_device(vlm_device):  # CUDA-graph capture and replay happen on the current device
                    out = reward(rgb.to(vlm_device), step)
                return {**out, "loss_vlm": out["loss_vlm"].to(main)}

            terms["vlm"] = Term(
                reward_term,
                weights=("vlm",),
                every=self.cfg.vlm.every,
                num_views=self.cfg.vlm.num_views,
            )
        if not terms:
            raise SplatVLMError("every loss weight is zero for the whole run; nothing to train")
        return terms


def check_sources(cfg: RunConfig, prompts: list[str] = ()) -> None:
    """Validate model ids/paths, and that each prompt fits the models' context, before any heavy work."""
    active = terms_active(cfg)
    if active["sds"]:
        from .guidance.sds import check_prompt_length, check_sds_source

        check_sds_source(cfg.sds)
        check_prompt_length(cfg.sds, list(prompts))
    if active["vlm"]:
        from .guidance.reward import check_reward_source

        check_reward_source(cfg.vlm)
        for prompt in prompts:
            check_reward_source(cfg.vlm, prompt)


def run_one(
    prompt: str,
    cfg: RunConfig,
    output: Path,
    run_dir: Path,
    guidance: Guidance,
    control: RunControl,
    resume: bool = False,
    prompt_id: int = 0,
) -> dict[str, Any]:
    """Train one prompt into ``output`` (a .ply); everything else goes into ``run_dir``."""
    device = guidance.device
    t_start = time.perf_counter()
    # 1. Run folder and resolved config.
    if not resume:
        write_run_files(run_dir, cfg, {"prompt": prompt, "output": str(output), "seed": cfg.seed})
    # 2. Guidance terms (models load once per batch).
    terms = guidance.terms(prompt)
    # 3. Scene: fresh or from the checkpoint.
    ckpt_path = run_dir / "checkpoint.pt"
    if resume and ckpt_path.exists():
        state: TrainState = restore_state(load_checkpoint(ckpt_path), cfg, device)
        console.print(f"resuming {run_dir} at step {state.step}/{cfg.steps}")
    else:
        torch.manual_seed(cfg.seed)
        init_gen = torch.Generator().manual_seed(cfg.seed)
        if cfg.scene.init == "ball":
            params = init_ball(cfg.scene, init_gen)
        else:
            from .gaussians.ply import load_ply

            params = load_ply(cfg.scene.init)
        state = new_state(params, cfg, device)
    # 4. Live viewer.
    viewer = None
    if control.viewer:
        from .viewer import Viewer, ViewerConfig, make_render_fn

        viewer = Viewer(
            ViewerConfig(enabled=True, host=control.host, port=control.port, refresh_every=control.viewer_every),
            make_render_fn(state.params, device, cfg.render),
            run_dir,
            lambda path: save_ply(state.params, path),
        )
    # 5. Train.
    try:
        state = train(
            cfg,
            state,
            terms,
            run_dir,
            device,
            viewer=viewer,
            stop_after=control.stop_after,
            progress=control.progress,
            profile=control.profile,
        )
    except BaseException:
        save_ply(state.params, run_dir / "interrupted.ply")
        if viewer is not None:
            viewer.close()
        raise
    finished = state.step >= cfg.steps
    # 6. Outputs.
    save_ply(state.params, output if finished else run_dir / "partial.ply")
    summary: dict[str, Any] = {
        "prompt": prompt,
        "output": str(output),
        "steps": state.step,
        "finished": finished,
        "num_gaussians": num_gaussians(state.params),
        "bad_steps": state.bad_steps_total,
        "seconds": round(time.perf_counter() - t_start, 2),
    }
    if finished:
        if cfg.turntable_frames > 0:
            frames = export.render_turntable(
                state.params, cfg.camera, cfg.render, cfg.turntable_frames, cfg.turntable_resolution, device
            )
            export.save_video(frames, run_dir / "turntable.gif", fps=20)
            export.save_contact_sheet(frames[:: max(1, len(frames) // 8)][:8], run_dir / "contact.png", cols=4)
        if control.gpteval3d:
            summary["gpteval3d"] = str(
                export.export_gpteval3d(
                    state.params,
                    run_dir / "gpteval3d",
                    control.gpteval3d_method,
                    prompt_id,
                    cfg.seed,
                    render_cfg=cfg.render,
                    device=device,
                )
            )
        if control.mesh is not None:
            from .mesh import export_mesh

            try:  # the splats are saved already: a scene with no surface yet costs the mesh, not the run
                mesh = export_mesh(state.params, output.with_suffix(".glb"), replace(control.mesh, device=str(device)))
                summary["mesh"] = mesh["output"]
            except SplatVLMError as e:
                summary["mesh_error"] = str(e)
                console.print(f"warning: no mesh for {output}: {e}")
        last = _last_metrics(run_dir)
        for key in ("p_yes", "reward", "loss_sds", "loss_vlm"):
            if key in last:
                summary[key] = last[key]
        atomic_write_text(run_dir / "summary.json", json.dumps(summary, indent=2))
    if viewer is not None:
        if finished:
            viewer.update(
                state.params, state.step, {"step": state.step, "num_gaussians": num_gaussians(state.params)}, force=True
            )
            console.print(f"training done; viewer still serving at {viewer.url} (Ctrl-C to quit)")
            viewer.serve_forever()
        viewer.close()
    return summary


def _last_metrics(run_dir: Path) -> dict[str, Any]:
    last: dict[str, Any] = {}
    path = run_dir / "metrics.jsonl"
    if path.exists():
        for line in path.read_text(encoding="utf-8").splitlines():
            if line.strip():
                rec = json.loads(line)
                last.update({k: v for k, v in rec.items() if isinstance(v, int | float)})
    return last


def prepare_single(
    prompt: str | None, output: Path | None, cfg: RunConfig, control: RunControl, run_dir: Path | None
) -> tuple[str, Path, Path]:
    """Validate a single-prompt run's inputs and pick its run folder (``<output stem>_run`` beside it)."""
    if prompt is None:
        raise SplatVLMError("give a prompt (or --prompts FILE --out-dir DIR for a batch)")
    prompt = check_prompt(prompt)
    if output is None:
        raise SplatVLMError("give an output path with -o OUT.ply")
    output = check_output_path(output, control.overwrite, suffixes=(".ply",))
    validate_run_config(cfg)
    run_dir = run_dir or output.with_name(output.stem + "_run")
    if run_dir.exists() and (run_dir / "checkpoint.pt").exists() and not control.overwrite:
        raise SplatVLMError(f"run folder {run_dir} already holds a run; --resume {run_dir} or pass --overwrite")
    check_output_dir(run_dir)
    if control.overwrite:
        for name in ("checkpoint.pt", "metrics.jsonl", "summary.json"):
            (run_dir / name).unlink(missing_ok=True)
    return prompt, output, run_dir


def resume_run(run_dir: Path, control: RunControl) -> dict[str, Any]:
    """Continue a run folder exactly where its checkpoint left it, with its saved config."""
    run_dir = Path(run_dir)
    info_path = run_dir / "run.json"
    if not info_path.is_file() or not (run_dir / "config.yaml").is_file():
        raise SplatVLMError(f"{run_dir} is not a splatvlm run folder (no run.json/config.yaml)")
    if not (run_dir / "checkpoint.pt").is_file():
        raise SplatVLMError(f"{run_dir} has no checkpoint.pt to resume from")
    info = json.loads(info_path.read_text(encoding="utf-8"))
    cfg = apply_overrides(RunConfig(), read_yaml(run_dir / "config.yaml"))
    validate_run_config(cfg)
    check_sources(cfg, [info["prompt"]])
    guidance = make_guidance(cfg, control)
    return run_one(info["prompt"], cfg, Path(info["output"]), run_dir, guidance, control, resume=True)


def make_guidance(cfg: RunConfig, control: RunControl, info: distributed.DistInfo | None = None) -> Guidance:
    """Guidance on the devices that ``cfg.device`` and ``control.placement`` pick (this torchrun rank's)."""
    info = distributed.dist_info() if info is None else info
    device, vlm_device = distributed.placement_devices(cfg.device, control.placement, info)
    distributed.use_device(device)
    return Guidance(cfg, device, vlm_device=None if vlm_device == device else vlm_device)


def run_batch(prompts: list[str], cfg: RunConfig, out_dir: Path, control: RunControl) -> list[dict[str, Any]]:
    """One run folder per prompt (``DIR/<index>-<slug>``); finished ones are skipped, interrupted ones resumed.

    Under torchrun each rank runs its share of the pending prompts (see ``distributed.py``); rank 0 then
    writes ``DIR/batch_report.json`` and returns every prompt's summary, the other ranks return [].
    """
    validate_run_config(cfg)
    info = distributed.dist_info()
    if control.viewer and info.world_size > 1:
        raise SplatVLMError("--viewer serves one run; it cannot be used with several torchrun processes")
    check_sources(cfg, prompts)
    out_dir = check_output_dir(out_dir)
    guidance = make_guidance(cfg, control, info)
    if not info.is_main:
        control = replace(control, progress=False)  # one progress bar per terminal
    tag = f"rank {info.rank}: " if info.world_size > 1 else ""
    run_dirs = [out_dir / f"{index:03d}-{slugify(prompt)}" for index, prompt in enumerate(prompts)]
    t_start = time.perf_counter()
    with distributed.process_group(info, guidance.device) as group:
        # What is pending as rank 0 sees it, so that every rank deals the same list.
        pending = [i for i, d in enumerate(run_dirs) if not (d / "summary.json").is_file()]
        pending = distributed.broadcast(pending, group)
        mine = set(distributed.shard(pending, info.rank, info.world_size))
        results: dict[int, tuple[str, dict[str, Any]]] = {}  # index -> (status, summary)
        for index, prompt in enumerate(prompts):
            run_dir = run_dirs[index]
            if index not in mine:
                if index not in pending and info.is_main:
                    console.print(f"[{index + 1}/{len(prompts)}] done already: {run_dir.name}")
                    results[index] = ("already_done", _read_summary(run_dir))
                continue
            if (run_dir / "summary.json").is_file():  # finished since the list was made (another run)
                console.print(f"{tag}[{index + 1}/{len(prompts)}] done already: {run_dir.name}")
                results[index] = ("already_done", _read_summary(run_dir))
                continue
            run_dir.mkdir(exist_ok=True)
            resume = (run_dir / "checkpoint.pt").is_file()
            console.print(f"{tag}[{index + 1}/{len(prompts)}] {prompt}")
            summary = run_one(prompt, cfg, run_dir / "scene.ply", run_dir, guidance, control, resume=resume, prompt_id=index)
            results[index] = ("done" if summary["finished"] else "stopped", summary)
        if group is None:
            return [results[i][1] for i in sorted(results)]
        label = distributed.device_label(guidance.device, guidance.vlm_device or guidance.device)
        parts = distributed.gather({"rank": info.rank, "device": label, "results": results}, group)
    if not info.is_main:
        return []
    report = batch_report(prompts, run_dirs, parts, control.placement, time.perf_counter() - t_start)
    atomic_write_text(out_dir / "batch_report.json", json.dumps(report, indent=2))
    counts = {s: sum(e["status"] == s for e in report["prompts"]) for s in ("done", "already_done", "stopped", "missing")}
    console.print(
        f"batch over {info.world_size} process(es): {counts['done']} done now, {counts['already_done']} done before, "
        f"{counts['stopped']} stopped, {counts['missing']} missing; {report['prompts_per_hour']:.1f} prompts/hour; "
        f"report in {out_dir / 'batch_report.json'}"
    )
    return [e["summary"] for e in report["prompts"] if e["summary"]]


def _read_summary(run_dir: Path) -> dict[str, Any]:
    return json.loads((run_dir / "summary.json").read_text(encoding="utf-8"))


def batch_report(
    prompts: list[str], run_dirs: list[Path], parts: list[dict[str, Any]], placement: str, wall_s: float
) -> dict[str, Any]:
    """Every prompt of a batch in index order, with its status, output and timing, from the ranks' results.

    status: 'done' (finished in this run), 'already_done' (finished before it), 'stopped' (--stop-after),
    'missing' (no rank reported it; a re-run picks it up). ``seconds`` is the summary's run time (for
    'already_done', the earlier run's); ``prompts_per_hour`` counts the prompts finished in this run.
    """
    entries = []
    for index, prompt in enumerate(prompts):
        found = [(p["rank"], *p["results"][index]) for p in parts if index in p["results"]]
        rank, status, summary = found[0] if found else (None, "missing", {})
        entries.append(
            {
                "index": index,
                "prompt": prompt,
                "run_dir": str(run_dirs[index]),
                "status": status,
                "rank": None if status == "already_done" else rank,
                "output": summary.get("output"),
                "steps": summary.get("steps"),
                "seconds": summary.get("seconds"),
                "summary": summary,
            }
        )
    done_now = sum(e["status"] == "done" for e in entries)
    return {
        "num_prompts": len(prompts),
        "world_size": len(parts),
        "placement": placement,
        "devices": [p["device"] for p in sorted(parts, key=lambda p: p["rank"])],
        "wall_s": round(wall_s, 3),
        "prompts_per_hour": round(done_now * 3600 / max(round(wall_s, 3), 1e-9), 2),
        "sharding": "pending indices at start, dealt round-robin: rank r of W takes pending[r::W]",
        "shards": {str(p["rank"]): sorted(i for i, (s, _) in p["results"].items() if s != "already_done") for p in parts},
        "prompts": entries,
    }
