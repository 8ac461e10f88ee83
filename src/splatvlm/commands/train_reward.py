"""``splatvlm train-reward``: train a LoRA adapter (peft) for the reward VLM on labeled renders or pairs.

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
a temporary folder and renamed into place, with the modes of any new file or folder (the umask's).

A tiny example data set ships in the repository's examples/reward_data/.
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

from ..errors import SplatVLMError
from ..guidance.adapters import DEFAULT_TARGETS
from ..guidance.reward import RewardConfig, VLMReward
from ..guidance.vlm_views import resize_views
from ..models import load_reward

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
    from ..files import check_image

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
    from ..files import check_regular_file

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
                raise SplatVLMError(
                    f"{where}: not a JSON record (nested too deeply or a number too long)"
                ) from None
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
    """Fine-tune a LoRA adapter for the reward VLM on labeled renders or preference pairs.

    DATA is JSONL, one record per line, image paths relative to the file. A labeled view set (should the
    VLM answer Yes for these views?):

    {"images": ["cat/0.png", "cat/1.png"], "prompt": "a cat", "label": "yes"}

    or a preference pair:

    {"images_chosen": ["good/0.png"], "images_rejected": ["bad/0.png"], "prompt": "a cat"}

    Example data: examples/reward_data/ in the repository (offline: --vlm.model demo).
    """

    data: Annotated[Path, tyro.conf.Positional, tyro.conf.arg(metavar="DATA")]
    """JSONL training data: labeled view sets and/or preference pairs (the format above)."""
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


def umask_modes(folder: Path) -> None:
    """Give ``folder`` and everything in it the modes a new folder and file get here (0755 and 0644 under
    the usual umask 022): mkdtemp makes its folder private (0700), and a shared adapter must be readable."""
    mask = os.umask(0)
    os.umask(mask)
    for root, dirs, files in os.walk(folder):
        for name in dirs:
            os.chmod(Path(root) / name, 0o777 & ~mask)
        for name in files:
            os.chmod(Path(root) / name, 0o666 & ~mask)
    os.chmod(folder, 0o777 & ~mask)


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
    console = Console()
    console.print(f"loading the reward VLM ({cfg.vlm.model}) ...", highlight=False)
    reward = load_reward(cfg.vlm, cfg.device)
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
        umask_modes(tmp)
        _publish_dir(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    console.print(f"wrote LoRA adapter to {out}", highlight=False)
    return out
