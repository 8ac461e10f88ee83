"""MVDream on a stock diffusers UNet: camera conversion, multi-view attention, checkpoint loaders."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from diffusers import UNet2DConditionModel
from diffusers.models.attention_processor import Attention, AttnProcessor2_0
from safetensors.torch import save_file

from splatvlm.errors import SplatVLMError
from splatvlm.gaussians.cameras import orbit_cameras
from splatvlm.guidance.mvdream import (
    MultiViewAttnProcessor,
    convert_mvdream_ldm_state_dict,
    load_mvdream_checkpoint,
    load_mvdream_unet,
    mvdream_cameras,
    mvdream_unet_config,
    set_multiview_attention,
    unet_config_from_ldm_params,
    unet_from_state_dict,
)

# Tiny MVDream UNet with SD-2.1's structure (4 levels, 2 layers each, linear projections). 32 groups,
# as LDM's GroupNorm32, so LDM-style configs describe it exactly.
TINY = mvdream_unet_config(
    sample_size=8,
    block_out_channels=(32, 32, 64, 64),
    attention_head_dim=(2, 2, 4, 4),
    cross_attention_dim=32,
    norm_num_groups=32,
)
# The same model as an LDM-style config (ashawkey's MultiViewUNetModel): 16 channels per head.
TINY_LDM_PARAMS = dict(
    image_size=8,
    in_channels=4,
    out_channels=4,
    model_channels=32,
    num_res_blocks=2,
    attention_resolutions=[4, 2, 1],
    channel_mult=[1, 1, 2, 2],
    num_head_channels=16,
    context_dim=32,
    camera_dim=16,
    transformer_depth=1,
)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny models run fastest on one thread, and a shared CPU makes more threads much slower."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def random_unet(seed: int = 0) -> UNet2DConditionModel:
    """Tiny MVDream UNet with every parameter random (no zero-init layer hides a bad mapping)."""
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(**TINY).eval()
    with torch.no_grad():
        for p in unet.parameters():
            p.copy_(torch.randn_like(p) * 0.2)
    return unet


def unet_inputs(batch: int = 4, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, 4, 8, 8, generator=g)
    text = torch.randn(batch, 7, 32, generator=g)
    cams = torch.randn(batch, 16, generator=g)
    return x, text, cams


def assert_same_model(unet, ref) -> None:
    """Bitwise-equal weights and (up to kernel choice) equal outputs."""
    got, want = unet.state_dict(), ref.state_dict()
    assert set(got) == set(want)
    for k, v in want.items():
        assert torch.equal(got[k], v), k
    x, text, cams = unet_inputs(4)
    torch.testing.assert_close(run(unet.eval(), x, text, cams), run(ref, x, text, cams), atol=1e-5, rtol=1e-5)


def run(unet, x, text, cams, t: int = 500):
    with torch.no_grad():
        return unet(x, torch.full((x.shape[0],), t), encoder_hidden_states=text, class_labels=cams).sample


# ---------------------------------------------------------------------------------------------
# Cameras


def mvdream_reference_camera(elevation: float, azimuth: float) -> np.ndarray:
    """MVDream's published camera (mvdream/camera_utils.py), re-derived here: a y-up OpenGL look-at on
    the unit sphere, then the yz flip to Blender's z-up world, flattened row-major."""
    el, az = math.radians(elevation), math.radians(azimuth)
    pos = np.array([math.cos(el) * math.sin(az), math.sin(el), math.cos(el) * math.cos(az)])
    forward = -pos / np.linalg.norm(pos)
    right = np.cross(forward, [0.0, 1.0, 0.0])
    right /= np.linalg.norm(right)
    up = np.cross(right, forward)
    c2w = np.eye(4)
    c2w[:3, 0], c2w[:3, 1], c2w[:3, 2], c2w[:3, 3] = right, up, -forward, pos
    flip = np.array([[1, 0, 0, 0], [0, 0, -1, 0], [0, 1, 0, 0], [0, 0, 0, 1]], dtype=float)
    return (flip @ c2w).reshape(16)


