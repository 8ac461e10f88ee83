"""The loading layer: which weights each guidance term uses, checked before any heavy work (one clear line
when they cannot be found), then loaded or built here and handed to the guidance terms, which receive
loaded models and never load them themselves.

- the prior (``--sds.model``): a diffusers folder or HF id, MVDream's original checkpoint (plus
  ``--sds.base-model``), ``demo`` or ``random``: ``check_sds_source``, then ``build_prior``;
- the reward (``--vlm.model``): a Qwen2.5-VL folder or HF id, ``demo``, ``random-7b`` / ``random-3b``:
  ``check_reward_source`` returns the ``VLMSource`` that ``build_reward`` loads the model from;
- ``check_sources(cfg, prompts, kinds)`` does both checks for a run or a batch, loading each tokenizer once;
- ``load_model(kind, cfg, device)`` builds the model a loss term names (``guidance.terms``) for a run;
- ``load_prior`` / ``load_reward``: check and build in one call (the library's entry points).
"""

from __future__ import annotations

import functools
import json
import os
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from pickle import UnpicklingError
from typing import Any, get_args

import torch

from .demo import (
    build_demo_tokenizer,
    build_random_vlm,
    demo_corpus,
    demo_vlm_path,
    ensure_demo_models,
    random_components,
    vlm_config,
)
from .errors import SplatVLMError
from .guidance import adapters
from .guidance.reward import (
    QuestionKind,
    RewardConfig,
    VLMReward,
    VLMSource,
    answer_token_ids,
    check_context,
    query_ids,
    question_text,
    target_ids,
)
from .guidance.sds import SDComponents, SDSConfig, SDSGuidance, check_config, prior_dtype
from .hub import (
    hf_offline,
    hub_reachable,
    is_local,
    missing_weights_error,
    pick_device,
    pick_dtype,
    quiet_model_io,
    short_error,
)
from .prompts import token_counts

# ---------------------------------------------------------------------------------------------------
# The prior

_HF_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
_HF_FILE = re.compile(r"^([A-Za-z0-9][\w.-]*/[\w.-]+)/(.+\.(?:pt|pth|ckpt|bin|safetensors))$")


def _what(cfg: SDSConfig) -> str:
    return "the MVDream prior" if cfg.kind == "mvdream" else "the Stable Diffusion prior"


def uses_base_model(cfg: SDSConfig) -> bool:
    """Whether the text encoder, VAE and scheduler come from ``cfg.base_model`` (an original .pt UNet)."""
    return cfg.kind == "mvdream" and (
        os.path.isfile(os.path.expanduser(cfg.model)) or bool(_HF_FILE.match(cfg.model))
    )


def local_files_only(*sources: str) -> bool:
    """Load hub ids from the local HF cache only (offline, or the hub unreachable)."""
    hub = [s for s in sources if not is_local(s)]
    return bool(hub) and (hf_offline() or not hub_reachable())


def _check_local_file(path: Path, source: str, what: str, flag: str) -> None:
    if path.suffix.lower() not in (".pt", ".pth", ".ckpt", ".bin", ".safetensors"):
        raise missing_weights_error(source, what, flag, "a file must be a .pt/.ckpt/.safetensors checkpoint")
    try:
        with open(path, "rb") as f:
            head = f.read(9)
    except OSError as e:
        raise missing_weights_error(source, what, flag, f"cannot read it: {e.strerror}") from None
    zip_or_pickle = head.startswith(b"PK\x03\x04") or head.startswith(b"\x80")
    safetensors = len(head) == 9 and head[8:9] == b"{"
    if not (zip_or_pickle or safetensors):
        raise missing_weights_error(source, what, flag, "not a PyTorch or safetensors checkpoint")


def _check_local_folder(path: Path, source: str, what: str, flag: str, parts: tuple[str, ...]) -> None:
    if not os.access(path, os.R_OK | os.X_OK):
        raise missing_weights_error(source, what, flag, "folder is not readable")
    missing = [p for p in parts if not (path / p).exists()]
    if missing:
        raise missing_weights_error(source, what, flag, f"missing {', '.join(missing)}")


def _check_hub(source: str, filename: str, what: str, flag: str) -> None:
    from huggingface_hub import HfApi, try_to_load_from_cache

    repo = _HF_FILE.match(source).group(1) if _HF_FILE.match(source) else source
    if isinstance(try_to_load_from_cache(repo, filename), str):
        return
    if hf_offline():
        raise missing_weights_error(
            source, what, flag, "HF_HUB_OFFLINE is set and it is not in the local HF cache"
        )
    if not hub_reachable():
        raise missing_weights_error(
            source, what, flag, "the HF hub is unreachable and it is not in the local HF cache"
        )
    try:
        exists = HfApi().file_exists(repo, filename)
    except Exception as e:  # gated / private / network: every hub failure means the same to the user
        raise missing_weights_error(source, what, flag, short_error(e)) from None
    if not exists:
        raise missing_weights_error(source, what, flag, f"no {filename} in that repository")


