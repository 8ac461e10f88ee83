"""Score distillation (SDS) from a diffusion prior: MVDream's 4-view model or Stable Diffusion.

One step: renders [C, H, W, 3] -> VAE latents (with grad) -> one timestep shared by all views ->
noisy latents -> UNet with classifier-free guidance (no grad) -> a detached target -> an MSE whose
gradient on the latents is the SDS gradient. Two targets:
- ``mode="x0"`` (threestudio-mvdream, VLM3D): the target is the CFG reconstruction of x0, its std
  rescaled per object toward the unguided reconstruction's std;
- ``mode="eps"`` (DreamFusion): the target is ``z - w(t) (eps_cfg - eps)``.

``SDSGuidance`` receives its models loaded (``SDComponents``): ``splatvlm.models.load_prior`` loads them from
an HF id, a local folder, MVDream's original .pt checkpoint (see ``mvdream.py``), the tiny ``demo`` models
or full-size ``random`` ones, and hands them over.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from ..errors import SplatVLMError
from ..gaussians.cameras import Cameras
from ..hub import DType, pick_dtype
from .graphs import GraphedGrad, surrogate_loss

# threestudio-mvdream's negative prompt, which the VLM3D recipe inherits (a hyperparameter value).
DEFAULT_NEGATIVE_PROMPT = (
    "ugly, bad anatomy, blurry, pixelated obscure, unnatural colors, poor lighting, dull, and unclear, "
    "cropped, lowres, low quality, artifacts, duplicate, morbid, mutilated, poorly drawn face, deformed, "
    "dehydrated, bad proportions"
)


@dataclass
class SDComponents:
    """The diffusers / transformers parts of a latent diffusion prior, loaded."""

    unet: torch.nn.Module
    vae: torch.nn.Module
    text_encoder: torch.nn.Module
    tokenizer: object
    scheduler: object


@dataclass
class SDSConfig:
    """The diffusion prior and its score-distillation loss."""

    kind: Literal["mvdream", "sd"] = "mvdream"
    """'mvdream': the 4-view MVDream prior (VLM3D's); 'sd': a Stable Diffusion text-to-image model."""
    model: str = "ashawkey/mvdream-sd2.1-diffusers"
    """HF id or folder of diffusers components, MVDream's .pt checkpoint (a path or owner/repo/file.pt), 'demo'
    (tiny random models) or 'random' (full-size random weights, for speed tests)."""
    base_model: str = "stabilityai/stable-diffusion-2-1-base"
    """Where the text encoder, tokenizer, VAE and scheduler come from when `model` is a .pt checkpoint."""
    dtype: DType = "auto"
    """Weights dtype; 'auto': fp16 on CUDA (as fast as bf16, closer to fp32's SDS gradient), fp32 on CPU."""
    guidance_scale: float = 50.0
    """Classifier-free guidance scale (MVDream / VLM3D 50; VLM3D's SD-2.1 variant 100)."""
    negative_prompt: str = DEFAULT_NEGATIVE_PROMPT
    """Text of the unconditional branch of CFG."""
    view_dependent_prompts: bool = False
    """Append ', front/side/back/overhead view' by camera direction (DreamFusion; off for MVDream)."""
    mode: Literal["x0", "eps"] = "x0"
    """'x0': reconstruction target with std rescale (threestudio-mvdream, VLM3D); 'eps': classic SDS with w(t)."""
    rescale: float = 0.5
    """x0 mode: blend toward the std of the unguided reconstruction, per object (MVDream) or image (SD); 0 disables."""
    weighting: Literal["sds", "uniform", "fantasia3d"] = "sds"
    """eps mode: w(t) = 1 - alpha_bar ('sds'), 1 ('uniform'), sqrt(alpha_bar) (1 - alpha_bar) ('fantasia3d')."""
    t_min_start: float = 0.98
    """Lower end of the timestep range (fraction of the 1000 steps) at step 0."""
    t_min_end: float = 0.02
    """Lower end of the timestep range after `anneal_steps`."""
    t_max_start: float = 0.98
    """Upper end of the timestep range at step 0."""
    t_max_end: float = 0.50
    """Upper end of the timestep range after `anneal_steps`."""
    anneal_steps: int = 8000
    """Steps over which the range moves linearly from its start to its end values (0: end values at once)."""
    image_size: int = 0
    """Renders are resized to this square size before the VAE (0: the model's native size, 256 for MVDream,
    512 for SD-2.1-base, 64 for the demo models); latents are 1/8 of it."""
    views_per_object: int = 4
    """MVDream: consecutive views that form one object (its attention spans them); views per step must be a
    multiple."""
    attention: Literal["sdpa", "math"] = "sdpa"
    """The UNet's attention: torch's scaled_dot_product_attention, or the explicit softmax (slower; a reference
    for comparisons)."""
    vae_attention: Literal["sdpa", "math"] = "math"
    """The VAE encoder's attention (one 512-wide head): 'math', two GEMMs and an fp32 softmax as diffusers'
    AttnProcessor, is faster than 'sdpa', whose kernel for so wide a head is the slower memory-efficient one."""
    channels_last: bool = False
    """Run the UNet and VAE in channels-last memory format: it drops cuDNN's layout conversions, but copies
    elsewhere take the time back."""
    compile: bool = True
    """torch.compile the UNet inside the CUDA graph, once per render shape (CUDA only): a much faster prior step,
    after a compile of about a minute per shape on a cold inductor cache (seconds once torch has it on disk)."""
    compile_vae: bool = True
    """torch.compile the VAE encoder, forward and backward, once per render shape (CUDA only): faster steps after
    a compile of under a minute per shape on a cold inductor cache."""
    compile_vae_channels_last: bool = True
    """With --sds.compile-vae: lay the encoder's activations out channels-last, which inductor's heuristic
    declines for its narrowing last convolution; saves cuDNN's layout conversions around every convolution."""
    cuda_graph: bool = True
    """Capture the SDS step (encode, noising, CFG UNet, target, gradient to the pixels) as one CUDA graph per
    render shape and replay it: no launch overhead, the same result; ignored on CPU."""


# ---------------------------------------------------------------------------------------------
# Math


def timestep_range(cfg: SDSConfig, step: int, num_train_timesteps: int = 1000) -> tuple[int, int]:
    """Inclusive integer timestep range at ``step``: linear from the start to the end fractions."""
    frac = 1.0 if cfg.anneal_steps <= 0 else min(max(step / cfg.anneal_steps, 0.0), 1.0)
    lo = cfg.t_min_start + (cfg.t_min_end - cfg.t_min_start) * frac
    hi = cfg.t_max_start + (cfg.t_max_end - cfg.t_max_start) * frac
    last = num_train_timesteps - 1
    return min(int(num_train_timesteps * lo), last), min(int(num_train_timesteps * hi), last)


VIEW_SUFFIXES = ("side view", "front view", "back view", "overhead view")
FRONT_DEG, BACK_DEG, OVERHEAD_DEG = 45.0, 45.0, 60.0  # DreamFusion / threestudio thresholds


def view_directions(elevation: Tensor, azimuth: Tensor) -> Tensor:
    """Index into ``VIEW_SUFFIXES`` per camera [C] (azimuth 0 = front, threestudio convention)."""
    # torch.where, not masked assignment: boolean-mask writes make the GPU wait for the CPU.
    az = (torch.remainder(azimuth + 180.0, 360.0) - 180.0).abs()
    d = torch.where(az < FRONT_DEG, 1, 0)
    d = torch.where(az > 180.0 - BACK_DEG, 2, d)
    return torch.where(elevation > OVERHEAD_DEG, 3, d).long()


def cfg_combine(eps_cond: Tensor, eps_uncond: Tensor, scale: float) -> Tensor:
    """Classifier-free guidance: uncond + scale * (cond - uncond)."""
    return eps_uncond + scale * (eps_cond - eps_uncond)


def sds_weight(alpha_bar: Tensor, weighting: str) -> Tensor:
    """w(t) of classic SDS from alpha_bar(t)."""
    if weighting == "sds":
        return 1.0 - alpha_bar
    elif weighting == "uniform":
        return torch.ones_like(alpha_bar)
    elif weighting == "fantasia3d":
        return alpha_bar.sqrt() * (1.0 - alpha_bar)
    raise ValueError(f"unknown weighting {weighting!r}")


def predict_x0(z_t: Tensor, eps: Tensor, alpha_bar: Tensor) -> Tensor:
    """x0 = (z_t - sqrt(1 - alpha_bar) eps) / sqrt(alpha_bar)."""
    return (z_t - (1.0 - alpha_bar).sqrt() * eps) / alpha_bar.sqrt()


def x0_target(
    z_t: Tensor,  # [C, 4, h, w]
    eps_cfg: Tensor,  # [C, 4, h, w]
    eps_cond: Tensor,  # [C, 4, h, w]
    alpha_bar: Tensor,  # scalar
    rescale: float,
    views: int,
) -> Tensor:
    """CFG reconstruction of x0, its std pulled toward the unguided one per object of ``views`` views."""
    x0 = predict_x0(z_t, eps_cfg, alpha_bar)
    if rescale <= 0:
        return x0
    x0_cond = predict_x0(z_t, eps_cond, alpha_bar)
    objects = x0.shape[0] // views
    x0 = x0.reshape(objects, -1)  # one row per object, so the factor broadcasts without a host sync
    factor = (x0_cond.reshape(objects, -1).std(dim=1, keepdim=True) + 1e-8) / (
        x0.std(dim=1, keepdim=True) + 1e-8
    )
    return (rescale * x0 * factor + (1.0 - rescale) * x0).reshape(z_t.shape)


def target_loss(latents: Tensor, target: Tensor) -> tuple[Tensor, Tensor]:
    """0.5 * sum((z - sg(target))^2) / C and its gradient on z, (z - target) / C."""
    grad = (latents.detach() - target) / latents.shape[0]
    loss = 0.5 * (latents - target.detach()).pow(2).sum() / latents.shape[0]
    return loss, grad


# ---------------------------------------------------------------------------------------------
# Checks


def check_prompt_tokens(tokenizer, prompt: str) -> None:
    """Reject a prompt longer than the text encoder's context (it would be truncated silently)."""
    n = len(tokenizer(prompt, truncation=False, verbose=False).input_ids)  # start and end tokens included
    limit = tokenizer.model_max_length
    if n > limit:
        raise SplatVLMError(
            f"prompt is {n} tokens long; the diffusion prior's text encoder takes at most {limit}: shorten it"
        )


def check_config(cfg: SDSConfig) -> None:
    """Reject inconsistent settings with one clear line."""
    if cfg.views_per_object < 1:
        raise SplatVLMError(f"sds.views_per_object must be >= 1, got {cfg.views_per_object}")
    for name in ("t_min_start", "t_min_end", "t_max_start", "t_max_end", "rescale"):
        if not 0.0 <= getattr(cfg, name) <= 1.0:
            raise SplatVLMError(f"sds.{name} must be in [0, 1], got {getattr(cfg, name)}")
    if cfg.t_min_start > cfg.t_max_start or cfg.t_min_end > cfg.t_max_end:
        raise SplatVLMError("sds timestep range: t_min must not exceed t_max (at start and at end)")
    if cfg.image_size < 0 or cfg.image_size % 8 != 0:
        raise SplatVLMError(f"sds.image_size must be 0 or a positive multiple of 8, got {cfg.image_size}")
    if cfg.guidance_scale < 0:
        raise SplatVLMError(f"sds.guidance_scale must be >= 0, got {cfg.guidance_scale}")


# ---------------------------------------------------------------------------------------------
# The guidance term


def prior_dtype(cfg: SDSConfig, device: torch.device) -> torch.dtype:
    """The prior's weights dtype: ``cfg.dtype``, where 'auto' is fp16 on CUDA and fp32 on CPU."""
    if cfg.dtype == "auto" and device.type == "cuda":
        return torch.float16
    return pick_dtype(cfg.dtype, device)


class SDSGuidance:
    """A diffusion prior that scores rendered views, built around its loaded models.

    Usage: ``g = splatvlm.models.load_prior(cfg, device); g.set_prompt("a red apple"); out = g(rgb, cams, step)``.
    """

    def __init__(self, cfg: SDSConfig, device: torch.device | str, parts: SDComponents):
        """Take the loaded ``parts`` (in ``prior_dtype(cfg, device)``), freeze them and set them up for ``cfg``."""
        check_config(cfg)  # the weights' source is checked once per run (splatvlm.models.check_sds_source)
        self.cfg = cfg
        self.device = torch.device(device)
        self.dtype = prior_dtype(cfg, self.device)
        self.prompt: str | None = None
        self._cond: Tensor | None = None  # [1 or 4, L, D] prompt (or per-direction prompts)
        self._uncond: Tensor | None = None  # [1, L, D] negative prompt
        self._static: dict[tuple[int, ...], dict[str, Tensor]] = {}  # CUDA-graph inputs per render shape
        self._graphed: GraphedGrad | None = None
        self.parts = self._prepare(parts)

    @property
    def notice(self) -> str | None:
        """A line for the run's output when the weights are random (no real quality to expect)."""
        if self.cfg.model == "demo":
            return "SDS prior: tiny demo models with random weights; a pipeline demo, not real quality"
        if self.cfg.model == "random":
            return "SDS prior: full-size models with random weights (speed test), not real quality"
        return None

    def _prepare(self, parts: SDComponents) -> SDComponents:
        """Frozen, on the device, with the configured attention processors and compiled modules."""
        from .mvdream import set_multiview_attention

        if parts.scheduler.config.prediction_type != "epsilon":
            raise SplatVLMError(
                f"{self.cfg.model}: only epsilon-prediction models are supported "
                f"(got {parts.scheduler.config.prediction_type}); use e.g. stable-diffusion-2-1-base"
            )
        for m in (parts.unet, parts.vae, parts.text_encoder):
            m.eval().requires_grad_(False).to(self.device)
            if m.dtype != self.dtype:  # from_pretrained already cast; diffusers warns on a second cast
                m.to(dtype=self.dtype)
        views = self.cfg.views_per_object if self.cfg.kind == "mvdream" else 1
        set_multiview_attention(parts.unet, views, self.cfg.attention)
        if self.cfg.vae_attention == "math":
            from diffusers.models.attention_processor import AttnProcessor

            parts.vae.set_attn_processor(AttnProcessor())
        if self.cfg.channels_last:
            parts.unet.to(memory_format=torch.channels_last)
            parts.vae.to(memory_format=torch.channels_last)
        if self.device.type == "cuda":
            # dynamic=False: each phase's batch gets its own static kernels (no dynamic-shape fallback)
            if self.cfg.compile:
                parts.unet = torch.compile(parts.unet, dynamic=False)
            if self.cfg.compile_vae:
                layout = {"force_layout_optimization": True} if self.cfg.compile_vae_channels_last else None
                parts.vae.encoder.compile(dynamic=False, options=layout)
        self.alphas_cumprod = parts.scheduler.alphas_cumprod.to(self.device, torch.float32)  # [T]
        self.num_train_timesteps = int(parts.scheduler.config.num_train_timesteps)
        return parts

    @property
    def vae_scale_factor(self) -> int:
        return 2 ** (len(self.parts.vae.config.block_out_channels) - 1)

    @property
    def image_size(self) -> int:
        """Render size fed to the VAE."""
        if self.cfg.image_size:
            return self.cfg.image_size
        unet = self.parts.unet
        return int(getattr(unet, "_orig_mod", unet).config.sample_size) * self.vae_scale_factor

    @property
    def latent_resolution(self) -> int:
        return self.image_size // self.vae_scale_factor

    # 1. prompts ------------------------------------------------------------------------------

    @torch.no_grad()
    def encode_text(self, texts: list[str]) -> Tensor:
        """Text-encoder last hidden states [N, L, D] (SD-2's CLIP already stops at OpenCLIP's penultimate layer)."""
        parts = self.parts
        length = int(parts.text_encoder.config.max_position_embeddings)
        ids = parts.tokenizer(
            texts, padding="max_length", max_length=length, truncation=True, return_tensors="pt"
        )
        return parts.text_encoder(ids.input_ids.to(self.device))[0].to(self.dtype)

    def set_prompt(self, prompt: str) -> None:
        """Encode and cache the prompt (per view direction when view-dependent) and the negative prompt."""
        if prompt == self.prompt:
            return
        check_prompt_tokens(self.parts.tokenizer, prompt)
        texts = [prompt]
        if self.cfg.view_dependent_prompts:
            texts = [f"{prompt}, {suffix}" for suffix in VIEW_SUFFIXES]
        emb = self.encode_text(texts + [self.cfg.negative_prompt])
        self._cond, self._uncond = emb[:-1], emb[-1:]
        self.prompt = prompt

    def text_embeddings(self, cams: Cameras) -> tuple[Tensor, Tensor]:
        """Conditional and unconditional embeddings per view, each [C, L, D]."""
        if self._cond is None:
            raise RuntimeError("call set_prompt() before the first SDS step")
        if self.cfg.view_dependent_prompts:
            cond = self._cond[view_directions(cams.elevation, cams.azimuth).to(self._cond.device)]
        else:
            cond = self._cond.expand(len(cams), -1, -1)
        return cond, self._uncond.expand(len(cams), -1, -1)

    # 2. images -> latents ------------------------------------------------------------------------

    def encode_images(self, rgb: Tensor, noise: Tensor | None = None) -> Tensor:
        """Renders [C, H, W, 3] in [0, 1] -> scaled VAE latents [C, 4, h, w] (fp32, differentiable).

        A posterior sample, as threestudio(-mvdream) does, not the mean; ``noise`` [C, 4, h, w] in the
        model dtype is its standard normal draw (None: drawn here, as diffusers' ``sample()`` does).
        """
        vae = self.parts.vae
        x = rgb.permute(0, 3, 1, 2)
        size = self.image_size
        if x.shape[-2:] != (size, size):
            x = F.interpolate(
                x, (size, size), mode="bilinear", align_corners=False, antialias=x.shape[-1] > size
            )
        x = (x * 2.0 - 1.0).to(self.dtype)
        if self.cfg.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        posterior = vae.encode(x).latent_dist
        if noise is None:
            noise = torch.randn(
                posterior.mean.shape, device=posterior.mean.device, dtype=posterior.mean.dtype
            )
        z = (posterior.mean + posterior.std * noise) * vae.config.scaling_factor
        return z.float()

    # 3. noise prediction ---------------------------------------------------------------------------

    def camera_labels(self, cams: Cameras) -> Tensor | None:
        """MVDream's camera input for the CFG batch [2C, 16] in the model dtype; None for SD."""
        if self.cfg.kind != "mvdream":
            return None
        from .mvdream import mvdream_cameras

        return mvdream_cameras(cams).to(self.device, self.dtype).repeat(2, 1)

    @torch.no_grad()
    def unet_eps(
        self,
        z_t: Tensor,  # [C, 4, h, w]
        timesteps: Tensor,  # [2C] or [1], long
        text: Tensor,  # [2C, L, D]: cond then uncond
        class_labels: Tensor | None,  # [2C, 16] or None
    ) -> tuple[Tensor, Tensor]:
        """Conditional and unconditional eps [C, 4, h, w] from one UNet call on the CFG batch of 2C."""
        unet = self.parts.unet
        model_in = torch.cat([z_t, z_t]).to(self.dtype)
        if self.cfg.channels_last:
            model_in = model_in.contiguous(memory_format=torch.channels_last)
        kwargs = {} if class_labels is None else {"class_labels": class_labels}
        eps = unet(model_in, timesteps, encoder_hidden_states=text, **kwargs).sample
        eps_cond, eps_uncond = eps.float().chunk(2)
        return eps_cond, eps_uncond

    # 4. the loss -----------------------------------------------------------------------------

    def sample_timestep(self, step: int) -> int:
        lo, hi = timestep_range(self.cfg, step, self.num_train_timesteps)
        return int(torch.randint(lo, hi + 1, (1,)).item())

    @torch.no_grad()
    def sds_target(
        self,
        z: Tensor,  # [C, 4, h, w] latents, detached
        alpha_bar: Tensor,  # scalar
        timesteps: Tensor,  # [2C] or [1], long
        noise: Tensor,  # [C, 4, h, w]
        text: Tensor,  # [2C, L, D]
        class_labels: Tensor | None,  # [2C, 16] or None
    ) -> Tensor:
        """The detached target of the MSE: noising, CFG UNet, x0 reconstruction or eps residual.

        Capture-safe: no host sync and no branch on tensor values, so it runs inside a CUDA graph.
        """
        z_t = alpha_bar.sqrt() * z + (1.0 - alpha_bar).sqrt() * noise
        eps_cond, eps_uncond = self.unet_eps(z_t, timesteps, text, class_labels)
        eps = cfg_combine(eps_cond, eps_uncond, self.cfg.guidance_scale)
        if self.cfg.mode == "x0":
            views = self.cfg.views_per_object if self.cfg.kind == "mvdream" else 1
            return x0_target(z_t, eps, eps_cond, alpha_bar, self.cfg.rescale, views)
        grad = sds_weight(alpha_bar, self.cfg.weighting) * (eps - noise)
        return z - torch.nan_to_num(grad)

    def latent_loss(
        self, latents: Tensor, cams: Cameras, step: int, t: int | None = None, noise: Tensor | None = None
    ) -> dict[str, Tensor | float]:
        """SDS on latents [C, 4, h, w] (eager); ``t`` and ``noise`` may be fixed (tests)."""
        c = latents.shape[0]
        if t is None:
            t = self.sample_timestep(step)
        with torch.no_grad():
            if noise is None:
                # randn, not randn_like: the latents come out channels-last, and randn_like would lay
                # the same draws out in that order; the graph path's contiguous buffer draws these.
                noise = torch.randn(latents.shape, device=latents.device, dtype=latents.dtype)
            cond, uncond = self.text_embeddings(cams)
            timesteps = torch.full((2 * c,), t, device=self.device, dtype=torch.long)
            text = torch.cat([cond, uncond])
            target = self.sds_target(
                latents.detach(), self.alphas_cumprod[t], timesteps, noise, text, self.camera_labels(cams)
            )
        loss, grad = target_loss(latents, target)
        return {"loss_sds": loss, "sds_t": float(t), "sds_grad_norm": float(grad.norm()) if c else 0.0}

    # 5. the CUDA-graph path --------------------------------------------------------------------
    # Every per-step input lives in a static buffer per render shape, filled before each replay in
    # the same RNG order as the eager path (posterior noise, timestep, noise), so a seeded graphed
    # step draws exactly what a seeded eager step draws.

    @torch.no_grad()
    def fill_static_inputs(self, shape: tuple[int, ...], cams: Cameras, step: int) -> int:
        """Draw this step's timestep and noises into the static buffers for renders of ``shape``
        [C, H, W, 3] and copy in the text and camera embeddings; returns the timestep."""
        c, key = shape[0], tuple(shape)
        if key not in self._static:
            r = self.latent_resolution
            lat = (c, int(self.parts.vae.config.latent_channels), r, r)
            cond, uncond = self.text_embeddings(cams)
            self._static[key] = {
                "posterior_noise": torch.empty(lat, device=self.device, dtype=self.dtype),
                "t": torch.zeros(1, device=self.device, dtype=torch.long),
                "noise": torch.empty(lat, device=self.device, dtype=torch.float32),
                "text": torch.empty((2 * c, *cond.shape[1:]), device=self.device, dtype=cond.dtype),
            }
            if self.cfg.kind == "mvdream":
                self._static[key]["cameras"] = torch.empty((2 * c, 16), device=self.device, dtype=self.dtype)
        buf = self._static[key]
        buf["posterior_noise"].normal_()  # what torch.randn draws, in place
        t = self.sample_timestep(step)
        buf["t"].fill_(t)
        buf["noise"].normal_()
        cond, uncond = self.text_embeddings(cams)
        torch.cat([cond, uncond], out=buf["text"])  # the prompt may change between steps
        labels = self.camera_labels(cams)
        if labels is not None:
            buf["cameras"].copy_(labels)
        return t

    def static_loss(self, x: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        """The capture-safe SDS step for renders ``x`` [C, H, W, 3] on the device: (loss, {"grad_norm"}).

        Reads the timestep, noises and embeddings from the buffers ``fill_static_inputs`` filled for
        this shape; the loss equals the eager ``loss_sds`` for the same draws.
        """
        buf = self._static[tuple(x.shape)]
        latents = self.encode_images(x, buf["posterior_noise"])
        # index_select, not a 0-d tensor index, which would read the index on the host
        alpha_bar = self.alphas_cumprod.index_select(0, buf["t"]).reshape(())
        target = self.sds_target(
            latents.detach(), alpha_bar, buf["t"], buf["noise"], buf["text"], buf.get("cameras")
        )
        loss, grad = target_loss(latents, target)
        return loss, {"grad_norm": grad.norm()}

    def uses_cuda_graph(self, rgb: Tensor) -> bool:
        """Whether this call replays a CUDA graph (on CUDA, with gradients on and at least one view)."""
        return (
            self.cfg.cuda_graph
            and self.device.type == "cuda"
            and rgb.shape[0] > 0
            and torch.is_grad_enabled()
        )

    def __call__(self, rgb: Tensor, cams: Cameras, step: int) -> dict[str, Tensor | float]:
        """SDS loss for renders ``rgb`` [C, H, W, 3] in [0, 1] seen from ``cams`` at training ``step``.

        Returns ``loss_sds`` (0.5 * sum((z - sg(target))^2) / C over VAE latents z), ``sds_t`` (the
        timestep, 0..999) and ``sds_grad_norm`` (norm of d loss / d latents). MVDream needs C to be a
        multiple of ``views_per_object``, ordered view-contiguous per object.
        """
        # 1. check inputs
        if rgb.ndim != 4 or rgb.shape[-1] != 3:
            raise ValueError(f"rgb must be [C, H, W, 3], got {tuple(rgb.shape)}")
        if len(cams) != rgb.shape[0]:
            raise ValueError(f"{rgb.shape[0]} images but {len(cams)} cameras")
        if self.cfg.kind == "mvdream" and rgb.shape[0] % self.cfg.views_per_object != 0:
            raise SplatVLMError(
                f"MVDream needs views in groups of {self.cfg.views_per_object}; got {rgb.shape[0]} views per step"
            )
        if self.prompt is None:
            raise RuntimeError("call set_prompt() before the first SDS step")
        cams = cams.to(self.device)
        x = rgb.to(self.device)
        if self.uses_cuda_graph(x):
            # 2'. the whole step (encode, noising, CFG UNet, target, gradient to x) as one graph replay
            t = self.fill_static_inputs(tuple(x.shape), cams, step)
            if self._graphed is None:
                self._graphed = GraphedGrad(self.static_loss)
            value, grad, aux = self._graphed(x)
            loss = surrogate_loss(x, value, grad)
            return {"loss_sds": loss, "sds_t": float(t), "sds_grad_norm": aux["grad_norm"].detach().clone()}
        # 2. encode renders to latents (the gradient flows through the VAE encoder)
        latents = self.encode_images(x)
        # 3. one timestep for all views, CFG noise prediction, detached target, MSE
        return self.latent_loss(latents, cams, step)
