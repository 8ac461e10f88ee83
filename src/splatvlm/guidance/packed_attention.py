"""Attention within packed segments, without host syncs: the vision tower's windows and images as one batched
SDPA call (a reshape, or a block-diagonal mask, or a gather into padded slots), or, on CUDA in fp16/bf16, as
one call of torch's varlen flash attention over the packed tokens; and the causal varlen attention of a
query block after a cached prefix (the reward's decoder layers). Used by ``qwen_fast``."""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

try:  # torch's varlen flash attention (torch 2.10+; CUDA, fp16/bf16): RewardConfig.varlen_attention
    from torch.nn.attention.varlen import varlen_attn as _varlen_attn
except ImportError:
    _varlen_attn = None
_VARLEN_PARAMS = set(inspect.signature(_varlen_attn).parameters) if _varlen_attn is not None else set()
VARLEN = {"scale", "window_size"} <= _VARLEN_PARAMS  # module constants: read inside compiled code
VARLEN_GQA = "enable_gqa" in _VARLEN_PARAMS


@dataclass
class Segments:
    """Packed attention segments (HF's cu_seqlens) laid out as a batch for one SDPA call, no host syncs.

    Three layouts: equal segments are a plain reshape; segments that tile equal groups (the windows of
    equal images) are the groups reshaped, with a block-diagonal key mask; other unequal segments are
    gathered into ``n`` slots of ``length`` tokens (short ones padded with a copy of their first token) with
    a key mask, and scattered back.
    """

    n: int
    length: int
    gather: torch.Tensor | None  # [n * length] token index of each slot; None = no gather (reshape)
    scatter: torch.Tensor | None  # [S] slot of each token
    mask: torch.Tensor | None  # [n or 1, 1, length, length] bool, True = key attended
    cu: torch.Tensor | None = None  # [n + 1] int32 segment bounds for varlen attention (CUDA), or None
    cu_max: int = 0  # the longest segment


def segment_layout(
    cu_seqlens: Sequence[int], device: torch.device, groups: Sequence[int] | None = None, varlen: bool = False
) -> Segments:
    """The batched layout of the segments [cu[i], cu[i+1]) (empty ones dropped).

    ``groups`` (cumulative bounds, e.g. one per image): when the groups are of equal length and every
    segment lies inside one, the layout is the groups with a block-diagonal mask: no gather or scatter,
    whose bf16 index kernels (forward and the index_add of backward) cost more than the attention itself.
    ``varlen``: also keep the bounds for ``varlen_attention``, which ``segment_attention`` then runs in
    fp16/bf16 (one flash-attention call over the packed tokens: no mask, no padding, no gather; CUDA only).
    """
    bounds = [(a, b) for a, b in zip(cu_seqlens[:-1], cu_seqlens[1:], strict=True) if b > a]
    seg = _batched_layout(bounds, device, groups)
    if varlen:
        (seg.cu,) = varlen_bounds([bounds[0][0]] + [b for _, b in bounds], device=device)
        seg.cu_max = max(b - a for a, b in bounds)
    return seg


def _batched_layout(
    bounds: list[tuple[int, int]], device: torch.device, groups: Sequence[int] | None
) -> Segments:
    lengths = [b - a for a, b in bounds]
    n, length = len(bounds), max(lengths)
    if all(m == length for m in lengths):
        return Segments(n, length, None, None, None)
    if groups is not None:
        spans = list(zip(groups[:-1], groups[1:], strict=True))
        size = spans[0][1] - spans[0][0]
        inside = all(any(g0 <= a and b <= g1 for g0, g1 in spans) for a, b in bounds)
        if inside and all(g1 - g0 == size for g0, g1 in spans):
            seg_id = torch.empty(groups[-1], dtype=torch.long)
            for i, (a, b) in enumerate(bounds):
                seg_id[a:b] = i
            ids = seg_id.reshape(len(spans), size)
            mask = (ids[:, :, None] == ids[:, None, :])[:, None]  # [G, 1, size, size]
            if bool((mask == mask[:1]).all()):
                mask = mask[:1]  # the same windows in every group: one mask, broadcast
            return Segments(len(spans), size, None, None, mask.contiguous().to(device))
    slot = torch.arange(length)
    starts = torch.tensor([a for a, _ in bounds])[:, None]
    lens = torch.tensor(lengths)[:, None]
    real = slot[None] < lens  # [n, length]
    gather = torch.where(real, starts + slot, starts)  # padding slots repeat a real token: finite rows
    scatter = (torch.arange(n)[:, None] * length + slot)[real]  # segments are in token order
    mask = real[:, None, None, :].expand(n, 1, length, length).contiguous()
    return Segments(n, length, gather.flatten().to(device), scatter.to(device), mask.to(device))


def segment_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, seg: Segments, scale: float
) -> torch.Tensor:
    """Attention within each segment: q, k, v [S, H, D] -> [S, H*D]."""
    s, h, d = q.shape
    if seg.cu is not None and q.is_cuda and q.dtype in HALF:
        o = varlen_attention(q, k, v, seg.cu, seg.cu, seg.cu_max, seg.cu_max, scale, causal=False)
        return o.reshape(s, h * d)

    def batched(t):  # [S, H, D] -> [n, H, length, D]
        if seg.gather is not None:
            t = t.index_select(0, seg.gather)
        return t.reshape(seg.n, seg.length, h, d).transpose(1, 2)

    o = F.scaled_dot_product_attention(batched(q), batched(k), batched(v), attn_mask=seg.mask, scale=scale)
    o = o.transpose(1, 2).reshape(seg.n * seg.length, h * d)
    return o if seg.scatter is None else o.index_select(0, seg.scatter)


HALF = (torch.float16, torch.bfloat16)  # flash attention's dtypes


def varlen_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cu_q: torch.Tensor, cu_k: torch.Tensor,
                     max_q: int, max_k: int, scale: float, causal: bool) -> torch.Tensor:  # fmt: skip
    """Packed attention q [Tq, H, D] over k, v [Tk, Hkv, D] -> [Tq, H, D], segment i being rows
    [cu_q[i], cu_q[i+1]) against [cu_k[i], cu_k[i+1]); ``causal`` aligns the mask to the lower right (the
    last query sees every key), as a query block after a cached prefix needs. Keys with fewer heads are
    repeated where this torch's varlen_attn has no ``enable_gqa``. CUDA, fp16/bf16 only (``VARLEN``)."""
    kw = {"window_size": (-1, 0) if causal else (-1, -1), "scale": scale}
    groups = q.shape[1] // k.shape[1]
    if groups > 1 and VARLEN_GQA:
        kw["enable_gqa"] = True
    elif groups > 1:
        k, v = k.repeat_interleave(groups, dim=1), v.repeat_interleave(groups, dim=1)
    return _varlen_attn(q, k, v, cu_q, cu_k, max_q, max_k, **kw)


def varlen_bounds(*bounds: Sequence[int], device: torch.device) -> tuple[torch.Tensor, ...]:
    """int32 device tensors of cumulative bounds, made once outside any capture."""
    return tuple(torch.tensor(b, dtype=torch.int32, device=device) for b in bounds)
