"""CUDA-graph capture of a loss term's forward *and* its gradient to the input pixels.

The reward VLM and the diffusion prior are launch-bound at our sizes (thousands of small kernels per
step), so replaying one captured graph removes most of their time. A term is captured as

    value, aux = fn(x)          # x: the static input, e.g. renders [C, H, W, 3]
    grad = d value / d x

and at run time the new input is copied into the static buffer, the graph replays, and
``surrogate_loss`` hands the trainer a scalar whose value is ``value`` and whose gradient w.r.t. the
live renders is ``grad``, so the trainer's backward continues into the Gaussians as usual.

``fn`` must be capture-safe: fixed shapes, no host synchronization (``.item()``, ``.tolist()``,
data-dependent shapes), and per-step inputs (timestep, noise) read from static tensors that the caller
fills before each replay. Random numbers drawn inside ``fn`` with torch's default CUDA generator are
fine: PyTorch advances the generator's offset on every replay.

Each graph is captured on a stream of its own. PyTorch keys cuBLAS workspaces by the capture stream, so two
graphs captured on the same stream (``torch.cuda.graph``'s shared default) embed one workspace: replayed at
the same time on two streams (the prior and the reward with ``parallel_terms``) they race on it, and dropping
one graph frees the workspace the other still uses (pytorch/pytorch#193402). ``torch.cuda.Stream()`` hands
out PyTorch's pooled streams round-robin (32 per device and priority), so captures stay on distinct streams
unless that many streams are taken between them.

The capture stream has the priority of the stream current at capture: PyTorch instantiates graphs with
per-node priorities (``cudaGraphInstantiateFlagUseNodePriority``), so a graph replays at the priority it
was captured at, whatever stream launches it, and a term the trainer runs on a high-priority stream
(``RunConfig.long_pole_priority``) must be captured at that priority.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

GraphFn = Callable[[Tensor], tuple[Tensor, dict[str, Tensor]]]


class GraphedGrad:
    """``fn`` and its input gradient, captured once per input shape and replayed."""

    def __init__(self, fn: GraphFn, warmup: int = 2):
        self.fn = fn
        self.warmup = warmup
        self._graphs: dict[tuple, tuple[torch.cuda.CUDAGraph, Tensor, Tensor, Tensor, dict[str, Tensor]]] = {}

    def _capture(self, x: Tensor) -> tuple[torch.cuda.CUDAGraph, Tensor, Tensor, Tensor, dict[str, Tensor]]:
        static_x = x.detach().clone().requires_grad_(True)
        # this capture's own stream, at the current stream's priority (see the module's docstring)
        stream = torch.cuda.Stream(priority=torch.cuda.current_stream().priority)
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):  # warm-up off the default stream, as capture requires
            for _ in range(self.warmup):
                value, _aux = self.fn(static_x)
                torch.autograd.grad(value, static_x)
        torch.cuda.current_stream().wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, stream=stream):
            value, aux = self.fn(static_x)
            (grad,) = torch.autograd.grad(value, static_x)
        return graph, static_x, value, grad, aux

    def __call__(self, x: Tensor) -> tuple[Tensor, Tensor, dict[str, Tensor]]:
        """(value, d value / d x, aux) for ``x``; all outputs are static buffers, valid until the next call."""
        key = (tuple(x.shape), x.dtype, x.device)
        if key not in self._graphs:
            self._graphs[key] = self._capture(x)
        graph, static_x, value, grad, aux = self._graphs[key]
        with torch.no_grad():
            static_x.copy_(x)
        graph.replay()
        return value, grad, aux


def surrogate_loss(x: Tensor, value: Tensor, grad: Tensor) -> Tensor:
    """A scalar equal to ``value`` whose gradient w.r.t. ``x`` is ``grad`` (both taken as constants)."""
    # Copies: the graph's buffers are overwritten by the next replay. The term may live on another GPU.
    g = grad.detach().to(device=x.device, dtype=x.dtype, copy=True)
    inner = (x * g).sum()
    return value.detach().to(device=inner.device, dtype=inner.dtype, copy=True) + inner - inner.detach()
