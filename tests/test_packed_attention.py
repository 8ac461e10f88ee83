"""Attention within packed segments: the batched SDPA layouts on the CPU, varlen flash attention on CUDA."""

import pytest
import torch
import torch.nn.functional as F

from splatvlm.guidance.packed_attention import VARLEN, segment_attention, segment_layout, varlen_attention


def cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(F.cosine_similarity(a.flatten().double(), b.flatten().double(), dim=0))


def test_segment_attention_matches_per_segment_loop():
    torch.manual_seed(0)
    cu = [0, 5, 5, 12, 13, 21]  # unequal, one empty (as HF's padded windows give before unique_consecutive)
    q, k, v = torch.randn(3, 21, 2, 8).unbind(0)
    out = segment_attention(q, k, v, segment_layout(cu, torch.device("cpu")), scale=0.3)
    ref = torch.cat([
        F.scaled_dot_product_attention(*(t[a:b].transpose(0, 1) for t in (q, k, v)), scale=0.3).transpose(0, 1)
        for a, b in zip(cu[:-1], cu[1:], strict=True) if b > a
    ]).reshape(21, 16)  # fmt: skip
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-6)
    equal = segment_layout([0, 7, 14, 21], torch.device("cpu"))
    assert equal.gather is None and (equal.n, equal.length) == (3, 7)  # equal segments: a plain reshape


def test_segments_inside_equal_groups_use_a_mask_not_a_gather():
    torch.manual_seed(0)
    cu = [0, 4, 4, 8, 10, 14, 18, 20]  # windows 4, 4, 2 in each of two groups of 10 (two equal images)
    q, k, v = torch.randn(3, 20, 2, 8).unbind(0)
    seg = segment_layout(cu, torch.device("cpu"), groups=[0, 10, 20])
    assert seg.gather is None and seg.scatter is None and (seg.n, seg.length) == (2, 10)
    assert seg.mask.shape == (1, 1, 10, 10)  # the same windows in both groups: one mask
    ref = torch.cat([
        F.scaled_dot_product_attention(*(t[a:b].transpose(0, 1) for t in (q, k, v)), scale=0.3).transpose(0, 1)
        for a, b in zip(cu[:-1], cu[1:], strict=True) if b > a
    ]).reshape(20, 16)  # fmt: skip
    torch.testing.assert_close(segment_attention(q, k, v, seg, scale=0.3), ref, rtol=1e-5, atol=1e-6)
    uneven = segment_layout([0, 4, 8, 10, 14, 20], torch.device("cpu"), groups=[0, 10, 20])
    assert uneven.mask.shape == (2, 1, 10, 10)  # different windows per group: a mask each
    torch.testing.assert_close(
        segment_attention(q, k, v, uneven, scale=0.3),
        segment_attention(q, k, v, segment_layout([0, 4, 8, 10, 14, 20], torch.device("cpu")), scale=0.3),
        rtol=1e-5,
        atol=1e-6,
    )
    assert segment_layout(cu, torch.device("cpu"), groups=[0, 8, 20]).gather is not None  # a window crosses


def test_varlen_layout_keeps_the_segment_bounds_and_cpu_keeps_sdpa():
    torch.manual_seed(0)
    cu = [0, 4, 4, 8, 10, 14, 18, 20]
    seg = segment_layout(cu, torch.device("cpu"), groups=[0, 10, 20], varlen=True)
    assert seg.cu.tolist() == [0, 4, 8, 10, 14, 18, 20] and seg.cu.dtype == torch.int32 and seg.cu_max == 4
    assert segment_layout(cu, torch.device("cpu")).cu is None
    q, k, v = torch.randn(3, 20, 2, 8).unbind(0)
    plain = segment_layout(cu, torch.device("cpu"), groups=[0, 10, 20])
    torch.testing.assert_close(segment_attention(q, k, v, seg, 0.3), segment_attention(q, k, v, plain, 0.3))


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_varlen_attention_matches_masked_sdpa_cuda():
    """Flash attention over packed segments, and causal after a cached prefix, against the SDPA layouts."""
    if not VARLEN:
        pytest.skip("this torch has no torch.nn.attention.varlen.varlen_attn with scale and window_size")
    torch.manual_seed(0)
    dev, dt = torch.device("cuda"), torch.bfloat16
    cu = [
        0,
        64,
        128,
        144,
        208,
        272,
        288,
        304,
        320,
        324,
    ]  # one 18x18-patch image's windows (Qwen2.5-VL, 252 px)
    cu = cu + [324 + c for c in cu[1:]]
    q, k, v = (torch.randn(648, 4, 80, device=dev, dtype=dt, requires_grad=True) for _ in range(3))
    seg = segment_layout(cu, dev, groups=[0, 324, 648], varlen=True)
    ref_seg = segment_layout(cu, dev, groups=[0, 324, 648])
    out, ref = segment_attention(q, k, v, seg, 0.1), segment_attention(q, k, v, ref_seg, 0.1)
    g = torch.autograd.grad(out, (q, k, v), torch.ones_like(out))
    g_ref = torch.autograd.grad(ref, (q, k, v), torch.ones_like(ref))
    torch.testing.assert_close(out, ref, rtol=2e-2, atol=2e-2)
    for a, b in zip(g, g_ref, strict=True):
        assert cosine(a, b) > 0.999
    # causal, lower right: 20 queries after a 12-position prefix, 6 heads over 2 key/value heads
    q = torch.randn(20, 6, 64, device=dev, dtype=dt)
    k, v = torch.randn(2, 32, 2, 64, device=dev, dtype=dt).unbind(0)
    bounds = [torch.tensor(b, dtype=torch.int32, device=dev) for b in ([0, 20], [0, 32])]
    out = varlen_attention(q, k, v, *bounds, 20, 32, 0.125, causal=True)
    mask = torch.arange(32, device=dev)[None] <= torch.arange(12, 32, device=dev)[:, None]
    kk, vv = (t.repeat_interleave(3, dim=1).transpose(0, 1) for t in (k, v))
    ref = F.scaled_dot_product_attention(q.transpose(0, 1), kk, vv, attn_mask=mask, scale=0.125).transpose(
        0, 1
    )
    torch.testing.assert_close(out, ref, rtol=2e-2, atol=2e-2)
