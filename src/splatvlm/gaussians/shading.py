"""Shaded renders: the rasterized colors used as albedo, lit through normals taken from the rendered depth.

A geometry signal for score distillation (DreamFusion; the VLM3D authors' run): besides the plain colors a step
may show the guidance a diffuse-lit render or a textureless one (the light alone), which a painted-on texture
cannot fake. The mix follows threestudio's point-light material with soft shading: albedo only for the first part
of the run, then per step albedo (1/4), textureless (3/8) or diffuse (3/8), one choice for all views of the step;
a random ambient / diffuse split and a point light near each view's camera, shared by the views of one object.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

from .cameras import Cameras, to_device
from .render import normals_from_depth

ShadingMode = Literal["albedo", "diffuse", "textureless"]
MODES: tuple[ShadingMode, ...] = ("albedo", "diffuse", "textureless")  # a mode's index is its log code

DIFFUSE_PROB = 0.75  # P(not albedo) once the mix has started
TEXTURELESS_PROB = 0.5  # P(textureless | not albedo)
LIGHT_DISTANCE = (0.8, 1.5)  # the point light's distance from the origin, world units
LIGHT_PERTURB = 1.0  # std of the noise added to the camera position before it becomes the light's direction


@dataclass
class Lighting:
    """One step's shading: the mode, the diffuse share of the light (ambient: 1 - diffuse), the lights."""

    mode: ShadingMode
    diffuse: float = 0.0
    light_positions: Tensor | None = None  # [C, 3] world space, one per view


def sample_lighting(
    cams: Cameras, views_per_group: int, generator: torch.Generator, force: ShadingMode | None = None
) -> Lighting:
    """Draw a step's shading mode, ambient / diffuse split and lights (on the CPU generator).

    The light's direction is the camera's position plus unit Gaussian noise shared by the views of one object
    (threestudio's "dreamfusion" light sampling), its distance uniform in ``LIGHT_DISTANCE``.
    ``force``: this mode, the split and lights still drawn (tests).
    """
    draw = torch.rand(3, generator=generator, dtype=torch.float64)
    if draw[0] > DIFFUSE_PROB:
        mode: ShadingMode = "albedo"
    elif draw[1] < TEXTURELESS_PROB:
        mode = "textureless"
    else:
        mode = "diffuse"
    mode = force or mode
    groups = max(len(cams) // views_per_group, 1)
    noise = torch.randn(groups, 3, generator=generator, dtype=torch.float64)
    lo, hi = LIGHT_DISTANCE
    distance = lo + (hi - lo) * torch.rand(groups, generator=generator, dtype=torch.float64)
    per_view = len(cams) // groups
    centers = cams.c2w[:, :3, 3].double().cpu()  # [C, 3] (cameras on the host: no wait for the GPU)
    direction = torch.nn.functional.normalize(
        centers + noise.repeat_interleave(per_view, 0) * LIGHT_PERTURB, dim=-1
    )
    lights = direction * distance.repeat_interleave(per_view)[:, None]
    return Lighting(mode, float(draw[2]), lights.float())


def surface_points(
    depth: Tensor,  # [C, H, W, 1] camera-space z
    Ks: Tensor,  # [C, 3, 3]
    viewmats: Tensor,  # [C, 4, 4] world-to-camera
) -> Tensor:  # [C, H, W, 3] world space
    """The world-space point each pixel center sees at its depth."""
    C, H, W, _ = depth.shape
    Ks, viewmats = Ks.to(depth), viewmats.to(depth)
    u = torch.arange(W, device=depth.device, dtype=depth.dtype) + 0.5
    v = torch.arange(H, device=depth.device, dtype=depth.dtype) + 0.5
    z = depth[..., 0]
    x = (u[None, None, :] - Ks[:, 0, 2, None, None]) / Ks[:, 0, 0, None, None] * z
    y = (v[None, :, None] - Ks[:, 1, 2, None, None]) / Ks[:, 1, 1, None, None] * z
    cam = torch.stack([x, y, z], dim=-1)  # [C, H, W, 3]
    R, t = viewmats[:, :3, :3], viewmats[:, :3, 3]
    return torch.einsum("cji,chwj->chwi", R, cam - t[:, None, None, :])  # R^T (x - t)


def shade(
    rgb: Tensor,  # [C, H, W, 3] composited over the backgrounds
    alpha: Tensor,  # [C, H, W, 1]
    depth: Tensor | None,  # [C, H, W, 1] expected camera-space depth
    backgrounds: Tensor | None,  # [C, 3] (None: black)
    cams: Cameras,
    lighting: Lighting,
) -> Tensor:  # [C, H, W, 3]
    """The step's images under ``lighting``: ``rgb`` itself for albedo, else the lit foreground over the same
    backgrounds. The albedo is the rasterized color divided by alpha, as threestudio-3dgs's shading renderer does;
    gradients reach the geometry through the depth-derived normals."""
    if lighting.mode == "albedo":
        return rgb
    if depth is None or lighting.light_positions is None:
        raise ValueError("shading needs the rendered depth and the light positions")
    bg = torch.zeros_like(rgb[:, 0, 0]) if backgrounds is None else backgrounds.to(rgb)
    bg = bg[:, None, None, :]
    premultiplied = rgb - (1.0 - alpha) * bg
    normals = normals_from_depth(depth, cams.Ks, cams.viewmats)  # [C, H, W, 3] world, facing the camera
    points = surface_points(depth, cams.Ks, cams.viewmats)
    to_light = torch.nn.functional.normalize(
        to_device(lighting.light_positions, rgb.device).to(rgb)[:, None, None, :] - points, dim=-1, eps=1e-12
    )
    lambert = (normals * to_light).sum(-1, keepdim=True).clamp_min(0.0)
    light = (1.0 - lighting.diffuse) + lighting.diffuse * lambert  # [C, H, W, 1], gray
    if lighting.mode == "textureless":
        fg = light.expand_as(rgb)
    elif lighting.mode == "diffuse":
        fg = (premultiplied / (alpha + 1e-6)).clamp(0.0, 1.0) * light
    else:
        raise ValueError(f"unknown shading mode {lighting.mode!r}")
    return fg * alpha + (1.0 - alpha) * bg
