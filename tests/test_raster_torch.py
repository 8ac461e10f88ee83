"""The pure-PyTorch rasterizer against a brute-force per-pixel reference, and its autograd plumbing."""

from __future__ import annotations

import math

import pytest
import torch

from splatvlm.gaussians.cameras import orbit_cameras
from splatvlm.gaussians.raster_torch import (
    ALPHA_MAX,
    ALPHA_THRESHOLD,
    _chunk_terms,
    _Composite,
    eval_sh,
    rasterize_torch,
)

W, H = 20, 12  # partial tiles both ways (8x8 tiles)


def tiny_scene(n: int = 6, dtype=torch.float64, seed: int = 0, sh_degree: int = 0):
    g = torch.Generator().manual_seed(seed)
    means = 0.25 * torch.randn(n, 3, generator=g, dtype=dtype)
    quats = torch.randn(n, 4, generator=g, dtype=dtype)
    scales = 0.06 + 0.2 * torch.rand(n, 3, generator=g, dtype=dtype)
    opacities = 0.3 + 0.69 * torch.rand(n, generator=g, dtype=dtype)
    k = (sh_degree + 1) ** 2
    colors = 0.8 * torch.randn(n, k, 3, generator=g, dtype=dtype)
    cams = orbit_cameras(
        torch.tensor([15.0, 40.0]),
        torch.tensor([30.0, 200.0]),
        torch.tensor([2.2, 2.0]),
        torch.tensor([35.0, 45.0]),
        W,
        H,
    )
    bg = torch.rand(2, 3, generator=g, dtype=dtype)
    return means, quats, scales, opacities, colors, cams.viewmats.to(dtype), cams.Ks.to(dtype), bg


