"""Mesh export time for a 300,000-Gaussian asset, on the CPU and (when there is one) on CUDA.

The asset is built in code: ``scene.init_toy`` (a snowman of three colored spheres and a cone nose, its
Gaussians on the surfaces, random rotations) at ``--gaussians`` points. One export = ``mesh.splats_to_mesh``
(density grid, marching cubes, components, decimation, colors from the views) + writing a .glb, with the
settings of ``splatvlm mesh`` (defaults: 256 grid, 100k faces, vertex colors by head-on rays; with
``--colors renders``, 26 color views at 384 px).
On CUDA a small warm-up export runs first, so that gsplat's JIT build and CUDA start-up are left out.

    python benchmarks/bench_mesh.py --devices cpu --out benchmarks/results/cpu-mesh.json
    python benchmarks/bench_mesh.py --devices cpu --colors renders        # the multi-view colors
    python benchmarks/bench_mesh.py --devices cuda --out $OUT/bench_mesh.json          # GPU machine
    python benchmarks/bench_mesh.py --devices cuda --texture 1024 --out $OUT/bench_mesh_tex.json
"""

from __future__ import annotations

import json
import os
import platform
import tempfile
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Literal

import torch
import tyro

from splatvlm.commands.bench_report import write_report
from splatvlm.gaussians.scene import init_toy
from splatvlm.hub import device_name
from splatvlm.outputs.mesh import MeshConfig, save_mesh, splats_to_mesh


@dataclass
class Args:
    """Mesh export benchmark."""

    gaussians: int = 300_000
    """Gaussians in the synthetic asset."""
    devices: list[str] = field(default_factory=lambda: ["cpu", "cuda"])
    """Devices to time ('cuda' is skipped where there is none)."""
    resolution: int = 256
    """Marching-cubes grid (as --mesh-resolution)."""
    faces: int = 100_000
    """Decimation target (as --faces)."""
    texture: int = 0
    """UV texture size (0: vertex colors), as --texture."""
    colors: Literal["rays", "renders"] = "rays"
    """How the mesh is colored, as --colors."""
    views_per_ring: int = 8
    """Color views per ring (3 rings + 2 poles)."""
    view_resolution: int = 384
    """Color render size."""
    out: Path | None = None
    """JSON report path (default: print only)."""


def run(args: Args) -> dict:
    load_before = os.getloadavg()  # 1, 5 and 15 minute load averages: the machine may be shared
    params = init_toy(args.gaussians)
    base = MeshConfig(
        resolution=args.resolution,
        faces=args.faces,
        texture=args.texture,
        colors=args.colors,
        views_per_ring=args.views_per_ring,
        view_resolution=args.view_resolution,
    )
    cases = []
    for name in args.devices:
        if name.startswith("cuda") and not torch.cuda.is_available():
            print(f"{name}: skipped (no CUDA device)")
            continue
        device = torch.device(name)
        cfg = replace(base, device=name)
        warmup_s = None
        if device.type == "cuda":
            t0 = time.perf_counter()
            splats_to_mesh(init_toy(2000), replace(cfg, resolution=32, faces=500, view_resolution=64))
            torch.cuda.synchronize(device)
            warmup_s = time.perf_counter() - t0
        timings: dict[str, float] = {}
        t0 = time.perf_counter()
        mesh = splats_to_mesh(params, cfg, timings)
        with tempfile.TemporaryDirectory() as tmp:
            t1 = time.perf_counter()
            save_mesh(mesh, Path(tmp) / "asset.glb")
            write_s = time.perf_counter() - t1
            glb_bytes = os.path.getsize(Path(tmp) / "asset.glb")
        wall = time.perf_counter() - t0
        case = {
            "device": name,
            "device_name": device_name(device),
            "export_s": round(wall, 2),
            **{k: round(v, 2) for k, v in timings.items()},
            "write_s": round(write_s, 2),
            "warmup_s": None if warmup_s is None else round(warmup_s, 2),
            "vertices": len(mesh.vertices),
            "faces": len(mesh.faces),
            "watertight": mesh.metadata["watertight"],
            "glb_bytes": glb_bytes,
        }
        print(json.dumps(case))
        cases.append(case)
    return {
        "date": time.strftime("%Y-%m-%d"),
        "host": platform.node(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "load_before": load_before,
        "load_after": os.getloadavg(),
        "gaussians": args.gaussians,
        "config": {k: v for k, v in asdict(base).items() if k != "device"},
        "cases": cases,
    }


def main() -> None:
    args = tyro.cli(Args)
    report = run(args)
    if args.out is not None:
        write_report(args.out, report)
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
