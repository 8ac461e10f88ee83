import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from splatvlm.config import (
    RunConfig,
    Weight,
    apply_overrides,
    list_presets,
    load_run_config,
    read_yaml,
    to_dict,
    to_yaml,
)
from splatvlm.errors import SplatVLMError
from splatvlm.run.schedules import ever_active, weight_at


def test_vlm3d_weight_schedule():
    w = Weight(300.0, 1.0, 10000, 10000)
    assert weight_at(w, 0) == 300.0
    assert weight_at(w, 5000) == pytest.approx(150.5)
    assert weight_at(w, 9999) == pytest.approx(1.0299, abs=1e-3)
    assert weight_at(w, 10000) == 0.0
    assert weight_at(Weight(2.0), 10**6) == 2.0
    assert ever_active(w, 100) and not ever_active(Weight(0.0), 100)
    assert not ever_active(Weight(5.0, stop_after=0), 100)


def test_every_preset_loads_and_round_trips(tmp_path):
    names = list_presets()
    for required in ("vlm3d", "vlm3d-3b", "mvdream", "sd21", "demo", "fit"):
        assert required in names
    for name in names:
        cfg = load_run_config(name)
        path = tmp_path / f"{name}.yaml"
        path.write_text(to_yaml(cfg))
        assert apply_overrides(RunConfig(), read_yaml(path)) == cfg


def test_overrides_nested_and_typed():
    cfg = apply_overrides(
        RunConfig(), {"steps": 7, "camera": {"elevation_range": [5, 10]}, "weights": {"vlm": {"start": 2}}}
    )
    assert cfg.steps == 7 and cfg.camera.elevation_range == (5.0, 10.0) and cfg.weights.vlm.start == 2.0
    # a float as typed on the command line, which YAML 1.1 reads as a string without a dot
    cfg = apply_overrides(
        RunConfig(), {"weights": {"opacity": {"start": "1e-3"}}, "scene": {"lr_means": "-2E+1"}}
    )
    assert cfg.weights.opacity.start == 1e-3 and cfg.scene.lr_means == -20.0


@pytest.mark.parametrize(
    "override, message",
    [
        ({"stepz": 1}, "unknown config key 'stepz'; did you mean 'steps'\\?"),
        ({"camera": {"fov": 1}}, "unknown config key 'camera.fov'$"),
        (
            {"camera": {"resolutoin": 1}},
            "unknown config key 'camera.resolutoin'; did you mean 'camera.resolution'\\?",
        ),
        ({"steps": "many"}, "must be an integer"),
        ({"steps": True}, "must be an integer"),
        ({"scene": {"lr_means": "1e-3x"}}, "must be a number"),
        ({"steps": "1e3"}, "must be an integer"),
        ({"background": "pink"}, "must be one of"),
        ({"camera": {"elevation_range": [1, 2, 3]}}, "must have 2 items"),
        ({"camera": 5}, "must be a mapping"),
    ],
)
def test_bad_overrides_are_one_line_errors(override, message):
    with pytest.raises(SplatVLMError, match=message) as e:
        apply_overrides(RunConfig(), override)
    assert "\n" not in str(e.value)


