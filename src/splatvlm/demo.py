"""Every tiny and random-weight model builder, and the one cache they are saved in.

- ``demo`` models: tiny random models of the real classes (a Qwen2.5-VL with a locally trained BPE
  tokenizer; a UNet / VAE / CLIP text encoder with a byte-level CLIP tokenizer), built in seconds on CPU,
  saved under ``hub.cache_dir()/demo`` on first use and then loaded through ``from_pretrained``.
- ``random`` models: the full-size architectures (SD-2.1-base / MVDream, Qwen2.5-VL-7B / 3B) with random
  weights, built directly on the target device, for speed measurements only.

Builders seed a forked RNG, so every machine builds the same demo models without disturbing the caller's.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Literal

import torch

from .errors import SplatVLMError
from .hub import cache_dir, quiet_model_io


@contextlib.contextmanager
def seeded(device: torch.device | str, seed: int):
    """Draw from torch's generators (CPU and ``device``) at ``seed``, leaving the caller's RNG as it was."""
    device = torch.device(device)
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(seed)
        yield


# ---------------------------------------------------------------------------------------------------
# Diffusion priors (SD-2.1-base shapes, as its published config)

SD21_VAE_CONFIG: dict = dict(
    in_channels=3,
    out_channels=3,
    down_block_types=("DownEncoderBlock2D",) * 4,
    up_block_types=("UpDecoderBlock2D",) * 4,
    block_out_channels=(128, 256, 512, 512),
    layers_per_block=2,
    act_fn="silu",
    latent_channels=4,
    norm_num_groups=32,
    sample_size=512,
    scaling_factor=0.18215,
)
SD21_TEXT_ENCODER_CONFIG: dict = dict(
    vocab_size=49408,
    hidden_size=1024,
    intermediate_size=4096,
    num_hidden_layers=23,
    num_attention_heads=16,
    max_position_embeddings=77,
    hidden_act="gelu",
    projection_dim=512,
)
SD_SCHEDULER_CONFIG: dict = dict(
    num_train_timesteps=1000,
    beta_start=0.00085,
    beta_end=0.012,
    beta_schedule="scaled_linear",
    prediction_type="epsilon",
    clip_sample=False,
    steps_offset=1,
)


def _byte_chars() -> list[str]:
    # GPT-2/CLIP byte-level alphabet: printable bytes map to themselves, the rest to U+0100 onward.
    keep = (
        set(range(ord("!"), ord("~") + 1))
        | set(range(ord("¡"), ord("¬") + 1))
        | set(range(ord("®"), ord("ÿ") + 1))
    )
    out, n = [], 0
    for b in range(256):
        if b in keep:
            out.append(chr(b))
        else:
            out.append(chr(256 + n))
            n += 1
    return out


def tiny_clip_tokenizer():
    """A CLIP BPE tokenizer over single bytes only (no merges), built locally for tests and the demo."""
    from transformers import CLIPTokenizer

    chars = _byte_chars()
    vocab = {c: i for i, c in enumerate(chars)}
    vocab.update({c + "</w>": len(chars) + i for i, c in enumerate(chars)})
    vocab["<|startoftext|>"] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    return CLIPTokenizer(vocab=vocab, merges=[], model_max_length=77)


def tiny_unet_config(kind: Literal["mvdream", "sd"]) -> dict:
    """A small UNet with SD-2.1's block structure (4 levels, 2 layers each); native size 64 px."""
    from .guidance.mvdream import SD21_BASE_UNET_CONFIG, mvdream_unet_config

    small = dict(
        sample_size=8,
        block_out_channels=(32, 32, 64, 64),
        attention_head_dim=(2, 2, 4, 4),
        cross_attention_dim=32,
        norm_num_groups=8,
    )
    return mvdream_unet_config(**small) if kind == "mvdream" else dict(SD21_BASE_UNET_CONFIG, **small)


def tiny_text_encoder(tokenizer):
    """A 2-layer CLIP text encoder (width 32) over ``tokenizer``'s vocabulary, random weights."""
    from transformers import CLIPTextConfig, CLIPTextModel

    return CLIPTextModel(
        CLIPTextConfig(
            vocab_size=len(tokenizer),
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=2,
            max_position_embeddings=77,
            hidden_act="gelu",
            projection_dim=32,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        )
    )


