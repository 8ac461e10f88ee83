"""The capture-safe Qwen2.5-VL forward of the reward: the model's own modules, called with every
grid- and prompt-dependent index precomputed once per query, so forward and pixel gradient have fixed
shapes and no host syncs (and can be captured in one CUDA graph).

What it computes: pixels -> patches in the vision tower's window order -> vision blocks (window attention,
full attention per image in ``fullatt_block_indexes``) -> merger -> image features written into the
text embeddings -> decoder layers -> the last layer and the LM head only at the rows whose logits are read.

It calls these transformers internals, checked by ``check_transformers`` when the reward loads (a one-line
error instead of a TypeError inside a step):
- ``transformers.masking_utils.create_causal_mask`` (its cache argument is ``cache`` from 5.2x,
  ``past_key_values`` before; both are handled);
- ``transformers.vision_utils.get_vision_window_index`` and ``get_vision_position_ids``;
- ``modeling_qwen2_5_vl.apply_rotary_pos_emb_vision``, ``apply_rotary_pos_emb`` and ``repeat_kv``;
- the model's ``visual.rotary_pos_emb``, ``visual.patch_embed.proj``, ``visual.blocks[i].{norm1, attn.qkv,
  attn.proj, norm2, mlp}``, ``visual.merger``, ``language_model.{layers, norm, rotary_emb}``, each decoder
  layer's ``{input_layernorm, self_attn.{q,k,v,o}_proj, post_attention_layernorm, mlp}`` (the fast path runs
  the layer's forward itself, ``decoder_layer``, so that q/k/v and gate/up can each be one GEMM) and
  ``model.get_rope_index``.
When transformers renames one of these, the reward still runs with ``--vlm.no-fast`` (the plain HF
forward); the fast path follows the release in this module only.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from ..errors import SplatVLMError
from .packed_attention import (
    HALF,
    VARLEN,
    Segments,
    segment_attention,
    segment_layout,
    varlen_attention,
    varlen_bounds,
)

TESTED_TRANSFORMERS = ("5.17.0", "5.24.0")


def cache_kwarg_of(fn: Callable) -> str:
    """The name of ``fn``'s KV-cache argument: ``cache`` (transformers 5.2x) or ``past_key_values`` (before)."""
    return "cache" if "cache" in inspect.signature(fn).parameters else "past_key_values"


@functools.cache
def cache_kwarg() -> str:
    """The (unused) KV-cache argument's name for create_causal_mask and the decoder layers."""
    from transformers.masking_utils import create_causal_mask

    return cache_kwarg_of(create_causal_mask)


def check_transformers(model) -> None:
    """Raise one line if this transformers lacks an internal the fast path calls (see the docstring)."""
    import transformers

    missing = []
    try:
        from transformers.masking_utils import create_causal_mask
        from transformers.models.qwen2_5_vl import modeling_qwen2_5_vl as mq
        from transformers.vision_utils import get_vision_position_ids, get_vision_window_index  # noqa: F401

        for name in ("apply_rotary_pos_emb_vision", "apply_rotary_pos_emb", "repeat_kv"):
            if not hasattr(mq, name):
                missing.append(f"modeling_qwen2_5_vl.{name}")
        params = inspect.signature(create_causal_mask).parameters
        if not ({"cache", "past_key_values"} & set(params)):
            missing.append("create_causal_mask(cache=... | past_key_values=...)")
    except ImportError as e:
        missing.append(str(e).split("'")[1] if "'" in str(e) else str(e))
    inner = model.model
    vis, lm = inner.visual, inner.language_model
    blk, layer = vis.blocks[0], lm.layers[0]
    for owner, names in (
        (vis, ("rotary_pos_emb", "patch_embed", "merger", "blocks", "fullatt_block_indexes")),
        (blk, ("norm1", "norm2", "attn", "mlp")),
        (blk.attn, ("qkv", "proj", "num_heads", "scaling")),
        (lm, ("layers", "norm", "rotary_emb", "embed_tokens")),
        (layer, ("input_layernorm", "post_attention_layernorm", "self_attn", "mlp")),
        (
            layer.self_attn,
            ("q_proj", "k_proj", "v_proj", "o_proj", "head_dim", "num_key_value_groups", "scaling"),
        ),
        (inner, ("get_rope_index", "get_input_embeddings")),
    ):
        missing += [f"{type(owner).__name__}.{n}" for n in names if not hasattr(owner, n)]
    if missing:
        raise SplatVLMError(
            f"the reward's fast path does not know transformers {transformers.__version__} (missing "
            f"{', '.join(missing[:3])}); install transformers {' or '.join(TESTED_TRANSFORMERS)}, or run with --vlm.no-fast"
        )


