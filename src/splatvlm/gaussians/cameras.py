"""Orbit cameras: the one camera convention of splatvlm.

Convention (used everywhere, matching gsplat):
- World: z-up, right-handed; objects sit around the origin (as in threestudio and MVDream).
- Camera: OpenCV, x right, y down, z forward (into the scene).
- ``viewmats`` are world-to-camera [C, 4, 4]; ``Ks`` are pixel intrinsics [C, 3, 3].
- Orbit angles in degrees: elevation above the xy-plane, azimuth counter-clockwise from +x
  (threestudio's convention; MVDream's azimuth 0 is 90 degrees from it, see ``mvdream.py``).
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass, replace
from typing import Literal

import torch
from torch import Tensor

from ..errors import SplatVLMError


def to_device(t: torch.Tensor, device: torch.device) -> torch.Tensor:
    """``t`` on ``device``; a CPU tensor goes to CUDA through pinned memory without blocking (a plain copy from
    pageable memory makes the CPU wait until the GPU has run everything queued before it)."""
    if device.type == "cuda" and t.device.type == "cpu":
        return t.pin_memory().to(device, non_blocking=True)
    return t.to(device)


@dataclass
class CameraConfig:
    """How training views are sampled around the object."""

    num_views: int = 4
    """Views rendered per step (a multiple of `views_per_group`)."""
    resolution: int = 256
    """Square render size in pixels."""
    low_res_views: int = 8
    """Views per step during the low-resolution phase (MVDream trains 2 objects x 4 views at 64 px)."""
    low_res: int = 64
    """Render size during the low-resolution phase."""
    low_res_until: int = 0
    """Use `low_res` / `low_res_views` before this step (0 disables the phase)."""
    views_per_group: int = 4
    """Views that share one random azimuth offset and are evenly spaced in azimuth (MVDream's 4)."""
    elevation_range: tuple[float, float] = (0.0, 30.0)
    """Elevation range in degrees."""
    elevation_sampling: Literal["degrees", "mixed"] = "degrees"
    """'degrees': uniform in degrees; 'mixed': per step that or threestudio's sphere draw (more low views)."""
    fovy_range: tuple[float, float] = (15.0, 60.0)
    """Vertical field of view range in degrees."""
    distance_range: tuple[float, float] = (0.8, 1.0)
    """Camera distance range (multiplied by 1/tan(fovy/2) when `relative_distance`)."""
    relative_distance: bool = True
    """Scale distance by 1/tan(fovy/2) so the object fills a similar part of the frame at any fov."""
    eval_elevation: float = 15.0
    """Elevation of turntable / evaluation orbits, degrees."""
    eval_fovy: float = 40.0
    """Field of view of turntable / evaluation orbits, degrees."""
    eval_distance: float = 0.9
    """Distance of turntable / evaluation orbits (relative, as `distance_range`)."""


@dataclass
class Cameras:
    """A batch of C pinhole cameras on an orbit around the origin."""

    viewmats: Tensor  # [C, 4, 4] world-to-camera, OpenCV
    Ks: Tensor  # [C, 3, 3] pixel intrinsics
    width: int
    height: int
    elevation: Tensor  # [C] degrees
    azimuth: Tensor  # [C] degrees, 0 = +x, counter-clockwise seen from +z
    distance: Tensor  # [C] world units
    fovy: Tensor  # [C] degrees
    ids: Tensor | None = None  # [C] indices into a fixed view set (fitting), None for sampled views

    def __len__(self) -> int:
        return self.viewmats.shape[0]

    def to(self, device: torch.device | str) -> Cameras:
        move = functools.partial(to_device, device=torch.device(device))
        return replace(
            self,
            viewmats=move(self.viewmats),
            Ks=move(self.Ks),
            elevation=move(self.elevation),
            azimuth=move(self.azimuth),
            distance=move(self.distance),
            fovy=move(self.fovy),
            ids=None if self.ids is None else move(self.ids),
        )

    def __getitem__(self, idx: slice | Tensor | list[int]) -> Cameras:
        return replace(
            self,
            viewmats=self.viewmats[idx],
            Ks=self.Ks[idx],
            elevation=self.elevation[idx],
            azimuth=self.azimuth[idx],
            distance=self.distance[idx],
            fovy=self.fovy[idx],
            ids=None if self.ids is None else self.ids[idx],
        )

    @property
    def c2w(self) -> Tensor:
        """Camera-to-world [C, 4, 4] (OpenCV axes)."""
        return rigid_inverse(self.viewmats)


def rigid_inverse(m: Tensor) -> Tensor:
    """Inverse of rigid transforms [..., 4, 4] (a rotation and a translation, as every viewmat here is):
    [R t; 0 1]^-1 = [R^T  -R^T t; 0 1]. A few elementwise ops, where a general inverse on CUDA runs small
    solver kernels between the step's others."""
    rt = m[..., :3, :3].transpose(-1, -2)
    out = torch.zeros_like(m)
    out[..., :3, :3] = rt
    out[..., :3, 3:] = -(rt @ m[..., :3, 3:])
    out[..., 3, 3] = 1.0
    return out


def look_at_c2w(positions: Tensor, target: Tensor | None = None) -> Tensor:
    """OpenCV camera-to-world matrices [C, 4, 4] for cameras at ``positions`` [C, 3] looking at ``target``.

    World up is +z; the camera's y axis points down in the image.
    """
    if target is None:
        target = torch.zeros_like(positions)
    forward = torch.nn.functional.normalize(target - positions, dim=-1)
    up = torch.tensor([0.0, 0.0, 1.0], dtype=positions.dtype, device=positions.device).expand_as(forward)
    right = torch.nn.functional.normalize(torch.linalg.cross(forward, up), dim=-1)
    down = torch.linalg.cross(forward, right)
    c2w = torch.eye(4, dtype=positions.dtype, device=positions.device).repeat(positions.shape[0], 1, 1)
    c2w[:, :3, 0] = right
    c2w[:, :3, 1] = down
    c2w[:, :3, 2] = forward
    c2w[:, :3, 3] = positions
    return c2w


def orbit_cameras(
    elevation: Tensor,  # [C] degrees
    azimuth: Tensor,  # [C] degrees
    distance: Tensor,  # [C]
    fovy: Tensor,  # [C] degrees
    width: int,
    height: int,
) -> Cameras:
    """Cameras on a sphere around the origin, looking at it."""
    if width <= 0 or height <= 0:
        raise SplatVLMError(f"image size must be positive, got {width}x{height}")
    el, az = torch.deg2rad(elevation.double()), torch.deg2rad(azimuth.double())
    d = distance.double()
    positions = torch.stack([d * el.cos() * az.cos(), d * el.cos() * az.sin(), d * el.sin()], dim=-1)
    c2w = look_at_c2w(positions)
    viewmats = torch.linalg.inv(c2w).float()
    focal = 0.5 * height / torch.tan(0.5 * torch.deg2rad(fovy.double()))
    Ks = torch.zeros(len(elevation), 3, 3, dtype=torch.float64)
    Ks[:, 0, 0] = focal
    Ks[:, 1, 1] = focal
    Ks[:, 0, 2] = width / 2.0
    Ks[:, 1, 2] = height / 2.0
    Ks[:, 2, 2] = 1.0
    return Cameras(
        viewmats=viewmats,
        Ks=Ks.float(),
        width=width,
        height=height,
        elevation=elevation.float(),
        azimuth=azimuth.float(),
        distance=distance.float(),
        fovy=fovy.float(),
    )


def views_at_step(cfg: CameraConfig, step: int) -> tuple[int, int]:
    """(number of views, resolution) used at ``step`` (the low-resolution phase comes first)."""
    if step < cfg.low_res_until:
        return cfg.low_res_views, cfg.low_res
    return cfg.num_views, cfg.resolution


def _uniform(lo_hi: tuple[float, float], n: int, generator: torch.Generator | None) -> Tensor:
    lo, hi = lo_hi
    return lo + (hi - lo) * torch.rand(n, generator=generator, dtype=torch.float64)


def sample_elevation(cfg: CameraConfig, n: int, generator: torch.Generator | None = None) -> Tensor:  # [n]
    """``n`` elevations in degrees (float64) drawn as ``cfg.elevation_sampling`` says.

    'mixed' is the MVDream / VLM3D data module's rule, one coin per step: uniform in degrees, or the inverse
    transform of a uniform-on-the-sphere draw whose range is mapped linearly, (lo + 90) / 180 .. (hi + 90) / 180,
    as threestudio does. That mapping makes sin(elevation) uniform on [lo / 90, hi / 90], so with (0, 30) this
    half reaches asin(1/3) = 19.5 degrees at most; kept as the references run it.
    """
    if cfg.elevation_sampling == "degrees":
        return _uniform(cfg.elevation_range, n, generator)
    if cfg.elevation_sampling != "mixed":
        raise SplatVLMError(
            f"unknown elevation sampling {cfg.elevation_sampling!r}; use 'degrees' or 'mixed'"
        )
    if torch.rand(1, generator=generator).item() < 0.5:
        return _uniform(cfg.elevation_range, n, generator)
    lo, hi = cfg.elevation_range
    return torch.rad2deg(torch.asin(_uniform((lo / 90.0, hi / 90.0), n, generator)))


def sample_orbit(
    cfg: CameraConfig, num_views: int, resolution: int, generator: torch.Generator | None = None
) -> Cameras:
    """Random training views: groups of `views_per_group` views with evenly spaced azimuths.

    Each group shares one random azimuth offset, elevation, distance and fov (as MVDream is trained).
    """
    group = cfg.views_per_group
    if num_views <= 0 or num_views % group != 0:
        raise SplatVLMError(
            f"views per step ({num_views}) must be a positive multiple of views_per_group ({group})"
        )
    n_groups = num_views // group
    elevation = sample_elevation(cfg, n_groups, generator).repeat_interleave(group)
    fovy = _uniform(cfg.fovy_range, n_groups, generator).repeat_interleave(group)
    distance = _uniform(cfg.distance_range, n_groups, generator).repeat_interleave(group)
    if cfg.relative_distance:
        distance = distance / torch.tan(0.5 * torch.deg2rad(fovy))
    offset = 360.0 * torch.rand(n_groups, generator=generator, dtype=torch.float64).repeat_interleave(group)
    spacing = torch.arange(group, dtype=torch.float64).repeat(n_groups) * (360.0 / group)
    azimuth = torch.remainder(offset + spacing, 360.0)
    return orbit_cameras(elevation, azimuth, distance, fovy, resolution, resolution)


def eval_orbit(cfg: CameraConfig, num_views: int, resolution: int, elevation: float | None = None) -> Cameras:
    """Evenly spaced turntable views starting at azimuth 0 (for renders, fitting and evaluation)."""
    if num_views <= 0:
        raise SplatVLMError(f"number of views must be positive, got {num_views}")
    el = cfg.eval_elevation if elevation is None else elevation
    fovy = torch.full((num_views,), cfg.eval_fovy, dtype=torch.float64)
    distance = torch.full((num_views,), cfg.eval_distance, dtype=torch.float64)
    if cfg.relative_distance:
        distance = distance / math.tan(0.5 * math.radians(cfg.eval_fovy))
    azimuth = torch.arange(num_views, dtype=torch.float64) * (360.0 / num_views)
    elevation_t = torch.full((num_views,), el, dtype=torch.float64)
    return orbit_cameras(elevation_t, azimuth, distance, fovy, resolution, resolution)
