"""The toy world's models, trained here from its renders: a tiny MVDream prior and a tiny reward VLM.

- Data: 4-view groups from the recipe's orbit sampler (``sample_orbit``) at the toy camera settings,
  rendered with our renderer (RGB on black plus alpha, composited over random backgrounds when used).
- Prior (``weights/prior``, a diffusers folder ``SDSGuidance`` loads as any MVDream model): the exact, fixed
  autoencoder of ``autoencoder.py`` (2x2 space-to-depth, 32 px images -> 16x16x12 latents, an affine map fitted
  to the training images, no learned colors), then the stock ``UNet2DConditionModel`` with the camera projection
  (MVDream's cameras as ``class_labels``) and our multi-view attention, trained jointly with a tiny CLIP text
  encoder on eps-prediction, with 10 % caption dropout to the empty caption (the toy presets use "" as the
  negative prompt, so CFG works).
- Reward (``weights/reward``, a Qwen2.5-VL folder ``VLMReward`` loads; trained in ``reward_model.py``): the
  demo-size Qwen2.5-VL, fully
  fine-tuned to answer Yes for 4 views of the captioned object and No for other objects, for the
  object's Janus variant (front feature copied onto the back), for half-opaque gray balls and for the
  faint ball every toy run starts from (the presets' initial scene). Full
  fine-tune, not `train-reward`'s LoRA: that adapts only the language model's projections and never the
  vision tower, which in a random base gives random features, so every visual distinction would have to
  be read out of a frozen random encoder by low-rank updates.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from ..gaussians.cameras import CameraConfig, sample_orbit
from ..gaussians.render import RenderConfig, render
from ..gaussians.scene import SceneConfig, init_ball
from ..gaussians.shading import sample_lighting, shade
from .autoencoder import SpaceToDepthAutoencoder, fitted_autoencoder
from .world import ToyObject, janus_variant, object_params, world

WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"
RESOLUTION = 32  # render size of the whole toy world (CPU-friendly)
# Pixels x Gaussians per chunk of the torch rasterizer: stays in the CPU's cache at 32 px.
TORCH_CHUNK = 1 << 17
SCENE_POINTS = 1500  # initial Gaussians of the toy runs (the presets' 4096 is more than 32 px renders need)
REWARD_SIZE = 56  # views to the reward VLM: 4x4 patches, 4 merged tokens each
# The recipe's camera sampler with the camera a little closer, so objects fill 32 px renders.
CAMERA_OVERRIDES = dict(
    num_views=4, resolution=RESOLUTION, low_res_until=0, distance_range=[0.55, 0.7], eval_distance=0.62
)

# The toy prior's score-distillation settings, in place of the preset's CFG 50 and t annealed down from 0.98: with
# the tiny prior, CFG 50 drives the x0 target far from the truth (|target - z|^2 / |z|^2 up to 45 at t 800) and
# t > 0.5 gives gradients unrelated to the object (cosine 0.016 against a photometric one), so no run left the start
# ball. A calibration on the world's own objects, not
# held-out evidence, and no evidence about the real presets.
TOY_SDS = dict(guidance_scale=7.5, anneal_steps=0)  # anneal 0: t in [0.02, 0.5] from the first step


def toy_camera() -> CameraConfig:
    from ..config import apply_overrides

    return apply_overrides(CameraConfig(), CAMERA_OVERRIDES)


@dataclass
class BuildConfig:
    """How `splatvlm toyworld build` rebuilds the shipped weights (seeded; the defaults are what ships)."""

    out: Path = WEIGHTS_DIR
    """Folder to write prior/ and reward/ into."""
    device: str = "cpu"
    """'cpu' or 'cuda'."""
    seed: int = 0
    """Seed of the renders, the initializations and the batches."""
    groups: int = 24
    """4-view groups rendered per object (the Janus variants get ``janus_groups``)."""
    janus_groups: int = 0
    """4-view groups rendered per Janus variant (0: half of ``groups``, at least 4, as shipped). The last
    quarter is held out, as for the objects; another value also shifts the seeded renders drawn after them."""
    prior_steps: int = 4000
    """Prior (UNet + text encoder) steps."""
    prior_max_s: float = 0.0
    """Stop the prior's training after this many seconds (0: no limit, the seeded default); the learning rate's
    cosine then follows the elapsed share of the limit when that runs ahead of the steps, so a build cut by time
    still ends at the decayed rate. build.json records the steps done."""
    prior_from: Path | None = None
    """Continue the prior in this weights folder (its prior/ and build.json) instead of starting fresh: its
    autoencoder is kept (not retrained), its UNet and text encoder train on with a fresh AdamW and schedule (a warm
    restart), and the batches come from a generator offset by the steps it had done, so a long build can span
    several time-limited runs. build.json records the steps in all (prior_steps_total)."""
    prior_batch: int = 4
    """Objects (4-view groups) per prior step."""
    prior_lr: float = 1e-3
    """Prior AdamW learning rate (cosine decay to 10 %)."""
    caption_dropout: float = 0.1
    """Share of prior training groups whose caption is replaced by "" (for classifier-free guidance)."""
    shaded_share: float = 0.0
    """Share of the prior's training groups shown shaded, half diffuse-lit and half textureless (the light alone),
    lit as ``render.shading mixed`` lights a run; the caption stays the object's. A prior that has seen its objects
    shaded can judge shaded renders, as a real one trained on lit renders can. 0: albedo only."""
    reward_steps: int = 15000
    """Reward VLM steps (batch of 4 records each)."""
    reward_lr: float = 2e-4
    """Reward AdamW learning rate."""
    janus_share: float = 0.35
    """Share of the reward's negatives that are Janus variants; the other kinds keep their ratios in
    ``reward_model.NEGATIVE_SHARES`` and fill the rest (0.35, the shipped value, leaves them as they are)."""
    reward_noise: float = 0.0
    """Train the reward on noisy views: each training record's views get Gaussian pixel noise of a std drawn
    uniformly from [0, reward_noise] (clamped to [0, 1]); a smoother input gradient is the aim. 0: off, as shipped
    (nothing is drawn). The held-out accuracy is measured on clean views either way."""
    reward_from: Path | None = None
    """Fine-tune the reward in this weights folder (its reward/) instead of a fresh demo-size VLM (None: fresh,
    as shipped before adversarial training). The held-out gradient alignment is measured before and after."""
    reward_pgd_steps: int = 0
    """Adversarial training: each training record's views are moved by this many signed-gradient steps of
    2.5 x eps / steps, from a random start inside the L-inf ball of ``reward_pgd_eps``, to raise the record's
    loss, and the reward trains on the moved views (Madry et al.). A robust classifier's pixel gradient points
    toward the object rather than along adversarial directions, at (1 + steps) x the cost of a step and some
    clean accuracy. 0: off."""
    reward_pgd_eps: float = 4 / 255
    """L-inf radius of the adversarial views, on pixels in [0, 1]."""
    reward_hard: list[Path] = field(default_factory=list)
    """Hard negatives: files written by ``hard_negatives.py`` (4-view renders of toy runs' intermediate scenes
    that are clearly not their object), answered No for the run's caption. Their last quarter per object is
    held out. Empty: none."""
    reward_hard_share: float = 0.3
    """Share of the negatives drawn from ``reward_hard`` (when given); the other kinds fill the rest in their
    ratios."""
    threads: int = 1
    """CPU threads for torch (the toy models are too small to gain from a second thread on a shared machine)."""
    only: Literal["all", "prior", "reward"] = "all"
    """Train only one model; the other one in `out` is kept, and build.json keeps its stage's record."""