def vision_block(blk, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, seg: Segments,
                 gate_up: Fused | None = None) -> torch.Tensor:  # fmt: skip
    """One Qwen2.5-VL vision block (the model's own modules) on window-ordered tokens x [S, Dv].

    gate_up: the MLP's gate and up projections as one GEMM (``fused_weights``), or None for the modules."""
    from transformers.models.qwen2_5_vl.modeling_qwen2_5_vl import apply_rotary_pos_emb_vision

    attn = blk.attn
    qkv = attn.qkv(blk.norm1(x)).reshape(x.shape[0], 3, attn.num_heads, -1).permute(1, 0, 2, 3)
    q, k = apply_rotary_pos_emb_vision(qkv[0], qkv[1], cos, sin)
    x = x + attn.proj(segment_attention(q, k, qkv[2], seg, attn.scaling))
    return x + mlp_forward(blk.mlp, blk.norm2(x), gate_up)


# ---------------------------------------------------------------------------------------------------
# Fused projections: q/k/v and gate/up as one GEMM each, exact (the same dot products, one launch)

Fused = tuple[torch.Tensor, torch.Tensor | None, tuple[int, ...]]  # weight [sum N, K], bias, split sizes

QKV, GATE_UP = ("q_proj", "k_proj", "v_proj"), ("gate_proj", "up_proj")


@torch.no_grad()
def fuse_linears(owner: torch.nn.Module, names: Sequence[str]) -> bool:
    """Store the weights (and biases) of ``owner``'s linears ``names`` in one tensor, each module's own
    weight becoming a view of its rows: no extra memory, and every other caller of the modules (HF's
    forward, state dicts, LoRA) sees them unchanged. Returns False (and changes nothing) unless all are
    plain ``nn.Linear`` with the same input width and either all or none with a bias."""
    mods = [getattr(owner, n, None) for n in names]
    if not all(type(m) is torch.nn.Linear for m in mods):
        return False
    has_bias = {m.bias is not None for m in mods}
    if len({m.in_features for m in mods}) != 1 or len(has_bias) != 1:
        return False
    weight = torch.cat([m.weight for m in mods])
    bias = torch.cat([m.bias for m in mods]) if has_bias == {True} else None
    start = 0
    for m in mods:
        n = m.out_features
        m.weight = torch.nn.Parameter(weight[start : start + n], requires_grad=False)
        if bias is not None:
            m.bias = torch.nn.Parameter(bias[start : start + n], requires_grad=False)
        start += n
    owner._splatvlm_fused = {**getattr(owner, "_splatvlm_fused", {}), tuple(names): (weight, bias)}
    return True


def fused_weights(owner: torch.nn.Module, names: Sequence[str]) -> Fused | None:
    """The fused weight of ``owner``'s linears ``names`` while the modules still use it, else None: a
    projection that LoRA wrapped, FP8 replaced or ``.to()`` moved falls back to the modules."""
    weight, bias = getattr(owner, "_splatvlm_fused", {}).get(tuple(names), (None, None))
    if weight is None:
        return None
    mods = [getattr(owner, n, None) for n in names]
    start = 0
    for m in mods:
        if type(m) is not torch.nn.Linear or m.weight.data_ptr() != weight[start].data_ptr():
            return None
        b = None if bias is None else bias[start].data_ptr()
        if (None if m.bias is None else m.bias.data_ptr()) != b:
            return None
        start += m.out_features
    return weight, bias, tuple(m.out_features for m in mods)


def fuse_projections(model) -> int:
    """Fuse every decoder layer's q/k/v and gate/up and every vision block's gate/up (``fuse_linears``);
    returns how many groups were fused."""
    inner = model.model
    n = 0
    for layer in inner.language_model.layers:
        n += fuse_linears(layer.self_attn, QKV) + fuse_linears(layer.mlp, GATE_UP)
    for blk in inner.visual.blocks:
        n += fuse_linears(blk.mlp, GATE_UP)
    return n


def split_linear(x: torch.Tensor, fused: Fused) -> list[torch.Tensor]:
    """x W^T + b for the fused weight, split back into the modules' outputs."""
    weight, bias, sizes = fused
    return list(F.linear(x, weight, bias).split(sizes, dim=-1))


