"""LoRA adapters for the reward VLM: train-reward on a tiny synthetic data set, loading, weighting, errors."""

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from splatvlm.commands.train_reward import TrainRewardConfig, read_reward_data, train_reward
from splatvlm.demo import demo_vlm_path
from splatvlm.errors import SplatVLMError
from splatvlm.guidance.adapters import check_adapter_dir
from splatvlm.guidance.reward import RewardConfig, VLMReward
from splatvlm.models import check_reward_source, load_reward

PROMPT = "a red cube"


@pytest.fixture(scope="module", autouse=True)
def demo_cache(tmp_path_factory):
    old_env, old_threads = os.environ.get("SPLATVLM_CACHE"), torch.get_num_threads()
    os.environ["SPLATVLM_CACHE"] = str(tmp_path_factory.mktemp("cache"))
    torch.set_num_threads(1)  # tiny ops drown in thread overhead on a busy machine
    yield demo_vlm_path()
    torch.set_num_threads(old_threads)
    if old_env is None:
        os.environ.pop("SPLATVLM_CACHE")
    else:
        os.environ["SPLATVLM_CACHE"] = old_env


def color_image(path: Path, rgb, seed: int) -> str:
    noise = np.random.default_rng(seed).integers(-40, 40, (56, 56, 3))
    img = np.clip(np.array(rgb)[None, None] + noise, 0, 255).astype(np.uint8)
    Image.fromarray(img).save(path)
    return path.name


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    """Red views -> yes, blue views -> no (2 views per record), plus two red-over-blue preference pairs."""
    root = tmp_path_factory.mktemp("data")
    lines, k = [], 0
    for i in range(10):
        for color, label in (((220, 30, 30), "yes"), ((30, 30, 220), "no")):
            imgs = [color_image(root / f"{label}{i}_{v}.png", color, k := k + 1) for v in range(2)]
            lines.append({"images": imgs, "prompt": PROMPT, "label": label})
    for i in range(2):
        red = [color_image(root / f"c{i}_{v}.png", (220, 30, 30), k := k + 1) for v in range(2)]
        blue = [color_image(root / f"r{i}_{v}.png", (30, 30, 220), k := k + 1) for v in range(2)]
        lines.append({"images_chosen": red, "images_rejected": blue, "prompt": PROMPT})
    (root / "data.jsonl").write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    return root


@pytest.fixture(scope="module")
def adapter(dataset, tmp_path_factory):
    out = tmp_path_factory.mktemp("adapters") / "red"
    cfg = TrainRewardConfig(
        data=dataset / "data.jsonl",
        output=out,
        vlm=RewardConfig(model="demo", size=56),
        rank=4,
        steps=30,
        batch=4,
        lr=3e-3,
        holdout=0.2,
    )
    assert train_reward(cfg) == out
    return out


def p_yes(reward: VLMReward, paths) -> float:
    from splatvlm.commands.train_reward import load_views

    return float(reward.score(load_views(list(paths), 56), PROMPT)["p_yes"])


def test_train_reward_moves_p_yes(adapter, dataset, capsys):
    assert {"adapter_config.json", "adapter_model.safetensors", "train_reward.json"} <= set(
        os.listdir(adapter)
    )
    assert not [p for p in os.listdir(adapter.parent) if p.startswith(".")]  # no temp folders left
    assert json.loads((adapter / "adapter_config.json").read_text())["base_model_name_or_path"] == "demo"
    meta = json.loads((adapter / "train_reward.json").read_text())
    assert meta["heldout_records"] == 4 and meta["heldout_accuracy"] >= 0.75

    pos = [[dataset / f"yes{i}_0.png", dataset / f"yes{i}_1.png"] for i in range(10)]
    neg = [[dataset / f"no{i}_0.png", dataset / f"no{i}_1.png"] for i in range(10)]
    base = load_reward(RewardConfig(model="demo", size=56), "cpu")
    tuned = load_reward(RewardConfig(model="demo", size=56, lora=[str(adapter)]), "cpu")
    for p, n in zip(pos, neg, strict=True):
        assert p_yes(tuned, p) > p_yes(base, p) + 0.1
        assert p_yes(tuned, n) < p_yes(base, n) - 0.1
        assert p_yes(tuned, p) > 0.5 > p_yes(tuned, n)

    # Run-time switching: off = the base model, weight 0.5 = in between, two half adapters = one full.
    tuned.set_lora(None)
    assert p_yes(tuned, pos[0]) == pytest.approx(p_yes(base, pos[0]), abs=1e-6)
    tuned.set_lora([1.0])
    full = p_yes(tuned, pos[0])
    # The trained adapter saturates p(Yes) above weight ~0.25; a small weight must land in between.
    tuned.set_lora([0.05])
    assert p_yes(base, pos[0]) < p_yes(tuned, pos[0]) < full
    assert not any(p.requires_grad for p in tuned.model.parameters())
    two = load_reward(
        RewardConfig(model="demo", size=56, lora=[str(adapter), str(adapter)], lora_weights=[0.5, 0.5]), "cpu"
    )
    assert p_yes(two, pos[0]) == pytest.approx(full, abs=1e-5)


