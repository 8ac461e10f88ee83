"""Mesh export (splatvlm/mesh.py, mesh_color.py) on scenes built here, whose true shape is known."""

from __future__ import annotations

import json
import math
import os
import struct
import subprocess
import sys
import time
import urllib.request
from dataclasses import replace

import numpy as np
import pytest
import torch

trimesh = pytest.importorskip("trimesh")
pytest.importorskip("skimage")
pytest.importorskip("fast_simplification")
pytest.importorskip("xatlas")

from helpers import ctrl_c_exit_code, faulthandler_env  # noqa: E402
from splatvlm.cli import main  # noqa: E402
from splatvlm.errors import SplatVLMError  # noqa: E402
from splatvlm.gaussians.ply import ply_field_names, save_ply  # noqa: E402
from splatvlm.gaussians.scene import make_params, rgb_to_sh0  # noqa: E402
from splatvlm.outputs.mesh import (  # noqa: E402
    LARGE_RADIUS,
    Z_UP_TO_Y_UP,
    Grid,
    MeshConfig,
    _gaussians,
    ball_dilation,
    density_grid,
    fit_grid,
    save_mesh,
    splats_to_geometry,
    splats_to_mesh,
)
from splatvlm.outputs.mesh_color import (  # noqa: E402
    bake_texture,
    color_views,
    rasterize_uv,
    ray_colors,
    vertex_colors,
)

RED, BLUE = (0.9, 0.1, 0.1), (0.1, 0.2, 0.9)
CPU = torch.device("cpu")


def splats(means, rgb, log_scales, opacity_logit=3.0):
    n = len(means)
    quats = torch.zeros(n, 4)
    quats[:, 0] = 1.0
    return make_params(
        means=means.float(),
        quats=quats,
        scales=log_scales.float(),
        opacities=torch.full((n,), opacity_logit),
        sh0=rgb_to_sh0(rgb.float())[:, None, :],
        shN=torch.zeros(n, 0, 3),
    )


def sphere_shell(n=8000, radius=0.5, sigma=0.012, seed=0, center=(0.0, 0.0, 0.0)):
    """Isotropic Gaussians on a sphere: red where z > 0, blue below."""
    g = torch.Generator().manual_seed(seed)
    d = torch.nn.functional.normalize(torch.randn(n, 3, generator=g), dim=-1)
    rgb = torch.where(d[:, 2:3] > 0, torch.tensor(RED), torch.tensor(BLUE))
    return radius * d + torch.tensor(center), rgb, torch.full((n, 3), math.log(sigma))


def box_shell(size=(1.2, 1.0, 0.8), spacing=0.02, seed=0):
    """Flat Gaussians (discs in the face's plane) on a box's six faces, as trained splats lie on surfaces."""
    g = torch.Generator().manual_seed(seed)
    half = torch.tensor(size) / 2
    means, scales = [], []
    for axis in range(3):
        a, b = [i for i in range(3) if i != axis]
        area = size[a] * size[b]
        n = int(area / spacing**2)
        for sign in (-1.0, 1.0):
            p = (torch.rand(n, 3, generator=g) * 2 - 1) * half
            p[:, axis] = sign * half[axis]
            s = torch.full((n, 3), math.log(spacing))
            s[:, axis] = math.log(0.002)
            means.append(p)
            scales.append(s)
    means_t = torch.cat(means)
    return splats(means_t, torch.full((len(means_t), 3), 0.5), torch.cat(scales))


def disc_ball(n=8000, radius=0.5, thickness=0.002, seed=0):
    """A ball of flat Gaussians lying on its sphere (discs tangent to it), as trained splats lie on a surface."""
    g = torch.Generator().manual_seed(seed)
    d = torch.nn.functional.normalize(torch.randn(n, 3, generator=g), dim=-1)
    d[d[:, 2] < -0.999] = torch.nn.functional.normalize(torch.tensor([0.05, 0.0, -1.0]), dim=0)
    # The rotation taking +z to d (shortest arc), wxyz: its third column, the disc's normal, is d.
    quats = torch.stack([1 + d[:, 2], -d[:, 1], d[:, 0], torch.zeros(n)], 1)
    spacing = (4 * math.pi * radius**2 / n) ** 0.5
    scales = torch.full((n, 3), math.log(0.6 * spacing))
    scales[:, 2] = math.log(thickness)
    params = splats(radius * d, torch.full((n, 3), 0.5), scales)
    params["quats"].data = quats
    return params


