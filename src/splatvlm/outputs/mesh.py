"""Mesh export: Gaussian splats -> a clean, colored triangle mesh (.glb, .obj or .ply).

Pipeline (``splatvlm mesh IN.ply -o OUT.glb``, or ``generate --mesh``):
1. density: sum_i o_i exp(-1/2 d^T Sigma_i^-1 d) on a regular grid fitted to the Gaussians; each Gaussian
   is splatted only into the voxels of its 3-sigma box (Mahalanobis cutoff 3), in chunks, on CUDA or CPU;
2. surface: interior cavities filled (a shell of splats gives one outer surface), then marching cubes
   (scikit-image) at ``threshold`` (1.0, as DreamGaussian);
3. cleanup: connected components (trimesh); ones much smaller than the largest are floaters and dropped;
4. decimation to ``faces`` triangles (fast-simplification, quadric edge collapse);
5. color from the splats (``mesh_color.py``): by a head-on ray per surface point through its nearest
   Gaussians (``colors='rays'``) or from multi-view renders (``'renders'``); per vertex, or baked into a
   UV texture (xatlas unwrap) with ``texture``.
Axes: splatvlm's world is z-up. glTF (.glb) and .obj are y-up by their conventions (Blender's importers
convert them back), so those files get x, y, z -> x, z, -y: a feature at +z in the .ply is at +y there.
A .ply mesh keeps the splat file's axes. Units are the .ply's in every format.
"""

from __future__ import annotations

import math
import os
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Literal

import numpy as np
import torch
import tyro
from torch import Tensor

from ..errors import SplatVLMError
from ..files import atomic_path, atomic_write_bytes, atomic_write_text

MESH_SUFFIXES = (".glb", ".obj", ".ply")
LARGE_RADIUS = 24  # voxels: Gaussians with a larger 3-sigma box are splatted one by one, clipped to the grid
Z_UP_TO_Y_UP = np.array(
    [[1.0, 0.0, 0.0, 0.0], [0.0, 0.0, 1.0, 0.0], [0.0, -1.0, 0.0, 0.0], [0.0, 0.0, 0.0, 1.0]]
)
"""(x, y, z) -> (x, z, -y): a rotation by -90 degrees about x, from splatvlm's z-up to glTF's y-up."""


@dataclass
class MeshConfig:
    """How splats become a mesh (``splatvlm mesh`` and ``generate --mesh``)."""

    resolution: Annotated[int, tyro.conf.arg(aliases=["--mesh-resolution"])] = 256
    """Marching-cubes grid cells along the longest side of the object's bounding box."""
    faces: int = 100_000
    """Decimate to at most this many triangles (0 keeps every marching-cubes triangle)."""
    texture: int = 0
    """Bake the colors into a UV texture of this many pixels square (0: per-vertex colors only)."""
    threshold: float = 1.0
    """Density level of the surface (density = sum of opacity-weighted Gaussians; DreamGaussian uses 1)."""
    min_opacity: float = 0.01
    """Gaussians fainter than this are left out of the density and the bounds."""
    close_holes: float = 4.0
    """Gaps in a shell of splats up to about twice this many typical Gaussian spacings (median distance to the
    nearest neighbour) are closed before its inside is filled; parts closer than that merge (0: off)."""
    keep_fraction: float = 0.05
    """Keep connected components with at least this share of the largest one's triangles (drops floaters)."""
    colors: Literal["rays", "renders"] = "rays"
    """'rays': each surface point takes the color a camera facing it head-on would see, from its nearest
    Gaussians (no images rendered; fast on a CPU). 'renders': the mean over multi-view renders that see it
    (visibility from real cameras; slow on a CPU, where each render draws every Gaussian)."""
    views_per_ring: int = 8
    """With --colors renders: color views per elevation ring (rings at -30, 15 and 50 degrees, plus one view from above and below)."""
    view_resolution: int = 384
    """With --colors renders: square size in pixels of the color renders."""
    depth_tolerance: float = 0.03
    """With --colors renders: a point is seen by a view when it lies within this fraction of the object's radius of the rendered depth."""
    device: str = "auto"
    """'auto' (CUDA when available), 'cuda' or 'cpu': where the density grid and color renders are computed."""
    chunk: int = 1 << 21
    """Voxel x Gaussian pairs evaluated at once (bounds memory, not the result)."""


