"""LoRA adapters (peft) for the reward VLM: load, weight, switch, and train them (``splatvlm train-reward``).

Training data is a JSONL file, one JSON object per line (blank lines and lines starting with ``#`` are
skipped). Image paths are relative to the JSONL file's folder unless absolute. Two record kinds:

- a labeled render set::

    {"images": ["renders/cat/0.png", "renders/cat/1.png"], "prompt": "a cat", "label": "yes"}

  ``label`` is "yes" or "no": should the VLM answer Yes to the reward question for these views?
  Loss: -log p(label) over the pair {Yes, No} at the answer position.

- a preference pair::

    {"images_chosen": ["good/0.png", ...], "images_rejected": ["bad/0.png", ...], "prompt": "a cat"}

  Loss: -log sigmoid(reward(chosen) - reward(rejected)) with the configured reward kind (Bradley-Terry).

Every image is resized (bicubic, antialias) to ``--vlm.size`` square and asked with the same
differentiable query as the generator uses (``VLMReward.score``). The adapter (LoRA on the language
model's attention and MLP projections) is saved as safetensors with its adapter_config.json, written to
a temporary folder and renamed into place.
"""

from __future__ import annotations

import dataclasses
import json
import os
import random
import shutil
import tempfile
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Annotated

import torch
import torch.nn.functional as F
import tyro

from .errors import SplatVLMError
from .guidance.reward import RewardConfig, VLMReward, resize_views

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
    sd = torch.load(p / "adapter_model.bin", map_location="meta", weights_only=True)
    return {k: tuple(v.shape) for k, v in sd.items()}


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


# ---------------------------------------------------------------------------------------------------
# Training data


@dataclass
class RewardExample:
    """One JSONL record: a labeled view set, or a chosen/rejected pair of view sets."""

    line: int
    prompt: str
    images: list[Path] = field(default_factory=list)
    label: bool | None = None  # True = yes
    chosen: list[Path] = field(default_factory=list)
    rejected: list[Path] = field(default_factory=list)


def _image_list(value, key: str, where: str, root: Path) -> list[Path]:
    from .files import check_image

    if not isinstance(value, list) or not value or not all(isinstance(v, str) and v for v in value):
        raise SplatVLMError(f"{where}: '{key}' must be a non-empty list of image paths")
    out = []
    for v in value:
        p = Path(os.path.expanduser(v))
        p = p if p.is_absolute() else root / p
        if not p.exists():
            raise SplatVLMError(f"{where}: image {v} not found")
        check_image(p, where)  # before any model loads: size, truncation, decompression bombs
        out.append(p)
    return out


def read_reward_data(path: str | os.PathLike) -> list[RewardExample]:
    """Parse and validate the whole JSONL up front; any problem -> one-line error naming the line."""
    from .files import check_regular_file

    path = Path(path)
    if not path.exists():
        raise SplatVLMError(f"training data {path} not found")
    check_regular_file(path, "training data")
    root = path.parent
    examples = []
    with open(path, "rb") as f:
        for i, raw_bytes in enumerate(f, start=1):
            where = f"{path}:{i}"
            try:
                raw = raw_bytes.decode("utf-8")
            except UnicodeDecodeError as e:
                raise SplatVLMError(f"{where}: not UTF-8 text (bad byte at column {e.start + 1})") from None
            text = raw.strip()
            if not text or text.startswith("#"):
                continue
            try:
                rec = json.loads(text)
            except json.JSONDecodeError as e:
                raise SplatVLMError(f"{where}: not valid JSON ({e.msg})") from None
            except (RecursionError, ValueError):
                raise SplatVLMError(f"{where}: not a JSON record (nested too deeply or a number too long)") from None
            if not isinstance(rec, dict):
                raise SplatVLMError(f"{where}: each line must be a JSON object")
            prompt = rec.get("prompt")
            if not isinstance(prompt, str) or not prompt.strip():
                raise SplatVLMError(f"{where}: 'prompt' must be a non-empty string")
            if "images" in rec:
                extra = {"images_chosen", "images_rejected"} & rec.keys()
                if extra:
                    raise SplatVLMError(
                        f"{where}: give either 'images' + 'label' or 'images_chosen' + 'images_rejected'"
                    )
                label = rec.get("label")
                if not isinstance(label, str) or label.strip().lower() not in ("yes", "no"):
                    raise SplatVLMError(f'{where}: \'label\' must be "yes" or "no", got {json.dumps(label)}')
                imgs = _image_list(rec["images"], "images", where, root)
                examples.append(RewardExample(i, prompt, images=imgs, label=label.strip().lower() == "yes"))
            elif "images_chosen" in rec or "images_rejected" in rec:
                chosen = _image_list(rec.get("images_chosen"), "images_chosen", where, root)
                rejected = _image_list(rec.get("images_rejected"), "images_rejected", where, root)
                examples.append(RewardExample(i, prompt, chosen=chosen, rejected=rejected))
            else:
                raise SplatVLMError(
                    f"{where}: needs 'images' + 'label' or 'images_chosen' + 'images_rejected'"
                )
    if not examples:
        raise SplatVLMError(f"training data {path} has no records")
    return examples


