import os

import pytest

from splatvlm.errors import SplatVLMError
from splatvlm.files import atomic_path, atomic_write_text, check_output_dir, check_output_path


def test_atomic_write_replaces(tmp_path):
    p = tmp_path / "a.txt"
    atomic_write_text(p, "one")
    atomic_write_text(p, "two")
    assert p.read_text() == "two"
    assert os.listdir(tmp_path) == ["a.txt"]


def test_failed_write_keeps_previous_file(tmp_path):
    p = tmp_path / "a.txt"
    p.write_text("precious")
    with pytest.raises(OSError), atomic_path(p) as tmp:
        tmp.write_text("half")
        raise OSError(28, "No space left on device")
    assert p.read_text() == "precious"
    assert os.listdir(tmp_path) == ["a.txt"]


def test_output_checks(tmp_path):
    existing = tmp_path / "x.ply"
    existing.write_text("keep")
    with pytest.raises(SplatVLMError, match="already exists"):
        check_output_path(existing, overwrite=False)
    assert existing.read_text() == "keep"
    assert check_output_path(existing, overwrite=True) == existing
    nested = tmp_path / "missing" / "deeper" / "x.ply"
    assert check_output_path(nested, overwrite=False) == nested and nested.parent.is_dir()
    (tmp_path / "afile").write_text("")
    with pytest.raises(SplatVLMError, match="not a folder"):
        check_output_path(tmp_path / "afile" / "x.ply", overwrite=False)
    with pytest.raises(SplatVLMError, match="must end in"):
        check_output_path(tmp_path / "x.obj", overwrite=False, suffixes=(".ply",))
    with pytest.raises(SplatVLMError, match="directory"):
        check_output_path(tmp_path, overwrite=True)


