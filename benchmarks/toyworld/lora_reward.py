"""The toy reward trained through `splatvlm train-reward` (LoRA on the language model) instead of a full fine-tune.

Issue 13: "Train it through `train-reward` (LoRA) where that can learn". This renders the toy world as
``toyworld build`` does (``world_renders`` after ``torch.manual_seed(seed)``), takes the build's TRAINING records
(``reward_records(held=False)``) and writes the full fine-tune's own sample stream as train-reward data: the
build's batches (two positives, two negatives drawn by ``NEGATIVE_SHARES``, from ``random.Random(seed)``), each
record composited over the background the build draws for it (generator ``seed + 2``), for ``--data-steps``
steps. Each sample becomes 4 PNG views plus one JSONL line (label yes for positives, no for negatives), so
train-reward's uniform draw over the lines keeps the build's shares: half positive, the negatives 35 % other
object, 35 % Janus, 10 % half-opaque ball, 20 % initial faint ball.

The base is a fresh random demo-size Qwen2.5-VL from ``build_reward_folder(folder, seed)``, the one the full
fine-tune starts from. ``splatvlm train-reward`` runs on it in a subprocess with ``OMP_NUM_THREADS=1`` (it has
no thread flag) and ``--holdout 0``; the adapter is then scored on the build's HELD-OUT records
(``reward_records(held=True)``) with the build's rule (correct: ``logit_yes - logit_no > 0`` exactly for the
positives, fast path, clean views) over the backgrounds the shipped build drew for them: generator ``seed + 2``
advanced past the 4 x ``--bg-after`` training composites (15000 steps as shipped). ``--check-shipped`` scores the
shipped full fine-tune the same way (it must give the build.json numbers); the untrained base is scored too.

    python benchmarks/toyworld/lora_reward.py --tag r16-lr1e-4 --steps 3000 --rank 16 --lr 1e-4 \
        [--work /tmp/lora_toy] [--check-shipped] [-o benchmarks/results/2026-12-02-cpu-toyworld-lora-reward.json]

Runs with several tags merge into the one output JSON (keyed by tag).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import time
from pathlib import Path

import torch
from PIL import Image

from splatvlm.guidance.reward import RewardConfig
from splatvlm.hub import quiet_model_io
from splatvlm.models import load_reward
from splatvlm.toyworld import models as M
from splatvlm.toyworld.reward_model import (
    NEGATIVE_SHARES,
    batch_draw,
    build_reward_folder,
    record_source,
    reward_records,
)
from splatvlm.toyworld.world import world

ROOT = Path(__file__).resolve().parents[2]
SHIPPED = ROOT / "src" / "splatvlm" / "toyworld" / "weights" / "reward"
OUTPUT = ROOT / "benchmarks" / "results" / "2026-12-02-cpu-toyworld-lora-reward.json"
KINDS = ("positive", "other", "janus", "blob", "start")


def renders(seed: int) -> tuple[dict, dict, dict, dict]:
    """Objects, Janus variants, shapeless balls (as ``build`` renders them) and the captions."""
    torch.manual_seed(seed)
    return *M.world_renders(M.BuildConfig(seed=seed)), {o.name: o.caption for o in world()}


def write_training_data(folder: Path, seed: int, steps: int, data, janus, shapeless, captions) -> Path:
    """The full fine-tune's first ``steps`` batches as PNG 4-view sets + ``train.jsonl``; returns the JSONL."""
    jsonl = folder / "train.jsonl"
    stamp = folder / "spec.json"
    spec = {"seed": seed, "data_steps": steps, "shares": NEGATIVE_SHARES}
    if jsonl.is_file() and stamp.is_file() and json.loads(stamp.read_text()) == spec:
        return jsonl
    (folder / "img").mkdir(parents=True, exist_ok=True)
    rng, gen = random.Random(seed), torch.Generator().manual_seed(seed + 2)  # the build's two draws
    draw = batch_draw(reward_records(data, janus, shapeless, False), NEGATIVE_SHARES, rng)
    lines = []
    for step in range(steps):
        for b, rec in enumerate(draw()):
            src, i = record_source(rec, data, janus, shapeless), rec[3]
            views = M.composite(src.rgb[i : i + 1], src.alpha[i : i + 1], gen)[0].clamp(0, 1)
            names = []
            for v in range(views.shape[0]):
                name = f"img/{step:05d}-{b}-{v}.png"
                Image.fromarray((views[v] * 255).round().to(torch.uint8).numpy()).save(folder / name)
                names.append(name)
            label = "yes" if rec[1] == "positive" else "no"
            lines.append(
                json.dumps({"images": names, "prompt": captions[rec[0]], "label": label, "kind": rec[1]})
            )
    jsonl.write_text("\n".join(lines) + "\n")
    stamp.write_text(json.dumps(spec))
    return jsonl


@torch.no_grad()
def heldout_accuracy(cfg: RewardConfig, seed: int, bg_after: int, data, janus, shapeless, captions) -> dict:
    """Per-kind held-out accuracy with the build's rule, over the shipped build's held-out backgrounds."""
    gen = torch.Generator().manual_seed(seed + 2)
    one = next(iter(data.values()))
    for _ in range(4 * bg_after):  # the training composites the build draws before it scores (one group each)
        M.composite(one.rgb[:1], one.alpha[:1], gen)
    reward = load_reward(cfg, "cpu")
    reward.model.eval()
    hits: dict[str, list[bool]] = {}
    for rec in reward_records(data, janus, shapeless, True):
        src, i = record_source(rec, data, janus, shapeless), rec[3]
        s = reward.score(
            M.composite(src.rgb[i : i + 1], src.alpha[i : i + 1], gen)[0], captions[rec[0]], fast=True
        )
        hits.setdefault(rec[1], []).append(
            bool((s["logit_yes"] - s["logit_no"] > 0) == (rec[1] == "positive"))
        )
    return {
        "accuracy": {k: round(sum(hits[k]) / len(hits[k]), 3) for k in KINDS},
        "counts": {k: f"{sum(hits[k])}/{len(hits[k])}" for k in KINDS},
    }


