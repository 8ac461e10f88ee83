"""A file of prompts: one run folder per prompt under one --out-dir, skipping finished prompts, resuming
interrupted ones, sharing the prompts out over torchrun's processes, and a batch report at the end.
"""

from __future__ import annotations

import contextlib
import json
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from ..config import RunConfig, validate_run_config
from ..errors import SplatVLMError, StopRun
from ..files import RunLock, atomic_write_text, check_output_dir, ignore_in_git
from ..models import Sources
from ..prompts import slugify
from ..run import distributed
from ..run.runs import (
    batch_report,
    check_batch_folders,
    claim_run_folder,
    console,
    gpteval3d_tree,
    print_batch_summary,
    read_summary,
)
from .generate import Guidance, RunControl, check_sources, make_guidance, run_one


def run_batch(
    prompts: list[str], cfg: RunConfig, out_dir: Path, control: RunControl, prompt_set: str = "prompts"
) -> list[dict[str, Any]]:
    """One run folder per prompt (``DIR/<index>-<slug>``); finished ones are skipped, interrupted ones resumed.

    A failed prompt is reported and the batch goes on (``control.fail_fast`` stops it). With
    ``control.gpteval3d`` the renders of all prompts go into one GPTEval3D tree per prompt file,
    ``DIR/gpteval3d/<prompt_set>/<method>/<index in the file>/<seed>/``, so that two prompt files sharing
    ``DIR`` never write the same id; ``prompts.json`` there records the file the ids index into.

    Under torchrun each rank runs its share of the pending prompts (see ``distributed.py``); rank 0 then
    writes ``DIR/batch_report.json`` and returns the summaries of the prompts run in this call (finished or
    stopped; not those done before), the other ranks return [].

    A signal (Ctrl-C) stops the batch with a StopRun that says to run the same batch command again; on one
    process ``batch_report.json`` is written first (the interrupted prompt 'stopped', the rest 'missing').
    """
    validate_run_config(cfg)
    info = distributed.dist_info()
    if control.viewer.enabled and info.world_size > 1:
        raise SplatVLMError("--viewer serves one run; it cannot be used with several torchrun processes")
    new_folder = not Path(out_dir).exists()
    out_dir = check_output_dir(out_dir)
    if new_folder:
        ignore_in_git(out_dir)
    run_dirs = [out_dir / f"{index:03d}-{slugify(prompt)}" for index, prompt in enumerate(prompts)]
    # One batch per out-dir: rank 0 holds its lock (torchrun's other ranks work under it, each run
    # folder locked by the rank that runs it).
    out_lock = RunLock(out_dir, "batch folder") if info.is_main else contextlib.nullcontext()
    with out_lock:
        check_batch_folders(prompts, run_dirs, cfg)
        sources = check_sources(cfg, prompts)
        if control.gpteval3d:
            control = replace(control, gpteval3d_root=gpteval3d_tree(out_dir, prompt_set, prompts))
        return _run_batch(prompts, cfg, out_dir, run_dirs, control, info, sources)


