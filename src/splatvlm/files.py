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


def ignore_in_git(folder: str | os.PathLike) -> None:
    """Write ``folder/.gitignore`` ignoring everything in it (itself included), so that a run folder made
    inside a git checkout does not show as untracked; call it only for folders this program created.
    An existing .gitignore is left alone."""
    path = Path(folder) / ".gitignore"
    if not path.exists():
        atomic_write_text(path, "# made by splatvlm: a run folder, not source\n*\n")


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


def check_regular_file(path: str | os.PathLike, what: str) -> Path:
    """Refuse a FIFO, device or socket before opening it (reading one would hang or never end)."""
    import stat

    path = Path(path)
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        raise SplatVLMError(f"{what} {path} does not exist") from None
    except OSError as e:
        raise SplatVLMError(f"cannot read {what} {path}: {e.strerror}") from None
    if stat.S_ISDIR(mode):
        raise SplatVLMError(f"{what} {path} is a folder")
    if not stat.S_ISREG(mode):
        raise SplatVLMError(f"{what} {path} is not a regular file (a pipe, device or socket)")
    return path


def clean_temp_files(folder: str | os.PathLike, stem: str | None = None) -> list[Path]:
    """Remove what ``atomic_path`` leaves behind when a process is killed mid-write (``.<stem>.*.tmp*``).

    Call only while holding the folder's ``RunLock``: then no live writer owns them.
    """
    folder = Path(folder)
    removed = []
    for p in folder.glob(f".{stem or '*'}.*.tmp*"):
        if p.is_file() and not p.is_symlink():
            with contextlib.suppress(OSError):
                p.unlink()
                removed.append(p)
    return removed


LOCK_NAME = ".splatvlm.lock"


class RunLock:
    """One writer per folder: an exclusive ``flock`` on ``<folder>/.splatvlm.lock``, which holds the pid.

    The kernel drops the lock when its process dies, so a lock file left by a killed process is simply
    taken over. A second live process gets a one-line error naming the holder's pid. Re-entrant within
    one process for the same folder (batch runs lock the out-dir and then each run folder).
    """

    _held: dict[str, int] = {}  # resolved folder -> count, this process

    def __init__(self, folder: str | os.PathLike, what: str = "run folder"):
        self.folder = Path(folder)
        self.what = what
        self.path = self.folder / LOCK_NAME
        self._fd: int | None = None
        self._key = str(self.folder.resolve())

    def acquire(self) -> RunLock:
        import fcntl

        if self._key in RunLock._held:
            RunLock._held[self._key] += 1
            return self
        while True:
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            except OSError as e:
                raise SplatVLMError(f"cannot lock {self.what} {self.folder}: {e.strerror}") from None
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = _read_pid(fd)
                os.close(fd)
                raise SplatVLMError(
                    f"{self.what} {self.folder} is in use by process {holder or '?'} (lock {self.path}); "
                    "wait for it to finish or stop it"
                ) from None
            # The holder we raced may have removed the file after we opened it: lock the file on disk.
            try:
                same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._fd = fd
        RunLock._held[self._key] = 1
        clean_temp_files(self.folder)
        return self

    def release(self) -> None:
        count = RunLock._held.get(self._key)
        if count is None:
            return
        if count > 1:
            RunLock._held[self._key] = count - 1
            return
        del RunLock._held[self._key]
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.unlink(self.path)  # while still locked, so nobody can lock the old file after this
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


def _read_pid(fd: int) -> int | None:
    try:
        text = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
        return int(text) if text.isdigit() else None
    except OSError:
        return None


def os_error_line(e: OSError) -> str:
    """One line for a failed read or write: the path, the reason and the errno name."""
    import errno

    name = errno.errorcode.get(e.errno or 0, "")
    code = f" (errno {e.errno} {name})" if e.errno else ""
    where = f" {e.filename}" if e.filename else ""
    if e.filename2:
        where += f" -> {e.filename2}"
    return f"cannot write or read{where}: {e.strerror or e}{code}"


MAX_IMAGE_PIXELS = 8192 * 8192  # a training view larger than this is a mistake or a decompression bomb


def check_image(
    path: str | os.PathLike, where: str, max_pixels: int = MAX_IMAGE_PIXELS, size: int = 512
) -> None:
    """Open and fully decode an image (at reduced size where the format allows), without trusting it.

    Refuses, with one line naming ``where``: non-regular files, unreadable or truncated images, and
    images whose header announces more than ``max_pixels`` (checked before any pixel is decoded).
    """
    import warnings

    from PIL import Image, UnidentifiedImageError

    path = Path(path)
    check_regular_file(path, f"{where}: image")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as im:
                w, h = im.size
                if w * h > max_pixels or w <= 0 or h <= 0:
                    raise SplatVLMError(
                        f"{where}: image {path} is {w}x{h} pixels; the limit is {max_pixels:,} pixels"
                    )
                im.draft("RGB", (size, size))  # JPEG decodes at 1/2..1/8 scale; others decode whole
                im.load()
    except SplatVLMError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise SplatVLMError(f"{where}: image {path} is too large to decode (decompression bomb?)") from None
    except UnidentifiedImageError:
        raise SplatVLMError(f"{where}: {path} is not a readable image") from None
    except (OSError, SyntaxError, ValueError) as e:  # truncated or corrupt data
        raise SplatVLMError(f"{where}: image {path} is truncated or corrupt ({str(e)[:80]})") from None
