"""Diagnostics of the toy world's haze: which side of a toy run fails, the prior's SDS or the Gaussians.

Checks, scored against the ground truth (the first three with the toy metrics, ``toyworld/metrics.py``):

- ``fit``: the real trainer (``trainer.train``) on the toy run config of the mvdream preset, with the SDS
  term replaced by an L1 term against the ground truth rendered on the same sampled cameras (white
  background). A run that cannot reach the object from photometric supervision cannot reach it from
  SDS: this measures what the scene's initialization, learning rates and densification allow in N steps.
- ``image``: score distillation on a free 4-view image tensor (no Gaussians), one fixed training-like
  camera group, the same ``SDSGuidance`` (toy prior, CFG, x0 mode, rescale, t anneal) as a toy run.
  Scored on the object's mask, estimated as the pixels that differ from the image's border color.
- ``start``: the scene every toy run starts from (the presets' faint ball), scored as a result: what a run
  that changes nothing would score.
- ``drift``: is the ground truth a fixed point of the SDS target? Ground-truth renders (white background) ->
  latents z -> the x0-mode target for t in 200/500/800 and CFG 1/7.5/50; prints |target - z|^2 / |z|^2.
- ``opgrad``: the SDS gradient on the opacities of the start scene against the L1 gradient toward the ground
  truth (same cameras and backgrounds, 16 draws), per timestep range and CFG: cos(mean SDS, mean L1) and
  the per-draw |mean| / std (an Adam step moves a parameter about lr x that ratio).
- ``vae``: the prior's autoencoder: what its zero and mean latents decode to, and the image change when a
  latent is shrunk 0.8x toward the mean (every denoiser's x0 estimate is shrunk where it is unsure), and, per
  pixel, the mean latent's decode against the mean image and the halfway latent's against the halfway blend.

    python benchmarks/toyworld/diagnose.py fit --objects tower table snowman --steps 120 -o DIR [--set K=V]
    python benchmarks/toyworld/diagnose.py image --objects tower table snowman --steps 120 -o DIR [--set K=V]
    python benchmarks/toyworld/diagnose.py start|drift|opgrad|vae -o DIR [--weights DIR]

Writes DIR/<check>.json (one record per object) and DIR/<check>-<object>.png (ground truth over the result).
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch

from splatvlm.config import apply_overrides
from splatvlm.gaussians.cameras import sample_orbit
from splatvlm.gaussians.render import RenderConfig, render
from splatvlm.gaussians.scene import init_ball
from splatvlm.outputs.export import save_png, to_uint8
from splatvlm.run.train_state import new_state
from splatvlm.run.trainer import Term, train
from splatvlm.toyworld import metrics
from splatvlm.toyworld.eval import toy_run_config
from splatvlm.toyworld.models import RESOLUTION, TORCH_CHUNK, WEIGHTS_DIR, toy_camera
from splatvlm.toyworld.scoring import picture, render_white, score
from splatvlm.toyworld.world import get_objects, object_params

DEV = torch.device("cpu")


def fit_one(obj, steps: int, seed: int, extra: list[str]) -> tuple[dict, torch.nn.ParameterDict]:
    cfg = toy_run_config("mvdream", steps, seed, "cpu", WEIGHTS_DIR, extra)
    cfg = apply_overrides(
        cfg, {"background": "white", "weights": {"sds": {"start": 0.0}, "l1": {"start": 1.0}}}
    )
    gt = object_params(obj)

    def l1(rgb: torch.Tensor, cams, step: int) -> dict:
        with torch.no_grad():
            target = render(gt, cams, RenderConfig(torch_chunk=TORCH_CHUNK), torch.ones(len(cams), 3)).rgb
        return {"loss_l1": (rgb - target).abs().mean()}

    torch.manual_seed(seed)
    state = new_state(init_ball(cfg.scene, torch.Generator().manual_seed(seed)), cfg, DEV)
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as d:
        state = train(cfg, state, {"l1": Term(l1, weights=("l1",))}, Path(d), DEV, progress=False)
    s = score(state.params, obj, DEV)
    return {
        **s,
        "num_gaussians": state.params["means"].shape[0],
        "seconds": round(time.perf_counter() - t0, 1),
    }, state.params


def image_one(
    obj, steps: int, seed: int, extra: list[str], lr: float, weights: Path = WEIGHTS_DIR
) -> tuple[dict, torch.Tensor, torch.Tensor]:
    from splatvlm.models import build_prior

    cfg = toy_run_config("mvdream", steps, seed, "cpu", weights, extra)
    sds = build_prior(cfg.sds, DEV)
    sds.set_prompt(obj.caption)
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    cams = sample_orbit(toy_camera(), 4, RESOLUTION, gen)
    # A free image per view, gray plus noise like the runs' start; optimized through a sigmoid.
    logits = (0.3 * torch.randn(4, RESOLUTION, RESOLUTION, 3, generator=gen)).requires_grad_(True)
    opt = torch.optim.Adam([logits], lr=lr)
    t0 = time.perf_counter()
    for step in range(steps):
        out = sds(torch.sigmoid(logits), cams, step)
        opt.zero_grad()
        out["loss_sds"].backward()
        opt.step()
    img = torch.sigmoid(logits).detach()
    gt_rgb, gt_alpha = render_white(object_params(obj), cams, DEV)
    # The result's silhouette: pixels that differ from its own border color (its background).
    border = torch.cat([img[:, 0], img[:, -1], img[:, :, 0], img[:, :, -1]], dim=1)  # [4, 4W, 3]
    bg = border.median(dim=1).values[:, None, None, :]
    alpha = ((img - bg).norm(dim=-1, keepdim=True) > 0.15).float()
    over_white = torch.where(alpha > 0.5, img, torch.ones_like(img))
    rec = {
        "iou": round(metrics.silhouette_iou(alpha, gt_alpha), 4),
        "psnr": round(metrics.masked_psnr(over_white, alpha, gt_rgb, gt_alpha), 3),
        "seconds": round(time.perf_counter() - t0, 1),
    }
    return rec, gt_rgb, img


def start_one(obj, seed: int) -> dict:
    from splatvlm.toyworld.models import start_params

    return score(start_params(seed), obj, DEV)


def load_prior(weights: Path, guidance: float = 50.0, **sds):
    from splatvlm.guidance.sds import SDSConfig
    from splatvlm.models import build_prior

    cfg = SDSConfig(model=str(weights / "prior"), negative_prompt="", guidance_scale=guidance, **sds)
    return build_prior(cfg, DEV)


@torch.no_grad()
def drift_one(obj, seed: int, weights: Path) -> dict:
    from splatvlm.guidance.sds import cfg_combine, x0_target

    sds = load_prior(weights)
    sds.set_prompt(obj.caption)
    gen = torch.Generator().manual_seed(seed)
    cams = sample_orbit(toy_camera(), 4, RESOLUTION, gen)
    rgb = render(object_params(obj), cams, RenderConfig(torch_chunk=TORCH_CHUNK), torch.ones(4, 3)).rgb
    z = sds.encode_images(rgb)
    cond, uncond = sds.text_embeddings(cams)
    text, labels = torch.cat([cond, uncond]), sds.camera_labels(cams)
    out = {}
    for t in (200, 500, 800):
        ab = sds.alphas_cumprod[t]
        acc = {g: 0.0 for g in (1.0, 7.5, 50.0)}
        for _ in range(4):
            noise = torch.randn(z.shape, generator=gen)
            zt = ab.sqrt() * z + (1 - ab).sqrt() * noise
            ec, eu = sds.unet_eps(zt, torch.full((8,), t), text, labels)
            for g in acc:
                target = x0_target(zt, cfg_combine(ec, eu, g), ec, ab, sds.cfg.rescale, 4)
                acc[g] += float((target - z).pow(2).sum() / z.pow(2).sum()) / 4
        out.update({f"t{t}_cfg{g:g}": round(v, 3) for g, v in acc.items()})
    return out


def opgrad_one(obj, seed: int, weights: Path) -> dict:
    from splatvlm.run.trainer import make_backgrounds
    from splatvlm.toyworld.models import start_params

    gt, p = object_params(obj), start_params(seed)
    rc = RenderConfig(torch_chunk=TORCH_CHUNK)
    out = {}
    for g in (7.5, 50.0):
        for lo, hi in ((0.02, 0.5), (0.5, 0.98)):
            sds = load_prior(weights, g, t_min_end=lo, t_max_end=hi, anneal_steps=0)
            sds.set_prompt(obj.caption)
            gen = torch.Generator().manual_seed(seed + 1)
            torch.manual_seed(seed)
            grads: dict[str, list] = {"sds": [], "l1": []}
            for _ in range(16):
                cams = sample_orbit(toy_camera(), 4, RESOLUTION, gen)
                bg = make_backgrounds("random", 4, gen, DEV)
                for which in grads:
                    p["opacities"].grad = None
                    r = render(p, cams, rc, bg)
                    if which == "sds":
                        loss = sds(r.rgb, cams, 0)["loss_sds"]
                    else:
                        with torch.no_grad():
                            target = render(gt, cams, rc, bg).rgb
                        loss = (r.rgb - target).abs().mean()
                    loss.backward()
                    grads[which].append(p["opacities"].grad.clone())
            s, l1 = torch.stack(grads["sds"]), torch.stack(grads["l1"])
            key = f"cfg{g:g}_t{lo}-{hi}"
            out[f"{key}_cos"] = round(
                float(torch.nn.functional.cosine_similarity(s.mean(0), l1.mean(0), dim=0)), 3
            )
            out[f"{key}_snr"] = round(float((s.mean(0) / (s.std(0) + 1e-12)).abs().median()), 3)
        out["l1_snr"] = round(float((l1.mean(0) / (l1.std(0) + 1e-12)).abs().median()), 3)
    return out


@torch.no_grad()
def vae_check(weights: Path) -> dict:
    from diffusers import AutoencoderKL

    from splatvlm.toyworld.models import composite, render_groups
    from splatvlm.toyworld.world import world

    vae = AutoencoderKL.from_pretrained(str(weights / "prior" / "vae"))
    gen = torch.Generator().manual_seed(5)
    data = [render_groups(object_params(o), 2, gen) for o in world()]
    x = composite(torch.cat([d.rgb for d in data]), torch.cat([d.alpha for d in data]), gen)
    x = x.reshape(-1, RESOLUTION, RESOLUTION, 3).permute(0, 3, 1, 2) * 2 - 1
    z = vae.encode(x).latent_dist.mean

    def dec(latent: torch.Tensor) -> torch.Tensor:
        return ((vae.decode(latent).sample + 1) / 2).clamp(0, 1)

    base = dec(z)
    x01, mu = (x + 1) / 2, z.mean(0, keepdim=True)
    return {
        "recon_mse_01": round(float((base - (x + 1) / 2).pow(2).mean()), 4),  # on [0, 1]
        "zero_latent_rgb": [round(v, 2) for v in dec(torch.zeros_like(z[:1])).mean((0, 2, 3)).tolist()],
        "mean_latent_rgb": [round(v, 2) for v in dec(z.mean(0, keepdim=True)).mean((0, 2, 3)).tolist()],
        "mean_image_rgb": [round(v, 2) for v in ((x + 1) / 2).mean((0, 2, 3)).tolist()],
        "shrink0.8_mse": round(float((dec(0.8 * z + 0.2 * z.mean(0, keepdim=True)) - base).pow(2).mean()), 4),
        # per pixel, on [0, 1]: the mean latent against the mean image, and the halfway latent against the
        # halfway blend of each image with the mean image (0 for a decoder that is linear on that path)
        "mean_latent_vs_mean_image_mse": round(float((dec(mu) - x01.mean(0, keepdim=True)).pow(2).mean()), 4),
        "halfway_vs_blend_mse": round(
            float((dec((z + mu) / 2) - (x01 + x01.mean(0, keepdim=True)) / 2).pow(2).mean()), 4
        ),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("check", choices=["fit", "image", "start", "drift", "opgrad", "vae"])
    ap.add_argument(
        "--weights", type=Path, default=WEIGHTS_DIR, help="toy weights (image, drift, opgrad, vae)"
    )
    ap.add_argument("-o", "--output", type=Path, required=True)
    ap.add_argument("--objects", nargs="*", default=["tower", "table", "snowman"])
    ap.add_argument("--steps", type=int, default=120)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--set", nargs="*", default=[], help="overrides of the toy run config, KEY=YAML")
    ap.add_argument("--lr", type=float, default=0.03, help="image check: Adam lr on the image logits")
    args = ap.parse_args()
    torch.set_num_threads(1)
    args.output.mkdir(parents=True, exist_ok=True)
    if args.check == "vae":
        rec = vae_check(args.weights)
        print(json.dumps(rec))
        (args.output / "vae.json").write_text(json.dumps(rec, indent=2))
        return
    records = []
    for obj in get_objects(args.objects):
        if args.check == "fit":
            rec, params = fit_one(obj, args.steps, args.seed, args.set)
            picture([object_params(obj), params], args.output / f"fit-{obj.name}.png", DEV)
        elif args.check == "start":
            rec = start_one(obj, args.seed)
        elif args.check == "drift":
            rec = drift_one(obj, args.seed, args.weights)
        elif args.check == "opgrad":
            rec = opgrad_one(obj, args.seed, args.weights)
        else:
            rec, gt, img = image_one(obj, args.steps, args.seed, args.set, args.lr, args.weights)
            sheet = torch.cat([torch.cat(list(gt), 1), torch.cat(list(img), 1)], 0)
            sheet = sheet.repeat_interleave(3, 0).repeat_interleave(3, 1)
            save_png(to_uint8(sheet[None])[0], args.output / f"image-{obj.name}.png")
        rec = {"object": obj.name, **rec}
        records.append(rec)
        print(json.dumps(rec), flush=True)
    summary = {
        "check": args.check,
        "steps": args.steps,
        "seed": args.seed,
        "set": args.set,
        "weights": str(args.weights),
    }
    if "iou" in records[0]:
        summary["median_iou"] = statistics.median(r["iou"] for r in records)
        summary["median_psnr"] = statistics.median(r["psnr"] for r in records)
        print(f"median IoU {summary['median_iou']:.3f}, median masked PSNR {summary['median_psnr']:.2f}")
    summary["results"] = records
    (args.output / f"{args.check}.json").write_text(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
