"""The commands' flags: one dataclass per command, parsed by tyro (every field's comment is its --help line),
with tyro's errors reduced to one line and the preset read first so that it gives the defaults."""

from __future__ import annotations

import contextlib
import dataclasses
import io
import re
import typing
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Annotated, Literal

import tyro
from tyro.constructors import ConstructorRegistry, StructConstructorSpec, StructTypeInfo

from .config import RunConfig, Weight, Weights, load_run_config, preset_help
from .errors import SplatVLMError
from .gaussians.cameras import CameraConfig
from .gaussians.densify import StrategyConfig
from .gaussians.render import RenderConfig
from .gaussians.scene import SceneConfig
from .guidance.reward import RewardConfig
from .guidance.sds import SDSConfig
from .outputs.mesh import MeshConfig

DEFAULT_PRESET = "vlm3d"


@dataclass
class GenerateArgs:
    """Generate a 3D Gaussian splat from a text prompt (or a file of prompts)."""

    prompt: Annotated[str | None, tyro.conf.Positional, tyro.conf.arg(metavar="[PROMPT]")] = None
    """The text prompt (or --prompts FILE for a batch)."""
    output: Annotated[Path | None, tyro.conf.arg(aliases=["-o"])] = None
    """Output .ply of a single prompt (default: <prompt slug>.ply here); missing folders are made."""
    preset: Annotated[str, tyro.conf.arg(help=preset_help())] = DEFAULT_PRESET
    config: Path | None = None
    """A YAML config file applied over the preset."""
    prompts: Path | None = None
    """Batch mode: a prompt file (one per line, or a JSON list as GPTEval3D ships)."""
    out_dir: Path | None = None
    """Batch mode: a run folder per prompt goes in here; finished ones are skipped on re-run."""
    resume: Path | None = None
    """Continue the run in this run folder from its checkpoint, with its saved config."""
    run_dir: Path | None = None
    """Run folder of a single prompt (default: <output stem>_run beside the output)."""
    overwrite: bool = False
    """Replace an existing output and run folder."""
    viewer: bool = False
    """Serve a live viser viewer during (and after) training."""
    viewer_share: bool = False
    """Let the viewer's "share" button open a public URL (a tunnel through share.viser.studio); off: ignored."""
    host: str = "127.0.0.1"
    """Viewer address; anything but loopback exposes an unauthenticated server."""
    port: int = 8080
    """Viewer port."""
    viewer_every: int = 50
    """Steps between splat refreshes in the viewer."""
    viewer_linger: float | None = None
    """Seconds the viewer keeps serving after training (inf: until Ctrl-C; 0: exit at once). Default: until
    Ctrl-C when run from a terminal, 0 otherwise, so that a script or pipe is not held up."""
    gpteval3d: bool = False
    """Also write GPTEval3D's 120-view render folder: in the run folder, or for a batch
    OUT_DIR/gpteval3d/<prompt file stem>/splatvlm/<index in the file>/<seed>."""
    fail_fast: bool = False
    """Batch mode: stop at the first failed prompt instead of reporting it and going on."""
    stop_after: int | None = None
    """Stop (with a checkpoint) after this many steps in this invocation; --resume continues."""
    mesh: bool = False
    """Also export a colored mesh, <output stem>.glb (batch: scene.glb per run folder); see `splatvlm mesh`."""
    mesh_resolution: int = 256
    """--mesh: marching-cubes cells along the object's longest side."""
    faces: int = 100_000
    """--mesh: decimate to at most this many triangles (0: keep all)."""
    texture: int = 0
    """--mesh: bake a UV texture of this many pixels square (0: per-vertex colors)."""
    placement: Literal["single", "split"] = "single"
    """'split': the reward on a second GPU, the rest on the first (cuda:0 and cuda:1; under torchrun, GPUs
    2*LOCAL_RANK and the next). Under torchrun a batch's prompts are shared out over the processes."""
    run: Annotated[RunConfig, tyro.conf.arg(name="")] = field(default_factory=RunConfig)


_FIT = load_run_config("fit")


@dataclass
class FitWeights:
    """Weights of the photometric terms."""

    l1: Weight = field(default_factory=lambda: _FIT.weights.l1)
    """Photometric L1."""
    ssim: Weight = field(default_factory=lambda: _FIT.weights.ssim)
    """Photometric 1 - SSIM."""


