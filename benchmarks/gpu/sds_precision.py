"""Precision of the prior (issue 12, part 4): SDS pixel gradients in bf16 and fp16 against fp32.

The `vlm3d` preset's SDS (MVDream, CFG 50, x0 target with std rescale 0.5) on the full-size MVDream
UNet with random weights (`--model random`; every precision gets the fp32 model's weights, cast), on
4 smooth random renders at 256 px. For each timestep fraction t (default 8 values in 0.02..0.98) and
seed, every precision sees the same renders, cameras, posterior noise and diffusion noise; the
figures are the cosine and relative L2 error of d loss_sds / d pixels against fp32 (true fp32: TF32
off), whether it stayed finite, and each precision's step time (eager, and the CUDA-graph path that
training uses). fp16 needs no GradScaler: only the input gradient is used and the loss is computed
in fp32 on the latents; the figures say whether anything overflowed.

    # GPU (one H200, ~4 min): writes $OUT/sds_precision.json
    python3 benchmarks/gpu/sds_precision.py --out $OUT/sds_precision.json
    # CPU smoke test with the tiny demo UNet (~30 s)
    python benchmarks/gpu/sds_precision.py --model demo --device cpu --render 64 --iters 1 --warmup 0 \
        --timesteps 0.1 0.9 --out /tmp/sds_precision.json
"""

from __future__ import annotations

import dataclasses
import gc
import statistics
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F
import tyro

from splatvlm.commands.bench_report import write_report
from splatvlm.config import load_run_config
from splatvlm.gaussians.cameras import CameraConfig, sample_orbit
from splatvlm.guidance.sds import SDSGuidance
from splatvlm.hub import device_name
from splatvlm.models import build_prior

Precision = Literal["float32", "bfloat16", "float16"]


@dataclass
class Args:
    """SDS pixel-gradient precision against fp32, and step time per precision."""

    model: str = "random"
    """'random' (full-size MVDream UNet, random weights), 'demo' (tiny, smoke test) or a model id / folder."""
    dtypes: list[Precision] = field(default_factory=lambda: ["bfloat16", "float16"])
    """Precisions compared with fp32."""
    timesteps: list[float] = field(default_factory=lambda: [0.02 + 0.96 * i / 7 for i in range(8)])
    """Timestep fractions (of the 1000 training steps)."""
    seeds: int = 2
    """Noise draws per timestep."""
    guidance_scale: float = 50.0
    """CFG scale (VLM3D / MVDream: 50)."""
    views: int = 4
    """Rendered views (one MVDream object)."""
    render: int = 256
    """Render size (resized to the VAE's input size)."""
    iters: int = 10
    """Timed steps per precision and path."""
    warmup: int = 3
    """Untimed steps first (the graph path's first call captures)."""
    cuda_graph: bool = True
    """Also time the CUDA-graph path (CUDA only)."""
    device: str = "cuda"
    """Device to run on."""
    out: Path = Path("benchmarks/results/sds_precision.json")
    """Where to write the JSON results."""


def smooth_renders(
    views: int, size: int, device: torch.device, seed: int = 0
) -> torch.Tensor:  # [V, H, W, 3]
    g = torch.Generator().manual_seed(seed)
    low = torch.rand(views, 3, 8, 8, generator=g)
    img = F.interpolate(low, (size, size), mode="bicubic", align_corners=False).clamp(0, 1)
    return img.permute(0, 2, 3, 1).contiguous().to(device)


def pixel_grad(
    g: SDSGuidance, rgb: torch.Tensor, cams, t: int, posterior_noise: torch.Tensor, noise: torch.Tensor
) -> tuple[torch.Tensor, float]:
    """d loss_sds / d rgb [V, H, W, 3] (fp32) and the loss, for a fixed timestep and noises (eager path)."""
    x = rgb.detach().clone().requires_grad_(True)
    latents = g.encode_images(x, posterior_noise.to(g.dtype))
    out = g.latent_loss(latents, cams, step=0, t=t, noise=noise)
    out["loss_sds"].backward()
    return x.grad.detach().float(), float(out["loss_sds"].detach())


def time_steps(
    g: SDSGuidance, rgb: torch.Tensor, cams, graph: bool, args: Args, device: torch.device
) -> dict:
    """Median ms of one SDS step (forward + pixel gradient) on the eager or the graph path."""
    g.cfg.cuda_graph = graph
    x = rgb.detach().clone().requires_grad_(True)

    def step(i: int) -> None:
        x.grad = None
        g(x, cams, 4000 + i)["loss_sds"].backward()

    t0 = time.perf_counter()
    for i in range(args.warmup):
        step(i)
    if device.type == "cuda":
        torch.cuda.synchronize()
    warmup_s = time.perf_counter() - t0
    ms = []
    for i in range(args.iters):
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            step(i)
            end.record()
            torch.cuda.synchronize()
            ms.append(start.elapsed_time(end))
        else:
            t1 = time.perf_counter()
            step(i)
            ms.append((time.perf_counter() - t1) * 1e3)
    g.cfg.cuda_graph = False
    return {"ms_median": statistics.median(ms) if ms else 0.0, "warmup_s": warmup_s}


