"""`splatvlm generate`'s entry: its flags read over the preset, `--resume`'s checks, the mesh and viewer
controls, and the lines it prints when done."""

from __future__ import annotations

import math
import os
import shlex
import sys
from pathlib import Path
from typing import Any

from .cli_args import GenerateArgs, parse_one_line, preset_defaults
from .config import RunConfig
from .errors import SplatVLMError, StopRun
from .outputs.mesh import MeshConfig


def cmd_generate(argv: list[str]) -> int:
    from .commands.batch import run_batch
    from .commands.generate import RunControl, prepare_single, resume_run, run_one
    from .prompts import read_prompts, slugify
    from .viewer.server import ViewerConfig

    run_cfg, preset = preset_defaults(argv)
    args: GenerateArgs = parse_one_line(
        GenerateArgs, argv, "splatvlm generate", GenerateArgs(preset=preset, run=run_cfg)
    )
    viewer = ViewerConfig(
        enabled=args.viewer,
        host=args.host,
        port=args.port,
        refresh_every=args.viewer_every,
        share=args.viewer_share,
        linger_s=viewer_linger(args.viewer_linger),
    )
    control = RunControl(
        viewer=viewer,
        stop_after=args.stop_after,
        gpteval3d=args.gpteval3d,
        overwrite=args.overwrite,
        placement=args.placement,
        fail_fast=args.fail_fast,
        mesh=_mesh_control(args),
        on_done=_print_done,
    )
    _check_control(control)
    from .run.distributed import dist_info, require_one_process

    if args.prompts is None:
        require_one_process(dist_info(), "a single prompt or --resume")
    if args.resume is not None:
        steps, execution = _check_resume_flags(argv, args)
        resume_run(args.resume, control, steps, execution)
        return 0
    if args.prompts is not None:
        if args.prompt is not None or args.output is not None:
            raise SplatVLMError("batch mode takes --prompts FILE --out-dir DIR, not a prompt or -o")
        if args.out_dir is None:
            raise SplatVLMError("batch mode needs --out-dir DIR")
        try:
            run_batch(read_prompts(args.prompts), args.run, args.out_dir, control, slugify(args.prompts.stem))
        except StopRun as e:
            if not getattr(e, "rerun_batch", False):  # --fail-fast: one prompt's own stop
                raise
            command = shlex.join(["splatvlm", "generate", *argv])
            raise StopRun(f"{e}: {command}", e.exit_code, kind=e.kind) from None
        return 0
    from .commands.generate import check_sources, make_guidance

    guidance = make_guidance(args.run, control)  # devices first: a bad --placement fails before any file
    prompt, output, run_dir, replaces = prepare_single(
        args.prompt, args.output, args.run, control, args.run_dir
    )
    guidance.sources = check_sources(args.run, [prompt])
    _demo_notice(args.run)
    run_one(prompt, args.run, output, run_dir, guidance, control, replaces=replaces)
    return 0


# How to run, not what: these may be given with --resume.
RESUME_FLAGS = {
    "--resume", "--viewer", "--no-viewer", "--viewer-share", "--no-viewer-share", "--host", "--port",
    "--viewer-every", "--viewer-linger", "--stop-after", "--placement", "--gpteval3d", "--no-gpteval3d",
}  # fmt: skip


def _check_resume_flags(argv: list[str], args: GenerateArgs) -> tuple[int | None, dict[str, Any]]:
    """Refuse flags that would change a resumed run's recipe (one line listing them); return a new --steps
    and the speed and logging settings given (``runs.EXECUTION_ONLY``, by dotted name), which the resume takes.

    A run-config flag whose value equals the saved one is harmless; more --steps is applied, with a message.
    """
    from .config import apply_overrides, read_yaml
    from .run.runs import EXECUTION_ONLY

    saved = None
    if (Path(args.resume) / "config.yaml").is_file():
        saved = apply_overrides(RunConfig(), read_yaml(Path(args.resume) / "config.yaml"))
    refused, steps, execution = [], None, {}
    if args.prompt is not None:
        refused.append("a prompt")
    for token in argv:
        if not token.startswith("-") or token == "-" or token.lstrip("-").replace(".", "", 1).isdigit():
            continue  # a value (a negative number is one too)
        flag = token.split("=", 1)[0]
        if flag in RESUME_FLAGS:
            continue
        if flag in (
            "-o",
            "--output",
            "--preset",
            "--config",
            "--prompts",
            "--out-dir",
            "--run-dir",
            "--overwrite",
        ):
            refused.append(flag)
            continue
        value, ok = _run_field(args.run, flag)
        old, _ = _run_field(saved, flag) if saved is not None else (None, False)
        path = _field_path(flag)
        if ok and path in EXECUTION_ONLY:
            execution[path] = value
            continue
        if flag == "--steps" and ok:
            if saved is None or value > saved.steps:
                steps = value
                continue
        if not ok or saved is None or value != old:
            refused.append(flag)
    if refused:
        raise SplatVLMError(
            f"--resume continues a run with its saved recipe; these flags would change it: {', '.join(dict.fromkeys(refused))} "
            "(only more --steps, speed and logging settings, and the viewer, --stop-after, --placement and "
            "--gpteval3d flags, may be given)"
        )
    return steps, execution


