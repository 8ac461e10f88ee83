"""Live viser viewer: the current splats, a preview from the training renderer, curves and controls.

The trainer owns a ``Viewer`` and calls ``update(params, step, metrics)`` every step; that call is a
few comparisons and list appends unless something is due (GUI numbers ~5 Hz, curves ~1 Hz, splats
every ``refresh_every`` steps). Uploading splats and rendering previews run on one worker thread of
the viewer, never on the training thread. The trainer holds ``viewer.lock`` while it changes the
parameters (optimizer step, densification); the viewer holds it while it reads them from its own
threads (preview renders, "Save .ply now"), so readers never see a half-updated scene.

Camera convention: viser reports a client camera as ``wxyz`` (the rotation R in
``P_world = R p_camera + t``) and ``position`` (t), with OpenCV axes (look +z, image-down +y; see
viser's ``CameraHandle.wxyz`` docstring). That is exactly our camera-to-world, so the viewmat we
hand to ``render_fn`` is its inverse. The viser world is set z-up, like ours.

viser is imported only when a ``Viewer`` is built, so ``import splatvlm`` stays fast.
"""

from __future__ import annotations

import math
import numbers
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import Tensor

from ..errors import SplatVLMError
from ..gaussians.cameras import CameraConfig
from ..gaussians.raster_torch import quat_to_rotmat
from ..gaussians.scene import num_gaussians, sh0_to_rgb
from .cameras import pinhole_K, preview_cameras, preview_size, viser_camera_to_viewmat
from .guard import check_bindable, guarded_server, is_loopback, url

if TYPE_CHECKING:
    from ..gaussians.render import RenderConfig

RenderFn = Callable[[Tensor, Tensor, int, int], np.ndarray]
"""(viewmat [4, 4] OpenCV world-to-camera, K [3, 3], width, height) -> uint8 image [H, W, 3]."""
SaveFn = Callable[[Path], None]
"""Writes the current scene as a .ply at the given path."""

P_YES_KEY = "p_yes"
"""Metrics key shown as p(Yes) (the VLM's probability of answering Yes)."""
GAUSSIANS_KEY = "num_gaussians"
"""Metrics key with the number of Gaussians (plotted)."""
DENSIFY_CURVES = tuple(
    f"densify_{k}"
    for k in ("grad_p50", "grad_p90", "grad_p99", "opacity_p50", "opacity_p90", "opacity_p99")
    + ("grown", "duplicated", "split", "pruned", "relocated")
)
"""Metrics keys of each refinement plotted (densify.step_post_backward's gradient quantiles and counts)."""
STEP_TIME_KEY = "step_time"
"""Optional metrics key (seconds per step); measured between ``update`` calls when absent."""
GUI_PERIOD_S = 0.2  # numbers at ~5 Hz
PLOT_PERIOD_S = 1.0  # curves at ~1 Hz: each push re-sends the whole series
MAX_CURVE_POINTS = 1000  # per curve; older points are thinned 2x when it fills
_SPLATS_NODE = "/splats"


@dataclass
class ViewerConfig:
    """The live viser viewer (``--viewer``)."""

    enabled: bool = False
    """Start the viewer during training."""
    host: str = "127.0.0.1"
    """Address to listen on. Anything but loopback exposes the run, unauthenticated, to the network."""
    port: int = 8080
    """Port to listen on (the next free one is used if it is busy; 0 lets the OS pick)."""
    refresh_every: int = 50
    """Training steps between splat uploads to the browser."""
    preview_resolution: int = 256
    """Height in pixels of the training-renderer preview that follows the browser camera."""
    linger_s: float = math.inf
    """After training, keep serving this many seconds so the result can be inspected (inf: until Ctrl-C)."""
    share: bool = False
    """Honour viser's "share" request (a public tunnel to this viewer through share.viser.studio)."""
    max_connections: int = 16
    """Connections served at once (browser tabs and their page loads); more are closed as soon as they are
    accepted, so clients cannot use up the file descriptors the run needs for its checkpoints and outputs."""


