"""Command-line entry points: `splatvlm {generate,fit,render,view,studio,train-reward,bench}`.

Each command is a dataclass parsed by tyro; ``--preset``/``--config`` are read first so their
values become the defaults that the other flags override. Expected errors print one line and exit 2.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import os
import re
import shlex
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

from .cli_args import (
    DEFAULT_PRESET,
    FitArgs,
    GenerateArgs,
    MeshArgs,
    PresetsArgs,
    RenderArgs,
    ViewArgs,
    parse_args,
)
from .config import RunConfig, list_presets, load_run_config, preset_description, to_yaml
from .errors import SplatVLMError, StopRun
from .gaussians.cameras import CameraConfig
from .gaussians.render import RenderConfig
from .outputs.mesh import MeshConfig


def _parse(cls: type, argv: list[str], prog: str, default=None):
    """tyro, with its multi-line parse errors reduced to one line."""
    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err):
            return parse_args(cls, argv, prog, default)
    except SystemExit as e:
        if e.code in (0, None):
            raise
        text = re.sub(r"[│╭╮╰╯─┃━]", " ", err.getvalue())
        # rich draws the box in ASCII (+-|) on a stream it cannot tell is UTF-8.
        lines = [ln.strip(" |") for ln in text.splitlines()]
        lines = [ln.strip() for ln in lines if ln.strip() and not re.fullmatch(r"[-+=\s]+", ln)]
        # tyro's box: a title, the problem ("Unrecognized options: --stepz"), maybe "Perhaps you meant:" + flags.
        body = [
            ln
            for ln in lines[1:]
            if not ln.lower().startswith(("usage", "for full helptext", "for full help"))
        ]
        msg = body[0] if body else (lines[0] if lines else "invalid arguments")
        if msg.endswith(":"):  # "Missing from ...:" then each missing argument with its help line
            names = [
                ln.split(",")[-1].strip() for ln in body[1:] if ln.startswith(("-", "PATH", "STR", "INT"))
            ]
            msg = f"{msg} {', '.join(names)}" if names else msg[:-1]
        guesses = []
        if "Perhaps you meant:" in body:
            guesses = [
                ln.split()[0] for ln in body[body.index("Perhaps you meant:") + 1 :] if ln.startswith("--")
            ]
        if msg.startswith("Unrecognized options:"):
            raise SplatVLMError(f"{unknown_flags_line(msg, guesses)}; see {prog} --help") from None
        if guesses:
            msg += f"; did you mean {', '.join(guesses[:3])}?"
        raise SplatVLMError(f"{msg} (see {prog} --help)") from None


def unknown_flags_line(msg: str, guesses: list[str]) -> str:
    """tyro's "Unrecognized options: --stpes, 10" as "unknown flag --stpes (did you mean --steps?)".

    tyro lists the flag's value too (it cannot tell a value from a stray argument); a flag's value is left
    out, ``--flag=value`` is shown as ``--flag``, and arguments that are not flags are named as such.
    """
    tokens = [t.strip() for t in msg.split(":", 1)[1].split(",") if t.strip()]
    flags = [t.split("=", 1)[0] for t in tokens if t.startswith("-") and not _is_number(t)]
    if not flags:
        return f"unexpected argument{'s' if len(tokens) > 1 else ''} {', '.join(tokens)}"
    line = f"unknown flag{'s' if len(flags) > 1 else ''} {', '.join(flags)}"
    return line + (f" (did you mean {', '.join(guesses[:3])}?)" if guesses else "")


def _is_number(token: str) -> bool:
    try:
        float(token)
    except ValueError:
        return False
    return True


def _preset_defaults(argv: list[str]) -> tuple[RunConfig, str]:
    """Read --preset/--config ahead of tyro so the preset supplies the defaults."""
    preset, config = DEFAULT_PRESET, None
    for i, a in enumerate(argv):
        for flag in ("--preset", "--config"):
            value = None
            if a == flag and i + 1 < len(argv):
                value = argv[i + 1]
            elif a.startswith(flag + "="):
                value = a.split("=", 1)[1]
            if value is not None:
                if flag == "--preset":
                    preset = value
                else:
                    config = value
    return load_run_config(preset, config), preset


def cmd_generate(argv: list[str]) -> int:
    from .commands.batch import run_batch
    from .commands.generate import RunControl, prepare_single, resume_run, run_one
    from .prompts import read_prompts, slugify
    from .viewer.server import ViewerConfig

    run_cfg, preset = _preset_defaults(argv)
    args: GenerateArgs = _parse(
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


def cmd_fit(argv: list[str]) -> int:
    from .commands.fit import run_fit
    from .commands.generate import console
    from .files import check_output_path, ignore_in_git
    from .gaussians.ply import load_ply, save_ply
    from .hub import pick_device
    from .run.runs import claim_run_folder

    args: FitArgs = _parse(FitArgs, argv, "splatvlm fit")
    run_cfg = args.run.run_config()
    output = check_output_path(args.output, args.overwrite, suffixes=(".ply",))
    for name in ("views", "heldout", "resolution", "batch"):
        if getattr(args, name) <= 0:
            raise SplatVLMError(f"--{name} must be positive, got {getattr(args, name)}")
    from .config import validate_run_config

    validate_run_config(run_cfg)
    reference = load_ply(args.reference)
    run_dir = Path(args.run_dir or output.with_name(output.stem + "_run"))
    new_folder = not run_dir.exists()
    claim_run_folder(run_dir)  # made now, or a run folder of ours: never a folder of other files
    if new_folder:
        ignore_in_git(run_dir)
    device = pick_device(run_cfg.device)
    params, metrics = run_fit(
        reference, run_cfg, run_dir, device, args.views, args.heldout, args.resolution, args.batch
    )
    save_ply(params, output)
    from .files import atomic_write_text

    atomic_write_text(run_dir / "summary.json", json.dumps(metrics, indent=2))
    console.print(f"wrote {output} ({metrics['num_gaussians']} Gaussians) in {metrics['seconds']:.1f} s")
    print(f"held-out PSNR: {metrics['heldout_psnr']:.2f} dB (train {metrics['train_psnr']:.2f} dB)")
    return 0


def cmd_render(argv: list[str]) -> int:
    from .files import check_output_path
    from .gaussians.ply import load_ply
    from .hub import pick_device
    from .outputs.export import export_render

    args: RenderArgs = _parse(RenderArgs, argv, "splatvlm render")
    if (args.output is None) == (args.gpteval3d is None):
        raise SplatVLMError("give one of -o OUT (.gif/.mp4/.png) or --gpteval3d DIR")
    output = None
    if args.output is not None:
        output = check_output_path(args.output, args.overwrite, suffixes=(".gif", ".mp4", ".png"))
    frames = (
        args.frames
        if args.frames is not None
        else (8 if output is not None and output.suffix == ".png" else 60)
    )
    resolution = (
        args.resolution if args.resolution is not None else (512 if args.gpteval3d is not None else 256)
    )
    if frames <= 0 or resolution <= 0 or args.fps <= 0:
        raise SplatVLMError("--frames, --resolution and --fps must be positive")
    params = load_ply(args.input)
    device = pick_device(args.device)
    if args.gpteval3d is not None:
        from .files import check_output_dir
        from .outputs.export import export_gpteval3d

        folder = args.gpteval3d / args.method / str(args.prompt_id) / str(args.seed)
        if folder.is_dir() and any(folder.iterdir()) and not args.overwrite:
            raise SplatVLMError(f"{folder} already holds renders; pass --overwrite to replace them")
        args.gpteval3d.parent.mkdir(parents=True, exist_ok=True)
        check_output_dir(args.gpteval3d)
        folder = export_gpteval3d(
            params.to(device), args.gpteval3d, args.method, args.prompt_id, args.seed,
            device=device, resolution=resolution, elevation=args.elevation,
        )  # fmt: skip
        print(f"wrote {folder} (120 views)")
        return 0
    cam_cfg = replace(CameraConfig(), eval_elevation=args.elevation)
    export_render(
        params.to(device), output, frames, resolution, cam_cfg, RenderConfig(), device, fps=args.fps
    )
    print(f"wrote {output}")
    return 0


def cmd_mesh(argv: list[str]) -> int:
    from .files import check_output_path
    from .gaussians.ply import load_ply
    from .outputs.mesh import check_mesh_config, check_mesh_output, export_mesh

    args: MeshArgs = _parse(MeshArgs, argv, "splatvlm mesh")
    check_mesh_config(args.mesh)
    output = check_output_path(args.output, args.overwrite)
    check_mesh_output(output, args.mesh, args.overwrite)
    summary = export_mesh(load_ply(args.input), output, args.mesh)
    print(
        f"wrote {output} ({summary['vertices']:,} vertices, {summary['faces']:,} triangles, "
        f"{'watertight' if summary['watertight'] else 'not watertight'}) in {summary['total_s'] + summary['write_s']:.1f} s"
    )
    return 0


def cmd_view(argv: list[str]) -> int:
    from .commands.view import view_ply
    from .viewer.server import ViewerConfig

    args: ViewArgs = _parse(ViewArgs, argv, "splatvlm view")
    if not 0 < args.port < 65536:
        raise SplatVLMError(f"--port must be in 1..65535, got {args.port}")
    view_ply(args.input, ViewerConfig(enabled=True, host=args.host, port=args.port, share=args.share))
    return 0


def cmd_studio(argv: list[str]) -> int:
    from .studio.app import StudioConfig, serve

    serve(_parse(StudioConfig, argv, "splatvlm studio"))
    return 0


def cmd_train_reward(argv: list[str]) -> int:
    from .commands.train_reward import TrainRewardConfig, train_reward

    args = _parse(TrainRewardConfig, argv, "splatvlm train-reward")
    train_reward(args)
    return 0


def cmd_bench(argv: list[str]) -> int:
    from .commands.bench import BenchArgs, run_bench

    run_cfg, preset = _preset_defaults(argv)
    args = _parse(BenchArgs, argv, "splatvlm bench", BenchArgs(preset=preset, recipe=run_cfg))
    run_bench(args)
    return 0


def cmd_toyworld(argv: list[str]) -> int:
    """`toyworld build` (re)trains the shipped toy models; `toyworld eval` scores the toy presets."""
    if argv and argv[0] in ("-h", "--help"):
        print(TOYWORLD_USAGE, end="")
        return 0
    if not argv or argv[0] not in ("build", "eval"):
        raise SplatVLMError("usage: splatvlm toyworld {build,eval} [ARGS] (see splatvlm toyworld --help)")
    if argv[0] == "build":
        from .toyworld.build import build
        from .toyworld.models import BuildConfig

        build(_parse(BuildConfig, argv[1:], "splatvlm toyworld build"))
    else:
        from .toyworld.eval import EvalConfig, run_eval

        run_eval(_parse(EvalConfig, argv[1:], "splatvlm toyworld eval"), argv[1:])
    return 0


TOYWORLD_USAGE = """usage: splatvlm toyworld {build,eval} [ARGS]  (splatvlm toyworld build --help, ... eval --help)

