"""Several GPUs: prompt batches and benches sharded over torchrun processes, and the 2-GPU placement.

Sharding (``splatvlm generate --prompts`` and ``splatvlm bench`` under ``torchrun --nproc-per-node N``,
multi-node with torchrun's usual ``--nnodes/--node-rank/--rdzv-*`` flags): each process reads RANK,
WORLD_SIZE and LOCAL_RANK, runs on ``cuda:LOCAL_RANK`` and takes a disjoint, deterministic share of the
prompt indices, dealt round-robin: rank r of W takes ``indices[r::W]``. For a bench, and for a fresh
batch, ``indices`` is every prompt, so rank r runs the prompts with ``index % W == r``. A batch re-run
deals only the prompts still pending when it starts (run folders without ``summary.json``, as rank 0
sees them; the list is broadcast so all ranks agree), so a re-run with any world size is balanced,
runs each missing prompt exactly once (an interrupted one resumes from its ``checkpoint.pt``) and
never touches a finished one. For multi-node batches ``--out-dir`` must be on a filesystem every node
sees. Without torchrun the world size is 1 and nothing here changes what a run does.

Results gather over a gloo group on the CPU (also when the default group is NCCL) with a long
timeout: ranks that finish their share early wait there for the others; if a rank dies, torchrun
stops the rest (SIGTERM: each saves a checkpoint), and a re-run picks up what is missing.

Placement (``--placement split``): the VLM reward on one GPU, the diffusion prior, scene and
renderer on another, for cards too small for both models. Without torchrun that is ``cuda:K`` and
``cuda:K+1`` (K = the index given with ``--device cuda:K``, else 0); under torchrun each process uses
two local GPUs, ``cuda:2*LOCAL_RANK`` (prior) and ``cuda:2*LOCAL_RANK+1`` (reward), so a node needs
``2 * --nproc-per-node`` GPUs. Renders go to the reward's GPU with ``.to`` (autograd carries the
gradient back), and its loss comes back to the prior's GPU.
"""

from __future__ import annotations

import contextlib
import datetime
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch

from ..errors import SplatVLMError
from ..hub import pick_device

Placement = Literal["single", "split"]
# How long a rank may wait for the others at a gather: a whole share of assets (hours), not seconds.
WAIT_TIMEOUT = datetime.timedelta(days=3)


@dataclass(frozen=True)
class DistInfo:
    """Where this process sits in a torchrun launch (rank 0 of 1 without torchrun)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    local_world_size: int = 1
    launched: bool = False  # started by torchrun (its environment variables are set)

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def dist_info(env: dict[str, str] | None = None) -> DistInfo:
    """Read torchrun's RANK / WORLD_SIZE / LOCAL_RANK / LOCAL_WORLD_SIZE; world size 1 without them."""
    env = os.environ if env is None else env
    if not all(k in env for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK")):
        return DistInfo()
    try:
        rank, world, local = int(env["RANK"]), int(env["WORLD_SIZE"]), int(env["LOCAL_RANK"])
        local_world = int(env.get("LOCAL_WORLD_SIZE", world))
    except ValueError:
        raise SplatVLMError("RANK, WORLD_SIZE, LOCAL_RANK must be integers (as torchrun sets them)") from None
    if not (0 <= rank < world and 0 <= local < local_world):
        raise SplatVLMError(f"inconsistent torchrun environment: RANK {rank} of {world}, LOCAL_RANK {local}")
    return DistInfo(rank, world, local, local_world, launched=True)


def shard(indices: Sequence[int], rank: int, world_size: int) -> list[int]:
    """Rank ``rank``'s share of ``indices`` (round-robin: ``indices[rank::world_size]``).

    The shares of ranks 0..world_size-1 are disjoint and together hold every index once.
    """
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} is not in a world of {world_size}")
    return list(indices[rank::world_size])


