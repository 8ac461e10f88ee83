"""Which presets the studio offers: the text-to-3D presets whose models resolve on this machine, each with
what one asset measured (time and memory), so a user knows what a click costs before making it."""

from __future__ import annotations

from dataclasses import dataclass, replace

from ..config import RunConfig, list_presets, load_run_config, preset_description, validate_run_config
from ..errors import SplatVLMError
from ..run.schedules import terms_active

# One asset of each preset, measured end to end (the preset's full step count, random full-size weights).
# A preset missing here shows "not measured": only measured numbers are shown, never estimates.
# The numbers and their sources are on the results page (benchmarks/RESULTS.md, "Time per asset").
MEASURED: dict[str, str] = {
    "vlm3d": "255 s, 21.0 GB peak (one H100, first prompt on a fresh machine)",
    "vlm3d-3b": "197 s, 12.2 GB peak (one H200)",
    "mvdream": "229 s, 5.8 GB peak (one H200, an earlier version of the recipe)",
    "sd21": "332 s, 7.4 GB peak (one H200)",
    "demo": "25-30 s on 2 idle CPU cores, no GPU",
}


NOT_TEXT_TO_3D = "no text guidance (not a text-to-3D preset)"


@dataclass
class PresetInfo:
    """A preset as the picker shows it."""

    name: str
    description: str
    measured: str  # time and memory of one asset, or "not measured"
    available: bool
    reason: str = ""  # why it is not available


def preset_config(name: str, seed: int = 0, steps: int | None = None) -> RunConfig:
    """The run config of a studio job: the preset, with the job's seed (and step count, when given)."""
    cfg = replace(load_run_config(name), seed=seed)
    if steps is not None:
        cfg = replace(cfg, steps=steps)
    validate_run_config(cfg)
    return cfg


def check_preset(name: str) -> str:
    """'' when the preset makes text-to-3D and its models resolve here; else why not, in one line."""
    from ..commands.generate import check_sources

    try:
        cfg = preset_config(name)
        active = terms_active(cfg)
        if not (active["sds"] or active["vlm"]):
            return NOT_TEXT_TO_3D
        check_sources(cfg, [])
    except SplatVLMError as e:
        return str(e)
    return ""


def scan_presets() -> list[PresetInfo]:
    """Every text-to-3D preset, checked (this loads tokenizers and configs, never weights)."""
    out = []
    for name in list_presets():
        reason = check_preset(name)
        if reason == NOT_TEXT_TO_3D:
            continue
        try:
            description = preset_description(name)
        except SplatVLMError:
            description = ""
        out.append(PresetInfo(name, description, MEASURED.get(name, "not measured"), not reason, reason))
    return out


def preset_table(presets: list[PresetInfo]) -> str:
    """Markdown: the offered presets with what they measured, then the others with why they are not offered."""
    rows = ["| preset | one asset |", "|---|---|"]
    rows += [f"| {p.name} | {p.measured} |" for p in presets if p.available]
    missing = [p for p in presets if not p.available]
    if missing:
        rows.append("")
        rows.append("Not offered here (models not found): " + ", ".join(p.name for p in missing))
    return "\n".join(rows)
