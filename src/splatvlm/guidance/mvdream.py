"""MVDream on a stock ``diffusers.UNet2DConditionModel``: camera input, multi-view attention, weights.

MVDream's UNet is SD-2.1-base plus a camera MLP (Linear 16->1280, SiLU, Linear) added to the time
embedding, which is exactly diffusers' ``class_embed_type="projection"`` with the flattened camera as
``class_labels``. Its multi-view attention adds no weights: every self-attention (``attn1``) runs over
the tokens of all views of one object, so the batch must be ordered view-contiguous per object.

Weights come from (a) the original LDM checkpoint ``sd-v2.1-base-4view.pt`` (converted with diffusers'
``convert_ldm_unet_checkpoint``), (b) diffusers-format ports: LDM key names in the ``unet`` folder
(``ashawkey/mvdream-sd2.1-diffusers``) or diffusers key names plus a separate ``camera_proj`` component
(``lzq49/mvdream-sd21-diffusers``), or (c) a folder written by our own ``save_pretrained``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Literal

import torch
from diffusers import UNet2DConditionModel
from diffusers.models.attention_processor import AttnProcessor, AttnProcessor2_0
from torch import Tensor

from ..errors import SplatVLMError
from ..gaussians.cameras import Cameras, rigid_inverse

# SD-2.1-base UNet (its published config); ``attention_head_dim`` is diffusers' historical name for heads per block.
SD21_BASE_UNET_CONFIG: dict = dict(
    sample_size=64,
    in_channels=4,
    out_channels=4,
    down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    block_out_channels=(320, 640, 1280, 1280),
    layers_per_block=2,
    attention_head_dim=(5, 10, 20, 20),
    cross_attention_dim=1024,
    use_linear_projection=True,
    act_fn="silu",
    norm_num_groups=32,
    norm_eps=1e-5,
    flip_sin_to_cos=True,
    freq_shift=0,
    upcast_attention=False,
)

CAMERA_DIM = 16  # a flattened 4x4 camera-to-world matrix
LDM_UNET_PREFIX = "model.diffusion_model."
CHECKPOINT_SUFFIXES = (".pt", ".pth", ".ckpt", ".bin", ".safetensors")


def mvdream_unet_config(**overrides) -> dict:
    """UNet2DConditionModel config of MVDream sd-v2.1-base-4view (256 px, 32x32 latents)."""
    cfg = dict(SD21_BASE_UNET_CONFIG, sample_size=32)
    cfg.update(class_embed_type="projection", projection_class_embeddings_input_dim=CAMERA_DIM)
    cfg.update(overrides)
    return cfg


# ---------------------------------------------------------------------------------------------
# Cameras


def mvdream_cameras(cams: Cameras) -> Tensor:
    """MVDream's camera input [C, 16] for our cameras.

    MVDream wants camera-to-world in a z-up world with OpenGL/Blender axes (columns right, up,
    backward), the translation scaled to unit length, flattened row-major. Our viewmats are OpenCV
    world-to-camera in the same z-up world, so only the camera's y and z axes flip. (MVDream's own
    azimuth 0 is our azimuth -90: its orbit starts on -y, threestudio's on +x.)
    """
    c2w = rigid_inverse(cams.viewmats.double())  # [C, 4, 4], OpenCV axes
    c2w[:, :3, 1:3] = -c2w[:, :3, 1:3]
    t = c2w[:, :3, 3]
    c2w[:, :3, 3] = t / (t.norm(dim=-1, keepdim=True) + 1e-8)
    return c2w.reshape(-1, 16).float()


# ---------------------------------------------------------------------------------------------
# Multi-view attention


class MultiViewAttnProcessor:
    """Self-attention across the views of each object; with one view it is the wrapped processor.

    Reshapes [B*V, N, C] -> [B, V*N, C] before attention and back after. Cross-attention calls
    (``encoder_hidden_states`` given) pass straight through.
    """

    def __init__(self, num_views: int, base: AttnProcessor2_0 | AttnProcessor | None = None):
        if num_views < 1:
            raise ValueError(f"num_views must be >= 1, got {num_views}")
        self.num_views = num_views
        self.base = base if base is not None else AttnProcessor2_0()

    def __call__(
        self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None, **kwargs
    ):
        v = self.num_views
        if v == 1 or encoder_hidden_states is not None:
            return self.base(attn, hidden_states, encoder_hidden_states, attention_mask, temb, **kwargs)
        if hidden_states.ndim != 3 or attention_mask is not None:
            raise ValueError("multi-view attention expects [B*V, N, C] tokens and no attention mask")
        bv, n, c = hidden_states.shape
        if bv % v != 0:
            raise ValueError(f"batch {bv} is not a multiple of {v} views (order the batch view-contiguous)")
        out = self.base(attn, hidden_states.reshape(bv // v, v * n, c), None, None, temb, **kwargs)
        return out.reshape(bv, n, c)


def set_multiview_attention(
    unet: UNet2DConditionModel, num_views: int, attention: Literal["sdpa", "math"] = "sdpa"
) -> None:
    """Put the multi-view processor on every ``attn1`` and the plain processor everywhere else.

    ``attention="sdpa"`` uses ``F.scaled_dot_product_attention``; ``"math"`` the explicit
    baddbmm/softmax processor (for comparisons).
    """

    def base() -> AttnProcessor2_0 | AttnProcessor:
        return AttnProcessor2_0() if attention == "sdpa" else AttnProcessor()

    multi = MultiViewAttnProcessor(num_views, base())
    plain = base()
    procs = {name: multi if name.endswith("attn1.processor") else plain for name in unet.attn_processors}
    unet.set_attn_processor(procs)


# ---------------------------------------------------------------------------------------------
# Checkpoint conversion


def convert_mvdream_ldm_state_dict(state_dict: dict[str, Tensor], unet_config: dict) -> dict[str, Tensor]:
    """LDM-named MVDream state dict (``model.diffusion_model.*``) -> diffusers UNet state dict.

    The camera MLP ``camera_embed.{0,2}`` is renamed to LDM's ``label_emb.0.{0,2}``, which diffusers'
    converter maps to ``class_embedding.linear_{1,2}`` for a projection class embedding.
    """
    from diffusers.loaders.single_file_utils import convert_ldm_unet_checkpoint

    cam = LDM_UNET_PREFIX + "camera_embed."
    renamed = {}
    for key, value in state_dict.items():
        if key.startswith(cam):
            key = LDM_UNET_PREFIX + "label_emb.0." + key[len(cam) :]
        renamed[key] = value
    if LDM_UNET_PREFIX + "label_emb.0.0.weight" not in renamed:
        raise SplatVLMError("checkpoint has no camera MLP (camera_embed.*): not an MVDream checkpoint")
    if not any(k.startswith(LDM_UNET_PREFIX + "input_blocks.") for k in renamed):
        raise SplatVLMError("checkpoint has no UNet weights (model.diffusion_model.input_blocks.*)")
    return convert_ldm_unet_checkpoint(renamed, unet_config)


def unet_config_from_ldm_params(params: dict, state_dict: dict[str, Tensor] | None = None) -> dict:
    """diffusers UNet config from an LDM-style MVDream config (ashawkey's ``MultiViewUNetModel``)."""
    mult = params.get("channel_mult", (1, 2, 4, 4))
    ch = int(params["model_channels"])
    channels = tuple(ch * m for m in mult)
    head_ch = int(params.get("num_head_channels", -1))
    heads = tuple(c // head_ch for c in channels) if head_ch > 0 else (int(params["num_heads"]),) * len(mult)
    attn_res = set(params.get("attention_resolutions", (4, 2, 1)))
    with_attn = [2**i in attn_res for i in range(len(mult))]
    down = tuple("CrossAttnDownBlock2D" if a else "DownBlock2D" for a in with_attn)
    up = tuple("CrossAttnUpBlock2D" if a else "UpBlock2D" for a in reversed(with_attn))
    linear = True
    if state_dict is not None:
        # SD-2 style transformers project with Linear layers; SD-1 style with 1x1 convs.
        proj = [v for k, v in state_dict.items() if k.endswith("proj_in.weight")]
        linear = not proj or proj[0].ndim == 2
    return mvdream_unet_config(
        sample_size=int(params.get("image_size", 32)),
        in_channels=int(params.get("in_channels", 4)),
        out_channels=int(params.get("out_channels", 4)),
        block_out_channels=channels,
        layers_per_block=int(params.get("num_res_blocks", 2)),
        attention_head_dim=heads,
        down_block_types=down,
        up_block_types=up,
        cross_attention_dim=int(params.get("context_dim", 1024)),
        transformer_layers_per_block=int(params.get("transformer_depth", 1)),
        use_linear_projection=linear,
        projection_class_embeddings_input_dim=int(params.get("camera_dim", CAMERA_DIM)),
    )


def unet_from_state_dict(config: dict, state_dict: dict[str, Tensor], source: str) -> UNet2DConditionModel:
    """Build the UNet without random init (meta device) and load every weight, strictly."""
    with torch.device("meta"):
        unet = UNet2DConditionModel.from_config(config)
    expected = set(unet.state_dict())
    missing = sorted(expected - set(state_dict))
    unexpected = sorted(set(state_dict) - expected)
    if missing or unexpected:
        raise SplatVLMError(
            f"weights in '{source}' do not fit the MVDream UNet: {len(missing)} missing "
            f"(e.g. {missing[:2]}), {len(unexpected)} unexpected (e.g. {unexpected[:2]})"
        )
    for key, p in unet.state_dict().items():
        if tuple(state_dict[key].shape) != tuple(p.shape):
            raise SplatVLMError(
                f"weights in '{source}' do not fit the MVDream UNet: {key} has shape "
                f"{tuple(state_dict[key].shape)}, expected {tuple(p.shape)}"
            )
    unet.load_state_dict(state_dict, strict=True, assign=True)
    return unet


# ---------------------------------------------------------------------------------------------
# Loading


def read_checkpoint(path: str | os.PathLike) -> dict[str, Tensor]:
    """A plain state dict from a .pt/.ckpt (``weights_only=True``, memory-mapped) or .safetensors file."""
    path = Path(path)
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except RuntimeError:
        # Legacy (non-zip) torch files cannot be memory-mapped.
        obj = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
        obj = obj["state_dict"]  # Lightning-style checkpoints wrap the weights
    if not isinstance(obj, dict) or not all(isinstance(v, Tensor) for v in obj.values()):
        raise SplatVLMError(f"'{path}' is not a plain state dict of tensors")
    return obj


def load_mvdream_checkpoint(path: str | os.PathLike, config: dict | None = None) -> UNet2DConditionModel:
    """Route (a): the original LDM checkpoint ``sd-v2.1-base-4view.pt`` -> diffusers UNet (fp32, CPU).

    ``config`` defaults to MVDream's (SD-2.1-base + camera projection); tests pass a tiny one.
    """
    config = mvdream_unet_config() if config is None else config
    state_dict = convert_mvdream_ldm_state_dict(read_checkpoint(path), config)
    return unet_from_state_dict(config, state_dict, str(path))


UNetFlavor = Literal["ldm", "camera_proj", "diffusers"]


def unet_flavor(unet_config: dict, has_camera_proj: bool) -> UNetFlavor:
    """Which MVDream folder layout a ``unet/config.json`` belongs to."""
    if unet_config.get("_class_name") == "MultiViewUNetModel" or "model_channels" in unet_config:
        return "ldm"
    if has_camera_proj:
        return "camera_proj"
    return "diffusers"


def _fetch(source: str, filename: str, local_files_only: bool = False) -> Path | None:
    """Local path of ``filename`` inside a local folder or an HF repo; None when it does not exist."""
    if os.path.isdir(os.path.expanduser(source)):
        path = Path(os.path.expanduser(source)) / filename
        return path if path.exists() else None
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError

    try:
        return Path(hf_hub_download(source, filename, local_files_only=local_files_only))
    except EntryNotFoundError:
        return None


def _read_weights(source: str, subfolder: str, local_files_only: bool = False) -> dict[str, Tensor]:
    for name in ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin"):
        path = _fetch(source, f"{subfolder}/{name}", local_files_only)
        if path is not None:
            return read_checkpoint(path)
    raise SplatVLMError(
        f"no weights file (diffusion_pytorch_model.safetensors or .bin) in '{source}/{subfolder}'"
    )


def _cast(unet: UNet2DConditionModel, dtype: torch.dtype) -> UNet2DConditionModel:
    # nn.Module.to: diffusers' own .to warns about fp32-only modules, which this UNet does not have.
    return torch.nn.Module.to(unet, dtype=dtype) if unet.dtype != dtype else unet


def load_mvdream_unet(
    source: str, dtype: torch.dtype = torch.float32, local_files_only: bool = False
) -> UNet2DConditionModel:
    """The MVDream UNet from a .pt checkpoint, a diffusers-format folder / HF id, or our own folder.

    Returns a stock ``UNet2DConditionModel`` with a projection class embedding for the camera, on the
    CPU in ``dtype``; set the multi-view processor with ``set_multiview_attention``.
    """
    local = os.path.expanduser(source)
    if os.path.isfile(local):
        return _cast(load_mvdream_checkpoint(local), dtype)
    config_path = _fetch(source, "unet/config.json", local_files_only)
    if config_path is None:
        raise SplatVLMError(f"'{source}' has no unet/config.json: not a diffusers-format MVDream model")
    unet_config = json.loads(config_path.read_text())
    flavor = unet_flavor(unet_config, _fetch(source, "camera_proj/config.json", local_files_only) is not None)
    if flavor == "ldm":
        # ashawkey-style: LDM key names without the "model.diffusion_model." prefix.
        raw = _read_weights(source, "unet", local_files_only)
        state_dict = {LDM_UNET_PREFIX + k: v for k, v in raw.items()}
        config = unet_config_from_ldm_params(unet_config, raw)
        unet = unet_from_state_dict(config, convert_mvdream_ldm_state_dict(state_dict, config), source)
        return _cast(unet, dtype)
    if flavor == "camera_proj":
        # lzq49-style: diffusers key names; the camera MLP is its own component.
        state_dict = _read_weights(source, "unet", local_files_only)
        for k, v in _read_weights(source, "camera_proj", local_files_only).items():
            if k.startswith(("linear_1.", "linear_2.")):
                state_dict["class_embedding." + k] = v
        known = set(UNet2DConditionModel.extract_init_dict(unet_config)[0])
        config = {k: v for k, v in unet_config.items() if k in known}
        config.update(class_embed_type="projection", projection_class_embeddings_input_dim=CAMERA_DIM)
        return _cast(unet_from_state_dict(config, state_dict, source), dtype)
    unet = UNet2DConditionModel.from_pretrained(
        source, subfolder="unet", torch_dtype=dtype, local_files_only=local_files_only
    )
    if unet.config.class_embed_type != "projection":
        raise SplatVLMError(
            f"the UNet in '{source}' has no camera embedding: not an MVDream model (use --sds.kind sd)"
        )
    return unet