def _run_batch(
    prompts: list[str],
    cfg: RunConfig,
    out_dir: Path,
    run_dirs: list[Path],
    control: RunControl,
    info: distributed.DistInfo,
    sources: Sources,
) -> list[dict[str, Any]]:
    guidance = make_guidance(cfg, control, info, sources)
    if not info.is_main:
        control = replace(control, progress=False)  # one progress bar per terminal
    tag = f"rank {info.rank}: " if info.world_size > 1 else ""
    t_start = time.perf_counter()
    with distributed.process_group(info, guidance.device) as group:
        # What is pending as rank 0 sees it, so that every rank deals the same list.
        pending = [i for i, d in enumerate(run_dirs) if not (d / "summary.json").is_file()]
        pending = distributed.broadcast(pending, group)
        mine = set(distributed.shard(pending, info.rank, info.world_size))
        results: dict[int, tuple[str, dict[str, Any]]] = {}  # index -> (status, summary)

        def stop(index: int, reason: str, exit_code: int, kind: str | None) -> None:
            results[index] = ("stopped", {})
            _stop_batch(reason, exit_code, kind, prompts, run_dirs, results, out_dir, control, info, guidance, t_start)  # fmt: skip

        for index, prompt in enumerate(prompts):
            run_dir = run_dirs[index]
            if index not in mine:
                if index not in pending and info.is_main:
                    console.print(f"[{index + 1}/{len(prompts)}] done already: {run_dir.name}")
                    results[index] = ("already_done", read_summary(run_dir))
                continue
            if (run_dir / "summary.json").is_file():  # finished since the list was made (another run)
                console.print(f"{tag}[{index + 1}/{len(prompts)}] done already: {run_dir.name}")
                results[index] = ("already_done", read_summary(run_dir))
                continue
            console.print(f"{tag}[{index + 1}/{len(prompts)}] {prompt}")
            try:
                claim_run_folder(run_dir, hint="move it away, or use another --out-dir")
                resume = (run_dir / "checkpoint.pt").is_file()
                summary = run_one(
                    prompt,
                    cfg,
                    run_dir / "scene.ply",
                    run_dir,
                    guidance,
                    control,
                    resume=resume,
                    prompt_id=index,
                )
            except KeyboardInterrupt:  # outside the training loop (loading, exports)
                stop(index, "interrupted (Ctrl-C)", 130, None)
            except Exception as e:
                # A signal stops the whole batch; anything else fails this prompt only (unless --fail-fast).
                if isinstance(e, StopRun) and e.exit_code != 3:
                    # The reason without run_one's "continue with" for this one run folder.
                    stop(index, str(e.__cause__ or e), e.exit_code, e.kind)
                if control.fail_fast:
                    raise
                reason = str(e) if isinstance(e, SplatVLMError | StopRun) else f"{type(e).__name__}: {e}"
                console.print(f"{tag}[{index + 1}/{len(prompts)}] failed: {reason}")
                results[index] = ("failed", {"error": reason})
                continue
            results[index] = ("done" if summary["finished"] else "stopped", summary)
        label = distributed.device_label(guidance.device, guidance.vlm_device or guidance.device)
        mine_part = {"rank": info.rank, "device": label, "results": results}
        parts = [mine_part] if group is None else distributed.gather(mine_part, group)
    if not info.is_main:
        return []
    report = batch_report(prompts, run_dirs, parts, control.placement, time.perf_counter() - t_start)
    atomic_write_text(out_dir / "batch_report.json", json.dumps(report, indent=2))
    print_batch_summary(report, out_dir / "batch_report.json")
    return [e["summary"] for e in report["prompts"] if e["summary"] and e["status"] in ("done", "stopped")]


def _stop_batch(
    reason: str,
    exit_code: int,
    kind: str | None,
    prompts: list[str],
    run_dirs: list[Path],
    results: dict[int, tuple[str, dict[str, Any]]],
    out_dir: Path,
    control: RunControl,
    info: distributed.DistInfo,
    guidance: Guidance,
    t_start: float,
) -> None:
    """Stop an interrupted batch: its report so far (one process: the others' results are out of reach),
    and a StopRun saying that the same batch command goes on (the CLI appends the command)."""
    written = ""
    if info.world_size == 1:
        label = distributed.device_label(guidance.device, guidance.vlm_device or guidance.device)
        parts = [{"rank": 0, "device": label, "results": results}]
        report = batch_report(prompts, run_dirs, parts, control.placement, time.perf_counter() - t_start)
        report["interrupted"] = reason
        atomic_write_text(out_dir / "batch_report.json", json.dumps(report, indent=2))
        written = f"; report in {out_dir / 'batch_report.json'}"
    stop = StopRun(
        f"{reason}{written}; finished prompts are skipped and this one resumes from its checkpoint when "
        "the same batch command runs again",
        exit_code,
        kind=kind,
    )
    stop.rerun_batch = True  # the CLI appends the command line
    raise stop from None
