"""The one list of loss-term specs: consistent with the config, and what each reader of it derives."""

from __future__ import annotations

import dataclasses

import torch

from splatvlm.config import RunConfig, Weight, Weights, load_run_config
from splatvlm.guidance import terms as terms_module
from splatvlm.guidance.terms import TERMS, TermSpec
from splatvlm.run.schedules import terms_active


def test_every_spec_names_real_weights_and_sections():
    names = [s.name for s in TERMS]
    assert len(set(names)) == len(names)
    fields = {f.name for f in dataclasses.fields(Weights)}
    cfg = RunConfig()
    for spec in TERMS:
        assert set(spec.weights) <= fields, spec.name
        assert spec.section is None or hasattr(cfg, spec.section), spec.name
        assert spec.inputs in ("images", "scene")
        assert spec.every(cfg) >= 1


def test_which_terms_a_preset_runs():
    assert terms_active(load_run_config("vlm3d")) == {
        "sds": True,
        "vlm": True,
        "reg": True,
    }  # regularizers on
    assert terms_active(load_run_config("mvdream")) == {"sds": True, "vlm": False, "reg": True}
    assert terms_active(load_run_config("vlm3d-full")) == {"sds": True, "vlm": True, "reg": True}
    full = load_run_config("vlm3d-full")
    assert full.weights.position == Weight(10.0) and full.weights.opacity == Weight(1e-3)
    assert full.weights.depth_tv == Weight(10.0) and full.weights.normal_smooth == Weight(0.0)
    assert full.render.shading == "mixed" and full.render.shading_after == 0.25
    assert full.vlm.question == "vlm3d" and load_run_config("vlm3d").vlm.question == "vlm3d"


def test_a_new_term_is_one_spec(monkeypatch, tmp_path):
    """A term without a model: added to the list, it is built, weighted and trained, with nothing else changed."""
    from splatvlm.gaussians.scene import init_ball
    from splatvlm.run.train_state import new_state
    from splatvlm.run.trainer import train

    def make(cfg, model, prompt):
        return lambda rgb, cams, step: {"loss_ssim": (rgb - 0.5).square().mean(), "seen": float(len(rgb))}

    extra = TermSpec("gray", ("ssim",), None, None, make, views=lambda cfg: 2)
    import splatvlm.commands.generate as generate

    for module in (terms_module, generate):  # what editing the list does to every reader of it
        monkeypatch.setattr(module, "TERMS", (*TERMS, extra))
    cfg = load_run_config("demo")
    cfg = dataclasses.replace(
        cfg, steps=3, log_every=1, checkpoint_every=0, scene=dataclasses.replace(cfg.scene, num_points=100),
        camera=dataclasses.replace(cfg.camera, resolution=16),
        weights=dataclasses.replace(cfg.weights, sds=Weight(0.0), vlm=Weight(0.0), ssim=Weight(2.0)),
    )  # fmt: skip
    assert terms_active(cfg) == {"sds": False, "vlm": False, "reg": False, "gray": True}
    terms = generate.Guidance(cfg, torch.device("cpu")).terms("a cat")
    assert list(terms) == ["gray"] and terms["gray"].num_views == 2
    state = new_state(init_ball(cfg.scene, torch.Generator().manual_seed(0)), cfg, torch.device("cpu"))
    train(cfg, state, terms, tmp_path, torch.device("cpu"), progress=False)
    import json

    last = json.loads((tmp_path / "metrics.jsonl").read_text().splitlines()[-1])
    assert last["w_ssim"] == 2.0 and last["seen"] == 2.0 and "loss_ssim" in last


def test_regularizers_build_from_the_spec_and_need_depth_only_when_asked():
    from splatvlm.commands.generate import Guidance

    cfg = load_run_config("demo")
    on = dataclasses.replace(cfg.weights, position=Weight(1.0), sparsity=Weight(2.0))
    terms = Guidance(dataclasses.replace(cfg, weights=on), torch.device("cpu")).terms("a cat")
    assert terms["reg"].inputs == "scene" and not terms["reg"].depth
    depth_on = dataclasses.replace(on, depth_tv=Weight(1.0))
    assert (
        Guidance(dataclasses.replace(cfg, weights=depth_on), torch.device("cpu")).terms("a cat")["reg"].depth
    )


def test_memory_estimate_follows_the_specs():
    from splatvlm.resources import model_bytes

    cfg = load_run_config("vlm3d")
    cfg = dataclasses.replace(cfg, sds=dataclasses.replace(cfg.sds, model="random"),
                              vlm=dataclasses.replace(cfg.vlm, model="random-7b"))  # fmt: skip
    cpu, other = torch.device("cpu"), torch.device("meta")
    both = model_bytes(cfg, cpu, cpu)
    split = model_bytes(cfg, other, cpu)  # the reward (own device) on the second device
    assert both[cpu] == split[cpu] + split[other] and split[other] > split[cpu]
    no_reward = dataclasses.replace(cfg, weights=dataclasses.replace(cfg.weights, vlm=Weight(0.0)))
    assert set(model_bytes(no_reward, other, cpu)) == {cpu}