def check_mesh_config(cfg: MeshConfig) -> None:
    """One-line errors for settings that cannot work, before any file is read."""
    if not 8 <= cfg.resolution <= 1024:
        raise SplatVLMError(f"--mesh-resolution must be in 8..1024, got {cfg.resolution}")
    if cfg.faces < 0 or 0 < cfg.faces < 4:
        raise SplatVLMError(f"--faces must be 0 (no decimation) or at least 4, got {cfg.faces}")
    if cfg.texture and not 16 <= cfg.texture <= 8192:
        raise SplatVLMError(f"--texture must be 0 or a size in 16..8192 pixels, got {cfg.texture}")
    if not cfg.threshold > 0:
        raise SplatVLMError(f"--threshold must be positive, got {cfg.threshold}")
    if not 0 <= cfg.min_opacity < 1:
        raise SplatVLMError(f"--min-opacity must be in [0, 1), got {cfg.min_opacity}")
    if not 0 <= cfg.close_holes <= 20:
        raise SplatVLMError(f"--close-holes must be in [0, 20], got {cfg.close_holes}")
    if not 0 <= cfg.keep_fraction <= 1:
        raise SplatVLMError(f"--keep-fraction must be in [0, 1], got {cfg.keep_fraction}")
    if cfg.views_per_ring < 1 or cfg.view_resolution < 8:
        raise SplatVLMError("--views-per-ring must be at least 1 and --view-resolution at least 8")
    if cfg.device != "auto" and cfg.device.split(":")[0] not in ("cuda", "cpu"):
        raise SplatVLMError(f"--device must be 'auto', 'cuda' or 'cpu', got {cfg.device!r}")


def mesh_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SplatVLMError("--device cuda asked for, but no CUDA device is available")
    return device


# ---------------------------------------------------------------------------------------------
# 1. density on a grid


@dataclass
class Grid:
    """A regular grid of sample points lo + i * voxel, i in [0, shape)."""

    lo: np.ndarray  # [3] world position of sample (0, 0, 0)
    voxel: float  # spacing in world units
    shape: tuple[int, int, int]


def _gaussians(params: torch.nn.ParameterDict, min_opacity: float, device: torch.device) -> dict[str, Tensor]:
    """Activated means, rotations, scales and opacities of the Gaussians above ``min_opacity``."""
    from ..gaussians.raster_torch import quat_to_rotmat

    opac = torch.sigmoid(params["opacities"].detach().float()).to(device)
    keep = opac > min_opacity
    if not bool(keep.any()):
        raise SplatVLMError(f"no Gaussian has opacity above {min_opacity}; nothing to mesh")
    return {
        "means": params["means"].detach().float().to(device)[keep],
        "rot": quat_to_rotmat(params["quats"].detach().float().to(device)[keep]),
        "scales": torch.exp(params["scales"].detach().float().to(device))[keep],
        "opacities": opac[keep],
    }


