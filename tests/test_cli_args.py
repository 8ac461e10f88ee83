"""The commands' flags: a short --help, every flag under --help-all, and help text that says what a flag does."""

import dataclasses
import re

import pytest

from splatvlm.cli import main
from splatvlm.cli_args import EXPERIMENTAL, EXPERIMENTAL_TAG, SHORT_HELP, GenerateArgs, parse_args
from splatvlm.config import RunConfig

COMMANDS = [
    "generate",
    "fit",
    "render",
    "mesh",
    "view",
    "presets",
    "train-reward",
    "bench",
    "toyworld build",
    "toyworld eval",
]


def help_text(capsys, monkeypatch, *argv: str) -> str:
    monkeypatch.setenv("COLUMNS", "80")
    with pytest.raises(SystemExit) as e:
        main(list(argv))
    assert e.value.code in (0, None)
    return capsys.readouterr().out


def flags(text: str) -> set[str]:
    return set(re.findall(r"--[a-z0-9][a-z0-9.-]*", text))


def test_generate_help_is_short_and_help_all_has_the_rest(capsys, monkeypatch):
    short = help_text(capsys, monkeypatch, "generate", "--help")
    full = help_text(capsys, monkeypatch, "generate", "--help-all")
    assert len(short.splitlines()) < 150
    assert "[PROMPT]" in short and "{None}" not in short
    assert {"--steps", "--sds.model", "--vlm.model", "--output", "--help-all"} <= flags(short)
    tuning = {
        "--vlm.cuda-graph",
        "--sds.compile",
        "--parallel-terms",
        "--vlm.prefix-cache",
        "--render.packed",
    }
    assert not tuning & flags(short)
    assert tuning <= flags(full)
    assert len(full.splitlines()) > 2 * len(short.splitlines())


def test_hidden_flags_still_parse():
    args = parse_args(GenerateArgs, ["a cat", "--sds.no-compile", "--vlm.fp8", "--render.packed"], "generate")
    assert args.prompt == "a cat" and args.run.sds.compile is False
    assert args.run.vlm.fp8 is True and args.run.render.packed is True


def test_defaults_of_a_preset_survive_the_short_help_rules():
    """Hiding a field from --help must not change its parsed value (it keeps the default instance's)."""
    base = RunConfig(steps=7)
    base.sds.compile = False
    args = parse_args(GenerateArgs, ["a cat"], "generate", GenerateArgs(run=base))
    assert args.run.steps == 7 and args.run.sds.compile is False


def test_experimental_flags_are_marked_and_kept_out_of_the_short_help(capsys, monkeypatch):
    short = help_text(capsys, monkeypatch, "generate", "--help")
    full = " ".join(help_text(capsys, monkeypatch, "generate", "--help-all").split())
    for cls, names in EXPERIMENTAL.items():
        for name in names:
            assert name not in SHORT_HELP.get(cls, ())
    assert "--vlm.fp8" not in flags(short) and "--sds.channels-last" not in flags(short)
    full = " ".join(full.replace("│", " ").split())
    for flag in ("--vlm.fp8", "--vlm.fp8-vision", "--sds.channels-last"):
        assert re.search(re.escape(flag) + r"[ ,][^│]{0,80}?" + re.escape(EXPERIMENTAL_TAG.strip()), full), (
            flag
        )
    assert full.count(EXPERIMENTAL_TAG.strip()) == sum(len(v) for v in EXPERIMENTAL.values())


def test_the_help_tables_name_real_fields():
    for table in (SHORT_HELP, EXPERIMENTAL):
        for cls, names in table.items():
            missing = set(names) - {f.name for f in dataclasses.fields(cls)}
            assert not missing, (cls.__name__, missing)


# A flag's help says what it does and its trade-off in words: the measurements that motivated it belong to the
# results page and the history to git.
HISTORY = re.compile(
    r"\b\d+(\.\d+)? ?ms\b|\bH[12]00\b|\b[Rr]ound \d|\bRESULTS\b|\bFACTS\b|\b20\d\d-\d\d-\d\d\b|\b[Ii]ssue \d|benchmarks/"
)


@pytest.mark.parametrize("command", COMMANDS)
def test_help_carries_no_measurements_or_history(command, capsys, monkeypatch):
    text = " ".join(help_text(capsys, monkeypatch, *command.split(), "--help-all").replace("│", " ").split())
    assert HISTORY.search(text) is None, HISTORY.search(text)
