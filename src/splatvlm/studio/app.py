"""The studio's web app on viser: Make (prompt, preset, seed, the queue), Watch (the running job live) and
Gallery (finished runs, downloads), over one guarded viser server.

The server is the live viewer's (``viewer/guard.py``): websocket handshakes from other sites' pages are refused,
the share tunnel is off unless asked for, and a server bound beyond loopback also wants the token printed at
start in its URL. Every text that came from a user or a file is escaped before it reaches the page (viser
renders markdown and HTML without sanitizing). GUI callbacks run on viser's threads; training runs on the
runner's; splat uploads on the uploader's, so neither the trainer nor the GUI waits for the other.
"""

from __future__ import annotations

import base64
import contextlib
import html
import io
import re
import secrets
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import SplatVLMError
from ..run.progress import clock
from ..viewer.server import look_from_turntable, push_curves
from .gallery import (
    FinishedRun,
    export_glb,
    export_gpteval3d,
    finished_runs,
    read_file,
    splat_file,
    zip_folder,
)
from .live import LiveRun
from .presets import PresetInfo, preset_table, scan_presets
from .queue import JobQueue
from .runner import Runner

MAX_TURNTABLE_BYTES = 8 << 20  # larger turntables are not inlined in the page (a download link would be)
_NONE = "(none)"


@dataclass
class StudioConfig:
    """Serve the studio: queue prompts in the browser, watch each run form live, download the results."""

    out_dir: Path
    """Folder of the studio's run folders and its queue file (made if missing); finished runs in it form the gallery."""
    host: str = "127.0.0.1"
    """Address to listen on; anything but loopback also requires the token printed at start in the URL."""
    port: int = 8080
    """Port to listen on (the next free one is used if it is busy; 0 lets the OS pick)."""
    preset: str | None = None
    """The preset picked at start (default: vlm3d when its models resolve here, else the first that does)."""
    steps: int | None = None
    """Training steps of every job queued from now on (default: each preset's own); few steps: a quick look."""
    share: bool = False
    """Honour viser's "share" request (a public tunnel through share.viser.studio); off: ignored."""


def md(text: str) -> str:
    """``text`` safe inside markdown (and so inside HTML): no tags, no markdown syntax, one line."""
    text = html.escape(" ".join(str(text).split()), quote=True)
    return re.sub(r"([\\`*_{}\[\]()#+!|~>-])", r"\\\1", text)


