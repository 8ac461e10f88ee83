"""The toy world: its geometry, the metrics on known cases, the shipped weights and the eval smoke run."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import pytest
import torch

from splatvlm.toyworld import metrics
from splatvlm.toyworld.eval import toy_run_config
from splatvlm.toyworld.models import WEIGHTS_DIR
from splatvlm.toyworld.scoring import held_out_cameras, render_white, score
from splatvlm.toyworld.world import get_objects, janus_variant, mirrored, object_params, world

CPU = torch.device("cpu")


def test_world_has_captioned_objects_with_fronts():
    objs = world()
    assert len(objs) >= 12
    assert len({o.name for o in objs}) == len(objs)
    assert all(o.caption and len(o.caption) < 77 for o in objs)
    assert sum(o.front_back for o in objs) >= 4


def test_objects_fit_the_unit_ball_and_fronts_face_plus_x():
    for obj in world():
        p = object_params(obj)
        assert p["means"].norm(dim=-1).max() < 0.75, obj.name
        for part in obj.parts:
            if part.front:
                assert part.center[0] > 0, obj.name  # the front feature is on the front (+x)


def test_janus_variant_puts_the_front_feature_on_the_back():
    obj = get_objects(["snowman"])[0]
    j = janus_variant(obj)
    fronts = [p for p in j.parts if p.front]
    assert len(fronts) == 2 * len([p for p in obj.parts if p.front])
    assert any(p.center[0] < 0 for p in fronts)


def test_renders_show_the_object():
    obj = get_objects(["mug"])[0]
    rgb, alpha = render_white(object_params(obj), held_out_cameras(), CPU)
    cover = (alpha > 0.5).float().mean()
    assert 0.05 < cover < 0.8
    assert rgb[..., 2].mean() < rgb[..., 0].mean() + 0.5  # a blue mug is not white


def test_metrics_perfect_result():
    obj = get_objects(["bird"])[0]
    s = score(object_params(obj), obj, CPU)
    assert s["iou"] == 1.0
    assert s["janus"] == 0.0
    assert math.isinf(s["psnr"])


def test_metrics_janus_and_mirrored_objects_score_high():
    for name in ("snowman", "robot"):
        obj = get_objects([name])[0]
        assert score(object_params(janus_variant(obj)), obj, CPU)["janus"] > 0.95
        assert score(object_params(mirrored(obj)), obj, CPU)["janus"] > 0.5


def test_metrics_other_object_scores_lower():
    snowman, table = get_objects(["snowman", "table"])
    s = score(object_params(table), snowman, CPU)
    assert s["iou"] < 0.6
    assert s["psnr"] < 15


def test_janus_score_known_values():
    b = torch.zeros(1, 4, 4, 3)
    j = b.clone()
    j[:, :2] = 1.0
    assert metrics.janus_score(b, b, j) == 0.0
    assert metrics.janus_score(j, b, j) == 1.0
    assert abs(metrics.janus_score(0.5 * j, b, j) - 0.5) < 1e-6
    assert metrics.janus_score(b, b, b) == 0.0  # no front feature footprint


def test_toy_run_config_scales_the_preset():
    cfg = toy_run_config("vlm3d", 500, 3, "cpu", WEIGHTS_DIR)
    assert cfg.steps == 500 and cfg.seed == 3
    assert cfg.weights.vlm.stop_after == 250 and cfg.weights.vlm.ramp_steps == 250  # 2500 of 5000
    assert cfg.strategy.refine_every == 100 and cfg.strategy.refine_start_iter == 30
    assert cfg.camera.resolution == 32 and cfg.camera.low_res_until == 0
    assert cfg.sds.guidance_scale == 7.5 and cfg.sds.anneal_steps == 0  # the toy prior's, not the preset's 50
    prior = toy_run_config("mvdream", 500, 0, "cpu", WEIGHTS_DIR)
    assert prior.weights.vlm.start == 0.0
    tweaked = toy_run_config("mvdream", 500, 0, "cpu", WEIGHTS_DIR, ["strategy.grow_grad2d=0.001"])
    assert tweaked.strategy.grow_grad2d == 0.001


def test_reward_start_negative_is_the_runs_initial_scene():
    """The faint ball the reward learns to reject is the scene a toy run starts from."""
    from splatvlm.gaussians.scene import init_ball
    from splatvlm.toyworld.models import start_params

    cfg = toy_run_config("vlm3d", 100, 5, "cpu", WEIGHTS_DIR)
    assert cfg.scene.opacity == 0.1
    ours, run = start_params(5), init_ball(cfg.scene, torch.Generator().manual_seed(5))
    for key in run:
        torch.testing.assert_close(ours[key], run[key])


def test_negative_shares_set_the_janus_share_and_keep_the_others_ratios():
    """`BuildConfig.janus_share`: the default leaves the shipped shares; another value rescales the rest."""
    from splatvlm.toyworld.models import BuildConfig
    from splatvlm.toyworld.reward_model import NEGATIVE_SHARES, negative_shares

    assert BuildConfig().janus_share == NEGATIVE_SHARES["janus"]
    assert BuildConfig().janus_groups == 0  # 0: half of `groups`, as shipped
    assert negative_shares(BuildConfig().janus_share) == NEGATIVE_SHARES
    half = negative_shares(0.5)
    assert half["janus"] == 0.5
    assert math.isclose(sum(half.values()), 1.0)
    assert math.isclose(half["other"] / half["start"], NEGATIVE_SHARES["other"] / NEGATIVE_SHARES["start"])
    with pytest.raises(ValueError):
        negative_shares(1.0)


def test_space_to_depth_autoencoder_is_exact_and_neutral(tmp_path: Path):
    """The toy prior's autoencoder: decode(encode(x)) == x, a zero-variance posterior, a linear decoder (a blend
    of latents decodes to the blend of images, so a shrunk x0 estimate has no color of its own), and the zero
    latent decodes to the fitted gray level; it saves and loads through the SDS path's loader."""
    from splatvlm.toyworld.autoencoder import SpaceToDepthAutoencoder, fitted_autoencoder, is_space_to_depth

    gen = torch.Generator().manual_seed(0)
    x = torch.rand(6, 3, 8, 8, generator=gen) * 2 - 1
    vae = fitted_autoencoder(x)
    assert vae.config.shift == pytest.approx(float(x.mean()), abs=1e-5)
    post = vae.encode(x).latent_dist
    assert post.mean.shape == (6, 12, 4, 4) and float(post.std.abs().max()) == 0.0
    z = post.mean * vae.config.scaling_factor
    assert float(z.std()) == pytest.approx(1.0, abs=1e-3) and abs(float(z.mean())) < 1e-4
    torch.testing.assert_close(vae.decode(post.mean).sample, x, atol=1e-6, rtol=0)
    a, b = post.mean[:3], post.mean[3:]
    torch.testing.assert_close(
        vae.decode(0.3 * a + 0.7 * b).sample, 0.3 * x[:3] + 0.7 * x[3:], atol=1e-6, rtol=0
    )
    gray = vae.decode(torch.zeros(1, 12, 4, 4)).sample
    torch.testing.assert_close(gray, torch.full_like(gray, vae.config.shift))
    # a pixel moves only its own latent entries: 2x2 blocks, 3 channels each
    y = x.clone()
    y[0, 1, 5, 2] += 1.0
    changed = (vae.encode(y).latent_dist.mean - post.mean).ne(0).nonzero().tolist()
    assert changed == [[0, 1 * 4 + 1 * 2 + 0, 2, 1]]
    vae.save_pretrained(tmp_path / "vae")
    assert is_space_to_depth(tmp_path / "vae") and not is_space_to_depth(tmp_path)
    back = SpaceToDepthAutoencoder.from_pretrained(tmp_path, subfolder="vae")
    assert back.config.scaling_factor == vae.config.scaling_factor
    torch.testing.assert_close(back.decode(back.encode(x).latent_dist.mean).sample, x, atol=1e-6, rtol=0)


