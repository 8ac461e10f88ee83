"""Score distillation: schedule, CFG, the eps and x0 targets, loading and clear errors (tiny models, CPU)."""

from __future__ import annotations

import os
import time

import pytest
import torch

from splatvlm.demo import ensure_demo_models, save_components, tiny_clip_tokenizer, tiny_components
from splatvlm.errors import SplatVLMError
from splatvlm.gaussians.cameras import CameraConfig, orbit_cameras, sample_orbit
from splatvlm.guidance.mvdream import mvdream_cameras
from splatvlm.guidance.sds import (
    VIEW_SUFFIXES,
    SDSConfig,
    SDSGuidance,
    cfg_combine,
    predict_x0,
    sds_weight,
    timestep_range,
    view_directions,
    x0_target,
)
from splatvlm.models import build_prior, check_sds_source


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny models run fastest on one thread, and a shared CPU makes more threads much slower."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module", autouse=True)
def demo_cache(tmp_path_factory):
    """Demo models go to a fresh cache folder, never the user's."""
    old = os.environ.get("SPLATVLM_CACHE")
    os.environ["SPLATVLM_CACHE"] = str(tmp_path_factory.mktemp("cache"))
    yield
    if old is None:
        os.environ.pop("SPLATVLM_CACHE")
    else:
        os.environ["SPLATVLM_CACHE"] = old


@pytest.fixture(scope="module")
def mv() -> SDSGuidance:
    g = build_prior(SDSConfig(kind="mvdream", model="demo"), "cpu")
    g.set_prompt("a red apple")
    return g


def cams4(resolution: int = 64, seed: int = 0, views: int = 4):
    return sample_orbit(CameraConfig(), views, resolution, torch.Generator().manual_seed(seed))


# ---------------------------------------------------------------------------------------------
# Math


def test_annealed_timestep_range_follows_the_schedule():
    cfg = SDSConfig()  # VLM3D: min 0.98 -> 0.02, max 0.98 -> 0.50 over 8000 steps
    assert timestep_range(cfg, 0) == (980, 980)
    assert timestep_range(cfg, 2000) == (740, 860)
    assert timestep_range(cfg, 4000) == (500, 740)
    assert timestep_range(cfg, 8000) == (20, 500)
    assert timestep_range(cfg, 20000) == (20, 500)
    lows = [timestep_range(cfg, s)[0] for s in range(0, 8001, 500)]
    assert lows == sorted(lows, reverse=True)
    flat = SDSConfig(t_min_start=0.02, t_min_end=0.02, t_max_start=0.98, t_max_end=0.98)
    assert timestep_range(flat, 0) == timestep_range(flat, 5000) == (20, 980)


def test_sampled_timesteps_stay_in_range(mv):
    torch.manual_seed(0)
    ts = [mv.sample_timestep(4000) for _ in range(300)]
    assert min(ts) >= 500 and max(ts) <= 740
    assert max(ts) - min(ts) > 150  # actually spread over the range
    assert {mv.sample_timestep(0) for _ in range(5)} == {980}


def test_view_directions():
    az = torch.tensor([0.0, 44.0, 90.0, 180.0, -170.0, 270.0, 10.0])
    el = torch.tensor([0.0, 10.0, 10.0, 20.0, 0.0, 0.0, 75.0])
    names = [VIEW_SUFFIXES[i] for i in view_directions(el, az)]
    assert names == [
        "front view",
        "front view",
        "side view",
        "back view",
        "back view",
        "side view",
        "overhead view",
    ]


def test_cfg_combination():
    g = torch.Generator().manual_seed(0)
    cond, uncond = torch.randn(3, 4, 2, 2, generator=g), torch.randn(3, 4, 2, 2, generator=g)
    torch.testing.assert_close(cfg_combine(cond, uncond, 7.5), uncond + 7.5 * (cond - uncond))
    torch.testing.assert_close(cfg_combine(cond, uncond, 1.0), cond)
    torch.testing.assert_close(cfg_combine(cond, uncond, 0.0), uncond)


