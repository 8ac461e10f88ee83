"""Command-line entry points: `splatvlm {generate,fit,render,view,train-reward,bench}`.

Each command is a dataclass parsed by tyro; ``--preset``/``--config`` are read first so their
values become the defaults that the other flags override. Expected errors print one line and exit 2.
"""

from __future__ import annotations

import contextlib
import io
import json
import re
import sys
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Annotated, Literal

import tyro

from .config import RunConfig, list_presets, load_run_config, to_yaml
from .errors import SplatVLMError, StopRun

DEFAULT_PRESET = "vlm3d"


@dataclass
class GenerateArgs:
    """Generate a 3D Gaussian splat from a text prompt (or a file of prompts)."""

    prompt: tyro.conf.Positional[str | None] = None
    """The text prompt."""
    output: Annotated[Path | None, tyro.conf.arg(aliases=["-o"])] = None
    """Output .ply (single prompt)."""
    preset: str = DEFAULT_PRESET
    """Named preset from configs/ (vlm3d, vlm3d-3b, mvdream, sd21, demo)."""
    config: Path | None = None
    """A YAML config file applied on top of the preset."""
    prompts: Path | None = None
    """Batch mode: a prompt file (one per line, or a JSON list as GPTEval3D ships)."""
    out_dir: Path | None = None
    """Batch mode: one run folder per prompt is made in here; finished ones are skipped on re-run."""
    resume: Path | None = None
    """Continue the run in this run folder from its checkpoint (its saved config is used)."""
    run_dir: Path | None = None
    """Run folder of a single-prompt run (default: <output stem>_run beside the output)."""
    overwrite: bool = False
    """Replace an existing output and run folder."""
    viewer: bool = False
    """Serve a live viser viewer during (and after) training."""
    host: str = "127.0.0.1"
    """Viewer address; anything but loopback exposes an unauthenticated server."""
    port: int = 8080
    """Viewer port."""
    viewer_every: int = 50
    """Steps between splat refreshes in the viewer."""
    gpteval3d: bool = False
    """Also write GPTEval3D's render folder (120 views, rgb_<i>.png and normal_<i>.png)."""
    stop_after: int | None = None
    """Stop (with a checkpoint) after this many steps in this invocation; --resume continues."""
    placement: Literal["single", "split"] = "single"
    """'split': the VLM reward on cuda:1, prior + scene + renderer on cuda:0 (torchrun: GPUs 2*LOCAL_RANK, +1).
    Under torchrun a batch's prompts are shared out over the processes (see splatvlm.distributed)."""
    run: Annotated[RunConfig, tyro.conf.arg(name="")] = field(default_factory=RunConfig)


@dataclass
class FitArgs:
    """Fit a fresh scene to orbit renders of a reference .ply and report held-out PSNR."""

    reference: tyro.conf.Positional[Path]
    """The reference .ply."""
    output: Annotated[Path, tyro.conf.arg(aliases=["-o"])]
    """Output .ply."""
    views: int = 24
    """Training views rendered from the reference."""
    heldout: int = 8
    """Held-out views for the final PSNR."""
    resolution: int = 64
    """Render size of the training and held-out views."""
    batch: int = 1
    """Views per step."""
    overwrite: bool = False
    """Replace an existing output."""
    run_dir: Path | None = None
    """Run folder (default: <output stem>_run beside the output)."""
    run: Annotated[RunConfig, tyro.conf.arg(name="")] = field(default_factory=lambda: load_run_config("fit"))


@dataclass
class RenderArgs:
    """Render a .ply as a turntable (.gif / .mp4) or a contact sheet (.png)."""

    input: tyro.conf.Positional[Path]
    """The .ply to render."""
    output: Annotated[Path, tyro.conf.arg(aliases=["-o"])]
    """Output: .gif or .mp4 (turntable) or .png (contact sheet)."""
    frames: int = 60
    """Turntable frames (views in the contact sheet)."""
    resolution: int = 256
    """Square frame size in pixels."""
    elevation: float = 15.0
    """Camera elevation in degrees."""
    fps: int = 20
    """Frames per second of a video."""
    device: str = "auto"
    """'auto', 'cuda' or 'cpu'."""
    overwrite: bool = False
    """Replace an existing output."""


@dataclass
class ViewArgs:
    """Serve a finished .ply in the browser (viser)."""

    input: tyro.conf.Positional[Path]
    """The .ply to view."""
    host: str = "127.0.0.1"
    """Address to bind; anything but loopback exposes an unauthenticated server."""
    port: int = 8080
    """Port to serve on."""


# ---------------------------------------------------------------------------------------------