def test_train_reward_prints_progress_and_accuracy(dataset, tmp_path, capsys):
    out = tmp_path / "a"
    cfg = TrainRewardConfig(data=dataset / "data.jsonl", output=out, vlm=RewardConfig(model="demo", size=56),
                            rank=2, steps=2, batch=1, holdout=0.5)  # fmt: skip
    train_reward(cfg)
    text = capsys.readouterr().out
    assert "train-reward" in text and "held-out accuracy: " in text and "(" in text
    with pytest.raises(SplatVLMError, match="already exists"):
        train_reward(cfg)
    cfg.overwrite = True
    train_reward(cfg)
    assert sorted(os.listdir(tmp_path)) == ["a"]


def test_adapter_errors(tmp_path, adapter):
    from peft import LoraConfig, get_peft_model
    from transformers import Qwen2_5_VLForConditionalGeneration

    from splatvlm.demo import build_demo_tokenizer, vlm_config

    no_cfg = tmp_path / "no_cfg"
    no_cfg.mkdir()
    with pytest.raises(SplatVLMError, match="no adapter_config.json"):
        check_reward_source(RewardConfig(model="demo", lora=[str(no_cfg)]))
    with pytest.raises(SplatVLMError, match="does not exist"):
        check_adapter_dir(tmp_path / "missing")

    # An adapter trained on a wider model: caught before the reward model loads, and again at load time.
    config = vlm_config("demo", build_demo_tokenizer())
    config.text_config.hidden_size = 96
    other = get_peft_model(
        Qwen2_5_VLForConditionalGeneration._from_config(config), LoraConfig(r=2, target_modules=["q_proj"])
    )
    other.peft_config["default"].base_model_name_or_path = "someone/other-vl"
    other.save_pretrained(tmp_path / "other", save_embedding_layers=False)
    with pytest.raises(SplatVLMError, match=r"another base model \('someone/other-vl'\).*q_proj") as e:
        check_reward_source(RewardConfig(model="demo", lora=[str(tmp_path / "other")]))
    assert "\n" not in str(e.value)
    with pytest.raises(SplatVLMError, match="another base model"):
        load_reward(RewardConfig(model="demo", lora=[str(adapter), str(tmp_path / "other")]), "cpu")


def test_jsonl_validation(tmp_path, dataset):
    img = str(dataset / "yes0_0.png")
    cases = {
        "not json": "not valid JSON",
        json.dumps({"images": [img], "prompt": "x", "label": "maybe"}): "'label' must be",
        json.dumps({"images": [img], "prompt": "", "label": "yes"}): "'prompt'",
        json.dumps({"images": ["nope.png"], "prompt": "x", "label": "no"}): "image nope.png not found",
        json.dumps({"images": [], "prompt": "x", "label": "no"}): "non-empty list",
        json.dumps({"images_chosen": [img], "prompt": "x"}): "images_rejected",
        json.dumps({"prompt": "x"}): "needs 'images'",
        json.dumps([1, 2]): "JSON object",
    }
    good = json.dumps({"images": [img], "prompt": "x", "label": "Yes"})
    for line, msg in cases.items():
        path = tmp_path / "d.jsonl"
        path.write_text(f"{good}\n\n{line}\n")
        with pytest.raises(SplatVLMError, match=rf"d\.jsonl:3: .*{msg}"):
            read_reward_data(path)
    path.write_text(f"# comment\n{good}\n")
    (ex,) = read_reward_data(path)
    assert ex.label is True and ex.line == 2
    (tmp_path / "bad.png").write_text("not an image")
    path.write_text(json.dumps({"images": ["bad.png"], "prompt": "x", "label": "no"}))
    with pytest.raises(SplatVLMError, match="not a readable image"):
        read_reward_data(path)


