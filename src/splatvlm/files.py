"""Atomic writes and output-path checks shared by every command.

Every file we produce is written to a temporary sibling and moved into place with ``os.replace``,
so an interrupted or failed write leaves the previous file intact.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

from .errors import SplatVLMError


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; on success move it over ``path``.

    The temporary file keeps the final suffix, so writers that pick a format from the
    extension (imageio, torch.save) behave the same. On any exception it is removed.
    """
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=f".tmp{path.suffix}", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    # mkstemp makes the file 0600; outputs get the usual permissions of a new file (umask).
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp_path, 0o666 & ~umask)
    try:
        yield tmp_path
        with open(tmp_path, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp_path, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp_path.unlink()
        raise


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def check_output_path(path: str | os.PathLike, overwrite: bool, suffixes: tuple[str, ...] = ()) -> Path:
    """Validate an output file path before any heavy work starts; missing parent folders are created."""
    path = Path(path)
    if suffixes and path.suffix.lower() not in suffixes:
        raise SplatVLMError(f"output {path} must end in one of {', '.join(suffixes)}")
    if path.is_dir():
        raise SplatVLMError(f"output {path} is a directory; give a file path")
    parent = path.parent if str(path.parent) else Path(".")
    if parent.exists() and not parent.is_dir():
        raise SplatVLMError(f"output folder {parent} exists and is not a folder")
    try:  # missing parent folders are made, as `mkdir -p` would
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise SplatVLMError(f"cannot create output folder {parent}: {e.strerror}") from None
    if not os.access(parent, os.W_OK):
        raise SplatVLMError(f"output folder {parent} is not writable")
    if path.exists() and not overwrite:
        raise SplatVLMError(f"output {path} already exists; pass --overwrite to replace it")
    return path


def check_output_dir(path: str | os.PathLike) -> Path:
    """Create (if needed) and validate an output folder."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise SplatVLMError(f"output folder {path} exists and is not a folder")
    parent = path.parent if str(path.parent) else Path(".")
    if not path.exists() and not parent.is_dir():
        raise SplatVLMError(f"parent folder {parent} of {path} does not exist")
    try:
        path.mkdir(parents=False, exist_ok=True)
    except OSError as e:
        raise SplatVLMError(f"cannot create output folder {path}: {e.strerror}") from None
    if not os.access(path, os.W_OK):
        raise SplatVLMError(f"output folder {path} is not writable")
    return path
