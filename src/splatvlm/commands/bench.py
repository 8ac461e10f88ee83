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
import statistics
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
from ..guidance.terms import TERMS
from ..hub import device_name
from ..prompts import read_prompts
from ..run.progress import clock, say, task_progress
from ..run.schedules import loss_weights, weight_at
from .bench_report import COMPONENTS, report_markdown, save_breakdown_png

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


@dataclass
class Phase:
    start: int
    end: int
    num_views: int
    resolution: int
    terms: tuple[str, ...]  # the loss terms on in this phase (guidance.terms names)

    @property
    def label(self) -> str:
        shown = "".join(f" +{s.bench_label}" for s in TERMS if s.bench_label and s.name in self.terms)
        return f"{self.num_views}x{self.resolution}px" + shown


def recipe_phases(cfg: RunConfig) -> list[Phase]:
    """Split [0, steps) where the per-step work changes (resolution switch, a term switching off)."""
    cuts = {0, cfg.steps, cfg.camera.low_res_until}
    schedules = loss_weights(cfg.weights)  # vlm_mode 'ratio': the ratio's schedule says when the reward runs
    weights = {w: schedules[w] for spec in TERMS for w in spec.weights}
    cuts |= {w.stop_after for w in weights.values() if w.stop_after is not None}
    cuts = sorted(c for c in cuts if 0 <= c <= cfg.steps)
    phases = []
    for a, b in zip(cuts[:-1], cuts[1:], strict=False):
        if b <= a:
            continue
        low = a < cfg.camera.low_res_until
        on = {
            n
            for n, w in weights.items()
            if weight_at(w, a) != 0.0 or (w.end not in (None, 0.0) and weight_at(w, b - 1) != 0.0)
        }
        phases.append(
            Phase(
                a,
                b,
                cfg.camera.low_res_views if low else cfg.camera.num_views,
                cfg.camera.low_res if low else cfg.camera.resolution,
                tuple(s.name for s in TERMS if on & set(s.weights)),
            )
        )
    return phases


def _median(values: list[float]) -> float:
    return float(statistics.median(values)) if values else 0.0


def _viewer_for(state: Any, cfg: RunConfig, run_dir: Path, every: int) -> Any:
    from ..viewer.server import Viewer, ViewerConfig, make_render_fn

    render_fn = make_render_fn(state.params, state.params["means"].device, cfg.render)
    return Viewer(ViewerConfig(enabled=True, port=0, refresh_every=every), render_fn, run_dir)


def timed_records(records: list[dict], warmup: int, steps: int) -> list[dict]:
    """The step records a phase's timing uses: after the warm-up, at most ``steps``, never the last one (its
    interval lasts until the GPU has drained what the CPU queued ahead), unless a short phase leaves nothing else."""
    start = min(warmup, max(len(records) - 1, 0))
    return records[start : max(start + 1, min(start + steps, len(records) - 1))]


