"""The studio on CPU: the queue and its file, the live run's controls, the runner over real demo runs (stop,
queue again, resume), the gallery's file rules, the URL token, and a foreign page that tries to enqueue."""

from __future__ import annotations

import json
import os
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import torch

import helpers
from splatvlm.errors import SplatVLMError
from splatvlm.gaussians.ply import load_ply
from splatvlm.gaussians.scene import SceneConfig, init_ball
from splatvlm.studio import gallery
from splatvlm.studio.app import md
from splatvlm.studio.live import LiveRun
from splatvlm.studio.presets import PresetInfo, check_preset, preset_table
from splatvlm.studio.queue import QUEUE_FILE, JobQueue
from splatvlm.studio.runner import Runner

DEMO = [PresetInfo("demo", "tiny random models", "not measured", True)]


def wait_for(cond, timeout: float, what: str):
    return helpers.wait_for(cond, timeout, what, period=0.05)


# ---------------------------------------------------------------------------------------------
# the queue


def test_queue_checks_prompts_and_numbers_folders_after_existing_ones(tmp_path):
    (tmp_path / "007-an-old-run").mkdir()  # a batch's or an earlier studio's folder
    q = JobQueue(tmp_path)
    with pytest.raises(SplatVLMError, match="empty"):
        q.add("   ", "demo")
    with pytest.raises(SplatVLMError, match="control characters"):
        q.add("a cat\x00", "demo")
    with pytest.raises(SplatVLMError, match="seed"):
        q.add("a cat", "demo", seed=-1)
    assert q.jobs == []
    a = q.add("  A red apple! ", "demo", seed=3)
    b = q.add("a red apple!", "demo")
    assert (a.id, a.prompt, a.seed) == ("008-a-red-apple", "A red apple!", 3)
    assert b.id == "009-a-red-apple"  # the same prompt twice: two jobs, two folders


def test_queue_reorders_cancels_and_survives_a_restart(tmp_path):
    q = JobQueue(tmp_path)
    ids = [q.add(p, "demo").id for p in ("one", "two", "three", "four")]
    assert q.take_next().id == ids[0]  # now running
    with pytest.raises(SplatVLMError, match="running"):
        q.move(ids[0], 1)
    with pytest.raises(SplatVLMError, match="running"):
        q.cancel(ids[0])
    q.move(ids[3], -1)
    q.move(ids[3], -5)  # clamps at the top of the waiting jobs; the running job stays first
    assert [j.id for j in q.jobs] == [ids[0], ids[3], ids[1], ids[2]]
    q.move(ids[1], +1)
    assert [j.id for j in q.jobs] == [ids[0], ids[3], ids[2], ids[1]]
    q.cancel(ids[2])
    # A killed studio: the file on disk holds the same order, and the running job comes back queued.
    again = JobQueue(tmp_path)
    assert [(j.id, j.state) for j in again.jobs] == [
        (ids[0], "queued"),
        (ids[3], "queued"),
        (ids[1], "queued"),
    ]
    assert again.take_next().id == ids[0]
    again.finish(ids[0], "done")
    again.finish(again.take_next().id, "stopped")
    assert [(j.id, j.state) for j in JobQueue(tmp_path).jobs] == [(ids[3], "stopped"), (ids[1], "queued")]
    assert not list(tmp_path.glob(".*tmp*")), "atomic writes leave no temporary files"


def test_queue_file_that_is_not_a_queue_is_refused_not_overwritten(tmp_path):
    path = tmp_path / QUEUE_FILE
    for text, match in (
        ("{not json", "not valid JSON"),
        ('{"jobs": 3}', "not a studio queue"),
        ('{"jobs": [{"id": "../../etc", "prompt": "x", "preset": "demo"}]}', "not a run folder name"),
        ('{"jobs": [{"id": "001-x", "prompt": "x", "preset": "demo", "state": "odd"}]}', "unknown state"),
    ):
        path.write_text(text)
        with pytest.raises(SplatVLMError, match=match):
            JobQueue(tmp_path)
        assert path.read_text() == text


