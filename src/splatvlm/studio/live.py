"""What the trainer reports to while the studio runs a job: the trainer's ``viewer`` (``lock``, ``update``,
``wait_if_paused``), plus the studio's controls (pause, stop, save now) and what the Watch tab shows.

Like the live viewer (``viewer/server.py``), ``update`` costs a few comparisons unless something is due:
numbers ~5 Hz, curves ~1 Hz, splats every ``SPLAT_PERIOD_S`` (one device-to-host copy of the scene, on the
training thread; the upload to the browser happens on the display's own thread). What to do with them is
the ``Display``'s business, so this module needs no viser.
"""

from __future__ import annotations

import math
import numbers
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch

from ..gaussians.ply import save_ply
from ..viewer.server import GUI_PERIOD_S, PLOT_PERIOD_S, Curve, plotted, splats_to_numpy

SPLAT_PERIOD_S = 2.0  # seconds between splat uploads: a large scene's copy to the host costs milliseconds


class Display(Protocol):
    """Where a live run is shown (the studio's Watch tab); called from the training thread."""

    def show_numbers(self, live: LiveRun) -> None: ...
    def show_curves(self, live: LiveRun) -> None: ...
    def show_splats(self, splats: dict[str, np.ndarray]) -> None: ...


class LiveRun:
    """One running job's live state and controls.

    Args:
        total_steps: the run's step count (for the ETA).
        run_dir: where "save now" writes ``snapshot_<step>.ply``.
        display: where numbers, curves and splats go; None keeps them here only.
    """

    def __init__(self, total_steps: int, run_dir: Path, display: Display | None = None):
        self.total_steps = total_steps
        self.run_dir = Path(run_dir)
        self.display = display
        self.lock = threading.Lock()
        """Held by the trainer while it changes the parameters, and here while "save now" reads them."""
        self.step = 0
        self.metrics: dict[str, float] = {}
        self.curves: dict[str, Curve] = {}
        self._params: torch.nn.ParameterDict | None = None
        self._resume = threading.Event()  # set = running, clear = paused
        self._resume.set()
        self._stop = threading.Event()
        self._step_time_s: float | None = None
        self._last: tuple[float, int] | None = None  # (time, step) of the previous update
        self._due = {"numbers": -math.inf, "curves": -math.inf, "splats": -math.inf}

    # ------------------------------------------------------------------ controls (any thread)

    @property
    def paused(self) -> bool:
        return not self._resume.is_set()

    def set_paused(self, paused: bool) -> None:
        if paused and not self._stop.is_set():
            self._resume.clear()
        else:
            self._resume.set()

    def request_stop(self) -> None:
        """End the run before its next step (it keeps a checkpoint and can be queued again)."""
        self._stop.set()
        self._resume.set()

    def stop_requested(self) -> bool:
        return self._stop.is_set()

    def save_now(self) -> Path:
        """Write the current scene to ``run_dir/snapshot_<step>.ply`` (under the trainer's lock)."""
        if self._params is None:
            raise RuntimeError("the run has not reported a scene yet")
        with self.lock:
            path = self.run_dir / f"snapshot_{int(self.step)}.ply"
            save_ply(self._params, path)
        return path

    @property
    def steps_done(self) -> int:
        # The trainer reports the index of the step it just finished; the run's last report, the count.
        return min(self.step + 1, self.total_steps)

    @property
    def eta_s(self) -> float | None:
        """Seconds left at the recent step rate (None until two steps were seen)."""
        if self._step_time_s is None:
            return None
        return (self.total_steps - self.steps_done) * self._step_time_s

    @property
    def step_time_s(self) -> float | None:
        return self._step_time_s

    # ------------------------------------------------------------------ the trainer's side

    def update(
        self, params: torch.nn.ParameterDict, step: int, metrics: dict[str, Any], force: bool = False
    ) -> None:
        """Record a step; hand numbers, curves and splats to the display when each is due (``force``: all)."""
        now = time.perf_counter()
        if self._last is not None and step > self._last[1]:
            dt = (now - self._last[0]) / (step - self._last[1])
            self._step_time_s = dt if self._step_time_s is None else 0.9 * self._step_time_s + 0.1 * dt
        self._last = (now, step)
        self._params = params
        self.step = step
        for key, value in metrics.items():
            if isinstance(value, bool | str) or not isinstance(value, numbers.Real | torch.Tensor):
                continue  # flags and notes are not curves
            value = float(value)
            self.metrics[key] = value
            if plotted(key) and math.isfinite(value):
                self.curves.setdefault(key, Curve()).add(step, value)
        if self.display is None:
            return
        if force or now - self._due["numbers"] >= GUI_PERIOD_S:
            self._due["numbers"] = now
            self.display.show_numbers(self)
        if force or now - self._due["curves"] >= PLOT_PERIOD_S:
            self._due["curves"] = now
            self.display.show_curves(self)
        if force or now - self._due["splats"] >= SPLAT_PERIOD_S:
            self._due["splats"] = now
            self.display.show_splats(splats_to_numpy(params))

    def show(self) -> None:
        """Hand the latest numbers and curves to the display now, whatever the update periods say (a pause,
        the run's end)."""
        if self.display is not None and self._params is not None:
            self.display.show_numbers(self)
            self.display.show_curves(self)

    def wait_if_paused(self, should_stop: Callable[[], bool] | None = None) -> None:
        """Block while paused; return at once when resumed, stopped, or ``should_stop()`` (a signal) is true."""
        if self._resume.is_set():
            return
        self.show()
        while not self._resume.wait(timeout=0.05):
            if should_stop is not None and should_stop():
                break
        self._last = None  # a pause is not step time
