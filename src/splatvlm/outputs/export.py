"""Turntable videos, contact sheets and GPTEval3D render folders from a Gaussian scene.

Every image goes through ``render.render`` on evenly spaced orbit cameras (``cameras.eval_orbit``),
in chunks of views so memory stays bounded at any frame count, on a white background.
Every file is written atomically.
"""

from __future__ import annotations

import math
import os
from dataclasses import replace
from pathlib import Path

import imageio.v2 as imageio_v2
import imageio.v3 as iio
import numpy as np
import torch
from torch import Tensor

from ..errors import SplatVLMError
from ..files import atomic_path, check_output_dir, clean_temp_files
from ..gaussians.cameras import CameraConfig, Cameras, eval_orbit
from ..gaussians.render import RenderConfig, normals_from_depth, render
from ..run.progress import task_progress

VIDEO_SUFFIXES = (".gif", ".mp4")
RENDER_SUFFIXES = (".gif", ".mp4", ".png")


def to_uint8(images: Tensor) -> np.ndarray:
    """Float images in [0, 1] [C, H, W, 3] -> uint8 numpy [C, H, W, 3]."""
    return (images.detach().clamp(0.0, 1.0) * 255.0).round().to(torch.uint8).cpu().numpy()


def _on_device(params: torch.nn.ParameterDict, device: torch.device) -> torch.nn.ParameterDict:
    if all(p.device == device for p in params.values()):
        return params
    # A detached copy: exporting must not move the caller's (possibly optimized) parameters.
    return torch.nn.ParameterDict(
        {k: torch.nn.Parameter(v.detach().to(device), requires_grad=False) for k, v in params.items()}
    )


@torch.no_grad()
def _render_views(
    params: torch.nn.ParameterDict,
    cams: Cameras,
    render_cfg: RenderConfig,
    device: torch.device | str,
    chunk: int,
    normals: bool = False,
    normal_background: float = 1.0,
    min_alpha: float = 0.05,
):
    """Render ``cams`` in chunks; yield (first index, rgb uint8 [c, H, W, 3], normal uint8 or None)."""
    if chunk <= 0:
        raise SplatVLMError(f"render chunk must be positive, got {chunk}")
    device = torch.device(device)
    params = _on_device(params, device)
    for start in range(0, len(cams), chunk):
        sub = cams[start : start + chunk].to(device)
        white = torch.ones(len(sub), 3, device=device)
        out = render(params, sub, render_cfg, white, depth=normals)
        rgb = to_uint8(out.rgb)  # [c, H, W, 3]
        normal_img = None
        if normals:
            n = normals_from_depth(out.depth, sub.Ks, sub.viewmats)  # [c, H, W, 3] world space, unit
            alpha = out.alpha.clamp(0.0, 1.0)  # [c, H, W, 1]
            # Depth (and so its normal) is meaningless where almost nothing was hit.
            alpha = torch.where(alpha < min_alpha, torch.zeros_like(alpha), alpha)
            vis = (n + 1.0) * 0.5 * alpha + normal_background * (1.0 - alpha)
            normal_img = to_uint8(torch.nan_to_num(vis, nan=normal_background))
        yield start, rgb, normal_img


def render_turntable(
    params: torch.nn.ParameterDict,
    cam_cfg: CameraConfig,
    render_cfg: RenderConfig,
    frames: int,
    resolution: int,
    device: torch.device | str,
    chunk: int = 8,
    elevation: float | None = None,
    progress: bool = True,
) -> np.ndarray:
    """``frames`` views evenly spaced in azimuth on the evaluation orbit, white background.

    Returns uint8 [F, H, W, 3]. ``chunk`` views are rendered at a time; ``progress`` shows a bar (stderr).
    """
    cams = eval_orbit(cam_cfg, frames, resolution, elevation=elevation)
    out = np.empty((frames, resolution, resolution, 3), dtype=np.uint8)
    with task_progress("turntable frames", frames, progress) as advance:
        for start, rgb, _ in _render_views(params, cams, render_cfg, device, chunk):
            out[start : start + len(rgb)] = rgb
            advance(len(rgb))
    return out


