"""Run folders: what identifies a run (its prompt and recipe hash), the checks before one is resumed or a
batch folder reused, building aside and swapping in (``--overwrite``), metrics cut back on resume, batch
reports and the GPTEval3D tree of a prompt file.
"""

from __future__ import annotations

import hashlib
import json
import os
import shlex
import shutil
from pathlib import Path
from typing import Any

from rich.console import Console

from ..config import RunConfig, apply_overrides, read_yaml, to_dict
from ..errors import SplatVLMError
from ..files import atomic_write_text, check_output_dir
from ..prompts import where_of

console = Console(stderr=True)  # every run's and batch's messages (stderr: stdout stays for data)


# Settings that change how fast a run goes, or what it logs, and not what it makes (beyond rounding): runs that
# differ only in these share a recipe, so a batch continues after a speed flag or a speed default changed.
EXECUTION_ONLY = frozenset(
    {
        "log_every", "checkpoint_every", "max_bad_steps", "tensorboard", "parallel_terms", "long_pole_priority",
        "render.torch_chunk",
        "sds.attention", "sds.vae_attention", "sds.channels_last", "sds.compile", "sds.compile_vae", "sds.cuda_graph",
        "sds.compile_vae_channels_last", "vlm.attn_implementation", "vlm.gradient_checkpointing", "vlm.compile",
        "vlm.pad_gemm", "vlm.fast", "vlm.cuda_graph", "vlm.fuse_gemm", "vlm.prefix_cache",
        "vlm.varlen_attention",
    }
)  # fmt: skip


