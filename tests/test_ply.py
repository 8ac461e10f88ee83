"""Tests for ply.py: exact round trips, the INRIA layout, and rejection of bad files."""

from __future__ import annotations

import functools
import os
import tempfile
from pathlib import Path

import numpy as np
import plyfile
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import splatvlm.gaussians.ply as ply
from splatvlm.errors import SplatVLMError
from splatvlm.gaussians.ply import load_ply, ply_field_names, save_ply
from splatvlm.gaussians.scene import make_params


def random_params(n: int, degree: int, seed: int = 0) -> torch.nn.ParameterDict:
    g = torch.Generator().manual_seed(seed)
    k = (degree + 1) ** 2
    return make_params(
        means=torch.randn(n, 3, generator=g),
        quats=torch.randn(n, 4, generator=g),
        scales=torch.randn(n, 3, generator=g) - 4,
        opacities=torch.randn(n, generator=g),
        sh0=torch.randn(n, 1, 3, generator=g),
        shN=torch.randn(n, k - 1, 3, generator=g),
    )


def assert_bitwise_equal(a: torch.nn.ParameterDict, b: torch.nn.ParameterDict) -> None:
    assert set(a.keys()) == set(b.keys())
    for key in a.keys():
        x, y = a[key].detach(), b[key].detach()
        assert x.shape == y.shape, key
        assert x.dtype == y.dtype == torch.float32, key
        # Compare bit patterns, so -0.0 vs 0.0 or any rounding would fail.
        assert torch.equal(x.view(torch.int32), y.view(torch.int32)), key


def write_header(path, lines: list[str], body: bytes = b"") -> None:
    path.write_bytes(("\n".join(lines) + "\n").encode("ascii") + body)


def inria_header(n: int, names: list[str], types: dict[str, str] | None = None) -> list[str]:
    types = types or {}
    return (
        ["ply", "format binary_little_endian 1.0", f"element vertex {n}"]
        + [f"property {types.get(name, 'float')} {name}" for name in names]
        + ["end_header"]
    )


def expect_error(path, *fragments: str) -> str:
    with pytest.raises(SplatVLMError) as info:
        load_ply(path)
    msg = str(info.value)
    assert "\n" not in msg and "\r" not in msg
    assert str(path) in msg
    for fragment in fragments:
        assert fragment in msg, msg
    return msg


@pytest.mark.parametrize("degree", [0, 1, 3])
def test_round_trip_is_bitwise_exact(tmp_path, degree):
    params = random_params(50, degree, seed=degree)
    params["means"].data[0, 0] = -0.0
    params["scales"].data[1, 2] = 1e-38  # subnormal float32
    path = tmp_path / "scene.ply"
    save_ply(params, path)
    loaded = load_ply(path)
    assert_bitwise_equal(params, loaded)
    # Header + 4 bytes per property per Gaussian, nothing else.
    n_props = len(ply_field_names(degree))
    header = path.read_bytes().split(b"end_header\n")[0] + b"end_header\n"
    assert path.stat().st_size == len(header) + 50 * n_props * 4


def test_plain_plyfile_reads_the_inria_layout(tmp_path):
    params = random_params(7, 3)
    path = tmp_path / "scene.ply"
    save_ply(params, path)
    data = plyfile.PlyData.read(str(path))
    assert [e.name for e in data.elements] == ["vertex"]
    assert data.byte_order == "<" and not data.text
    vertex = data["vertex"]
    names = [p.name for p in vertex.properties]
    expected = (
        ["x", "y", "z", "nx", "ny", "nz", "f_dc_0", "f_dc_1", "f_dc_2"]
        + [f"f_rest_{i}" for i in range(45)]
        + ["opacity", "scale_0", "scale_1", "scale_2", "rot_0", "rot_1", "rot_2", "rot_3"]
    )
    assert names == expected
    assert all(vertex.data.dtype[name] == np.dtype("<f4") for name in names)
    assert vertex.count == 7
    np.testing.assert_array_equal(vertex["nx"], 0.0)
    np.testing.assert_array_equal(vertex["x"], params["means"][:, 0].detach().numpy())
    np.testing.assert_array_equal(vertex["rot_0"], params["quats"][:, 0].detach().numpy())  # w first
    np.testing.assert_array_equal(vertex["opacity"], params["opacities"].detach().numpy())  # logit
    np.testing.assert_array_equal(vertex["scale_1"], params["scales"][:, 1].detach().numpy())  # log
    # INRIA order is channel-major: f_rest_{c * (K-1) + j} = shN[:, j, c].
    shN = params["shN"].detach().numpy()
    np.testing.assert_array_equal(vertex["f_rest_0"], shN[:, 0, 0])
    np.testing.assert_array_equal(vertex["f_rest_1"], shN[:, 1, 0])
    np.testing.assert_array_equal(vertex["f_rest_15"], shN[:, 0, 1])
    np.testing.assert_array_equal(vertex["f_rest_44"], shN[:, 14, 2])