def test_prior_lr_follows_the_time_limit_when_it_runs_out_first():
    import math

    from splatvlm.toyworld.models import prior_lr_factor

    for step in (0, 50, 99, 100, 2000, 3999):  # no limit: the shipped schedule, bit for bit
        old = min(1.0, (step + 1) / 100) * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * step / 4000)))
        assert prior_lr_factor(step, 4000) == old
        assert prior_lr_factor(step, 4000, 0.0, elapsed=1e9) == old
    assert prior_lr_factor(200, 4000, max_s=100.0, elapsed=50.0) == pytest.approx(0.55)  # half the time
    assert prior_lr_factor(200, 4000, max_s=100.0, elapsed=150.0) == pytest.approx(0.1)  # out of time
    assert prior_lr_factor(3000, 4000, max_s=100.0, elapsed=1.0) == prior_lr_factor(3000, 4000)  # steps first


def test_reward_noise_is_off_as_shipped_and_stays_in_range():
    from splatvlm.toyworld.models import BuildConfig
    from splatvlm.toyworld.reward_model import with_noise

    assert BuildConfig().reward_noise == 0.0
    v = torch.rand(4, 8, 8, 3, generator=torch.Generator().manual_seed(0))
    assert torch.equal(with_noise(v, 0.0, torch.Generator().manual_seed(1)), v)
    noisy = with_noise(v, 0.3, torch.Generator().manual_seed(1))
    assert noisy.shape == v.shape and 0.0 <= float(noisy.min()) and float(noisy.max()) <= 1.0
    assert 0.0 < float((noisy - v).abs().mean()) < 0.3
    assert torch.equal(noisy, with_noise(v, 0.3, torch.Generator().manual_seed(1)))  # seeded


