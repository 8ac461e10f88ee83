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
