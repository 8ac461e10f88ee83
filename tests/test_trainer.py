import dataclasses

import pytest
import torch

from splatvlm.commands.fit import render_views
from splatvlm.config import RunConfig, Weight, load_run_config
from splatvlm.errors import StopRun
from splatvlm.gaussians.cameras import eval_orbit
from splatvlm.gaussians.scene import SceneConfig, init_ball, init_toy
from splatvlm.guidance.photometric import PhotometricTerm
from splatvlm.run.train_state import load_checkpoint, new_state, restore_state
from splatvlm.run.trainer import Term, train, weighted_sum

CPU = torch.device("cpu")


def fit_setup(steps: int):
    cfg = load_run_config("fit")
    cfg = dataclasses.replace(
        cfg,
        steps=steps,
        log_every=1,
        scene=dataclasses.replace(cfg.scene, num_points=300),
        strategy=dataclasses.replace(cfg.strategy, refine_start_iter=2, refine_every=3, refine_stop_iter=100),
    )
    views = eval_orbit(cfg.camera, 6, 24)
    views.ids = torch.arange(6)
    targets = render_views(init_toy(400), views, cfg)

    def sample(step, generator):
        return views[torch.randperm(6, generator=generator)[:2]]

    return cfg, {"photometric": Term(PhotometricTerm(targets), weights=("l1", "ssim"))}, sample


def fresh_state(cfg):
    torch.manual_seed(cfg.seed)
    return new_state(init_ball(cfg.scene, torch.Generator().manual_seed(cfg.seed)), cfg, CPU)


def test_resume_is_exact(tmp_path):
    n = 8
    cfg, terms, sample = fit_setup(2 * n)
    # 2N steps in one go.
    (tmp_path / "a").mkdir()
    a = train(cfg, fresh_state(cfg), terms, tmp_path / "a", CPU, sample, progress=False)
    # N steps, a checkpoint, then N more from it (a new process would do the same).
    (tmp_path / "b").mkdir()
    b = train(cfg, fresh_state(cfg), terms, tmp_path / "b", CPU, sample, stop_after=n, progress=False)
    assert b.step == n
    torch.manual_seed(12345)  # clobber the RNG: resume must restore it
    state = restore_state(load_checkpoint(tmp_path / "b" / "checkpoint.pt"), cfg, CPU)
    assert state.step == n
    b = train(cfg, state, terms, tmp_path / "b", CPU, sample, progress=False)
    assert a.step == b.step == 2 * n
    assert a.params["means"].shape == b.params["means"].shape
    assert a.params["means"].shape[0] != 300  # densification ran inside the window
    for key in a.params:
        assert torch.equal(a.params[key], b.params[key]), key


def test_checkpoint_loads_weights_only(tmp_path):
    cfg, terms, sample = fit_setup(3)
    train(cfg, fresh_state(cfg), terms, tmp_path, CPU, sample, progress=False)
    ckpt = torch.load(tmp_path / "checkpoint.pt", weights_only=True)
    assert ckpt["step"] == 3 and set(ckpt["params"]) == {
        "means",
        "quats",
        "scales",
        "opacities",
        "sh0",
        "shN",
    }


