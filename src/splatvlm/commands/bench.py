"""`splatvlm bench`: time the generate pipeline over a prompt set (GPTEval3D's or ours).

For each prompt the recipe is split into phases where the step does the same work (low-res /
high-res rendering, reward on / off).

Quick mode (default): a few steps of each phase (``--timed-steps``) are timed after warm-up, per component (render,
sds, vlm, backward, densify, viewer) with CUDA events on GPU, on a scene of the size a full run
reaches (``--gaussians``, default the preset's ``strategy.cap_max``). The asset time is extrapolated
from the phase lengths, and the report says so.

``--full``: each prompt's whole recipe runs, as ``generate`` trains it (densification included), and
the report gives what was measured: the recipe's wall time (model loading excluded and stated
separately), per-phase step times, the Gaussian count over time, each refinement's statistics and
the peak memory (CUDA only; n/a on a CPU).

``--reference`` times the straightforward eager path (reward every step, no fast paths, no
compilation) in the same run.
"""

from __future__ import annotations

import datetime
import json
import shlex
import sys
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Annotated, Any, Literal

import torch
import tyro

from ..config import RunConfig, preset_help, to_dict, validate_run_config
from ..errors import SplatVLMError
from ..files import atomic_write_text, check_output_dir, ignore_in_git
from ..hub import device_name
from ..prompts import read_prompts
from ..run.progress import clock, say, task_progress
from .bench_report import COMPONENTS, report_markdown, save_breakdown_png
from .bench_timing import (
    cosine,
    full_step,
    gradient_probe,
    median_or_zero,
    recipe_phases,
    reward_query_tokens,
    run_prompt_full,
    time_prompt,
)

SHIPPED_PROMPTS = Path(__file__).resolve().parents[1] / "data" / "bench_prompts.json"


@dataclass
class BenchArgs:
    """Speed benchmark of the generate pipeline over a prompt set."""

    output: Annotated[Path, tyro.conf.arg(aliases=["-o"])] = Path("bench-out")
    """Report folder: report.json, report.md, breakdown.png."""
    preset: Annotated[str, tyro.conf.arg(help=preset_help())] = "vlm3d"
    config: Path | None = None
    """A YAML config file applied on top of the preset."""
    prompts: Path | None = None
    """Prompt file (GPTEval3D's prompts.json, or one prompt per line); default: our small offline set."""
    limit: int | None = None
    """Only the first N prompts."""
    full: bool = False
    """Run each prompt's whole recipe and measure its wall time (no extrapolation; --timed-steps/--warmup
    unused)."""
    gaussians: int | None = None
    """Quick mode: time the steps on a scene of this many Gaussians, the count a full run reaches
    (default: the recipe's strategy.cap_max; 0: the recipe's initial scene)."""
    timed_steps: Annotated[int, tyro.conf.arg(aliases=["--steps"])] = 10
    """Quick mode: steps timed per phase of the recipe, after the warm-up; the asset time is extrapolated
    from them (--steps is an older spelling; the recipe's training steps are --recipe.steps)."""
    warmup: int = 3
    """Untimed steps before each timed phase (compilation, caches)."""
    weights: Literal["random", "pretrained"] = "random"
    """'random': full-size architectures with random weights (no downloads); 'pretrained': the preset's models."""
    reference: bool = False
    """Also time the straightforward eager path (no fast paths or compilation, reward every step)."""
    viewer: bool = False
    """Also time each phase with the live viewer serving (on a free local port, default refresh)."""
    viewer_every: int = 50
    """Viewer refresh period in steps, as `generate --viewer-every`."""
    placement: Literal["single", "split"] = "single"
    """'split': the VLM reward on cuda:1, prior + scene + renderer on cuda:0 (torchrun: GPUs 2*LOCAL_RANK, +1).
    Under torchrun the prompts are shared out over the processes and rank 0 writes the one report."""
    recipe: RunConfig = field(default_factory=RunConfig)
    """The timed recipe (the preset's), e.g. --recipe.vlm.every 2 or --recipe.steps 20000."""


