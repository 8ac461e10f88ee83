"""One text-to-3D run, or a batch of them: run folders, guidance terms, training, outputs.

Run folder layout (one per prompt):
  config.yaml     the resolved config          run.json       prompt, output path, seed
  metrics.jsonl   per-step losses and timings  checkpoint.pt  latest checkpoint (weights_only loadable)
  scene.ply       final splats (batch mode)    turntable.gif  contact.png    summary.json (written last)
"""

from __future__ import annotations

import contextlib
import json
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import torch

from .. import models
from ..config import RunConfig, apply_overrides, nest_dotted, read_yaml, to_dict, validate_run_config
from ..errors import SplatVLMError, StopRun
from ..files import (
    RunLock,
    atomic_write_text,
    check_output_dir,
    check_output_path,
    clean_temp_files,
    ignore_in_git,
)
from ..gaussians.cameras import Cameras
from ..gaussians.ply import save_ply
from ..gaussians.scene import init_ball, num_gaussians
from ..models import Sources
from ..outputs import export
from ..prompts import check_prompt, slugify, where_of
from ..run import distributed
from ..run.runs import (
    aside_dir,
    batch_report,
    check_batch_folders,
    config_differences,
    console,
    cut_metrics,
    gpteval3d_tree,
    last_metrics,
    print_batch_summary,
    read_summary,
    recipe_dict,
    recipe_hash,
    recover_swap,
    resume_command,
    swap_in,
    yaml_dict,
)
from ..run.schedules import terms_active
from ..run.train_state import TrainState, load_checkpoint, new_state, restore_state
from ..run.trainer import Term, train, write_run_files
from ..viewer.server import ViewerConfig


@dataclass
class RunControl:
    """How to run (not what to train): viewer, stopping, extra outputs. Not saved as part of the recipe."""

    viewer: ViewerConfig = field(default_factory=ViewerConfig)  # the live viewer; enabled=False: none
    stop_after: int | None = None
    gpteval3d: bool = False
    gpteval3d_method: str = "splatvlm"
    overwrite: bool = False
    progress: bool = True
    profile: bool = False
    placement: Literal["single", "split"] = "single"  # split: the reward on its own GPU (see distributed.py)
    fail_fast: bool = False  # batch: stop at the first failed prompt instead of going on with the others
    gpteval3d_root: Path | None = (
        None  # where GPTEval3D's <method>/<id>/<seed> tree goes (default: the run folder)
    )
    mesh: Any = None  # a mesh.MeshConfig: also write <output stem>.glb beside the .ply
    # Called with each run's summary as it ends (finished or stopped), before the viewer lingers.
    on_done: Callable[[dict[str, Any]], None] | None = None


@dataclass
class Guidance:
    """The loaded guidance models, shared by every prompt of a batch (loaded once, lazily)."""

    cfg: RunConfig
    device: torch.device  # the prior's, the scene's and the renderer's
    sds: Any = None
    vlm: Any = None
    loaded: dict[str, float] = field(default_factory=dict)
    vlm_device: torch.device | None = None  # the reward's, when not `device` (--placement split)
    sources: Sources | None = None  # resolved once per run by check_sources; None = resolve on first use

    def terms(self, prompt: str) -> dict[str, Term]:
        active = terms_active(self.cfg)
        terms: dict[str, Term] = {}
        if active["sds"]:
            if self.sds is None:
                from ..guidance.sds import SDSGuidance

                t0 = time.perf_counter()
                console.print(f"loading the prior ({self.cfg.sds.model}) ...")
                self.sds = SDSGuidance(self.cfg.sds, self.device).load()
                self.loaded["sds_s"] = time.perf_counter() - t0
                console.print(f"loaded the prior in {self.loaded['sds_s']:.1f} s")
            self.sds.set_prompt(prompt)
            terms["sds"] = Term(self.sds, weights=("sds",))
        if active["vlm"]:
            vlm_device = self.device if self.vlm_device is None else self.vlm_device
            if self.vlm is None:
                from ..guidance.reward import VLMReward

                t0 = time.perf_counter()
                console.print(f"loading the reward VLM ({self.cfg.vlm.model}) ...")
                src = self.sources.vlm if self.sources is not None and self.sources.vlm is not None else None
                if src is None:
                    src = models.check_reward_source(self.cfg.vlm)
                with distributed.on_device(vlm_device):
                    self.vlm = VLMReward(self.cfg.vlm, src, vlm_device)
                self.loaded["vlm_s"] = time.perf_counter() - t0
                console.print(f"loaded the reward VLM in {self.loaded['vlm_s']:.1f} s")
            self.vlm.set_prompt(prompt)
            reward_term = (
                self.vlm if vlm_device == self.device else on_other_device(self.vlm, vlm_device, self.device)
            )
            terms["vlm"] = Term(
                reward_term,
                weights=("vlm",),
                every=self.cfg.vlm.every,
                num_views=self.cfg.vlm.num_views,
                launch_first=True,  # the 7B reward is the step's long pole; its graph launch alone takes ~4 ms
            )
        if not terms:
            raise SplatVLMError("every loss weight is zero for the whole run; nothing to train")
        return terms


