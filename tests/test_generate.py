"""Run folders (generate.py, batch.py): overwrite builds aside, resume checks, batch keys, locks, write errors.

The guidance here is a stand-in loss on the renders, so each run takes a fraction of a second; the
model-loading paths are covered by test_cli.py.
"""

from __future__ import annotations

import dataclasses
import errno
import json
import shutil
from pathlib import Path

import pytest
import torch

from splatvlm.commands import batch, generate
from splatvlm.commands.generate import RunControl, prepare_single, resume_run, run_one
from splatvlm.config import apply_overrides, load_run_config, read_yaml, to_yaml
from splatvlm.errors import SplatVLMError, StopRun
from splatvlm.models import Sources
from splatvlm.prompts import Prompts
from splatvlm.run.runs import check_batch_folders, cut_metrics, gpteval3d_tree, recipe_hash
from splatvlm.run.trainer import Term

CPU = torch.device("cpu")


class FakeGuidance:
    """``Guidance``'s interface with a cheap loss; ``fail_at`` raises inside the loss at that step."""

    def __init__(self, cfg, fail_at=None, error=None):
        self.cfg, self.device, self.vlm_device, self.loaded = cfg, CPU, None, {}
        self.fail_at, self.error = fail_at, error

    def terms(self, prompt):
        def loss(rgb, cams, step):
            if step == self.fail_at:
                raise self.error
            return {"loss_sds": (rgb - 0.5).square().mean()}

        return {"sds": Term(loss, weights=("sds",))}


def tiny_cfg(steps=4, **kw):
    cfg = load_run_config("demo")
    return dataclasses.replace(
        cfg,
        steps=steps,
        log_every=1,
        turntable_frames=0,
        checkpoint_every=0,
        scene=dataclasses.replace(cfg.scene, num_points=64),
        camera=dataclasses.replace(
            cfg.camera, num_views=1, low_res_views=1, views_per_group=1, resolution=16, low_res=16
        ),  # fmt: skip
        **kw,
    )


CONTROL = RunControl(progress=False)


def fresh_run(tmp_path, steps=4, stop_after=None, prompt="a red apple"):
    cfg = tiny_cfg(steps)
    control = dataclasses.replace(CONTROL, stop_after=stop_after)
    prompt, output, run_dir, replaces = prepare_single(prompt, tmp_path / "a.ply", cfg, control, None)
    summary = run_one(prompt, cfg, output, run_dir, FakeGuidance(cfg), control, replaces=replaces)
    return cfg, run_dir, summary


