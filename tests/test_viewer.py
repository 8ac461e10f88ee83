"""The viser viewer on CPU: serving, updates, pause, snapshots, shutdown, and the camera math."""

from __future__ import annotations

import math
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import torch

from helpers import ctrl_c_exit_code, faulthandler_env
from splatvlm.errors import SplatVLMError
from splatvlm.gaussians.cameras import orbit_cameras
from splatvlm.gaussians.scene import SceneConfig, init_ball, make_params
from splatvlm.viewer.cameras import (
    pinhole_K,
    preview_cameras,
    preview_size,
    rotmat_to_wxyz,
    viser_camera_to_viewmat,
)
from splatvlm.viewer.server import (
    DENSIFY_CURVES,
    MAX_CURVE_POINTS,
    Curve,
    Viewer,
    ViewerConfig,
    splats_to_numpy,
)

viser = pytest.importorskip("viser")


def black_render(viewmat, K, width, height):
    return np.zeros((height, width, 3), np.uint8)


def wait_for(cond, timeout=10.0):
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        if cond():
            return True
        time.sleep(0.02)
    return False


@pytest.fixture
def tiny_scene():
    return init_ball(SceneConfig(num_points=64, color_noise=0.3), generator=torch.Generator().manual_seed(0))


@pytest.fixture
def viewer(tmp_path):
    saved: list[Path] = []

    def save_fn(path: Path) -> None:
        assert v.lock.locked(), "save_fn must run under the viewer lock"
        saved.append(path)
        path.write_bytes(b"ply\n")

    v = Viewer(ViewerConfig(enabled=True, port=0, refresh_every=10), black_render, tmp_path, save_fn)
    v.saved = saved  # type: ignore[attr-defined]
    yield v
    v.close()


def test_import_does_not_load_viser():
    code = "import sys, splatvlm.viewer.server; assert 'viser' not in sys.modules, 'viser imported eagerly'"
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def test_serves_http_and_closes_cleanly(tmp_path):
    v = Viewer(ViewerConfig(port=0), black_render, tmp_path)
    port = v.port
    assert port > 0 and v.url == f"http://127.0.0.1:{port}"
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=10) as r:
        assert r.status == 200
        assert r.headers["Content-Type"].startswith("text/html")
        assert b"<html" in r.read().lower()
    v.close()
    v.close()  # idempotent
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=2)
    # The port is free again: a new viewer gets exactly that port (viser would move to the next one).
    v2 = Viewer(ViewerConfig(port=port), black_render, tmp_path)
    try:
        assert v2.port == port
    finally:
        v2.close()


def test_update_uploads_splats_every_refresh(viewer, tiny_scene):
    uploads: list[tuple[int, dict]] = []
    real = viewer.server.scene.add_gaussian_splats

    def spy(name, **kw):
        uploads.append((viewer.step, kw))
        return real(name, **kw)

    viewer.server.scene.add_gaussian_splats = spy
    for step in range(35):
        viewer.update(tiny_scene, step, {"loss": 1.0 / (step + 1), "loss_sds": 2.0, "p_yes": 0.25})
        # the worker coalesces uploads it could not keep up with: wait so each one is seen
        assert wait_for(lambda: viewer._pending_splats is None)
    assert wait_for(lambda: len(uploads) == 4)  # steps 0, 10, 20, 30
    kw = uploads[-1][1]
    n = tiny_scene["means"].shape[0]
    assert kw["centers"].shape == (n, 3) and kw["covariances"].shape == (n, 3, 3)
    np.testing.assert_allclose(kw["centers"], tiny_scene["means"].detach().numpy(), rtol=1e-6)
    # GUI numbers and curves
    viewer.update(tiny_scene, 35, {"loss": 0.5, "p_yes": 0.75}, force=True)
    assert viewer._gui_step.value == "35"
    assert viewer._gui_gaussians.value == f"{n:,}"
    assert viewer._gui_loss.value == "0.5"
    assert viewer._gui_p_yes.value == "0.750"
    assert viewer._gui_step_time.value.endswith(" ms")
    assert set(viewer._plots) == {"loss", "loss_sds", "p_yes"}
    steps, values = viewer._plots["loss"].data
    assert steps[0] == 0 and steps[-1] == 35 and values[-1] == pytest.approx(0.5)
    # Refinement statistics (densify.step_post_backward's keys, only on refinement steps) are curves too.
    refine = {
        "densify_grad_p50": 0.1,
        "densify_grad_p90": 0.4,
        "densify_grad_p99": 0.9,
        "densify_grown": 12,
        "densify_split": 5,
        "densify_pruned": 3,
        "densify_budget": 20,
    }
    viewer.update(tiny_scene, 36, {"loss": 0.4, "num_gaussians": n, **refine}, force=True)
    viewer.update(tiny_scene, 37, {"loss": 0.4, "num_gaussians": n}, force=True)
    assert set(DENSIFY_CURVES) >= set(refine) - {"densify_budget"}
    assert set(viewer._plots) == {"loss", "loss_sds", "p_yes", "num_gaussians"} | (
        set(refine) - {"densify_budget"}
    )
    steps, values = viewer._plots["densify_grad_p90"].data
    assert list(steps) == [36] and list(values) == [0.4]


