"""One text-to-3D run: run folders, guidance terms, training, outputs (a file of prompts: batch.py).

Run folder layout (one per prompt):
  config.yaml     the resolved config          run.json       prompt, output path, seed
  metrics.jsonl   per-step losses and timings  checkpoint.pt  latest checkpoint (weights_only loadable)
  scene.ply       final splats (batch mode)    turntable.gif  contact.png    summary.json (written last)
"""

from __future__ import annotations

import contextlib
import json
import os
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
from ..files import RunLock, atomic_write_text, check_output_path, clean_temp_files
from ..gaussians.cameras import Cameras
from ..gaussians.ply import save_ply
from ..gaussians.scene import init_ball, num_gaussians
from ..guidance.terms import TERMS
from ..models import Sources
from ..outputs import export
from ..prompts import check_prompt, slugify, where_of
from ..run import distributed
from ..run.runs import (
    aside_dir,
    check_output_replaceable,
    claim_run_folder,
    config_differences,
    console,
    cut_metrics,
    file_identity,
    folder_kind,
    last_metrics,
    new_run_id,
    not_ours,
    read_run_info,
    recipe_dict,
    recipe_hash,
    recover_swap,
    replaced_folder,
    resume_command,
    run_id,
    swap_in,
    update_run_info,
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
    # An application's own live view, used instead of a new Viewer (the studio's): it has the trainer's viewer
    # methods (`lock`, `update`, `paused`, `wait_if_paused`) and outlives the run, so the run neither serves nor closes it.
    watcher: Any = None
    # Asked before each step; True ends the run there as stop_after does (a controller on another thread).
    should_stop: Callable[[], bool] | None = None
    # Called with each run's summary as it ends (finished or stopped), before the viewer lingers.
    on_done: Callable[[dict[str, Any]], None] | None = None


@dataclass
class Guidance:
    """The loaded guidance models, shared by every prompt of a batch (loaded once, lazily)."""

    cfg: RunConfig
    device: torch.device  # the prior's, the scene's and the renderer's
    models: dict[str, Any] = field(default_factory=dict)  # loaded models by kind (guidance.terms.ModelKind)
    loaded: dict[str, float] = field(default_factory=dict)  # load seconds, "<term name>_s"
    vlm_device: torch.device | None = None  # an own-device term's (the reward's), when not `device` (split)
    sources: Sources | None = None  # resolved once per run by check_sources; None = resolve on first use

    def terms(self, prompt: str) -> dict[str, Term]:
        active = terms_active(self.cfg)
        terms: dict[str, Term] = {}
        for spec in TERMS:
            if not active[spec.name]:
                continue
            device = self.vlm_device if spec.own_device and self.vlm_device is not None else self.device
            model = None
            if spec.model is not None:
                if spec.model not in self.models:
                    t0 = time.perf_counter()
                    named = getattr(self.cfg, spec.section).model if spec.section else spec.model
                    what = {"reward": "reward VLM"}.get(spec.model, spec.model)
                    console.print(f"loading the {what} ({named}) ...", highlight=False)
                    source = self.sources.found.get(spec.model) if self.sources is not None else None
                    with distributed.on_device(device):
                        self.models[spec.model] = models.load_model(spec.model, self.cfg, device, source)
                    self.loaded[f"{spec.name}_s"] = time.perf_counter() - t0
                    console.print(f"loaded the {what} in {self.loaded[f'{spec.name}_s']:.1f} s")
                model = self.models[spec.model]
            fn = spec.make(self.cfg, model, prompt)
            if device != self.device:
                fn = on_other_device(fn, device, self.device)
            terms[spec.name] = Term(
                fn,
                weights=spec.weights,
                every=spec.every(self.cfg),
                num_views=spec.views(self.cfg),
                launch_first=spec.launch_first,
                inputs=spec.inputs,
                depth=spec.depth(self.cfg),
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
    kinds = tuple(dict.fromkeys(s.model for s in TERMS if s.model is not None and active[s.name]))
    return models.check_sources(
        cfg, prompts, kinds, where=where_of(prompts), say=console.print if many else None
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

    A new run makes ``run_dir`` (or takes it when it is a run folder of ours or empty; anything else is
    refused), only now, so that a run refused earlier leaves no folder behind. ``replaces``: ``run_dir`` is
    being built aside to replace that run folder (--overwrite); the swap happens only once the run has
    finished, so a failed or interrupted overwrite leaves the old run whole.
    """
    output, run_dir = Path(os.path.abspath(output)), Path(os.path.abspath(run_dir))
    if replaces is not None:
        replaces = Path(os.path.abspath(replaces))
    if not resume:
        claim_run_folder(run_dir)
    build_lock = RunLock(run_dir)
    with build_lock, RunLock(replaces) if replaces is not None else contextlib.nullcontext():
        clean_temp_files(output.parent, output.stem)
        try:
            summary = _run_one(prompt, cfg, output, run_dir, guidance, control, resume, prompt_id, replaces)
            if replaces is not None and summary["finished"]:
                build_lock.moved_to(replaces)  # swapped in: its lock file is there now
            return summary
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
    # 1. Run folder and resolved config; what the run may replace, recorded with its identity.
    if resume:
        info = read_run_info(run_dir) or {}
    else:
        info = {
            "id": new_run_id(),
            "prompt": prompt,
            "output": str(output),
            "seed": cfg.seed,
            "recipe": recipe_hash(cfg),
        }
        if control.overwrite and file_identity(output) is not None:
            info["output_owned"] = file_identity(output)  # the file --overwrite was given for
        if replaces is not None:
            replaced_id = run_id(replaces)
            if replaced_id is None:
                raise SplatVLMError(
                    f"{replaces} is not a run folder of splatvlm's; --overwrite does not replace it"
                )
            info["replaces"] = {"path": str(replaces), "id": replaced_id}
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
    # 4. Live viewer (or the application's own live view).
    viewer = control.watcher
    own_viewer = viewer is None and control.viewer.enabled
    if own_viewer:
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
            should_stop=control.should_stop,
        )
    except BaseException:
        with contextlib.suppress(OSError):  # a full disk must not hide the first error
            save_ply(state.params, run_dir / "interrupted.ply")
        if own_viewer:
            viewer.close()
        raise
    finished = state.step >= cfg.steps
    # 6. Outputs. The output is replaced only if it is absent, --overwrite was given, or the run recorded it.
    if finished:
        check_output_replaceable(output, info, control.overwrite)
        save_ply(state.params, output)
        info = update_run_info(run_dir, output_owned=file_identity(output))
    else:
        save_ply(state.params, run_dir / "partial.ply")
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
                check_output_replaceable(output.with_suffix(".glb"), {}, control.overwrite)
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
            swap_in(run_dir, replaces, info["replaces"]["id"])
            update_run_info(replaces, replaces=None)  # in its place now: a later --resume replaces nothing
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
        if own_viewer:
            if finished:
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
    output = Path(os.path.abspath(output))
    run_dir = Path(os.path.abspath(run_dir or output.with_name(output.stem + "_run")))
    recover_swap(run_dir)
    kind = folder_kind(run_dir)
    if kind == "foreign":
        raise SplatVLMError(not_ours(run_dir, "choose another --run-dir, or move it away"))
    if kind == "missing" and not run_dir.parent.is_dir():
        raise SplatVLMError(f"parent folder {run_dir.parent} of run folder {run_dir} does not exist")
    if kind in ("missing", "empty"):
        return prompt, output, run_dir, None  # made by run_one, once the models' sources are checked
    if not control.overwrite:
        raise SplatVLMError(
            f"run folder {run_dir} already holds a run; --resume {run_dir} or pass --overwrite"
        )
    if kind == "legacy":
        raise SplatVLMError(
            f"run folder {run_dir} holds a run of an older splatvlm (no run id in its run.json), which "
            "--overwrite does not replace; remove it yourself, or choose another --run-dir"
        )
    with RunLock(run_dir):  # refuse now if another process is using it
        pass
    aside = aside_dir(run_dir)
    aside_kind = folder_kind(aside)
    if aside_kind == "foreign":
        raise SplatVLMError(not_ours(aside, "move it away to --overwrite"))
    if aside_kind != "missing":  # an earlier overwrite that did not finish: start it again
        with RunLock(aside):
            shutil.rmtree(aside)
    return prompt, output, aside, run_dir


def resume_run(
    run_dir: Path, control: RunControl, steps: int | None = None, execution: dict[str, Any] | None = None
) -> dict[str, Any]:
    """Continue a run folder exactly where its checkpoint left it, with its saved config.

    ``steps``: a larger total step count, applied deliberately (the only recipe change a resume takes).
    ``execution``: speed and logging settings by dotted name (``runs.EXECUTION_ONLY``) for this resume only;
    config.yaml keeps the saved ones.
    """
    run_dir = Path(os.path.abspath(run_dir))
    recover_swap(run_dir)
    if not run_dir.exists():
        raise SplatVLMError(f"run folder {run_dir} not found (--resume takes the <output stem>_run folder)")
    info_path = run_dir / "run.json"
    if not info_path.is_file() or not (run_dir / "config.yaml").is_file():
        raise SplatVLMError(f"{run_dir} is not a splatvlm run folder (no run.json/config.yaml)")
    if folder_kind(run_dir) not in ("ours", "legacy"):
        raise SplatVLMError(f"{run_dir} is not a splatvlm run folder ({info_path} is not a run description)")
    if not (run_dir / "checkpoint.pt").is_file():
        raise SplatVLMError(f"{run_dir} has no checkpoint.pt to resume from")
    with RunLock(run_dir):
        info = read_run_info(run_dir) or {}
        if not isinstance(info.get("prompt"), str) or not isinstance(info.get("output"), str):
            raise SplatVLMError(f"{info_path} lacks the run's prompt and output")
        # What the run writes and replaces, as recorded: checked now, not trusted.
        output = Path(info["output"])
        if not output.is_absolute() or output.suffix.lower() != ".ply":
            raise SplatVLMError(
                f"{info_path} records the output {info['output'][:200]!r}, not an absolute .ply path (an older "
                "splatvlm's run); write the absolute path of the output there, then resume"
            )
        check_output_replaceable(output, info, overwrite=False)
        found = replaced_folder(run_dir, info)
        replaces = found[0] if found is not None else None
        if found is not None and os.path.lexists(replaces) and run_id(replaces) != found[1]:
            raise SplatVLMError(
                f"{replaces} no longer holds the run this --overwrite replaces; nothing is replaced (move it "
                f"away to let {run_dir} take its place)"
            )
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
            validate_run_config(cfg)  # the same checks as a new run's, on what this resume runs with
            console.print(
                "this resume's speed and logging settings: "
                + ", ".join(f"{k}={v}" for k, v in execution.items())
            )
        sources = check_sources(cfg, [info["prompt"]])
        guidance = make_guidance(cfg, control, sources=sources)
        return run_one(
            info["prompt"],
            cfg,
            output,
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


def generate(
    prompt: str,
    output: str | Path | None = None,
    cfg: RunConfig | str = "vlm3d",
    overwrite: bool = False,
    progress: bool = True,
) -> dict[str, Any]:
    """Train one prompt into a .ply, as ``splatvlm generate PROMPT -o OUTPUT`` does; returns the run's summary.

    Args:
        prompt: the text prompt.
        output: the .ply to write (default: named after the prompt, in the current folder). The run folder is
            ``<output stem>_run`` beside it, with the same checks, locks and resume as the command.
        cfg: a RunConfig, or a preset's name (``"demo"`` runs the tiny offline models on the CPU).
        overwrite: replace an existing output and run folder (built aside and swapped in at the end).
        progress: show the progress bar (or log lines when not on a terminal).
    """
    from ..config import load_run_config

    cfg = load_run_config(cfg) if isinstance(cfg, str) else cfg
    control = RunControl(overwrite=overwrite, progress=progress)
    guidance = make_guidance(cfg, control)
    prompt, out, run_dir, replaces = prepare_single(
        prompt, None if output is None else Path(output), cfg, control, None
    )
    guidance.sources = check_sources(cfg, [prompt])
    return run_one(prompt, cfg, out, run_dir, guidance, control, replaces=replaces)
