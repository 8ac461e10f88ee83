"""render(): backend choice, outputs, gradients to the scene parameters; normals from depth; gsplat parity."""

from __future__ import annotations

import math

import pytest
import torch

from splatvlm.errors import SplatVLMError
from splatvlm.gaussians.cameras import CameraConfig, eval_orbit, orbit_cameras
from splatvlm.gaussians.raster_torch import rasterize_torch
from splatvlm.gaussians.render import RenderConfig, normals_from_depth, render, resolve_backend
from splatvlm.gaussians.scene import SceneConfig, activated, init_ball

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


def small_scene(n: int = 300, sh_degree: int = 1, seed: int = 0) -> torch.nn.ParameterDict:
    g = torch.Generator().manual_seed(seed)
    params = init_ball(
        SceneConfig(num_points=n, opacity=0.6, color_noise=0.4, sh_degree=sh_degree), generator=g
    )
    with torch.no_grad():
        params["shN"].normal_(0.0, 0.2, generator=g)
        params["quats"].normal_(generator=g)
        params["scales"].add_(0.5 * torch.randn(params["scales"].shape, generator=g))
    return params


def test_resolve_backend():
    assert resolve_backend(RenderConfig(), "cpu") == "torch"
    assert resolve_backend(RenderConfig(backend="torch"), "cpu") == "torch"
    assert resolve_backend(RenderConfig(), "cuda") == "gsplat"
    with pytest.raises(SplatVLMError, match="needs CUDA") as e:
        resolve_backend(RenderConfig(backend="gsplat"), "cpu")
    assert "\n" not in str(e.value)


def test_render_outputs_and_background():
    params = small_scene()
    cams = eval_orbit(CameraConfig(), 3, 32)
    bg = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.2, 0.3, 0.4]])
    out = render(params, cams, RenderConfig(), bg)
    assert (
        out.rgb.shape == (3, 32, 32, 3)
        and out.depth.shape == (3, 32, 32, 1)
        and out.alpha.shape == (3, 32, 32, 1)
    )
    assert out.info["n_cameras"] == 3 and out.info["width"] == 32
    empty = out.alpha[..., 0] < 1e-6
    assert empty.any() and (out.alpha > 0.5).any()
    torch.testing.assert_close(out.rgb[empty], bg[:, None, None, :].expand(3, 32, 32, 3)[empty])
    # Expected depth of drawn pixels lies within the ball (radius 0.5) around the origin.
    d = cams.distance[:, None, None]
    drawn = out.alpha[..., 0] > 0.5
    assert ((out.depth[..., 0] > d - 0.6) & (out.depth[..., 0] < d + 0.6))[drawn].all()


def test_render_is_rasterize_torch_on_activated_params():
    params = small_scene(sh_degree=2)
    cams = eval_orbit(CameraConfig(), 2, 24)
    out = render(params, cams, RenderConfig(packed=False))
    a = activated(params)
    img, alpha, _ = rasterize_torch(
        a["means"], a["quats"], a["scales"], a["opacities"], a["colors"], cams.viewmats, cams.Ks, 24, 24,
        sh_degree=2, render_mode="RGB+ED",
    )  # fmt: skip
    torch.testing.assert_close(out.rgb, img[..., :3])
    torch.testing.assert_close(out.alpha, alpha)
    lower = render(params, cams, RenderConfig(), sh_degree=0).rgb
    assert (lower - out.rgb).abs().max() > 1e-3  # higher bands change view-dependent color
    with pytest.raises(SplatVLMError, match="sh_degree 3"):
        render(params, cams, RenderConfig(), sh_degree=3)
    with pytest.raises(SplatVLMError, match="backgrounds"):
        render(params, cams, RenderConfig(), torch.ones(3, 3))


@pytest.mark.parametrize("packed", [True, False])
def test_gradients_reach_every_scene_parameter(packed):
    params = small_scene(sh_degree=1)
    cams = eval_orbit(CameraConfig(), 2, 24)
    out = render(params, cams, RenderConfig(packed=packed), torch.ones(2, 3))
    out.info["means2d"].retain_grad()
    (out.rgb.square().mean() + out.depth.mean() + out.alpha.mean()).backward()
    for key, p in params.items():
        assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, key
    assert out.info["means2d"].grad.abs().sum() > 0


