"""Densification: gsplat's DefaultStrategy (3DGS clone / split / prune) or MCMCStrategy, wired as gsplat's
examples/simple_trainer.py does, with a bound on the number of Gaussians for both.

The strategy is a stateless dataclass (gsplat's, with our growth and pruning rules); its mutable state
is a plain dict passed to every call. Call the strategy's own ``step_pre_backward`` after render() and before
backward, and ``step_post_backward`` after the optimizer step; the latter returns the refinement's
statistics (``densify_*`` keys) on refinement steps.

Bounds: no refinement takes the count above ``cap_max``, and one refinement adds at most
``max_grow_frac`` x the current count. When more Gaussians qualify than fit, the default strategy
grows those with the highest gradient statistic first. Score-distillation gradients differ from
photometric ones by orders of magnitude (and with the prior's weights), so the bound holds whatever
the threshold lets through.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import torch
from gsplat.strategy import DefaultStrategy, MCMCStrategy, Strategy
from gsplat.strategy.ops import duplicate, remove, reset_opa, sample_add, split
from torch import Tensor

from ..errors import SplatVLMError

MCMC_NEEDS_CUDA = (
    "MCMC densification needs CUDA (its relocation kernel has no CPU version); use --strategy.kind default"
)
MCMC_GROW_FRAC = 0.05  # gsplat's MCMC rate per refinement
QUANTILES = (0.5, 0.9, 0.99)
REFINE_KEY = (
    "refine"  # strategy_state entry with the last refinement's statistics (not a tensor: ops skip it)
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
    """Default: prune Gaussians larger than this x scene_scale (from prune_scale3d_after on); 0: never."""
    prune_scale3d_after: int | None = None
    """Default: prune large Gaussians at refinements after this step; None: after the first opacity
    reset (3DGS's rule), or after refine_start_iter when resets are off."""
    scene_scale: float = 1.0
    """Scene radius the 3D size thresholds are relative to (objects live in the unit ball)."""
    absgrad: bool = False
    """Default: grow by summed absolute 2D gradients (AbsGS); needs render.absgrad too."""
    grad_source: Literal["prior", "all"] = "all"
    """Default: growth statistic from 'prior': the SDS loss alone (+1 rasterizer backward), or 'all'."""
    revised_opacity: bool = False
    """Default: split opacities with the revised formula of arXiv 2404.06109."""
    cap_max: int = 1_000_000
    """Both: no refinement takes the number of Gaussians above this."""
    max_grow_frac: float | None = None
    """Both: a refinement adds at most this fraction of the count (highest gradients first); None: no bound
    for 'default' (3DGS: at most doubling), 0.05 for 'mcmc' (gsplat's rate)."""
    noise_lr: float = 5e5
    """MCMC: position noise scale, multiplied by the current means learning rate."""
    verbose: bool = False
    """Print how many Gaussians each refinement adds and removes."""


def quantile_stats(values: Tensor, prefix: str) -> dict[str, float]:
    """``{prefix}_p50/_p90/_p99`` of ``values`` [N] (torch.quantile's linear interpolation); 0.0 when empty."""
    if values.numel() == 0:
        return {f"{prefix}_p{round(100 * q)}": 0.0 for q in QUANTILES}
    values = values.float()
    if values.numel() > 1 << 24:  # torch.quantile's input limit: an even subsample
        values = values[:: values.numel() // (1 << 23) + 1]
    qs = torch.quantile(values, torch.tensor(QUANTILES, device=values.device)).tolist()
    return {f"{prefix}_p{round(100 * q)}": float(v) for q, v in zip(QUANTILES, qs, strict=True)}


def growth_budget(n: int, cap_max: int, max_grow_frac: float | None) -> int:
    """How many Gaussians one refinement may add to ``n``: up to the cap, and at most the fraction."""
    room = max(0, cap_max - n)
    return room if max_grow_frac is None else min(room, int(max_grow_frac * n))


def pick_highest(qualify: Tensor, score: Tensor, budget: int) -> Tensor:
    """The ``budget`` qualifying entries [N] bool with the highest ``score`` (all of them if they fit)."""
    n_qual = int(qualify.sum())
    if n_qual <= budget:
        return qualify
    chosen = torch.zeros_like(qualify)
    masked = torch.where(qualify, score, torch.full_like(score, -torch.inf))
    chosen[torch.topk(masked, budget, sorted=False).indices] = True
    return chosen


@dataclass
class BoundedDefaultStrategy(DefaultStrategy):
    """gsplat's DefaultStrategy with a cap, a growth budget, highest-gradient-first growth, large-Gaussian
    pruning decoupled from opacity resets, and statistics of each refinement in ``state[REFINE_KEY]``."""

    cap_max: int = 1_000_000
    max_grow_frac: float | None = None
    prune_scale3d_after: int = 0

    @torch.no_grad()
    def _update_state(self, params, state: dict[str, Any], info: dict, packed: bool = False) -> None:
        """Accumulate each Gaussian's 2D-gradient norm and view count (gsplat's statistics). Unpacked renders
        are summed over the views as dense [C, N] arrays: gsplat gathers the visible pairs first
        (``torch.where(sel)``, a boolean index), and each of those reads a count back to the host, so the CPU
        waited there every step for the whole step's GPU work and left the GPU idle while it queued the next.
        Packed renders (their pairs already listed) go to gsplat's own code. The pixel scale stays two Python
        floats: a tensor made from them is a pageable host-to-device copy, and CUDA synchronizes the stream
        before one (a wait for the whole step's GPU work)."""
        if packed:
            return super()._update_state(params, state, info, packed=True)
        means2d = info[self.key_for_gradient]
        grads = means2d.absgrad if self.absgrad else means2d.grad  # [C, N, 2]
        sx, sy = (info["width"] / 2.0 * info["n_cameras"], info["height"] / 2.0 * info["n_cameras"])
        radii = info["radii"]  # [C, N, 2]
        seen = (radii > 0.0).all(dim=-1)  # [C, N]
        n = len(params["means"])
        for key in ("grad2d", "count") + (("radii",) if self.refine_scale2d_stop_iter > 0 else ()):
            if state[key] is None:
                state[key] = torch.zeros(n, device=grads.device)
        norms = torch.where(seen, torch.hypot(grads[..., 0] * sx, grads[..., 1] * sy), 0.0)
        state["grad2d"] += norms.sum(dim=0)
        state["count"] += seen.sum(dim=0, dtype=torch.float32)
        if self.refine_scale2d_stop_iter > 0:
            r = torch.where(seen, radii.max(dim=-1).values.float(), 0.0).amax(dim=0)
            state["radii"] = torch.maximum(state["radii"], r / float(max(info["width"], info["height"])))

    @torch.no_grad()
    def _grow_gs(
        self,
        params: torch.nn.ParameterDict,
        optimizers: dict[str, torch.optim.Optimizer],
        state: dict[str, Any],
        step: int,
    ) -> tuple[int, int]:
        count = state["count"]
        grads = state["grad2d"] / count.clamp_min(1)  # [N] mean 2D gradient per Gaussian, the statistic
        n = len(grads)
        qualify = grads > self.grow_grad2d
        budget = growth_budget(n, self.cap_max, self.max_grow_frac)
        chosen = pick_highest(qualify, grads, budget)
        is_small = torch.exp(params["scales"]).max(dim=-1).values <= self.grow_scale3d * state["scene_scale"]
        is_dupli = chosen & is_small
        is_split = chosen & ~is_small
        n_dupli, n_split = int(is_dupli.sum()), int(is_split.sum())
        stats = {
            "densify_count_before": n,
            "densify_qualified": int(qualify.sum()),
            "densify_budget": budget,
            "densify_duplicated": n_dupli,
            "densify_split": n_split,
            "densify_grown": n_dupli + n_split,  # each duplicate adds one; each split replaces one by two
            # over the Gaussians seen since the last refinement (unseen ones have no gradient)
            **quantile_stats(grads[count > 0], "densify_grad"),
        }
        if n_dupli > 0:
            duplicate(params=params, optimizers=optimizers, state=state, mask=is_dupli)
        # duplicates (appended at the end) are not split
        is_split = torch.cat([is_split, torch.zeros(n_dupli, dtype=torch.bool, device=is_split.device)])
        if n_split > 0:
            split(
                params=params,
                optimizers=optimizers,
                state=state,
                mask=is_split,
                revised_opacity=self.revised_opacity,
            )
        state[REFINE_KEY] = stats
        return n_dupli, n_split

    @torch.no_grad()
    def _prune_gs(
        self,
        params: torch.nn.ParameterDict,
        optimizers: dict[str, torch.optim.Optimizer],
        state: dict[str, Any],
        step: int,
    ) -> int:
        is_prune = torch.sigmoid(params["opacities"].flatten()) < self.prune_opa
        n_transparent = int(is_prune.sum())
        if self.prune_scale3d > 0 and step > self.prune_scale3d_after:
            scale = torch.exp(params["scales"]).max(dim=-1).values
            is_prune = is_prune | (scale > self.prune_scale3d * state["scene_scale"])
        n_prune = int(is_prune.sum())
        if n_prune > 0:
            remove(params=params, optimizers=optimizers, state=state, mask=is_prune)
        stats = state.setdefault(REFINE_KEY, {})
        stats.update(densify_pruned=n_prune, densify_pruned_large=n_prune - n_transparent)
        return n_prune


@dataclass
class BoundedMCMCStrategy(MCMCStrategy):
    """gsplat's MCMCStrategy adding ``grow_frac`` of the count per refinement (gsplat: 0.05) up to ``cap_max``."""

    grow_frac: float = MCMC_GROW_FRAC

    @torch.no_grad()
    def _add_new_gs(
        self, params: torch.nn.ParameterDict, optimizers: dict[str, torch.optim.Optimizer], binoms: Tensor
    ) -> int:
        n = len(params["means"])
        n_new = min(int((1.0 + self.grow_frac) * n), self.cap_max) - n
        if n_new > 0:
            sample_add(
                params=params,
                optimizers=optimizers,
                state={},
                n=n_new,
                binoms=binoms,
                min_opacity=self.min_opacity,
            )
        return max(n_new, 0)


def prune_scale3d_after(cfg: StrategyConfig) -> int:
    if cfg.prune_scale3d_after is not None:
        return cfg.prune_scale3d_after
    return cfg.reset_every if cfg.reset_every > 0 else cfg.refine_start_iter


def make_strategy(
    cfg: StrategyConfig,
    packed: bool = True,
    params: torch.nn.ParameterDict | None = None,
    optimizers: dict[str, torch.optim.Optimizer] | None = None,
) -> tuple[Strategy, dict[str, Any]]:
    """The strategy for ``cfg`` and its initial state.

    Args:
        cfg: which strategy and its thresholds.
        packed: the renderer's flag; each render's ``info`` also tells the layout (``gaussian_ids`` is
            None when unpacked), and ``step_post_backward`` reads it from there, so they cannot disagree.
        params, optimizers: when given, checked with gsplat's ``check_sanity`` (one optimizer with one
            param group per key) and, for MCMC, that the scene is on CUDA.
    """
    if cfg.refine_every <= 0:
        raise SplatVLMError(f"strategy.refine_every must be positive, got {cfg.refine_every}")
    if cfg.cap_max <= 0:
        raise SplatVLMError(f"strategy.cap_max must be positive, got {cfg.cap_max}")
    if cfg.max_grow_frac is not None and cfg.max_grow_frac < 0:
        raise SplatVLMError(f"strategy.max_grow_frac must be >= 0 (or None), got {cfg.max_grow_frac}")
    if cfg.kind == "default":
        # gsplat needs a positive reset_every (it also pauses refinement by it); "never" is a huge period.
        strategy: Strategy = BoundedDefaultStrategy(
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
            cap_max=cfg.cap_max,
            max_grow_frac=cfg.max_grow_frac,
            prune_scale3d_after=prune_scale3d_after(cfg),
        )
        state = strategy.initialize_state(scene_scale=cfg.scene_scale)
    elif cfg.kind == "mcmc":
        if not torch.cuda.is_available() or (params is not None and params["means"].device.type != "cuda"):
            raise SplatVLMError(MCMC_NEEDS_CUDA)
        strategy = BoundedMCMCStrategy(
            cap_max=cfg.cap_max,
            noise_lr=cfg.noise_lr,
            refine_start_iter=cfg.refine_start_iter,
            refine_stop_iter=cfg.refine_stop_iter,
            refine_every=cfg.refine_every,
            min_opacity=cfg.prune_opa,
            verbose=cfg.verbose,
            grow_frac=MCMC_GROW_FRAC if cfg.max_grow_frac is None else cfg.max_grow_frac,
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


def is_refine_step(cfg: StrategyConfig, step: int) -> bool:
    """Whether gsplat's strategies refine at ``step`` (both use start < step < stop)."""
    return cfg.refine_start_iter < step < cfg.refine_stop_iter and step % cfg.refine_every == 0


def zero_if_not(info: dict, ok: torch.Tensor) -> None:
    """Zero the 2D-mean gradients when ``ok`` is False, on the device (a skipped step adds nothing to the
    statistics that the default strategy accumulates between refinements)."""
    means2d = info.get("means2d")
    for name in ("grad", "absgrad"):
        g = getattr(means2d, name, None)
        if g is not None:
            setattr(means2d, name, torch.where(ok, g, torch.zeros((), dtype=g.dtype, device=g.device)))


def step_post_backward(
    cfg: StrategyConfig,
    strategy: Strategy,
    params: torch.nn.ParameterDict,
    optimizers: dict[str, torch.optim.Optimizer],
    state: dict[str, Any],
    step: int,
    info: dict,
    lr: float | None = None,
) -> dict[str, float]:
    """After backward (and the optimizer step): accumulate 2D gradients, refine, reset, or relocate.

    Returns the refinement's statistics on refinement steps, else {}: ``densify_grad_p50/p90/p99`` (the
    mean 2D gradient of the Gaussians seen since the last refinement; MCMC: ``densify_opacity_*``),
    ``densify_grown`` (= duplicated + split), ``densify_duplicated``, ``densify_split``,
    ``densify_pruned`` (MCMC: ``densify_relocated``), ``densify_qualified``, ``densify_budget`` and
    ``densify_count`` (after the refinement).

    Args:
        lr: MCMC's noise scale; defaults to the means optimizer's current learning rate, as gsplat's
            simple_trainer passes.
    """
    if cfg.kind == "none":
        return {}
    refine = is_refine_step(cfg, step)
    if cfg.kind == "mcmc":
        if params["means"].device.type != "cuda":
            raise SplatVLMError(MCMC_NEEDS_CUDA)
        if lr is None:
            lr = optimizers["means"].param_groups[0]["lr"]
        stats: dict[str, float] = {}
        if refine:
            with torch.no_grad():
                opacity = torch.sigmoid(params["opacities"].flatten())
                n = len(opacity)
                stats = {
                    "densify_count_before": n,
                    "densify_relocated": int((opacity <= strategy.min_opacity).sum()),
                    "densify_budget": growth_budget(n, cfg.cap_max, strategy.grow_frac),
                    **quantile_stats(opacity, "densify_opacity"),
                }
        strategy.step_post_backward(params, optimizers, state, step, info, lr=lr)
        if refine:
            n_after = len(params["means"])
            stats.update(densify_grown=n_after - stats["densify_count_before"], densify_count=n_after)
        return stats
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
    stats = state.pop(REFINE_KEY, {})
    if stats:
        stats["densify_count"] = len(params["means"])
    return stats