@pytest.mark.parametrize(
    "fused, device",
    [
        (False, "cpu"),
        (True, "cpu"),
        pytest.param(True, "cuda", marks=[pytest.mark.cuda, pytest.mark.skipif(not torch.cuda.is_available(),
                                                                                reason="needs CUDA")]),
    ],
)  # fmt: skip
def test_nan_steps_are_skipped_then_stop(tmp_path, fused, device):
    """fused: Adam skips on the device (found_inf), the path CUDA runs without a host sync."""
    cfg, _, sample = fit_setup(50)
    cfg = dataclasses.replace(cfg, device=device)
    cfg = dataclasses.replace(cfg, max_bad_steps=3)
    calls = []

    def poisoned(rgb, cams, step):
        calls.append(step)
        loss = rgb.mean()
        return {"loss_l1": loss * float("nan") if step >= 2 else loss}

    state = (
        fresh_state(cfg)
        if device == "cpu"
        else new_state(
            init_ball(cfg.scene, torch.Generator().manual_seed(cfg.seed)), cfg, torch.device(device)
        )
    )
    if fused:
        state.optimizers = {
            k: torch.optim.Adam([state.params[k]], lr=opt.param_groups[0]["lr"], eps=1e-15, fused=True)
            for k, opt in state.optimizers.items()
        }
    before = {k: v.detach().clone() for k, v in state.params.items()}
    with pytest.raises(StopRun) as e:
        train(cfg, state, {"bad": Term(poisoned, weights=("l1",))}, tmp_path, torch.device(device), sample,
              progress=False)  # fmt: skip
    assert e.value.exit_code == 3 and "NaN/inf" in str(e.value)
    assert state.bad_steps_total == 3 and state.step == 5
    ckpt = load_checkpoint(tmp_path / "checkpoint.pt")
    assert ckpt["step"] == 5 and ckpt["bad_steps_total"] == 3
    for k in before:  # no NaN reached the parameters
        assert torch.isfinite(state.params[k]).all()
    assert not torch.equal(before["means"], state.params["means"])  # the 2 good steps did update
    # ... and only they reached Adam's state (a parameter the renderer never reads has none: gsplat at SH degree 0
    # leaves shN without a gradient)
    states = {k: list(opt.state.values()) for k, opt in state.optimizers.items()}
    assert states["means"] and states["opacities"]
    for adam in (a for st in states.values() for a in st):
        assert float(adam["step"]) == 2 and torch.isfinite(adam["exp_avg"]).all()


def test_weighted_sum_schedule_and_every():
    weights = {"a": Weight(2.0), "b": Weight(10.0, 0.0, 10)}
    outs = {"t1": {"loss_a": torch.tensor(1.0), "diag": 3.0}, "t2": {"loss_b": torch.tensor(4.0)}}
    total, logs = weighted_sum(outs, weights, {"t1": 1, "t2": 2}, step=5)
    assert total.item() == pytest.approx(2.0 * 1.0 + 5.0 * 2 * 4.0)
    assert logs["loss_b"] == 4.0 and logs["w_b"] == 10.0 and logs["diag"] == 3.0


def test_term_skipped_when_weight_zero(tmp_path):
    cfg, terms, sample = fit_setup(4)
    cfg = dataclasses.replace(cfg, weights=dataclasses.replace(cfg.weights, vlm=Weight(1.0, stop_after=2)))
    calls = []

    def counting(rgb, cams, step):
        calls.append(step)
        return {"loss_vlm": rgb.mean()}

    terms = dict(terms, vlm=Term(counting, weights=("vlm",)))
    train(cfg, fresh_state(cfg), terms, tmp_path, CPU, sample, progress=False)
    assert calls == [0, 1]


def test_default_config_is_vlm3d_shape():
    cfg = RunConfig()
    assert cfg.weights.vlm == Weight(300.0, 1.0, 10000, 10000)
    assert SceneConfig().sh_degree == 0


def test_out_of_memory_saves_checkpoint_and_advises(tmp_path):
    from splatvlm.errors import SplatVLMError

    cfg, _, sample = fit_setup(10)

    def oom_at_3(rgb, cams, step):
        if step == 3:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")
        return {"loss_l1": rgb.mean()}

    with pytest.raises(SplatVLMError) as e:
        train(
            cfg,
            fresh_state(cfg),
            {"t": Term(oom_at_3, weights=("l1",))},
            tmp_path,
            CPU,
            sample,
            progress=False,
        )
    from splatvlm.cli import advice as cli_advice

    assert e.value.kind == "out_of_memory"
    msg = str(e.value) + cli_advice(e.value)  # the trainer says what happened, the CLI what to type next
    assert "\n" not in msg and "out of memory at step 3" in msg
    for advice in (
        "--camera.num-views",
        "--vlm.size",
        "vlm3d-3b",
        "--vlm.gradient-checkpointing",
        "--resume",
    ):
        assert advice in msg
    assert load_checkpoint(tmp_path / "checkpoint.pt")["step"] == 3


class Evil:
    def __reduce__(self):
        return (print, ("pwned",))


