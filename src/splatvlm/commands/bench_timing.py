"""How `splatvlm bench` times a recipe: its phases, a few timed steps of each (quick mode) or the whole run
(``--full``), and the gradient probe that compares the fast path with the reference one."""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch

from ..config import RunConfig
from ..guidance.terms import TERMS
from ..run.schedules import loss_weights, weight_at
from .bench_report import COMPONENTS


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


def median_or_zero(values: list[float]) -> float:
    return float(statistics.median(values)) if values else 0.0


def train_profiled(
    cfg: RunConfig,
    state: Any,
    terms: dict[str, Any],
    run_dir: Path,
    device: torch.device,
    on_step: Any,
    viewer_every: int | None = None,
    stop_after: int | None = None,
) -> None:
    """Train as ``generate`` does, with the profiler on (per-component CUDA-event times in each step's logs)
    and, when ``viewer_every`` is set, a live viewer serving on a free port."""
    from ..run.trainer import train
    from ..viewer.server import Viewer, ViewerConfig, make_render_fn

    viewer = None
    if viewer_every:
        render_fn = make_render_fn(state.params, state.params["means"].device, cfg.render)
        viewer = Viewer(ViewerConfig(enabled=True, port=0, refresh_every=viewer_every), render_fn, run_dir)
    try:
        train(
            cfg,
            state,
            terms,
            run_dir,
            device,
            viewer=viewer,
            stop_after=stop_after,
            progress=False,
            profile=True,
            on_step=on_step,
        )
    finally:
        if viewer is not None:
            viewer.close()


def phase_record(phase: Phase, rows: list[dict[str, Any]], peak_gb: float | None) -> dict[str, Any]:
    """A phase's timing from its step records: median and mean step, per-component medians, count."""
    step_ms = median_or_zero([r["step_ms"] for r in rows])
    return {
        "label": phase.label,
        "steps": [phase.start, phase.end],
        "timed_steps": len(rows),
        "step_ms": step_ms,
        "mean_step_ms": statistics.fmean([r["step_ms"] for r in rows]) if rows else 0.0,
        "it_per_s": 1e3 / step_ms if step_ms else 0.0,
        "per_component_ms": {c: median_or_zero([r.get(f"ms_{c}", 0.0) for r in rows]) for c in COMPONENTS},
        "peak_gb": peak_gb,
        "num_gaussians": max((int(r["num_gaussians"]) for r in rows), default=0),
    }


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
        train_profiled(
            phase_cfg,
            state,
            terms,
            run_dir,
            device,
            lambda step, logs, records=records: records.append(dict(logs)),
            viewer_every,
            stop_after=n,
        )
        phase_peak = torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else None
        peak = None if phase_peak is None else max(peak or 0.0, phase_peak)
        record = phase_record(phase, timed_records(records, warmup, steps), phase_peak)
        asset_ms += record["step_ms"] * (phase.end - phase.start)
        asset_mean_ms += record["mean_step_ms"] * (phase.end - phase.start)
        result["phases"].append(record)
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
HEARTBEAT_S = 30.0  # a whole run says where it is this often (a GPU asset takes minutes)


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
                "median_step_ms": median_or_zero(ms),
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
    heartbeat_s: float | None = None,
) -> dict[str, Any]:
    """Run the whole recipe for one prompt as ``generate`` trains it and report what was measured (with a line
    on stdout every ``heartbeat_s`` seconds, default HEARTBEAT_S: step, step time, count).

    ``asset_s`` is the wall time from the prompt's encoding to the last step and the final checkpoint
    (exports excluded); loading models, which the first prompt triggers, is subtracted and given as
    ``load_s``. CUDA-graph captures and compilation on the first steps count: a real run pays them.
    Per-component times come from the trainer's profiler (CUDA events; the trainer reads the loss on
    the host every step, so the extra sync costs little).
    """
    from ..gaussians.scene import init_ball
    from ..run.train_state import new_state

    phases = recipe_phases(cfg)
    records: list[dict[str, Any]] = []
    phase_peaks: list[float] = []
    cuda = device.type == "cuda"

    every_s = HEARTBEAT_S if heartbeat_s is None else heartbeat_s
    last_said = time.perf_counter()

    def on_step(step: int, logs: dict[str, Any]) -> None:
        nonlocal last_said
        records.append(dict(logs))
        if time.perf_counter() - last_said >= every_s:
            last_said = time.perf_counter()
            print(
                f"    step {step + 1}/{cfg.steps}: {logs['step_ms']:.1f} ms, {int(logs['num_gaussians']):,} Gaussians",
                flush=True,
            )
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
    train_profiled(replace(cfg, checkpoint_every=0), state, terms, run_dir, device, on_step, viewer_every)
    if cuda:
        torch.cuda.synchronize(device)
    asset_s = time.perf_counter() - t0 - load_s

    result: dict[str, Any] = {"prompt": prompt, "phases": [], "full_run": True, "extrapolated": False}
    for k, phase in enumerate(phases):
        rows = [r for r in records if phase.start <= r["step"] < phase.end]
        peak_gb = (phase_peaks[k] if k < len(phase_peaks) else 0.0) if cuda else None
        result["phases"].append(
            {**phase_record(phase, rows, peak_gb), "phase_s": sum(r["step_ms"] for r in rows) / 1e3}
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
