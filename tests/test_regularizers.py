"""Gaussian regularizers: values on known cases, where their gradients go, and the term the trainer weights."""

from __future__ import annotations

import math

import pytest
import torch

from splatvlm.gaussians.cameras import orbit_cameras
from splatvlm.gaussians.render import RenderOutput
from splatvlm.gaussians.scene import make_params
from splatvlm.guidance import regularizers as reg


def test_position_is_the_mean_distance_from_the_origin():
    means = torch.tensor([[1.0, 0.0, 0.0], [0.0, 3.0, 4.0]])
    assert float(reg.position_loss(means)) == pytest.approx(3.0)


def test_opacity_is_a_sum_weighted_by_the_detached_size():
    scales = torch.tensor([[3.0, 4.0, 0.0], [1.0, 0.0, 0.0]], requires_grad=True)
    opacities = torch.tensor([0.5, 1.0], requires_grad=True)
    loss = reg.opacity_loss(scales, opacities)
    assert loss.item() == pytest.approx(5.0 * 0.5 + 1.0 * 1.0)
    loss.backward()
    assert (
        scales.grad is None or not scales.grad.any()
    )  # the size only weighs: opacity fades, nothing shrinks
    torch.testing.assert_close(opacities.grad, torch.tensor([5.0, 1.0]))


def test_scales_is_the_sum_of_all_scales():
    assert float(reg.scales_loss(torch.tensor([[1.0, 2.0, 3.0], [0.5, 0.5, 0.5]]))) == pytest.approx(7.5)


def test_sparsity_is_a_smooth_l1_on_alpha():
    assert float(reg.sparsity_loss(torch.zeros(2, 4, 4, 1))) == pytest.approx(0.1)
    assert float(reg.sparsity_loss(torch.ones(2, 4, 4, 1))) == pytest.approx(math.sqrt(1.01))


def test_depth_tv_on_a_ramp_and_only_through_opaque_pixels():
    # depth rising by 1 per column: every horizontal difference is 1, every vertical 0 -> 2 * (0 + 1)
    depth = torch.arange(6.0).expand(2, 5, 6)[..., None].clone().requires_grad_(True)
    alpha = torch.ones(2, 5, 6, 1)
    assert reg.depth_tv_loss(depth, alpha).item() == pytest.approx(2.0)
    assert float(reg.tv(torch.full((1, 4, 4, 1), 3.0))) == 0.0
    alpha[:, :, 3:] = 0.5  # the right half is not opaque: its depth gets no gradient
    reg.depth_tv_loss(depth, alpha).backward()
    assert depth.grad[:, :, :3].abs().sum() > 0 and not depth.grad[:, :, 3:].any()


def test_normal_smoothness_is_zero_on_a_plane_and_not_on_a_crease():
    cams = orbit_cameras(
        torch.tensor([0.0]), torch.tensor([90.0]), torch.tensor([3.0]), torch.tensor([40.0]), 12, 12
    )
    alpha = torch.ones(1, 12, 12, 1)
    plane = torch.full((1, 12, 12, 1), 3.0)
    from splatvlm.gaussians.render import normals_from_depth

    flat = reg.normal_smooth_loss(normals_from_depth(plane, cams.Ks, cams.viewmats), alpha)
    assert float(flat) < 1e-6
    crease = plane + 0.05 * (torch.arange(12.0) - 5.5).abs()[None, None, :, None]  # a V seen edge-on
    assert float(reg.normal_smooth_loss(normals_from_depth(crease, cams.Ks, cams.viewmats), alpha)) > 1e-3


def scene(n: int = 5) -> torch.nn.ParameterDict:
    return make_params(
        means=torch.randn(n, 3),
        quats=torch.tensor([[1.0, 0, 0, 0]]).repeat(n, 1),
        scales=torch.full((n, 3), math.log(0.1)),
        opacities=torch.zeros(n),
        sh0=torch.zeros(n, 1, 3),
        shN=torch.zeros(n, 0, 3),
    )


def test_the_term_returns_the_wanted_losses_unweighted():
    params = scene()
    out = RenderOutput(rgb=torch.zeros(1, 4, 4, 3), depth=None, alpha=torch.zeros(1, 4, 4, 1), info={})
    term = reg.make_term(("position", "opacity", "scales", "sparsity"))
    losses = term(params, out, None, 0)
    assert set(losses) == {"loss_position", "loss_opacity", "loss_scales", "loss_sparsity"}
    assert float(losses["loss_scales"]) == pytest.approx(5 * 3 * 0.1)
    assert float(losses["loss_opacity"]) == pytest.approx(5 * 0.5 * 0.1 * math.sqrt(3))
    assert reg.make_term(("position",))(params, out, None, 0).keys() == {"loss_position"}
    with pytest.raises(ValueError, match="depth"):
        reg.make_term(("depth_tv",))(params, out, None, 0)
    with pytest.raises(ValueError, match="unknown"):
        reg.make_term(("nope",))