# ---------------------------------------------------------------------------------------------
# Data


@dataclass
class Renders:
    rgb: Tensor  # [G, 4, H, W, 3] on black
    alpha: Tensor  # [G, 4, H, W, 1]
    cameras: Tensor  # [G, 4, 16] MVDream's camera input
    shaded: Tensor | None = None  # [G, 2, 4, H, W, 3] on black, one per SHADED_MODES (``lights``)


SHADED_MODES = ("diffuse", "textureless")


@torch.no_grad()
def render_groups(
    params: torch.nn.ParameterDict, groups: int, gen: torch.Generator, lights: torch.Generator | None = None
) -> Renders:
    """Seeded 4-view renders of one scene, always on the CPU (torch rasterizer), so that a build on any
    device trains on the same data. ``lights``: also each group diffuse-lit and textureless, the lighting drawn
    from this generator (so the plain renders are the same with or without)."""
    from ..guidance.mvdream import mvdream_cameras

    cam_cfg = toy_camera()
    params = params.to("cpu")
    rgbs, alphas, cams_out, shaded = [], [], [], []
    for start in range(0, groups, 8):
        n = min(8, groups - start)
        cams = sample_orbit(cam_cfg, 4 * n, RESOLUTION, gen)
        out = render(
            params,
            cams,
            RenderConfig(torch_chunk=TORCH_CHUNK),
            torch.zeros(4 * n, 3),
            depth=lights is not None,
        )
        rgbs.append(out.rgb.cpu())
        alphas.append(out.alpha.cpu())
        cams_out.append(mvdream_cameras(cams))
        if lights is not None:
            for g in range(n):  # one light and ambient / diffuse split per group, as in a run's step
                v = slice(4 * g, 4 * g + 4)
                args = (out.rgb[v], out.alpha[v], out.depth[v], None, cams[v])
                both = [shade(*args, sample_lighting(cams[v], 4, lights, force=m)) for m in SHADED_MODES]
                shaded.append(torch.stack(both))
    shape = (groups, 4)
    return Renders(
        torch.cat(rgbs).reshape(*shape, RESOLUTION, RESOLUTION, 3),
        torch.cat(alphas).reshape(*shape, RESOLUTION, RESOLUTION, 1),
        torch.cat(cams_out).reshape(*shape, 16),
        torch.stack(shaded) if shaded else None,
    )


