"""Sweeps and shards of ``toyworld eval``: the arms of ``--sweep``, the slices of ``--shard``, and ``--merge``,
which joins shard folders into one report with a plot of the metrics over the swept values; and the report
itself (medians per method and arm, report.md) that `toyworld eval` and `--merge` both write."""

from __future__ import annotations

import datetime
import itertools
import json
import math
import re
import statistics
from pathlib import Path
from typing import Any

from ..errors import SplatVLMError
from ..files import atomic_write_text

Arm = tuple[str, list[str]]  # (label "k1=v1 k2=v2", the --set items it adds); ("", []) without a sweep


def parse_arms(items: list[str]) -> list[Arm]:
    """``["KEY=V1,V2", ...]`` -> one arm per combination of values, in the given order."""
    if not items:
        return [("", [])]
    axes = []
    for item in items:
        key, sep, values = item.partition("=")
        vals = [v.strip() for v in values.split(",") if v.strip()]
        if not sep or not key or not vals:
            raise SplatVLMError(f"--sweep needs KEY=V1,V2,..., got {item!r}")
        axes.append([f"{key}={v}" for v in vals])
    return [(" ".join(combo), list(combo)) for combo in itertools.product(*axes)]


def parse_shard(text: str) -> tuple[int, int]:
    """ "I/N" -> (I, N) with 0 <= I < N."""
    m = re.fullmatch(r"(\d+)/(\d+)", text.strip())
    if not m or not 0 <= int(m.group(1)) < int(m.group(2)):
        raise SplatVLMError(f"--shard needs I/N with 0 <= I < N, got {text!r}")
    return int(m.group(1)), int(m.group(2))


def run_name(obj: str, method: str, arm: str, seed: int) -> str:
    """The run folder's name: object, method, the arm's values (file-name safe) and seed."""
    tag = re.sub(r"[^A-Za-z0-9.=_-]+", "_", arm.replace(" ", "_"))
    return f"{obj}-{method}" + (f"-{tag}" if tag else "") + f"-s{seed}"


def arm_value(arm: str) -> float | None:
    """The number an arm of one key sweeps (None for no arm, several keys or a non-number)."""
    parts = arm.split()
    if len(parts) != 1:
        return None
    try:
        return float(parts[0].partition("=")[2])
    except ValueError:
        return None


def arm_order(label: str) -> tuple:
    """Sort key of a report label "method [arm]": by method, then the arm's number (no arm first)."""
    method, _, arm = label.partition(" ")
    v = arm_value(arm)
    return (method, arm != "", v if v is not None else math.inf, arm)


def merge(folders: list[Path], out: Path, command: str) -> dict[str, Any]:
    """One report from the eval folders' report.json (the same runs twice is an error); writes out/report.json,
    report.md, the pictures where the runs' scenes are there, and sweep.png when there are arms."""
    reports = []
    for f in folders:
        path = Path(f) / "report.json"
        if not path.is_file():
            raise SplatVLMError(f"--merge {f}: no report.json there")
        reports.append((Path(f), json.loads(path.read_text())))
    results, seen, where = [], set(), {}
    for folder, r in reports:
        for x in r["results"]:
            key = (x["object"], x["method"], x.get("arm", ""), x["seed"])
            if key in seen:
                raise SplatVLMError(f"--merge: run {key} appears twice")
            seen.add(key)
            results.append({**x, "arm": x.get("arm", "")})
            where[key] = folder / "runs" / run_name(*key)
    out.mkdir(parents=True, exist_ok=True)
    devices = sorted({r["device"] for _, r in reports})
    report = {
        "suite": "toyworld",
        "device": ", ".join(devices),
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "command": command,
        "merged": [{"folder": str(f), "command": r["command"], "date": r["date"]} for f, r in reports],
        "results": results,
    }
    pictures(results, where, out)
    if any(x["arm"] for x in results):
        plot(results, out / "sweep.png")
    atomic_write_text(out / "report.json", json.dumps(report, indent=2))
    atomic_write_text(out / "report.md", report_markdown(report))
    return report


