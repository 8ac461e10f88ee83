"""Run folders: what identifies a run (its prompt and recipe hash), the checks before one is resumed or a
batch folder reused, building aside and swapping in (``--overwrite``), metrics cut back on resume, batch
reports and the GPTEval3D tree of a prompt file.

What a run may delete or replace is what it made: a run folder carries a random id in its run.json, made
when the folder was; a folder without one is never written into, replaced or deleted. An ``--overwrite``
records the id of the folder it replaces, and the swap checks it; an output file is replaced only when
``--overwrite`` was given or it is the very file (device and inode) that the run recorded.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import secrets
import shlex
import shutil
import stat
from pathlib import Path
from typing import Any, Literal

from rich.console import Console

from ..config import RunConfig, apply_overrides, read_yaml, to_dict
from ..errors import SplatVLMError
from ..files import (
    LOCK_NAME,
    atomic_write_text,
    check_output_dir,
    ignore_in_git,
    is_our_gitignore,
    is_temp_name,
)
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


# ---------------------------------------------------------------------------------------------------
# Which folders and files are a run's own

RUN_INFO = "run.json"
_RUN_ID = re.compile(r"^[0-9a-f]{32}$")
FolderKind = Literal["missing", "empty", "ours", "legacy", "foreign"]


def new_run_id() -> str:
    return secrets.token_hex(16)


def read_run_info(folder: Path) -> dict[str, Any] | None:
    """``folder/run.json`` as a dict, when ``folder`` is a real folder (not a symlink) and run.json a regular
    file holding a JSON object; None otherwise (never follows a symlink, never blocks on a FIFO)."""
    try:
        if not stat.S_ISDIR(os.lstat(folder).st_mode):
            return None
        fd = os.open(folder / RUN_INFO, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return None
    with os.fdopen(fd, "rb") as f:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return None
        data = f.read((1 << 20) + 1)
    if len(data) > 1 << 20:
        return None
    try:
        info = json.loads(data.decode("utf-8"))
    except (ValueError, UnicodeDecodeError):
        return None
    return info if isinstance(info, dict) else None


def run_id(folder: Path) -> str | None:
    """The run id in ``folder/run.json`` (see ``read_run_info``), or None."""
    info = read_run_info(folder)
    rid = info.get("id") if info is not None else None
    return rid if isinstance(rid, str) and _RUN_ID.match(rid) else None


def folder_kind(folder: Path) -> FolderKind:
    """What is at ``folder``: nothing; a real folder holding nothing but our lock and temporary files; a run
    folder of ours (run.json with a run id); a run folder of an older splatvlm (run.json with a prompt, no
    id); or something else (a file, a symlink, a folder of other files)."""
    try:
        st = os.lstat(folder)
    except FileNotFoundError:
        return "missing"
    if not stat.S_ISDIR(st.st_mode):
        return "foreign"
    info = read_run_info(folder)
    if info is not None and run_id(folder) is not None:
        return "ours"
    if info is not None and isinstance(info.get("prompt"), str):
        return "legacy"
    try:
        names = os.listdir(folder)
    except OSError:
        return "foreign"
    if all(
        n == LOCK_NAME or is_temp_name(n) or (n == ".gitignore" and is_our_gitignore(folder / n))
        for n in names
    ):
        return "empty"
    return "foreign"


def not_ours(folder: Path, hint: str) -> str:
    """Why ``folder`` is not taken as a run folder, with what to do (``hint``)."""
    if os.path.islink(folder):
        what = "is a symbolic link"
    elif os.path.lexists(folder) and not os.path.isdir(folder):
        what = "exists and is not a folder"
    else:
        what = "exists and is not a splatvlm run folder (it holds other files)"
    return f"{folder} {what}; a run writes only into a folder it made: {hint}"


def claim_run_folder(folder: Path, hint: str = "choose another --run-dir, or move it away") -> None:
    """Make ``folder`` for a run, or take it when it is ours already; anything else is refused, untouched.

    Ours: a run folder with a run id (or of an older splatvlm, by its run.json), or an empty folder.
    """
    kind = folder_kind(folder)
    if kind == "foreign":
        raise SplatVLMError(not_ours(folder, hint))
    if kind == "missing":
        if not folder.parent.is_dir():
            raise SplatVLMError(f"parent folder {folder.parent} of run folder {folder} does not exist")
        try:
            os.mkdir(folder)
        except FileExistsError:  # made since we looked: judge what is there now
            return claim_run_folder(folder, hint)
        except OSError as e:
            raise SplatVLMError(f"cannot create run folder {folder}: {e.strerror}") from None
        ignore_in_git(folder)  # made here: a run folder inside a git checkout shows as nothing to commit
    if not os.access(folder, os.W_OK):
        raise SplatVLMError(f"run folder {folder} is not writable")


def update_run_info(run_dir: Path, **changes: Any) -> dict[str, Any]:
    """Rewrite run.json with ``changes`` (atomically); returns the new contents."""
    info = {**(read_run_info(run_dir) or {}), **changes}
    atomic_write_text(run_dir / RUN_INFO, json.dumps(info, indent=2))
    return info


def file_identity(path: Path) -> list[int] | None:
    """[device, inode] of what is at ``path`` (a symlink itself, not its target), or None."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return None
    return [st.st_dev, st.st_ino]