def _parse(cls: type, argv: list[str], prog: str, default=None):
    """tyro, with its multi-line parse errors reduced to one line."""
    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err):
            return tyro.cli(cls, args=argv, prog=prog, default=default)
    except SystemExit as e:
        if e.code in (0, None):
            raise
        text = re.sub(r"[│╭╮╰╯─┃━]", " ", err.getvalue())
        lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
        # tyro's box: a title, the problem ("Unrecognized options: --stepz"), maybe "Perhaps you meant:" + flags.
        body = [ln for ln in lines[1:] if not ln.lower().startswith(("usage", "for full helptext", "for full help"))]
        msg = body[0] if body else (lines[0] if lines else "invalid arguments")
        if msg.endswith(":"):  # "Missing from ...:" then each missing argument with its help line
            names = [ln.split(",")[-1].strip() for ln in body[1:] if ln.startswith(("-", "PATH", "STR", "INT"))]
            msg = f"{msg} {', '.join(names)}" if names else msg[:-1]
        if "Perhaps you meant:" in body:
            flags = [ln.split()[0] for ln in body[body.index("Perhaps you meant:") + 1 :] if ln.startswith("--")]
            if flags:
                msg += f"; did you mean {', '.join(flags[:3])}?"
        raise SplatVLMError(f"{msg} (see {prog} --help)") from None


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
    from .generate import RunControl, prepare_single, resume_run, run_batch, run_one
    from .prompts import read_prompts

    run_cfg, preset = _preset_defaults(argv)
    args: GenerateArgs = _parse(GenerateArgs, argv, "splatvlm generate", GenerateArgs(preset=preset, run=run_cfg))
    control = RunControl(
        viewer=args.viewer,
        host=args.host,
        port=args.port,
        viewer_every=args.viewer_every,
        stop_after=args.stop_after,
        gpteval3d=args.gpteval3d,
        overwrite=args.overwrite,
        placement=args.placement,
    )
    _check_control(control)
    from .distributed import dist_info, require_one_process

    if args.prompts is None:
        require_one_process(dist_info(), "a single prompt or --resume")
    if args.resume is not None:
        summary = resume_run(args.resume, control)
        _print_summary([summary])
        return 0
    if args.prompts is not None:
        if args.prompt is not None or args.output is not None:
            raise SplatVLMError("batch mode takes --prompts FILE --out-dir DIR, not a prompt or -o")
        if args.out_dir is None:
            raise SplatVLMError("batch mode needs --out-dir DIR")
        summaries = run_batch(read_prompts(args.prompts), args.run, args.out_dir, control)
        _print_summary(summaries)
        return 0
    from .generate import check_sources, make_guidance

    guidance = make_guidance(args.run, control)  # devices first: a bad --placement fails before any file
    prompt, output, run_dir = prepare_single(args.prompt, args.output, args.run, control, args.run_dir)
    check_sources(args.run, [prompt])
    _demo_notice(args.run)
    summary = run_one(prompt, args.run, output, run_dir, guidance, control)
    _print_summary([summary])
    return 0


def _check_control(control) -> None:
    if not 0 < control.port < 65536:
        raise SplatVLMError(f"--port must be in 1..65535, got {control.port}")
    if control.viewer_every <= 0:
        raise SplatVLMError(f"--viewer-every must be positive, got {control.viewer_every}")
    if control.stop_after is not None and control.stop_after <= 0:
        raise SplatVLMError(f"--stop-after must be positive, got {control.stop_after}")


def _demo_notice(cfg: RunConfig) -> None:
    if cfg.sds.model == "demo" or cfg.vlm.model == "demo":
        print(
            "note: demo models are tiny and randomly initialized; this run shows the pipeline working, "
            "not real quality. Use --preset vlm3d with real weights for real assets.",
            file=sys.stderr,
        )


def _print_summary(summaries: list[dict]) -> None:
    for s in summaries:
        status = "done" if s.get("finished", True) else f"stopped at step {s.get('steps')}"
        extra = f" p_yes={s['p_yes']:.3f}" if "p_yes" in s else ""
        print(f"{status}: {s.get('output')} ({s.get('num_gaussians')} Gaussians, {s.get('seconds')} s){extra}")


def cmd_fit(argv: list[str]) -> int:
    from .files import check_output_dir, check_output_path
    from .fit import run_fit
    from .gaussians.ply import load_ply, save_ply
    from .generate import console
    from .models import pick_device

    args: FitArgs = _parse(FitArgs, argv, "splatvlm fit")
    output = check_output_path(args.output, args.overwrite, suffixes=(".ply",))
    for name in ("views", "heldout", "resolution", "batch"):
        if getattr(args, name) <= 0:
            raise SplatVLMError(f"--{name} must be positive, got {getattr(args, name)}")
    from .config import validate_run_config

    validate_run_config(args.run)
    reference = load_ply(args.reference)
    run_dir = check_output_dir(args.run_dir or output.with_name(output.stem + "_run"))
    device = pick_device(args.run.device)
    params, metrics = run_fit(
        reference, args.run, run_dir, device, args.views, args.heldout, args.resolution, args.batch
    )
    save_ply(params, output)
    from .files import atomic_write_text

    atomic_write_text(run_dir / "summary.json", json.dumps(metrics, indent=2))
    console.print(f"wrote {output} ({int(metrics['num_gaussians'])} Gaussians) in {metrics['seconds']:.1f} s")
    print(f"held-out PSNR: {metrics['heldout_psnr']:.2f} dB (train {metrics['train_psnr']:.2f} dB)")
    return 0