def time_prompt(
    prompt: str,
    cfg: RunConfig,
    guidance: Any,
    run_dir: Path,
    device: torch.device,
    steps: int,
    warmup: int,
    viewer_every: int | None = None,
    gaussians: int = 0,
) -> dict[str, Any]:
    """Time every phase of the recipe for one prompt (with a live viewer when ``viewer_every`` is set),
    on a scene of ``gaussians`` Gaussians (0: the recipe's initial scene)."""
    from ..gaussians.scene import init_ball
    from ..run.train_state import new_state
    from ..run.trainer import train

    terms = guidance.terms(prompt)
    result: dict[str, Any] = {"prompt": prompt, "phases": [], "full_run": False, "extrapolated": True}
    asset_ms = asset_mean_ms = 0.0
    peak: float | None = None  # GB, CUDA only
    # The init ball at the target count: the spacing (and so each Gaussian's size) follows the count.
    scene_cfg = replace(cfg.scene, num_points=gaussians) if gaussians > 0 else cfg.scene
    for phase in recipe_phases(cfg):
        torch.manual_seed(cfg.seed)
        state = new_state(init_ball(scene_cfg, torch.Generator().manual_seed(cfg.seed)), cfg, device)
        state.step = phase.start
        records: list[dict[str, float]] = []
        # one step more than timed: the last step's interval runs until the GPU has drained the queue that the
        # CPU ran ahead by (about one more step), so it is run but not timed
        n = min(warmup + steps + 1, phase.end - phase.start)
        if device.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        phase_cfg = replace(cfg, steps=phase.end, checkpoint_every=0, log_every=max(n, 1))
        viewer = _viewer_for(state, cfg, run_dir, viewer_every) if viewer_every else None
        try:
            train(
                phase_cfg,
                state,
                terms,
                run_dir,
                device,
                viewer=viewer,
                stop_after=n,
                progress=False,
                profile=True,
                on_step=lambda step, logs, records=records: records.append(dict(logs)),
            )
        finally:
            if viewer is not None:
                viewer.close()
        timed = timed_records(records, warmup, steps)
        step_ms = _median([r["step_ms"] for r in timed])
        mean_ms = statistics.fmean([r["step_ms"] for r in timed]) if timed else 0.0
        comps = {c: _median([r.get(f"ms_{c}", 0.0) for r in timed]) for c in COMPONENTS}
        phase_peak = torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else None
        peak = None if phase_peak is None else max(peak or 0.0, phase_peak)
        asset_ms += step_ms * (phase.end - phase.start)
        asset_mean_ms += mean_ms * (phase.end - phase.start)
        result["phases"].append(
            {
                "label": phase.label,
                "steps": [phase.start, phase.end],
                "timed_steps": len(timed),
                "step_ms": step_ms,
                "mean_step_ms": mean_ms,
                "it_per_s": 1e3 / step_ms if step_ms else 0.0,
                "per_component_ms": comps,
                "peak_gb": phase_peak,
                "num_gaussians": int(timed[-1]["num_gaussians"]) if timed else 0,
            }
        )
    result["asset_s"] = asset_ms / 1e3
    result["asset_mean_s"] = asset_mean_ms / 1e3  # from mean step times: includes periodic work (refreshes)
    result["peak_gb"] = peak
    result["timed_at_gaussians"] = scene_cfg.num_points
    result["max_gaussians"] = max((p["num_gaussians"] for p in result["phases"]), default=0)
    return result


DENSIFY_LOG_KEYS = (
    "densify_count",
    "densify_grad_p50",
    "densify_grad_p90",
    "densify_grad_p99",
    "densify_opacity_p50",
    "densify_opacity_p90",
    "densify_opacity_p99",
    "densify_qualified",
    "densify_grown",
    "densify_duplicated",
    "densify_split",
    "densify_pruned",
    "densify_relocated",
)


WINDOW_STEPS = 250


def time_windows(records: list[dict[str, Any]], size: int) -> list[dict[str, Any]]:
    """Where a whole run's time went: per ``size``-step window the seconds spent, the mean and median step
    and the count at its end (the first window holds the compiles and graph captures)."""
    out = []
    for start in range(0, len(records), size):
        rows = records[start : start + size]
        ms = [r["step_ms"] for r in rows]
        out.append(
            {
                "steps": [int(rows[0]["step"]), int(rows[-1]["step"]) + 1],
                "seconds": sum(ms) / 1e3,
                "mean_step_ms": statistics.fmean(ms),
                "median_step_ms": _median(ms),
                "num_gaussians": int(rows[-1]["num_gaussians"]),
            }
        )
    return out