def test_update_is_cheap_when_not_due(tmp_path, tiny_scene, monkeypatch):
    """A step with no refresh due does not convert the splats (the costly part; only converted splats are
    queued for sending)."""
    import splatvlm.viewer.server as viewer_mod

    conversions = []
    real = viewer_mod.splats_to_numpy
    monkeypatch.setattr(viewer_mod, "splats_to_numpy", lambda p: conversions.append(1) or real(p))
    with Viewer(ViewerConfig(port=0, refresh_every=1000), black_render, tmp_path) as v:
        v.update(tiny_scene, 0, {"loss": 1.0})
        for step in range(1, 300):  # no splat refresh is due before step 1000
            v.update(tiny_scene, step, {"loss": 1.0, "loss_sds": 0.5, "p_yes": 0.5})
        assert len(conversions) == 1, "params were converted on a step with no refresh due"
        v.update(tiny_scene, 1000, {})
        assert len(conversions) == 2


def test_nonfinite_metrics_and_gaussians_are_not_sent(viewer):
    params = make_params(
        means=torch.tensor([[0.0, 0.0, 0.0], [float("nan"), 0.0, 0.0], [0.1, 0.2, 0.3]]),
        quats=torch.tensor([[1.0, 0, 0, 0]] * 3),
        scales=torch.full((3, 3), -3.0),
        opacities=torch.zeros(3),
        sh0=torch.zeros(3, 1, 3),
        shN=torch.zeros(3, 0, 3),
    )
    splats = splats_to_numpy(params)
    assert splats["centers"].shape == (2, 3)
    viewer.update(params, 0, {"loss": float("nan")}, force=True)
    viewer.update(params, 1, {"loss": 2.0}, force=True)
    steps, values = viewer._plots["loss"].data
    assert list(steps) == [1.0] and list(values) == [2.0]


def test_splats_to_numpy_math():
    g = torch.Generator().manual_seed(1)
    n = 20
    params = make_params(
        means=torch.randn(n, 3, generator=g),
        quats=torch.randn(n, 4, generator=g),
        scales=torch.randn(n, 3, generator=g) - 2,
        opacities=torch.randn(n, generator=g),
        sh0=torch.randn(n, 1, 3, generator=g),
        shN=torch.zeros(n, 3, 3),
    )
    s = splats_to_numpy(params)
    q = torch.nn.functional.normalize(params["quats"].detach().double(), dim=-1).numpy()
    for i in range(n):
        rot = viser.transforms.SO3(q[i]).as_matrix()  # an independent quaternion convention check
        cov = rot @ np.diag(np.exp(2 * params["scales"][i].detach().double().numpy())) @ rot.T
        np.testing.assert_allclose(s["covariances"][i], cov, rtol=1e-4, atol=1e-7)
    rgb = (params["sh0"][:, 0].detach() * 0.28209479177387814 + 0.5).clamp(0, 1).numpy()
    np.testing.assert_allclose(s["rgbs"], rgb, rtol=1e-6)
    np.testing.assert_allclose(
        s["opacities"][:, 0], torch.sigmoid(params["opacities"]).detach().numpy(), rtol=1e-6
    )
    assert s["opacities"].shape == (n, 1) and s["rgbs"].min() >= 0 and s["rgbs"].max() <= 1


