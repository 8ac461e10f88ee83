"""The fast path's checks of the transformers internals it calls (the numerics are in test_reward.py)."""

import pytest

from splatvlm.errors import SplatVLMError
from splatvlm.guidance.qwen_fast import cache_kwarg, cache_kwarg_of, check_transformers


def test_cache_argument_name_follows_the_signature():
    def new(config, inputs_embeds, attention_mask, cache=None): ...

    def old(config, inputs_embeds, attention_mask, past_key_values=None): ...

    assert cache_kwarg_of(new) == "cache" and cache_kwarg_of(old) == "past_key_values"
    assert cache_kwarg() in ("cache", "past_key_values")  # whatever is installed


@pytest.fixture(scope="module")
def tiny_vlm():
    from transformers import Qwen2_5_VLForConditionalGeneration

    from splatvlm.demo import build_demo_tokenizer, vlm_config

    return Qwen2_5_VLForConditionalGeneration._from_config(vlm_config("demo", build_demo_tokenizer()))


def test_installed_transformers_passes(tiny_vlm):
    check_transformers(tiny_vlm)


def test_missing_internal_is_one_line_naming_the_version(tiny_vlm, monkeypatch):
    import transformers
    from transformers.models.qwen2_5_vl import modeling_qwen2_5_vl as mq

    monkeypatch.delattr(mq, "repeat_kv")
    with pytest.raises(SplatVLMError) as e:
        check_transformers(tiny_vlm)
    msg = str(e.value)
    assert (
        "\n" not in msg and "repeat_kv" in msg and transformers.__version__ in msg and "--vlm.no-fast" in msg
    )


def test_missing_module_attribute_is_reported(tiny_vlm, monkeypatch):
    monkeypatch.delitem(tiny_vlm.model.visual._modules, "merger")  # as if a release renamed it
    with pytest.raises(SplatVLMError, match="merger"):
        check_transformers(tiny_vlm)


def test_padding_the_vision_mlp_is_exact():
    import copy

    import torch
    from transformers import Qwen2_5_VLForConditionalGeneration

    from splatvlm.demo import build_demo_tokenizer, vlm_config
    from splatvlm.guidance.qwen_fast import pad_vision_mlp

    torch.manual_seed(0)
    model = Qwen2_5_VLForConditionalGeneration._from_config(vlm_config("demo", build_demo_tokenizer()))
    padded = copy.deepcopy(model)
    assert pad_vision_mlp(padded, multiple=48) == 96  # the demo's 64 -> 96
    x = torch.randn(20, model.config.vision_config.hidden_size)
    for a, b in zip(model.model.visual.blocks, padded.model.visual.blocks, strict=True):
        assert b.mlp.up_proj.weight.shape[0] == 96 and b.mlp.down_proj.weight.shape[1] == 96
        torch.testing.assert_close(b.mlp(x), a.mlp(x), rtol=0, atol=1e-6)
    assert pad_vision_mlp(padded, multiple=48) == 96  # already a multiple: unchanged
