"""End-to-end tests of the `splatvlm` commands, in subprocesses as a user runs them."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from splatvlm.gaussians.ply import load_ply, save_ply
from splatvlm.gaussians.scene import init_toy

FAST = ["--steps", "6", "--turntable-frames", "4", "--turntable-resolution", "32", "--log-every", "1"]


def run(*args, timeout=600, **kw):
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    return subprocess.run(
        [sys.executable, "-m", "splatvlm.cli", *map(str, args)], capture_output=True, text=True, timeout=timeout, env=env, **kw
    )


def one_line_error(proc):
    assert proc.returncode == 2, proc.stderr
    lines = [ln for ln in proc.stderr.strip().splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    assert "Traceback" not in proc.stderr
    return lines[0]


@pytest.fixture(scope="module")
def toy_ply(tmp_path_factory):
    path = tmp_path_factory.mktemp("ref") / "toy.ply"
    save_ply(init_toy(600), path)
    return path


def test_generate_demo_writes_ply_and_logs_p_yes(tmp_path):
    out = tmp_path / "apple.ply"
    proc = run("generate", "a red apple", "--preset", "demo", "-o", out, *FAST)
    assert proc.returncode == 0, proc.stderr
    assert "random weights" in proc.stderr or "randomly initialized" in proc.stderr
    params = load_ply(out)
    assert params["means"].shape[0] > 0 and torch.isfinite(params["means"]).all()
    run_dir = tmp_path / "apple_run"
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert any("p_yes" in r and 0.0 < r["p_yes"] < 1.0 for r in records)
    assert any("loss_sds" in r for r in records)
    for name in ("config.yaml", "summary.json", "turntable.gif", "contact.png", "checkpoint.pt"):
        assert (run_dir / name).is_file(), name
    assert json.loads((run_dir / "summary.json").read_text())["finished"] is True


def test_stop_after_then_resume(tmp_path):
    out = tmp_path / "a.ply"
    proc = run("generate", "a cat", "--preset", "demo", "-o", out, *FAST, "--stop-after", "3")
    assert proc.returncode == 0, proc.stderr
    assert not out.exists() and (tmp_path / "a_run" / "partial.ply").is_file()
    assert torch.load(tmp_path / "a_run" / "checkpoint.pt", weights_only=True)["step"] == 3
    proc = run("generate", "--resume", tmp_path / "a_run")
    assert proc.returncode == 0, proc.stderr
    assert "resuming" in proc.stderr and out.is_file()


def test_batch_skips_finished(tmp_path):
    prompts = tmp_path / "prompts.json"
    prompts.write_text(json.dumps(["a red apple", "a blue chair"]))
    out = tmp_path / "batch"
    proc = run("generate", "--prompts", prompts, "--out-dir", out, "--preset", "demo", *FAST, "--turntable-frames", "0")
    assert proc.returncode == 0, proc.stderr
    folders = sorted(p.name for p in out.iterdir())
    assert folders == ["000-a-red-apple", "001-a-blue-chair"]
    assert all((out / f / "scene.ply").is_file() for f in folders)
    (out / folders[1] / "summary.json").unlink()  # pretend the second one was interrupted
    proc = run("generate", "--prompts", prompts, "--out-dir", out, "--preset", "demo", *FAST, "--turntable-frames", "0")
    assert proc.returncode == 0, proc.stderr
    assert "done already: 000-a-red-apple" in proc.stderr
    assert "done already: 001" not in proc.stderr


@pytest.mark.parametrize("sig, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_signal_saves_checkpoint_and_exits(tmp_path, sig, code):
    out = tmp_path / "s.ply"
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    proc = subprocess.Popen(
        [sys.executable, "-m", "splatvlm.cli", "generate", "a dog", "--preset", "demo", "-o", str(out), "--steps", "5000", "--log-every", "1"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
    )
    metrics = tmp_path / "s_run" / "metrics.jsonl"
    deadline = time.time() + 300
    while time.time() < deadline and not (metrics.exists() and metrics.read_text().count("\n") >= 2):
        time.sleep(0.5)
    proc.send_signal(sig)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == code, stderr
    assert signal.Signals(sig).name in stderr and "Traceback" not in stderr
    ckpt = torch.load(tmp_path / "s_run" / "checkpoint.pt", weights_only=True)
    assert ckpt["step"] >= 2
    assert load_ply(tmp_path / "s_run" / "interrupted.ply")["means"].shape[0] > 0


def test_fit_and_render(tmp_path, toy_ply):
    out = tmp_path / "fit.ply"
    proc = run("fit", toy_ply, "-o", out, "--steps", "40", "--views", "8", "--heldout", "2", "--resolution", "32")
    assert proc.returncode == 0, proc.stderr
    assert "held-out PSNR:" in proc.stdout
    load_ply(out)
    for suffix in (".gif", ".png"):
        target = tmp_path / f"turn{suffix}"
        proc = run("render", out, "-o", target, "--frames", "4", "--resolution", "32")
        assert proc.returncode == 0, proc.stderr
        assert target.stat().st_size > 100


@pytest.mark.parametrize(
    "args, message",
    [
        (["generate", "   ", "-o", "{tmp}/x.ply", "--preset", "demo"], "prompt is empty"),
        (["generate", " ".join(["apple"] * 100), "-o", "{tmp}/x.ply", "--preset", "demo"], "tokens long"),
        (["generate", "a cat", "-o", "{tmp}/x.ply", "--preset", "nope"], "unknown preset"),
        (["generate", "a cat", "-o", "{tmp}/x.ply", "--preset", "demo", "--steps", "0"], "--steps must be positive"),
        (["generate", "a cat", "-o", "{tmp}/x.ply", "--preset", "demo", "--camera.num-views", "-4"], "num_views must be positive"),
        (["generate", "a cat", "-o", "{tmp}/exists.ply/x.ply", "--preset", "demo"], "not a folder"),
        (["generate", "a cat", "-o", "{tmp}/exists.ply", "--preset", "demo"], "already exists"),
        (["generate", "a cat", "-o", "{tmp}/x.ply", "--bogus-flag", "1"], "bogus"),
        (["generate", "a cat", "-o", "{tmp}/x.ply", "--steps", "many"], "many"),
        (["generate", "a cat", "-o", "{tmp}/x.ply", "--preset", "demo", "--sds.model", "{tmp}/no-weights"], "--sds.model"),
        (["generate", "a cat", "-o", "{tmp}/x.ply", "--preset", "demo", "--vlm.model", "{tmp}/no-weights"], "--vlm.model"),
        (["generate", "--prompts", "{tmp}/bad.txt", "--out-dir", "{tmp}/o", "--preset", "demo"], "not UTF-8"),
        (["generate", "a cat", "-o", "{tmp}/x.ply", "--config", "{tmp}/bad.yaml"], "unknown config key"),
        (["generate", "--resume", "{tmp}"], "not a splatvlm run folder"),
        (["fit", "{tmp}/nope.ply", "-o", "{tmp}/x.ply"], "file not found"),
        (["fit", "{tmp}/exists.ply", "-o", "{tmp}/x.ply"], "cannot load"),
        (["render", "{tmp}/exists.ply", "-o", "{tmp}/x.jpg"], "must end in"),
        (["view", "{tmp}/exists.ply", "--port", "70000"], "--port"),
        (["train-reward", "{tmp}/none.jsonl", "-o", "{tmp}/adapter"], "none.jsonl"),
        (["bench", "--preset", "demo", "--steps", "0", "-o", "{tmp}/b"], "--steps must be positive"),
    ],
)
def test_bad_input_one_line_error(tmp_path, args, message):
    (tmp_path / "exists.ply").write_text("not a ply")
    (tmp_path / "bad.txt").write_bytes(b"\xff\xfe\xfa")
    (tmp_path / "bad.yaml").write_text("sds:\n  modle: x\n")
    proc = run(*[a.format(tmp=tmp_path) for a in args], timeout=120)
    line = one_line_error(proc)
    assert message in line, line
    assert (tmp_path / "exists.ply").read_text() == "not a ply"  # never touched


def test_unknown_command_and_help():
    assert run("frobnicate").returncode == 2
    proc = run("--help")
    assert proc.returncode == 0 and "generate" in proc.stdout
    proc = run("generate", "--help")
    assert proc.returncode == 0 and "--vlm.lora" in proc.stdout and "--sds.model" in proc.stdout
