"""The differentiable Qwen2.5-VL reward (VLM3D, arXiv 2509.15772).

Rendered views [C, H, W, 3] in [0, 1] and the text prompt go in; out comes a dict with the loss term
``loss_vlm`` (differentiable to the pixels, hence to the Gaussians) and float diagnostics. The VLM is
asked one question in one user turn (all views as images, then the question); the reward is read from
its next-token logits for "Yes" and "No" (token ids from the tokenizer), or from the likelihood of a
multi-token target answer.

Preprocessing is done in torch so gradients flow: optional bicubic resize, the processor's mean/std,
the frame repeated for the temporal patch of 2, and the exact patch layout of the HF image processor.

Two forwards give the same numbers: the reference path is the plain HF forward with full logits; the
fast path (default) calls the model's own submodules with everything that depends only on the image
grid and the prompt precomputed once per query as device tensors (window order, rotary tables,
attention segments, causal masks, image-token positions), and runs the last decoder layer and the LM
head only at the answer rows. Having no host syncs, the fast path's forward and pixel gradient are
captured in one CUDA graph (``RewardConfig.cuda_graph``, via ``graphs.GraphedGrad``) and replayed.

Model sources (``RewardConfig.model``): an HF id or a local folder, loaded with ``from_pretrained``;
``"demo"``, a tiny random Qwen2.5-VL built from config with a locally built tokenizer, saved under the
splatvlm cache and then loaded through that same ``from_pretrained`` path; ``"random-7b"`` /
``"random-3b"``, full-size random weights built on the target device for speed benchmarks.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from ..errors import SplatVLMError
from ..models import (
    DType,
    cache_dir,
    hf_offline,
    hub_reachable,
    is_local,
    missing_weights_error,
    pick_device,
    pick_dtype,
)
from .graphs import GraphedGrad, surrogate_loss

# The CLIP statistics every Qwen2-VL / Qwen2.5-VL image processor ships with.
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

QuestionKind = Literal["dual", "content", "spatial"]
RewardKind = Literal["logit_diff", "log_p_yes", "answer_ll"]


@dataclass
class RewardConfig:
    """The Qwen2.5-VL reward: which model, what it is asked, how the answer becomes a loss, and when."""

    model: str = "Qwen/Qwen2.5-VL-7B-Instruct"
    """HF id or local folder of a Qwen2.5-VL model; "demo" = tiny random model built locally (tests, CPU
    demo); "random-7b" / "random-3b" = full-size random weights (speed benchmarks only)."""
    dtype: DType = "auto"
    """Weights and activations dtype; auto = bfloat16 on CUDA, float32 on CPU."""
    question: QuestionKind = "dual"
    """What the VLM is asked: dual = matches the prompt AND is geometrically sound (VLM3D); content = matches
    the prompt only; spatial = all named objects present with the stated spatial relations."""
    kind: RewardKind = "logit_diff"
    """Reward read from the answer: logit_diff = logit(Yes) - logit(No) (VLM3D); log_p_yes = log p(Yes)
    over the pair {Yes, No}; answer_ll = log-likelihood of the multi-token target_answer."""
    target_answer: str = "Yes"
    """Target answer text for kind=answer_ll (e.g. "Yes, it matches and has no defects.")."""
    size: int = 252
    """Side in pixels of each view given to the VLM (multiple of 28; 252 = 81 tokens per view, VLM3D)."""
    num_views: int = 4
    """Views given to the VLM, taken evenly from the rendered batch."""
    every: int = 1
    """Compute the reward every k-th step only (the trainer skips the others and scales the weight by k; the
    weight schedule itself lives in the run config's weights.vlm)."""
    lora: list[str] = field(default_factory=list)
    """LoRA adapter folder(s) (peft) to load onto the reward VLM; repeat the flag for several."""
    lora_weights: list[float] = field(default_factory=list)
    """One weight per --vlm.lora adapter (empty = 1.0 each)."""
    gradient_checkpointing: bool = False
    """Recompute activations in the backward pass: less memory, slower."""
    attn_implementation: Literal["sdpa", "eager", "flash_attention_2"] = "sdpa"
    """Attention kernel of the VLM."""
    compile: bool = False
    """torch.compile each decoder layer and vision block (CUDA; the first steps are slow while it compiles)."""
    fast: bool = True
    """Compute only what the reward needs, with every grid- and prompt-dependent index precomputed (no host
    syncs): the last layer and the LM head only at the answer rows; False = the straightforward full HF
    forward with full-vocabulary logits (reference path)."""
    cuda_graph: bool = True
    """Capture the fast path's forward + pixel gradient in a CUDA graph (once per prompt and view shape)
    and replay it; ignored on CPU, with fast=False and with gradient_checkpointing."""


def question_text(question: QuestionKind, prompt: str, num_views: int) -> str:
    """The question asked after the images."""
    views = "This image shows" if num_views == 1 else f"These {num_views} images show"
    if question == "dual":
        return (
            f"{views} one 3D object from different viewpoints. Answer two things at once. "
            f'(1) Does the object match the description "{prompt}"? '
            "(2) Is it geometrically sound in every view: one coherent shape, with no face or head repeated "
            "across views (no multi-face or Janus effect), and no broken, floating or intersecting surfaces "
            "or odd facets? Answer Yes only if both hold. Reply with Yes or No only."
        )
    elif question == "content":
        return (
            f"{views} one 3D object from different viewpoints. "
            f'Does the object match the description "{prompt}"? Reply with Yes or No only.'
        )
    elif question == "spatial":
        return (
            f"{views} one 3D scene from different viewpoints. "
            f'Does it contain every object named in "{prompt}", with the positions, sizes, counts and '
            "contacts the description states, consistent in all views? Reply with Yes or No only."
        )
    else:
        raise ValueError(f"unknown question {question!r}")


# ---------------------------------------------------------------------------------------------------
# Differentiable preprocessing


def resize_views(images: torch.Tensor, size: int | tuple[int, int]) -> torch.Tensor:
    """Bicubic, antialiased resize of [C, H, W, 3] views, clamped to [0, 1] (bicubic overshoots)."""
    assert images.ndim == 4 and images.shape[-1] == 3, f"expected [C, H, W, 3], got {tuple(images.shape)}"
    hw = (size, size) if isinstance(size, int) else tuple(size)
    if tuple(images.shape[1:3]) == hw:
        return images
    x = images.permute(0, 3, 1, 2)  # [C, 3, H, W]
    x = F.interpolate(x, size=hw, mode="bicubic", antialias=True, align_corners=False)
    return x.clamp(0.0, 1.0).permute(0, 2, 3, 1)


def preprocess_views(
    images: torch.Tensor,  # [C, H, W, 3] in [0, 1]
    size: int | tuple[int, int] | None = None,
    mean: Sequence[float] = CLIP_MEAN,
    std: Sequence[float] = CLIP_STD,
    patch_size: int = 14,
    merge_size: int = 2,
    temporal_patch_size: int = 2,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Views -> (pixel_values [C*gh*gw, 3*T*P*P], image_grid_thw [C, 3]), as the HF Qwen2-VL image processor.

    Differentiable. ``size`` resizes each view (bicubic, antialias) to size x size (or (h, w)); None keeps
    the input size, which must then be a multiple of patch_size * merge_size (28). Each view is one
    image: its frame is repeated for the temporal patch, and patches are ordered merge-block-major
    (the 2x2 patches of one merged token are consecutive), exactly as the HF processor lays them out.
    """
    assert images.ndim == 4 and images.shape[-1] == 3, f"expected [C, H, W, 3], got {tuple(images.shape)}"
    if size is not None:
        images = resize_views(images, size)
    n, h, w, _ = images.shape
    factor = patch_size * merge_size
    if h % factor or w % factor:
        raise ValueError(f"view size {h}x{w} is not a multiple of {factor}; pass size= to resize")
    mean_t = torch.as_tensor(mean, dtype=images.dtype, device=images.device)
    std_t = torch.as_tensor(std, dtype=images.dtype, device=images.device)
    pixel_values = patchify(images, mean_t, std_t, patch_size, merge_size, temporal_patch_size)
    gh, gw = h // patch_size, w // patch_size
    grid = torch.tensor([[1, gh, gw]] * n, dtype=torch.long, device=images.device)
    return pixel_values, grid


def patchify(
    images: torch.Tensor,  # [C, H, W, 3] in [0, 1], sides multiples of patch_size * merge_size
    mean: torch.Tensor,  # [3]
    std: torch.Tensor,  # [3]
    patch_size: int = 14,
    merge_size: int = 2,
    temporal_patch_size: int = 2,
) -> torch.Tensor:
    """Normalize and lay out views as the HF processor's pixel_values [C*gh*gw, 3*T*P*P].

    Tensor-only (mean/std are tensors on the views' device), so it can run inside a CUDA graph.
    """
    n, h, w, _ = images.shape
    x = ((images - mean) / std).permute(0, 3, 1, 2)  # [C, 3, H, W]
    gh, gw = h // patch_size, w // patch_size
    x = x.reshape(n, 3, gh // merge_size, merge_size, patch_size, gw // merge_size, merge_size, patch_size)
    # -> [C, gh/m, gw/m, m_h, m_w, 3, P, P]: merge blocks row-major, then the patches inside a block
    x = x.permute(0, 2, 5, 3, 6, 1, 4, 7)
    x = x.unsqueeze(6).expand(*x.shape[:6], temporal_patch_size, patch_size, patch_size)
    return x.reshape(n * gh * gw, 3 * temporal_patch_size * patch_size * patch_size)


# ---------------------------------------------------------------------------------------------------
# Model sources: the demo model, full-size random models, HF ids and local folders

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

DEMO_VERSION = "qwen2_5_vl-tiny-v1"


def _demo_corpus() -> list[str]:
    words = (
        "a an the of on in with and or wearing made from sitting standing holding next to under over "
        "red blue green yellow white black orange purple pink brown gold silver wooden metal glass stone "
        "cube sphere cone chair table lamp car house tree dog cat corgi horse bird robot castle cake cup "
        "teapot shoe hat vase flower apple banana astronaut dragon DSLR photo of highly detailed 3D model"
    )
    lines = [
        question_text(q, "a red cube on a wooden table", n)
        for q in ("dual", "content", "spatial")
        for n in (1, 4)
    ]
    lines += ["Yes", "No", "Yes.", "No.", "Yes, it matches and has no defects.", words]
    return lines * 4


def build_demo_tokenizer():
    """A small byte-level BPE tokenizer with the Qwen2.5-VL special tokens and our chat template."""
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
        vocab_size=1024, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False
    )
    bpe.train_from_iterator(_demo_corpus(), trainer)
    model = json.loads(bpe.to_str())["model"]
    merges = [tuple(m) if isinstance(m, list) else tuple(m.split(" ")) for m in model["merges"]]
    tok = Qwen2Tokenizer(vocab=model["vocab"], merges=merges)
    tok.add_special_tokens({"additional_special_tokens": list(SPECIAL_TOKENS[1:])})
    tok.chat_template = DEMO_CHAT_TEMPLATE
    return tok


def _token_ids(tokenizer) -> dict[str, int]:
    return {t: tokenizer.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS}


def vlm_config(which: Literal["demo", "7b", "3b"], tokenizer, max_positions: int | None = None):
    """A Qwen2.5-VL config: the tiny demo, or the full-size 7B / 3B shapes (FACTS.md) for random weights."""
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

    path = cache_dir() / "demo" / DEMO_VERSION
    if (path / "config.json").exists():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{DEMO_VERSION}.", dir=path.parent))
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
    which: Literal["7b", "3b"], device: torch.device, dtype: torch.dtype, attn: str, tokenizer
):
    """Full-size Qwen2.5-VL with random weights, built directly on ``device`` in ``dtype`` (no fp32 CPU copy)."""
    from transformers import Qwen2_5_VLForConditionalGeneration

    config = vlm_config(which, tokenizer)
    with torch.device(device):
        return Qwen2_5_VLForConditionalGeneration._from_config(config, dtype=dtype, attn_implementation=attn)


@dataclass
class VLMSource:
    """What check_reward_source found: the folder/id to load from, and the cheap text-side parts."""

    source: str  # HF id or local folder for from_pretrained ("" for random-* models)
    config: object  # Qwen2_5_VLConfig
    tokenizer: object
    chat_template: str
    image_mean: tuple[float, ...]
    image_std: tuple[float, ...]
    patch_size: int
    merge_size: int
    temporal_patch_size: int


def _resolve(model: str) -> tuple[str, str]:
    """(kind, source): kind is "demo", "random", "local" or "hub"."""
    if model == "demo":
        return "demo", str(demo_vlm_path())
    if model in ("random-7b", "random-3b"):
        return "random", str(demo_vlm_path())  # the demo tokenizer/processor serve the random models
    if is_local(model):
        return "local", os.path.expanduser(model)
    return "hub", model


def _hub_file(repo: str, filename: str) -> str | None:
    from huggingface_hub import try_to_load_from_cache

    hit = try_to_load_from_cache(repo, filename)
    return hit if isinstance(hit, str) else None


def _check_weights_present(kind: str, source: str, model: str) -> None:
    """Missing weights -> the one missing-weights message, before anything heavy is loaded."""
    if kind == "local":
        if not os.path.exists(source):
            raise missing_weights_error(model, "the reward VLM", "--vlm.model", "no such file or folder")
        if not os.path.isdir(source) or not os.path.exists(os.path.join(source, "config.json")):
            raise missing_weights_error(model, "the reward VLM", "--vlm.model", "no config.json in it")
        names = os.listdir(source)
        if not any(n.endswith((".safetensors", ".bin")) for n in names):
            raise missing_weights_error(
                model, "the reward VLM", "--vlm.model", "no *.safetensors weights in it"
            )
    elif kind == "hub":
        from huggingface_hub.utils import HFValidationError, validate_repo_id

        try:
            validate_repo_id(model)
        except HFValidationError:
            raise missing_weights_error(
                model, "the reward VLM", "--vlm.model", "not a folder nor an HF id"
            ) from None
        cached = _hub_file(model, "config.json") and (
            _hub_file(model, "model.safetensors.index.json") or _hub_file(model, "model.safetensors")
        )
        if not cached and hf_offline():
            raise missing_weights_error(
                model, "the reward VLM", "--vlm.model", "not in the HF cache, HF_HUB_OFFLINE is set"
            )
        if not cached and not hub_reachable():
            raise missing_weights_error(
                model, "the reward VLM", "--vlm.model", "not in the HF cache and the hub is unreachable"
            )


def _chat_template(kind: str, source: str, tokenizer) -> str | None:
    """The processor's chat template (chat_template.jinja / chat_template.json), else the tokenizer's."""
    for name in ("chat_template.jinja", "chat_template.json"):
        path = os.path.join(source, name) if kind != "hub" else _hub_file(source, name)
        if path and os.path.isfile(path):
            text = Path(path).read_text(encoding="utf-8")
            return json.loads(text)["chat_template"] if name.endswith(".json") else text
    return getattr(tokenizer, "chat_template", None)


def check_reward_source(cfg: RewardConfig, prompt: str | None = None) -> VLMSource:
    """Validate the reward config, model id/path and (if given) the prompt length before heavy work.

    Loads only the config, tokenizer and image-processor settings. Raises SplatVLMError with one line.
    """
    from transformers import AutoConfig, AutoTokenizer
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    # 1. plain config values
    if cfg.size < 28 or cfg.size % 28:
        raise SplatVLMError(f"--vlm.size {cfg.size} must be a positive multiple of 28 (e.g. 252 or 448)")
    if cfg.num_views < 1:
        raise SplatVLMError(f"--vlm.num-views must be at least 1, got {cfg.num_views}")
    if cfg.every < 1:
        raise SplatVLMError(f"--vlm.every must be at least 1, got {cfg.every}")
    if cfg.lora_weights and len(cfg.lora_weights) != len(cfg.lora):
        raise SplatVLMError(
            f"got {len(cfg.lora_weights)} --vlm.lora-weights for {len(cfg.lora)} --vlm.lora adapters; give one each"
        )
    if cfg.kind == "answer_ll" and not cfg.target_answer.strip():
        raise SplatVLMError("--vlm.kind answer_ll needs a non-empty --vlm.target-answer")

    # 2. where the weights come from
    kind, source = _resolve(cfg.model)
    _check_weights_present(kind, source, cfg.model)
    try:
        config = AutoConfig.from_pretrained(source)
        tokenizer = AutoTokenizer.from_pretrained(source)
        improc = Qwen2VLImageProcessorPil.from_pretrained(source)
    except (OSError, ValueError) as e:
        detail = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
        raise missing_weights_error(cfg.model, "the reward VLM", "--vlm.model", detail) from None
    if getattr(config, "model_type", None) != "qwen2_5_vl":
        raise SplatVLMError(
            f"--vlm.model {cfg.model} is a '{getattr(config, 'model_type', '?')}' model; the reward needs Qwen2.5-VL"
        )
    if kind == "random":
        config = vlm_config(cfg.model.split("-")[1], tokenizer)
    template = _chat_template(kind, source, tokenizer)
    if not template:
        raise SplatVLMError(f"--vlm.model {cfg.model} has no chat template (chat_template.jinja/.json)")
    src = VLMSource(
        source="" if kind == "random" else source,
        config=config,
        tokenizer=tokenizer,
        chat_template=template,
        image_mean=tuple(improc.image_mean),
        image_std=tuple(improc.image_std),
        patch_size=int(improc.patch_size),
        merge_size=int(improc.merge_size),
        temporal_patch_size=int(improc.temporal_patch_size),
    )
    vc = config.vision_config
    if (vc.patch_size, vc.spatial_merge_size, vc.temporal_patch_size) != (
        src.patch_size, src.merge_size, src.temporal_patch_size,
    ):  # fmt: skip
        raise SplatVLMError(
            f"--vlm.model {cfg.model}: image processor and vision config disagree on patch sizes"
        )
    answer_token_ids(tokenizer)

    # 3. adapters: folders and configs now; shapes against a weightless copy of the model
    if cfg.lora:
        from ..lora import check_adapters

        check_adapters(cfg.lora, config, cfg.model)

    # 4. the prompt must fit the context with all its image tokens
    if prompt is not None:
        ids = query_ids(src, question_text(cfg.question, prompt, cfg.num_views), cfg.num_views,
                        (cfg.size // src.patch_size,) * 2, _target(cfg, tokenizer))  # fmt: skip
        check_context(src, ids.shape[-1], cfg.model)
    return src


def check_reward_prompts(cfg: RewardConfig, src: VLMSource, prompts: Sequence[str], where: Sequence[str] = ()) -> None:
    """Every prompt's reward query fits the context, with one tokenizer and one chat-template call.

    The query is the template around the prompt, so its length is a fixed overhead plus the prompt's
    tokens (give or take a merge at the seams); only prompts within a margin of the limit are built exactly.
    """
    if not prompts:
        return
    grid = (cfg.size // src.patch_size,) * 2
    target = _target(cfg, src.tokenizer)
    probe = "x"
    base = query_ids(src, question_text(cfg.question, probe, cfg.num_views), cfg.num_views, grid, target).shape[-1]
    base -= len(src.tokenizer.encode(probe, add_special_tokens=False))
    ctx = int(src.config.text_config.max_position_embeddings)
    from ..prompts import token_counts

    lengths = token_counts(src.tokenizer, list(prompts), special_tokens=False)
    for i, (prompt, n) in enumerate(zip(prompts, lengths, strict=True)):
        if base + n + 8 <= ctx:
            continue
        ids = query_ids(src, question_text(cfg.question, prompt, cfg.num_views), cfg.num_views, grid, target)
        try:
            check_context(src, ids.shape[-1], cfg.model)
        except SplatVLMError as e:
            raise SplatVLMError(f"{where[i]}: {e}" if i < len(where) else str(e)) from None


def check_context(src: VLMSource, n_tokens: int, model: str) -> None:
    ctx = int(src.config.text_config.max_position_embeddings)
    if n_tokens > ctx:
        raise SplatVLMError(
            f"prompt too long: the reward query takes {n_tokens} tokens but {model} has a context of {ctx}; "
            "shorten the prompt"
        )


# ---------------------------------------------------------------------------------------------------
# The query: chat-template text, token ids, positions


def answer_token_ids(tokenizer) -> tuple[int, int]:
    """Token ids of "Yes" and "No" as the first token of the assistant's answer (never hard-coded)."""
    out = []
    for word in ("Yes", "No"):
        ids = tokenizer.encode(word, add_special_tokens=False)
        if len(ids) != 1:
            raise SplatVLMError(
                f"the reward VLM's tokenizer splits '{word}' into {len(ids)} tokens; need one"
            )
        out.append(ids[0])
    return out[0], out[1]


def _target(cfg: RewardConfig, tokenizer) -> list[int]:
    return tokenizer.encode(cfg.target_answer, add_special_tokens=False) if cfg.kind == "answer_ll" else []


def query_ids(
    src: VLMSource, question: str, n_images: int, grid_hw: tuple[int, int], target: Sequence[int] = ()
) -> torch.Tensor:
    """Token ids [1, L] of one user turn (n_images images, then the question) + generation prompt + target.

    Built with the model's chat template; each image placeholder is expanded to the number of merged
    vision tokens of a grid_hw patch grid, as the HF processor does.
    """
    content = [{"type": "image"} for _ in range(n_images)] + [{"type": "text", "text": question}]
    text = src.tokenizer.apply_chat_template(
        [{"role": "user", "content": content}],
        chat_template=src.chat_template,
        tokenize=False,
        add_generation_prompt=True,
    )
    pad = "<|image_pad|>"
    if text.count(pad) != n_images:
        raise SplatVLMError(
            f"the reward VLM's chat template produced {text.count(pad)} image slots for {n_images} images"
        )
    per_image = (grid_hw[0] // src.merge_size) * (grid_hw[1] // src.merge_size)
    text = text.replace(pad, pad * per_image)
    ids = src.tokenizer(text, add_special_tokens=False)["input_ids"] + list(target)
    return torch.tensor([ids], dtype=torch.long)


@dataclass
class Segments:
    """Packed attention segments (HF's cu_seqlens) laid out as a batch for one SDPA call, no host syncs.

    Equal segments are a plain reshape; unequal ones are gathered into ``n`` slots of ``length`` tokens
    (short ones padded with a copy of their first token) with a key mask, and scattered back.
    """

    n: int
    length: int
    gather: torch.Tensor | None  # [n * length] token index of each slot; None = equal segments
    scatter: torch.Tensor | None  # [S] slot of each token
    mask: torch.Tensor | None  # [n, 1, length, length] bool, True = real key


def segment_layout(cu_seqlens: Sequence[int], device: torch.device) -> Segments:
    """The batched layout of the segments [cu[i], cu[i+1]) (empty ones dropped)."""
    bounds = [(a, b) for a, b in zip(cu_seqlens[:-1], cu_seqlens[1:], strict=True) if b > a]
    lengths = [b - a for a, b in bounds]
    n, length = len(bounds), max(lengths)
    if all(m == length for m in lengths):
        return Segments(n, length, None, None, None)
    slot = torch.arange(length)
    starts = torch.tensor([a for a, _ in bounds])[:, None]
    lens = torch.tensor(lengths)[:, None]
    real = slot[None] < lens  # [n, length]
    gather = torch.where(real, starts + slot, starts)  # padding slots repeat a real token: finite rows
    scatter = (torch.arange(n)[:, None] * length + slot)[real]  # segments are in token order
    mask = real[:, None, None, :].expand(n, 1, length, length).contiguous()
    return Segments(n, length, gather.flatten().to(device), scatter.to(device), mask.to(device))


def segment_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, seg: Segments, scale: float
) -> torch.Tensor:
    """Attention within each segment: q, k, v [S, H, D] -> [S, H*D]."""
    s, h, d = q.shape

    def batched(t):  # [S, H, D] -> [n, H, length, D]
        if seg.gather is not None:
            t = t.index_select(0, seg.gather)
        return t.reshape(seg.n, seg.length, h, d).transpose(1, 2)

    o = F.scaled_dot_product_attention(batched(q), batched(k), batched(v), attn_mask=seg.mask, scale=scale)
    o = o.transpose(1, 2).reshape(seg.n * seg.length, h * d)
    return o if seg.scatter is None else o.index_select(0, seg.scatter)


def vision_block(blk, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, seg: Segments) -> torch.Tensor:
    """One Qwen2.5-VL vision block (the model's own modules) on window-ordered tokens x [S, Dv]."""
    from transformers.models.qwen2_5_vl.modeling_qwen2_5_vl import apply_rotary_pos_emb_vision

    attn = blk.attn
    qkv = attn.qkv(blk.norm1(x)).reshape(x.shape[0], 3, attn.num_heads, -1).permute(1, 0, 2, 3)
    q, k = apply_rotary_pos_emb_vision(qkv[0], qkv[1], cos, sin)
    x = x + attn.proj(segment_attention(q, k, qkv[2], seg, attn.scaling))
    return x + blk.mlp(blk.norm2(x))


def decoder_tail(
    layer, h: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, rows: slice, mask: torch.Tensor | None
) -> torch.Tensor:
    """The last decoder layer, output only at positions ``rows``: h [1, L, D] -> [1, len(rows), D].

    Keys and values still cover every position; the query, output projection and MLP run on ``rows``
    alone, since no other position's output is read.
    """
    from transformers.models.qwen2_5_vl.modeling_qwen2_5_vl import apply_rotary_pos_emb, repeat_kv

    attn = layer.self_attn
    b, length, _ = h.shape
    n = rows.stop - rows.start
    x = layer.input_layernorm(h)
    q = attn.q_proj(x[:, rows]).view(b, n, -1, attn.head_dim).transpose(1, 2)  # [1, H, n, Dh]
    k = attn.k_proj(x).view(b, length, -1, attn.head_dim).transpose(1, 2)  # [1, Hkv, L, Dh]
    v = attn.v_proj(x).view(b, length, -1, attn.head_dim).transpose(1, 2)
    q = apply_rotary_pos_emb(q, q, cos[:, rows], sin[:, rows])[0]
    k = apply_rotary_pos_emb(k, k, cos, sin)[0]
    k, v = repeat_kv(k, attn.num_key_value_groups), repeat_kv(v, attn.num_key_value_groups)
    o = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=attn.scaling)
    h = h[:, rows] + attn.o_proj(o.transpose(1, 2).reshape(b, n, -1))
    return h + layer.mlp(layer.post_attention_layernorm(h))


@dataclass
class StaticInputs:
    """Pixel-independent device tensors of the capture-safe forward, built once per query.

    Everything HF's modules would derive from the image grid and the token ids with host syncs (window
    index, rotary tables, cu_seqlens splits, causal masks, image-token positions) is here.
    """

    mean: torch.Tensor  # [3] processor mean
    std: torch.Tensor  # [3]
    patch_order: torch.Tensor  # [S] pixel_values rows in the vision tower's window order
    vision_cos: torch.Tensor  # [S, Dv_head] float32, window order
    vision_sin: torch.Tensor  # [S, Dv_head]
    windows: Segments  # window-attention blocks
    images: Segments  # full-attention blocks (one segment per image)
    feature_pos: torch.Tensor  # [N_img] sequence position of each merged vision token (window order)
    text_cos: torch.Tensor  # [1, L, Dh] model dtype
    text_sin: torch.Tensor  # [1, L, Dh]
    masks: dict  # layer type -> decoder attention mask (None = SDPA's is_causal)
    rows: slice  # positions whose last-layer output is read (answer, then target tokens)
    rows_mask: torch.Tensor | None  # [1, 1, len(rows), L] bool causal mask of those rows; None = all keys
    answer_ids: torch.Tensor  # [2] Yes, No token ids


@dataclass
class Query:
    """Everything about one (prompt, views, grid) query that does not depend on the pixels."""

    input_ids: torch.Tensor  # [1, L]
    mm_token_type_ids: torch.Tensor  # [1, L] 1 at image tokens
    position_ids: torch.Tensor  # [3, 1, L] multimodal rope positions
    image_pos: torch.Tensor  # [N_img] indices of image tokens in the sequence
    image_grid_thw: torch.Tensor  # [n_images, 3]
    answer_pos: int  # position whose next-token logits hold the answer
    target_ids: torch.Tensor  # [T] target answer tokens (answer_ll), else empty
    static: StaticInputs  # precomputed tensors of the fast (capture-safe) path
    n_text_tokens: int


def static_inputs(
    model,
    src: VLMSource,
    ids: torch.Tensor,  # [1, L] token ids
    grid: torch.Tensor,  # [n_images, 3]
    position_ids: torch.Tensor,  # [3, 1, L]
    image_pos: torch.Tensor,  # [N_img]
    answer_pos: int,
    n_target: int,
    answer_ids: tuple[int, int],
) -> StaticInputs:
    """Precompute (with host syncs, outside any graph) the fixed tensors of the capture-safe forward."""
    from transformers.masking_utils import create_causal_mask
    from transformers.vision_utils import get_vision_position_ids, get_vision_window_index

    device = ids.device
    vis = model.model.visual
    lm = model.model.language_model
    unit = vis.spatial_merge_size**2
    # 1. vision tower: window order, rotary tables, attention segments
    win, cu_win = get_vision_window_index(grid, vis.spatial_merge_size, vis.window_size, vis.patch_size)
    win = win.to(device)
    patch_order = (win[:, None] * unit + torch.arange(unit, device=device)).flatten()
    pos = get_vision_position_ids(grid, vis.spatial_merge_size)
    dummy = torch.empty(0, device=device)
    cos, sin = vis.rotary_pos_emb(dummy, pos)
    per_image = [int(t * h * w) for t, h, w in grid.tolist()]
    cu_img = [0]
    for m in per_image:
        cu_img.append(cu_img[-1] + m)
    # 2. language model: rotary tables, masks, the rows the answer is read from
    length = ids.shape[1]
    dtype = lm.embed_tokens.weight.dtype
    text_cos, text_sin = lm.rotary_emb(torch.empty(0, dtype=dtype, device=device), position_ids)
    shaped = torch.empty(1, length, 1, dtype=dtype, device=device)
    kw = dict(config=lm.config, inputs_embeds=shaped, attention_mask=torch.ones_like(ids), cache=None)
    if set(lm.config.layer_types) != {"full_attention"}:
        raise SplatVLMError(
            "the reward's fast path needs a VLM with full attention in every layer; use --vlm.no-fast"
        )
    masks = {"full_attention": create_causal_mask(**kw)}  # None under SDPA: is_causal, no mask tensor
    rows = slice(answer_pos, answer_pos + max(1, n_target))
    rows_mask = None
    if rows.stop != length or rows.stop - rows.start != 1:
        keys = torch.arange(length, device=device)
        rows_mask = (keys[None] <= torch.arange(rows.start, rows.stop, device=device)[:, None])[None, None]
    return StaticInputs(
        mean=torch.tensor(src.image_mean, dtype=torch.float32, device=device),
        std=torch.tensor(src.image_std, dtype=torch.float32, device=device),
        patch_order=patch_order,
        vision_cos=cos.index_select(0, patch_order).float(),
        vision_sin=sin.index_select(0, patch_order).float(),
        windows=segment_layout(cu_win.tolist(), device),
        images=segment_layout(cu_img, device),
        feature_pos=image_pos.index_select(0, win),
        text_cos=text_cos,
        text_sin=text_sin,
        masks=masks,
        rows=rows,
        rows_mask=rows_mask,
        answer_ids=torch.tensor(answer_ids, dtype=torch.long, device=device),
    )


# ---------------------------------------------------------------------------------------------------
# The reward


class VLMReward:
    """The loaded, frozen reward VLM; ``__call__(rgb, step)`` gives the ``loss_vlm`` term."""

    def __init__(self, cfg: RewardConfig, device: str | torch.device = "auto"):
        from transformers import Qwen2_5_VLForConditionalGeneration

        # 1. check everything cheap first
        self.cfg = cfg
        self.device = pick_device(device) if isinstance(device, str) else device
        self.dtype = pick_dtype(cfg.dtype, self.device)
        self.src = check_reward_source(cfg)
        self.tokenizer = self.src.tokenizer
        self.yes_id, self.no_id = answer_token_ids(self.tokenizer)

        # 2. load (or build) the model, frozen
        if cfg.model in ("random-7b", "random-3b"):
            which = cfg.model.split("-")[1]
            self.model = build_random_vlm(
                which, self.device, self.dtype, cfg.attn_implementation, self.tokenizer
            )
        else:
            try:
                self.model = Qwen2_5_VLForConditionalGeneration.from_pretrained(
                    self.src.source, dtype=self.dtype, attn_implementation=cfg.attn_implementation,
                    device_map={"": self.device} if self.device.type == "cuda" else None,
                )  # fmt: skip
            except (OSError, ValueError) as e:
                detail = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
                raise missing_weights_error(cfg.model, "the reward VLM", "--vlm.model", detail) from None
            self.model.to(self.device)
        self.model.requires_grad_(False)
        self.model.eval()
        if cfg.gradient_checkpointing:
            kwargs = {"use_reentrant": False}
            if hasattr(self.model, "activation_checkpointing_enable"):  # transformers >= 5.2x
                self.model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
            else:
                self.model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
            # HF checkpoints a layer only when that layer is in training mode; flip just those flags so
            # dropout elsewhere (e.g. in LoRA layers) stays off.
            from transformers.modeling_layers import GradientCheckpointingLayer

            for m in self.model.modules():
                if isinstance(m, GradientCheckpointingLayer):
                    m.training = True

        # 3. adapters
        self.peft = None
        self.adapter_names: list[str] = []
        if cfg.lora:
            from ..lora import load_adapters

            self.peft, self.adapter_names = load_adapters(
                self.model, cfg.lora, cfg.lora_weights or [1.0] * len(cfg.lora), cfg.model
            )
        # 4. compile block by block: whole-model graphs break on the vision encoder's data-dependent splits.
        # The fast path runs the vision blocks through vision_block (one compiled function for all 32).
        self._vision_block = vision_block
        if cfg.compile:
            for block in [*self.model.model.language_model.layers, *self.model.model.visual.blocks]:
                block.compile()
            self._vision_block = torch.compile(vision_block)
        self.prompt: str | None = None
        self._queries: dict[tuple, Query] = {}
        self._graph_key: tuple | None = None
        self._graph: GraphedGrad | None = None

    # -- prompt and query ------------------------------------------------------------------------

    def set_prompt(self, prompt: str) -> None:
        """Build (once) the query for ``prompt`` with cfg.num_views views of cfg.size pixels."""
        g = self.cfg.size // self.src.patch_size
        if prompt != self.prompt:
            self.reset_graphs()  # the prompt's tokens are baked into the captured graph
        self.prompt = prompt
        self.query(prompt, self.cfg.num_views, (g, g))

    def reset_graphs(self) -> None:
        """Drop the captured CUDA graph (and its memory pool); the next step re-captures."""
        self._graph_key, self._graph = None, None

    def query(self, prompt: str, n_images: int, grid_hw: tuple[int, int]) -> Query:
        """The pixel-independent part of a query, built once per (prompt, views, grid, question, target)."""
        target = _target(self.cfg, self.tokenizer)
        key = (prompt, n_images, tuple(grid_hw), self.cfg.question, tuple(target))
        if key in self._queries:
            return self._queries[key]
        if len(self._queries) >= 256:  # train-reward sees many prompts; keep memory bounded
            self._queries.clear()
        ids = query_ids(
            self.src, question_text(self.cfg.question, prompt, n_images), n_images, grid_hw, target
        )
        check_context(self.src, ids.shape[-1], self.cfg.model)
        ids = ids.to(self.device)
        mm = (ids == self.model.config.image_token_id).long()
        grid = torch.tensor([[1, *grid_hw]] * n_images, dtype=torch.long, device=self.device)
        position_ids, _ = self.model.model.get_rope_index(ids, mm_token_type_ids=mm, image_grid_thw=grid)
        image_pos = mm[0].nonzero().squeeze(1)
        answer_pos = ids.shape[1] - len(target) - 1
        yes_no = (self.yes_id, self.no_id)
        static = static_inputs(
            self.model, self.src, ids, grid, position_ids, image_pos, answer_pos, len(target), yes_no
        )
        q = Query(
            input_ids=ids,
            mm_token_type_ids=mm,
            position_ids=position_ids,
            image_pos=image_pos,
            image_grid_thw=grid,
            answer_pos=answer_pos,
            target_ids=torch.tensor(target, dtype=torch.long, device=self.device),
            static=static,
            n_text_tokens=int(ids.shape[1] - mm.sum()),
        )
        self._queries[key] = q
        return q

    # -- forward ---------------------------------------------------------------------------------

    def _logits_static(self, q: Query, views: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Views [C, H, W, 3] -> (Yes/No logits [2], full-vocab logits [T, V] at the target rows, or None).

        Capture-safe: fixed shapes, no host syncs; every index comes from q.static. Calls the model's own
        modules (vision blocks' parts, decoder layers, norms, head) with the precomputed tensors.
        """
        st, inner = q.static, self.model.model
        vis, lm = inner.visual, inner.language_model
        src = self.src
        # 1. pixels -> patches, in the vision tower's window order
        images = resize_views(views, self.cfg.size)
        pixel_values = patchify(
            images, st.mean, st.std, src.patch_size, src.merge_size, src.temporal_patch_size
        )
        pixel_values = pixel_values.to(self.dtype).index_select(0, st.patch_order)
        # The patch Conv3d (stride == kernel) as the GEMM it is: some cuDNN versions run it very slowly in bf16.
        proj = vis.patch_embed.proj
        x = F.linear(pixel_values, proj.weight.reshape(proj.weight.shape[0], -1), proj.bias)  # [S, Dv]
        # 2. vision blocks: window attention, full attention per image in fullatt_block_indexes
        full = set(vis.fullatt_block_indexes)
        for i, blk in enumerate(vis.blocks):
            seg = st.images if i in full else st.windows
            if self.cfg.gradient_checkpointing and torch.is_grad_enabled():
                x = checkpoint(
                    self._vision_block, blk, x, st.vision_cos, st.vision_sin, seg, use_reentrant=False
                )
            else:
                x = self._vision_block(blk, x, st.vision_cos, st.vision_sin, seg)
        feats = vis.merger(x)  # [N_img, D] merged tokens, window order
        # 3. text embeddings with the image features in place
        h = inner.get_input_embeddings()(q.input_ids)  # [1, L, D]
        h = h.index_copy(1, st.feature_pos, feats[None].to(h.dtype))
        # 4. decoder layers; the last one only at the rows we read
        pe = (st.text_cos, st.text_sin)
        for layer, kind in zip(lm.layers[:-1], lm.config.layer_types, strict=False):
            h = layer(h, attention_mask=st.masks[kind], position_embeddings=pe, position_ids=None, cache=None,
                      use_cache=False)  # fmt: skip
        h = lm.norm(decoder_tail(lm.layers[-1], h, *pe, st.rows, st.rows_mask))[0]  # [len(rows), D]
        # 5. LM head: the Yes/No rows at the answer position, the full vocabulary at target rows
        head = self.model.get_output_embeddings().weight  # [V, D]
        yn = F.linear(h[0], head.index_select(0, st.answer_ids)).float()
        t = len(q.target_ids)
        return yn, F.linear(h[:t], head).float() if t else None

    def _logits_reference(
        self, q: Query, pixel_values: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The straightforward path: the full HF forward with full-vocabulary logits at every position."""
        out = self.model(
            input_ids=q.input_ids,
            pixel_values=pixel_values.to(self.dtype),
            image_grid_thw=q.image_grid_thw,
            mm_token_type_ids=q.mm_token_type_ids,
            attention_mask=torch.ones_like(q.input_ids),
            use_cache=False,
        )
        logits = out.logits[0].float()  # [L, V]
        yn = logits[q.answer_pos, [self.yes_id, self.no_id]]
        full = logits[q.answer_pos : q.answer_pos + len(q.target_ids)] if len(q.target_ids) else None
        return yn, full

    def score(
        self, views: torch.Tensor, prompt: str | None = None, fast: bool | None = None
    ) -> dict[str, torch.Tensor]:
        """All views [N, H, W, 3] in [0, 1] to the VLM -> tensors: reward, logit_yes, logit_no, p_yes.

        Differentiable to ``views``. Used by ``__call__`` (which picks cfg.num_views views) and train-reward.
        """
        # 1. check inputs
        prompt = self.prompt if prompt is None else prompt
        if prompt is None:
            raise RuntimeError("call set_prompt(prompt) before the reward")
        assert views.ndim == 4 and views.shape[-1] == 3, f"expected [N, H, W, 3], got {tuple(views.shape)}"
        views = views.to(self.device, torch.float32)
        g = self.cfg.size // self.src.patch_size
        q = self.query(prompt, views.shape[0], (g, g))  # cached per prompt
        # 2. forward: pixels -> patches -> logits (differentiable)
        fast = self.cfg.fast if fast is None else fast
        if fast:
            yn, full = self._logits_static(q, views)
        else:
            pixel_values, _ = preprocess_views(
                views, size=self.cfg.size, mean=self.src.image_mean, std=self.src.image_std,
                patch_size=self.src.patch_size, merge_size=self.src.merge_size,
                temporal_patch_size=self.src.temporal_patch_size,
            )  # fmt: skip
            yn, full = self._logits_reference(q, pixel_values)
        # 3. answer -> reward
        diff = yn[0] - yn[1]
        if self.cfg.kind == "logit_diff":
            reward = diff
        elif self.cfg.kind == "log_p_yes":
            reward = F.logsigmoid(diff)
        elif self.cfg.kind == "answer_ll":
            reward = full.log_softmax(-1).gather(1, q.target_ids[:, None]).sum()
        else:
            raise ValueError(f"unknown reward kind {self.cfg.kind!r}")
        return {"reward": reward, "logit_yes": yn[0], "logit_no": yn[1], "p_yes": torch.sigmoid(diff)}

    def loss_fn(self, prompt: str | None = None):
        """The capture-safe term ``views [C, H, W, 3] -> (loss_vlm, {"reward", "p_yes"})`` that is graphed."""
        prompt = self.prompt if prompt is None else prompt

        def fn(views: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
            out = self.score(views, prompt, fast=True)
            return -out["reward"], {"reward": out["reward"].detach(), "p_yes": out["p_yes"].detach()}

        return fn

    def graphed(self, views: torch.Tensor) -> bool:
        """Whether a reward step on ``views`` runs as a CUDA graph."""
        cfg = self.cfg
        on_gpu = self.device.type == "cuda" and views.is_cuda
        return cfg.cuda_graph and cfg.fast and not cfg.gradient_checkpointing and on_gpu

    def active(self, step: int) -> bool:
        """Whether the reward runs at ``step`` (every k-th step, as the trainer counts)."""
        return step % self.cfg.every == 0

    def __call__(self, rgb: torch.Tensor, step: int) -> dict:
        """Rendered views [C, H, W, 3] in [0, 1] -> {"loss_vlm": Tensor, "reward": float, "p_yes": float}.

        loss_vlm = -reward, unweighted (the trainer applies weights.vlm). Steps that are not active (see
        ``active``) return a zero loss and NaN diagnostics.
        """
        if not self.active(step):
            nan = float("nan")
            return {"loss_vlm": torch.zeros((), device=rgb.device), "reward": nan, "p_yes": nan}
        c, n = rgb.shape[0], self.cfg.num_views
        if c < n:
            raise SplatVLMError(f"--vlm.num-views {n} is more than the {c} rendered views per step")
        # evenly spread over the batch's azimuths: views i * c // n
        views = rgb if c == n else rgb[:: c // n] if c % n == 0 else rgb[[i * c // n for i in range(n)]]
        if self.graphed(views):
            # The graph holds this prompt's tokens and these shapes: re-capture when any of them changes.
            views = views.to(self.device)
            key = (self.prompt, self.cfg.size, self.cfg.kind, self.cfg.question, self.cfg.target_answer,
                   tuple(views.shape), views.dtype)  # fmt: skip
            if key != self._graph_key:
                self.reset_graphs()
                self._graph_key, self._graph = key, GraphedGrad(self.loss_fn())
            with torch.enable_grad():  # capture needs autograd even if the caller is in no_grad
                value, grad, aux = self._graph(views)
            loss = surrogate_loss(views, value, grad)
            reward, p_yes = aux["reward"], aux["p_yes"]
        else:
            out = self.score(views)
            loss, reward, p_yes = -out["reward"], out["reward"], out["p_yes"]
        return {
            "loss_vlm": loss.to(rgb.device),
            "reward": float(reward.detach()),
            "p_yes": float(p_yes.detach()),
        }

    # -- adapters at run time --------------------------------------------------------------------

    def set_lora(self, weights: Sequence[float] | None) -> None:
        """Re-weight the loaded adapters (one weight each, 0 = off), or disable them all with None."""
        from ..lora import set_adapter_weights

        if self.peft is None:
            if weights:
                raise SplatVLMError("no LoRA adapters are loaded (--vlm.lora)")
            return
        if weights is not None and len(weights) != len(self.adapter_names):
            raise SplatVLMError(f"got {len(weights)} LoRA weights for {len(self.adapter_names)} adapters")
        self.reset_graphs()  # adapter scales are constants inside a captured graph
        set_adapter_weights(
            self.peft, dict(zip(self.adapter_names, weights, strict=True)) if weights is not None else {}
        )


__all__ = [
    "RewardConfig",
    "VLMReward",
    "VLMSource",
    "Query",
    "check_reward_source",
    "preprocess_views",
    "patchify",
    "static_inputs",
    "StaticInputs",
    "Segments",
    "segment_layout",
    "segment_attention",
    "vision_block",
    "decoder_tail",
    "resize_views",
    "question_text",
    "answer_token_ids",
    "query_ids",
    "demo_vlm_path",
    "build_demo_tokenizer",
    "vlm_config",
    "build_random_vlm",
]
