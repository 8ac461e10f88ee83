"""The toy world's reward VLM, trained here: a demo-size Qwen2.5-VL that answers Yes for 4-view renders of the
captioned object and No for other objects, Janus variants and shapeless balls (``toyworld build``'s reward stage).
"""

from __future__ import annotations

import random
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor

from .models import REWARD_SIZE, BuildConfig, Renders, composite

# Shares of the reward's negatives by kind: another object, the Janus variant, a half-opaque ball, the
# faint ball every run starts from (which the first reward answered Yes to).
NEGATIVE_SHARES = {"other": 0.35, "janus": 0.35, "blob": 0.1, "start": 0.2}


def negative_shares(janus: float) -> dict[str, float]:
    """``NEGATIVE_SHARES`` with the Janus share set to ``janus`` and the others scaled to fill the rest."""
    if not 0.0 <= janus < 1.0:
        raise ValueError(f"janus share must be in [0, 1), got {janus}")
    if janus == NEGATIVE_SHARES["janus"]:
        return dict(NEGATIVE_SHARES)  # the shipped shares exactly (no float drift in the seeded draws)
    rest = 1.0 - NEGATIVE_SHARES["janus"]
    return {k: janus if k == "janus" else v * (1.0 - janus) / rest for k, v in NEGATIVE_SHARES.items()}


def with_hard_share(shares: dict[str, float], hard: float) -> dict[str, float]:
    """``shares`` scaled to ``1 - hard`` with a "hard" kind of share ``hard`` added (0: unchanged)."""
    if not 0.0 <= hard < 1.0:
        raise ValueError(f"hard-negative share must be in [0, 1), got {hard}")
    if hard == 0.0:
        return dict(shares)
    return {**{k: v * (1.0 - hard) for k, v in shares.items()}, "hard": hard}


def pgd_views(loss_fn, views: Tensor, eps: float, steps: int, gen: torch.Generator) -> Tensor:
    """Views [V, H, W, 3] in [0, 1] moved inside the L-inf ball of ``eps`` to raise ``loss_fn``: a random start,
    then ``steps`` signed-gradient steps of 2.5 eps / steps (Madry et al.), clamped to [0, 1]; detached."""
    views = views.detach()
    delta = (torch.rand(views.shape, generator=gen) * 2 - 1).to(views.device) * eps
    for _ in range(steps):
        delta.requires_grad_(True)
        (g,) = torch.autograd.grad(loss_fn((views + delta).clamp(0.0, 1.0)), delta)
        delta = (delta.detach() + 2.5 * eps / steps * g.sign()).clamp(-eps, eps)
    return (views + delta).clamp(0.0, 1.0).detach()


def build_reward_folder(folder: Path, seed: int) -> None:
    """A fresh demo-size Qwen2.5-VL (seeded) with the demo tokenizer and image processor."""
    from transformers import Qwen2_5_VLForConditionalGeneration
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    from ..demo import build_demo_tokenizer, vlm_config

    tok = build_demo_tokenizer()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = Qwen2_5_VLForConditionalGeneration._from_config(vlm_config("demo", tok), dtype=torch.float32)
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    Qwen2VLImageProcessorPil().save_pretrained(folder)


def with_noise(views: Tensor, max_std: float, gen: torch.Generator) -> Tensor:
    """Views [V, H, W, 3] in [0, 1] plus Gaussian noise of one std drawn from U(0, max_std), clamped to [0, 1]."""
    std = float(torch.rand((), generator=gen)) * max_std
    return (views + std * torch.randn(views.shape, generator=gen)).clamp(0.0, 1.0)


