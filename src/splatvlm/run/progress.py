"""What a run shows while it runs: per-component step timing, the terminal bar and the plain lines written
when stdout is not a terminal; and the progress of the phases around training (exports, renders, evals)."""

from __future__ import annotations

import contextlib
import math
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any

import torch

PLAIN_PERIOD_S = 10.0  # off a terminal: at most one progress line this often per phase


class StepTimer:
    """Per-component wall time of a step: CUDA events on GPU, perf_counter on CPU; off unless enabled."""

    def __init__(self, enabled: bool, device: torch.device):
        self.enabled = enabled
        self.cuda = device.type == "cuda"
        self._marks: list[tuple[str, Any, Any]] = []

    @contextlib.contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        if not self.enabled:
            yield
            return
        if self.cuda:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            yield
            end.record()
        else:
            start = time.perf_counter()
            yield
            end = time.perf_counter()
        self._marks.append((name, start, end))

    def collect(self) -> list[tuple[str, Any, Any]]:
        """The marks of the step just launched; ``read`` them once that step has finished."""
        marks, self._marks = self._marks, []
        return marks

    def read(self, marks: list[tuple[str, Any, Any]]) -> dict[str, float]:
        """Milliseconds per component of a launched step (on GPU, waits for that step's events only)."""
        out: dict[str, float] = {}
        for name, start, end in marks:
            if self.cuda:
                end.synchronize()
            ms = start.elapsed_time(end) if self.cuda else (end - start) * 1e3
            out[name] = out.get(name, 0.0) + ms
        return out


def progress_info(logs: dict[str, Any], its: float) -> str:
    parts = [f"{k[5:]}={v:.4g}" for k, v in logs.items() if k.startswith("loss_")]
    if "p_yes" in logs:
        parts.append(f"p_yes={logs['p_yes']:.3f}")
    if "psnr" in logs and math.isfinite(logs["psnr"]):
        parts.append(f"psnr={logs['psnr']:.2f}")
    parts.append(f"#G={logs['num_gaussians']}")
    parts.append(f"{its:.2f} it/s")
    return " ".join(parts)


def progress_columns() -> list:
    """The terminal bar: step, bar and times at fixed widths first, then the loss text, which is cut to fit."""
    from rich.progress import BarColumn, TextColumn, TimeElapsedColumn, TimeRemainingColumn
    from rich.table import Column

    def fixed(width: int) -> Column:
        return Column(min_width=width, no_wrap=True)

    columns = [
        TextColumn("[bold]{task.completed}/{task.total}", table_column=fixed(9)),
        BarColumn(bar_width=10, table_column=fixed(10)),
        TimeElapsedColumn(table_column=fixed(7)),
        TextColumn("eta", table_column=fixed(3)),
        TimeRemainingColumn(table_column=fixed(7)),
        TextColumn("{task.fields[info]}", table_column=Column(ratio=1, no_wrap=True, overflow="ellipsis")),
    ]
    return columns


def clock(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


def progress_line(
    step: int, total: int, end_step: int, logs: dict[str, Any], its: float, elapsed: float, done: int
) -> str:
    """The plain progress line written off a terminal: step/total, loss terms, #Gaussians, it/s, elapsed, ETA."""
    rate = done / max(elapsed, 1e-9)
    eta = (end_step - step) / rate if rate > 0 else float("nan")
    eta_text = clock(eta) if math.isfinite(eta) else "?"
    return f"step {step}/{total} {progress_info(logs, its)} elapsed {clock(elapsed)} eta {eta_text}"


# ----------------------------------------------------------------------------------------------
# Phases outside the training loop: exports, renders, evaluations


def say(text: str) -> None:
    """One progress line on stderr (stdout stays for results), flushed at once."""
    print(text, file=sys.stderr, flush=True)


@contextlib.contextmanager
def task_progress(description: str, total: int, enabled: bool = True) -> Iterator[Callable[[int], None]]:
    """Progress of a phase of ``total`` known units (views, prompts): yields ``advance(n)``.

    On a terminal, rich's bar (with an ETA). Elsewhere (logs, pipes) a plain line at the start, one at
    most every ``PLAIN_PERIOD_S`` seconds with the count and an ETA, and one at the end with the time, so
    that a log never stays silent for minutes and never fills with a bar's redraws.
    """
    if not enabled or total <= 0:
        yield lambda n=1: None
        return
    t0 = time.perf_counter()
    if sys.stderr.isatty():
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
        with Progress(*columns, transient=True) as bar:
            task = bar.add_task(description, total=total)
            yield lambda n=1: bar.advance(task, n)
        say(f"{description}: {total} in {time.perf_counter() - t0:.1f} s")
        return
    state = {"done": 0, "last": t0}
    say(f"{description}: 0/{total} ...")

    def advance(n: int = 1) -> None:
        state["done"] += n
        now = time.perf_counter()
        if now - state["last"] >= PLAIN_PERIOD_S and state["done"] < total:
            state["last"] = now
            eta = (total - state["done"]) * (now - t0) / state["done"]
            say(f"{description}: {state['done']}/{total}, eta {clock(eta)}")

    yield advance
    say(f"{description}: {state['done']}/{total} in {time.perf_counter() - t0:.1f} s")
