"""Generate a splat from Python, on the offline demo models (tiny and random: it shows the pipeline, not quality).

    python examples/01_generate_from_python.py --steps 60 -o apple.ply

Same as `splatvlm generate "a red apple" --preset demo -o apple.ply`: the run folder `apple_run/` beside the .ply
holds the config, the metrics, a checkpoint, a turntable and a summary. For a real run use `cfg="vlm3d"`
(a GPU and the MVDream and Qwen2.5-VL weights).
"""

import argparse
import dataclasses

import splatvlm

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--prompt", default="a red apple")
parser.add_argument("--steps", type=int, default=60, help="training steps")
parser.add_argument("-o", "--output", default="apple.ply")
args = parser.parse_args()

cfg = splatvlm.load_run_config("demo")
cfg = dataclasses.replace(cfg, steps=args.steps, device="cpu", turntable_frames=8)
summary = splatvlm.generate(args.prompt, args.output, cfg=cfg, overwrite=True, progress=False)
print(f"{summary['output']}: {summary['num_gaussians']} Gaussians after {summary['steps']} steps, "
      f"p(Yes) {summary['p_yes']:.3f}, {summary['seconds']:.1f} s")  # fmt: skip