def random_weights(cfg: RunConfig) -> RunConfig:
    """The same recipe with full-size random-weight models of the same architectures."""
    vlm_model = "random-3b" if "3b" in cfg.vlm.model.lower() else "random-7b"
    sds_model = cfg.sds.model if cfg.sds.model == "demo" else "random"
    vlm_model = cfg.vlm.model if cfg.vlm.model == "demo" else vlm_model
    return replace(cfg, sds=replace(cfg.sds, model=sds_model), vlm=replace(cfg.vlm, model=vlm_model))


def reference_config(cfg: RunConfig) -> RunConfig:
    """The straightforward path: processor-style preprocessing, full LM head, no compile, no padding, no
    CUDA graphs or streams, reward every step."""
    off = dict(fast=False, compile=False, cuda_graph=False, pad_gemm=False, fp8=False, fuse_gemm=False)
    vlm = replace(cfg.vlm, every=1, **off)
    sds = replace(
        cfg.sds, compile=False, compile_vae=False, channels_last=False, cuda_graph=False, vae_attention="sdpa"
    )
    return replace(cfg, vlm=vlm, sds=sds, parallel_terms=False)


def plan_line(cfg: RunConfig, prompts: int, variants: list[str], args: BenchArgs, world_size: int) -> str:
    """What the bench is about to do, before any model loads: prompts, passes and steps per prompt."""
    phases = recipe_phases(cfg)
    if args.full:
        per_prompt = f"the whole recipe, {cfg.steps:,} steps"
    else:
        steps = sum(min(args.warmup + args.timed_steps + 1, p.end - p.start) for p in phases)
        per_prompt = (
            f"{steps} steps ({len(phases)} phase(s) x {args.warmup} warm-up + {args.timed_steps} timed + 1)"
        )
    passes = " + ".join(variants)
    where = f" over {world_size} processes" if world_size > 1 else ""
    return (
        f"bench: {prompts} prompts x {len(variants)} pass(es) ({passes}){where}, each prompt {per_prompt}; "
        "the time left is estimated after the first prompt (which also loads the models)"
    )


def prompt_line(res: dict[str, Any], done: int, total: int, elapsed: float) -> str:
    """One finished prompt, and the time the pass should still take at the pace so far (``elapsed``: the
    pass's seconds without model loading)."""
    line = f"  [{done}/{total}] {res['prompt'][:40]}: {full_step(res)['step_ms']:.1f} ms/step"
    line += f", asset {res['asset_s']:.0f} s" + (" (extrapolated)" if res.get("extrapolated") else "")
    if done < total:
        line += f"; about {clock(elapsed / done * (total - done))} left"
    return line