def run_prompt_full(
    prompt: str,
    cfg: RunConfig,
    guidance: Any,
    run_dir: Path,
    device: torch.device,
    viewer_every: int | None = None,
) -> dict[str, Any]:
    """Run the whole recipe for one prompt as ``generate`` trains it and report what was measured.

    ``asset_s`` is the wall time from the prompt's encoding to the last step and the final checkpoint
    (exports excluded); loading models, which the first prompt triggers, is subtracted and given as
    ``load_s``. CUDA-graph captures and compilation on the first steps count: a real run pays them.
    Per-component times come from the trainer's profiler (CUDA events; the trainer reads the loss on
    the host every step, so the extra sync costs little).
    """
    from ..gaussians.scene import init_ball
    from ..run.train_state import new_state
    from ..run.trainer import train

    phases = recipe_phases(cfg)
    records: list[dict[str, Any]] = []
    phase_peaks: list[float] = []
    cuda = device.type == "cuda"

    def on_step(step: int, logs: dict[str, Any]) -> None:
        records.append(dict(logs))
        if cuda and any(step == p.end - 1 for p in phases):
            phase_peaks.append(torch.cuda.max_memory_allocated(device) / 2**30)
            torch.cuda.reset_peak_memory_stats(device)

    loaded_before = sum(guidance.loaded.values())
    if cuda:
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
    t0 = time.perf_counter()
    terms = guidance.terms(prompt)
    load_s = sum(guidance.loaded.values()) - loaded_before
    torch.manual_seed(cfg.seed)
    state = new_state(init_ball(cfg.scene, torch.Generator().manual_seed(cfg.seed)), cfg, device)
    run_cfg = replace(cfg, checkpoint_every=0)
    viewer = _viewer_for(state, cfg, run_dir, viewer_every) if viewer_every else None
    try:
        train(
            run_cfg,
            state,
            terms,
            run_dir,
            device,
            viewer=viewer,
            progress=False,
            profile=True,
            on_step=on_step,
        )
    finally:
        if viewer is not None:
            viewer.close()
    if cuda:
        torch.cuda.synchronize(device)
    asset_s = time.perf_counter() - t0 - load_s

    result: dict[str, Any] = {"prompt": prompt, "phases": [], "full_run": True, "extrapolated": False}
    for k, phase in enumerate(phases):
        rows = [r for r in records if phase.start <= r["step"] < phase.end]
        step_ms = _median([r["step_ms"] for r in rows])
        result["phases"].append(
            {
                "label": phase.label,
                "steps": [phase.start, phase.end],
                "timed_steps": len(rows),
                "step_ms": step_ms,
                "mean_step_ms": statistics.fmean([r["step_ms"] for r in rows]) if rows else 0.0,
                "it_per_s": 1e3 / step_ms if step_ms else 0.0,
                "per_component_ms": {c: _median([r.get(f"ms_{c}", 0.0) for r in rows]) for c in COMPONENTS},
                "peak_gb": (phase_peaks[k] if k < len(phase_peaks) else 0.0) if cuda else None,
                "num_gaussians": max((int(r["num_gaussians"]) for r in rows), default=0),
                "phase_s": sum(r["step_ms"] for r in rows) / 1e3,
            }
        )
    # The count at the first step, at every change and at the last step: [[step, count], ...].
    counts: list[list[int]] = []
    for r in records:
        n = int(r["num_gaussians"])
        if not counts or n != counts[-1][1] or r is records[-1]:
            counts.append([int(r["step"]), n])
    result.update(
        asset_s=asset_s,
        asset_mean_s=asset_s,
        time_windows=time_windows(records, WINDOW_STEPS),
        load_s=load_s,
        peak_gb=max(phase_peaks, default=0.0) if cuda else None,
        max_gaussians=max((int(r["num_gaussians"]) for r in records), default=0),
        final_gaussians=int(records[-1]["num_gaussians"]) if records else 0,
        steps=len(records),
        bad_steps=state.bad_steps_total,
        gaussians_over_time=counts,
        refinements=[
            {"step": int(r["step"]), **{k: r[k] for k in DENSIFY_LOG_KEYS if k in r}}
            for r in records
            if "densify_grown" in r
        ],
    )
    return result


