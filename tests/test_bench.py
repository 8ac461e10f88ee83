import json
import statistics
from dataclasses import replace

import pytest
from PIL import Image

from splatvlm.commands import bench_timing
from splatvlm.commands.bench import BenchArgs, run_bench
from splatvlm.commands.bench_timing import Phase, recipe_phases, time_windows
from splatvlm.config import load_run_config


def test_recipe_phases_follow_the_schedule():
    phases = recipe_phases(load_run_config("vlm3d-full"))
    on = ("sds", "vlm", "reg")  # vlm3d-full has the Gaussian regularizers on
    assert [(p.start, p.end, p.num_views, p.resolution, p.terms) for p in phases] == [
        (0, 5000, 8, 64, on),
        (5000, 10000, 4, 256, on),
        (10000, 20000, 4, 256, ("sds", "reg")),
    ]
    phases = recipe_phases(load_run_config("vlm3d"))  # no low-res phase; the regularizers on too
    assert [(p.start, p.end, p.num_views, p.resolution, p.terms) for p in phases] == [
        (0, 2500, 4, 256, on),
        (2500, 5000, 4, 256, ("sds", "reg")),
    ]
    assert Phase(0, 1, 4, 256, ("sds", "vlm")).label == "4x256px +reward"
    assert Phase(0, 1, 4, 256, ("sds",)).label == "4x256px"
    assert [p.terms for p in recipe_phases(load_run_config("mvdream"))] == [("sds", "reg")]


def test_timed_records_skip_the_warmup_and_the_draining_last_step():
    from splatvlm.commands.bench_timing import timed_records

    records = [{"step": i} for i in range(6)]
    assert [r["step"] for r in timed_records(records, warmup=2, steps=3)] == [2, 3, 4]  # 5 is the last one
    assert [r["step"] for r in timed_records(records, warmup=2, steps=9)] == [2, 3, 4]
    short = records[:2]  # a phase shorter than warm-up + timed steps: its last step rather than nothing
    assert [r["step"] for r in timed_records(short, warmup=2, steps=3)] == [1]
    assert timed_records([], warmup=2, steps=3) == []


