"""Gaussian splats to and from .ply in the INRIA 3DGS layout (what every splat viewer reads).

One ``vertex`` element, float32, binary little-endian, pre-activation values:
  x y z, nx ny nz (zeros, kept for tools that expect them), f_dc_0..2, f_rest_0..M-1,
  opacity (logit), scale_0..2 (log), rot_0..3 (wxyz quaternion, unnormalized).
``f_rest`` is channel-major as INRIA writes it: shN [N, K-1, 3] transposed to [N, 3, K-1], flattened,
so M = 3 * (K - 1) is 0, 9, 24 or 45 for SH degree 0..3.

The loader checks the whole header and the file size before it reads any data, so corrupt,
truncated or hostile files fail with one clear line instead of a crash or a huge allocation.
Only ``binary_little_endian 1.0`` is read: ascii and big-endian splat files are not produced by
any common tool, and rejecting them keeps the parser small.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import BinaryIO

import numpy as np
import torch

from ..errors import SplatVLMError
from ..files import atomic_path
from .scene import make_params

MAX_HEADER_BYTES = 64 * 1024
"""Headers longer than this are rejected (an INRIA header at SH degree 3 is about 1.5 KiB)."""

SH_REST_COUNTS = {0: 0, 9: 1, 24: 2, 45: 3}
"""Number of f_rest_* fields -> SH degree."""

# PLY scalar type names (both spellings of the spec) -> little-endian numpy dtype.
_PLY_TYPES = {
    "char": "i1", "int8": "i1",
    "uchar": "u1", "uint8": "u1",
    "short": "<i2", "int16": "<i2",
    "ushort": "<u2", "uint16": "<u2",
    "int": "<i4", "int32": "<i4",
    "uint": "<u4", "uint32": "<u4",
    "float": "<f4", "float32": "<f4",
    "double": "<f8", "float64": "<f8",
}  # fmt: skip
_FLOAT_TYPES = {"<f4", "<f8"}
_REQUIRED = (
    ["x", "y", "z"]
    + [f"f_dc_{i}" for i in range(3)]
    + ["opacity"]
    + [f"scale_{i}" for i in range(3)]
    + [f"rot_{i}" for i in range(4)]
)
_F_REST = re.compile(r"f_rest_(\d+)")
_COUNT = re.compile(r"-?\d{1,20}")


def ply_field_names(sh_degree: int) -> list[str]:
    """Vertex property names in the order ``save_ply`` writes them."""
    n_rest = 3 * ((sh_degree + 1) ** 2 - 1)
    return (
        ["x", "y", "z", "nx", "ny", "nz"]
        + [f"f_dc_{i}" for i in range(3)]
        + [f"f_rest_{i}" for i in range(n_rest)]
        + ["opacity"]
        + [f"scale_{i}" for i in range(3)]
        + [f"rot_{i}" for i in range(4)]
    )


def _write_body(f: BinaryIO, body: bytes) -> None:
    # A seam of its own so tests can fail a write halfway.
    f.write(body)


@torch.no_grad()
def save_ply(params: torch.nn.ParameterDict, path: str | os.PathLike) -> None:
    """Write ``params`` to ``path`` atomically; ``load_ply`` gives back the same bits."""
    path = Path(path)
    keys = ("means", "quats", "scales", "opacities", "sh0", "shN")
    t = {k: params[k].detach().to("cpu", torch.float32) for k in keys}
    n = t["means"].shape[0]
    if n == 0:
        raise SplatVLMError(f"cannot save {path}: the scene has no Gaussians")
    shN = t["shN"]  # [N, K-1, 3]
    k_rest = shN.shape[1]
    if 3 * k_rest not in SH_REST_COUNTS:
        raise SplatVLMError(
            f"cannot save {path}: shN has {k_rest} coefficients per channel, not 0, 3, 8 or 15"
        )
    for key, value in t.items():
        if not torch.isfinite(value).all():
            raise SplatVLMError(f"cannot save {path}: {key} holds NaN or inf values")
    columns = [
        t["means"].reshape(n, 3),
        torch.zeros(n, 3),  # normals: unused by splats, kept for the INRIA layout
        t["sh0"].reshape(n, 3),
        shN.transpose(1, 2).reshape(n, 3 * k_rest),  # channel-major, as INRIA
        t["opacities"].reshape(n, 1),
        t["scales"].reshape(n, 3),
        t["quats"].reshape(n, 4),
    ]
    data = torch.cat(columns, dim=1).numpy().astype("<f4", copy=False)  # [N, P]
    names = ply_field_names(SH_REST_COUNTS[3 * k_rest])
    assert data.shape == (n, len(names))
    header = "\n".join(
        ["ply", "format binary_little_endian 1.0", f"element vertex {n}"]
        + [f"property float {name}" for name in names]
        + ["end_header", ""]
    ).encode("ascii")
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        f.write(header)
        _write_body(f, np.ascontiguousarray(data).tobytes())


def _bad(path: Path, problem: str) -> SplatVLMError:
    # One line, whatever the path or the file contains.
    text = f"cannot load {path}: {problem}"
    return SplatVLMError(" ".join(text.split()) if "\n" in text or "\r" in text else text)


def _show(token: str) -> str:
    """A header token quoted and cut short, safe to print."""
    return repr(token[:40] + ("..." if len(token) > 40 else ""))


def _parse_header(path: Path, head: bytes) -> tuple[int, int, list[tuple[str, str]]]:
    """Check a PLY header; return (header length in bytes, vertex count, [(name, dtype)])."""
    if not head.startswith(b"ply"):
        raise _bad(path, "not a .ply file (no 'ply' magic at the start)")
    end = re.search(rb"(^|\n)end_header\r?\n", head)
    if end is None:
        if len(head) > MAX_HEADER_BYTES:
            raise _bad(path, f"no 'end_header' in the first {MAX_HEADER_BYTES} bytes")
        raise _bad(path, "header has no 'end_header' line (truncated or not a .ply file)")
    header_len = end.end()
    if header_len > MAX_HEADER_BYTES:
        raise _bad(path, f"header is longer than {MAX_HEADER_BYTES} bytes")
    try:
        text = head[:header_len].decode("ascii")
    except UnicodeDecodeError:
        raise _bad(path, "header holds non-ASCII bytes") from None
    lines = [line.rstrip("\r") for line in text.split("\n")][:-1]
    if lines[0].strip() != "ply":
        raise _bad(path, f"first line is {_show(lines[0])}, expected 'ply'")

    fmt: str | None = None
    elements: list[tuple[str, int]] = []
    props: list[tuple[str, str]] = []
    for line in lines[1:-1]:
        words = line.split()
        if not words or words[0] in ("comment", "obj_info"):
            continue
        kind = words[0]
        if kind == "format":
            if fmt is not None:
                raise _bad(path, "header has two 'format' lines")
            fmt = " ".join(words[1:])
            if fmt in ("ascii 1.0", "binary_big_endian 1.0"):
                raise _bad(path, f"format '{fmt}' is not supported; only binary_little_endian 1.0 is read")
            if fmt != "binary_little_endian 1.0":
                raise _bad(path, f"unknown format {_show(fmt)}")
        elif kind == "element":
            if fmt is None:
                raise _bad(path, "an element comes before the 'format' line")
            if len(words) != 3 or not _COUNT.fullmatch(words[2]):
                raise _bad(path, f"malformed element line {_show(line)}")
            count = int(words[2])
            if count < 0:
                raise _bad(path, f"element {_show(words[1])} has a negative count ({count})")
            elements.append((words[1], count))
        elif kind == "property":
            if not elements:
                raise _bad(path, "a property comes before any element")
            if elements[-1][0] != "vertex":
                continue  # reported below: only a vertex element is allowed
            if len(words) >= 2 and words[1] == "list":
                raise _bad(path, "vertex element has a list property; splat files hold scalars only")
            if len(words) != 3:
                raise _bad(path, f"malformed property line {_show(line)}")
            if words[1] not in _PLY_TYPES:
                raise _bad(path, f"property {_show(words[2])} has unknown type {_show(words[1])}")
            props.append((words[2], _PLY_TYPES[words[1]]))
        else:
            raise _bad(path, f"unexpected header line {_show(line)}")
    if fmt is None:
        raise _bad(path, "header has no 'format' line")
    names = [e[0] for e in elements]
    if names.count("vertex") != 1:
        raise _bad(path, f"expected exactly one 'vertex' element, found {names.count('vertex')}")
    if len(elements) != 1:
        others = ", ".join(_show(e) for e in names if e != "vertex")
        raise _bad(
            path, f"has elements other than 'vertex' ({others}); compressed or mesh .ply files are not read"
        )
    return header_len, elements[0][1], props


def _check_fields(path: Path, props: list[tuple[str, str]]) -> int:
    """Check required fields and their types; return the SH degree."""
    types: dict[str, str] = {}
    for name, dtype in props:
        if name in types:
            raise _bad(path, f"property {_show(name)} appears twice")
        types[name] = dtype
    missing = [name for name in _REQUIRED if name not in types]
    if missing:
        shown = ", ".join(missing[:6]) + (", ..." if len(missing) > 6 else "")
        raise _bad(path, f"missing Gaussian properties: {shown} (not a 3DGS splat file?)")
    rest = sorted(int(m.group(1)) for name in types if (m := _F_REST.fullmatch(name)))
    if len(rest) not in SH_REST_COUNTS:
        raise _bad(path, f"has {len(rest)} f_rest_* properties; expected 0, 9, 24 or 45 (SH degree 0-3)")
    if rest != list(range(len(rest))):
        raise _bad(path, f"f_rest_* properties are not numbered 0..{len(rest) - 1}")
    for name in _REQUIRED + [f"f_rest_{i}" for i in rest]:
        if types[name] not in _FLOAT_TYPES:
            raise _bad(path, f"property {name} is an integer type; 3DGS properties must be float")
    return SH_REST_COUNTS[len(rest)]


def load_ply(path: str | os.PathLike) -> torch.nn.ParameterDict:
    """Read a 3DGS .ply (ours, INRIA's or another tool's; extra properties are ignored).

    Returns the scene ``ParameterDict`` (see ``scene.py``) on the CPU. Raises ``SplatVLMError`` with
    one line naming the file and the problem for anything that is not a valid, finite splat file.
    """
    path = Path(path)
    if path.exists():  # a FIFO would block open() forever
        from ..files import check_regular_file

        check_regular_file(path, ".ply")
    # 1. open and read at most the header's worth of bytes
    try:
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            head = f.read(MAX_HEADER_BYTES + 1)
            # 2. check the header and that the file holds exactly the data it announces
            header_len, count, props = _parse_header(path, head)
            degree = _check_fields(path, props)
            dtype = np.dtype([(name, t) for name, t in props])
            expected = header_len + count * dtype.itemsize
            if count == 0:
                raise _bad(path, "the vertex element is empty (no Gaussians)")
            if size < expected:
                raise _bad(
                    path,
                    f"header announces {count} Gaussians ({expected} bytes) but the file has {size} bytes "
                    "(truncated, or a corrupt count)",
                )
            if size > expected:
                raise _bad(
                    path, f"{size - expected} unexpected bytes after the {count} Gaussians (corrupt file)"
                )
            # 3. read the data; the size check above bounds this allocation by the file size
            f.seek(header_len)
            data = np.fromfile(f, dtype=dtype, count=count)
    except FileNotFoundError:
        raise SplatVLMError(f"cannot load {path}: file not found") from None
    except IsADirectoryError:
        raise SplatVLMError(f"cannot load {path}: it is a folder, not a .ply file") from None
    except PermissionError:
        raise SplatVLMError(f"cannot load {path}: permission denied") from None
    except OSError as e:
        raise SplatVLMError(f"cannot load {path}: {e.strerror or e}") from None
    if data.shape[0] != count:
        raise _bad(path, f"read {data.shape[0]} of {count} Gaussians (file changed while reading?)")

    # 4. gather fields, reject NaN / inf
    n_rest = 3 * ((degree + 1) ** 2 - 1)

    def cols(names: list[str]) -> np.ndarray:
        out = np.empty((count, len(names)), dtype=np.float32)
        for i, name in enumerate(names):
            out[:, i] = data[name]  # float64 fields are narrowed; float32 ones copy bit for bit
            if not np.isfinite(out[:, i]).all():
                bad = int((~np.isfinite(out[:, i])).sum())
                raise _bad(path, f"property {name} holds {bad} NaN or inf values")
        return out

    means = cols(["x", "y", "z"])
    sh0 = cols([f"f_dc_{i}" for i in range(3)])
    rest = cols([f"f_rest_{i}" for i in range(n_rest)])
    opacities = cols(["opacity"])
    scales = cols([f"scale_{i}" for i in range(3)])
    quats = cols([f"rot_{i}" for i in range(4)])
    shN = rest.reshape(count, 3, n_rest // 3).transpose(0, 2, 1)  # [N, K-1, 3]
    return make_params(
        means=torch.from_numpy(means),
        quats=torch.from_numpy(quats),
        scales=torch.from_numpy(scales),
        opacities=torch.from_numpy(opacities[:, 0].copy()),
        sh0=torch.from_numpy(sh0.reshape(count, 1, 3)),
        shN=torch.from_numpy(np.ascontiguousarray(shN)),
    )
