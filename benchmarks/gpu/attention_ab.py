"""The reward's attention calls, forward + backward to q, k and v, under other kernels (speed round 11).

    . benchmarks/gpu/setup.sh && python3 benchmarks/gpu/attention_ab.py --out $OUT/attention.json

In round 10's trace the 7B reward's 60 attention calls a step cost 5.6 ms of kernels (cuDNN's fused SDPA,
~33 us forward and ~60 us backward a call), far above their FLOPs. Three shapes, as the fast path runs them
(`guidance/qwen_fast.py`, 4 views at 252 px, the demo tokenizer's 475-position prompt):

- `llm`: a decoder layer with the prompt prefix cached: 442 queries over 475 keys, 28 heads over 4 key/value
  heads, head dim 128, causal aligned to the lower right (today: the keys repeated and a bool mask);
- `windows`: a vision block's window attention: 4 images x 324 patches, 16 heads, head dim 80, windows of 64,
  16 and 4 patches (today: the images as a batch with a block-diagonal bool mask);
- `images`: a full-attention vision block: the same, one segment per image (today: a plain batch, no mask).

Each variant is timed as CUDA-graph replays of 10 forward + backward passes (medians of 20 replays), and its
output and gradients are compared with an fp64 reference: ||x - ref|| / ||ref||.

Status (H200, 2026-12-04): the value checks ran (every variant within 2.0e-3 to 3.4e-3 of fp64, bf16's
rounding), but every timing failed inside the capture ("operation failed due to a previous error during
capture", then "Offset increment outside graph capture" from the RNG), the first variant of a fresh process
included; the cause was not found within the session's device time. The lever was decided by the whole step
instead (`profile_step.py`, RESULTS.md speed round 11).
"""

from __future__ import annotations

import argparse
import inspect
import json
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F


def timed_graph(fn: Callable[[], list[torch.Tensor]], inner: int = 10, replays: int = 20) -> float:
    """Median ms of one call of ``fn`` (forward + backward), replayed from a CUDA graph of ``inner`` calls."""
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(3):
            fn()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph, stream=stream):
        for _ in range(inner):
            fn()
    times = []
    for _ in range(replays):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        graph.replay()
        b.record()
        b.synchronize()
        times.append(a.elapsed_time(b) / inner)
    return statistics.median(times)


def rel(x: torch.Tensor, ref: torch.Tensor) -> float:
    return float((x.float() - ref.float()).norm() / ref.float().norm().clamp_min(1e-30))


def run_case(name: str, q, k, v, variants: dict[str, Callable], reference: Callable) -> list[dict]:
    """q, k, v: leaf tensors (bf16, requires_grad); each variant maps (q, k, v) -> out."""
    dout = torch.randn_like(reference(q, k, v).to(q.dtype))
    qf, kf, vf = (t.detach().double().requires_grad_(True) for t in (q, k, v))
    ref_out = reference(qf, kf, vf)
    ref_grads = torch.autograd.grad(ref_out, (qf, kf, vf), dout.double())
    rows = []
    for vname, fn in variants.items():
        row = {"case": name, "variant": vname}
        try:
            out = fn(q, k, v)
            grads = torch.autograd.grad(out, (q, k, v), dout)
            row["rel_out"] = rel(out, ref_out)
            row["rel_grad"] = [rel(g, r) for g, r in zip(grads, ref_grads, strict=True)]

            def step(fn=fn):
                o = fn(q, k, v)
                return torch.autograd.grad(o, (q, k, v), dout)

            row["ms"] = timed_graph(step) if q.is_cuda else None  # on the CPU: the checks only
        except Exception as e:  # a backend that refuses the shape is a result too
            row["error"] = f"{type(e).__name__}: {str(e)[:200]}"
        print(json.dumps(row), flush=True)
        rows.append(row)
    return rows