@pytest.mark.parametrize(
    "payload, message",
    [
        ({"version": 99, "step": 1}, "format version 99"),
        ({"step": 1}, "format version None"),
        (["not", "a", "dict"], "format version None"),
        (Evil(), "unreadable or not a splatvlm checkpoint"),
        (b"garbage bytes", "unreadable or not a splatvlm checkpoint"),
    ],
)
def test_foreign_checkpoints_rejected(tmp_path, payload, message, capsys):
    from splatvlm.errors import SplatVLMError

    path = tmp_path / "checkpoint.pt"
    if isinstance(payload, bytes):
        path.write_bytes(payload)
    else:
        torch.save(payload, path)
    with pytest.raises(SplatVLMError, match=message):
        load_checkpoint(path)
    assert "pwned" not in capsys.readouterr().out  # never unpickles arbitrary objects


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_terms_on_their_own_streams_train_as_one_stream(tmp_path):
    """Two terms on two CUDA streams give the same Gaussians as the same terms run in turn."""
    cfg, terms, sample = fit_setup(steps=6)
    terms = {"a": terms["photometric"], "b": Term(terms["photometric"].fn, weights=("l1",))}
    cuda = torch.device("cuda")
    finals = []
    for parallel in (False, True):
        run = dataclasses.replace(cfg, parallel_terms=parallel)
        torch.manual_seed(run.seed)
        state = new_state(init_ball(run.scene, torch.Generator().manual_seed(run.seed)), run, cuda)
        (tmp_path / f"p{parallel}").mkdir()
        state = train(run, state, terms, tmp_path / f"p{parallel}", cuda, progress=False, sample_views=sample)
        finals.append({k: v.detach().cpu() for k, v in state.params.items()})
    for k in finals[0]:
        torch.testing.assert_close(finals[1][k], finals[0][k], rtol=1e-4, atol=1e-5)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_graphed_prior_and_reward_on_streams_stay_finite(tmp_path):
    """The prior and the reward, each replaying its CUDA graph, on two streams: every step finite, as on one
    stream. The graphs' capture draws random numbers, so the two runs' noise differs: no value parity. (Two
    graphs captured on one stream share a cuBLAS workspace and gave NaN losses from the first step; each graph
    now has its own capture stream, and this is the demo-size check of that path.)"""
    from splatvlm.commands.generate import Guidance

    base = load_run_config("vlm3d")
    cfg = dataclasses.replace(
        base,
        device="cuda",
        steps=4,
        checkpoint_every=0,
        log_every=1,
        sds=dataclasses.replace(
            base.sds, model="demo", cuda_graph=True, compile=False, compile_vae=False
        ),  # graphs, not compile
        vlm=dataclasses.replace(base.vlm, model="demo", cuda_graph=True, compile=False),
    )
    cuda = torch.device("cuda")
    terms = Guidance(cfg, cuda).terms("a corgi wearing a top hat")
    bad = []
    for parallel in (False, True):
        run = dataclasses.replace(cfg, parallel_terms=parallel)
        torch.manual_seed(run.seed)
        state = new_state(init_ball(run.scene, torch.Generator().manual_seed(run.seed)), run, cuda)
        rows: list[dict] = []
        (tmp_path / f"p{parallel}").mkdir()
        train(
            run,
            state,
            terms,
            tmp_path / f"p{parallel}",
            cuda,
            progress=False,
            on_step=lambda s, logs, rows=rows: rows.append(logs),
        )
        bad.append([r["step"] for r in rows if r["bad_step"]])
    assert bad == [[], []]


def test_structurally_wrong_checkpoints_are_one_line_errors(tmp_path):
    from splatvlm.errors import SplatVLMError

    cfg, terms, sample = fit_setup(1)
    (tmp_path / "a").mkdir()
    train(cfg, fresh_state(cfg), terms, tmp_path / "a", CPU, sample, progress=False)
    good = torch.load(tmp_path / "a" / "checkpoint.pt", weights_only=True)
    path = tmp_path / "bad.pt"
    broken = [
        ({"version": 1, "step": 3}, "'params' is missing"),
        ({**good, "params": {k: v for k, v in good["params"].items() if k != "quats"}}, "params 'quats'"),
        ({**good, "rng": {}}, "random-number state"),
        ({**good, "params": {**good["params"], "sh0": good["params"]["sh0"][:3]}}, "disagree on the number"),
    ]
    for payload, match in broken:
        torch.save(payload, path)
        with pytest.raises(SplatVLMError, match=match):
            load_checkpoint(path)
    # Structurally complete, but another run's optimizer state: restore says so in one line.
    torch.save(
        {**good, "optimizers": {k: {"state": {}, "param_groups": []} for k in good["optimizers"]}}, path
    )
    with pytest.raises(SplatVLMError, match="does not fit this run's config"):
        restore_state(load_checkpoint(path), cfg, CPU)