# ---------------------------------------------------------------------------------------------
# the live run


def test_live_run_pause_stop_eta_and_save_now(tmp_path):
    params = init_ball(SceneConfig(num_points=32), generator=torch.Generator().manual_seed(0))
    live = LiveRun(10, tmp_path)
    live.update(params, 0, {"loss": 1.0, "p_yes": 0.25, "note": "text is ignored"})
    time.sleep(0.02)
    live.update(params, 2, {"loss": 0.5})
    assert live.steps_done == 3 and live.metrics["p_yes"] == 0.25 and "note" not in live.metrics
    assert live.eta_s == pytest.approx(7 * live.step_time_s)
    assert live.curves["loss"].values == [1.0, 0.5]

    live.set_paused(True)
    released = threading.Event()
    threading.Thread(target=lambda: (live.wait_if_paused(), released.set()), daemon=True).start()
    assert not released.wait(0.3), "a paused run must wait"
    live.request_stop()  # stopping releases a paused run and may not be paused again
    assert released.wait(5) and live.stop_requested()
    live.set_paused(True)
    assert not live.paused

    path = live.save_now()
    assert path == tmp_path / "snapshot_2.ply"
    assert torch.equal(load_ply(path)["means"], params["means"])


class Shown:
    def __init__(self):
        self.steps: list[int] = []

    def show_numbers(self, live):
        self.steps.append(live.step)

    def show_curves(self, live):
        pass

    def show_splats(self, splats):
        pass


def test_live_run_shows_the_latest_step_on_a_pause_and_at_the_end(tmp_path):
    params = init_ball(SceneConfig(num_points=32), generator=torch.Generator().manual_seed(0))
    display = Shown()
    live = LiveRun(10, tmp_path, display)
    live.update(params, 0, {"loss": 1.0})
    live.update(params, 1, {"loss": 0.9})  # within the update period: held back
    assert display.steps == [0]
    live.set_paused(True)
    threading.Thread(target=live.wait_if_paused, daemon=True).start()
    wait_for(lambda: display.steps == [0, 1], 5, "the paused view to show step 1")
    live.set_paused(False)
    live.update(params, 2, {"loss": 0.8})
    n = len(display.steps)
    live.show()  # the run's end
    assert len(display.steps) == n + 1 and display.steps[-1] == 2


def test_the_demo_preset_is_offered_when_its_models_resolve():
    # What `splatvlm studio` checks at start (tests elsewhere pass their presets in): "" means offered.
    assert check_preset("demo") == ""


# ---------------------------------------------------------------------------------------------
# the runner: real demo runs on CPU


class StopAt:
    """A display that presses Stop once the run reaches a step."""

    def __init__(self, step: int):
        self.step = step
        self.seen: list[int] = []

    def show_numbers(self, live):
        self.seen.append(live.step)
        if live.step >= self.step:
            live.request_stop()

    def show_curves(self, live):
        pass

    def show_splats(self, splats):
        assert splats["centers"].shape[1] == 3


