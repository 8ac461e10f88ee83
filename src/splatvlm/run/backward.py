"""The step's backward when it goes through the pixels: the densification statistic from the prior alone
(``strategy.grad_source: prior``) and the reward scaled to the prior (``weights.vlm_mode: ratio``).

With neither, the trainer runs one ``loss.backward()``. With either, the backward is split at the renders:

1. each of the prior and the reward is back-propagated to the pixels alone (its own backward, once);
2. ratio mode: the reward's pixel gradient is scaled to ``ratio x |prior's pixel gradient|``, on the device;
3. prior source: the 2D-mean gradient of the prior's pixel gradient alone (one more rasterizer backward,
   stopping at the 2D means: the projection's backward is not run twice; none when the prior is the step's
   only loss, as once the reward is off);
4. one backward of the summed pixel gradient and of every other term into the Gaussians.

The Gaussians' gradients are those of the weighted loss (ratio mode: with the reward's weight set each step),
up to the order of float additions. The prior and the reward must see the Gaussians only through the pixels
(the renders they are handed), as score distillation and a VLM do; other terms (regularizers on the
parameters) go through step 4 unchanged.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from ..config import RunConfig
from .schedules import Weight, weight_at

PRIOR = "sds"  # the weight name of the prior's loss
REWARD = "vlm"  # the weight name of the reward's loss


def through_pixels(cfg: RunConfig, step: int) -> tuple[bool, bool]:
    """(prior statistic, ratio) for ``step``: whether the step's backward goes through the pixels, and why.

    The prior-only statistic is only needed while the default strategy accumulates it (before
    ``refine_stop_iter``); after that step the trainer's single backward is exact and cheaper."""
    st = cfg.strategy
    prior_stat = st.grad_source == "prior" and st.kind == "default" and step < st.refine_stop_iter
    return prior_stat, cfg.weights.vlm_mode == "ratio"


def _named_losses(
    outputs: dict[str, dict[str, Any]], every: dict[str, int]
) -> tuple[dict[str, Tensor], dict[str, int], bool]:
    """Per weight name, the sum of the terms' ``loss_<name>`` times their ``every`` (no schedule weight); the
    largest ``every`` behind each name; whether a term returns the prior's or the reward's loss beside others
    (then their graphs may share nodes, and the pixel backwards must keep them)."""
    sums: dict[str, Tensor] = {}
    period: dict[str, int] = {}
    shared = False
    for term_name, out in outputs.items():
        keys = [k for k in out if k.startswith("loss_")]
        shared |= len(keys) > 1 and bool({f"loss_{PRIOR}", f"loss_{REWARD}"} & set(keys))
        for key in keys:
            name = key[len("loss_") :]
            v = out[key] * every[term_name]
            sums[name] = v if name not in sums else sums[name] + v
            period[name] = max(period.get(name, 1), every[term_name])
    return sums, period, shared


def _pixel_grad(loss: Tensor | None, pixels: Tensor, retain: bool) -> Tensor | None:
    """d loss / d pixels, running the term's own backward once (None when the loss does not reach them)."""
    if loss is None or not loss.requires_grad:
        return None
    (g,) = torch.autograd.grad(loss, pixels, retain_graph=retain, allow_unused=True)
    return g


def reward_scale(g_prior: Tensor | None, g_reward: Tensor, ratio: float) -> Tensor:  # []
    """The factor that makes ``factor * g_reward`` ``ratio`` times as long as ``g_prior`` (0 without a prior);
    a device scalar: no host sync."""
    if g_prior is None:
        return torch.zeros((), device=g_reward.device, dtype=g_reward.dtype)
    tiny = torch.finfo(g_reward.dtype).tiny
    return ratio * torch.linalg.vector_norm(g_prior) / torch.linalg.vector_norm(g_reward).clamp_min(tiny)


