"""Reward step time and peak memory: Qwen2.5-VL with full-size random weights, forward + backward to pixels.

One reward step = ``VLMReward.__call__`` on C rendered views (resize, preprocessing, VLM forward, the
reward read-out) plus ``loss_vlm.backward()`` down to the pixel tensor, as the trainer runs it. Timed
with CUDA events after warm-up; the median (and p10/p90) over ``--iters`` steps is reported, with the
peak allocated and reserved memory from the first warm-up step on (so a graph's capture is included).
Paths: ``graph`` = the fast path captured once in a CUDA graph and replayed (RewardConfig.cuda_graph);
``fast`` = the same capture-safe forward run eagerly (only the answer rows through the last layer and
the LM head, precomputed indices); ``reference`` = the straightforward HF forward with full logits.
``first_ms`` is the first warm-up step (query build, and for ``graph`` the warm-up runs and capture).

    python benchmarks/bench_reward.py                                   # 7B, 252 and 448 px, all paths
    python benchmarks/bench_reward.py --models random-7b random-3b --sizes 252
    python benchmarks/bench_reward.py --models random-7b --sizes 252 --compile
    python benchmarks/bench_reward.py --models demo --device cpu --sizes 56 --iters 2 --paths fast reference

Reference (FACTS.md, H100, eager, HF forward): 7B 4 views 252 px 311 ms / 22.4 GB; 448 px 511 ms / 29.7 GB.
"""

from __future__ import annotations

import dataclasses
import gc
import json
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch
import tyro

from splatvlm.commands.bench_report import write_report
from splatvlm.guidance.reward import RewardConfig, VLMReward
from splatvlm.hub import device_name
from splatvlm.models import load_reward


@dataclass
class Args:
    """Reward step benchmark."""

    models: list[str] = field(default_factory=lambda: ["random-7b"])
    """Reward models: random-7b / random-3b (full-size random weights), demo, or an HF id / folder."""
    sizes: list[int] = field(default_factory=lambda: [252, 448])
    """VLM view sides in pixels (multiples of 28)."""
    views: int = 4
    """Views per reward step."""
    render: int = 256
    """Side of the rendered views fed to the reward (resized to each size inside); 0 = same as size."""
    paths: list[Literal["graph", "fast", "reference"]] = field(
        default_factory=lambda: ["graph", "fast", "reference"]
    )
    """Which paths to time: graph = fast path in a CUDA graph; fast = same forward, eager; reference = HF."""
    compile: bool = False
    """torch.compile the decoder layers and vision blocks (RewardConfig.compile), on every path."""
    pad_gemm: bool = False
    """Zero-pad the vision MLP width to a multiple of 64 (RewardConfig.pad_gemm; fast and graph paths)."""
    gradient_checkpointing: bool = False
    """Recompute activations in the backward (RewardConfig.gradient_checkpointing)."""
    attn_implementation: Literal["sdpa", "eager", "flash_attention_2"] = "sdpa"
    """Attention kernel."""
    iters: int = 10
    """Timed steps per setting."""
    warmup: int = 3
    """Untimed steps before timing (query build, allocator, compilation)."""
    prompt: str = "a DSLR photo of a corgi wearing a party hat"
    """Prompt in the question."""
    device: str = "cuda"
    """Device."""
    out: Path = Path("benchmarks/bench_reward.json")
    """JSON results file."""


def time_steps(reward: VLMReward, rgb: torch.Tensor, n: int) -> list[float]:
    """Milliseconds of n reward steps (forward + backward to the pixels)."""
    cuda = rgb.device.type == "cuda"
    out = []
    for _ in range(n):
        if cuda:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
        else:
            t0 = time.perf_counter()
        loss = reward(rgb, None, 0)["loss_vlm"]
        loss.backward()
        rgb.grad = None
        if cuda:
            end.record()
            torch.cuda.synchronize()
            out.append(start.elapsed_time(end))
        else:
            out.append((time.perf_counter() - t0) * 1e3)
    return out