The toy world: procedural objects (colored ellipsoids and boxes, each with a caption) and two small
shipped models trained on their renders, a prior and a reward, so that recipes can be scored against a
ground truth on a CPU, without downloading weights.

  build   (re)train the shipped toy models
  eval    generate the toy objects with each toy preset and score them against their ground truth
"""


def cmd_presets(argv: list[str]) -> int:
    args: PresetsArgs = _parse(PresetsArgs, argv, "splatvlm presets")
    if args.name is not None:
        print(to_yaml(load_run_config(args.name)), end="")
        return 0
    names = list_presets()
    width = max(len(n) for n in names)
    for name in names:
        tag = " (default)" if name == DEFAULT_PRESET else ""
        print(f"{name:<{width}}  {preset_description(name)}{tag}")
    return 0


COMMANDS = {
    "generate": cmd_generate,
    "fit": cmd_fit,
    "render": cmd_render,
    "mesh": cmd_mesh,
    "view": cmd_view,
    "studio": cmd_studio,
    "train-reward": cmd_train_reward,
    "bench": cmd_bench,
    "presets": cmd_presets,
    "toyworld": cmd_toyworld,
}

USAGE = """usage: splatvlm [--verbose] COMMAND [ARGS]  (COMMAND --help: its common flags; --help-all: every one)

  --verbose     also show the model libraries' progress bars, info logs and deprecation warnings

