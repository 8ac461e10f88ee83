"""The training loop: sample views, render, loss terms, weighted sum, backward, densify, log, checkpoint.

Loss terms are callables ``term(rgb [C, H, W, 3], cams, step) -> {"loss_<name>": Tensor, <diagnostics>}``
(scene terms: ``term(params, render, cams, step)``); only this module multiplies them by ``RunConfig.weights``.
With ``render.shading`` 'mixed' every image term sees the same shaded images.

A step makes the CPU wait for the GPU only where gsplat must (its intersection counts, inside the render): a
step's losses, diagnostics and finite flag are copied to the host as the step ends and read during the next
step's render, when they are long done; logs, progress, ``on_step`` and the bad-step count are one step late.
"""

from __future__ import annotations

import contextlib
import json
import signal
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from torch import Tensor

from ..config import RunConfig, to_yaml
from ..errors import SplatVLMError, StopRun
from ..files import atomic_write_text
from ..gaussians import densify
from ..gaussians.cameras import Cameras, sample_orbit, to_device, views_at_step
from ..gaussians.render import RenderOutput, render
from ..gaussians.scene import means_lr, num_gaussians
from ..gaussians.shading import MODES, Lighting, sample_lighting, shade
from .backward import backward_through_pixels, through_pixels
from .progress import StepTimer, progress_columns, progress_info, progress_line
from .schedules import Weight, loss_weights, weight_at
from .train_state import TrainState, save_checkpoint

LossTerm = Callable[[Tensor, Cameras, int], dict[str, Any]]
ViewSampler = Callable[[int, torch.Generator], Cameras]


@dataclass
class Term:
    """A loss term and how often it runs (its weight is multiplied by `every` to keep the average)."""

    fn: LossTerm
    weights: tuple[str, ...]  # names of the weights of the `loss_*` entries it returns
    every: int = 1
    num_views: int | None = None  # only the first `num_views` rendered views go to this term
    launch_first: bool = False  # on several CUDA streams, queue it before the others (the step's long pole)
    # and, with RunConfig.long_pole_priority, run it on a high-priority stream
    inputs: Literal["images", "scene"] = "images"  # scene: fn(params, render output, cams, step)
    depth: bool = False  # it reads the rendered depth
    # Schedules for weights that RunConfig.weights does not hold (a term defined outside the package).
    own_weights: dict[str, Weight] = field(default_factory=dict)


# ---------------------------------------------------------------------------------------------
# Signals


class _SignalFlag:
    """Turns SIGINT/SIGTERM into a flag checked between steps, so a step is never cut in half."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self._old: dict[int, Any] = {}

    def __enter__(self) -> _SignalFlag:
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(ValueError):  # not the main thread
                self._old[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        if self.signum is not None:  # a second Ctrl-C: stop now
            raise KeyboardInterrupt
        self.signum = signum

    def __exit__(self, *exc: Any) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)


@contextlib.contextmanager
def deterministic_on_cpu(device: torch.device) -> Iterator[None]:
    """Deterministic algorithms while training on the CPU, so that a seed (and a resume) repeats bit for bit.

    Without it, the CPU backward of advanced indexing (``x[ids]`` in the pure-torch rasterizer) adds
    into its output with atomic float adds on several threads once it is large enough, and the order
    of those adds changes from run to run. On CUDA nothing is switched: gsplat's kernels use atomics
    and have no deterministic mode (see the README).
    """
    if device.type != "cpu":
        yield
        return
    was, warn_only = (
        torch.are_deterministic_algorithms_enabled(),
        torch.is_deterministic_algorithms_warn_only_enabled(),
    )
    torch.use_deterministic_algorithms(True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(was, warn_only=warn_only)


# ---------------------------------------------------------------------------------------------
# The loop


def make_backgrounds(
    mode: str,
    n: int,
    generator: torch.Generator,
    device: torch.device,
    learned: Tensor | None = None,  # [3] logits, for 'learned'
) -> Tensor:  # [C, 3]
    if mode == "white":
        return torch.ones(n, 3, device=device)
    if mode == "black":
        return torch.zeros(n, 3, device=device)
    # One solid color shared by all views of the step: half the time a random one, else white ('random') or
    # the learned one ('learned'). Both modes draw the same numbers, so the cameras' draws stay in step.
    if torch.rand(1, generator=generator).item() < 0.5:
        return to_device(torch.rand(3, generator=generator), device).expand(n, 3).contiguous()
    if mode == "learned":
        if learned is None:
            raise SplatVLMError("background 'learned' needs the run state's learned color")
        return torch.sigmoid(learned).expand(n, 3)
    return torch.ones(n, 3, device=device)


def default_view_sampler(cfg: RunConfig) -> ViewSampler:
    def sample(step: int, generator: torch.Generator) -> Cameras:
        n, res = views_at_step(cfg.camera, step)
        return sample_orbit(cfg.camera, n, res, generator)

    return sample


def step_lighting(cfg: RunConfig, cams: Cameras, step: int, generator: torch.Generator) -> Lighting:
    """The step's shading: albedo (no draw from the generator) unless ``render.shading`` mixes from this step."""
    if cfg.render.shading == "albedo" or step < cfg.render.shading_after * cfg.steps:
        return Lighting("albedo")
    if cfg.render.shading == "mixed":
        return sample_lighting(cams, cfg.camera.views_per_group, generator)
    raise SplatVLMError(f"unknown render.shading {cfg.render.shading!r}")