@dataclass
class FitRecipe:
    """The part of the run config that `fit` reads: the `fit` preset's values by default."""

    steps: int = _FIT.steps
    """Training steps."""
    seed: int = _FIT.seed
    """Random seed (views, initialization)."""
    device: str = _FIT.device
    """'auto' (CUDA when available), 'cuda', 'cuda:1' or 'cpu'."""
    background: Literal["white", "black", "random"] = _FIT.background
    """Background of the reference renders and of training."""
    scene: SceneConfig = field(default_factory=lambda: _FIT.scene)
    camera: CameraConfig = field(default_factory=lambda: _FIT.camera)
    render: RenderConfig = field(default_factory=lambda: _FIT.render)
    strategy: StrategyConfig = field(default_factory=lambda: _FIT.strategy)
    weights: FitWeights = field(default_factory=FitWeights)
    log_every: int = _FIT.log_every
    """Steps between progress / JSONL log updates."""
    checkpoint_every: int = _FIT.checkpoint_every
    """Steps between checkpoints (0: only at the end and on interrupt)."""
    max_bad_steps: int = _FIT.max_bad_steps
    """Stop (with a checkpoint) after this many consecutive steps with a NaN/inf loss or gradient."""
    tensorboard: bool = _FIT.tensorboard
    """Also log scalars to TensorBoard (needs the tensorboard package)."""

    def run_config(self) -> RunConfig:
        values = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "weights"}
        weights = replace(_FIT.weights, l1=self.weights.l1, ssim=self.weights.ssim)
        return replace(_FIT, **values, weights=weights)


@dataclass
class FitArgs:
    """Fit a fresh scene to orbit renders of a reference .ply and report held-out PSNR."""

    reference: tyro.conf.Positional[Path]
    """The reference .ply."""
    output: Annotated[Path, tyro.conf.arg(aliases=["-o"])]
    """Output .ply; missing folders are made."""
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
    run: Annotated[FitRecipe, tyro.conf.arg(name="")] = field(default_factory=FitRecipe)


@dataclass
class RenderArgs:
    """Render a .ply as a turntable (.gif / .mp4), a contact sheet (.png), or GPTEval3D's 120-view folder."""

    input: tyro.conf.Positional[Path]
    """The .ply to render."""
    output: Annotated[Path | None, tyro.conf.arg(aliases=["-o"])] = None
    """Output: .gif or .mp4 (turntable) or .png (contact sheet); missing folders are made."""
    gpteval3d: Path | None = None
    """Write GPTEval3D's render folder DIR/<method>/<prompt-id>/<seed>/ (rgb_<i>.png, normal_<i>.png) instead."""
    frames: int | None = None
    """Turntable frames, or views in the contact sheet (default: 60 for a video, 8 for a .png)."""
    resolution: int | None = None
    """Square frame size in pixels (default: 256; 512 for --gpteval3d, as GPTEval3D expects)."""
    elevation: float = 15.0
    """Camera elevation in degrees."""
    fps: int = 20
    """Frames per second of a video."""
    method: str = "splatvlm"
    """--gpteval3d: the method folder name."""
    prompt_id: int = 0
    """--gpteval3d: the prompt's index in GPTEval3D's prompts.json."""
    seed: int = 0
    """--gpteval3d: the seed folder name."""
    device: str = "auto"
    """'auto', 'cuda' or 'cpu'."""
    overwrite: bool = False
    """Replace an existing output."""


@dataclass
class MeshArgs:
    """Export splats (.ply) as a colored triangle mesh: .glb (y-up, as glTF), .obj (y-up) or .ply (z-up)."""

    input: tyro.conf.Positional[Path]
    """The splat .ply."""
    output: Annotated[Path, tyro.conf.arg(aliases=["-o"])]
    """Output mesh: .glb, .obj or .ply (vertex colors only)."""
    overwrite: bool = False
    """Replace an existing output."""
    mesh: Annotated[MeshConfig, tyro.conf.arg(name="")] = field(default_factory=MeshConfig)


@dataclass
class ViewArgs:
    """Serve a finished .ply in the browser (viser), or a mesh (.glb, .obj, mesh .ply)."""

    input: tyro.conf.Positional[Path]
    """The .ply (splats or mesh), .glb or .obj to view."""
    host: str = "127.0.0.1"
    """Address to bind; anything but loopback exposes an unauthenticated server."""
    port: int = 8080
    """Port to serve on."""
    share: bool = False
    """Let the viewer's "share" button open a public URL (a tunnel through share.viser.studio); off: ignored."""


# ---------------------------------------------------------------------------------------------


@dataclass
class PresetsArgs:
    """List the presets with their descriptions, or print one resolved as YAML."""

    name: tyro.conf.Positional[str | None] = None
    """A preset to print in full, resolved over the defaults (e.g. vlm3d)."""


# ---------------------------------------------------------------------------------------------
# Short help and --help-all

