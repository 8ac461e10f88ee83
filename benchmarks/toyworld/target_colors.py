"""What color the toy prior's SDS pushes the renders toward, for two weight folders.

For the start ball every toy run begins from and for the ground truth (white background, 8 seeded 4-view
camera groups, CFG 7.5 unless --guidance says otherwise, the default x0 rescale), at t in 100 / 300 / 480: the mean color of the decoded
x0-mode target, its MSE against the render, and the mean per-channel descent direction on the render's pixels
(minus the SDS gradient, x 1e4). Written for the neutral-autoencoder experiment (benchmarks/RESULTS.md).

    python benchmarks/toyworld/target_colors.py --weights A B --objects snowman tree -o OUT.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from diagnose import load_prior  # the script's folder is on sys.path

from splatvlm.gaussians.cameras import sample_orbit
from splatvlm.gaussians.render import RenderConfig, render
from splatvlm.guidance.sds import target_loss
from splatvlm.toyworld.models import RESOLUTION, TORCH_CHUNK, start_params, toy_camera
from splatvlm.toyworld.world import get_objects, object_params


def probe(sds, params, t: int, groups: int = 8) -> dict:
    gen = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    descent, colors, errs = [], [], []
    vae = sds.parts.vae
    for _ in range(groups):
        cams = sample_orbit(toy_camera(), 4, RESOLUTION, gen)
        with torch.no_grad():
            rgb = render(params, cams, RenderConfig(torch_chunk=TORCH_CHUNK), torch.ones(4, 3)).rgb
        rgb = rgb.clone().requires_grad_(True)
        z = sds.encode_images(rgb)
        with torch.no_grad():
            cond, uncond = sds.text_embeddings(cams)
            ts = torch.full((8,), t, dtype=torch.long)
            text, labels = torch.cat([cond, uncond]), sds.camera_labels(cams)
            target = sds.sds_target(z.detach(), sds.alphas_cumprod[t], ts, torch.randn(z.shape), text, labels)
            dec = ((vae.decode(target / vae.config.scaling_factor).sample + 1) / 2).clamp(0, 1)
        target_loss(z, target)[0].backward()
        descent.append(-rgb.grad.mean((0, 1, 2)))
        colors.append(dec.mean((0, 2, 3)))
        errs.append(float((dec.permute(0, 2, 3, 1) - rgb.detach()).pow(2).mean()))
    return {
        "descent_rgb_x1e4": [round(v * 1e4, 2) for v in torch.stack(descent).mean(0).tolist()],
        "target_decoded_rgb": [round(v, 2) for v in torch.stack(colors).mean(0).tolist()],
        "target_vs_render_mse": round(sum(errs) / len(errs), 4),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--weights", type=Path, nargs="+", required=True)
    ap.add_argument("--objects", nargs="*", default=["snowman", "tree"])
    ap.add_argument(
        "--guidance", type=float, nargs="+", default=[7.5], help="CFG scales (0: the unconditional x0)"
    )
    ap.add_argument("-o", "--output", type=Path, required=True)
    args = ap.parse_args()
    torch.set_num_threads(1)
    out = {}
    for w in args.weights:
        for cfg_scale in args.guidance:
            sds = load_prior(w, guidance=cfg_scale)
            for obj in get_objects(args.objects):
                sds.set_prompt(obj.caption)
                for scene, params in (("start", start_params(0)), ("truth", object_params(obj))):
                    rec = {f"t{t}": probe(sds, params, t) for t in (100, 300, 480)}
                    key = f"{w}/{obj.name}/{scene}" + ("" if cfg_scale == 7.5 else f"/cfg{cfg_scale:g}")
                    out[key] = rec
                    print(key, json.dumps(rec), flush=True)
    args.output.write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