COMPONENT_PARTS = (
    "text_encoder/config.json",
    "tokenizer",
    "vae/config.json",
    "scheduler/scheduler_config.json",
)


def _check_source(source: str, what: str, flag: str, parts: tuple[str, ...], allow_file: bool) -> None:
    if is_local(source):
        path = Path(os.path.expanduser(source))
        if not path.exists():
            raise missing_weights_error(source, what, flag, "no such file or folder")
        if path.is_file():
            if not allow_file:
                raise missing_weights_error(source, what, flag, "expected a folder of diffusers components")
            _check_local_file(path, source, what, flag)
        else:
            _check_local_folder(path, source, what, flag, parts)
    elif _HF_FILE.match(source) and allow_file:
        _check_hub(source, _HF_FILE.match(source).group(2), what, flag)
    elif _HF_ID.match(source):
        _check_hub(source, parts[0], what, flag)
    else:
        raise missing_weights_error(
            source, what, flag, "neither an existing path nor an HF id like owner/name"
        )


def check_sds_source(cfg: SDSConfig) -> None:
    """Cheap check that the weights can be found (path exists and has the right files, HF id cached or
    reachable) before any heavy work; raises ``SplatVLMError`` with one line naming the source."""
    check_config(cfg)
    if cfg.model in ("demo", "random"):
        return
    what = _what(cfg)
    _check_source(
        cfg.model, what, "--sds.model", ("unet/config.json",) + COMPONENT_PARTS, cfg.kind == "mvdream"
    )
    if uses_base_model(cfg):
        base_what = f"the text encoder, tokenizer, VAE and scheduler for {what}"
        _check_source(cfg.base_model, base_what, "--sds.base-model", COMPONENT_PARTS, allow_file=False)


def check_prompt_length(cfg: SDSConfig, prompts: list[str], where: Sequence[str] = ()) -> None:
    """Reject prompts longer than the text encoder's context before any model loads (only the tokenizer,
    once, all prompts in one call); ``where[i]`` names prompt i in the error (its file and line).

    Where the tokenizer cannot be read here, nothing is said: loading the prior reports that clearly.
    """
    from transformers import CLIPTokenizer

    if cfg.model == "random" or not prompts:
        return
    source = str(ensure_demo_models(cfg.kind)) if cfg.model == "demo" else cfg.model
    if uses_base_model(cfg):
        source = cfg.base_model
    try:
        with quiet_model_io():
            tokenizer = CLIPTokenizer.from_pretrained(
                source, subfolder="tokenizer", local_files_only=local_files_only(source)
            )
    except Exception:  # noqa: BLE001 - reported by the full load with the source named
        return
    limit = tokenizer.model_max_length
    for i, n in enumerate(token_counts(tokenizer, list(prompts))):
        if n > limit:
            name = where[i] if i < len(where) else "prompt"
            raise SplatVLMError(
                f"{name} is {n} tokens long; the diffusion prior's text encoder takes at most {limit}: shorten it"
            )


# ---------------------------------------------------------------------------------------------------
# The reward


