"""The scripts under examples/ run as a user would run them (demo models, CPU, a few steps)."""

import json
import os
import subprocess
import sys
from pathlib import Path

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def run(script: str, *args: str, cwd: Path) -> str:
    env = dict(os.environ, OMP_NUM_THREADS="1")
    done = subprocess.run(
        [sys.executable, str(EXAMPLES / script), *args], cwd=cwd, env=env, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


def test_generate_then_read_the_run(tmp_path):
    out = run("01_generate_from_python.py", "--steps", "3", "-o", "apple.ply", cwd=tmp_path)
    assert "apple.ply: 1500 Gaussians after 3 steps" in out
    assert (tmp_path / "apple.ply").stat().st_size > 1000
    out = run("03_read_a_run.py", "apple_run", cwd=tmp_path)
    assert "prompt 'a red apple', seed 0, 3 steps" in out and "finished True" in out
    assert (tmp_path / "apple_run" / "four_sides.png").stat().st_size > 100


def test_custom_loss_term(tmp_path):
    out = run("02_custom_loss_term.py", "--steps", "2", "--run-dir", "red_run", cwd=tmp_path)
    assert "loss_red" in out
    rows = [json.loads(line) for line in (tmp_path / "red_run" / "metrics.jsonl").read_text().splitlines()]
    assert rows and all(r["w_red"] == 10.0 and "loss_red" in r and "loss_sds" in r for r in rows)