@pytest.mark.parametrize("packed", [True, False])
def test_render_without_depth_is_the_same_rgb_alpha_and_gradients(packed):
    """depth=False (what training renders) drops the depth channel and changes nothing else (bitwise on the
    torch rasterizer)."""
    cams = eval_orbit(CameraConfig(), 2, 24)
    bg = torch.tensor([[1.0, 1.0, 1.0], [0.2, 0.3, 0.4]])
    results = []
    for depth in (True, False):
        params = small_scene(sh_degree=1)
        out = render(params, cams, RenderConfig(packed=packed), bg, depth=depth)
        assert (out.depth is not None) == depth
        (out.rgb.square().mean() + out.alpha.mean()).backward()
        results.append((out.rgb.detach(), out.alpha.detach(), {k: p.grad for k, p in params.items()}))
    (rgb, alpha, grads), (rgb2, alpha2, grads2) = results
    assert torch.equal(rgb2, rgb) and torch.equal(alpha2, alpha)
    for key in grads:
        assert torch.equal(grads2[key], grads[key]), key


def plane_depth(cams, normal: torch.Tensor, offset: float) -> torch.Tensor:
    """Camera z of the plane {x : normal . x = offset} seen through every pixel center [C, H, W, 1]."""
    C, H, W = len(cams), cams.height, cams.width
    c2w = torch.linalg.inv(cams.viewmats.double())
    K = cams.Ks.double()
    u = torch.arange(W, dtype=torch.float64) + 0.5
    v = torch.arange(H, dtype=torch.float64) + 0.5
    rays_cam = torch.stack(
        [
            ((u[None, None, :] - K[:, 0, 2, None, None]) / K[:, 0, 0, None, None]).expand(C, H, W),
            ((v[None, :, None] - K[:, 1, 2, None, None]) / K[:, 1, 1, None, None]).expand(C, H, W),
            torch.ones(C, H, W, dtype=torch.float64),
        ],
        dim=-1,
    )  # camera rays with z = 1
    rays_world = torch.einsum("cij,chwj->chwi", c2w[:, :3, :3], rays_cam)
    origin = c2w[:, :3, 3]
    t = (offset - origin @ normal)[:, None, None] / (rays_world @ normal)
    return t[..., None]  # z = t because the rays have unit camera z


@pytest.mark.parametrize("packed", [True, False])
def test_band0_as_rgb_is_the_sh_evaluation(packed):
    """The colors render() hands gsplat at degree 0 (band 0, + 0.5, clamped) give the image and gradients of
    the SH evaluation (checked here on the torch rasterizer, which evaluates SH as gsplat does)."""
    from splatvlm.gaussians.scene import activated, sh0_to_rgb

    params = small_scene(n=500, sh_degree=0)
    cams = eval_orbit(CameraConfig(), 4, 32)
    outs = []
    for as_rgb in (True, False):
        for p in params.values():
            p.grad = None
        g = activated(params)
        colors, degree = (
            (sh0_to_rgb(params["sh0"][:, 0]).clamp_min(0.0), None) if as_rgb else (g["colors"], 0)
        )
        rgb, _, _ = rasterize_torch(
            g["means"], g["quats"], g["scales"], g["opacities"], colors, cams.viewmats, cams.Ks, cams.width,
            cams.height, sh_degree=degree, packed=packed,
        )  # fmt: skip
        rgb.square().sum().backward()
        outs.append((rgb.detach(), {k: p.grad.clone() for k, p in params.items() if p.numel()}))
    (a, ga), (b, gb) = outs
    assert a.abs().sum() > 0
    torch.testing.assert_close(a, b, rtol=0, atol=1e-6)
    for key in gb:
        torch.testing.assert_close(ga[key], gb[key], rtol=1e-5, atol=1e-8)