def test_terminal_bar_keeps_step_and_times_readable_at_80_columns():
    import io

    from rich.console import Console
    from rich.progress import Progress

    from splatvlm.run.progress import progress_columns

    buf = io.StringIO()
    console = Console(file=buf, width=80, force_terminal=True, color_system=None)
    info = "sds=1.722e+05 vlm=0.1686 p_yes=0.458 #G=123456 0.91 it/s"
    with Progress(*progress_columns(), console=console, auto_refresh=False) as bar:
        bar.add_task("train", total=5000, completed=1234, info=info)
        bar.refresh()
    line = buf.getvalue().split("\r")[-1].split("\x1b[2K")[-1].splitlines()[0]
    assert len(line) <= 80
    assert line.startswith("1234/5000") and "0:00:00" in line and "eta -:--:--" in line, line
    assert "sds=1.722e+05" in line  # the loss text gets what is left, cut at the edge


def test_plain_progress_line_has_step_losses_gaussians_rate_and_eta():
    from splatvlm.run.progress import progress_line as _progress_line

    logs = {"loss_sds": 12.5, "loss_vlm": 0.25, "p_yes": 0.5, "num_gaussians": 4096}
    line = _progress_line(250, 5000, 5000, logs, 10.0, elapsed=25.0, done=250)
    assert (
        line == "step 250/5000 sds=12.5 vlm=0.25 p_yes=0.500 #G=4096 10.00 it/s elapsed 0:00:25 eta 0:07:55"
    )


def test_readback_returns_numbers_in_order_and_keeps_the_rest():
    from splatvlm.run.trainer import finish_readback, start_readback

    values = {
        "loss_a": torch.tensor(1.5),
        "w_a": 2.0,
        "ok": torch.tensor(True),
        "p": torch.tensor([0.25]),
        "s": 3,
    }
    out = finish_readback(start_readback(values))
    assert out == {"loss_a": 1.5, "w_a": 2.0, "ok": 1.0, "p": 0.25, "s": 3}
    assert all(not isinstance(v, torch.Tensor) for v in out.values())


def test_launch_order_puts_the_long_pole_first_only_on_streams():
    from splatvlm.run.trainer import launch_order

    def fn(rgb, cams, step):
        return {}

    terms = {"sds": Term(fn, weights=("sds",)), "vlm": Term(fn, weights=("vlm",), launch_first=True)}
    assert launch_order(terms, {}) == ["sds", "vlm"]  # one stream (CPU): as registered
    assert launch_order(terms, {"sds": object(), "vlm": object()}) == ["vlm", "sds"]


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_long_pole_runs_on_a_higher_priority_stream():
    from splatvlm.run.trainer import term_streams

    def fn(rgb, cams, step):
        return {}

    terms = {"sds": Term(fn, weights=("sds",)), "vlm": Term(fn, weights=("vlm",), launch_first=True)}
    cuda = torch.device("cuda")
    high = term_streams(terms, cuda, priority=True)
    assert high["vlm"].priority < high["sds"].priority == torch.cuda.current_stream().priority
    plain = term_streams(terms, cuda, priority=False)
    assert plain["vlm"].priority == plain["sds"].priority
    assert term_streams(terms, torch.device("cpu"), priority=True) == {}


# ---------------------------------------------------------------------------------------------
# The backward through the pixels: the prior-only densification statistic, the reward's ratio weighting


def _prior(rgb, cams, step):  # a stand-in prior: pull every pixel toward gray
    return {"loss_sds": (rgb - 0.3).square().mean()}


def _reward(rgb, cams, step):  # a stand-in reward: push red up, more on the right of the image
    ramp = torch.linspace(0.0, 1.0, rgb.shape[2], device=rgb.device)[None, None, :]
    return {"loss_vlm": -(rgb[..., 0] * ramp).mean()}


