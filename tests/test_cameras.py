import math

import pytest
import torch

from splatvlm.errors import SplatVLMError
from splatvlm.gaussians.cameras import (
    CameraConfig,
    eval_orbit,
    look_at_c2w,
    orbit_cameras,
    rigid_inverse,
    sample_elevation,
    sample_orbit,
    views_at_step,
)


def project(cams, points):  # points [P, 3] -> uv [C, P, 2], depth [C, P]
    homo = torch.cat([points, torch.ones(len(points), 1)], dim=-1)
    cam = torch.einsum("cij,pj->cpi", cams.viewmats, homo)[..., :3]
    uv = torch.einsum("cij,cpj->cpi", cams.Ks, cam)
    return uv[..., :2] / uv[..., 2:], cam[..., 2]


def test_point_in_front_projects_inside_image():
    cams = sample_orbit(CameraConfig(), 8, 64, torch.Generator().manual_seed(1))
    pts = torch.rand(50, 3) * 0.6 - 0.3  # inside the object's ball
    uv, depth = project(cams, pts)
    assert (depth > 0).all()
    assert ((uv >= 0) & (uv <= 64)).all()


def test_origin_at_image_center_and_up_is_up():
    cams = orbit_cameras(
        torch.tensor([10.0, 45.0]),
        torch.tensor([0.0, 200.0]),
        torch.tensor([3.0, 2.0]),
        torch.tensor([40.0, 40.0]),
        80,
        60,
    )
    uv, _ = project(cams, torch.tensor([[0.0, 0.0, 0.0], [0.0, 0.0, 0.3]]))
    torch.testing.assert_close(uv[:, 0], torch.tensor([[40.0, 30.0]] * 2), atol=1e-4, rtol=0)
    assert (uv[:, 1, 1] < 30.0).all()  # +z (world up) appears above the center (image y points down)


def test_camera_position_matches_spherical_angles():
    el, az, d = 30.0, 60.0, 2.5
    cams = orbit_cameras(
        torch.tensor([el]), torch.tensor([az]), torch.tensor([d]), torch.tensor([45.0]), 32, 32
    )
    pos = cams.c2w[0, :3, 3]
    e, a = math.radians(el), math.radians(az)
    expected = torch.tensor([d * math.cos(e) * math.cos(a), d * math.cos(e) * math.sin(a), d * math.sin(e)])
    torch.testing.assert_close(pos, expected, atol=1e-5, rtol=0)


def test_rotation_is_orthonormal_right_handed():
    c2w = look_at_c2w(torch.randn(16, 3) * 3)
    r = c2w[:, :3, :3]
    torch.testing.assert_close(r.transpose(1, 2) @ r, torch.eye(3).expand(16, 3, 3), atol=1e-5, rtol=0)
    torch.testing.assert_close(torch.linalg.det(r), torch.ones(16), atol=1e-5, rtol=0)


def test_groups_evenly_spaced_and_share_offset():
    cfg = CameraConfig()
    cams = sample_orbit(cfg, 8, 32, torch.Generator().manual_seed(0))
    az = cams.azimuth.view(2, 4)
    diffs = torch.remainder(az[:, 1:] - az[:, :1], 360.0)
    torch.testing.assert_close(diffs, torch.tensor([[90.0, 180.0, 270.0]] * 2), atol=1e-3, rtol=0)
    assert (cams.elevation.view(2, 4) == cams.elevation.view(2, 4)[:, :1]).all()
    lo, hi = cfg.elevation_range
    assert ((cams.elevation >= lo) & (cams.elevation <= hi)).all()
    # relative distance: distance * tan(fovy / 2) within the configured range
    rel = cams.distance * torch.tan(torch.deg2rad(cams.fovy) / 2)
    assert ((rel >= 0.8 - 1e-5) & (rel <= 1.0 + 1e-5)).all()


