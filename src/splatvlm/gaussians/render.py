"""render(): Gaussian scene + cameras -> RGB, alpha and expected depth, through gsplat or the torch reference.

gsplat's CUDA kernels run on CUDA; ``raster_torch.rasterize_torch`` (same inputs, outputs and rules) runs
anywhere. Both return gsplat's ``info`` dict, which the densification strategies read.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

from ..errors import SplatVLMError
from .cameras import Cameras
from .raster_torch import rasterize_torch
from .scene import activated, sh0_to_rgb, sh_degree_of

Backend = Literal["gsplat", "torch"]


@dataclass
class RenderConfig:
    """How Gaussians become images."""

    backend: Literal["auto", "gsplat", "torch"] = "auto"
    """'auto': gsplat's CUDA kernels on a CUDA device, the pure-PyTorch rasterizer otherwise."""
    packed: bool = True
    """Keep only visible (camera, Gaussian) pairs (less memory); densification reads the same flag."""
    near_plane: float = 0.01
    """Gaussians closer to the camera than this (camera z) are culled."""
    far_plane: float = 1e10
    """Gaussians farther than this are culled."""
    rasterize_mode: Literal["classic", "antialiased"] = "classic"
    """'antialiased' also scales opacity by the eps2d blur's energy compensation (Mip-Splatting)."""
    eps2d: float = 0.3
    """Pixel-space variance added to every projected Gaussian (keeps sub-pixel ones visible)."""
    radius_clip: float = 0.0
    """Cull Gaussians whose projected radius is at most this many pixels."""
    absgrad: bool = False
    """Also accumulate |2D gradients| per Gaussian (AbsGS); needed when strategy.absgrad is on."""
    torch_chunk: int = 1 << 21
    """Torch backend: pixels x Gaussians evaluated at once (bounds its memory, not its result)."""
    shading: Literal["albedo", "mixed"] = "albedo"
    """Training images: 'albedo' = plain colors; 'mixed' = also diffuse-lit and textureless renders from depth
    normals (a geometry signal for both terms; renders depth, a little slower)."""
    shading_after: float = 0.25
    """With shading 'mixed': the fraction of the run rendered albedo-only before the mix starts."""


@dataclass
class RenderOutput:
    """What one render() call returns for C views."""

    rgb: Tensor  # [C, H, W, 3] composited over the background
    # [C, H, W, 1] expected camera-space depth (accumulated depth / alpha); None unless asked for
    depth: Tensor | None
    alpha: Tensor  # [C, H, W, 1] accumulated opacity
    info: dict  # gsplat's meta: means2d, radii, gaussian_ids, width, height, n_cameras, ...


def resolve_backend(cfg: RenderConfig, device: torch.device | str) -> Backend:
    """The rasterizer to use for tensors on ``device``."""
    device = torch.device(device)
    if cfg.backend == "auto":
        return "gsplat" if device.type == "cuda" else "torch"
    if cfg.backend == "gsplat":
        if device.type != "cuda":
            raise SplatVLMError(
                f"the gsplat render backend needs CUDA, but the scene is on {device.type}; "
                "use render backend 'torch' or 'auto'"
            )
        return "gsplat"
    if cfg.backend == "torch":
        return "torch"
    raise SplatVLMError(f"unknown render backend {cfg.backend!r}; use 'auto', 'gsplat' or 'torch'")


