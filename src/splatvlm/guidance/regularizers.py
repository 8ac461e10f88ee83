"""Gaussian regularizers: losses on the scene and its render, not on what a model thinks of the images.

The first five are threestudio-3dgs's (its MVDream system): the mean distance of the Gaussians from the origin,
their opacity weighted by their (fixed) size, the sum of their scales, the rendered alpha's sparsity and the total
variation of the rendered depth over opaque pixels. The last, the smoothness of the normals taken from the depth,
is an option of ours. Each returns an unweighted ``loss_<name>``; the trainer applies ``weights.<name>``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from ..gaussians.cameras import Cameras
from ..gaussians.render import RenderOutput, normals_from_depth

WEIGHTS = ("position", "opacity", "scales", "sparsity", "depth_tv", "normal_smooth")
DEPTH_WEIGHTS = ("depth_tv", "normal_smooth")  # those that read the rendered depth
OPAQUE = 0.99  # depth TV moves only pixels at least this opaque (elsewhere the depth is detached)


def position_loss(means: Tensor) -> Tensor:  # [N, 3] -> []
    """Mean distance of the Gaussians from the origin: keeps the object centered and compact."""
    return means.norm(dim=-1).mean()


def opacity_loss(scales: Tensor, opacities: Tensor) -> Tensor:  # [N, 3] activated, [N] -> []
    """Sum over Gaussians of opacity times the (detached) norm of the scales: large Gaussians fade first.
    A sum, so it grows with the count (as the reference defines it)."""
    return (scales.detach().norm(dim=-1) * opacities).sum()


def scales_loss(scales: Tensor) -> Tensor:  # [N, 3] activated -> []
    """Sum of every Gaussian's scales: shrinks them (a sum, as the reference defines it)."""
    return scales.sum()


def sparsity_loss(alpha: Tensor) -> Tensor:  # [C, H, W, 1] -> []
    """Mean of sqrt(alpha^2 + 0.01): a smooth L1 on the rendered alpha, against haze and floaters."""
    return (alpha.square() + 0.01).sqrt().mean()


def tv(x: Tensor) -> Tensor:  # [C, H, W, K] -> []
    """threestudio's total variation: 2 (mean squared vertical + mean squared horizontal neighbor difference)."""
    dh = (x[:, 1:] - x[:, :-1]).square().mean()
    dw = (x[:, :, 1:] - x[:, :, :-1]).square().mean()
    return 2.0 * (dh + dw)


def depth_tv_loss(depth: Tensor, alpha: Tensor) -> Tensor:  # [C, H, W, 1] x2 -> []
    """Total variation of the rendered depth, its gradient reaching only opaque pixels (alpha > 0.99): flat,
    smooth surfaces without pulling the silhouette's edge toward the background."""
    opaque = alpha.detach() > OPAQUE
    return tv(torch.where(opaque, depth, depth.detach()))


def normal_smooth_loss(normals: Tensor, alpha: Tensor) -> Tensor:  # [C, H, W, 3], [C, H, W, 1] -> []
    """Squared difference of neighboring depth normals, each pair weighted by both pixels' (detached) alpha."""
    a = alpha.detach()
    dh = ((normals[:, 1:] - normals[:, :-1]).square().sum(-1, keepdim=True) * a[:, 1:] * a[:, :-1]).mean()
    dw = (
        (normals[:, :, 1:] - normals[:, :, :-1]).square().sum(-1, keepdim=True) * a[:, :, 1:] * a[:, :, :-1]
    ).mean()
    return dh + dw


def make_term(
    wanted: tuple[str, ...],
) -> Callable[[torch.nn.ParameterDict, RenderOutput, Cameras, int], dict[str, Any]]:
    """The regularizers named in ``wanted`` (the weights that are on for the run) as one loss term."""
    unknown = set(wanted) - set(WEIGHTS)
    if unknown:
        raise ValueError(f"unknown regularizers {sorted(unknown)}")

    def regularize(
        params: torch.nn.ParameterDict, out: RenderOutput, cams: Cameras, step: int
    ) -> dict[str, Any]:
        losses: dict[str, Tensor] = {}
        scales = torch.exp(params["scales"]) if {"opacity", "scales"} & set(wanted) else None
        if "position" in wanted:
            losses["loss_position"] = position_loss(params["means"])
        if "opacity" in wanted:
            losses["loss_opacity"] = opacity_loss(scales, torch.sigmoid(params["opacities"]))
        if "scales" in wanted:
            losses["loss_scales"] = scales_loss(scales)
        if "sparsity" in wanted:
            losses["loss_sparsity"] = sparsity_loss(out.alpha)
        if set(DEPTH_WEIGHTS) & set(wanted) and out.depth is None:
            raise ValueError("the depth regularizers need the rendered depth")
        if "depth_tv" in wanted:
            losses["loss_depth_tv"] = depth_tv_loss(out.depth, out.alpha)
        if "normal_smooth" in wanted:
            normals = normals_from_depth(out.depth, cams.Ks, cams.viewmats)
            losses["loss_normal_smooth"] = normal_smooth_loss(normals, out.alpha)
        return losses

    return regularize