def test_bad_files(tmp_path):
    with pytest.raises(SplatVLMError, match="does not exist"):
        read_yaml(tmp_path / "none.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("steps: [1,\n")
    with pytest.raises(SplatVLMError, match="not valid YAML"):
        read_yaml(bad)
    bad.write_text("- 1\n- 2\n")
    with pytest.raises(SplatVLMError, match="mapping"):
        read_yaml(bad)
    bad.write_bytes(b"\xff\xfe")
    with pytest.raises(SplatVLMError, match="UTF-8"):
        read_yaml(bad)
    with pytest.raises(SplatVLMError, match="unknown preset"):
        load_run_config("nope")


yaml_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=8,
)
keys = st.sampled_from(list(to_dict(RunConfig()).keys()) + ["bogus"])


@settings(max_examples=200, deadline=None)
@given(
    st.dictionaries(
        keys, yaml_values | st.dictionaries(st.text(max_size=12), yaml_values, max_size=3), max_size=4
    )
)
def test_fuzz_config_loader_only_clear_errors(overrides):
    try:
        cfg = apply_overrides(RunConfig(), overrides)
    except SplatVLMError as e:
        assert "\n" not in str(e)
    else:
        assert isinstance(cfg, RunConfig)


def test_weight_in_a_file_replaces_the_whole_schedule():
    cfg = apply_overrides(RunConfig(), {"weights": {"vlm": {"start": 0.0}}})
    assert cfg.weights.vlm == Weight(0.0)
    for name in ("mvdream", "sd21", "fit"):
        assert not ever_active(load_run_config(name).weights.vlm, 10**6), name


def test_mvdream_preset_is_vlm3d_without_the_reward():
    """The prior-only baseline differs from `vlm3d` only in the reward's weight and question, so an A/B of the
    two measures the reward alone."""
    from dataclasses import replace

    prior, full = load_run_config("mvdream"), load_run_config("vlm3d")
    assert not ever_active(prior.weights.vlm, 10**6)
    same = replace(
        full,
        weights=replace(full.weights, vlm=prior.weights.vlm),
        vlm=replace(full.vlm, question=prior.vlm.question),
    )
    assert same == prior


def test_score_distillation_presets_are_bounded():
    """Every score-distillation preset caps the count (<= 500k), bounds each refinement's growth, and runs
    without opacity resets (large-Gaussian pruning does not depend on them): unbounded growth ran out of memory."""
    from splatvlm.gaussians.densify import prune_scale3d_after

    for name in ("vlm3d", "vlm3d-full", "vlm3d-3b", "mvdream", "sd21"):
        s = load_run_config(name).strategy
        assert s.kind == "default" and 0 < s.cap_max <= 500_000, name
        assert s.max_grow_frac is not None and 0 < s.max_grow_frac <= 0.5, name
        assert s.reset_every == 0 and prune_scale3d_after(s) == s.refine_start_iter < s.refine_stop_iter, name


# ----------------------------------------------------------------------------------------------
# Hostile configs: each a one-line error, found without walking what the file would expand to


def test_yaml_alias_bomb_is_refused_without_expanding_it(tmp_path, monkeypatch):
    import splatvlm.config as config
    from splatvlm.config import load_run_config

    levels = ["steps:", '  - &a0 ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    for i in range(1, 10):
        refs = ",".join([f"*a{i - 1}"] * 9)
        levels.append(f"  - &a{i} [{refs}]")
    bomb = tmp_path / "bomb.yaml"
    bomb.write_text("\n".join(levels) + "\n")  # 9**10 strings under a typed key (an int)
    values_looked_at = []  # the size check's calls, one per value it looks at
    size = config._expanded_size
    monkeypatch.setattr(config, "_expanded_size", lambda *a: values_looked_at.append(1) or size(*a))
    coerced = []
    coerce = config._coerce
    monkeypatch.setattr(
        config, "_coerce", lambda value, tp, key: coerced.append(key) or coerce(value, tp, key)
    )
    load_run_config("demo")
    preset_only, coerced[:] = list(coerced), []
    with pytest.raises(SplatVLMError, match="expands to more than") as info:
        load_run_config("demo", bomb)
    assert len(str(info.value)) < 300 and "\n" not in str(info.value)
    assert len(values_looked_at) < 1000  # each shared list counted once, not 9**10 strings walked
    assert coerced == preset_only  # refused before any of the file's values is converted


def test_wrong_type_error_does_not_repr_a_huge_value(tmp_path):
    from splatvlm.config import load_run_config

    big = tmp_path / "big.yaml"
    big.write_text("steps: [" + ",".join(["1"] * 50000) + "]\n")
    with pytest.raises(SplatVLMError, match="'steps' must be an integer") as info:
        load_run_config("demo", big)
    assert len(str(info.value)) < 200


@pytest.mark.parametrize(
    "override, match",
    [
        ({"seed": 2**64}, "--seed must be in"),
        ({"seed": -1}, "--seed must be in"),
        ({"scene": {"num_points": 10**15}}, "needs about .* GB, more than this machine"),
        ({"scene": {"num_points": 0}}, "num-points must be positive"),
    ],
)
def test_out_of_range_values(override, match):
    from splatvlm.config import apply_overrides, load_run_config, validate_run_config

    cfg = apply_overrides(load_run_config("demo"), override)
    with pytest.raises(SplatVLMError, match=match):
        validate_run_config(cfg)
