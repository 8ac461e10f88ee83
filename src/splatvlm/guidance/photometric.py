"""Photometric fitting term (L1 + SSIM) against fixed target views, used by `splatvlm fit`."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from ..errors import SplatVLMError
from ..gaussians.cameras import Cameras


def _gaussian_window(size: int, sigma: float, device: torch.device, dtype: torch.dtype) -> Tensor:
    x = torch.arange(size, device=device, dtype=dtype) - (size - 1) / 2
    g = torch.exp(-(x**2) / (2 * sigma**2))
    g = g / g.sum()
    return (g[:, None] * g[None, :])[None, None]  # [1, 1, size, size]


def ssim(a: Tensor, b: Tensor, window: int = 11, sigma: float = 1.5) -> Tensor:
    """Mean SSIM of two image batches [C, H, W, 3] in [0, 1] (Gaussian window, as in 3DGS)."""
    if a.shape != b.shape:
        raise ValueError(f"ssim needs equal shapes, got {tuple(a.shape)} and {tuple(b.shape)}")
    x, y = a.permute(0, 3, 1, 2), b.permute(0, 3, 1, 2)
    ch = x.shape[1]
    w = _gaussian_window(window, sigma, x.device, x.dtype).expand(ch, 1, window, window)
    pad = window // 2

    def blur(t: Tensor) -> Tensor:
        return F.conv2d(t, w, padding=pad, groups=ch)

    mu_x, mu_y = blur(x), blur(y)
    var_x = blur(x * x) - mu_x**2
    var_y = blur(y * y) - mu_y**2
    cov = blur(x * y) - mu_x * mu_y
    c1, c2 = 0.01**2, 0.03**2
    s = ((2 * mu_x * mu_y + c1) * (2 * cov + c2)) / ((mu_x**2 + mu_y**2 + c1) * (var_x + var_y + c2))
    return s.mean()


def psnr(a: Tensor, b: Tensor) -> float:
    mse = torch.mean((a.float() - b.float()) ** 2).item()
    return float("inf") if mse == 0 else -10.0 * torch.log10(torch.tensor(mse)).item()


class PhotometricTerm:
    """L1 and (1 - SSIM) between renders and the target views they were sampled from."""

    def __init__(self, targets: Tensor):  # [V, H, W, 3]
        if targets.ndim != 4 or targets.shape[-1] != 3:
            raise SplatVLMError(f"targets must be [V, H, W, 3], got {tuple(targets.shape)}")
        self.targets = targets

    def __call__(
        self, rgb: Tensor, cams: Cameras, step: int
    ) -> dict[str, Tensor | float]:  # rgb [C, H, W, 3]
        if cams.ids is None:
            raise SplatVLMError("the photometric term needs cameras drawn from the target view set")
        target = self.targets[cams.ids.to(self.targets.device)].to(rgb.device)
        l1 = (rgb - target).abs().mean()
        return {"loss_l1": l1, "loss_ssim": 1.0 - ssim(rgb, target), "psnr": psnr(rgb.detach(), target)}