def test_reads_files_with_extra_properties_from_other_tools(tmp_path):
    # Another tool: extra fields of other types, different order, comments, CRLF line ends.
    n = 5
    params = random_params(n, 1)
    names = ply_field_names(1)
    other = ["red", "green", "blue"] + names[::-1] + ["filter_3D"]
    types = {"red": "uchar", "green": "uchar", "blue": "uchar", "filter_3D": "double"}
    dtype = np.dtype([(name, ply._PLY_TYPES[types.get(name, "float")]) for name in other])
    rows = np.zeros(n, dtype=dtype)
    shN = params["shN"].detach().transpose(1, 2).reshape(n, -1).numpy()
    columns = {"x": 0, "y": 1, "z": 2}
    for name, i in columns.items():
        rows[name] = params["means"][:, i].detach().numpy()
    for i in range(3):
        rows[f"f_dc_{i}"] = params["sh0"][:, 0, i].detach().numpy()
        rows[f"scale_{i}"] = params["scales"][:, i].detach().numpy()
    for i in range(9):
        rows[f"f_rest_{i}"] = shN[:, i]
    for i in range(4):
        rows[f"rot_{i}"] = params["quats"][:, i].detach().numpy()
    rows["opacity"] = params["opacities"].detach().numpy()
    rows["red"] = 200
    rows["filter_3D"] = 0.5
    header = ["ply", "format binary_little_endian 1.0", "comment made by another tool", f"element vertex {n}"]
    header += [f"property {types.get(name, 'float')} {name}" for name in other] + ["end_header"]
    path = tmp_path / "other.ply"
    path.write_bytes(("\r\n".join(header) + "\r\n").encode() + rows.tobytes())
    loaded = load_ply(path)
    assert_bitwise_equal(params, loaded)


def test_double_fields_are_accepted_and_narrowed(tmp_path):
    names = ply_field_names(0)
    rows = np.zeros(2, dtype=[(name, "<f8") for name in names])
    rows["x"] = [0.25, -1.5]
    rows["rot_0"] = 1.0
    path = tmp_path / "double.ply"
    write_header(path, inria_header(2, names, {name: "double" for name in names}), rows.tobytes())
    loaded = load_ply(path)
    assert loaded["means"][:, 0].tolist() == [0.25, -1.5]
    assert loaded["shN"].shape == (2, 0, 3)


def valid_file(tmp_path, n: int = 3, degree: int = 0):
    path = tmp_path / "valid.ply"
    save_ply(random_params(n, degree), path)
    return path


def test_empty_file(tmp_path):
    path = tmp_path / "empty.ply"
    path.write_bytes(b"")
    expect_error(path, "not a .ply")


def test_non_ply_file(tmp_path):
    path = tmp_path / "notes.ply"
    path.write_text("hello\nworld\n")
    expect_error(path, "not a .ply")
    png = tmp_path / "image.ply"
    png.write_bytes(b"\x89PNG\r\n\x1a\n" + os.urandom(100))
    expect_error(png, "not a .ply")


def test_missing_file_and_folder(tmp_path):
    expect_error(tmp_path / "nope.ply", "not found")
    (tmp_path / "dir.ply").mkdir()
    expect_error(tmp_path / "dir.ply", "folder")


