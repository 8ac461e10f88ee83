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


def _demo_model(seed: int = 0):
    import torch
    from transformers import Qwen2_5_VLForConditionalGeneration

    from splatvlm.demo import build_demo_tokenizer, vlm_config

    torch.manual_seed(seed)
    return Qwen2_5_VLForConditionalGeneration._from_config(vlm_config("demo", build_demo_tokenizer())).eval()


def test_fused_projections_are_views_and_exact():
    import copy

    import torch

    from splatvlm.guidance.qwen_fast import GATE_UP, QKV, fuse_projections, fused_weights, split_linear

    model = _demo_model()
    plain = copy.deepcopy(model)
    keys = list(model.state_dict())
    n_layers, n_blocks = len(model.model.language_model.layers), len(model.model.visual.blocks)
    assert fuse_projections(model) == 2 * n_layers + n_blocks
    assert list(model.state_dict()) == keys  # the checkpoint layout is unchanged
    attn = model.model.language_model.layers[0].self_attn
    weight, bias, sizes = fused_weights(attn, QKV)
    assert sizes == (attn.q_proj.out_features, attn.k_proj.out_features, attn.v_proj.out_features)
    assert attn.v_proj.weight.untyped_storage().data_ptr() == weight.untyped_storage().data_ptr()
    x = torch.randn(7, attn.q_proj.in_features)
    ref = plain.model.language_model.layers[0].self_attn
    for got, m in zip(
        split_linear(x, (weight, bias, sizes)), (ref.q_proj, ref.k_proj, ref.v_proj), strict=True
    ):
        torch.testing.assert_close(got, m(x), rtol=1e-5, atol=1e-6)
    # HF's own forward of the fused model still reads the modules: same logits
    ids = torch.tensor([[5, 6, 7, 8, 9]])
    torch.testing.assert_close(model(input_ids=ids).logits, plain(input_ids=ids).logits, rtol=1e-5, atol=1e-5)
    assert fused_weights(model.model.visual.blocks[0].mlp, GATE_UP) is not None


def test_fused_weights_fall_back_when_a_projection_changes():
    import torch

    from splatvlm.guidance.qwen_fast import GATE_UP, QKV, fuse_linears, fused_weights

    model = _demo_model()
    layer = model.model.language_model.layers[0]
    assert fuse_linears(layer.self_attn, QKV) and fuse_linears(layer.mlp, GATE_UP)
    layer.mlp.up_proj = torch.nn.Linear(
        layer.mlp.up_proj.in_features, layer.mlp.up_proj.out_features, bias=False
    )
    assert fused_weights(layer.mlp, GATE_UP) is None  # replaced (as LoRA or FP8 would): back to the modules
    layer.self_attn.k_proj.weight = torch.nn.Parameter(layer.self_attn.k_proj.weight.clone())
    assert fused_weights(layer.self_attn, QKV) is None
    other = model.model.language_model.layers[1]
    other.mlp.gate_proj = torch.nn.Identity()
    assert not fuse_linears(other.mlp, GATE_UP)  # not all plain linears: nothing changes


def test_decoder_layer_matches_hf_layer():
    import torch

    from splatvlm.guidance.qwen_fast import GATE_UP, QKV, decoder_layer, fuse_projections, fused_weights

    model = _demo_model(1)
    lm = model.model.language_model
    h = torch.randn(1, 9, lm.config.hidden_size)
    pos = torch.arange(9)[None, None].expand(3, 1, 9)
    cos, sin = lm.rotary_emb(h, pos)
    layer = lm.layers[0]
    with torch.no_grad():
        want = layer(h, attention_mask=None, position_embeddings=(cos, sin), position_ids=None)
        plain = decoder_layer(layer, h, cos, sin, None, None, None)
        fuse_projections(model)
        fused = decoder_layer(
            layer, h, cos, sin, None, fused_weights(layer.self_attn, QKV), fused_weights(layer.mlp, GATE_UP)
        )
        causal = torch.ones(9, 9, dtype=torch.bool).tril()[None, None]
        masked = decoder_layer(layer, h, cos, sin, causal, None, None)
    want = want[0] if isinstance(want, tuple) else want
    for got in (plain, fused, masked):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
