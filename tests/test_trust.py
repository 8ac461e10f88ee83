"""A command never deletes or overwrites what it did not create, and fails in one line: the invariants that
cut across modules (locks, writes, full disks, config ranges, sidecars, the viewer's connections, adapters).

The run-folder invariants (identity, --overwrite, --resume, batches) are in test_generate.py.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from splatvlm.errors import SplatVLMError
from splatvlm.files import RunLock, atomic_path, os_error_line

# ---------------------------------------------------------------------------------------------------
# Locks and temporary files never follow a symlink


def test_symlinked_or_hard_linked_lock_never_truncates_its_target(tmp_path):
    precious = tmp_path / "precious.txt"
    precious.write_text("do not truncate me")
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / ".splatvlm.lock").symlink_to(precious)
    with pytest.raises(SplatVLMError, match="is a symbolic link"):
        RunLock(run_dir).acquire()
    (run_dir / ".splatvlm.lock").unlink()
    os.link(precious, run_dir / ".splatvlm.lock")
    with pytest.raises(SplatVLMError, match="has other hard links"):
        RunLock(run_dir).acquire()
    assert precious.read_text() == "do not truncate me"


def test_symlinked_lock_in_a_run_folder_refuses_the_overwrite_untouched(tmp_path):
    import dataclasses

    from splatvlm.commands.generate import RunControl, prepare_single
    from splatvlm.config import load_run_config

    precious = tmp_path / "precious.txt"
    precious.write_text("do not truncate me")
    run_dir = tmp_path / "a_run"
    run_dir.mkdir()
    (run_dir / "run.json").write_text(json.dumps({"id": "0" * 32, "prompt": "a cat"}))
    (run_dir / ".splatvlm.lock").symlink_to(precious)
    control = RunControl(progress=False, overwrite=True)
    cfg = dataclasses.replace(load_run_config("demo"), steps=2)
    with pytest.raises(SplatVLMError, match="is a symbolic link"):
        prepare_single("a cat", tmp_path / "a.ply", cfg, control, None)
    assert precious.read_text() == "do not truncate me"


def test_temp_file_is_never_an_existing_file_or_a_symlink(tmp_path, monkeypatch):
    from splatvlm import files

    names = iter(["taken", "taken", "free"])
    monkeypatch.setattr(files, "temp_name", lambda path: f".{path.stem}.{next(names)}.tmp{path.suffix}")
    (tmp_path / "target").write_text("precious")
    (tmp_path / ".out.taken.tmp.bin").symlink_to(tmp_path / "target")
    with atomic_path(tmp_path / "out.bin") as tmp:
        assert tmp.name == ".out.free.tmp.bin"  # the symlinked name was skipped, never opened
        tmp.write_bytes(b"new")
    assert (tmp_path / "out.bin").read_bytes() == b"new" and (tmp_path / "target").read_text() == "precious"


# ---------------------------------------------------------------------------------------------------
# A full disk is one line naming the output


def test_torch_save_full_disk_runtime_error_names_the_checkpoint(tmp_path, monkeypatch):
    from splatvlm.config import load_run_config
    from splatvlm.gaussians.scene import SceneConfig, init_ball
    from splatvlm.run.train_state import new_state, save_checkpoint

    cfg = load_run_config("demo")
    state = new_state(init_ball(SceneConfig(num_points=16), torch.Generator().manual_seed(0)), cfg, "cpu")

    def full_disk(obj, f):  # what torch.save raises when the disk fills up mid-write
        Path(f).write_bytes(b"PK half")
        raise RuntimeError("[enforce fail at inline_container.cc:858] . PytorchStreamWriter failed writing file "
                           "data/0: file write failed")  # fmt: skip

    monkeypatch.setattr(torch, "save", full_disk)
    path = tmp_path / "checkpoint.pt"
    with pytest.raises(OSError) as e:
        save_checkpoint(path, state, cfg)
    assert e.value.errno in (errno.ENOSPC, errno.EIO) and e.value.filename == str(path)
    line = os_error_line(e.value)
    assert "\n" not in line and str(path) in line
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # no checkpoint, no temp file


def tiny_ply(path: Path) -> Path:
    from splatvlm.gaussians.ply import save_ply
    from splatvlm.gaussians.scene import SceneConfig, init_ball

    save_ply(init_ball(SceneConfig(num_points=32), torch.Generator().manual_seed(0)), path)
    return path


def stale_temp(folder: Path, stem: str, suffix: str) -> Path:
    """A temporary file as a killed writer on this host leaves it."""
    from splatvlm.files import _HOST

    out = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    )
    path = folder / f".{stem}.~{_HOST}-{int(out.stdout)}-0123abcd.tmp{suffix}"
    path.write_bytes(b"half")
    return path


def test_a_command_removes_its_stale_temp_files_and_reports_a_full_disk_in_one_line(
    tmp_path, monkeypatch, capsys
):
    import imageio.v3 as iio

    from splatvlm.cli import main

    ply = tiny_ply(tmp_path / "s.ply")
    out = tmp_path / "out.png"
    stale = stale_temp(tmp_path, "out", ".png")
    args = ["render", str(ply), "-o", str(out), "--frames", "1", "--resolution", "16", "--device", "cpu"]
    real = iio.imwrite

    def full_disk(uri, *a, **k):
        raise OSError(errno.ENOSPC, "No space left on device", str(uri))

    monkeypatch.setattr(iio, "imwrite", full_disk)
    assert main(args) == 1
    err = capsys.readouterr().err.strip()
    problems = [line for line in err.splitlines() if not line.startswith("turntable frames")]  # progress
    assert len(problems) == 1 and f"{out}: No space left on device (errno 28 ENOSPC)" in problems[0], err
    assert not stale.exists()  # removed at the command's start
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.ply"]
    monkeypatch.setattr(iio, "imwrite", real)
    assert main(args) == 0 and out.is_file()


# ---------------------------------------------------------------------------------------------------
# Config values: a run's sizes and ranges (checked on resume as on a new run: test_generate.py)


@pytest.mark.parametrize(
    "change, match",
    [
        ({"render": {"torch_chunk": 0}}, "--render.torch-chunk must be positive"),
        ({"render": {"near_plane": -1.0}}, "--render.near-plane must be positive"),
        ({"render": {"far_plane": 0.001}}, "--render.far-plane must be more than"),
        ({"scene": {"opacity": 1.5}}, "--scene.opacity must be in"),
        ({"scene": {"lr_means": float("nan")}}, "--scene.lr-means must be >= 0"),
        ({"camera": {"fovy_range": [50.0, 10.0]}}, "--camera.fovy-range must be low <= high"),
        ({"strategy": {"prune_opa": 1.0}}, "--strategy.prune-opa must be in"),
        ({"weights": {"vlm": {"start": 1.0, "ramp_steps": -1}}}, "--weights.vlm.ramp-steps must be >= 0"),
    ],
)
def test_config_sizes_and_ranges_are_refused_in_one_line(change, match):
    from splatvlm.config import apply_overrides, list_presets, load_run_config, validate_run_config

    for name in list_presets():  # every preset keeps them
        validate_run_config(load_run_config(name))
    with pytest.raises(SplatVLMError, match=match) as e:
        validate_run_config(apply_overrides(load_run_config("demo"), change))
    assert "\n" not in str(e.value)


# ---------------------------------------------------------------------------------------------------
# Sidecars named after their output


def textured_box(rgb):
    import trimesh
    from PIL import Image

    mesh = trimesh.creation.box()
    uv = np.random.default_rng(0).random((len(mesh.vertices), 2))
    mesh.visual = trimesh.visual.TextureVisuals(uv=uv, image=Image.new("RGB", (8, 8), rgb))
    return mesh


def test_two_textured_obj_exports_in_one_folder_never_share_a_texture(tmp_path):
    from splatvlm.outputs.mesh import MeshConfig, check_mesh_output, save_mesh

    written = save_mesh(textured_box((255, 0, 0)), tmp_path / "a.obj")
    assert sorted(p.name for p in written) == ["a.mtl", "a.obj", "a.png"]
    red = (tmp_path / "a.png").read_bytes()
    save_mesh(textured_box((0, 0, 255)), tmp_path / "b.obj")
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "a.mtl",
        "a.obj",
        "a.png",
        "b.mtl",
        "b.obj",
        "b.png",
    ]
    assert (tmp_path / "a.png").read_bytes() == red != (tmp_path / "b.png").read_bytes()
    assert (
        "map_Kd b.png" in (tmp_path / "b.mtl").read_text()
        and "mtllib b.mtl" in (tmp_path / "b.obj").read_text()
    )
    (tmp_path / "c.png").write_bytes(b"a photo")  # a sidecar's name taken: refused without --overwrite
    with pytest.raises(SplatVLMError, match="c.png .* already exists; pass --overwrite"):
        check_mesh_output(tmp_path / "c.obj", MeshConfig(texture=64), overwrite=False)
    check_mesh_output(tmp_path / "c.obj", MeshConfig(texture=64), overwrite=True)
    check_mesh_output(tmp_path / "c.obj", MeshConfig(texture=0), overwrite=False)  # no texture, no .png


# ---------------------------------------------------------------------------------------------------
# The viewer: connections capped, accept errors once


def _handshake(port):
    """Open viser's websocket as a local program; the HTTP status (101 = open)."""
    import viser
    from websockets.exceptions import InvalidStatus, WebSocketException
    from websockets.sync.client import connect

    try:
        with connect(
            f"ws://127.0.0.1:{port}", subprotocols=[f"viser-v{viser.__version__}"], open_timeout=10
        ) as ws:
            assert ws.recv(timeout=10)  # the viewer's state arrives: this client is served
            return 101
    except InvalidStatus as e:
        return e.response.status_code
    except (OSError, WebSocketException):  # closed by the server
        return None