def composite(rgb: Tensor, alpha: Tensor, gen: torch.Generator) -> Tensor:
    """Groups [G, 4, H, W, 3] over one random background per group (half of them white), as the trainer does."""
    g = rgb.shape[0]
    color = torch.rand(g, 3, generator=gen)
    white = torch.rand(g, generator=gen) < 0.5
    color[white] = 1.0
    return rgb + (1 - alpha) * color[:, None, None, None, :]


def blob_params(seed: int) -> torch.nn.ParameterDict:
    """A noisy gray ball, half opaque: a shapeless scene the reward must reject."""
    return init_ball(
        SceneConfig(num_points=SCENE_POINTS, radius=0.4, color_noise=0.3, opacity=0.5),
        torch.Generator().manual_seed(seed),
    )


def start_scene_config() -> SceneConfig:
    """The scene every toy run starts from: the presets' initial ball (opacity 0.1) with the toy's count."""
    from ..config import apply_overrides, load_run_config

    return apply_overrides(load_run_config("mvdream").scene, {"num_points": SCENE_POINTS})


def start_params(seed: int) -> torch.nn.ParameterDict:
    """The faint gray ball a toy run starts from (``start_scene_config``), seeded like a run's."""
    return init_ball(start_scene_config(), torch.Generator().manual_seed(seed))


# ---------------------------------------------------------------------------------------------
# The prior