def pictures(results: list[dict[str, Any]], where: dict[tuple, Path], out: Path) -> None:
    """<object>.png for every object whose runs' scenes are on disk: the truth, then each label's first seed."""
    import torch

    from ..gaussians.ply import load_ply
    from .scoring import picture
    from .world import get_objects, object_params

    for obj in get_objects(sorted({r["object"] for r in results})):
        rows, done = [object_params(obj)], set()
        for r in sorted(
            (r for r in results if r["object"] == obj.name), key=lambda r: (arm_order(label(r)), r["seed"])
        ):
            ply = where[(r["object"], r["method"], r["arm"], r["seed"])] / "scene.ply"
            if label(r) not in done and ply.is_file():
                rows.append(load_ply(ply))
                done.add(label(r))
        if len(rows) > 1:
            picture(rows, out / f"{obj.name}.png", torch.device("cpu"))


def curves(results: list[dict[str, Any]]) -> dict[str, dict[str, list[tuple[float, float]]]]:
    """{metric: {method: [(swept value, median)]}} over the arms of one numeric key, and {metric: {method + "
    (no arm)": [(nan, median)]}} for a method's runs without an arm; Janus over the front/back objects."""
    out: dict[str, dict[str, list[tuple[float, float]]]] = {"iou": {}, "psnr": {}, "janus": {}}
    groups: dict[tuple[str, float], list[dict]] = {}
    for r in results:
        v = arm_value(r["arm"]) if r["arm"] else math.nan
        if r["arm"] and v is None:
            continue
        groups.setdefault((r["method"], v), []).append(r)
    for (method, v), rs in sorted(
        groups.items(), key=lambda kv: (kv[0][0], -1 if math.isnan(kv[0][1]) else kv[0][1])
    ):
        name = method if not math.isnan(v) else f"{method} (no arm)"
        for metric in out:
            vals = [r[metric] for r in rs if r[metric] is not None and (metric != "janus" or r["front_back"])]
            if vals:
                out[metric].setdefault(name, []).append((v, statistics.median(vals)))
    return out


