"""Hard negatives for the toy reward: renders of the scenes that toy runs pass through on their way.

A reward trained on the world's objects, variants and balls alone has never seen what a run shows it: hazes,
half-formed shapes, wrong colors. A run that climbs its gradient can find such renders that it answers Yes to.
``toyworld eval --snapshot-every N`` saves each run's scene every N steps (``runs/*/snapshots/step-*.ply``);
this module scores each snapshot against the ground truth and keeps those that are clearly not the object
(``clearly_off``), rendered as 4-view groups on the build's camera sampler, to be answered No for the run's
caption. A snapshot close to the object is left out: a No there would push runs away from the truth.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from ..errors import SplatVLMError
from .models import Renders, render_groups
from .world import world

# A snapshot counts as "not the object" below this silhouette IoU or masked PSNR, or above this Janus score.
MAX_IOU, MAX_PSNR, MAX_JANUS = 0.7, 15.0, 0.3


def clearly_off(s: dict) -> bool:
    """Whether a ``toyworld.scoring.score`` result is clearly not its object (see the module docstring)."""
    return s["iou"] < MAX_IOU or s["psnr"] < MAX_PSNR or (s["janus"] is not None and s["janus"] > MAX_JANUS)


def snapshot_files(eval_dirs: list[Path]) -> list[tuple[str, Path]]:
    """(object name, snapshot .ply) of every run under the eval folders, in a stable order."""
    by_caption = {o.caption: o.name for o in world()}
    out = []
    for d in eval_dirs:
        for run in sorted(Path(d).glob("runs/*")):
            info = run / "run.json"
            if not info.is_file():
                continue
            name = by_caption.get(json.loads(info.read_text()).get("prompt"))
            if name is not None:
                out += [(name, p) for p in sorted(run.glob("snapshots/step-*.ply"))]
    return out


def collect(eval_dirs: list[Path], groups: int = 2, seed: int = 0, device: str = "cpu", log=print) -> dict:
    """The hard negatives of the eval folders' snapshots: {"object": [G], "rgb": [G, 4, H, W, 3] on black,
    "alpha", "cameras", "source": [G], "score": [G]}, ``groups`` seeded 4-view groups per kept snapshot."""
    from ..gaussians.ply import load_ply
    from .scoring import score

    files = snapshot_files(eval_dirs)
    if not files:
        raise SplatVLMError(
            f"no run snapshots under {', '.join(map(str, eval_dirs))} (toyworld eval --snapshot-every)"
        )
    objs = {o.name: o for o in world()}
    gen = torch.Generator().manual_seed(seed)
    names, sources, scores, parts = [], [], [], []
    for name, path in files:
        params = load_ply(path)
        s = score(params, objs[name], torch.device(device))
        if not clearly_off(s):
            continue
        parts.append(render_groups(params, groups, gen))
        names += [name] * groups
        sources += [str(path)] * groups
        scores += [s] * groups
    log(f"hard negatives: kept {len(parts)} of {len(files)} snapshots")
    if not parts:
        raise SplatVLMError("no snapshot is clearly off its object: no hard negatives to write")
    return {
        "object": names,
        "source": sources,
        "score": scores,
        **{f: torch.cat([getattr(r, f) for r in parts]) for f in ("rgb", "alpha", "cameras")},
    }


def load(paths: list[Path]) -> dict[str, Renders]:
    """Hard-negative files -> renders per object name (in file order)."""
    per: dict[str, list[Renders]] = {}
    for p in paths:
        if not Path(p).is_file():
            raise SplatVLMError(f"--reward-hard {p}: no such file")
        d = torch.load(p, weights_only=True)
        for i, name in enumerate(d["object"]):
            per.setdefault(name, []).append(
                Renders(d["rgb"][i : i + 1], d["alpha"][i : i + 1], d["cameras"][i : i + 1])
            )
    return {
        n: Renders(*(torch.cat([getattr(r, f) for r in rs]) for f in ("rgb", "alpha", "cameras")))
        for n, rs in per.items()
    }