def on_other_device(term, device: torch.device, main: torch.device):
    """The term run on ``device`` (--placement split): the renders move there (``.to`` keeps autograd, and a
    graphed term's surrogate moves its gradient back); the loss comes back to ``main``, the prior's GPU."""

    def moved(rgb: torch.Tensor, cams: Cameras, step: int) -> dict[str, Any]:
        with distributed.on_device(device):  # CUDA-graph capture and replay happen on the current device
            out = term(rgb.to(device), cams, step)
        return {**out, **{k: v.to(main) for k, v in out.items() if k.startswith("loss_")}}

    return moved


def check_sources(cfg: RunConfig, prompts: list[str] = ()) -> Sources:
    """Validate the active terms' model sources, and that each prompt fits the models' context, once, before
    any heavy work. Each tokenizer loads once and reads all prompts in one call; an error names the prompt's line.
    """
    active = terms_active(cfg)
    many = len(prompts) >= 1000
    if many:
        console.print(f"checking {len(prompts):,} prompts against the models' context ...")
    return models.check_sources(
        cfg,
        prompts,
        sds=active["sds"],
        vlm=active["vlm"],
        where=where_of(prompts),
        say=console.print if many else None,
    )


def run_one(
    prompt: str,
    cfg: RunConfig,
    output: Path,
    run_dir: Path,
    guidance: Guidance,
    control: RunControl,
    resume: bool = False,
    prompt_id: int = 0,
    replaces: Path | None = None,
) -> dict[str, Any]:
    """Train one prompt into ``output`` (a .ply); everything else goes into ``run_dir``.

    ``replaces``: ``run_dir`` is being built aside to replace that run folder (--overwrite); the swap
    happens only once the run has finished, so a failed or interrupted overwrite leaves the old run whole.
    """
    with RunLock(run_dir), RunLock(replaces) if replaces is not None else contextlib.nullcontext():
        clean_temp_files(output.parent, output.stem)
        try:
            return _run_one(prompt, cfg, output, run_dir, guidance, control, resume, prompt_id, replaces)
        except StopRun as e:  # chained: a batch tells how to go on without this run's own command
            raise StopRun(f"{e}; continue with: {resume_command(run_dir)}", e.exit_code, kind=e.kind) from e