def reward_records(data: dict[str, Renders], janus: dict[str, Renders], shapeless: dict[str, Renders],
                   held: bool, hard: dict[str, Renders] | None = None) -> list[tuple[str, str, int, int]]:  # fmt: skip
    """(caption object, source, source object, group) with source positive/other/janus, a ``shapeless`` key
    ("blob": half-opaque balls, "start": the runs' initial faint ball) or "hard" (``hard``'s renders of the
    caption object's runs).

    The last quarter of every object's groups is held out (``held=True`` lists those).
    """
    recs = []
    names = list(data)
    for n, renders in (hard or {}).items():
        g = renders.rgb.shape[0]
        split = (3 * g) // 4
        recs += [(n, "hard", names.index(n), i) for i in (range(split, g) if held else range(split))]
    for n in names:
        g = data[n].rgb.shape[0]
        split = (3 * g) // 4
        for i in range(split, g) if held else range(split):
            recs.append((n, "positive", names.index(n), i))
            recs.append((n, "other", (names.index(n) + 1 + i % (len(names) - 1)) % len(names), i))
            if n in janus:
                gj = janus[n].rgb.shape[0]
                recs.append(
                    (
                        n,
                        "janus",
                        names.index(n),
                        (3 * gj) // 4 + i % (gj - (3 * gj) // 4) if held else i % ((3 * gj) // 4),
                    )
                )
            else:
                recs.append((n, "other", (names.index(n) + 2 + i % (len(names) - 2)) % len(names), i))
            for kind, renders in shapeless.items():
                gb = renders.rgb.shape[0]
                recs.append(
                    (n, kind, 0, (3 * gb) // 4 + i % (gb - (3 * gb) // 4) if held else i % ((3 * gb) // 4))
                )
    return recs


def record_source(
    rec, data: dict[str, Renders], janus: dict[str, Renders], shapeless: dict[str, Renders],
    hard: dict[str, Renders] | None = None,
) -> Renders:  # fmt: skip
    """The renders a ``reward_records`` record's views come from (their group is ``rec[3]``)."""
    n, kind, j, _ = rec
    if kind == "hard":
        return hard[n]
    return {"positive": data[n], "janus": janus.get(n), "other": data[list(data)[j]], **shapeless}[kind]


def batch_draw(train: list, shares: dict[str, float], rng: random.Random):
    """A function drawing one training batch: two positives, then two negatives drawn by kind with ``shares``
    (the Janus variants, the hard case the reward is for, most often)."""
    pos = [r for r in train if r[1] == "positive"]
    neg = {kind: [r for r in train if r[1] == kind] for kind in shares}
    neg = {
        k: v for k, v in neg.items() if v
    }  # a kind with no training records (few hard negatives) drops out
    kinds, weights = list(neg), [shares[k] for k in neg]

    def negative():
        return rng.choice(neg[rng.choices(kinds, weights)[0]])

    return lambda: [rng.choice(pos), rng.choice(pos), negative(), negative()]


def train_reward_model(folder: Path, data: dict[str, Renders], janus: dict[str, Renders],
                       shapeless: dict[str, Renders], captions: dict[str, str], cfg: BuildConfig, log) -> dict:  # fmt: skip
    """Fully fine-tune the tiny VLM in ``folder`` on the toy records (adversarially with ``cfg.reward_pgd_steps``,
    with ``cfg.reward_hard``'s hard negatives); saves it back; returns a log dict with the held-out accuracy
    and the gradient alignment (``alignment.py``) before and after."""
    from ..guidance.reward import RewardConfig
    from ..models import load_reward
    from . import hard_negatives
    from .alignment import janus_pairs, reward_alignment

    t0 = time.perf_counter()
    reward = load_reward(
        RewardConfig(model=str(folder), size=REWARD_SIZE, dtype="float32", cuda_graph=False), cfg.device
    )
    pairs = janus_pairs()
    reward.model.eval()
    before = reward_alignment(reward, pairs)
    log(f"reward gradient alignment before: {before}")
    reward.model.requires_grad_(True)
    params = [p for p in reward.model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=cfg.reward_lr, weight_decay=0.0)
    rng = random.Random(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed + 2)
    hard = hard_negatives.load(cfg.reward_hard) if cfg.reward_hard else {}
    train, held = (
        reward_records(data, janus, shapeless, False, hard),
        reward_records(data, janus, shapeless, True, hard),
    )

    def views(rec) -> tuple[Tensor, bool]:
        src, i = record_source(rec, data, janus, shapeless, hard), rec[3]
        return composite(src.rgb[i : i + 1], src.alpha[i : i + 1], gen)[0], rec[1] == "positive"

    # their own generators: the records' draws stay the shipped ones
    noise_gen = torch.Generator().manual_seed(cfg.seed + 4)
    pgd_gen = torch.Generator().manual_seed(cfg.seed + 5)

    def record_loss(v: Tensor, caption: str, label: bool) -> tuple[Tensor, Tensor]:
        s = reward.score(v, caption, fast=True)
        d = s["logit_yes"] - s["logit_no"]
        return (F.softplus(-d) if label else F.softplus(d)), d

    def loss_of(rec, training: bool = False) -> tuple[Tensor, bool]:
        v, label = views(rec)
        if training and cfg.reward_noise > 0:
            v = with_noise(v, cfg.reward_noise, noise_gen)
        if training and cfg.reward_pgd_steps > 0:
            v = pgd_views(lambda x: record_loss(x, captions[rec[0]], label)[0], v, cfg.reward_pgd_eps,
                          cfg.reward_pgd_steps, pgd_gen)  # fmt: skip
        loss, d = record_loss(v, captions[rec[0]], label)
        return loss, bool((d > 0) == label)

    shares = with_hard_share(negative_shares(cfg.janus_share), cfg.reward_hard_share if hard else 0.0)
    draw = batch_draw(train, shares, rng)
    hist = []
    reward.model.train()
    for step in range(cfg.reward_steps):
        opt.zero_grad(set_to_none=True)
        batch = draw()
        total = 0.0
        for rec in batch:
            loss, hit = loss_of(rec, training=True)
            (loss / len(batch)).backward()
            total += float(loss.detach()) / len(batch)
            hist.append(hit)
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        if step % 20 == 0 or step == cfg.reward_steps - 1:
            log(
                f"reward step {step} loss {total:.4f} train acc (last 80) {sum(hist[-80:]) / len(hist[-80:]):.2f}"
                f" ({time.perf_counter() - t0:.0f} s)"
            )
    reward.model.eval()
    acc: dict[str, list[bool]] = {}
    with torch.no_grad():
        for rec in held:
            acc.setdefault(rec[1], []).append(loss_of(rec)[1])
    accuracy = {k: round(sum(v) / len(v), 3) for k, v in acc.items()}
    log(f"reward held-out accuracy {accuracy}")
    reward.model.requires_grad_(False)
    after = reward_alignment(reward, pairs)
    log(f"reward gradient alignment after: {after}")
    reward.model.save_pretrained(folder)
    return {
        "reward_s": round(time.perf_counter() - t0, 1),
        "reward_heldout_accuracy": accuracy,
        "hard_negative_groups": {n: r.rgb.shape[0] for n, r in hard.items()},
        "alignment_before": before,
        "alignment_after": after,
    }


# ---------------------------------------------------------------------------------------------
# Build