def tiny_components(kind: Literal["mvdream", "sd"], seed: int = 0) -> dict:
    """Tiny random models of the real classes (seconds to build on CPU)."""
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel

    tokenizer = tiny_clip_tokenizer()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        unet = UNet2DConditionModel(**tiny_unet_config(kind))
        vae = AutoencoderKL(
            **dict(
                SD21_VAE_CONFIG,
                block_out_channels=(8, 16, 16, 16),
                layers_per_block=1,
                norm_num_groups=4,
                sample_size=64,
            )
        )
        text_encoder = tiny_text_encoder(tokenizer)
    return dict(
        unet=unet,
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        scheduler=DDPMScheduler(**SD_SCHEDULER_CONFIG),
    )


def random_components(
    kind: Literal["mvdream", "sd"],
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
    seed: int = 0,
) -> dict:
    """Full-size random-weight components (SD-2.1-base UNet/VAE/text encoder) for speed tests.

    Built directly on ``device``; the tokenizer is the tiny local one (ids stay inside the vocab).
    """
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from .guidance.mvdream import SD21_BASE_UNET_CONFIG, mvdream_unet_config

    unet_config = mvdream_unet_config() if kind == "mvdream" else dict(SD21_BASE_UNET_CONFIG)
    # nn.Module.to: diffusers' own .to warns about fp32-only modules, which these models do not have.
    with seeded(device, seed), torch.device(device):
        unet = torch.nn.Module.to(UNet2DConditionModel(**unet_config), dtype=dtype)
        vae = torch.nn.Module.to(AutoencoderKL(**SD21_VAE_CONFIG), dtype=dtype)
        text_encoder = CLIPTextModel(CLIPTextConfig(**SD21_TEXT_ENCODER_CONFIG)).to(dtype)
    return dict(
        unet=unet,
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tiny_clip_tokenizer(),
        scheduler=DDPMScheduler(**SD_SCHEDULER_CONFIG),
    )