def unet_config() -> dict:
    from ..demo import tiny_unet_config

    # the exact autoencoder's latents: 2x2 space-to-depth of RGB
    return dict(tiny_unet_config("mvdream"), sample_size=RESOLUTION // 2, in_channels=12, out_channels=12)


def last_mean(values: list[Tensor], n: int) -> float:
    """Mean of the last ``n`` logged loss tensors (one host read)."""
    return float(torch.stack(values[-n:]).double().mean())


def load_prior(folder: Path) -> tuple[dict, int]:
    """The prior parts in ``folder/prior`` (autoencoder, UNet, text encoder, tokenizer) and the steps it had done
    in all (``folder/build.json``; 0 when it has no record)."""
    from diffusers import UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer

    from ..errors import SplatVLMError
    from .autoencoder import is_space_to_depth

    src = Path(folder) / "prior"
    if not (src / "model_index.json").is_file():
        raise SplatVLMError(f"--prior-from {folder}: no toy prior there (missing prior/model_index.json)")
    if not is_space_to_depth(src / "vae"):
        raise SplatVLMError(f"--prior-from {folder}: its prior has a learned autoencoder, not the exact one")
    parts = {
        "vae": SpaceToDepthAutoencoder.from_pretrained(src / "vae"),
        "unet": UNet2DConditionModel.from_pretrained(src / "unet"),
        "text_encoder": CLIPTextModel.from_pretrained(src / "text_encoder"),
        "tokenizer": CLIPTokenizer.from_pretrained(src / "tokenizer"),
    }
    record = Path(folder) / "build.json"
    prior = json.loads(record.read_text()).get("stages", {}).get("prior", {}) if record.is_file() else {}
    return parts, int(prior.get("prior_steps_total", prior.get("prior_steps_done", 0)))


def prior_lr_factor(step: int, steps: int, max_s: float = 0.0, elapsed: float = 0.0) -> float:
    """The prior's learning-rate factor: 100 warm-up steps, then a cosine from 1 to 0.1 over ``steps``, or over
    ``max_s`` seconds when that time limit (> 0) runs out first."""
    angle = math.pi * step / steps
    if max_s:
        angle = min(max(angle, math.pi * elapsed / max_s), math.pi)
    return min(1.0, (step + 1) / 100) * (0.1 + 0.9 * 0.5 * (1 + math.cos(angle)))


def train_prior(data: dict[str, Renders], captions: dict[str, str], cfg: BuildConfig, log) -> tuple:
    """The exact autoencoder's affine map, then UNet + text encoder; returns the SDComponents (on the CPU) and a
    log dict."""
    from diffusers import DDPMScheduler, UNet2DConditionModel

    from ..demo import SD_SCHEDULER_CONFIG, tiny_clip_tokenizer, tiny_text_encoder
    from ..guidance.mvdream import set_multiview_attention

    dev = torch.device(cfg.device)
    base, before = load_prior(cfg.prior_from) if cfg.prior_from else (None, 0)
    gen = torch.Generator().manual_seed(cfg.seed + 1 + before)  # seed + 1 for a fresh prior, as shipped
    torch.manual_seed(cfg.seed + before)
    names = list(data)
    all_rgb = torch.cat([data[n].rgb for n in names])  # [G, 4, H, W, 3]
    all_alpha = torch.cat([data[n].alpha for n in names])
    all_cams = torch.cat([data[n].cameras for n in names])
    owner = [n for n in names for _ in range(data[n].rgb.shape[0])]
    if cfg.shaded_share > 0:
        all_shaded = torch.cat([data[n].shaded for n in names])  # [G, 2, 4, H, W, 3]
        # its own generator: the batches' draws stay as they were
        shade_gen = torch.Generator().manual_seed(cfg.seed + 3 + before)

    def batch(k: int) -> tuple[Tensor, Tensor, list[str]]:
        idx = torch.randint(len(owner), (k,), generator=gen)
        rgb = all_rgb[idx]
        if cfg.shaded_share > 0:
            draw = torch.rand(k, generator=shade_gen)
            mode = (draw * 2 / cfg.shaded_share).long().clamp_max(2)  # an index into SHADED_MODES; 2: albedo
            lit = mode < 2
            rgb = rgb.clone()
            rgb[lit] = all_shaded[idx[lit], mode[lit]]
        x = composite(rgb, all_alpha[idx], gen)  # [k, 4, H, W, 3]
        return (
            x.reshape(-1, RESOLUTION, RESOLUTION, 3).permute(0, 3, 1, 2) * 2 - 1,
            all_cams[idx].reshape(-1, 16),
            [owner[i] for i in idx],
        )

    # 1. the exact autoencoder, its affine map fitted to every group over a random background (its own
    # generator, so the batches below are the same either way), or the continued prior's as it is
    if base is None:
        every = composite(all_rgb, all_alpha, torch.Generator().manual_seed(cfg.seed + 2))
        vae = fitted_autoencoder(every.reshape(-1, RESOLUTION, RESOLUTION, 3).permute(0, 3, 1, 2) * 2 - 1)
    else:
        vae = base["vae"]
    vae = vae.to(dev).eval().requires_grad_(False)
    scale = float(vae.config.scaling_factor)

    # 2. UNet + text encoder (fresh, or the continued prior's, in training mode)
    t0 = time.perf_counter()
    if base is None:
        tokenizer = tiny_clip_tokenizer()
        text_encoder = tiny_text_encoder(tokenizer).to(dev)
        unet = UNet2DConditionModel(**unet_config()).to(dev)
    else:
        tokenizer, text_encoder, unet = base["tokenizer"], base["text_encoder"].to(dev), base["unet"].to(dev)
        text_encoder.train().requires_grad_(True)
        unet.train().requires_grad_(True)
    set_multiview_attention(unet, 4)
    scheduler = DDPMScheduler(**SD_SCHEDULER_CONFIG)
    alphas = scheduler.alphas_cumprod.to(dev)
    params = list(unet.parameters()) + list(text_encoder.parameters())
    opt = torch.optim.AdamW(params, lr=cfg.prior_lr, weight_decay=0.01)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: prior_lr_factor(s, cfg.prior_steps, cfg.prior_max_s, time.perf_counter() - t0)
    )
    ema = []
    done = 0
    for step in range(cfg.prior_steps):
        if cfg.prior_max_s and time.perf_counter() - t0 > cfg.prior_max_s:
            log(f"prior: time limit after {step} steps")
            break
        done = step + 1
        x, cams, who = batch(cfg.prior_batch)
        texts = [
            "" if torch.rand(1, generator=gen).item() < cfg.caption_dropout else captions[n] for n in who
        ]
        ids = tokenizer(
            texts, padding="max_length", max_length=77, truncation=True, return_tensors="pt"
        ).input_ids
        with torch.no_grad():
            z = vae.encode(x.to(dev)).latent_dist.sample() * scale
        emb = text_encoder(ids.to(dev))[0].repeat_interleave(4, dim=0)
        t = torch.randint(0, 1000, (cfg.prior_batch,), generator=gen).repeat_interleave(4).to(dev)
        noise = torch.randn(z.shape, generator=gen).to(dev)
        ab = alphas[t][:, None, None, None]
        z_t = ab.sqrt() * z + (1 - ab).sqrt() * noise
        eps = unet(z_t, t, encoder_hidden_states=emb, class_labels=cams.to(dev)).sample
        loss = F.mse_loss(eps, noise)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        ema.append(loss.detach())
        if step % 10 == 0 or step == cfg.prior_steps - 1:
            log(f"prior step {step} eps mse {last_mean(ema, 100):.4f} ({time.perf_counter() - t0:.0f} s)")
    unet_s = time.perf_counter() - t0
    from diffusers.models.attention_processor import AttnProcessor2_0

    unet.set_attn_processor(AttnProcessor2_0())  # saved plain; SDSGuidance sets the multi-view one on load
    parts = dict(
        unet=unet.cpu().eval(),
        vae=vae.cpu().eval(),
        text_encoder=text_encoder.cpu().eval(),
        tokenizer=tokenizer,
        scheduler=scheduler,
    )
    return (
        parts,
        {
            "autoencoder": {"shift": vae.config.shift, "scaling_factor": vae.config.scaling_factor},
            "prior_s": round(unet_s, 1),
            "prior_steps_done": done,
            **(
                {"prior_from": str(cfg.prior_from), "prior_steps_total": before + done}
                if base is not None
                else {}
            ),
            "final_eps_mse": round(last_mean(ema, 100), 4),
        },
    )