def test_prior_from_continues_a_prior_and_keeps_its_autoencoder(tmp_path: Path, monkeypatch):
    import copy

    from safetensors.torch import load_file

    import splatvlm.toyworld.build as build_module
    from splatvlm.toyworld.build import build
    from splatvlm.toyworld.models import BuildConfig, world_renders

    # The world's renders depend on the seed and the group counts alone (their own generator, not torch's),
    # the same for both builds: rendered once, a copy for each.
    renders = {}

    def world_renders_once(cfg):
        key = (cfg.seed, cfg.groups, cfg.janus_groups)
        if key not in renders:
            renders[key] = world_renders(cfg)
        return copy.deepcopy(renders[key])

    monkeypatch.setattr(build_module, "world_renders", world_renders_once)
    tiny = dict(groups=1, janus_groups=1, prior_steps=2, prior_batch=1, only="prior")
    first, second = tmp_path / "a", tmp_path / "b"
    build(BuildConfig(out=first, **tiny), log=lambda _: None)
    info = build(BuildConfig(out=second, prior_from=first, **dict(tiny, prior_steps=3)), log=lambda _: None)
    assert len(renders) == 1
    prior = info["stages"]["prior"]
    assert prior["prior_steps_done"] == 3 and prior["prior_steps_total"] == 5
    vae_config = lambda d: json.loads((d / "prior" / "vae" / "config.json").read_text())  # noqa: E731
    assert vae_config(first) == vae_config(second)  # the autoencoder is kept
    weights = lambda d, part, f: load_file(d / "prior" / part / f)  # noqa: E731
    unet_a = weights(first, "unet", "diffusion_pytorch_model.safetensors")
    unet_b = weights(second, "unet", "diffusion_pytorch_model.safetensors")
    assert any(not torch.equal(unet_a[k], unet_b[k]) for k in unet_a)  # the UNet trained on


