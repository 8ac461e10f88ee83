"""``splatvlm view``: serve a finished splat (.ply) or a mesh (.glb / .obj / mesh .ply) in the browser."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np

from ..errors import SplatVLMError
from ..gaussians.scene import num_gaussians
from ..viewer.guard import check_bindable, guarded_server, is_loopback, url
from ..viewer.server import Viewer, ViewerConfig, check_viewer_config, make_render_fn


def view_ply(path: str | Path, cfg: ViewerConfig) -> None:
    """Serve a finished .ply until Ctrl-C (``splatvlm view IN.ply``); a mesh (.glb, .obj, mesh .ply) too."""
    from ..gaussians.ply import load_ply

    path = Path(path)
    if is_mesh_file(path):
        view_mesh(path, cfg)
        return
    params = load_ply(path)  # validates the file before anything binds a port
    viewer = Viewer(cfg, make_render_fn(params), run_dir=None, save_fn=None, training=False)
    try:
        viewer.update(params, 0, {}, force=True)
        print(f"viewer: showing {path} ({num_gaussians(params):,} Gaussians)", flush=True)
        viewer.serve_forever()
    finally:
        viewer.close()


# ----------------------------------------------------------------------------------------------
# splatvlm view OUT.glb


def is_mesh_file(path: Path) -> bool:
    """A .glb / .obj, or a .ply whose header has faces (a mesh, not splats)."""
    suffix = path.suffix.lower()
    if suffix in (".glb", ".gltf", ".obj"):
        return True
    if suffix != ".ply" or not path.is_file():
        return False
    with open(path, "rb") as f:
        head = f.read(64 * 1024)
    end = head.find(b"end_header")
    return b"\nelement face " in head[: end if end >= 0 else len(head)]


def load_mesh_for_view(path: Path):
    """The mesh in splatvlm's z-up world (.glb and .obj are y-up files; see ``mesh.py``)."""
    import trimesh

    from ..outputs.mesh import Z_UP_TO_Y_UP

    if not path.is_file():
        raise SplatVLMError(f"cannot load {path}: file not found")
    try:
        mesh = trimesh.load(path, force="mesh", process=False)
    except Exception as e:  # trimesh raises many types for bad files
        raise SplatVLMError(f"cannot load {path}: not a readable mesh ({type(e).__name__})") from None
    if not isinstance(mesh, trimesh.Trimesh) or len(mesh.faces) == 0:
        raise SplatVLMError(f"cannot load {path}: it holds no triangles")
    if path.suffix.lower() != ".ply":
        mesh.apply_transform(np.linalg.inv(Z_UP_TO_Y_UP))
    return mesh


def view_mesh(path: Path, cfg: ViewerConfig) -> None:
    """Serve a mesh until Ctrl-C, z-up like the splats."""
    check_viewer_config(cfg)
    mesh = load_mesh_for_view(path)  # before anything binds a port
    if not is_loopback(cfg.host):
        print(
            f"warning: the viewer listens on {cfg.host} without authentication", file=sys.stderr, flush=True
        )
    port_free = check_bindable(cfg.host, cfg.port)
    import viser

    server = guarded_server(viser, cfg.host, cfg.port, cfg.share)  # the same Origin check as the live viewer
    try:
        server.scene.set_up_direction("+z")
        server.scene.add_mesh_trimesh("/mesh", mesh)
        if not port_free:
            print(f"viewer: port {cfg.port} is busy, using {server.get_port()}", flush=True)
        print(f"viewer: {url(cfg.host, server.get_port())}", flush=True)
        print(f"viewer: showing {path} ({len(mesh.faces):,} triangles); press Ctrl-C to exit", flush=True)
        while True:
            time.sleep(0.2)
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()