def check_viewer_config(cfg: ViewerConfig) -> None:
    """Reject bad values before anything binds a port."""
    if not 0 <= cfg.port <= 65535:
        raise SplatVLMError(f"viewer port must be in 0..65535, got {cfg.port}")
    if cfg.refresh_every <= 0:
        raise SplatVLMError(f"viewer refresh_every must be positive, got {cfg.refresh_every}")
    if not 16 <= cfg.preview_resolution <= 2048:
        raise SplatVLMError(f"viewer preview_resolution must be in 16..2048, got {cfg.preview_resolution}")
    if not cfg.host.strip():
        raise SplatVLMError("viewer host is empty")
    if not 1 <= cfg.max_connections <= 4096:
        raise SplatVLMError(f"viewer max_connections must be in 1..4096, got {cfg.max_connections}")


# ----------------------------------------------------------------------------------------------
# Math: scene -> viser splats, viser camera -> our camera


@torch.no_grad()
def splats_to_numpy(params: torch.nn.ParameterDict) -> dict[str, np.ndarray]:
    """Activated splats as numpy, in the layout ``viser.SceneApi.add_gaussian_splats`` takes.

    One device-to-host copy. Gaussians with a non-finite value are dropped (they would corrupt the
    browser's sort). Returns centers [N, 3], covariances [N, 3, 3], rgbs [N, 3] in [0, 1] (from sh0
    only: the browser has no view-dependent color), opacities [N, 1].
    """
    rot = quat_to_rotmat(params["quats"])  # [N, 3, 3]
    var = torch.exp(2 * params["scales"])  # [N, 3]
    cov = (rot * var[:, None, :]) @ rot.transpose(1, 2)  # R diag(s^2) R^T
    rgb = sh0_to_rgb(params["sh0"][:, 0, :]).clamp(0, 1)
    opacity = torch.sigmoid(params["opacities"])[:, None]
    packed = (
        torch.cat([params["means"], cov.flatten(1), rgb, opacity], dim=1).float().cpu().numpy()
    )  # [N, 16]
    packed = packed[np.isfinite(packed).all(axis=1)]
    return {
        "centers": np.ascontiguousarray(packed[:, 0:3]),
        "covariances": np.ascontiguousarray(packed[:, 3:12]).reshape(-1, 3, 3),
        "rgbs": np.ascontiguousarray(packed[:, 12:15]),
        "opacities": np.ascontiguousarray(packed[:, 15:16]),
    }


# ----------------------------------------------------------------------------------------------
# Curves kept on the training thread


class Curve:
    """A metric's history, thinned 2x whenever it reaches MAX_CURVE_POINTS (so memory stays flat)."""

    def __init__(self) -> None:
        self.steps: list[float] = []
        self.values: list[float] = []
        self.stride = 1
        self.seen = 0

    def add(self, step: int, value: float) -> None:
        self.seen += 1
        if (self.seen - 1) % self.stride:
            return
        self.steps.append(float(step))
        self.values.append(value)
        if len(self.steps) >= MAX_CURVE_POINTS:
            self.steps = self.steps[::2]
            self.values = self.values[::2]
            self.stride *= 2


# ----------------------------------------------------------------------------------------------
# The server


