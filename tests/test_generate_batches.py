"""Runs and batches in-process (generate.py, batch.py): same seed -> same bytes, resume -> the uninterrupted bytes; batch failures and ids."""

import dataclasses
import json

import pytest
import torch

from splatvlm.commands import batch
from splatvlm.commands.generate import RunControl, make_guidance, run_one
from splatvlm.config import load_run_config
from splatvlm.errors import SplatVLMError
from splatvlm.models import Sources
from splatvlm.run.runs import recipe_hash

CPU_CONTROL = RunControl(progress=False)


@pytest.fixture(scope="module")
def demo_setup():
    cfg = load_run_config("demo")
    cfg = dataclasses.replace(
        cfg,
        device="cpu",
        steps=3,
        log_every=1,
        checkpoint_every=0,
        turntable_frames=0,
        # A densification right after the resume point: the resumed run must restore the strategy state too.
        strategy=dataclasses.replace(cfg.strategy, refine_start_iter=1, refine_every=2, refine_stop_iter=4),
    )
    return cfg, make_guidance(cfg, CPU_CONTROL)


def test_same_seed_same_bytes_and_resume_is_exact(tmp_path, demo_setup):
    cfg, guidance = demo_setup
    threads = torch.get_num_threads()
    torch.set_num_threads(2)  # the parallel (atomic-add) CPU paths only run with more than one thread
    try:
        out = {}
        for name in ("a", "b"):
            out[name] = tmp_path / f"{name}.ply"
            (tmp_path / f"{name}_run").mkdir()
            run_one("a red apple", cfg, out[name], tmp_path / f"{name}_run", guidance, CPU_CONTROL)
        # Interrupted after 2 steps, then resumed from the checkpoint (RNG clobbered in between).
        out["r"] = tmp_path / "r.ply"
        (tmp_path / "r_run").mkdir()
        stopped = dataclasses.replace(CPU_CONTROL, stop_after=2)
        first = run_one("a red apple", cfg, out["r"], tmp_path / "r_run", guidance, stopped)
        assert not first["finished"] and first["steps"] == 2
        torch.manual_seed(1234)
        run_one("a red apple", cfg, out["r"], tmp_path / "r_run", guidance, CPU_CONTROL, resume=True)
    finally:
        torch.set_num_threads(threads)
    a = out["a"].read_bytes()
    assert len(a) > 1000
    # Without deterministic algorithms the two fresh runs differ (by ~3e-5 after 4 steps on 2 threads; 800
    # instead of the demo's 1500 Gaussians: 2e-10; 300: equal, the parallel path does not run).
    assert out["b"].read_bytes() == a, "same seed, same device: the .ply bytes differ"
    assert out["r"].read_bytes() == a, "a resumed run differs from the uninterrupted one"


def _fake_run_one(fail_on):
    """Stands in for training: writes the summary a finished run writes, or fails for one prompt."""

    def fake(prompt, cfg, output, run_dir, guidance, control, resume=False, prompt_id=0):
        if prompt == fail_on:
            raise RuntimeError("boom")
        summary = {
            "prompt": prompt,
            "output": str(output),
            "steps": cfg.steps,
            "finished": True,
            "prompt_id": prompt_id,
        }
        (run_dir / "run.json").write_text(
            json.dumps({"id": "0" * 32, "prompt": prompt, "recipe": recipe_hash(cfg)})
        )  # as a run does
        (run_dir / "summary.json").write_text(json.dumps(summary))
        return summary

    return fake


def test_batch_goes_on_past_a_failed_prompt_and_reports_it(tmp_path, monkeypatch, capsys):
    cfg = dataclasses.replace(load_run_config("demo"), device="cpu")
    monkeypatch.setattr(batch, "run_one", _fake_run_one("a broken prompt"))
    monkeypatch.setattr(batch, "check_sources", lambda cfg, prompts=(): Sources())
    prompts = ["a red apple", "a broken prompt", "a blue chair"]
    summaries = batch.run_batch(prompts, cfg, tmp_path, CPU_CONTROL)
    assert [s["prompt"] for s in summaries] == ["a red apple", "a blue chair"]
    report = json.loads((tmp_path / "batch_report.json").read_text())
    assert [e["status"] for e in report["prompts"]] == ["done", "failed", "done"]
    assert report["prompts"][1]["error"] == "RuntimeError: boom" and report["world_size"] == 1
    err = capsys.readouterr().err
    assert "batch: 2 done, 0 skipped (done before), 1 failed" in err
    assert "failed [1] a broken prompt: RuntimeError: boom" in err
    # --fail-fast: the first failure stops the batch.
    (tmp_path / "001-a-broken-prompt" / "summary.json").unlink(missing_ok=True)
    with pytest.raises(RuntimeError, match="boom"):
        batch.run_batch(prompts, cfg, tmp_path, dataclasses.replace(CPU_CONTROL, fail_fast=True))


def test_gpteval3d_ids_are_file_indices_and_two_files_never_collide(tmp_path, monkeypatch):
    cfg = dataclasses.replace(load_run_config("demo"), device="cpu")
    seen = []

    def fake(prompt, cfg, output, run_dir, guidance, control, resume=False, prompt_id=0):
        seen.append((control.gpteval3d_root.name, prompt_id, prompt))
        return _fake_run_one(None)(prompt, cfg, output, run_dir, guidance, control, resume, prompt_id)

    monkeypatch.setattr(batch, "run_one", fake)
    monkeypatch.setattr(batch, "check_sources", lambda cfg, prompts=(): Sources())
    control = dataclasses.replace(CPU_CONTROL, gpteval3d=True)
    batch.run_batch(["a red apple", "a blue chair"], cfg, tmp_path, control, prompt_set="set-a")
    batch.run_batch(["a dog", "a cat"], cfg, tmp_path, control, prompt_set="set-b")
    assert seen == [
        ("set-a", 0, "a red apple"),
        ("set-a", 1, "a blue chair"),
        ("set-b", 0, "a dog"),
        ("set-b", 1, "a cat"),
    ]
    assert json.loads((tmp_path / "gpteval3d" / "set-b" / "prompts.json").read_text()) == ["a dog", "a cat"]
    with pytest.raises(SplatVLMError, match="different prompt file named 'set-a'"):
        batch.run_batch(["a fish"], cfg, tmp_path, control, prompt_set="set-a")
