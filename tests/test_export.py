"""Tests for export.py on a tiny two-colored sphere with the torch renderer (CPU, small images)."""

from __future__ import annotations

import inspect
import math

import imageio.v2 as imageio_v2
import imageio.v3 as iio
import numpy as np
import pytest
import torch

import splatvlm.outputs.export as export
from splatvlm.errors import SplatVLMError
from splatvlm.gaussians.cameras import CameraConfig
from splatvlm.gaussians.render import RenderConfig
from splatvlm.gaussians.scene import make_params, rgb_to_sh0

RES = 32
CFG = RenderConfig(backend="torch")


def sphere_scene(n: int = 600, radius: float = 0.5) -> torch.nn.ParameterDict:
    """Opaque Gaussians on a sphere: red where x > 0, blue where x < 0."""
    g = torch.Generator().manual_seed(0)
    means = torch.nn.functional.normalize(torch.randn(n, 3, generator=g), dim=-1) * radius
    rgb = torch.where(means[:, :1] > 0, torch.tensor([[1.0, 0.0, 0.0]]), torch.tensor([[0.0, 0.0, 1.0]]))
    quats = torch.zeros(n, 4)
    quats[:, 0] = 1.0
    spacing = radius * math.sqrt(4 * math.pi / n)
    return make_params(
        means=means,
        quats=quats,
        scales=torch.full((n, 3), math.log(spacing)),
        opacities=torch.full((n,), 4.0),  # sigmoid(4) = 0.98
        sh0=rgb_to_sh0(rgb)[:, None, :],
        shN=torch.zeros(n, 0, 3),
    )


@pytest.fixture(scope="module")
def scene():
    return sphere_scene()


@pytest.fixture(scope="module")
def turntable(scene):
    return export.render_turntable(
        scene, CameraConfig(), CFG, frames=4, resolution=RES, device="cpu", chunk=3
    )