class Viewer:
    """A viser server the trainer drives: splats, preview, curves, pause and save.

    Args:
        cfg: host, port, refresh interval, preview size.
        render_fn: renders the current scene for a camera (see ``RenderFn``); called from the viewer's
            worker thread while it holds ``lock``.
        run_dir: the only folder GUI actions may write to (snapshots).
        save_fn: writes the current scene as a .ply; ``None`` hides "Save .ply now".
        training: show the training controls and numbers (off for ``splatvlm view``).
    """

    def __init__(
        self,
        cfg: ViewerConfig,
        render_fn: RenderFn,
        run_dir: Path | None,
        save_fn: SaveFn | None = None,
        *,
        training: bool = True,
    ):
        check_viewer_config(cfg)
        if save_fn is not None and run_dir is None:
            raise SplatVLMError("the viewer needs a run folder to save snapshots into")
        self.cfg = cfg
        self.render_fn = render_fn
        self.run_dir = Path(run_dir) if run_dir is not None else None
        self.save_fn = save_fn
        self.lock = threading.Lock()
        """Held by the trainer while it changes the parameters, by the viewer while it reads them."""

        # State shared with the worker thread and viser's callback threads.
        self._cond = threading.Condition()
        self._pending_splats: dict[str, np.ndarray] | None = None
        self._latest_params: torch.nn.ParameterDict | None = None
        self._dirty_clients: set[int] = set()
        self._preview_images: dict[int, Any] = {}
        self._closing = False
        self._closed = False
        self._resume = threading.Event()  # set = running, clear = paused
        self._resume.set()
        self._save_lock = threading.Lock()  # one snapshot at a time
        self._worker_error_shown = False

        # Training-thread state.
        self._step = 0
        self._last_refresh_step: int | None = None
        self._last_gui_time = -math.inf
        self._last_plot_time = -math.inf
        self._last_step_time: float | None = None
        self._last_step_for_time: int | None = None
        self._step_time_s: float | None = None
        self._metrics: dict[str, float] = {}
        self._curves: dict[str, Curve] = {}
        self._plots: dict[str, Any] = {}

        # 1. bind
        if not is_loopback(cfg.host):
            print(
                f"warning: the viewer listens on {cfg.host} without authentication: anyone who can reach "
                f"port {cfg.port} can watch the run and pause it or save snapshots.",
                file=sys.stderr,
                flush=True,
            )
        port_free = check_bindable(cfg.host, cfg.port)
        import viser  # lazy: only when the viewer is on

        self._viser = viser
        self.server = guarded_server(
            viser, cfg.host, cfg.port, cfg.share, max_connections=cfg.max_connections
        )
        self.server.scene.set_up_direction("+z")
        look_from_turntable(self.server)
        if not port_free:
            print(f"viewer: port {cfg.port} is busy, using {self.port}", flush=True)
        print(f"viewer: {self.url}", flush=True)

        # 2. GUI
        gui = self.server.gui
        self._training = training
        with gui.add_folder("Training", order=1, visible=training):
            self._gui_step = gui.add_text("Step", "0", disabled=True)
            self._gui_gaussians = gui.add_text("#Gaussians", "-", disabled=True)
            self._gui_loss = gui.add_text("Loss", "-", disabled=True)
            self._gui_p_yes = gui.add_text("p(Yes)", "-", disabled=True)
            self._gui_step_time = gui.add_text("Step time", "-", disabled=True)
            self._gui_pause = gui.add_checkbox("Pause", False, hint="Pause training after the current step")
        if not training:
            with gui.add_folder("Scene", order=1):
                self._gui_view_gaussians = gui.add_text("#Gaussians", "-", disabled=True)
        self._gui_save = None
        if save_fn is not None:
            self._gui_save = gui.add_button("Save .ply now", order=2, hint="Write snapshot_<step>.ply")
        self._gui_live_preview = gui.add_checkbox(
            "Live preview", True, order=3, hint="Render the training renderer's view of your camera"
        )
        self._curves_folder = gui.add_folder("Curves", order=5, visible=False)  # shown with its first curve

        self._gui_pause.on_update(lambda _: self.set_paused(self._gui_pause.value))
        if self._gui_save is not None:
            self._gui_save.on_click(self._on_save_click)
        self._gui_live_preview.on_update(lambda _: self._mark_all_dirty())
        self.server.on_client_connect(self._on_connect)
        self.server.on_client_disconnect(self._on_disconnect)

        # 3. worker for splat uploads and previews
        self._worker = threading.Thread(target=self._work, name="splatvlm-viewer", daemon=True)
        self._worker.start()

    # ------------------------------------------------------------------ properties

    @property
    def port(self) -> int:
        return self.server.get_port()

    @property
    def url(self) -> str:
        return url(self.cfg.host, self.port)

    @property
    def step(self) -> int:
        return self._step

    @property
    def paused(self) -> bool:
        return not self._resume.is_set()

    def set_paused(self, paused: bool) -> None:
        """Pause or resume training (what the "Pause" checkbox does)."""
        if paused and not self._closing:
            self._resume.clear()
        else:
            self._resume.set()
        if self._gui_pause.value != paused:
            self._gui_pause.value = paused

    # ------------------------------------------------------------------ training thread

    def update(
        self, params: torch.nn.ParameterDict, step: int, metrics: dict[str, float], force: bool = False
    ) -> None:
        """Record this step; push numbers, curves and splats when each is due (``force``: all now).

        Call from the training thread, outside ``lock``. ``metrics`` should hold Python numbers
        (a tensor here would sync the GPU); other values (bools, strings) are ignored. Keys starting
        with ``loss``, ``p_yes``, ``num_gaussians`` and DENSIFY_CURVES are plotted; ``loss`` and ``p_yes`` are also shown as numbers.
        """
        if self._closing:
            return
        now = time.perf_counter()
        if (
            self._last_step_time is not None
            and self._last_step_for_time is not None
            and step > self._last_step_for_time
        ):
            dt = (now - self._last_step_time) / (step - self._last_step_for_time)
            self._step_time_s = dt if self._step_time_s is None else 0.9 * self._step_time_s + 0.1 * dt
        self._last_step_time, self._last_step_for_time = now, step
        self._step = step
        self._latest_params = params
        for key, value in metrics.items():
            if isinstance(value, bool | str) or not isinstance(value, numbers.Real | Tensor):
                continue  # flags and notes are not curves
            value = float(value)
            self._metrics[key] = value
            if plotted(key) and math.isfinite(value):
                self._curves.setdefault(key, Curve()).add(step, value)

        if force or now - self._last_gui_time >= GUI_PERIOD_S:
            self._last_gui_time = now
            self._push_numbers(num_gaussians(params))
        if self._training and (force or now - self._last_plot_time >= PLOT_PERIOD_S):
            self._last_plot_time = now
            self._push_curves()
        if (
            force
            or self._last_refresh_step is None
            or step - self._last_refresh_step >= self.cfg.refresh_every
        ):
            self._last_refresh_step = step
            splats = splats_to_numpy(params)
            with self._cond:
                self._pending_splats = splats  # the worker takes the newest; older ones are dropped
                self._dirty_clients.update(self._preview_images)  # previews show the new scene too
                self._cond.notify()

    def wait_if_paused(self, should_stop: Callable[[], bool] | None = None) -> None:
        """Block while "Pause" is on (returns at once otherwise, when the viewer closes, and as soon as
        ``should_stop()`` is true: a signal must stop a paused run, not wait for "Resume")."""
        if self._resume.is_set():
            return
        if self._latest_params is not None:  # the paused view shows the step it holds, whatever the periods
            self.update(self._latest_params, self._step, {}, force=True)
        while not self._resume.wait(timeout=0.05):
            if should_stop is not None and should_stop():
                break
        self._last_step_time = None  # don't count the pause as step time

    def _push_numbers(self, n: int) -> None:
        m = self._metrics
        self._gui_step.value = str(self._step)
        self._gui_gaussians.value = f"{n:,}"
        if not self._training:
            self._gui_view_gaussians.value = f"{n:,}"
        if "loss" in m:
            self._gui_loss.value = f"{m['loss']:.5g}"
        if P_YES_KEY in m:
            self._gui_p_yes.value = f"{m[P_YES_KEY]:.3f}"
        step_time = m.get(STEP_TIME_KEY, self._step_time_s)
        if step_time is not None:
            self._gui_step_time.value = f"{1000 * step_time:.1f} ms"

    def _push_curves(self) -> None:
        if any(c.steps for c in self._curves.values()):
            self._curves_folder.visible = True
        push_curves(self.server, self._curves_folder, self._curves, self._plots)

    # ------------------------------------------------------------------ save

    def snapshot_path(self, step: int) -> Path:
        """Where "Save .ply now" writes at ``step``: always directly inside ``run_dir``."""
        if self.run_dir is None:
            raise SplatVLMError("this viewer has no run folder to save into")
        root = self.run_dir.resolve()
        path = (root / f"snapshot_{int(step)}.ply").resolve()
        if path.parent != root:  # cannot happen for an int step; kept as the guarantee GUI writes rely on
            raise SplatVLMError(f"refusing to write {path} outside the run folder {root}")
        return path

    def save_snapshot(self) -> Path:
        """Write ``run_dir/snapshot_<step>.ply`` through ``save_fn`` under ``lock`` (the button's action)."""
        if self.save_fn is None:
            raise SplatVLMError("this viewer cannot save (no save function)")
        path = self.snapshot_path(self._step)
        if not path.parent.is_dir():
            raise SplatVLMError(f"run folder {path.parent} does not exist")
        with self._save_lock, self.lock:
            self.save_fn(path)
        return path

    def _on_save_click(self, event: Any) -> None:
        client = getattr(event, "client", None)
        try:
            path = self.save_snapshot()
        except Exception as e:  # the GUI must report, not kill the server thread
            msg = str(e) if isinstance(e, SplatVLMError) else f"{type(e).__name__}: {e}"
            print(f"viewer: save failed: {msg}", file=sys.stderr, flush=True)
            if client is not None:
                client.add_notification("Save failed", msg, color="red", auto_close_seconds=10.0)
            return
        print(f"viewer: saved {path}", flush=True)
        if client is not None:
            client.add_notification("Saved", str(path), auto_close_seconds=5.0)

    # ------------------------------------------------------------------ clients and previews

    def _on_connect(self, client: Any) -> None:
        placeholder = np.full((self.cfg.preview_resolution, self.cfg.preview_resolution, 3), 40, np.uint8)
        image = client.gui.add_image(placeholder, label="Preview (training renderer)", order=4, format="jpeg")
        client.camera.on_update(lambda _: self._mark_dirty(client.client_id))
        with self._cond:
            self._preview_images[client.client_id] = image
            self._dirty_clients.add(client.client_id)
            self._cond.notify()

    def _on_disconnect(self, client: Any) -> None:
        with self._cond:
            self._preview_images.pop(client.client_id, None)
            self._dirty_clients.discard(client.client_id)

    def _mark_dirty(self, client_id: int) -> None:
        with self._cond:
            if client_id in self._preview_images:
                self._dirty_clients.add(client_id)
                self._cond.notify()

    def _mark_all_dirty(self) -> None:
        with self._cond:
            self._dirty_clients.update(self._preview_images)
            self._cond.notify()

    def _work(self) -> None:
        while True:
            with self._cond:
                while not (self._closing or self._pending_splats is not None or self._dirty_clients):
                    self._cond.wait()
                if self._closing:
                    return
                splats, self._pending_splats = self._pending_splats, None
                dirty, self._dirty_clients = self._dirty_clients, set()
            try:
                if splats is not None:
                    self.server.scene.add_gaussian_splats(_SPLATS_NODE, **splats)
                for client_id in dirty:
                    self._render_preview(client_id)
            except Exception as e:  # a failed preview must not stop training or the server
                if not self._worker_error_shown:
                    self._worker_error_shown = True
                    print(
                        f"viewer: preview/upload failed: {type(e).__name__}: {e}", file=sys.stderr, flush=True
                    )

    def _render_preview(self, client_id: int) -> None:
        if not self._gui_live_preview.value:
            return
        client = self.server.get_clients().get(client_id)
        image_handle = self._preview_images.get(client_id)
        if client is None or image_handle is None:
            return
        cam = client.camera
        try:
            aspect, wxyz, position, fov = cam.aspect, cam.wxyz, cam.position, cam.fov
        except AssertionError:  # viser asserts until the client's first camera message arrives
            return
        width, height = preview_size(self.cfg.preview_resolution, aspect)
        viewmat = viser_camera_to_viewmat(wxyz, position)
        K = pinhole_K(fov, width, height)
        with self.lock:
            image = self.render_fn(viewmat, K, width, height)
        image = np.asarray(image)
        if image.shape != (height, width, 3) or image.dtype != np.uint8:
            raise ValueError(
                f"render_fn returned {image.dtype} {image.shape}, expected uint8 {(height, width, 3)}"
            )
        image_handle.image = image

    # ------------------------------------------------------------------ lifetime

    def serve_forever(self) -> None:
        """Block until Ctrl-C (or ``close`` from another thread)."""
        self.linger(math.inf)

    def linger(self, seconds: float) -> None:
        """Keep serving for ``seconds`` (inf: until Ctrl-C), or until ``close`` from another thread; 0 returns
        at once. A Ctrl-C ends the wait quietly."""
        if not seconds > 0:
            return
        deadline = time.monotonic() + seconds
        try:  # the message is inside: a Ctrl-C right after it must still end quietly
            # The URL was printed at start.
            if math.isinf(seconds):
                print("viewer: still serving; press Ctrl-C to exit", flush=True)
            else:
                print(f"viewer: still serving for {seconds:g} s (Ctrl-C to exit sooner)", flush=True)
            while not self._closing and time.monotonic() < deadline:
                time.sleep(min(0.2, max(0.0, deadline - time.monotonic())))
        except KeyboardInterrupt:
            pass

    def close(self) -> None:
        """Stop the server and the worker, release a paused trainer, free the port. Idempotent."""
        if self._closed:
            return
        self._closed = True
        with self._cond:
            self._closing = True
            self._cond.notify_all()
        self._resume.set()
        self._worker.join(timeout=10.0)
        self.server.stop()

    def __enter__(self) -> Viewer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def plotted(key: str) -> bool:
    return key.startswith("loss") or key in (P_YES_KEY, GAUSSIANS_KEY) or key in DENSIFY_CURVES