def test_seeded_sampling_is_reproducible():
    a = sample_orbit(CameraConfig(), 4, 32, torch.Generator().manual_seed(3))
    b = sample_orbit(CameraConfig(), 4, 32, torch.Generator().manual_seed(3))
    torch.testing.assert_close(a.viewmats, b.viewmats)


def test_low_res_phase():
    cfg = CameraConfig(low_res_until=100)
    assert views_at_step(cfg, 0) == (8, 64)
    assert views_at_step(cfg, 100) == (4, 256)


def test_bad_view_counts_rejected():
    with pytest.raises(SplatVLMError):
        sample_orbit(CameraConfig(), 6, 32)
    with pytest.raises(SplatVLMError):
        eval_orbit(CameraConfig(), 0, 32)


def test_eval_orbit_and_indexing():
    cams = eval_orbit(CameraConfig(), 12, 40)
    assert len(cams) == 12 and cams.width == 40
    sub = cams[torch.tensor([0, 3])]
    torch.testing.assert_close(sub.azimuth, torch.tensor([0.0, 90.0]))


def test_rigid_inverse_equals_the_general_inverse():
    cams = sample_orbit(CameraConfig(), 16, 32, torch.Generator().manual_seed(0))
    v = cams.viewmats.double()
    # the viewmats are float32: their rotations are orthonormal to float32 rounding, hence the 1e-6
    torch.testing.assert_close(rigid_inverse(v), torch.linalg.inv(v), rtol=0, atol=1e-6)
    torch.testing.assert_close(rigid_inverse(v) @ v, torch.eye(4, dtype=torch.float64).expand(16, 4, 4),
                               rtol=0, atol=1e-6)  # fmt: skip


def test_elevation_in_degrees_draws_as_before():
    """'degrees' (the default) draws exactly the numbers it always did: a uniform per group, nothing more."""
    cfg = CameraConfig(elevation_range=(5.0, 25.0))
    g1, g2 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    got = sample_elevation(cfg, 6, g1)
    want = 5.0 + 20.0 * torch.rand(6, generator=g2, dtype=torch.float64)
    assert torch.equal(got, want) and torch.equal(g1.get_state(), g2.get_state())


def test_mixed_elevation_is_half_degrees_half_threestudio_sphere():
    """'mixed': a coin per call; one side uniform in degrees, the other sin(elevation) uniform on
    [lo/90, hi/90] (threestudio's mapping). On [-90, 90]: P(|el| < 30) is 1/3 in degrees, 1/2 on the sphere."""
    g = torch.Generator().manual_seed(0)
    full = CameraConfig(elevation_range=(-90.0, 90.0), elevation_sampling="mixed")
    calls = [sample_elevation(full, 2000, g) for _ in range(200)]
    inside = torch.stack([(c.abs() < 30).double().mean() for c in calls])
    # each call is one kind: its share near 1/3 or 1/2 (std 0.011 at 2000 draws); about half of each kind
    sphere = inside > 5 / 12
    assert 0.4 < sphere.double().mean() < 0.6
    assert abs(inside[sphere].mean() - 0.5) < 0.02 and abs(inside[~sphere].mean() - 1 / 3) < 0.02
    # On (0, 30) the sphere side stays below asin(1/3) = 19.47 degrees, the degrees side fills the range.
    narrow = CameraConfig(elevation_range=(0.0, 30.0), elevation_sampling="mixed")
    tops = torch.stack([sample_elevation(narrow, 200, g).max() for _ in range(100)])
    top_sphere = math.degrees(math.asin(1 / 3))
    assert ((tops <= top_sphere + 1e-9) | (tops > 29.0)).all()
    assert 0.3 < (tops <= top_sphere + 1e-9).double().mean() < 0.7
    assert all(0.0 <= e <= 30.0 for e in tops.tolist())
    # the orbit sampler uses it: one elevation per group of views
    cams = sample_orbit(narrow, 8, 16, g)
    assert torch.equal(cams.elevation[:4], cams.elevation[:1].expand(4))
