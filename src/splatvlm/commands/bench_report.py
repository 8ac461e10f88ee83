"""The speed benchmark's report: report.md and the per-component breakdown picture, from report.json's fields."""

from __future__ import annotations

import json
import statistics
from pathlib import Path
from typing import Any

from ..files import atomic_path, atomic_write_text
from ..guidance.terms import TERMS

COMPONENTS = ("render", *(spec.name for spec in TERMS), "backward", "densify", "viewer")
PALETTE = ((76, 114, 176), (221, 132, 82), (85, 168, 104), (196, 78, 82), (129, 114, 179), (147, 120, 96),
           (218, 139, 195), (140, 140, 140), (204, 185, 116), (100, 181, 205))  # fmt: skip


def gb(value: float | None) -> str:
    """A peak memory figure; n/a where none was measured (a CPU run)."""
    return "n/a" if value is None else f"{value:.1f} GB"


def report_markdown(report: dict[str, Any]) -> str:
    per_hour = report.get("assets_per_hour")
    rate = f", i.e. {per_hour:.1f} assets/hour per process (model loading excluded)" if per_hour else ""
    lines = [
        f"# splatvlm bench: {report['preset']} ({report['weights']} weights)",
        "",
        f"- device: {report['device']}, torch {report['torch']}, date {report['date']}",
        f"- command: `{report['command']}`",
        f"- full step ({report['full_step_phase']}): **{report['full_step_ms']:.1f} ms** "
        f"({report['it_per_s']:.2f} it/s), peak {gb(report['peak_gb'])}",
        (
            f"- asset time (measured, whole recipe): **{report['asset_s']:.0f} s** (median over prompts), "
            f"max {report['max_gaussians']:,} Gaussians{rate}"
            if report["full_run"]
            else f"- asset time (extrapolated, steps timed at {report['timed_at_gaussians']:,} Gaussians): "
            f"{report['asset_s']:.0f} s (median over prompts){rate}"
        ),
    ]
    if "bench_wall_s" in report:
        # The bench's own pace (warm-up, timing, loading), not an asset rate: given as a time, not per hour.
        lines.append(
            f"- this bench: {len(report['ours']['prompts'])} prompts in {report['bench_wall_s']:.0f} s on "
            f"{report['world_size']} process(es), placement {report['placement']} ({', '.join(report['devices'])}), "
            "model loading included"
        )
    if "viewer_slowdown" in report:
        lines.append(
            f"- with the live viewer (refresh every {report['config_viewer_every']} steps, no browser attached): "
            f"asset {report['viewer_asset_s']:.0f} s, slowdown {100 * report['viewer_slowdown']:.1f}%"
        )
    if report.get("reference_full_step_ms") is not None:
        lines.append(
            f"- reference eager path: {report['reference_full_step_ms']:.1f} ms/step, "
            f"asset {report['reference_asset_s']:.0f} s; speed-up **{report['speedup']:.2f}x**"
        )
    lines += [
        "",
        "| component | ms (full step) |"
        + (" reference ms |" if "reference_per_component_ms" in report else ""),
    ]
    lines.append("|---|---|" + ("---|" if "reference_per_component_ms" in report else ""))
    for c in COMPONENTS:
        row = f"| {c} | {report['per_component_ms'].get(c, 0.0):.1f} |"
        if "reference_per_component_ms" in report:
            row += f" {report['reference_per_component_ms'].get(c, 0.0):.1f} |"
        lines.append(row)
    lines += [
        "",
        "## Per prompt",
        "",
        "| # | prompt | phase | ms/step | it/s | peak GB | #G | asset s |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for n, r in enumerate(report["ours"]["prompts"]):
        for p in r["phases"]:
            peak = "n/a" if p["peak_gb"] is None else f"{p['peak_gb']:.1f}"
            lines.append(
                f"| {r.get('index', n)} | {r['prompt'][:40]} | {p['label']} | {p['step_ms']:.1f} | {p['it_per_s']:.2f} | "
                f"{peak} | {p['num_gaussians']} | {r['asset_s']:.0f} |"
            )
    if report["full_run"]:
        lines += ["", "## Gaussians over time", "", "| # | step: count |", "|---|---|"]
        for n, r in enumerate(report["ours"]["prompts"]):
            series = ", ".join(f"{s}: {c:,}" for s, c in r["gaussians_over_time"])
            lines.append(f"| {r.get('index', n)} | {series} |")
    lines.append("")
    lines.append((report["measured"] if report["full_run"] else report["extrapolated"]) + ".")
    return "\n".join(lines) + "\n"


def phase_medians(prompts: list[dict[str, Any]]) -> list[tuple[str, float, dict[str, float]]]:
    """Per phase (in recipe order): its label, the median over prompts of its step time and of each
    component's time. The statistic report.md gives, so that the picture and the text agree."""
    labels = list(dict.fromkeys(p["label"] for r in prompts for p in r["phases"]))
    rows = []
    for label in labels:
        phases = [p for r in prompts for p in r["phases"] if p["label"] == label]
        comps = {c: statistics.median(p["per_component_ms"].get(c, 0.0) for p in phases) for c in COMPONENTS}
        rows.append((label, statistics.median(p["step_ms"] for p in phases), comps))
    return rows


def save_breakdown_png(report: dict[str, Any], path: Path) -> None:
    """Stacked horizontal bars of the per-component ms of each timed phase (ours, and the reference), each
    the median over the prompts, labelled with the phase's median step time."""
    from PIL import Image, ImageDraw

    colors = {c: PALETTE[i % len(PALETTE)] for i, c in enumerate(COMPONENTS)}
    rows: list[tuple[str, float, dict[str, float]]] = []
    for name in ("ours", "reference"):
        if name in report:
            rows += [(f"{name} {label}", ms, c) for label, ms, c in phase_medians(report[name]["prompts"])]
    total_max = max((max(sum(c.values()), ms) for _, ms, c in rows), default=1.0) or 1.0
    w, row_h, left, top = 900, 34, 230, 40
    img = Image.new("RGB", (w, top + row_h * len(rows) + 60), "white")
    d = ImageDraw.Draw(img)
    count = len(report["ours"]["prompts"])
    title = f"ms per step by component, median over {count} prompt(s) ({report['device']}); number: step ms"
    d.text((10, 10), title, fill="black")
    scale = (w - left - 80) / total_max
    for i, (label, step_ms, comps) in enumerate(rows):
        y = top + i * row_h
        d.text((10, y + 8), label[:34], fill="black")
        x = left
        for c in COMPONENTS:
            length = comps.get(c, 0.0) * scale
            if length > 0:
                d.rectangle([x, y + 4, x + length, y + row_h - 6], fill=colors[c])
                x += length
        d.text((x + 6, y + 8), f"{step_ms:.1f}", fill="black")
    y = top + row_h * len(rows) + 15
    x = 10
    for c in COMPONENTS:
        d.rectangle([x, y, x + 14, y + 14], fill=colors[c])
        d.text((x + 18, y + 2), c, fill="black")
        x += 110
    with atomic_path(path) as tmp:
        img.save(tmp, format="PNG")


def write_report(path: str | Path, report: dict[str, Any]) -> Path:
    """Write a benchmark's JSON report atomically, with its provenance: the date, the command that ran it and
    the library versions (fields the report already has are kept); the folder is made if missing. Every benchmark
    script writes through this."""
    import datetime
    import shlex
    import sys

    import torch

    report = dict(report)
    report.setdefault("date", datetime.date.today().isoformat())
    report.setdefault("command", " ".join(shlex.quote(a) for a in [Path(sys.argv[0]).name, *sys.argv[1:]]))
    report.setdefault("torch", torch.__version__)
    for lib in ("transformers", "diffusers", "gsplat"):
        try:
            module = __import__(lib)
        except ImportError:
            continue
        report.setdefault(lib, getattr(module, "__version__", "?"))
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(Path(path), json.dumps(report, indent=2) + "\n")
    return Path(path)
