"""Collect the toy reward's hard negatives from eval folders run with ``--snapshot-every``.

Every saved snapshot of a run (runs/*/snapshots/step-*.ply) is scored against its object; those clearly off it
(``splatvlm.toyworld.hard_negatives.clearly_off``) are rendered as seeded 4-view groups into one file for
``toyworld build --reward-hard FILE``.

    python benchmarks/toyworld/hard_negatives.py EVAL_DIR [EVAL_DIR ...] -o hard.pt [--groups 2]
"""

from __future__ import annotations

import argparse
import collections
from pathlib import Path

import torch

from splatvlm.files import atomic_path
from splatvlm.toyworld.hard_negatives import collect


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("folders", type=Path, nargs="+")
    ap.add_argument("-o", "--output", type=Path, required=True)
    ap.add_argument("--groups", type=int, default=2, help="4-view groups rendered per kept snapshot")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    torch.set_num_threads(1)
    data = collect(args.folders, args.groups, args.seed)
    with atomic_path(args.output) as tmp:
        torch.save(data, tmp)
    print(f"wrote {args.output}: {dict(collections.Counter(data['object']))} groups per object")


if __name__ == "__main__":
    main()
