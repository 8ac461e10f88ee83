"""End-to-end tests of the `splatvlm` commands, in subprocesses as a user runs them."""

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from splatvlm.cli import main
from splatvlm.config import list_presets, preset_description
from splatvlm.gaussians.ply import load_ply, save_ply
from splatvlm.gaussians.scene import init_toy

FAST = [
    "--steps",
    "3",
    "--turntable-frames",
    "4",
    "--turntable-resolution",
    "32",
    "--log-every",
    "1",
    "--scene.num-points",
    "300",
]
# Set by splatvlm.cli.quiet_libraries when a test runs the CLI in-process; a subprocess must show that it quiets itself.
QUIET_ENV = (
    "HF_HUB_DISABLE_PROGRESS_BARS",
    "TRANSFORMERS_VERBOSITY",
    "DIFFUSERS_VERBOSITY",
    "TRANSFORMERS_NO_ADVISORY_WARNINGS",
)


def run(*args, timeout=600, **kw):
    """The CLI in a subprocess, as a user runs it (stdout and stderr are pipes, not a terminal)."""
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    for name in QUIET_ENV:
        env.pop(name, None)
    return subprocess.run(
        [sys.executable, "-m", "splatvlm.cli", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
        **kw,
    )


def cli(capsys, *args):
    """The CLI in this process (no interpreter start-up or imports per call): (exit code, stdout, stderr)."""
    code = main([str(a) for a in args])
    out = capsys.readouterr()
    return code, out.out, out.err


def one_line_error(code, err):
    assert code == 2, err
    lines = [ln for ln in err.strip().splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert "Traceback" not in err
    return lines[0]


@pytest.fixture(scope="module")
def toy_ply(tmp_path_factory):
    path = tmp_path_factory.mktemp("ref") / "toy.ply"
    save_ply(init_toy(600), path)
    return path


def test_generate_demo_writes_ply_and_logs_p_yes(tmp_path):
    # No -o: the output is named after the prompt, in the current folder.
    proc = run("generate", "a red apple", "--preset", "demo", *FAST, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "random weights" in proc.stderr or "randomly initialized" in proc.stderr
    params = load_ply(tmp_path / "a-red-apple.ply")
    assert params["means"].shape[0] > 0 and torch.isfinite(params["means"]).all()
    run_dir = tmp_path / "a-red-apple_run"
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert any("p_yes" in r and 0.0 < r["p_yes"] < 1.0 for r in records)
    assert any("loss_sds" in r for r in records)
    for name in ("config.yaml", "summary.json", "turntable.gif", "contact.png", "checkpoint.pt"):
        assert (run_dir / name).is_file(), name
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["finished"] is True
    assert all(type(summary[k]) is int for k in ("steps", "num_gaussians", "bad_steps")), summary
    # Off a terminal: one plain progress line per --log-every step, with the times.
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("step ")]
    assert [ln.split()[1] for ln in lines] == ["1/3", "2/3", "3/3"], proc.stdout
    assert all("#G=" in ln and "it/s" in ln and " elapsed " in ln and " eta " in ln for ln in lines), lines
    # Quiet: no library progress bars or deprecation warnings.
    for noise in ("Loading weights", "Writing model shards", "it/s]", "Warning"):
        assert noise not in proc.stderr, proc.stderr
    # No silent minutes: model loading and the turntable say what they do; the last line names every file
    # written and the whole time (exports included).
    assert "loading the prior (demo) ..." in proc.stderr and "loaded the reward VLM in" in proc.stderr
    assert "turntable frames: 4/4 in" in proc.stderr
    done = proc.stdout.strip().splitlines()[-1]
    assert done.startswith(
        "done: a-red-apple.ply, a-red-apple_run/turntable.gif, a-red-apple_run/contact.png ("
    )
    assert float(re.search(r"Gaussians, ([\d.]+) s\)", done).group(1)) == pytest.approx(
        summary["seconds"], abs=0.06
    )
    # A run folder made in a git checkout does not show as untracked; the output itself does.
    assert (run_dir / ".gitignore").read_text().splitlines()[-1] == "*"


def test_stop_after_then_resume(tmp_path, capsys):
    out = tmp_path / "new" / "folders" / "a.ply"  # -o makes the missing parent folders
    code, _, err = cli(capsys, "generate", "a cat", "--preset", "demo", "-o", out, *FAST, "--stop-after", "2")
    assert code == 0, err
    run_dir = out.parent / "a_run"
    assert not out.exists() and (run_dir / "partial.ply").is_file()
    assert torch.load(run_dir / "checkpoint.pt", weights_only=True)["step"] == 2
    code, _, err = cli(capsys, "generate", "--resume", run_dir)
    assert code == 0, err
    assert "resuming" in err and out.is_file()


def test_batch_skips_finished_and_reports(tmp_path, capsys):
    prompts = tmp_path / "prompts.json"
    prompts.write_text(json.dumps(["a red apple", "a blue chair"]))
    out = tmp_path / "batch"
    args = (
        "generate",
        "--prompts",
        prompts,
        "--out-dir",
        out,
        "--preset",
        "demo",
        *FAST,
        "--steps",
        "2",
        "--turntable-frames",
        "0",
    )
    code, _, err = cli(capsys, *args)
    assert code == 0, err
    folders = sorted(p.name for p in out.iterdir() if p.is_dir())
    assert folders == ["000-a-red-apple", "001-a-blue-chair"]
    assert all((out / f / "scene.ply").is_file() for f in folders)
    report = json.loads((out / "batch_report.json").read_text())
    assert [e["status"] for e in report["prompts"]] == ["done", "done"] and report["world_size"] == 1
    assert "batch: 2 done, 0 skipped (done before), 0 failed" in err and "prompts/hour" in err
    assert (out / ".gitignore").is_file()
    (out / folders[1] / "summary.json").unlink()  # pretend the second one was interrupted
    code, stdout, err = cli(capsys, *args)
    assert code == 0, err
    assert "done already: 000-a-red-apple" in err
    assert "done already: 001" not in err
    report = json.loads((out / "batch_report.json").read_text())
    assert [e["status"] for e in report["prompts"]] == ["already_done", "done"]
    assert "batch: 1 done, 1 skipped (done before), 0 failed" in err
    assert [ln.split()[1] for ln in stdout.splitlines() if ln.startswith("done: ")] == [
        str(out / folders[1] / "scene.ply")
    ]  # the prompt run now; not the one done before
    # Nothing left to do: no done lines and no rate of zero.
    code, stdout, err = cli(capsys, *args)
    assert code == 0, err
    assert "batch: 0 done, 2 skipped (done before)" in err
    assert "done: " not in stdout and "prompts/hour" not in err


SIGNALS = [(signal.SIGINT, 130), (signal.SIGTERM, 143)]


@pytest.fixture(scope="module")
def long_runs(tmp_path_factory):
    """One long `generate` process per signal, all started at once: each test stops its own, and the others
    start up (imports, models) meanwhile rather than after it."""
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    runs = {}
    for sig, _ in SIGNALS:
        folder = tmp_path_factory.mktemp(signal.Signals(sig).name)
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "splatvlm.cli",
                "generate",
                "a dog",
                "--preset",
                "demo",
                "-o",
                str(folder / "s.ply"),
                "--steps",
                "5000",
                "--log-every",
                "1",
                "--scene.num-points",
                "300",
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        runs[sig] = (proc, folder)
    folder = tmp_path_factory.mktemp("batch")
    (folder / "prompts.txt").write_text("a dog\na cat\n")
    cmd = ["generate", "--prompts", str(folder / "prompts.txt"), "--out-dir", str(folder / "out")]
    cmd += ["--preset", "demo", "--steps", "5000", "--log-every", "1", "--scene.num-points", "300"]
    proc = subprocess.Popen(
        [sys.executable, "-m", "splatvlm.cli", *cmd],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    runs["batch"] = (proc, folder, cmd)
    yield runs
    for proc, *_ in runs.values():
        if proc.poll() is None:
            proc.kill()
            proc.communicate()


@pytest.mark.parametrize("sig, code", SIGNALS)
def test_signal_saves_checkpoint_and_exits(long_runs, sig, code):
    proc, tmp_path = long_runs[sig]
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


def test_ctrl_c_in_a_batch_says_to_rerun_it_and_writes_the_report(long_runs):
    import shlex

    proc, folder, cmd = long_runs["batch"]
    metrics = folder / "out" / "000-a-dog" / "metrics.jsonl"
    deadline = time.time() + 300
    while time.time() < deadline and not (metrics.exists() and metrics.read_text().count("\n") >= 2):
        time.sleep(0.5)
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130, stderr
    last = stderr.strip().splitlines()[-1]
    assert last.startswith("stopped: SIGINT at step") and "Traceback" not in stderr
    assert last.endswith("the same batch command runs again: " + shlex.join(["splatvlm", *cmd])), last
    assert "--resume" not in last  # not one run folder's command
    report = json.loads((folder / "out" / "batch_report.json").read_text())
    assert [e["status"] for e in report["prompts"]] == ["stopped", "missing"]
    assert report["interrupted"].startswith("SIGINT at step")


def test_fit_and_render(tmp_path, toy_ply, capsys):
    out = tmp_path / "fit.ply"
    code, stdout, err = cli(
        capsys, "fit", toy_ply, "-o", out, "--steps", "20", "--views", "4", "--heldout", "2", "--resolution", "24",
        "--scene.num-points", "200",
    )  # fmt: skip
    assert code == 0, err
    assert "held-out PSNR:" in stdout
    assert type(json.loads((tmp_path / "fit_run" / "summary.json").read_text())["num_gaussians"]) is int
    load_ply(out)
    for suffix in (".gif", ".png"):
        target = tmp_path / f"turn{suffix}"
        code, _, err = cli(capsys, "render", out, "-o", target, "--frames", "4", "--resolution", "32")
        assert code == 0, err
        assert target.stat().st_size > 100
    # A contact sheet defaults to 8 views: 4 columns x 2 rows.
    import imageio.v3 as iio

    code, _, err = cli(capsys, "render", out, "-o", tmp_path / "sheet.png", "--resolution", "16")
    assert code == 0, err
    assert iio.imread(tmp_path / "sheet.png").shape[:2] == (32, 64)
    # GPTEval3D's folder for an existing .ply: 120 views, --resolution applies.
    code, stdout, err = cli(
        capsys,
        "render",
        out,
        "--gpteval3d",
        tmp_path / "g" / "eval",
        "--resolution",
        "16",
        "--prompt-id",
        "7",
    )
    assert code == 0, err
    folder = tmp_path / "g" / "eval" / "splatvlm" / "7" / "0"
    assert sorted(p.name for p in folder.iterdir()) == sorted(
        [f"rgb_{i}.png" for i in range(120)] + [f"normal_{i}.png" for i in range(120)]
    )
    assert iio.imread(folder / "rgb_119.png").shape[:2] == (16, 16)


@pytest.mark.parametrize(
    "args, message",
    [
        (["generate", "   ", "-o", "{tmp}/x.ply", "--preset", "demo"], "prompt is empty"),
        (["generate", " ".join(["apple"] * 100), "-o", "{tmp}/x.ply", "--preset", "demo"], "tokens long"),
        (["generate", "a cat", "-o", "{tmp}/x.ply", "--preset", "nope"], "unknown preset"),
        (
            ["generate", "a cat", "-o", "{tmp}/x.ply", "--preset", "demo", "--steps", "0"],
            "--steps must be positive",
        ),
        (
            ["generate", "a cat", "-o", "{tmp}/x.ply", "--preset", "demo", "--camera.num-views", "-4"],
            "num_views must be positive",
        ),
        (["generate", "a cat", "-o", "{tmp}/exists.ply/x.ply", "--preset", "demo"], "not a folder"),
        (["generate", "a cat", "-o", "{tmp}/exists.ply", "--preset", "demo"], "already exists"),
        (["generate", "a cat", "-o", "{tmp}/x.ply", "--bogus-flag", "1"], "bogus"),
        (["generate", "a cat", "-o", "{tmp}/x.ply", "--steps", "many"], "many"),
        (
            ["generate", "a cat", "-o", "{tmp}/x.ply", "--preset", "demo", "--sds.model", "{tmp}/no-weights"],
            "--sds.model",
        ),
        (
            ["generate", "a cat", "-o", "{tmp}/x.ply", "--preset", "demo", "--vlm.model", "{tmp}/no-weights"],
            "--vlm.model",
        ),
        (["generate", "--prompts", "{tmp}/bad.txt", "--out-dir", "{tmp}/o", "--preset", "demo"], "not UTF-8"),
        (
            ["generate", "a cat", "-o", "{tmp}/x.ply", "--config", "{tmp}/bad.yaml"],
            "did you mean 'sds.model'",
        ),
        (["generate", "--resume", "{tmp}"], "not a splatvlm run folder"),
        (["generate", "--resume", "{tmp}/nope_run"], "run folder {tmp}/nope_run not found"),
        (["fit", "{tmp}/nope.ply", "-o", "{tmp}/x.ply"], "file not found"),
        (["fit", "{tmp}/exists.ply", "-o", "{tmp}/x.ply"], "cannot load"),
        (["render", "{tmp}/exists.ply", "-o", "{tmp}/x.jpg"], "must end in"),
        (["view", "{tmp}/exists.ply", "--port", "70000"], "--port"),
        (["train-reward", "{tmp}/none.jsonl", "-o", "{tmp}/adapter"], "none.jsonl"),
        (["bench", "--preset", "demo", "--steps", "0", "-o", "{tmp}/b"], "--timed-steps must be positive"),
    ],
)
def test_bad_input_one_line_error(tmp_path, capsys, args, message):
    (tmp_path / "exists.ply").write_text("not a ply")
    (tmp_path / "bad.txt").write_bytes(b"\xff\xfe\xfa")
    (tmp_path / "bad.yaml").write_text("sds:\n  modell: x\n")
    code, _, err = cli(capsys, *[a.format(tmp=tmp_path) for a in args])
    line = one_line_error(code, err)
    assert message.format(tmp=tmp_path) in line, line
    assert (tmp_path / "exists.ply").read_text() == "not a ply"  # never touched


def test_misspelled_flag_names_the_flag_not_its_value(tmp_path, capsys):
    code, _, err = cli(capsys, "generate", "a cat", "-o", tmp_path / "x.ply", "--stpes", "10")
    line = one_line_error(code, err)
    assert line.startswith("error: unknown flag --stpes (did you mean --steps?)"), line
    assert "10" not in line
    code, _, err = cli(capsys, "generate", "a cat", "--stpes=10", "--bogus")
    assert one_line_error(code, err).startswith("error: unknown flags --stpes, --bogus;")
    code, _, err = cli(capsys, "generate", "a cat", "a dog")
    assert one_line_error(code, err).startswith("error: unexpected argument a dog;")


def test_viewer_lets_go_after_the_done_line(tmp_path, capsys, monkeypatch):
    pytest.importorskip("viser")
    import io

    from splatvlm.cli_generate import viewer_linger

    args = [
        "generate",
        "a cat",
        "--preset",
        "demo",
        "-o",
        tmp_path / "v.ply",
        *FAST,
        "--turntable-frames",
        "0",
    ]
    args += ["--viewer", "--port", str(20000 + os.getpid() % 20000)]
    t0 = time.monotonic()
    code, out, err = cli(capsys, *args, "--viewer-linger", "1.5")
    assert code == 0, err
    lines = out.splitlines()
    done = next(i for i, ln in enumerate(lines) if ln.startswith("done: "))
    still = next(i for i, ln in enumerate(lines) if ln.startswith("viewer: still serving for 1.5 s"))
    assert done < still and time.monotonic() - t0 >= 1.5
    monkeypatch.setenv("COLUMNS", "80")  # one column of flags
    with pytest.raises(SystemExit):
        main(["generate", "--help"])
    text = " ".join(re.sub(r"[│|]", " ", capsys.readouterr().out.split("--viewer-linger", 1)[1]).split())
    assert "Default: until Ctrl-C when run from a terminal, 0 otherwise" in text[:400], text[:400]
    # The default follows the terminal: until Ctrl-C for a person at one, at once for a script or pipe.
    monkeypatch.setattr(sys, "stdin", io.StringIO())
    assert viewer_linger(None) == 0 and viewer_linger(2.0) == 2.0
    monkeypatch.setattr(sys.stdin, "isatty", lambda: True)
    monkeypatch.setattr(sys.stdout, "isatty", lambda: True)
    assert viewer_linger(None) == float("inf")
    code, out, err = cli(capsys, "generate", "a cat", "-o", tmp_path / "w.ply", "--viewer-linger", "-1")
    assert "--viewer-linger must be >= 0" in one_line_error(code, err)


def test_toyworld_help(capsys):
    code, out, err = cli(capsys, "toyworld", "--help")
    assert code == 0 and "build" in out and "eval" in out and not err
    assert cli(capsys, "toyworld", "-h")[0] == 0
    code, _, err = cli(capsys, "toyworld")
    assert "splatvlm toyworld --help" in one_line_error(code, err)
    from splatvlm.cli_args import parse_one_line
    from splatvlm.toyworld.eval import EvalConfig

    assert parse_one_line(EvalConfig, [], "splatvlm toyworld eval").output == Path(
        "toyworld-out"
    )  # like bench


def test_unknown_command_and_help(capsys):
    assert cli(capsys, "frobnicate")[0] == 2
    code, out, _ = cli(capsys, "--help")
    assert code == 0 and "generate" in out and "--verbose" in out
    with pytest.raises(SystemExit) as e:
        main(["generate", "--help"])
    out = capsys.readouterr().out
    assert e.value.code == 0 and "--vlm.lora" in out and "--sds.model" in out
    for name in list_presets():  # --preset's help names every preset
        assert name in out.split("--preset", 1)[1].split("--", 1)[0].replace("\n", " ").replace("│", " "), (
            name
        )


def _undocumented_flags(help_text: str) -> list[str]:
    """Flags in tyro's help box whose only text is '(default: ...)' or '(required)'."""
    entries: list[list[str]] = []
    for line in help_text.splitlines():
        m = re.match(r"^│ (.*?)\s*│$", line)
        if not m:
            continue
        body = m.group(1)
        if re.match(r"^(-|\[|[A-Z]+\b)", body):
            entries.append([body])
        elif entries:
            entries[-1].append(body.strip())
    bad = []
    for entry in entries:
        head = re.split(r"\s{2,}", entry[0], maxsplit=1)
        text = " ".join(head[1:] + entry[1:])
        if not re.sub(r"\((default|required|fixed)[^)]*\)", "", text).strip():
            bad.append(head[0])
    return bad


@pytest.mark.parametrize("command", ["generate", "fit", "render", "view", "bench", "train-reward", "presets"])
def test_every_flag_has_a_description(command, capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "100")
    with pytest.raises(SystemExit) as e:
        main([command, "--help-all"])
    out = capsys.readouterr().out
    assert e.value.code == 0 and "--help" in out
    assert _undocumented_flags(out) == []
    if command == "fit":  # only the sections fit reads
        assert "--scene.lr-means" in out and "--weights.l1.start" in out
        for unused in ("--sds.", "--vlm.", "--weights.sds", "--weights.vlm", "--turntable"):
            assert unused not in out, unused


def test_presets_list_their_descriptions_as_the_readme_does(capsys):
    code, out, _ = cli(capsys, "presets")
    assert code == 0
    listed = dict(line.split(None, 1) for line in out.strip().splitlines())
    assert sorted(listed) == list_presets()
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    readme = readme.split("### Presets", 1)[1].split("\n\n", 2)[1]  # the table under the heading
    rows = dict(re.findall(r"^\| `([\w-]+)`(?: \(default\))? \| (.+?) \|$", readme, flags=re.M))
    assert sorted(rows) == list_presets()
    for name in list_presets():
        assert rows[name] == preset_description(name), name
        assert listed[name].startswith(preset_description(name))
    code, out, _ = cli(capsys, "presets", "demo")
    assert code == 0 and "steps: 60" in out
    with pytest.raises(SystemExit) as e:
        main(["presets", "--help"])
    assert e.value.code == 0 and "List the presets" in capsys.readouterr().out