@pytest.fixture(scope="module")
def sphere():
    return splats(*sphere_shell())


FAST = MeshConfig(resolution=96, faces=4000, views_per_ring=4, view_resolution=64, device="cpu")


def test_density_matches_brute_force():
    # Rotated anisotropic Gaussians, small and large (the large one takes the clipped one-by-one path).
    g = torch.Generator().manual_seed(0)
    n = 6
    params = splats(torch.rand(n, 3, generator=g) - 0.5, torch.rand(n, 3, generator=g), torch.zeros(n, 3))
    params["quats"].data = torch.randn(n, 4, generator=g)
    params["scales"].data = torch.log(torch.tensor([[0.05, 0.02, 0.03]] * (n - 1) + [[0.6, 0.3, 0.4]]))
    grid = Grid(lo=np.array([-0.6, -0.6, -0.6]), voxel=0.02, shape=(61, 58, 60))
    gs = {k: v.double() for k, v in _gaussians(params, 0.0, CPU).items()}
    got = density_grid(
        {k: v.float() for k, v in gs.items()}, grid, chunk=5000
    ).numpy()  # small chunks: every batching path runs
    gs = {k: v.numpy() for k, v in gs.items()}
    radius = np.ceil(3 * np.sqrt(((gs["rot"] * gs["scales"][:, None, :]) ** 2).sum(-1)).max(-1) / grid.voxel)
    assert (radius > LARGE_RADIUS).sum() == 1 and (radius <= LARGE_RADIUS).sum() == n - 1
    axes = [grid.lo[i] + grid.voxel * np.arange(grid.shape[i]) for i in range(3)]
    pts = np.stack(np.meshgrid(*axes, indexing="ij"), -1)  # [X, Y, Z, 3]
    want = np.zeros(grid.shape)
    edge = np.zeros(grid.shape, dtype=bool)  # points on a 3-sigma cutoff, where float32 may round either way
    for i in range(n):
        cov = (gs["rot"][i] * gs["scales"][i] ** 2) @ gs["rot"][i].T
        d = pts - gs["means"][i]
        m = np.einsum("...i,ij,...j->...", d, np.linalg.inv(cov), d)
        want += np.where(m <= 9, float(gs["opacities"][i]) * np.exp(-0.5 * m), 0.0)
        edge |= np.abs(m - 9) < 1e-3
    assert edge.mean() < 1e-3 and (want > 0).mean() > 0.2
    assert np.abs(got - want)[~edge].max() < 1e-4 * want.max()


def test_grid_ignores_far_floaters(sphere):
    gs = _gaussians(sphere, 0.01, CPU)
    far = {k: torch.cat([v, v[:3]]) for k, v in gs.items()}
    far["means"][-3:] = torch.tensor([[40.0, 0, 0], [0, -40.0, 0], [0, 0, 40.0]])
    a, b = fit_grid(gs, 64), fit_grid(far, 64)
    assert b.voxel < 1.1 * a.voxel and np.allclose(a.lo, b.lo, atol=0.1)  # not 80 units wide


def test_sphere_is_watertight_with_the_true_radius(sphere):
    mesh, _ = splats_to_geometry(sphere, FAST, CPU)
    assert mesh.is_watertight and mesh.volume > 0  # closed, normals outward
    assert len(mesh.faces) <= FAST.faces
    r = np.linalg.norm(mesh.vertices, axis=1)
    assert abs(r.mean() - 0.5) / 0.5 < 0.05, r.mean()
    assert r.std() < 0.02  # round, not a blob
    r_volume = (3 * mesh.volume / (4 * math.pi)) ** (1 / 3)
    assert abs(r_volume - 0.5) / 0.5 < 0.05, r_volume


def test_closed_ball_gives_one_watertight_mesh_of_its_radius(tmp_path, capsys):
    # At the default settings of `splatvlm mesh` (256 grid, 100k faces), where gaps between the discs
    # once leaked into the inside (two surfaces, not watertight).
    src = tmp_path / "ball.ply"
    save_ply(disc_ball(), src)
    out = tmp_path / "ball.glb"
    assert main(["mesh", str(src), "-o", str(out), "--device", "cpu"]) == 0
    assert " watertight" in capsys.readouterr().out
    back = trimesh.load(out, force="mesh", process=False)
    mesh = trimesh.Trimesh(trimesh.transform_points(back.vertices, np.linalg.inv(Z_UP_TO_Y_UP)), back.faces)
    assert mesh.is_watertight and len(mesh.split(only_watertight=False)) == 1
    r = np.linalg.norm(mesh.vertices, axis=1)
    assert abs(np.median(r) - 0.5) / 0.5 < 0.03
    # Nearly every vertex within 3%: where the random discs leave a gap, the closing leaves a shallow dimple.
    assert np.mean(np.abs(r - 0.5) / 0.5 < 0.03) > 0.99
    r_volume = (3 * mesh.volume / (4 * math.pi)) ** (1 / 3)
    assert abs(r_volume - 0.5) / 0.5 < 0.03, r_volume