def written_sh(degree: int, d: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    """The real SH basis written out (degree <= 3) for one direction d [3] and coefficients c [K, 3]."""
    x, y, z = (d / d.norm()).tolist()
    basis = [0.5 / math.sqrt(math.pi)]
    if degree >= 1:
        k1 = math.sqrt(3 / (4 * math.pi))
        basis += [-k1 * y, k1 * z, -k1 * x]
    if degree >= 2:
        k2 = 0.5 * math.sqrt(15 / math.pi)
        basis += [k2 * x * y, -k2 * y * z, 0.25 * math.sqrt(5 / math.pi) * (3 * z * z - 1), -k2 * x * z]
        basis += [0.25 * math.sqrt(15 / math.pi) * (x * x - y * y)]
    if degree >= 3:
        basis += [
            -0.25 * math.sqrt(35 / (2 * math.pi)) * y * (3 * x * x - y * y),
            0.5 * math.sqrt(105 / math.pi) * x * y * z,
            -0.25 * math.sqrt(21 / (2 * math.pi)) * y * (5 * z * z - 1),
            0.25 * math.sqrt(7 / math.pi) * z * (5 * z * z - 3),
            -0.25 * math.sqrt(21 / (2 * math.pi)) * x * (5 * z * z - 1),
            0.25 * math.sqrt(105 / math.pi) * z * (x * x - y * y),
            -0.25 * math.sqrt(35 / (2 * math.pi)) * x * (x * x - 3 * y * y),
        ]
    return (torch.tensor(basis, dtype=c.dtype)[:, None] * c[: len(basis)]).sum(0)


def brute_force(
    means, quats, scales, opacities, colors, viewmats, Ks, bg, sh_degree, eps2d=0.3, antialiased=False
):
    """Every Gaussian at every pixel center, in float64 Python loops: (rgb, alpha, expected depth)."""
    C, N = viewmats.shape[0], means.shape[0]
    rgb = torch.zeros(C, H, W, 3, dtype=torch.float64)
    alpha_img = torch.zeros(C, H, W, 1, dtype=torch.float64)
    depth_img = torch.zeros(C, H, W, 1, dtype=torch.float64)
    for c in range(C):
        V, K = viewmats[c].double(), Ks[c].double()
        fx, fy, cx, cy = K[0, 0].item(), K[1, 1].item(), K[0, 2].item(), K[1, 2].item()
        campos = torch.linalg.inv(V)[
            :3, 3
        ]  # as gsplat (the float32-built rotation is not exactly orthonormal)
        splats = []
        for i in range(N):
            q = quats[i].double() / quats[i].double().norm()
            w, x, y, z = q.tolist()
            Rq = torch.tensor(
                [
                    [1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)],
                    [2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)],
                    [2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)],
                ],
                dtype=torch.float64,
            )
            S = torch.diag(scales[i].double())
            cov = V[:3, :3] @ Rq @ S @ S @ Rq.T @ V[:3, :3].T
            p = V[:3, :3] @ means[i].double() + V[:3, 3]
            if p[2] < 0.01:
                continue
            tz = p[2].item()
            lim = lambda lo, hi, t: min(max(t, lo), hi)  # noqa: E731
            tx = tz * lim(-cx / fx - 0.15 * W / fx, (W - cx) / fx + 0.15 * W / fx, p[0].item() / tz)
            ty = tz * lim(-cy / fy - 0.15 * H / fy, (H - cy) / fy + 0.15 * H / fy, p[1].item() / tz)
            J = torch.tensor(
                [[fx / tz, 0, -fx * tx / tz**2], [0, fy / tz, -fy * ty / tz**2]], dtype=torch.float64
            )
            cov2 = J @ cov @ J.T
            det0 = torch.det(cov2).item()
            cov2 = cov2 + eps2d * torch.eye(2, dtype=torch.float64)
            o = opacities[i].item()
            if antialiased:
                o *= math.sqrt(max(det0 / torch.det(cov2).item(), 0.0))
            if sh_degree is None:
                col = colors[i].double()
            else:
                col = (written_sh(sh_degree, means[i].double() - campos, colors[i].double()) + 0.5).clamp(
                    min=0
                )
            mu = torch.tensor([fx * p[0] / tz + cx, fy * p[1] / tz + cy], dtype=torch.float64)
            splats.append((tz, mu, torch.linalg.inv(cov2), o, col))
        splats.sort(key=lambda s: s[0])
        for py in range(H):
            for px in range(W):
                pix = torch.tensor([px + 0.5, py + 0.5], dtype=torch.float64)
                T, acc, dep = 1.0, torch.zeros(3, dtype=torch.float64), 0.0
                for tz, mu, P, o, col in splats:
                    d = mu - pix
                    power = 0.5 * (d @ P @ d).item()
                    a = min(0.999, o * math.exp(-power))
                    if power < 0 or a < 1 / 255:
                        continue
                    if T * (1 - a) <= 1e-4:
                        break
                    acc += a * T * col
                    dep += a * T * tz
                    T *= 1 - a
                rgb[c, py, px] = acc + T * bg[c].double()
                alpha_img[c, py, px] = 1 - T
                depth_img[c, py, px] = dep / max(1 - T, 1e-10)
    return rgb, alpha_img, depth_img


@pytest.mark.parametrize("packed", [True, False])
@pytest.mark.parametrize(
    "dtype,sh_degree,antialiased,atol",
    [(torch.float64, 0, False, 1e-9), (torch.float64, 2, True, 1e-9), (torch.float32, 1, False, 1e-5)],
)
def test_matches_brute_force(packed, dtype, sh_degree, antialiased, atol):
    means, quats, scales, opac, colors, viewmats, Ks, bg = tiny_scene(dtype=dtype, sh_degree=sh_degree)
    img, alpha, info = rasterize_torch(
        means, quats, scales, opac, colors, viewmats, Ks, W, H, sh_degree=sh_degree, packed=packed,
        backgrounds=bg, render_mode="RGB+ED", rasterize_mode="antialiased" if antialiased else "classic",
    )  # fmt: skip
    ref_rgb, ref_alpha, ref_depth = brute_force(
        means, quats, scales, opac, colors, viewmats, Ks, bg, sh_degree, antialiased=antialiased
    )
    assert img.shape == (2, H, W, 4) and alpha.shape == (2, H, W, 1)
    assert ref_alpha.max() > 0.5 and (ref_alpha < 1e-6).any()  # the scene covers part of each view
    torch.testing.assert_close(img[..., :3].double(), ref_rgb, atol=atol, rtol=0)
    torch.testing.assert_close(alpha.double(), ref_alpha, atol=atol, rtol=0)
    covered = ref_alpha > 0.05  # expected depth is ill-conditioned where almost nothing is drawn
    torch.testing.assert_close(img[..., 3:].double()[covered], ref_depth[covered], atol=atol * 10, rtol=atol)