def gradient_probe(
    prompt: str, cfg: RunConfig, guidance: Any, device: torch.device
) -> dict[str, torch.Tensor]:
    """Each term's gradient to the pixels of one fixed render, at the full step's resolution (on CPU).

    The render, cameras, step and RNG are seeded, so the same call on the reference path is comparable:
    the prior's noise and timestep are drawn in the same order on both paths.
    """
    from ..gaussians.cameras import sample_orbit

    terms = guidance.terms(prompt)
    phase = max(recipe_phases(cfg), key=lambda p: (len(p.terms), p.resolution))
    gen = torch.Generator().manual_seed(cfg.seed)
    cams = sample_orbit(cfg.camera, phase.num_views, phase.resolution, gen).to(device)
    rgb = torch.rand(phase.num_views, phase.resolution, phase.resolution, 3, generator=gen).to(device)
    grads = {}
    for name, term in terms.items():
        if term.inputs != "images":  # scene terms (regularizers) have no reference path to compare with
            continue
        x = rgb.clone().requires_grad_(True)
        views = x if term.num_views is None else x[: term.num_views]
        torch.manual_seed(cfg.seed)
        out = term.fn(views, cams if term.num_views is None else cams[: term.num_views], phase.start)
        loss = sum(v for k, v in out.items() if k.startswith("loss_"))
        (g,) = torch.autograd.grad(loss, x)
        grads[name] = g.detach().float().cpu()
    return grads


def cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(torch.nn.functional.cosine_similarity(a.flatten(), b.flatten(), dim=0))


def full_step(result: dict[str, Any]) -> dict[str, Any]:
    """The phase whose step runs the most terms at the highest resolution (the reward where the recipe has it)."""
    phases = result["phases"]
    return max(
        phases, key=lambda p: (p["label"].count(" +"), int(p["label"].split(" ")[0].split("x")[1][:-2]))
    )


def reward_query_tokens(guidance: Any, prompt: str) -> dict[str, int] | None:
    """The reward's query length for ``prompt``: all its tokens, and those of text (the rest are image tokens);
    None without a reward. The reward's time grows with it, so a report shows what the step ran on."""
    reward = guidance.models.get("reward")
    if reward is None:
        return None
    g = reward.cfg.size // reward.src.patch_size
    q = reward.query(prompt, reward.cfg.num_views, (g, g))
    return {"total": int(q.input_ids.shape[1]), "text": int(q.n_text_tokens)}


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
    report["full_step_ms"] = _median([full_step(r)["step_ms"] for r in ours])
    report["per_component_ms"] = {
        c: _median([full_step(r)["per_component_ms"][c] for r in ours]) for c in COMPONENTS
    }
    report["full_step_phase"] = full_step(ours[0])["label"]
    peaks = [r["peak_gb"] for r in ours if r["peak_gb"] is not None]
    report["peak_gb"] = max(peaks) if peaks else None  # None: not measured (CPU)
    report["asset_s"] = _median([r["asset_s"] for r in ours])
    # The same figure as an hourly rate, so the two never disagree: one process, model loading excluded.
    report["assets_per_hour"] = 3600 / report["asset_s"] if report["asset_s"] > 0 else None
    report["max_gaussians"] = max(r["max_gaussians"] for r in ours)
    tokens = [r["vlm_query_tokens"]["total"] for r in ours if r.get("vlm_query_tokens")]
    # the reward's query length, which its time grows with (None: no reward)
    report["vlm_query_tokens"] = _median(tokens) if tokens else None
    report["it_per_s"] = 1e3 / report["full_step_ms"] if report["full_step_ms"] else 0.0
    if args.reference:
        ref = report["reference"]["prompts"]
        report["reference_full_step_ms"] = _median([full_step(r)["step_ms"] for r in ref])
        report["reference_per_component_ms"] = {
            c: _median([full_step(r)["per_component_ms"][c] for r in ref]) for c in COMPONENTS
        }
        report["reference_asset_s"] = _median([r["asset_s"] for r in ref])
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
        with_viewer = _median([r["asset_mean_s"] for r in report["viewer"]["prompts"]])
        without = _median([r["asset_mean_s"] for r in ours])
        report["viewer_asset_s"] = with_viewer
        report["viewer_slowdown"] = with_viewer / max(without, 1e-9) - 1.0

    # 4. Files.
    atomic_write_text(out / "report.json", json.dumps(report, indent=2))
    atomic_write_text(out / "report.md", report_markdown(report))
    save_breakdown_png(report, out / "breakdown.png")
    print(report_markdown(report).split("\n## Per prompt")[0])
    return report
