"""Colors for an exported mesh, from the splats it came from (``mesh.py`` step 5), in one of two ways.

``rays`` (the default): each surface point is colored as a camera facing it head-on would see it. A ray
comes in along the point's normal and meets the point's nearest Gaussians; each one's alpha is its opacity
times its peak along the ray (what the rasterizer draws for a pixel on that ray), and they are composited
front to back with their view-dependent (SH) colors. No images are rendered, so it costs about the same
on a CPU as on a GPU; only the nearest Gaussians can hide a point, which is what a surface color wants.

``renders``: the splats are rendered (``gaussians.render``) from orbit cameras on rings around the object. A surface
point takes the cosine^2-weighted mean of the colors of the views that see it: a view sees it when the
point projects inside the image onto a drawn pixel (alpha > 0.5) whose rendered depth is within the
tolerance of the point's own depth, and the surface faces the camera. Points no view sees take the
colors of their nearest Gaussians. Slow on a CPU (each render draws every Gaussian).

A UV texture (xatlas unwrap) is filled the same way as the vertices, texel by texel, and padded past the charts' edges so that filtering does not bleed the background in.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from ..gaussians.cameras import Cameras, orbit_cameras
from ..gaussians.raster_torch import eval_sh, quat_to_rotmat
from ..gaussians.render import RenderConfig, render
from ..gaussians.scene import sh0_to_rgb, sh_degree_of

RING_ELEVATIONS = (-30.0, 15.0, 50.0)
POLE_ELEVATION = 85.0  # straight above would make the orbit camera's z-up "look at" degenerate
FOVY = 40.0


@dataclass
class ColorViews:
    """Renders of the splats from C cameras, for coloring."""

    cams: Cameras
    rgb: Tensor  # [C, H, W, 3] color, un-premultiplied by alpha
    depth: Tensor  # [C, H, W] expected camera-space depth
    alpha: Tensor  # [C, H, W]
    tolerance: float  # world units: how far a point may lie from the rendered depth and still be seen


def view_cameras(radius: float, views_per_ring: int, resolution: int) -> Cameras:
    """Rings of cameras at RING_ELEVATIONS plus one above and one below, framing a sphere of ``radius``."""
    el, az = [], []
    for i, e in enumerate(RING_ELEVATIONS):
        for j in range(views_per_ring):
            el.append(e)
            az.append((j + 0.5 * (i % 2)) * 360.0 / views_per_ring)
    el += [POLE_ELEVATION, -POLE_ELEVATION]
    az += [0.0, 0.0]
    n = len(el)
    distance = 1.1 * radius / math.sin(math.radians(FOVY / 2))
    return orbit_cameras(
        torch.tensor(el, dtype=torch.float64),
        torch.tensor(az, dtype=torch.float64),
        torch.full((n,), distance, dtype=torch.float64),
        torch.full((n,), FOVY, dtype=torch.float64),
        resolution,
        resolution,
    )


@torch.no_grad()
def color_views(
    params: torch.nn.ParameterDict, mesh, cfg, device: torch.device, batch: int = 4
) -> ColorViews:
    """Render the splats for coloring ``mesh`` (``cfg`` is a ``mesh.MeshConfig``)."""
    radius = float(np.linalg.norm(np.asarray(mesh.vertices), axis=1).max())
    cams = view_cameras(radius, cfg.views_per_ring, cfg.view_resolution)
    scene = params.to(device)
    rgb, depth, alpha = [], [], []
    for start in range(0, len(cams), batch):
        out = render(scene, cams[start : start + batch], RenderConfig())
        a = out.alpha[..., 0]
        rgb.append((out.rgb / out.alpha.clamp_min(1e-6)).clamp(0, 1).cpu())
        depth.append(out.depth[..., 0].cpu())
        alpha.append(a.cpu())
    return ColorViews(
        cams=cams,
        rgb=torch.cat(rgb),
        depth=torch.cat(depth),
        alpha=torch.cat(alpha),
        tolerance=cfg.depth_tolerance * radius,
    )


@torch.no_grad()
def sample_colors(
    points: np.ndarray, normals: np.ndarray, views: ColorViews, chunk: int = 1 << 20
) -> tuple[np.ndarray, np.ndarray]:
    """Colors [P, 3] in [0, 1] of surface points [P, 3] with normals [P, 3], and their total weight [P]
    (0: no view sees the point; its color is then meaningless)."""
    C, H, W, _ = views.rgb.shape
    colors = np.zeros((len(points), 3), dtype=np.float32)
    weights = np.zeros(len(points), dtype=np.float32)
    R, t = views.cams.viewmats[:, :3, :3], views.cams.viewmats[:, :3, 3]  # world-to-camera
    centers = -torch.einsum("cji,cj->ci", R, t)  # camera positions in the world
    Ks = views.cams.Ks
    images = views.rgb.permute(0, 3, 1, 2)  # [C, 3, H, W]
    for start in range(0, len(points), chunk):
        p = torch.from_numpy(np.asarray(points[start : start + chunk], dtype=np.float32))
        n = torch.nn.functional.normalize(
            torch.from_numpy(np.asarray(normals[start : start + chunk], np.float32)), dim=-1
        )
        acc = torch.zeros(len(p), 3)
        wsum = torch.zeros(len(p))
        for c in range(C):
            pc = p @ R[c].T + t[c]  # [P, 3] camera space (OpenCV)
            z = pc[:, 2]
            zs = z.clamp_min(1e-6)
            u = Ks[c, 0, 0] * pc[:, 0] / zs + Ks[c, 0, 2]
            v = Ks[c, 1, 1] * pc[:, 1] / zs + Ks[c, 1, 2]
            px, py = torch.floor(u).long(), torch.floor(v).long()
            inb = (z > 1e-4) & (px >= 0) & (px < W) & (py >= 0) & (py < H)
            pxc, pyc = px.clamp(0, W - 1), py.clamp(0, H - 1)
            seen_depth = views.depth[c, pyc, pxc]
            cos = (n * torch.nn.functional.normalize(centers[c] - p, dim=-1)).sum(-1)
            visible = (
                inb
                & (views.alpha[c, pyc, pxc] > 0.5)
                & ((z - seen_depth).abs() < views.tolerance)
                & (cos > 0)
            )
            grid = torch.stack([u / W * 2 - 1, v / H * 2 - 1], -1)[None, :, None, :]  # [1, P, 1, 2]
            col = torch.nn.functional.grid_sample(
                images[c : c + 1], grid, mode="bilinear", padding_mode="border", align_corners=False
            )[0, :, :, 0].T  # [P, 3]
            w = torch.where(visible, cos * cos, torch.zeros_like(cos))
            acc += w[:, None] * col
            wsum += w
        seen = wsum > 0
        acc[seen] /= wsum[seen, None]
        colors[start : start + len(p)] = acc.numpy()
        weights[start : start + len(p)] = wsum.numpy()
    return colors, weights


def gaussian_colors(params: torch.nn.ParameterDict, points: np.ndarray, k: int = 8) -> np.ndarray:
    """Colors [P, 3] of points from their k nearest Gaussians' base colors, weighted by opacity / distance."""
    from scipy.spatial import cKDTree

    means = params["means"].detach().float().cpu().numpy()
    rgb = sh0_to_rgb(params["sh0"].detach().float().cpu()[:, 0]).clamp(0, 1).numpy()
    opac = torch.sigmoid(params["opacities"].detach().float().cpu()).numpy()
    k = min(k, len(means))
    dist, idx = cKDTree(means).query(np.asarray(points), k=k)
    dist, idx = dist.reshape(len(points), k), idx.reshape(len(points), k)
    w = opac[idx] / (dist + 1e-6)
    return (w[..., None] * rgb[idx]).sum(1) / w.sum(1, keepdims=True)