commands:
  generate      text prompt(s) -> 3D Gaussian splat .ply (VLM3D: MVDream SDS + Qwen2.5-VL reward)
  fit           fit a fresh scene to orbit renders of a reference .ply (held-out PSNR)
  render        turntable .gif/.mp4 or contact-sheet .png of a .ply
  mesh          export a .ply as a colored mesh (.glb / .obj / .ply)
  view          serve a .ply (splats or mesh) or a .glb/.obj in the browser
  studio        a local web app: queue prompts, watch them form live, download the assets
  train-reward  fine-tune a LoRA adapter for the reward VLM on labeled renders
  bench         speed benchmark over a prompt set (GPTEval3D format)
  toyworld      toy-world benchmark: build (train the toy models), eval (score the toy presets)
  presets       list presets, or print one resolved (splatvlm presets vlm3d)
"""


# What to type next, for the situations the library reports by kind (its messages name no flags).
ADVICE = {
    "out_of_memory": "; try fewer views (--camera.num-views 4), a lower reward resolution (--vlm.size 224), the 3B VLM "
    "(--preset vlm3d-3b), or --vlm.gradient-checkpointing, then --resume",
    "bad_steps": ". Lower the learning rates or the reward weight and --resume",
}


def advice(e: BaseException) -> str:
    return ADVICE.get(getattr(e, "kind", None) or "", "")


def quiet_libraries() -> None:
    """No loading/saving progress bars, info logs or deprecation warnings from the model libraries.

    Hub lookups that fail offline are reported by our own one-line errors. ``--verbose`` keeps all of it.
    Environment variables first: transformers and huggingface_hub read them when they are imported.
    """
    import logging
    import os
    import warnings

    from .hub import QUIET_ENV

    for name, value in QUIET_ENV:
        os.environ.setdefault(name, value)
    for name in ("huggingface_hub", "transformers", "diffusers", "peft"):
        logging.getLogger(name).setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    for module in (
        "transformers",
        "diffusers",
    ):  # already imported (an embedding program): switch their bars off
        lib = sys.modules.get(module)
        if lib is not None:
            lib.utils.logging.disable_progress_bar()


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    verbose = "--verbose" in argv
    argv = [a for a in argv if a != "--verbose"]
    if not verbose:
        quiet_libraries()
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE, end="")
        return 0 if argv else 2
    if argv[0] in ("-V", "--version"):
        from . import __version__

        print(__version__)
        return 0
    command = COMMANDS.get(argv[0])
    if command is None:
        print(f"error: unknown command '{argv[0]}'; choose one of {', '.join(COMMANDS)}", file=sys.stderr)
        return 2
    try:
        return command(argv[1:])
    except SplatVLMError as e:
        print(f"error: {e}{advice(e)}", file=sys.stderr)
        return 2
    except StopRun as e:
        print(f"stopped: {e}{advice(e)}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except OSError as e:  # a full disk, a read-only folder, ...: the path and the errno, not a traceback
        from .files import os_error_line
        from .hub import cache_dir_path

        msg = os_error_line(e)
        if e.filename and str(e.filename).startswith(str(cache_dir_path())):
            msg += "; set SPLATVLM_CACHE to a writable folder"
        print(f"error: {msg}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
