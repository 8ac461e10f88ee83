"""Pixel-gradient cosine of FP8 (e4m3) variants of the reward's LLM MLPs, on CPU with emulated e4m3 (issue 18).

    PYTHONPATH=src python benchmarks/fp8_cosine.py --proxy narrow-28 --init-std 0.0529 --out fp8_cosine.json
        [--threads 1] [--seed 0] [--variants a_fp8_both,c_fp8_backward] [--no-bf16]

Builds a random-weight Qwen2.5-VL from config (``--proxy``: the LLM's depth of the 7B or the 3B, widths below),
runs the reward's fast path (``VLMReward.score``: 4 uniform-noise views of 256 px resized to 252, the prompt
of ``benchmarks/gpu/levers.py``, logit(Yes) - logit(No)) forward and backward to the pixels, and compares the
pixel gradient of each variant with the fp32 reference (cosine) and the reward values. The MLP projections of
all decoder layers but the last (those ``guidance.fp8.fp8_mlp`` converts) are swapped for:

    a_fp8_both      e4m3 forward and e4m3 input gradient, one scale per row (what ``--vlm.fp8`` runs today)
    b_fp8_forward   e4m3 forward; input gradient grad @ W from the unquantized weight
    c_fp8_backward  exact forward; e4m3 input gradient
    d_block_both    e4m3 both ways with one scale per 128-element block along the GEMM's K dimension
                    (activations and weights; K = in_features forward, out_features backward)
    e_block_forward as d in the forward only; exact input gradient
    f_backward_vision as c, and the vision blocks' MLPs too (``--vlm.fp8-vision``; the vision tower keeps
                    HF's std 0.02, at the proxy's width a tamer gain than the 7B's 1280-wide tower)

then the model rounded to bf16 against fp32 (``bf16``), and a, b, c in that bf16 model against it
(``*_bf16``: what the GPU run of benchmarks/gpu/levers.py compared).

A random network's sensitivity grows with each layer's gain, the weights' std times sqrt(fan-in): at width 512
the 7B's gain needs std 0.02 * sqrt(3584 / 512) = 0.0529 (``--init-std``; HF's 0.02 elsewhere; the vision
tower keeps 0.02). Activations are recomputed in the backward (checkpointing) so that fp32 3B-wide proxies fit
in 14 GB of RAM; that gives the same numbers.

Emulation, not e4m3 GEMMs: each operand is quantized to e4m3 and dequantized to fp32
(``(x / s).to(torch.float8_e4m3fn).float() * s``), then multiplied in fp32. That is the same rounding of the
operands as ``torch._scaled_mm`` with fp32 accumulation (on CPU the two agree exactly; the script checks one
layer against ``Fp8Linear``); on the GPU, cuBLAS accumulates with its own precision (``use_fast_accum`` off).
Nothing here measures speed. Set SPLATVLM_CACHE for the demo tokenizer (built on first use).
"""

from __future__ import annotations

import argparse
import gc
import json
import platform
import resource
import time
from datetime import datetime, timezone

import torch
import torch.nn.functional as F

from splatvlm.guidance.fp8 import E4M3, E4M3_MAX, Fp8Linear

PROMPT = "a DSLR photo of a corgi wearing a party hat"

# Widths of the LLM (hidden, MLP, heads, KV heads) and of the vision tower; None = the 3B's vision tower.
# "3b" (the real 3B's 36 layers) needs ~15 GB of RAM in fp32; it was not run for RESULTS.md.
PROXIES = {
    "narrow-28": dict(layers=28, hidden=512, mlp=2816, heads=4, kv=2,
                      vision=dict(hidden_size=320, intermediate_size=864, num_heads=4)),
    "3b-width-28": dict(layers=28, hidden=2048, mlp=11008, heads=16, kv=2, vision=None),
    "3b": dict(layers=36, hidden=2048, mlp=11008, heads=16, kv=2, vision=None),
}  # fmt: skip

# name -> (e4m3 forward, e4m3 input gradient, scale block along K or None = one scale per row)
VARIANTS = {
    "a_fp8_both": (True, True, None),
    "b_fp8_forward": (True, False, None),
    "c_fp8_backward": (False, True, None),
    "d_block_both": (True, True, 128),
    "e_block_forward": (True, False, 128),
    "f_backward_vision": (False, True, None),
}
VISION_TOO = {"f_backward_vision"}  # as c, and the vision blocks' MLPs too (``--vlm.fp8-vision``)


