"""Cameras between viser and the renderer: a browser client's camera as our OpenCV world-to-camera matrix,
and the preview's intrinsics and size.

viser reports a client camera as ``wxyz`` (the rotation R in ``P_world = R p_camera + t``) and ``position`` (t),
with OpenCV axes (look +z, image-down +y; see viser's ``CameraHandle.wxyz`` docstring): exactly our
camera-to-world, so the viewmat handed to the renderer is its inverse.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor

from ..gaussians.cameras import Cameras
from ..gaussians.raster_torch import quat_to_rotmat


def wxyz_to_rotmat(wxyz: np.ndarray) -> np.ndarray:
    """Rotation matrix [3, 3] from one wxyz quaternion (normalized here)."""
    q = torch.as_tensor(np.asarray(wxyz, dtype=np.float64))[None]
    return quat_to_rotmat(q)[0].numpy()


def viser_camera_to_viewmat(wxyz: np.ndarray, position: np.ndarray) -> Tensor:
    """OpenCV world-to-camera [4, 4] (float32) from a viser camera's ``wxyz`` and ``position``.

    viser's pair is already an OpenCV camera-to-world (see the module docstring), so this inverts it.
    """
    rot = wxyz_to_rotmat(wxyz)  # camera-to-world rotation
    t = np.asarray(position, dtype=np.float64)
    viewmat = np.eye(4)
    viewmat[:3, :3] = rot.T
    viewmat[:3, 3] = -rot.T @ t
    return torch.from_numpy(viewmat).float()


def rotmat_to_wxyz(rot: np.ndarray) -> np.ndarray:
    """wxyz quaternion of a rotation matrix [3, 3] (Shepperd's method, w >= 0)."""
    m = np.asarray(rot, dtype=np.float64)
    tr = np.trace(m)
    if tr > 0:
        s = 2.0 * math.sqrt(1.0 + tr)
        q = [0.25 * s, (m[2, 1] - m[1, 2]) / s, (m[0, 2] - m[2, 0]) / s, (m[1, 0] - m[0, 1]) / s]
    elif m[0, 0] > m[1, 1] and m[0, 0] > m[2, 2]:
        s = 2.0 * math.sqrt(1.0 + m[0, 0] - m[1, 1] - m[2, 2])
        q = [(m[2, 1] - m[1, 2]) / s, 0.25 * s, (m[0, 1] + m[1, 0]) / s, (m[0, 2] + m[2, 0]) / s]
    elif m[1, 1] > m[2, 2]:
        s = 2.0 * math.sqrt(1.0 + m[1, 1] - m[0, 0] - m[2, 2])
        q = [(m[0, 2] - m[2, 0]) / s, (m[0, 1] + m[1, 0]) / s, 0.25 * s, (m[1, 2] + m[2, 1]) / s]
    else:
        s = 2.0 * math.sqrt(1.0 + m[2, 2] - m[0, 0] - m[1, 1])
        q = [(m[1, 0] - m[0, 1]) / s, (m[0, 2] + m[2, 0]) / s, (m[1, 2] + m[2, 1]) / s, 0.25 * s]
    q = np.asarray(q)
    return q if q[0] >= 0 else -q


def pinhole_K(fovy_rad: float, width: int, height: int) -> Tensor:
    """Pixel intrinsics [3, 3] for a vertical field of view in radians, square pixels."""
    focal = 0.5 * height / math.tan(0.5 * fovy_rad)
    return torch.tensor([[focal, 0.0, width / 2.0], [0.0, focal, height / 2.0], [0.0, 0.0, 1.0]])


def preview_size(resolution: int, aspect: float) -> tuple[int, int]:
    """(width, height) of a preview ``resolution`` pixels high with the browser's aspect ratio."""
    if not math.isfinite(aspect) or aspect <= 0:
        aspect = 1.0
    width = int(min(max(round(resolution * aspect), 16), 4 * resolution))
    return width, resolution


def preview_cameras(viewmat: Tensor, K: Tensor, width: int, height: int) -> Cameras:
    """One-camera ``Cameras`` from a viewmat [4, 4] and K [3, 3] (orbit angles derived from the pose)."""
    viewmat = viewmat.float()
    center = torch.linalg.inv(viewmat.double())[:3, 3]
    distance = center.norm().clamp_min(1e-12)
    elevation = torch.rad2deg(torch.asin((center[2] / distance).clamp(-1, 1)))
    azimuth = torch.remainder(torch.rad2deg(torch.atan2(center[1], center[0])), 360.0)
    fovy = torch.rad2deg(2 * torch.atan(0.5 * height / K[1, 1].double()))
    return Cameras(
        viewmats=viewmat[None],
        Ks=K.float()[None],
        width=width,
        height=height,
        elevation=elevation.float()[None],
        azimuth=azimuth.float()[None],
        distance=distance.float()[None],
        fovy=fovy.float()[None],
    )
