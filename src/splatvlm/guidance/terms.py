"""The loss terms of a generate run: one spec per term, in the order the trainer sums them.

Everything that asks "which terms does this run have" reads ``TERMS``: the run's guidance (commands/generate.py),
which terms are on (run/schedules.py), the memory check (resources.py), the source checks and loading
(models.py, by the spec's ``model``) and the speed benchmark's components and phases (commands/bench*.py).

A term is a callable returning named ``loss_<w>`` tensors (and diagnostics as other keys); the trainer alone
multiplies each by ``weights.<w>`` (config.Weights). Adding one: write its module (a function or, if it holds
weights, a class), add a ``Weights`` field per ``loss_<w>`` it returns (default 0: off), add its spec here.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from . import regularizers

ModelKind = Literal["prior", "reward"]  # what models.py can check, estimate and load
Inputs = Literal["images", "scene"]


def _prompted(cfg: Any, model: Any, prompt: str) -> Any:
    """A loaded model that is itself the term, told the run's prompt."""
    model.set_prompt(prompt)
    return model


def _regularizers(cfg: Any, model: Any, prompt: str) -> Any:
    return regularizers.make_term(on_weights(cfg, regularizers.WEIGHTS))


def on_weights(cfg: Any, names: tuple[str, ...]) -> tuple[str, ...]:
    """The weights among ``names`` that a run config sets to anything but 0 (at its start or its end)."""
    return tuple(n for n in names if getattr(cfg.weights, n).start != 0.0 or getattr(cfg.weights, n).end)


def _once(cfg: Any) -> int:
    return 1


def _all_views(cfg: Any) -> int | None:
    return None


def _no_depth(cfg: Any) -> bool:
    return False


@dataclass(frozen=True)
class TermSpec:
    """What the run needs to know about one loss term."""

    name: str  # the trainer's name for it: its timer (ms_<name>) and the bench's component
    weights: tuple[str, ...]  # the config.Weights fields of the loss_* entries it returns
    section: str | None  # the RunConfig field holding its settings (None: its weights only)
    # The model it needs (models.py checks its source and loads it, resources.py sizes it); None: no model.
    model: ModelKind | None
    # (run config, model or None, prompt) -> the term.
    make: Callable[[Any, Any, str], Callable[..., dict[str, Any]]]
    # images: fn(rgb [C, H, W, 3], cams, step); scene: fn(params, render, cams, step).
    inputs: Inputs = "images"
    every: Callable[[Any], int] = _once  # steps between calls (the trainer scales the weight by it)
    views: Callable[[Any], int | None] = _all_views  # the first N rendered views only (None: all)
    depth: Callable[[Any], bool] = _no_depth  # whether it reads the rendered depth
    launch_first: bool = False  # queued first on its own CUDA stream: the step's long pole
    own_device: bool = False  # with --placement split, its model and its work go to the second GPU
    bench_label: str = ""  # the bench's phase label shows "+<label>" while it is on ("": not shown)


TERMS: tuple[TermSpec, ...] = (
    TermSpec("sds", ("sds",), "sds", "prior", _prompted),
    TermSpec(
        "vlm",
        ("vlm",),
        "vlm",
        "reward",
        _prompted,
        every=lambda cfg: cfg.vlm.every,
        views=lambda cfg: cfg.vlm.num_views,
        launch_first=True,
        own_device=True,
        bench_label="reward",
    ),  # fmt: skip
    TermSpec(
        "reg",
        regularizers.WEIGHTS,
        None,
        None,
        _regularizers,
        inputs="scene",
        depth=lambda cfg: bool(on_weights(cfg, regularizers.DEPTH_WEIGHTS)),
    ),  # fmt: skip
)