def weighted_sum(
    outputs: dict[str, dict[str, Any]], weights: dict[str, Weight], every: dict[str, int], step: int
) -> tuple[Tensor | None, dict[str, float]]:
    """Sum of ``weight * every * loss`` over all ``loss_<name>`` entries; the logged values are unweighted, and
    tensors stay tensors (reading them would make the CPU wait for the GPU: see ``start_readback``)."""
    total: Tensor | None = None
    logs: dict[str, float] = {}
    for term_name, out in outputs.items():
        for key, value in out.items():
            if key.startswith("loss_"):
                name = key[len("loss_") :]
                if name not in weights:
                    raise SplatVLMError(f"term '{term_name}' returned {key} but weights has no '{name}'")
                w = weight_at(weights[name], step) * every[term_name]
                logs[key] = value.detach()
                logs[f"w_{name}"] = w
                if w != 0.0:
                    total = value * w if total is None else total + value * w
            else:
                logs[key] = value.detach() if isinstance(value, Tensor) else float(value)
    return total, logs


def term_streams(
    terms: dict[str, Term], device: torch.device, priority: bool = False
) -> dict[str, torch.cuda.Stream]:
    """One CUDA stream per loss term when there are several (none on CPU); with ``priority`` the
    ``launch_first`` terms' streams run at a higher priority than the others.

    Why: the prior's and the reward's kernels slow each other when they share the GPU (a profile shows the
    two streams' kernels summing to more than the step's wall time), and the step waits for the reward, the
    longer one. At a higher priority the block scheduler gives the reward's kernels the SMs first and the
    prior's fill what they leave, which shortens the step. A CUDA graph
    keeps the priority of the stream it was captured on (PyTorch instantiates graphs with per-node priorities),
    so ``graphs.GraphedGrad`` captures on a stream of the current stream's priority."""
    if device.type != "cuda" or len(terms) < 2:
        return {}
    return {  # lower is higher; 0 is the default streams' (the render and the backward run there)
        name: torch.cuda.Stream(device, priority=-1 if priority and t.launch_first else 0)
        for name, t in terms.items()
    }


@contextlib.contextmanager
def on_stream(stream: torch.cuda.Stream | None) -> Iterator[None]:
    """Run the block on ``stream`` after the work queued so far on the current stream (the renders)."""
    if stream is None:
        yield
        return
    stream.wait_stream(torch.cuda.current_stream(stream.device))
    with torch.cuda.stream(stream):
        yield


def launch_order(terms: dict[str, Term], streams: dict[str, torch.cuda.Stream]) -> list[str]:
    """The order the step queues its terms in: on several streams the ``launch_first`` ones first (queueing
    a captured graph costs the CPU milliseconds, and the longest term should not wait for it), else as given."""
    if not streams:
        return list(terms)
    return [n for n in terms if terms[n].launch_first] + [n for n in terms if not terms[n].launch_first]


def join_streams(streams: dict[str, torch.cuda.Stream], device: torch.device) -> None:
    """The current stream waits for every term's stream (the weighted sum and backward follow on it)."""
    if streams:
        current = torch.cuda.current_stream(device)
        for s in streams.values():
            current.wait_stream(s)


def finite_flag(
    loss: Tensor | None, params: torch.nn.ParameterDict, extra: tuple[Tensor | None, ...] = ()
) -> Tensor:
    """A device bool [], True when the loss and every gradient (``params``' and ``extra``'s) are finite (read
    without a host sync)."""
    device = next(iter(params.values())).device
    tensors = [*params.values(), *(p for p in extra if p is not None)]
    flags = [torch.isfinite(p.grad).all() for p in tensors if p.grad is not None]
    if loss is not None:
        flags.append(torch.isfinite(loss.detach()))
    return torch.stack(flags).all() if flags else torch.ones((), dtype=torch.bool, device=device)