@pytest.mark.parametrize(
    "elevation, azimuth, distance",
    [(0.0, 0.0, 1.0), (15.0, 45.0, 2.5), (30.0, 90.0, 3.7), (-10.0, 200.0, 1.2), (60.0, 315.0, 0.9)],
)
def test_camera_matches_mvdream_formula(elevation, azimuth, distance):
    # MVDream azimuth a is our (threestudio) azimuth a - 90.
    cams = orbit_cameras(
        torch.tensor([elevation]),
        torch.tensor([azimuth - 90.0]),
        torch.tensor([distance]),
        torch.tensor([40.0]),
        64,
        64,
    )
    ours = mvdream_cameras(cams)[0].numpy()
    ref = mvdream_reference_camera(elevation, azimuth)
    np.testing.assert_allclose(ours, ref, atol=2e-6)


def test_camera_axes_and_azimuth_offset():
    # Our azimuth 0 (camera on +x) is MVDream's azimuth 90.
    cams = orbit_cameras(
        torch.tensor([0.0]), torch.tensor([0.0]), torch.tensor([3.0]), torch.tensor([40.0]), 8, 8
    )
    m = mvdream_cameras(cams)[0].reshape(4, 4)
    torch.testing.assert_close(m[:3, 3], torch.tensor([1.0, 0.0, 0.0]), atol=1e-6, rtol=0)  # unit translation
    torch.testing.assert_close(
        m[:3, 1], torch.tensor([0.0, 0.0, 1.0]), atol=1e-6, rtol=0
    )  # camera up = world +z
    torch.testing.assert_close(
        m[:3, 2], torch.tensor([1.0, 0.0, 0.0]), atol=1e-6, rtol=0
    )  # backward = away from origin
    np.testing.assert_allclose(m.reshape(16).numpy(), mvdream_reference_camera(0.0, 90.0), atol=2e-6)


# ---------------------------------------------------------------------------------------------
# Multi-view attention


def reference_joint_attention(attn: Attention, x: torch.Tensor, views: int) -> torch.Tensor:
    """Explicit softmax attention over the tokens of all views of each object."""
    bv, n, c = x.shape
    tokens = x.reshape(bv // views, views * n, c)
    q, k, v = attn.to_q(tokens), attn.to_k(tokens), attn.to_v(tokens)
    h = attn.heads

    def split(t):
        return t.reshape(t.shape[0], t.shape[1], h, -1).transpose(1, 2)

    q, k, v = split(q), split(k), split(v)
    w = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1]), dim=-1)
    out = (w @ v).transpose(1, 2).reshape(tokens.shape[0], tokens.shape[1], -1)
    return attn.to_out[0](out).reshape(bv, n, -1)


def test_processor_is_joint_attention_over_views():
    torch.manual_seed(0)
    attn = Attention(query_dim=32, heads=4, dim_head=8).eval()
    x = torch.randn(8, 5, 32)  # 2 objects x 4 views, 5 tokens each
    with torch.no_grad():
        ours = MultiViewAttnProcessor(4)(attn, x)
        ref = reference_joint_attention(attn, x, 4)
        per_view = AttnProcessor2_0()(attn, x)
    torch.testing.assert_close(ours, ref, atol=1e-5, rtol=1e-5)
    assert (ours - per_view).abs().max() > 1e-3  # it is not plain per-view attention


def test_processor_passes_cross_attention_through():
    torch.manual_seed(0)
    attn = Attention(query_dim=32, cross_attention_dim=16, heads=4, dim_head=8).eval()
    x, ctx = torch.randn(8, 5, 32), torch.randn(8, 3, 16)
    with torch.no_grad():
        assert torch.equal(MultiViewAttnProcessor(4)(attn, x, ctx), AttnProcessor2_0()(attn, x, ctx))