def test_ball_dilation_is_near_round():
    mask = np.zeros((41, 41, 41), dtype=bool)
    mask[20, 20, 20] = True
    for radius in (4, 9):
        grown = ball_dilation(mask, radius)
        idx = np.argwhere(grown) - 20
        reach = np.linalg.norm(idx, axis=1)
        assert reach.max() <= 1.225 * radius
        axis = np.abs(idx[(idx[:, 1] == 0) & (idx[:, 2] == 0), 0]).max()
        diagonal = np.abs(idx[(idx[:, 0] == idx[:, 1]) & (idx[:, 1] == idx[:, 2]), 0]).max() * math.sqrt(3)
        # Within one lattice step (sqrt 3) of the radius; a cross alone would reach radius / sqrt(3) there.
        assert axis == radius and diagonal >= radius - math.sqrt(3)


def test_box_volume():
    mesh, _ = splats_to_geometry(box_shell(), replace(FAST, resolution=128, faces=0), CPU)
    assert mesh.is_watertight
    truth = 1.2 * 1.0 * 0.8
    assert abs(mesh.volume - truth) / truth < 0.10, mesh.volume
    lo, hi = mesh.bounds
    # Edges stick out by about 1.5 in-plane sigmas (0.03) of the discs that end there.
    assert np.allclose(hi - lo, (1.2, 1.0, 0.8), atol=0.08)


def test_floaters_are_dropped_and_cavities_filled():
    body = sphere_shell()
    floater = sphere_shell(n=300, radius=0.05, seed=1, center=(0.0, 0.0, 0.9))
    params = splats(*(torch.cat([a, b]) for a, b in zip(body, floater, strict=True)))
    mesh, _ = splats_to_geometry(params, replace(FAST, faces=0), CPU)
    assert mesh.vertices[:, 2].max() < 0.6  # the small ball above is gone
    assert len(mesh.split(only_watertight=False)) == 1  # and the shell has no inner surface
    kept, _ = splats_to_geometry(params, replace(FAST, faces=0, keep_fraction=0.0), CPU)
    assert kept.vertices[:, 2].max() > 0.85


@pytest.fixture(scope="module")
def colored(sphere):
    mesh, _ = splats_to_geometry(sphere, FAST, CPU)
    views = color_views(sphere, mesh, FAST, CPU)
    return mesh, views


def _halves_match(points, colors):
    z = points[:, 2]
    for sel, truth in ((z > 0.15, RED), (z < -0.15, BLUE)):
        err = np.abs(colors[sel] - np.array(truth)).max(1)
        assert np.median(err) < 0.08, (truth, np.median(colors[sel], 0))
        assert np.mean(err < 0.25) > 0.95


def test_vertex_colors_follow_each_half(colored, sphere):
    mesh, views = colored
    rgba = vertex_colors(mesh, views, sphere)
    assert rgba.shape == (len(mesh.vertices), 4) and rgba.dtype == np.uint8
    _halves_match(mesh.vertices, rgba[:, :3] / 255.0)


def test_ray_colors_follow_each_half(colored, sphere):
    mesh, _ = colored
    rgba = vertex_colors(mesh, None, sphere)  # no renders: head-on rays
    _halves_match(mesh.vertices, rgba[:, :3] / 255.0)
    textured = bake_texture(mesh, None, sphere, replace(FAST, texture=128))
    faces = np.asarray(textured.faces)
    texel = trimesh.visual.color.uv_to_color(
        textured.visual.uv[faces].mean(1), textured.visual.material.baseColorTexture
    )
    _halves_match(textured.vertices[faces].mean(1), texel[:, :3] / 255.0)