def mlp_forward(mlp, x: torch.Tensor, gate_up: Fused | None) -> torch.Tensor:
    """A gated MLP, down(act(gate(x)) * up(x)), with gate and up as one GEMM when ``gate_up`` is given."""
    if gate_up is None:
        return mlp(x)
    gate, up = split_linear(x, gate_up)
    return mlp.down_proj(mlp.act_fn(gate) * up)


def attention_inputs(layer, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, qkv: Fused | None
                     ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:  # fmt: skip
    """A decoder layer's queries, keys and values [1, H or Hkv, L, Dh] of the normed x [1, L, D], rotated."""
    from transformers.models.qwen2_5_vl.modeling_qwen2_5_vl import apply_rotary_pos_emb

    attn = layer.self_attn
    b, length, _ = x.shape
    q, k, v = split_linear(x, qkv) if qkv is not None else (attn.q_proj(x), attn.k_proj(x), attn.v_proj(x))
    q, k, v = (t.view(b, length, -1, attn.head_dim).transpose(1, 2) for t in (q, k, v))
    q, k = apply_rotary_pos_emb(q, k, cos, sin)
    return q, k, v


KV = tuple[torch.Tensor, torch.Tensor]  # one layer's keys and values [1, Hkv, P, Dh], rotated


def decoder_layer(layer, h: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, mask: torch.Tensor | None,
                  qkv: Fused | None, gate_up: Fused | None, past: KV | None = None,
                  varlen: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:  # fmt: skip
    """One Qwen2.5-VL decoder layer (its own modules; HF's forward without the cache) on h [1, L, D], with
    q/k/v and gate/up as one GEMM each where given; mask None = causal.

    past: this layer's keys and values of the P positions before h (``prefix_kv``), attended first; then
    ``mask`` [1, 1, L, P + L] is required. varlen: the int32 bounds [0, L] and [0, P + L] (``StaticInputs``'s
    ``text_cu``): on CUDA the causal attention (aligned to the lower right, after ``past``) is then one
    ``varlen_attention`` call instead of SDPA with ``mask``."""
    from transformers.models.qwen2_5_vl.modeling_qwen2_5_vl import repeat_kv

    attn = layer.self_attn
    b, length, _ = h.shape
    q, k, v = attention_inputs(layer, layer.input_layernorm(h), cos, sin, qkv)
    if past is not None:
        k, v = torch.cat([past[0], k], dim=2), torch.cat([past[1], v], dim=2)
    if varlen is not None and q.is_cuda and q.dtype in HALF and b == 1:  # o: [1, L, H, Dh] in every branch
        n_k = k.shape[2]
        o = varlen_attention(*(t[0].transpose(0, 1) for t in (q, k, v)), *varlen, length, n_k, attn.scaling,
                             causal=True)[None]  # fmt: skip
    elif mask is None:  # as HF's SDPA path: grouped keys, causal
        o = F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=attn.scaling, enable_gqa=True)
        o = o.transpose(1, 2)
    else:
        k, v = repeat_kv(k, attn.num_key_value_groups), repeat_kv(v, attn.num_key_value_groups)
        o = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=attn.scaling).transpose(1, 2)
    h = h + attn.o_proj(o.reshape(b, length, -1))
    return h + mlp_forward(layer.mlp, layer.post_attention_layernorm(h), gate_up)


