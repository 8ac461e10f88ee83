"""The toy prior's exact autoencoder: 2x2 space-to-depth with one fixed affine map, no learned weights.

An image x [B, 3, H, W] in [-1, 1] becomes the latent ``space_to_depth(x) - shift`` [B, 12, H/2, W/2]; decoding
adds ``shift`` back and rearranges the channels into pixels, so decode(encode(x)) == x exactly and any latent
decodes to the image it spells out. A learned autoencoder has colors of its own (the zero latent of a barely
regularized one decodes to a saturated color, and every shrunk x0 estimate of score distillation drifts toward
it); here the latent center is ``shift``, one gray level, and a blend of latents decodes to the blend of images.
The trade-off: 4x fewer spatial positions but 3x more channels than SD's latents, and no perceptual compression.

It speaks the part of diffusers' ``AutoencoderKL`` interface that the SDS path uses (``encode().latent_dist``
with a zero-variance posterior, ``decode().sample``, ``config.scaling_factor`` / ``latent_channels`` /
``block_out_channels``, an ``encoder`` module), and saves and loads as a diffusers folder.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
import torch.nn.functional as F
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.autoencoders.autoencoder_kl import AutoencoderKLOutput
from diffusers.models.autoencoders.vae import DecoderOutput, DiagonalGaussianDistribution
from diffusers.models.modeling_utils import ModelMixin
from torch import Tensor

PATCH = 2


class _SpaceToDepth(torch.nn.Module):
    """x [B, C, H, W] -> [B, C * 4, H / 2, W / 2] minus ``shift`` (a buffer, so that ``.to`` moves it)."""

    def __init__(self, shift: float) -> None:
        super().__init__()
        self.register_buffer("shift", torch.tensor(float(shift)), persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        return F.pixel_unshuffle(x, PATCH) - self.shift.to(x.dtype)


class _DepthToSpace(torch.nn.Module):
    def __init__(self, shift: float) -> None:
        super().__init__()
        self.register_buffer("shift", torch.tensor(float(shift)), persistent=False)

    def forward(self, z: Tensor) -> Tensor:
        return F.pixel_shuffle(z + self.shift.to(z.dtype), PATCH)


class SpaceToDepthAutoencoder(ModelMixin, ConfigMixin):
    """The exact, fixed autoencoder of the toy prior (see the module docstring)."""

    config_name = "config.json"

    @register_to_config
    def __init__(
        self,
        in_channels: int = 3,
        latent_channels: int = 3 * PATCH * PATCH,
        shift: float = 0.0,
        scaling_factor: float = 1.0,
        block_out_channels: tuple[int, ...] = (3 * PATCH * PATCH, 3 * PATCH * PATCH),
    ) -> None:
        # block_out_channels only tells the SDS path the downsampling factor (2 ** (len - 1) = PATCH).
        super().__init__()
        if latent_channels != in_channels * PATCH * PATCH or len(block_out_channels) != 2:
            raise ValueError(f"a {PATCH}x{PATCH} space-to-depth has {in_channels * PATCH * PATCH} latent "
                             f"channels and 2 levels, got {latent_channels} and {len(block_out_channels)}")  # fmt: skip
        self.encoder = _SpaceToDepth(shift)
        self.decoder = _DepthToSpace(shift)

    def encode(self, x: Tensor, return_dict: bool = True) -> AutoencoderKLOutput:
        """Images [B, 3, H, W] in [-1, 1] -> a zero-variance posterior over latents [B, 12, H/2, W/2]."""
        mean = self.encoder(x)
        # logvar is unused: deterministic=True sets the posterior's std and var to zero
        dist = DiagonalGaussianDistribution(torch.cat([mean, torch.zeros_like(mean)], 1), deterministic=True)
        return AutoencoderKLOutput(latent_dist=dist) if return_dict else (dist,)

    def decode(self, z: Tensor, return_dict: bool = True) -> DecoderOutput:
        """Latents [B, 12, h, w] -> images [B, 3, 2h, 2w] (not clamped)."""
        x = self.decoder(z)
        return DecoderOutput(sample=x) if return_dict else (x,)

    def forward(self, x: Tensor) -> DecoderOutput:
        return self.decode(self.encode(x).latent_dist.mean)

    @classmethod
    def from_pretrained(cls, folder: str | Path, subfolder: str | None = None, torch_dtype=None, **_):
        """From a folder's config.json (there are no weights to read); other diffusers options are ignored."""
        model = cls.from_config(cls.load_config(Path(folder) / (subfolder or "")))
        return model.to(torch_dtype) if torch_dtype is not None else model

    def set_attn_processor(self, processor) -> None:
        """No attention here (the SDS path sets one on every autoencoder)."""


def fitted_autoencoder(images: Tensor) -> SpaceToDepthAutoencoder:
    """The autoencoder whose affine map centers and scales ``images`` [B, 3, H, W] in [-1, 1]: ``shift`` their
    mean level, ``scaling_factor`` one over the latents' std (as SD scales its latents to unit variance)."""
    shift = float(images.mean())
    return SpaceToDepthAutoencoder(
        shift=round(shift, 6), scaling_factor=round(float(1.0 / (images - shift).std()), 6)
    )


def is_space_to_depth(vae_folder: str | Path) -> bool:
    """Whether ``vae_folder``'s config.json names this autoencoder (the toy prior's folder does)."""
    path = Path(vae_folder) / "config.json"
    return (
        path.is_file() and json.loads(path.read_text()).get("_class_name") == SpaceToDepthAutoencoder.__name__
    )