def test_ray_colors_see_the_front_layer_and_view_dependent_color():
    # Green Gaussians just under a red shell: a head-on ray meets the red ones first.
    means, _, log_scales = sphere_shell(n=6000, sigma=0.015)
    inner = sphere_shell(n=3000, radius=0.47, sigma=0.015, seed=1)[0]
    rgb = torch.cat([torch.tensor(RED).expand(6000, 3), torch.tensor((0.1, 0.9, 0.1)).expand(3000, 3)])
    params = splats(torch.cat([means, inner]), rgb, torch.cat([log_scales, log_scales[:3000]]))
    d = torch.nn.functional.normalize(torch.randn(500, 3, generator=torch.Generator().manual_seed(2)), dim=-1)
    points, normals = (0.51 * d).numpy(), d.numpy()
    colors = ray_colors(params, points, normals)
    assert np.median(np.abs(colors - np.array(RED)).max(1)) < 0.08
    # Degree-1 SH whose color depends on the viewing direction along x: rays come in along -n.
    params = splats(means, torch.full((6000, 3), 0.5), log_scales)
    params["shN"] = torch.nn.Parameter(torch.zeros(6000, 3, 3))
    params["shN"].data[:, 2, 0] = -1.0  # red += -SH_C1 * x * (-1) for a view direction with x
    colors = ray_colors(params, points, normals)
    x = d[:, 0].numpy()
    assert colors[x > 0.5, 0].mean() < 0.3 and colors[x < -0.5, 0].mean() > 0.7  # seen from +x: view dir -x


def test_texture_colors_follow_each_half(colored, sphere):
    mesh, views = colored
    textured = bake_texture(mesh, views, sphere, replace(FAST, texture=128))
    image = textured.visual.material.baseColorTexture
    assert image.size == (128, 128)
    faces = np.asarray(textured.faces)
    uv_centroids = textured.visual.uv[faces].mean(1)  # inside each triangle in UV space
    texel = trimesh.visual.color.uv_to_color(uv_centroids, image)[:, :3] / 255.0
    _halves_match(textured.vertices[faces].mean(1), texel)