def test_corrupt_headers(tmp_path):
    names = ply_field_names(0)
    body = b"\0" * (4 * len(names))
    cases = [
        (
            ["ply", "format ascii 1.0", "element vertex 1"]
            + [f"property float {n}" for n in names]
            + ["end_header"],
            "ascii",
        ),
        (
            inria_header(1, names)[:1] + ["format binary_big_endian 1.0"] + inria_header(1, names)[2:],
            "big_endian",
        ),
        (["ply", "format binary_little_endian 2.0"] + inria_header(1, names)[2:], "unknown format"),
        (["ply"] + inria_header(1, names)[2:], "before the 'format'"),
        (
            inria_header(1, names)[:2] + ["element vertex one"] + inria_header(1, names)[3:],
            "malformed element",
        ),
        (inria_header(1, names)[:2] + ["element vertex -3"] + inria_header(1, names)[3:], "negative"),
        (inria_header(1, names)[:-1] + ["property float"] + ["end_header"], "malformed property"),
        (inria_header(1, names)[:-1] + ["property list uchar int vertex_indices", "end_header"], "list"),
        (inria_header(1, names)[:-1] + ["property float128 q", "end_header"], "unknown type"),
        (inria_header(1, names)[:-1] + ["element face 0", "end_header"], "other than 'vertex'"),
        (inria_header(1, names)[:-1] + ["bogus line", "end_header"], "unexpected header line"),
        (inria_header(1, names)[:-1] + ["property float x", "end_header"], "twice"),
        (["ply", "format binary_little_endian 1.0", "end_header"], "exactly one 'vertex'"),
    ]
    for i, (lines, fragment) in enumerate(cases):
        path = tmp_path / f"bad{i}.ply"
        write_header(path, lines, body)
        expect_error(path, fragment)
    no_end = tmp_path / "no_end.ply"
    no_end.write_bytes(b"ply\nformat binary_little_endian 1.0\nelement vertex 1\n")
    expect_error(no_end, "end_header")


def test_long_header_is_rejected_without_reading_it_all(tmp_path):
    path = tmp_path / "long.ply"
    path.write_bytes(b"ply\n" + b"comment " + b"a" * (2 * ply.MAX_HEADER_BYTES) + b"\nend_header\n")
    expect_error(path, "end_header", str(ply.MAX_HEADER_BYTES))


def test_missing_and_wrong_type_fields(tmp_path):
    names = ply_field_names(0)
    without_rot = [n for n in names if n != "rot_3"]
    path = tmp_path / "missing.ply"
    write_header(path, inria_header(1, without_rot), b"\0" * 4 * len(without_rot))
    expect_error(path, "missing", "rot_3")

    path = tmp_path / "int_type.ply"
    write_header(path, inria_header(1, names, {"opacity": "uchar"}), b"\0" * (4 * len(names) - 3))
    expect_error(path, "opacity", "float")

    rest8 = names[:9] + [f"f_rest_{i}" for i in range(8)] + names[9:]
    path = tmp_path / "rest8.ply"
    write_header(path, inria_header(1, rest8), b"\0" * 4 * len(rest8))
    expect_error(path, "8 f_rest", "SH degree")

    gap = names[:9] + [f"f_rest_{i}" for i in range(8)] + ["f_rest_10"] + names[9:]
    path = tmp_path / "gap.ply"
    write_header(path, inria_header(1, gap), b"\0" * 4 * len(gap))
    expect_error(path, "numbered")


def test_truncated_and_padded_data(tmp_path):
    data = valid_file(tmp_path, n=10).read_bytes()
    path = tmp_path / "cut.ply"
    path.write_bytes(data[:-1])
    expect_error(path, "truncated")
    path.write_bytes(data[: len(data) // 2])
    expect_error(path, "truncated")
    path.write_bytes(data + b"\0" * 8)
    expect_error(path, "unexpected bytes")


def test_billions_of_vertices_are_rejected_without_allocating(tmp_path, monkeypatch):
    names = ply_field_names(3)
    path = tmp_path / "huge.ply"
    write_header(path, inria_header(3_000_000_000, names), b"\0" * 4 * len(names))

    def no_read(*args, **kwargs):
        raise AssertionError("data read before the size check")

    monkeypatch.setattr(np, "fromfile", no_read)
    msg = expect_error(path, "3000000000 Gaussians")
    assert "bytes" in msg
    path = tmp_path / "huger.ply"
    write_header(path, inria_header(10**19, names))
    expect_error(path, "Gaussians")
    path = tmp_path / "hugest.ply"
    write_header(path, inria_header(10**40, names))
    expect_error(path, "malformed element")


def test_zero_vertices(tmp_path):
    path = tmp_path / "zero.ply"
    write_header(path, inria_header(0, ply_field_names(0)))
    expect_error(path, "no Gaussians")


@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf])
def test_non_finite_values(tmp_path, value):
    names = ply_field_names(0)
    rows = np.zeros((4, len(names)), dtype="<f4")
    rows[2, names.index("scale_1")] = value
    path = tmp_path / "nan.ply"
    write_header(path, inria_header(4, names), rows.tobytes())
    expect_error(path, "scale_1", "1 NaN or inf")