def test_shaded_training_renders_leave_the_plain_ones_unchanged():
    """The shaded copies draw their lights from their own generator: the plain renders are the same with or
    without them; a textureless copy is one gray where the object's colors vary, zero off the object."""
    from splatvlm.toyworld.models import render_groups

    obj = object_params(get_objects(["mug"])[0])
    plain = render_groups(obj, 2, torch.Generator().manual_seed(0))
    both = render_groups(obj, 2, torch.Generator().manual_seed(0), torch.Generator().manual_seed(1))
    assert plain.shaded is None and both.shaded.shape == (2, 2, *plain.rgb.shape[1:])
    torch.testing.assert_close(both.rgb, plain.rgb)
    solid = plain.alpha[..., 0] > 0.99
    albedo, diffuse, textureless = plain.rgb[solid], both.shaded[:, 0][solid], both.shaded[:, 1][solid]
    assert albedo[:, 2].mean() > albedo[:, 0].mean() + 0.2  # the mug is blue ...
    assert diffuse[:, 2].mean() > diffuse[:, 0].mean()  # ... lit, still blue
    spread = lambda x: float((x.max(-1).values - x.min(-1).values).max())  # noqa: E731
    assert spread(textureless) < 1e-5 < spread(albedo)  # gray: R = G = B per pixel
    assert float(both.shaded[:, 1][plain.alpha[..., 0] < 1e-4].abs().max()) < 1e-4  # black off the object


def test_a_shaded_prior_build_trains(tmp_path: Path):
    from splatvlm.toyworld.build import build
    from splatvlm.toyworld.models import BuildConfig

    cfg = BuildConfig(out=tmp_path, groups=1, janus_groups=1, prior_steps=2, prior_batch=4, shaded_share=0.5,
                      only="prior")  # fmt: skip
    info = build(cfg, log=lambda _: None)
    assert info["stages"]["prior"]["config"]["shaded_share"] == 0.5
    assert math.isfinite(info["stages"]["prior"]["final_eps_mse"])


def test_prior_from_a_folder_without_a_prior_is_one_clear_error(tmp_path: Path):
    from splatvlm.errors import SplatVLMError
    from splatvlm.toyworld.models import load_prior

    with pytest.raises(SplatVLMError, match="no toy prior there"):
        load_prior(tmp_path)


def test_photometric_fit_carves_the_start_ball_in_120_steps(tmp_path: Path):
    """The Gaussian side at toy scale: the real trainer, the toy run config and its start ball, with the SDS
    term swapped for an L1 against the ground truth on the same cameras, reaches the object in 120 steps
    (tower IoU 0.949 when measured). The toy runs' haze is therefore not the scene's initialization,
    learning rates or rasterizer."""
    from splatvlm.config import apply_overrides
    from splatvlm.gaussians.render import RenderConfig, render
    from splatvlm.gaussians.scene import init_ball
    from splatvlm.run.train_state import new_state
    from splatvlm.run.trainer import Term, train
    from splatvlm.toyworld.models import TORCH_CHUNK

    torch.set_num_threads(1)
    cfg = toy_run_config("mvdream", 120, 0, "cpu", WEIGHTS_DIR)
    cfg = apply_overrides(
        cfg, {"background": "white", "weights": {"sds": {"start": 0.0}, "l1": {"start": 1.0}}}
    )
    obj = get_objects(["tower"])[0]
    gt = object_params(obj)

    def l1(rgb, cams, step):
        with torch.no_grad():
            target = render(gt, cams, RenderConfig(torch_chunk=TORCH_CHUNK), torch.ones(len(cams), 3)).rgb
        return {"loss_l1": (rgb - target).abs().mean()}

    torch.manual_seed(0)
    state = new_state(init_ball(cfg.scene, torch.Generator().manual_seed(0)), cfg, CPU)
    start = score(state.params, obj, CPU)["iou"]
    state = train(cfg, state, {"l1": Term(l1, weights=("l1",))}, tmp_path, CPU, progress=False)
    s = score(state.params, obj, CPU)
    assert start < 0.5 and s["iou"] > 0.85 and s["psnr"] > 18.0, (start, s)


