"""The studio's queue: the prompts waiting to run, in order, kept in ``<out-dir>/studio-queue.json``.

Pure bookkeeping (no viser, no torch), safe to call from several threads. Each job names its run folder,
``<out-dir>/<id>`` (``007-a-red-apple``): an ordinary run folder, built, locked and resumed by
``commands.generate``. The queue file holds only what has not finished (queued, running, stopped, failed);
a finished run lives on in its folder. Every change is written at once and atomically, so a studio that is
killed comes back with the same queue, its running job queued again (it resumes from its checkpoint).
"""

from __future__ import annotations

import json
import re
import threading
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Literal, get_args

from ..errors import SplatVLMError
from ..files import atomic_write_text
from ..prompts import check_prompt, slugify

QUEUE_FILE = "studio-queue.json"
JobState = Literal["queued", "running", "stopped", "failed"]
_FOLDER = re.compile(r"^(\d+)-[a-z0-9-]+$")


@dataclass
class Job:
    """One prompt to make: what to run and where its run folder is."""

    id: str  # the run folder's name inside the out-dir
    prompt: str
    preset: str
    seed: int = 0
    steps: int | None = None  # None: the preset's own
    state: JobState = "queued"
    error: str = ""  # why it failed


def check_job(job: Job) -> Job:
    """A job read from the queue file must name a plain folder of the out-dir and a valid prompt."""
    if not isinstance(job.id, str) or not _FOLDER.match(job.id):
        raise SplatVLMError(f"job id {str(job.id)[:60]!r} is not a run folder name like 007-a-red-apple")
    job.prompt = check_prompt(job.prompt)
    if not isinstance(job.preset, str) or not re.fullmatch(r"[A-Za-z0-9_.-]+", job.preset):
        raise SplatVLMError(f"job {job.id}: preset {str(job.preset)[:60]!r} is not a preset name")
    if not isinstance(job.seed, int) or isinstance(job.seed, bool) or job.seed < 0:
        raise SplatVLMError(f"job {job.id}: the seed must be a non-negative integer, got {job.seed!r}")
    if job.steps is not None and (not isinstance(job.steps, int) or job.steps <= 0):
        raise SplatVLMError(f"job {job.id}: steps must be a positive integer, got {job.steps!r}")
    if job.state not in get_args(JobState):
        raise SplatVLMError(f"job {job.id}: unknown state {str(job.state)[:30]!r}")
    return job


class JobQueue:
    """The ordered jobs of one out-dir, persisted in its ``studio-queue.json`` after every change."""

    def __init__(self, out_dir: Path):
        self.out_dir = Path(out_dir)
        self.path = self.out_dir / QUEUE_FILE
        self._lock = threading.RLock()
        self._jobs: list[Job] = self._load()
        self._save()  # a job left running by a killed studio is recorded as queued again

    def _load(self) -> list[Job]:
        if not self.path.exists():
            return []
        where = f"{self.path} (move it away to start with an empty queue)"
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
        except (ValueError, UnicodeDecodeError):
            raise SplatVLMError(f"{where} is not valid JSON") from None
        if not isinstance(data, dict) or not isinstance(data.get("jobs"), list):
            raise SplatVLMError(f"{where} is not a studio queue (no 'jobs' list)")
        names = {f.name for f in fields(Job)}
        jobs = []
        for entry in data["jobs"]:
            if not isinstance(entry, dict) or not {"id", "prompt", "preset"} <= entry.keys():
                raise SplatVLMError(f"{where} holds an entry that is not a job")
            try:
                job = check_job(Job(**{k: v for k, v in entry.items() if k in names}))
            except SplatVLMError as e:
                raise SplatVLMError(f"{where}: {e}") from None
            if job.state == "running":
                job.state = "queued"
            jobs.append(job)
        if len({j.id for j in jobs}) != len(jobs):
            raise SplatVLMError(f"{where} names a run folder twice")
        return jobs

    def _save(self) -> None:
        atomic_write_text(self.path, json.dumps({"jobs": [asdict(j) for j in self._jobs]}, indent=1) + "\n")

    # ------------------------------------------------------------------ reading

    @property
    def jobs(self) -> list[Job]:
        """A copy of the jobs in queue order."""
        with self._lock:
            return [Job(**asdict(j)) for j in self._jobs]

    def get(self, job_id: str) -> Job:
        with self._lock:
            return Job(**asdict(self._find(job_id)))

    def _find(self, job_id: str) -> Job:
        for job in self._jobs:
            if job.id == job_id:
                return job
        raise SplatVLMError(f"no job {job_id!r} in the queue")

    # ------------------------------------------------------------------ changes

    def add(self, prompt: str, preset: str, seed: int = 0, steps: int | None = None) -> Job:
        """Check the prompt and append a job; its run folder gets the next free number in the out-dir."""
        prompt = check_prompt(prompt)
        with self._lock:
            job = check_job(Job(self._next_id(prompt), prompt, preset, seed, steps))
            self._jobs.append(job)
            self._save()
            return Job(**asdict(job))

    def _next_id(self, prompt: str) -> str:
        """One more than the largest number in front of any folder of the out-dir or any job (never reused)."""
        taken = [entry.name for entry in self.out_dir.iterdir()] + [j.id for j in self._jobs]
        numbers = [int(m.group(1)) for name in taken if (m := _FOLDER.match(name))]
        return f"{max(numbers, default=-1) + 1:03d}-{slugify(prompt)}"

    def move(self, job_id: str, offset: int) -> None:
        """Move a waiting job up (offset < 0) or down among the jobs that are not running."""
        with self._lock:
            job = self._find(job_id)
            if job.state == "running":
                raise SplatVLMError("the running job cannot move; stop it first")
            movable = [i for i, j in enumerate(self._jobs) if j.state != "running"]
            k = movable.index(self._jobs.index(job))
            target = min(max(k + offset, 0), len(movable) - 1)
            if target == k:
                return
            order = [self._jobs[i] for i in movable]
            order.insert(target, order.pop(k))
            for i, j in zip(movable, order, strict=True):
                self._jobs[i] = j
            self._save()

    def cancel(self, job_id: str) -> Job:
        """Take a job that is not running off the queue (a stopped job's run folder stays where it is)."""
        with self._lock:
            job = self._find(job_id)
            if job.state == "running":
                raise SplatVLMError("the running job cannot be cancelled; stop it first")
            self._jobs.remove(job)
            self._save()
            return job

    def requeue(self, job_id: str) -> None:
        """Queue a stopped or failed job again (a stopped one resumes from its checkpoint)."""
        with self._lock:
            job = self._find(job_id)
            if job.state in ("stopped", "failed"):
                job.state, job.error = "queued", ""
                self._save()

    def take_next(self) -> Job | None:
        """The first queued job, now marked running; None when nothing is queued."""
        with self._lock:
            for job in self._jobs:
                if job.state == "queued":
                    job.state = "running"
                    self._save()
                    return Job(**asdict(job))
            return None

    def finish(
        self, job_id: str, state: Literal["done", "queued", "stopped", "failed"], error: str = ""
    ) -> None:
        """Record how a running job ended: done ones leave the queue; the others stay, with their state."""
        with self._lock:
            job = self._find(job_id)
            if state == "done":
                self._jobs.remove(job)
            else:
                job.state, job.error = state, error
            self._save()