def _field_path(flag: str) -> str | None:
    """The dotted run-config field a flag sets (``--camera.num-views`` -> ``camera.num_views``, ``--no-vlm.fast``
    -> ``vlm.fast``), or None."""
    name = flag.lstrip("-")
    for candidate in (name, name[3:] if name.startswith("no-") else None, name.replace(".no-", ".")):
        if not candidate:
            continue
        obj, parts = RunConfig(), [p.replace("-", "_") for p in candidate.split(".")]
        for attr in parts:
            if not hasattr(obj, attr):
                break
            obj = getattr(obj, attr)
        else:
            return ".".join(parts)
    return None


def _run_field(cfg, flag: str):
    """The value a run-config flag (``--camera.num-views``, ``--no-vlm.fast``) sets in ``cfg``."""
    path = _field_path(flag)
    if cfg is None or path is None:
        return None, False
    for attr in path.split("."):
        cfg = getattr(cfg, attr)
    return cfg, True


def _mesh_control(args: GenerateArgs) -> MeshConfig | None:
    if not args.mesh:
        return None
    from .files import check_output_path
    from .outputs.mesh import check_mesh_config

    cfg = MeshConfig(resolution=args.mesh_resolution, faces=args.faces, texture=args.texture)
    check_mesh_config(cfg)
    if args.output is not None and args.prompts is None:
        check_output_path(args.output.with_suffix(".glb"), args.overwrite)
    return cfg


def viewer_linger(seconds: float | None) -> float:
    """--viewer-linger, or its default: until Ctrl-C when a person is at a terminal, else 0 (a script or
    pipe must not hang on a server nobody looks at)."""
    if seconds is not None:
        return seconds
    return math.inf if sys.stdin.isatty() and sys.stdout.isatty() else 0.0


def _check_control(control) -> None:
    if not 0 < control.viewer.port < 65536:
        raise SplatVLMError(f"--port must be in 1..65535, got {control.viewer.port}")
    if control.viewer.refresh_every <= 0:
        raise SplatVLMError(f"--viewer-every must be positive, got {control.viewer.refresh_every}")
    if control.stop_after is not None and control.stop_after <= 0:
        raise SplatVLMError(f"--stop-after must be positive, got {control.stop_after}")
    if not control.viewer.linger_s >= 0:
        raise SplatVLMError(
            f"--viewer-linger must be >= 0 seconds (inf: until Ctrl-C), got {control.viewer.linger_s}"
        )


def _demo_notice(cfg: RunConfig) -> None:
    if cfg.sds.model == "demo" or cfg.vlm.model == "demo":
        print(
            "note: demo models are tiny and randomly initialized; this run shows the pipeline working, "
            "not real quality. Use --preset vlm3d with real weights for real assets.",
            file=sys.stderr,
        )


def _shown(path: str) -> str:
    """A path as a person would type it here: relative to the current folder when it lies inside it."""
    rel = os.path.relpath(path) if os.path.isabs(path) else path
    return rel if not rel.startswith("..") else path


def _print_done(s: dict) -> None:
    """A run's last line(s): every file it wrote and its whole time (exports included); how to go on."""
    status = "done" if s.get("finished", True) else f"stopped at step {s.get('steps')}"
    extra = f" p_yes={s['p_yes']:.3f}" if "p_yes" in s else ""
    files = ", ".join(_shown(f) for f in s.get("files") or [str(s.get("output"))])
    print(
        f"{status}: {files} ({s.get('num_gaussians'):,} Gaussians, {s.get('seconds'):.1f} s){extra}",
        flush=True,
    )
    if s.get("resume"):
        print(f"continue with: {s['resume']}", flush=True)
