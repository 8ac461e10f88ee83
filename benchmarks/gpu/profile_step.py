"""Where the full step's time goes: a kernel-level profile of the trainer at a whole run's Gaussian count.

    . benchmarks/gpu/setup.sh && python3 benchmarks/gpu/profile_step.py --out $OUT/profile.json

For each variant (two streams, two streams queued in the terms' own order, one stream) and each phase asked
for, on the `vlm3d` preset with random full-size weights: warm-up steps, then timed steps (wall per step, no
profiler, no per-component syncs), then a few steps under torch.profiler. From the profiler's trace: per step
the GPU's busy time (the union of all kernels on all streams), its idle time, the time per stream, and the
kernels grouped by kind (GEMM, attention, triton/inductor, gsplat, copies, other) with the top kernels by total
time.
The traces of the first records are written beside the JSON (gzipped chrome traces, --traces).
"""

from __future__ import annotations

import argparse
import gc
import gzip
import json
import re
import shutil
import statistics
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import torch
import yaml

KINDS = (
    ("gemm", re.compile(r"gemm|cutlass|nvjet|xmma|sm90_|wgmma|cublas", re.I)),
    ("attention", re.compile(r"flash|fmha|attention|sdpa|softmax", re.I)),
    ("gsplat", re.compile(r"rasteriz|projection|isect|spherical|intersect|gsplat|radix|cub::", re.I)),
    ("triton", re.compile(r"^triton_", re.I)),
    ("conv", re.compile(r"conv|implicit|cudnn|winograd|dgrad|wgrad", re.I)),
    ("norm", re.compile(r"norm", re.I)),
    ("copy", re.compile(r"copy|memcpy|memset|cat|index|gather|scatter", re.I)),
)


def kind_of(name: str) -> str:
    return next((k for k, pat in KINDS if pat.search(name)), "other")


def union_ms(intervals: list[tuple[float, float]]) -> float:
    total, end = 0.0, -1e30
    for a, b in sorted(intervals):
        if b <= end:
            continue
        total += b - max(a, end)
        end = b
    return total / 1e3


def analyse(trace_path: Path, steps: int) -> dict:
    events = json.loads(trace_path.read_text())["traceEvents"]
    kernels = [e for e in events if e.get("cat") in ("kernel", "gpu_memcpy", "gpu_memset") and "dur" in e]
    if not kernels:
        return {"error": "no kernel events in the trace"}
    # train() ends with a checkpoint: its device-to-host copies (and anything after) are no step's work
    ckpt = [e["ts"] for e in kernels if "DtoH" in e["name"] and e.get("args", {}).get("bytes", 0) > 2**20]
    if ckpt:
        kernels = [e for e in kernels if e["ts"] < min(ckpt)]
    t0 = min(e["ts"] for e in kernels)
    t1 = max(e["ts"] + e["dur"] for e in kernels)
    busy = union_ms([(e["ts"], e["ts"] + e["dur"]) for e in kernels])
    by_stream: dict[str, float] = {}
    by_kind: dict[str, float] = {}
    by_name: dict[str, list[float]] = {}
    for e in kernels:
        ms = e["dur"] / 1e3
        stream = str(e.get("args", {}).get("stream", e.get("tid")))
        by_stream[stream] = by_stream.get(stream, 0.0) + ms
        by_kind[kind_of(e["name"])] = by_kind.get(kind_of(e["name"]), 0.0) + ms
        by_name.setdefault(e["name"], []).append(ms)
    top = sorted(by_name.items(), key=lambda kv: -sum(kv[1]))[:40]
    per = 1.0 / steps
    return {
        "gpu_window_ms_per_step": (t1 - t0) / 1e3 * per,
        "gpu_busy_ms_per_step": busy * per,
        "gpu_idle_ms_per_step": ((t1 - t0) / 1e3 - busy) * per,
        "kernel_sum_ms_per_step": sum(by_kind.values()) * per,
        "kernels_per_step": len(kernels) * per,
        "by_stream_ms_per_step": {k: v * per for k, v in sorted(by_stream.items(), key=lambda kv: -kv[1])},
        "by_kind_ms_per_step": {k: v * per for k, v in sorted(by_kind.items(), key=lambda kv: -kv[1])},
        "top_kernels": [
            {"name": n[:160], "kind": kind_of(n), "ms_per_step": sum(v) * per, "calls_per_step": len(v) * per}
            for n, v in top
        ],
    }


