import math

import pytest
import torch

from splatvlm.errors import SplatVLMError
from splatvlm.gaussians.scene import (
    SceneConfig,
    activated,
    init_ball,
    make_optimizers,
    means_lr,
    num_sh_bases,
    sh0_to_rgb,
    sh_degree_of,
)


@pytest.mark.parametrize("degree", [0, 1, 2, 3])
def test_ball_layout(degree):
    cfg = SceneConfig(num_points=500, radius=0.4, sh_degree=degree, color=(0.2, 0.4, 0.6))
    p = init_ball(cfg, torch.Generator().manual_seed(0))
    assert p["means"].shape == (500, 3) and p["shN"].shape == (500, num_sh_bases(degree) - 1, 3)
    assert p["means"].norm(dim=-1).max() <= 0.4 + 1e-6
    assert sh_degree_of(p) == degree
    torch.testing.assert_close(sh0_to_rgb(p["sh0"][:, 0]), torch.tensor([0.2, 0.4, 0.6]).expand(500, 3))
    act = activated(p)
    torch.testing.assert_close(act["opacities"], torch.full((500,), 0.1))
    assert act["colors"].shape == (500, num_sh_bases(degree), 3)


def test_one_optimizer_per_key():
    p = init_ball(SceneConfig(num_points=10))
    opts = make_optimizers(p, SceneConfig())
    assert set(opts) == set(p.keys())
    for k, opt in opts.items():
        assert opt.param_groups[0]["params"][0] is p[k]


def test_means_lr_decays():
    cfg = SceneConfig(lr_means=1e-3, lr_means_final=1e-5)
    assert math.isclose(means_lr(cfg, 0, 100), 1e-3)
    assert math.isclose(means_lr(cfg, 100, 100), 1e-5)
    assert math.isclose(means_lr(cfg, 50, 100), 1e-4, rel_tol=1e-6)


def test_means_lr_decays_over_a_fraction_then_stays():
    """threestudio-3dgs's shape: 1e-4 -> 1e-5 by step 1500 of 10000, constant after."""
    cfg = SceneConfig(lr_means=1e-4, lr_means_final=1e-5, lr_means_decay=0.15)
    assert math.isclose(means_lr(cfg, 0, 10000), 1e-4)
    assert math.isclose(means_lr(cfg, 750, 10000), math.sqrt(1e-9), rel_tol=1e-9)  # halfway, geometric
    assert math.isclose(means_lr(cfg, 1500, 10000), 1e-5)
    assert math.isclose(means_lr(cfg, 9999, 10000), 1e-5)
    # the whole run (the default) is the former schedule exactly
    whole = SceneConfig(lr_means=1e-3, lr_means_final=2e-5)
    for step in (0, 1, 777, 4999, 5000):
        t = min(max(step / 5000, 0.0), 1.0)
        assert means_lr(whole, step, 5000) == math.exp((1 - t) * math.log(1e-3) + t * math.log(2e-5))


def test_bad_init_rejected():
    with pytest.raises(SplatVLMError):
        init_ball(SceneConfig(num_points=0))
    with pytest.raises(SplatVLMError):
        init_ball(SceneConfig(opacity=1.5))
    with pytest.raises(SplatVLMError):
        init_ball(SceneConfig(sh_degree=4))
