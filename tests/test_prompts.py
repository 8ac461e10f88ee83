import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from splatvlm.errors import SplatVLMError
from splatvlm.prompts import check_prompt, read_prompts, slugify


def test_gpteval3d_json_list(tmp_path):
    # A small file in GPTEval3D's format (a JSON list of strings; id = index), written for this test.
    path = tmp_path / "prompts.json"
    path.write_text(json.dumps(["a red apple", "a wooden chair", "a corgi wearing a hat"]))
    assert read_prompts(path) == ["a red apple", "a wooden chair", "a corgi wearing a hat"]


def test_text_file_lines_and_comments(tmp_path):
    path = tmp_path / "p.txt"
    path.write_text("# my prompts\na cat\n\n  a dog  \n")
    assert read_prompts(path) == ["a cat", "a dog"]


@pytest.mark.parametrize(
    "content, message",
    [
        (b'{"a": 1}', "JSON list"),
        (b'["ok", 3]', "must be a string"),
        (b"[]", "empty list"),
        (b"", "empty"),
        (b"   \n\n", "empty"),
        (b"\xff\xfe\x00bad", "not UTF-8"),
        (b'["a", ', "not valid JSON"),
        (b'["ok", "   "]', "is empty"),
        (b"# only a comment\n", "no prompts"),
    ],
)
def test_malformed_files_rejected(tmp_path, content, message):
    path = tmp_path / "p"
    path.write_bytes(content)
    with pytest.raises(SplatVLMError, match=message) as e:
        read_prompts(path)
    assert "\n" not in str(e.value)


def test_missing_file(tmp_path):
    with pytest.raises(SplatVLMError, match="does not exist"):
        read_prompts(tmp_path / "nope.txt")


def test_check_prompt():
    assert check_prompt("  a cat ") == "a cat"
    for bad in ["", "   ", "x" * 5000, "a\x00b"]:
        with pytest.raises(SplatVLMError):
            check_prompt(bad)


def test_slugify():
    assert slugify("A Red Apple, on a table!") == "a-red-apple-on-a-table"
    assert slugify("!!!") == "prompt"


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.binary(max_size=200))
def test_fuzz_reader_only_clear_errors(tmp_path, data):
    path = tmp_path / "fuzz.txt"
    path.write_bytes(data)
    try:
        prompts = read_prompts(path)
    except SplatVLMError as e:
        assert "\n" not in str(e)
    else:
        assert prompts and all(isinstance(p, str) and p.strip() == p and p for p in prompts)


def test_hostile_json_prompt_files(tmp_path):
    deep = tmp_path / "deep.json"
    deep.write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(SplatVLMError, match="nested too deeply"):
        read_prompts(deep)
    digits = tmp_path / "digits.json"
    digits.write_text("[" + "7" * 5000 + "]")
    with pytest.raises(SplatVLMError, match="not a list of prompts"):
        read_prompts(digits)


def test_prompts_remember_their_lines(tmp_path):
    from splatvlm.prompts import where_of

    p = tmp_path / "p.txt"
    p.write_text("# header\na cat\n\na dog\n")
    prompts = read_prompts(p)
    assert prompts == ["a cat", "a dog"]
    assert where_of(prompts) == [f"line 2 of {p}", f"line 4 of {p}"]
    assert where_of(prompts[1:]) == [f"line 4 of {p}"]
    assert where_of(["x"]) == ["prompt 0"]
