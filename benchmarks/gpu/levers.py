"""Speed levers of issue 18, each timed beside the default on the same seeded random full-size weights.

    . benchmarks/gpu/setup.sh && python3 benchmarks/gpu/levers.py --out $OUT/levers.json [--only reward|sds]

reward: the graphed Qwen2.5-VL-7B step (4 views, 252 px, compiled blocks, padded vision MLP) as the defaults
        run it (bf16, q/k/v and gate/up fused) and in the variants of REWARD_VARIANTS (unfused, FP8 (e4m3) MLPs
        both ways or for the input gradient only, of all three projections or down_proj alone): ms per step
        (call + backward to the renders), first call (compile + capture), peak memory, the reward values and
        each variant's pixel-gradient cosine against the defaults.
sds:    the graphed MVDream SDS step at 4x256 and 8x64 (VAE at 256): plain, VAE encoder compiled
        (`--sds.compile-vae`), VAE encoder and UNet compiled (`--sds.compile`): ms per step, first call
        per shape (compile + capture), pixel-gradient cosine against the plain graph (same seed).
Each variant's figures are printed as one JSON line as soon as they are measured (a cut call keeps them).
"""

from __future__ import annotations

import argparse
import gc
import json
import statistics
import time

import torch
import torch.nn.functional as F

from splatvlm.gaussians.cameras import CameraConfig, sample_orbit


def timed(step, iters: int) -> list[float]:
    """CUDA-event milliseconds of ``iters`` calls of ``step`` (read after the loop, one sync)."""
    marks = []
    for _ in range(iters):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        step()
        b.record()
        marks.append((a, b))
    torch.cuda.synchronize()
    return [a.elapsed_time(b) for a, b in marks]


def cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(F.cosine_similarity(a.detach().flatten().double(), b.detach().flatten().double(), dim=0))


def emit(records: list, rec: dict) -> None:
    records.append(rec)
    print(json.dumps(rec), flush=True)


def free() -> None:
    gc.collect()
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()


REWARD_VARIANTS = {
    "reward_bf16": {},
    "reward_bf16_unfused": dict(fuse_gemm=False),
    "reward_fp8": dict(fp8=True),
    "reward_fp8_grad_only": dict(fp8=True, fp8_forward=False),
    "reward_fp8_grad_only_down": dict(fp8=True, fp8_forward=False, fp8_projections=("down_proj",)),
    "reward_fp8_grad_only_vision": dict(fp8=True, fp8_forward=False, fp8_vision=True),
}


def reward_levers(records: list, iters: int, names: list[str]) -> None:
    from splatvlm.guidance.reward import RewardConfig
    from splatvlm.models import load_reward

    x0 = torch.rand(4, 256, 256, 3, device="cuda", generator=torch.Generator("cuda").manual_seed(0))
    grads = {}
    for lever in ["reward_bf16", *[n for n in names if n != "reward_bf16"]]:
        kw = REWARD_VARIANTS[lever]
        free()
        t0 = time.perf_counter()
        r = load_reward(RewardConfig(model="random-7b", **kw), "cuda")
        r.set_prompt("a DSLR photo of a corgi wearing a party hat")
        load_s = time.perf_counter() - t0
        x = x0.clone().requires_grad_(True)

        def step(r=r, x=x):
            x.grad = None
            out = r(x, None, 0)
            out["loss_vlm"].backward()
            return out

        t0 = time.perf_counter()
        out = step()
        torch.cuda.synchronize()
        first_s = time.perf_counter() - t0
        timed(step, 3)
        ms = timed(step, iters)
        out = step()
        torch.cuda.synchronize()
        grads[lever] = (float(out["reward"]), x.grad.detach().clone())
        rec = {
            "lever": lever,
            "ms_median": statistics.median(ms),
            "ms_min": min(ms),
            "first_call_s": round(first_s, 1),
            "load_s": round(load_s, 1),
            "peak_gb": torch.cuda.max_memory_allocated() / 2**30,
            "reward": grads[lever][0],
        }
        if lever != "reward_bf16":
            rec["grad_cosine_vs_bf16"] = cosine(grads[lever][1], grads["reward_bf16"][1])
            rec["reward_bf16"] = grads["reward_bf16"][0]
        emit(records, rec)
        del r, out, step
    free()


def sds_levers(records: list, iters: int) -> None:
    from splatvlm.guidance.sds import SDSConfig
    from splatvlm.models import build_prior

    cases = {"4x256": (4, 256), "8x64": (8, 64)}
    variants = {"plain": (False, False), "compile_vae": (False, True), "compile_vae_unet": (True, True)}
    base: dict[str, torch.Tensor] = {}
    for name, (unet, vae) in variants.items():
        free()
        g = build_prior(SDSConfig(model="random", compile=unet, compile_vae=vae), "cuda")
        g.set_prompt("a DSLR photo of a corgi wearing a top hat")
        for case, (views, px) in cases.items():
            cams = sample_orbit(CameraConfig(views_per_group=4), views, px, torch.Generator().manual_seed(0))
            cams = cams.to("cuda")
            x = torch.rand(views, px, px, 3, device="cuda", generator=torch.Generator("cuda").manual_seed(1))
            x.requires_grad_(True)

            def step(g=g, x=x, cams=cams, seed=None):
                x.grad = None
                if seed is not None:
                    torch.manual_seed(seed)
                g(x, cams, 1000)["loss_sds"].backward()

            t0 = time.perf_counter()
            step()
            torch.cuda.synchronize()
            first_s = time.perf_counter() - t0
            timed(step, 3)
            ms = timed(step, iters)
            step(seed=1234)
            torch.cuda.synchronize()
            grad = x.grad.detach().clone()
            rec = {
                "lever": f"sds_{name}",
                "case": case,
                "ms_median": statistics.median(ms),
                "ms_min": min(ms),
                "first_call_s": round(first_s, 1),
                "peak_gb": torch.cuda.max_memory_allocated() / 2**30,
            }
            if name == "plain":
                base[case] = grad
            else:
                rec["grad_cosine_vs_plain"] = cosine(grad, base[case])
            emit(records, rec)
        del g
    free()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--only", choices=["reward", "sds"], default=None)
    ap.add_argument("--iters", type=int, default=20)
    ap.add_argument("--reward-variants", nargs="+", choices=list(REWARD_VARIANTS), default=list(REWARD_VARIANTS),
                    help="reward variants to time (reward_bf16, the defaults, always runs first)")  # fmt: skip
    args = ap.parse_args()
    records: list = []
    meta = {
        "device": torch.cuda.get_device_name(),
        "torch": torch.__version__,
        "date": time.strftime("%Y-%m-%d"),
    }
    try:
        if args.only in (None, "reward"):
            reward_levers(records, args.iters, args.reward_variants)
        if args.only in (None, "sds"):
            sds_levers(records, args.iters)
    finally:
        with open(args.out, "w") as f:
            json.dump({**meta, "command": "benchmarks/gpu/levers.py", "results": records}, f, indent=2)


if __name__ == "__main__":
    main()
