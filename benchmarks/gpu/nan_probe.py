"""Where a non-finite step comes from: each loss term of a preset alone, its pixel gradient, and a few
trainer steps, with random full-size weights (or the demo models on CPU).

The first `bench --full --preset vlm3d --weights random` on the H200 (2026-12-01) stopped at step 20:
every step had a NaN/inf loss or gradient. This probe checks, at the first step of every recipe phase,
the render, each term's loss and d loss / d pixels, for the SDS prior in fp16 (graph and eager) and bf16,
then three trainer steps with the terms on two streams and on one.

    . benchmarks/gpu/setup.sh && python3 benchmarks/gpu/nan_probe.py --out $OUT/nan_probe.json
    python benchmarks/gpu/nan_probe.py --device cpu --demo --out /tmp/nan_probe.json   # CPU smoke
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import torch

from splatvlm.commands.bench import random_weights, recipe_phases
from splatvlm.commands.generate import Guidance
from splatvlm.config import load_run_config
from splatvlm.gaussians.render import render
from splatvlm.gaussians.scene import init_ball
from splatvlm.models import build_prior
from splatvlm.run.train_state import new_state
from splatvlm.run.trainer import default_view_sampler, make_backgrounds, train


def stats(x: torch.Tensor) -> dict:
    x = x.detach().float()
    finite = torch.isfinite(x)
    return {
        "finite": bool(finite.all()),
        "nonfinite": int((~finite).sum()),
        "absmax": float(x[finite].abs().max()) if finite.any() else None,
        "norm": float(x[finite].norm()) if finite.any() else None,
    }


def probe_term(fn, rgb: torch.Tensor, cams, step: int) -> dict:
    x = rgb.detach().clone().requires_grad_(True)
    out = fn(x, cams, step)
    losses = {k: v for k, v in out.items() if k.startswith("loss_")}
    rec = {k: stats(v) | {"value": float(v.detach())} for k, v in losses.items()}
    total = sum(losses.values())
    (grad,) = torch.autograd.grad(total, x, allow_unused=True)
    rec["pixel_grad"] = stats(grad) if grad is not None else None
    rec["diagnostics"] = {
        k: float(v.detach().float().mean())
        for k, v in out.items()
        if not k.startswith("loss_") and torch.is_tensor(v)
    }
    return rec


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--preset", default="vlm3d")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--demo", action="store_true", help="the tiny demo models instead of full-size random")
    ap.add_argument("--out", default="nan_probe.json")
    args = ap.parse_args()
    device = torch.device(args.device)
    cfg = load_run_config(args.preset)
    cfg = replace(cfg, device=args.device)
    if args.demo:
        cfg = replace(cfg, sds=replace(cfg.sds, model="demo"), vlm=replace(cfg.vlm, model="demo"))
    else:
        cfg = random_weights(cfg)
    prompt = "a DSLR photo of a corgi wearing a top hat"
    report: dict = {"preset": args.preset, "device": str(device), "checks": [], "train": []}
    t0 = time.perf_counter()
    guidance = Guidance(cfg, device)
    terms = guidance.terms(prompt)
    report["load_s"] = time.perf_counter() - t0
    extra = {}
    if device.type == "cuda":
        sds_bf16 = build_prior(replace(cfg.sds, dtype="bfloat16"), device)
        sds_bf16.set_prompt(prompt)
        extra["sds_bf16"] = sds_bf16
    gen = torch.Generator().manual_seed(0)
    params = init_ball(cfg.scene, torch.Generator().manual_seed(cfg.seed)).to(device)
    sampler = default_view_sampler(cfg)
    for phase in recipe_phases(cfg):
        step = phase.start
        cams = sampler(step, gen).to(device)
        bg = make_backgrounds(cfg.background, len(cams), gen, device)
        out = render(params, cams, cfg.render, bg)
        row = {"phase": phase.label, "step": step, "views": len(cams), "rgb": stats(out.rgb)}
        rgb = out.rgb.detach()
        for name, term in terms.items():
            r = rgb if term.num_views is None else rgb[: term.num_views]
            c = cams if term.num_views is None else cams[: term.num_views]
            try:
                row[name] = probe_term(term.fn, r, c, step)
                if name == "sds" and device.type == "cuda":
                    term.fn.cfg.cuda_graph = False
                    row["sds_fp16_eager"] = probe_term(term.fn, r, c, step)
                    term.fn.cfg.cuda_graph = True
            except Exception as e:  # noqa: BLE001 - a probe reports every failure
                row[name] = {"error": f"{type(e).__name__}: {e}"}
        for name, fn in extra.items():
            row[name] = probe_term(fn, rgb, cams, step)
        # The Gaussians' gradient from a unit upstream gradient (the rasterizer's backward alone).
        leaf = torch.nn.ParameterDict({k: torch.nn.Parameter(v.detach().clone()) for k, v in params.items()})
        render(leaf, cams, cfg.render, bg).rgb.sum().backward()
        row["render_grads"] = {k: stats(v.grad) for k, v in leaf.items() if v.grad is not None}
        print(json.dumps(row), flush=True)
        report["checks"].append(row)
    for parallel in (True, False):
        run_cfg = replace(cfg, parallel_terms=parallel, steps=4, checkpoint_every=0, log_every=1)
        torch.manual_seed(cfg.seed)
        state = new_state(init_ball(cfg.scene, torch.Generator().manual_seed(cfg.seed)), run_cfg, device)
        rows: list[dict] = []
        with tempfile.TemporaryDirectory() as d:
            try:
                train(
                    run_cfg,
                    state,
                    terms,
                    Path(d),
                    device,
                    progress=False,
                    on_step=lambda s, logs, rows=rows: rows.append(dict(logs)),
                )
            except Exception as e:  # noqa: BLE001
                rows.append({"error": f"{type(e).__name__}: {e}"})
        keep = [
            {k: v for k, v in r.items() if k.startswith(("loss", "bad", "step", "error", "vlm_", "sds_"))}
            for r in rows
        ]
        print(json.dumps({"parallel": parallel, "rows": keep}), flush=True)
        report["train"].append({"parallel": parallel, "rows": keep})
    with open(args.out, "w") as f:
        json.dump(report, f, indent=1)


if __name__ == "__main__":
    main()
