"""SDS step time and peak memory with full-size random-weight SD-2.1-base components (UNet, VAE, text encoder).

One SDS step = what ``SDSGuidance.__call__`` runs on C rendered views (resize, VAE encode, one UNet call on the
CFG batch of 2C, the x0 / eps target, loss) plus ``loss_sds.backward()`` down to the pixel tensor, as
the trainer runs it. Timed with CUDA events after warm-up: the median (and p10/p90) over ``--iters``
steps, the split into encode / UNet+target / backward, and the peak allocated memory over the timed
steps (weights included; ``weights_gb`` says how much of it they are). With ``--cuda-graph`` each case
then times the graphed path (``SDSConfig.cuda_graph``: the whole step replayed as one CUDA graph; its
first call captures it, ``capture_s``) on the same models, with its speedup and the cosine between the
two paths' pixel gradients for one seeded step (same timestep and noises). On CPU the graph path is the
eager one (smoke test only).

Cases (``--cases``): ``mv256`` MVDream 4 views x 256 px, ``mv64`` MVDream 8 views rendered at 64 px
(resized to 256 for the VAE, as VLM3D's first phase), ``sd512`` SD-2.1-base 4 views x 512 px.

    python benchmarks/bench_sds.py                                         # bf16, SDPA, eager
    python benchmarks/bench_sds.py --cuda-graph                            # eager vs one CUDA graph per step
    python benchmarks/bench_sds.py --dtype float16 --channels-last --compile
    python benchmarks/bench_sds.py --attention math --out benchmarks/results/sds_math.json
    python benchmarks/bench_sds.py --model demo --device cpu --iters 2 --warmup 1   # smoke test

Reference (FACTS.md, H100, eager, random weights): SD-2.1-size UNet (CFG batch 8) + VAE encoder backward,
4 views 256 px: 67 ms (peak 3.7 GB); 512 px: 94 ms (peak 8.9 GB).
"""

from __future__ import annotations

import dataclasses
import gc
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch
import tyro

from splatvlm.commands.bench_report import write_report
from splatvlm.gaussians.cameras import CameraConfig, sample_orbit
from splatvlm.guidance.sds import SDSConfig, SDSGuidance
from splatvlm.hub import device_name
from splatvlm.models import build_prior

CASES: dict[str, tuple[Literal["mvdream", "sd"], int, int, int]] = {
    # name: (kind, views, render px, VAE input px)
    "mv256": ("mvdream", 4, 256, 256),
    "mv64": ("mvdream", 8, 64, 256),
    "sd512": ("sd", 4, 512, 512),
}


@dataclass
class Args:
    """SDS step benchmark."""

    cases: list[Literal["mv256", "mv64", "sd512"]] = field(default_factory=lambda: ["mv256", "mv64", "sd512"])
    """Which cases to run (see the module docstring)."""
    model: str = "random"
    """'random' (full-size random weights), 'demo' (tiny models, smoke test) or a real model id / folder."""
    dtype: Literal["bfloat16", "float16", "float32"] = "bfloat16"
    """Weights and activations dtype."""
    attention: Literal["sdpa", "math"] = "sdpa"
    """Attention kernel: torch SDPA or the explicit softmax."""
    channels_last: bool = False
    """Channels-last UNet and VAE."""
    compile: bool = False
    """torch.compile the UNet (more warm-up steps are taken); applies to both paths."""
    cuda_graph: bool = False
    """Also time the CUDA-graph path (same models, after the eager one) and print its speedup and the
    cosine between the two paths' pixel gradients for one seeded step."""
    eager: bool = True
    """Time the eager path (--no-eager with --cuda-graph: the graph path alone)."""
    mode: Literal["x0", "eps"] = "x0"
    """SDS target (the cost differs only by a few elementwise ops)."""
    iters: int = 20
    """Timed steps per case."""
    warmup: int = 3
    """Untimed steps first (at least 8 with --compile)."""
    device: str = "cuda"
    """Device to run on."""
    out: Path = Path("benchmarks/results/bench_sds.json")
    """Where to write the JSON results."""


def percentile(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, max(0, round(q * (len(xs) - 1))))]


