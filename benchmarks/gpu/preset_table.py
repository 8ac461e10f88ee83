"""Peak GPU memory and time per asset for one preset: a whole `splatvlm generate` run, random full-size weights.

For the README's "What a preset needs" table (issue 15). One preset per call keeps each under 10 minutes:
    . benchmarks/gpu/setup.sh && python3 benchmarks/gpu/preset_table.py vlm3d [extra generate flags...]
Writes $OUT/preset_table/<preset>.json: wall seconds of the whole run (model build + training + turntable),
training seconds (summary.json), torch's peak allocated and reserved GPU memory, the process's peak RSS, final #Gaussians.
Pass the bounded-densification flags the README's recipe uses as extra flags (they are recorded).
"""

import json
import os
import resource
import sys
import time
from pathlib import Path

import torch

from splatvlm.cli import main

preset, extra = sys.argv[1], sys.argv[2:]
out = Path(os.environ.get("OUT", ".")) / "preset_table"
out.mkdir(parents=True, exist_ok=True)
vlm = (
    ["--vlm.model", "random-3b" if preset.endswith("3b") else "random-7b"]
    if preset.startswith("vlm3d")
    else []
)
ply = out / f"{preset}.ply"
args = [
    "generate",
    "a ceramic teapot painted with blue flowers",
    "--preset",
    preset,
    "-o",
    str(ply),
    "--overwrite",
    "--sds.model",
    "random",
    *vlm,
    *extra,
]
torch.cuda.reset_peak_memory_stats()
t0 = time.perf_counter()
code = main(args)
wall = time.perf_counter() - t0
summary = json.loads((out / f"{preset}_run" / "summary.json").read_text()) if code == 0 else {}
record = {
    "preset": preset,
    "args": args,
    "exit_code": code,
    "device": torch.cuda.get_device_name(),
    "wall_s": round(wall, 1),
    "train_s": summary.get("seconds"),
    "steps": summary.get("steps"),
    "num_gaussians": summary.get("num_gaussians"),
    "peak_allocated_gb": round(torch.cuda.max_memory_allocated() / 2**30, 2),
    "peak_reserved_gb": round(torch.cuda.max_memory_reserved() / 2**30, 2),
    "peak_rss_gb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2),  # Linux: KiB
}
(out / f"{preset}.json").write_text(json.dumps(record, indent=2))
print(json.dumps(record))