def _check_frames(frames: np.ndarray) -> np.ndarray:
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.shape[0] == 0:
        raise SplatVLMError(f"frames must be a non-empty [F, H, W, 3] array, got shape {frames.shape}")
    if frames.dtype != np.uint8:
        raise SplatVLMError(f"frames must be uint8, got {frames.dtype}")
    return frames


def save_video(frames: np.ndarray, path: str | os.PathLike, fps: int = 20) -> None:
    """Write uint8 frames [F, H, W, 3] as a looping .gif or an H.264 .mp4, atomically."""
    path = Path(path)
    frames = _check_frames(frames)
    if fps <= 0:
        raise SplatVLMError(f"fps must be positive, got {fps}")
    suffix = path.suffix.lower()
    if suffix == ".gif":
        with atomic_path(path) as tmp:
            # Pillow takes the frame time in milliseconds; loop=0 repeats forever.
            iio.imwrite(tmp, frames, extension=".gif", duration=1000.0 / fps, loop=0)
    elif suffix == ".mp4":
        # yuv420p (what every player reads) needs even sizes: pad with white rather than resample.
        _, h, w, _ = frames.shape
        if h % 2 or w % 2:
            frames = np.pad(frames, ((0, 0), (0, h % 2), (0, w % 2), (0, 0)), constant_values=255)
        with atomic_path(path) as tmp:
            imageio_v2.mimwrite(
                tmp,
                list(frames),
                format="FFMPEG",
                fps=fps,
                codec="libx264",
                pixelformat="yuv420p",
                quality=8,
                macro_block_size=2,
            )
    else:
        raise SplatVLMError(f"video {path} must end in .gif or .mp4")


def contact_sheet(frames: np.ndarray, cols: int) -> np.ndarray:
    """Frames [F, H, W, 3] in a grid of ``cols`` columns, row by row; empty cells are white."""
    frames = _check_frames(frames)
    if cols <= 0:
        raise SplatVLMError(f"contact sheet columns must be positive, got {cols}")
    f, h, w, _ = frames.shape
    cols = min(cols, f)
    rows = math.ceil(f / cols)
    sheet = np.full((rows * h, cols * w, 3), 255, dtype=np.uint8)
    for i in range(f):
        r, c = divmod(i, cols)
        sheet[r * h : (r + 1) * h, c * w : (c + 1) * w] = frames[i]
    return sheet


def save_png(image: np.ndarray, path: str | os.PathLike) -> None:
    """One uint8 [H, W, 3] image to a .png, atomically."""
    with atomic_path(path) as tmp:
        iio.imwrite(tmp, image, extension=".png")


def save_contact_sheet(frames: np.ndarray, path: str | os.PathLike, cols: int = 4) -> None:
    """Write frames [F, H, W, 3] as one .png grid with ``cols`` columns, atomically."""
    path = Path(path)
    if path.suffix.lower() != ".png":
        raise SplatVLMError(f"contact sheet {path} must end in .png")
    save_png(contact_sheet(frames, cols), path)


def export_render(
    params: torch.nn.ParameterDict,
    path: str | os.PathLike,
    frames: int = 60,
    resolution: int = 256,
    cam_cfg: CameraConfig | None = None,
    render_cfg: RenderConfig | None = None,
    device: torch.device | str = "cpu",
    fps: int = 20,
    cols: int = 4,
    chunk: int = 8,
) -> Path:
    """Render a turntable of ``frames`` views into ``path``: .gif / .mp4 video or a .png contact sheet."""
    path = Path(path)
    # Check the suffix before any rendering work.
    if path.suffix.lower() not in RENDER_SUFFIXES:
        raise SplatVLMError(f"output {path} must end in one of {', '.join(RENDER_SUFFIXES)}")
    if frames <= 0 or resolution <= 0:
        raise SplatVLMError(f"frames ({frames}) and resolution ({resolution}) must be positive")
    images = render_turntable(
        params,
        cam_cfg or CameraConfig(),
        render_cfg or RenderConfig(),
        frames,
        resolution,
        device,
        chunk=chunk,
    )
    if path.suffix.lower() == ".png":
        save_contact_sheet(images, path, cols=cols)
    else:
        save_video(images, path, fps=fps)
    return path