def test_viewer_connections_are_capped_and_refusals_said_once(tmp_path, capfd):
    import socket

    pytest.importorskip("viser")
    from splatvlm.viewer.server import Viewer, ViewerConfig

    v = Viewer(
        ViewerConfig(port=0, max_connections=2), lambda *a: np.zeros((a[3], a[2], 3), np.uint8), tmp_path
    )
    try:
        idle = [socket.create_connection(("127.0.0.1", v.port), timeout=5) for _ in range(2)]
        time.sleep(0.3)  # accepted by the server's loop
        assert [_handshake(v.port) for _ in range(3)] == [None, None, None]  # closed at once
        for s in idle:
            s.close()
        deadline = time.monotonic() + 10
        while _handshake(v.port) != 101:  # served again once they are gone
            assert time.monotonic() < deadline, "never served again"
            time.sleep(0.1)
    finally:
        v.close()
    err = capfd.readouterr().err
    assert err.count("refused a connection: 2 are open") == 1


def test_accept_errors_and_server_log_errors_print_once_in_one_line(capfd):
    import logging

    from splatvlm.viewer.guard import _once_logger, loop_errors_once

    passed = []
    handler = loop_errors_once(passed.append)
    emfile = {
        "message": "socket.accept() out of system resource",
        "exception": OSError(errno.EMFILE, "Too many open files"),
    }
    for _ in range(300):  # asyncio retries a failed accept every second
        handler(None, emfile)
    other = {"message": "Task exception was never retrieved", "exception": ValueError("x")}
    handler(None, other)
    assert passed == [other]  # everything else goes to asyncio's own handler
    logger = _once_logger("splatvlm.test.websockets")
    for _ in range(50):
        try:
            raise OSError(errno.EMFILE, "Too many open files")
        except OSError:
            logger.error("opening handshake failed", exc_info=True)
    logger.log(logging.INFO, "server listening")  # below errors: not shown
    err = capfd.readouterr().err.strip().splitlines()
    assert len(err) == 2 and "errno 24 EMFILE" in err[0] and "opening handshake failed: OSError" in err[1], (
        err
    )


