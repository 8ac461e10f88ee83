"""The finished runs of an out-dir, their files, and the exports made on demand (.glb, the GPTEval3D folder).

Only files directly inside a finished run folder of the out-dir are ever read or served (a link that leads
out of it is refused), and exports write only into that folder, under its lock, atomically: the mesh through
``outputs.mesh``'s atomic writes, the GPTEval3D folder built aside and renamed into place once complete.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import threading
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import SplatVLMError

Progress = Callable[[float, str], None]
"""(fraction done in [0, 1], what is being done) -> None."""
GPTEVAL3D_METHOD = "splatvlm"
GPTEVAL3D_VIEWS = 120


@dataclass
class FinishedRun:
    """A run folder of the out-dir that holds a finished run (its summary.json)."""

    name: str
    path: Path
    summary: dict[str, Any]

    @property
    def prompt(self) -> str:
        return str(self.summary.get("prompt", ""))

    def label(self) -> str:
        return f"{self.name}: {self.prompt[:60]}"


def finished_runs(out_dir: Path) -> list[FinishedRun]:
    """The out-dir's finished runs, newest first (unreadable summaries are skipped)."""
    runs = []
    for entry in Path(out_dir).iterdir():
        summary_path = entry / "summary.json"
        if entry.name.startswith(".") or entry.is_symlink() or not summary_path.is_file():
            continue
        try:
            summary = json.loads(summary_path.read_text(encoding="utf-8"))
            mtime = summary_path.stat().st_mtime
        except (OSError, ValueError, UnicodeDecodeError):
            continue
        if isinstance(summary, dict) and summary.get("finished"):
            runs.append((mtime, FinishedRun(entry.name, entry, summary)))
    return [run for _, run in sorted(runs, key=lambda r: (-r[0], r[1].name))]


def run_file(run: FinishedRun, name: str) -> Path | None:
    """``name`` directly inside the run folder, when it is a regular file there (not a link out)."""
    root = run.path.resolve()
    path = (root / name).resolve()
    if path.parent != root or not path.is_file():
        return None
    return path


def splat_file(run: FinishedRun) -> Path:
    """The run's splat .ply in its folder: scene.ply (a batch's and the studio's), else its summary's output."""
    output = Path(str(run.summary.get("output", "")))
    for name in ("scene.ply", output.name):
        path = run_file(run, name) if name.endswith(".ply") else None
        if path is not None:
            return path
    raise SplatVLMError(f"{run.path} has no splat .ply of its own")


def read_file(run: FinishedRun, name: str) -> bytes:
    path = run_file(run, name)
    if path is None:
        raise SplatVLMError(f"{run.path} has no {name}")
    return path.read_bytes()


# ---------------------------------------------------------------------------------------------
# exports on demand

_EXPORT_LOCK = threading.Lock()  # one export at a time: each fills the GPU or all CPU cores


def export_glb(run: FinishedRun, progress: Progress) -> Path:
    """``<run>/scene.glb`` (made now unless it exists): geometry, vertex colors, write, reported as they go."""
    from ..files import RunLock
    from ..gaussians.ply import load_ply
    from ..outputs.mesh import MeshConfig, mesh_device, save_mesh, splats_to_geometry
    from ..outputs.mesh_color import color_views, vertex_colors

    target = run.path / (splat_file(run).stem + ".glb")
    existing = run_file(run, target.name)
    if existing is not None:
        progress(1.0, "ready")
        return existing
    with _EXPORT_LOCK, RunLock(run.path):
        cfg = MeshConfig()
        device = mesh_device(cfg.device)
        progress(0.05, "reading the splats")
        params = load_ply(splat_file(run))
        progress(0.1, "surface (density grid, marching cubes)")
        mesh, _ = splats_to_geometry(params, cfg, device)
        progress(0.5, "colors (renders around the object)")
        mesh.visual.vertex_colors = vertex_colors(mesh, color_views(params, mesh, cfg, device), params)
        progress(0.9, "writing the .glb")
        save_mesh(mesh, target)
    progress(1.0, "ready")
    return target


def export_gpteval3d(run: FinishedRun, progress: Progress) -> Path:
    """``<run>/gpteval3d`` (GPTEval3D's <method>/<prompt id>/<seed> tree, 120 views), made now unless it exists.

    Built in ``.gpteval3d.partial`` beside it and renamed when all views are written, so a cut export
    never looks complete; the progress is the count of views written so far.
    """
    from ..config import RunConfig, apply_overrides, read_yaml
    from ..files import RunLock
    from ..gaussians.ply import load_ply
    from ..hub import pick_device
    from ..outputs import export

    final = run.path / "gpteval3d"
    if final.is_dir() and not final.is_symlink():
        progress(1.0, "ready")
        return final
    with _EXPORT_LOCK, RunLock(run.path):
        cfg = RunConfig()
        if run_file(run, "config.yaml") is not None:
            cfg = apply_overrides(RunConfig(), read_yaml(run.path / "config.yaml"))
        partial = run.path / ".gpteval3d.partial"
        if partial.exists():  # an export cut off earlier: ours, start it again
            shutil.rmtree(partial)
        progress(0.02, "reading the splats")
        params = load_ply(splat_file(run))
        done = threading.Event()
        counter = threading.Thread(target=_count_views, args=(partial, done, progress), daemon=True)
        counter.start()
        try:
            export.export_gpteval3d(
                params, partial, GPTEVAL3D_METHOD, 0, max(cfg.seed, 0),
                render_cfg=cfg.render, device=pick_device("auto"), num_views=GPTEVAL3D_VIEWS,
            )  # fmt: skip
        finally:
            done.set()
            counter.join()
        os.rename(partial, final)
    progress(1.0, "ready")
    return final


def _count_views(folder: Path, done: threading.Event, progress: Progress) -> None:
    while not done.wait(0.5):
        n = sum(1 for _ in folder.rglob("rgb_*.png")) if folder.is_dir() else 0
        progress(0.05 + 0.9 * n / GPTEVAL3D_VIEWS, f"{n} of {GPTEVAL3D_VIEWS} views")


def zip_folder(folder: Path) -> bytes:
    """The folder as a zip (paths start with the folder's name); links are left out."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as zf:
        for path in sorted(folder.rglob("*")):
            if path.is_file() and not path.is_symlink():
                zf.write(path, Path(folder.name) / path.relative_to(folder))
    return buffer.getvalue()
