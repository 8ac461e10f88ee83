"""A pure-PyTorch Gaussian rasterizer: the CPU backend, and the reference for gsplat's CUDA kernels.

``rasterize_torch`` takes the inputs of ``gsplat.rasterization`` (v1.5.3, pinhole cameras, no batch
dimensions) and follows its rules, so the two backends are interchangeable:
- EWA projection with the Jacobian's x/y clamped to 1.3x the field of view, ``eps2d`` added to the 2D
  covariance ("classic"), or also the opacity compensation ("antialiased");
- culling: depth outside [near, far], opacity below 1/255, the opacity-aware 3-sigma box off the image
  or smaller than ``radius_clip``;
- tiles with Gaussians sorted by depth per tile; alpha = min(0.999, o * exp(-sigma)), skipped below
  1/255; a pixel stops before the Gaussian that would bring its transmittance to 1e-4. The tiles are
  8x8, not gsplat's 16x16: a pixel outside a Gaussian's opacity-aware box gets alpha below 1/255 and is
  skipped either way, so the tile size changes only how many pairs are evaluated, not the image.
Work goes in chunks of (tiles x depth-sorted Gaussians) whose backward is written out and recomputes
the per-pixel terms, so memory is bounded by ``chunk_elems`` per chunk plus per-Gaussian tensors, not by
pixels x Gaussians; autograd does the rest (projection, SH, gathers).
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from torch import Tensor

RenderMode = Literal["RGB", "D", "ED", "RGB+D", "RGB+ED"]

TILE = 8  # smaller than gsplat's 16: fewer (pixel, Gaussian) pairs, same result (see above)
ALPHA_THRESHOLD = 1.0 / 255.0  # gsplat skips fainter Gaussians at a pixel, and culls them outright
ALPHA_MAX = 0.999  # gsplat 1.5.3's clamp on one Gaussian's alpha
T_MIN = 1e-4  # a pixel is done when its transmittance would drop to this (exclusive, as gsplat)
EXTEND_MAX = 3.33  # half-width of the box in standard deviations before the opacity-aware bound

# Real spherical-harmonic basis constants (the 3DGS / gsplat convention).
SH_C0 = 0.28209479177387814
SH_C1 = 0.4886025119029199
SH_C2 = (
    1.0925484305920792,
    -1.0925484305920792,
    0.31539156525252005,
    -1.0925484305920792,
    0.5462742152960396,
)
SH_C3 = (
    -0.5900435899266435,
    2.890611442640554,
    -0.4570457994644658,
    0.3731763325901154,
    -0.4570457994644658,
    1.445305721320277,
    -0.5900435899266435,
)


def quat_to_rotmat(quats: Tensor) -> Tensor:
    """Rotation matrices [..., 3, 3] from quaternions [..., 4] (wxyz, normalized here)."""
    w, x, y, z = torch.nn.functional.normalize(quats, dim=-1).unbind(-1)
    rows = [
        1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y),
        2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x),
        2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y),
    ]  # fmt: skip
    return torch.stack(rows, dim=-1).reshape(quats.shape[:-1] + (3, 3))


def covariances(quats: Tensor, scales: Tensor) -> Tensor:
    """World covariances R S S R^T [..., 3, 3] from quaternions [..., 4] and scales [..., 3]."""
    m = quat_to_rotmat(quats) * scales[..., None, :]
    return m @ m.transpose(-1, -2)


def sh_bases(degree: int, dirs: Tensor) -> Tensor:
    """Real SH basis values [..., (degree+1)^2] at directions [..., 3] (normalized here)."""
    if not 0 <= degree <= 3:
        raise ValueError(f"SH degree must be 0..3, got {degree}")
    out = [torch.full_like(dirs[..., 0], SH_C0)]
    if degree >= 1:
        x, y, z = torch.nn.functional.normalize(dirs, dim=-1).unbind(-1)
        out += [-SH_C1 * y, SH_C1 * z, -SH_C1 * x]
    if degree >= 2:
        xx, yy, zz, xy, yz, xz = x * x, y * y, z * z, x * y, y * z, x * z
        out += [
            SH_C2[0] * xy,
            SH_C2[1] * yz,
            SH_C2[2] * (2 * zz - xx - yy),
            SH_C2[3] * xz,
            SH_C2[4] * (xx - yy),
        ]
    if degree >= 3:
        out += [
            SH_C3[0] * y * (3 * xx - yy),
            SH_C3[1] * xy * z,
            SH_C3[2] * y * (4 * zz - xx - yy),
            SH_C3[3] * z * (2 * zz - 3 * xx - 3 * yy),
            SH_C3[4] * x * (4 * zz - xx - yy),
            SH_C3[5] * z * (xx - yy),
            SH_C3[6] * x * (xx - 3 * yy),
        ]
    return torch.stack(out, dim=-1)


def eval_sh(degree: int, dirs: Tensor, coeffs: Tensor) -> Tensor:
    """SH colors [..., 3] (no +0.5 offset) like ``gsplat.spherical_harmonics``.

    Args:
        degree: bands to use (0-3); only the first (degree+1)^2 coefficients are read.
        dirs: view directions [..., 3] (camera to Gaussian, any length).
        coeffs: SH coefficients [..., K, 3].
    """
    k = (degree + 1) ** 2
    if coeffs.shape[-2] < k:
        raise ValueError(f"SH degree {degree} needs {k} coefficients, got {coeffs.shape[-2]}")
    return (sh_bases(degree, dirs)[..., None] * coeffs[..., :k, :]).sum(dim=-2)


def _project(
    means: Tensor,  # [..., 3]
    covars: Tensor,  # [..., 3, 3]
    viewmats: Tensor,  # [..., 4, 4]
    Ks: Tensor,  # [..., 3, 3]
    width: int,
    height: int,
    eps2d: float,
    near_plane: float,
    antialiased: bool,
) -> dict[str, Tensor]:
    """EWA projection of Gaussians to pixels; all inputs broadcast against each other."""
    R, t = viewmats[..., :3, :3], viewmats[..., :3, 3]
    mean_c = (R @ means[..., None])[..., 0] + t
    cov_c = R @ covars @ R.transpose(-1, -2)
    x, y, z = mean_c.unbind(-1)
    # Behind-camera entries are culled later; a safe depth keeps their NaNs out of the backward.
    zs = torch.where(z >= near_plane, z, torch.ones_like(z))
    fx, fy, cx, cy = Ks[..., 0, 0], Ks[..., 1, 1], Ks[..., 0, 2], Ks[..., 1, 2]
    # Far off-screen Gaussians would get huge footprints from the linearization: clamp like gsplat.
    lim_x_pos = (width - cx) / fx + 0.3 * (0.5 * width / fx)
    lim_x_neg = cx / fx + 0.3 * (0.5 * width / fx)
    lim_y_pos = (height - cy) / fy + 0.3 * (0.5 * height / fy)
    lim_y_neg = cy / fy + 0.3 * (0.5 * height / fy)
    tx = zs * torch.minimum(torch.maximum(x / zs, -lim_x_neg), lim_x_pos)
    ty = zs * torch.minimum(torch.maximum(y / zs, -lim_y_neg), lim_y_pos)
    zero = torch.zeros_like(zs)
    J = torch.stack([fx / zs, zero, -fx * tx / zs**2, zero, fy / zs, -fy * ty / zs**2], dim=-1).reshape(
        zs.shape + (2, 3)
    )
    cov2d = J @ cov_c @ J.transpose(-1, -2)
    a, b, c = cov2d[..., 0, 0], cov2d[..., 0, 1], cov2d[..., 1, 1]
    det_orig = a * c - b * b
    a, c = a + eps2d, c + eps2d
    det = a * c - b * b
    det_safe = torch.where(det > 0, det, torch.ones_like(det))
    conics = torch.stack([c / det_safe, -b / det_safe, a / det_safe], dim=-1)
    means2d = torch.stack([fx * x / zs + cx, fy * y / zs + cy], dim=-1)
    out = {"means2d": means2d, "conics": conics, "depths": z, "det": det, "var": torch.stack([a, c], -1)}
    if antialiased:
        out["compensations"] = torch.sqrt(torch.clamp(det_orig / det_safe, min=0.0))
    return out


@torch.no_grad()
def _radii(
    proj: dict[str, Tensor],
    opacities: Tensor,
    width: int,
    height: int,
    near_plane: float,
    far_plane: float,
    radius_clip: float,
) -> Tensor:
    """Integer box half-sizes [..., 2], zero for culled Gaussians (gsplat's rules)."""
    z, det, m = proj["depths"], proj["det"], proj["means2d"]
    opac = opacities * proj["compensations"] if "compensations" in proj else opacities
    valid = (z >= near_plane) & (z <= far_plane) & (det > 0) & (opac >= ALPHA_THRESHOLD)
    # Beyond this many sigmas the alpha is under 1/255, so the box loses nothing (arXiv 2402.00525).
    extend = torch.sqrt(2.0 * torch.log(opac.clamp(min=ALPHA_THRESHOLD) / ALPHA_THRESHOLD)).clamp(
        max=EXTEND_MAX
    )
    r = torch.ceil(extend[..., None] * torch.sqrt(proj["var"].clamp(min=0.0)))
    valid &= (r > radius_clip).any(dim=-1)
    valid &= (m[..., 0] + r[..., 0] > 0) & (m[..., 0] - r[..., 0] < width)
    valid &= (m[..., 1] + r[..., 1] > 0) & (m[..., 1] - r[..., 1] < height)
    return torch.where(valid[..., None], r, torch.zeros_like(r)).int()


def _chunk_terms(T_in, pix, mx, my, ca, cb, cc, opac, valid):
    """Per-pixel terms of one chunk [U, P, L]: alpha (zero where skipped or after the pixel stopped),
    transmittance before each Gaussian, the unclamped alpha, the Gaussian falloff, offsets, T_out [U, P]."""
    dx = mx[:, None, :] - pix[..., 0:1]  # mean - pixel center, as gsplat
    dy = my[:, None, :] - pix[..., 1:2]
    sigma = dx * (ca[:, None] * dx + cb[:, None] * dy) + cc[:, None] * dy * dy
    falloff = torch.exp(-sigma)
    raw = opac[:, None] * falloff
    alpha = raw.clamp(max=ALPHA_MAX)
    alpha = alpha * (valid[:, None] & (sigma >= 0) & (alpha >= ALPHA_THRESHOLD))
    T_incl = T_in[..., None] * torch.cumprod(1.0 - alpha, dim=-1)
    T_before = T_incl / (1.0 - alpha)
    # Transmittance only falls, so the Gaussians before the one that would stop the pixel are a prefix.
    alpha = alpha * (T_incl > T_MIN)
    T_out = T_in * torch.prod(1.0 - alpha, dim=-1)
    return alpha, T_before, raw, falloff, dx, dy, T_out


class _Composite(torch.autograd.Function):
    """Front-to-back compositing of one chunk of tiles x depth-sorted Gaussians.

    The backward recomputes the per-pixel terms from the per-Gaussian inputs instead of keeping
    [U, P, L] tensors, so memory stays bounded by one chunk (gsplat's kernels do the same)."""

    @staticmethod
    def forward(ctx, T_in, pix, mx, my, ca, cb, cc, opac, feats, valid, abs_index, abs_buffer):
        # T_in, pix: [U, P], [U, P, 2]; mx ... opac, valid, abs_index: [U, L]; feats: [U, L, F]
        alpha, T_before, _, _, _, _, T_out = _chunk_terms(T_in, pix, mx, my, ca, cb, cc, opac, valid)
        out = torch.einsum("upl,ulf->upf", alpha * T_before, feats)
        ctx.save_for_backward(T_in, pix, mx, my, ca, cb, cc, opac, feats, valid, abs_index)
        ctx.abs_buffer = abs_buffer
        return out, T_out

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, g_out, g_T):  # [U, P, F], [U, P]
        T_in, pix, mx, my, ca, cb, cc, opac, feats, valid, abs_index = ctx.saved_tensors
        alpha, T_before, raw, falloff, dx, dy, T_out = _chunk_terms(
            T_in, pix, mx, my, ca, cb, cc, opac, valid
        )
        w = alpha * T_before
        fg = torch.einsum("ulf,upf->upl", feats, g_out)  # feature . upstream gradient
        contrib = w * fg
        total = contrib.sum(-1)
        later = total[..., None] - torch.cumsum(contrib, dim=-1)  # sum over the Gaussians behind
        # out = sum_k a_k T_k f_k with T_k = T_in prod_{j<k} (1 - a_j); T_out = T_in prod_j (1 - a_j).
        d_alpha = T_before * fg - (later + (g_T * T_out)[..., None]) / (1.0 - alpha)
        d_raw = d_alpha * ((alpha > 0) & (raw <= ALPHA_MAX))
        d_sigma = -d_raw * raw
        sdx, sdy = d_sigma * dx, d_sigma * dy
        ddx = (2.0 * ca)[:, None] * sdx + cb[:, None] * sdy  # d loss / d mean x, per pixel
        ddy = cb[:, None] * sdx + (2.0 * cc)[:, None] * sdy
        if ctx.abs_buffer is not None:
            summed = torch.stack([ddx.abs().sum(1), ddy.abs().sum(1)], dim=-1)  # [U, L, 2]
            ctx.abs_buffer.index_add_(
                0, abs_index.reshape(-1), summed.reshape(-1, 2).to(ctx.abs_buffer.dtype)
            )
        return (
            (total + g_T * T_out) / T_in,
            None,
            ddx.sum(1),
            ddy.sum(1),
            (sdx * dx).sum(1),
            (sdx * dy).sum(1),
            (sdy * dy).sum(1),
            (d_raw * falloff).sum(1),
            torch.einsum("upl,upf->ulf", w, g_out),
            None,
            None,
            None,
        )