class Timer:
    """CUDA events on GPU, perf_counter on CPU; read after the loop (one sync)."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"
        self.marks: list[list] = []

    def mark(self, row: list) -> None:
        if self.cuda:
            e = torch.cuda.Event(enable_timing=True)
            e.record()
            row.append(e)
        else:
            row.append(time.perf_counter())

    def elapsed_ms(self, a, b) -> float:
        return a.elapsed_time(b) if self.cuda else (b - a) * 1000.0


def seeded_grad(g: SDSGuidance, rgb: torch.Tensor, cams, step: int, graph: bool, seed: int) -> torch.Tensor:
    """Pixel gradient of one step with a fixed seed (the same timestep and noises on either path)."""
    g.cfg.cuda_graph = graph
    rgb.grad = None
    torch.manual_seed(seed)
    g(rgb, cams, step)["loss_sds"].backward()
    return rgb.grad.detach().clone()


def time_variant(
    g: SDSGuidance, rgb: torch.Tensor, cams, variant: Literal["eager", "graph"], args: Args, device
) -> dict:
    """Warm up, then time ``args.iters`` steps of one path; the graph path's first call captures."""
    g.cfg.cuda_graph = variant == "graph"

    def step(i: int, timer: Timer | None = None, row: list | None = None) -> None:
        rgb.grad = None
        if timer:
            timer.mark(row)
        if variant == "graph":
            out = g(rgb, cams, 2000 + i)  # fill the static inputs, replay, read the diagnostics
        else:
            latents = g.encode_images(rgb)
            if timer:
                timer.mark(row)
            out = g.latent_loss(latents, cams, step=2000 + i)
        if timer:
            timer.mark(row)
        out["loss_sds"].backward()
        if timer:
            timer.mark(row)

    capture_s = 0.0
    if variant == "graph":
        t0 = time.perf_counter()
        step(0)
        if device.type == "cuda":
            torch.cuda.synchronize()
        capture_s = time.perf_counter() - t0
    warmup = max(args.warmup, 8 if args.compile and variant == "eager" else 0)
    t0 = time.perf_counter()
    for i in range(warmup):
        step(i)
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    warmup_s = time.perf_counter() - t0 + capture_s
    timer = Timer(device)
    rows = []
    for i in range(args.iters):
        row: list = []
        step(i, timer, row)
        rows.append(row)
    if device.type == "cuda":
        torch.cuda.synchronize()
    peak_gb = torch.cuda.max_memory_allocated() / 1e9 if device.type == "cuda" else 0.0
    total = [timer.elapsed_ms(r[0], r[-1]) for r in rows]
    result = dict(
        variant=variant,
        ms_median=statistics.median(total),
        ms_p10=percentile(total, 0.1),
        ms_p90=percentile(total, 0.9),
        peak_gb=peak_gb,
        warmup_s=warmup_s,
    )
    if variant == "graph":
        result["capture_s"] = capture_s
        result["call_ms"] = statistics.median([timer.elapsed_ms(r[0], r[1]) for r in rows])
        result["backward_ms"] = statistics.median([timer.elapsed_ms(r[1], r[2]) for r in rows])
    else:
        result["encode_ms"] = statistics.median([timer.elapsed_ms(r[0], r[1]) for r in rows])
        result["unet_target_ms"] = statistics.median([timer.elapsed_ms(r[1], r[2]) for r in rows])
        result["backward_ms"] = statistics.median([timer.elapsed_ms(r[2], r[3]) for r in rows])
    return result


def run_case(name: str, args: Args, device: torch.device) -> list[dict]:
    kind, views, render, vae_px = CASES[name]
    cfg = SDSConfig(
        kind=kind,
        model=args.model,
        dtype=args.dtype,
        attention=args.attention,
        channels_last=args.channels_last,
        compile=args.compile,
        cuda_graph=False,
        mode=args.mode,
        image_size=vae_px if args.model != "demo" else 0,
        guidance_scale=50.0 if kind == "mvdream" else 100.0,
        view_dependent_prompts=kind == "sd",
    )
    t0 = time.perf_counter()
    g = build_prior(cfg, device)
    g.set_prompt("a DSLR photo of a corgi wearing a top hat")
    load_s = time.perf_counter() - t0
    cams = sample_orbit(CameraConfig(), views, render, torch.Generator().manual_seed(0)).to(device)
    rgb = torch.rand(views, render, render, 3, device=device, requires_grad=True)
    if device.type == "cuda":
        torch.cuda.synchronize()
    weights_gb = torch.cuda.memory_allocated() / 1e9 if device.type == "cuda" else 0.0
    shared = dict(
        case=name,
        kind=kind,
        views=views,
        render_px=render,
        vae_px=g.image_size,
        latent_px=g.latent_resolution,
        unet_batch=2 * views,
        weights_gb=weights_gb,
        load_s=load_s,
    )
    variants: list[Literal["eager", "graph"]] = (["eager"] if args.eager else []) + (
        ["graph"] if args.cuda_graph else []
    )
    results = [dict(shared, **time_variant(g, rgb, cams, v, args, device)) for v in variants]
    if len(results) == 2:
        results[1]["speedup"] = results[0]["ms_median"] / results[1]["ms_median"]
        # same seed, same timestep and noises: the two paths must agree (bf16 tolerance)
        a = seeded_grad(g, rgb, cams, 4000, False, 1234)
        b = seeded_grad(g, rgb, cams, 4000, True, 1234)
        cos = torch.nn.functional.cosine_similarity(a.flatten().double(), b.flatten().double(), dim=0)
        results[1]["grad_cosine"] = float(cos)
    return results


def describe(r: dict) -> str:
    head = (
        f"{r['case']:6s} {r['views']} views x {r['render_px']} px (VAE {r['vae_px']}, latents {r['latent_px']}) "
        f"{r['variant']:5s}: {r['ms_median']:7.1f} ms [p10 {r['ms_p10']:.1f}, p90 {r['ms_p90']:.1f}] "
    )
    if r["variant"] == "eager":
        detail = f"(encode {r['encode_ms']:.1f}, unet+target {r['unet_target_ms']:.1f}, backward {r['backward_ms']:.1f})"
    else:
        detail = f"(call {r['call_ms']:.1f}, backward {r['backward_ms']:.1f}; capture {r['capture_s']:.2f} s"
        if "speedup" in r:
            detail += f"; x{r['speedup']:.2f} vs eager, pixel-grad cosine {r['grad_cosine']:.5f}"
        detail += ")"
    return head + detail + f" peak {r['peak_gb']:.2f} GB (weights {r['weights_gb']:.2f} GB)"


def main(args: Args) -> None:
    device = torch.device(args.device)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        torch.backends.cudnn.benchmark = True
    if not (args.eager or args.cuda_graph):
        raise SystemExit("nothing to time: pass --cuda-graph or leave --eager on")
    results = []
    for name in args.cases:
        rows = run_case(name, args, device)
        results.extend(rows)
        gc.collect()  # the case's models go before the next case is built
        if device.type == "cuda":
            torch.cuda.empty_cache()
        for r in rows:
            print(describe(r), flush=True)

    report = dict(
        benchmark="sds_step",
        args={k: str(v) if isinstance(v, Path) else v for k, v in dataclasses.asdict(args).items()},
        device=device_name(device),
        results=results,
    )
    write_report(args.out, report)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main(tyro.cli(Args))