def build(
    base, dtype: Precision, device: torch.device, weights_from: SDSGuidance | None, prompt: str
) -> SDSGuidance:
    g = build_prior(replace(base, dtype=dtype), device)
    if weights_from is not None:  # the same weights in every precision (random builds differ otherwise)
        for name in ("unet", "vae", "text_encoder"):
            getattr(g.parts, name).load_state_dict(getattr(weights_from.parts, name).state_dict())
    g.set_prompt(prompt)
    return g


def main(args: Args) -> None:
    device = torch.device(args.device)
    if device.type == "cuda":
        # the reference is true fp32: no TF32 in matmuls or convolutions
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
    prompt = "a DSLR photo of a corgi wearing a top hat"
    base = replace(
        load_run_config("vlm3d").sds, model=args.model, guidance_scale=args.guidance_scale, cuda_graph=False
    )
    rgb = smooth_renders(args.views, args.render, device)
    cams = sample_orbit(CameraConfig(), args.views, args.render, torch.Generator().manual_seed(0)).to(device)

    # 1. fp32 reference gradients for every (timestep, seed)
    t0 = time.perf_counter()
    ref = build(base, "float32", device, None, prompt)
    load_s = time.perf_counter() - t0
    r, ch = ref.latent_resolution, int(ref.parts.vae.config.latent_channels)
    ts = sorted({min(999, max(0, round(f * ref.num_train_timesteps))) for f in args.timesteps})
    draws = {}
    for t in ts:
        for s in range(args.seeds):
            gen = torch.Generator().manual_seed(1000 * t + s)
            post = torch.randn(args.views, ch, r, r, generator=gen).to(device)
            noise = torch.randn(args.views, ch, r, r, generator=gen).to(device)
            draws[(t, s)] = (post, noise, *pixel_grad(ref, rgb, cams, t, post, noise))
    # control: the fp32 step repeated gives the same gradient (nothing random left unfixed)
    post, noise, g32, _ = draws[(ts[0], 0)]
    again, _ = pixel_grad(ref, rgb, cams, ts[0], post, noise)
    fp32_repeat_cosine = float(F.cosine_similarity(again.flatten().double(), g32.flatten().double(), dim=0))
    print(f"fp32 repeat cosine (control): {fp32_repeat_cosine:.8f}", flush=True)
    timing = {"float32": {"eager": time_steps(ref, rgb, cams, False, args, device)}}
    use_graph = args.cuda_graph and device.type == "cuda"
    if use_graph:
        timing["float32"]["graph"] = time_steps(ref, rgb, cams, True, args, device)

    # 2. each precision against it
    per_t: list[dict] = []
    summary: dict[str, dict] = {}
    for dtype in args.dtypes:
        g = build(base, dtype, device, ref, prompt)
        rows = []
        for (t, s), (post, noise, g32, loss32) in draws.items():
            grad, loss = pixel_grad(g, rgb, cams, t, post, noise)
            finite = bool(torch.isfinite(grad).all()) and bool(torch.isfinite(torch.tensor(loss)))
            a, b = grad.flatten().double(), g32.flatten().double()
            cos = float(F.cosine_similarity(torch.nan_to_num(a), b, dim=0))
            row = dict(
                dtype=dtype,
                t=t,
                seed=s,
                cosine=cos,
                rel_l2=float((torch.nan_to_num(a) - b).norm() / b.norm().clamp_min(1e-30)),
                norm_ratio=float(torch.nan_to_num(a).norm() / b.norm().clamp_min(1e-30)),
                finite=finite,
                nonfinite=int((~torch.isfinite(grad)).sum()),
                loss=loss,
                loss_fp32=loss32,
            )
            rows.append(row)
            print(
                f"{dtype:9s} t={t:4d} seed {s}: cosine {cos:.6f}, rel L2 {row['rel_l2']:.4f}, "
                f"norm ratio {row['norm_ratio']:.4f}, finite {finite}",
                flush=True,
            )
        per_t += rows
        timing[dtype] = {"eager": time_steps(g, rgb, cams, False, args, device)}
        if use_graph:
            timing[dtype]["graph"] = time_steps(g, rgb, cams, True, args, device)
        cosines = [x["cosine"] for x in rows]
        summary[dtype] = dict(
            cosine_mean=statistics.fmean(cosines),
            cosine_min=min(cosines),
            cosine_by_t={str(t): statistics.fmean(x["cosine"] for x in rows if x["t"] == t) for t in ts},
            rel_l2_mean=statistics.fmean(x["rel_l2"] for x in rows),
            all_finite=all(x["finite"] for x in rows),
            **{f"{path}_ms": v["ms_median"] for path, v in timing[dtype].items()},
        )
        print(f"{dtype}: {summary[dtype]}", flush=True)
        del g
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()
    summary["float32"] = {f"{path}_ms": v["ms_median"] for path, v in timing["float32"].items()}

    report = dict(
        benchmark="sds_precision",
        args={k: str(v) if isinstance(v, Path) else v for k, v in dataclasses.asdict(args).items()},
        device=device_name(device),
        sds_config=dataclasses.asdict(base),
        timesteps=ts,
        load_s=load_s,
        fp32_repeat_cosine=fp32_repeat_cosine,
        summary=summary,
        timing=timing,
        per_timestep=per_t,
    )
    write_report(args.out, report)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main(tyro.cli(Args))