def save_components(components: dict, folder: str | os.PathLike) -> None:
    """Write components as a diffusers-style folder (unet/, vae/, text_encoder/, tokenizer/, scheduler/)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for name in ("unet", "vae", "text_encoder", "tokenizer", "scheduler"):
        components[name].save_pretrained(folder / name)
    index = {
        "_class_name": "StableDiffusionPipeline",
        "unet": ["diffusers", type(components["unet"]).__name__],
        "vae": ["diffusers", type(components["vae"]).__name__],
        "text_encoder": ["transformers", type(components["text_encoder"]).__name__],
        "tokenizer": ["transformers", type(components["tokenizer"]).__name__],
        "scheduler": ["diffusers", type(components["scheduler"]).__name__],
    }
    (folder / "model_index.json").write_text(json.dumps(index, indent=2))


SD_DEMO_VERSION = 1


def ensure_demo_models(kind: Literal["mvdream", "sd"]) -> Path:
    """Folder of the tiny random demo models, built and saved under the user cache on first use."""
    folder = cache_dir() / "demo" / f"{kind}-v{SD_DEMO_VERSION}"
    if (folder / "model_index.json").exists():
        return folder
    tmp = folder.parent / f".{folder.name}.tmp-{os.getpid()}"
    try:
        folder.parent.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(tmp, ignore_errors=True)
        with quiet_model_io():
            save_components(tiny_components(kind), tmp)
        if folder.exists() and not (folder / "model_index.json").exists():
            shutil.rmtree(folder)  # half-written by a crashed older run (model_index.json is written last)
        try:
            os.replace(tmp, folder)  # atomic: other processes see all of it or nothing
        except OSError:
            if not (folder / "model_index.json").exists():  # not just another process winning the race
                raise
    except OSError as e:
        raise SplatVLMError(
            f"cannot write the demo models to {folder} ({e.strerror or e}); set SPLATVLM_CACHE to a writable folder"
        ) from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return folder


# ---------------------------------------------------------------------------------------------------
# Reward VLM (Qwen2.5-VL)

# The reward's questions as they read when the demo tokenizer was first trained: the demo tokenizer's
# corpus, frozen here so the cached demo model does not change when a question is reworded.
DEMO_QUESTIONS = (
    'This image shows one 3D object from different viewpoints. Answer two things at once. (1) Does the object match the description "a red cube on a wooden table"? (2) Is it geometrically sound in every view: one coherent shape, with no face or head repeated across views (no multi-face or Janus effect), and no broken, floating or intersecting surfaces or odd facets? Answer Yes only if both hold. Reply with Yes or No only.',
    'These 4 images show one 3D object from different viewpoints. Answer two things at once. (1) Does the object match the description "a red cube on a wooden table"? (2) Is it geometrically sound in every view: one coherent shape, with no face or head repeated across views (no multi-face or Janus effect), and no broken, floating or intersecting surfaces or odd facets? Answer Yes only if both hold. Reply with Yes or No only.',
    'This image shows one 3D object from different viewpoints. Does the object match the description "a red cube on a wooden table"? Reply with Yes or No only.',
    'These 4 images show one 3D object from different viewpoints. Does the object match the description "a red cube on a wooden table"? Reply with Yes or No only.',
    'This image shows one 3D scene from different viewpoints. Does it contain every object named in "a red cube on a wooden table", with the positions, sizes, counts and contacts the description states, consistent in all views? Reply with Yes or No only.',
    'These 4 images show one 3D scene from different viewpoints. Does it contain every object named in "a red cube on a wooden table", with the positions, sizes, counts and contacts the description states, consistent in all views? Reply with Yes or No only.',
)

SPECIAL_TOKENS = (
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|image_pad|>",
    "<|video_pad|>",
)

# Our own chat template for the demo tokenizer; it renders messages in the Qwen2.5-VL layout
# (system turn, <|vision_start|><|image_pad|><|vision_end|> per image, generation prompt).
DEMO_CHAT_TEMPLATE = (
    "{%- for message in messages -%}"
    "{%- if loop.first and message['role'] != 'system' -%}"
    "{{- '<|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n' -}}"
    "{%- endif -%}"
    "{{- '<|im_start|>' + message['role'] + '\\n' -}}"
    "{%- if message['content'] is string -%}{{- message['content'] -}}"
    "{%- else -%}{%- for part in message['content'] -%}"
    "{%- if part['type'] == 'image' -%}{{- '<|vision_start|><|image_pad|><|vision_end|>' -}}"
    "{%- elif part['type'] == 'text' -%}{{- part['text'] -}}{%- endif -%}"
    "{%- endfor -%}{%- endif -%}"
    "{{- '<|im_end|>\\n' -}}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- '<|im_start|>assistant\\n' -}}{%- endif -%}"
)

VLM_DEMO_VERSION = "qwen2_5_vl-tiny-v1"


def demo_corpus() -> list[str]:
    words = (
        "a an the of on in with and or wearing made from sitting standing holding next to under over "
        "red blue green yellow white black orange purple pink brown gold silver wooden metal glass stone "
        "cube sphere cone chair table lamp car house tree dog cat corgi horse bird robot castle cake cup "
        "teapot shoe hat vase flower apple banana astronaut dragon DSLR photo of highly detailed 3D model"
    )
    lines = list(DEMO_QUESTIONS)
    lines += ["Yes", "No", "Yes.", "No.", "Yes, it matches and has no defects.", words]
    return lines * 4


def build_demo_tokenizer(corpus: list[str] | None = None, vocab_size: int = 1024):
    """A small byte-level BPE tokenizer with the Qwen2.5-VL special tokens and our chat template, trained on
    ``corpus`` (None: the demo's frozen corpus, so the demo model never changes)."""
    from tokenizers import Regex, Tokenizer, models, pre_tokenizers, trainers
    from transformers.models.qwen2.tokenization_qwen2 import PRETOKENIZE_REGEX, Qwen2Tokenizer

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(PRETOKENIZE_REGEX), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False
    )
    bpe.train_from_iterator(demo_corpus() if corpus is None else corpus, trainer)
    model = json.loads(bpe.to_str())["model"]
    merges = [tuple(m) if isinstance(m, list) else tuple(m.split(" ")) for m in model["merges"]]
    tok = Qwen2Tokenizer(vocab=model["vocab"], merges=merges)
    tok.add_special_tokens({"additional_special_tokens": list(SPECIAL_TOKENS[1:])})
    tok.chat_template = DEMO_CHAT_TEMPLATE
    return tok