def test_x0_target_matches_its_formula():
    g = torch.Generator().manual_seed(0)
    z_t, eps, eps_c = (torch.randn(8, 4, 3, 3, generator=g) for _ in range(3))
    eps = eps * 3.0  # a guided prediction with a larger spread than the unguided one
    a = torch.tensor(0.3)
    x0 = (z_t - (1 - a).sqrt() * eps) / a.sqrt()
    x0c = (z_t - (1 - a).sqrt() * eps_c) / a.sqrt()
    torch.testing.assert_close(predict_x0(z_t, eps, a), x0)
    torch.testing.assert_close(x0_target(z_t, eps, eps_c, a, 0.0, 4), x0)
    out = x0_target(z_t, eps, eps_c, a, 0.5, 4)
    for obj in range(2):  # each object of 4 views gets its own factor
        s = slice(4 * obj, 4 * obj + 4)
        factor = (x0c[s].std() + 1e-8) / (x0[s].std() + 1e-8)
        torch.testing.assert_close(out[s], 0.5 * x0[s] * factor + 0.5 * x0[s])
    # with rescale 1 the std equals the unguided one
    full = x0_target(z_t, eps, eps_c, a, 1.0, 4)
    torch.testing.assert_close(full[:4].std(), x0c[:4].std(), rtol=1e-5, atol=1e-6)


def test_sds_weights():
    a = torch.tensor([0.1, 0.5, 0.9])
    torch.testing.assert_close(sds_weight(a, "sds"), 1 - a)
    torch.testing.assert_close(sds_weight(a, "uniform"), torch.ones(3))
    torch.testing.assert_close(sds_weight(a, "fantasia3d"), a.sqrt() * (1 - a))


# ---------------------------------------------------------------------------------------------
# The guidance term against direct UNet calls


def direct_eps(g: SDSGuidance, z_t, t: int, cams, prompt: str):
    """Conditional and unconditional predictions from separate UNet calls (no shared batch)."""
    parts = g.parts
    text = g.encode_text([prompt, g.cfg.negative_prompt])
    c = z_t.shape[0]
    kw = {"class_labels": mvdream_cameras(cams)} if g.cfg.kind == "mvdream" else {}
    with torch.no_grad():
        cond = parts.unet(
            z_t, torch.full((c,), t), encoder_hidden_states=text[:1].expand(c, -1, -1), **kw
        ).sample
        uncond = parts.unet(
            z_t, torch.full((c,), t), encoder_hidden_states=text[1:].expand(c, -1, -1), **kw
        ).sample
    return cond, uncond