def decoder_tail(layer, h: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, rows: slice,
                 mask: torch.Tensor | None, past: KV | None = None) -> torch.Tensor:  # fmt: skip
    """The last decoder layer, output only at positions ``rows`` of h: h [1, L, D] -> [1, len(rows), D].

    Keys and values still cover every position (``past``'s first, as in ``decoder_layer``); the query,
    output projection and MLP run on ``rows`` alone, since no other position's output is read.
    """
    from transformers.models.qwen2_5_vl.modeling_qwen2_5_vl import apply_rotary_pos_emb, repeat_kv

    attn = layer.self_attn
    b, length, _ = h.shape
    n = rows.stop - rows.start
    x = layer.input_layernorm(h)
    qkv = fused_weights(attn, QKV)
    if qkv is None:
        q, k, v = attn.q_proj(x[:, rows]), attn.k_proj(x), attn.v_proj(x)
    else:  # keys and values from their rows of the fused weight, one GEMM
        weight, bias, (nq, *kv) = qkv
        q = F.linear(x[:, rows], weight[:nq], None if bias is None else bias[:nq])
        k, v = split_linear(x, (weight[nq:], None if bias is None else bias[nq:], tuple(kv)))
    q = q.view(b, n, -1, attn.head_dim).transpose(1, 2)  # [1, H, n, Dh]
    k = k.view(b, length, -1, attn.head_dim).transpose(1, 2)  # [1, Hkv, L, Dh]
    v = v.view(b, length, -1, attn.head_dim).transpose(1, 2)
    q = apply_rotary_pos_emb(q, q, cos[:, rows], sin[:, rows])[0]
    k = apply_rotary_pos_emb(k, k, cos, sin)[0]
    if past is not None:
        k, v = torch.cat([past[0], k], dim=2), torch.cat([past[1], v], dim=2)
    k, v = repeat_kv(k, attn.num_key_value_groups), repeat_kv(v, attn.num_key_value_groups)
    o = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=attn.scaling)
    h = h[:, rows] + attn.o_proj(o.transpose(1, 2).reshape(b, n, -1))
    return h + mlp_forward(layer.mlp, layer.post_attention_layernorm(h), fused_weights(layer.mlp, GATE_UP))


@dataclass
class StaticInputs:
    """Pixel-independent device tensors of the capture-safe forward, built once per query.

    Everything HF's modules would derive from the image grid and the token ids with host syncs (window
    index, rotary tables, cu_seqlens splits, causal masks, image-token positions) is here.
    """

    mean: torch.Tensor  # [3] processor mean
    std: torch.Tensor  # [3]
    patch_order: torch.Tensor  # [S] pixel_values rows in the vision tower's window order
    vision_cos: torch.Tensor  # [S, Dv_head] float32, window order
    vision_sin: torch.Tensor  # [S, Dv_head]
    windows: Segments  # window-attention blocks
    images: Segments  # full-attention blocks (one segment per image)
    feature_pos: torch.Tensor  # [N_img] sequence position of each merged vision token (window order)
    text_cos: torch.Tensor  # [1, L, Dh] model dtype
    text_sin: torch.Tensor  # [1, L, Dh]
    masks: dict  # layer type -> decoder attention mask (None = SDPA's is_causal)
    rows: slice  # positions whose last-layer output is read (answer, then target tokens)
    rows_mask: torch.Tensor | None  # [1, 1, len(rows), L] bool causal mask of those rows; None = all keys
    answer_ids: torch.Tensor  # [2] Yes, No token ids
    prefix_len: int  # P: positions before the first image token, which no pixel changes (``prefix_kv``)
    prefix_mask: torch.Tensor  # [1, 1, L - P, L] bool causal mask of the positions after them, over all keys
    # int32 [0, L - P] and [0, L]: the prefix-cached decoder layers' varlen attention (None: SDPA with prefix_mask)
    text_cu: tuple[torch.Tensor, torch.Tensor] | None = None