def main(args: Args) -> list[dict]:
    device = torch.device(args.device)
    cuda = device.type == "cuda"
    results = []
    for model in args.models:
        cfg = RewardConfig(
            model=model,
            num_views=args.views,
            compile=args.compile,
            pad_gemm=args.pad_gemm,
            gradient_checkpointing=args.gradient_checkpointing,
            attn_implementation=args.attn_implementation,
        )
        if cuda:
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
        t0 = time.perf_counter()
        reward = load_reward(cfg, device)
        load_s = time.perf_counter() - t0
        weights_gb = torch.cuda.memory_allocated() / 2**30 if cuda else float("nan")
        n_params = sum(p.numel() for p in reward.model.parameters())
        print(f"{model}: {n_params / 1e9:.2f} B params, {weights_gb:.1f} GB weights, built in {load_s:.1f} s")
        for size in args.sizes:
            ref_ms = None
            for path in sorted(args.paths, key=["reference", "fast", "graph"].index):
                reward.cfg = dataclasses.replace(
                    cfg, size=size, fast=path != "reference", cuda_graph=path == "graph"
                )
                reward.set_prompt(args.prompt)
                side = args.render or size
                gen = torch.Generator(device=device).manual_seed(0)
                rgb = torch.rand(args.views, side, side, 3, device=device, generator=gen).requires_grad_(True)
                g = size // reward.src.patch_size
                q = reward.query(args.prompt, args.views, (g, g))
                row = {
                    "model": model,
                    "params_b": round(n_params / 1e9, 3),
                    "size": size,
                    "render": side,
                    "views": args.views,
                    "path": path,
                    "graphed": reward.graphed(rgb),
                    "compile": args.compile,
                    "pad_gemm": args.pad_gemm,
                    "gradient_checkpointing": args.gradient_checkpointing,
                    "attn": args.attn_implementation,
                    "tokens": int(q.input_ids.shape[1]),
                    "text_tokens": q.n_text_tokens,
                    "weights_gb": round(weights_gb, 2),
                }
                try:
                    if cuda:
                        torch.cuda.synchronize()
                        torch.cuda.reset_peak_memory_stats()
                    first = time_steps(reward, rgb, 1)[0]
                    time_steps(reward, rgb, max(0, args.warmup - 1))
                    ms = time_steps(reward, rgb, args.iters)
                    qs = statistics.quantiles(ms, n=10, method="inclusive") if len(ms) > 1 else [ms[0]] * 9
                    row.update(
                        ms_median=round(statistics.median(ms), 2),
                        ms_p10=round(qs[0], 2),
                        ms_p90=round(qs[-1], 2),
                        first_ms=round(first, 1),
                        peak_gb=round(torch.cuda.max_memory_allocated() / 2**30, 2) if cuda else None,
                        reserved_gb=round(torch.cuda.max_memory_reserved() / 2**30, 2) if cuda else None,
                    )
                    if path == "reference":
                        ref_ms = row["ms_median"]
                    elif ref_ms:
                        row["speedup_vs_reference"] = round(ref_ms / row["ms_median"], 2)
                except torch.cuda.OutOfMemoryError:
                    row.update(error="out of memory")
                    rgb.grad = None
                reward.reset_graphs()  # free the graph's memory pool before the next setting
                gc.collect()
                if cuda:
                    torch.cuda.empty_cache()
                results.append(row)
                speed = f"  x{row['speedup_vs_reference']}" if "speedup_vs_reference" in row else ""
                print(
                    f"  {size:4d} px  {path:9s}  {row.get('ms_median', '-')} ms (p10 {row.get('ms_p10', '-')}, "
                    f"p90 {row.get('ms_p90', '-')}){speed}  first {row.get('first_ms', '-')} ms  "
                    f"peak {row.get('peak_gb', '-')} GB (reserved {row.get('reserved_gb', '-')})  "
                    f"{row['tokens']} tokens ({row['text_tokens']} text)"
                    + (f"  {row['error']}" if "error" in row else "")
                )
        del reward
        gc.collect()
        if cuda:
            torch.cuda.empty_cache()
    report = {
        "device": device_name(device),
        "args": json.loads(json.dumps(dataclasses.asdict(args), default=str)),
        "results": results,
    }
    write_report(args.out, report)
    print(f"wrote {args.out}")
    return results


if __name__ == "__main__":
    main(tyro.cli(Args))
