"""Loss weights over the training steps: a schedule per term, its value at a step, whether a term runs at all.

Kept apart from config.py so that modules below the config (resources.py) can ask which terms a run needs.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any


@dataclass
class Weight:
    """A loss weight over training steps: linear from `start` to `end` over `ramp_steps`, 0 from `stop_after` on."""

    start: float = 0.0
    """Weight at step 0."""
    end: float | None = None
    """Weight at `ramp_steps` and after (None: constant `start`)."""
    ramp_steps: int = 0
    """Steps of the linear ramp from `start` to `end`."""
    stop_after: int | None = None
    """The weight is 0 from this step on (None: never)."""


def weight_at(w: Weight, step: int) -> float:
    if w.stop_after is not None and step >= w.stop_after:
        return 0.0
    if w.end is None or w.ramp_steps <= 0:
        return w.start if w.end is None or step < w.ramp_steps else w.end
    t = min(max(step / w.ramp_steps, 0.0), 1.0)
    return w.start + t * (w.end - w.start)


def ever_active(w: Weight, total_steps: int) -> bool:
    """Whether the weight is non-zero at any step before ``total_steps``."""
    last = total_steps if w.stop_after is None else min(total_steps, w.stop_after)
    if last <= 0:
        return False
    if w.start != 0.0:
        return True
    return w.end is not None and w.end != 0.0 and last > 1


def loss_weights(weights: Any) -> dict[str, Weight]:
    """The schedule of each loss name: the ``Weight`` fields of a run config's ``weights``. With
    ``vlm_mode: ratio`` the reward's is its ratio schedule: it decides when the reward runs, and the trainer
    turns it into the reward's weight each step."""
    out = {
        f.name: getattr(weights, f.name)
        for f in dataclasses.fields(weights)
        if isinstance(getattr(weights, f.name), Weight)
    }
    ratio = out.pop("vlm_ratio", None)
    if getattr(weights, "vlm_mode", "fixed") == "ratio":
        out["vlm"] = ratio
    return out


def terms_active(cfg) -> dict[str, bool]:
    """Which loss terms (``guidance.terms.TERMS``, by name) a generate run (a RunConfig) needs at all."""
    from ..guidance.terms import TERMS

    weights = loss_weights(cfg.weights)
    return {spec.name: any(ever_active(weights[w], cfg.steps) for w in spec.weights) for spec in TERMS}