def static_inputs(
    model,
    image_mean: Sequence[float],
    image_std: Sequence[float],
    ids: torch.Tensor,  # [1, L] token ids
    grid: torch.Tensor,  # [n_images, 3]
    position_ids: torch.Tensor,  # [3, 1, L]
    image_pos: torch.Tensor,  # [N_img]
    answer_pos: int,
    n_target: int,
    answer_ids: tuple[int, int],
    varlen: bool = False,
) -> StaticInputs:
    """Precompute (with host syncs, outside any graph) the fixed tensors of the capture-safe forward.

    varlen: also the bounds that run the vision tower's attention and the prefix-cached decoder's as
    ``varlen_attention`` calls on CUDA (``RewardConfig.varlen_attention``)."""
    from transformers.masking_utils import create_causal_mask
    from transformers.vision_utils import get_vision_position_ids, get_vision_window_index

    device = ids.device
    varlen = varlen and VARLEN and device.type == "cuda"
    vis = model.model.visual
    lm = model.model.language_model
    unit = vis.spatial_merge_size**2
    # 1. vision tower: window order, rotary tables, attention segments
    win, cu_win = get_vision_window_index(grid, vis.spatial_merge_size, vis.window_size, vis.patch_size)
    win = win.to(device)
    patch_order = (win[:, None] * unit + torch.arange(unit, device=device)).flatten()
    pos = get_vision_position_ids(grid, vis.spatial_merge_size)
    dummy = torch.empty(0, device=device)
    cos, sin = vis.rotary_pos_emb(dummy, pos)
    per_image = [int(t * h * w) for t, h, w in grid.tolist()]
    cu_img = [0]
    for m in per_image:
        cu_img.append(cu_img[-1] + m)
    # 2. language model: rotary tables, masks, the rows the answer is read from
    length = ids.shape[1]
    dtype = lm.embed_tokens.weight.dtype
    text_cos, text_sin = lm.rotary_emb(torch.empty(0, dtype=dtype, device=device), position_ids)
    shaped = torch.empty(1, length, 1, dtype=dtype, device=device)
    kw = {
        "config": lm.config,
        "inputs_embeds": shaped,
        "attention_mask": torch.ones_like(ids),
        cache_kwarg(): None,
    }
    if set(lm.config.layer_types) != {"full_attention"}:
        raise SplatVLMError(
            "the reward's fast path needs a VLM with full attention in every layer; use --vlm.no-fast"
        )
    masks = {"full_attention": create_causal_mask(**kw)}  # None under SDPA: is_causal, no mask tensor
    rows = slice(answer_pos, answer_pos + max(1, n_target))
    rows_mask = None
    if rows.stop != length or rows.stop - rows.start != 1:
        keys = torch.arange(length, device=device)
        rows_mask = (keys[None] <= torch.arange(rows.start, rows.stop, device=device)[:, None])[None, None]
    prefix_len = int(image_pos.min())
    after = torch.arange(prefix_len, length, device=device)
    prefix_mask = (torch.arange(length, device=device)[None] <= after[:, None])[None, None]
    return StaticInputs(
        mean=torch.tensor(image_mean, dtype=torch.float32, device=device),
        std=torch.tensor(image_std, dtype=torch.float32, device=device),
        patch_order=patch_order,
        vision_cos=cos.index_select(0, patch_order).float(),
        vision_sin=sin.index_select(0, patch_order).float(),
        windows=segment_layout(cu_win.tolist(), device, groups=cu_img, varlen=varlen),
        images=segment_layout(cu_img, device, varlen=varlen),
        feature_pos=image_pos.index_select(0, win),
        text_cos=text_cos,
        text_sin=text_sin,
        masks=masks,
        rows=rows,
        rows_mask=rows_mask,
        answer_ids=torch.tensor(answer_ids, dtype=torch.long, device=device),
        prefix_len=prefix_len,
        prefix_mask=prefix_mask,
        text_cu=varlen_bounds([0, length - prefix_len], [0, length], device=device) if varlen else None,
    )