def test_save_rejects_non_finite_and_empty_scenes(tmp_path):
    params = random_params(3, 0)
    params["opacities"].data[1] = float("nan")
    with pytest.raises(SplatVLMError, match="opacities"):
        save_ply(params, tmp_path / "nan.ply")
    with pytest.raises(SplatVLMError, match="no Gaussians"):
        save_ply(random_params(0, 0), tmp_path / "empty.ply")
    assert list(tmp_path.iterdir()) == []


def test_atomic_write_keeps_the_previous_file(tmp_path, monkeypatch):
    path = tmp_path / "scene.ply"
    old = random_params(20, 1, seed=1)
    save_ply(old, path)
    before = path.read_bytes()

    def half_then_fail(f, body):
        f.write(body[: len(body) // 2])
        f.flush()
        raise OSError("disk full")

    monkeypatch.setattr(ply, "_write_body", half_then_fail)
    with pytest.raises(OSError, match="disk full"):
        save_ply(random_params(30, 1, seed=2), path)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["scene.ply"]  # no temp file left
    assert_bitwise_equal(old, load_ply(path))


# --- fuzzing: whatever the bytes, the reader returns a scene or raises SplatVLMError ---


@functools.cache
def _valid_bytes() -> bytes:
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "v.ply"
        save_ply(random_params(3, 1, seed=5), path)
        return path.read_bytes()


def _load_or_clean_error(tmp_path, data: bytes) -> None:
    path = tmp_path / "fuzz.ply"
    path.write_bytes(data)
    try:
        params = load_ply(path)
    except SplatVLMError as e:
        assert "\n" not in str(e) and str(path) in str(e)
        return
    for value in params.values():
        assert torch.isfinite(value).all()
    assert params["means"].shape[0] > 0


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    # Bytes that matter to the parser are drawn more often than the rest.
    edits=st.lists(
        st.tuples(st.integers(0, 10**6), st.one_of(st.sampled_from(b"\n\r 09-e"), st.integers(0, 255))),
        max_size=6,
    ),
    cut=st.one_of(st.none(), st.integers(0, 10**6)),
    extra=st.binary(max_size=16),
)
def test_fuzz_byte_mutations(tmp_path, edits, cut, extra):
    data = bytearray(_valid_bytes())
    header_len = data.index(b"end_header\n") + len(b"end_header\n")
    for pos, byte in edits:
        # Half the edits land in the header, where the parser lives.
        data[pos % header_len if pos % 2 else pos % len(data)] = byte
    if cut is not None:
        data = data[: cut % (len(data) + 1)]
    _load_or_clean_error(tmp_path, bytes(data) + extra)


_TOKENS = st.sampled_from(
    [
        "ply", "format", "binary_little_endian", "1.0", "ascii", "element", "vertex", "face", "property",
        "float", "double", "uchar", "int", "list", "x", "y", "z", "f_dc_0", "f_rest_0", "opacity", "rot_0",
        "scale_0", "comment", "end_header", "0", "1", "-1", "3000000000", "99999999999999999999", "\x00", "\xff", "", "\r",
    ]
)  # fmt: skip


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    lines=st.lists(st.lists(_TOKENS, min_size=1, max_size=4).map(" ".join), max_size=12),
    keep_prefix=st.booleans(),
    body=st.binary(max_size=64),
)
def test_fuzz_random_headers(tmp_path, lines, keep_prefix, body):
    valid = _valid_bytes().split(b"\n")
    prefix = [line.decode() for line in valid[:3]] if keep_prefix else []
    text = "\n".join(prefix + lines + ["end_header", ""])
    _load_or_clean_error(tmp_path, text.encode("latin-1") + body)