@lru_cache(maxsize=256)
def _load_image(path: Path) -> torch.Tensor:
    """uint8 [H, W, 3] (cached: the loop revisits the same small data set many times)."""
    import numpy as np
    from PIL import Image

    with Image.open(path) as im:
        return torch.from_numpy(np.asarray(im.convert("RGB")).copy())


def load_views(paths: list[Path], size: int) -> torch.Tensor:
    """Images -> [N, size, size, 3] float in [0, 1]."""
    views = [resize_views(_load_image(p).float().div(255)[None], size)[0] for p in paths]
    return torch.stack(views)


# ---------------------------------------------------------------------------------------------------
# Training


@dataclass
class TrainRewardConfig:
    """Fine-tune a LoRA adapter for the reward VLM on labeled renders or preference pairs."""

    data: tyro.conf.Positional[Path]
    """JSONL training data (format in `splatvlm.lora`'s docstring: images + prompt + yes/no label, or
    images_chosen + images_rejected + prompt)."""
    output: Annotated[Path, tyro.conf.arg(aliases=("-o",))]
    """Adapter folder to write (adapter_config.json + adapter_model.safetensors + train_reward.json)."""
    vlm: RewardConfig = field(default_factory=RewardConfig)
    """The reward VLM and its query (model, question, kind, size) the adapter is trained for."""
    rank: int = 16
    """LoRA rank."""
    alpha: float = 32.0
    """LoRA alpha (scaling = alpha / rank)."""
    dropout: float = 0.05
    """Dropout on the LoRA input during training."""
    targets: list[str] = field(default_factory=lambda: list(DEFAULT_TARGETS))
    """Language-model projections to adapt (the vision tower is never adapted)."""
    steps: int = 200
    """Optimizer steps."""
    batch: int = 4
    """Records per optimizer step (gradient accumulation, one record per forward)."""
    lr: float = 1e-4
    """AdamW learning rate."""
    holdout: float = 0.1
    """Fraction of records held out for the accuracy line (at least one when there are 2+ records)."""
    seed: int = 0
    """Seed for the split, sampling and LoRA init."""
    device: str = "auto"
    """auto = CUDA when available, else CPU."""
    overwrite: bool = False
    """Replace an existing adapter folder."""


def check_adapter_output(path: Path, overwrite: bool) -> Path:
    path = Path(os.path.expanduser(str(path)))
    parent = path.parent if str(path.parent) else Path(".")
    if path.exists() and not path.is_dir():
        raise SplatVLMError(f"output {path} exists and is not a folder")
    if path.exists() and not overwrite:
        raise SplatVLMError(f"output {path} already exists; pass --overwrite to replace it")
    if not parent.is_dir():
        raise SplatVLMError(f"output folder {parent} does not exist")
    if not os.access(parent, os.W_OK):
        raise SplatVLMError(f"output folder {parent} is not writable")
    return path


def _publish_dir(tmp: Path, out: Path) -> None:
    """Move a finished folder into place; an existing one is replaced only after the new one is complete."""
    old = None
    if out.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old.", dir=out.parent))
        os.replace(out, old / out.name)
    os.replace(tmp, out)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def example_loss(reward: VLMReward, ex: RewardExample) -> tuple[torch.Tensor, bool]:
    """(loss, correct) for one record with the reward's differentiable query."""
    size = reward.cfg.size
    if ex.label is not None:
        s = reward.score(load_views(ex.images, size), ex.prompt)
        d = s["logit_yes"] - s["logit_no"]
        loss = F.softplus(-d) if ex.label else F.softplus(d)  # -log p(label) over {Yes, No}
        return loss, bool((d > 0) == ex.label)
    rc = reward.score(load_views(ex.chosen, size), ex.prompt)["reward"]
    rr = reward.score(load_views(ex.rejected, size), ex.prompt)["reward"]
    return F.softplus(rr - rc), bool(rc > rr)