def test_opaque_pixels_stop_like_gsplat():
    """Many opaque layers: the transmittance cut-off (1e-4) and the 0.999 alpha clamp both matter."""
    n = 12
    means = torch.zeros(n, 3, dtype=torch.float64)
    means[:, 0] = torch.linspace(-0.02, 0.02, n, dtype=torch.float64)
    means[:, 2] = torch.linspace(-0.3, 0.3, n, dtype=torch.float64)
    quats = torch.tensor([[1.0, 0, 0, 0]], dtype=torch.float64).repeat(n, 1)
    scales = torch.full((n, 3), 0.3, dtype=torch.float64)
    opac = torch.full((n,), 0.995, dtype=torch.float64)
    colors = torch.rand(n, 3, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    cams = orbit_cameras(
        torch.tensor([0.0]), torch.tensor([0.0]), torch.tensor([3.0]), torch.tensor([40.0]), W, H
    )
    viewmats, Ks = cams.viewmats.double(), cams.Ks.double()
    bg = torch.ones(1, 3, dtype=torch.float64)
    img, alpha, _ = rasterize_torch(means, quats, scales, opac, colors, viewmats, Ks, W, H, backgrounds=bg)
    ref_rgb, ref_alpha, _ = brute_force(means, quats, scales, opac, colors, viewmats, Ks, bg, None)
    assert ref_alpha.max() > 1 - 1e-3
    torch.testing.assert_close(img, ref_rgb, atol=1e-9, rtol=0)
    torch.testing.assert_close(alpha, ref_alpha, atol=1e-9, rtol=0)


def _render_and_grads(packed: bool, chunk_elems: int = 1 << 21, absgrad: bool = False):
    means, quats, scales, opac, colors, viewmats, Ks, bg = tiny_scene(n=8, dtype=torch.float64, sh_degree=1)
    leaves = [t.requires_grad_() for t in (means, quats, scales, opac, colors)]
    img, alpha, info = rasterize_torch(
        means, quats, scales, opac, colors, viewmats, Ks, W, H, sh_degree=1, packed=packed, backgrounds=bg,
        render_mode="RGB+ED", chunk_elems=chunk_elems, absgrad=absgrad,
    )  # fmt: skip
    info["means2d"].retain_grad()
    target = torch.rand(img.shape, generator=torch.Generator().manual_seed(7), dtype=img.dtype)
    loss = ((img[..., :3] - target[..., :3]) ** 2).sum() + 0.01 * img[..., 3].sum() + alpha.sum()
    loss.backward()
    return img.detach(), alpha.detach(), [t.grad for t in leaves], info


def test_gradients_reach_every_parameter():
    _, _, grads, info = _render_and_grads(packed=True)
    for name, g in zip(("means", "quats", "scales", "opacities", "colors"), grads, strict=True):
        assert g is not None and torch.isfinite(g).all(), name
        assert g.abs().sum() > 0, name
    g2d = info["means2d"].grad
    assert g2d is not None and g2d.shape == info["means2d"].shape and g2d.abs().sum() > 0


def test_packed_and_unpacked_agree():
    img_p, alpha_p, grads_p, info_p = _render_and_grads(packed=True)
    img_u, alpha_u, grads_u, info_u = _render_and_grads(packed=False)
    torch.testing.assert_close(img_p, img_u, atol=1e-12, rtol=0)
    torch.testing.assert_close(alpha_p, alpha_u, atol=1e-12, rtol=0)
    for gp, gu in zip(grads_p, grads_u, strict=True):
        torch.testing.assert_close(gp, gu, atol=1e-10, rtol=1e-8)
    cid, gid = info_p["camera_ids"], info_p["gaussian_ids"]
    assert info_p["radii"].shape == (len(cid), 2) and info_u["radii"].shape == (2, 8, 2)
    assert info_p["radii"].dtype == torch.int32 and cid.dtype == torch.int64
    assert info_u["gaussian_ids"] is None and info_p["n_cameras"] == 2
    visible = (info_u["radii"] > 0).all(-1)
    assert int(visible.sum()) == len(cid) >= 8  # every Gaussian is seen by some view
    torch.testing.assert_close(info_u["radii"][cid, gid], info_p["radii"])
    torch.testing.assert_close(
        info_u["means2d"].grad[cid, gid], info_p["means2d"].grad, atol=1e-10, rtol=1e-8
    )
    assert info_u["means2d"].grad[~visible].abs().sum() == 0


def test_chunking_changes_nothing():
    """Tiny chunks split each tile's Gaussian list and the tiles into many checkpointed pieces."""
    img_a, alpha_a, grads_a, _ = _render_and_grads(packed=True)
    img_b, alpha_b, grads_b, _ = _render_and_grads(packed=True, chunk_elems=256 * 2)
    torch.testing.assert_close(img_a, img_b, atol=1e-12, rtol=0)
    for ga, gb in zip(grads_a, grads_b, strict=True):
        torch.testing.assert_close(ga, gb, atol=1e-10, rtol=1e-8)


def test_tile_size_changes_nothing(monkeypatch):
    """Pairs outside a Gaussian's box are below the alpha threshold, so 8 px tiles give gsplat's 16 px result."""
    import splatvlm.gaussians.raster_torch as rt

    img_a, alpha_a, grads_a, _ = _render_and_grads(packed=True)
    monkeypatch.setattr(rt, "TILE", 16)
    img_b, alpha_b, grads_b, _ = _render_and_grads(packed=True)
    torch.testing.assert_close(img_a, img_b, atol=1e-12, rtol=0)
    torch.testing.assert_close(alpha_a, alpha_b, atol=1e-12, rtol=0)
    for ga, gb in zip(grads_a, grads_b, strict=True):
        torch.testing.assert_close(ga, gb, atol=1e-10, rtol=1e-8)


def test_means2d_gradient_is_in_pixels():
    """Shifting the principal point moves every projected center by that many pixels and nothing else,
    so d loss / d cx (finite differences) must equal the sum of the means2d gradients' x parts."""
    means, quats, scales, opac, colors, viewmats, Ks, bg = tiny_scene(n=5, dtype=torch.float64)
    viewmats, Ks = viewmats[:1], Ks[:1]
    rgb = colors[:, 0] + 0.5
    target = torch.rand(1, H, W, 3, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    loss_of = lambda img: ((img - target) ** 2).sum()  # noqa: E731
    img, _, info = rasterize_torch(means.requires_grad_(), quats, scales, opac, rgb, viewmats, Ks, W, H)
    info["means2d"].retain_grad()
    loss_of(img).backward()
    g = info["means2d"].grad.sum(0)  # [2]
    assert g.abs().min() > 1e-3
    h = 1e-5
    for axis, (row, col) in enumerate([(0, 2), (1, 2)]):
        fd = []
        for s in (h, -h):
            K = Ks.clone()
            K[0, row, col] += s
            fd.append(
                loss_of(rasterize_torch(means.detach(), quats, scales, opac, rgb, viewmats, K, W, H)[0])
            )
        torch.testing.assert_close((fd[0] - fd[1]) / (2 * h), g[axis], atol=1e-6, rtol=1e-5)


def test_gradcheck_tiny():
    means, quats, scales, opac, colors, viewmats, Ks, bg = tiny_scene(n=3, dtype=torch.float64, sh_degree=1)
    viewmats, Ks = viewmats[:1], Ks[:1]

    def f(m, q, s, o, c):
        img, alpha, _ = rasterize_torch(
            m, q, s, o, c, viewmats, Ks, W, H, sh_degree=1, backgrounds=bg[:1], render_mode="RGB+ED"
        )
        return img, alpha

    inputs = [t.clone().requires_grad_() for t in (means, quats, scales, opac, colors)]
    # Fast mode checks random projections of the Jacobian (the full one takes ~1000 backward calls).
    assert torch.autograd.gradcheck(f, inputs, eps=1e-6, atol=1e-5, rtol=1e-3, fast_mode=True)


def test_composite_backward_gradcheck():
    """The hand-written compositing backward against finite differences, on a chunk where some Gaussians
    are skipped (alpha < 1/255), one is clamped at 0.999 and pixels stop early."""
    g = torch.Generator().manual_seed(0)
    U, P, L = 2, 6, 5
    pix = 4 * torch.rand(U, P, 2, generator=g, dtype=torch.float64)
    T_in = (0.3 + 0.7 * torch.rand(U, P, generator=g, dtype=torch.float64)).requires_grad_()
    mx, my = (4 * torch.rand(U, L, generator=g, dtype=torch.float64) for _ in range(2))
    ca = 0.1 + 0.3 * torch.rand(U, L, generator=g, dtype=torch.float64)
    cc = 0.1 + 0.3 * torch.rand(U, L, generator=g, dtype=torch.float64)
    cb = 0.1 * torch.randn(U, L, generator=g, dtype=torch.float64)
    opac = 0.2 + 0.75 * torch.rand(U, L, generator=g, dtype=torch.float64)
    # Gaussian (0, 1) sits on pixel (0, 0) with opacity above the 0.999 clamp; Gaussian (0, 2) is faint
    # (skipped at far pixels); Gaussians (1, 0..2) are nearly opaque on pixel (1, 0), which stops early.
    mx[0, 1], my[0, 1], opac[0, 1] = pix[0, 0, 0] + 1e-3, pix[0, 0, 1], 0.9995
    opac[0, 2] = 0.01
    mx[1, :3], my[1, :3], opac[1, :3] = pix[1, 0, 0] + 0.05, pix[1, 0, 1] - 0.05, 0.99
    feats = torch.randn(U, L, 3, generator=g, dtype=torch.float64)
    valid = torch.ones(U, L, dtype=torch.bool)
    valid[1, -1] = False
    alpha, T_before, raw, *_ = _chunk_terms(T_in, pix, mx, my, ca, cb, cc, opac, valid)
    assert (raw > ALPHA_MAX).any() and ((raw < ALPHA_THRESHOLD) & valid[:, None]).any()
    assert ((raw > ALPHA_THRESHOLD) & (alpha == 0) & valid[:, None]).any()  # cut off by the stop
    inputs = [t.requires_grad_() for t in (mx, my, ca, cb, cc, opac, feats)]

    def f(T, *xs):
        return _Composite.apply(T, pix, *xs, valid, None, None)

    assert torch.autograd.gradcheck(f, [T_in, *inputs], eps=1e-7, atol=1e-6, rtol=1e-4)

    # absgrad: per pixel |d loss / d mean|, summed, via autograd on per-pixel copies of the means.
    buf = torch.zeros(U * L, 2, dtype=torch.float64)
    index = torch.arange(U * L).reshape(U, L)
    out, T_out = _Composite.apply(T_in, pix, *inputs, valid, index, buf)
    (out.square().sum() + T_out.sum()).backward()
    ref = torch.zeros(U, L, 2, dtype=torch.float64)
    for p in range(P):
        mxp, myp = mx.detach().clone().requires_grad_(), my.detach().clone().requires_grad_()
        o, t = _Composite.apply(
            T_in.detach()[:, p : p + 1], pix[:, p : p + 1], mxp, myp, *inputs[2:], valid, None, None
        )
        # The loss is a sum over pixels, so pixel p's own term gives its per-pixel gradient.
        (o.square().sum() + t.sum()).backward()
        ref += torch.stack([mxp.grad.abs(), myp.grad.abs()], dim=-1)
    torch.testing.assert_close(buf.reshape(U, L, 2), ref)


def test_absgrad_bounds_grad():
    _, _, _, info = _render_and_grads(packed=True, absgrad=True)
    m2d = info["means2d"]
    assert m2d.absgrad.shape == m2d.shape
    assert (m2d.absgrad >= m2d.grad.abs() - 1e-9).all()
    assert (m2d.absgrad > m2d.grad.abs() + 1e-6).any()  # per-pixel gradients of both signs exist


@pytest.mark.parametrize("degree", [0, 1, 2, 3])
def test_sh_matches_gsplat_and_written_formula(degree):
    g = torch.Generator().manual_seed(degree)
    dirs = torch.randn(16, 3, generator=g, dtype=torch.float64)
    coeffs = torch.randn(16, 16, 3, generator=g, dtype=torch.float64)
    ours = eval_sh(degree, dirs, coeffs)
    written = torch.stack([written_sh(degree, d, c) for d, c in zip(dirs, coeffs, strict=True)])
    torch.testing.assert_close(ours, written, atol=1e-12, rtol=0)
    # gsplat's own PyTorch reference of its CUDA SH kernel (the CUDA op itself needs a GPU).
    from gsplat.cuda._torch_impl import _spherical_harmonics

    torch.testing.assert_close(ours, _spherical_harmonics(degree, dirs, coeffs), atol=1e-10, rtol=0)


def test_sh_colors_equal_precomputed_rgb():
    """SH evaluated inside the rasterizer equals per-camera RGB computed outside and passed in."""
    means, quats, scales, opac, colors, viewmats, Ks, bg = tiny_scene(dtype=torch.float64, sh_degree=3)
    img_sh, _, _ = rasterize_torch(means, quats, scales, opac, colors, viewmats, Ks, W, H, sh_degree=3)
    campos = torch.linalg.inv(viewmats)[:, :3, 3]
    rgb = (eval_sh(3, means[None] - campos[:, None], colors[None].expand(2, -1, -1, -1)) + 0.5).clamp(min=0)
    img_rgb, _, _ = rasterize_torch(means, quats, scales, opac, rgb, viewmats, Ks, W, H, packed=False)
    torch.testing.assert_close(img_sh, img_rgb, atol=1e-12, rtol=0)


def test_culling_and_empty_views():
    means, quats, scales, opac, colors, viewmats, Ks, bg = tiny_scene(dtype=torch.float64)
    # Move everything behind camera 0 and off the image of camera 1: nothing is drawn, nothing is NaN.
    far_away = (torch.linalg.inv(viewmats)[0, :3, :3] @ torch.tensor([0, 0, -5.0], dtype=torch.float64))[None]
    m = (means * 0 + far_away).requires_grad_()
    img, alpha, info = rasterize_torch(
        m, quats, scales, opac, colors, viewmats[:1], Ks[:1], W, H, sh_degree=0
    )
    assert alpha.abs().max() == 0 and info["means2d"].shape == (0, 2)
    img.sum().backward()
    assert m.grad is not None and m.grad.abs().sum() == 0
    # A faint Gaussian (opacity < 1/255) is culled; radius_clip culls small footprints.
    _, _, info = rasterize_torch(
        means, quats, scales, opac * 0 + 0.003, colors, viewmats, Ks, W, H, sh_degree=0
    )
    assert len(info["gaussian_ids"]) == 0
    _, _, info = rasterize_torch(
        means, quats, scales, opac, colors, viewmats, Ks, W, H, sh_degree=0, radius_clip=50
    )
    assert len(info["gaussian_ids"]) == 0
