"""Densification wired to our renderer: real growth and pruning on CPU, MCMC's CUDA-only error, CUDA runs."""

from __future__ import annotations

import math
import re

import pytest
import torch
from gsplat.strategy import MCMCStrategy

from splatvlm.errors import SplatVLMError
from splatvlm.gaussians.cameras import CameraConfig, eval_orbit
from splatvlm.gaussians.densify import (
    MCMC_NEEDS_CUDA,
    StrategyConfig,
    make_strategy,
    step_post_backward,
    step_pre_backward,
)
from splatvlm.gaussians.render import RenderConfig, render
from splatvlm.gaussians.scene import SceneConfig, init_ball, make_optimizers, num_gaussians

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


def setup(device: str = "cpu", n: int = 150):
    """A target rendered from one random ball and a fresh scene to fit it: half small, half large
    Gaussians (so both clone and split happen) and 10 nearly transparent ones (so pruning happens)."""
    g = torch.Generator().manual_seed(0)
    ref = init_ball(SceneConfig(num_points=400, opacity=0.8, color_noise=0.5), generator=g).to(device)
    cams = eval_orbit(CameraConfig(), 3, 32).to(device)
    white = torch.ones(3, 3, device=device)
    with torch.no_grad():
        target = render(ref, cams, RenderConfig(), white).rgb
    scene_cfg = SceneConfig(num_points=n, opacity=0.3, radius=0.4)
    params = init_ball(scene_cfg, generator=g)
    with torch.no_grad():
        params["scales"][: n // 2] = math.log(0.02)
        params["scales"][n // 2 :] = math.log(0.12)
        params["opacities"][:10] = math.log(0.002 / 0.998)
    params = params.to(device)
    return params, make_optimizers(params, scene_cfg), cams, white, target


def fit(cfg: StrategyConfig, steps: int, render_cfg: RenderConfig, device: str = "cpu", on_step=None):
    params, optimizers, cams, white, target = setup(device)
    strategy, state = make_strategy(cfg, render_cfg.packed, params, optimizers)
    counts, losses = [], []
    for step in range(steps):
        out = render(params, cams, render_cfg, white)
        step_pre_backward(cfg, strategy, params, optimizers, state, step, out.info)
        loss = (out.rgb - target).abs().mean()
        loss.backward()
        for opt in optimizers.values():
            opt.step()
        step_post_backward(cfg, strategy, params, optimizers, state, step, out.info)
        for opt in optimizers.values():
            opt.zero_grad(set_to_none=True)
        counts.append(num_gaussians(params))
        losses.append(loss.item())
        if on_step is not None:
            on_step(step, params, optimizers)
    return params, optimizers, counts, losses


def refine_log(text: str) -> tuple[int, int, int]:
    """(duplicated, split, pruned) summed over gsplat's verbose refinement lines."""
    dup = sum(int(m) for m in re.findall(r"(\d+) GSs duplicated", text))
    split = sum(int(m) for m in re.findall(r"(\d+) GSs split", text))
    pruned = sum(int(m) for m in re.findall(r"(\d+) GSs pruned", text))
    return dup, split, pruned


@pytest.mark.parametrize("packed", [True, False])
def test_default_strategy_grows_and_prunes(packed, capsys):
    cfg = StrategyConfig(refine_start_iter=0, refine_every=4, reset_every=0, grow_scale3d=0.05, verbose=True)

    def check_optimizer_state(step, params, optimizers):
        # Optimizer moments must follow the parameters through clone / split / prune.
        for key, opt in optimizers.items():
            assert opt.param_groups[0]["params"][0] is params[key]
            assert opt.state[params[key]]["exp_avg"].shape == params[key].shape

    params, _, counts, losses = fit(cfg, 9, RenderConfig(packed=packed), on_step=check_optimizer_state)
    dup, split, pruned = refine_log(capsys.readouterr().out)
    print(f"packed={packed}: counts {counts}, duplicated {dup}, split {split}, pruned {pruned}")
    assert dup > 0 and split > 0 and pruned >= 10
    assert counts[0] == 150 and counts[-1] == 150 + dup + split - pruned > 150
    assert counts[3] == 150 and counts[4] != 150  # refinement happens at step 4, not before
    assert losses[-1] < losses[0]
    assert torch.sigmoid(params["opacities"]).min() >= cfg.prune_opa


def test_opacity_reset_happens():
    """gsplat 1.5.3 itself never resets (a precedence bug); our wrapper does at multiples of reset_every."""
    cfg = StrategyConfig(refine_start_iter=100, reset_every=3)
    seen = {}

    def record(step, params, optimizers):
        seen[step] = torch.sigmoid(params["opacities"]).max().item()

    fit(cfg, 4, RenderConfig(), on_step=record)
    assert seen[2] > 0.2 and seen[3] <= 2 * cfg.prune_opa + 1e-6


def test_absgrad_needs_the_renderer_flag():
    cfg = StrategyConfig(
        absgrad=True, refine_start_iter=0, refine_every=2, grow_grad2d=0.0008, grow_scale3d=0.05
    )
    with pytest.raises(SplatVLMError, match="render.absgrad"):
        fit(cfg, 1, RenderConfig(absgrad=False))
    _, _, counts, _ = fit(cfg, 3, RenderConfig(absgrad=True))
    assert counts[-1] > counts[0]


def test_none_keeps_the_scene():
    _, _, counts, _ = fit(StrategyConfig(kind="none"), 3, RenderConfig())
    assert counts == [150, 150, 150]


def test_mcmc_on_cpu_is_a_one_line_error(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(SplatVLMError) as e:
        make_strategy(StrategyConfig(kind="mcmc"), packed=True)
    assert str(e.value) == MCMC_NEEDS_CUDA and "\n" not in str(e.value)
    # Even with CUDA present, a scene on the CPU is refused before any kernel is called.
    params, optimizers, cams, white, _ = setup()
    out = render(params, cams, RenderConfig(), white)
    out.rgb.mean().backward()
    with pytest.raises(SplatVLMError, match="MCMC densification needs CUDA"):
        step_post_backward(StrategyConfig(kind="mcmc"), MCMCStrategy(), params, optimizers, {}, 1, out.info)


def test_bad_config():
    with pytest.raises(SplatVLMError, match="refine_every"):
        make_strategy(StrategyConfig(refine_every=0))
    params, optimizers, *_ = setup()
    del optimizers["shN"]
    with pytest.raises(AssertionError):  # gsplat's check_sanity: one optimizer per trainable key
        make_strategy(StrategyConfig(), True, params, optimizers)


@cuda
@pytest.mark.cuda
@pytest.mark.parametrize("packed", [True, False])
def test_default_strategy_on_cuda(packed, capsys):
    cfg = StrategyConfig(refine_start_iter=0, refine_every=4, reset_every=0, grow_scale3d=0.05, verbose=True)
    _, _, counts, losses = fit(cfg, 9, RenderConfig(packed=packed), device="cuda")
    dup, split, pruned = refine_log(capsys.readouterr().out)
    print(f"cuda packed={packed}: counts {counts}, duplicated {dup}, split {split}, pruned {pruned}")
    assert dup > 0 and split > 0 and pruned >= 10 and counts[-1] > counts[0]
    assert losses[-1] < losses[0]


@cuda
@pytest.mark.cuda
def test_mcmc_on_cuda():
    cfg = StrategyConfig(kind="mcmc", refine_start_iter=0, refine_every=4, cap_max=10_000)
    params, _, counts, losses = fit(cfg, 9, RenderConfig(), device="cuda")
    print(f"mcmc counts {counts}")
    # Two refinements, each adds 5%; the 10 transparent Gaussians are relocated, not removed.
    assert counts[3] == 150 and counts[4] == int(1.05 * 150) and counts[-1] == int(1.05 * counts[4])
    assert torch.sigmoid(params["opacities"]).min() >= cfg.prune_opa - 1e-6
    assert losses[-1] < losses[0]
