"""Summarize `bench --full` reports (benchmarks/gpu/whole_run.sh) as RESULTS.md rows and one JSON.

    python benchmarks/gpu/whole_run_summary.py OUT/whole_run/*/report.json --out benchmarks/results/DATE-h200-whole-run.json

Prints, per prompt: measured asset time, model loading, max Gaussians, peak memory, per-phase step
times; then the 2D-gradient quantiles over the refinements, and the thresholds that would have let
about 10% (p90) or 1% (p99) of the seen Gaussians qualify at each refinement (median over refinements),
from which the presets' grow_grad2d is chosen.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("reports", nargs="+", type=Path)
    ap.add_argument("--out", type=Path, default=None, help="combined JSON (rows of every report)")
    args = ap.parse_args()
    rows, refinements = [], []
    for path in args.reports:
        report = json.loads(path.read_text())
        for r in report["ours"]["prompts"]:
            rows.append({"report": str(path), "command": report["command"], "date": report["date"], **r})
            refinements += r.get("refinements", [])
    print("| prompt | full run | asset s | load s | max Gaussians | peak GB | ms/step per phase | device |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        phases = ", ".join(f"{p['label']}: {p['step_ms']:.1f}" for p in r["phases"])
        print(
            f"| {r['prompt'][:40]} | {r['full_run']} | {r['asset_s']:.0f} | {r.get('load_s', 0):.1f} | "
            f"{r['max_gaussians']:,} | {r['peak_gb']:.1f} | {phases} | {r['device']} |"
        )
    grads = [x for x in refinements if "densify_grad_p50" in x]
    if grads:
        print("\n| step | count | grad p50 | p90 | p99 | qualified | grown | split | pruned |")
        print("|---|---|---|---|---|---|---|---|---|")
        for x in grads:
            print(
                f"| {x['step']} | {x['densify_count']:,} | {x['densify_grad_p50']:.3g} | {x['densify_grad_p90']:.3g} | "
                f"{x['densify_grad_p99']:.3g} | {x['densify_qualified']:,} | {x['densify_grown']:,} | "
                f"{x['densify_split']:,} | {x['densify_pruned']:,} |"
            )
        p90 = statistics.median(x["densify_grad_p90"] for x in grads)
        p99 = statistics.median(x["densify_grad_p99"] for x in grads)
        print(
            f"\nmedian over {len(grads)} refinements: p90 {p90:.3g} (~10% qualify), p99 {p99:.3g} (~1% qualify)"
        )
    if args.out:
        args.out.write_text(json.dumps({"rows": rows}, indent=2))
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
