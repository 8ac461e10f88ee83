"""A latent-diffusion prior's components (UNet, VAE, text encoder, tokenizer, scheduler) and their loading:
an HF id or a diffusers folder, MVDream's original checkpoint with ``--sds.base-model`` for the rest,
the tiny ``demo`` models or full-size ``random`` ones (``splatvlm.demo``). ``cfg`` is always an ``SDSConfig``
(not imported here: sds.py imports this module).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pickle import UnpicklingError

import torch

from ..demo import ensure_demo_models, random_components
from ..errors import SplatVLMError
from ..hub import hf_offline, hub_reachable, is_local, missing_weights_error, short_error


@dataclass
class SDComponents:
    """The diffusers / transformers parts of a latent diffusion prior."""

    unet: torch.nn.Module
    vae: torch.nn.Module
    text_encoder: torch.nn.Module
    tokenizer: object
    scheduler: object


_HF_FILE = re.compile(r"^([A-Za-z0-9][\w.-]*/[\w.-]+)/(.+\.(?:pt|pth|ckpt|bin|safetensors))$")


def _what(cfg) -> str:
    return "the MVDream prior" if cfg.kind == "mvdream" else "the Stable Diffusion prior"


def uses_base_model(cfg) -> bool:
    """Whether the text encoder, VAE and scheduler come from ``cfg.base_model`` (an original .pt UNet)."""
    return cfg.kind == "mvdream" and (
        os.path.isfile(os.path.expanduser(cfg.model)) or bool(_HF_FILE.match(cfg.model))
    )


def local_files_only(*sources: str) -> bool:
    """Load hub ids from the local HF cache only (offline, or the hub unreachable)."""
    hub = [s for s in sources if not is_local(s)]
    return bool(hub) and (hf_offline() or not hub_reachable())


def load_components(cfg, dtype: torch.dtype, device: torch.device | str = "cpu") -> SDComponents:
    """Load (or build) the prior's components; any failure to find weights becomes one clear error."""
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from huggingface_hub.errors import EntryNotFoundError
    from safetensors import SafetensorError
    from transformers import CLIPTextModel, CLIPTokenizer

    from .mvdream import load_mvdream_unet

    if cfg.model == "random":
        return SDComponents(**random_components(cfg.kind, device, dtype))
    source = str(ensure_demo_models(cfg.kind)) if cfg.model == "demo" else cfg.model
    named, what, flag = source, _what(cfg), "--sds.model"
    uses_base = uses_base_model(cfg)
    local_only = local_files_only(source, cfg.base_model) if uses_base else local_files_only(source)
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
        vae_class = AutoencoderKL
        if is_local(source):
            # The toy world's prior ships an exact, weightless autoencoder in place of an AutoencoderKL.
            from ..toyworld.autoencoder import SpaceToDepthAutoencoder, is_space_to_depth

            if is_space_to_depth(os.path.join(os.path.expanduser(source), "vae")):
                vae_class = SpaceToDepthAutoencoder
        vae = vae_class.from_pretrained(
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
        raise missing_weights_error(named, what, flag, short_error(e)) from None
    return SDComponents(unet, vae, text_encoder, tokenizer, scheduler)