def run_bench(args: BenchArgs) -> dict[str, Any]:
    """Time the recipe over the prompts and write the report; under torchrun each rank times its share
    (``distributed.shard``: index % world == rank) and rank 0 gathers, writes and returns the report
    (other ranks return {})."""
    from ..run import distributed
    from .generate import Guidance, check_sources

    # 1. Inputs.
    if args.timed_steps <= 0 or args.warmup < 0:
        raise SplatVLMError("--timed-steps must be positive and --warmup >= 0")
    if args.limit is not None and args.limit <= 0:
        raise SplatVLMError(f"--limit must be positive, got {args.limit}")
    if args.gaussians is not None and args.gaussians < 0:
        raise SplatVLMError(f"--gaussians must be >= 0, got {args.gaussians}")
    prompts = read_prompts(args.prompts or SHIPPED_PROMPTS)[: args.limit]
    cfg = random_weights(args.recipe) if args.weights == "random" else args.recipe
    validate_run_config(cfg)
    if args.weights == "pretrained":
        check_sources(cfg, prompts)
    info = distributed.dist_info()
    device, vlm_device = distributed.placement_devices(cfg.device, args.placement, info)
    distributed.use_device(device)
    from ..resources import check_models_fit

    check_models_fit(cfg, device, vlm_device)  # before building full-size models that cannot fit
    new_folder = not Path(args.output).exists()
    out = check_output_dir(args.output)
    if new_folder:
        ignore_in_git(out)
    mine = distributed.shard(range(len(prompts)), info.rank, info.world_size)
    command = "splatvlm bench " + " ".join(shlex.quote(a) for a in sys.argv[2:])
    # Quick mode times its steps at the count a full run reaches: by default, the cap.
    gaussians = 0 if args.full else (cfg.strategy.cap_max if args.gaussians is None else args.gaussians)

    # 2. Our path, then optionally the reference path, each with models loaded once.
    report: dict[str, Any] = {
        "device": device_name(device),
        "date": datetime.date.today().isoformat(),
        "command": command,
        "preset": args.preset,
        "weights": args.weights,
        "torch": torch.__version__,
        "full_run": args.full,
    }
    if args.full:
        report["measured"] = (
            "asset_s = measured wall time of each prompt's whole recipe (prompt encoding to final checkpoint, "
            "exports excluded); model loading excluded (load_s)"
        )
    else:
        report.update(
            timed_steps_per_phase=args.timed_steps,
            warmup_steps=args.warmup,
            timed_at_gaussians=gaussians or cfg.scene.num_points,
            extrapolated=(
                "asset_s = sum over recipe phases of (phase steps x median timed step), steps timed on a scene "
                f"of {gaussians or cfg.scene.num_points:,} Gaussians; model loading excluded"
            ),
        )
    report |= {
        "config": to_dict(cfg),
        "config_viewer_every": args.viewer_every,
    }
    if args.viewer_every <= 0:
        raise SplatVLMError(f"--viewer-every must be positive, got {args.viewer_every}")
    report.update(world_size=info.world_size, placement=args.placement)
    variants = [("ours", cfg, None)]
    if args.viewer:
        variants.append(("viewer", cfg, args.viewer_every))
    if args.reference:
        variants.append(("reference", reference_config(cfg), None))
    probes: dict[str, dict[str, torch.Tensor]] = {}
    if info.is_main:
        say(plan_line(cfg, len(prompts), [name for name, _, _ in variants], args, info.world_size))
    with distributed.process_group(info, device) as group:
        for name, vcfg, viewer_every in variants:
            t_pass = time.perf_counter()
            guidance = Guidance(vcfg, device, vlm_device=None if vlm_device == device else vlm_device)
            results = {}
            with task_progress(f"bench {name}", len(mine), info.is_main) as advance:
                for i in mine:
                    run_dir = out / "runs" / name / f"{i:03d}"
                    run_dir.mkdir(parents=True, exist_ok=True)
                    t0 = time.perf_counter()
                    if args.full:
                        res = run_prompt_full(prompts[i], vcfg, guidance, run_dir, device, viewer_every)
                    else:
                        res = time_prompt(
                            prompts[i],
                            vcfg,
                            guidance,
                            run_dir,
                            device,
                            args.timed_steps,
                            args.warmup,
                            viewer_every,
                            gaussians,
                        )
                    res.update(
                        index=i,
                        rank=info.rank,
                        bench_wall_s=time.perf_counter() - t0,
                        device=report["device"],
                        preset=args.preset,
                    )
                    res.setdefault("load_s", sum(guidance.loaded.values()) if i == mine[0] else 0.0)
                    res["vlm_query_tokens"] = reward_query_tokens(guidance, prompts[i])
                    results[i] = res
                    advance(1)
                    if info.is_main:
                        elapsed = time.perf_counter() - t_pass - sum(guidance.loaded.values())
                        say(prompt_line(res, len(results), len(mine), elapsed))
            if args.reference and name in ("ours", "reference") and info.is_main and mine:
                probes[name] = gradient_probe(prompts[mine[0]], vcfg, guidance, device)
            # Every rank's results, prompts back in index order.
            parts = distributed.gather(
                {
                    "results": results,
                    "load_s": guidance.loaded,
                    "device": distributed.device_label(device, vlm_device),
                },
                group,
            )
            merged = {i: r for part in parts for i, r in part["results"].items()}
            report[name] = {"load_s": guidance.loaded, "prompts": [merged[i] for i in sorted(merged)]}
            if name == "ours":
                # Throughput of the whole pass over all ranks: model loading, warm-up and timed steps.
                report["bench_wall_s"] = time.perf_counter() - t_pass
                report["prompts_per_hour"] = len(prompts) * 3600 / max(report["bench_wall_s"], 1e-9)
                report["devices"] = [part["device"] for part in parts]
                report["load_s_per_rank"] = [part["load_s"] for part in parts]
            del guidance
            if device.type == "cuda":
                torch.cuda.empty_cache()
    if vlm_device != device:
        report["vlm_device_peak_gb"] = torch.cuda.max_memory_allocated(vlm_device) / 2**30
    if not info.is_main:
        return {}

    # 3. Summary fields (the ones benchmarks/results/*.json carry).
    ours = report["ours"]["prompts"]
    report["full_step_ms"] = median_or_zero([full_step(r)["step_ms"] for r in ours])
    report["per_component_ms"] = {
        c: median_or_zero([full_step(r)["per_component_ms"][c] for r in ours]) for c in COMPONENTS
    }
    report["full_step_phase"] = full_step(ours[0])["label"]
    peaks = [r["peak_gb"] for r in ours if r["peak_gb"] is not None]
    report["peak_gb"] = max(peaks) if peaks else None  # None: not measured (CPU)
    report["asset_s"] = median_or_zero([r["asset_s"] for r in ours])
    # The same figure as an hourly rate, so the two never disagree: one process, model loading excluded.
    report["assets_per_hour"] = 3600 / report["asset_s"] if report["asset_s"] > 0 else None
    report["max_gaussians"] = max(r["max_gaussians"] for r in ours)
    tokens = [r["vlm_query_tokens"]["total"] for r in ours if r.get("vlm_query_tokens")]
    # the reward's query length, which its time grows with (None: no reward)
    report["vlm_query_tokens"] = median_or_zero(tokens) if tokens else None
    report["it_per_s"] = 1e3 / report["full_step_ms"] if report["full_step_ms"] else 0.0
    if args.reference:
        ref = report["reference"]["prompts"]
        report["reference_full_step_ms"] = median_or_zero([full_step(r)["step_ms"] for r in ref])
        report["reference_per_component_ms"] = {
            c: median_or_zero([full_step(r)["per_component_ms"][c] for r in ref]) for c in COMPONENTS
        }
        report["reference_asset_s"] = median_or_zero([r["asset_s"] for r in ref])
        report["speedup"] = report["reference_full_step_ms"] / max(report["full_step_ms"], 1e-9)
        for term in probes.get("ours", {}):
            if term in probes.get("reference", {}):
                # The pixel gradient of each term on one fixed render: ours against the eager reference.
                report[f"grad_cosine_{term}"] = cosine(probes["ours"][term], probes["reference"][term])
    else:
        report["reference_full_step_ms"] = None
    if args.viewer:
        # Whole-asset time with the viewer against without: the refresh cost is amortized over `viewer_every`.
        # Mean (not median) step times, so the periodic refreshes count; time enough steps to include them.
        with_viewer = median_or_zero([r["asset_mean_s"] for r in report["viewer"]["prompts"]])
        without = median_or_zero([r["asset_mean_s"] for r in ours])
        report["viewer_asset_s"] = with_viewer
        report["viewer_slowdown"] = with_viewer / max(without, 1e-9) - 1.0

    # 4. Files.
    atomic_write_text(out / "report.json", json.dumps(report, indent=2))
    atomic_write_text(out / "report.md", report_markdown(report))
    save_breakdown_png(report, out / "breakdown.png")
    print(report_markdown(report).split("\n## Per prompt")[0])
    return report
