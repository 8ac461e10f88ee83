"""Cost of the references' Gaussian-side recipe beside today's `vlm3d`, in one process (models built and compiled
once, so one device call holds more): the full step (`bench --reference`'s quick timing: 300k Gaussians, 8 timed
steps after 2 warm-up per phase) and the whole asset (`bench --full`), random full-size weights, one prompt.

The new recipe is today's `vlm3d` with the flags of NEW (the references' values, as configs/vlm3d-full.yaml sets
them), or with --against before, the preset as it was before it took the references' regularizers, means learning
rate, pruning and elevations (BEFORE); plus --set KEY=YAML overrides (e.g. strategy.grow_grad2d=0.1). The variants
share one loaded prior and reward: only trainer-side fields differ, and the terms are the same.

Parts run in this order, each skipped (and listed as skipped) when it would end past --deadline-s:
    quick   the full step of today, new, and (against the references) new + weights.vlm_mode ratio
    full    the whole asset of each recipe, in --full-order (each about 3 to 4 minutes on an H100)
    ref     the eager reference's full step (`bench --reference`'s path: no compile, no graphs, one stream)
Writes OUT/recipe_cost.json after every part, so a call cut short still returns what it measured.

    . benchmarks/gpu/setup.sh && python3 benchmarks/gpu/recipe_cost.py --out $OUT [--deadline-s 500] [--set K=V ...]
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import time
from dataclasses import replace
from pathlib import Path

import torch

from splatvlm.commands.bench import SHIPPED_PROMPTS, random_weights, reference_config
from splatvlm.commands.bench_timing import cosine, full_step, gradient_probe, run_prompt_full, time_prompt
from splatvlm.commands.generate import Guidance
from splatvlm.config import apply_overrides, apply_set, load_run_config, to_dict, validate_run_config
from splatvlm.files import atomic_write_text
from splatvlm.hub import device_name
from splatvlm.prompts import read_prompts
from splatvlm.resources import check_models_fit

NEW = {  # the references' Gaussian-side values (configs/vlm3d-full.yaml)
    "strategy": {"grad_source": "prior", "prune_scale3d": 0.0},
    "scene": {"lr_means": 1.0e-4, "lr_means_final": 1.0e-5, "lr_means_decay": 0.15},
    "camera": {"elevation_sampling": "mixed"},
    "background": "learned",
    "render": {"shading": "mixed", "shading_after": 0.25},
    "weights": {
        "position": {"start": 10.0},
        "opacity": {"start": 1.0e-3},
        "scales": {"start": 1.0e-3},
        "sparsity": {"start": 10.0},
        "depth_tv": {"start": 10.0},
    },
}
# The quick bench times each phase at its last step; shading from step 0 makes its steps the shaded ones.
QUICK_NEW = {"render": {"shading_after": 0.0}}
BEFORE = {  # `vlm3d` before it took the references' regularizers, means learning rate, pruning and elevations
    "strategy": {"prune_scale3d": 0.1},
    "scene": {"lr_means": 1.0e-3, "lr_means_final": 2.0e-5, "lr_means_decay": 1.0},
    "camera": {"elevation_sampling": "degrees"},
    "weights": {k: {"start": 0.0} for k in ("position", "opacity", "scales", "sparsity", "depth_tv")},
}


def summary(res: dict) -> dict:
    """The numbers a row of the results page needs, from a time_prompt / run_prompt_full result."""
    step = full_step(res)
    keep = (
        "asset_s",
        "load_s",
        "peak_gb",
        "max_gaussians",
        "final_gaussians",
        "bad_steps",
        "steps",
        "time_windows",
    )
    return {
        "full_step_phase": step["label"],
        "full_step_ms": step["step_ms"],
        "per_component_ms": step["per_component_ms"],
        **{k: res[k] for k in keep if k in res},
        "phases": res["phases"],
        **({"gaussians_over_time": res["gaussians_over_time"]} if "gaussians_over_time" in res else {}),
        **({"refinements": res["refinements"]} if "refinements" in res else {}),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path(os.environ.get("OUT", ".")))
    ap.add_argument(
        "--deadline-s", type=float, default=500.0, help="no part starts that would end after this"
    )
    ap.add_argument("--parts", default="quick,full,ref")
    ap.add_argument("--full-order", default="new,today", help="which whole assets run first")
    ap.add_argument(
        "--today-plus",
        nargs="*",
        default=[],
        help="KEY=YAML: also time today's full step with these (quick part)",
    )
    ap.add_argument("--set", nargs="*", default=[], help="KEY=YAML overrides of the new recipe")
    ap.add_argument(
        "--against",
        choices=("references", "before"),
        default="references",
        help="the other recipe: today's preset with the references' values (NEW), or as it was before (BEFORE)",
    )
    ap.add_argument(
        "--no-compile", action="store_true", help="both recipes without torch.compile (faster start)"
    )
    ap.add_argument("--gaussians", type=int, default=300_000)
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--preset", default="vlm3d", help="today's recipe (demo + --device cpu: a smoke test)")
    ap.add_argument("--device", default="cuda")
    args = ap.parse_args()
    t_start = time.perf_counter()
    left = lambda: args.deadline_s - (time.perf_counter() - t_start)  # noqa: E731

    device = torch.device(args.device)
    today = random_weights(replace(load_run_config(args.preset), device=args.device))
    if args.no_compile:
        today = replace(today, sds=replace(today.sds, compile=False, compile_vae=False))
        today = replace(today, vlm=replace(today.vlm, compile=False))
    other = NEW if args.against == "references" else BEFORE
    new = apply_set(apply_overrides(today, other), args.set)
    ratio = apply_overrides(new, {"weights": {"vlm_mode": "ratio"}})
    for cfg in (today, new, ratio):
        validate_run_config(cfg)
    check_models_fit(today, device, device)
    prompt = read_prompts(SHIPPED_PROMPTS)[0]  # `bench --limit 1`'s prompt
    parts = args.parts.split(",")
    report: dict = {
        "device": device_name(device),
        "date": datetime.date.today().isoformat(),
        "torch": torch.__version__,
        "prompt": prompt,
        "no_compile": args.no_compile,
        "against": args.against,
        "new_overrides": other,
        "set": args.set,
        "config_today": to_dict(today),
        "config_new": to_dict(new),
        "skipped": [],
    }
    out = args.out / "recipe_cost"
    out.mkdir(parents=True, exist_ok=True)

    def save() -> None:
        report["wall_s"] = time.perf_counter() - t_start
        atomic_write_text(out / "recipe_cost.json", json.dumps(report, indent=1))

    # 1. One set of models for every variant (the same prior and reward settings).
    t0 = time.perf_counter()
    guidance = Guidance(today, device)
    guidance.terms(prompt)
    report["load_s"] = time.perf_counter() - t0

    # 2. The full step of each recipe, on a scene of the cap's size.
    extrapolated: dict[str, float] = {}
    if "quick" in parts:
        variants = [("today", today), ("new", new)] + [("new_ratio", ratio)] * (args.against == "references")
        if args.today_plus:
            plus = apply_set(today, args.today_plus)
            validate_run_config(plus)
            variants.append(("today_plus", plus))
            report["today_plus"] = args.today_plus
        for name, cfg in variants:
            cfg = apply_overrides(cfg, QUICK_NEW) if name != "today" and args.against == "references" else cfg
            t0 = time.perf_counter()
            (out / "runs" / f"quick_{name}").mkdir(parents=True, exist_ok=True)
            res = time_prompt(prompt, cfg, guidance, out / "runs" / f"quick_{name}", device, args.steps,
                              args.warmup, None, args.gaussians)  # fmt: skip
            report[f"quick_{name}"] = {**summary(res), "part_wall_s": time.perf_counter() - t0}
            extrapolated[name] = res["asset_s"]
            print(f"quick {name}: full step {report[f'quick_{name}']['full_step_ms']:.1f} ms "
                  f"({time.perf_counter() - t0:.0f} s)", flush=True)  # fmt: skip
            save()

    # 3. The whole asset of each, while the deadline allows (estimated from the quick timing, +30%).
    if "full" in parts:
        for name in args.full_order.split(","):
            cfg = {"new": new, "today": today}[name]
            need = 1.3 * extrapolated.get(name, 190.0) + 20.0
            if need > left():
                report["skipped"].append(f"full_{name}: needs ~{need:.0f} s, {left():.0f} s left")
                print(report["skipped"][-1], flush=True)
                continue
            (out / "runs" / f"full_{name}").mkdir(parents=True, exist_ok=True)
            res = run_prompt_full(prompt, cfg, guidance, out / "runs" / f"full_{name}", device)
            report[f"full_{name}"] = summary(res)
            print(
                f"full {name}: asset {res['asset_s']:.1f} s, {res['final_gaussians']:,} Gaussians", flush=True
            )
            save()

    # 4. The eager reference's full step (and the pixel-gradient cosines of our path against it).
    if "ref" in parts:
        if left() < 90:
            report["skipped"].append(f"ref: {left():.0f} s left")
        else:
            probe = gradient_probe(prompt, today, guidance, device)
            del guidance
            if device.type == "cuda":
                torch.cuda.empty_cache()
            ref_cfg = reference_config(today)
            ref = Guidance(ref_cfg, device)
            (out / "runs" / "ref").mkdir(parents=True, exist_ok=True)
            res = time_prompt(prompt, ref_cfg, ref, out / "runs" / "ref", device, args.steps, args.warmup, None,
                              args.gaussians)  # fmt: skip
            report["reference"] = summary(res)
            probe_ref = gradient_probe(prompt, ref_cfg, ref, device)
            report["grad_cosine"] = {k: cosine(probe[k], probe_ref[k]) for k in probe if k in probe_ref}
            print(f"reference: full step {report['reference']['full_step_ms']:.1f} ms", flush=True)
    save()
    print(json.dumps({k: v for k, v in report.items() if not k.startswith("config")}, default=str)[:3000])


if __name__ == "__main__":
    main()