def test_shipped_weights_load_and_run():
    from splatvlm.guidance.reward import RewardConfig
    from splatvlm.guidance.sds import SDSConfig
    from splatvlm.models import build_prior, load_reward
    from splatvlm.toyworld.scoring import side_cameras

    files = [p for p in WEIGHTS_DIR.rglob("*") if p.is_file()]
    assert sum(p.stat().st_size for p in files) <= 40 * 2**20
    build = json.loads((WEIGHTS_DIR / "build.json").read_text())
    assert build["total_s"] > 0
    sds = build_prior(SDSConfig(model=str(WEIGHTS_DIR / "prior"), negative_prompt=""), "cpu")
    assert sds.image_size == 32
    sds.set_prompt("a snowman with an orange nose")
    obj = get_objects(["snowman"])[0]
    cams = side_cameras()
    rgb, _ = render_white(object_params(obj), cams, CPU)
    out = sds(rgb.requires_grad_(), cams, 100)
    assert torch.isfinite(out["loss_sds"])
    reward = load_reward(RewardConfig(model=str(WEIGHTS_DIR / "reward"), size=56, dtype="float32"), "cpu")
    reward.set_prompt(obj.caption)
    s = reward.score(rgb, obj.caption)
    assert torch.isfinite(s["reward"])


def test_eval_smoke_cli(tmp_path: Path):
    """The CI smoke run: one object, both presets, on CPU; a valid report. 6 steps: what is checked is the
    report's shape, which does not depend on the step count (`--steps 30` is the timed smoke run in RESULTS)."""
    from splatvlm.cli import main

    t0 = time.perf_counter()
    assert (
        main(["toyworld", "eval", "--limit", "1", "--steps", "6", "--device", "cpu", "-o", str(tmp_path)])
        == 0
    )
    seconds = time.perf_counter() - t0
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["suite"] == "toyworld" and report["command"].startswith("splatvlm toyworld eval")
    assert {r["method"] for r in report["results"]} == {"mvdream", "vlm3d"}
    keys = {
        "object",
        "caption",
        "method",
        "arm",
        "seed",
        "psnr",
        "iou",
        "janus",
        "front_back",
        "num_gaussians",
        "seconds",
    }
    for r in report["results"]:
        assert set(r) == keys
        assert 0.0 <= r["iou"] <= 1.0 and r["num_gaussians"] > 0
    assert (tmp_path / "report.md").is_file()
    assert (tmp_path / f"{report['results'][0]['object']}.png").is_file()
    print(f"toyworld smoke eval: {seconds:.1f} s")


def test_eval_cut_short_keeps_the_objects_it_finished(tmp_path: Path, monkeypatch):
    import splatvlm.commands.generate as generate
    from splatvlm.toyworld.eval import EvalConfig, run_eval

    real, calls = generate.run_one, []

    def run_one(*args, **kwargs):  # the second object's run fails as a killed process would stop
        calls.append(args[0])
        if len(calls) > 1:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(generate, "run_one", run_one)
    cfg = EvalConfig(
        objects=["snowman", "mug"], methods=["mvdream"], steps=2, device="cpu", output=str(tmp_path)
    )
    with pytest.raises(KeyboardInterrupt):
        run_eval(cfg, [])
    report = json.loads((tmp_path / "report.json").read_text())
    assert [(r["object"], r["method"]) for r in report["results"]] == [("snowman", "mvdream")]
    assert report["date"] and (tmp_path / "report.md").is_file()


def test_eval_rejects_unknown_objects(tmp_path: Path):
    from splatvlm.errors import SplatVLMError
    from splatvlm.toyworld.eval import EvalConfig, run_eval

    with pytest.raises(SplatVLMError, match="unknown toy object"):
        run_eval(EvalConfig(output=tmp_path, objects=["unicorn"]))


