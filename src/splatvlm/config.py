"""Run configuration: one dataclass tree, named presets in ``configs/``, the resolved config saved per run.

A preset is a YAML file of overrides on top of the dataclass defaults (``configs/<name>.yaml``);
command-line flags override the preset. Unknown keys and wrong types are rejected with one line.
"""

from __future__ import annotations

import dataclasses
import difflib
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from .errors import SplatVLMError
from .gaussians.cameras import CameraConfig
from .gaussians.densify import StrategyConfig
from .gaussians.render import RenderConfig
from .gaussians.scene import SceneConfig
from .guidance.reward import RewardConfig
from .guidance.sds import SDSConfig
from .run.schedules import Weight

PRESET_DIR = Path(__file__).resolve().parent / "configs"
NUMBER = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?")  # a float as a user types it


@dataclass
class Weights:
    """Weights of the loss terms, by name: `loss_<name>` from a term is multiplied by `<name>` here."""

    sds: Weight = field(default_factory=lambda: Weight(1.0))
    """Score distillation from the diffusion prior."""
    vlm: Weight = field(default_factory=lambda: Weight(300.0, 1.0, 10000, 10000))
    """The VLM reward loss (VLM3D: 300 -> 1 over 10000 steps, then off); with vlm_mode 'ratio', unused."""
    vlm_mode: Literal["fixed", "ratio"] = "fixed"
    """'fixed': reward loss x `vlm`; 'ratio': its pixel gradient at `vlm_ratio` x the prior's (any models)."""
    vlm_ratio: Weight = field(default_factory=lambda: Weight(1.0, None, 0, 10000))
    """vlm_mode 'ratio': the reward's pixel-gradient norm over the prior's (0: reward off)."""
    l1: Weight = field(default_factory=lambda: Weight(0.8))
    """Photometric L1 (fit only)."""
    ssim: Weight = field(default_factory=lambda: Weight(0.2))
    """Photometric 1 - SSIM (fit only)."""
    position: Weight = field(default_factory=lambda: Weight(0.0))
    """Mean distance of the Gaussians from the origin: a compact, centered object; too high shrinks it."""
    opacity: Weight = field(default_factory=lambda: Weight(0.0))
    """Sum of opacity x size over Gaussians: large Gaussians fade; grows with the count."""
    scales: Weight = field(default_factory=lambda: Weight(0.0))
    """Sum of the Gaussians' scales: smaller, sharper splats; grows with the count."""
    sparsity: Weight = field(default_factory=lambda: Weight(0.0))
    """Smooth L1 on the rendered alpha: less haze and fewer floaters; too high erodes thin parts."""
    depth_tv: Weight = field(default_factory=lambda: Weight(0.0))
    """Total variation of the rendered depth on opaque pixels: smoother surfaces; renders depth."""
    normal_smooth: Weight = field(default_factory=lambda: Weight(0.0))
    """Smoothness of the depth normals: fewer bumps, less fine detail; renders depth."""


@dataclass
class RunConfig:
    """Everything a training run needs; saved as config.yaml in the run folder."""

    steps: int = 2000
    """Training steps."""
    seed: int = 0
    """Random seed (cameras, initialization, diffusion noise)."""
    device: str = "auto"
    """'auto' (CUDA when available), 'cuda', 'cuda:1' or 'cpu'."""
    background: Literal["white", "black", "random", "learned"] = "random"
    """A solid color per step: 'random': random or white; 'learned': random or a learned color (VLM3D)."""
    background_lr: float = 1e-3
    """Adam learning rate of the learned background color."""
    scene: SceneConfig = field(default_factory=SceneConfig)
    camera: CameraConfig = field(default_factory=CameraConfig)
    render: RenderConfig = field(default_factory=RenderConfig)
    strategy: StrategyConfig = field(default_factory=StrategyConfig)
    sds: SDSConfig = field(default_factory=SDSConfig)
    vlm: RewardConfig = field(default_factory=RewardConfig)
    weights: Weights = field(default_factory=Weights)
    log_every: int = 10
    """Steps between progress-bar / JSONL log updates."""
    parallel_terms: bool = True
    """On CUDA, run a step's loss terms on their own streams so the prior and the reward overlap (they are
    independent given the renders): faster, the same result; ignored on CPU."""
    long_pole_priority: bool = True
    """With parallel_terms, run the reward (the step's longest term) on a high-priority stream: its kernels get
    the GPU first and the prior's fill the gaps, which shortens the step a little; the same result."""
    checkpoint_every: int = 500
    """Steps between checkpoints (0: only at the end and on interrupt)."""
    max_bad_steps: int = 20
    """Stop (with a checkpoint) after this many consecutive steps with a NaN/inf loss or gradient."""
    turntable_frames: int = 60
    """Frames of the turntable written at the end (0: none)."""
    turntable_resolution: int = 256
    """Resolution of the turntable and contact sheet."""
    tensorboard: bool = False
    """Also log scalars to TensorBoard (needs the tensorboard package)."""