def gpteval3d_cameras(
    num_views: int = 120,
    resolution: int = 512,
    elevation: float = 15.0,
    fovy: float = 40.0,
    distance: float = 3.0,
) -> Cameras:
    """GPTEval3D's evaluation views: threestudio's test orbit with MVDream-threestudio's settings.

    threestudio's test cameras circle the origin at a fixed elevation (default 15 deg), looking at it
    with world up +z; threestudio-mvdream's config sets distance 3.0 (absolute) and fovy 40 deg.
    The views here are evenly spaced, azimuth 0, 3, ..., 357 deg for 120 views; threestudio itself
    uses linspace(0, 360, 120), so its views drift by up to 3 deg and its last repeats its first.
    """
    cfg = replace(
        CameraConfig(),
        eval_elevation=elevation,
        eval_fovy=fovy,
        eval_distance=distance,
        relative_distance=False,
    )
    return eval_orbit(cfg, num_views, resolution)


def export_gpteval3d(
    params: torch.nn.ParameterDict,
    out_dir: str | os.PathLike,
    method: str,
    prompt_id: int,
    seed: int,
    render_cfg: RenderConfig | None = None,
    device: torch.device | str = "cpu",
    num_views: int = 120,
    resolution: int = 512,
    elevation: float = 15.0,
    fovy: float = 40.0,
    distance: float = 3.0,
    normal_background: float = 1.0,
    chunk: int = 8,
    progress: bool = True,
) -> Path:
    """Write GPTEval3D's render folder ``<out_dir>/<method>/<prompt_id>/<seed>/``; return that folder.

    Files: ``rgb_<i>.png`` and ``normal_<i>.png`` for i = 0 .. num_views-1, not zero-padded (the
    form of GPTEval3D's ``assets/data_format.md``, which its loader reads as ``rgb_%d.png``),
    ``resolution`` x ``resolution``, on the orbit of ``gpteval3d_cameras`` (its args are the same).

    RGB is rendered on white. Normals are not a property of Gaussians; they are made from the
    rendered expected depth (``render.normals_from_depth``: world space, unit length), mapped to
    color as (n + 1) / 2, and composited over ``normal_background`` (1.0 = white) by the rendered
    alpha, with alpha below 0.05 treated as background. threestudio composites its normal images
    over black (``normal_background=0.0``). ``progress`` shows a bar (stderr).
    """
    if not method or "/" in method or "\\" in method or method in (".", ".."):
        raise SplatVLMError(f"method name {method!r} must be a plain folder name")
    if prompt_id < 0 or seed < 0:
        raise SplatVLMError(f"prompt id ({prompt_id}) and seed ({seed}) must be non-negative")
    if not 0.0 <= normal_background <= 1.0:
        raise SplatVLMError(f"normal_background must be in [0, 1], got {normal_background}")
    root = check_output_dir(out_dir)
    folder = root
    for part in (method, str(prompt_id), str(seed)):
        if (folder / part).is_symlink():  # the tree stays inside out_dir
            raise SplatVLMError(
                f"{folder / part} is a symbolic link; GPTEval3D renders go only inside {root}"
            )
        folder = check_output_dir(folder / part)
    clean_temp_files(folder)  # what a killed earlier export left
    cams = gpteval3d_cameras(num_views, resolution, elevation, fovy, distance)
    views = _render_views(
        params,
        cams,
        render_cfg or RenderConfig(),
        device,
        chunk,
        normals=True,
        normal_background=normal_background,
    )
    with task_progress("GPTEval3D views", num_views, progress) as advance:
        for start, rgb, normal in views:
            for j in range(len(rgb)):
                save_png(rgb[j], folder / f"rgb_{start + j}.png")
                save_png(normal[j], folder / f"normal_{start + j}.png")
            advance(len(rgb))
    return folder