def test_gradient_cosine_known_cases():
    """The alignment measure: +1 for a score whose gradient points at the truth, -1 away from it, 0 for a
    gradient orthogonal to the fix, and the share of the gradient's energy on the pixels that differ."""
    from splatvlm.toyworld.alignment import gradient_cosine

    gen = torch.Generator().manual_seed(0)
    truth = torch.rand(2, 4, 4, 3, generator=gen)
    variant = truth.clone()
    variant[:, :2] = torch.rand(2, 2, 4, 3, generator=gen)  # differs on the top half only
    cos, share = gradient_cosine(lambda x: -((x - truth) ** 2).sum(), variant, truth)
    assert cos == pytest.approx(1.0, abs=1e-6) and share == pytest.approx(1.0, abs=1e-6)
    cos, _ = gradient_cosine(lambda x: ((x - truth) ** 2).sum(), variant, truth)
    assert cos == pytest.approx(-1.0, abs=1e-6)
    u = torch.zeros_like(truth)
    u[:, 2:] = 1.0  # only where variant == truth: orthogonal to truth - variant
    cos, share = gradient_cosine(lambda x: (x * u).sum(), variant, truth)
    assert cos == pytest.approx(0.0, abs=1e-6) and share == pytest.approx(0.0, abs=1e-6)
    d = truth - variant
    cos, share = gradient_cosine(lambda x: (x * (d + u)).sum(), variant, truth)  # half the energy off the fix
    assert cos == pytest.approx(float(d.norm() / (d + u).norm()), abs=1e-5)
    assert share == pytest.approx(float((d**2).sum() / ((d + u) ** 2).sum()), abs=1e-5)


def test_pgd_views_stay_in_the_ball_and_raise_the_loss():
    from splatvlm.toyworld.reward_model import pgd_views

    gen = torch.Generator().manual_seed(0)
    v = torch.rand(4, 6, 6, 3, generator=gen) * 0.8 + 0.1
    w = torch.randn(4, 6, 6, 3, generator=gen)
    loss = lambda x: (x * w).sum()  # noqa: E731
    eps = 4 / 255
    adv = pgd_views(loss, v, eps, 3, torch.Generator().manual_seed(1))
    assert float((adv - v).abs().max()) <= eps + 1e-6 and not adv.requires_grad
    assert float(loss(adv)) > float(loss(v)) + 0.5 * eps * float(w.abs().sum())  # most pixels moved to +eps
    torch.testing.assert_close(adv, pgd_views(loss, v, eps, 3, torch.Generator().manual_seed(1)))  # seeded


def test_hard_negative_records_and_shares():
    """Hard negatives: their records are the caption object's, the last quarter held out; their share is taken
    from the other kinds in proportion; a snapshot close to its object is not a negative."""
    from splatvlm.toyworld.hard_negatives import clearly_off
    from splatvlm.toyworld.models import Renders
    from splatvlm.toyworld.reward_model import NEGATIVE_SHARES, reward_records, with_hard_share

    r = lambda g: Renders(torch.zeros(g, 4, 2, 2, 3), torch.zeros(g, 4, 2, 2, 1), torch.zeros(g, 4, 16))  # noqa: E731
    data, shapeless = {"a": r(4), "b": r(4), "c": r(4)}, {"start": r(4)}
    hard = {"b": r(8)}
    train = [x for x in reward_records(data, {}, shapeless, False, hard) if x[1] == "hard"]
    held = [x for x in reward_records(data, {}, shapeless, True, hard) if x[1] == "hard"]
    assert [x[3] for x in train] == list(range(6)) and [x[3] for x in held] == [6, 7]
    assert all(x[0] == "b" and x[2] == 1 for x in train + held)
    assert reward_records(data, {}, shapeless, False) == [
        x for x in reward_records(data, {}, shapeless, False, hard) if x[1] != "hard"
    ]
    assert with_hard_share(NEGATIVE_SHARES, 0.0) == NEGATIVE_SHARES
    shares = with_hard_share(NEGATIVE_SHARES, 0.3)
    assert shares["hard"] == 0.3 and math.isclose(sum(shares.values()), 1.0)
    assert math.isclose(
        shares["janus"] / shares["other"], NEGATIVE_SHARES["janus"] / NEGATIVE_SHARES["other"]
    )
    assert clearly_off({"iou": 0.5, "psnr": 20.0, "janus": None})
    assert clearly_off({"iou": 0.9, "psnr": 12.0, "janus": 0.0})
    assert clearly_off({"iou": 0.9, "psnr": 20.0, "janus": 0.6})
    assert not clearly_off({"iou": 0.9, "psnr": 20.0, "janus": 0.1})


