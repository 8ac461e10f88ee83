"""LoRA adapters (peft) on the reward VLM: check them against a model, load them, weight and switch them.

Used by the reward (``--vlm.lora``, ``--vlm.lora-weights``); training them is ``train_reward.py``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch

from ..errors import SplatVLMError

# LoRA on the language model only: the vision tower has gate/up/down_proj too, which we leave alone.
DEFAULT_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


# ---------------------------------------------------------------------------------------------------
# Checking adapters


def check_adapter_dir(path: str | os.PathLike) -> dict:
    """An adapter folder must exist and hold adapter_config.json (a LoRA one) and its weights."""
    p = Path(os.path.expanduser(str(path)))
    if not p.exists():
        raise SplatVLMError(f"LoRA adapter folder {path} does not exist (--vlm.lora)")
    if not p.is_dir():
        raise SplatVLMError(f"LoRA adapter {path} is not a folder (--vlm.lora)")
    cfg_file = p / "adapter_config.json"
    if not cfg_file.is_file():
        raise SplatVLMError(f"LoRA adapter folder {path} has no adapter_config.json (--vlm.lora)")
    try:
        cfg = json.loads(cfg_file.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        raise SplatVLMError(f"cannot read {cfg_file}: {e}") from None
    if str(cfg.get("peft_type", "")).upper() != "LORA":
        raise SplatVLMError(f"adapter {path} is a '{cfg.get('peft_type')}' adapter; only LoRA is supported")
    if not (p / "adapter_model.safetensors").is_file() and not (p / "adapter_model.bin").is_file():
        raise SplatVLMError(f"LoRA adapter folder {path} has no adapter_model.safetensors")
    return cfg


def adapter_shapes(path: str | os.PathLike) -> dict[str, tuple[int, ...]]:
    """Tensor shapes stored in an adapter, read from the safetensors header (no weights loaded)."""
    from safetensors import safe_open

    p = Path(os.path.expanduser(str(path)))
    st = p / "adapter_model.safetensors"
    if st.is_file():
        with safe_open(str(st), framework="pt") as f:
            return {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
    return _bin_shapes(p / "adapter_model.bin", path)


def _bin_shapes(file: Path, path: str | os.PathLike) -> dict[str, tuple[int, ...]]:
    """Shapes in a torch-pickled adapter_model.bin, read with ``weights_only`` (never runs its code); a file
    that holds anything but tensors, or no readable pickle, is one line naming it."""
    try:
        sd = torch.load(file, map_location="meta", weights_only=True)
    except Exception as e:  # noqa: BLE001 - UnpicklingError (code in the pickle), EOFError, RuntimeError ...
        lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
        # weights_only's message opens with advice to turn it off; the line naming the blocked code says why
        why = [ln for ln in lines if "GLOBAL" in ln or "Unsupported" in ln] or lines or [type(e).__name__]
        first = why[0][:160]
        raise SplatVLMError(
            f"LoRA adapter {path}: {file.name} is not a plain tensor file ({type(e).__name__}: {first}); "
            "nothing in it was run. Use adapter_model.safetensors"
        ) from None
    if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise SplatVLMError(f"LoRA adapter {path}: {file.name} does not hold a dict of tensors")
    return {str(k): tuple(v.shape) for k, v in sd.items()}


def check_adapter_fits(path: str | os.PathLike, model: torch.nn.Module, model_name: str) -> dict:
    """Raise if the adapter's LoRA matrices do not match the model's modules (an adapter for another model)."""
    cfg = check_adapter_dir(path)
    trained_on = cfg.get("base_model_name_or_path") or "an unknown model"
    modules = dict(model.named_modules())
    for key, shape in adapter_shapes(path).items():
        name = key.removeprefix("base_model.model.")
        if ".lora_A." in name or ".lora_B." in name:
            mod_name = name.split(".lora_")[0]
            mod = modules.get(mod_name)
            mod = getattr(mod, "base_layer", mod)  # already wrapped by an earlier adapter
            if mod is None:
                problem = f"it adapts {mod_name}, which {model_name} does not have"
            elif not isinstance(mod, torch.nn.Linear):
                problem = f"it adapts {mod_name}, which is not a Linear layer in {model_name}"
            elif ".lora_A." in name and (len(shape) != 2 or shape[1] != mod.in_features):
                problem = (
                    f"{mod_name} takes {mod.in_features} inputs in {model_name}, the adapter {shape[-1]}"
                )
            elif ".lora_B." in name and (len(shape) != 2 or shape[0] != mod.out_features):
                problem = (
                    f"{mod_name} gives {mod.out_features} outputs in {model_name}, the adapter {shape[0]}"
                )
            else:
                continue
            raise SplatVLMError(
                f"LoRA adapter {path} was made for another base model ('{trained_on}'): {problem}"
            )
    return cfg


def check_adapters(paths: list[str], config, model_name: str) -> None:
    """Check adapter folders and shapes against a weightless (meta-device) copy of the model."""
    from transformers import Qwen2_5_VLForConditionalGeneration

    for p in paths:
        check_adapter_dir(p)
    with torch.device("meta"):
        meta = Qwen2_5_VLForConditionalGeneration._from_config(config)
    for p in paths:
        check_adapter_fits(p, meta, model_name)


# ---------------------------------------------------------------------------------------------------
# Loading and switching


def load_adapters(model: torch.nn.Module, paths: list[str], weights: list[float], model_name: str):
    """Load adapters ``lora0, lora1, ...`` onto ``model`` (in place), frozen, all active with ``weights``.

    Returns (the PeftModel wrapper, adapter names). Calls on ``model`` itself then run with the adapters.
    """
    from peft import PeftModel

    if len(weights) != len(paths):
        raise SplatVLMError(f"got {len(weights)} LoRA weights for {len(paths)} adapters")
    names = [f"lora{i}" for i in range(len(paths))]
    peft_model = None
    for name, path in zip(names, paths, strict=True):
        check_adapter_fits(path, model, model_name)
        path = os.path.expanduser(path)
        if peft_model is None:
            peft_model = PeftModel.from_pretrained(model, path, adapter_name=name, is_trainable=False)
        else:
            peft_model.load_adapter(path, adapter_name=name, is_trainable=False)
    peft_model.eval()
    set_adapter_weights(peft_model, dict(zip(names, weights, strict=True)))
    return peft_model, names


def set_adapter_weights(peft_model, weights: dict[str, float]) -> None:
    """Activate the named adapters with these weights (their deltas add up); others off. {} = base model."""
    from peft.tuners.lora import LoraLayer

    active = [n for n, w in weights.items() if w != 0]
    tuner = peft_model.base_model
    if not active:
        tuner.disable_adapter_layers()
        return
    tuner.enable_adapter_layers()
    tuner.set_adapter(active, inference_mode=True)  # inference_mode keeps them frozen
    for m in tuner.model.modules():
        if isinstance(m, LoraLayer):
            for n in active:
                m.set_scale(n, float(weights[n]))  # scaling = weight * alpha / r