def test_viser_camera_matches_our_convention():
    # viser's CameraHandle.wxyz is R_world_camera with OpenCV axes and position is t_world_camera:
    # build them from our orbit cameras' camera-to-world and check we get our viewmats back.
    cams = orbit_cameras(
        torch.tensor([15.0, -30.0, 60.0, 0.0]),
        torch.tensor([0.0, 90.0, 200.0, 333.0]),
        torch.tensor([2.5, 1.0, 3.0, 1.5]),
        torch.tensor([40.0, 40.0, 40.0, 40.0]),
        64,
        64,
    )
    c2w = cams.c2w.double().numpy()
    for i in range(len(cams)):
        wxyz = viser.transforms.SO3.from_matrix(c2w[i, :3, :3]).wxyz
        np.testing.assert_allclose(np.abs(rotmat_to_wxyz(c2w[i, :3, :3])), np.abs(wxyz), atol=1e-6)
        viewmat = viser_camera_to_viewmat(wxyz, c2w[i, :3, 3])
        torch.testing.assert_close(viewmat, cams.viewmats[i], atol=1e-5, rtol=1e-5)
        # The look direction viser derives (R[:, 2], see CameraHandle.wxyz's setter) points at the origin.
        look = viser.transforms.SO3(wxyz).as_matrix()[:, 2]
        np.testing.assert_allclose(look, -c2w[i, :3, 3] / np.linalg.norm(c2w[i, :3, 3]), atol=1e-6)


def test_preview_cameras_and_intrinsics():
    cams = orbit_cameras(
        torch.tensor([20.0]), torch.tensor([45.0]), torch.tensor([2.0]), torch.tensor([50.0]), 96, 64
    )
    K = pinhole_K(math.radians(50.0), 96, 64)
    torch.testing.assert_close(K, cams.Ks[0])
    back = preview_cameras(cams.viewmats[0], K, 96, 64)
    for field in ("elevation", "azimuth", "distance", "fovy"):
        torch.testing.assert_close(getattr(back, field), getattr(cams, field), atol=1e-4, rtol=1e-4)
    assert preview_size(256, 16 / 9) == (455, 256)
    assert preview_size(256, float("nan")) == (256, 256)
    assert preview_size(100, 100.0) == (400, 100)


def test_pause_blocks_until_resumed(viewer):
    viewer.wait_if_paused()  # not paused: returns at once
    viewer._gui_pause.value = True  # what a click in the browser does (same callback path)
    assert viewer.paused
    released = threading.Event()
    t = threading.Thread(target=lambda: (viewer.wait_if_paused(), released.set()), daemon=True)
    t.start()
    assert not released.wait(0.7), "wait_if_paused returned while paused"
    viewer.set_paused(False)
    assert released.wait(10.0), "wait_if_paused did not return after resume"
    assert viewer._gui_pause.value is False
    # close() releases a paused trainer too
    viewer.set_paused(True)
    released.clear()
    t = threading.Thread(target=lambda: (viewer.wait_if_paused(), released.set()), daemon=True)
    t.start()
    assert not released.wait(0.3)
    viewer.close()
    assert released.wait(10.0)


def test_save_button_writes_inside_run_dir(viewer, tiny_scene, tmp_path):
    viewer.update(tiny_scene, 123, {})
    viewer._gui_save.value = True  # a click: runs the button's callback
    assert viewer.saved == [(tmp_path / "snapshot_123.ply").resolve()]
    assert (tmp_path / "snapshot_123.ply").read_bytes() == b"ply\n"
    for step in (-5, 0, 10**12):
        path = viewer.snapshot_path(step)
        assert path.parent == tmp_path.resolve() and path.name == f"snapshot_{step}.ply"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["snapshot_123.ply"]