def render(
    params: torch.nn.ParameterDict,
    cams: Cameras,
    cfg: RenderConfig,
    backgrounds: Tensor | None = None,  # [C, 3]
    sh_degree: int | None = None,
    depth: bool = True,
) -> RenderOutput:
    """Render the scene from every camera in ``cams``.

    Args:
        params: scene parameters (``scene.py`` layout, pre-activation).
        cams: C cameras; moved to the scene's device.
        cfg: backend and rasterizer settings.
        backgrounds: RGB per view [C, 3] behind the Gaussians (None: black).
        sh_degree: SH bands to use (default: all the scene has); lower it for progressive SH.
        depth: also rasterize expected depth (a fourth channel). Training reads only RGB and alpha, and
            without the depth channel the rasterizer's forward and backward do a quarter less per pixel.
    """
    # 1. Check inputs.
    device = params["means"].device
    backend = resolve_backend(cfg, device)
    C = len(cams)
    degree = sh_degree_of(params)
    if sh_degree is not None:
        if not 0 <= sh_degree <= degree:
            raise SplatVLMError(f"sh_degree {sh_degree} asked for, but the scene has degree {degree}")
        degree = sh_degree
    if backgrounds is not None:
        if tuple(backgrounds.shape) != (C, 3):
            raise SplatVLMError(f"backgrounds have shape {tuple(backgrounds.shape)}, expected ({C}, 3)")
        backgrounds = backgrounds.to(device=device, dtype=params["means"].dtype)
    viewmats = cams.viewmats.to(device)  # [C, 4, 4]
    Ks = cams.Ks.to(device)  # [C, 3, 3]

    # 2. Activate parameters.
    g = activated(params)
    args = dict(
        means=g["means"],
        quats=g["quats"],
        scales=g["scales"],
        opacities=g["opacities"],
        colors=g["colors"],
        viewmats=viewmats,
        Ks=Ks,
        width=cams.width,
        height=cams.height,
        near_plane=cfg.near_plane,
        far_plane=cfg.far_plane,
        radius_clip=cfg.radius_clip,
        eps2d=cfg.eps2d,
        sh_degree=degree,
        packed=cfg.packed,
        backgrounds=backgrounds,
        render_mode="RGB+ED" if depth else "RGB",
        absgrad=cfg.absgrad,
        rasterize_mode=cfg.rasterize_mode,
    )

    # 3. Rasterize.
    if backend == "gsplat":
        import gsplat  # imported here: its first CUDA call may JIT-compile

        # gsplat 1.5.3 rejects backgrounds when packed (its shape check uses the packed means2d), so the
        # background is composited here exactly as its kernel does: color + (1 - alpha) * background.
        args["backgrounds"] = None
        if degree == 0:
            # View-independent color, as gsplat would evaluate it (SH band 0, + 0.5, clamped at 0), given as
            # RGB: gsplat's SH path inverts the view matrices with torch.inverse for the camera centers, whose
            # error check reads a flag back to the host and so made the CPU wait for the GPU every step.
            args["colors"] = sh0_to_rgb(params["sh0"][:, 0]).clamp_min(0.0)
            args["sh_degree"] = None
        colors, alphas, info = gsplat.rasterization(**args)
        if backgrounds is not None:
            rgb = colors[..., :3] + (1.0 - alphas) * backgrounds[:, None, None, :]
            colors = torch.cat([rgb, colors[..., 3:4]], dim=-1) if depth else rgb
    else:
        colors, alphas, info = rasterize_torch(**args, chunk_elems=cfg.torch_chunk)
    return RenderOutput(
        rgb=colors[..., :3], depth=colors[..., 3:4] if depth else None, alpha=alphas, info=info
    )


def normals_from_depth(
    depth: Tensor,  # [C, H, W, 1] camera-space z
    Ks: Tensor,  # [C, 3, 3]
    viewmats: Tensor,  # [C, 4, 4] world-to-camera
) -> Tensor:
    """World-space unit normals [C, H, W, 3] of the surface seen in a depth map, facing the camera.

    Pixel centers are unprojected to camera space and crossed along image x and y (central differences,
    one-sided at the border). Values where nothing was drawn are meaningless; mask them with alpha.
    """
    C, H, W, _ = depth.shape
    Ks, viewmats = Ks.to(depth), viewmats.to(depth)
    u = torch.arange(W, device=depth.device, dtype=depth.dtype) + 0.5
    v = torch.arange(H, device=depth.device, dtype=depth.dtype) + 0.5
    fx, fy = Ks[:, 0, 0, None, None], Ks[:, 1, 1, None, None]
    cx, cy = Ks[:, 0, 2, None, None], Ks[:, 1, 2, None, None]
    z = depth[..., 0]
    x = (u[None, None, :] - cx) / fx * z
    y = (v[None, :, None] - cy) / fy * z
    pts = torch.stack([x, y, z], dim=1)  # [C, 3, H, W]
    pts = torch.nn.functional.pad(pts, (1, 1, 1, 1), mode="replicate")
    d_u = pts[:, :, 1:-1, 2:] - pts[:, :, 1:-1, :-2]  # [C, 3, H, W]
    d_v = pts[:, :, 2:, 1:-1] - pts[:, :, :-2, 1:-1]
    # OpenCV axes: x right, y down, z forward, so d_v x d_u points back toward the camera.
    n_cam = torch.linalg.cross(d_v, d_u, dim=1)
    n_world = torch.einsum("cji,cjhw->chwi", viewmats[:, :3, :3], n_cam)  # R^T n
    return torch.nn.functional.normalize(n_world, dim=-1, eps=1e-12)