def qdq(t: torch.Tensor, block: int | None) -> torch.Tensor:
    """t [M, K] rounded through e4m3 and back to fp32: one scale per row, or per 1 x block along K."""
    m, k = t.shape
    b = k if block is None else block
    assert k % b == 0, f"K = {k} is not a multiple of the block {b}"
    tb = t.float().reshape(m, k // b, b)
    scale = torch.clamp(tb.abs().amax(dim=-1, keepdim=True), min=1e-12) / E4M3_MAX
    return ((tb / scale).clamp(-E4M3_MAX, E4M3_MAX).to(E4M3).float() * scale).reshape(m, k)


class _EmulatedFp8(torch.autograd.Function):
    """x [M, K] -> x W^T [M, N]; each GEMM either exact (model dtype) or on e4m3-rounded operands in fp32."""

    @staticmethod
    def forward(ctx, x, w, fwd: bool, bwd: bool, block: int | None):
        ctx.save_for_backward(w)
        ctx.bwd, ctx.block = bwd, block
        y = qdq(x, block) @ qdq(w, block).t() if fwd else x @ w.t()
        return y.to(x.dtype)

    @staticmethod
    def backward(ctx, grad):
        (w,) = ctx.saved_tensors
        gx = qdq(grad, ctx.block) @ qdq(w.t(), ctx.block).t() if ctx.bwd else grad @ w
        return gx.to(grad.dtype), None, None, None, None


class EmulatedFp8Linear(torch.nn.Module):
    """A frozen ``nn.Linear`` (kept, not copied) whose GEMMs are emulated e4m3 as chosen; the bias is exact."""

    def __init__(self, linear: torch.nn.Linear, fwd: bool, bwd: bool, block: int | None):
        super().__init__()
        self.linear, self.fwd, self.bwd, self.block = linear, fwd, bwd, block

    def forward(self, x):
        shape = x.shape
        y = _EmulatedFp8.apply(x.reshape(-1, shape[-1]), self.linear.weight, self.fwd, self.bwd, self.block)
        y = y.reshape(*shape[:-1], y.shape[-1])
        return y if self.linear.bias is None else y + self.linear.bias


MLP_NAMES = ("gate_proj", "up_proj", "down_proj")


def swap_mlps(lm, variant: tuple[bool, bool, int | None] | None, visual=None) -> None:
    """Wrap the MLP linears of all decoder layers but the last (as ``fp8_mlp``), and of the vision blocks when
    ``visual`` is given (as ``fp8_vision_mlp``), or unwrap them (None)."""
    mlps = [layer.mlp for layer in lm.layers[:-1]] + (
        [b.mlp for b in visual.blocks] if visual is not None else []
    )
    for mlp in mlps:
        for name in MLP_NAMES:
            old = getattr(mlp, name)
            plain = old.linear if isinstance(old, EmulatedFp8Linear) else old
            setattr(mlp, name, plain if variant is None else EmulatedFp8Linear(plain, *variant))


def check_emulation() -> float:
    """Largest difference between variant a's emulation and ``Fp8Linear`` (``torch._scaled_mm``) on one layer."""
    torch.manual_seed(0)
    lin = torch.nn.Linear(256, 384, bias=False).requires_grad_(False)
    x = torch.randn(37, 256, requires_grad=True)
    gy = torch.randn(37, 384)
    out = []
    for m in (Fp8Linear(lin), EmulatedFp8Linear(lin, True, True, None)):
        y = m(x)
        (gx,) = torch.autograd.grad(y, x, gy)
        out.append((y, gx))
    return max(float((out[0][i] - out[1][i]).abs().max()) for i in range(2))


def proxy_config(name: str, tokenizer):
    """The 7B's / 3B's Qwen2.5-VL config (``demo.vlm_config``) with the proxy's depth and widths."""
    from transformers import Qwen2_5_VLConfig

    from splatvlm.demo import vlm_config

    p = PROXIES[name]
    base = vlm_config("3b", tokenizer).to_dict()
    text = dict(base["text_config"], vocab_size=len(tokenizer), num_hidden_layers=p["layers"],
                hidden_size=p["hidden"], intermediate_size=p["mlp"], num_attention_heads=p["heads"],
                num_key_value_heads=p["kv"], max_position_embeddings=4096)  # fmt: skip
    text.pop("layer_types", None)  # rebuilt for the new depth
    vision = dict(base["vision_config"], **(p["vision"] or {}), out_hidden_size=p["hidden"])
    keep = ("image_token_id", "video_token_id", "vision_start_token_id", "vision_end_token_id")
    return Qwen2_5_VLConfig(text_config=text, vision_config=vision, tie_word_embeddings=False,
                            **{k: base[k] for k in keep})  # fmt: skip


def rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(F.cosine_similarity(a.flatten().double(), b.flatten().double(), dim=0))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--proxy", choices=sorted(PROXIES), default="narrow-28")
    ap.add_argument(
        "--variants", default=",".join(VARIANTS), help="comma-separated, from " + ",".join(VARIANTS)
    )
    ap.add_argument("--bf16", action=argparse.BooleanOptionalAction, default=True,
                    help="also the bf16 model, and variants a, b, c in it against it")  # fmt: skip
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--init-std", type=float, default=0.02, help="std of the random weights (HF's default 0.02)"
    )
    ap.add_argument("--vision-init-std", type=float, default=0.02,
                    help="std of the vision tower's random weights; 0.04 gives the 1280-wide tower's gain at width 320")  # fmt: skip
    ap.add_argument("--out", default="")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    from transformers import Qwen2_5_VLForConditionalGeneration

    from splatvlm.demo import seeded
    from splatvlm.guidance.reward import RewardConfig
    from splatvlm.models import load_reward

    # 1. the reward on the demo model, whose model is then replaced by the random proxy (same tokenizer)
    t0 = time.perf_counter()
    r = load_reward(RewardConfig(model="demo", size=252, num_views=4), "cpu")
    config = proxy_config(args.proxy, r.tokenizer)
    config.text_config.initializer_range = args.init_std  # HF's _init_weights reads it for every module
    config.vision_config.initializer_range = args.vision_init_std
    with seeded("cpu", args.seed):
        model = Qwen2_5_VLForConditionalGeneration._from_config(config, dtype=torch.float32)
    r.model = model.requires_grad_(False).eval()
    # Recompute activations in the backward, as --vlm.gradient-checkpointing does: fp32 weights and saved
    # activations of the 3B-wide proxies would not fit in 14 GB otherwise. The recompute gives the same numbers.
    from transformers.modeling_layers import GradientCheckpointingLayer

    r.cfg.gradient_checkpointing = True  # the vision blocks (fast path)
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    for m in model.modules():
        if isinstance(m, GradientCheckpointingLayer):
            m.training = True  # HF checkpoints a layer only in training mode; no dropout in this model
    r._queries.clear()
    r.set_prompt(PROMPT)
    lm = model.model.language_model
    n_params = sum(p.numel() for p in model.parameters())
    x0 = torch.rand(4, 256, 256, 3, generator=torch.Generator().manual_seed(args.seed))
    record = {
        "what": "pixel-gradient cosine of emulated-e4m3 MLP variants of the reward LLM against the unquantized model",
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "device": f"CPU ({platform.processor() or platform.machine()}), {args.threads} thread(s), emulated e4m3",
        "torch": torch.__version__,
        "proxy": args.proxy,
        "config": dict(
            PROXIES[args.proxy], vision=PROXIES[args.proxy]["vision"] or "3B vision tower (32 x 1280)"
        ),
        "seed": args.seed,
        "init_std": args.init_std,
        "vision_init_std": args.vision_init_std,
        "params": n_params,
        "views": f"4 x 256 px uniform noise (seed {args.seed}), resized to 252 (4 x 81 image tokens)",
        "prompt": PROMPT,
        "tokens": int(r.query(PROMPT, 4, (18, 18)).input_ids.shape[1]),
        "emulation_vs_scaled_mm_max_abs_diff": check_emulation(),
        "build_s": round(time.perf_counter() - t0, 1),
        "runs": [],
    }
    print(json.dumps({k: v for k, v in record.items() if k != "runs"}), flush=True)

    refs: dict[str, tuple[float, torch.Tensor]] = {}

    def run(name: str, against: tuple[str, ...]) -> tuple[float, torch.Tensor]:
        t = time.perf_counter()
        x = x0.clone().requires_grad_(True)
        out = r.score(x)
        (g,) = torch.autograd.grad(out["reward"], x)
        res = (float(out["reward"].detach()), g.detach())
        rec = {"variant": name, "reward": res[0], "s": round(time.perf_counter() - t, 1), "rss_gb": rss_gb()}
        for k in against:  # cosine and gradient-norm ratio against each reference
            rec[f"cosine_vs_{k}"] = cosine(res[1], refs[k][1])
            rec[f"norm_ratio_vs_{k}"] = float(res[1].norm() / refs[k][1].norm())
            rec[f"reward_{k}"] = refs[k][0]
        record["runs"].append(rec)
        print(json.dumps(rec), flush=True)
        if args.out:  # after every run: a cut run keeps what it measured
            with open(args.out, "w") as f:
                json.dump(record, f, indent=1)
        return res

    # 2. fp32 reference and the variants against it
    refs["fp32"] = run("fp32", ())
    names = [v for v in args.variants.split(",") if v]
    for name in names:
        visual = model.model.visual if name in VISION_TOO else None
        swap_mlps(lm, VARIANTS[name], visual)
        run(name, ("fp32",))
        swap_mlps(lm, None, visual)
        gc.collect()
    # 3. bf16 (weights rounded in place) against fp32, and variants in it against bf16 (the GPU run's comparison)
    if args.bf16:
        model.to(torch.bfloat16)
        r.dtype = torch.bfloat16
        r._queries.clear()  # the rotary tables and masks are precomputed in the model dtype
        r.set_prompt(PROMPT)
        refs["bf16"] = run("bf16", ("fp32",))
        for name in ("a_fp8_both", "b_fp8_forward", "c_fp8_backward"):
            if name in names:
                swap_mlps(lm, VARIANTS[name])
                run(name + "_bf16", ("bf16", "fp32"))
                swap_mlps(lm, None)


if __name__ == "__main__":
    main()