def backward_through_pixels(
    outputs: dict[str, dict[str, Any]],
    weights: dict[str, Weight],
    every: dict[str, int],
    step: int,
    pixels: Tensor,  # [C, H, W, 3] the renders the terms were handed
    means2d: Tensor | None,
    ratio: bool,
    logs: dict[str, Any],
) -> Tensor | None:
    """Steps 1-4 of the module docstring. Returns the step's total loss, detached (for the logs and the finite
    check).

    Args:
        weights: the schedules by weight name; in ratio mode ``weights[REWARD]`` is the ratio's schedule.
        means2d: the render's ``info["means2d"]`` to receive the prior-only statistic as its ``.grad`` (and
            ``.absgrad`` where the renderer fills one); None: the statistic is the whole loss's, as usual.
        logs: updated in place; ratio mode logs the reward's weight of the step as ``w_<REWARD>``.
    """
    named, period, shared = _named_losses(outputs, every)
    # 1. The prior's and the reward's pixel gradients, each from its own backward.
    prior = named.pop(PRIOR, None)
    w_prior = weight_at(weights[PRIOR], step) if prior is not None else 0.0
    prior = prior * w_prior if prior is not None and w_prior != 0.0 else None
    g_prior = _pixel_grad(prior, pixels, shared)
    g_pixels = g_prior
    total = prior.detach() if prior is not None else None
    reward = named.pop(REWARD, None) if ratio else None

    # 2. Ratio mode: the reward's pixel gradient at `ratio` x the prior's length (times the reward's `every`,
    # which keeps the average when it runs every few steps).
    if reward is not None:
        r = weight_at(weights[REWARD], step) * period[REWARD]
        g_reward = _pixel_grad(reward, pixels, shared) if r != 0.0 else None
        logs[f"w_{REWARD}"] = 0.0
        if g_reward is not None:
            scale = reward_scale(g_prior, g_reward, r)  # multiplies `reward`, the terms' summed loss x every
            scaled = scale * g_reward
            g_pixels = scaled if g_pixels is None else g_pixels + scaled
            part = scale * reward.detach()
            total = part if total is None else total + part
            # the weight of the loss as logged (as weighted_sum logs it: times `every`)
            logs[f"w_{REWARD}"] = scale * period[REWARD]

    # The other terms, weighted (their backward is step 4's).
    rest = None
    for name, value in named.items():
        w = weight_at(weights[name], step)
        if w != 0.0:
            rest = value * w if rest is None else rest + value * w
    if rest is not None:
        total = rest.detach() if total is None else total + rest.detach()

    # 3. The 2D-mean statistic of the prior alone (zero when the prior did not run this step). When the prior
    # is the step's only loss, step 4's backward gives exactly that statistic, and this pass is skipped.
    solo = rest is None and g_pixels is g_prior
    stat = abs_stat = None
    if means2d is not None and not solo:
        if g_prior is not None:
            (stat,) = torch.autograd.grad(pixels, means2d, g_prior, retain_graph=True, allow_unused=True)
            # |2D gradient| filled by that backward, where the renderer keeps one (render.absgrad)
            absgrad = getattr(means2d, "absgrad", None)
            abs_stat = absgrad.clone() if absgrad is not None else None
        if stat is None:
            stat = torch.zeros_like(means2d)

    # 4. One backward into the Gaussians: the pixels' summed gradient and every other term.
    roots: list[Tensor] = []
    grads: list[Tensor | None] = []
    if g_pixels is not None:
        roots.append(pixels)
        grads.append(g_pixels)
    if rest is not None and rest.requires_grad:
        roots.append(rest)
        grads.append(None)
    if roots:
        torch.autograd.backward(roots, grads)
    if stat is not None:  # the statistic replaces what step 4 left (the whole loss's)
        means2d.grad = stat
        if getattr(means2d, "absgrad", None) is not None:
            means2d.absgrad = abs_stat if abs_stat is not None else torch.zeros_like(means2d)
    return total