def test_bench_demo_two_prompts_writes_reports(tmp_path, capsys):
    prompts = tmp_path / "prompts.json"
    prompts.write_text(json.dumps(["a red apple", "a wooden chair", "not used"]))
    cfg = load_run_config("demo")
    args = BenchArgs(
        output=tmp_path / "out",
        preset="demo",
        prompts=prompts,
        limit=2,
        timed_steps=2,
        warmup=1,
        reference=True,
        recipe=cfg,
    )
    report = run_bench(args)
    out = tmp_path / "out"
    data = json.loads((out / "report.json").read_text())
    for key in (
        "device",
        "date",
        "command",
        "preset",
        "full_step_ms",
        "reference_full_step_ms",
        "peak_gb",
        "asset_s",
        "per_component_ms",
    ):
        assert key in data, key
    assert (
        len(data["ours"]["prompts"]) == 2 and data["full_step_ms"] > 0 and data["reference_full_step_ms"] > 0
    )
    assert data["per_component_ms"]["vlm"] > 0 and data["per_component_ms"]["sds"] > 0
    phase = data["ours"]["prompts"][0]["phases"][0]
    assert phase["timed_steps"] == 2 and phase["label"] == "4x64px +reward"
    # asset time = phase length x median step time, summed over phases
    assert abs(data["ours"]["prompts"][0]["asset_s"] - 60 * phase["step_ms"] / 1e3) < 1e-6
    assert "| vlm |" in (out / "report.md").read_text()
    assert Image.open(out / "breakdown.png").size[0] > 100
    assert report["preset"] == "demo"
    # Same seeded render, cameras and noise on both paths: on CPU in fp32 the gradients agree.
    assert data["grad_cosine_sds"] > 0.999 and data["grad_cosine_vlm"] > 0.999
    # Quick mode says it extrapolates, and times its steps on a scene at the cap (demo: 3000).
    assert (
        data["full_run"] is False
        and "extrapolated" in data
        and data["timed_at_gaussians"] == cfg.strategy.cap_max
    )
    row = data["ours"]["prompts"][0]
    assert row["full_run"] is False and row["extrapolated"] is True and row["timed_at_gaussians"] == 3000
    assert all(p["num_gaussians"] >= 3000 for p in row["phases"])
    # The reward's query length is reported (its time grows with it): image tokens plus text tokens.
    tokens = row["vlm_query_tokens"]
    assert (
        tokens["total"] - tokens["text"] == cfg.vlm.num_views * (cfg.vlm.size // 28) ** 2
        and tokens["text"] > 20
    )
    assert data["vlm_query_tokens"] == pytest.approx(
        statistics.median(r["vlm_query_tokens"]["total"] for r in data["ours"]["prompts"])
    )
    md = (out / "report.md").read_text()
    assert "extrapolated, steps timed at 3,000 Gaussians" in md
    # It says up front what it will run, and after each prompt how long the rest should take.
    err = capsys.readouterr().err
    assert "bench: 2 prompts x 2 pass(es) (ours + reference)" in err
    assert "4 steps (1 phase(s) x 1 warm-up + 2 timed + 1)" in err and "[1/2] a red apple" in err
    assert "left" in err.split("[1/2]")[1].splitlines()[0]
    # The text and the picture give the same statistic: the median over prompts.
    from splatvlm.commands.bench_report import phase_medians

    (label, step_ms, comps), *_ = phase_medians(data["ours"]["prompts"])
    assert label == data["full_step_phase"] and step_ms == pytest.approx(data["full_step_ms"])
    assert comps == pytest.approx(data["per_component_ms"])
    assert f"**{data['full_step_ms']:.1f} ms**" in md
    # No memory figure where none is measured; one hourly rate, the asset time's.
    assert data["peak_gb"] is None and "peak n/a" in md and "0.0 GB" not in md
    assert data["assets_per_hour"] == pytest.approx(3600 / data["asset_s"])
    assert f"{data['assets_per_hour']:.1f} assets/hour" in md and "prompts/hour" not in md


def test_bench_median_differs_from_the_first_prompt_in_both_outputs(tmp_path):
    from splatvlm.commands.bench_report import phase_medians

    def prompt(ms):
        comps = {"render": ms / 2, "sds": ms / 2}
        return {"phases": [{"label": "4x64px", "step_ms": ms, "per_component_ms": comps}]}

    prompts = [prompt(5000.0), prompt(400.0), prompt(410.0)]  # the first one slow (compilation)
    ((label, step_ms, comps),) = phase_medians(prompts)
    assert label == "4x64px" and step_ms == 410.0 and comps["render"] == 205.0 and comps["vlm"] == 0.0


def test_bench_steps_flag_is_the_timed_steps():
    from splatvlm.cli_args import parse_one_line

    cfg = load_run_config("demo")
    default = BenchArgs(preset="demo", recipe=cfg)
    for flag in ("--steps", "--timed-steps"):
        args = parse_one_line(BenchArgs, [flag, "3"], "splatvlm bench", default)
        assert args.timed_steps == 3 and args.recipe.steps == cfg.steps
    args = parse_one_line(BenchArgs, ["--recipe.steps", "7"], "splatvlm bench", default)
    assert args.timed_steps == 10 and args.recipe.steps == 7


def test_bench_full_runs_the_whole_recipe(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(bench_timing, "HEARTBEAT_S", 0.0)  # a progress line every step
    prompts = tmp_path / "prompts.json"
    prompts.write_text(json.dumps(["a red apple", "a wooden chair"]))
    cfg = load_run_config("demo")
    cfg = replace(
        cfg,
        steps=6,
        scene=replace(cfg.scene, num_points=300),
        camera=replace(cfg.camera, resolution=32, low_res_until=3, low_res=16, low_res_views=4),
        strategy=replace(
            cfg.strategy,
            refine_start_iter=1,
            refine_every=2,
            refine_stop_iter=6,
            grow_grad2d=0.0,
            cap_max=420,
            max_grow_frac=0.25,
        ),
    )
    args = BenchArgs(output=tmp_path / "out", preset="demo", prompts=prompts, full=True, recipe=cfg)
    run_bench(args)
    said = capsys.readouterr().out
    assert said.count("    step 6/6: ") == 2, said  # no silent minutes on a real run
    data = json.loads((tmp_path / "out" / "report.json").read_text())
    assert data["full_run"] is True and "measured" in data and "extrapolated" not in data
    rows = data["ours"]["prompts"]
    assert len(rows) == 2
    for row in rows:
        for key in ("full_run", "asset_s", "load_s", "max_gaussians", "peak_gb", "device", "preset"):
            assert key in row, key
        assert row["full_run"] is True and row["preset"] == "demo" and row["device"] == data["device"]
        assert row["steps"] == 6 and row["asset_s"] > 0
        assert [p["timed_steps"] for p in row["phases"]] == [
            3,
            3,
        ]  # every step of each phase, none extrapolated
        assert row["asset_s"] >= sum(p["phase_s"] for p in row["phases"]) * 0.99
        # refinements at steps 2 and 4, growth bounded by the budget and the cap
        assert [r["step"] for r in row["refinements"]] == [2, 4]
        assert row["gaussians_over_time"][0] == [0, 300] and row["gaussians_over_time"][-1][0] == 5
        assert 300 < row["max_gaussians"] <= 420
        assert row["max_gaussians"] == max(c for _, c in row["gaussians_over_time"])
        for r in row["refinements"]:
            assert r["densify_grown"] <= int(
                0.25 * (r["densify_count"] - r["densify_grown"] + r["densify_pruned"])
            )
            assert r["densify_grad_p50"] <= r["densify_grad_p99"]
        assert sum(w["seconds"] for w in row["time_windows"]) == pytest.approx(
            sum(p["phase_s"] for p in row["phases"])
        )
    # Model loading happens once, for the first prompt, and is not in its asset time.
    assert rows[0]["load_s"] > 0 and rows[1]["load_s"] == 0
    assert data["max_gaussians"] == max(r["max_gaussians"] for r in rows)
    md = (tmp_path / "out" / "report.md").read_text()
    assert "measured, whole recipe" in md and "Gaussians over time" in md
    assert data["peak_gb"] is None and all(row["peak_gb"] is None for row in rows)  # a CPU run: n/a
    assert "peak n/a" in md and "| n/a |" in md
    assert (tmp_path / "out" / ".gitignore").read_text().splitlines()[-1] == "*"  # a folder it made
    assert (tmp_path / "out" / "runs" / "ours" / "000" / "metrics.jsonl").exists()


def test_time_windows_split_a_run_where_its_time_went():
    records = [{"step": i, "step_ms": 10.0 * i, "num_gaussians": 300 + i} for i in range(6)]
    windows = time_windows(records, 4)
    assert [w["steps"] for w in windows] == [[0, 4], [4, 6]]
    assert windows[0]["seconds"] == pytest.approx(0.06) and windows[1]["mean_step_ms"] == 45.0
    assert windows[0]["median_step_ms"] == 15.0 and windows[1]["num_gaussians"] == 305


def test_bench_bad_gaussians(tmp_path):
    with pytest.raises(Exception, match="--gaussians"):
        run_bench(
            BenchArgs(output=tmp_path / "o", preset="demo", gaussians=-1, recipe=load_run_config("demo"))
        )


def test_write_report_adds_provenance_and_keeps_fields(tmp_path):
    from splatvlm.commands.bench_report import write_report

    path = write_report(tmp_path / "r.json", {"device": "X", "date": "2026-01-02", "ms": 1.5})
    data = json.loads(path.read_text())
    assert data["device"] == "X" and data["date"] == "2026-01-02" and data["ms"] == 1.5  # kept
    assert data["torch"] and data["command"] and "transformers" in data  # added
