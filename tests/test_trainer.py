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
    for opt in state.optimizers.values():  # ... and only they reached Adam's state
        (adam,) = opt.state.values()
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
