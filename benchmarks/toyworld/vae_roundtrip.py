"""How faithfully a toy autoencoder gives colors back: encode, then decode the mean latent, for one weight folder or more.

The start ball every toy run begins from and three objects, one seeded 4-view group each, over white, 0.5 gray
and a blue background: the render's mean color, the round trip's mean color and their MSE (on [0, 1]).

    cd benchmarks/toyworld && python vae_roundtrip.py --weights A [B ...] -o OUT.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from diagnose import load_prior  # the script's folder is on sys.path

from splatvlm.gaussians.cameras import sample_orbit
from splatvlm.gaussians.render import RenderConfig, render
from splatvlm.toyworld.models import RESOLUTION, TORCH_CHUNK, start_params, toy_camera
from splatvlm.toyworld.world import get_objects, object_params

BACKGROUNDS = {"white": (1.0, 1.0, 1.0), "gray": (0.5, 0.5, 0.5), "blue": (0.2, 0.3, 0.9)}


@torch.no_grad()
def roundtrip(vae, objects: list[str]) -> dict:
    gen = torch.Generator().manual_seed(0)
    scenes = [("start", start_params(0))] + [(o.name, object_params(o)) for o in get_objects(objects)]
    out = {}
    for name, params in scenes:
        cams = sample_orbit(toy_camera(), 4, RESOLUTION, gen)
        for bg_name, color in BACKGROUNDS.items():
            bg = torch.tensor([color] * 4)
            rgb = render(
                params, cams, RenderConfig(torch_chunk=TORCH_CHUNK), bg, depth=False
            ).rgb  # [4, H, W, 3]
            z = vae.encode(rgb.permute(0, 3, 1, 2) * 2 - 1).latent_dist.mean
            rec = ((vae.decode(z).sample + 1) / 2).clamp(0, 1).permute(0, 2, 3, 1)
            out[f"{name}/{bg_name}"] = {
                "render_rgb": [round(v, 3) for v in rgb.mean((0, 1, 2)).tolist()],
                "roundtrip_rgb": [round(v, 3) for v in rec.mean((0, 1, 2)).tolist()],
                "mse": round(float((rec - rgb).pow(2).mean()), 4),
            }
    out["mean_mse"] = round(sum(r["mse"] for r in out.values()) / len(out), 4)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--weights", type=Path, nargs="+", required=True)
    ap.add_argument("--objects", nargs="*", default=["snowman", "tree", "tower"])
    ap.add_argument("-o", "--output", type=Path, required=True)
    args = ap.parse_args()
    torch.set_num_threads(1)
    result = {str(w): roundtrip(load_prior(w, guidance=7.5).parts.vae, args.objects) for w in args.weights}
    for w, rec in result.items():
        print(w, json.dumps(rec))
    args.output.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
