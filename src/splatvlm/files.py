"""Atomic writes and output-path checks shared by every command.

Every file we produce is written to a temporary sibling and moved into place with ``os.replace``,
so an interrupted or failed write leaves the previous file intact. A temporary file's name says who made
it (host and pid), so the next command to write in that folder removes the ones whose writer was killed,
and never a live writer's or a file of someone else's. Nothing here follows a symlink it creates or locks.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import re
import secrets
import socket
import stat
from collections.abc import Iterator
from pathlib import Path

from .errors import SplatVLMError

# ---------------------------------------------------------------------------------------------------
# Temporary files: named after their output and their writer

_HOST = hashlib.sha256(socket.gethostname().encode("utf-8", "replace")).hexdigest()[:6]
# .<stem>.~<host>-<pid>-<random>.tmp<suffix>
_TEMP_NAME = re.compile(r"^\.(?P<stem>.*)\.~(?P<host>[0-9a-f]{6})-(?P<pid>[0-9]{1,10})-[0-9a-f]{8}\.tmp")


def temp_name(path: Path) -> str:
    """The name of a temporary sibling of ``path``: its stem, this host and pid, and a random part."""
    return f".{path.stem}.~{_HOST}-{os.getpid()}-{secrets.token_hex(4)}.tmp{path.suffix}"


def is_temp_name(name: str) -> bool:
    """Whether ``name`` is a temporary file's name of ``atomic_path`` (any writer's)."""
    return _TEMP_NAME.match(name) is not None


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True  # another thread of ours may be writing it
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError, ValueError):
        return True  # another user's process, or not a pid we can ask about: leave it
    return True


def _full_disk_error(e: RuntimeError, path: Path) -> OSError | None:
    """torch.save (and other C++ writers) report a failed write as a RuntimeError: the OSError it stands for."""
    text = str(e).lower()
    if "writ" not in text and "no space" not in text:
        return None
    import shutil

    try:
        full = shutil.disk_usage(path.parent).free < 64 * 2**20
    except OSError:
        full = False
    code = errno.ENOSPC if full or "no space" in text else errno.EIO
    return OSError(code, os.strerror(code), str(path))


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; on success move it over ``path``.

    The temporary file keeps the final suffix, so writers that pick a format from the extension
    (imageio, torch.save) behave the same. It is created with O_EXCL and O_NOFOLLOW (never an existing file
    or a symlink's target) and with the usual permissions of a new file. On any exception it is removed, and
    a failed write (OSError, or the RuntimeError torch.save raises for a full disk) becomes an OSError that
    names ``path``, not the temporary file.
    """
    path = Path(path)
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    while True:
        tmp_path = path.with_name(temp_name(path))
        try:
            os.close(os.open(tmp_path, flags, 0o666))  # the umask applies, as for any new file
            break
        except FileExistsError:
            continue  # a clash of the random part: draw again
        except OSError as e:
            raise OSError(e.errno, e.strerror, str(path)) from None
    try:
        try:
            yield tmp_path
            fd = os.open(tmp_path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(tmp_path, path)
        except OSError as e:
            if e.filename in (None, str(tmp_path)) or e.filename == tmp_path:
                raise OSError(e.errno, e.strerror or str(e), str(path)) from None
            raise
        except RuntimeError as e:
            converted = _full_disk_error(e, path)
            if converted is None:
                raise
            raise converted from None
    except BaseException:
        with contextlib.suppress(OSError):
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
        atomic_write_text(path, GITIGNORE)


GITIGNORE = "# made by splatvlm: a run folder, not source\n*\n"


def is_our_gitignore(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a .gitignore that ``ignore_in_git`` wrote (a regular file, not a link)."""
    try:
        if not os.path.isfile(path) or os.path.islink(path) or os.path.getsize(path) != len(GITIGNORE):
            return False
        return Path(path).read_text(encoding="utf-8") == GITIGNORE
    except (OSError, UnicodeDecodeError):
        return False


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
    if os.path.lexists(path) and not overwrite:
        raise SplatVLMError(f"output {path} already exists; pass --overwrite to replace it")
    clean_temp_files(parent, path.stem)  # what a killed earlier write of this output left
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
    """Remove the temporary files ``atomic_path`` left in ``folder`` when its writer was killed.

    Only names of our own pattern (``.<stem>.~<host>-<pid>-<random>.tmp*``), made on this host by a process
    that is gone, and only regular files (not symlinks): a live writer's file, another host's and anything
    of the user's stay. ``stem``: only the temporary files of that output.
    """
    folder = Path(folder)
    removed: list[Path] = []
    try:
        names = os.listdir(folder)
    except OSError:
        return removed
    for name in names:
        m = _TEMP_NAME.match(name)
        if m is None or m["host"] != _HOST or (stem is not None and m["stem"] != stem):
            continue
        if _pid_alive(int(m["pid"])):
            continue
        p = folder / name
        with contextlib.suppress(OSError):
            if stat.S_ISREG(os.lstat(p).st_mode):
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
        # Never follow a symlink and never block on a FIFO: the lock file is ours or refused.
        flags = os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
        while True:
            try:
                fd = os.open(self.path, flags, 0o644)
            except OSError as e:
                if e.errno == errno.ELOOP:
                    raise SplatVLMError(
                        f"lock file {self.path} is a symbolic link; remove it (a lock is never followed)"
                    ) from None
                raise SplatVLMError(f"cannot lock {self.what} {self.folder}: {e.strerror}") from None
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode) or st.st_nlink != 1:
                os.close(fd)
                kind = "has other hard links" if stat.S_ISREG(st.st_mode) else "is not a regular file"
                raise SplatVLMError(f"lock file {self.path} {kind}; remove it (it is never written through)")
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
                on_disk = os.lstat(self.path)
                same = (on_disk.st_ino, on_disk.st_dev) == (st.st_ino, st.st_dev)
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
                # While still locked, so nobody can lock the old file after this; only our own file.
                st, on_disk = os.fstat(self._fd), os.lstat(self.path)
                if (st.st_ino, st.st_dev) == (on_disk.st_ino, on_disk.st_dev):
                    os.unlink(self.path)
            os.close(self._fd)
            self._fd = None

    def moved_to(self, folder: str | os.PathLike) -> None:
        """The locked folder was renamed to ``folder`` (a swap): release removes the lock file there."""
        self.folder, self.path = Path(folder), Path(folder) / LOCK_NAME

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