def reward_cfg(model: Path, lora: list[str] | None = None) -> RewardConfig:
    return RewardConfig(
        model=str(model), size=M.REWARD_SIZE, dtype="float32", cuda_graph=False, lora=lora or []
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tag", required=True, help="name of this configuration in the output JSON")
    ap.add_argument(
        "--work", type=Path, default=Path("/tmp/lora_toy"), help="scratch folder (data, base, adapters)"
    )
    ap.add_argument("--seed", type=int, default=0, help="the build's seed (renders, base, batches)")
    ap.add_argument(
        "--data-steps", type=int, default=3000, help="build batches written as training data (x4 lines)"
    )
    ap.add_argument("--steps", type=int, default=3000, help="train-reward optimizer steps (batch 4)")
    ap.add_argument("--rank", type=int, default=16)
    ap.add_argument(
        "--alpha", type=float, default=None, help="LoRA alpha (default: 2 x rank, train-reward's ratio)"
    )
    ap.add_argument("--lr", type=float, default=1e-4)
    ap.add_argument("--dropout", type=float, default=0.05)
    ap.add_argument("--targets", nargs="+", default=None, help="train-reward --targets (default: all seven)")
    ap.add_argument("--bg-after", type=int, default=15000, help="build steps before its held-out scoring")
    ap.add_argument("--check-shipped", action="store_true", help="also score the shipped full fine-tune")
    ap.add_argument("-o", "--output", type=Path, default=OUTPUT)
    args = ap.parse_args()
    torch.set_num_threads(1)
    args.work.mkdir(parents=True, exist_ok=True)
    alpha = args.alpha if args.alpha is not None else 2.0 * args.rank

    t0 = time.perf_counter()
    data, janus, shapeless, captions = renders(args.seed)
    print(f"rendered in {time.perf_counter() - t0:.0f} s", flush=True)
    jsonl = write_training_data(
        args.work / "data", args.seed, args.data_steps, data, janus, shapeless, captions
    )
    base = args.work / f"base-seed{args.seed}"
    if not (base / "config.json").is_file():
        with quiet_model_io():
            build_reward_folder(base, args.seed)
    score = lambda cfg: heldout_accuracy(cfg, args.seed, args.bg_after, data, janus, shapeless, captions)

    out = json.loads(args.output.read_text()) if args.output.is_file() else {}
    out.update(
        date="2026-12-02",
        device="2-core CPU (1 thread)",
        script="benchmarks/toyworld/lora_reward.py",
        heldout=(
            "the build's held-out records (reward_records(held=True)), the build's rule (logit_yes - logit_no > 0 "
            f"exactly for the positives, fast path, clean float views) over the backgrounds the shipped build drew "
            f"for them (generator seed + 2 after 4 x {args.bg_after} training composites)"
        ),
        training_data=(
            f"the full fine-tune's first {args.data_steps} batches (its records, shares and backgrounds) as "
            f"{4 * args.data_steps} JSONL lines of 4 PNG views (32 px, uint8); train-reward draws lines uniformly"
        ),
    )
    if args.check_shipped:
        out["shipped_full_finetune_rescored"] = score(reward_cfg(SHIPPED))
        print("shipped", out["shipped_full_finetune_rescored"], flush=True)
    if "random_base" not in out:
        out["random_base"] = score(reward_cfg(base))
        print("random base", out["random_base"], flush=True)

    adapter = args.work / f"adapter-{args.tag}"
    cmd = ["splatvlm", "train-reward", str(jsonl), "-o", str(adapter), "--vlm.model", str(base),
           "--vlm.size", str(M.REWARD_SIZE), "--vlm.dtype", "float32", "--vlm.no-cuda-graph",
           "--rank", str(args.rank), "--alpha", str(alpha), "--dropout", str(args.dropout), "--lr", str(args.lr),
           "--steps", str(args.steps), "--batch", "4", "--holdout", "0", "--seed", str(args.seed),
           "--device", "cpu", "--overwrite"]  # fmt: skip
    if args.targets:
        cmd += ["--targets", *args.targets]
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    exe = Path(sys.executable).with_name("splatvlm")
    print(" ".join(cmd), flush=True)
    t0 = time.perf_counter()
    subprocess.run([str(exe), *cmd[1:]], env=env, check=True)
    train_s = time.perf_counter() - t0
    meta = json.loads((adapter / "train_reward.json").read_text())
    result = score(reward_cfg(base, [str(adapter)]))
    print(args.tag, f"{train_s:.0f} s", result, flush=True)
    out.setdefault("runs", {})[args.tag] = {
        "command": " ".join(cmd),
        "config": {
            "rank": args.rank,
            "alpha": alpha,
            "lr": args.lr,
            "steps": args.steps,
            "batch": 4,
            "dropout": args.dropout,
            "targets": args.targets or meta["config"]["targets"],
            "data_steps": args.data_steps,
            "seed": args.seed,
        },
        "train_s": round(train_s, 1),
        "note": "train_s: the whole train-reward process (model load, training, save)",
        "final_train_loss": round(meta["final_train_loss"], 4),
        **result,
    }
    args.output.write_text(json.dumps(out, indent=1) + "\n")
    print(f"wrote {args.output}", flush=True)


if __name__ == "__main__":
    main()
