"""Memory estimates: a run whose models or scene cannot fit is refused in one line, before anything is built."""

import pytest
import torch

from splatvlm import resources
from splatvlm.config import load_run_config
from splatvlm.errors import SplatVLMError

GB = 2**30


def test_host_memory_is_read():
    available, total = resources.host_memory()
    assert 0 < available <= total


def test_full_size_random_models_need_what_their_parameters_say():
    from splatvlm.commands.bench import random_weights

    cfg = random_weights(load_run_config("vlm3d"))
    need = resources.model_bytes(cfg, torch.device("cpu"), torch.device("cpu"))[torch.device("cpu")]
    # fp32 on CPU: 8.3e9 (7B) + 1.3e9 (MVDream) parameters x 4 bytes, plus the margin.
    assert 38 * GB < need < 60 * GB
    assert resources.model_bytes(load_run_config("demo"), torch.device("cpu"), torch.device("cpu")) == {
        torch.device("cpu"): 0
    }


def test_bench_random_weights_refused_when_ram_is_short(monkeypatch, tmp_path):
    from splatvlm.commands.bench import BenchArgs, run_bench

    monkeypatch.setattr(resources, "host_memory", lambda: (10 * GB, 16 * GB))
    args = BenchArgs(output=tmp_path / "bench", recipe=load_run_config("vlm3d"), weights="random")
    args.recipe.device = "cpu"

    def built(*args, **kwargs):
        raise AssertionError("a model was built before the memory check refused the run")

    for name in ("build_prior", "build_reward", "load_components", "reward_model"):
        monkeypatch.setattr(f"splatvlm.models.{name}", built)
    with pytest.raises(
        SplatVLMError,
        match=r"need about \d+\.\d GB of RAM on cpu \(estimate\), but only 10\.0 GB of 16\.0 GB",
    ):
        run_bench(args)
    assert not (tmp_path / "bench").exists()  # refused before writing anything


def test_models_that_fit_pass(monkeypatch):
    from splatvlm.commands.bench import random_weights

    monkeypatch.setattr(resources, "host_memory", lambda: (1024 * GB, 1024 * GB))
    resources.check_models_fit(random_weights(load_run_config("vlm3d")), torch.device("cpu"))