@torch.no_grad()
def ray_colors(
    params: torch.nn.ParameterDict, points: np.ndarray, normals: np.ndarray, k: int = 16, chunk: int = 1 << 16
) -> np.ndarray:
    """Colors [P, 3] in [0, 1] of surface points [P, 3] seen head-on, along their normals [P, 3].

    The ``k`` Gaussians nearest to each point are composited front to back along the ray x(t) = p + t n
    coming in from t = +inf. Gaussian i's alpha is o_i exp(-m_i / 2), m_i the smallest Mahalanobis distance
    squared along the ray (the rasterizer's 2D footprint at that pixel, up to the perspective); its depth is
    the t where that smallest distance is reached. Points whose ray meets nothing take the nearest
    Gaussians' base colors.
    """
    from scipy.spatial import cKDTree

    means = params["means"].detach().float().cpu()
    rot = quat_to_rotmat(params["quats"].detach().float().cpu())
    inv_scales = torch.exp(-params["scales"].detach().float().cpu())
    opac = torch.sigmoid(params["opacities"].detach().float().cpu())
    coeffs = torch.cat([params["sh0"], params["shN"]], 1).detach().float().cpu()  # [N, K, 3]
    degree = sh_degree_of(params)
    k = min(k, len(means))
    points = np.asarray(points, dtype=np.float32)
    _, nearest = cKDTree(means.numpy()).query(points, k=k, workers=-1)
    nearest = torch.from_numpy(np.asarray(nearest, dtype=np.int64).reshape(len(points), k))
    out = np.zeros((len(points), 3), dtype=np.float32)
    for start in range(0, len(points), chunk):
        p = torch.from_numpy(points[start : start + chunk])
        n = torch.nn.functional.normalize(
            torch.from_numpy(np.asarray(normals[start : start + chunk], np.float32)), dim=-1
        )
        idx = nearest[start : start + chunk]  # [P, k]
        r = rot[idx]  # [P, k, 3, 3]
        d = torch.einsum("pkji,pkj->pki", r, p[:, None, :] - means[idx]) * inv_scales[idx]  # R^T (p - mu) / s
        v = torch.einsum("pkji,pj->pki", r, n) * inv_scales[idx]  # the ray's direction, same frame
        vv = (v * v).sum(-1).clamp_min(1e-12)
        dv = (d * v).sum(-1)
        m = ((d * d).sum(-1) - dv * dv / vv).clamp_min(0)  # [P, k] smallest distance^2 along the ray
        depth = -dv / vv  # t of that smallest distance: larger is nearer the incoming camera
        alpha = (opac[idx] * torch.exp(-0.5 * m)).clamp_max(0.99)
        order = torch.argsort(depth, dim=1, descending=True)
        alpha, idx_sorted = alpha.gather(1, order), idx.gather(1, order)
        trans = torch.cumprod(torch.cat([torch.ones_like(alpha[:, :1]), 1 - alpha[:, :-1]], 1), 1)
        w = alpha * trans  # [P, k]
        view_dirs = -n[:, None, :].expand(-1, k, -1)  # camera to Gaussian
        rgb = (eval_sh(degree, view_dirs, coeffs[idx_sorted]) + 0.5).clamp(0, 1)  # [P, k, 3]
        wsum = w.sum(1, keepdim=True)
        col = (w[..., None] * rgb).sum(1) / wsum.clamp_min(1e-8)
        out[start : start + len(p)] = col.numpy()
        missed = (wsum[:, 0] <= 1e-6).numpy()
        if missed.any():
            out[start : start + len(p)][missed] = gaussian_colors(
                params, points[start : start + chunk][missed]
            )
    return out