def optimizer_step(optimizers: dict[str, torch.optim.Optimizer], ok: Tensor) -> None:
    """Each optimizer's step, unless ``ok`` is False. Fused Adam (CUDA) skips on the device through its
    ``found_inf`` (as AMP's grad scaler uses it), so the CPU does not wait for the GPU; the others read ``ok``."""
    found_inf = (~ok).float()
    run: bool | None = None  # `ok` on the host, read once and only for an unfused optimizer
    for opt in optimizers.values():
        if all(group.get("fused") for group in opt.param_groups):
            opt.found_inf = found_inf
            opt.step()
            continue
        if run is None:
            run = bool(ok)
        if run:
            opt.step()


def densify_reads_ok(cfg: RunConfig, step: int) -> bool:
    """Whether the densification step must know on the host if this step was finite: refinements (and MCMC's
    noise, every step) change the scene; between refinements the default strategy only accumulates statistics."""
    return cfg.strategy.kind == "mcmc" or densify.is_refine_step(cfg.strategy, step)


def start_readback(values: dict[str, Any]) -> tuple[dict[str, Any], list[str], Tensor | None, Any]:
    """Queue one copy of the tensor values to the host (pinned, non-blocking on CUDA); ``finish_readback``
    returns them as numbers once the step is done, so the CPU can go on queueing the next step meanwhile."""
    keys = [k for k, v in values.items() if isinstance(v, Tensor)]
    if not keys:
        return values, keys, None, None
    # one device for the copy: a term on another GPU (--placement split) returns its diagnostics there
    device = next((values[k].device for k in keys if values[k].is_cuda), torch.device("cpu"))
    packed = torch.stack([values[k].detach().float().reshape(()).to(device) for k in keys])
    if not packed.is_cuda:
        return values, keys, packed, None
    host = packed.to("cpu", non_blocking=True)
    done = torch.cuda.Event()
    done.record()
    return values, keys, host, done


def finish_readback(pending: tuple[dict[str, Any], list[str], Tensor | None, Any]) -> dict[str, Any]:
    values, keys, host, done = pending
    if done is not None:
        done.synchronize()
    out = dict(values)
    if host is not None:
        out.update(zip(keys, host.tolist(), strict=True))
    return out


