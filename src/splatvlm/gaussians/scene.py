"""Gaussian scene parameters in the layout gsplat's strategies expect.

A scene is a ``torch.nn.ParameterDict`` with pre-activation values, one optimizer per key:
  means [N, 3], quats [N, 4] (wxyz, unnormalized), scales [N, 3] (log), opacities [N] (logit),
  sh0 [N, 1, 3] (DC spherical-harmonic coefficient), shN [N, K-1, 3] with K = (degree + 1) ** 2.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from ..errors import SplatVLMError

SH_C0 = 0.28209479177387814  # Y_0^0: color = SH_C0 * sh0 + 0.5
PARAM_KEYS = ("means", "quats", "scales", "opacities", "sh0", "shN")


@dataclass
class SceneConfig:
    """Initial Gaussians and their learning rates."""

    init: str = "ball"
    """'ball' (random points in a ball) or a path to a .ply to start from."""
    num_points: int = 4096
    """Number of initial Gaussians for the ball initializer."""
    radius: float = 0.5
    """Radius of the initial ball (the object should fit in the unit sphere)."""
    color: tuple[float, float, float] = (0.5, 0.5, 0.5)
    """Initial RGB color in [0, 1]."""
    color_noise: float = 0.0
    """Std of uniform noise added to the initial colors."""
    opacity: float = 0.1
    """Initial opacity in (0, 1)."""
    scale: float = 0.0
    """Initial scale; 0 picks the mean spacing of the initial points."""
    sh_degree: int = 0
    """Spherical-harmonic degree (0-3); 0 is view-independent color, best for text-to-3D."""
    lr_means: float = 1e-3
    """Adam learning rate of the means at step 0 (decays to `lr_means_final`)."""
    lr_quats: float = 1e-3
    """Adam learning rate of the rotations (quaternions)."""
    lr_scales: float = 5e-3
    """Adam learning rate of the log-scales."""
    lr_opacities: float = 5e-2
    """Adam learning rate of the opacity logits."""
    lr_sh0: float = 1e-2
    """Adam learning rate of the base color (SH degree 0)."""
    lr_shN: float = 5e-4
    """Adam learning rate of the higher SH coefficients (view-dependent color)."""
    lr_means_final: float = 2e-5
    """Means learning rate at the end of its decay (exponential, as in 3DGS)."""
    lr_means_decay: float = 1.0
    """Fraction of the run the means' rate decays over, then stays (less: positions settle sooner)."""


def num_sh_bases(degree: int) -> int:
    return (degree + 1) ** 2


def sh_degree_of(params: torch.nn.ParameterDict) -> int:
    k = params["shN"].shape[1] + 1
    degree = round(math.sqrt(k)) - 1
    if num_sh_bases(degree) != k:
        raise SplatVLMError(f"shN has {k - 1} coefficients per channel, not a valid SH degree")
    return degree


def rgb_to_sh0(rgb: Tensor) -> Tensor:
    return (rgb - 0.5) / SH_C0


def sh0_to_rgb(sh0: Tensor) -> Tensor:
    return sh0 * SH_C0 + 0.5


def make_params(
    means: Tensor,  # [N, 3]
    quats: Tensor,  # [N, 4]
    scales: Tensor,  # [N, 3] log
    opacities: Tensor,  # [N] logit
    sh0: Tensor,  # [N, 1, 3]
    shN: Tensor,  # [N, K-1, 3]
) -> torch.nn.ParameterDict:
    n = means.shape[0]
    shapes = {
        "means": (n, 3),
        "quats": (n, 4),
        "scales": (n, 3),
        "opacities": (n,),
        "sh0": (n, 1, 3),
    }
    tensors = {
        "means": means,
        "quats": quats,
        "scales": scales,
        "opacities": opacities,
        "sh0": sh0,
        "shN": shN,
    }
    for key, shape in shapes.items():
        if tuple(tensors[key].shape) != shape:
            raise SplatVLMError(f"{key} has shape {tuple(tensors[key].shape)}, expected {shape}")
    if shN.ndim != 3 or shN.shape[0] != n or shN.shape[2] != 3:
        raise SplatVLMError(f"shN has shape {tuple(shN.shape)}, expected ({n}, K-1, 3)")
    return torch.nn.ParameterDict({k: torch.nn.Parameter(v.float().contiguous()) for k, v in tensors.items()})


