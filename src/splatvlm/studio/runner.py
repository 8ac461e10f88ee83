"""The studio's worker: runs the queue's jobs one at a time, each as an ordinary run folder.

A job runs exactly as one prompt of ``splatvlm generate --prompts ... --out-dir`` does (``commands.batch``:
the sources checked, the folder checked against the prompt and recipe it holds, ``run_one`` under the folder's
lock, resumed from its checkpoint when it has one), so ``generate --resume`` and a batch over the same folder
see nothing unusual. The guidance models stay loaded from one job to the next while the recipe's models are
the same (seed and step count aside).
"""

from __future__ import annotations

import gc
import threading
import traceback
from collections.abc import Callable
from dataclasses import replace
from typing import Any

from ..errors import SplatVLMError, StopRun
from ..run.runs import check_batch_folders, console, recipe_hash
from .live import Display, LiveRun
from .presets import preset_config
from .queue import Job, JobQueue


class Runner:
    """A thread that takes the queue's next job whenever it is idle.

    Args:
        queue: the jobs.
        display: where the running job is shown (the Watch tab); None: nowhere.
        on_change: called (from the runner's thread) whenever a job starts or ends.
    """

    def __init__(
        self, queue: JobQueue, display: Display | None = None, on_change: Callable[[], None] | None = None
    ):
        self.queue = queue
        self.out_dir = queue.out_dir
        self.display = display
        self.on_change = on_change or (lambda: None)
        self.current: tuple[Job, LiveRun] | None = None
        # the job that ended last, and "finished", "stopped" or "failed"
        self.last: tuple[Job, str] | None = None
        self._wake = threading.Event()
        self._closing = False
        self._guidance: Any = None
        self._guidance_key: str | None = None
        self._thread = threading.Thread(target=self._loop, name="splatvlm-studio-runner", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def wake(self) -> None:
        """Look at the queue now (a job was added or queued again)."""
        self._wake.set()

    def close(self, timeout: float | None = None) -> None:
        """Stop the running job at its next step (it stays queued and resumes at the next start), then end."""
        self._closing = True
        current = self.current
        if current is not None:
            current[1].request_stop()
        self._wake.set()
        if self._thread.is_alive():
            self._thread.join(timeout)

    @property
    def idle(self) -> bool:
        return self.current is None

    # ------------------------------------------------------------------ the loop

    def _loop(self) -> None:
        while not self._closing:
            job = self.queue.take_next()
            if job is None:
                self._wake.wait(timeout=1.0)
                self._wake.clear()
                continue
            self._run(job)

    def _run(self, job: Job) -> None:
        """Run one job and record its end in the queue; an error fails this job only."""
        state, error = "failed", ""
        try:
            summary = self.run_job(job)
            if summary.get("finished"):
                state = "done"
            else:
                state = "queued" if self._closing else "stopped"
        except (SplatVLMError, StopRun) as e:
            error = str(e)
        except Exception as e:  # a bug must fail the job, not kill the studio's worker
            error = f"{type(e).__name__}: {e}"
            traceback.print_exc()
        finally:
            self.current = None
        if error:
            console.print(f"studio: {job.id} failed: {error}")
        self.queue.finish(job.id, state, error)
        self.last = (job, "finished" if state == "done" else state)
        self.on_change()

    def run_job(self, job: Job) -> dict[str, Any]:
        """One job, start to end (or to a stop): the batch's steps for one prompt, with the studio's live view."""
        from ..commands.generate import RunControl, check_sources, run_one
        from ..files import check_output_dir

        run_dir = self.out_dir / job.id
        if (run_dir / "summary.json").is_file():  # finished before the queue file recorded it
            return {"finished": True, "output": str(run_dir / "scene.ply")}
        cfg = preset_config(job.preset, job.seed, job.steps)
        sources = check_sources(cfg, [job.prompt])
        guidance = self._guidance_for(cfg)
        guidance.cfg, guidance.sources = cfg, sources  # same models; this job's schedules
        check_output_dir(run_dir)
        check_batch_folders([job.prompt], [run_dir], cfg)  # this prompt and recipe, or nothing yet
        live = LiveRun(cfg.steps, run_dir, self.display)
        self.current = (job, live)
        self.on_change()
        control = RunControl(progress=False, watcher=live, should_stop=live.stop_requested)
        resume = (run_dir / "checkpoint.pt").is_file()
        console.print(f"studio: {'resuming' if resume else 'starting'} {job.id}: {job.prompt}")
        try:
            return run_one(job.prompt, cfg, run_dir / "scene.ply", run_dir, guidance, control, resume=resume)
        finally:
            live.show()  # the last step's numbers, which the update periods may have held back

    def _guidance_for(self, cfg):
        """The loaded guidance when the models are those of the last job; else the old models go first."""
        from ..commands.generate import RunControl, make_guidance

        key = recipe_hash(replace(cfg, seed=0, steps=1))
        key += str(sorted(k for k, v in _active(cfg).items() if v))
        if key != self._guidance_key:
            self._guidance, self._guidance_key = None, None
            _free_memory()
            self._guidance = make_guidance(cfg, RunControl())
            self._guidance_key = key
        return self._guidance


def _active(cfg) -> dict[str, bool]:
    from ..run.schedules import terms_active

    return terms_active(cfg)


def _free_memory() -> None:
    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