# The flags the default --help shows, by config class (a nested section shows when its field is listed; a
# class not listed shows every field). --help-all shows every flag: also the recipe's finer settings (the
# presets set them), the speed and memory tuning (kernels, CUDA graphs, compilation, streams, fused and padded
# GEMMs, the prompt-prefix cache: the same result up to rounding) and the experimental flags below.
SHORT_HELP: dict[type, tuple[str, ...]] = {
    GenerateArgs: (
        "prompt", "output", "preset", "config", "prompts", "out_dir", "resume", "run_dir", "overwrite",
        "viewer", "viewer_linger", "host", "port", "gpteval3d", "fail_fast", "stop_after", "mesh", "run",
    ),
    RunConfig: ("steps", "seed", "device", "camera", "strategy", "sds", "vlm", "weights"),
    CameraConfig: ("num_views", "resolution"),
    StrategyConfig: ("kind", "cap_max"),
    SDSConfig: ("kind", "model", "base_model", "guidance_scale"),
    RewardConfig: ("model", "question", "lora", "lora_weights", "gradient_checkpointing"),
    Weights: ("vlm",),
    FitRecipe: ("steps", "seed", "device", "scene", "strategy"),
    SceneConfig: ("num_points", "sh_degree"),
    MeshConfig: ("resolution", "faces", "texture", "colors", "device"),
}  # fmt: skip

# Measured and not adopted: off by default, kept so they can be measured again. --help-all marks them.
EXPERIMENTAL: dict[type, tuple[str, ...]] = {
    SDSConfig: ("channels_last",),
    RewardConfig: ("fp8", "fp8_forward", "fp8_projections", "fp8_vision"),
}
EXPERIMENTAL_TAG = "Experimental (measured, not adopted). "
HELP_ALL = "--help-all"


def _help_registry(full: bool) -> ConstructorRegistry:
    """tyro rules for --help: hide what the short help leaves out (``full`` False), tag the experimental flags,
    join a docstring's wrapped lines, and state no default where the docstring says what None means."""
    registry = ConstructorRegistry()
    inside: set[type] = set()  # types whose default rule is running (the rule asks tyro for it, then edits)

    @registry.struct_rule
    def help_fields(info: StructTypeInfo) -> StructConstructorSpec | None:
        t = info.type
        if not dataclasses.is_dataclass(t) or not isinstance(t, type) or t in inside:
            return None
        inside.add(t)
        try:
            spec = ConstructorRegistry.get_struct_spec(info)
        finally:
            inside.discard(t)
        if not isinstance(spec, StructConstructorSpec):
            return None
        shown, experimental = SHORT_HELP.get(t), EXPERIMENTAL.get(t, ())
        out = []
        for f in spec.fields:
            if not full and shown is not None and f.name not in shown:
                out.append(replace(f, type=tyro.conf.Suppress[f.type]))
            else:
                out.append(_help_field(f, f.name in experimental))
        return replace(spec, fields=tuple(out))

    return registry


_METAVARS = {str: "STR", int: "INT", float: "FLOAT", Path: "PATH"}


def _help_field(f, experimental: bool):
    """A field as --help shows it: one paragraph of help; optional values shown as their type, not {None}|T."""
    helptext = f.helptext

    def text() -> str | None:
        doc = helptext() if callable(helptext) else helptext
        if doc is None:  # a section without a field doc: tyro shows its class docstring
            return None
        doc = re.sub(r"(?<!\n)\n(?!\n)\s*", " ", doc)  # a docstring's wrapped lines are one paragraph
        return (EXPERIMENTAL_TAG if experimental else "") + doc

    conf = {}
    if f.default is None:
        conf["help_behavior_hint"] = ""  # the help says what None means
    elif isinstance(f.default, list | tuple) and not f.default:
        conf["help_behavior_hint"] = ""  # likewise an empty list
    base, *meta = typing.get_args(f.type) if typing.get_origin(f.type) is Annotated else (f.type,)
    options = typing.get_args(base)
    if len(options) == 2 and type(None) in options and not any(getattr(m, "metavar", None) for m in meta):
        other = options[0] if options[1] is type(None) else options[1]
        if other in _METAVARS:
            conf["metavar"] = _METAVARS[other]
    typ = Annotated[f.type, tyro.conf.arg(**conf)] if conf else f.type
    return replace(f, type=typ, helptext=text)


def parse_args(cls: type, argv: list[str], prog: str, default=None):
    """tyro.cli with a short --help (the flags of SHORT_HELP) and a full one under --help-all."""
    full = HELP_ALL in argv
    wants_help = full or "-h" in argv or "--help" in argv
    if not wants_help:
        return tyro.cli(cls, args=argv, prog=prog, default=default)
    argv = ["--help" if a == HELP_ALL else a for a in argv]
    doc = (cls.__doc__ or "").strip()
    note = "Every flag, the advanced ones included." if full else (
        f"The common flags; `{prog} --help-all` lists every one (the recipe's details, speed tuning, "
        "experimental flags)."
    )  # fmt: skip
    registry = _help_registry(full)
    return tyro.cli(
        cls, args=argv, prog=prog, default=default, registry=registry, description=f"{doc}\n\n{note}"
    )


def parse_one_line(cls: type, argv: list[str], prog: str, default=None):
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


def preset_defaults(argv: list[str]) -> tuple[RunConfig, str]:
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
