import json

from PIL import Image

from splatvlm.bench import BenchArgs, Phase, recipe_phases, run_bench
from splatvlm.config import load_run_config


def test_recipe_phases_follow_the_schedule():
    phases = recipe_phases(load_run_config("vlm3d"))
    assert [(p.start, p.end, p.num_views, p.resolution, p.reward) for p in phases] == [
        (0, 1250, 8, 64, True),
        (1250, 2500, 4, 256, True),
        (2500, 5000, 4, 256, False),
    ]
    assert Phase(0, 1, 4, 256, True).label == "4x256px +reward"
    assert [p.reward for p in recipe_phases(load_run_config("mvdream"))] == [False, False]


def test_bench_demo_two_prompts_writes_reports(tmp_path):
    prompts = tmp_path / "prompts.json"
    prompts.write_text(json.dumps(["a red apple", "a wooden chair", "not used"]))
    cfg = load_run_config("demo")
    args = BenchArgs(
        output=tmp_path / "out", preset="demo", prompts=prompts, limit=2, steps=2, warmup=1, reference=True, recipe=cfg
    )
    report = run_bench(args)
    out = tmp_path / "out"
    data = json.loads((out / "report.json").read_text())
    for key in ("device", "date", "command", "preset", "full_step_ms", "reference_full_step_ms", "peak_gb", "asset_s", "per_component_ms"):
        assert key in data, key
    assert len(data["ours"]["prompts"]) == 2 and data["full_step_ms"] > 0 and data["reference_full_step_ms"] > 0
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