def test_one_view_equals_stock_processor_exactly():
    unet = random_unet()
    x, text, cams = unet_inputs(4)
    stock = run(unet, x, text, cams)
    set_multiview_attention(unet, 1)
    assert isinstance(
        unet.attn_processors["down_blocks.0.attentions.0.transformer_blocks.0.attn1.processor"],
        MultiViewAttnProcessor,
    )
    assert torch.equal(run(unet, x, text, cams), stock)


def test_multiview_attention_mixes_views_within_an_object_only():
    unet = random_unet()
    x, text, cams = unet_inputs(8)  # 2 objects x 4 views
    x2 = x.clone()
    x2[2] += 1.0  # change view 2 of object 0
    set_multiview_attention(unet, 1)
    a, b = run(unet, x, text, cams), run(unet, x2, text, cams)
    assert torch.equal(a[1], b[1])  # stock: views are independent
    set_multiview_attention(unet, 4)
    a, b = run(unet, x, text, cams), run(unet, x2, text, cams)
    assert (a[1] - b[1]).abs().max() > 1e-4  # view 1 now sees view 2
    assert (a[0] - b[0]).abs().max() > 1e-4
    torch.testing.assert_close(a[4:], b[4:], atol=1e-6, rtol=0)  # object 1 is untouched


def test_multiview_rejects_batch_not_multiple_of_views():
    unet = random_unet()
    set_multiview_attention(unet, 4)
    x, text, cams = unet_inputs(6)
    with pytest.raises(ValueError, match="multiple of 4"):
        run(unet, x, text, cams)


# ---------------------------------------------------------------------------------------------
# Checkpoint conversion: a synthetic LDM-named state dict


RESNET = {"norm1": "in_layers.0", "conv1": "in_layers.2", "time_emb_proj": "emb_layers.1",
          "norm2": "out_layers.0", "conv2": "out_layers.3", "conv_shortcut": "skip_connection"}  # fmt: skip


def ldm_name(key: str, layers: int = 2) -> str:
    """Our own diffusers -> LDM (openaimodel) naming for SD-2.1-style UNets, written independently of
    diffusers' converter (ResBlock / SpatialTransformer / Downsample.op / Upsample.conv)."""
    parts = key.split(".")

    def resnet(prefix: str, rest: list[str]) -> str:
        return f"{prefix}.{RESNET[rest[0]]}.{'.'.join(rest[1:])}"

    top = {"time_embedding": "time_embed", "class_embedding": "camera_embed"}
    if parts[0] in top:
        idx = {"linear_1": "0", "linear_2": "2"}[parts[1]]
        return f"{top[parts[0]]}.{idx}.{parts[2]}"
    if parts[0] == "conv_in":
        return f"input_blocks.0.0.{parts[1]}"
    if parts[0] == "conv_norm_out":
        return f"out.0.{parts[1]}"
    if parts[0] == "conv_out":
        return f"out.2.{parts[1]}"
    if parts[0] == "down_blocks":
        b = int(parts[1])
        if parts[2] == "downsamplers":
            return f"input_blocks.{(b + 1) * (layers + 1)}.0.op.{parts[-1]}"
        i = 1 + b * (layers + 1) + int(parts[3])
        if parts[2] == "resnets":
            return resnet(f"input_blocks.{i}.0", parts[4:])
        return f"input_blocks.{i}.1.{'.'.join(parts[4:])}"
    if parts[0] == "mid_block":
        if parts[1] == "resnets":
            return resnet(f"middle_block.{2 * int(parts[2])}", parts[3:])
        return f"middle_block.1.{'.'.join(parts[3:])}"
    if parts[0] == "up_blocks":
        b = int(parts[1])
        if parts[2] == "upsamplers":
            has_attn = b > 0  # the first up block (UpBlock2D) has no attention
            return f"output_blocks.{b * (layers + 1) + layers}.{2 if has_attn else 1}.conv.{parts[-1]}"
        i = b * (layers + 1) + int(parts[3])
        if parts[2] == "resnets":
            return resnet(f"output_blocks.{i}.0", parts[4:])
        return f"output_blocks.{i}.1.{'.'.join(parts[4:])}"
    raise KeyError(key)


