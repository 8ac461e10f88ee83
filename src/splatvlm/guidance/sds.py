"""Score distillation (SDS) from a diffusion prior: MVDream's 4-view model or Stable Diffusion.

One step: renders [C, H, W, 3] -> VAE latents (with grad) -> one timestep shared by all views ->
noisy latents -> UNet with classifier-free guidance (no grad) -> a detached target -> an MSE whose
gradient on the latents is the SDS gradient. Two targets:
- ``mode="x0"`` (threestudio-mvdream, VLM3D): the target is the CFG reconstruction of x0, its std
  rescaled per object toward the unguided reconstruction's std;
- ``mode="eps"`` (DreamFusion): the target is ``z - w(t) (eps_cfg - eps)``.

Weights load lazily once through ``from_pretrained`` (HF id or local folder), from MVDream's original
.pt checkpoint (see ``mvdream.py``), or from tiny random ``demo`` models built from config and saved
under the user cache on first use.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from pickle import UnpicklingError
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from ..errors import SplatVLMError
from ..gaussians.cameras import Cameras
from ..models import DType, cache_dir, hf_offline, hub_reachable, is_local, missing_weights_error, pick_dtype
from .graphs import GraphedGrad, surrogate_loss

# threestudio-mvdream's negative prompt, which the VLM3D recipe inherits (a hyperparameter value).
DEFAULT_NEGATIVE_PROMPT = (
    "ugly, bad anatomy, blurry, pixelated obscure, unnatural colors, poor lighting, dull, and unclear, "
    "cropped, lowres, low quality, artifacts, duplicate, morbid, mutilated, poorly drawn face, deformed, "
    "dehydrated, bad proportions"
)


@dataclass
class SDSConfig:
    """The diffusion prior and its score-distillation loss."""

    kind: Literal["mvdream", "sd"] = "mvdream"
    """'mvdream': the 4-view MVDream prior (VLM3D's); 'sd': a Stable Diffusion text-to-image model."""
    model: str = "ashawkey/mvdream-sd2.1-diffusers"
    """HF id or local folder of diffusers components, a path to MVDream's sd-v2.1-base-4view.pt (or an HF file
    'MVDream/MVDream/sd-v2.1-base-4view.pt'), 'demo' (tiny random models, a pipeline demo) or 'random'
    (full-size random weights, for speed tests)."""
    base_model: str = "stabilityai/stable-diffusion-2-1-base"
    """Where the text encoder, tokenizer, VAE and scheduler come from when `model` is a .pt checkpoint."""
    dtype: DType = "auto"
    """Weights dtype ('auto': bf16 on CUDA, fp32 on CPU)."""
    guidance_scale: float = 50.0
    """Classifier-free guidance scale (MVDream / VLM3D 50; VLM3D's SD-2.1 variant 100)."""
    negative_prompt: str = DEFAULT_NEGATIVE_PROMPT
    """Text of the unconditional branch of CFG."""
    view_dependent_prompts: bool = False
    """Append ', front/side/back/overhead view' by camera direction (DreamFusion; off for MVDream)."""
    mode: Literal["x0", "eps"] = "x0"
    """'x0': reconstruction target with std rescale (threestudio-mvdream, VLM3D); 'eps': classic SDS with w(t)."""
    rescale: float = 0.5
    """x0 mode: blend toward the std of the unguided reconstruction, per object (MVDream) or image (SD); 0 disables."""
    weighting: Literal["sds", "uniform", "fantasia3d"] = "sds"
    """eps mode: w(t) = 1 - alpha_bar ('sds'), 1 ('uniform'), sqrt(alpha_bar) (1 - alpha_bar) ('fantasia3d')."""
    t_min_start: float = 0.98
    """Lower end of the timestep range (fraction of the 1000 steps) at step 0."""
    t_min_end: float = 0.02
    """Lower end of the timestep range after `anneal_steps`."""
    t_max_start: float = 0.98
    """Upper end of the timestep range at step 0."""
    t_max_end: float = 0.50
    """Upper end of the timestep range after `anneal_steps`."""
    anneal_steps: int = 8000
    """Steps over which the range moves linearly from its start to its end values (0: end values at once)."""
    image_size: int = 0
    """Renders are resized to this square size before the VAE (0: the model's native size, 256 for MVDream,
    512 for SD-2.1-base, 64 for the demo models); latents are 1/8 of it."""
    views_per_object: int = 4
    """MVDream: consecutive views that form one object (its attention spans them); views per step must be a
    multiple."""
    attention: Literal["sdpa", "math"] = "sdpa"
    """Attention kernel: torch scaled_dot_product_attention or the explicit softmax (for comparisons)."""
    channels_last: bool = False
    """Run the UNet and VAE in channels-last memory format (often faster on CUDA)."""
    compile: bool = False
    """torch.compile the UNet (CUDA; the first steps are slow while it compiles)."""
    cuda_graph: bool = True
    """Capture the SDS step (VAE encode, noising, CFG UNet, target, and the gradient to the pixels) in one
    CUDA graph per render shape and replay it (the first step of each shape captures it); ignored on CPU.
    Read at every call."""


# ---------------------------------------------------------------------------------------------
# Math


def timestep_range(cfg: SDSConfig, step: int, num_train_timesteps: int = 1000) -> tuple[int, int]:
    """Inclusive integer timestep range at ``step``: linear from the start to the end fractions."""
    frac = 1.0 if cfg.anneal_steps <= 0 else min(max(step / cfg.anneal_steps, 0.0), 1.0)
    lo = cfg.t_min_start + (cfg.t_min_end - cfg.t_min_start) * frac
    hi = cfg.t_max_start + (cfg.t_max_end - cfg.t_max_start) * frac
    last = num_train_timesteps - 1
    return min(int(num_train_timesteps * lo), last), min(int(num_train_timesteps * hi), last)


VIEW_SUFFIXES = ("side view", "front view", "back view", "overhead view")
FRONT_DEG, BACK_DEG, OVERHEAD_DEG = 45.0, 45.0, 60.0  # DreamFusion / threestudio thresholds


def view_directions(elevation: Tensor, azimuth: Tensor) -> Tensor:
    """Index into ``VIEW_SUFFIXES`` per camera [C] (azimuth 0 = front, threestudio convention)."""
    # torch.where, not masked assignment: boolean-mask writes make the GPU wait for the CPU.
    az = (torch.remainder(azimuth + 180.0, 360.0) - 180.0).abs()
    d = torch.where(az < FRONT_DEG, 1, 0)
    d = torch.where(az > 180.0 - BACK_DEG, 2, d)
    return torch.where(elevation > OVERHEAD_DEG, 3, d).long()


def cfg_combine(eps_cond: Tensor, eps_uncond: Tensor, scale: float) -> Tensor:
    """Classifier-free guidance: uncond + scale * (cond - uncond)."""
    return eps_uncond + scale * (eps_cond - eps_uncond)


def sds_weight(alpha_bar: Tensor, weighting: str) -> Tensor:
    """w(t) of classic SDS from alpha_bar(t)."""
    if weighting == "sds":
        return 1.0 - alpha_bar
    elif weighting == "uniform":
        return torch.ones_like(alpha_bar)
    elif weighting == "fantasia3d":
        return alpha_bar.sqrt() * (1.0 - alpha_bar)
    raise ValueError(f"unknown weighting {weighting!r}")


def predict_x0(z_t: Tensor, eps: Tensor, alpha_bar: Tensor) -> Tensor:
    """x0 = (z_t - sqrt(1 - alpha_bar) eps) / sqrt(alpha_bar)."""
    return (z_t - (1.0 - alpha_bar).sqrt() * eps) / alpha_bar.sqrt()


def x0_target(
    z_t: Tensor,  # [C, 4, h, w]
    eps_cfg: Tensor,  # [C, 4, h, w]
    eps_cond: Tensor,  # [C, 4, h, w]
    alpha_bar: Tensor,  # scalar
    rescale: float,
    views: int,
) -> Tensor:
    """CFG reconstruction of x0, its std pulled toward the unguided one per object of ``views`` views."""
    x0 = predict_x0(z_t, eps_cfg, alpha_bar)
    if rescale <= 0:
        return x0
    x0_cond = predict_x0(z_t, eps_cond, alpha_bar)
    objects = x0.shape[0] // views
    x0 = x0.reshape(objects, -1)  # one row per object, so the factor broadcasts without a host sync
    factor = (x0_cond.reshape(objects, -1).std(dim=1, keepdim=True) + 1e-8) / (
        x0.std(dim=1, keepdim=True) + 1e-8
    )
    return (rescale * x0 * factor + (1.0 - rescale) * x0).reshape(z_t.shape)


def target_loss(latents: Tensor, target: Tensor) -> tuple[Tensor, Tensor]:
    """0.5 * sum((z - sg(target))^2) / C and its gradient on z, (z - target) / C."""
    grad = (latents.detach() - target) / latents.shape[0]
    loss = 0.5 * (latents - target.detach()).pow(2).sum() / latents.shape[0]
    return loss, grad


# ---------------------------------------------------------------------------------------------
# Components: full-size configs, tiny demo models, loading


SD21_VAE_CONFIG: dict = dict(
    in_channels=3,
    out_channels=3,
    down_block_types=("DownEncoderBlock2D",) * 4,
    up_block_types=("UpDecoderBlock2D",) * 4,
    block_out_channels=(128, 256, 512, 512),
    layers_per_block=2,
    act_fn="silu",
    latent_channels=4,
    norm_num_groups=32,
    sample_size=512,
    scaling_factor=0.18215,
)
SD21_TEXT_ENCODER_CONFIG: dict = dict(
    vocab_size=49408,
    hidden_size=1024,
    intermediate_size=4096,
    num_hidden_layers=23,
    num_attention_heads=16,
    max_position_embeddings=77,
    hidden_act="gelu",
    projection_dim=512,
)
SD_SCHEDULER_CONFIG: dict = dict(
    num_train_timesteps=1000,
    beta_start=0.00085,
    beta_end=0.012,
    beta_schedule="scaled_linear",
    prediction_type="epsilon",
    clip_sample=False,
    steps_offset=1,
)


@dataclass
class SDComponents:
    """The diffusers / transformers parts of a latent diffusion prior."""

    unet: torch.nn.Module
    vae: torch.nn.Module
    text_encoder: torch.nn.Module
    tokenizer: object
    scheduler: object


def _byte_chars() -> list[str]:
    # GPT-2/CLIP byte-level alphabet: printable bytes map to themselves, the rest to U+0100 onward.
    keep = (
        set(range(ord("!"), ord("~") + 1))
        | set(range(ord("¡"), ord("¬") + 1))
        | set(range(ord("®"), ord("ÿ") + 1))
    )
    out, n = [], 0
    for b in range(256):
        if b in keep:
            out.append(chr(b))
        else:
            out.append(chr(256 + n))
            n += 1
    return out


def tiny_clip_tokenizer():
    """A CLIP BPE tokenizer over single bytes only (no merges), built locally for tests and the demo."""
    from transformers import CLIPTokenizer

    chars = _byte_chars()
    vocab = {c: i for i, c in enumerate(chars)}
    vocab.update({c + "</w>": len(chars) + i for i, c in enumerate(chars)})
    vocab["<|startoftext|>"] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    return CLIPTokenizer(vocab=vocab, merges=[], model_max_length=77)


def tiny_unet_config(kind: Literal["mvdream", "sd"]) -> dict:
    """A small UNet with SD-2.1's block structure (4 levels, 2 layers each); native size 64 px."""
    from .mvdream import SD21_BASE_UNET_CONFIG, mvdream_unet_config

    small = dict(
        sample_size=8,
        block_out_channels=(32, 32, 64, 64),
        attention_head_dim=(2, 2, 4, 4),
        cross_attention_dim=32,
        norm_num_groups=8,
    )
    return mvdream_unet_config(**small) if kind == "mvdream" else dict(SD21_BASE_UNET_CONFIG, **small)


def tiny_components(kind: Literal["mvdream", "sd"], seed: int = 0) -> SDComponents:
    """Tiny random models of the real classes (seconds to build on CPU)."""
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    tokenizer = tiny_clip_tokenizer()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        unet = UNet2DConditionModel(**tiny_unet_config(kind))
        vae = AutoencoderKL(
            **dict(
                SD21_VAE_CONFIG,
                block_out_channels=(8, 16, 16, 16),
                layers_per_block=1,
                norm_num_groups=4,
                sample_size=64,
            )
        )
        text_encoder = CLIPTextModel(
            CLIPTextConfig(
                vocab_size=len(tokenizer),
                hidden_size=32,
                intermediate_size=64,
                num_hidden_layers=2,
                num_attention_heads=2,
                max_position_embeddings=77,
                hidden_act="gelu",
                projection_dim=32,
                bos_token_id=tokenizer.bos_token_id,
                eos_token_id=tokenizer.eos_token_id,
                pad_token_id=tokenizer.pad_token_id,
            )
        )
    return SDComponents(unet, vae, text_encoder, tokenizer, DDPMScheduler(**SD_SCHEDULER_CONFIG))


def random_components(
    kind: Literal["mvdream", "sd"], device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32
) -> SDComponents:
    """Full-size random-weight components (SD-2.1-base UNet/VAE/text encoder) for speed tests.

    Built directly on ``device``; the tokenizer is the tiny local one (ids stay inside the vocab).
    """
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from .mvdream import SD21_BASE_UNET_CONFIG, mvdream_unet_config

    unet_config = mvdream_unet_config() if kind == "mvdream" else dict(SD21_BASE_UNET_CONFIG)
    # nn.Module.to: diffusers' own .to warns about fp32-only modules, which these models do not have.
    with torch.device(device):
        unet = torch.nn.Module.to(UNet2DConditionModel(**unet_config), dtype=dtype)
        vae = torch.nn.Module.to(AutoencoderKL(**SD21_VAE_CONFIG), dtype=dtype)
        text_encoder = CLIPTextModel(CLIPTextConfig(**SD21_TEXT_ENCODER_CONFIG)).to(dtype)
    return SDComponents(unet, vae, text_encoder, tiny_clip_tokenizer(), DDPMScheduler(**SD_SCHEDULER_CONFIG))


def save_components(components: SDComponents, folder: str | os.PathLike) -> None:
    """Write components as a diffusers-style folder (unet/, vae/, text_encoder/, tokenizer/, scheduler/)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for name in ("unet", "vae", "text_encoder", "tokenizer", "scheduler"):
        getattr(components, name).save_pretrained(folder / name)
    index = {
        "_class_name": "StableDiffusionPipeline",
        "unet": ["diffusers", type(components.unet).__name__],
        "vae": ["diffusers", type(components.vae).__name__],
        "text_encoder": ["transformers", type(components.text_encoder).__name__],
        "tokenizer": ["transformers", type(components.tokenizer).__name__],
        "scheduler": ["diffusers", type(components.scheduler).__name__],
    }
    (folder / "model_index.json").write_text(json.dumps(index, indent=2))


@contextlib.contextmanager
def quiet_model_io():
    """Hide diffusers' and transformers' per-file progress bars while loading or saving (downloads keep theirs)."""
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    libs = (diffusers_logging, transformers_logging)
    was = [lib.is_progress_bar_enabled() for lib in libs]
    for lib in libs:
        lib.disable_progress_bar()
    try:
        yield
    finally:
        for lib, on in zip(libs, was, strict=True):
            if on:
                lib.enable_progress_bar()


DEMO_VERSION = 1


def ensure_demo_models(kind: Literal["mvdream", "sd"]) -> Path:
    """Folder of the tiny random demo models, built and saved under the user cache on first use."""
    folder = cache_dir() / "demo" / f"{kind}-v{DEMO_VERSION}"
    if (folder / "model_index.json").exists():
        return folder
    tmp = folder.parent / f".{folder.name}.tmp-{os.getpid()}"
    try:
        folder.parent.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(tmp, ignore_errors=True)
        with quiet_model_io():
            save_components(tiny_components(kind), tmp)
        if folder.exists() and not (folder / "model_index.json").exists():
            shutil.rmtree(folder)  # half-written by a crashed older run (model_index.json is written last)
        try:
            os.replace(tmp, folder)  # atomic: other processes see all of it or nothing
        except OSError:
            if not (folder / "model_index.json").exists():  # not just another process winning the race
                raise
    except OSError as e:
        raise SplatVLMError(
            f"cannot write the demo models to {folder} ({e.strerror or e}); set SPLATVLM_CACHE to a writable folder"
        ) from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return folder


_HF_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
_HF_FILE = re.compile(r"^([A-Za-z0-9][\w.-]*/[\w.-]+)/(.+\.(?:pt|pth|ckpt|bin|safetensors))$")


def _what(cfg: SDSConfig) -> str:
    return "the MVDream prior" if cfg.kind == "mvdream" else "the Stable Diffusion prior"


def _hub_reachable(timeout: float = 3.0) -> bool:
    return hub_reachable(timeout)


def _short(e: BaseException) -> str:
    text = " ".join(str(e).split())
    return f"{type(e).__name__}: {text[:160]}" if text else type(e).__name__


def _uses_base_model(cfg: SDSConfig) -> bool:
    return cfg.kind == "mvdream" and (
        os.path.isfile(os.path.expanduser(cfg.model)) or bool(_HF_FILE.match(cfg.model))
    )


def _check_local_file(path: Path, source: str, what: str, flag: str) -> None:
    if path.suffix.lower() not in (".pt", ".pth", ".ckpt", ".bin", ".safetensors"):
        raise missing_weights_error(source, what, flag, "a file must be a .pt/.ckpt/.safetensors checkpoint")
    try:
        with open(path, "rb") as f:
            head = f.read(9)
    except OSError as e:
        raise missing_weights_error(source, what, flag, f"cannot read it: {e.strerror}") from None
    zip_or_pickle = head.startswith(b"PK\x03\x04") or head.startswith(b"\x80")
    safetensors = len(head) == 9 and head[8:9] == b"{"
    if not (zip_or_pickle or safetensors):
        raise missing_weights_error(source, what, flag, "not a PyTorch or safetensors checkpoint")


def _check_local_folder(path: Path, source: str, what: str, flag: str, parts: tuple[str, ...]) -> None:
    if not os.access(path, os.R_OK | os.X_OK):
        raise missing_weights_error(source, what, flag, "folder is not readable")
    missing = [p for p in parts if not (path / p).exists()]
    if missing:
        raise missing_weights_error(source, what, flag, f"missing {', '.join(missing)}")


def _check_hub(source: str, filename: str, what: str, flag: str) -> None:
    from huggingface_hub import HfApi, try_to_load_from_cache

    repo = _HF_FILE.match(source).group(1) if _HF_FILE.match(source) else source
    if isinstance(try_to_load_from_cache(repo, filename), str):
        return
    if hf_offline():
        raise missing_weights_error(
            source, what, flag, "HF_HUB_OFFLINE is set and it is not in the local HF cache"
        )
    if not _hub_reachable():
        raise missing_weights_error(
            source, what, flag, "the HF hub is unreachable and it is not in the local HF cache"
        )
    try:
        exists = HfApi().file_exists(repo, filename)
    except Exception as e:  # gated / private / network: every hub failure means the same to the user
        raise missing_weights_error(source, what, flag, _short(e)) from None
    if not exists:
        raise missing_weights_error(source, what, flag, f"no {filename} in that repository")


COMPONENT_PARTS = (
    "text_encoder/config.json",
    "tokenizer",
    "vae/config.json",
    "scheduler/scheduler_config.json",
)


def _check_source(source: str, what: str, flag: str, parts: tuple[str, ...], allow_file: bool) -> None:
    if is_local(source):
        path = Path(os.path.expanduser(source))
        if not path.exists():
            raise missing_weights_error(source, what, flag, "no such file or folder")
        if path.is_file():
            if not allow_file:
                raise missing_weights_error(source, what, flag, "expected a folder of diffusers components")
            _check_local_file(path, source, what, flag)
        else:
            _check_local_folder(path, source, what, flag, parts)
    elif _HF_FILE.match(source) and allow_file:
        _check_hub(source, _HF_FILE.match(source).group(2), what, flag)
    elif _HF_ID.match(source):
        _check_hub(source, parts[0], what, flag)
    else:
        raise missing_weights_error(
            source, what, flag, "neither an existing path nor an HF id like owner/name"
        )


def check_config(cfg: SDSConfig) -> None:
    """Reject inconsistent settings with one clear line."""
    if cfg.views_per_object < 1:
        raise SplatVLMError(f"sds.views_per_object must be >= 1, got {cfg.views_per_object}")
    for name in ("t_min_start", "t_min_end", "t_max_start", "t_max_end", "rescale"):
        if not 0.0 <= getattr(cfg, name) <= 1.0:
            raise SplatVLMError(f"sds.{name} must be in [0, 1], got {getattr(cfg, name)}")
    if cfg.t_min_start > cfg.t_max_start or cfg.t_min_end > cfg.t_max_end:
        raise SplatVLMError("sds timestep range: t_min must not exceed t_max (at start and at end)")
    if cfg.image_size < 0 or cfg.image_size % 8 != 0:
        raise SplatVLMError(f"sds.image_size must be 0 or a positive multiple of 8, got {cfg.image_size}")
    if cfg.guidance_scale < 0:
        raise SplatVLMError(f"sds.guidance_scale must be >= 0, got {cfg.guidance_scale}")


def check_sds_source(cfg: SDSConfig) -> None:
    """Cheap check that the weights can be found (path exists and has the right files, HF id cached or
    reachable) before any heavy work; raises ``SplatVLMError`` with one line naming the source."""
    check_config(cfg)
    if cfg.model in ("demo", "random"):
        return
    what = _what(cfg)
    _check_source(
        cfg.model, what, "--sds.model", ("unet/config.json",) + COMPONENT_PARTS, cfg.kind == "mvdream"
    )
    if _uses_base_model(cfg):
        base_what = f"the text encoder, tokenizer, VAE and scheduler for {what}"
        _check_source(cfg.base_model, base_what, "--sds.base-model", COMPONENT_PARTS, allow_file=False)


def _local_files_only(*sources: str) -> bool:
    hub = [s for s in sources if not is_local(s)]
    return bool(hub) and (hf_offline() or not _hub_reachable())


def load_components(cfg: SDSConfig, dtype: torch.dtype, device: torch.device | str = "cpu") -> SDComponents:
    """Load (or build) the prior's components; any failure to find weights becomes one clear error."""
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from huggingface_hub.errors import EntryNotFoundError
    from safetensors import SafetensorError
    from transformers import CLIPTextModel, CLIPTokenizer

    from .mvdream import load_mvdream_unet

    if cfg.model == "random":
        return random_components(cfg.kind, device, dtype)
    source = str(ensure_demo_models(cfg.kind)) if cfg.model == "demo" else cfg.model
    named, what, flag = source, _what(cfg), "--sds.model"
    uses_base = _uses_base_model(cfg)
    local_only = _local_files_only(source, cfg.base_model) if uses_base else _local_files_only(source)
    try:
        if cfg.kind == "mvdream":
            m = _HF_FILE.match(source)
            if m and not is_local(source):
                from huggingface_hub import hf_hub_download

                source = hf_hub_download(m.group(1), m.group(2), local_files_only=local_only)
            unet = load_mvdream_unet(source, dtype, local_files_only=local_only)
        else:
            unet = UNet2DConditionModel.from_pretrained(
                source, subfolder="unet", torch_dtype=dtype, local_files_only=local_only
            )
        if uses_base:
            source = named = cfg.base_model
            what = f"the text encoder, tokenizer, VAE and scheduler for {what}"
            flag = "--sds.base-model"
        vae = AutoencoderKL.from_pretrained(
            source, subfolder="vae", torch_dtype=dtype, local_files_only=local_only
        )
        text_encoder = CLIPTextModel.from_pretrained(
            source, subfolder="text_encoder", dtype=dtype, local_files_only=local_only
        )
        tokenizer = CLIPTokenizer.from_pretrained(source, subfolder="tokenizer", local_files_only=local_only)
        scheduler = DDPMScheduler.from_pretrained(source, subfolder="scheduler", local_files_only=local_only)
    except SplatVLMError:
        raise
    except (
        OSError,
        ValueError,
        KeyError,
        RuntimeError,
        EntryNotFoundError,
        SafetensorError,
        UnpicklingError,
    ) as e:
        # Hub errors (OSError subclasses), bad json, wrong or truncated files: the user needs the source
        # named, not a traceback. Other exception types are bugs and keep their traceback.
        raise missing_weights_error(named, what, flag, _short(e)) from None
    return SDComponents(unet, vae, text_encoder, tokenizer, scheduler)


def prompt_token_count(tokenizer, prompt: str) -> int:
    """Tokens of ``prompt`` including the start and end tokens."""
    return len(tokenizer(prompt, truncation=False, verbose=False).input_ids)


def check_prompt_length(cfg: SDSConfig, prompts: list[str], where: list[str] = ()) -> None:
    """Reject prompts longer than the text encoder's context before any model loads (only the tokenizer).

    Where the tokenizer cannot be read here, nothing is said: loading the prior reports that clearly.
    """
    from transformers import CLIPTokenizer

    if cfg.model == "random" or not prompts:
        return
    source = str(ensure_demo_models(cfg.kind)) if cfg.model == "demo" else cfg.model
    if _uses_base_model(cfg):
        source = cfg.base_model
    try:
        with quiet_model_io():
            tokenizer = CLIPTokenizer.from_pretrained(
                source, subfolder="tokenizer", local_files_only=_local_files_only(source)
            )
    except Exception:  # noqa: BLE001 - reported by the full load with the source named
        return
    limit = tokenizer.model_max_length
    from ..prompts import token_counts

    counts = token_counts(tokenizer, list(prompts))
    for i, n in enumerate(counts):
        if n > limit:
            name = where[i] if i < len(where) else "prompt"
            raise SplatVLMError(
                f"{name} is {n} tokens long; the diffusion prior's text encoder takes at most {limit}: shorten it"
            )


# ---------------------------------------------------------------------------------------------
# The guidance term


class SDSGuidance:
    """A diffusion prior that scores rendered views; models load lazily, once.

    Usage: ``g = SDSGuidance(cfg, device); g.set_prompt("a red apple"); out = g(rgb, cams, step)``.
    """

    def __init__(self, cfg: SDSConfig, device: torch.device | str):
        check_sds_source(cfg)
        self.cfg = cfg
        self.device = torch.device(device)
        self.dtype = pick_dtype(cfg.dtype, self.device)
        self.parts: SDComponents | None = None
        self.prompt: str | None = None
        self._cond: Tensor | None = None  # [1 or 4, L, D] prompt (or per-direction prompts)
        self._uncond: Tensor | None = None  # [1, L, D] negative prompt
        self._static: dict[tuple[int, ...], dict[str, Tensor]] = {}  # CUDA-graph inputs per render shape
        self._graphed: GraphedGrad | None = None

    @property
    def is_demo(self) -> bool:
        return self.cfg.model in ("demo", "random")

    @property
    def notice(self) -> str | None:
        """A line for the run's output when the weights are random (no real quality to expect)."""
        if self.cfg.model == "demo":
            return "SDS prior: tiny demo models with random weights; a pipeline demo, not real quality"
        if self.cfg.model == "random":
            return "SDS prior: full-size models with random weights (speed test), not real quality"
        return None

    def load(self) -> SDSGuidance:
        """Load the models once (later calls return at once)."""
        if self.parts is not None:
            return self
        from .mvdream import set_multiview_attention

        with quiet_model_io():
            parts = load_components(self.cfg, self.dtype, self.device)
        if parts.scheduler.config.prediction_type != "epsilon":
            raise SplatVLMError(
                f"{self.cfg.model}: only epsilon-prediction models are supported "
                f"(got {parts.scheduler.config.prediction_type}); use e.g. stable-diffusion-2-1-base"
            )
        for m in (parts.unet, parts.vae, parts.text_encoder):
            m.eval().requires_grad_(False).to(self.device)
            if m.dtype != self.dtype:  # from_pretrained already cast; diffusers warns on a second cast
                m.to(dtype=self.dtype)
        views = self.cfg.views_per_object if self.cfg.kind == "mvdream" else 1
        set_multiview_attention(parts.unet, views, self.cfg.attention)
        if self.cfg.channels_last:
            parts.unet.to(memory_format=torch.channels_last)
            parts.vae.to(memory_format=torch.channels_last)
        if self.cfg.compile:
            parts.unet = torch.compile(parts.unet)
        self.alphas_cumprod = parts.scheduler.alphas_cumprod.to(self.device, torch.float32)  # [T]
        self.num_train_timesteps = int(parts.scheduler.config.num_train_timesteps)
        self.parts = parts
        return self

    @property
    def vae_scale_factor(self) -> int:
        return 2 ** (len(self.load().parts.vae.config.block_out_channels) - 1)

    @property
    def image_size(self) -> int:
        """Render size fed to the VAE."""
        if self.cfg.image_size:
            return self.cfg.image_size
        unet = self.load().parts.unet
        return int(getattr(unet, "_orig_mod", unet).config.sample_size) * self.vae_scale_factor

    @property
    def latent_resolution(self) -> int:
        return self.image_size // self.vae_scale_factor

    # 1. prompts ------------------------------------------------------------------------------

    @torch.no_grad()
    def encode_text(self, texts: list[str]) -> Tensor:
        """Text-encoder last hidden states [N, L, D] (SD-2's CLIP already stops at OpenCLIP's penultimate layer)."""
        parts = self.load().parts
        length = int(parts.text_encoder.config.max_position_embeddings)
        ids = parts.tokenizer(
            texts, padding="max_length", max_length=length, truncation=True, return_tensors="pt"
        )
        return parts.text_encoder(ids.input_ids.to(self.device))[0].to(self.dtype)

    def set_prompt(self, prompt: str) -> None:
        """Encode and cache the prompt (per view direction when view-dependent) and the negative prompt."""
        if prompt == self.prompt:
            return
        tokenizer = self.load().parts.tokenizer
        n, limit = prompt_token_count(tokenizer, prompt), tokenizer.model_max_length
        if n > limit:
            raise SplatVLMError(
                f"prompt is {n} tokens long; the diffusion prior's text encoder takes at most {limit}: shorten it"
            )
        texts = [prompt]
        if self.cfg.view_dependent_prompts:
            texts = [f"{prompt}, {suffix}" for suffix in VIEW_SUFFIXES]
        emb = self.encode_text(texts + [self.cfg.negative_prompt])
        self._cond, self._uncond = emb[:-1], emb[-1:]
        self.prompt = prompt

    def text_embeddings(self, cams: Cameras) -> tuple[Tensor, Tensor]:
        """Conditional and unconditional embeddings per view, each [C, L, D]."""
        if self._cond is None:
            raise RuntimeError("call set_prompt() before the first SDS step")
        if self.cfg.view_dependent_prompts:
            cond = self._cond[view_directions(cams.elevation, cams.azimuth).to(self._cond.device)]
        else:
            cond = self._cond.expand(len(cams), -1, -1)
        return cond, self._uncond.expand(len(cams), -1, -1)

    # 2. images -> latents ------------------------------------------------------------------------

    def encode_images(self, rgb: Tensor, noise: Tensor | None = None) -> Tensor:
        """Renders [C, H, W, 3] in [0, 1] -> scaled VAE latents [C, 4, h, w] (fp32, differentiable).

        A posterior sample, as threestudio(-mvdream) does, not the mean; ``noise`` [C, 4, h, w] in the
        model dtype is its standard normal draw (None: drawn here, as diffusers' ``sample()`` does).
        """
        vae = self.load().parts.vae
        x = rgb.permute(0, 3, 1, 2)
        size = self.image_size
        if x.shape[-2:] != (size, size):
            x = F.interpolate(
                x, (size, size), mode="bilinear", align_corners=False, antialias=x.shape[-1] > size
            )
        x = (x * 2.0 - 1.0).to(self.dtype)
        if self.cfg.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        posterior = vae.encode(x).latent_dist
        if noise is None:
            noise = torch.randn(
                posterior.mean.shape, device=posterior.mean.device, dtype=posterior.mean.dtype
            )
        z = (posterior.mean + posterior.std * noise) * vae.config.scaling_factor
        return z.float()

    # 3. noise prediction ---------------------------------------------------------------------------

    def camera_labels(self, cams: Cameras) -> Tensor | None:
        """MVDream's camera input for the CFG batch [2C, 16] in the model dtype; None for SD."""
        if self.cfg.kind != "mvdream":
            return None
        from .mvdream import mvdream_cameras

        return mvdream_cameras(cams).to(self.device, self.dtype).repeat(2, 1)

    @torch.no_grad()
    def unet_eps(
        self,
        z_t: Tensor,  # [C, 4, h, w]
        timesteps: Tensor,  # [2C] or [1], long
        text: Tensor,  # [2C, L, D]: cond then uncond
        class_labels: Tensor | None,  # [2C, 16] or None
    ) -> tuple[Tensor, Tensor]:
        """Conditional and unconditional eps [C, 4, h, w] from one UNet call on the CFG batch of 2C."""
        unet = self.load().parts.unet
        model_in = torch.cat([z_t, z_t]).to(self.dtype)
        if self.cfg.channels_last:
            model_in = model_in.contiguous(memory_format=torch.channels_last)
        kwargs = {} if class_labels is None else {"class_labels": class_labels}
        eps = unet(model_in, timesteps, encoder_hidden_states=text, **kwargs).sample
        eps_cond, eps_uncond = eps.float().chunk(2)
        return eps_cond, eps_uncond

    @torch.no_grad()
    def predict_noise(self, z_t: Tensor, t: int, cams: Cameras) -> tuple[Tensor, Tensor]:
        """Conditional and unconditional eps [C, 4, h, w] at integer timestep ``t``."""
        cond, uncond = self.text_embeddings(cams)
        timesteps = torch.full((2 * z_t.shape[0],), t, device=self.device, dtype=torch.long)
        return self.unet_eps(z_t, timesteps, torch.cat([cond, uncond]), self.camera_labels(cams))

    # 4. the loss -----------------------------------------------------------------------------

    def sample_timestep(self, step: int) -> int:
        lo, hi = timestep_range(self.cfg, step, self.num_train_timesteps)
        return int(torch.randint(lo, hi + 1, (1,)).item())

    @torch.no_grad()
    def sds_target(
        self,
        z: Tensor,  # [C, 4, h, w] latents, detached
        alpha_bar: Tensor,  # scalar
        timesteps: Tensor,  # [2C] or [1], long
        noise: Tensor,  # [C, 4, h, w]
        text: Tensor,  # [2C, L, D]
        class_labels: Tensor | None,  # [2C, 16] or None
    ) -> Tensor:
        """The detached target of the MSE: noising, CFG UNet, x0 reconstruction or eps residual.

        Capture-safe: no host sync and no branch on tensor values, so it runs inside a CUDA graph.
        """
        z_t = alpha_bar.sqrt() * z + (1.0 - alpha_bar).sqrt() * noise
        eps_cond, eps_uncond = self.unet_eps(z_t, timesteps, text, class_labels)
        eps = cfg_combine(eps_cond, eps_uncond, self.cfg.guidance_scale)
        if self.cfg.mode == "x0":
            views = self.cfg.views_per_object if self.cfg.kind == "mvdream" else 1
            return x0_target(z_t, eps, eps_cond, alpha_bar, self.cfg.rescale, views)
        grad = sds_weight(alpha_bar, self.cfg.weighting) * (eps - noise)
        return z - torch.nan_to_num(grad)

    def latent_loss(
        self, latents: Tensor, cams: Cameras, step: int, t: int | None = None, noise: Tensor | None = None
    ) -> dict[str, Tensor | float]:
        """SDS on latents [C, 4, h, w] (eager); ``t`` and ``noise`` may be fixed (tests)."""
        self.load()
        c = latents.shape[0]
        if t is None:
            t = self.sample_timestep(step)
        with torch.no_grad():
            if noise is None:
                # randn, not randn_like: the latents come out channels-last, and randn_like would lay
                # the same draws out in that order; the graph path's contiguous buffer draws these.
                noise = torch.randn(latents.shape, device=latents.device, dtype=latents.dtype)
            cond, uncond = self.text_embeddings(cams)
            timesteps = torch.full((2 * c,), t, device=self.device, dtype=torch.long)
            text = torch.cat([cond, uncond])
            target = self.sds_target(
                latents.detach(), self.alphas_cumprod[t], timesteps, noise, text, self.camera_labels(cams)
            )
        loss, grad = target_loss(latents, target)
        return {"loss_sds": loss, "sds_t": float(t), "sds_grad_norm": float(grad.norm()) if c else 0.0}

    # 5. the CUDA-graph path --------------------------------------------------------------------
    # Every per-step input lives in a static buffer per render shape, filled before each replay in
    # the same RNG order as the eager path (posterior noise, timestep, noise), so a seeded graphed
    # step draws exactly what a seeded eager step draws.

    @torch.no_grad()
    def fill_static_inputs(self, shape: tuple[int, ...], cams: Cameras, step: int) -> int:
        """Draw this step's timestep and noises into the static buffers for renders of ``shape``
        [C, H, W, 3] and copy in the text and camera embeddings; returns the timestep."""
        self.load()
        c, key = shape[0], tuple(shape)
        if key not in self._static:
            r = self.latent_resolution
            lat = (c, int(self.parts.vae.config.latent_channels), r, r)
            cond, uncond = self.text_embeddings(cams)
            self._static[key] = {
                "posterior_noise": torch.empty(lat, device=self.device, dtype=self.dtype),
                "t": torch.zeros(1, device=self.device, dtype=torch.long),
                "noise": torch.empty(lat, device=self.device, dtype=torch.float32),
                "text": torch.empty((2 * c, *cond.shape[1:]), device=self.device, dtype=cond.dtype),
            }
            if self.cfg.kind == "mvdream":
                self._static[key]["cameras"] = torch.empty((2 * c, 16), device=self.device, dtype=self.dtype)
        buf = self._static[key]
        buf["posterior_noise"].normal_()  # what torch.randn draws, in place
        t = self.sample_timestep(step)
        buf["t"].fill_(t)
        buf["noise"].normal_()
        cond, uncond = self.text_embeddings(cams)
        torch.cat([cond, uncond], out=buf["text"])  # the prompt may change between steps
        labels = self.camera_labels(cams)
        if labels is not None:
            buf["cameras"].copy_(labels)
        return t

    def static_loss(self, x: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        """The capture-safe SDS step for renders ``x`` [C, H, W, 3] on the device: (loss, {"grad_norm"}).

        Reads the timestep, noises and embeddings from the buffers ``fill_static_inputs`` filled for
        this shape; the loss equals the eager ``loss_sds`` for the same draws.
        """
        buf = self._static[tuple(x.shape)]
        latents = self.encode_images(x, buf["posterior_noise"])
        # index_select, not a 0-d tensor index, which would read the index on the host
        alpha_bar = self.alphas_cumprod.index_select(0, buf["t"]).reshape(())
        target = self.sds_target(
            latents.detach(), alpha_bar, buf["t"], buf["noise"], buf["text"], buf.get("cameras")
        )
        loss, grad = target_loss(latents, target)
        return loss, {"grad_norm": grad.norm()}

    def uses_cuda_graph(self, rgb: Tensor) -> bool:
        """Whether this call replays a CUDA graph (on CUDA, with gradients on and at least one view)."""
        return (
            self.cfg.cuda_graph
            and self.device.type == "cuda"
            and rgb.shape[0] > 0
            and torch.is_grad_enabled()
        )

    def __call__(self, rgb: Tensor, cams: Cameras, step: int) -> dict[str, Tensor | float]:
        """SDS loss for renders ``rgb`` [C, H, W, 3] in [0, 1] seen from ``cams`` at training ``step``.

        Returns ``loss_sds`` (0.5 * sum((z - sg(target))^2) / C over VAE latents z), ``sds_t`` (the
        timestep, 0..999) and ``sds_grad_norm`` (norm of d loss / d latents). MVDream needs C to be a
        multiple of ``views_per_object``, ordered view-contiguous per object.
        """
        # 1. check inputs
        if rgb.ndim != 4 or rgb.shape[-1] != 3:
            raise ValueError(f"rgb must be [C, H, W, 3], got {tuple(rgb.shape)}")
        if len(cams) != rgb.shape[0]:
            raise ValueError(f"{rgb.shape[0]} images but {len(cams)} cameras")
        if self.cfg.kind == "mvdream" and rgb.shape[0] % self.cfg.views_per_object != 0:
            raise SplatVLMError(
                f"MVDream needs views in groups of {self.cfg.views_per_object}; got {rgb.shape[0]} views per step"
            )
        if self.prompt is None:
            raise RuntimeError("call set_prompt() before the first SDS step")
        self.load()
        cams = cams.to(self.device)
        x = rgb.to(self.device)
        if self.uses_cuda_graph(x):
            # 2'. the whole step (encode, noising, CFG UNet, target, gradient to x) as one graph replay
            t = self.fill_static_inputs(tuple(x.shape), cams, step)
            if self._graphed is None:
                self._graphed = GraphedGrad(self.static_loss)
            value, grad, aux = self._graphed(x)
            loss = surrogate_loss(x, value, grad)
            return {"loss_sds": loss, "sds_t": float(t), "sds_grad_norm": float(aux["grad_norm"])}
        # 2. encode renders to latents (the gradient flows through the VAE encoder)
        latents = self.encode_images(x)
        # 3. one timestep for all views, CFG noise prediction, detached target, MSE
        return self.latent_loss(latents, cams, step)


def load_sds(cfg: SDSConfig, device: torch.device | str) -> SDSGuidance:
    """Check the source, then load the prior's models onto ``device``."""
    return SDSGuidance(cfg, device).load()