@functools.cache
def speed_tokenizer():
    """The tokenizer of the ``random-7b`` / ``random-3b`` reward models: trained on every question kind around
    the shipped bench prompts, with room for each of their words to become one token, as in Qwen2.5-VL's
    150k vocabulary. Why: those models time the real model's work, whose decoder runs over the question's
    tokens; the demo tokenizer's corpus is frozen on older questions, so it cuts a newer question into
    pieces of a few bytes and would time a query several times the real one's length. Built once a process
    (deterministic; well under a second)."""
    prompts = json.loads((Path(__file__).parent / "data" / "bench_prompts.json").read_text("utf-8"))
    lines = [question_text(q, p, n) for q in get_args(QuestionKind) for p in prompts for n in (1, 4)]
    return build_demo_tokenizer(demo_corpus() + lines * 4, vocab_size=8192)


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
    if kind == "random":  # the demo's processor and chat template; the tokenizer of the full-size questions
        tokenizer = speed_tokenizer()
        config = vlm_config(cfg.model.split("-")[1], tokenizer)
    template = _chat_template(kind, source, tokenizer)
    if not template:
        raise SplatVLMError(f"--vlm.model {cfg.model} has no chat template (chat_template.jinja/.json)")
    src = VLMSource(
        model=cfg.model,
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
        adapters.check_adapters(cfg.lora, config, cfg.model)

    # 4. the prompt must fit the context with all its image tokens
    if prompt is not None:
        check_prompt_fits(cfg, src, prompt)
    return src


def check_reward_prompts(
    cfg: RewardConfig, src: VLMSource, prompts: Sequence[str], where: Sequence[str] = ()
) -> None:
    """Every prompt's reward query fits the context, with one tokenizer and one chat-template call.

    The query is the template around the prompt, so its length is a fixed overhead plus the prompt's
    tokens (give or take a merge at the seams); only prompts within a margin of the limit are built exactly.
    """
    if not prompts:
        return
    grid = (cfg.size // src.patch_size,) * 2
    target = target_ids(cfg, src.tokenizer)
    probe = "x"
    base = query_ids(
        src, question_text(cfg.question, probe, cfg.num_views), cfg.num_views, grid, target
    ).shape[-1]
    base -= len(src.tokenizer.encode(probe, add_special_tokens=False))
    ctx = int(src.config.text_config.max_position_embeddings)
    lengths = token_counts(src.tokenizer, list(prompts), special_tokens=False)
    for i, (prompt, n) in enumerate(zip(prompts, lengths, strict=True)):
        if base + n + 8 <= ctx:
            continue
        try:
            check_prompt_fits(cfg, src, prompt)
        except SplatVLMError as e:
            raise SplatVLMError(f"{where[i]}: {e}" if i < len(where) else str(e)) from None


def check_prompt_fits(cfg: RewardConfig, src: VLMSource, prompt: str) -> None:
    """The reward query for ``prompt`` (all its image tokens included) fits the VLM's context."""
    ids = query_ids(src, question_text(cfg.question, prompt, cfg.num_views), cfg.num_views,
                    (cfg.size // src.patch_size,) * 2, target_ids(cfg, src.tokenizer))  # fmt: skip
    check_context(src, ids.shape[-1], cfg.model)


# ---------------------------------------------------------------------------------------------------
# A run


@dataclass
class Sources:
    """What a run's models load from, resolved once, by model kind (``guidance.terms.ModelKind``); a kind
    absent is off for the whole run, or has nothing to resolve beyond its config (the prior)."""

    found: dict[str, Any] = field(default_factory=dict)


def check_sources(
    cfg,
    prompts: Sequence[str] = (),
    kinds: Sequence[str] = ("prior", "reward"),
    where: Sequence[str] = (),
    say=None,
) -> Sources:
    """Validate the model ids/paths of ``kinds``, and that each prompt fits their context, before any heavy work.

    ``cfg`` is a RunConfig; ``where[i]`` names prompt i in an error. Each tokenizer loads once and reads all
    prompts in one call. ``say(line)`` reports progress (long batches).
    """
    out = Sources()
    t0 = time.perf_counter()
    for kind in kinds:
        if kind == "prior":
            check_sds_source(cfg.sds)
            check_prompt_length(cfg.sds, list(prompts), where)
            if say:
                say(f"  diffusion prior's text encoder: all fit ({time.perf_counter() - t0:.1f} s)")
        elif kind == "reward":
            src = check_reward_source(cfg.vlm)
            check_reward_prompts(cfg.vlm, src, list(prompts), where)
            if say:
                say(f"  reward VLM's context: all fit ({time.perf_counter() - t0:.1f} s)")
            out.found[kind] = src
        else:
            raise ValueError(f"unknown model kind {kind!r}")
    return out


def load_model(kind: str, cfg, device, source: Any = None) -> Any:
    """Build the model of ``kind`` that the run config ``cfg`` asks for on ``device``; ``source``: what
    ``check_sources`` resolved for it (None: resolve it now)."""
    if kind == "prior":
        return build_prior(cfg.sds, device)
    elif kind == "reward":
        return build_reward(cfg.vlm, source if source is not None else check_reward_source(cfg.vlm), device)
    raise ValueError(f"unknown model kind {kind!r}")


# ---------------------------------------------------------------------------------------------------
# Loading: the models are loaded (or built) here and handed to the guidance terms


def load_components(cfg: SDSConfig, dtype: torch.dtype, device: torch.device | str = "cpu") -> SDComponents:
    """Load (or build) the prior's components; any failure to find weights becomes one clear error."""
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from huggingface_hub.errors import EntryNotFoundError
    from safetensors import SafetensorError
    from transformers import CLIPTextModel, CLIPTokenizer

    from .guidance.mvdream import load_mvdream_unet

    if cfg.model == "random":
        return SDComponents(**random_components(cfg.kind, device, dtype))
    source = str(ensure_demo_models(cfg.kind)) if cfg.model == "demo" else cfg.model
    named, what, flag = source, _what(cfg), "--sds.model"
    uses_base = uses_base_model(cfg)
    local_only = local_files_only(source, cfg.base_model) if uses_base else local_files_only(source)
    try:
        if cfg.kind == "mvdream":
            m = _HF_FILE.match(source)
            if m and not is_local(source):
                from huggingface_hub import hf_hub_download

                source = hf_hub_download(m.group(1), m.group(2), local_files_only=local_only)
            unet = load_mvdream_unet(source, dtype, local_files_only=local_only)
        else:
            unet = UNet2DConditionModel.from_pretrained(
                source, subfolder="unet", torch_dtype=dtype, local_files_only=local_only
            )
        if uses_base:
            source = named = cfg.base_model
            what = f"the text encoder, tokenizer, VAE and scheduler for {what}"
            flag = "--sds.base-model"
        vae_class = AutoencoderKL
        if is_local(source):
            # The toy world's prior ships an exact, weightless autoencoder in place of an AutoencoderKL.
            from .toyworld.autoencoder import SpaceToDepthAutoencoder, is_space_to_depth

            if is_space_to_depth(os.path.join(os.path.expanduser(source), "vae")):
                vae_class = SpaceToDepthAutoencoder
        vae = vae_class.from_pretrained(
            source, subfolder="vae", torch_dtype=dtype, local_files_only=local_only
        )
        text_encoder = CLIPTextModel.from_pretrained(
            source, subfolder="text_encoder", dtype=dtype, local_files_only=local_only
        )
        tokenizer = CLIPTokenizer.from_pretrained(source, subfolder="tokenizer", local_files_only=local_only)
        scheduler = DDPMScheduler.from_pretrained(source, subfolder="scheduler", local_files_only=local_only)
    except SplatVLMError:
        raise
    except (
        OSError,
        ValueError,
        KeyError,
        RuntimeError,
        EntryNotFoundError,
        SafetensorError,
        UnpicklingError,
    ) as e:
        # Hub errors (OSError subclasses), bad json, wrong or truncated files: the user needs the source
        # named, not a traceback. Other exception types are bugs and keep their traceback.
        raise missing_weights_error(named, what, flag, short_error(e)) from None
    return SDComponents(unet, vae, text_encoder, tokenizer, scheduler)


def build_prior(cfg: SDSConfig, device: torch.device | str = "auto") -> SDSGuidance:
    """Load the prior's models and hand them to ``SDSGuidance``; the source is not checked again
    (``check_sources`` did it for the run)."""
    device = pick_device(device) if isinstance(device, str) else device
    with quiet_model_io():
        parts = load_components(cfg, prior_dtype(cfg, device), device)
    return SDSGuidance(cfg, device, parts)


def load_prior(cfg: SDSConfig, device: torch.device | str = "auto") -> SDSGuidance:
    """Check the prior's source, then load it (the library's one-call entry point)."""
    check_sds_source(cfg)
    return build_prior(cfg, device)


def reward_model(cfg: RewardConfig, src: VLMSource, device: torch.device) -> torch.nn.Module:
    """The reward's Qwen2.5-VL on ``device`` in ``cfg``'s dtype: loaded from ``src``, or built with random
    weights for ``random-7b`` / ``random-3b``."""
    from transformers import Qwen2_5_VLForConditionalGeneration

    dtype = pick_dtype(cfg.dtype, device)
    if cfg.model in ("random-7b", "random-3b"):
        which = cfg.model.split("-")[1]
        return build_random_vlm(which, device, dtype, cfg.attn_implementation, src.tokenizer)
    try:
        model = Qwen2_5_VLForConditionalGeneration.from_pretrained(
            src.source, dtype=dtype, attn_implementation=cfg.attn_implementation,
            device_map={"": device} if device.type == "cuda" else None,
        )  # fmt: skip
    except (OSError, ValueError) as e:
        detail = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
        raise missing_weights_error(cfg.model, "the reward VLM", "--vlm.model", detail) from None
    return model.to(device)


def build_reward(cfg: RewardConfig, src: VLMSource, device: torch.device | str = "auto") -> VLMReward:
    """Load the reward's model from the source ``check_reward_source(cfg)`` resolved and hand it to
    ``VLMReward``."""
    device = pick_device(device) if isinstance(device, str) else device
    if src.model != cfg.model:
        raise ValueError(f"the source was resolved for {src.model!r}, not {cfg.model!r}")
    return VLMReward(cfg, src, reward_model(cfg, src, device), device)


def load_reward(cfg: RewardConfig, device: torch.device | str = "auto") -> VLMReward:
    """Resolve the reward's source, then load it (the library's one-call entry point)."""
    return build_reward(cfg, check_reward_source(cfg), device)