def _run_one(
    prompt: str,
    cfg: RunConfig,
    output: Path,
    run_dir: Path,
    guidance: Guidance,
    control: RunControl,
    resume: bool,
    prompt_id: int,
    replaces: Path | None,
) -> dict[str, Any]:
    device = guidance.device
    t_start = time.perf_counter()
    # 1. Run folder and resolved config.
    if not resume:
        info = {"prompt": prompt, "output": str(output), "seed": cfg.seed, "recipe": recipe_hash(cfg)}
        if replaces is not None:
            info["replaces"] = str(replaces)
        write_run_files(run_dir, cfg, info)
    # 2. Guidance terms (models load once per batch).
    terms = guidance.terms(prompt)
    # 3. Scene: fresh or from the checkpoint.
    ckpt_path = run_dir / "checkpoint.pt"
    if resume and ckpt_path.exists():
        state: TrainState = restore_state(load_checkpoint(ckpt_path), cfg, device)
        cut_metrics(run_dir / "metrics.jsonl", state.step)
        console.print(f"resuming {run_dir} at step {state.step}/{cfg.steps}")
    else:
        torch.manual_seed(cfg.seed)
        init_gen = torch.Generator().manual_seed(cfg.seed)
        if cfg.scene.init == "ball":
            params = init_ball(cfg.scene, init_gen)
        else:
            from ..gaussians.ply import load_ply

            params = load_ply(cfg.scene.init)
        state = new_state(params, cfg, device)
        state.meta = {"prompt": prompt}
        (run_dir / "metrics.jsonl").unlink(missing_ok=True)  # a fresh run's log starts empty
    elapsed_before = state.elapsed_s
    # 4. Live viewer.
    viewer = None
    if control.viewer.enabled:
        from ..viewer.server import Viewer, make_render_fn

        viewer = Viewer(
            control.viewer,
            make_render_fn(state.params, device, cfg.render),
            run_dir,
            lambda path: save_ply(state.params, path),
        )  # fmt: skip
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
        with contextlib.suppress(OSError):  # a full disk must not hide the first error
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
        # The whole run: earlier invocations' training time (from the checkpoint) + all of this one.
        "seconds": round(elapsed_before + time.perf_counter() - t_start, 2),
        "seconds_this_invocation": round(time.perf_counter() - t_start, 2),
        "files": [str(output if finished else run_dir / "partial.ply")],  # and the exports below
    }
    final_dir = replaces if replaces is not None else run_dir
    if not finished:
        summary["resume"] = resume_command(run_dir)
    if finished:
        if cfg.turntable_frames > 0:
            frames = export.render_turntable(
                state.params,
                cfg.camera,
                cfg.render,
                cfg.turntable_frames,
                cfg.turntable_resolution,
                device,
                progress=control.progress,
            )
            export.save_video(frames, run_dir / "turntable.gif", fps=20)
            export.save_contact_sheet(
                frames[:: max(1, len(frames) // 8)][:8], run_dir / "contact.png", cols=4
            )
            summary["files"] += [str(final_dir / "turntable.gif"), str(final_dir / "contact.png")]
        if control.gpteval3d:
            written = str(
                export.export_gpteval3d(
                    state.params,
                    control.gpteval3d_root or run_dir / "gpteval3d",
                    control.gpteval3d_method,
                    prompt_id,
                    cfg.seed,
                    render_cfg=cfg.render,
                    device=device,
                    progress=control.progress,
                )
            )
            # Inside the run folder (one prompt), the folder being built moves to final_dir when it is complete.
            summary["gpteval3d"] = written if control.gpteval3d_root else str(final_dir / "gpteval3d")
            summary["files"].append(summary["gpteval3d"] + "/")
        if control.mesh is not None:
            from ..outputs.mesh import export_mesh

            try:  # the splats are saved already: a scene with no surface yet costs the mesh, not the run
                mesh = export_mesh(
                    state.params,
                    output.with_suffix(".glb"),
                    replace(control.mesh, device=str(device)),
                    progress=control.progress,
                )
                summary["mesh"] = mesh["output"]
                summary["files"] += mesh["files"]
            except SplatVLMError as e:
                summary["mesh_error"] = str(e)
                console.print(f"warning: no mesh for {output}: {e}")
        last = last_metrics(run_dir)
        for key in ("p_yes", "reward", "loss_sds", "loss_vlm"):
            if key in last:
                summary[key] = last[key]
        for name in ("interrupted.ply", "partial.ply"):
            (run_dir / name).unlink(missing_ok=True)
        # The whole run, exports included (the turntable, GPTEval3D renders and mesh can take minutes).
        summary["seconds"] = round(elapsed_before + time.perf_counter() - t_start, 2)
        summary["seconds_this_invocation"] = round(time.perf_counter() - t_start, 2)
        atomic_write_text(run_dir / "summary.json", json.dumps(summary, indent=2))
        if replaces is not None:
            swap_in(run_dir, replaces)
    if control.on_done is not None:
        control.on_done(summary)
    if viewer is not None:
        if finished:
            viewer.update(
                state.params,
                state.step,
                {"step": state.step, "num_gaussians": num_gaussians(state.params)},
                force=True,
            )
            viewer.linger(control.viewer.linger_s)
        viewer.close()
    return summary


def prepare_single(
    prompt: str | None, output: Path | None, cfg: RunConfig, control: RunControl, run_dir: Path | None
) -> tuple[str, Path, Path, Path | None]:
    """Validate a single-prompt run's inputs and pick its run folder (``<output stem>_run`` beside it).

    Returns (prompt, output, the folder to build in, the folder it replaces or None). With --overwrite
    of an existing run the new run is built aside and swapped in when it finishes (see ``run_one``).
    """
    if prompt is None:
        raise SplatVLMError("give a prompt (or --prompts FILE --out-dir DIR for a batch)")
    prompt = check_prompt(prompt)
    if output is None:  # named after the prompt, in the current folder
        output = Path(f"{slugify(prompt)}.ply")
    output = check_output_path(output, control.overwrite, suffixes=(".ply",))
    validate_run_config(cfg)
    run_dir = run_dir or output.with_name(output.stem + "_run")
    recover_swap(run_dir)
    holds_run = run_dir.is_dir() and any(
        (run_dir / n).exists() for n in ("checkpoint.pt", "summary.json", "run.json")
    )
    if holds_run and not control.overwrite:
        raise SplatVLMError(
            f"run folder {run_dir} already holds a run; --resume {run_dir} or pass --overwrite"
        )
    new_folder = not run_dir.exists()
    check_output_dir(run_dir)
    if new_folder:
        ignore_in_git(run_dir)
    if not holds_run:
        return prompt, output, run_dir, None
    with RunLock(run_dir):  # refuse now if another process is using it
        pass
    aside = aside_dir(run_dir)
    if aside.exists():  # an earlier overwrite that did not finish: start it again
        with RunLock(aside):
            shutil.rmtree(aside)
    check_output_dir(aside)
    ignore_in_git(aside)  # it becomes the run folder
    return prompt, output, aside, run_dir


def resume_run(
    run_dir: Path, control: RunControl, steps: int | None = None, execution: dict[str, Any] | None = None
) -> dict[str, Any]:
    """Continue a run folder exactly where its checkpoint left it, with its saved config.

    ``steps``: a larger total step count, applied deliberately (the only recipe change a resume takes).
    ``execution``: speed and logging settings by dotted name (``runs.EXECUTION_ONLY``) for this resume only;
    config.yaml keeps the saved ones.
    """
    run_dir = Path(run_dir)
    recover_swap(run_dir)
    if not run_dir.exists():
        raise SplatVLMError(f"run folder {run_dir} not found (--resume takes the <output stem>_run folder)")
    info_path = run_dir / "run.json"
    if not info_path.is_file() or not (run_dir / "config.yaml").is_file():
        raise SplatVLMError(f"{run_dir} is not a splatvlm run folder (no run.json/config.yaml)")
    if not (run_dir / "checkpoint.pt").is_file():
        raise SplatVLMError(f"{run_dir} has no checkpoint.pt to resume from")
    with RunLock(run_dir):
        try:
            info = json.loads(info_path.read_text(encoding="utf-8"))
        except (ValueError, UnicodeDecodeError):
            raise SplatVLMError(f"{info_path} is not valid JSON") from None
        if not isinstance(info, dict) or not isinstance(info.get("prompt"), str) or "output" not in info:
            raise SplatVLMError(f"{info_path} lacks the run's prompt and output")
        cfg = apply_overrides(RunConfig(), read_yaml(run_dir / "config.yaml"))
        validate_run_config(cfg)
        ckpt = load_checkpoint(run_dir / "checkpoint.pt")
        # Speed settings may differ: a resume can take its own (``execution``), and its checkpoints record them.
        changed = config_differences(recipe_dict(yaml_dict(ckpt["config"])), recipe_dict(to_dict(cfg)))
        if changed:
            raise SplatVLMError(
                f"{run_dir}/checkpoint.pt was written with another config than {run_dir}/config.yaml "
                f"(differs in: {', '.join(changed[:8])}); restore config.yaml, or start a new run"
            )
        ckpt_prompt = (ckpt.get("meta") or {}).get("prompt")
        if ckpt_prompt is not None and ckpt_prompt != info["prompt"]:
            raise SplatVLMError(
                f"{run_dir}/checkpoint.pt belongs to another run (prompt {str(ckpt_prompt)[:60]!r}, not "
                f"{info['prompt'][:60]!r}); restore this run's checkpoint, or start a new run"
            )
        if steps is not None and steps != cfg.steps:
            if steps < max(cfg.steps, int(ckpt["step"])):
                raise SplatVLMError(
                    f"--steps {steps} with --resume: the run has {cfg.steps} steps; only more are allowed"
                )
            console.print(
                f"extending {run_dir} from {cfg.steps} to {steps} steps (--steps); the schedules that depend on "
                "the total (the means learning rate) follow the new total from here"
            )
            cfg = replace(cfg, steps=steps)
            from ..config import to_yaml

            atomic_write_text(run_dir / "config.yaml", to_yaml(cfg))
        del ckpt
        if execution:
            cfg = apply_overrides(cfg, nest_dotted(execution))
            console.print(
                "this resume's speed and logging settings: "
                + ", ".join(f"{k}={v}" for k, v in execution.items())
            )
        sources = check_sources(cfg, [info["prompt"]])
        guidance = make_guidance(cfg, control, sources=sources)
        replaces = Path(info["replaces"]) if info.get("replaces") else None
        return run_one(
            info["prompt"],
            cfg,
            Path(info["output"]),
            run_dir,
            guidance,
            control,
            resume=True,
            replaces=replaces,
        )


def make_guidance(
    cfg: RunConfig,
    control: RunControl,
    info: distributed.DistInfo | None = None,
    sources: Sources | None = None,
) -> Guidance:
    """Guidance on the devices that ``cfg.device`` and ``control.placement`` pick (this torchrun rank's)."""
    info = distributed.dist_info() if info is None else info
    device, vlm_device = distributed.placement_devices(cfg.device, control.placement, info)
    distributed.use_device(device)
    from ..resources import check_models_fit

    check_models_fit(cfg, device, vlm_device)
    return Guidance(cfg, device, vlm_device=None if vlm_device == device else vlm_device, sources=sources)


def run_batch(
    prompts: list[str], cfg: RunConfig, out_dir: Path, control: RunControl, prompt_set: str = "prompts"
) -> list[dict[str, Any]]:
    """One run folder per prompt (``DIR/<index>-<slug>``); finished ones are skipped, interrupted ones resumed.

    A failed prompt is reported and the batch goes on (``control.fail_fast`` stops it). With
    ``control.gpteval3d`` the renders of all prompts go into one GPTEval3D tree per prompt file,
    ``DIR/gpteval3d/<prompt_set>/<method>/<index in the file>/<seed>/``, so that two prompt files sharing
    ``DIR`` never write the same id; ``prompts.json`` there records the file the ids index into.

    Under torchrun each rank runs its share of the pending prompts (see ``distributed.py``); rank 0 then
    writes ``DIR/batch_report.json`` and returns the summaries of the prompts run in this call (finished or
    stopped; not those done before), the other ranks return [].

    A signal (Ctrl-C) stops the batch with a StopRun that says to run the same batch command again; on one
    process ``batch_report.json`` is written first (the interrupted prompt 'stopped', the rest 'missing').
    """
    validate_run_config(cfg)
    info = distributed.dist_info()
    if control.viewer.enabled and info.world_size > 1:
        raise SplatVLMError("--viewer serves one run; it cannot be used with several torchrun processes")
    new_folder = not Path(out_dir).exists()
    out_dir = check_output_dir(out_dir)
    if new_folder:
        ignore_in_git(out_dir)
    run_dirs = [out_dir / f"{index:03d}-{slugify(prompt)}" for index, prompt in enumerate(prompts)]
    # One batch per out-dir: rank 0 holds its lock (torchrun's other ranks work under it, each run
    # folder locked by the rank that runs it).
    out_lock = RunLock(out_dir, "batch folder") if info.is_main else contextlib.nullcontext()
    with out_lock:
        check_batch_folders(prompts, run_dirs, cfg)
        sources = check_sources(cfg, prompts)
        if control.gpteval3d:
            control = replace(control, gpteval3d_root=gpteval3d_tree(out_dir, prompt_set, prompts))
        return _run_batch(prompts, cfg, out_dir, run_dirs, control, info, sources)


def _run_batch(
    prompts: list[str],
    cfg: RunConfig,
    out_dir: Path,
    run_dirs: list[Path],
    control: RunControl,
    info: distributed.DistInfo,
    sources: Sources,
) -> list[dict[str, Any]]:
    guidance = make_guidance(cfg, control, info, sources)
    if not info.is_main:
        control = replace(control, progress=False)  # one progress bar per terminal
    tag = f"rank {info.rank}: " if info.world_size > 1 else ""
    t_start = time.perf_counter()
    with distributed.process_group(info, guidance.device) as group:
        # What is pending as rank 0 sees it, so that every rank deals the same list.
        pending = [i for i, d in enumerate(run_dirs) if not (d / "summary.json").is_file()]
        pending = distributed.broadcast(pending, group)
        mine = set(distributed.shard(pending, info.rank, info.world_size))
        results: dict[int, tuple[str, dict[str, Any]]] = {}  # index -> (status, summary)

        def stop(index: int, reason: str, exit_code: int, kind: str | None) -> None:
            results[index] = ("stopped", {})
            _stop_batch(reason, exit_code, kind, prompts, run_dirs, results, out_dir, control, info, guidance, t_start)  # fmt: skip

        for index, prompt in enumerate(prompts):
            run_dir = run_dirs[index]
            if index not in mine:
                if index not in pending and info.is_main:
                    console.print(f"[{index + 1}/{len(prompts)}] done already: {run_dir.name}")
                    results[index] = ("already_done", read_summary(run_dir))
                continue
            if (run_dir / "summary.json").is_file():  # finished since the list was made (another run)
                console.print(f"{tag}[{index + 1}/{len(prompts)}] done already: {run_dir.name}")
                results[index] = ("already_done", read_summary(run_dir))
                continue
            run_dir.mkdir(exist_ok=True)
            resume = (run_dir / "checkpoint.pt").is_file()
            console.print(f"{tag}[{index + 1}/{len(prompts)}] {prompt}")
            try:
                summary = run_one(
                    prompt,
                    cfg,
                    run_dir / "scene.ply",
                    run_dir,
                    guidance,
                    control,
                    resume=resume,
                    prompt_id=index,
                )
            except KeyboardInterrupt:  # outside the training loop (loading, exports)
                stop(index, "interrupted (Ctrl-C)", 130, None)
            except Exception as e:
                # A signal stops the whole batch; anything else fails this prompt only (unless --fail-fast).
                if isinstance(e, StopRun) and e.exit_code != 3:
                    # The reason without run_one's "continue with" for this one run folder.
                    stop(index, str(e.__cause__ or e), e.exit_code, e.kind)
                if control.fail_fast:
                    raise
                reason = str(e) if isinstance(e, SplatVLMError | StopRun) else f"{type(e).__name__}: {e}"
                console.print(f"{tag}[{index + 1}/{len(prompts)}] failed: {reason}")
                results[index] = ("failed", {"error": reason})
                continue
            results[index] = ("done" if summary["finished"] else "stopped", summary)
        label = distributed.device_label(guidance.device, guidance.vlm_device or guidance.device)
        mine_part = {"rank": info.rank, "device": label, "results": results}
        parts = [mine_part] if group is None else distributed.gather(mine_part, group)
    if not info.is_main:
        return []
    report = batch_report(prompts, run_dirs, parts, control.placement, time.perf_counter() - t_start)
    atomic_write_text(out_dir / "batch_report.json", json.dumps(report, indent=2))
    print_batch_summary(report, out_dir / "batch_report.json")
    return [e["summary"] for e in report["prompts"] if e["summary"] and e["status"] in ("done", "stopped")]


def _stop_batch(
    reason: str,
    exit_code: int,
    kind: str | None,
    prompts: list[str],
    run_dirs: list[Path],
    results: dict[int, tuple[str, dict[str, Any]]],
    out_dir: Path,
    control: RunControl,
    info: distributed.DistInfo,
    guidance: Guidance,
    t_start: float,
) -> None:
    """Stop an interrupted batch: its report so far (one process: the others' results are out of reach),
    and a StopRun saying that the same batch command goes on (the CLI appends the command)."""
    written = ""
    if info.world_size == 1:
        label = distributed.device_label(guidance.device, guidance.vlm_device or guidance.device)
        parts = [{"rank": 0, "device": label, "results": results}]
        report = batch_report(prompts, run_dirs, parts, control.placement, time.perf_counter() - t_start)
        report["interrupted"] = reason
        atomic_write_text(out_dir / "batch_report.json", json.dumps(report, indent=2))
        written = f"; report in {out_dir / 'batch_report.json'}"
    stop = StopRun(
        f"{reason}{written}; finished prompts are skipped and this one resumes from its checkpoint when "
        "the same batch command runs again",
        exit_code,
        kind=kind,
    )
    stop.rerun_batch = True  # the CLI appends the command line
    raise stop from None
