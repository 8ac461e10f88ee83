"""The differentiable Qwen2.5-VL reward (VLM3D, arXiv 2509.15772).

Rendered views [C, H, W, 3] in [0, 1] and the text prompt go in; out comes a dict with the loss term
``loss_vlm`` (differentiable to the pixels, hence to the Gaussians) and float diagnostics. The VLM is
asked one question in one user turn (all views as images, then the question); the reward is read from
its next-token logits for "Yes" and "No" (token ids from the tokenizer), or from the likelihood of a
multi-token target answer.

Preprocessing is done in torch so gradients flow (``vlm_views.py``): optional bicubic resize, the processor's
mean/std, the frame repeated for the temporal patch of 2, and the exact patch layout of the HF image processor.

Two forwards give the same numbers: the reference path is the plain HF forward with full logits; the
fast path (default) calls the model's own submodules with everything that depends only on the image
grid and the prompt precomputed once per query as device tensors (window order, rotary tables,
attention segments, causal masks, image-token positions), and runs the last decoder layer and the LM
head only at the answer rows. Having no host syncs, the fast path's forward and pixel gradient are
captured in one CUDA graph (``RewardConfig.cuda_graph``, via ``graphs.GraphedGrad``) and replayed.

``VLMReward`` receives its model loaded: ``splatvlm.models`` resolves ``RewardConfig.model`` once per run
into a ``VLMSource`` (an HF id or a local folder; ``"demo"``, the tiny random Qwen2.5-VL of ``splatvlm.demo``;
``"random-7b"`` / ``"random-3b"``, full-size random weights, for speed only), loads the model from it and
hands both over (``splatvlm.models.load_reward``). The capture-safe forward lives in ``qwen_fast.py``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

import torch
import torch.nn.functional as F

from ..errors import SplatVLMError
from ..hub import DType, pick_dtype
from . import adapters
from .fp8 import MLP_PROJECTIONS, fp8_mlp, fp8_supported, fp8_vision_mlp
from .graphs import GraphedGrad, surrogate_loss
from .qwen_fast import (
    StaticInputs,
    check_transformers,
    decoder_layer,
    fast_logits,
    fuse_projections,
    pad_vision_mlp,
    prefix_kv,
    static_inputs,
    vision_block,
)
from .vlm_views import patchify, preprocess_views, resize_views

QuestionKind = Literal["vlm3d", "dual", "content", "spatial"]
RewardKind = Literal["logit_diff", "log_p_yes", "answer_ll"]


@dataclass
class RewardConfig:
    """The Qwen2.5-VL reward: which model, what it is asked, how the answer becomes a loss, and when."""

    model: str = "Qwen/Qwen2.5-VL-7B-Instruct"
    """HF id or local folder of a Qwen2.5-VL model; 'demo' (a tiny random model: tests, the CPU demo);
    'random-7b' / 'random-3b' (full-size random weights: speed tests)."""
    dtype: DType = "auto"
    """Weights and activations dtype; auto = bfloat16 on CUDA, float32 on CPU."""
    question: QuestionKind = "dual"
    """What the VLM is asked: 'vlm3d' = the VLM3D authors' question, verbatim; 'dual' = our wording of the same
    two checks (matches the prompt, sound geometry); 'content' = matches the prompt only; 'spatial' = every named
    object present in the stated relations."""
    kind: RewardKind = "logit_diff"
    """Reward read from the answer: logit_diff = logit(Yes) - logit(No) (VLM3D); log_p_yes = log p(Yes)
    over the pair {Yes, No}; answer_ll = log-likelihood of the multi-token target_answer."""
    target_answer: str = "Yes"
    """Target answer text for kind=answer_ll (e.g. "Yes, it matches and has no defects.")."""
    size: int = 252
    """Side in pixels of each view given to the VLM (multiple of 28; 252 = 81 tokens per view, VLM3D)."""
    num_views: int = 4
    """Views given to the VLM, taken evenly from the rendered batch."""
    every: int = 1
    """Compute the reward every k-th step only (the trainer skips the others and scales the weight by k; the
    weight schedule itself lives in the run config's weights.vlm)."""
    lora: list[str] = field(default_factory=list)
    """LoRA adapter folders (peft) to load onto the reward VLM (none by default)."""
    lora_weights: list[float] = field(default_factory=list)
    """One weight per --vlm.lora adapter (1.0 each when not given)."""
    gradient_checkpointing: bool = False
    """Recompute activations in the backward pass: less memory, slower."""
    attn_implementation: Literal["sdpa", "eager", "flash_attention_2"] = "sdpa"
    """Attention kernel of the plain HF forward (--vlm.no-fast); the fast path uses its own."""
    compile: bool = True
    """torch.compile each decoder layer and vision block (CUDA only): faster steps, after some seconds of
    compiling at the first step of a process (later prompts reuse it)."""
    pad_gemm: bool = True
    """Zero-pad the vision MLP's width to a multiple of 64 so its GEMMs run on fast tiles; exact (fast path)."""
    fuse_gemm: bool = True
    """Run the q/k/v projections, and each MLP's gate/up projections, as one GEMM each over one shared weight
    tensor (no extra memory); exact (fast path; a projection under LoRA or FP8 keeps its own)."""
    fp8: bool = False
    """Run the language model's MLP matmuls in FP8 (e4m3, a scale per row): a faster reward step, but a pixel
    gradient far from bf16's. Fast path on CUDA, compute capability 8.9+ (Ada, Hopper)."""
    fp8_forward: bool = True
    """With --vlm.fp8: also the forward in e4m3; off, only the input gradient (about half the saving, a gradient
    much closer to bf16's, and more memory: the weights are kept in both formats)."""
    fp8_projections: tuple[Literal["gate_proj", "up_proj", "down_proj"], ...] = MLP_PROJECTIONS
    """With --vlm.fp8: which MLP projections run in e4m3 (down_proj alone: a third of the saving and of the
    rounding)."""
    fp8_vision: bool = False
    """With --vlm.fp8: also the vision MLPs' input gradient in e4m3 (needs pad_gemm): no faster, and a little
    further from bf16's gradient."""
    prefix_cache: bool = True
    """In the CUDA graph, compute the keys and values of the tokens before the first image (which no pixel
    changes) once per capture and run the decoder on the rest only; the same up to rounding (fast path)."""
    varlen_attention: bool = True
    """Run the vision tower's and the prefix-cached decoder's attention as flash attention over packed tokens
    instead of SDPA with masks (CUDA, bf16/fp16, torch 2.10+): a little faster, the same up to rounding."""
    fast: bool = True
    """Compute only what the reward needs, without host syncs (the last layer and LM head at the answer rows
    only); off, the plain HF forward with full logits: slower, the reference."""
    cuda_graph: bool = True
    """Capture the fast path's forward and pixel gradient as a CUDA graph per prompt and view shape and replay
    it: no launch overhead, the same result; ignored on CPU, off the fast path and with gradient checkpointing."""


def question_text(question: QuestionKind, prompt: str, num_views: int) -> str:
    """The question asked after the images."""
    views = "This image shows" if num_views == 1 else f"These {num_views} images show"
    if question == "vlm3d":  # the authors' `prompt_type 2`, character for character (it names no view count)
        return (
            "Carefully evaluate the provided images, which show multiple views of a single 3D object. Does the "
            "underlying 3D object, considering all views together, meet all of the following criteria "
            "simultaneously? \n"
            f"1. Content Match: The object corresponds to the description: {prompt}. \n"
            "2. Geometric Quality: Based on all views combined, the object appears geometrically sound and "
            "consistent. There are no visible signs of major flaws such as multiple faces on one part (Janus-faced "
            "issue), broken surfaces, intersecting geometry, or highly unrealistic polygonal facets when "
            "considering the object from these different perspectives. \n"
            "Strictly respond with only 'Yes' or 'No'."
        )
    elif question == "dual":
        return (
            f"{views} one 3D object from different viewpoints. Answer two things at once. "
            f'(1) Does the object match the description "{prompt}"? '
            "(2) Is it geometrically sound in every view: one coherent shape, with no face or head repeated "
            "across views (no multi-face or Janus effect), and no broken, floating or intersecting surfaces "
            "or odd facets? Answer Yes only if both hold. Reply with Yes or No only."
        )
    elif question == "content":
        return (
            f"{views} one 3D object from different viewpoints. "
            f'Does the object match the description "{prompt}"? Reply with Yes or No only.'
        )
    elif question == "spatial":
        return (
            f"{views} one 3D scene from different viewpoints. "
            f'Does it contain every object named in "{prompt}", with the positions, sizes, counts and '
            "contacts the description states, consistent in all views? Reply with Yes or No only."
        )
    else:
        raise ValueError(f"unknown question {question!r}")


@dataclass
class VLMSource:
    """A reward model's source, resolved once per run (``splatvlm.models.check_reward_source``): where to
    load it from, and the cheap text-side parts."""

    model: str  # what the user named (--vlm.model)
    source: str  # HF id or local folder for from_pretrained ("" for random-* models)
    config: object  # Qwen2_5_VLConfig
    tokenizer: object
    chat_template: str
    image_mean: tuple[float, ...]
    image_std: tuple[float, ...]
    patch_size: int
    merge_size: int
    temporal_patch_size: int


def check_context(src: VLMSource, n_tokens: int, model: str) -> None:
    ctx = int(src.config.text_config.max_position_embeddings)
    if n_tokens > ctx:
        raise SplatVLMError(
            f"prompt too long: the reward query takes {n_tokens} tokens but {model} has a context of {ctx}; "
            "shorten the prompt"
        )


# ---------------------------------------------------------------------------------------------------
# The query: chat-template text, token ids, positions


def answer_token_ids(tokenizer) -> tuple[int, int]:
    """Token ids of "Yes" and "No" as the first token of the assistant's answer (never hard-coded)."""
    out = []
    for word in ("Yes", "No"):
        ids = tokenizer.encode(word, add_special_tokens=False)
        if len(ids) != 1:
            raise SplatVLMError(
                f"the reward VLM's tokenizer splits '{word}' into {len(ids)} tokens; need one"
            )
        out.append(ids[0])
    return out[0], out[1]


def target_ids(cfg: RewardConfig, tokenizer) -> list[int]:
    return tokenizer.encode(cfg.target_answer, add_special_tokens=False) if cfg.kind == "answer_ll" else []


def query_ids(
    src: VLMSource, question: str, n_images: int, grid_hw: tuple[int, int], target: Sequence[int] = ()
) -> torch.Tensor:
    """Token ids [1, L] of one user turn (n_images images, then the question) + generation prompt + target.

    Built with the model's chat template; each image placeholder is expanded to the number of merged
    vision tokens of a grid_hw patch grid, as the HF processor does.
    """
    content = [{"type": "image"} for _ in range(n_images)] + [{"type": "text", "text": question}]
    text = src.tokenizer.apply_chat_template(
        [{"role": "user", "content": content}],
        chat_template=src.chat_template,
        tokenize=False,
        add_generation_prompt=True,
    )
    pad = "<|image_pad|>"
    if text.count(pad) != n_images:
        raise SplatVLMError(
            f"the reward VLM's chat template produced {text.count(pad)} image slots for {n_images} images"
        )
    per_image = (grid_hw[0] // src.merge_size) * (grid_hw[1] // src.merge_size)
    text = text.replace(pad, pad * per_image)
    ids = src.tokenizer(text, add_special_tokens=False)["input_ids"] + list(target)
    return torch.tensor([ids], dtype=torch.long)


@dataclass
class Query:
    """Everything about one (prompt, views, grid) query that does not depend on the pixels."""

    input_ids: torch.Tensor  # [1, L]
    mm_token_type_ids: torch.Tensor  # [1, L] 1 at image tokens
    position_ids: torch.Tensor  # [3, 1, L] multimodal rope positions
    image_pos: torch.Tensor  # [N_img] indices of image tokens in the sequence
    image_grid_thw: torch.Tensor  # [n_images, 3]
    answer_pos: int  # position whose next-token logits hold the answer
    target_ids: torch.Tensor  # [T] target answer tokens (answer_ll), else empty
    static: StaticInputs  # precomputed tensors of the fast (capture-safe) path
    n_text_tokens: int


# ---------------------------------------------------------------------------------------------------
# The reward


class VLMReward:
    """The loaded, frozen reward VLM; ``__call__(rgb, step)`` gives the ``loss_vlm`` term."""

    def __init__(self, cfg: RewardConfig, src: VLMSource, model: torch.nn.Module, device: torch.device):
        """Wrap the loaded ``model`` (a Qwen2.5-VL on ``device``, in ``cfg``'s dtype) that ``src`` names."""
        # 1. the cheap parts were checked when the source was resolved
        self.cfg = cfg
        self.device = device
        self.dtype = pick_dtype(cfg.dtype, self.device)
        if src.model != cfg.model:
            raise ValueError(f"the source was resolved for {src.model!r}, not {cfg.model!r}")
        self.src = src
        self.tokenizer = self.src.tokenizer
        self.yes_id, self.no_id = answer_token_ids(self.tokenizer)

        # 2. the model, frozen
        self.model = model
        self.model.requires_grad_(False)
        self.model.eval()
        if cfg.gradient_checkpointing:
            kwargs = {"use_reentrant": False}
            if hasattr(self.model, "activation_checkpointing_enable"):  # transformers >= 5.2x
                self.model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
            else:
                self.model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
            # HF checkpoints a layer only when that layer is in training mode; flip just those flags so
            # dropout elsewhere (e.g. in LoRA layers) stays off.
            from transformers.modeling_layers import GradientCheckpointingLayer

            for m in self.model.modules():
                if isinstance(m, GradientCheckpointingLayer):
                    m.training = True

        # 3. adapters
        self.peft = None
        self.adapter_names: list[str] = []
        if cfg.lora:
            self.peft, self.adapter_names = adapters.load_adapters(
                self.model, cfg.lora, cfg.lora_weights or [1.0] * len(cfg.lora), cfg.model
            )
        if cfg.fast:
            check_transformers(self.model)
            if cfg.pad_gemm:
                pad_vision_mlp(self.model)
            if cfg.fp8 and self.device.type == "cuda":
                if not fp8_supported(self.device):
                    major, minor = torch.cuda.get_device_capability(self.device)
                    raise SplatVLMError(
                        f"--vlm.fp8 needs a GPU of compute capability 8.9 or newer (Ada, Hopper); this one is "
                        f"{major}.{minor}: run with --vlm.no-fp8"
                    )
                fp8_mlp(self.model.model.language_model, cfg.fp8_forward, cfg.fp8_projections)
                if cfg.fp8_vision:
                    fp8_vision_mlp(self.model.model.visual)
            if cfg.fuse_gemm:
                fuse_projections(self.model)  # after FP8's swaps: those projections stay unfused
        # 4. compile block by block: whole-model graphs break on the vision encoder's data-dependent splits.
        # The fast path runs the vision blocks through vision_block (one compiled function for all 32).
        self._vision_block, self._decoder_layer = vision_block, decoder_layer
        if cfg.compile and self.device.type == "cuda":
            for block in [*self.model.model.language_model.layers, *self.model.model.visual.blocks]:
                block.compile()
            self._vision_block = torch.compile(vision_block)
            self._decoder_layer = torch.compile(decoder_layer)
        self.prompt: str | None = None
        self._queries: dict[tuple, Query] = {}
        self._graph_key: tuple | None = None
        self._graph: GraphedGrad | None = None

    # -- prompt and query ------------------------------------------------------------------------

    def set_prompt(self, prompt: str) -> None:
        """Build (once) the query for ``prompt`` with cfg.num_views views of cfg.size pixels."""
        g = self.cfg.size // self.src.patch_size
        if prompt != self.prompt:
            self.reset_graphs()  # the prompt's tokens are baked into the captured graph
        self.prompt = prompt
        self.query(prompt, self.cfg.num_views, (g, g))

    def reset_graphs(self) -> None:
        """Drop the captured CUDA graph (and its memory pool); the next step re-captures."""
        self._graph_key, self._graph = None, None

    def query(self, prompt: str, n_images: int, grid_hw: tuple[int, int]) -> Query:
        """The pixel-independent part of a query, built once per (prompt, views, grid, question, target)."""
        target = target_ids(self.cfg, self.tokenizer)
        key = (prompt, n_images, tuple(grid_hw), self.cfg.question, tuple(target))
        if key in self._queries:
            return self._queries[key]
        if len(self._queries) >= 256:  # train-reward sees many prompts; keep memory bounded
            self._queries.clear()
        ids = query_ids(
            self.src, question_text(self.cfg.question, prompt, n_images), n_images, grid_hw, target
        )
        check_context(self.src, ids.shape[-1], self.cfg.model)
        ids = ids.to(self.device)
        mm = (ids == self.model.config.image_token_id).long()
        grid = torch.tensor([[1, *grid_hw]] * n_images, dtype=torch.long, device=self.device)
        position_ids, _ = self.model.model.get_rope_index(ids, mm_token_type_ids=mm, image_grid_thw=grid)
        image_pos = mm[0].nonzero().squeeze(1)
        answer_pos = ids.shape[1] - len(target) - 1
        yes_no = (self.yes_id, self.no_id)
        static = static_inputs(
            self.model,
            self.src.image_mean,
            self.src.image_std,
            ids,
            grid,
            position_ids,
            image_pos,
            answer_pos,
            len(target),
            yes_no,
            varlen=self.cfg.varlen_attention,
        )
        q = Query(
            input_ids=ids,
            mm_token_type_ids=mm,
            position_ids=position_ids,
            image_pos=image_pos,
            image_grid_thw=grid,
            answer_pos=answer_pos,
            target_ids=torch.tensor(target, dtype=torch.long, device=self.device),
            static=static,
            n_text_tokens=int(ids.shape[1] - mm.sum()),
        )
        self._queries[key] = q
        return q

    # -- forward ---------------------------------------------------------------------------------

    def _logits_static(
        self, q: Query, views: torch.Tensor, prefix=None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Views [C, H, W, 3] -> (Yes/No logits [2], full-vocab logits [T, V] at the target rows, or None),
        through the capture-safe forward of ``qwen_fast`` (prefix: ``qwen_fast.prefix_kv``'s, or None)."""
        st, src = q.static, self.src
        images = resize_views(views, self.cfg.size)
        pixel_values = patchify(
            images, st.mean, st.std, src.patch_size, src.merge_size, src.temporal_patch_size
        )
        return fast_logits(
            self.model, st, q.input_ids, pixel_values.to(self.dtype), len(q.target_ids),
            block_fn=self._vision_block, checkpointing=self.cfg.gradient_checkpointing,
            layer_fn=self._decoder_layer, prefix=prefix,
        )  # fmt: skip

    def _logits_reference(
        self, q: Query, pixel_values: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The straightforward path: the full HF forward with full-vocabulary logits at every position."""
        out = self.model(
            input_ids=q.input_ids,
            pixel_values=pixel_values.to(self.dtype),
            image_grid_thw=q.image_grid_thw,
            mm_token_type_ids=q.mm_token_type_ids,
            attention_mask=torch.ones_like(q.input_ids),
            use_cache=False,
        )
        logits = out.logits[0].float()  # [L, V]
        yn = logits[q.answer_pos, [self.yes_id, self.no_id]]
        full = logits[q.answer_pos : q.answer_pos + len(q.target_ids)] if len(q.target_ids) else None
        return yn, full

    def score(
        self,
        views: torch.Tensor,
        prompt: str | None = None,
        fast: bool | None = None,
        prefixes: dict | None = None,
    ) -> dict[str, torch.Tensor]:
        """All views [N, H, W, 3] in [0, 1] to the VLM -> tensors: reward, logit_yes, logit_no, p_yes.

        Differentiable to ``views``. Used by ``__call__`` (which picks cfg.num_views views) and train-reward.
        prefixes: a cache of the prompt prefix's keys and values per view count (``qwen_fast.prefix_kv``), kept
        by the caller while the weights stay (``loss_fn``'s); None = every position computed.
        """
        # 1. check inputs
        prompt = self.prompt if prompt is None else prompt
        if prompt is None:
            raise RuntimeError("call set_prompt(prompt) before the reward")
        assert views.ndim == 4 and views.shape[-1] == 3, f"expected [N, H, W, 3], got {tuple(views.shape)}"
        views = views.to(self.device, torch.float32)
        g = self.cfg.size // self.src.patch_size
        q = self.query(prompt, views.shape[0], (g, g))  # cached per prompt
        # 2. forward: pixels -> patches -> logits (differentiable)
        fast = self.cfg.fast if fast is None else fast
        if fast:
            prefix = None
            if prefixes is not None and q.static.prefix_len > 0:
                if views.shape[0] not in prefixes:
                    prefixes[views.shape[0]] = prefix_kv(self.model, q.static, q.input_ids)
                prefix = prefixes[views.shape[0]]
            yn, full = self._logits_static(q, views, prefix)
        else:
            pixel_values, _ = preprocess_views(
                views, size=self.cfg.size, mean=self.src.image_mean, std=self.src.image_std,
                patch_size=self.src.patch_size, merge_size=self.src.merge_size,
                temporal_patch_size=self.src.temporal_patch_size,
            )  # fmt: skip
            yn, full = self._logits_reference(q, pixel_values)
        # 3. answer -> reward
        diff = yn[0] - yn[1]
        if self.cfg.kind == "logit_diff":
            reward = diff
        elif self.cfg.kind == "log_p_yes":
            reward = F.logsigmoid(diff)
        elif self.cfg.kind == "answer_ll":
            reward = full.log_softmax(-1).gather(1, q.target_ids[:, None]).sum()
        else:
            raise ValueError(f"unknown reward kind {self.cfg.kind!r}")
        return {"reward": reward, "logit_yes": yn[0], "logit_no": yn[1], "p_yes": torch.sigmoid(diff)}

    def loss_fn(self, prompt: str | None = None):
        """The capture-safe term ``views [C, H, W, 3] -> (loss_vlm, {"reward", "p_yes"})`` that is graphed.

        With cfg.prefix_cache its first call computes the prompt prefix's keys and values, which later calls
        (the graph's capture among them) reuse: a term lives for one graph, and a graph for one set of weights.
        """
        prompt = self.prompt if prompt is None else prompt
        prefixes = {} if self.cfg.prefix_cache else None

        def fn(views: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
            out = self.score(views, prompt, fast=True, prefixes=prefixes)
            return -out["reward"], {"reward": out["reward"].detach(), "p_yes": out["p_yes"].detach()}

        return fn

    def graphed(self, views: torch.Tensor) -> bool:
        """Whether a reward step on ``views`` runs as a CUDA graph."""
        cfg = self.cfg
        on_gpu = self.device.type == "cuda" and views.is_cuda
        return cfg.cuda_graph and cfg.fast and not cfg.gradient_checkpointing and on_gpu

    def __call__(self, rgb: torch.Tensor, cams=None, step: int = 0) -> dict[str, torch.Tensor]:
        """Rendered views [C, H, W, 3] in [0, 1] -> {"loss_vlm", "reward", "p_yes"} (0-d tensors).

        The loss-term shape ``term(rgb, cams, step)`` of every term; the reward reads neither the cameras nor
        the step (the trainer runs it every ``cfg.every`` steps and applies weights.vlm). loss_vlm = -reward.
        """
        c, n = rgb.shape[0], self.cfg.num_views
        if c < n:
            raise SplatVLMError(f"--vlm.num-views {n} is more than the {c} rendered views per step")
        # evenly spread over the batch's azimuths: views i * c // n
        views = rgb if c == n else rgb[:: c // n] if c % n == 0 else rgb[[i * c // n for i in range(n)]]
        if self.graphed(views):
            # The graph holds this prompt's tokens and these shapes: re-capture when any of them changes.
            views = views.to(self.device)
            key = (self.prompt, self.cfg.size, self.cfg.kind, self.cfg.question, self.cfg.target_answer,
                   tuple(views.shape), views.dtype)  # fmt: skip
            if key != self._graph_key:
                self.reset_graphs()
                self._graph_key, self._graph = key, GraphedGrad(self.loss_fn())
            with torch.enable_grad():  # capture needs autograd even if the caller is in no_grad
                value, grad, aux = self._graph(views)
            loss = surrogate_loss(views, value, grad)
            reward, p_yes = aux["reward"], aux["p_yes"]
        else:
            out = self.score(views)
            loss, reward, p_yes = -out["reward"], out["reward"], out["p_yes"]
        # Diagnostics stay tensors: no host sync inside the term (the trainer reads them after all terms ran).
        return {"loss_vlm": loss.to(rgb.device), "reward": reward.detach(), "p_yes": p_yes.detach()}

    # -- adapters at run time --------------------------------------------------------------------

    def set_lora(self, weights: Sequence[float] | None) -> None:
        """Re-weight the loaded adapters (one weight each, 0 = off), or disable them all with None."""
        if self.peft is None:
            if weights:
                raise SplatVLMError("no LoRA adapters are loaded (--vlm.lora)")
            return
        if weights is not None and len(weights) != len(self.adapter_names):
            raise SplatVLMError(f"got {len(weights)} LoRA weights for {len(self.adapter_names)} adapters")
        self.reset_graphs()  # adapter scales are constants inside a captured graph
        adapters.set_adapter_weights(
            self.peft, dict(zip(self.adapter_names, weights, strict=True)) if weights is not None else {}
        )


__all__ = [
    "RewardConfig",
    "VLMReward",
    "VLMSource",
    "Query",
    "StaticInputs",
    "answer_token_ids",
    "check_context",
    "query_ids",
    "question_text",
    "target_ids",
]