def test_normals_from_depth_plane():
    cams = orbit_cameras(
        torch.tensor([20.0, 35.0]),
        torch.tensor([10.0, 250.0]),
        torch.tensor([3.0, 3.0]),
        torch.tensor([40.0, 50.0]),
        24,
        16,
    )
    normal = torch.nn.functional.normalize(torch.tensor([0.3, -0.2, 1.0], dtype=torch.float64), dim=0)
    depth = plane_depth(cams, normal, offset=-0.2)
    assert (depth > 0).all()
    n = normals_from_depth(depth.float(), cams.Ks, cams.viewmats)
    assert n.shape == (2, 16, 24, 3)
    # The plane faces the cameras (they sit above it), so the normal is +normal everywhere.
    torch.testing.assert_close(n.double(), normal.expand_as(n), atol=1e-3, rtol=0)
    # Seen from below, it must flip to face that camera.
    below = orbit_cameras(
        torch.tensor([-70.0]), torch.tensor([0.0]), torch.tensor([3.0]), torch.tensor([40.0]), 24, 16
    )
    depth_below = plane_depth(below, normal, -0.2)
    assert (depth_below > 0).all()
    n_below = normals_from_depth(depth_below.float(), below.Ks, below.viewmats)
    torch.testing.assert_close(n_below.double(), -normal.expand_as(n_below), atol=1e-3, rtol=0)


def test_normals_from_depth_sphere():
    """Rendered expected depth of a dense ball of small Gaussians: normals ~ radial where it is opaque."""
    n = 4000
    g = torch.Generator().manual_seed(0)
    dirs = torch.nn.functional.normalize(torch.randn(n, 3, generator=g), dim=-1)
    from splatvlm.gaussians.scene import make_params

    params = make_params(
        means=0.5 * dirs,
        quats=torch.tensor([[1.0, 0, 0, 0]]).repeat(n, 1),
        scales=torch.full((n, 3), math.log(0.03)),
        opacities=torch.full((n,), 4.0),
        sh0=torch.zeros(n, 1, 3),
        shN=torch.zeros(n, 0, 3),
    )
    cams = eval_orbit(CameraConfig(), 1, 48, elevation=30.0)
    with torch.no_grad():
        out = render(params, cams, RenderConfig())
    normals = normals_from_depth(out.depth, cams.Ks, cams.viewmats)[0]
    # Reconstruct the world point of each pixel and compare its normal with the radial direction.
    c2w = torch.linalg.inv(cams.viewmats[0])
    K = cams.Ks[0]
    v, u = torch.meshgrid(torch.arange(48) + 0.5, torch.arange(48) + 0.5, indexing="ij")
    z = out.depth[0, ..., 0]
    pts_cam = torch.stack([(u - K[0, 2]) / K[0, 0] * z, (v - K[1, 2]) / K[1, 1] * z, z], dim=-1)
    pts = pts_cam @ c2w[:3, :3].T + c2w[:3, 3]
    radial = torch.nn.functional.normalize(pts, dim=-1)
    # Interior of the disc only: silhouettes mix foreground and background depth.
    thin = (out.alpha[..., 0] < 0.99).float()[None]  # [1, 1, H, W]
    inner = torch.nn.functional.max_pool2d(thin, 5, 1, 2)[0, 0] == 0
    assert inner.sum() > 100
    cos = (normals * radial).sum(-1)[inner]
    assert cos.median() > 0.98 and cos.min() > 0.8, (cos.median(), cos.min())


def dense(info: dict, x: torch.Tensor, n: int) -> torch.Tensor:
    """Per-(camera, Gaussian) values [C, N, ...] from packed [nnz, ...] or unpacked info."""
    if info["gaussian_ids"] is None:
        return x
    out = torch.zeros((info["n_cameras"], n) + tuple(x.shape[1:]), dtype=x.dtype, device=x.device)
    out[info["camera_ids"], info["gaussian_ids"]] = x
    return out


