"""Samples of the toy prior: what the multi-view model draws from noise for each caption, beside the truth.

DDIM from pure noise on the toy world's 4 side cameras, with classifier-free guidance against the empty
caption; one PNG (rows: ground truth over white, then the prior's sample, per object). A check of the prior
alone, before any score distillation: a prior whose samples are not the objects cannot carry an SDS run.

    python benchmarks/toyworld/prior_samples.py -o samples.png [--weights DIR] [--guidance 7.5] [--steps 30]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from splatvlm.guidance.sds import SDSConfig, SDSGuidance
from splatvlm.models import build_prior
from splatvlm.outputs.export import save_png, to_uint8
from splatvlm.toyworld.models import WEIGHTS_DIR
from splatvlm.toyworld.scoring import render_white, side_cameras
from splatvlm.toyworld.world import get_objects, object_params


@torch.no_grad()
def sample(sds: SDSGuidance, caption: str, guidance: float, steps: int, gen: torch.Generator) -> torch.Tensor:
    """One 4-view sample [4, H, W, 3] in [0, 1] for ``caption`` on the side cameras."""
    from diffusers import DDIMScheduler

    parts = sds.parts
    sched = DDIMScheduler.from_config(parts.scheduler.config)
    sched.set_timesteps(steps)
    cams = side_cameras()
    sds.set_prompt(caption)
    cond, uncond = sds.text_embeddings(cams)
    text = torch.cat([cond, uncond])
    labels = sds.camera_labels(cams)
    r = sds.latent_resolution
    z = torch.randn(4, parts.vae.config.latent_channels, r, r, generator=gen)
    for t in sched.timesteps:
        eps_c, eps_u = sds.unet_eps(z, torch.full((8,), int(t), dtype=torch.long), text, labels)
        z = sched.step(eps_u + guidance * (eps_c - eps_u), t, z).prev_sample
    x = parts.vae.decode(z / parts.vae.config.scaling_factor).sample
    return ((x.permute(0, 2, 3, 1) + 1) / 2).clamp(0, 1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-o", "--output", type=Path, required=True)
    ap.add_argument("--weights", type=Path, default=WEIGHTS_DIR)
    ap.add_argument("--guidance", type=float, default=7.5)
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--objects", nargs="*", default=[])
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    torch.set_num_threads(1)
    sds = build_prior(SDSConfig(model=str(args.weights / "prior"), negative_prompt=""), "cpu")
    gen = torch.Generator().manual_seed(args.seed)
    rows = []
    for obj in get_objects(args.objects):
        gt, _ = render_white(object_params(obj), side_cameras(), torch.device("cpu"))
        rows += [
            torch.cat(list(gt), 1),
            torch.cat(list(sample(sds, obj.caption, args.guidance, args.steps, gen)), 1),
        ]
    sheet = torch.cat(rows, 0).repeat_interleave(2, 0).repeat_interleave(2, 1)
    save_png(to_uint8(sheet[None])[0], args.output)
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