def prior_reward_setup(steps, reward_weight, grad_source="prior", vlm_mode="fixed", frozen=True):
    """fit_setup's views, a prior and a reward instead of the photometric term; ``frozen``: every learning rate
    ~0, so that the Gaussians do not move and each step's statistic depends on that step's losses alone."""
    cfg, _, sample = fit_setup(steps)
    lrs = dict(
        lr_means=1e-30, lr_means_final=1e-30, lr_quats=0.0, lr_scales=0.0, lr_opacities=0.0, lr_sh0=0.0
    )
    cfg = dataclasses.replace(
        cfg,
        scene=dataclasses.replace(cfg.scene, **(lrs if frozen else {})),
        strategy=dataclasses.replace(
            cfg.strategy, grad_source=grad_source, refine_start_iter=2, refine_every=3
        ),
        weights=dataclasses.replace(
            cfg.weights,
            sds=Weight(1.0),
            vlm=Weight(reward_weight),
            vlm_mode=vlm_mode,
            vlm_ratio=Weight(reward_weight),
            l1=Weight(0.0),
            ssim=Weight(0.0),
        ),
    )
    terms = {"sds": Term(_prior, weights=("sds",)), "vlm": Term(_reward, weights=("vlm",))}
    return cfg, terms, sample


def first_refinement(tmp_path, name, device=CPU, packed=True, **kw):
    cfg, terms, sample = prior_reward_setup(4, **kw)
    cfg = dataclasses.replace(cfg, device=str(device), render=dataclasses.replace(cfg.render, packed=packed))
    torch.manual_seed(cfg.seed)
    state = new_state(init_ball(cfg.scene, torch.Generator().manual_seed(cfg.seed)), cfg, device)
    rows = []
    (tmp_path / name).mkdir()
    train(cfg, state, terms, tmp_path / name, device, sample, progress=False,
          on_step=lambda s, logs: rows.append(logs))  # fmt: skip
    (row,) = [r for r in rows if "densify_grad_p50" in r]
    assert row["step"] == 3
    return {k: v for k, v in row.items() if k.startswith("densify_grad") or k == "densify_qualified"}


def test_prior_statistic_is_the_same_whatever_the_reward_weight(tmp_path):
    """Same seed, reward weight 0 and 1000: the same statistic at the first refinement with grad_source
    'prior'; with 'all' (today's) the reward's x1000 changes it."""
    prior_0 = first_refinement(tmp_path, "p0", reward_weight=0.0)
    prior_1000 = first_refinement(tmp_path, "p1000", reward_weight=1000.0)
    assert prior_0 == prior_1000 and prior_0["densify_grad_p50"] > 0
    all_0 = first_refinement(tmp_path, "a0", reward_weight=0.0, grad_source="all")
    all_1000 = first_refinement(tmp_path, "a1000", reward_weight=1000.0, grad_source="all")
    assert all_1000["densify_grad_p50"] > 10 * all_0["densify_grad_p50"]
    # without a reward the two sources are one statistic (up to float rounding of the two backward routes)
    for k in ("densify_grad_p50", "densify_grad_p90", "densify_grad_p99"):
        assert prior_0[k] == pytest.approx(all_0[k], rel=1e-5)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("packed", [True, False])
def test_prior_statistic_on_gsplat_is_the_same_whatever_the_reward_weight(tmp_path, packed):
    """The same on gsplat's kernels (their atomics add in any order: equal up to float rounding)."""
    cuda = torch.device("cuda")
    stats = {
        (source, w): first_refinement(
            tmp_path, f"{source}{w}", cuda, packed, reward_weight=w, grad_source=source
        )
        for source in ("prior", "all")
        for w in (0.0, 1000.0)
    }
    for k in ("densify_grad_p50", "densify_grad_p90", "densify_grad_p99"):
        assert stats["prior", 1000.0][k] == pytest.approx(stats["prior", 0.0][k], rel=1e-4)
        assert stats["prior", 0.0][k] == pytest.approx(stats["all", 0.0][k], rel=1e-4)
    assert stats["all", 1000.0]["densify_grad_p50"] > 10 * stats["all", 0.0]["densify_grad_p50"]


def test_prior_source_leaves_the_gaussians_update_unchanged(tmp_path):
    """Only the statistic changes: the Gaussians trained with grad_source 'prior' match 'all' (same terms,
    learning rates on) up to the rounding of the split backward, until a refinement makes their counts differ."""
    finals = []
    for source in ("all", "prior"):
        cfg, terms, sample = prior_reward_setup(2, 1000.0, grad_source=source, frozen=False)
        (tmp_path / source).mkdir()
        state = train(cfg, fresh_state(cfg), terms, tmp_path / source, CPU, sample, progress=False)
        finals.append({k: v.detach().clone() for k, v in state.params.items()})
    for k in finals[0]:
        torch.testing.assert_close(finals[1][k], finals[0][k], rtol=1e-5, atol=1e-7)