@cuda
@pytest.mark.cuda
@pytest.mark.parametrize("packed", [True, False])
def test_gsplat_and_torch_backends_agree(packed):
    torch.manual_seed(0)
    n = 3000
    params = small_scene(n=n, sh_degree=3).to("cuda")
    cams = eval_orbit(CameraConfig(), 4, 128).to("cuda")
    bg = torch.rand(4, 3, device="cuda")
    outs = {}
    for backend in ("gsplat", "torch"):
        for p in params.values():
            p.grad = None
        out = render(params, cams, RenderConfig(backend=backend, packed=packed), bg)
        out.info["means2d"].retain_grad()
        (out.rgb.square().sum() + out.alpha.sum()).backward()
        outs[backend] = (out, {k: p.grad.clone() for k, p in params.items()})
    (a, ga), (b, gb) = outs["gsplat"], outs["torch"]
    mse = (a.rgb - b.rgb).square().mean()
    psnr = float(10 * torch.log10(1.0 / mse))
    print(
        f"\ngsplat vs torch (packed={packed}): PSNR {psnr:.1f} dB, max |d rgb| {(a.rgb - b.rgb).abs().max():.2e}"
    )
    assert psnr >= 40.0
    assert (a.alpha - b.alpha).abs().max() < 1e-2
    drawn = a.alpha > 0.5
    assert (a.depth - b.depth).abs()[drawn].max() < 1e-2
    ra, rb = dense(a.info, a.info["radii"], n), dense(b.info, b.info["radii"], n)
    same_radii = (ra == rb).all(-1).float().mean()
    print(f"radii equal for {100 * float(same_radii):.3f}% of (camera, Gaussian) pairs")
    assert same_radii > 0.99
    for key in ga:
        rel = (ga[key] - gb[key]).norm() / ga[key].norm().clamp(min=1e-12)
        print(f"grad {key}: relative difference {float(rel):.2e}")
        assert rel < 0.05, key
    g2a = dense(a.info, a.info["means2d"].grad, n)
    g2b = dense(b.info, b.info["means2d"].grad, n)
    rel2d = (g2a - g2b).norm() / g2a.norm()
    print(f"means2d grad: relative difference {float(rel2d):.2e}")
    assert rel2d < 0.05


@cuda
@pytest.mark.cuda
def test_gsplat_without_depth_matches_with_depth():
    """The trainer's depth=False render on gsplat (3-channel kernels) against the 4-channel one."""
    params = small_scene(n=3000, sh_degree=1).to("cuda")
    cams = eval_orbit(CameraConfig(), 4, 128).to("cuda")
    bg = torch.rand(4, 3, device="cuda", generator=torch.Generator("cuda").manual_seed(0))
    outs = []
    for depth in (True, False):
        for p in params.values():
            p.grad = None
        out = render(params, cams, RenderConfig(), bg, depth=depth)
        (out.rgb.square().sum() + out.alpha.sum()).backward()
        outs.append((out, {k: p.grad.clone() for k, p in params.items()}))
    (a, ga), (b, gb) = outs
    assert b.depth is None and b.rgb.shape == a.rgb.shape
    torch.testing.assert_close(b.rgb, a.rgb, rtol=0, atol=1e-5)
    torch.testing.assert_close(b.alpha, a.alpha, rtol=0, atol=1e-5)
    for key in ga:  # the backward's atomic adds may sum in another order
        rel = (ga[key] - gb[key]).norm() / ga[key].norm().clamp(min=1e-12)
        assert rel < 1e-3, (key, float(rel))


@cuda
@pytest.mark.cuda
@pytest.mark.parametrize("packed", [True, False])
def test_gsplat_band0_colors_are_its_sh_path(packed):
    """Degree 0: render() hands gsplat RGB (no torch.inverse, no host sync); the same image and gradients as
    gsplat's own SH evaluation."""
    import gsplat

    from splatvlm.gaussians.scene import activated

    params = small_scene(n=3000, sh_degree=0).to("cuda")
    cams = eval_orbit(CameraConfig(), 4, 128).to("cuda")
    outs = []
    for ours in (True, False):
        for p in params.values():
            p.grad = None
        if ours:
            rgb = render(params, cams, RenderConfig(packed=packed), depth=False).rgb
        else:
            g = activated(params)
            rgb, _, _ = gsplat.rasterization(
                g["means"], g["quats"], g["scales"], g["opacities"], g["colors"], cams.viewmats, cams.Ks,
                cams.width, cams.height, sh_degree=0, packed=packed,
            )  # fmt: skip
        rgb.square().sum().backward()
        # (shN is empty at degree 0: no gradient on our path, an empty one on gsplat's)
        outs.append((rgb.detach(), {k: p.grad.clone() for k, p in params.items() if p.numel()}))
    (a, ga), (b, gb) = outs
    torch.testing.assert_close(a, b, rtol=0, atol=1e-6)
    for key in ga:
        rel = (ga[key] - gb[key]).norm() / gb[key].norm().clamp(min=1e-12)
        assert rel < 1e-4, (key, float(rel))