def test_save_waits_for_the_trainer_lock(viewer, tiny_scene, tmp_path):
    viewer.update(tiny_scene, 5, {})
    done = threading.Event()
    with viewer.lock:  # the trainer is in its optimizer step
        t = threading.Thread(target=lambda: (viewer.save_snapshot(), done.set()), daemon=True)
        t.start()
        assert not done.wait(0.3), "saved while the trainer held the lock"
    assert done.wait(5.0)
    assert (tmp_path / "snapshot_5.ply").exists()


def test_failed_save_is_reported_not_raised(tmp_path, capfd):
    def bad_save(path):
        raise OSError("disk full")

    with Viewer(ViewerConfig(port=0), black_render, tmp_path, bad_save) as v:
        v._gui_save.value = True
    err = capfd.readouterr().err
    assert "save failed: OSError: disk full" in err
    assert list(tmp_path.iterdir()) == []


def test_save_needs_existing_run_dir(tmp_path):
    with Viewer(ViewerConfig(port=0), black_render, tmp_path / "gone", lambda p: p.write_bytes(b"x")) as v:
        with pytest.raises(SplatVLMError, match="does not exist"):
            v.save_snapshot()
    assert not (tmp_path / "gone").exists()


def test_warns_for_non_loopback_host(tmp_path, capfd):
    with Viewer(ViewerConfig(port=0), black_render, tmp_path):
        pass
    assert "authentication" not in capfd.readouterr().err
    with Viewer(ViewerConfig(host="0.0.0.0", port=0), black_render, tmp_path) as v:
        with urllib.request.urlopen(f"http://127.0.0.1:{v.port}/", timeout=10) as r:
            assert r.status == 200
    out = capfd.readouterr()
    warning = [line for line in out.err.splitlines() if "authentication" in line]
    assert len(warning) == 1 and warning[0].startswith("warning:") and "0.0.0.0" in warning[0]
    assert f"viewer: http://localhost:{v.port}" in out.out


@pytest.mark.parametrize(
    "cfg, match",
    [
        (ViewerConfig(port=70000), "port"),
        (ViewerConfig(port=-1), "port"),
        (ViewerConfig(refresh_every=0), "refresh_every"),
        (ViewerConfig(preview_resolution=0), "preview_resolution"),
        (ViewerConfig(host="no-such-host.invalid", port=0), "not a valid address"),
        (ViewerConfig(host="192.0.2.1", port=0), "cannot listen"),  # TEST-NET, not ours: must not hang
    ],
)
def test_bad_config_fails_fast(cfg, match, tmp_path):
    with pytest.raises(SplatVLMError, match=match):
        Viewer(cfg, black_render, tmp_path)


def test_busy_port_moves_on(tmp_path, capfd):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        busy = s.getsockname()[1]
        with Viewer(ViewerConfig(port=busy), black_render, tmp_path) as v:
            assert v.port != busy
            assert f"port {busy} is busy, using {v.port}" in capfd.readouterr().out


def test_curve_thinning_keeps_memory_flat():
    c = Curve()
    for step in range(10_000):
        c.add(step, float(step))
    assert MAX_CURVE_POINTS // 2 <= len(c.steps) < MAX_CURVE_POINTS
    assert c.steps[0] == 0 and c.steps[-1] > 9_000
    assert np.all(np.diff(c.steps) > 0)