_PALETTE = ("#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf")


def look_from_turntable(server: Any) -> None:
    """Start the browser's camera where the turntable renders look from (azimuth 0 = +x)."""
    cam = CameraConfig()
    distance = cam.eval_distance / math.tan(0.5 * math.radians(cam.eval_fovy))
    elevation = math.radians(cam.eval_elevation)
    server.initial_camera.fov = math.radians(cam.eval_fovy)
    server.initial_camera.position = (distance * math.cos(elevation), 0.0, distance * math.sin(elevation))
    server.initial_camera.look_at = (0.0, 0.0, 0.0)


def push_curves(server: Any, folder: Any, curves: dict[str, Curve], plots: dict[str, Any]) -> None:
    """Show each curve as a plot in ``folder``: new plots are added (losses first), known ones get new data."""
    for key, curve in list(curves.items()):
        if not curve.steps:
            continue
        data = (np.asarray(curve.steps), np.asarray(curve.values))
        if key in plots:
            plots[key].data = data
            continue
        with folder:
            plots[key] = server.gui.add_uplot(
                data=data,
                series=({"label": "step"}, {"label": key, "stroke": curve_color(len(plots)), "width": 1.5}),
                title=key,
                scales={"x": {"time": False, "auto": True}, "y": {"auto": True}},
                legend={"show": False},
                aspect=2.0,
                order=len(plots) + (0 if key.startswith("loss") else 100),
            )


def curve_color(i: int) -> str:
    return _PALETTE[i % len(_PALETTE)]


# ----------------------------------------------------------------------------------------------
# splatvlm view IN.ply


def make_render_fn(
    params: torch.nn.ParameterDict,
    device: torch.device | str | None = None,
    render_cfg: RenderConfig | None = None,
) -> RenderFn:
    """A ``RenderFn`` through ``splatvlm.gaussians.render.render`` (CUDA when available).

    ``params`` is read at every call, so a training scene's preview follows its updates.
    """
    from ..gaussians.render import RenderConfig, render

    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    params = params.to(device)
    cfg = render_cfg or RenderConfig()
    white = torch.ones(1, 3, device=device)  # the browser draws its splats on white too

    @torch.no_grad()
    def render_fn(viewmat: Tensor, K: Tensor, width: int, height: int) -> np.ndarray:
        cams = preview_cameras(viewmat, K, width, height).to(device)
        rgb = render(params, cams, cfg, backgrounds=white, depth=False).rgb[0]  # [H, W, 3]
        return (rgb.clamp(0, 1) * 255).round().to(torch.uint8).cpu().numpy()

    return render_fn