def host_syncs(fn, *args, **kwargs) -> list[dict]:
    """Run ``fn(*args, **kwargs)`` under ``torch.cuda.set_sync_debug_mode("warn")``: each place the host waits
    for the GPU (its innermost project / gsplat frames) with how often it was hit."""
    import traceback
    import warnings

    hits: dict[str, int] = {}

    def show(message, category, filename, lineno, file=None, line=None):
        if "synchronizing" not in str(message):
            return
        frames = [
            f for f in traceback.extract_stack()[:-1] if "splatvlm" in f.filename or "gsplat" in f.filename
        ]
        where = " <- ".join(f"{Path(f.filename).name}:{f.lineno} {f.name}" for f in reversed(frames[-4:]))
        hits[where] = hits.get(where, 0) + 1

    torch.cuda.set_sync_debug_mode("warn")
    try:
        with warnings.catch_warnings():  # restores showwarning and the filters afterwards
            warnings.simplefilter("always")
            warnings.showwarning = show
            fn(*args, **kwargs)
            torch.cuda.synchronize()
    finally:
        torch.cuda.set_sync_debug_mode("default")
    return [{"where": k, "count": v} for k, v in sorted(hits.items(), key=lambda kv: -kv[1])]


def main() -> None:
    from splatvlm.commands.bench import random_weights, recipe_phases
    from splatvlm.commands.generate import Guidance
    from splatvlm.config import load_run_config
    from splatvlm.gaussians.scene import init_ball
    from splatvlm.run.train_state import new_state
    from splatvlm.run.trainer import train

    ap = argparse.ArgumentParser()
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--gaussians", type=int, default=300_000)
    ap.add_argument("--warmup", type=int, default=4)
    ap.add_argument("--steps", type=int, default=12)
    ap.add_argument("--profiled", type=int, default=3)
    ap.add_argument("--phases", nargs="+", default=["4x256px +reward", "8x64px +reward", "4x256px"])
    ap.add_argument("--variants", nargs="+", default=["streams", "one-stream"])
    ap.add_argument("--preset", default="vlm3d")
    ap.add_argument("--traces", type=int, default=2, help="keep the chrome traces of the first N records")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--set", nargs="*", default=[], help="extra recipe fields, e.g. sds.compile=false")
    ap.add_argument(
        "--sync-points",
        action="store_true",
        help="after the first variant's timed steps, 2 steps under torch.cuda.set_sync_debug_mode: "
        "where the host waits for the GPU (the Python frames of each synchronizing call)",
    )
    args = ap.parse_args()
    prompt = "a DSLR photo of a corgi wearing a party hat"
    records = []
    base = random_weights(load_run_config(args.preset))
    dev = torch.device(args.device)
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    from splatvlm.config import apply_overrides, nest_dotted

    if args.set:
        base = apply_overrides(
            base, nest_dotted({k: yaml.safe_load(v) for k, v in (s.split("=", 1) for s in args.set)})
        )
    guidance, loaded_with = None, None
    for variant in args.variants:
        # "streams" / "streams-registered" (the terms queued in their own order, no launch_first) / "one-stream",
        # optionally ":key=value,key=value" recipe overrides (new models when they differ); a "-timed" suffix times
        # the steps with the bench's per-component CUDA events on (the trainer's profile=True)
        name, _, extra = variant.partition(":")
        timed = name.endswith("-timed")
        name = name.removesuffix("-timed")
        # "-nocudnn": SDPA without its cuDNN backend (flash attention instead). Only as a process's first variant,
        # in a fresh TORCHINDUCTOR_CACHE_DIR: AOTAutograd's cache is keyed on the graph before SDPA picks its
        # backend, and hands back cuDNN-compiled code otherwise (round 9)
        if name.endswith("-nocudnn"):
            if guidance is not None:
                ap.error("a -nocudnn variant must come first (compiled code would keep the cuDNN kernels)")
            torch.backends.cuda.enable_cudnn_sdp(False)
            name = name.removesuffix("-nocudnn")
        cfg = replace(base, parallel_terms=name.startswith("streams"), checkpoint_every=0)
        if extra:
            pairs = (kv.split("=", 1) for kv in extra.split(","))
            cfg = apply_overrides(cfg, nest_dotted({k: yaml.safe_load(v) for k, v in pairs}))
        if guidance is None or loaded_with != extra:
            guidance = None
            gc.collect()
            torch.cuda.empty_cache() if dev.type == "cuda" else None
            guidance, loaded_with = Guidance(cfg, dev), extra
        else:
            guidance.cfg = cfg
        terms = guidance.terms(prompt)
        if name == "streams-registered":
            terms = {k: replace(t, launch_first=False) for k, t in terms.items()}
        for phase in recipe_phases(cfg):
            if phase.label not in args.phases:
                continue
            torch.manual_seed(cfg.seed)
            scene = replace(cfg.scene, num_points=args.gaussians)
            state = new_state(init_ball(scene, torch.Generator().manual_seed(cfg.seed)), cfg, dev)
            state.step = phase.start
            run_dir = Path(tempfile.mkdtemp())
            walls: list[float] = []
            n = args.warmup + args.steps
            pcfg = replace(cfg, steps=phase.end, log_every=10**9)
            t0 = time.perf_counter()
            train(pcfg, state, terms, run_dir, dev, stop_after=args.warmup, progress=False)
            sync()
            first_s = time.perf_counter() - t0
            train(pcfg, state, terms, run_dir, dev, stop_after=args.steps, progress=False, profile=timed,
                  on_step=lambda s, logs, walls=walls: walls.append(logs["step_ms"]))  # fmt: skip
            sync()
            sync_points = None
            if args.sync_points and not records:
                sync_points = host_syncs(
                    train, pcfg, state, terms, run_dir, dev, stop_after=2, progress=False
                )
            trace = run_dir / "trace.json"
            with torch.profiler.profile(
                activities=[torch.profiler.ProfilerActivity.CPU, torch.profiler.ProfilerActivity.CUDA]
            ) as prof:
                t1 = time.perf_counter()
                train(pcfg, state, terms, run_dir, dev, stop_after=args.profiled, progress=False)
                sync()
                prof_wall = (time.perf_counter() - t1) * 1e3 / args.profiled
            prof.export_chrome_trace(str(trace))
            rec = {
                "variant": variant,
                "phase": phase.label,
                "gaussians": args.gaussians,
                "warmup_s": first_s,
                "step_ms_median": statistics.median(walls),
                "step_ms_all": walls,
                "profiled_wall_ms_per_step": prof_wall,
                "profiled_steps": args.profiled,
                **analyse(trace, args.profiled),
                "n": n,
            }
            if sync_points is not None:
                rec["sync_points_per_2_steps"] = sync_points
            records.append(rec)
            short = {k: v for k, v in rec.items() if k not in ("top_kernels", "step_ms_all")}
            print(json.dumps(short), flush=True)
            if len(records) <= args.traces:
                name = args.out.with_suffix(f".{len(records)}.trace.json.gz")
                with open(trace, "rb") as f, gzip.open(name, "wb") as g:
                    shutil.copyfileobj(f, g)
            args.out.write_text(json.dumps({"device": torch.cuda.get_device_name() if dev.type == "cuda" else "cpu", "torch": torch.__version__,
                                            "date": time.strftime("%Y-%m-%d"), "records": records}, indent=1))  # fmt: skip
            shutil.rmtree(run_dir, ignore_errors=True)


if __name__ == "__main__":
    main()