def test_runner_runs_stops_and_resumes_ordinary_run_folders(tmp_path):
    q = JobQueue(tmp_path)
    job = q.add("a red apple", "demo", seed=1, steps=4)
    display = StopAt(1)
    runner = Runner(q, display=display)
    runner.start()
    try:
        wait_for(lambda: q.jobs and q.jobs[0].state == "stopped", 300, "the run to stop")
        run_dir = tmp_path / job.id
        assert (run_dir / "checkpoint.pt").is_file() and (run_dir / "partial.ply").is_file()
        assert not (run_dir / "summary.json").exists()
        info = json.loads((run_dir / "run.json").read_text())
        assert (info["prompt"], info["seed"]) == ("a red apple", 1)

        display.step = 10**9  # no more stops
        q.requeue(job.id)
        runner.wake()
        wait_for(lambda: not q.jobs, 300, "the resumed run to finish")
    finally:
        runner.close(timeout=300)
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["finished"] and summary["steps"] == 4
    assert (run_dir / "scene.ply").is_file() and not (run_dir / "partial.ply").exists()
    steps = [json.loads(line)["step"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert steps == sorted(set(steps)) and steps[-1] == 3, "resumed, not started over"
    assert [r.name for r in gallery.finished_runs(tmp_path)] == [job.id]


def test_runner_fails_a_job_whose_folder_holds_another_prompt(tmp_path):
    q = JobQueue(tmp_path)
    job = q.add("a red apple", "demo", steps=2)
    (tmp_path / job.id).mkdir()
    (tmp_path / job.id / "run.json").write_text(json.dumps({"prompt": "a blue car", "output": "x.ply"}))
    runner = Runner(q)
    runner.start()
    try:
        wait_for(lambda: q.jobs[0].state == "failed", 120, "the job to fail")
    finally:
        runner.close(timeout=60)
    assert "a blue car" in q.jobs[0].error
    assert sorted(p.name for p in (tmp_path / job.id).iterdir()) == ["run.json"], "nothing of it overwritten"


# ---------------------------------------------------------------------------------------------
# the gallery


def finished(tmp_path, name: str, prompt: str = "a cat") -> Path:
    run = tmp_path / name
    run.mkdir()
    params = init_ball(SceneConfig(num_points=16), generator=torch.Generator().manual_seed(0))
    from splatvlm.gaussians.ply import save_ply

    save_ply(params, run / "scene.ply")
    (run / "summary.json").write_text(json.dumps({"prompt": prompt, "finished": True, "steps": 5}))
    return run


def test_gallery_lists_finished_runs_and_serves_only_their_own_files(tmp_path):
    finished(tmp_path, "000-a-cat")
    (tmp_path / "001-stopped").mkdir()
    (tmp_path / "001-stopped" / "summary.json").write_text(json.dumps({"prompt": "x", "finished": False}))
    (tmp_path / "002-broken").mkdir()
    (tmp_path / "002-broken" / "summary.json").write_text("{")
    runs = gallery.finished_runs(tmp_path)
    assert [r.name for r in runs] == ["000-a-cat"]
    run = runs[0]
    assert gallery.splat_file(run) == (tmp_path / "000-a-cat" / "scene.ply").resolve()
    secret = tmp_path / "secret.txt"
    secret.write_text("not yours")
    os.symlink(secret, run.path / "contact.png")
    assert gallery.run_file(run, "contact.png") is None, "a link out of the run folder is not followed"
    assert gallery.run_file(run, "../secret.txt") is None
    with pytest.raises(SplatVLMError):
        gallery.read_file(run, "contact.png")


def test_gpteval3d_export_is_built_aside_and_zipped(tmp_path, monkeypatch):
    import io
    import zipfile

    monkeypatch.setattr(gallery, "GPTEVAL3D_VIEWS", 2)  # the folder logic, not 120 renders on CPU
    finished(tmp_path, "000-a-cat")
    run = gallery.finished_runs(tmp_path)[0]
    (run.path / ".gpteval3d.partial").mkdir()  # left by an export that was cut off
    (run.path / ".gpteval3d.partial" / "stale.png").write_bytes(b"x")
    seen = []
    folder = gallery.export_gpteval3d(run, lambda f, what: seen.append(f))
    assert folder == run.path / "gpteval3d" and not (run.path / ".gpteval3d.partial").exists()
    names = sorted(zipfile.ZipFile(io.BytesIO(gallery.zip_folder(folder))).namelist())
    assert names == [f"gpteval3d/splatvlm/0/0/{k}_{i}.png" for k in ("normal", "rgb") for i in (0, 1)]
    assert seen[-1] == 1.0


def test_text_from_users_and_files_cannot_reach_the_page_as_markup():
    evil = '<img src=x onerror="alert(1)"> **bold** | [link](http://x)'
    out = md(evil)
    assert "<" not in out and ">" not in out and "**" not in out and "](" not in out
    table = preset_table(DEMO + [PresetInfo("vlm3d", "", "188 s", False, "models not found")])
    assert "| demo | not measured |" in table and "vlm3d" in table.split("Not offered")[1]


# ---------------------------------------------------------------------------------------------
# network guard: the token and a foreign page


def test_token_is_required_for_the_page_and_the_websocket():
    viser = pytest.importorskip("viser")
    from websockets.exceptions import InvalidStatus
    from websockets.sync.client import connect

    from splatvlm.viewer.guard import guarded_server, token_ok

    assert token_ok("/abc?x=1", "abc") and token_ok("/abc/", "abc")
    assert not token_ok("/", "abc") and not token_ok("/abcd", "abc") and not token_ok("/ab", "abc")
    server = guarded_server(viser, "127.0.0.1", 0, share=False, token="s3cret")
    try:
        port = server.get_port()
        with pytest.raises(urllib.error.HTTPError, match="403"):
            urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=10)
        page = urllib.request.urlopen(f"http://127.0.0.1:{port}/s3cret", timeout=10).read()
        assert b"<html" in page.lower()
        protocol = [f"viser-v{viser.__version__}"]
        for path in ("/", "/wrong"):
            with pytest.raises(InvalidStatus, match="403"):
                connect(f"ws://127.0.0.1:{port}{path}", subprotocols=protocol, open_timeout=10)
        with connect(f"ws://127.0.0.1:{port}/s3cret", subprotocols=protocol, open_timeout=10) as ws:
            assert ws.recv(timeout=10)  # viser starts talking: the handshake was accepted
    finally:
        server.stop()


def test_a_foreign_origin_cannot_enqueue(tmp_path):
    viser = pytest.importorskip("viser")
    import msgspec
    from websockets.exceptions import InvalidStatus
    from websockets.sync.client import connect

    from splatvlm.studio.app import Studio, StudioConfig

    studio = Studio(StudioConfig(out_dir=tmp_path, port=0, steps=2), presets=DEMO)
    try:
        studio.runner.close()  # keep what gets queued in the queue
        port = studio.server.get_port()
        url, protocol = f"ws://127.0.0.1:{port}", [f"viser-v{viser.__version__}"]
        typed = {
            "type": "GuiUpdateMessage",
            "uuid": studio._gui_prompt._impl.uuid,
            "updates": {"value": "a cat"},
        }
        click = {
            "type": "GuiUpdateMessage",
            "uuid": studio._gui_generate._impl.uuid,
            "updates": {"value": True},
        }

        # viser takes a client for connected at its first camera message, as a browser sends at once.
        camera = {"type": "ViewerCameraMessage", "wxyz": [1, 0, 0, 0], "position": [3, 0, 1], "fov": 0.7,
                  "near": 0.01, "far": 100, "image_height": 480, "image_width": 640, "look_at": [0, 0, 0],
                  "up_direction": [0, 0, 1]}  # fmt: skip

        def type_and_click(origin: str) -> None:
            with connect(url, subprotocols=protocol, origin=origin, open_timeout=10) as ws:
                ws.send(msgspec.msgpack.encode(camera))
                ws.send(msgspec.msgpack.encode(typed))
                ws.send(msgspec.msgpack.encode(click))
                time.sleep(1.0)

        for origin in (
            "http://evil.example",
            "http://127.0.0.1.evil.example:80",
            f"http://localhost:{port + 1}",
        ):
            with pytest.raises(InvalidStatus, match="403"):
                type_and_click(origin)
        time.sleep(0.5)
        assert studio.queue.jobs == [] and not (tmp_path / QUEUE_FILE).read_text().count("a cat")
        # The same messages from the studio's own page are queued: the refusal above is the Origin's doing.
        type_and_click(f"http://127.0.0.1:{port}")
        wait_for(lambda: studio.queue.jobs, 10, "the job from the studio's own origin")
        assert [(j.prompt, j.preset, j.steps) for j in studio.queue.jobs] == [("a cat", "demo", 2)]
    finally:
        studio.close()