def main() -> None:
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.nn.attention.bias import causal_lower_right

    ap = argparse.ArgumentParser()
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--flex", action="store_true", help="also flex_attention (compiles)")
    ap.add_argument("--device", default="cuda", help="cpu: check the variants' values only, no timing")
    ap.add_argument(
        "--cases",
        nargs="+",
        default=["llm", "windows", "images"],
        help="run one case per process: a variant that fails inside a capture can leave CUDA unusable",
    )
    args = ap.parse_args()
    dev, dt = torch.device(args.device), torch.bfloat16
    torch.manual_seed(0)
    try:
        from torch.nn.attention.varlen import varlen_attn
    except ImportError:
        varlen_attn = None
    has_gqa = varlen_attn is not None and "enable_gqa" in inspect.signature(varlen_attn).parameters

    def leaf(*shape):
        return torch.randn(*shape, device=dev, dtype=dt).requires_grad_(True)

    def with_backend(backend, fn):
        def run(q, k, v):
            with sdpa_kernel([backend]):
                return fn(q, k, v)

        return run

    rows: list[dict] = []
    # 1. llm: [1, H, Lq, D] queries over [1, Hkv, Lk, D] keys, lower-right causal
    hq, hkv, lq, lk, d = 28, 4, 442, 475, 128
    q, k, v = leaf(1, hq, lq, d), leaf(1, hkv, lk, d), leaf(1, hkv, lk, d)
    scale = d**-0.5
    keys = torch.arange(lk, device=dev)
    bool_mask = (keys[None] <= torch.arange(lk - lq, lk, device=dev)[:, None])[None, None]

    def rep(t):
        return t.repeat_interleave(hq // hkv, dim=1)

    def llm_mask(q, k, v):
        return F.scaled_dot_product_attention(q, rep(k), rep(v), attn_mask=bool_mask, scale=scale)

    def llm_lower_right(q, k, v):
        return F.scaled_dot_product_attention(
            q, rep(k), rep(v), attn_mask=causal_lower_right(lq, lk), scale=scale
        )

    cq = torch.tensor([0, lq], device=dev, dtype=torch.int32)  # made here: no host copy inside a capture
    ck = torch.tensor([0, lk], device=dev, dtype=torch.int32)

    def llm_varlen(q, k, v):
        qq = q[0].transpose(0, 1)
        kk, vv = (t[0].transpose(0, 1) for t in ((k, v) if has_gqa else (rep(k), rep(v))))
        kw = {"enable_gqa": True} if has_gqa else {}
        o = varlen_attn(qq, kk, vv, cq, ck, lq, lk, scale=scale, window_size=(-1, 0), **kw)
        return o.transpose(0, 1)[None]

    def llm_ref(q, k, v):
        return F.scaled_dot_product_attention(q, rep(k), rep(v), attn_mask=bool_mask, scale=scale)

    llm = {
        "mask (today)": llm_mask,
        "mask, cudnn": with_backend(SDPBackend.CUDNN_ATTENTION, llm_mask),
        "mask, efficient": with_backend(SDPBackend.EFFICIENT_ATTENTION, llm_mask),
        "causal_lower_right": llm_lower_right,
        "causal_lower_right, flash": with_backend(SDPBackend.FLASH_ATTENTION, llm_lower_right),
    }
    if varlen_attn is not None:
        llm["varlen, window (-1, 0)"] = llm_varlen
    if args.flex:
        from torch.nn.attention.flex_attention import create_block_mask, flex_attention

        off = lk - lq
        bm = create_block_mask(lambda b, h, qi, ki: ki <= qi + off, None, None, lq, lk, device=dev)
        flex = torch.compile(flex_attention)
        llm["flex"] = lambda q, k, v: flex(q, k, v, block_mask=bm, scale=scale, enable_gqa=True)
    if "llm" in args.cases:
        rows += run_case("llm", q, k, v, llm, llm_ref)

    # 2. vision: 4 images x 324 patches in window order, 16 heads of 80
    from transformers.vision_utils import get_vision_window_index

    grid = torch.tensor([[1, 18, 18]] * 4)
    _, cu_win = get_vision_window_index(grid, 2, 112, 14)
    cu_win = torch.as_tensor(cu_win).tolist()
    n_img, per, h, d = 4, 324, 16, 80
    seg = torch.empty(per, dtype=torch.long)
    for i, (a, b) in enumerate(zip(cu_win[:-1], cu_win[1:], strict=True)):
        if b <= per:
            seg[a:b] = i
    block = (seg[:, None] == seg[None, :])[None, None].to(dev)
    cu_w = torch.tensor(cu_win, device=dev, dtype=torch.int32)
    cu_i = torch.arange(0, n_img * per + 1, per, device=dev, dtype=torch.int32)
    max_w = max(b - a for a, b in zip(cu_win[:-1], cu_win[1:], strict=True))
    scale = d**-0.5
    q, k, v = leaf(n_img, h, per, d), leaf(n_img, h, per, d), leaf(n_img, h, per, d)

    def win_mask(q, k, v):
        return F.scaled_dot_product_attention(q, k, v, attn_mask=block, scale=scale)

    def packed(t):  # [n, H, per, D] -> [n * per, H, D]
        return t.transpose(1, 2).reshape(n_img * per, h, d)

    def unpacked(t):
        return t.reshape(n_img, per, h, d).transpose(1, 2)

    def win_varlen(q, k, v):
        return unpacked(varlen_attn(packed(q), packed(k), packed(v), cu_w, cu_w, max_w, max_w, scale=scale))

    # windows grouped by size: per image [64 x 4 | 16 x 4 | 4] after a reorder of the window order (simulated
    # here as a gather of each image's tokens into that order and back, which a real reorder would not need)
    sizes = [b - a for a, b in zip(cu_win[:-1], cu_win[1:], strict=True)][: len(cu_win) // n_img]
    starts = [a for a in cu_win[: len(sizes)]]
    order = []
    for s in sorted(set(sizes), reverse=True):
        for st, sz in zip(starts, sizes, strict=True):
            if sz == s:
                order += list(range(st, st + sz))
    order_t = torch.tensor(order, device=dev)
    inv = torch.argsort(order_t)
    groups = [(s, sizes.count(s)) for s in sorted(set(sizes), reverse=True)]

    def win_grouped(q, k, v, reorder=True):
        qs, ks, vs = (t.index_select(2, order_t) if reorder else t for t in (q, k, v))
        outs, at = [], 0
        for s, c in groups:
            sl = slice(at, at + s * c)

            def g(t, s=s, c=c, sl=sl):  # [n, H, c*s, D] -> [n*c, H, s, D]
                return (
                    t[:, :, sl].reshape(n_img, h, c, s, d).permute(0, 2, 1, 3, 4).reshape(n_img * c, h, s, d)
                )

            o = F.scaled_dot_product_attention(g(qs), g(ks), g(vs), scale=scale)
            outs.append(o.reshape(n_img, c, h, s, d).permute(0, 2, 1, 3, 4).reshape(n_img, h, c * s, d))
            at += s * c
        o = torch.cat(outs, dim=2)
        return o.index_select(2, inv) if reorder else o

    windows = {
        "mask (today)": win_mask,
        "mask, efficient": with_backend(SDPBackend.EFFICIENT_ATTENTION, win_mask),
        "grouped by size (+ gathers)": win_grouped,
        "grouped by size (no gathers)": lambda q, k, v: win_grouped(q, k, v, reorder=False),
    }
    if varlen_attn is not None:
        windows["varlen"] = win_varlen
    if args.flex:
        seg_all = seg.to(dev)
        bmw = create_block_mask(
            lambda b, hh, qi, ki: seg_all[qi] == seg_all[ki], None, None, per, per, device=dev
        )
        windows["flex"] = lambda q, k, v: flex(q, k, v, block_mask=bmw, scale=scale)
    if "windows" in args.cases:
        rows += run_case("windows", q, k, v, windows, win_mask)

    def img_plain(q, k, v):
        return F.scaled_dot_product_attention(q, k, v, scale=scale)

    images = {
        "plain (today)": img_plain,
        "plain, flash": with_backend(SDPBackend.FLASH_ATTENTION, img_plain),
        "plain, efficient": with_backend(SDPBackend.EFFICIENT_ATTENTION, img_plain),
    }
    if varlen_attn is not None:
        images["varlen"] = lambda q, k, v: unpacked(
            varlen_attn(packed(q), packed(k), packed(v), cu_i, cu_i, per, per, scale=scale)
        )
    if "images" in args.cases:
        rows += run_case("images", q, k, v, images, img_plain)
    args.out.write_text(
        json.dumps(
            {
                "device": torch.cuda.get_device_name() if dev.type == "cuda" else "cpu",
                "torch": torch.__version__,
                "date": time.strftime("%Y-%m-%d"),
                "varlen_gqa": has_gqa,
                "rows": rows,
            },
            indent=1,
        )
    )
    for r in rows:
        ms = f"{r['ms']:.4f} ms" if r.get("ms") else r.get("error", "")
        errs = f"out {r['rel_out']:.1e} grads {max(r['rel_grad']):.1e}" if "rel_out" in r else ""
        print(f"{r['case']:8s} {r['variant']:30s} {ms:14s} {errs}")


if __name__ == "__main__":
    main()
