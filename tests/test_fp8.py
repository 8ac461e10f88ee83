"""FP8 (e4m3) linears of the reward VLM: quantization, forward and input gradient against fp32, the MLP swap."""

import pytest
import torch
import torch.nn.functional as F

from splatvlm.guidance.fp8 import E4M3_MAX, Fp8Linear, fp8_mlp, fp8_vision_mlp, quantize_rows


def cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(F.cosine_similarity(a.detach().flatten().double(), b.detach().flatten().double(), dim=0))


def test_quantize_rows_scales_each_row_to_the_e4m3_range():
    x = torch.randn(8, 64) * torch.logspace(-3, 3, 8)[:, None]  # rows six decades apart
    q, s = quantize_rows(x)
    assert q.dtype == torch.float8_e4m3fn and s.shape == (8, 1)
    assert torch.allclose(q.float().abs().amax(dim=1), torch.full((8,), E4M3_MAX))
    back = q.float() * s
    # e4m3 keeps 3 mantissa bits: relative error at most 2^-4 for normal numbers
    big = x.abs() > x.abs().amax(dim=1, keepdim=True) / 64
    assert ((back - x).abs() <= x.abs() / 16 + 1e-12)[big].all()


def test_zero_rows_stay_zero():
    q, s = quantize_rows(torch.zeros(3, 32))
    assert torch.isfinite(s).all() and (q.float() == 0).all()


@pytest.mark.parametrize("bias", [False, True])
def test_linear_forward_and_input_gradient_track_fp32(bias):
    torch.manual_seed(0)
    lin = torch.nn.Linear(64, 96, bias=bias)
    fp8 = Fp8Linear(lin)
    x = torch.randn(2, 37, 64, requires_grad=True)  # a token count no tile divides
    y_ref, y = lin(x), fp8(x)
    assert y.shape == y_ref.shape and y.dtype == x.dtype
    assert cosine(y, y_ref) > 0.998
    gy = torch.randn_like(y)
    (g_ref,) = torch.autograd.grad(y_ref, x, gy)
    (g,) = torch.autograd.grad(y, x, gy)
    assert cosine(g, g_ref) > 0.998
    assert not any(p.requires_grad for p in fp8.buffers() if p is not None)


@pytest.mark.parametrize("bias", [False, True])
def test_forward_false_keeps_the_exact_forward_and_the_fp8_input_gradient(bias):
    torch.manual_seed(0)
    lin = torch.nn.Linear(64, 96, bias=bias).requires_grad_(False)
    both, grad_only = Fp8Linear(lin), Fp8Linear(lin, forward=False)
    assert not hasattr(both, "weight") and not hasattr(grad_only, "w")
    x = torch.randn(2, 37, 64, requires_grad=True)
    y = grad_only(x)
    exact = F.linear(x, lin.weight) + (lin.bias if bias else 0)
    assert torch.equal(y, exact)  # the forward is nn.Linear's, not the e4m3 one
    assert not torch.equal(both(x), exact)
    gy = torch.randn_like(y)
    (g,) = torch.autograd.grad(y, x, gy)
    (g_both,) = torch.autograd.grad(both(x), x, gy)
    assert torch.equal(g, g_both)  # the same e4m3 input gradient as both ways
    assert not torch.equal(g, gy @ lin.weight) and cosine(g, gy @ lin.weight) > 0.998


def test_dimensions_not_divisible_by_16_are_refused():
    with pytest.raises(ValueError, match="divisible by 16"):
        Fp8Linear(torch.nn.Linear(64, 100))


def test_swapping_the_mlps_keeps_the_reward_and_its_pixel_gradient():
    from splatvlm.guidance.reward import RewardConfig
    from splatvlm.models import load_reward

    torch.manual_seed(0)
    rgb = torch.rand(4, 56, 56, 3, requires_grad=True)
    res = []
    for swap in (None, True, False):  # None = no swap; else fp8_mlp(forward=swap)
        r = load_reward(RewardConfig(model="demo", size=56), "cpu")
        r.set_prompt("a red cube")
        if swap is not None:
            layers = r.model.model.language_model.layers
            assert fp8_mlp(r.model.model.language_model, forward=swap) == 3 * (len(layers) - 1)
            assert (
                isinstance(layers[0].mlp.up_proj, Fp8Linear)
                and type(layers[-1].mlp.up_proj) is torch.nn.Linear
            )
            assert layers[0].mlp.down_proj.fp8_forward == swap
            assert isinstance(layers[0].self_attn.q_proj, torch.nn.Linear)  # attention stays as it was
        s = r.score(rgb)
        (g,) = torch.autograd.grad(s["reward"], rgb)
        res.append((float(s["reward"].detach()), g))
    assert res[1][0] == pytest.approx(res[0][0], abs=0.05 * max(1.0, abs(res[0][0])))
    assert res[0][1].abs().sum() > 0 and cosine(res[1][1], res[0][1]) > 0.99
    # e4m3 in the input gradient only: the reward is the unquantized one, the gradient is not
    assert res[2][0] == pytest.approx(res[0][0], rel=1e-5, abs=1e-6)
    assert not torch.equal(res[2][1], res[0][1]) and cosine(res[2][1], res[0][1]) > 0.99