def fast_logits(
    model,
    st: StaticInputs,
    input_ids: torch.Tensor,  # [1, L]
    pixel_values: torch.Tensor,  # [S, 3 * T * P * P] model dtype, in the processor's patch order
    n_target: int,
    block_fn: Callable = vision_block,
    checkpointing: bool = False,
    layer_fn: Callable = decoder_layer,
    prefix: Sequence[KV] | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Patches -> (Yes/No logits [2], full-vocabulary logits [T, V] at the target rows, or None).

    Capture-safe: fixed shapes, no host syncs; every index comes from ``st``. prefix: every decoder layer's
    keys and values of the first ``st.prefix_len`` positions (``prefix_kv``, the same weights): the
    layers then run on the positions after them only.
    """
    inner = model.model
    vis, lm = inner.visual, inner.language_model
    # 1. patches in the vision tower's window order; the patch Conv3d (stride == kernel) as the GEMM it is
    # (some cuDNN versions run that Conv3d very slowly in bf16)
    pixel_values = pixel_values.index_select(0, st.patch_order)
    proj = vis.patch_embed.proj
    x = F.linear(pixel_values, proj.weight.reshape(proj.weight.shape[0], -1), proj.bias)  # [S, Dv]
    # 2. vision blocks: window attention, full attention per image in fullatt_block_indexes
    full = set(vis.fullatt_block_indexes)
    for i, blk in enumerate(vis.blocks):
        seg = st.images if i in full else st.windows
        args = (blk, x, st.vision_cos, st.vision_sin, seg, fused_weights(blk.mlp, GATE_UP))
        if checkpointing and torch.is_grad_enabled():
            x = checkpoint(block_fn, *args, use_reentrant=False)
        else:
            x = block_fn(*args)
    feats = vis.merger(x)  # [N_img, D] merged tokens, window order
    # 3. text embeddings with the image features in place, from position p on (p = 0 without a prefix)
    p = 0 if prefix is None else st.prefix_len
    h = inner.get_input_embeddings()(input_ids[:, p:])  # [1, L - p, D]
    h = h.index_copy(1, st.feature_pos - p, feats[None].to(h.dtype))
    # 4. decoder layers; the last one only at the rows we read
    pe = (st.text_cos[:, p:], st.text_sin[:, p:])
    pasts = [None] * len(lm.layers) if prefix is None else list(prefix)
    for layer, kind, past in zip(lm.layers[:-1], lm.config.layer_types, pasts, strict=False):
        fused = fused_weights(layer.self_attn, QKV), fused_weights(layer.mlp, GATE_UP)
        args = (layer, h, *pe, st.masks[kind] if past is None else st.prefix_mask, *fused)
        kw = {} if past is None else {"past": past}  # the compiled layer keeps its one signature without
        if past is not None and st.text_cu is not None:
            kw["varlen"] = st.text_cu
        if checkpointing and torch.is_grad_enabled():
            h = checkpoint(layer_fn, *args, use_reentrant=False, **kw)
        else:
            h = layer_fn(*args, **kw)
    rows = slice(st.rows.start - p, st.rows.stop - p)
    h = lm.norm(decoder_tail(lm.layers[-1], h, *pe, rows, st.rows_mask, pasts[-1]))[0]  # [len(rows), D]
    # 5. LM head: the Yes/No rows at the answer position, the full vocabulary at target rows
    head = model.get_output_embeddings().weight  # [V, D]
    yn = F.linear(h[0], head.index_select(0, st.answer_ids)).float()
    return yn, F.linear(h[:n_target], head).float() if n_target else None


@torch.no_grad()
def prefix_kv(model, st: StaticInputs, input_ids: torch.Tensor) -> list[KV]:
    """Every decoder layer's keys and values [1, Hkv, P, Dh] at the P = ``st.prefix_len`` positions before
    the first image token (the chat template's system turn and the image's opening token): causal attention
    lets no pixel change them, so they can be computed once per query and weights (``fast_logits``'s
    ``prefix``), and the prefix's share of the decoder's forward and backward goes."""
    lm = model.model.language_model
    p = st.prefix_len
    h = model.model.get_input_embeddings()(input_ids[:, :p])
    cos, sin = st.text_cos[:, :p], st.text_sin[:, :p]
    out = []
    for layer in lm.layers:
        fused = fused_weights(layer.self_attn, QKV), fused_weights(layer.mlp, GATE_UP)
        _, k, v = attention_inputs(layer, layer.input_layernorm(h), cos, sin, fused[0])
        out.append((k, v))
        h = decoder_layer(layer, h, cos, sin, None, *fused)
    return out


@torch.no_grad()
def pad_vision_mlp(model, multiple: int = 64) -> int:
    """Zero-pad the vision blocks' MLP width to a multiple of ``multiple``; returns the new width.

    Qwen2.5-VL's vision MLP is 3420 wide, which no GEMM tile divides, so its matmuls run several times
    slower than at a padded 3456. The padding is exact: the extra gate and up rows are zero (with zero bias),
    act(0) * 0 = 0, and the extra down-projection columns are zero.
    """
    width = None
    for blk in model.model.visual.blocks:
        mlp = blk.mlp
        n = mlp.gate_proj.out_features
        pad = -n % multiple
        if pad == 0 or float(mlp.act_fn(torch.zeros(()))) != 0.0:
            return n
        for name in ("gate_proj", "up_proj"):
            old = getattr(mlp, name)
            new = torch.nn.Linear(old.in_features, n + pad, bias=old.bias is not None, device=old.weight.device,
                                  dtype=old.weight.dtype)  # fmt: skip
            new.weight.zero_()[:n] = old.weight
            if old.bias is not None:
                new.bias.zero_()[:n] = old.bias
            setattr(mlp, name, new.requires_grad_(False))
        old = mlp.down_proj
        new = torch.nn.Linear(n + pad, old.out_features, bias=old.bias is not None, device=old.weight.device,
                              dtype=old.weight.dtype)  # fmt: skip
        new.weight.zero_()[:, :n] = old.weight
        if old.bias is not None:
            new.bias.copy_(old.bias)
        mlp.down_proj = new.requires_grad_(False)
        mlp.intermediate_size = width = n + pad
    return width
