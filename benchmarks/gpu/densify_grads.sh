# The densification statistic's quantiles at every refinement of a whole-recipe GPU run, for choosing the presets'
# strategy.grow_grad2d once the statistic comes from the prior alone (strategy.grad_source prior). Random full-size
# weights (MVDream UNet + Qwen2.5-VL-7B): their gradient scale is not the trained models', so a threshold read here
# is a starting point for the real weights, as the current one was.
#
# The run: `bench --full` on prompt 0 of src/splatvlm/data/bench_prompts.json, the vlm3d recipe cut to 2000 steps (the reward on
# throughout; refinements every 100 steps from 300), grow_grad2d 0 so that the growth budget alone (max_grow_frac
# 0.2, the presets') decides what grows, and the scene grows as a run's would.
#
# Usage (carry .whl; one source per device call, ~5-6 min each):
#   SOURCE=prior bash benchmarks/gpu/densify_grads.sh     (the new statistic; the one to choose the threshold from)
#   SOURCE=all   bash benchmarks/gpu/densify_grads.sh     (today's, reward x300 included, for comparison)
#   env EXTRA="--recipe.camera.elevation-sampling mixed ..." more bench flags (the references' recipe: see
#   benchmarks/gpu/recipe_cost.py's NEW); env LIMIT_S (the call's budget, default 590)
# Writes $OUT/densify_grads/<SOURCE>.json: per refinement the step, count, p50/p90/p99 of the mean 2D gradient
# (gsplat's NDC units, the same as grow_grad2d), how many qualified at threshold 0, grown, split, pruned.
. benchmarks/gpu/setup.sh > /tmp/setup.log 2>&1 || { tail -5 /tmp/setup.log; exit 1; }
tail -1 /tmp/setup.log
SOURCE=${SOURCE:-prior}
O=$OUT/densify_grads
mkdir -p "$O"
python3 -c "import json; p=json.load(open('src/splatvlm/data/bench_prompts.json')); json.dump(p[:1], open('/tmp/dg_prompts.json','w'))"
LEFT=$((${LIMIT_S:-590} - SECONDS - 20))
timeout $LEFT python3 -m splatvlm.cli bench --preset vlm3d --weights random --prompts /tmp/dg_prompts.json \
  -o /tmp/dg_bench --full --recipe.steps 2000 --recipe.strategy.grow-grad2d 0.0 --recipe.strategy.max-grow-frac 0.2 \
  --recipe.strategy.grad-source "$SOURCE" $EXTRA 2>&1 | grep -vE 'Warning|warn\(' | tail -8 | cut -c1-300
echo "bench exit ${PIPESTATUS[0]}"
# The refinement rows of the run's metrics.jsonl (flushed at every refinement: a run cut short still has them).
python3 - "$SOURCE" "$O/$SOURCE.json" /tmp/dg_bench/runs/ours/*/metrics.jsonl <<'PY'
import json, subprocess, sys
source, out, paths = sys.argv[1], sys.argv[2], sys.argv[3:]
rows = [json.loads(line) for p in paths for line in open(p)]
ref = [r for r in rows if "densify_grown" in r]
keys = ("step", "densify_count_before", "densify_count", "densify_grad_p50", "densify_grad_p90",
        "densify_grad_p99", "densify_qualified", "densify_grown", "densify_split", "densify_pruned")
gpu = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"], capture_output=True, text=True)
report = {
    "grad_source": source,
    "device": gpu.stdout.strip(),
    "last_step": rows[-1]["step"] if rows else None,
    "refinements": [{k: r.get(k) for k in keys} for r in ref],
    "w_vlm_first_last": [rows[0].get("w_vlm"), rows[-1].get("w_vlm")] if rows else None,
}
json.dump(report, open(out, "w"), indent=1)
print(f"{source}: {len(rows)} rows, last step {report['last_step']}, {len(ref)} refinements -> {out}")
print("step    count  grad_p50  grad_p90  grad_p99  grown")
for r in ref:
    print(f"{r['step']:5d} {r['densify_count']:8d} {r['densify_grad_p50']:9.3g} {r['densify_grad_p90']:9.3g} "
          f"{r['densify_grad_p99']:9.3g} {r['densify_grown']:6d}")
PY