def synthetic_ldm_checkpoint(unet: UNet2DConditionModel) -> dict[str, torch.Tensor]:
    sd = {"model.diffusion_model." + ldm_name(k): v.clone() for k, v in unet.state_dict().items()}
    # Parts of the real file that the UNet conversion must ignore.
    sd["first_stage_model.encoder.conv_in.weight"] = torch.zeros(8, 3, 3, 3)
    sd["cond_stage_model.model.positional_embedding"] = torch.zeros(77, 32)
    sd["betas"] = torch.zeros(1000)
    return sd


def test_synthetic_checkpoint_uses_real_ldm_names():
    sd = synthetic_ldm_checkpoint(random_unet())
    for key in (
        "model.diffusion_model.input_blocks.1.1.transformer_blocks.0.attn1.to_q.weight",
        "model.diffusion_model.input_blocks.3.0.op.weight",
        "model.diffusion_model.input_blocks.7.0.skip_connection.weight",  # 32 -> 64 channels here
        "model.diffusion_model.input_blocks.11.0.in_layers.2.weight",
        "model.diffusion_model.middle_block.1.proj_in.weight",
        "model.diffusion_model.output_blocks.2.1.conv.weight",
        "model.diffusion_model.output_blocks.5.2.conv.weight",
        "model.diffusion_model.output_blocks.11.1.proj_out.weight",
        "model.diffusion_model.camera_embed.2.bias",
        "model.diffusion_model.out.2.weight",
    ):
        assert key in sd, key


def test_convert_ldm_state_dict_fills_every_parameter():
    ref = random_unet()
    expected = ref.state_dict()
    converted = convert_mvdream_ldm_state_dict(synthetic_ldm_checkpoint(ref), TINY)
    assert set(converted) == set(expected)  # no missing, no unexpected keys
    for k, v in expected.items():
        assert torch.equal(converted[k], v), k
    unet = unet_from_state_dict(TINY, converted, "synthetic").eval()
    for k, p in unet.named_parameters():
        assert p.device.type == "cpu" and torch.equal(p, expected[k]), k
    set_multiview_attention(ref, 4)
    set_multiview_attention(unet, 4)
    x, text, cams = unet_inputs(4)
    assert torch.equal(run(unet, x, text, cams), run(ref, x, text, cams))


def test_full_size_mvdream_key_coverage():
    """The real sd-v2.1-base-4view layout (on the meta device: names and shapes only)."""
    config = mvdream_unet_config()
    with torch.device("meta"):
        full = UNet2DConditionModel(**config)
    expected = full.state_dict()
    ldm = {"model.diffusion_model." + ldm_name(k): v for k, v in expected.items()}
    assert ldm["model.diffusion_model.camera_embed.0.weight"].shape == (1280, 16)
    assert ldm["model.diffusion_model.input_blocks.4.0.skip_connection.weight"].shape == (640, 320, 1, 1)
    converted = convert_mvdream_ldm_state_dict(ldm, config)
    assert set(converted) == set(expected)
    assert all(converted[k].shape == v.shape for k, v in expected.items())
    unet = unet_from_state_dict(config, converted, "meta")
    assert sum(p.numel() for p in unet.parameters()) == 865_910_724 + 16 * 1280 + 1280 + 1280 * 1280 + 1280


def test_ldm_style_config_of_the_real_model():
    params = dict(
        image_size=32,
        in_channels=4,
        out_channels=4,
        model_channels=320,
        attention_resolutions=[4, 2, 1],
        num_res_blocks=2,
        channel_mult=[1, 2, 4, 4],
        num_head_channels=64,
        transformer_depth=1,
        context_dim=1024,
        camera_dim=16,
        _class_name="MultiViewUNetModel",
    )
    got = unet_config_from_ldm_params(params)
    want = mvdream_unet_config()
    for k, v in want.items():
        assert got[k] == v, k