def plot(results: list[dict[str, Any]], path: Path) -> None:
    """sweep.png: three panels (median IoU, masked PSNR, Janus) over the swept value (log axis when every value
    is positive), a curve per method, the runs without an arm as dashed lines."""
    from PIL import Image, ImageDraw

    data = curves(results)
    xs = sorted({v for c in data.values() for pts in c.values() for v, _ in pts if not math.isnan(v)})
    if not xs:
        return
    log = xs[0] > 0
    fx = (lambda v: math.log10(v)) if log else (lambda v: v)  # noqa: E731
    lo, hi = fx(xs[0]), fx(xs[-1])
    hi = hi if hi > lo else lo + 1
    w, h, pad = 360, 260, 44
    img = Image.new("RGB", (3 * w, h), "white")
    draw = ImageDraw.Draw(img)
    colors = [(31, 119, 180), (214, 39, 40), (44, 160, 44), (148, 103, 189), (255, 127, 14)]
    methods = sorted({m.removesuffix(" (no arm)") for c in data.values() for m in c})
    titles = {"iou": "median IoU", "psnr": "median masked PSNR (dB)", "janus": "median Janus (front/back)"}
    for k, (metric, per) in enumerate(data.items()):
        x0 = k * w
        ys = [y for pts in per.values() for _, y in pts]
        if not ys:
            continue
        ylo, yhi = min(ys), max(ys)
        ylo, yhi = (ylo - 0.05 * (yhi - ylo or 1), yhi + 0.05 * (yhi - ylo or 1))

        def px(v: float, y: float, x0: int = x0, ylo: float = ylo, yhi: float = yhi) -> tuple[float, float]:
            return (
                x0 + pad + (fx(v) - lo) / (hi - lo) * (w - 2 * pad),
                h - pad - (y - ylo) / (yhi - ylo) * (h - 2 * pad),
            )

        draw.rectangle([x0 + pad, pad, x0 + w - pad, h - pad], outline="black")
        draw.text((x0 + pad, 8), titles[metric], fill="black")
        for y in (ylo, yhi):
            draw.text((x0 + 2, px(xs[0], y)[1] - 6), f"{y:.3g}", fill="black")
        for v in xs:
            draw.text((px(v, ylo)[0] - 8, h - pad + 4), f"{v:g}", fill="black")
        draw.text((x0 + w // 2 - 40, h - 18), "swept value" + (" (log)" if log else ""), fill="black")
        for name, pts in per.items():
            color = colors[methods.index(name.removesuffix(" (no arm)")) % len(colors)]
            if name.endswith("(no arm)"):
                y = px(xs[0], pts[0][1])[1]
                for s in range(int(x0 + pad), int(x0 + w - pad), 10):
                    draw.line([(s, y), (s + 5, y)], fill=color, width=2)
                continue
            line = [px(v, y) for v, y in pts]
            if len(line) > 1:
                draw.line(line, fill=color, width=2)
            for cx, cy in line:
                draw.ellipse([cx - 3, cy - 3, cx + 3, cy + 3], fill=color)
        for i, m in enumerate(methods):
            draw.text((x0 + pad + 4, pad + 4 + 12 * i), m, fill=colors[i % len(colors)])
    img.save(path)


def label(result: dict[str, Any]) -> str:
    """A result's method and sweep arm, as the reports name them ("vlm3d weights.vlm.start=100")."""
    return f"{result['method']} {result['arm']}" if result.get("arm") else result["method"]


def summarize(results: list[dict[str, Any]]) -> dict[str, dict[str, float | None]]:
    """Medians per method (and sweep arm): IoU and PSNR over all results, Janus over the front/back objects."""
    out: dict[str, dict[str, float | None]] = {}
    for method in sorted({label(r) for r in results}, key=arm_order):
        rs = [r for r in results if label(r) == method]
        janus = [r["janus"] for r in rs if r["front_back"] and r["janus"] is not None]
        out[method] = {
            "runs": len(rs),
            "median_iou": round(statistics.median(r["iou"] for r in rs), 4),
            "median_psnr": round(statistics.median(r["psnr"] for r in rs), 3),
            "median_janus_front_back": round(statistics.median(janus), 4) if janus else None,
            "mean_janus_front_back": round(statistics.fmean(janus), 4) if janus else None,
            "median_seconds": round(statistics.median(r["seconds"] for r in rs), 1),
        }
    return out


def report_markdown(report: dict[str, Any]) -> str:
    lines = [
        "# Toy world report",
        "",
        f"- date: {report['date']}",
        f"- device: {report['device']}",
        f"- command: `{report['command']}`",
        "",
        "## Medians per method",
        "",
        "| method | runs | median IoU | median masked PSNR (dB) | median Janus (front/back objects) | mean Janus | median s |",
        "|---|---|---|---|---|---|---|",
    ]
    for method, s in summarize(report["results"]).items():
        lines.append(f"| {method} | {s['runs']} | {s['median_iou']} | {s['median_psnr']} | "
                     f"{s['median_janus_front_back']} | {s['mean_janus_front_back']} | {s['median_seconds']} |")  # fmt: skip
    lines += [
        "",
        "## Runs",
        "",
        "| object | method | seed | IoU | PSNR | Janus | Gaussians | s |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in report["results"]:
        lines.append(f"| {r['object']} | {label(r)} | {r['seed']} | {r['iou']} | {r['psnr']} | {r['janus']} | "
                     f"{r['num_gaussians']} | {r['seconds']} |")  # fmt: skip
    lines += ["", "Pictures (`<object>.png`): rows are the ground truth, then each method's (and arm's) first "
              "seed; columns are azimuth 0 (front), 90, 180 (back), 270.", ""]  # fmt: skip
    if any(r.get("arm") for r in report["results"]):
        lines += ["`sweep.png`: median IoU, masked PSNR and Janus (front/back objects) over each swept value, "
                  "one curve per method; dashed: the runs without an arm.", ""]  # fmt: skip
    return "\n".join(lines)
