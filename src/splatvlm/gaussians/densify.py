"""Densification: gsplat's DefaultStrategy (3DGS clone / split / prune) or MCMCStrategy, wired as gsplat's
examples/simple_trainer.py does.

The strategy is gsplat's stateless dataclass; its mutable state is a plain dict passed to every call.
Call ``strategy.step_pre_backward`` (or ``step_pre_backward`` here) after render() and before backward,
and ``step_post_backward`` after the optimizer step.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import torch
from gsplat.strategy import DefaultStrategy, MCMCStrategy, Strategy
from gsplat.strategy.ops import reset_opa

from ..errors import SplatVLMError

MCMC_NEEDS_CUDA = (
    "MCMC densification needs CUDA (its relocation kernel has no CPU version); use --strategy.kind default"
)


@dataclass
class StrategyConfig:
    """When and how Gaussians are added and removed during training."""

    kind: Literal["default", "mcmc", "none"] = "default"
    """'default': 3DGS clone/split by 2D gradient, prune by opacity/size; 'mcmc': relocate and add by
    opacity (3DGS-MCMC, CUDA only); 'none': fixed set of Gaussians."""
    refine_start_iter: int = 500
    """Refine only after this step."""
    refine_stop_iter: int = 15_000
    """Refine (and reset opacities) only before this step."""
    refine_every: int = 100
    """Refine every this many steps."""
    reset_every: int = 3000
    """Default: reset opacities to 2 * prune_opa every this many steps (0 disables)."""
    grow_grad2d: float = 0.0002
    """Default: clone/split Gaussians whose mean 2D gradient (NDC units) exceeds this (0.0008 with absgrad)."""
    grow_scale3d: float = 0.01
    """Default: clone if the largest scale is at most this x scene_scale, else split."""
    prune_opa: float = 0.005
    """Prune (default) or relocate (mcmc) Gaussians with opacity below this."""
    prune_scale3d: float = 0.1
    """Default: after the first opacity reset, prune Gaussians larger than this x scene_scale."""
    scene_scale: float = 1.0
    """Scene radius the 3D size thresholds are relative to (objects live in the unit ball)."""
    absgrad: bool = False
    """Default: grow by summed absolute 2D gradients (AbsGS); needs render.absgrad too."""
    revised_opacity: bool = False
    """Default: split opacities with the revised formula of arXiv 2404.06109."""
    cap_max: int = 1_000_000
    """MCMC: maximum number of Gaussians (it adds 5% per refinement up to this)."""
    noise_lr: float = 5e5
    """MCMC: position noise scale, multiplied by the current means learning rate."""
    verbose: bool = False
    """Print how many Gaussians each refinement adds and removes."""


def make_strategy(
    cfg: StrategyConfig,
    packed: bool = True,
    params: torch.nn.ParameterDict | None = None,
    optimizers: dict[str, torch.optim.Optimizer] | None = None,
) -> tuple[Strategy, dict[str, Any]]:
    """gsplat's strategy for ``cfg`` and its initial state.

    Args:
        cfg: which strategy and its thresholds.
        packed: the renderer's flag; each render's ``info`` also tells the layout (``gaussian_ids`` is
            None when unpacked), and ``step_post_backward`` reads it from there, so they cannot disagree.
        params, optimizers: when given, checked with gsplat's ``check_sanity`` (one optimizer with one
            param group per key) and, for MCMC, that the scene is on CUDA.
    """
    if cfg.refine_every <= 0:
        raise SplatVLMError(f"strategy.refine_every must be positive, got {cfg.refine_every}")
    if cfg.kind == "default":
        # gsplat needs a positive reset_every (it also gates pruning by size); "never" is a huge period.
        strategy: Strategy = DefaultStrategy(
            prune_opa=cfg.prune_opa,
            grow_grad2d=cfg.grow_grad2d,
            grow_scale3d=cfg.grow_scale3d,
            prune_scale3d=cfg.prune_scale3d,
            refine_start_iter=cfg.refine_start_iter,
            refine_stop_iter=cfg.refine_stop_iter,
            reset_every=cfg.reset_every if cfg.reset_every > 0 else 1 << 62,
            refine_every=cfg.refine_every,
            absgrad=cfg.absgrad,
            revised_opacity=cfg.revised_opacity,
            verbose=cfg.verbose,
        )
        state = strategy.initialize_state(scene_scale=cfg.scene_scale)
    elif cfg.kind == "mcmc":
        if not torch.cuda.is_available() or (params is not None and params["means"].device.type != "cuda"):
            raise SplatVLMError(MCMC_NEEDS_CUDA)
        strategy = MCMCStrategy(
            cap_max=cfg.cap_max,
            noise_lr=cfg.noise_lr,
            refine_start_iter=cfg.refine_start_iter,
            refine_stop_iter=cfg.refine_stop_iter,
            refine_every=cfg.refine_every,
            min_opacity=cfg.prune_opa,
            verbose=cfg.verbose,
        )
        state = strategy.initialize_state()
    elif cfg.kind == "none":
        strategy = Strategy()  # gsplat's base class: both callbacks do nothing
        state = {}
    else:
        raise SplatVLMError(f"unknown strategy kind {cfg.kind!r}; use 'default', 'mcmc' or 'none'")
    if params is not None and optimizers is not None:
        strategy.check_sanity(params, optimizers)
    return strategy, state


def step_pre_backward(
    cfg: StrategyConfig,
    strategy: Strategy,
    params: torch.nn.ParameterDict,
    optimizers: dict[str, torch.optim.Optimizer],
    state: dict[str, Any],
    step: int,
    info: dict,
) -> None:
    """Before backward: DefaultStrategy asks autograd to keep the 2D means' gradient."""
    strategy.step_pre_backward(params, optimizers, state, step, info)


def step_post_backward(
    cfg: StrategyConfig,
    strategy: Strategy,
    params: torch.nn.ParameterDict,
    optimizers: dict[str, torch.optim.Optimizer],
    state: dict[str, Any],
    step: int,
    info: dict,
    lr: float | None = None,
) -> None:
    """After backward (and the optimizer step): accumulate 2D gradients, refine, reset, or relocate.

    Args:
        lr: MCMC's noise scale; defaults to the means optimizer's current learning rate, as gsplat's
            simple_trainer passes.
    """
    if cfg.kind == "none":
        return
    if cfg.kind == "mcmc":
        if params["means"].device.type != "cuda":
            raise SplatVLMError(MCMC_NEEDS_CUDA)
        if lr is None:
            lr = optimizers["means"].param_groups[0]["lr"]
        strategy.step_post_backward(params, optimizers, state, step, info, lr=lr)
        return
    means2d = info["means2d"]
    if cfg.absgrad and getattr(means2d, "absgrad", None) is None:
        raise SplatVLMError(
            "strategy.absgrad needs absolute 2D gradients from the renderer; set render.absgrad too"
        )
    if means2d.grad is None:
        # Nothing was visible (or the loss did not reach the Gaussians): no 2D gradient to accumulate.
        means2d.grad = torch.zeros_like(means2d)
    packed = info.get("gaussian_ids") is not None
    strategy.step_post_backward(params, optimizers, state, step, info, packed=packed)
    # gsplat 1.5.3 never resets opacities: its test `step % reset_every == 0 & step > 0` is always False
    # (`&` binds before `==`; fixed upstream, gsplat PR #776). Do what its docs and 3DGS intend.
    if 0 < step < cfg.refine_stop_iter and cfg.reset_every > 0 and step % cfg.reset_every == 0:
        reset_opa(params=params, optimizers=optimizers, state=state, value=cfg.prune_opa * 2.0)
