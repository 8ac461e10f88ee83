"""Does the toy reward's pixel gradient point at the object? Measured on held-out Janus views.

For each front/back object: 4-view groups of its Janus variant V and of the truth T on the same cameras and
backgrounds (cameras never drawn by the build: their own seed). The reward's gradient g = d reward / d V is what
a run's reward term follows; the direction that would fix the render is d = T - V. Reported per object and over
all: cos(g, d) over every pixel (1: the gradient points straight at the truth, ~0: unrelated, as a non-robust
classifier's adversarial gradient is), the share of |g|^2 on the pixels where V and T differ, and how often the
reward prefers T to V.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable

import torch
from torch import Tensor

from .models import composite, render_groups
from .world import get_objects, janus_variant, object_params

HELD_OUT_SEED = 1000  # the build renders from its own seed; these cameras are drawn from another


def gradient_cosine(
    score_fn: Callable[[Tensor], Tensor], variant: Tensor, truth: Tensor
) -> tuple[float, float]:
    """(cos(d score / d variant, truth - variant), share of the gradient's energy where truth != variant).

    ``variant`` and ``truth``: images of one shape; ``score_fn`` maps such images to a scalar tensor.
    """
    x = variant.detach().clone().requires_grad_(True)
    (g,) = torch.autograd.grad(score_fn(x), x)
    d = truth - variant
    cos = (g * d).sum() / (g.norm() * d.norm()).clamp_min(1e-30)
    on = (d != 0).any(-1, keepdim=True).expand_as(g)
    share = (g[on] ** 2).sum() / (g**2).sum().clamp_min(1e-30)
    return float(cos), float(share)


def janus_pairs(groups: int = 4, objects: list[str] | None = None) -> list[tuple[str, str, Tensor, Tensor]]:
    """(object, caption, Janus variant views [4, H, W, 3], truth views) per held-out group, both over the same
    background, for the front/back objects (all of them, or those named)."""
    out = []
    for obj in get_objects(objects or []):
        if not obj.front_back:
            continue
        truth = render_groups(object_params(obj), groups, torch.Generator().manual_seed(HELD_OUT_SEED))
        janus = render_groups(
            object_params(janus_variant(obj)), groups, torch.Generator().manual_seed(HELD_OUT_SEED)
        )
        t = composite(truth.rgb, truth.alpha, torch.Generator().manual_seed(HELD_OUT_SEED + 1))
        v = composite(janus.rgb, janus.alpha, torch.Generator().manual_seed(HELD_OUT_SEED + 1))
        out += [(obj.name, obj.caption, v[i], t[i]) for i in range(groups)]
    return out


def reward_alignment(reward, pairs: list[tuple[str, str, Tensor, Tensor]]) -> dict:
    """The module docstring's measures for a loaded ``VLMReward`` on ``janus_pairs``."""
    per: dict[str, list[tuple[float, float, bool]]] = {}
    for name, caption, v, t in pairs:
        cos, share = gradient_cosine(lambda x, c=caption: reward.score(x, c, fast=True)["reward"], v, t)
        with torch.no_grad():
            prefers = bool(
                reward.score(t, caption, fast=True)["reward"] > reward.score(v, caption, fast=True)["reward"]
            )
        per.setdefault(name, []).append((cos, share, prefers))
    every = [r for rs in per.values() for r in rs]
    return {
        "median_cosine": round(statistics.median(r[0] for r in every), 4),
        "mean_cosine": round(statistics.fmean(r[0] for r in every), 4),
        "mean_footprint_share": round(statistics.fmean(r[1] for r in every), 4),
        "prefers_truth": round(statistics.fmean(r[2] for r in every), 3),
        "groups": len(every),
        "per_object": {
            n: {
                "mean_cosine": round(statistics.fmean(r[0] for r in rs), 4),
                "prefers_truth": round(statistics.fmean(r[2] for r in rs), 3),
            }
            for n, rs in per.items()
        },  # fmt: skip
    }
