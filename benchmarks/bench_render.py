"""Render forward + backward time and peak memory for the gsplat and pure-PyTorch backends.

One step = ``render()`` of C views (RGB + expected depth, packed by default) and the backward of a loss
on RGB, depth and alpha down to every scene parameter, as the trainer runs it. The scene is a random
ball of N Gaussians (radius 0.5, isotropic, opacity 0.5), seen from training-orbit cameras. Timed
after warm-up, with CUDA events on GPU (perf_counter on CPU): the median (p10 / p90) over ``--iters``
steps, split into forward and backward, plus peak memory (CUDA: max allocated; CPU: process max RSS,
which only grows, so later cases inherit earlier peaks) and the number of visible (view, Gaussian) pairs.
The torch backend runs only where resolution^2 x N is at most ``--torch-budget``.

    python benchmarks/bench_render.py                                   # GPU: both backends
    python benchmarks/bench_render.py --device cpu --backends torch --resolutions 64 128 --gaussians 4096 20000
    python benchmarks/bench_render.py --out benchmarks/results/bench_render.json

Reference (FACTS.md, H100): gsplat fwd+bwd, 4 views 512 px, 100k Gaussians, packed: 2.5 ms.
"""

from __future__ import annotations

import resource
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch
import tyro

from splatvlm.commands.bench_report import write_report
from splatvlm.gaussians.cameras import CameraConfig, sample_orbit
from splatvlm.gaussians.render import RenderConfig, render
from splatvlm.gaussians.scene import SceneConfig, init_ball
from splatvlm.hub import device_name


@dataclass
class Args:
    """Render forward+backward benchmark."""

    backends: list[Literal["gsplat", "torch"]] = field(default_factory=lambda: ["gsplat", "torch"])
    """Backends to time (gsplat needs CUDA)."""
    resolutions: list[int] = field(default_factory=lambda: [128, 256, 512])
    """Square image sizes in pixels."""
    gaussians: list[int] = field(default_factory=lambda: [10_000, 20_000, 100_000])
    """Scene sizes."""
    views: int = 4
    """Views per step."""
    packed: bool = True
    """Packed projection (as the trainer's default)."""
    sh_degree: int = 0
    """Spherical-harmonic degree of the scene."""
    torch_budget: float = 256 * 256 * 20_000
    """Run the torch backend only where resolution^2 x Gaussians is at most this."""
    torch_chunk: int = 1 << 21
    """Torch backend: pixels x Gaussians per chunk."""
    iters: int = 20
    """Timed steps per case."""
    warmup: int = 3
    """Untimed steps first (gsplat's first call may JIT-compile its kernels)."""
    device: str = "cuda"
    """Device to run on."""
    seed: int = 0
    """Seed of the random scene and cameras."""
    out: Path = Path("benchmarks/results/bench_render.json")
    """Where to write the JSON results."""


def percentile(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, max(0, round(q * (len(xs) - 1))))]


def max_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux reports KiB


def run_case(args: Args, backend: str, res: int, n: int) -> dict:
    device = torch.device(args.device)
    gen = torch.Generator().manual_seed(args.seed)
    scene_cfg = SceneConfig(num_points=n, radius=0.5, opacity=0.5, color_noise=0.4, sh_degree=args.sh_degree)
    params = init_ball(scene_cfg, generator=gen).to(device)
    cams = sample_orbit(CameraConfig(), args.views, res, generator=gen).to(device)
    bg = torch.ones(args.views, 3, device=device)
    cfg = RenderConfig(backend=backend, packed=args.packed, torch_chunk=args.torch_chunk)
    cuda = device.type == "cuda"

    def step() -> tuple[float, float, int]:
        for p in params.values():
            p.grad = None
        if cuda:
            ev = [torch.cuda.Event(enable_timing=True) for _ in range(3)]
            ev[0].record()
        else:
            t0 = time.perf_counter()
        out = render(params, cams, cfg, bg)
        if cuda:
            ev[1].record()
        else:
            t1 = time.perf_counter()
        loss = out.rgb.square().mean() + 0.01 * out.depth.mean() + out.alpha.mean()
        loss.backward()
        if cuda:
            ev[2].record()
            torch.cuda.synchronize()
            fwd, bwd = ev[0].elapsed_time(ev[1]), ev[1].elapsed_time(ev[2])
        else:
            t2 = time.perf_counter()
            fwd, bwd = 1e3 * (t1 - t0), 1e3 * (t2 - t1)
        return (
            fwd,
            bwd,
            len(out.info["means2d"]) if args.packed else int((out.info["radii"] > 0).all(-1).sum()),
        )

    for _ in range(args.warmup):
        step()
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    fwd, bwd, nnz = [], [], 0
    for _ in range(args.iters):
        f, b, nnz = step()
        fwd.append(f)
        bwd.append(b)
    total = [f + b for f, b in zip(fwd, bwd, strict=True)]
    peak = torch.cuda.max_memory_allocated() / 2**20 if cuda else max_rss_mb()
    return dict(
        backend=backend,
        resolution=res,
        gaussians=n,
        views=args.views,
        packed=args.packed,
        visible_pairs=nnz,
        ms_median=statistics.median(total),
        ms_p10=percentile(total, 0.1),
        ms_p90=percentile(total, 0.9),
        forward_ms=statistics.median(fwd),
        backward_ms=statistics.median(bwd),
        peak_mb=peak,
        peak_kind="cuda_max_allocated" if cuda else "process_max_rss",
    )


def main(args: Args) -> None:
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("CUDA is not available; pass --device cpu --backends torch")
    results = []
    print(f"{'backend':7} {'px':>5} {'gaussians':>9} {'pairs':>8} {'fwd+bwd ms':>11} {'[p10, p90]':>17} "
          f"{'fwd ms':>8} {'bwd ms':>8} {'peak MB':>8}")  # fmt: skip
    for backend in args.backends:
        if backend == "gsplat" and device.type != "cuda":
            print("gsplat: skipped (needs CUDA)")
            continue
        for n in args.gaussians:
            for res in args.resolutions:
                if backend == "torch" and res * res * n > args.torch_budget:
                    continue
                r = run_case(args, backend, res, n)
                results.append(r)
                print(
                    f"{backend:7} {res:5d} {n:9d} {r['visible_pairs']:8d} {r['ms_median']:11.2f} "
                    f"[{r['ms_p10']:7.2f}, {r['ms_p90']:7.2f}] {r['forward_ms']:8.2f} {r['backward_ms']:8.2f} "
                    f"{r['peak_mb']:8.0f}",
                    flush=True,
                )
                if device.type == "cuda":
                    torch.cuda.empty_cache()
    report = dict(
        benchmark="render forward+backward",
        device=device_name(device),
        cpu_threads=torch.get_num_threads(),
        args={k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        results=results,
    )
    write_report(args.out, report)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main(tyro.cli(Args))
