"""The differentiable Qwen2.5-VL reward (VLM3D, arXiv 2509.15772).

Rendered views [C, H, W, 3] in [0, 1] and the text prompt go in; out comes a dict with the loss term
``loss_vlm`` (differentiable to the pixels, hence to the Gaussians) and float diagnostics. The VLM is
asked one question in one user turn (all views as images, then the question); the reward is read from
its next-token logits for "Yes" and "No" (token ids from the tokenizer), or from the likelihood of a
multi-token target answer.

Preprocessing is done in torch so gradients flow: optional bicubic resize, the processor's mean/std,
the frame repeated for the temporal patch of 2, and the exact patch layout of the HF image processor.

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

from .errors import SplatVLMError
from .models import DType, cache_dir, hf_offline, is_local, missing_weights_error, pick_device, pick_dtype

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
    """Compute only what the reward needs (hidden states, then only the needed LM-head rows); False = the
    straightforward full forward with full-vocabulary logits (reference path)."""


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
    x = ((images - mean_t) / std_t).permute(0, 3, 1, 2)  # [C, 3, H, W]
    gh, gw = h // patch_size, w // patch_size
    x = x.reshape(n, 3, gh // merge_size, merge_size, patch_size, gw // merge_size, merge_size, patch_size)
    # -> [C, gh/m, gw/m, m_h, m_w, 3, P, P]: merge blocks row-major, then the patches inside a block
    x = x.permute(0, 2, 5, 3, 6, 1, 4, 7)
    x = x.unsqueeze(6).expand(*x.shape[:6], temporal_patch_size, patch_size, patch_size)
    pixel_values = x.reshape(n * gh * gw, 3 * temporal_patch_size * patch_size * patch_size)
    grid = torch.tensor([[1, gh, gw]] * n, dtype=torch.long, device=images.device)
    return pixel_values, grid


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
        from .lora import check_adapters

        check_adapters(cfg.lora, config, cfg.model)

    # 4. the prompt must fit the context with all its image tokens
    if prompt is not None:
        ids = query_ids(src, question_text(cfg.question, prompt, cfg.num_views), cfg.num_views,
                        (cfg.size // src.patch_size,) * 2, _target(cfg, tokenizer))  # fmt: skip
        check_context(src, ids.shape[-1], cfg.model)
    return src


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
class Query:
    """Everything about one (prompt, views, grid) query that does not depend on the pixels."""

    input_ids: torch.Tensor  # [1, L]
    mm_token_type_ids: torch.Tensor  # [1, L] 1 at image tokens
    position_ids: torch.Tensor  # [3, 1, L] multimodal rope positions
    image_pos: torch.Tensor  # [N_img] indices of image tokens in the sequence
    image_grid_thw: torch.Tensor  # [n_images, 3]
    answer_pos: int  # position whose next-token logits hold the answer
    target_ids: torch.Tensor  # [T] target answer tokens (answer_ll), else empty
    vision_kwargs: dict  # precomputed vision-encoder index tensors (fast path)
    n_text_tokens: int


def _vision_kwargs(model, grid: torch.Tensor) -> dict:
    """Precompute the vision encoder's data-dependent index tensors once per grid (fewer syncs per step)."""
    try:
        from transformers.vision_utils import (
            get_vision_attention_seqlens,
            get_vision_position_ids,
            get_vision_window_index,
        )
    except ImportError:  # older transformers: the encoder computes them itself
        return {}
    vis = model.model.visual
    vc = vis.config
    cu, max_len = get_vision_attention_seqlens(grid, vc)
    win, cu_win = get_vision_window_index(grid, vis.spatial_merge_size, vis.window_size, vis.patch_size)
    out = {
        "position_ids": get_vision_position_ids(grid, vis.spatial_merge_size),
        "cu_seqlens": cu,
        "window_index": win.to(grid.device),
        "cu_window_seqlens": cu_win,
    }
    if max_len is not None:
        out["max_seqlen"] = max_len
        out["max_window_seqlen"] = int((cu_win[1:] - cu_win[:-1]).max())
    return out


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
            from .lora import load_adapters

            self.peft, self.adapter_names = load_adapters(
                self.model, cfg.lora, cfg.lora_weights or [1.0] * len(cfg.lora), cfg.model
            )
        # 4. compile block by block: whole-model graphs break on the vision encoder's data-dependent splits
        if cfg.compile:
            for block in [*self.model.model.language_model.layers, *self.model.model.visual.blocks]:
                block.compile()
        self.prompt: str | None = None
        self._queries: dict[tuple, Query] = {}

    # -- prompt and query ------------------------------------------------------------------------

    def set_prompt(self, prompt: str) -> None:
        """Build (once) the query for ``prompt`` with cfg.num_views views of cfg.size pixels."""
        g = self.cfg.size // self.src.patch_size
        self.prompt = prompt
        self.query(prompt, self.cfg.num_views, (g, g))

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
        q = Query(
            input_ids=ids,
            mm_token_type_ids=mm,
            position_ids=position_ids,
            image_pos=mm[0].nonzero().squeeze(1),
            image_grid_thw=grid,
            answer_pos=ids.shape[1] - len(target) - 1,
            target_ids=torch.tensor(target, dtype=torch.long, device=self.device),
            vision_kwargs=_vision_kwargs(self.model, grid),
            n_text_tokens=int(ids.shape[1] - mm.sum()),
        )
        self._queries[key] = q
        return q

    # -- forward ---------------------------------------------------------------------------------

    def _logits_fast(self, q: Query, pixel_values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(Yes/No logits [2] at the answer position, full-vocab logits [T, V] at the target positions)."""
        inner = self.model.model
        vis = inner.visual(pixel_values.to(self.dtype), grid_thw=q.image_grid_thw, **dict(q.vision_kwargs))
        emb = inner.get_input_embeddings()(q.input_ids)[0]  # [L, D]
        emb = emb.index_copy(0, q.image_pos, vis.pooler_output.to(emb.dtype))
        h = inner.language_model(
            inputs_embeds=emb[None], position_ids=q.position_ids, use_cache=False
        ).last_hidden_state[0]  # [L, D]
        head = self.model.get_output_embeddings().weight  # [V, D]
        yn = F.linear(h[q.answer_pos], head[[self.yes_id, self.no_id]]).float()
        full = None
        if len(q.target_ids):
            t = len(q.target_ids)
            full = F.linear(h[q.answer_pos : q.answer_pos + t], head).float()  # [T, V]
        return yn, full

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
        # 2. pixels -> patches (differentiable)
        pixel_values, grid = preprocess_views(
            views.to(self.device, torch.float32), size=self.cfg.size, mean=self.src.image_mean,
            std=self.src.image_std, patch_size=self.src.patch_size, merge_size=self.src.merge_size,
            temporal_patch_size=self.src.temporal_patch_size,
        )  # fmt: skip
        # 3. query (cached per prompt) and forward
        q = self.query(prompt, views.shape[0], (int(grid[0, 1]), int(grid[0, 2])))
        fast = self.cfg.fast if fast is None else fast
        yn, full = (self._logits_fast if fast else self._logits_reference)(q, pixel_values)
        # 4. answer -> reward
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
        idx = [i * c // n for i in range(n)]  # evenly spread over the batch's azimuths
        out = self.score(rgb[idx])
        return {
            "loss_vlm": -out["reward"].to(rgb.device),
            "reward": float(out["reward"].detach()),
            "p_yes": float(out["p_yes"].detach()),
        }

    # -- adapters at run time --------------------------------------------------------------------

    def set_lora(self, weights: Sequence[float] | None) -> None:
        """Re-weight the loaded adapters (one weight each, 0 = off), or disable them all with None."""
        from .lora import set_adapter_weights

        if self.peft is None:
            if weights:
                raise SplatVLMError("no LoRA adapters are loaded (--vlm.lora)")
            return
        if weights is not None and len(weights) != len(self.adapter_names):
            raise SplatVLMError(f"got {len(weights)} LoRA weights for {len(self.adapter_names)} adapters")
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
    "resize_views",
    "question_text",
    "answer_token_ids",
    "query_ids",
    "demo_vlm_path",
    "build_demo_tokenizer",
    "vlm_config",
    "build_random_vlm",
]
