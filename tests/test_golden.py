"""The demo run's .ply bytes are pinned, so that a refactor which claims to change no behavior is checked.

The hash was recorded with the code before a change meant to keep behavior (one torch thread, this kind of
machine: the CPU path is deterministic for a given thread count). A commit that changes the recipe on purpose
updates GOLDEN and says so in its message.
"""

import hashlib
import os
import subprocess
import sys

GOLDEN = "50b7a699a9aaad948e5712d32e88c76cae03105a2a9622654b05d96543b5cf6b"


def test_demo_ply_bytes_are_unchanged(tmp_path):
    out = tmp_path / "apple.ply"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    cmd = [
        sys.executable,
        "-m",
        "splatvlm.cli",
        "generate",
        "a red apple",
        "--preset",
        "demo",
        "--steps",
        "6",
    ]
    cmd += ["--seed", "0", "-o", str(out), "--turntable-frames", "0", "--log-every", "100"]
    subprocess.run(cmd, env=env, check=True, capture_output=True, cwd=tmp_path)
    assert hashlib.sha256(out.read_bytes()).hexdigest() == GOLDEN