def init_ball(cfg: SceneConfig, generator: torch.Generator | None = None) -> torch.nn.ParameterDict:
    """Random Gaussians uniformly inside a ball of radius ``cfg.radius``."""
    n = cfg.num_points
    if n <= 0:
        raise SplatVLMError(f"num_points must be positive, got {n}")
    if not 0.0 < cfg.opacity < 1.0:
        raise SplatVLMError(f"initial opacity must be in (0, 1), got {cfg.opacity}")
    if not 0 <= cfg.sh_degree <= 3:
        raise SplatVLMError(f"sh_degree must be 0..3, got {cfg.sh_degree}")
    direction = torch.nn.functional.normalize(torch.randn(n, 3, generator=generator), dim=-1)
    radius = cfg.radius * torch.rand(n, 1, generator=generator) ** (1.0 / 3.0)
    means = direction * radius
    # Mean spacing of n points in the ball's volume.
    scale = cfg.scale if cfg.scale > 0 else cfg.radius * (4.0 / 3.0 * math.pi / n) ** (1.0 / 3.0)
    quats = torch.zeros(n, 4)
    quats[:, 0] = 1.0
    rgb = torch.tensor(cfg.color, dtype=torch.float32).expand(n, 3).clone()
    if cfg.color_noise > 0:
        rgb = rgb + cfg.color_noise * (2 * torch.rand(n, 3, generator=generator) - 1)
    rgb = rgb.clamp(0.0, 1.0)
    return make_params(
        means=means,
        quats=quats,
        scales=torch.full((n, 3), math.log(scale)),
        opacities=torch.full((n,), math.log(cfg.opacity / (1 - cfg.opacity))),
        sh0=rgb_to_sh0(rgb)[:, None, :],
        shN=torch.zeros(n, num_sh_bases(cfg.sh_degree) - 1, 3),
    )


def init_toy(num_points: int = 3000, seed: int = 0) -> torch.nn.ParameterDict:
    """A built-in toy object (a snowman: three stacked colored spheres with a cone nose), for `fit` and tests."""
    g = torch.Generator().manual_seed(seed)
    parts = [  # center, radius, rgb, share of points
        ((0.0, 0.0, -0.25), 0.22, (0.92, 0.92, 0.95), 0.45),
        ((0.0, 0.0, 0.05), 0.16, (0.85, 0.2, 0.2), 0.3),
        ((0.0, 0.0, 0.28), 0.11, (0.2, 0.4, 0.9), 0.2),
        ((0.13, 0.0, 0.28), 0.035, (1.0, 0.55, 0.0), 0.05),
    ]
    means, colors = [], []
    for center, radius, rgb, share in parts:
        n = max(1, round(num_points * share))
        d = torch.nn.functional.normalize(torch.randn(n, 3, generator=g), dim=-1)  # on the surface
        means.append(torch.tensor(center) + radius * d)
        shade = 0.85 + 0.15 * torch.rand(n, 1, generator=g)
        colors.append(torch.tensor(rgb) * shade)
    means_t, rgb_t = torch.cat(means), torch.cat(colors).clamp(0, 1)
    n = len(means_t)
    quats = torch.nn.functional.normalize(torch.randn(n, 4, generator=g), dim=-1)
    scale = 0.6 * (4 * math.pi * 0.22**2 / n) ** 0.5  # about the spacing of points on the surfaces
    return make_params(
        means=means_t,
        quats=quats,
        scales=torch.full((n, 3), math.log(scale)) + 0.2 * torch.randn(n, 3, generator=g),
        opacities=torch.full((n,), 2.0),
        sh0=rgb_to_sh0(rgb_t)[:, None, :],
        shN=torch.zeros(n, 0, 3),
    )


def make_optimizers(params: torch.nn.ParameterDict, cfg: SceneConfig) -> dict[str, torch.optim.Optimizer]:
    """One Adam per parameter key (gsplat's strategies edit optimizer state key by key); on CUDA the fused
    kernel (one launch per step instead of a handful per key; the same update up to rounding)."""
    lrs = {
        "means": cfg.lr_means,
        "quats": cfg.lr_quats,
        "scales": cfg.lr_scales,
        "opacities": cfg.lr_opacities,
        "sh0": cfg.lr_sh0,
        "shN": cfg.lr_shN,
    }
    return {
        key: torch.optim.Adam(
            [{"params": params[key], "lr": lrs[key], "name": key}],
            eps=1e-15,
            fused=params[key].is_cuda or None,
        )
        for key in PARAM_KEYS
    }


def means_lr(cfg: SceneConfig, step: int, total_steps: int) -> float:
    """Exponential decay of the means learning rate from lr_means to lr_means_final over the first
    ``lr_means_decay`` of ``total_steps``, constant after."""
    t = min(max(step / max(cfg.lr_means_decay * total_steps, 1.0), 0.0), 1.0)
    return math.exp((1 - t) * math.log(cfg.lr_means) + t * math.log(cfg.lr_means_final))


def activated(params: torch.nn.ParameterDict) -> dict[str, Tensor]:
    """Post-activation tensors in the form gsplat's ``rasterization`` takes."""
    return {
        "means": params["means"],  # [N, 3]
        "quats": params["quats"],  # [N, 4], normalized by the rasterizer
        "scales": torch.exp(params["scales"]),  # [N, 3]
        "opacities": torch.sigmoid(params["opacities"]),  # [N]
        "colors": torch.cat([params["sh0"], params["shN"]], dim=1),  # [N, K, 3] SH coefficients
    }


def num_gaussians(params: torch.nn.ParameterDict) -> int:
    return params["means"].shape[0]