def steps_logged(run_dir: Path) -> list[int]:
    return [json.loads(line)["step"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


# ---------------------------------------------------------------------------------------------
# --overwrite


def test_failed_overwrite_leaves_the_old_run_whole(tmp_path, monkeypatch):
    cfg, run_dir, _ = fresh_run(tmp_path)
    before = {p.name: p.read_bytes() for p in run_dir.iterdir() if p.is_file()}
    ply_before = (tmp_path / "a.ply").read_bytes()
    control = dataclasses.replace(CONTROL, overwrite=True)
    prompt, output, build, replaces = prepare_single("a blue chair", tmp_path / "a.ply", cfg, control, None)
    assert replaces == run_dir and build != run_dir
    real_save = torch.save

    def full_disk(obj, f):  # the disk fills up half-way through the checkpoint
        with open(f, "wb") as fh:
            fh.write(b"PK\x03\x04 half a checkpoint")
        raise OSError(errno.ENOSPC, "No space left on device", str(f))

    monkeypatch.setattr(torch, "save", full_disk)
    with pytest.raises(OSError, match="No space left"):
        run_one(prompt, cfg, output, build, FakeGuidance(cfg), control, replaces=replaces)
    monkeypatch.setattr(torch, "save", real_save)
    after = {p.name: p.read_bytes() for p in run_dir.iterdir() if p.is_file()}
    assert after == before and (tmp_path / "a.ply").read_bytes() == ply_before
    assert not list(tmp_path.rglob("*.tmp*")), "temp files left behind"
    # A second overwrite that finishes replaces the old run, and leaves nothing aside.
    prompt, output, build, replaces = prepare_single("a blue chair", tmp_path / "a.ply", cfg, control, None)
    run_one(prompt, cfg, output, build, FakeGuidance(cfg), control, replaces=replaces)
    assert json.loads((run_dir / "run.json").read_text())["prompt"] == "a blue chair"
    assert json.loads((run_dir / "summary.json").read_text())["finished"] is True
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.ply", "a_run"]
    assert not (run_dir / ".splatvlm.lock").exists()


def test_swap_cut_between_renames_is_recovered(tmp_path):
    old = tmp_path / ".r.old"
    old.mkdir()
    (old / "summary.json").write_text("{}")
    generate.recover_swap(tmp_path / "r")  # not a run folder of ours: left where it is
    assert old.is_dir() and not (tmp_path / "r").exists()
    (old / "run.json").write_text(json.dumps({"id": "0" * 32, "prompt": "a cat"}))
    generate.recover_swap(tmp_path / "r")
    assert (tmp_path / "r" / "summary.json").is_file() and not old.exists()


# ---------------------------------------------------------------------------------------------
# --resume


@pytest.fixture
def no_models(monkeypatch):
    monkeypatch.setattr(generate, "check_sources", lambda cfg, prompts=(): Sources())
    monkeypatch.setattr(
        generate, "make_guidance", lambda cfg, control, info=None, sources=None: FakeGuidance(cfg)
    )


def test_resume_cuts_metrics_counts_time_and_cleans_up(tmp_path, no_models, capsys):
    cfg, run_dir, summary = fresh_run(tmp_path, steps=6, stop_after=3)
    assert not summary["finished"] and summary["resume"] == f"splatvlm generate --resume {run_dir}"
    # Steps logged after the checkpoint by a process that was then killed are done again on resume.
    with open(run_dir / "metrics.jsonl", "a") as f:
        f.write(json.dumps({"step": 3, "loss": 1.0}) + "\n" + json.dumps({"step": 4, "loss": 1.0}) + '\n{"st')
    (run_dir / "interrupted.ply").write_bytes((run_dir / "partial.ply").read_bytes())
    ckpt = torch.load(run_dir / "checkpoint.pt", weights_only=True)
    ckpt["elapsed_s"] = 1000.0  # as if the first part had trained for 1000 s
    torch.save(ckpt, run_dir / "checkpoint.pt")
    summary = resume_run(run_dir, CONTROL)
    assert summary["finished"] and steps_logged(run_dir) == list(range(6))
    assert summary["seconds"] >= 1000.0
    assert not (run_dir / "interrupted.ply").exists() and not (run_dir / "partial.ply").exists()


def test_resume_more_steps_is_applied_and_said(tmp_path, no_models, capsys):
    _, run_dir, _ = fresh_run(tmp_path, steps=4, stop_after=2)
    summary = resume_run(run_dir, CONTROL, steps=6)
    assert summary["finished"] and summary["steps"] == 6
    assert read_yaml(run_dir / "config.yaml")["steps"] == 6
    assert "extending" in capsys.readouterr().err
    (tmp_path / "x").mkdir()
    _, run_dir2, _ = fresh_run(tmp_path / "x", steps=4, stop_after=2)
    with pytest.raises(SplatVLMError, match="only more are allowed"):
        resume_run(run_dir2, CONTROL, steps=3)


def test_resume_takes_speed_settings_for_itself(tmp_path, no_models, monkeypatch, capsys):
    _, run_dir, _ = fresh_run(tmp_path, steps=6, stop_after=2)
    saved = (run_dir / "config.yaml").read_text()
    seen = []
    monkeypatch.setattr(
        generate,
        "make_guidance",
        lambda cfg, control, info=None, sources=None: seen.append(cfg) or FakeGuidance(cfg),
    )
    summary = resume_run(
        run_dir, dataclasses.replace(CONTROL, stop_after=2), execution={"log_every": 3, "sds.compile": False}
    )
    assert not summary["finished"] and seen[0].log_every == 3 and seen[0].sds.compile is False
    assert "speed and logging settings: log_every=3, sds.compile=False" in capsys.readouterr().err
    assert (run_dir / "config.yaml").read_text() == saved  # config.yaml keeps the saved recipe
    assert resume_run(run_dir, CONTROL)["finished"]  # its checkpoint, written with log_every 3, still resumes
    assert seen[1].log_every == read_yaml(run_dir / "config.yaml")["log_every"]


def test_resume_refuses_an_edited_config_or_a_foreign_checkpoint(tmp_path, no_models):
    cfg, run_dir, _ = fresh_run(tmp_path, steps=4, stop_after=2)
    text = (run_dir / "config.yaml").read_text()
    (run_dir / "config.yaml").write_text(text.replace("seed: 0", "seed: 7"))
    with pytest.raises(SplatVLMError, match=r"another config .* \(differs in: seed\)"):
        resume_run(run_dir, CONTROL)
    (run_dir / "config.yaml").write_text(text)
    (tmp_path / "o").mkdir()
    _, other, _ = fresh_run(tmp_path / "o", steps=4, stop_after=2, prompt="a blue chair")
    good = (run_dir / "checkpoint.pt").read_bytes()
    (run_dir / "checkpoint.pt").write_bytes((other / "checkpoint.pt").read_bytes())
    with pytest.raises(SplatVLMError, match="belongs to another run .*'a blue chair'"):
        resume_run(run_dir, CONTROL)
    (run_dir / "checkpoint.pt").write_bytes(good)
    resume_run(run_dir, CONTROL)  # its own checkpoint and config: accepted
    torch.save({"version": 1, "step": 2, "params": {}}, run_dir / "checkpoint.pt")
    with pytest.raises(SplatVLMError, match="not a complete splatvlm checkpoint"):
        resume_run(run_dir, CONTROL)


def test_stop_message_prints_the_resume_command(tmp_path):
    cfg = tiny_cfg(4)
    prompt, output, run_dir, _ = prepare_single("a cat", tmp_path / "c.ply", cfg, CONTROL, None)
    stopping = FakeGuidance(cfg, fail_at=1, error=StopRun("SIGTERM at step 1: checkpoint saved", 143))
    with pytest.raises(StopRun) as info:
        run_one(prompt, cfg, output, run_dir, stopping, CONTROL)
    assert info.value.exit_code == 143
    assert str(info.value).endswith(f"continue with: splatvlm generate --resume {run_dir}")


def test_stop_keeps_its_kind_so_the_cli_can_advise(tmp_path):
    cfg = tiny_cfg(4)
    prompt, output, run_dir, _ = prepare_single("a cat", tmp_path / "c.ply", cfg, CONTROL, None)
    bad = FakeGuidance(
        cfg, fail_at=1, error=StopRun("20 steps in a row had a NaN/inf loss", 3, kind="bad_steps")
    )
    with pytest.raises(StopRun) as info:
        run_one(prompt, cfg, output, run_dir, bad, CONTROL)
    assert info.value.kind == "bad_steps" and info.value.exit_code == 3


def test_cli_resume_refuses_recipe_flags(tmp_path, capsys):
    from splatvlm.cli import main

    run_dir = tmp_path / "r"
    run_dir.mkdir()
    (run_dir / "config.yaml").write_text(to_yaml(tiny_cfg(4)))
    rc = main(["generate", "--resume", str(run_dir), "--seed", "5", "-o", "x.ply", "--vlm.every", "3",
               "--log-every", "1", "--port", "9000"])  # fmt: skip
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1
    assert "--seed, -o, --vlm.every" in err and "--log-every" not in err and "--port" not in err
    rc = main(
        ["generate", "--resume", str(run_dir), "--sds.no-compile", "--no-parallel-terms", "--seed", "5"]
    )
    err = capsys.readouterr().err.strip()
    assert rc == 2 and "these flags would change it: --seed (" in err  # the speed flags are taken


# ---------------------------------------------------------------------------------------------
# Batches: done-already keyed by prompt and recipe; one batch per out-dir


def test_batch_folder_of_another_prompt_or_recipe_is_refused(tmp_path):
    cfg = tiny_cfg(4)
    d = tmp_path / "000-a-red-apple"
    d.mkdir()
    (d / "config.yaml").write_text(to_yaml(cfg))
    (d / "run.json").write_text(json.dumps({"prompt": "a red apple!", "recipe": recipe_hash(cfg)}))
    prompts = Prompts(["a red apple"], ["line 3 of p.txt"])
    with pytest.raises(SplatVLMError, match=r"line 3 of p.txt is 'a red apple' but .* holds 'a red apple!'"):
        check_batch_folders(prompts, [d], cfg)
    (d / "run.json").write_text(json.dumps({"prompt": "a red apple", "recipe": recipe_hash(cfg)}))
    check_batch_folders(prompts, [d], cfg)  # same prompt, same recipe: done already
    changed = dataclasses.replace(cfg, steps=8)
    with pytest.raises(SplatVLMError, match=r"another recipe \(differs in: steps\)"):
        check_batch_folders(prompts, [d], changed)
    # Speed and logging settings are not the recipe: a folder made without compiling is done already.
    faster = dataclasses.replace(cfg, parallel_terms=not cfg.parallel_terms, log_every=3)
    faster = dataclasses.replace(faster, sds=dataclasses.replace(cfg.sds, compile=False, compile_vae=False))
    assert recipe_hash(faster) == recipe_hash(cfg) != recipe_hash(changed)
    check_batch_folders(prompts, [d], faster)
    fp8 = dataclasses.replace(cfg, vlm=dataclasses.replace(cfg.vlm, fp8=True))  # changes the numbers
    with pytest.raises(SplatVLMError, match=r"another recipe \(differs in: vlm.fp8\)"):
        check_batch_folders(prompts, [d], fp8)
    # A stored hash of an older recipe_hash: the folder's config.yaml decides.
    (d / "run.json").write_text(json.dumps({"prompt": "a red apple", "recipe": "0123456789abcdef"}))
    check_batch_folders(prompts, [d], cfg)
    # Run folders written before the hash was kept: the recipe comes from their config.yaml.
    (d / "run.json").write_text(json.dumps({"prompt": "a red apple"}))
    check_batch_folders(prompts, [d], apply_overrides(cfg, {}))
    with pytest.raises(SplatVLMError, match="another recipe"):
        check_batch_folders(prompts, [d], changed)


def test_run_folder_in_use_is_refused(tmp_path):
    import subprocess
    import sys

    cfg = tiny_cfg(4)
    prompt, output, run_dir, _ = prepare_single("a cat", tmp_path / "c.ply", cfg, CONTROL, None)
    assert not run_dir.exists()  # made by run_one, once the sources are checked
    run_dir.mkdir()  # an empty folder is taken
    code = (
        "import sys, time; from splatvlm.files import RunLock; RunLock(sys.argv[1]).acquire(); "
        "print('held', flush=True); time.sleep(60)"
    )
    holder = subprocess.Popen([sys.executable, "-c", code, str(run_dir)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(SplatVLMError, match=f"run folder {run_dir} is in use by process {holder.pid}"):
            run_one(prompt, cfg, output, run_dir, FakeGuidance(cfg), CONTROL)
        assert not (run_dir / "metrics.jsonl").exists()
    finally:
        holder.kill()
        holder.wait()


def test_cut_metrics_keeps_steps_before_the_checkpoint(tmp_path):
    p = tmp_path / "metrics.jsonl"
    p.write_text("".join(json.dumps({"step": s}) + "\n" for s in (0, 1, 2, 3, 2)) + '{"step": 9')
    cut_metrics(p, 2)
    assert [json.loads(x)["step"] for x in p.read_text().splitlines()] == [0, 1]


# ---------------------------------------------------------------------------------------------
# Write errors and caches


def test_os_error_is_one_line_with_path_and_errno(monkeypatch, capsys):
    from splatvlm import cli

    def full_disk(argv):
        raise OSError(errno.ENOSPC, "No space left on device", "/runs/a_run/checkpoint.pt")

    monkeypatch.setitem(cli.COMMANDS, "presets", full_disk)
    assert cli.main(["presets"]) == 1
    err = capsys.readouterr().err.strip()
    assert (
        err
        == "error: cannot write or read /runs/a_run/checkpoint.pt: No space left on device (errno 28 ENOSPC)"
    )


def test_unusable_cache_folder_is_one_line(tmp_path, monkeypatch):
    from splatvlm.hub import cache_dir

    (tmp_path / "file").write_text("x")
    monkeypatch.setenv("SPLATVLM_CACHE", str(tmp_path / "file" / "cache"))
    with pytest.raises(SplatVLMError, match="set SPLATVLM_CACHE to a writable folder"):
        cache_dir()


# ---------------------------------------------------------------------------------------------
# The pre-check of a batch's prompts


def test_precheck_loads_each_tokenizer_once_and_names_the_line(monkeypatch):
    import transformers

    calls = {"auto": 0, "clip": 0}
    for name, cls in (("auto", transformers.AutoTokenizer), ("clip", transformers.CLIPTokenizer)):
        real = cls.from_pretrained.__func__

        def counting(klass, *a, _real=real, _name=name, **k):
            calls[_name] += 1
            return _real(klass, *a, **k)

        monkeypatch.setattr(cls, "from_pretrained", classmethod(counting))
    cfg = load_run_config("demo")
    n = 3000
    prompts = Prompts(
        [f"a small red apple number {i}" for i in range(n)], [f"line {i + 2} of p.txt" for i in range(n)]
    )
    generate.check_sources(cfg, prompts)
    assert calls == {"auto": 1, "clip": 1}
    prompts[1500] = "apple " * 100  # longer than CLIP's 77 tokens
    with pytest.raises(SplatVLMError, match=r"^line 1502 of p.txt is \d+ tokens long"):
        generate.check_sources(cfg, prompts)


def test_reward_precheck_agrees_with_the_exact_query_length():
    from splatvlm.guidance.reward import RewardConfig, query_ids, question_text
    from splatvlm.guidance.reward import target_ids as _target
    from splatvlm.models import check_reward_prompts, check_reward_source

    cfg = RewardConfig(model="demo", size=56)
    src = check_reward_source(cfg)
    ctx = int(src.config.text_config.max_position_embeddings)

    def exact(p):
        grid = (cfg.size // src.patch_size,) * 2
        return query_ids(
            src,
            question_text(cfg.question, p, cfg.num_views),
            cfg.num_views,
            grid,
            _target(cfg, src.tokenizer),
        ).shape[-1]

    base = exact("a red cube")
    # Prompts whose query lands just under, at and just over the context.
    words = [f"cube{i}" for i in range(4000)]
    lo, hi = 1, 4000
    while lo < hi:  # the most words that still fit
        mid = (lo + hi + 1) // 2
        lo, hi = (mid, hi) if exact(" ".join(words[:mid])) <= ctx else (lo, mid - 1)
    fits, too_long = " ".join(words[:lo]), " ".join(words[: lo + 1])
    assert base < exact(fits) <= ctx < exact(too_long)
    check_reward_prompts(cfg, src, ["a red cube", fits])
    with pytest.raises(SplatVLMError, match="^prompt 1: prompt too long"):
        check_reward_prompts(cfg, src, ["a red cube", too_long], ["prompt 0", "prompt 1"])


def test_batch_out_dir_in_use_is_refused_before_any_model(tmp_path, monkeypatch):
    import subprocess
    import sys

    out = tmp_path / "runs"
    out.mkdir()
    code = (
        "import sys, time; from splatvlm.files import RunLock; RunLock(sys.argv[1]).acquire(); "
        "print('held', flush=True); time.sleep(60)"
    )
    holder = subprocess.Popen([sys.executable, "-c", code, str(out)], stdout=subprocess.PIPE, text=True)
    monkeypatch.setattr(batch, "check_sources", lambda *a: pytest.fail("models checked before the lock"))
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(SplatVLMError, match=f"batch folder {out} is in use by process {holder.pid}"):
            batch.run_batch(["a cat"], tiny_cfg(4), out, CONTROL)
    finally:
        holder.kill()
        holder.wait()


# ---------------------------------------------------------------------------------------------
# A run replaces or deletes only what it made


def stopped_overwrite(tmp_path, output, steps=4):
    """A run at ``output``, then an --overwrite of it stopped half-way: (old run folder, folder built aside)."""
    cfg = tiny_cfg(steps)
    prompt, out, run_dir, _ = prepare_single("a red apple", output, cfg, CONTROL, None)
    run_one(prompt, cfg, out, run_dir, FakeGuidance(cfg), CONTROL)
    control = dataclasses.replace(CONTROL, overwrite=True, stop_after=2)
    prompt, out, aside, replaces = prepare_single("a blue chair", output, cfg, control, None)
    run_one(prompt, cfg, out, aside, FakeGuidance(cfg), control, replaces=replaces)
    return replaces, aside


def files_of(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_resume_of_a_relative_overwrite_elsewhere_replaces_only_its_own_folder(
    tmp_path, no_models, monkeypatch
):
    (tmp_path / "a").mkdir()
    (tmp_path / "b" / "x_run").mkdir(parents=True)
    (tmp_path / "b" / "x_run" / "thesis.tex").write_text("years of work")
    monkeypatch.chdir(tmp_path / "a")
    old, aside = stopped_overwrite(tmp_path, Path("x.ply"))  # relative paths, as typed
    info = json.loads((aside / "run.json").read_text())
    assert info["output"] == str(tmp_path / "a" / "x.ply")  # recorded absolute, with the replaced run's id
    assert info["replaces"] == {"path": str(tmp_path / "a" / "x_run"), "id": generate.run_id(old)}
    monkeypatch.chdir(tmp_path / "b")  # resumed from another folder holding a folder of the same name
    assert resume_run(aside, CONTROL)["finished"]
    assert (tmp_path / "b" / "x_run" / "thesis.tex").read_text() == "years of work"
    info = json.loads((tmp_path / "a" / "x_run" / "run.json").read_text())
    assert info["prompt"] == "a blue chair" and info["replaces"] is None and not aside.exists()
    assert resume_run(tmp_path / "a" / "x_run", CONTROL, steps=6)["steps"] == 6  # it resumes in its place


def test_crafted_run_json_cannot_name_what_to_replace_or_write(tmp_path, no_models):
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "notes.txt").write_text("mine")
    (victim / "run.json").write_text(json.dumps({"id": "f" * 32, "prompt": "x"}))  # even with an id
    old, aside = stopped_overwrite(tmp_path, tmp_path / "x.ply")
    info = json.loads((aside / "run.json").read_text())
    crafted = [
        ({"replaces": {"path": str(victim), "id": "f" * 32}}, "not the folder this run was built beside"),
        ({"replaces": str(victim)}, "without its run id"),
        ({"output": "x.ply"}, "not an absolute .ply path"),
        ({"output": str(victim / "notes.txt")}, "not an absolute .ply path"),
    ]
    for change, match in crafted:
        (aside / "run.json").write_text(json.dumps({**info, **change}))
        with pytest.raises(SplatVLMError, match=match):
            resume_run(aside, CONTROL)
    assert files_of(victim) == {"notes.txt": b"mine", "run.json": (victim / "run.json").read_bytes()}
    # The folder it was built beside, but holding another run now (its id changed): not replaced either.
    (aside / "run.json").write_text(json.dumps(info))
    before = files_of(old)
    (old / "run.json").write_text(json.dumps({**json.loads(before["run.json"]), "id": "e" * 32}))
    with pytest.raises(SplatVLMError, match="no longer holds the run this --overwrite replaces"):
        resume_run(aside, CONTROL)
    assert aside.is_dir() and set(files_of(old)) == set(before)


def test_swap_checks_the_replaced_run_id_at_the_last_moment(tmp_path):
    old, aside = stopped_overwrite(tmp_path, tmp_path / "x.ply")
    shutil.rmtree(old)  # replaced since the resume started by a folder of someone else's
    old.mkdir()
    (old / "data.csv").write_text("1,2")
    with pytest.raises(SplatVLMError, match="no longer holds the run"):
        generate.swap_in(aside, old, json.loads((aside / "run.json").read_text())["replaces"]["id"])
    assert files_of(old) == {"data.csv": b"1,2"} and (aside / "run.json").is_file()
    with pytest.raises(SplatVLMError, match="was not built beside"):
        generate.swap_in(aside, tmp_path / "elsewhere", "0" * 32)


def test_run_folder_is_made_fresh_or_ours_never_adopted(tmp_path, capsys):
    from splatvlm.cli import main

    user = tmp_path / "photos"
    user.mkdir()
    (user / "cat.jpg").write_bytes(b"jpeg")
    default = tmp_path / "c_run"
    default.mkdir()
    (default / "todo.txt").write_text("keep")
    (tmp_path / "link").symlink_to(user)
    base = ["generate", "a cat", "--preset", "demo", "--device", "cpu", "--steps", "2"]
    cases = [
        (["-o", str(tmp_path / "a.ply"), "--run-dir", str(user)], "not a splatvlm run folder"),
        (["-o", str(tmp_path / "a.ply"), "--run-dir", str(user), "--overwrite"], "not a splatvlm run folder"),
        (["-o", str(tmp_path / "c.ply")], "not a splatvlm run folder"),  # the default <stem>_run
        (["-o", str(tmp_path / "a.ply"), "--run-dir", str(tmp_path / "link")], "is a symbolic link"),
    ]
    for extra, match in cases:
        assert main(base + extra) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and match in err, err
    assert files_of(user) == {"cat.jpg": b"jpeg"} and files_of(default) == {"todo.txt": b"keep"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c_run", "link", "photos"]


def test_no_output_is_overwritten_without_overwrite_at_start_or_on_resume(tmp_path, no_models):
    cfg, run_dir, _ = fresh_run(tmp_path, steps=4, stop_after=2)
    output = tmp_path / "a.ply"
    output.write_bytes(b"a file that appeared since the run stopped")
    with pytest.raises(SplatVLMError, match="exists and is not this run's"):
        resume_run(run_dir, CONTROL)
    assert output.read_bytes() == b"a file that appeared since the run stopped"
    output.unlink()
    assert resume_run(run_dir, CONTROL)["finished"] and output.read_bytes().startswith(b"ply")
    # A file appearing while a new run trains is not replaced at its end either.
    cfg = tiny_cfg(3)
    prompt, out, run_dir, _ = prepare_single("a cat", tmp_path / "c.ply", cfg, CONTROL, None)

    class Appearing(FakeGuidance):
        def terms(self, prompt):
            out.write_bytes(b"theirs")
            return super().terms(prompt)

    with pytest.raises(SplatVLMError, match="exists and is not this run's"):
        run_one(prompt, cfg, out, run_dir, Appearing(cfg), CONTROL)
    assert out.read_bytes() == b"theirs"
    # --overwrite at the start: the file it was given for is the run's to replace, on resume too.
    (tmp_path / "o").mkdir()
    kept = tmp_path / "o" / "k.ply"
    kept.write_bytes(b"old result")
    control = dataclasses.replace(CONTROL, overwrite=True, stop_after=2)
    prompt, out, run_dir, replaces = prepare_single("a cat", kept, cfg, control, None)
    assert replaces is None
    run_one(prompt, cfg, out, run_dir, FakeGuidance(cfg), control)
    assert resume_run(run_dir, CONTROL)["finished"] and kept.read_bytes().startswith(b"ply")


def test_batch_stays_inside_its_out_dir(tmp_path):
    cfg = tiny_cfg(2)
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "run.json").write_text(json.dumps({"id": "a" * 32, "prompt": "a red apple"}))
    out_dir = tmp_path / "batch"
    out_dir.mkdir()
    (out_dir / "000-a-red-apple").symlink_to(outside)
    with pytest.raises(SplatVLMError, match="is a symbolic link"):
        check_batch_folders(Prompts(["a red apple"], ["line 1"]), [out_dir / "000-a-red-apple"], cfg)
    (out_dir / "gpteval3d").symlink_to(outside)  # the GPTEval3D tree of the batch too
    with pytest.raises(SplatVLMError, match="is a symbolic link"):
        gpteval3d_tree(out_dir, "p", ["a red apple"])
    assert sorted(p.name for p in outside.iterdir()) == ["run.json"]


def test_resume_validates_the_config_as_a_new_run_does(tmp_path, no_models):
    _, run_dir, _ = fresh_run(tmp_path, steps=4, stop_after=2)
    text = (run_dir / "config.yaml").read_text()
    assert "torch_chunk: 2097152" in text
    (run_dir / "config.yaml").write_text(text.replace("torch_chunk: 2097152", "torch_chunk: -1"))
    with pytest.raises(SplatVLMError, match="--render.torch-chunk must be positive, got -1"):
        resume_run(run_dir, CONTROL)
    (run_dir / "config.yaml").write_text(text)
    with pytest.raises(SplatVLMError, match="--render.torch-chunk must be positive, got 0"):
        resume_run(run_dir, CONTROL, execution={"render.torch_chunk": 0})  # a speed setting for this resume
    assert resume_run(run_dir, CONTROL)["finished"]
