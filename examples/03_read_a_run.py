"""Read a finished run folder: its config, its per-step metrics, its summary, and the splat it wrote.

    python examples/03_read_a_run.py apple_run

Renders the splat from four sides into `<run>/four_sides.png` with the library's renderer (CPU is fine).
"""

import argparse
import json
from pathlib import Path

import torch

import splatvlm
from splatvlm.outputs.export import save_png, to_uint8

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("run", type=Path, help="a run folder (<output stem>_run)")
args = parser.parse_args()

# 1. The recipe it ran (the resolved config, as YAML) and what it was asked.
cfg = splatvlm.load_run_config(config_file=args.run / "config.yaml")
info = json.loads((args.run / "run.json").read_text())
print(f"prompt {info['prompt']!r}, seed {info['seed']}, {cfg.steps} steps, recipe {info['recipe']}")

# 2. One JSON line per logged step: unweighted losses, their weights (w_*), p(Yes), timings.
rows = [json.loads(line) for line in (args.run / "metrics.jsonl").read_text().splitlines()]
last = rows[-1]
losses = {k: round(v, 4) for k, v in last.items() if k.startswith("loss_")}
print(
    f"{len(rows)} logged steps; at step {last['step']}: {losses}, p(Yes) {last.get('p_yes', float('nan')):.3f}"
)

# 3. The end of the run.
summary = json.loads((args.run / "summary.json").read_text())
print(f"finished {summary['finished']}: {summary['num_gaussians']} Gaussians in {summary['seconds']:.1f} s")

# 4. The splat itself, rendered from four sides.
ply = Path(summary["output"])
ply = ply if ply.is_absolute() else args.run.parent / ply
params = splatvlm.load_ply(ply)
cams = splatvlm.eval_orbit(cfg.camera, num_views=4, resolution=128)  # the run's turntable orbit
with torch.no_grad():
    rgb = splatvlm.render(
        params, cams, cfg.render, backgrounds=torch.ones(4, 3), depth=False
    ).rgb  # [4, H, W, 3]
save_png(to_uint8(torch.cat(list(rgb), dim=1)), args.run / "four_sides.png")
print(f"wrote {args.run / 'four_sides.png'}")
