"""Command-line entry points: `splatvlm {generate,fit,render,view,studio,train-reward,bench}`.

Each command is a dataclass parsed by tyro; ``--preset``/``--config`` are read first so their
values become the defaults that the other flags override. Expected errors print one line and exit 2.
"""

from __future__ import annotations

import json
import os
import sys
from dataclasses import replace
from pathlib import Path

from .cli_args import (
    DEFAULT_PRESET,
    FitArgs,
    MeshArgs,
    PresetsArgs,
    RenderArgs,
    ViewArgs,
    parse_one_line,
    preset_defaults,
)
from .cli_generate import cmd_generate
from .config import list_presets, load_run_config, preset_description, to_yaml
from .errors import SplatVLMError, StopRun
from .gaussians.cameras import CameraConfig
from .gaussians.render import RenderConfig


def cmd_fit(argv: list[str]) -> int:
    from .commands.fit import run_fit
    from .commands.generate import console
    from .files import check_output_path, ignore_in_git
    from .gaussians.ply import load_ply, save_ply
    from .hub import pick_device
    from .run.runs import claim_run_folder

    args: FitArgs = parse_one_line(FitArgs, argv, "splatvlm fit")
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

    args: RenderArgs = parse_one_line(RenderArgs, argv, "splatvlm render")
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

    args: MeshArgs = parse_one_line(MeshArgs, argv, "splatvlm mesh")
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

    args: ViewArgs = parse_one_line(ViewArgs, argv, "splatvlm view")
    if not 0 < args.port < 65536:
        raise SplatVLMError(f"--port must be in 1..65535, got {args.port}")
    view_ply(args.input, ViewerConfig(enabled=True, host=args.host, port=args.port, share=args.share))
    return 0


def cmd_studio(argv: list[str]) -> int:
    from .studio.app import StudioConfig, serve

    serve(parse_one_line(StudioConfig, argv, "splatvlm studio"))
    return 0


def cmd_train_reward(argv: list[str]) -> int:
    from .commands.train_reward import TrainRewardConfig, train_reward

    args = parse_one_line(TrainRewardConfig, argv, "splatvlm train-reward")
    train_reward(args)
    return 0


def cmd_bench(argv: list[str]) -> int:
    from .commands.bench import BenchArgs, run_bench

    run_cfg, preset = preset_defaults(argv)
    args = parse_one_line(BenchArgs, argv, "splatvlm bench", BenchArgs(preset=preset, recipe=run_cfg))
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

        build(parse_one_line(BuildConfig, argv[1:], "splatvlm toyworld build"))
    else:
        from .toyworld.eval import EvalConfig, run_eval

        run_eval(parse_one_line(EvalConfig, argv[1:], "splatvlm toyworld eval"), argv[1:])
    return 0


TOYWORLD_USAGE = """usage: splatvlm toyworld {build,eval} [ARGS]  (splatvlm toyworld build --help, ... eval --help)

The toy world: procedural objects (colored ellipsoids and boxes, each with a caption) and two small
shipped models trained on their renders, a prior and a reward, so that recipes can be scored against a
ground truth on a CPU, without downloading weights.

  build   (re)train the shipped toy models
  eval    generate the toy objects with each toy preset and score them against their ground truth
"""


def cmd_presets(argv: list[str]) -> int:
    args: PresetsArgs = parse_one_line(PresetsArgs, argv, "splatvlm presets")
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
