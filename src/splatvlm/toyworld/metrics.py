"""Scores of a result against the toy world's ground truth, from renders on the same cameras.

All images are [C, H, W, 3] in [0, 1] composited over white, alphas [C, H, W, 1].
- masked PSNR: PSNR over the pixels covered by the ground truth or the result (the white background
  that both leave empty would otherwise inflate it);
- silhouette IoU: intersection over union of the alpha > 0.5 masks;
- Janus score: seen from behind, how far the result has moved from the true back toward the Janus
  variant's back (the front feature copied onto the back). With B the ground-truth back views, J the
  Janus variant's on the same cameras and R the result's, over the pixels where J and B differ:
  ``clamp(<R - B, J - B> / |J - B|^2, 0, 1)``: 0 for the true back, 1 for a two-faced result.
"""

from __future__ import annotations

import math

from torch import Tensor

MASK_THRESHOLD = 0.5
JANUS_PIXEL_THRESHOLD = 0.1  # RGB distance at which a pixel counts as part of the front feature's footprint


def masks(alpha: Tensor) -> Tensor:  # [C, H, W] bool
    return alpha[..., 0] > MASK_THRESHOLD


def silhouette_iou(alpha: Tensor, gt_alpha: Tensor) -> float:
    a, b = masks(alpha), masks(gt_alpha)
    union = (a | b).sum()
    return 1.0 if union == 0 else float((a & b).sum() / union)


def masked_psnr(rgb: Tensor, alpha: Tensor, gt_rgb: Tensor, gt_alpha: Tensor) -> float:
    m = masks(alpha) | masks(gt_alpha)
    if not m.any():
        return float("inf")
    mse = float(((rgb - gt_rgb) ** 2)[m].mean())
    return float("inf") if mse == 0 else -10.0 * math.log10(mse)


def janus_score(rgb_back: Tensor, gt_back: Tensor, janus_back: Tensor) -> float:
    """Projection of the result's back views on the Janus direction, in [0, 1] (see the module docstring)."""
    d = janus_back - gt_back  # [C, H, W, 3]
    region = d.norm(dim=-1) > JANUS_PIXEL_THRESHOLD
    if not region.any():
        return 0.0
    d = d[region]
    r = (rgb_back - gt_back)[region]
    return float(((r * d).sum() / (d * d).sum()).clamp(0.0, 1.0))