# ---------------------------------------------------------------------------------------------------
# A LoRA folder holding a pickle: one line, nothing run, no run folder


class _Payload:
    def __reduce__(self):
        return (print, ("pwned",))


def pickled_adapter(folder: Path) -> Path:
    folder.mkdir()
    config = {
        "peft_type": "LORA",
        "r": 4,
        "lora_alpha": 8,
        "target_modules": ["q_proj"],
        "base_model_name_or_path": "demo",
    }
    (folder / "adapter_config.json").write_text(json.dumps(config))
    torch.save({"base_model.model.x.lora_A.weight": _Payload()}, folder / "adapter_model.bin")
    return folder


def test_pickled_lora_bin_is_one_line_and_leaves_no_run_folder(tmp_path, capfd):
    from splatvlm.cli import main
    from splatvlm.guidance.adapters import adapter_shapes

    lora = pickled_adapter(tmp_path / "lora")
    with pytest.raises(SplatVLMError, match="adapter_model.bin is not a plain tensor file .*GLOBAL") as e:
        adapter_shapes(lora)
    assert "\n" not in str(e.value)
    out = tmp_path / "out" / "cat.ply"
    rc = main(
        ["generate", "a cat", "--preset", "demo", "--device", "cpu", "-o", str(out), "--vlm.lora", str(lora)]
    )
    captured = capfd.readouterr()
    err = captured.err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "adapter_model.bin" in err[0], err
    assert "pwned" not in captured.out + captured.err
    assert not (tmp_path / "out" / "cat_run").exists() and not out.exists()