def train(
    cfg: RunConfig,
    state: TrainState,
    terms: dict[str, Term],
    run_dir: Path,
    device: torch.device,
    sample_views: ViewSampler | None = None,
    viewer: Any = None,
    stop_after: int | None = None,
    progress: bool = True,
    profile: bool = False,
    on_step: Callable[[int, dict[str, float]], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> TrainState:
    """Run from ``state.step`` to ``cfg.steps`` (or ``stop_after`` more steps), checkpointing into ``run_dir``.

    ``should_stop``: asked before each step; True ends the run there as ``stop_after`` would (a checkpoint, and
    the caller resumes later), so a controller on another thread can stop a run without a signal.

    Raises StopRun after saving a checkpoint on SIGINT/SIGTERM or too many bad steps.
    """
    from rich.progress import Progress

    sample_views = sample_views or default_view_sampler(cfg)
    weights = loss_weights(cfg.weights)  # by loss name; with vlm_mode 'ratio' the reward's is the ratio
    weights.update({name: w for t in terms.values() for name, w in t.own_weights.items()})
    every = {name: t.every for name, t in terms.items()}
    timer = StepTimer(profile, device)
    ckpt_path = run_dir / "checkpoint.pt"
    log_file = open(run_dir / "metrics.jsonl", "a", encoding="utf-8")  # noqa: SIM115 - closed in finally
    tb = _tensorboard(run_dir) if cfg.tensorboard else None
    end_step = cfg.steps if stop_after is None else min(cfg.steps, state.step + stop_after)
    lock = viewer.lock if viewer is not None else contextlib.nullcontext()
    # On a terminal a rich bar, with the times before the (truncatable) loss text so that they stay
    # readable at 80 columns; off a terminal (file, pipe, nohup) a plain line every `log_every` steps.
    tty = progress and sys.stdout.isatty()
    columns = progress_columns()
    t_last, n_last = time.perf_counter(), state.step
    t_train0, elapsed0 = t_last, state.elapsed_s
    t_begin, step_begin = t_last, state.step
    params = state.params
    streams = term_streams(terms, device, cfg.long_pole_priority) if cfg.parallel_terms else {}
    bar = Progress(*columns, disable=not tty, transient=False)
    pending: tuple | None = None  # the launched step whose numbers are not read yet
    consecutive_bad = 0

    def finish_pending(t_next: float | None = None) -> None:
        """Read the pending step's numbers back (its GPU work is done), then log, show and count it;
        ``t_next``: when the step after it started (its step_ms is the time between the two starts)."""
        nonlocal pending, consecutive_bad, t_last, n_last
        if pending is None:
            return
        (readback, marks, t_start, refined), pending = pending, None
        logs = finish_readback(readback)
        step = int(logs["step"])
        finite = bool(logs.pop("ok"))
        logs["bad_step"] = not finite
        if finite:
            consecutive_bad = 0
        else:
            consecutive_bad += 1
            state.bad_steps_total += 1
            logs["note"] = f"non-finite loss or gradient, step skipped ({consecutive_bad} in a row)"
        if viewer is not None:
            with timer("viewer"):
                viewer.update(params, step, logs)
        logs.update({f"ms_{k}": v for k, v in timer.read(marks).items()})
        logs["step_ms"] = ((time.perf_counter() if t_next is None else t_next) - t_start) * 1e3
        if on_step is not None:
            on_step(step, logs)
        if step % cfg.log_every == 0 or step + 1 == end_step or not finite or refined:
            log_file.write(json.dumps(logs) + "\n")
            log_file.flush()
            if tb is not None:
                for k, v in logs.items():
                    if isinstance(v, int | float) and not isinstance(v, bool):
                        tb.add_scalar(k, v, step)
            now = time.perf_counter()
            its = (step + 1 - n_last) / max(now - t_last, 1e-9)
            t_last, n_last = now, step + 1
            bar.update(task, completed=step + 1, info=progress_info(logs, its))
            if progress and not tty:
                line = progress_line(
                    step + 1, cfg.steps, end_step, logs, its, now - t_begin, step + 1 - step_begin
                )
                print(line, flush=True)
        if consecutive_bad >= cfg.max_bad_steps:
            save_checkpoint(ckpt_path, state, cfg)
            raise StopRun(
                f"{consecutive_bad} steps in a row had a NaN/inf loss or gradient; checkpoint saved in {ckpt_path}",
                3,
                kind="bad_steps",
            )

    with _SignalFlag() as flag, deterministic_on_cpu(device), bar:
        task = bar.add_task("train", total=cfg.steps, completed=state.step, info="")
        try:
            while state.step < end_step:
                step = state.step
                t0 = time.perf_counter()
                # 1. Viewer pause and learning-rate schedule.
                if viewer is not None:
                    if viewer.paused:  # report the finished step before waiting, so a paused view is current
                        finish_pending()
                    viewer.wait_if_paused(lambda: flag.signum is not None)
                    if flag.signum is not None:  # a signal while paused: stop before doing another step
                        finish_pending()
                        _stop_on_signal(flag.signum, ckpt_path, state, cfg)
                if should_stop is not None and should_stop():
                    break
                for group in state.optimizers["means"].param_groups:
                    group["lr"] = means_lr(cfg.scene, step, cfg.steps)

                # 2. Sample cameras and backgrounds (on CPU; copied without waiting for the GPU).
                cams_host = sample_views(step, state.generator)
                cams = cams_host.to(device)
                backgrounds = make_backgrounds(
                    cfg.background, len(cams), state.generator, device, state.background
                )
                lighting = step_lighting(cfg, cams_host, step, state.generator)
                depth = lighting.mode != "albedo" or any(t.depth for t in terms.values())

                # 3. Render, and shade (the same images go to every term). gsplat reads its intersection counts
                # back to the host here, so the previous step has finished on the GPU by now: its values are
                # read (3b) without stalling anything.
                with timer("render"):
                    out: RenderOutput = render(params, cams, cfg.render, backgrounds, depth=depth)
                    rgb_all = shade(out.rgb, out.alpha, out.depth, backgrounds, cams, lighting)
                    # gsplat's DefaultStrategy asks autograd to keep the 2D means' gradient
                    state.strategy.step_pre_backward(
                        params, state.optimizers, state.strategy_state, step, out.info
                    )
                # 3b. The previous step's logs, bad-step count and progress (may stop the run).
                finish_pending(t0)

                # 4. Loss terms that are due and weighted this step (each on its own stream on CUDA).
                outputs: dict[str, dict[str, Any]] = {}
                for name in launch_order(terms, streams):
                    term = terms[name]
                    if step % term.every:
                        continue
                    if all(weight_at(weights[w], step) == 0.0 for w in term.weights):
                        continue
                    rgb = rgb_all if term.num_views is None else rgb_all[: term.num_views]
                    views = cams if term.num_views is None else cams[: term.num_views]
                    with on_stream(streams.get(name)), timer(name):
                        if term.inputs == "scene":
                            outputs[name] = term.fn(params, out, cams, step)
                        else:
                            outputs[name] = term.fn(rgb, views, step)
                join_streams(streams, device)

                # 5. Combine with the scheduled weights (in the terms' own order, whatever the launch order).
                outputs = {name: outputs[name] for name in terms if name in outputs}
                loss, logs = weighted_sum(outputs, weights, every, step)
                if cfg.render.shading != "albedo":
                    logs["shading"] = MODES.index(lighting.mode)

                # 6. Backward. A non-finite loss or gradient skips the update; the flag stays on the device.
                # With the densification statistic from the prior alone, or the reward scaled to the prior, it
                # goes through the pixels (see backward.py); else one backward of the weighted sum.
                prior_stat, ratio = through_pixels(cfg, step)
                with timer("backward"):
                    if prior_stat or ratio:
                        means2d = out.info["means2d"] if prior_stat else None
                        loss = backward_through_pixels(
                            outputs, weights, every, step, rgb_all, means2d, ratio, logs
                        )
                    elif loss is not None:
                        loss.backward()
                ok = finite_flag(loss, params, (state.background,))

                # 7. Optimizer step and densification (under the viewer's lock). Between refinements a
                # skipped step adds zero 2D gradients to the statistics (no host sync); refinements read `ok`.
                refined: dict[str, float] = {}
                with timer("densify"), lock:
                    optimizer_step(state.all_optimizers(), ok)
                    if densify_reads_ok(cfg, step):
                        run_densify = bool(ok)
                    else:
                        densify.zero_if_not(out.info, ok)
                        run_densify = True
                    if run_densify:
                        refined = densify.step_post_backward(
                            cfg.strategy,
                            state.strategy,
                            params,
                            state.optimizers,
                            state.strategy_state,
                            step,
                            out.info,
                        )
                    for opt in state.all_optimizers().values():
                        opt.zero_grad(set_to_none=True)
                state.step = step + 1
                state.elapsed_s = elapsed0 + time.perf_counter() - t_train0

                # 8. Queue this step's numbers for the host (read in 3b of the next step); checkpoint.
                logs.update(step=step, loss=loss.detach() if loss is not None else 0.0, ok=ok)
                logs.update(num_gaussians=num_gaussians(params))
                logs.update(refined)  # densify_* statistics, on refinement steps only
                pending = (start_readback(logs), timer.collect(), t0, bool(refined))
                if cfg.checkpoint_every and state.step % cfg.checkpoint_every == 0 and state.step < end_step:
                    finish_pending()
                    save_checkpoint(ckpt_path, state, cfg)
                if flag.signum is not None:
                    finish_pending()
                    _stop_on_signal(flag.signum, ckpt_path, state, cfg)
            finish_pending()
        except torch.cuda.OutOfMemoryError:
            for opt in state.all_optimizers().values():
                opt.zero_grad(set_to_none=True)
            torch.cuda.empty_cache()
            save_checkpoint(ckpt_path, state, cfg)
            raise SplatVLMError(
                f"CUDA out of memory at step {state.step} (checkpoint saved in {ckpt_path})",
                kind="out_of_memory",
            ) from None
        finally:
            log_file.close()
            if tb is not None:
                tb.close()
    save_checkpoint(ckpt_path, state, cfg)
    return state


def _stop_on_signal(signum: int, ckpt_path: Path, state: TrainState, cfg: RunConfig) -> None:
    save_checkpoint(ckpt_path, state, cfg)
    name = signal.Signals(signum).name
    raise StopRun(f"{name} at step {state.step}: checkpoint saved in {ckpt_path}", 128 + signum)


def _tensorboard(run_dir: Path) -> Any:
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise SplatVLMError("--tensorboard needs the tensorboard package: pip install tensorboard") from None
    return SummaryWriter(str(run_dir / "tb"))


def write_run_files(run_dir: Path, cfg: RunConfig, info: dict[str, Any]) -> None:
    """The resolved config and what the run is (prompt, output), written before training starts."""
    atomic_write_text(run_dir / "config.yaml", to_yaml(cfg))
    atomic_write_text(run_dir / "run.json", json.dumps(info, indent=2))