def test_turntable_sees_the_right_side(turntable):
    assert turntable.shape == (4, RES, RES, 3) and turntable.dtype == np.uint8
    # White background in the corners, the object in the middle.
    assert (turntable[:, 0, 0] == 255).all() and (turntable[:, -1, -1] == 255).all()
    center = turntable[:, RES // 2 - 2 : RES // 2 + 2, RES // 2 - 2 : RES // 2 + 2].reshape(4, -1, 3).mean(1)
    # Frame 0 looks from +x (azimuth 0): red; frame 2 from -x: blue; frames 1 and 3 see the seam.
    assert center[0, 0] > 200 and center[0, 2] < 60, center[0]
    assert center[2, 2] > 200 and center[2, 0] < 60, center[2]
    covered = (turntable.astype(int).sum(-1) < 3 * 240).mean(axis=(1, 2))
    assert (covered > 0.1).all() and (covered < 0.9).all(), covered


def test_turntable_chunking_does_not_change_pixels(scene, turntable):
    one_go = export.render_turntable(
        scene, CameraConfig(), CFG, frames=4, resolution=RES, device="cpu", chunk=8
    )
    np.testing.assert_array_equal(one_go, turntable)


def test_gif_mp4_png(tmp_path, turntable):
    gif = tmp_path / "t.gif"
    export.save_video(turntable, gif, fps=10)
    frames = iio.imread(gif)
    assert frames.shape[:3] == (4, RES, RES)
    assert np.abs(frames[..., :3].astype(int) - turntable).mean() < 8  # palette quantization only

    mp4 = tmp_path / "t.mp4"
    export.save_video(turntable, mp4, fps=10)
    reader = imageio_v2.get_reader(mp4, format="FFMPEG")
    decoded = np.stack(list(reader.iter_data()))
    reader.close()
    assert decoded.shape == (4, RES, RES, 3)
    assert np.abs(decoded.astype(int) - turntable).mean() < 12  # lossy codec
    assert decoded[2, RES // 2, RES // 2, 2] > 150  # still blue where it was blue

    png = tmp_path / "sheet.png"
    export.save_contact_sheet(turntable[:3], png, cols=2)
    sheet = iio.imread(png)
    assert sheet.shape == (2 * RES, 2 * RES, 3)
    np.testing.assert_array_equal(sheet[:RES, RES:], turntable[1])
    np.testing.assert_array_equal(sheet[RES:, :RES], turntable[2])
    assert (sheet[RES:, RES:] == 255).all()  # the empty cell is white
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sheet.png", "t.gif", "t.mp4"]


def test_odd_sized_mp4_is_padded(tmp_path):
    frames = np.zeros((3, 15, 21, 3), dtype=np.uint8)
    export.save_video(frames, tmp_path / "odd.mp4", fps=5)
    reader = imageio_v2.get_reader(tmp_path / "odd.mp4", format="FFMPEG")
    assert reader.get_next_data().shape == (16, 22, 3)
    reader.close()


def test_export_render_picks_by_suffix(tmp_path, scene, monkeypatch):
    for suffix in (".gif", ".mp4", ".png"):
        path = export.export_render(scene, tmp_path / f"out{suffix}", frames=2, resolution=16, render_cfg=CFG)
        assert path.is_file() and path.stat().st_size > 0
    assert iio.imread(tmp_path / "out.png").shape == (16, 32, 3)

    def no_render(*args, **kwargs):
        raise AssertionError("rendered before checking the suffix")

    monkeypatch.setattr(export, "render", no_render)
    with pytest.raises(SplatVLMError, match=r"\.gif, \.mp4, \.png"):
        export.export_render(scene, tmp_path / "out.webm", frames=2, resolution=16, render_cfg=CFG)
    with pytest.raises(SplatVLMError, match="contact sheet"):
        export.save_contact_sheet(np.zeros((1, 4, 4, 3), np.uint8), tmp_path / "x.jpg")
    with pytest.raises(SplatVLMError, match="uint8"):
        export.save_video(np.zeros((2, 4, 4, 3), np.float32), tmp_path / "x.gif")


def test_failed_video_write_keeps_old_file_and_no_temp(tmp_path, turntable, monkeypatch):
    path = tmp_path / "t.gif"
    export.save_video(turntable, path)
    before = path.read_bytes()

    def fail(tmp, *args, **kwargs):
        open(tmp, "wb").write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(export.iio, "imwrite", fail)
    with pytest.raises(OSError):
        export.save_video(turntable, path)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["t.gif"]


def test_gpteval3d_defaults_and_cameras():
    sig = inspect.signature(export.export_gpteval3d)
    assert sig.parameters["num_views"].default == 120
    assert sig.parameters["resolution"].default == 512
    cams = export.gpteval3d_cameras()
    assert len(cams) == 120 and cams.width == cams.height == 512
    np.testing.assert_allclose(cams.azimuth.numpy(), np.arange(120) * 3.0)
    np.testing.assert_allclose(cams.elevation.numpy(), 15.0)
    np.testing.assert_allclose(cams.distance.numpy(), 3.0)
    np.testing.assert_allclose(cams.fovy.numpy(), 40.0)
    # Camera centers sit at distance 3 at 15 degrees elevation.
    centers = cams.c2w[:, :3, 3]
    np.testing.assert_allclose(centers.norm(dim=-1).numpy(), 3.0, rtol=1e-5)
    np.testing.assert_allclose(
        centers[0].numpy(), [3 * math.cos(math.radians(15)), 0, 3 * math.sin(math.radians(15))], atol=1e-5
    )


def test_gpteval3d_folder(tmp_path, scene):
    folder = export.export_gpteval3d(
        scene,
        tmp_path / "renders",
        "splatvlm",
        7,
        0,
        render_cfg=CFG,
        num_views=4,
        resolution=RES,
        distance=2.0,
        chunk=3,
    )
    assert folder == tmp_path / "renders" / "splatvlm" / "7" / "0"
    expected = sorted([f"rgb_{i}.png" for i in range(4)] + [f"normal_{i}.png" for i in range(4)])
    assert sorted(p.name for p in folder.iterdir()) == expected
    rgb = np.stack([iio.imread(folder / f"rgb_{i}.png") for i in range(4)])
    normal = np.stack([iio.imread(folder / f"normal_{i}.png") for i in range(4)])
    assert rgb.shape == normal.shape == (4, RES, RES, 3)
    assert (rgb[:, 0, 0] == 255).all() and (normal[:, 0, 0] == 255).all()  # white background
    assert rgb[0, RES // 2, RES // 2, 0] > 200 and rgb[2, RES // 2, RES // 2, 2] > 200  # red front, blue back
    # At the image center the sphere faces the camera: normal ~ direction to the camera, color (n+1)/2.
    el = math.radians(15)
    for i, az in enumerate([0.0, 90.0, 180.0, 270.0]):
        a = math.radians(az)
        to_cam = np.array([math.cos(el) * math.cos(a), math.cos(el) * math.sin(a), math.sin(el)])
        patch = normal[i, RES // 2 - 1 : RES // 2 + 1, RES // 2 - 1 : RES // 2 + 1].reshape(-1, 3).mean(0)
        n = patch / 255.0 * 2 - 1
        n = n / np.linalg.norm(n)
        assert float(n @ to_cam) > 0.9, (az, n, to_cam)
    # Off-center, the normal tilts toward that side. View 0 looks along -x with z up, so image right
    # is world +y: right of center n_y > 0, left of center n_y < 0.
    right = normal[0, RES // 2, RES // 2 + 6] / 255.0 * 2 - 1
    left = normal[0, RES // 2, RES // 2 - 6] / 255.0 * 2 - 1
    assert right[1] > 0.15 and left[1] < -0.15, (right, left)


def test_exports_show_progress_off_a_terminal(tmp_path, scene, capsys, monkeypatch):
    from splatvlm.run import progress

    monkeypatch.setattr(progress, "PLAIN_PERIOD_S", 0.0)  # a line at every chunk, as a long export gets
    export.export_gpteval3d(scene, tmp_path, "m", 0, 0, render_cfg=CFG, num_views=5, resolution=8, chunk=2)
    lines = capsys.readouterr().err.splitlines()
    assert lines[0] == "GPTEval3D views: 0/5 ..."
    assert lines[1].startswith("GPTEval3D views: 2/5, eta ") and lines[2].startswith(
        "GPTEval3D views: 4/5, eta "
    )
    assert lines[-1].startswith("GPTEval3D views: 5/5 in ") and len(lines) == 4
    export.render_turntable(scene, CameraConfig(), CFG, 3, 8, "cpu", progress=False)
    assert capsys.readouterr().err == ""


def test_gpteval3d_rejects_bad_names(tmp_path, scene):
    with pytest.raises(SplatVLMError, match="folder name"):
        export.export_gpteval3d(scene, tmp_path, "a/b", 0, 0, render_cfg=CFG, num_views=1, resolution=8)
    with pytest.raises(SplatVLMError, match="non-negative"):
        export.export_gpteval3d(scene, tmp_path, "m", -1, 0, render_cfg=CFG, num_views=1, resolution=8)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_gsplat_turntable_matches_torch(scene, turntable):
    cuda = export.render_turntable(
        scene, CameraConfig(), RenderConfig(backend="gsplat"), 4, RES, "cuda", chunk=3
    )
    assert cuda.shape == turntable.shape
    # Same rules in both rasterizers: at most a few 8-bit steps apart, on average far less.
    diff = np.abs(cuda.astype(int) - turntable.astype(int))
    assert diff.mean() < 1.0 and np.percentile(diff, 99) <= 4, (diff.mean(), diff.max())
