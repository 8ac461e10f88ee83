"""Add your own loss term: a color prior that pulls the rendered object toward red, beside the recipe's terms.

    python examples/02_custom_loss_term.py --steps 30

A loss term is a function of the rendered views, fn(rgb [C, H, W, 3], cams, step), that returns unweighted
`loss_<name>` tensors; the trainer alone multiplies each by its weight schedule and sums them. Here the term
comes from outside the package, so it brings its own schedule (`own_weights`). Inside the package a term is one
module plus one line in `guidance/terms.py` (README, "Adding a loss term").
"""

import argparse
import dataclasses
from pathlib import Path

import torch

import splatvlm
from splatvlm.commands.generate import RunControl, make_guidance

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--steps", type=int, default=30, help="training steps")
parser.add_argument("--run-dir", type=Path, default=Path("red_run"), help="folder for metrics and checkpoint")
args = parser.parse_args()

RED = torch.tensor([0.8, 0.1, 0.1])


def redness(rgb: torch.Tensor, cams: splatvlm.Cameras, step: int) -> dict[str, torch.Tensor]:
    """Squared distance of each view's mean color to RED, averaged over the views."""
    mean_color = rgb.mean(dim=(1, 2))  # [C, 3]
    loss = ((mean_color - RED.to(rgb.device)) ** 2).sum(dim=-1).mean()
    return {"loss_red": loss, "mean_red": mean_color[:, 0].mean().detach()}  # a diagnostic, logged as is


cfg = splatvlm.load_run_config("demo")
cfg = dataclasses.replace(cfg, steps=args.steps, device="cpu", background="white")
device = torch.device("cpu")

# 1. The recipe's own terms (the demo's SDS and reward), loaded as `splatvlm generate` loads them.
terms = make_guidance(cfg, RunControl(progress=False)).terms("a red apple")
# 2. Ours beside them, with a constant weight of 10.
terms["red"] = splatvlm.Term(redness, weights=("red",), own_weights={"red": splatvlm.Weight(start=10.0)})

# 3. A fresh scene and its optimizers, then the training loop.
params = splatvlm.init_ball(cfg.scene, torch.Generator().manual_seed(cfg.seed))
state = splatvlm.new_state(params, cfg, device)
args.run_dir.mkdir(parents=True, exist_ok=True)
with torch.no_grad():
    before = redness(
        splatvlm.render(state.params, splatvlm.eval_orbit(cfg.camera, 4, 64), cfg.render).rgb, None, 0
    )
state = splatvlm.train(cfg, state, terms, args.run_dir, device, progress=False)
with torch.no_grad():
    after = redness(
        splatvlm.render(state.params, splatvlm.eval_orbit(cfg.camera, 4, 64), cfg.render).rgb, None, 0
    )
print(f"loss_red {before['loss_red']:.4f} -> {after['loss_red']:.4f} after {args.steps} steps "
      f"(metrics in {args.run_dir / 'metrics.jsonl'})")  # fmt: skip