def surface_colors(points: np.ndarray, normals: np.ndarray, views: ColorViews | None, params) -> np.ndarray:
    """Colors [P, 3] in [0, 1]: head-on rays when ``views`` is None; else from the renders where seen and
    from the nearest Gaussians elsewhere."""
    if views is None:
        return ray_colors(params, points, normals)
    colors, weights = sample_colors(points, normals, views)
    unseen = weights <= 0
    if unseen.any():
        colors[unseen] = gaussian_colors(params, points[unseen])
    return colors


def vertex_colors(mesh, views: ColorViews | None, params) -> np.ndarray:
    """RGBA uint8 [V, 4] per vertex of ``mesh`` (``views`` None: colored by head-on rays)."""
    rgb = surface_colors(np.asarray(mesh.vertices), np.asarray(mesh.vertex_normals), views, params)
    rgba = np.concatenate([rgb, np.ones((len(rgb), 1))], 1)
    return np.round(np.clip(rgba, 0, 1) * 255).astype(np.uint8)


# ---------------------------------------------------------------------------------------------
# UV texture


def rasterize_uv(
    uv: np.ndarray, faces: np.ndarray, size: int, chunk: int = 1 << 22
) -> tuple[np.ndarray, np.ndarray]:
    """Which triangle covers each texel center, and where: face ids [S, S] (-1: none) and barycentrics [S, S, 3].

    Row 0 of the image is v = 1 (trimesh's and OBJ's convention: v points up in the image).
    """
    face_id = np.full((size, size), -1, dtype=np.int64)
    bary = np.zeros((size, size, 3), dtype=np.float32)
    tri = uv[faces].astype(np.float64)  # [F, 3, 2]
    x, y = tri[..., 0] * size, (1.0 - tri[..., 1]) * size  # texel units, texel i's center at i + 0.5
    x0 = np.clip(np.ceil(x.min(1) - 0.5), 0, size - 1).astype(np.int64)
    y0 = np.clip(np.ceil(y.min(1) - 0.5), 0, size - 1).astype(np.int64)
    x1 = np.clip(np.floor(x.max(1) - 0.5), 0, size - 1).astype(np.int64)
    y1 = np.clip(np.floor(y.max(1) - 0.5), 0, size - 1).astype(np.int64)
    area = (x[:, 1] - x[:, 0]) * (y[:, 2] - y[:, 0]) - (x[:, 2] - x[:, 0]) * (y[:, 1] - y[:, 0])
    box = np.maximum(x1 - x0, y1 - y0) + 1
    ok = (np.abs(area) > 1e-12) & (x1 >= x0) & (y1 >= y0)
    for k in np.unique(box[ok]):
        ids = np.nonzero(ok & (box == k))[0]
        step = max(1, chunk // int(k * k))
        ar = np.arange(k)
        for start in range(0, len(ids), step):
            f = ids[start : start + step]
            cx = x0[f, None, None] + ar[None, None, :]  # [T, 1, k]
            cy = y0[f, None, None] + ar[None, :, None]  # [T, k, 1]
            px, py = cx + 0.5, cy + 0.5
            xs, ys, a = x[f, :, None, None], y[f, :, None, None], area[f, None, None]
            w0 = ((xs[:, 1] - px) * (ys[:, 2] - py) - (xs[:, 2] - px) * (ys[:, 1] - py)) / a
            w1 = ((xs[:, 2] - px) * (ys[:, 0] - py) - (xs[:, 0] - px) * (ys[:, 2] - py)) / a
            w2 = 1.0 - w0 - w1
            cxb, cyb = np.broadcast_to(cx, w0.shape), np.broadcast_to(cy, w0.shape)
            inside = (
                (w0 >= -1e-6)
                & (w1 >= -1e-6)
                & (w2 >= -1e-6)
                & (cxb <= x1[f, None, None])
                & (cyb <= y1[f, None, None])
            )
            t_idx = np.broadcast_to(f[:, None, None], w0.shape)[inside]
            rows, cols = cyb[inside], cxb[inside]
            face_id[rows, cols] = t_idx
            bary[rows, cols] = np.stack([w0[inside], w1[inside], w2[inside]], -1)
    return face_id, bary


def unwrap(mesh, size: int):
    """xatlas charts packed into a ``size`` texture with 2 texels of padding: (vertex map, faces, uv)."""
    import xatlas

    atlas = xatlas.Atlas()
    atlas.add_mesh(np.asarray(mesh.vertices, np.float32), np.asarray(mesh.faces, np.uint32))
    pack = xatlas.PackOptions()
    pack.resolution = size
    pack.padding = 2
    pack.bilinear = True
    atlas.generate(pack_options=pack)
    return atlas[0]


def bake_texture(mesh, views: ColorViews | None, params, cfg):
    """A copy of ``mesh`` unwrapped with xatlas and textured with a ``cfg.texture``-pixel color map
    (``views`` None: colored by head-on rays)."""
    import trimesh
    from PIL import Image
    from scipy import ndimage

    size = cfg.texture
    vmap, faces, uv = unwrap(mesh, size)
    verts = np.asarray(mesh.vertices)[vmap]
    normals = np.asarray(mesh.vertex_normals)[vmap]
    face_id, bary = rasterize_uv(uv, faces.astype(np.int64), size)
    mask = face_id >= 0
    tri = faces[face_id[mask]]  # [T, 3]
    b = bary[mask][:, :, None]  # [T, 3, 1]
    points = (b * verts[tri]).sum(1)
    nrm = (b * normals[tri]).sum(1)
    texture = np.zeros((size, size, 3), dtype=np.float32)
    texture[mask] = surface_colors(points, nrm, views, params)
    # Pad: every empty texel takes the color of the nearest covered one (no dark seams when filtered).
    if not mask.all():
        _, (iy, ix) = ndimage.distance_transform_edt(~mask, return_indices=True)
        texture = texture[iy, ix]
    image = Image.fromarray(np.round(np.clip(texture, 0, 1) * 255).astype(np.uint8))
    material = trimesh.visual.material.PBRMaterial(
        baseColorTexture=image, metallicFactor=0.0, roughnessFactor=1.0
    )
    visual = trimesh.visual.TextureVisuals(uv=uv, material=material)
    return trimesh.Trimesh(vertices=verts, faces=faces, vertex_normals=normals, visual=visual, process=False)