def cmd_render(argv: list[str]) -> int:
    from .export import export_render
    from .files import check_output_path
    from .gaussians.cameras import CameraConfig
    from .gaussians.ply import load_ply
    from .gaussians.render import RenderConfig
    from .models import pick_device

    args: RenderArgs = _parse(RenderArgs, argv, "splatvlm render")
    output = check_output_path(args.output, args.overwrite, suffixes=(".gif", ".mp4", ".png"))
    if args.frames <= 0 or args.resolution <= 0 or args.fps <= 0:
        raise SplatVLMError("--frames, --resolution and --fps must be positive")
    params = load_ply(args.input)
    device = pick_device(args.device)
    cam_cfg = replace(CameraConfig(), eval_elevation=args.elevation)
    export_render(params.to(device), output, args.frames, args.resolution, cam_cfg, RenderConfig(), device, fps=args.fps)
    print(f"wrote {output}")
    return 0


def cmd_view(argv: list[str]) -> int:
    from .viewer import ViewerConfig, view_ply

    args: ViewArgs = _parse(ViewArgs, argv, "splatvlm view")
    if not 0 < args.port < 65536:
        raise SplatVLMError(f"--port must be in 1..65535, got {args.port}")
    view_ply(args.input, ViewerConfig(enabled=True, host=args.host, port=args.port))
    return 0


def cmd_train_reward(argv: list[str]) -> int:
    from .lora import TrainRewardConfig, train_reward

    args = _parse(TrainRewardConfig, argv, "splatvlm train-reward")
    train_reward(args)
    return 0


def cmd_bench(argv: list[str]) -> int:
    from .bench import BenchArgs, run_bench

    run_cfg, preset = _preset_defaults(argv)
    args = _parse(BenchArgs, argv, "splatvlm bench", BenchArgs(preset=preset, recipe=run_cfg))
    run_bench(args)
    return 0


def cmd_toyworld(argv: list[str]) -> int:
    """`toyworld build` (re)trains the shipped toy models; `toyworld eval` scores the toy presets."""
    if not argv or argv[0] not in ("build", "eval"):
        raise SplatVLMError("usage: splatvlm toyworld {build,eval} [ARGS] (see --help of each)")
    if argv[0] == "build":
        from .toyworld.models import BuildConfig, build

        build(_parse(BuildConfig, argv[1:], "splatvlm toyworld build"))
    else:
        from .toyworld.eval import EvalConfig, run_eval

        run_eval(_parse(EvalConfig, argv[1:], "splatvlm toyworld eval"), argv[1:])
    return 0


def cmd_presets(argv: list[str]) -> int:
    """Print the presets, or one resolved preset as YAML."""
    if argv:
        print(to_yaml(load_run_config(argv[0])), end="")
    else:
        print("\n".join(list_presets()))
    return 0


COMMANDS = {
    "generate": cmd_generate,
    "fit": cmd_fit,
    "render": cmd_render,
    "view": cmd_view,
    "train-reward": cmd_train_reward,
    "bench": cmd_bench,
    "presets": cmd_presets,
    "toyworld": cmd_toyworld,
}

USAGE = """usage: splatvlm COMMAND [ARGS]  (splatvlm COMMAND --help for a command's flags)

commands:
  generate      text prompt(s) -> 3D Gaussian splat .ply (VLM3D: MVDream SDS + Qwen2.5-VL reward)
  fit           fit a fresh scene to orbit renders of a reference .ply (held-out PSNR)
  render        turntable .gif/.mp4 or contact-sheet .png of a .ply
  view          serve a .ply in the browser
  train-reward  fine-tune a LoRA adapter for the reward VLM on labeled renders
  bench         speed benchmark over a prompt set (GPTEval3D format)
  toyworld      toy-world benchmark: build (train the toy models), eval (score the toy presets)
  presets       list presets, or print one resolved (splatvlm presets vlm3d)
"""


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE, end="")
        return 0 if argv else 2
    if argv[0] in ("-V", "--version"):
        from . import __version__

        print(__version__)
        return 0
    # Hub lookups that fail offline are reported by our own one-line errors; silence the library's warnings.
    import logging

    logging.getLogger("huggingface_hub").setLevel(logging.ERROR)
    command = COMMANDS.get(argv[0])
    if command is None:
        print(f"error: unknown command '{argv[0]}'; choose one of {', '.join(COMMANDS)}", file=sys.stderr)
        return 2
    try:
        return command(argv[1:])
    except SplatVLMError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except StopRun as e:
        print(f"stopped: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
