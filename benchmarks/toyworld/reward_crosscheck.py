"""Held-out accuracy of several toy reward folders on the same records, with the same backgrounds.

``toyworld build`` scores a reward on its own held-out records, composited over backgrounds drawn after its
training, and a build with another ``--janus-groups`` renders (and holds out) other Janus groups; so two builds'
accuracies are not on the same data. This renders the world as ``build`` does for each Janus group count given,
takes the held-out records (``reward_records(held=True)``), composites them with one seeded generator, and
scores every folder on them (correct: ``logit_yes - logit_no > 0`` exactly for the positives).

    python benchmarks/toyworld/reward_crosscheck.py shipped=src/splatvlm/toyworld/weights/reward C=DIR/reward \
        [--janus-groups 12 24] [-o out.json]
"""

from __future__ import annotations

import argparse
import json

import torch

from splatvlm.guidance.reward import RewardConfig
from splatvlm.models import load_reward
from splatvlm.toyworld import models as M
from splatvlm.toyworld.reward_model import reward_records
from splatvlm.toyworld.world import world


def renders(cfg: M.BuildConfig) -> tuple[dict, dict, dict, dict]:
    """The world's renders as build() makes them (its seeding): objects, Janus variants, shapeless balls."""
    torch.manual_seed(cfg.seed)
    return *M.world_renders(cfg), {o.name: o.caption for o in world()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("rewards", nargs="+", help="LABEL=FOLDER of a reward (a Qwen2.5-VL folder)")
    ap.add_argument("--janus-groups", type=int, nargs="+", default=[12, 24])
    ap.add_argument("--bg-seed", type=int, default=1234)
    ap.add_argument("-o", "--output", default=None)
    args = ap.parse_args()
    torch.set_num_threads(1)
    folders = dict(a.split("=", 1) for a in args.rewards)
    out: dict[str, dict] = {}
    for jg in args.janus_groups:
        data, janus, shapeless, captions = renders(M.BuildConfig(janus_groups=jg))
        held, names = reward_records(data, janus, shapeless, True), list(data)
        for label, folder in folders.items():
            cfg = RewardConfig(model=folder, size=M.REWARD_SIZE, dtype="float32", cuda_graph=False)
            reward, bg, acc = load_reward(cfg, "cpu"), torch.Generator().manual_seed(args.bg_seed), {}
            with torch.no_grad():
                for n, kind, j, i in held:
                    src = {"positive": data[n], "janus": janus.get(n), "other": data[names[j]], **shapeless}[
                        kind
                    ]
                    s = reward.score(M.composite(src.rgb[i : i + 1], src.alpha[i : i + 1], bg)[0], captions[n], fast=True)  # fmt: skip
                    acc.setdefault(kind, []).append(bool((s["logit_yes"] - s["logit_no"] > 0) == (kind == "positive")))  # fmt: skip
            res = {k: f"{sum(v)}/{len(v)} = {sum(v) / len(v):.3f}" for k, v in acc.items()}
            out.setdefault(f"janus_groups={jg}", {})[label] = res
            print(jg, label, res, flush=True)
    if args.output:
        with open(args.output, "w") as f:
            json.dump(out, f, indent=1)


if __name__ == "__main__":
    main()