class Studio:
    """The app: a guarded viser server, the queue, its runner, and the three tabs."""

    def __init__(self, cfg: StudioConfig, presets: list[PresetInfo] | None = None):
        from ..files import RunLock, check_output_dir
        from ..viewer.guard import check_bindable, guarded_server, is_loopback, url

        # 1. Inputs, then the out-dir (one studio or batch at a time) and its queue.
        if not 0 <= cfg.port <= 65535:
            raise SplatVLMError(f"--port must be in 0..65535, got {cfg.port}")
        if cfg.steps is not None and cfg.steps <= 0:
            raise SplatVLMError(f"--steps must be positive, got {cfg.steps}")
        self.cfg = cfg
        if presets is None:
            print("studio: checking which presets' models resolve here ...", file=sys.stderr, flush=True)
            presets = scan_presets()
        self.presets = presets
        self.offered = [p.name for p in self.presets if p.available]
        for p in self.presets:
            if not p.available:
                print(f"studio: preset {p.name} not offered: {p.reason}", file=sys.stderr, flush=True)
        if not self.offered:
            raise SplatVLMError("no preset's models resolve on this machine (`splatvlm presets` lists them)")
        if cfg.preset is not None and cfg.preset not in self.offered:
            why = next((p.reason for p in self.presets if p.name == cfg.preset), "unknown preset")
            raise SplatVLMError(f"--preset {cfg.preset} cannot run here: {why}")
        self.out_dir = check_output_dir(cfg.out_dir)
        self._out_lock = RunLock(self.out_dir, "batch folder").acquire()
        try:
            self.queue = JobQueue(self.out_dir)
            # 2. The server: the viewer's guard, plus a token when others can reach it.
            self.token = None if is_loopback(cfg.host) else secrets.token_urlsafe(18)
            port_free = check_bindable(cfg.host, cfg.port)
            import viser

            self._viser = viser
            self.server = guarded_server(viser, cfg.host, cfg.port, cfg.share, token=self.token)
        except BaseException:
            self._out_lock.release()
            raise
        self.url = url(cfg.host, self.server.get_port()) + (f"/{self.token}" if self.token else "")
        if not port_free:
            print(f"studio: port {cfg.port} is busy, using {self.server.get_port()}", flush=True)
        self.server.scene.set_up_direction("+z")
        look_from_turntable(self.server)

        # 3. State shared by the GUI's threads, the runner's and the uploader's.
        self._lock = threading.RLock()
        self._live_splats: dict[str, np.ndarray] | None = None
        self._showing: str = "live"  # or the name of the gallery run shown
        self._plots: dict[str, Any] = {}
        self._job_ids: dict[str, str] = {}  # queue dropdown label -> job id
        self._runs: dict[str, FinishedRun] = {}  # gallery dropdown label -> run
        self._uploader = _Uploader(self.server)
        self._closed = False

        # 4. GUI, then the runner.
        self._build_gui()
        self.runner = Runner(self.queue, display=self, on_change=self._on_runner_change)
        self.refresh_queue()
        self.refresh_gallery()
        self.runner.start()

    # ------------------------------------------------------------------ GUI

    def _build_gui(self) -> None:
        gui = self.server.gui
        with contextlib.suppress(Exception):  # cosmetic only
            gui.configure_theme(control_width="large", show_share_button=self.cfg.share)
        tabs = gui.add_tab_group()
        with tabs.add_tab("Make"):
            self._gui_prompt = gui.add_text("Prompt", "", hint="What to make, e.g. a ceramic teapot")
            start = self.cfg.preset or ("vlm3d" if "vlm3d" in self.offered else self.offered[0])
            self._gui_preset = gui.add_dropdown("Preset", self.offered, initial_value=start)
            self._gui_seed = gui.add_number("Seed", 0, min=0, max=2**31 - 1, step=1)
            self._gui_generate = gui.add_button("Generate", hint="Check the prompt and add it to the queue")
            gui.add_markdown(preset_table(self.presets))
            gui.add_divider()
            self._gui_queue = gui.add_markdown("")
            self._gui_job = gui.add_dropdown("Job", [_NONE])
            self._gui_up = gui.add_button("Move up")
            self._gui_down = gui.add_button("Move down")
            self._gui_cancel = gui.add_button(
                "Cancel", hint="Take a waiting, stopped or failed job off the queue"
            )
            self._gui_requeue = gui.add_button(
                "Queue again", hint="A stopped job resumes from its checkpoint"
            )
        with tabs.add_tab("Watch"):
            self._gui_now = gui.add_markdown("Nothing is running.")
            self._gui_bar = gui.add_progress_bar(0.0)
            self._gui_step = gui.add_text("Step", "-", disabled=True)
            self._gui_eta = gui.add_text("ETA", "-", disabled=True)
            self._gui_loss = gui.add_text("Loss", "-", disabled=True)
            self._gui_p_yes = gui.add_text("p(Yes)", "-", disabled=True)
            self._gui_gaussians = gui.add_text("#Gaussians", "-", disabled=True)
            self._gui_pause = gui.add_checkbox("Pause", False, hint="Pause training after the current step")
            self._gui_stop = gui.add_button(
                "Stop", hint="End the run here with a checkpoint (Queue again resumes)"
            )
            self._gui_save = gui.add_button(
                "Save .ply now", hint="Write snapshot_<step>.ply in the run folder"
            )
            self._gui_show_live = gui.add_button("Show the live run", hint="Back from a gallery asset")
            self._curves = gui.add_folder("Curves")
        with tabs.add_tab("Gallery"):
            self._gui_run = gui.add_dropdown("Run", [_NONE])
            self._gui_refresh = gui.add_button("Refresh")
            self._gui_run_info = gui.add_markdown("")
            self._gui_contact = gui.add_image(np.full((8, 8, 3), 255, np.uint8), label="Contact sheet")
            self._gui_turntable = gui.add_html("")
            self._gui_open = gui.add_button("Orbit it live", hint="Show this asset's splats in the 3D view")
            self._gui_get_ply = gui.add_button("Download .ply")
            self._gui_get_glb = gui.add_button(
                "Download .glb", hint="A colored mesh, exported now if not yet"
            )
            self._gui_get_zip = gui.add_button(
                "Download GPTEval3D .zip", hint="120 views, rgb and normal (rendered now if not yet)"
            )
            self._gui_export_bar = gui.add_progress_bar(0.0, visible=False)
            self._gui_export_note = gui.add_markdown("")

        self._gui_generate.on_click(self._guarded(self._on_generate))
        self._gui_up.on_click(self._guarded(lambda e: self._move(-1)))
        self._gui_down.on_click(self._guarded(lambda e: self._move(+1)))
        self._gui_cancel.on_click(self._guarded(self._on_cancel))
        self._gui_requeue.on_click(self._guarded(self._on_requeue))
        self._gui_pause.on_update(self._guarded(self._on_pause))
        self._gui_stop.on_click(self._guarded(self._on_stop))
        self._gui_save.on_click(self._guarded(self._on_save))
        self._gui_show_live.on_click(self._guarded(lambda e: self.show_live()))
        self._gui_refresh.on_click(self._guarded(lambda e: self.refresh_gallery()))
        self._gui_run.on_update(self._guarded(lambda e: self._show_run_card()))
        self._gui_open.on_click(self._guarded(self._on_open))
        self._gui_get_ply.on_click(self._guarded(self._on_get_ply))
        self._gui_get_glb.on_click(self._guarded(lambda e: self._export(e, "glb")))
        self._gui_get_zip.on_click(self._guarded(lambda e: self._export(e, "zip")))

    def _guarded(self, fn):
        """A GUI callback whose expected errors reach the user as a notification (and the terminal)."""

        def call(event: Any) -> None:
            try:
                fn(event)
            except Exception as e:
                msg = str(e) if isinstance(e, SplatVLMError) else f"{type(e).__name__}: {e}"
                print(f"studio: {msg}", file=sys.stderr, flush=True)
                client = getattr(event, "client", None)
                if client is not None:
                    client.add_notification("Not done", msg, color="red", auto_close_seconds=10.0)

        return call

    # ------------------------------------------------------------------ Make

    def enqueue(self, prompt: str, preset: str, seed: int = 0) -> str:
        """Check and queue a prompt (what Generate does); returns the job's run folder name."""
        if preset not in self.offered:
            raise SplatVLMError(
                f"preset {preset!r} is not offered here; choose one of {', '.join(self.offered)}"
            )
        if not isinstance(seed, int) or seed < 0:
            raise SplatVLMError(f"the seed must be a non-negative integer, got {seed!r}")
        job = self.queue.add(prompt, preset, seed, self.cfg.steps)
        self.refresh_queue()
        self.runner.wake()
        return job.id

    def _on_generate(self, event: Any) -> None:
        seed = self._gui_seed.value
        if not float(seed).is_integer():
            raise SplatVLMError(f"the seed must be a whole number, got {seed}")
        job_id = self.enqueue(self._gui_prompt.value, self._gui_preset.value, int(seed))
        self._gui_prompt.value = ""
        event.client.add_notification("Queued", job_id, auto_close_seconds=4.0)

    def _selected_job(self) -> str:
        job_id = self._job_ids.get(self._gui_job.value)
        if job_id is None:
            raise SplatVLMError("pick a job first")
        return job_id

    def _move(self, offset: int) -> None:
        self.queue.move(self._selected_job(), offset)
        self.refresh_queue()

    def _on_cancel(self, event: Any) -> None:
        job = self.queue.cancel(self._selected_job())
        self.refresh_queue()
        event.client.add_notification("Cancelled", job.id, auto_close_seconds=4.0)

    def _on_requeue(self, event: Any) -> None:
        self.queue.requeue(self._selected_job())
        self.refresh_queue()
        self.runner.wake()

    def refresh_queue(self) -> None:
        """The queue's table and its dropdown, from the queue file's state."""
        with self._lock:
            jobs = self.queue.jobs
            rows = ["**Queue**", "", "| # | job | preset | seed | state |", "|---|---|---|---|---|"]
            for i, job in enumerate(jobs):
                state = job.state + (f": {md(job.error[:120])}" if job.error else "")
                rows.append(f"| {i + 1} | {md(job.id)} | {md(job.preset)} | {job.seed} | {state} |")
            if not jobs:
                rows.append("| | empty | | | |")
            self._gui_queue.content = "\n".join(rows)
            labels = {f"{i + 1}. {job.id} ({job.state})": job.id for i, job in enumerate(jobs)}
            previous = self._job_ids.get(self._gui_job.value)
            self._job_ids = labels
            self._gui_job.options = list(labels) or [_NONE]
            keep = next((label for label, job_id in labels.items() if job_id == previous), None)
            self._gui_job.value = keep or next(iter(labels), _NONE)

    # ------------------------------------------------------------------ Watch (the runner's display)

    def show_numbers(self, live: LiveRun) -> None:
        m = live.metrics
        self._gui_step.value = f"{live.steps_done} / {live.total_steps}"
        self._gui_bar.value = 100.0 * live.steps_done / max(live.total_steps, 1)
        eta = live.eta_s
        self._gui_eta.value = clock(eta) if eta is not None else "-"
        if "loss" in m:
            self._gui_loss.value = f"{m['loss']:.5g}"
        if "p_yes" in m:
            self._gui_p_yes.value = f"{m['p_yes']:.3f}"
        if "num_gaussians" in m:
            self._gui_gaussians.value = f"{int(m['num_gaussians']):,}"

    def show_curves(self, live: LiveRun) -> None:
        with self._lock:
            push_curves(self.server, self._curves, live.curves, self._plots)

    def show_splats(self, splats: dict[str, np.ndarray]) -> None:
        with self._lock:
            self._live_splats = splats
            if self._showing == "live":
                self._uploader.put("/live", splats)

    def _on_runner_change(self) -> None:
        """A job started or ended: the Watch tab's header and controls, the queue, the gallery."""
        current = self.runner.current
        with self._lock:
            if current is None:  # the last job's numbers, curves and splats stay on show until the next
                last = self.runner.last
                self._gui_now.content = "Nothing is running." + (
                    f" Last: {md(last[0].id)}: {md(last[0].prompt)}, **{last[1]}**"
                    if last is not None
                    else ""
                )
                self._gui_pause.value = False
            else:
                job, _ = current
                self._gui_now.content = (
                    f"**Running** {md(job.id)}: {md(job.prompt)} ({md(job.preset)}, seed {job.seed})"
                )
                for plot in self._plots.values():
                    plot.remove()
                self._plots = {}
                self._gui_bar.value = 0.0
                for handle in (
                    self._gui_step,
                    self._gui_eta,
                    self._gui_loss,
                    self._gui_p_yes,
                    self._gui_gaussians,
                ):
                    handle.value = "-"
        self.refresh_queue()
        if current is None:
            self.refresh_gallery()

    def _live(self) -> LiveRun:
        current = self.runner.current
        if current is None:
            raise SplatVLMError("nothing is running")
        return current[1]

    def _on_pause(self, event: Any) -> None:
        if self.runner.current is None:
            if self._gui_pause.value:
                self._gui_pause.value = False
            return
        self._live().set_paused(self._gui_pause.value)

    def _on_stop(self, event: Any) -> None:
        self._live().request_stop()
        self._gui_pause.value = False
        event.client.add_notification("Stopping", "the run ends after this step", auto_close_seconds=4.0)

    def _on_save(self, event: Any) -> None:
        path = self._live().save_now()
        event.client.add_notification("Saved", str(path), auto_close_seconds=5.0)

    def show_live(self) -> None:
        """Back to the live run in the 3D view."""
        with self._lock:
            self._showing = "live"
            self._uploader.remove("/gallery")
            if self._live_splats is not None:
                self._uploader.put("/live", self._live_splats)

    # ------------------------------------------------------------------ Gallery

    def refresh_gallery(self) -> None:
        with self._lock:
            runs = finished_runs(self.out_dir)
            labels = {run.label(): run for run in runs}
            previous = self._gui_run.value
            self._runs = labels
            self._gui_run.options = list(labels) or [_NONE]
            self._gui_run.value = previous if previous in labels else next(iter(labels), _NONE)
        self._show_run_card()

    def _selected_run(self) -> FinishedRun:
        run = self._runs.get(self._gui_run.value)
        if run is None:
            raise SplatVLMError("no finished run is selected")
        return run

    def _show_run_card(self) -> None:
        run = self._runs.get(self._gui_run.value)
        if run is None:
            self._gui_run_info.content = "No finished runs yet."
            self._gui_contact.visible = False
            self._gui_turntable.content = ""
            return
        s = run.summary
        parts = [f"**{md(run.prompt)}**", "", f"{md(run.name)}: {s.get('steps', '?')} steps"]
        if isinstance(s.get("seconds"), int | float):
            parts[-1] += f", {s['seconds']:.0f} s"
        if isinstance(s.get("num_gaussians"), int):
            parts[-1] += f", {s['num_gaussians']:,} Gaussians"
        if isinstance(s.get("p_yes"), int | float):
            parts[-1] += f", p(Yes) {s['p_yes']:.3f}"
        self._gui_run_info.content = "\n".join(parts)
        try:
            from PIL import Image

            sheet = np.asarray(Image.open(io.BytesIO(read_file(run, "contact.png"))).convert("RGB"))
            self._gui_contact.image = sheet
            self._gui_contact.visible = True
        except Exception:  # no contact sheet (turntable_frames 0) or an unreadable one
            self._gui_contact.visible = False
        try:
            gif = read_file(run, "turntable.gif")
        except SplatVLMError:
            gif = b""
        if gif and len(gif) <= MAX_TURNTABLE_BYTES:
            data = base64.b64encode(gif).decode("ascii")
            self._gui_turntable.content = (
                f'<img alt="turntable" style="width:100%" src="data:image/gif;base64,{data}">'
            )
        else:
            self._gui_turntable.content = ""

    def _on_open(self, event: Any) -> None:
        from ..gaussians.ply import load_ply
        from ..viewer.server import splats_to_numpy

        run = self._selected_run()
        splats = splats_to_numpy(load_ply(splat_file(run)))
        with self._lock:
            self._showing = run.name
            self._uploader.remove("/live")
            self._uploader.put("/gallery", splats)
        event.client.add_notification("Showing", f"{run.name}; Watch > Show the live run goes back",
                                      auto_close_seconds=5.0)  # fmt: skip

    def _on_get_ply(self, event: Any) -> None:
        run = self._selected_run()
        path = splat_file(run)
        event.client.send_file_download(f"{run.name}.ply", path.read_bytes(), save_immediately=True)

    def _export(self, event: Any, kind: str) -> None:
        run = self._selected_run()
        bar, note = self._gui_export_bar, self._gui_export_note

        def progress(fraction: float, what: str) -> None:
            bar.value = max(0.0, min(100.0, 100.0 * fraction))
            note.content = f"{md(run.name)} {kind}: {md(what)}"

        bar.value, bar.visible, bar.animated = 0.0, True, True
        try:
            if kind == "glb":
                path = export_glb(run, progress)
                name, data = f"{run.name}.glb", path.read_bytes()
            else:
                folder = export_gpteval3d(run, progress)
                progress(1.0, "zipping")
                name, data = f"{run.name}-gpteval3d.zip", zip_folder(folder)
        finally:
            bar.animated = False
        event.client.send_file_download(name, data, save_immediately=True)
        note.content = f"{md(run.name)} {kind}: sent {len(data) / 1e6:.1f} MB"
        bar.visible = False

    # ------------------------------------------------------------------ lifetime

    def serve_forever(self) -> None:
        """Block until Ctrl-C (or ``close`` from another thread)."""
        try:
            while not self._closed:
                time.sleep(0.2)
        except KeyboardInterrupt:
            print("studio: stopping (the running job keeps its checkpoint and resumes at the next start)",
                  file=sys.stderr, flush=True)  # fmt: skip

    def close(self) -> None:
        """Stop the running job with a checkpoint (it stays queued), then the server; free the out-dir."""
        if self._closed:
            return
        self._closed = True
        self.runner.close()
        self._uploader.close()
        self.server.stop()
        self._out_lock.release()

    def __enter__(self) -> Studio:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class _Uploader:
    """Sends splats to the browser on a thread of its own, the newest per node only (the trainer never waits)."""

    def __init__(self, server: Any):
        self.server = server
        self._cond = threading.Condition()
        self._pending: dict[str, dict[str, np.ndarray] | None] = {}  # node -> splats, or None: remove it
        self._nodes: dict[str, Any] = {}
        self._closing = False
        self._thread = threading.Thread(target=self._work, name="splatvlm-studio-upload", daemon=True)
        self._thread.start()

    def put(self, node: str, splats: dict[str, np.ndarray]) -> None:
        with self._cond:
            self._pending[node] = splats
            self._cond.notify()

    def remove(self, node: str) -> None:
        with self._cond:
            self._pending[node] = None
            self._cond.notify()

    def _work(self) -> None:
        shown_error = False
        while True:
            with self._cond:
                while not (self._closing or self._pending):
                    self._cond.wait()
                if self._closing:
                    return
                pending, self._pending = self._pending, {}
            for node, splats in pending.items():
                try:
                    if splats is None:
                        handle = self._nodes.pop(node, None)
                        if handle is not None:
                            handle.remove()
                    else:
                        self._nodes[node] = self.server.scene.add_gaussian_splats(node, **splats)
                except Exception as e:  # a failed upload must not stop training or the server
                    if not shown_error:
                        shown_error = True
                        print(
                            f"studio: splat upload failed: {type(e).__name__}: {e}",
                            file=sys.stderr,
                            flush=True,
                        )

    def close(self) -> None:
        with self._cond:
            self._closing = True
            self._cond.notify_all()
        self._thread.join(timeout=10.0)


def serve(cfg: StudioConfig) -> None:
    """``splatvlm studio``: print the URL, serve until Ctrl-C, then stop the running job with a checkpoint."""
    from ..viewer.guard import is_loopback

    studio = Studio(cfg)
    try:
        if not is_loopback(cfg.host):
            print(f"warning: the studio listens on {cfg.host}; anyone with the URL below (its token included) "
                  "can queue runs and download results", file=sys.stderr, flush=True)  # fmt: skip
        print(f"studio: {studio.url}", flush=True)
        print(f"studio: run folders in {studio.out_dir}; press Ctrl-C to stop", flush=True)
        studio.serve_forever()
    finally:
        studio.close()
