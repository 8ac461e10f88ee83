"""Shaded renders: lighting on a known scene, the mode mix, and the trainer showing every term the same images."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from splatvlm.gaussians.cameras import orbit_cameras
from splatvlm.gaussians.render import RenderConfig, render
from splatvlm.gaussians.scene import make_params
from splatvlm.gaussians.shading import Lighting, sample_lighting, shade, surface_points

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


def ball(n: int = 3000, colors: torch.Tensor | None = None) -> torch.nn.ParameterDict:
    g = torch.Generator().manual_seed(0)
    dirs = torch.nn.functional.normalize(torch.randn(n, 3, generator=g), dim=-1)
    return make_params(
        means=0.5 * dirs,
        quats=torch.tensor([[1.0, 0, 0, 0]]).repeat(n, 1),
        scales=torch.full((n, 3), math.log(0.035)),
        opacities=torch.full((n,), 4.0),
        sh0=torch.zeros(n, 1, 3) if colors is None else colors[:, None, :],
        shN=torch.zeros(n, 0, 3),
    )


def side_camera(res: int = 40):
    # On the +y axis looking at the origin: world +x and -x lie on either side of the image.
    return orbit_cameras(
        torch.tensor([0.0]), torch.tensor([90.0]), torch.tensor([3.0]), torch.tensor([40.0]), res, res
    )


def test_sphere_lit_from_plus_x_is_brighter_on_its_plus_x_side():
    cams = side_camera()
    with torch.no_grad():
        out = render(ball(), cams, RenderConfig(backend="torch"), torch.ones(1, 3))
    light = Lighting("textureless", diffuse=1.0, light_positions=torch.tensor([[100.0, 0.0, 0.0]]))
    img = shade(out.rgb, out.alpha, out.depth, torch.ones(1, 3), cams, light)[0, ..., 0]
    points = surface_points(out.depth, cams.Ks, cams.viewmats)[0]
    x = points[..., 0]
    solid = out.alpha[0, ..., 0] > 0.99
    plus, minus = img[solid & (x > 0.2)], img[solid & (x < -0.2)]
    assert len(plus) > 20 and len(minus) > 20
    assert plus.mean() > 0.4 and minus.mean() < 0.05  # lit side bright, the far side dark (no ambient light)
    # Lambert on the ideal sphere: the radial direction's x (the ball of blobs is a little bumpy)
    lambert = torch.nn.functional.normalize(points, dim=-1)[..., 0].clamp_min(0.0)
    assert float((img - lambert)[solid].abs().mean()) < 0.08
    # diffuse shading of a white ball is that same light
    n = 3000
    with torch.no_grad():
        white = render(
            ball(n, torch.full((n, 3), 0.5 / 0.28209479177387814)), cams, RenderConfig(backend="torch")
        )
    assert float(white.rgb[0][solid].min()) > 0.95
    lit = shade(white.rgb, white.alpha, white.depth, None, cams, dataclasses.replace(light, mode="diffuse"))
    torch.testing.assert_close(lit[0, ..., 0][solid], img[solid], atol=0.05, rtol=0)


def test_textureless_is_uniform_gray_where_the_albedo_varies():
    """A plane facing the camera under a distant light: textureless is one gray whatever the colors; diffuse
    is the colors times that gray; albedo is the render itself."""
    cams = side_camera(16)
    depth = torch.full((1, 16, 16, 1), 2.0)
    alpha = torch.ones(1, 16, 16, 1)
    g = torch.Generator().manual_seed(1)
    rgb = torch.rand(1, 16, 16, 3, generator=g)
    center = cams.c2w[0, :3, 3].float()
    light = Lighting("textureless", diffuse=0.6, light_positions=(1e5 * center)[None])
    out = shade(rgb, alpha, depth, torch.zeros(1, 3), cams, light)
    assert rgb.std() > 0.2
    inner = out[
        :, 1:-1, 1:-1
    ]  # the borders' one-sided normals are exact too, but keep the claim to the interior
    torch.testing.assert_close(inner, torch.full_like(inner, 1.0), atol=1e-3, rtol=0)  # light faces the plane
    side = Lighting("textureless", diffuse=0.6, light_positions=torch.tensor([[1e5, 0.0, 1e5]]))
    tilted = shade(rgb, alpha, depth, None, cams, side)[0]
    assert tilted.std() < 1e-3 and 0.4 < float(tilted.mean()) < 1.0  # gray, neither black nor full light
    torch.testing.assert_close(tilted[..., 0], tilted[..., 2])
    other = shade(torch.rand(1, 16, 16, 3, generator=g), alpha, depth, None, cams, side)
    torch.testing.assert_close(other[0], tilted)
    diffuse = shade(rgb, alpha, depth, None, cams, dataclasses.replace(side, mode="diffuse"))
    torch.testing.assert_close(diffuse, rgb * tilted, atol=1e-5, rtol=0)
    assert shade(rgb, alpha, depth, None, cams, Lighting("albedo")) is rgb


def test_background_stays_where_nothing_is_drawn():
    cams = side_camera(8)
    rgb = torch.rand(1, 8, 8, 3)
    alpha = torch.zeros(1, 8, 8, 1)
    bg = torch.tensor([[0.2, 0.4, 0.9]])
    out = shade(rgb, alpha, torch.zeros(1, 8, 8, 1), bg, cams, Lighting("diffuse", 0.5, torch.ones(1, 3)))
    torch.testing.assert_close(out, bg[:, None, None, :].expand_as(out))


def test_mode_mix_and_lights_follow_the_references():
    cams = orbit_cameras(
        torch.zeros(8), torch.arange(8.0) * 45, torch.full((8,), 3.0), torch.full((8,), 40.0), 8, 8
    )
    g = torch.Generator().manual_seed(0)
    draws = [sample_lighting(cams, 4, g) for _ in range(4000)]
    share = {m: sum(d.mode == m for d in draws) / len(draws) for m in ("albedo", "diffuse", "textureless")}
    assert share["albedo"] == pytest.approx(0.25, abs=0.03)
    assert share["diffuse"] == pytest.approx(0.375, abs=0.03)
    assert share["textureless"] == pytest.approx(0.375, abs=0.03)
    split = torch.tensor([d.diffuse for d in draws])
    assert (
        0.0 <= float(split.min())
        and float(split.max()) <= 1.0
        and float(split.mean()) == pytest.approx(0.5, abs=0.03)
    )
    lights = draws[0].light_positions
    dist = lights.norm(dim=-1)
    assert lights.shape == (8, 3) and ((dist > 0.8 - 1e-5) & (dist < 1.5 + 1e-5)).all()
    # one distance per object (group of 4 views)
    assert torch.allclose(dist[:4], dist[0].expand(4)) and torch.allclose(dist[4:], dist[4].expand(4))
    # on average the light sits on the side of the view's own camera
    centers = cams.c2w[:, :3, 3].float()
    cos = torch.stack(
        [torch.nn.functional.cosine_similarity(d.light_positions, centers, dim=-1) for d in draws]
    )
    assert float(cos.mean()) > 0.5


def test_trainer_shows_every_term_the_same_shaded_images(tmp_path):
    from splatvlm.config import Weight, load_run_config
    from splatvlm.gaussians.scene import init_ball
    from splatvlm.run.train_state import new_state
    from splatvlm.run.trainer import Term, train

    cfg = load_run_config("demo")
    cfg = dataclasses.replace(
        cfg,
        steps=8,
        log_every=1,
        checkpoint_every=0,
        turntable_frames=0,
        scene=dataclasses.replace(cfg.scene, num_points=200),
        camera=dataclasses.replace(cfg.camera, num_views=4, resolution=16),
        render=dataclasses.replace(cfg.render, shading="mixed", shading_after=0.5),
        weights=dataclasses.replace(cfg.weights, sds=Weight(1.0), vlm=Weight(1.0)),
    )
    seen: dict[str, list] = {"sds": [], "vlm": []}

    def recorder(name):
        def fn(rgb, cams, step):
            seen[name].append(rgb.detach().clone())
            return {f"loss_{name}": rgb.mean()}

        return fn

    terms = {"sds": Term(recorder("sds"), ("sds",)), "vlm": Term(recorder("vlm"), ("vlm",))}
    state = new_state(init_ball(cfg.scene, torch.Generator().manual_seed(0)), cfg, torch.device("cpu"))
    train(cfg, state, terms, tmp_path, torch.device("cpu"), progress=False)
    assert len(seen["sds"]) == len(seen["vlm"]) == 8
    for a, b in zip(seen["sds"], seen["vlm"], strict=True):
        assert torch.equal(a, b)
    import json

    logs = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["shading"] for r in logs if r["step"] < 4] == [0] * 4  # albedo only for the first half
    later = {r["shading"] for r in logs if r["step"] >= 4}
    assert later <= {0, 1, 2} and later != {0}  # then the mix (this seed draws a lit mode)


def test_albedo_shading_draws_nothing_and_renders_no_depth():
    from splatvlm.config import load_run_config
    from splatvlm.run.trainer import step_lighting

    cfg = load_run_config("vlm3d")
    assert cfg.render.shading == "albedo" and load_run_config("vlm3d-full").render.shading == "mixed"
    mixed = dataclasses.replace(cfg, render=dataclasses.replace(cfg.render, shading="mixed"))
    cams = side_camera(8)
    g = torch.Generator().manual_seed(3)
    before = g.get_state()
    assert step_lighting(cfg, cams, 4000, g).mode == "albedo"
    assert torch.equal(g.get_state(), before)
    assert step_lighting(mixed, cams, 1000, g).mode == "albedo" and torch.equal(g.get_state(), before)
    step_lighting(mixed, cams, 1250, g)  # a quarter of 5000 steps: the mix has started
    assert not torch.equal(g.get_state(), before)


@cuda
def test_gsplat_and_torch_shade_alike():
    cams = side_camera(32)
    params = ball(2000).cuda()
    light = Lighting("diffuse", 0.7, torch.tensor([[2.0, 0.5, 0.5]]))
    outs = []
    for backend in ("gsplat", "torch"):
        with torch.no_grad():
            out = render(
                params, cams.to("cuda"), RenderConfig(backend=backend), torch.ones(1, 3, device="cuda")
            )
        outs.append(
            shade(out.rgb, out.alpha, out.depth, torch.ones(1, 3, device="cuda"), cams.to("cuda"), light)
        )
    torch.testing.assert_close(outs[0], outs[1], atol=2e-3, rtol=0)