_LOW_FD_CHILD = """
import os, resource, sys, time
import numpy as np
from splatvlm.files import atomic_write_text
from splatvlm.viewer.server import Viewer, ViewerConfig

v = Viewer(ViewerConfig(port=0, max_connections=4), lambda *a: np.zeros((a[3], a[2], 3), np.uint8), sys.argv[1])
soft = len(os.listdir("/proc/self/fd")) + 16  # a low limit: 16 descriptors to spare
resource.setrlimit(resource.RLIMIT_NOFILE, (soft, resource.getrlimit(resource.RLIMIT_NOFILE)[1]))
print("port", v.port, flush=True)
sys.stdin.readline()  # the parent has opened its clients
for i in range(20):  # the run's own writes go on
    atomic_write_text(os.path.join(sys.argv[1], f"out{i}.txt"), "x")
    time.sleep(0.05)
print("writes ok", flush=True)
v.close()
"""


def test_local_clients_under_a_low_fd_limit_do_not_end_the_run(tmp_path):
    """Many idle local clients: the viewer closes those over its cap at once, so the run's writes still get
    descriptors, and what it prints stays a few lines (no traceback per failed accept)."""
    import socket

    pytest.importorskip("viser")
    child = subprocess.Popen([sys.executable, "-c", _LOW_FD_CHILD, str(tmp_path)], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip
    clients = []
    try:
        line = ""
        while not line.startswith("port "):  # after viser's banner
            line = child.stdout.readline()
            assert line, child.stderr.read()[-2000:]
        port = int(line.split()[1])
        for _ in range(60):  # beyond the listen queue a connect may time out: fine, it held nothing
            with contextlib.suppress(OSError):
                clients.append(socket.create_connection(("127.0.0.1", port), timeout=0.5))
        time.sleep(1.0)  # the server accepts (and closes) them
        child.stdin.write("go\n")
        child.stdin.flush()
        out, err = child.communicate(timeout=60)
    finally:
        for c in clients:
            c.close()
        if child.poll() is None:
            child.kill()
    assert "writes ok" in out, err[-2000:]
    lines = [ln for ln in err.splitlines() if ln.strip() and "Server stopped" not in ln]
    print(f"{len(clients)} clients connected; the viewer printed: {lines}")
    assert len(lines) <= 4 and "Traceback" not in err, err[-2000:]