def train_reward(cfg: TrainRewardConfig) -> Path:
    """``splatvlm train-reward DATA.jsonl -o ADAPTER_DIR``: train and save a LoRA adapter; returns its folder."""
    from peft import LoraConfig, get_peft_model
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    # 1. check inputs before loading anything heavy
    if cfg.rank < 1 or cfg.steps < 1 or cfg.batch < 1 or cfg.lr <= 0:
        raise SplatVLMError("--rank, --steps and --batch must be at least 1 and --lr positive")
    if not 0 <= cfg.holdout < 1:
        raise SplatVLMError(f"--holdout must be in [0, 1), got {cfg.holdout}")
    if cfg.vlm.lora:
        raise SplatVLMError("train-reward trains a new adapter; drop --vlm.lora")
    bad = sorted(set(cfg.targets) - set(DEFAULT_TARGETS))
    if bad or not cfg.targets:
        raise SplatVLMError(
            f"--targets must be among {', '.join(DEFAULT_TARGETS)}; got {', '.join(bad) or 'none'}"
        )
    examples = read_reward_data(cfg.data)
    out = check_adapter_output(cfg.output, cfg.overwrite)

    # 2. split
    rng = random.Random(cfg.seed)
    order = list(range(len(examples)))
    rng.shuffle(order)
    n_hold = 0 if cfg.holdout == 0 or len(examples) < 2 else max(1, round(cfg.holdout * len(examples)))
    held = [examples[i] for i in order[:n_hold]]
    train = [examples[i] for i in order[n_hold:]]

    # 3. model with a fresh LoRA on the language model
    torch.manual_seed(cfg.seed)
    reward = VLMReward(cfg.vlm, cfg.device)
    lcfg = LoraConfig(
        r=cfg.rank,
        lora_alpha=cfg.alpha,
        lora_dropout=cfg.dropout,
        target_modules=r".*language_model\.layers\.\d+\.(self_attn|mlp)\.(" + "|".join(cfg.targets) + ")",
        bias="none",
    )
    peft_model = get_peft_model(reward.model, lcfg)
    params = [p for p in peft_model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=0.0)

    # 4. train
    console = Console()
    reward.model.train()
    losses: list[float] = []
    hits: list[bool] = []
    columns = (TextColumn("train-reward"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
               TextColumn("{task.fields[info]}"))  # fmt: skip
    with Progress(*columns, console=console, transient=False) as progress:
        task = progress.add_task("train", total=cfg.steps, info="")
        for _step in range(cfg.steps):
            opt.zero_grad(set_to_none=True)
            for _ in range(cfg.batch):
                loss, hit = example_loss(reward, train[rng.randrange(len(train))])
                (loss / cfg.batch).backward()
                losses.append(float(loss.detach()))
                hits.append(hit)
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            recent = slice(-8 * cfg.batch, None)
            info = f"loss {sum(losses[recent]) / len(losses[recent]):.4f}  acc {sum(hits[recent]) / len(hits[recent]):.2f}"
            progress.update(task, advance=1, info=info)

    # 5. held-out accuracy
    reward.model.eval()
    correct = 0
    with torch.no_grad():
        for ex in held:
            correct += example_loss(reward, ex)[1]
    acc = correct / len(held) if held else float("nan")
    if held:
        console.print(f"held-out accuracy: {acc:.3f} ({correct}/{len(held)})", highlight=False)
    else:
        console.print(
            "held-out accuracy: n/a (no held-out records; use more data or --holdout)", highlight=False
        )

    # 6. save atomically: a temporary sibling folder renamed into place
    peft_model.peft_config["default"].base_model_name_or_path = cfg.vlm.model
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp.", dir=out.parent))
    try:
        peft_model.save_pretrained(str(tmp), safe_serialization=True, save_embedding_layers=False)
        meta = {
            "heldout_accuracy": None if not held else acc,
            "heldout_records": len(held),
            "train_records": len(train),
            "final_train_loss": sum(losses[-8 * cfg.batch :]) / len(losses[-8 * cfg.batch :]),
            "config": json.loads(json.dumps(dataclasses.asdict(cfg), default=str)),
        }
        (tmp / "train_reward.json").write_text(json.dumps(meta, indent=2), encoding="utf-8")
        _publish_dir(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    console.print(f"wrote LoRA adapter to {out}", highlight=False)
    return out