def test_ratio_mode_sets_the_reward_to_a_fraction_of_the_prior():
    """A known case: prior loss a . x (weight 2), reward loss b . x; ratio 0.25 (and every 2): the pixels get
    2a + c b with |c b| = 0.25 x 2 x |2a|, and c is logged as the reward's weight."""
    from splatvlm.run.backward import backward_through_pixels

    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(2, 4, 4, 3, generator=g), torch.randn(2, 4, 4, 3, generator=g)
    x = torch.rand(2, 4, 4, 3, generator=g, requires_grad=True)
    pixels = x * 1.0
    outputs = {"sds": {"loss_sds": (pixels * a).sum()}, "vlm": {"loss_vlm": (pixels[:1] * b[:1]).sum()}}
    weights = {"sds": Weight(2.0), "vlm": Weight(0.25)}
    logs = {}
    total = backward_through_pixels(outputs, weights, {"sds": 1, "vlm": 2}, 0, pixels, None, True, logs)
    reward_part = x.grad - 2 * a
    assert reward_part.norm().item() == pytest.approx(0.25 * 2 * (2 * a).norm().item(), rel=1e-5)
    assert reward_part[1].abs().max() == 0  # the reward saw the first view only
    c = logs["w_vlm"].item()
    torch.testing.assert_close(reward_part[:1], c * b[:1])
    assert total.item() == pytest.approx(
        (2 * (pixels * a).sum() + c * (pixels[:1] * b[:1]).sum()).item(), rel=1e-5
    )


def test_fixed_mode_through_pixels_is_the_plain_backward():
    """vlm_mode 'fixed' (today's) with the prior-only statistic: the same gradient as one loss.backward()."""
    from splatvlm.run.backward import backward_through_pixels

    g = torch.Generator().manual_seed(1)
    w = torch.randn(5, 3, generator=g)
    grads = []
    for split in (False, True):
        x = w.clone().requires_grad_(True)
        pixels = (
            x[None, :, None, :] * torch.linspace(0.5, 1.5, 4)[None, None, :, None]
        ).tanh()  # [1, 5, 4, 3]
        outputs = {
            "sds": {"loss_sds": pixels.square().sum()},
            "vlm": {"loss_vlm": pixels[..., 0].sum()},
            "reg": {"loss_l1": x.abs().sum()},  # a term on the parameters, not the pixels
        }
        weights = {"sds": Weight(1.0), "vlm": Weight(300.0), "l1": Weight(0.5)}
        every = {"sds": 1, "vlm": 1, "reg": 1}
        if split:
            backward_through_pixels(outputs, weights, every, 0, pixels, None, False, {})
        else:
            loss, _ = weighted_sum(outputs, weights, every, 0)
            loss.backward()
        grads.append(x.grad)
    torch.testing.assert_close(grads[1], grads[0])


def test_defaults_take_the_single_backward():
    from splatvlm.run.backward import through_pixels

    cfg = load_run_config("vlm3d")
    assert cfg.strategy.grad_source == "all" and cfg.weights.vlm_mode == "fixed"
    assert through_pixels(cfg, 0) == (False, False)
    prior = dataclasses.replace(cfg, strategy=dataclasses.replace(cfg.strategy, grad_source="prior"))
    assert through_pixels(prior, 0) == (True, False)
    assert through_pixels(prior, cfg.strategy.refine_stop_iter) == (False, False)  # no statistic used after