def test_down_projection_alone_keeps_gate_and_up_fused():
    from splatvlm.guidance.qwen_fast import GATE_UP, fused_weights
    from splatvlm.guidance.reward import RewardConfig
    from splatvlm.models import load_reward

    torch.manual_seed(0)
    rgb = torch.rand(4, 56, 56, 3, requires_grad=True)
    res = []
    for swap in (False, True):
        r = load_reward(RewardConfig(model="demo", size=56), "cpu")
        r.set_prompt("a red cube")
        layers = r.model.model.language_model.layers
        if swap:
            assert fp8_mlp(r.model.model.language_model, False, ("down_proj",)) == len(layers) - 1
            assert isinstance(layers[0].mlp.down_proj, Fp8Linear)
        assert fused_weights(layers[0].mlp, GATE_UP) is not None  # gate/up stay one bf16 GEMM
        s = r.score(rgb)
        (g,) = torch.autograd.grad(s["reward"], rgb)
        res.append((float(s["reward"].detach()), g))
    assert res[1][0] == pytest.approx(res[0][0], rel=1e-5, abs=1e-6)  # the forward is unquantized
    assert not torch.equal(res[1][1], res[0][1]) and cosine(res[1][1], res[0][1]) > 0.99


def test_vision_mlps_get_an_e4m3_input_gradient_and_keep_their_forward():
    from splatvlm.guidance.reward import RewardConfig
    from splatvlm.models import load_reward

    torch.manual_seed(0)
    rgb = torch.rand(4, 56, 56, 3, requires_grad=True)
    res = []
    for swap in (False, True):
        r = load_reward(RewardConfig(model="demo", size=56), "cpu")  # pad_gemm: the vision MLP is 64 wide
        r.set_prompt("a red cube")
        blocks = r.model.model.visual.blocks
        if swap:
            assert fp8_vision_mlp(r.model.model.visual) == 3 * len(blocks)
            assert isinstance(blocks[0].mlp.up_proj, Fp8Linear) and not blocks[0].mlp.up_proj.fp8_forward
            assert isinstance(blocks[0].attn.qkv, torch.nn.Linear)  # attention stays as it was
        s = r.score(rgb)
        (g,) = torch.autograd.grad(s["reward"], rgb)
        res.append((float(s["reward"].detach()), g))
    assert res[1][0] == pytest.approx(res[0][0], rel=1e-5, abs=1e-6)  # the forward is exact
    assert not torch.equal(res[1][1], res[0][1]) and cosine(res[1][1], res[0][1]) > 0.99


def test_vision_mlps_of_a_width_not_divisible_by_16_stay_plain():
    from splatvlm.guidance.reward import RewardConfig
    from splatvlm.models import load_reward

    r = load_reward(RewardConfig(model="demo", size=56, pad_gemm=False), "cpu")
    for blk in r.model.model.visual.blocks:  # an unpadded 3420 would be refused; widen one to 100
        blk.mlp.up_proj = torch.nn.Linear(blk.mlp.up_proj.in_features, 100)
    n = fp8_vision_mlp(r.model.model.visual)
    assert n == 2 * len(r.model.model.visual.blocks)  # gate (32 -> 64) and down (64 -> 32), not up
    assert all(type(b.mlp.up_proj) is torch.nn.Linear for b in r.model.model.visual.blocks)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_graphed_fp8_reward_tracks_bf16():
    from splatvlm.guidance.fp8 import fp8_supported
    from splatvlm.guidance.reward import RewardConfig
    from splatvlm.models import load_reward

    if not fp8_supported(torch.device("cuda")):
        pytest.skip("e4m3 GEMMs need compute capability 8.9+")
    x = torch.rand(4, 56, 56, 3, device="cuda")
    res = []
    for fp8, forward in ((False, True), (True, True), (True, False)):
        # the same saved demo weights each time
        r = load_reward(RewardConfig(model="demo", size=56, fp8=fp8, fp8_forward=forward), "cuda")
        r.set_prompt("a red cube")
        up = r.model.model.language_model.layers[0].mlp.up_proj
        assert isinstance(up, Fp8Linear) == fp8 and (not fp8 or up.fp8_forward == forward)
        xi = x.clone().requires_grad_(True)
        for _ in range(2):  # capture, then a replay
            xi.grad = None
            out = r(xi, None, 0)
            out["loss_vlm"].backward()
        res.append((float(out["reward"].detach()), xi.grad.clone()))
    assert torch.isfinite(res[1][1]).all() and torch.isfinite(res[2][1]).all() and res[0][1].abs().sum() > 0
    for reward, grad in res[1:]:
        assert reward == pytest.approx(res[0][0], abs=0.1 * max(1.0, abs(res[0][0])))
        assert cosine(grad, res[0][1]) > 0.98