def placement_devices(device: str, placement: Placement, info: DistInfo) -> tuple[torch.device, torch.device]:
    """(prior + scene + renderer device, reward device) for ``--device`` and ``--placement``.

    Single placement without torchrun is ``pick_device(device)`` for both, as always.
    """
    if placement not in ("single", "split"):
        raise SplatVLMError(f"--placement must be 'single' or 'split', got {placement!r}")
    if info.launched and device not in ("auto", "cuda", "cpu"):
        raise SplatVLMError(
            f"under torchrun each process picks its GPU from LOCAL_RANK; use --device auto, cuda or cpu, not {device}"
        )
    if placement == "single":
        dev = pick_device(device)
        if info.launched and dev.type == "cuda":
            dev = torch.device("cuda", info.local_rank)
            if info.local_rank >= torch.cuda.device_count():
                raise SplatVLMError(
                    f"LOCAL_RANK {info.local_rank} has no GPU: {torch.cuda.device_count()} visible on this node"
                )
        return dev, dev
    # Split: two CUDA devices per process.
    if device == "cpu" or (device != "auto" and torch.device(device).type != "cuda"):
        raise SplatVLMError(
            f"--placement split puts the reward and the prior on 2 CUDA GPUs; not with --device {device}"
        )
    found = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if info.launched:
        base, need = 2 * info.local_rank, 2 * info.local_world_size
        where = f"{need} GPUs on this node for {info.local_world_size} processes (2 each)"
    else:
        index = torch.device(device).index if device not in ("auto", "cuda") else None
        base = index or 0
        need = base + 2
        where = f"2 CUDA GPUs (cuda:{base} and cuda:{base + 1})"
    if found < need:
        raise SplatVLMError(f"--placement split needs {where}; found {found}")
    return torch.device("cuda", base), torch.device("cuda", base + 1)


def use_device(device: torch.device) -> None:
    """Make ``device`` current: CUDA graphs, streams and the default generator follow the current device."""
    if device.type == "cuda" and device.index is not None:
        torch.cuda.set_device(device)


def on_device(device: torch.device) -> contextlib.AbstractContextManager:
    """A context with ``device`` current (a no-op off CUDA)."""
    return torch.cuda.device(device) if device.type == "cuda" else contextlib.nullcontext()


@contextlib.contextmanager
def process_group(info: DistInfo, device: torch.device) -> Iterator[Any]:
    """The torchrun process group (NCCL on CUDA, gloo on CPU) for the length of a batch or bench.

    Yields the gloo group that gathers Python objects, or None without torchrun.
    """
    if not info.launched:
        yield None
        return
    import torch.distributed as dist

    owned = not dist.is_initialized()
    if owned:
        backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(backend, timeout=WAIT_TIMEOUT)
    # Objects travel on the CPU: no GPU memory, and no NCCL watchdog while early ranks wait.
    group = dist.new_group(backend="gloo", timeout=WAIT_TIMEOUT)
    try:
        yield group
    finally:
        if owned:
            dist.destroy_process_group()


def gather(obj: Any, group: Any) -> list[Any]:
    """Every rank's ``obj``, in rank order, on every rank (``[obj]`` without torchrun)."""
    if group is None:
        return [obj]
    import torch.distributed as dist

    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj, group=group)
    return out


def broadcast(obj: Any, group: Any) -> Any:
    """Rank 0's ``obj`` on every rank (``obj`` itself without torchrun)."""
    if group is None:
        return obj
    import torch.distributed as dist

    box = [obj]
    dist.broadcast_object_list(box, src=0, group=group)
    return box[0]


def device_label(device: torch.device, vlm_device: torch.device) -> str:
    """'cuda:0 NVIDIA H200', or 'cuda:0+cuda:1 ...' for the split placement, or 'cpu'."""
    name = str(device) if vlm_device == device else f"{device}+{vlm_device}"
    if device.type == "cuda":
        name += " " + torch.cuda.get_device_name(device)
    return name


def require_one_process(info: DistInfo, what: str) -> None:
    """Commands that write one output cannot be shared by several processes."""
    if info.launched and info.world_size > 1:
        raise SplatVLMError(
            f"{what} runs in one process; under torchrun with {info.world_size} processes use a batch "
            "(--prompts FILE --out-dir DIR) or splatvlm bench"
        )


__all__ = [
    "DistInfo",
    "Placement",
    "dist_info",
    "shard",
    "placement_devices",
    "use_device",
    "on_device",
    "process_group",
    "gather",
    "broadcast",
    "device_label",
    "require_one_process",
]