def test_original_checkpoint_file_route(tmp_path):
    ref = random_unet()
    path = tmp_path / "sd-v2.1-base-4view.pt"
    torch.save(synthetic_ldm_checkpoint(ref), path)
    assert_same_model(load_mvdream_checkpoint(path, TINY), ref)


def test_checkpoint_without_camera_mlp_is_rejected():
    sd = synthetic_ldm_checkpoint(random_unet())
    sd = {k: v for k, v in sd.items() if "camera_embed" not in k}
    with pytest.raises(SplatVLMError, match="camera"):
        convert_mvdream_ldm_state_dict(sd, TINY)


def test_wrong_shapes_are_rejected():
    ref = random_unet()
    converted = convert_mvdream_ldm_state_dict(synthetic_ldm_checkpoint(ref), TINY)
    with pytest.raises(SplatVLMError, match="do not fit"):
        unet_from_state_dict(mvdream_unet_config(**dict(TINY, cross_attention_dim=16)), converted, "x")


# ---------------------------------------------------------------------------------------------
# Diffusers-format folders


def test_ashawkey_style_folder(tmp_path):
    """LDM key names (no model.diffusion_model. prefix) and an LDM-style config in unet/."""
    ref = random_unet()
    (tmp_path / "unet").mkdir()
    sd = {ldm_name(k): v.contiguous() for k, v in ref.state_dict().items()}
    save_file(sd, str(tmp_path / "unet" / "diffusion_pytorch_model.safetensors"))
    config = dict(TINY_LDM_PARAMS, _class_name="MultiViewUNetModel")
    (tmp_path / "unet" / "config.json").write_text(json.dumps(config))
    assert_same_model(load_mvdream_unet(str(tmp_path)), ref)


def test_camera_proj_style_folder(tmp_path):
    """Diffusers key names in unet/ (no class embedding) plus a separate camera_proj component."""
    ref = random_unet()
    sd = ref.state_dict()
    unet_sd = {k: v.contiguous() for k, v in sd.items() if not k.startswith("class_embedding.")}
    cam_sd = {
        k[len("class_embedding.") :]: v.contiguous()
        for k, v in sd.items()
        if k.startswith("class_embedding.")
    }
    (tmp_path / "unet").mkdir()
    (tmp_path / "camera_proj").mkdir()
    save_file(unet_sd, str(tmp_path / "unet" / "diffusion_pytorch_model.safetensors"))
    save_file(cam_sd, str(tmp_path / "camera_proj" / "diffusion_pytorch_model.safetensors"))
    config = {
        k: v
        for k, v in TINY.items()
        if k not in ("class_embed_type", "projection_class_embeddings_input_dim")
    }
    config.update(_class_name="UNet2DConditionModel", some_fork_only_option=True)
    (tmp_path / "unet" / "config.json").write_text(json.dumps(config))
    (tmp_path / "camera_proj" / "config.json").write_text(
        json.dumps({"_class_name": "CameraMatrixEmbedding", "in_channels": 16, "camera_embed_dim": 128})
    )
    assert_same_model(load_mvdream_unet(str(tmp_path)), ref)


def test_own_save_pretrained_folder(tmp_path):
    ref = random_unet()
    ref.save_pretrained(tmp_path / "unet")
    assert_same_model(load_mvdream_unet(str(tmp_path), torch.float32), ref)


def test_plain_sd_unet_folder_is_not_mvdream(tmp_path):
    config = {
        k: v
        for k, v in TINY.items()
        if k not in ("class_embed_type", "projection_class_embeddings_input_dim")
    }
    UNet2DConditionModel(**config).save_pretrained(tmp_path / "unet")
    with pytest.raises(SplatVLMError, match="no camera embedding"):
        load_mvdream_unet(str(tmp_path))