# ---------------------------------------------------------------------------------------------
# Presets and validation


def preset_path(name: str) -> Path:
    path = PRESET_DIR / f"{name}.yaml"
    if not path.is_file():
        names = ", ".join(sorted(p.stem for p in PRESET_DIR.glob("*.yaml")))
        raise SplatVLMError(f"unknown preset '{name}'; choose one of: {names}")
    return path


def list_presets() -> list[str]:
    return sorted(p.stem for p in PRESET_DIR.glob("*.yaml"))


MAX_CONFIG_BYTES = 1 << 20
MAX_CONFIG_NODES = 100_000  # values after YAML aliases are expanded (an alias bomb expands exponentially)


def _expanded_size(data: Any, memo: dict[int, int], depth: int = 0) -> int:
    """How many values ``data`` holds once aliases are expanded (shared objects counted per use)."""
    if depth > 100:
        return MAX_CONFIG_NODES + 1
    if not isinstance(data, dict | list):
        return 1
    key = id(data)
    if key not in memo:
        memo[key] = MAX_CONFIG_NODES + 1  # a cycle (a recursive alias) is too big as well
        children = list(data.values()) + list(data.keys()) if isinstance(data, dict) else data
        total = 1
        for child in children:
            total += _expanded_size(child, memo, depth + 1)
            if total > MAX_CONFIG_NODES:
                break
        memo[key] = total
    return memo[key]


def short_repr(value: Any, limit: int = 80) -> str:
    """repr() for error messages, bounded however large (or aliased) ``value`` is."""
    import reprlib

    r = reprlib.Repr()
    r.maxlevel, r.maxlist, r.maxdict, r.maxstring, r.maxother = 2, 4, 4, limit, limit
    text = r.repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def preset_help() -> str:
    """The --preset flag's help: every preset by name."""
    return f"Named preset from configs/: {', '.join(list_presets())} (`splatvlm presets` describes each)."


def preset_description(name: str) -> str:
    """A preset's one-line description: the first line of its YAML file, a comment."""
    first = preset_path(name).read_text(encoding="utf-8").splitlines()[0]
    if not first.startswith("#"):
        raise SplatVLMError(f"preset {name} has no description comment on its first line")
    return first.lstrip("#").strip()