def cat_renders(parts: list[Renders]) -> Renders:
    """Renders stacked along the group axis."""
    return Renders(*(torch.cat([getattr(r, f) for r in parts]) for f in ("rgb", "alpha", "cameras")))


def world_renders(cfg: BuildConfig) -> tuple[dict[str, Renders], dict[str, Renders], dict[str, Renders]]:
    """The world's seeded renders, in this order (the seeding depends on it): each object's groups, each
    front/back object's Janus variant, and the shapeless balls ("blob", "start")."""
    objs: list[ToyObject] = world()
    gen = torch.Generator().manual_seed(cfg.seed)
    lights = torch.Generator().manual_seed(cfg.seed + 4) if cfg.shaded_share > 0 else None
    data = {o.name: render_groups(object_params(o, seed=cfg.seed), cfg.groups, gen, lights) for o in objs}
    n_janus = cfg.janus_groups or max(4, cfg.groups // 2)
    janus = {o.name: render_groups(object_params(janus_variant(o), seed=cfg.seed), n_janus, gen)
             for o in objs if o.front_back}  # fmt: skip
    shapeless = {
        kind: cat_renders([render_groups(make(cfg.seed + 100 + k), 2, gen) for k in range(8)])
        for kind, make in (("blob", blob_params), ("start", start_params))
    }
    return data, janus, shapeless