@pytest.mark.skipif(os.geteuid() == 0, reason="root can write anywhere")
def test_unwritable_folder(tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    with pytest.raises(SplatVLMError, match="not writable"):
        check_output_path(ro / "x.ply", overwrite=False)


def test_output_dir(tmp_path):
    assert check_output_dir(tmp_path / "new").is_dir()
    (tmp_path / "file").write_text("")
    with pytest.raises(SplatVLMError):
        check_output_dir(tmp_path / "file")
    with pytest.raises(SplatVLMError):
        check_output_dir(tmp_path / "a" / "b")


def test_outputs_get_umask_permissions(tmp_path):
    p = tmp_path / "a.txt"
    atomic_write_text(p, "x")
    umask = os.umask(0)
    os.umask(umask)
    assert (p.stat().st_mode & 0o777) == (0o666 & ~umask)


# ----------------------------------------------------------------------------------------------
# One writer per folder, leftovers of killed processes, inputs that are not files


def test_second_process_is_refused_naming_the_holder(tmp_path):
    import subprocess
    import sys

    from splatvlm.files import RunLock

    code = (
        "import sys, time; from splatvlm.files import RunLock; RunLock(sys.argv[1]).acquire(); "
        "print('held', flush=True); time.sleep(60)"
    )
    holder = subprocess.Popen([sys.executable, "-c", code, str(tmp_path)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(SplatVLMError, match=f"in use by process {holder.pid} "):
            RunLock(tmp_path).acquire()
    finally:
        holder.kill()
        holder.wait()
    # The holder died with its lock file in place: the lock is taken over.
    assert (tmp_path / ".splatvlm.lock").read_text().strip() == str(holder.pid)
    with RunLock(tmp_path) as lock:
        assert lock.path.read_text().strip() == str(os.getpid())
        with RunLock(tmp_path):  # the same process again (a batch locks the out-dir, then run folders)
            pass
        assert lock.path.exists()
    assert not (tmp_path / ".splatvlm.lock").exists()


def dead_pid() -> int:
    """The pid of a process that has exited."""
    import subprocess
    import sys

    out = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    )
    return int(out.stdout)


def temp_of(folder, stem, suffix, pid, host=None):
    from splatvlm.files import _HOST

    path = folder / f".{stem}.~{host or _HOST}-{pid}-0123abcd.tmp{suffix}"
    path.write_bytes(b"half")
    return path


def test_lock_removes_temp_files_of_a_killed_writer_only(tmp_path):
    from splatvlm.files import RunLock

    gone = dead_pid()
    killed = [temp_of(tmp_path, "checkpoint", ".pt", gone), temp_of(tmp_path, "scene.x", ".ply", gone)]
    live = temp_of(tmp_path, "scene", ".ply", os.getppid())  # a live writer (our parent process)
    other_host = temp_of(tmp_path, "scene", ".ply", gone, host="abcdef")
    users = [tmp_path / ".checkpoint.abc123.tmp.pt", tmp_path / "keep.ply"]  # not our names: never removed
    for p in users:
        p.write_bytes(b"whole")
    (tmp_path / "target").write_bytes(b"precious")
    link = tmp_path / killed[0].name.replace("0123abcd", "89abcdef")
    link.symlink_to(tmp_path / "target")
    with RunLock(tmp_path):
        pass
    assert not any(p.exists() for p in killed)
    assert live.exists() and other_host.exists() and all(p.exists() for p in users)
    assert link.is_symlink() and (tmp_path / "target").read_bytes() == b"precious"


def test_output_check_removes_stale_temp_files_of_that_output(tmp_path):
    """A command's start removes what its killed earlier write left (mesh, render, ...), not other outputs'."""
    gone = dead_pid()
    mine = [temp_of(tmp_path, "b", ".glb", gone), temp_of(tmp_path, "b", ".png", gone)]
    other = temp_of(tmp_path, "c", ".glb", gone)
    check_output_path(tmp_path / "b.glb", overwrite=False)
    assert not any(p.exists() for p in mine) and other.exists()


def test_non_regular_files_are_refused_without_blocking(tmp_path):
    from splatvlm.commands.train_reward import read_reward_data
    from splatvlm.config import read_yaml
    from splatvlm.gaussians.ply import load_ply
    from splatvlm.prompts import read_prompts

    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    for reader in (load_ply, read_prompts, read_yaml, read_reward_data):
        with pytest.raises(SplatVLMError, match="not a regular file"):
            reader(fifo)  # opening a FIFO would block forever


def _png(path, size, **kw):
    from PIL import Image

    Image.new("RGB", size, (200, 10, 10)).save(path, **kw)
    return path


def test_check_image_refuses_bombs_huge_and_truncated_images(tmp_path):
    from splatvlm.files import check_image

    check_image(_png(tmp_path / "ok.png", (64, 48)), "data.jsonl:1")
    jpg = tmp_path / "ok.jpg"
    from PIL import Image

    Image.new("RGB", (256, 256), (0, 90, 0)).save(jpg, quality=90)
    check_image(jpg, "data.jsonl:1")
    # A small file announcing a huge image (a decompression bomb): refused from the header alone.
    big = _png(tmp_path / "big.png", (3000, 3000))
    with pytest.raises(SplatVLMError, match=r"data.jsonl:2: image .* is 3000x3000 pixels"):
        check_image(big, "data.jsonl:2", max_pixels=2000 * 2000)
    # Truncated data: the header reads, the pixels do not.
    data = jpg.read_bytes()
    (tmp_path / "cut.jpg").write_bytes(data[: len(data) // 2])
    with pytest.raises(SplatVLMError, match="truncated or corrupt"):
        check_image(tmp_path / "cut.jpg", "data.jsonl:3")
    (tmp_path / "junk.png").write_bytes(b"not an image at all")
    with pytest.raises(SplatVLMError, match="not a readable image"):
        check_image(tmp_path / "junk.png", "data.jsonl:4")


def test_os_error_line_names_path_and_errno():
    import errno

    from splatvlm.files import os_error_line

    line = os_error_line(OSError(errno.ENOSPC, "No space left on device", "/data/run/checkpoint.pt"))
    assert line == "cannot write or read /data/run/checkpoint.pt: No space left on device (errno 28 ENOSPC)"