def _token_ids(tokenizer) -> dict[str, int]:
    return {t: tokenizer.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS}


def vlm_config(which: Literal["demo", "7b", "3b"], tokenizer, max_positions: int | None = None):
    """A Qwen2.5-VL config: the tiny demo, or the full-size 7B / 3B shapes (as published) for random weights."""
    from transformers import Qwen2_5_VLConfig

    ids = _token_ids(tokenizer)
    if which == "demo":
        text = dict(
            vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=max_positions or 4096,
            rope_parameters={"rope_type": "default", "mrope_section": [2, 3, 3], "rope_theta": 1e6},
        )  # fmt: skip
        vision = dict(depth=2, hidden_size=32, intermediate_size=64, num_heads=2, out_hidden_size=64,
                      fullatt_block_indexes=[1])  # fmt: skip
        tie = False
    elif which in ("7b", "3b"):
        big = which == "7b"
        text = dict(
            vocab_size=152064 if big else 151936, hidden_size=3584 if big else 2048,
            intermediate_size=18944 if big else 11008, num_hidden_layers=28 if big else 36,
            num_attention_heads=28 if big else 16, num_key_value_heads=4 if big else 2,
            max_position_embeddings=max_positions or 128000, rms_norm_eps=1e-6,
            rope_parameters={"rope_type": "default", "mrope_section": [16, 24, 24], "rope_theta": 1e6},
        )  # fmt: skip
        vision = dict(depth=32, hidden_size=1280, intermediate_size=3420, num_heads=16,
                      out_hidden_size=3584 if big else 2048, fullatt_block_indexes=[7, 15, 23, 31])  # fmt: skip
        tie = not big
    else:
        raise ValueError(f"unknown config {which!r}")
    vision.update(patch_size=14, spatial_merge_size=2, temporal_patch_size=2, window_size=112)
    text.update(
        bos_token_id=ids["<|endoftext|>"], eos_token_id=ids["<|im_end|>"], pad_token_id=ids["<|endoftext|>"]
    )
    return Qwen2_5_VLConfig(
        text_config=text,
        vision_config=vision,
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
        tie_word_embeddings=tie,
    )


def demo_vlm_path() -> Path:
    """Folder of the tiny demo Qwen2.5-VL; built (seconds, on CPU) and saved on first use."""
    from transformers import Qwen2_5_VLForConditionalGeneration
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    path = cache_dir() / "demo" / VLM_DEMO_VERSION
    if (path / "config.json").exists():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{VLM_DEMO_VERSION}.", dir=path.parent))
    try:
        tok = build_demo_tokenizer()
        config = vlm_config("demo", tok)
        # Fixed seed without disturbing the caller's RNG: every machine builds the same demo model.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            model = Qwen2_5_VLForConditionalGeneration._from_config(config, dtype=torch.float32)
        model.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        Qwen2VLImageProcessorPil().save_pretrained(tmp)
        try:
            os.replace(tmp, path)
        except OSError:
            if not (path / "config.json").exists():  # not a concurrent build that won the race
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return path


def build_random_vlm(
    which: Literal["7b", "3b"], device: torch.device, dtype: torch.dtype, attn: str, tokenizer, seed: int = 0
):
    """Full-size Qwen2.5-VL with random weights, built directly on ``device`` in ``dtype`` (no fp32 CPU copy).

    Seeded: two builds hold the same weights (the bench compares our path with the reference on them)."""
    from transformers import Qwen2_5_VLForConditionalGeneration

    config = vlm_config(which, tokenizer)
    with seeded(device, seed), torch.device(device):
        return Qwen2_5_VLForConditionalGeneration._from_config(config, dtype=dtype, attn_implementation=attn)