def test_cli_shape_of_train_reward_config():
    import tyro

    cfg = tyro.cli(TrainRewardConfig, args=["data.jsonl", "-o", "out", "--vlm.model", "demo", "--steps", "3"])
    assert cfg.data == Path("data.jsonl") and cfg.output == Path("out") and cfg.vlm.model == "demo"
    assert cfg.steps == 3


def test_jsonl_bytes_and_images_checked_before_any_model(tmp_path, dataset):
    img = str(dataset / "yes0_0.png")
    good = json.dumps({"images": [img], "prompt": "x", "label": "yes"})
    path = tmp_path / "d.jsonl"
    path.write_bytes(good.encode() + b"\n" + b'{"prompt": "caf\xe9"}\n')
    with pytest.raises(SplatVLMError, match=r"d\.jsonl:2: not UTF-8"):
        read_reward_data(path)
    path.write_text(good + "\n" + "[" * 50000 + "\n")
    with pytest.raises(SplatVLMError, match=r"d\.jsonl:2: not a JSON record"):
        read_reward_data(path)
    data = (dataset / "yes0_0.png").read_bytes()
    (tmp_path / "cut.png").write_bytes(data[: len(data) // 2])
    path.write_text(json.dumps({"images": ["cut.png"], "prompt": "x", "label": "no"}) + "\n")
    with pytest.raises(SplatVLMError, match=r"d\.jsonl:1: image .*cut\.png is truncated or corrupt"):
        read_reward_data(path)


EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "reward_data"


def test_example_data_is_what_its_script_makes(tmp_path):
    import importlib.util

    spec = importlib.util.spec_from_file_location("make_data", EXAMPLE / "make_data.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.main(tmp_path)
    assert (tmp_path / "data.jsonl").read_text() == (EXAMPLE / "data.jsonl").read_text()
    for png in EXAMPLE.glob("*.png"):
        assert np.array_equal(np.asarray(Image.open(png)), np.asarray(Image.open(tmp_path / png.name))), png
    records = read_reward_data(EXAMPLE / "data.jsonl")
    assert (
        [r.label for r in records] == [True, False, True, None] and records[3].chosen and records[3].rejected
    )


def test_example_trains_offline_with_the_demo_model_and_normal_modes(tmp_path, capsys):
    from splatvlm.cli import main

    out = tmp_path / "adapter"
    old = os.umask(0o022)
    try:
        args = ["train-reward", str(EXAMPLE / "data.jsonl"), "-o", str(out), "--vlm.model", "demo"]
        assert main([*args, "--steps", "2", "--batch", "1", "--rank", "2", "--vlm.size", "56"]) == 0
    finally:
        os.umask(old)
    assert "wrote LoRA adapter" in capsys.readouterr().out
    assert (out.stat().st_mode & 0o777) == 0o755  # not mkdtemp's 0700
    files = list(out.iterdir())
    assert files and all((f.stat().st_mode & 0o777) == 0o644 for f in files), [
        oct(f.stat().st_mode) for f in files
    ]


def test_help_gives_the_data_format(capsys):
    from splatvlm.cli import main

    with pytest.raises(SystemExit) as e:
        main(["train-reward", "--help"])
    out = capsys.readouterr().out
    assert e.value.code == 0
    assert '"label": "yes"' in out and '"images_chosen"' in out and "examples/reward_data" in out