def test_view_ply_serves_until_ctrl_c(tmp_path, tiny_scene):
    ply = pytest.importorskip("splatvlm.gaussians.ply")
    pytest.importorskip("splatvlm.gaussians.render")
    path = tmp_path / "scene.ply"
    ply.save_ply(tiny_scene, path)
    code = (
        "import sys; from splatvlm.commands.view import view_ply; from splatvlm.viewer.server import ViewerConfig; "
        "view_ply(sys.argv[1], ViewerConfig(port=0))"
    )
    proc = subprocess.Popen(
        [sys.executable, "-u", "-c", code, str(path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=faulthandler_env(COLUMNS="200"),
    )
    try:
        port = None
        lines = []
        t0 = time.monotonic()
        while time.monotonic() - t0 < 60:
            line = proc.stdout.readline()
            lines.append(line)
            if line.startswith("viewer: http://127.0.0.1:"):
                port = int(line.rsplit(":", 1)[1])
            if "press Ctrl-C" in line:
                break
        assert port is not None, "".join(lines)
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=10) as r:
            assert r.status == 200
        assert any("64 Gaussians" in line for line in lines)
        assert ctrl_c_exit_code(proc, lines) == 0
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", port), timeout=2)
    finally:
        if proc.poll() is None:
            proc.kill()


def test_view_ply_rejects_bad_file_before_binding(tmp_path):
    pytest.importorskip("splatvlm.gaussians.ply")
    bad = tmp_path / "bad.ply"
    bad.write_bytes(b"not a ply")
    from splatvlm.commands.view import view_ply

    with pytest.raises(SplatVLMError):
        view_ply(bad, ViewerConfig(port=0))


def test_make_render_fn_shape(tiny_scene):
    pytest.importorskip("splatvlm.gaussians.render")
    from splatvlm.viewer.server import make_render_fn

    cams = orbit_cameras(
        torch.tensor([15.0]), torch.tensor([0.0]), torch.tensor([2.5]), torch.tensor([40.0]), 40, 32
    )
    fn = make_render_fn(tiny_scene, "cpu")
    img = fn(cams.viewmats[0], cams.Ks[0], 40, 32)
    assert img.shape == (32, 40, 3) and img.dtype == np.uint8
    assert img.std() > 0  # the ball is in view, not a flat background


def test_update_ignores_non_numeric_metrics(viewer, tiny_scene):
    viewer.update(tiny_scene, 0, {"loss": 1, "bad_step": True, "note": "skipped", "step": 0}, force=True)
    assert viewer._metrics == {"loss": 1.0, "step": 0.0}
    assert set(viewer._plots) == {"loss"}


# ----------------------------------------------------------------------------------------------
# Who may connect: a real websocket client, as a browser page on another site would be


def _connect(port, origin=None):
    """viser's websocket as its browser client opens it (None: no Origin header)."""
    from websockets.sync.client import connect

    return connect(
        f"ws://127.0.0.1:{port}", origin=origin, subprotocols=[f"viser-v{viser.__version__}"], open_timeout=10
    )


def _handshake(port, origin):
    """Open viser's websocket with ``origin`` (None: no header); return the HTTP status (101 = open)."""
    from websockets.exceptions import InvalidStatus

    try:
        with _connect(port, origin) as ws:
            assert ws.recv(timeout=10)  # the viewer's state arrives: this client is served
            return 101
    except InvalidStatus as e:
        return e.response.status_code


def test_foreign_origin_is_refused_own_origin_and_no_origin_accepted(tmp_path, capfd):
    v = Viewer(ViewerConfig(port=0), black_render, tmp_path)
    try:
        port = v.port
        assert _handshake(port, "http://evil.example") == 403
        assert _handshake(port, f"http://127.0.0.1:{port + 1}") == 403  # another local port is another site
        assert _handshake(port, "null") == 403  # sandboxed iframes, file:// pages
        assert _handshake(port, f"http://127.0.0.1:{port}") == 101
        assert _handshake(port, f"http://localhost:{port}") == 101
        assert _handshake(port, None) == 101  # a local program, not a browser
        # The page itself is still served over plain HTTP.
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=10) as r:
            assert r.status == 200
    finally:
        v.close()
    assert "refused a connection from 'http://evil.example'" in capfd.readouterr().err


def test_allowed_origins_follow_the_chosen_host():
    from splatvlm.viewer.guard import allowed_origins, origin_allowed

    assert origin_allowed("http://192.168.1.5:8080", "192.168.1.5", 8080)
    assert not origin_allowed("http://192.168.1.5:8080", "127.0.0.1", 8080)
    assert origin_allowed("HTTP://LOCALHOST:8080", "127.0.0.1", 8080)
    assert not origin_allowed("https://localhost:8080", "127.0.0.1", 8080)
    assert "http://[::1]:9000" in allowed_origins("::1", 9000)