def fit_grid(g: dict[str, Tensor], resolution: int) -> Grid:
    """A grid around the Gaussians' means, padded by 3 sigma of a typical Gaussian and two voxels.

    The box spans the 0.1-99.9% quantiles of the means widened by 5% of its size on each side (and no
    more than their full range), so a few far floaters do not coarsen the grid; they fall outside it.
    """
    means = g["means"][:: max(1, len(g["means"]) // (1 << 20))].double()  # torch.quantile's size limit
    lo_q, hi_q = torch.quantile(means, 0.001, dim=0), torch.quantile(means, 0.999, dim=0)
    margin = 0.05 * (hi_q - lo_q).max()
    lo = torch.maximum(lo_q - margin, g["means"].min(0).values.double()).cpu().numpy()
    hi = torch.minimum(hi_q + margin, g["means"].max(0).values.double()).cpu().numpy()
    sigma = g["scales"].max(-1).values
    pad = 3.0 * float(torch.quantile(sigma[:: max(1, len(sigma) // (1 << 20))].double(), 0.95))
    extent = float((hi - lo).max()) + 2 * pad
    if not math.isfinite(extent) or extent <= 0:
        raise SplatVLMError("the Gaussians have no extent (all at one point); nothing to mesh")
    voxel = extent / resolution
    lo = lo - pad - 2 * voxel
    shape = tuple(int(math.ceil((hi[i] + pad + 2 * voxel - lo[i]) / voxel)) + 1 for i in range(3))
    return Grid(lo=lo, voxel=voxel, shape=shape)


def _splat(
    out: Tensor, g: dict[str, Tensor], sel: Tensor, idx: Tensor, grid: Grid, lo: Tensor, scales: Tensor
):
    """Add Gaussians ``sel`` [G] at grid indices ``idx`` [G, K, 3] into the flat grid ``out``."""
    X, Y, Z = grid.shape
    d = lo + idx.float() * grid.voxel - g["means"][sel, None, :]
    local = torch.einsum("gkj,gjl->gkl", d, g["rot"][sel]) / scales[sel, None, :]  # R^T d / s
    m = (local * local).sum(-1)  # [G, K] Mahalanobis distance squared
    w = g["opacities"][sel, None] * torch.exp(-0.5 * m)
    shape_t = torch.tensor(grid.shape, device=out.device)
    inside = (m <= 9.0) & ((idx >= 0) & (idx < shape_t)).all(-1)
    flat = (idx[..., 0] * Y + idx[..., 1]) * Z + idx[..., 2]
    out.index_add_(0, flat[inside], w[inside])


@torch.no_grad()
def density_grid(g: dict[str, Tensor], grid: Grid, chunk: int = 1 << 21) -> Tensor:
    """Opacity-weighted Gaussian density at every grid point [X, Y, Z] (float32, on the Gaussians' device).

    Each Gaussian adds o * exp(-m / 2), m its Mahalanobis distance squared, to the points of its own
    axis-aligned 3-sigma box where m <= 9. Scales are clamped to at least half a voxel so that flat
    Gaussians (thinner than the grid) still leave a trace the grid can see.
    """
    device = g["means"].device
    X, Y, Z = grid.shape
    out = torch.zeros(X * Y * Z, dtype=torch.float32, device=device)
    lo = torch.tensor(grid.lo, dtype=torch.float32, device=device)
    h = grid.voxel
    scales = g["scales"].clamp_min(0.5 * h)
    half = 3.0 * torch.sqrt(((g["rot"] * scales[:, None, :]) ** 2).sum(-1))  # [N, 3] world half-extents
    radius = torch.ceil(half.max(-1).values / h).long().clamp_min(1)  # [N] box half-size in voxels
    center = torch.round((g["means"] - lo) / h).long()  # [N, 3]
    # Small Gaussians (nearly all): batched, one shared cube of offsets per radius.
    for r in torch.unique(radius[radius <= LARGE_RADIUS]).tolist():
        ids = torch.nonzero(radius == r).squeeze(1)
        ax = torch.arange(-r, r + 1, device=device)
        off = torch.stack(torch.meshgrid(ax, ax, ax, indexing="ij"), -1).reshape(-1, 3)  # [K, 3]
        step = max(1, chunk // off.shape[0])
        for start in range(0, len(ids), step):
            sel = ids[start : start + step]
            _splat(out, g, sel, center[sel, None, :] + off[None], grid, lo, scales)
    # Large ones: one at a time, their box clipped to the grid, in slabs of at most `chunk` points.
    shape_t = torch.tensor(grid.shape, device=device)
    for i in torch.nonzero(radius > LARGE_RADIUS).squeeze(1).tolist():
        a = (center[i] - radius[i]).clamp(0, None)
        b = torch.minimum(center[i] + radius[i] + 1, shape_t)
        if bool((b <= a).any()):
            continue  # entirely off the grid
        ys, zs = (
            torch.arange(int(a[1]), int(b[1]), device=device),
            torch.arange(int(a[2]), int(b[2]), device=device),
        )
        plane = torch.stack(torch.meshgrid(ys, zs, indexing="ij"), -1).reshape(-1, 2)  # [P, 2]
        rows = max(1, chunk // len(plane))
        for x0 in range(int(a[0]), int(b[0]), rows):
            xs = torch.arange(x0, min(x0 + rows, int(b[0])), device=device)
            idx = torch.cat([xs.repeat_interleave(len(plane))[:, None], plane.repeat(len(xs), 1)], 1)
            _splat(out, g, torch.tensor([i], device=device), idx[None], grid, lo, scales)
    return out.reshape(X, Y, Z)


def typical_spacing(means: Tensor, sample: int = 100_000) -> float:
    """Median distance from a Gaussian's center to its nearest neighbour (on a sample of at most ``sample``)."""
    from scipy.spatial import cKDTree

    pts = means.cpu().numpy()
    tree = cKDTree(pts)
    probe = pts[np.random.default_rng(0).choice(len(pts), min(sample, len(pts)), replace=False)]
    dist, _ = tree.query(probe, k=2)
    return float(np.median(dist[:, 1])) if len(pts) > 1 else 0.0


# ---------------------------------------------------------------------------------------------
# 2-4. surface, cleanup, decimation


def solid_inside(occupied: np.ndarray, close: int) -> np.ndarray:
    """The voxels inside the occupied ones: cavities filled after small holes in the walls are closed.

    A morphological closing (dilate, fill, erode by a ball of ``close`` voxels), so a shell of splats with
    gaps up to about ``2 * close`` voxels wide between its Gaussians still encloses a solid; the result
    always contains ``occupied``.
    """
    from scipy import ndimage

    if close <= 0:
        return ndimage.binary_fill_holes(occupied)
    pad = np.pad(occupied, close + 1)
    grown = ball_dilation(pad, close)
    solid = ~ball_dilation(~ndimage.binary_fill_holes(grown), close)  # erosion = dilation of the outside
    inner = (slice(close + 1, -(close + 1)),) * 3
    return solid[inner] | occupied


def ball_dilation(mask: np.ndarray, radius: int) -> np.ndarray:
    """Dilation by a near-round ball of ``radius`` voxels (it reaches between radius and 1.22 x radius).

    Half the steps use the 6-neighbour cross (a diamond), half a cube (separable, so cheap); their sum is
    near-round, where a cross alone reaches only radius / sqrt(3) along the diagonals and leaves gaps
    open there. An exact Euclidean ball (a distance transform) costs several times more on a 256 grid.
    """
    from scipy import ndimage

    cross_steps, cube_steps = (radius + 1) // 2, radius // 2
    out = ndimage.binary_dilation(mask, ndimage.generate_binary_structure(3, 1), iterations=cross_steps)
    if cube_steps:
        out = ndimage.maximum_filter(out, size=2 * cube_steps + 1, mode="constant", cval=False)
    return out


def extract_surface(density: np.ndarray, grid: Grid, threshold: float, close: int = 2):
    """Marching cubes at ``threshold`` on the density with the inside filled -> trimesh.Trimesh."""
    import trimesh
    from skimage import measure

    peak = float(density.max())
    if not peak > threshold:
        raise SplatVLMError(
            f"no surface: the splats' density peaks at {peak:.3g}, below the threshold {threshold:g} "
            "(too few or too faint Gaussians; lower --threshold)"
        )
    occupied = density > threshold
    cavity = solid_inside(occupied, close) & ~occupied
    field = np.where(cavity, np.float32(2 * threshold), density)
    field = np.pad(field, 1)  # zero border: the surface closes at the grid's edge
    verts, faces, _, _ = measure.marching_cubes(field, level=threshold, spacing=(grid.voxel,) * 3)
    verts = verts - grid.voxel + grid.lo  # undo the pad's offset, then to world
    mesh = trimesh.Trimesh(vertices=verts, faces=faces, process=True)
    if mesh.volume < 0:  # outward normals whatever the marching-cubes winding
        mesh.invert()
    return mesh


def keep_main_components(mesh, keep_fraction: float):
    """Drop connected components with fewer than ``keep_fraction`` x the largest one's triangles."""
    import trimesh

    parts = mesh.split(only_watertight=False)
    if len(parts) <= 1:
        return mesh
    biggest = max(len(p.faces) for p in parts)
    kept = [p for p in parts if len(p.faces) >= keep_fraction * biggest]
    return trimesh.util.concatenate(kept)


def decimate(mesh, faces: int):
    """Quadric edge-collapse decimation to at most ``faces`` triangles (fast-simplification)."""
    import fast_simplification
    import trimesh

    if faces <= 0 or len(mesh.faces) <= faces:
        return mesh
    v, f = fast_simplification.simplify(
        np.asarray(mesh.vertices, dtype=np.float64),
        np.asarray(mesh.faces, dtype=np.int32),
        target_count=faces,
    )
    # Edge collapses can fold a thin spot into two back-to-back copies of one triangle; both go.
    _, inverse, counts = np.unique(np.sort(f, axis=1), axis=0, return_inverse=True, return_counts=True)
    f = f[counts[inverse.reshape(-1)] == 1]
    out = repair_nonmanifold(trimesh.Trimesh(vertices=v, faces=f, process=True))
    out.remove_unreferenced_vertices()
    if out.volume < 0:
        out.invert()
    return out


def repair_nonmanifold(mesh, rounds: int = 4):
    """Remove the triangles on edges shared by more than two (pinches left by edge collapses), then fill
    the small holes that leaves (trimesh); a few rounds, as filling can pinch again."""
    import trimesh

    for _ in range(rounds):
        edges = np.sort(mesh.edges, axis=1)  # [3F, 2], edge i belongs to face i // 3
        _, inverse, counts = np.unique(edges, axis=0, return_inverse=True, return_counts=True)
        bad = np.nonzero(counts[inverse.reshape(-1)] > 2)[0]
        if len(bad) == 0:
            break
        keep = np.ones(len(mesh.faces), dtype=bool)
        keep[bad // 3] = False
        mesh = trimesh.Trimesh(vertices=mesh.vertices, faces=mesh.faces[keep], process=True)
        trimesh.repair.fill_holes(mesh)
    return mesh


def splats_to_geometry(
    params: torch.nn.ParameterDict,
    cfg: MeshConfig,
    device: torch.device | None = None,
    timings: dict[str, float] | None = None,
    log: Callable[[str], None] | None = None,
):
    """Steps 1-4: the uncolored mesh (z-up world, the .ply's units) and the grid it came from.

    ``log``, when given, receives a line as each step starts (they can take minutes on a CPU).
    """
    log = log or (lambda text: None)
    device = device or mesh_device(cfg.device)
    t0 = time.perf_counter()
    g = _gaussians(params, cfg.min_opacity, device)
    grid = fit_grid(g, cfg.resolution)
    shape = "x".join(map(str, grid.shape))
    log(f"mesh: density of {len(g['means']):,} Gaussians on a {shape} grid ({device.type}) ...")
    density = density_grid(g, grid, cfg.chunk).cpu().numpy()
    t1 = time.perf_counter()
    close = 0
    if cfg.close_holes > 0:
        close = max(1, math.ceil(cfg.close_holes * typical_spacing(g["means"]) / grid.voxel))
    log(f"mesh: surface (cavities filled, marching cubes) after {t1 - t0:.1f} s ...")
    mesh = extract_surface(density, grid, cfg.threshold, close)
    t2 = time.perf_counter()
    log(f"mesh: cleanup and decimation of {len(mesh.faces):,} triangles after {t2 - t0:.1f} s ...")
    mesh = keep_main_components(mesh, cfg.keep_fraction)
    mesh = keep_main_components(decimate(mesh, cfg.faces), cfg.keep_fraction)  # repairs can leave crumbs
    if len(mesh.faces) == 0:
        raise SplatVLMError("the mesh came out empty after cleanup")
    if timings is not None:
        timings.update(density_s=t1 - t0, surface_s=t2 - t1, cleanup_s=time.perf_counter() - t2)
    return mesh, grid


# ---------------------------------------------------------------------------------------------
# the whole export


def splats_to_mesh(
    params: torch.nn.ParameterDict,
    cfg: MeshConfig,
    timings: dict[str, float] | None = None,
    log: Callable[[str], None] | None = None,
):
    """Gaussian scene -> colored trimesh.Trimesh (z-up, the .ply's units), per-vertex or textured.

    ``timings``, when given, receives seconds per phase: density, surface (fill + marching cubes), cleanup
    (components + decimation), geometry (their sum), color (rays or renders + sampling or baking), total.
    ``log``, when given, receives a line as each phase starts.
    """
    from .mesh_color import bake_texture, color_views, vertex_colors

    check_mesh_config(cfg)
    device = mesh_device(cfg.device)
    t0 = time.perf_counter()
    mesh, grid = splats_to_geometry(params, cfg, device, timings, log)
    watertight = bool(mesh.is_watertight)  # before a texture's seams split vertices
    t1 = time.perf_counter()
    if log is not None:
        target = f"a {cfg.texture} px texture" if cfg.texture else f"{len(mesh.vertices):,} vertices"
        log(f"mesh: colors ({cfg.colors}) for {target} after {t1 - t0:.1f} s ...")
    views = color_views(params, mesh, cfg, device) if cfg.colors == "renders" else None
    if cfg.texture:
        mesh = bake_texture(mesh, views, params, cfg)
    else:
        mesh.visual.vertex_colors = vertex_colors(mesh, views, params)
    mesh.metadata["watertight"] = watertight
    t2 = time.perf_counter()
    if timings is not None:
        timings.update(geometry_s=t1 - t0, color_s=t2 - t1, total_s=t2 - t0)
    return mesh


def mesh_sidecars(path: Path, cfg: MeshConfig) -> list[Path]:
    """The files a mesh export writes beside ``path``: a textured .obj's ``<stem>.mtl`` and ``<stem>.png``."""
    if cfg.texture and path.suffix.lower() == ".obj":
        return [path.with_suffix(".mtl"), path.with_suffix(".png")]
    return []


def check_mesh_output(path: Path, cfg: MeshConfig, overwrite: bool = True) -> None:
    """Refuse a mesh output that cannot be written; without ``overwrite``, also one whose sidecars exist."""
    if path.suffix.lower() not in MESH_SUFFIXES:
        raise SplatVLMError(f"mesh output {path} must end in one of {', '.join(MESH_SUFFIXES)}")
    if cfg.texture and path.suffix.lower() == ".ply":
        raise SplatVLMError("a .ply mesh holds vertex colors only; write .glb or .obj for --texture")
    for side in mesh_sidecars(path, cfg):
        if os.path.lexists(side) and not overwrite:
            raise SplatVLMError(
                f"{side} (written with {path.name}) already exists; pass --overwrite to replace it"
            )


def save_mesh(mesh, path: str | Path) -> list[Path]:
    """Write ``mesh`` (z-up) atomically as .glb / .obj (y-up) or .ply (z-up); returns every file written.

    A textured .obj also writes ``<stem>.mtl`` and its texture ``<stem>.png`` beside it, named after the
    output, so that two exports in one folder never share (and overwrite) a texture.
    """
    from trimesh.exchange.obj import export_obj

    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in MESH_SUFFIXES:
        raise SplatVLMError(f"mesh output {path} must end in one of {', '.join(MESH_SUFFIXES)}")
    if suffix == ".ply":
        if mesh.visual.kind == "texture":
            raise SplatVLMError("a .ply mesh holds vertex colors only; write .glb or .obj for a texture")
        atomic_write_bytes(path, mesh.export(file_type="ply"))
        return [path]
    out = mesh.copy()
    out.apply_transform(Z_UP_TO_Y_UP)
    if suffix == ".glb":
        atomic_write_bytes(path, out.export(file_type="glb"))
        return [path]
    mtl_name = f"{path.stem}.mtl"
    text, files = export_obj(out, include_normals=True, return_texture=True, mtl_name=mtl_name)
    # trimesh names the texture material_0.png: rename it after the output, and in the .mtl that points to it.
    images = [n for n in files if n != mtl_name]
    renamed = {n: f"{path.stem}{'' if i == 0 else f'_{i}'}{Path(n).suffix}" for i, n in enumerate(images)}
    mtl = files.get(mtl_name, b"").decode("utf-8")
    for old, new in renamed.items():
        mtl = re.sub(rf"(?m)^(\s*map_\w+\s+.*?){re.escape(old)}\s*$", lambda m, new=new: m[1] + new, mtl)
    outputs = {
        renamed.get(n, n): (mtl.encode("utf-8") if n == mtl_name else data) for n, data in files.items()
    }
    written = []
    for name, data in outputs.items():  # the .mtl and the texture image(s)
        target = path.with_name(Path(name).name)
        with atomic_path(target) as tmp:
            tmp.write_bytes(data)
        written.append(target)
    atomic_write_text(path, text)
    return [path, *written]


def export_mesh(
    params: torch.nn.ParameterDict, path: str | Path, cfg: MeshConfig, progress: bool = True
) -> dict[str, float | int | str]:
    """Mesh ``params`` into ``path``; returns a summary (files written, faces, vertices, seconds per phase).

    ``progress``: a line on stderr as each phase starts.
    """
    from ..run.progress import say

    path = Path(path)
    check_mesh_config(cfg)
    check_mesh_output(path, cfg)
    timings: dict[str, float] = {}
    mesh = splats_to_mesh(params, cfg, timings, say if progress else None)
    t0 = time.perf_counter()
    written = save_mesh(mesh, path)
    timings["write_s"] = time.perf_counter() - t0
    return {
        "output": str(path),
        "files": [str(p) for p in written],
        "vertices": len(mesh.vertices),
        "faces": len(mesh.faces),
        "watertight": mesh.metadata["watertight"],
        **{k: round(v, 3) for k, v in timings.items()},
    }