def _rasterize_entries(
    image_ids: Tensor,  # [E] which image each entry belongs to
    means2d: Tensor,  # [E, 2]
    radii: Tensor,  # [E, 2] int, all > 0
    depths: Tensor,  # [E]
    conics: Tensor,  # [E, 3]
    opacities: Tensor,  # [E]
    feats: Tensor,  # [E, F]
    n_images: int,
    width: int,
    height: int,
    chunk_elems: int,
    abs_index: Tensor | None = None,
    abs_buffer: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """Composite the entries into images; returns features [I, H, W, F] and transmittance [I, H, W]."""
    device, dtype = means2d.device, means2d.dtype
    F = feats.shape[-1]
    tw, th = math.ceil(width / TILE), math.ceil(height / TILE)
    n_tiles = n_images * tw * th
    P = TILE * TILE

    # 1. Tiles each entry touches (gsplat's isect_tiles), sorted by (image tile, depth).
    with torch.no_grad():
        m = means2d.detach() / TILE
        r = radii.to(dtype) / TILE
        x0 = torch.floor(m[:, 0] - r[:, 0]).clamp(0, tw).long()
        x1 = torch.ceil(m[:, 0] + r[:, 0]).clamp(0, tw).long()
        y0 = torch.floor(m[:, 1] - r[:, 1]).clamp(0, th).long()
        y1 = torch.ceil(m[:, 1] + r[:, 1]).clamp(0, th).long()
        nx = x1 - x0
        n_per = nx * (y1 - y0)
        ent = torch.repeat_interleave(torch.arange(len(n_per), device=device), n_per)
        k = torch.arange(len(ent), device=device) - (torch.cumsum(n_per, 0) - n_per)[ent]
        tile = image_ids[ent] * (tw * th) + (y0[ent] + k // nx[ent]) * tw + x0[ent] + k % nx[ent]
        order = torch.argsort(depths.detach()[ent], stable=True)
        order = order[torch.argsort(tile[order], stable=True)]
        ent, tile = ent[order], tile[order]
        counts = torch.bincount(tile, minlength=n_tiles)
        starts = torch.cumsum(counts, 0) - counts
        # Busy tiles first, so each chunk pads its tiles' Gaussian lists to similar lengths.
        units = torch.nonzero(counts, as_tuple=True)[0]
        units = units[torch.argsort(counts[units], descending=True, stable=True)]
        unit_counts = counts[units].tolist()

        local = torch.arange(P, device=device)
        offs = torch.stack([local % TILE, local // TILE], dim=-1).to(dtype) + 0.5  # [P, 2]

    # Half conics, so that sigma = a dx^2 + b dx dy + c dy^2.
    ca, cb, cc = 0.5 * conics[:, 0], conics[:, 1], 0.5 * conics[:, 2]
    mx, my = means2d[:, 0], means2d[:, 1]
    out_ids, out_feats, out_T = [], [], []
    i = 0
    while i < len(units):
        L_all = unit_counts[i]
        L_chunk = max(1, min(L_all, chunk_elems // P))
        n_units = max(1, chunk_elems // (P * L_chunk))
        u = units[i : i + n_units]
        cnt = counts[u]
        t_img = u % (tw * th)
        corner = torch.stack([t_img % tw, t_img // tw], dim=-1).to(dtype) * TILE  # [U, 2]
        pix = corner[:, None, :] + offs[None]  # [U, P, 2]
        T = torch.ones(len(u), P, device=device, dtype=dtype)
        acc = torch.zeros(len(u), P, F, device=device, dtype=dtype)
        for l0 in range(0, L_all, L_chunk):
            lidx = l0 + torch.arange(min(L_chunk, L_all - l0), device=device)
            valid = lidx[None] < cnt[:, None]  # [U, L]
            ids = ent[
                torch.where(valid, starts[u][:, None] + lidx[None], torch.zeros_like(valid, dtype=torch.long))
            ]
            part, T = _Composite.apply(
                T, pix, mx[ids], my[ids], ca[ids], cb[ids], cc[ids], opacities[ids], feats[ids], valid,
                None if abs_index is None else abs_index[ids], abs_buffer,
            )  # fmt: skip
            acc = acc + part
        out_ids.append(u)
        out_feats.append(acc)
        out_T.append(T)
        i += n_units

    # 2. Scatter tiles back into images (empty tiles: no features, full transmittance).
    feats_img = torch.zeros(n_tiles, P, F, device=device, dtype=dtype)
    T_img = torch.ones(n_tiles, P, device=device, dtype=dtype)
    if out_ids:
        idx = torch.cat(out_ids)
        feats_img = feats_img.index_copy(0, idx, torch.cat(out_feats))
        T_img = T_img.index_copy(0, idx, torch.cat(out_T))
    else:
        # Nothing visible: stay in the graph (zero gradients), as gsplat's outputs do.
        tie = sum(t.sum() for t in (means2d, conics, opacities, feats) if t.requires_grad)
        feats_img = feats_img + 0.0 * tie

    def untile(x: Tensor) -> Tensor:  # [n_tiles, P, D] -> [I, H, W, D]
        d = x.shape[-1]
        x = x.reshape(n_images, th, tw, TILE, TILE, d).permute(0, 1, 3, 2, 4, 5)
        return x.reshape(n_images, th * TILE, tw * TILE, d)[:, :height, :width]

    return untile(feats_img), untile(T_img[..., None])[..., 0]


def rasterize_torch(
    means: Tensor,  # [N, 3]
    quats: Tensor,  # [N, 4] wxyz, unnormalized
    scales: Tensor,  # [N, 3] activated
    opacities: Tensor,  # [N] activated
    colors: Tensor,  # [N, K, 3] / [C, N, K, 3] SH (sh_degree set) or [N, D] / [C, N, D] (sh_degree None)
    viewmats: Tensor,  # [C, 4, 4] world-to-camera
    Ks: Tensor,  # [C, 3, 3]
    width: int,
    height: int,
    near_plane: float = 0.01,
    far_plane: float = 1e10,
    radius_clip: float = 0.0,
    eps2d: float = 0.3,
    sh_degree: int | None = None,
    packed: bool = True,
    backgrounds: Tensor | None = None,  # [C, D]
    render_mode: RenderMode = "RGB",
    absgrad: bool = False,
    rasterize_mode: Literal["classic", "antialiased"] = "classic",
    chunk_elems: int = 1 << 21,
) -> tuple[Tensor, Tensor, dict]:
    """Rasterize N Gaussians into C images, like ``gsplat.rasterization``.

    Returns ``(render_colors [C, H, W, D or D+1 or 1], render_alphas [C, H, W, 1], info)``; ``info``
    holds what gsplat's strategies read: ``means2d`` (pixels, in the graph; [nnz, 2] packed or
    [C, N, 2]), ``radii`` (int32, [nnz, 2] or [C, N, 2]), ``depths``, ``conics``, ``opacities``,
    ``camera_ids`` / ``gaussian_ids`` (int64, packed; None otherwise), ``width``, ``height``,
    ``n_cameras``. With ``absgrad`` the backward also fills ``info["means2d"].absgrad``.
    ``chunk_elems`` bounds pixels x Gaussians evaluated (and kept for backward) at once.
    """
    N, C = means.shape[0], viewmats.shape[0]
    assert means.shape == (N, 3), means.shape
    assert quats.shape == (N, 4) and scales.shape == (N, 3), (quats.shape, scales.shape)
    assert opacities.shape == (N,), opacities.shape
    assert viewmats.shape == (C, 4, 4) and Ks.shape == (C, 3, 3), (viewmats.shape, Ks.shape)
    assert render_mode in ("RGB", "D", "ED", "RGB+D", "RGB+ED"), render_mode
    assert rasterize_mode in ("classic", "antialiased"), rasterize_mode
    per_camera_colors = colors.dim() == (4 if sh_degree is not None else 3)
    if sh_degree is None:
        assert colors.shape[:-1] in ((N,), (C, N)), colors.shape
    else:
        assert colors.shape[:-2] in ((N,), (C, N)) and colors.shape[-1] == 3, colors.shape
        assert (sh_degree + 1) ** 2 <= colors.shape[-2], (sh_degree, colors.shape)
    device = means.device
    antialiased = rasterize_mode == "antialiased"
    covars = covariances(quats, scales)  # [N, 3, 3]
    proj_args = (width, height, eps2d, near_plane, antialiased)

    # 1. Project; cull; packed keeps only the visible (camera, Gaussian) pairs in the graph.
    if packed:
        with torch.no_grad():
            dense = _project(means[None], covars[None], viewmats[:, None], Ks[:, None], *proj_args)
            radii_dense = _radii(dense, opacities[None], width, height, near_plane, far_plane, radius_clip)
        camera_ids, gaussian_ids = torch.nonzero((radii_dense > 0).all(-1), as_tuple=True)
        proj = _project(
            means[gaussian_ids], covars[gaussian_ids], viewmats[camera_ids], Ks[camera_ids], *proj_args
        )
        radii = radii_dense[camera_ids, gaussian_ids]  # [nnz, 2]
        entry_opac = opacities[gaussian_ids]
        image_ids = camera_ids
        pick = lambda x: x  # noqa: E731 - entries are already the packed rows
    else:
        proj = _project(means[None], covars[None], viewmats[:, None], Ks[:, None], *proj_args)
        radii = _radii(proj, opacities[None], width, height, near_plane, far_plane, radius_clip)  # [C, N, 2]
        camera_ids, gaussian_ids = torch.nonzero((radii > 0).all(-1), as_tuple=True)
        entry_opac = opacities[gaussian_ids]
        image_ids = camera_ids
        pick = lambda x: x[camera_ids, gaussian_ids]  # noqa: E731
    means2d, depths, conics = proj["means2d"], proj["depths"], proj["conics"]
    if antialiased:
        entry_opac = entry_opac * pick(proj["compensations"])

    # 2. Colors per entry: SH evaluated toward each camera (+0.5, clamped at 0, as gsplat).
    if sh_degree is None:
        entry_colors = colors[camera_ids, gaussian_ids] if per_camera_colors else colors[gaussian_ids]
    else:
        campos = torch.linalg.inv(viewmats)[:, :3, 3]  # [C, 3]
        coeffs = colors[camera_ids, gaussian_ids] if per_camera_colors else colors[gaussian_ids]
        dirs = means[gaussian_ids] - campos[camera_ids]
        entry_colors = torch.clamp_min(eval_sh(sh_degree, dirs, coeffs) + 0.5, 0.0)
    entry_depths = pick(depths)
    if render_mode in ("RGB+D", "RGB+ED"):
        feats = torch.cat([entry_colors, entry_depths[:, None]], dim=-1)
    elif render_mode in ("D", "ED"):
        feats = entry_depths[:, None]
    else:
        feats = entry_colors

    # 3. Rasterize.
    abs_buffer = abs_index = None
    if absgrad:
        abs_buffer = torch.zeros(means2d.shape, device=device, dtype=means2d.dtype)
        abs_index = torch.arange(len(camera_ids), device=device)
        if not packed:
            abs_index = camera_ids * N + gaussian_ids
        means2d.absgrad = abs_buffer  # filled by the backward, as gsplat does
    flat = abs_buffer.view(-1, 2) if abs_buffer is not None else None
    img, T = _rasterize_entries(
        image_ids,
        pick(means2d),
        pick(radii),
        entry_depths,
        pick(conics),
        entry_opac,
        feats,
        C,
        width,
        height,
        chunk_elems,
        abs_index,
        flat,
    )
    alphas = (1.0 - T)[..., None]  # [C, H, W, 1]
    if backgrounds is not None:
        if render_mode in ("RGB+D", "RGB+ED"):
            backgrounds = torch.cat([backgrounds, torch.zeros_like(backgrounds[:, :1])], dim=-1)
        elif render_mode in ("D", "ED"):
            backgrounds = torch.zeros_like(backgrounds[:, :1])
        img = img + T[..., None] * backgrounds[:, None, None, :]
    if render_mode in ("ED", "RGB+ED"):
        img = torch.cat([img[..., :-1], img[..., -1:] / alphas.clamp(min=1e-10)], dim=-1)

    info = {
        "camera_ids": camera_ids if packed else None,
        "gaussian_ids": gaussian_ids if packed else None,
        "batch_ids": torch.zeros_like(camera_ids) if packed else None,
        "radii": radii,
        "means2d": means2d,
        "depths": depths,
        "conics": conics,
        "opacities": entry_opac if packed else torch.broadcast_to(opacities[None], (C, N)),
        "width": width,
        "height": height,
        "tile_size": TILE,
        "tile_width": math.ceil(width / TILE),
        "tile_height": math.ceil(height / TILE),
        "n_cameras": C,
        "n_batches": 1,
    }
    return img, alphas, info