def recipe_dict(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """A config dict without its EXECUTION_ONLY settings."""
    out = {}
    for key, value in d.items():
        name = f"{prefix}{key}"
        if name in EXECUTION_ONLY:
            continue
        out[key] = recipe_dict(value, f"{name}.") if isinstance(value, dict) else value
    return out


def recipe_hash(cfg: RunConfig) -> str:
    """What identifies a recipe: a hash of the resolved config, its execution-only settings left out."""
    text = json.dumps(recipe_dict(to_dict(cfg)), sort_keys=True, default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def resume_command(run_dir: Path) -> str:
    return f"splatvlm generate --resume {shlex.quote(str(run_dir))}"


def cut_metrics(path: Path, step: int) -> None:
    """Drop the log records of steps at or after ``step`` (done after the checkpoint, so done again)."""
    if not path.exists():
        return
    kept = []
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            rec = json.loads(line)
        except ValueError:
            continue  # a line cut short by a kill
        if isinstance(rec, dict) and isinstance(rec.get("step"), int) and rec["step"] < step:
            kept.append(line)
    atomic_write_text(path, "".join(k + "\n" for k in kept))


def aside_dir(run_dir: Path) -> Path:
    """Where an --overwrite builds the new run before it replaces ``run_dir``."""
    return run_dir.with_name(f".{run_dir.name}.overwrite")


def swap_in(new: Path, target: Path) -> None:
    """Replace run folder ``target`` by ``new``: two renames; the old folder is deleted last."""
    old = target.with_name(f".{target.name}.old")
    shutil.rmtree(old, ignore_errors=True)
    if target.exists():
        os.rename(target, old)
    os.rename(new, target)
    shutil.rmtree(old, ignore_errors=True)


def recover_swap(target: Path) -> None:
    """Undo a swap cut between its two renames: the old run comes back."""
    old = target.with_name(f".{target.name}.old")
    if not target.exists() and old.is_dir():
        os.rename(old, target)
        console.print(f"restored {target} (an earlier --overwrite was cut off while replacing it)")


def last_metrics(run_dir: Path) -> dict[str, Any]:
    last: dict[str, Any] = {}
    path = run_dir / "metrics.jsonl"
    if path.exists():
        for line in path.read_text(encoding="utf-8").splitlines():
            if line.strip():
                rec = json.loads(line)
                last.update({k: v for k, v in rec.items() if isinstance(v, int | float)})
    return last


def yaml_dict(text: str) -> dict[str, Any]:
    import yaml

    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError:
        return {}
    return data if isinstance(data, dict) else {}


def config_differences(a: dict[str, Any], b: dict[str, Any], prefix: str = "") -> list[str]:
    """Dotted keys whose values differ between two config dicts."""
    out = []
    for key in sorted(set(a) | set(b), key=str):
        va, vb = a.get(key), b.get(key)
        if isinstance(va, dict) and isinstance(vb, dict):
            out += config_differences(va, vb, f"{prefix}{key}.")
        elif va != vb:
            out.append(f"{prefix}{key}")
    return out


def check_batch_folders(prompts: list[str], run_dirs: list[Path], cfg: RunConfig) -> None:
    """A run folder already in the out-dir must hold this prompt, made with this recipe.

    "Done already" is then keyed by the prompt text and the recipe, not by the folder name: a changed
    prompt or setting is refused with the reason, never silently answered with the old object.
    """
    where = where_of(prompts)
    want = recipe_hash(cfg)
    for i, (prompt, run_dir) in enumerate(zip(prompts, run_dirs, strict=True)):
        info_path = run_dir / "run.json"
        if not info_path.is_file():
            continue
        try:
            info = json.loads(info_path.read_text(encoding="utf-8"))
        except (ValueError, UnicodeDecodeError):
            raise SplatVLMError(
                f"{info_path} is not valid JSON; remove {run_dir} to re-run {where[i]}"
            ) from None
        if not isinstance(info, dict):
            raise SplatVLMError(
                f"{info_path} is not a run description; remove {run_dir} to re-run {where[i]}"
            )
        if info.get("prompt") != prompt:
            raise SplatVLMError(
                f"{where[i]} is {prompt[:60]!r} but {run_dir} holds {str(info.get('prompt'))[:60]!r}; "
                "use another --out-dir (or move that folder away)"
            )
        # The recipe from the folder's config.yaml when it reads (the stored hash may be an older recipe_hash's).
        saved = None
        if (run_dir / "config.yaml").is_file():
            try:
                saved = apply_overrides(RunConfig(), read_yaml(run_dir / "config.yaml"))
            except SplatVLMError:
                saved = None  # settings of another version: the stored hash decides
        have = recipe_hash(saved) if saved is not None else info.get("recipe")
        if have != want:
            changed = []
            if saved is not None:
                changed = config_differences(recipe_dict(to_dict(saved)), recipe_dict(to_dict(cfg)))
            detail = f" (differs in: {', '.join(changed[:8])})" if changed else ""
            raise SplatVLMError(
                f"{run_dir} ({where[i]}) was made with another recipe{detail}; use another --out-dir, or "
                "remove that folder to re-run it with this one"
            )


def print_batch_summary(report: dict[str, Any], path: Path) -> None:
    """The end-of-batch lines: counts by status, each failure with its reason, the total time."""
    entries = report["prompts"]
    counts = {
        s: sum(e["status"] == s for e in entries)
        for s in ("done", "already_done", "stopped", "failed", "missing")
    }
    where = f" over {report['world_size']} processes" if report["world_size"] > 1 else ""
    rate = f" ({report['prompts_per_hour']:.1f} prompts/hour)" if counts["done"] else ""  # none: no rate
    console.print(
        f"batch{where}: {counts['done']} done, {counts['already_done']} skipped (done before), "
        f"{counts['failed']} failed, {counts['stopped']} stopped, {counts['missing']} missing; "
        f"{report['wall_s']:.1f} s{rate}; report in {path}"
    )
    for e in entries:
        if e["status"] == "failed":
            console.print(f"  failed [{e['index']}] {e['prompt']}: {e['error']}")


def gpteval3d_tree(out_dir: Path, prompt_set: str, prompts: list[str]) -> Path:
    """``out_dir/gpteval3d/<prompt_set>``, made once per prompt file; another file of the same name is refused."""
    root = check_output_dir(check_output_dir(out_dir / "gpteval3d") / prompt_set)
    record = root / "prompts.json"
    text = json.dumps(prompts, indent=1)
    if record.is_file():
        if json.loads(record.read_text(encoding="utf-8")) != prompts:
            raise SplatVLMError(
                f"{root} holds GPTEval3D renders of a different prompt file named '{prompt_set}'; "
                "rename the prompt file or use another --out-dir"
            )
    else:
        atomic_write_text(record, text)
    return root


def read_summary(run_dir: Path) -> dict[str, Any]:
    return json.loads((run_dir / "summary.json").read_text(encoding="utf-8"))


def batch_report(
    prompts: list[str], run_dirs: list[Path], parts: list[dict[str, Any]], placement: str, wall_s: float
) -> dict[str, Any]:
    """Every prompt of a batch in index order, with its status, output and timing, from the ranks' results.

    status: 'done' (finished in this run), 'already_done' (finished before it), 'stopped' (--stop-after),
    'failed' (``error`` says why; a re-run tries it again), 'missing' (no rank reported it; a re-run picks it up). ``seconds`` is the summary's run time (for
    'already_done', the earlier run's); ``prompts_per_hour`` counts the prompts finished in this run.
    """
    entries = []
    for index, prompt in enumerate(prompts):
        found = [(p["rank"], *p["results"][index]) for p in parts if index in p["results"]]
        rank, status, summary = found[0] if found else (None, "missing", {})
        error = summary.get("error") if status == "failed" else None
        summary = {} if status == "failed" else summary
        entries.append(
            {
                "index": index,
                "prompt": prompt,
                "run_dir": str(run_dirs[index]),
                "status": status,
                "rank": None if status == "already_done" else rank,
                "output": summary.get("output"),
                "steps": summary.get("steps"),
                "seconds": summary.get("seconds"),
                "error": error,
                "summary": summary,
            }
        )
    done_now = sum(e["status"] == "done" for e in entries)
    return {
        "num_prompts": len(prompts),
        "world_size": len(parts),
        "placement": placement,
        "devices": [p["device"] for p in sorted(parts, key=lambda p: p["rank"])],
        "wall_s": round(wall_s, 3),
        "prompts_per_hour": round(done_now * 3600 / max(round(wall_s, 3), 1e-9), 2),
        "sharding": "pending indices at start, dealt round-robin: rank r of W takes pending[r::W]",
        "shards": {
            str(p["rank"]): sorted(i for i, (s, _) in p["results"].items() if s != "already_done")
            for p in parts
        },
        "prompts": entries,
    }