def test_sweep_arms_shards_and_merge(tmp_path: Path):
    """`--sweep` arms (every combination), `--shard` slices that partition the runs, and `--merge` of shard
    folders into one report with the swept curves; a run in two folders is an error."""
    from splatvlm.errors import SplatVLMError
    from splatvlm.toyworld import sweep
    from splatvlm.toyworld.sweep import summarize

    assert sweep.parse_arms([]) == [("", [])]
    arms = sweep.parse_arms(["weights.vlm.start=10,100", "sds.guidance_scale=5"])
    assert [a[0] for a in arms] == [
        "weights.vlm.start=10 sds.guidance_scale=5",
        "weights.vlm.start=100 sds.guidance_scale=5",
    ]
    assert arms[1][1] == ["weights.vlm.start=100", "sds.guidance_scale=5"]
    for bad in (["weights.vlm.start"], ["=1,2"], ["k="]):
        with pytest.raises(SplatVLMError):
            sweep.parse_arms(bad)
    for bad in ("2/2", "1", "-1/2", "a/b"):
        with pytest.raises(SplatVLMError):
            sweep.parse_shard(bad)
    jobs = list(range(11))
    slices = [jobs[i::3] for i in (sweep.parse_shard(f"{k}/3")[0] for k in range(3))]
    assert sorted(sum(slices, [])) == jobs
    assert "/" not in sweep.run_name("mug", "vlm3d", "weights.vlm.start=10 a=b/c", 1)

    def result(obj, method, arm, seed, iou):
        return {"object": obj, "caption": obj, "method": method, "arm": arm, "seed": seed, "iou": iou,
                "psnr": 10 * iou, "janus": 1 - iou, "front_back": True, "num_gaussians": 1, "seconds": 1.0}  # fmt: skip

    folders = []
    for k, rows in enumerate(
        [
            [result("mug", "mvdream", "", 0, 0.8), result("mug", "vlm3d", "weights.vlm.start=10", 0, 0.7)],
            [result("mug", "vlm3d", "weights.vlm.start=100", 0, 0.5), result("pig", "vlm3d", "weights.vlm.start=10", 0, 0.6)],
        ]
    ):  # fmt: skip
        folders.append(tmp_path / f"s{k}")
        folders[-1].mkdir()
        (folders[-1] / "report.json").write_text(
            json.dumps({"suite": "toyworld", "device": "cpu", "date": "d", "command": "c", "results": rows})
        )
    report = sweep.merge(folders, tmp_path / "m", "merge")
    assert len(report["results"]) == 4 and (tmp_path / "m" / "sweep.png").is_file()
    s = summarize(report["results"])
    assert list(s) == ["mvdream", "vlm3d weights.vlm.start=10", "vlm3d weights.vlm.start=100"]
    assert s["vlm3d weights.vlm.start=10"]["median_iou"] == pytest.approx(0.65)
    c = sweep.curves(report["results"])
    assert (
        c["iou"]["vlm3d"] == [(10.0, pytest.approx(0.65)), (100.0, 0.5)]
        and c["iou"]["mvdream (no arm)"][0][1] == 0.8
    )
    with pytest.raises(SplatVLMError, match="twice"):
        sweep.merge([folders[0], folders[0]], tmp_path / "m2", "merge")