def read_yaml(path: str | Path) -> dict[str, Any]:
    from .files import check_regular_file

    path = Path(path)
    if path.exists():
        check_regular_file(path, "config file")
        if path.stat().st_size > MAX_CONFIG_BYTES:
            raise SplatVLMError(
                f"config file {path} is larger than {MAX_CONFIG_BYTES >> 20} MB; not a run config"
            )
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise SplatVLMError(f"config file {path} does not exist") from None
    except UnicodeDecodeError:
        raise SplatVLMError(f"config file {path} is not UTF-8 text") from None
    except OSError as e:
        raise SplatVLMError(f"cannot read config file {path}: {e.strerror}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        raise SplatVLMError(f"config file {path} is not valid YAML{where}") from None
    except RecursionError:
        raise SplatVLMError(f"config file {path} is nested too deeply") from None
    if data is None:
        return {}
    if _expanded_size(data, {}) > MAX_CONFIG_NODES:
        raise SplatVLMError(
            f"config file {path} expands to more than {MAX_CONFIG_NODES:,} values (YAML aliases); not a run config"
        )
    if not isinstance(data, dict):
        raise SplatVLMError(f"config file {path} must hold a mapping of keys, not {type(data).__name__}")
    return data


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Check ``value`` against the annotation ``tp`` (the subset our configs use) and convert it."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, key)
            except SplatVLMError as e:
                errors.append(e)
        raise SplatVLMError(
            f"config key '{key}' has the wrong type: {short_repr(value)} is not {_type_name(tp)}"
        )
    if origin is Literal:
        if value not in args:
            raise SplatVLMError(f"config key '{key}' must be one of {list(args)}, got {short_repr(value)}")
        return value
    if origin in (tuple, list):
        if not isinstance(value, list | tuple):
            raise SplatVLMError(f"config key '{key}' must be a list, got {short_repr(value)}")
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(value) != len(args):
                raise SplatVLMError(f"config key '{key}' must have {len(args)} items, got {len(value)}")
            return tuple(_coerce(v, a, key) for v, a in zip(value, args, strict=True))
        inner = args[0] if args else Any
        out = [_coerce(v, inner, key) for v in value]
        return tuple(out) if origin is tuple else out
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise SplatVLMError(f"config key '{key}' must be a mapping, got {short_repr(value)}")
        return apply_overrides(tp(), value, prefix=f"{key}.")
    if tp is bool:
        if not isinstance(value, bool):
            raise SplatVLMError(f"config key '{key}' must be true or false, got {short_repr(value)}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise SplatVLMError(f"config key '{key}' must be an integer, got {short_repr(value)}")
        return value
    if tp is float:
        if isinstance(value, str) and NUMBER.fullmatch(value.strip()):
            value = float(value)  # YAML 1.1 reads 1e-3 (no dot) as a string
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise SplatVLMError(f"config key '{key}' must be a number, got {short_repr(value)}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise SplatVLMError(f"config key '{key}' must be a string, got {short_repr(value)}")
        return value
    if tp is Path:
        if not isinstance(value, str):
            raise SplatVLMError(f"config key '{key}' must be a path string, got {short_repr(value)}")
        return Path(value)
    raise SplatVLMError(f"config key '{key}' has an unsupported type {_type_name(tp)}")


def nest_dotted(dotted: dict[str, Any]) -> dict[str, Any]:
    """``{"sds.compile": False}`` -> ``{"sds": {"compile": False}}``, the nested form ``apply_overrides`` takes."""
    nested: dict[str, Any] = {}
    for path, value in dotted.items():
        *parents, leaf = path.split(".")
        node = nested
        for key in parents:
            node = node.setdefault(key, {})
        node[leaf] = value
    return nested


def apply_set(cfg: Any, items: list[str]) -> Any:
    """``cfg`` with each ``KEY=YAML`` of ``items`` applied in order (dotted keys, as ``--set`` takes them)."""
    for item in items:
        key, sep, value = item.partition("=")
        if not sep:
            raise SplatVLMError(f"--set needs KEY=VALUE, got {item!r}")
        cfg = apply_overrides(cfg, nest_dotted({key: yaml.safe_load(value)}))
    return cfg


def apply_overrides(cfg: Any, overrides: dict[str, Any], prefix: str = "") -> Any:
    """Return a copy of dataclass ``cfg`` with nested ``overrides`` applied and type-checked."""
    hints = typing.get_type_hints(type(cfg))
    names = {f.name for f in dataclasses.fields(cfg)}
    changes = {}
    for key, value in overrides.items():
        if not isinstance(key, str) or key not in names:
            close = difflib.get_close_matches(str(key), sorted(names), n=1)
            hint = f"; did you mean '{prefix + close[0]}'?" if close else ""
            raise SplatVLMError(f"unknown config key {prefix + str(key)!r}{hint}")
        tp = hints[key]
        current = getattr(cfg, key)
        if dataclasses.is_dataclass(current) and isinstance(value, dict) and not isinstance(current, Weight):
            changes[key] = apply_overrides(current, value, prefix=f"{prefix}{key}.")
        else:
            changes[key] = _coerce(value, tp, f"{prefix}{key}")
    return dataclasses.replace(cfg, **changes)


def load_run_config(preset: str | None = None, config_file: str | Path | None = None) -> RunConfig:
    """Defaults, then a named preset, then a user config file.

    Sections merge key by key, except a weight schedule (`weights.<name>`), which a file replaces
    whole: `vlm: {start: 0.0}` means "off", not "start at 0 and ramp to the default end".
    """
    cfg = RunConfig()
    if preset is not None:
        cfg = apply_overrides(cfg, read_yaml(preset_path(preset)))
    if config_file is not None:
        cfg = apply_overrides(cfg, read_yaml(config_file))
    return cfg


def to_dict(cfg: Any) -> dict[str, Any]:
    def convert(v: Any) -> Any:
        if isinstance(v, Path):
            return str(v)
        if isinstance(v, tuple | list):
            return [convert(x) for x in v]
        if isinstance(v, dict):
            return {k: convert(x) for k, x in v.items()}
        return v

    return convert(dataclasses.asdict(cfg))


def to_yaml(cfg: Any) -> str:
    return yaml.safe_dump(to_dict(cfg), sort_keys=False)


def validate_run_config(cfg: RunConfig) -> None:
    """Value checks that types alone cannot express; one line each, before any heavy work."""
    if cfg.steps <= 0:
        raise SplatVLMError(f"--steps must be positive, got {cfg.steps}")
    if not 0 <= cfg.seed < 2**63:  # torch.manual_seed and numpy take 64-bit seeds
        raise SplatVLMError(f"--seed must be in 0..2**63-1, got {short_repr(cfg.seed, 40)}")
    if cfg.scene.num_points <= 0:
        raise SplatVLMError(
            f"--scene.num-points must be positive, got {short_repr(cfg.scene.num_points, 40)}"
        )
    from .resources import check_scene_fits

    check_scene_fits(cfg.scene.num_points)
    cam = cfg.camera
    for name in ("num_views", "resolution", "low_res_views", "low_res", "views_per_group"):
        if getattr(cam, name) <= 0:
            raise SplatVLMError(f"--camera.{name} must be positive, got {getattr(cam, name)}")
    for name in ("num_views", "low_res_views"):
        if getattr(cam, name) % cam.views_per_group:
            raise SplatVLMError(
                f"--camera.{name} ({getattr(cam, name)}) must be a multiple of "
                f"--camera.views_per_group ({cam.views_per_group})"
            )
    if cfg.log_every <= 0:
        raise SplatVLMError(f"--log-every must be positive, got {cfg.log_every}")
    if cfg.checkpoint_every < 0:
        raise SplatVLMError(f"--checkpoint-every must be >= 0, got {cfg.checkpoint_every}")
    if cfg.max_bad_steps <= 0:
        raise SplatVLMError(f"--max-bad-steps must be positive, got {cfg.max_bad_steps}")
    if cfg.turntable_frames < 0 or cfg.turntable_resolution <= 0:
        raise SplatVLMError("--turntable-frames must be >= 0 and --turntable-resolution positive")
    if cfg.vlm.every <= 0:
        raise SplatVLMError(f"--vlm.every must be positive, got {cfg.vlm.every}")
    if cfg.vlm.num_views <= 0 or cfg.vlm.size <= 0:
        raise SplatVLMError("--vlm.num-views and --vlm.size must be positive")
    if not 0.0 <= cfg.render.shading_after <= 1.0:
        raise SplatVLMError(f"--render.shading-after must be in [0, 1], got {cfg.render.shading_after}")
    if not cfg.scene.lr_means_decay > 0:
        raise SplatVLMError(f"--scene.lr-means-decay must be positive, got {cfg.scene.lr_means_decay}")
    lo, hi = cam.elevation_range
    if cam.elevation_sampling == "mixed" and not -90.0 <= lo <= hi <= 90.0:
        raise SplatVLMError(f"--camera.elevation-sampling mixed needs -90 <= lo <= hi <= 90, got {lo}, {hi}")
    for flag, ok, rule, value in _value_rules(cfg):
        if not ok:  # NaN fails every rule: each compares
            raise SplatVLMError(f"--{flag} must be {rule}, got {short_repr(value, 40)}")


def _value_rules(cfg: RunConfig) -> list[tuple[str, bool, str, Any]]:
    """(flag, holds, rule, value) for the sizes and ranges a run's settings must keep (a config.yaml edited
    before --resume is held to them as a new run's flags are)."""
    r, sc, cam, st = cfg.render, cfg.scene, cfg.camera, cfg.strategy
    rules = [
        ("render.torch-chunk", r.torch_chunk > 0, "positive", r.torch_chunk),
        ("render.near-plane", r.near_plane > 0, "positive", r.near_plane),
        ("render.far-plane", r.far_plane > r.near_plane, "more than --render.near-plane", r.far_plane),
        ("render.eps2d", r.eps2d >= 0, ">= 0", r.eps2d),
        ("render.radius-clip", r.radius_clip >= 0, ">= 0", r.radius_clip),
        ("scene.radius", sc.radius > 0, "positive", sc.radius),
        ("scene.opacity", 0 < sc.opacity < 1, "in (0, 1)", sc.opacity),
        ("scene.scale", sc.scale >= 0, ">= 0 (0: from the spacing)", sc.scale),
        ("scene.sh-degree", 0 <= sc.sh_degree <= 3, "in 0..3", sc.sh_degree),
        ("scene.color-noise", sc.color_noise >= 0, ">= 0", sc.color_noise),
        ("scene.color", all(0 <= c <= 1 for c in sc.color), "in [0, 1] per channel", sc.color),
        ("camera.low-res-until", cam.low_res_until >= 0, ">= 0", cam.low_res_until),
        ("camera.eval-fovy", 0 < cam.eval_fovy < 180, "in (0, 180) degrees", cam.eval_fovy),
        ("camera.eval-distance", cam.eval_distance > 0, "positive", cam.eval_distance),
        ("strategy.refine-every", st.refine_every > 0, "positive", st.refine_every),
        ("strategy.refine-start-iter", st.refine_start_iter >= 0, ">= 0", st.refine_start_iter),
        ("strategy.cap-max", st.cap_max > 0, "positive", st.cap_max),
        ("strategy.prune-opa", 0 <= st.prune_opa < 1, "in [0, 1)", st.prune_opa),
        ("strategy.scene-scale", st.scene_scale > 0, "positive", st.scene_scale),
        ("sds.anneal-steps", cfg.sds.anneal_steps >= 0, ">= 0", cfg.sds.anneal_steps),
    ]
    for name in ("lr_means", "lr_quats", "lr_scales", "lr_opacities", "lr_means_final"):
        value = getattr(sc, name)
        rules.append((f"scene.{name.replace('_', '-')}", value >= 0, ">= 0", value))
    for name, lo_bound, hi_bound in (
        ("elevation_range", -90.0, 90.0),
        ("fovy_range", 0.0, 180.0),
        ("distance_range", 0.0, float("inf")),
    ):
        lo, hi = getattr(cam, name)
        ok = lo_bound <= lo <= hi <= hi_bound and (name == "elevation_range" or lo > 0)
        rules.append(
            (f"camera.{name.replace('_', '-')}", ok, f"low <= high within [{lo_bound}, {hi_bound}]", (lo, hi))
        )
    for name in [
        f.name for f in dataclasses.fields(cfg.weights) if isinstance(getattr(cfg.weights, f.name), Weight)
    ]:
        w = getattr(cfg.weights, name)
        rules.append((f"weights.{name}.ramp-steps", w.ramp_steps >= 0, ">= 0", w.ramp_steps))
        stop = w.stop_after
        rules.append((f"weights.{name}.stop-after", stop is None or stop >= 0, ">= 0 (or none)", stop))
        finite = all(v is None or abs(v) < float("inf") for v in (w.start, w.end))
        rules.append((f"weights.{name}", finite, "finite", (w.start, w.end)))
    return rules