def test_rasterize_uv_covers_triangles_exactly():
    uv = np.array([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    faces = np.array([[0, 1, 2], [1, 3, 2]])
    face_id, bary = rasterize_uv(uv, faces, 16)
    assert (face_id >= 0).all()  # two triangles tile the square
    # Row 0 is v = 1; texels on the shared diagonal go to the later triangle.
    rows, cols = np.mgrid[0:16, 0:16]
    u, v = (cols + 0.5) / 16, 1 - (rows + 0.5) / 16
    assert np.array_equal(face_id == 0, u + v < 1)
    assert np.allclose(bary.sum(-1), 1, atol=1e-5) and (bary > -1e-5).all()
    p = (bary[..., :, None] * uv[faces[face_id]]).sum(-2)  # barycentrics give back the texel center
    assert np.allclose(p, np.stack([u, v], -1), atol=1e-6)


def _glb_positions_bounds(path):
    """POSITION min/max from the GLB's own JSON chunk (what every viewer reads)."""
    data = path.read_bytes()
    magic, _, _ = struct.unpack_from("<4sII", data, 0)
    assert magic == b"glTF"
    length, kind = struct.unpack_from("<I4s", data, 12)
    assert kind == b"JSON"
    gltf = json.loads(data[20 : 20 + length])
    acc = gltf["accessors"][gltf["meshes"][0]["primitives"][0]["attributes"]["POSITION"]]
    return np.array(acc["min"]), np.array(acc["max"])


def test_glb_is_y_up_and_loads_back_the_same(tmp_path):
    # A body with a mast at +z and an arm at +x: in glTF's y-up frame the mast must point along +y.
    body = sphere_shell(n=6000, radius=0.3)
    mast = torch.stack([torch.zeros(400), torch.zeros(400), torch.linspace(0.3, 0.7, 400)], 1)
    arm = torch.stack([torch.linspace(0.3, 0.6, 300), torch.zeros(300), torch.zeros(300)], 1)
    extra = torch.cat([mast, arm])
    params = splats(
        torch.cat([body[0], extra]),
        torch.cat([body[1], torch.full((len(extra), 3), 0.5)]),
        torch.cat([body[2], torch.full((len(extra), 3), math.log(0.02))]),
    )
    mesh = splats_to_mesh(params, replace(FAST, faces=3000))
    path = tmp_path / "m.glb"
    save_mesh(mesh, path)
    lo, hi = _glb_positions_bounds(path)
    assert hi[1] > 0.65 and lo[1] > -0.4  # +z (mast) is +y
    assert hi[0] > 0.55  # +x stays +x
    assert abs(lo[2]) < 0.4 and hi[2] < 0.4  # nothing long along z in the file
    back = trimesh.load(path, force="mesh", process=False)
    assert len(back.vertices) == len(mesh.vertices) and len(back.faces) == len(mesh.faces)
    assert np.allclose(back.vertices, trimesh.transform_points(mesh.vertices, Z_UP_TO_Y_UP), atol=1e-5)
    assert np.array_equal(back.visual.vertex_colors[:, :3], mesh.visual.vertex_colors[:, :3])


@pytest.fixture(scope="module")
def vertex_mesh(colored, sphere):
    mesh, views = colored
    out = mesh.copy()
    out.visual.vertex_colors = vertex_colors(mesh, views, sphere)
    return out


def test_obj_and_ply_outputs(tmp_path, colored, vertex_mesh, sphere):
    mesh, views = colored
    textured = bake_texture(mesh, views, sphere, replace(FAST, texture=64))
    written = save_mesh(textured, tmp_path / "t.obj")
    names = sorted(p.name for p in tmp_path.iterdir())
    assert sorted(p.name for p in written) == names  # every file it wrote, and nothing else
    assert "t.obj" in names and "t.mtl" in names and any(n.endswith(".png") for n in names)
    obj = trimesh.load(tmp_path / "t.obj", force="mesh", process=False)
    assert obj.vertices[:, 1].max() > 0.45 and obj.visual.kind == "texture"  # y-up like glTF
    save_mesh(vertex_mesh, tmp_path / "v.ply")
    ply = trimesh.load(tmp_path / "v.ply", process=False)
    assert ply.vertices[:, 2].max() > 0.45 and ply.visual.kind == "vertex"  # a .ply mesh keeps z-up
    assert np.array_equal(ply.visual.vertex_colors, vertex_mesh.visual.vertex_colors)
    with pytest.raises(SplatVLMError, match="vertex colors only"):
        save_mesh(textured, tmp_path / "x.ply")
    # The texture survives glTF's flipped v axis: colors read back from the .glb follow each half again.
    save_mesh(textured, tmp_path / "t.glb")
    back = trimesh.load(tmp_path / "t.glb", force="mesh", process=False)
    assert back.visual.kind == "texture" and len(back.faces) == len(textured.faces)
    faces = np.asarray(back.faces)
    texel = trimesh.visual.color.uv_to_color(
        back.visual.uv[faces].mean(1), back.visual.material.baseColorTexture
    )
    _halves_match(
        trimesh.transform_points(back.vertices, np.linalg.inv(Z_UP_TO_Y_UP))[faces].mean(1),
        texel[:, :3] / 255,
    )


def test_cli_mesh_writes_glb(tmp_path, capsys):
    src = tmp_path / "s.ply"
    save_ply(splats(*sphere_shell(n=2000, sigma=0.025)), src)
    out = tmp_path / "s.glb"
    args = ["mesh", str(src), "-o", str(out), "--mesh-resolution", "64", "--faces", "2000"]
    args += ["--view-resolution", "48", "--views-per-ring", "3"]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "wrote" in printed and " watertight" in printed and out.is_file()
    assert main(args) == 2 and "already exists" in capsys.readouterr().err


def _write(path, data: bytes):
    path.write_bytes(data)
    return path


@pytest.mark.parametrize(
    "case, match",
    [
        ("garbage", "not a .ply file"),
        ("empty", "not a .ply file"),
        ("zero", "no Gaussians"),
        ("transparent", "no Gaussian has opacity above"),
        ("sparse", "no surface"),
        ("missing", "file not found"),
    ],
)
def test_bad_input_gives_one_line_error(tmp_path, capsys, case, match):
    src = tmp_path / "in.ply"
    if case == "garbage":
        _write(src, os.urandom(256))
    elif case == "empty":
        _write(src, b"")
    elif case == "zero":
        props = "".join(f"property float {name}\n" for name in ply_field_names(0))
        _write(src, f"ply\nformat binary_little_endian 1.0\nelement vertex 0\n{props}end_header\n".encode())
    elif case == "transparent":
        save_ply(splats(*sphere_shell(n=500)[:2], torch.full((500, 3), -4.0), opacity_logit=-20.0), src)
    elif case == "sparse":
        save_ply(splats(torch.rand(3, 3), torch.rand(3, 3), torch.full((3, 3), -6.0), opacity_logit=0.0), src)
    out = tmp_path / "out.glb"
    assert main(["mesh", str(src), "-o", str(out), "--mesh-resolution", "32"]) == 2
    *progress, last = capsys.readouterr().err.splitlines()
    assert match in last and last.startswith("error: ")  # one error line, after the progress lines if any
    assert all(line.startswith("mesh: ") for line in progress), progress
    assert not out.exists()


def test_bad_settings_fail_before_reading(tmp_path, capsys):
    for args, match in (
        (["--texture", "512", "-o", str(tmp_path / "x.ply")], "vertex colors only"),
        (["--mesh-resolution", "4", "-o", str(tmp_path / "x.glb")], "--mesh-resolution"),
        (["-o", str(tmp_path / "x.stl")], "must end in"),
    ):
        assert main(["mesh", str(tmp_path / "missing.ply"), *args]) == 2
        assert match in capsys.readouterr().err


def test_view_serves_a_glb(tmp_path, vertex_mesh):
    pytest.importorskip("viser")
    path = tmp_path / "m.glb"
    save_mesh(vertex_mesh, path)
    code = "import sys; from splatvlm.commands.view import view_ply; from splatvlm.viewer.server import ViewerConfig; view_ply(sys.argv[1], ViewerConfig(port=0))"
    proc = subprocess.Popen(
        [sys.executable, "-u", "-c", code, str(path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=faulthandler_env(),
    )
    try:
        port, lines, t0 = None, [], time.monotonic()
        while time.monotonic() - t0 < 60:
            line = proc.stdout.readline()
            lines.append(line)
            if line.startswith("viewer: http://127.0.0.1:"):
                port = int(line.rsplit(":", 1)[1])
            if "press Ctrl-C" in line or not line:
                break
        assert port is not None, "".join(lines)
        assert any(f"{len(vertex_mesh.faces):,} triangles" in line for line in lines), "".join(lines)
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=10) as r:
            assert r.status == 200
        assert ctrl_c_exit_code(proc, lines) == 0
    finally:
        if proc.poll() is None:
            proc.kill()


def test_view_mesh_loads_z_up(tmp_path, sphere, vertex_mesh):
    from splatvlm.commands.view import is_mesh_file, load_mesh_for_view

    mesh = vertex_mesh
    for name in ("m.glb", "m.ply"):
        save_mesh(mesh, tmp_path / name)
        assert is_mesh_file(tmp_path / name)
        back = load_mesh_for_view(tmp_path / name)
        assert np.allclose(back.vertices, mesh.vertices, atol=1e-5)
    save_ply(sphere, tmp_path / "splats.ply")
    assert not is_mesh_file(tmp_path / "splats.ply")
    _write(tmp_path / "bad.glb", b"glTF nonsense")
    with pytest.raises(SplatVLMError, match="cannot load"):
        load_mesh_for_view(tmp_path / "bad.glb")


def test_generate_mesh_writes_glb_beside_the_ply(tmp_path, monkeypatch, capsys):
    import functools

    import splatvlm.cli_generate

    # Few, small color views: the wiring is under test here, the coloring above.
    monkeypatch.setattr(
        splatvlm.cli_generate,
        "MeshConfig",
        functools.partial(MeshConfig, views_per_ring=2, view_resolution=32),
    )
    out = tmp_path / "a.ply"
    args = [
        "generate",
        "a red apple",
        "--preset",
        "demo",
        "-o",
        str(out),
        "--steps",
        "2",
        "--turntable-frames",
        "0",
    ]
    args += ["--mesh", "--mesh-resolution", "32", "--faces", "500"]
    assert main(args) == 0
    glb = tmp_path / "a.glb"
    assert glb.is_file()
    summary = json.loads((tmp_path / "a_run" / "summary.json").read_text())
    assert summary["mesh"] == str(glb)
    assert len(trimesh.load(glb, force="mesh", process=False).faces) <= 500
    # The mesh says what it does, and the done line names the .glb and counts its time.
    printed = capsys.readouterr()
    assert "mesh: density of" in printed.err and "mesh: colors (rays)" in printed.err
    done = [ln for ln in printed.out.splitlines() if ln.startswith("done: ")]
    assert len(done) == 1, printed.out
    want = f"done: {out}, {glb} ({summary['num_gaussians']:,} Gaussians, {summary['seconds']:.1f} s)"
    assert done[0].startswith(want), done
    assert summary["files"] == [str(out), str(glb)]