@pytest.mark.parametrize("share", [False, True])
def test_share_request_ignored_unless_asked(tmp_path, share, monkeypatch, capfd):
    """A client presses "share": the request goes out only with share on (request_share_url is stood in for,
    so no tunnel opens); with it off the viewer says it ignored the request."""
    import msgspec

    v = Viewer(ViewerConfig(port=0, share=share), black_render, tmp_path)
    try:
        calls = []
        monkeypatch.setattr(v.server, "request_share_url", lambda *a, **k: calls.append(1))
        err = []
        with _connect(v.port) as ws:
            assert ws.recv(timeout=10)
            ws.send(msgspec.msgpack.encode({"type": "ShareUrlRequest"}))  # what viser's page sends
            if share:
                assert wait_for(lambda: bool(calls))
            else:
                assert wait_for(
                    lambda: err.append(capfd.readouterr().err) or "ignored a request" in "".join(err)
                )
        assert bool(calls) is share
    finally:
        v.close()


def test_signal_while_paused_stops_with_a_checkpoint(tmp_path):
    """SIGTERM while the viewer holds training paused: the run stops at once, with a checkpoint, code 143."""
    import dataclasses

    from splatvlm.config import load_run_config
    from splatvlm.errors import StopRun
    from splatvlm.run.train_state import load_checkpoint, new_state
    from splatvlm.run.trainer import Term, train

    cfg = load_run_config("fit")
    cfg = dataclasses.replace(
        cfg,
        steps=50,
        log_every=1,
        scene=dataclasses.replace(cfg.scene, num_points=64),
        camera=dataclasses.replace(
            cfg.camera, resolution=32
        ),  # the torch rasterizer at the preset's 256 px is slow
    )

    def term(rgb, cams, step):
        return {"loss_l1": rgb.mean()}

    state = new_state(init_ball(cfg.scene, torch.Generator().manual_seed(0)), cfg, torch.device("cpu"))
    v = Viewer(ViewerConfig(port=0), black_render, tmp_path)
    steps_seen = []
    unpaused = []  # were the signal ignored, the run would wait for this timer: fail, not hang
    unpause = threading.Timer(60.0, lambda: unpaused.append(1) or v.set_paused(False))

    def on_step(step, logs):
        steps_seen.append(step)
        if step == 1:
            v.set_paused(True)
            threading.Timer(0.3, os.kill, (os.getpid(), signal.SIGTERM)).start()
            unpause.start()

    try:
        with pytest.raises(StopRun) as info:
            train(cfg, state, {"l1": Term(term, weights=("l1",))}, tmp_path, torch.device("cpu"),
                  viewer=v, progress=False, on_step=on_step)  # fmt: skip
    finally:
        unpause.cancel()
        v.close()
    assert not unpaused, "the run went on only when the pause was lifted, not at the signal"
    assert info.value.exit_code == 143 and "SIGTERM" in str(info.value)
    # on_step(1) runs early in step 2 (a step's numbers are read back during the next one), so step 2 finishes
    # and no step runs after it
    assert steps_seen[-1] == 2
    assert load_checkpoint(tmp_path / "checkpoint.pt")["step"] == 3


def test_a_pause_shows_the_step_it_holds(tmp_path, tiny_scene):
    """Updates inside the refresh periods are held back; a pause pushes the latest step's numbers and splats."""
    with Viewer(ViewerConfig(port=0, refresh_every=1000), black_render, tmp_path) as v:
        v.update(tiny_scene, 0, {"loss": 1.0})
        v.update(tiny_scene, 7, {"loss": 0.25})  # within GUI_PERIOD_S and refresh_every: not shown yet
        assert v._gui_step.value == "0"
        v.set_paused(True)
        v.wait_if_paused(should_stop=lambda: True)
        assert v._gui_step.value == "7"
        assert v._gui_loss.value == "0.25"
        assert v._last_refresh_step == 7, "the paused step's splats were not queued"