def test_ratio_mode_in_training_logs_the_reward_weight_of_a_known_case(tmp_path):
    """In the loop: at step 0 the reward's logged weight is ratio x |d prior / d pixels| / |d reward / d pixels|,
    both computed here from the renders the terms saw."""
    cfg, terms, sample = prior_reward_setup(3, 0.5, grad_source="prior", vlm_mode="ratio", frozen=False)
    seen = {}

    def prior(rgb, cams, step):
        seen.setdefault(step, rgb.detach().clone())
        return _prior(rgb, cams, step)

    terms = dict(terms, sds=Term(prior, weights=("sds",)))
    rows = []
    train(cfg, fresh_state(cfg), terms, tmp_path, CPU, sample, progress=False,
          on_step=lambda s, logs: rows.append(logs))  # fmt: skip
    rgb = seen[0]
    g_prior = 2 * (rgb - 0.3) / rgb.numel()
    ramp = torch.linspace(0.0, 1.0, rgb.shape[2])[None, None, :]
    g_reward = torch.zeros_like(rgb)
    g_reward[..., 0] = -ramp / rgb[..., 0].numel()
    want = 0.5 * g_prior.norm() / g_reward.norm()
    assert rows[0]["w_vlm"] == pytest.approx(want.item(), rel=1e-4)
    assert all(r["bad_step"] is False for r in rows) and rows[1]["w_vlm"] != rows[0]["w_vlm"]


# ---------------------------------------------------------------------------------------------
# The learned background


def test_learned_background_draws_like_random_and_uses_the_learned_color():
    from splatvlm.run.trainer import make_backgrounds

    logits = torch.tensor([2.0, -1.0, 0.0], requires_grad=True)
    for seed in range(6):
        g_random, g_learned = torch.Generator().manual_seed(seed), torch.Generator().manual_seed(seed)
        plain = make_backgrounds("random", 4, g_random, CPU)
        learned = make_backgrounds("learned", 4, g_learned, CPU, logits)
        assert torch.equal(g_random.get_state(), g_learned.get_state())  # the cameras' draws stay in step
        if torch.equal(plain, torch.ones(4, 3)):  # 'random' took white: 'learned' takes the learned color
            torch.testing.assert_close(learned, torch.sigmoid(logits).detach().expand(4, 3))
            assert learned.requires_grad
        else:
            assert torch.equal(learned, plain)


def test_learned_background_trains_and_resumes_exactly(tmp_path):
    n = 6
    cfg, terms, sample = fit_setup(2 * n)
    cfg = dataclasses.replace(cfg, background="learned", background_lr=0.05)
    (tmp_path / "a").mkdir()
    a = train(cfg, fresh_state(cfg), terms, tmp_path / "a", CPU, sample, progress=False)
    assert a.background is not None and a.background.abs().max() > 1e-3  # it learned something
    (tmp_path / "b").mkdir()
    train(cfg, fresh_state(cfg), terms, tmp_path / "b", CPU, sample, stop_after=n, progress=False)
    ckpt = load_checkpoint(tmp_path / "b" / "checkpoint.pt")
    assert set(ckpt["background"]) == {"logits", "optimizer"}
    torch.manual_seed(999)
    b = train(cfg, restore_state(ckpt, cfg, CPU), terms, tmp_path / "b", CPU, sample, progress=False)
    assert torch.equal(a.background, b.background)
    for key in a.params:
        assert torch.equal(a.params[key], b.params[key]), key
    # a checkpoint of a run without one does not resume a run with one
    from splatvlm.errors import SplatVLMError

    plain_cfg = dataclasses.replace(cfg, background="random")
    (tmp_path / "c").mkdir()
    train(plain_cfg, fresh_state(plain_cfg), terms, tmp_path / "c", CPU, sample, stop_after=1, progress=False)
    with pytest.raises(SplatVLMError, match="does not fit this run's config"):
        restore_state(load_checkpoint(tmp_path / "c" / "checkpoint.pt"), cfg, CPU)


class PauseAfter:
    """A viewer whose Pause is on after a given step; it records the last step it was shown at each wait."""

    def __init__(self, step: int):
        import contextlib

        self.lock = contextlib.nullcontext()
        self.pause_after, self.shown, self.waits = step, -1, []

    @property
    def paused(self) -> bool:
        return self.shown >= self.pause_after and not self.waits

    def update(self, params, step, logs):
        self.shown = step

    def wait_if_paused(self, should_stop=None):
        if self.paused:
            self.waits.append(self.shown)


def test_a_paused_view_shows_the_last_finished_step(tmp_path):
    """The trainer reads a step's numbers one step late; on a pause it reads them first, so the view shows the
    step that finished rather than the one before."""
    cfg, terms, sample = fit_setup(6)
    viewer = PauseAfter(2)
    state = train(cfg, fresh_state(cfg), terms, tmp_path, CPU, sample, viewer=viewer, progress=False)
    assert state.step == 6
    assert viewer.waits == [3], "paused at the start of step 4, with step 3's numbers shown"