@pytest.mark.parametrize("scale", [0.0, 1.0, 7.5])
def test_eps_gradient_on_latents_is_w_times_eps_error(scale):
    g = build_prior(
        SDSConfig(kind="mvdream", model="demo", mode="eps", guidance_scale=scale, weighting="sds"), "cpu"
    )
    g.set_prompt("a red apple")
    cams = cams4()
    gen = torch.Generator().manual_seed(1)
    latents = torch.randn(4, 4, 8, 8, generator=gen).requires_grad_(True)
    noise = torch.randn(4, 4, 8, 8, generator=gen)
    t = 600
    out = g.latent_loss(latents, cams, step=0, t=t, noise=noise)
    out["loss_sds"].backward()
    a = g.alphas_cumprod[t]
    z_t = a.sqrt() * latents.detach() + (1 - a).sqrt() * noise
    cond, uncond = direct_eps(g, z_t, t, cams, "a red apple")
    eps = uncond + scale * (cond - uncond)
    expected = (1 - a) * (eps - noise)  # w(t) (eps_pred - eps)
    torch.testing.assert_close(latents.grad * 4, expected, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(
        out["loss_sds"].detach(), 0.5 * expected.pow(2).sum() / 4, rtol=1e-4, atol=1e-6
    )
    assert out["sds_t"] == 600.0
    assert out["sds_grad_norm"] == pytest.approx(float((expected / 4).norm()), rel=1e-4)


def test_x0_gradient_on_latents(mv):
    cams = cams4(seed=3)
    gen = torch.Generator().manual_seed(2)
    latents = torch.randn(4, 4, 8, 8, generator=gen).requires_grad_(True)
    noise = torch.randn(4, 4, 8, 8, generator=gen)
    t = 300
    out = mv.latent_loss(latents, cams, step=0, t=t, noise=noise)
    out["loss_sds"].backward()
    a = mv.alphas_cumprod[t]
    z_t = a.sqrt() * latents.detach() + (1 - a).sqrt() * noise
    cond, uncond = direct_eps(mv, z_t, t, cams, "a red apple")
    eps = uncond + 50.0 * (cond - uncond)
    x0 = (z_t - (1 - a).sqrt() * eps) / a.sqrt()
    x0c = (z_t - (1 - a).sqrt() * cond) / a.sqrt()
    x0 = 0.5 * x0 * (x0c.std() + 1e-8) / (x0.std() + 1e-8) + 0.5 * x0
    torch.testing.assert_close(latents.grad, (latents.detach() - x0) / 4, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(
        out["loss_sds"].detach(), 0.5 * (latents.detach() - x0).pow(2).sum() / 4, rtol=1e-4, atol=1e-4
    )


def test_end_to_end_step_on_renders(mv):
    torch.manual_seed(0)
    cams = cams4(64, views=8)
    rgb = torch.rand(8, 64, 64, 3, requires_grad=True)
    times = []
    for step in (0, 3000, 9000):
        start = time.perf_counter()
        out = mv(rgb, cams, step)
        out["loss_sds"].backward()
        times.append(time.perf_counter() - start)
        lo, hi = timestep_range(mv.cfg, step)
        assert lo <= out["sds_t"] <= hi
        assert torch.isfinite(out["loss_sds"]) and out["loss_sds"].item() > 0
        assert out["sds_grad_norm"] > 0
    assert rgb.grad is not None and torch.isfinite(rgb.grad).all() and rgb.grad.abs().sum() > 0
    assert mv.image_size == 64 and mv.latent_resolution == 8
    assert "random weights" in mv.notice
    assert min(times) < 5.0  # a few hundred ms on an idle CPU; loose for a shared one


def test_renders_are_resized_to_the_model_size(mv):
    torch.manual_seed(0)
    rgb = torch.rand(4, 96, 96, 3, requires_grad=True)
    assert mv.encode_images(rgb).shape == (4, 4, 8, 8)
    out = mv(rgb, cams4(96), 100)
    out["loss_sds"].backward()
    assert rgb.grad.abs().sum() > 0


def test_vae_attention_math_equals_sdpa():
    """The VAE's explicit attention (the default, fast on CUDA) gives SDPA's latents and pixel gradient."""
    torch.manual_seed(0)
    rgb = torch.rand(4, 64, 64, 3)
    outs = {}
    for kind in ("math", "sdpa"):
        g = build_prior(SDSConfig(kind="mvdream", model="demo", vae_attention=kind), "cpu")
        procs = {type(p).__name__ for p in g.parts.vae.attn_processors.values()}
        assert procs == {"AttnProcessor" if kind == "math" else "AttnProcessor2_0"}
        x = rgb.clone().requires_grad_(True)
        z = g.encode_images(x, noise=torch.zeros(4, 4, 8, 8))
        (z * torch.linspace(-1, 1, z.numel()).reshape(z.shape)).sum().backward()
        outs[kind] = (z.detach(), x.grad)
    torch.testing.assert_close(outs["math"][0], outs["sdpa"][0], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(outs["math"][1], outs["sdpa"][1], rtol=1e-4, atol=1e-7)


def test_mvdream_needs_groups_of_four_views(mv):
    cams = orbit_cameras(
        torch.zeros(3), torch.tensor([0.0, 90.0, 180.0]), torch.ones(3) * 3, torch.ones(3) * 40, 64, 64
    )
    with pytest.raises(SplatVLMError, match="groups of 4"):
        mv(torch.rand(3, 64, 64, 3), cams, 0)


def test_prompt_embeddings_are_cached(mv, monkeypatch):
    calls = []
    original = mv.encode_text
    monkeypatch.setattr(mv, "encode_text", lambda texts: calls.append(texts) or original(texts))
    mv.set_prompt("a red apple")  # already set by the fixture
    assert calls == []
    mv.set_prompt("a blue chair")
    mv.set_prompt("a blue chair")
    assert len(calls) == 1
    mv.set_prompt("a red apple")


def test_view_dependent_prompts_pick_the_direction():
    g = build_prior(
        SDSConfig(kind="sd", model="demo", view_dependent_prompts=True, negative_prompt="blurry"), "cpu"
    )
    g.set_prompt("a cat")
    # azimuths 0 (front), 90 (side), 180 (back)
    cams = orbit_cameras(
        torch.zeros(3), torch.tensor([0.0, 90.0, 180.0]), torch.ones(3) * 3, torch.ones(3) * 40, 64, 64
    )
    cond, uncond = g.text_embeddings(cams)
    ref = g.encode_text(["a cat, front view", "a cat, side view", "a cat, back view", "blurry"])
    torch.testing.assert_close(cond, ref[:3])
    torch.testing.assert_close(uncond, ref[3:].expand(3, -1, -1))
    assert not torch.equal(cond[0], cond[1])
    out = g(torch.rand(3, 64, 64, 3), cams, 0)  # SD takes any number of views
    assert torch.isfinite(out["loss_sds"])


# ---------------------------------------------------------------------------------------------
# The capture-safe step of the CUDA-graph path, run eagerly on CPU


def graph_step(g: SDSGuidance, rgb: torch.Tensor, cams, step: int):
    """What a graph replay computes: fill the static inputs, then the capture-safe loss and its pixel grad."""
    t = g.fill_static_inputs(tuple(rgb.shape), cams, step)
    x = rgb.detach().clone().requires_grad_(True)
    value, aux = g.static_loss(x)
    (grad,) = torch.autograd.grad(value, x)
    return t, value.detach(), grad, float(aux["grad_norm"])


@pytest.mark.parametrize(
    "kind,mode,views,px",
    [("mvdream", "x0", 8, 64), ("mvdream", "eps", 4, 96), ("sd", "x0", 3, 64), ("sd", "eps", 3, 48)],
)
def test_capture_safe_step_equals_eager_step_exactly(kind, mode, views, px):
    """Seeded alike, the graph path draws the same timestep and noises and gives bit-identical results."""
    cfg = SDSConfig(kind=kind, model="demo", mode=mode, view_dependent_prompts=kind == "sd", t_min_start=0.02)
    g = build_prior(cfg, "cpu")
    g.set_prompt("a red apple")
    cams = sample_orbit(CameraConfig(views_per_group=1), views, px, torch.Generator().manual_seed(4))
    for step, seed in ((0, 11), (5000, 12)):  # the second step reuses the buffers
        rgb = torch.rand(views, px, px, 3, generator=torch.Generator().manual_seed(seed), requires_grad=True)
        torch.manual_seed(seed)
        eager = g(rgb, cams, step)
        eager["loss_sds"].backward()
        torch.manual_seed(seed)
        t, value, grad, grad_norm = graph_step(g, rgb, cams, step)
        assert t == eager["sds_t"]
        assert torch.equal(value, eager["loss_sds"].detach()), (value, eager["loss_sds"])
        assert torch.equal(grad, rgb.grad), float((grad - rgb.grad).abs().max())
        assert grad_norm == eager["sds_grad_norm"] > 0
        assert grad.abs().sum() > 0
    assert len(g._static) == 1


def test_static_inputs_are_redrawn_in_place_each_step(mv):
    cams = cams4()
    shape = (4, 64, 64, 3)
    torch.manual_seed(0)
    ts, noises, ptrs = [], [], set()
    for _ in range(3):
        ts.append(mv.fill_static_inputs(shape, cams, 9000))  # range 20..500
        buf = mv._static[shape]
        noises.append(buf["noise"].clone())
        ptrs.add(buf["noise"].data_ptr())
        assert int(buf["t"]) == ts[-1]
        assert buf["cameras"].shape == (8, 16) and torch.equal(buf["cameras"][:4], buf["cameras"][4:])
    assert len(set(ts)) == 3 and not torch.equal(noises[0], noises[1])
    assert len(ptrs) == 1  # a captured graph reads the same memory every replay
    mv.set_prompt("a blue chair")  # a new prompt reaches the static text buffer at the next fill
    mv.fill_static_inputs(shape, cams, 9000)
    torch.testing.assert_close(mv._static[shape]["text"][:4], mv.text_embeddings(cams)[0])
    mv.set_prompt("a red apple")


def test_cuda_graph_is_ignored_on_cpu(mv):
    assert mv.cfg.cuda_graph
    rgb = torch.rand(4, 64, 64, 3, requires_grad=True)
    assert not mv.uses_cuda_graph(rgb)
    out = mv(rgb, cams4(), 0)
    assert out["loss_sds"].grad_fn is not None and mv._graphed is None


def test_compiling_is_ignored_on_cpu(mv):
    assert mv.cfg.compile and mv.cfg.compile_vae  # the defaults, read on CUDA only
    parts = mv.parts
    assert not isinstance(parts.unet, torch._dynamo.eval_frame.OptimizedModule)
    assert parts.vae.encoder._compiled_call_impl is None


# ---------------------------------------------------------------------------------------------
# Loading


def test_tiny_tokenizer_round_trip(tmp_path):
    tok = tiny_clip_tokenizer()
    ids = tok(["a red apple"], padding="max_length", max_length=77).input_ids[0]
    assert len(ids) == 77 and ids[0] == tok.bos_token_id and tok.eos_token_id in ids
    assert tok.decode(ids, skip_special_tokens=True).replace(" ", "") == "aredapple"


@pytest.mark.parametrize("kind", ["mvdream", "sd"])
def test_saved_tiny_pipeline_loads_through_the_hf_code_path(kind, tmp_path):
    """A folder written by save_components loads with the same from_pretrained calls as an HF id."""
    ref = tiny_components(kind, seed=5)
    save_components(ref, tmp_path / "model")
    g = build_prior(SDSConfig(kind=kind, model=str(tmp_path / "model")), "cpu")
    for name in ("unet", "vae", "text_encoder"):
        got, want = getattr(g.parts, name).state_dict(), ref[name].state_dict()
        assert set(got) == set(want)
        assert all(torch.equal(got[k], want[k]) for k in want), name
    assert g.parts.scheduler.config.beta_schedule == "scaled_linear"
    assert g.notice is None
    g.set_prompt("a red apple")
    out = g(torch.rand(4, 64, 64, 3), cams4(), 0)
    assert torch.isfinite(out["loss_sds"])


def test_demo_models_are_saved_once():
    folder = ensure_demo_models("mvdream")
    stamp = (folder / "unet" / "config.json").stat().st_mtime_ns
    assert ensure_demo_models("mvdream") == folder
    assert (folder / "unet" / "config.json").stat().st_mtime_ns == stamp
    assert str(folder).startswith(os.environ["SPLATVLM_CACHE"])


def one_line(e: pytest.ExceptionInfo) -> str:
    msg = str(e.value)
    assert "\n" not in msg
    return msg


def test_missing_local_path(tmp_path):
    missing = str(tmp_path / "nope")
    with pytest.raises(SplatVLMError) as e:
        check_sds_source(SDSConfig(model=missing))
    msg = one_line(e)
    assert missing in msg and "--sds.model" in msg and "no such file" in msg


def test_folder_without_components(tmp_path):
    (tmp_path / "unet").mkdir()
    (tmp_path / "unet" / "config.json").write_text("{}")
    with pytest.raises(SplatVLMError) as e:
        check_sds_source(SDSConfig(kind="sd", model=str(tmp_path)))
    assert "missing text_encoder/config.json" in one_line(e)


def test_wrong_file_types(tmp_path):
    txt = tmp_path / "weights.txt"
    txt.write_text("hello")
    with pytest.raises(SplatVLMError, match="checkpoint"):
        check_sds_source(SDSConfig(model=str(txt)))
    fake = tmp_path / "model.pt"
    fake.write_text("not a checkpoint")
    with pytest.raises(SplatVLMError, match="not a PyTorch"):
        check_sds_source(SDSConfig(model=str(fake)))
    torch.save({"x": torch.zeros(1)}, tmp_path / "sd.pt")
    with pytest.raises(SplatVLMError, match="expected a folder"):
        check_sds_source(SDSConfig(kind="sd", model=str(tmp_path / "sd.pt")))


def test_checkpoint_needs_a_base_model(tmp_path):
    torch.save({"x": torch.zeros(1)}, tmp_path / "mv.pt")
    with pytest.raises(SplatVLMError) as e:
        check_sds_source(SDSConfig(model=str(tmp_path / "mv.pt"), base_model=str(tmp_path / "sd21")))
    assert "--sds.base-model" in one_line(e)


def test_not_an_mvdream_checkpoint_fails_cleanly(tmp_path):
    torch.save({"x": torch.zeros(1)}, tmp_path / "mv.pt")
    save_components(tiny_components("sd"), tmp_path / "base")
    cfg = SDSConfig(model=str(tmp_path / "mv.pt"), base_model=str(tmp_path / "base"))
    with pytest.raises(SplatVLMError, match="camera MLP"):
        build_prior(cfg, "cpu")


def test_offline_hf_id_fails_fast(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(tmp_path))
    start = time.perf_counter()
    with pytest.raises(SplatVLMError) as e:
        check_sds_source(SDSConfig(model="someone/mvdream-weights"))
    msg = one_line(e)
    assert time.perf_counter() - start < 2.0
    assert "someone/mvdream-weights" in msg and "--sds.model" in msg and "HF id" in msg


def test_unreachable_hub_fails_fast(tmp_path, monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setattr("splatvlm.models.hub_reachable", lambda timeout=3.0: False)
    with pytest.raises(SplatVLMError, match="unreachable"):
        check_sds_source(SDSConfig(kind="sd", model="stabilityai/stable-diffusion-2-1-base"))
    with pytest.raises(SplatVLMError, match="unreachable"):
        check_sds_source(SDSConfig(model="MVDream/MVDream/sd-v2.1-base-4view.pt"))


def test_load_errors_become_one_line(tmp_path):
    save_components(tiny_components("sd"), tmp_path / "m")
    (tmp_path / "m" / "vae" / "config.json").write_text("{ not json")
    cfg = SDSConfig(kind="sd", model=str(tmp_path / "m"))
    with pytest.raises(SplatVLMError) as e:
        build_prior(cfg, "cpu")
    assert str(tmp_path / "m") in one_line(e)


def test_base_model_load_errors_name_the_base_model(tmp_path, monkeypatch):
    # The .pt route always builds the full-size UNet; stand in the tiny one to reach the base-model step.
    monkeypatch.setattr(
        "splatvlm.guidance.mvdream.load_mvdream_unet", lambda *a, **k: tiny_components("mvdream")["unet"]
    )
    torch.save({"x": torch.zeros(1)}, tmp_path / "mv.pt")
    save_components(tiny_components("sd"), tmp_path / "base")
    (tmp_path / "base" / "text_encoder" / "config.json").write_text("{ not json")
    cfg = SDSConfig(model=str(tmp_path / "mv.pt"), base_model=str(tmp_path / "base"))
    with pytest.raises(SplatVLMError) as e:
        build_prior(cfg, "cpu")
    msg = one_line(e)
    assert str(tmp_path / "base") in msg and "--sds.base-model" in msg


def test_bad_settings_are_rejected():
    with pytest.raises(SplatVLMError, match="t_min"):
        check_sds_source(SDSConfig(model="demo", t_min_end=0.6, t_max_end=0.5))
    with pytest.raises(SplatVLMError, match="image_size"):
        check_sds_source(SDSConfig(model="demo", image_size=100))


# ---------------------------------------------------------------------------------------------
# CUDA


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu():
    """The same step on both devices (not compiled: the compiled modules have their own test below)."""
    cfg = SDSConfig(
        kind="mvdream", model="demo", dtype="float32", attention="sdpa", compile=False, compile_vae=False
    )
    cams = cams4()
    gen = torch.Generator().manual_seed(0)
    latents = torch.randn(4, 4, 8, 8, generator=gen)
    noise = torch.randn(4, 4, 8, 8, generator=gen)
    grads = []
    tf32 = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = (
        False  # CFG 50 amplifies TF32 error
    )
    try:
        for device in ("cpu", "cuda"):
            g = build_prior(cfg, device)
            g.set_prompt("a red apple")
            z = latents.detach().to(device).requires_grad_(True)
            g.latent_loss(z, cams.to(device), 0, t=400, noise=noise.to(device))["loss_sds"].backward()
            grads.append(z.grad.cpu())
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = tf32
    scale = float(grads[0].abs().max())
    torch.testing.assert_close(grads[1], grads[0], atol=1e-4 * scale, rtol=1e-3)
    g = build_prior(
        SDSConfig(kind="mvdream", model="demo", dtype="bfloat16", compile=False, compile_vae=False), "cuda"
    )
    g.set_prompt("a red apple")
    rgb = torch.rand(4, 64, 64, 3, device="cuda", requires_grad=True)
    g(rgb, cams, 0)["loss_sds"].backward()
    assert torch.isfinite(rgb.grad).all()


def cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(torch.nn.functional.cosine_similarity(a.flatten().double(), b.flatten().double(), dim=0))


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize(
    "model,kind,mode,views,px",
    [
        ("demo", "mvdream", "x0", 4, 64),
        ("demo", "mvdream", "eps", 8, 32),  # renders resized up to the VAE size inside the graph
        ("demo", "sd", "x0", 3, 64),
        ("random", "mvdream", "x0", 4, 256),  # full-size SD-2.1-base UNet + VAE, VLM3D's late phase
        ("random", "mvdream", "x0", 8, 64),  # VLM3D's early phase: 8 views at 64 px, VAE at 256
    ],
)
def test_cuda_graph_matches_eager_bf16(model, kind, mode, views, px):
    """The graphed step against the eager one with the same seed (same timestep and noises), in bf16.

    Without torch.compile: the capture is what is checked here (the compiled modules have their own tests
    below), and compiling the full-size UNet and VAE per shape would take most of the CUDA suite's time."""
    image_size = 256 if model == "random" else 0
    cfg = SDSConfig(
        kind=kind,
        model=model,
        mode=mode,
        dtype="bfloat16",
        view_dependent_prompts=kind == "sd",
        t_min_start=0.02,  # steps 0..: any timestep in 20..980, so replays differ
        image_size=image_size,
        compile=False,
        compile_vae=False,
    )
    g = build_prior(cfg, "cuda")
    g.set_prompt("a DSLR photo of a corgi wearing a top hat")
    cams = sample_orbit(CameraConfig(views_per_group=1), views, px, torch.Generator().manual_seed(0))
    cams = cams.to("cuda")
    torch.manual_seed(0)
    logits = torch.randn(views, px, px, 3, device="cuda", requires_grad=True)
    for i, step in enumerate((0, 3000, 9000)):  # the first graphed call captures, the others replay
        got = {}
        for graph in (False, True):
            g.cfg.cuda_graph = graph
            logits.grad = None
            torch.manual_seed(100 + i)
            out = g(torch.sigmoid(logits), cams, step)  # a non-leaf render, as the trainer passes
            out["loss_sds"].backward()
            got[graph] = (out, logits.grad.clone())
        (eager, g_eager), (graphed, g_graph) = got[False], got[True]
        cos = cosine(g_graph, g_eager)
        # The diagnostics may be 0-d device tensors (the graphed step reads nothing back): compare as floats.
        t_g, t_e = float(graphed["sds_t"]), float(eager["sds_t"])
        n_g, n_e = float(graphed["sds_grad_norm"]), float(eager["sds_grad_norm"])
        print(
            f"{model} {kind} {mode} {views}x{px} step {step} t {t_g:.0f}: pixel-grad cosine {cos:.6f}, "
            f"loss {float(graphed['loss_sds']):.6g} vs {float(eager['loss_sds']):.6g}, grad norm {n_g:.4g} vs {n_e:.4g}"
        )
        assert t_g == t_e
        assert torch.isfinite(g_graph).all() and g_graph.abs().sum() > 0
        assert cos >= 0.99
        l_g, l_e = float(graphed["loss_sds"]), float(eager["loss_sds"])
        assert abs(l_g - l_e) <= 2e-2 * abs(l_e)
        assert n_g == pytest.approx(n_e, rel=2e-2)
    assert g._graphed is not None and len(g._graphed._graphs) == 1
    # consecutive replays on the same renders draw new timesteps and noises
    g.cfg.cuda_graph = True
    rgb = torch.sigmoid(logits.detach())
    shape = tuple(rgb.shape)
    ts, losses, noises = [], [], []
    for _ in range(3):
        out = g(rgb, cams, 0)
        ts.append(float(out["sds_t"]))
        losses.append(float(out["loss_sds"]))
        noises.append(g._static[shape]["noise"].clone())
    print(f"replays: t {ts}, loss {losses}")
    assert len(set(ts)) == 3 and len(set(losses)) == 3
    assert not torch.equal(noises[0], noises[1]) and not torch.equal(noises[1], noises[2])
    assert len(g._graphed._graphs) == 1


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("kind", ["mvdream", "sd"])
def test_cuda_graph_step_launches_without_host_sync(kind):
    """Filling the static inputs and replaying never waits for the GPU (only the diagnostics read does).

    Without torch.compile: it changes the kernels inside the graph, not the host work checked here."""
    g = build_prior(
        SDSConfig(
            kind=kind, model="demo", dtype="bfloat16", view_dependent_prompts=kind == "sd", compile=False,
            compile_vae=False,
        ),
        "cuda",
    )  # fmt: skip
    g.set_prompt("a red apple")
    cams = cams4().to("cuda")
    rgb = torch.rand(4, 64, 64, 3, device="cuda", requires_grad=True)
    g(rgb, cams, 0)["loss_sds"].backward()  # captures
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        g.fill_static_inputs(tuple(rgb.shape), cams, 100)
        value, grad, aux = g._graphed(rgb)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert torch.isfinite(value) and torch.isfinite(grad).all() and float(aux["grad_norm"]) > 0


def test_prompt_longer_than_text_encoder_context_is_rejected():
    from splatvlm.models import check_prompt_length

    cfg = SDSConfig(kind="mvdream", model="demo")
    long_prompt = " ".join(["apple"] * 100)
    with pytest.raises(SplatVLMError, match="tokens long") as e:
        check_prompt_length(cfg, ["a red apple", long_prompt])
    assert "\n" not in str(e.value)
    check_prompt_length(cfg, ["a red apple"])  # fits
    g = build_prior(cfg, "cpu")
    with pytest.raises(SplatVLMError, match="at most 77"):
        g.set_prompt(long_prompt)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_compiled_vae_and_unet_match_the_plain_graph():
    """compile_vae / compile change kernels, not the step: same seed, the same pixel gradient (fp16)."""
    cams = sample_orbit(CameraConfig(views_per_group=1), 4, 64, torch.Generator().manual_seed(0)).to("cuda")
    rgb = torch.rand(4, 64, 64, 3, device="cuda")
    grads = []
    for compiled in (False, True):
        g = build_prior(
            SDSConfig(kind="mvdream", model="demo", compile=compiled, compile_vae=compiled), "cuda"
        )
        g.set_prompt("a red apple")
        for _ in range(2):  # capture, then a replay with the same draws
            x = rgb.clone().requires_grad_(True)
            torch.manual_seed(7)
            g(x, cams, 100)["loss_sds"].backward()
        grads.append(x.grad)
    assert torch.isfinite(grads[1]).all() and grads[0].abs().sum() > 0
    assert cosine(grads[1], grads[0]) > 0.999


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_compiled_vae_encoder_runs_channels_last():
    """The compiled encoder (forward and backward) leaves cuDNN no NCHW<->NHWC conversions to make."""
    g = build_prior(SDSConfig(kind="mvdream", model="random", dtype="float16", image_size=256), "cuda")
    rgb = torch.rand(4, 256, 256, 3, device="cuda", requires_grad=True)  # the vlm3d step's shape

    def step():
        rgb.grad = None
        g.encode_images(rgb).square().mean().backward()

    step()  # compiles
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
        step()
        torch.cuda.synchronize()
    names = [e.name for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA]
    assert any("xmma" in n or "conv" in n.lower() for n in names)  # the convolutions ran on this device
    assert not [n for n in names if "nchwToNhwc" in n or "nhwcToNchw" in n]
    assert torch.isfinite(rgb.grad).all() and rgb.grad.abs().sum() > 0
