"""The reward's differentiable preprocessing: rendered views [C, H, W, 3] in [0, 1] -> the Qwen2-VL image
processor's ``pixel_values``, in torch so that gradients flow (an optional bicubic, antialiased resize, the
processor's mean/std, the frame repeated for the temporal patch of 2, and its exact patch layout)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

# The CLIP statistics every Qwen2-VL / Qwen2.5-VL image processor ships with.
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def resize_views(images: torch.Tensor, size: int | tuple[int, int]) -> torch.Tensor:
    """Bicubic, antialiased resize of [C, H, W, 3] views, clamped to [0, 1] (bicubic overshoots)."""
    assert images.ndim == 4 and images.shape[-1] == 3, f"expected [C, H, W, 3], got {tuple(images.shape)}"
    hw = (size, size) if isinstance(size, int) else tuple(size)
    if tuple(images.shape[1:3]) == hw:
        return images
    x = images.permute(0, 3, 1, 2)  # [C, 3, H, W]
    x = F.interpolate(x, size=hw, mode="bicubic", antialias=True, align_corners=False)
    return x.clamp(0.0, 1.0).permute(0, 2, 3, 1)


def preprocess_views(
    images: torch.Tensor,  # [C, H, W, 3] in [0, 1]
    size: int | tuple[int, int] | None = None,
    mean: Sequence[float] = CLIP_MEAN,
    std: Sequence[float] = CLIP_STD,
    patch_size: int = 14,
    merge_size: int = 2,
    temporal_patch_size: int = 2,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Views -> (pixel_values [C*gh*gw, 3*T*P*P], image_grid_thw [C, 3]), as the HF Qwen2-VL image processor.

    Differentiable. ``size`` resizes each view (bicubic, antialias) to size x size (or (h, w)); None keeps
    the input size, which must then be a multiple of patch_size * merge_size (28). Each view is one
    image: its frame is repeated for the temporal patch, and patches are ordered merge-block-major
    (the 2x2 patches of one merged token are consecutive), exactly as the HF processor lays them out.
    """
    assert images.ndim == 4 and images.shape[-1] == 3, f"expected [C, H, W, 3], got {tuple(images.shape)}"
    if size is not None:
        images = resize_views(images, size)
    n, h, w, _ = images.shape
    factor = patch_size * merge_size
    if h % factor or w % factor:
        raise ValueError(f"view size {h}x{w} is not a multiple of {factor}; pass size= to resize")
    mean_t = torch.as_tensor(mean, dtype=images.dtype, device=images.device)
    std_t = torch.as_tensor(std, dtype=images.dtype, device=images.device)
    pixel_values = patchify(images, mean_t, std_t, patch_size, merge_size, temporal_patch_size)
    gh, gw = h // patch_size, w // patch_size
    grid = torch.tensor([[1, gh, gw]] * n, dtype=torch.long, device=images.device)
    return pixel_values, grid


def patchify(
    images: torch.Tensor,  # [C, H, W, 3] in [0, 1], sides multiples of patch_size * merge_size
    mean: torch.Tensor,  # [3]
    std: torch.Tensor,  # [3]
    patch_size: int = 14,
    merge_size: int = 2,
    temporal_patch_size: int = 2,
) -> torch.Tensor:
    """Normalize and lay out views as the HF processor's pixel_values [C*gh*gw, 3*T*P*P].

    Tensor-only (mean/std are tensors on the views' device), so it can run inside a CUDA graph.
    """
    n, h, w, _ = images.shape
    x = ((images - mean) / std).permute(0, 3, 1, 2)  # [C, 3, H, W]
    gh, gw = h // patch_size, w // patch_size
    x = x.reshape(n, 3, gh // merge_size, merge_size, patch_size, gw // merge_size, merge_size, patch_size)
    # -> [C, gh/m, gw/m, m_h, m_w, 3, P, P]: merge blocks row-major, then the patches inside a block
    x = x.permute(0, 2, 5, 3, 6, 1, 4, 7)
    x = x.unsqueeze(6).expand(*x.shape[:6], temporal_patch_size, patch_size, patch_size)
    return x.reshape(n * gh * gw, 3 * temporal_patch_size * patch_size * patch_size)
