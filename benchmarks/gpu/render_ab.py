"""The training render's variants at a whole run's Gaussian count, timed in one process (issue 18).

    . benchmarks/gpu/setup.sh && python3 benchmarks/gpu/render_ab.py --out $OUT/render_ab.json

Forward + backward of ``render`` (4 views at 256 px over a random background, as the trainer's 4x256 phase) on a
300,000-Gaussian ball, for each of: with or without the expected-depth channel (``depth=``; the trainer renders
without it) and packed or dense (``render.packed``). Wall time per iteration, host syncs included (gsplat reads its
intersection counts back each call), medians over the timed iterations.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from splatvlm.gaussians.cameras import CameraConfig, sample_orbit
from splatvlm.gaussians.render import RenderConfig, render
from splatvlm.gaussians.scene import SceneConfig, init_ball


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--gaussians", type=int, default=300_000)
    ap.add_argument("--iters", type=int, default=50)
    ap.add_argument("--device", default="cuda", help="cpu: a smoke test of the script (the torch rasterizer)")
    args = ap.parse_args()
    dev = torch.device(args.device)
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    gen = torch.Generator().manual_seed(0)
    params = init_ball(SceneConfig(num_points=args.gaussians, opacity=0.3), gen).to(dev)
    cams = sample_orbit(CameraConfig(), 4, 256, gen).to(dev)
    bg = torch.rand(4, 3, generator=gen).to(dev)
    records = []
    for packed in (True, False):
        for depth in (True, False):
            cfg = RenderConfig(packed=packed)
            times = []
            for i in range(args.iters + 5):
                sync()
                t = time.perf_counter()
                out = render(params, cams, cfg, bg, depth=depth)
                (out.rgb.square().mean() + out.alpha.mean()).backward()
                sync()
                if i >= 5:
                    times.append((time.perf_counter() - t) * 1e3)
                for p in params.values():
                    p.grad = None
            rec = {"packed": packed, "depth": depth, "ms_median": statistics.median(times), "ms_all": times}
            print(json.dumps({k: v for k, v in rec.items() if k != "ms_all"}))
            records.append(rec)
    info = {"device": torch.cuda.get_device_name() if dev.type == "cuda" else "cpu", "torch": torch.__version__, "gaussians": args.gaussians,
            "views": 4, "resolution": 256, "records": records}  # fmt: skip
    with open(args.out, "w") as f:
        json.dump(info, f, indent=2)


if __name__ == "__main__":
    main()