def check_output_replaceable(output: Path, info: dict[str, Any], overwrite: bool) -> None:
    """Refuse to replace a file at ``output`` that the run may not: it may when nothing is there, when this
    invocation has --overwrite, or when it is the very file the run recorded in run.json (``output_owned``:
    the one --overwrite was given for at the run's start, or the one the run wrote itself)."""
    have = file_identity(output)
    if have is None or overwrite or have == info.get("output_owned"):
        return
    raise SplatVLMError(
        f"output {output} exists and is not this run's (it appeared after the run started); move it away, "
        "then run again"
    )


def aside_dir(run_dir: Path) -> Path:
    """Where an --overwrite builds the new run before it replaces ``run_dir``."""
    return run_dir.with_name(f".{run_dir.name}.overwrite")


def old_dir(target: Path) -> Path:
    """Where a swap keeps the replaced run between its two renames."""
    return target.with_name(f".{target.name}.old")


def replaced_folder(run_dir: Path, info: dict[str, Any]) -> tuple[Path, str] | None:
    """The run folder ``run_dir`` replaces when it finishes (an --overwrite built aside), with the run id it
    must still hold, from run.json; checked: only the folder ``run_dir`` was built beside, by its id."""
    rec = info.get("replaces")
    if rec is None:
        return None
    if (
        not isinstance(rec, dict)
        or not isinstance(rec.get("path"), str)
        or not isinstance(rec.get("id"), str)
    ):
        raise SplatVLMError(
            f"{run_dir}/run.json names a folder to replace without its run id (an older splatvlm's "
            "--overwrite?); start the overwrite again"
        )
    target = Path(rec["path"])
    if not target.is_absolute() or aside_dir(target) != run_dir.absolute() or not _RUN_ID.match(rec["id"]):
        raise SplatVLMError(
            f"{run_dir}/run.json names {rec['path'][:200]!r} to replace, which is not the folder this run was "
            "built beside; nothing is replaced (start a new run)"
        )
    return target, rec["id"]


def swap_in(new: Path, target: Path, expect_id: str) -> None:
    """Replace run folder ``target`` by ``new`` (built beside it): two renames; the old folder is deleted last.

    Only the run the overwrite was started on is replaced: ``target`` must still hold run id ``expect_id``
    (a missing ``target`` is simply filled); anything else is left as it is, with the new run in ``new``.
    """
    if aside_dir(target.absolute()) != new.absolute():
        raise SplatVLMError(f"{new} was not built beside {target}; nothing is replaced")
    old = old_dir(target)
    if os.path.lexists(old):  # the replaced run of a swap cut before its last step
        if folder_kind(old) != "ours":
            raise SplatVLMError(
                f"{old} is in the way and is not a run folder; move it away, then --resume {new}"
            )
        shutil.rmtree(old)
    moved = False
    if os.path.lexists(target):
        if run_id(target) != expect_id:
            raise SplatVLMError(
                f"{target} no longer holds the run this --overwrite replaces; it is left as it is, and the new "
                f"run stays in {new}"
            )
        os.rename(target, old)
        moved = True
    os.rename(new, target)
    if moved:
        shutil.rmtree(old, ignore_errors=True)


def recover_swap(target: Path) -> None:
    """Undo a swap cut between its two renames: the old run comes back (only a run folder of ours)."""
    old = old_dir(target)
    if not os.path.lexists(target) and folder_kind(old) == "ours":
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
        kind = folder_kind(run_dir)
        if kind == "foreign":  # a symlink out of the out-dir, a file, a folder of other files
            raise SplatVLMError(
                not_ours(run_dir, f"move it away to run {where[i]} (or use another --out-dir)")
            )
        if kind in ("missing", "empty"):
            continue
        info = read_run_info(run_dir) or {}
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
    for part in (out_dir / "gpteval3d", out_dir / "gpteval3d" / prompt_set):  # the batch stays in its out-dir
        if part.is_symlink():
            raise SplatVLMError(
                f"{part} is a symbolic link; a batch writes only inside its out-dir {out_dir}"
            )
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
