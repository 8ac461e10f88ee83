# Issue 12 on one H200 / H100: whole `vlm3d` runs measured end to end (`splatvlm bench --full`), the
# quick mode's extrapolation at the cap beside them, and the 2D-gradient quantiles at each refinement
# that the presets' grow_grad2d is chosen from. Random full-size weights (MVDream UNet + Qwen2.5-VL-7B).
#
# Usage: bash benchmarks/gpu/whole_run.sh SECTION   (one device call per section: each stays under 10 min)
#   full0    bench --full on prompt 0 of benchmarks/prompts.json   (~7 min: setup 1.5, load 0.3, recipe <= 6)
#   full1    bench --full on prompt 1                                (~7 min)
#   full01   both prompts in one report (only where a call may run ~14 min)
#   quick    the quick (extrapolated) bench on prompts 0-1, steps timed at the preset's cap (~3 min)
#   grads    a 2000-step run that logs the gradient quantiles at every refinement with a threshold so
#            low (0) that the budget (max_grow_frac 0.2, the presets') alone decides what grows (~5 min)
# Results under $OUT/whole_run/<section>/ (report.json, report.md, runs/ours/*/metrics.jsonl). The
# metrics.jsonl files are flushed at every refinement, so a run cut short still leaves its densify_* rows.
# Then, here: python benchmarks/gpu/whole_run_summary.py <files_at>/whole_run/*/report.json
# Env: EXTRA (more bench flags, e.g. "--recipe.strategy.grow-grad2d 0.2"); LIMIT_S (the call's limit, default 590).
. benchmarks/gpu/setup.sh || exit 1
SECTION=${1:-full0}
O=$OUT/whole_run/$SECTION
mkdir -p "$O"
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader | tee "$O/gpu.txt"
pick() {  # a prompts file with the given indices of benchmarks/prompts.json
  python3 -c "import json,sys; p=json.load(open('benchmarks/prompts.json')); print(json.dumps([p[int(i)] for i in sys.argv[1:]]))" "$@" > "$O/prompts.json"
}
# Stop the bench before the device call's 600 s limit (setup and the JIT build count), so the summary still prints.
LEFT=$((${LIMIT_S:-590} - SECONDS - 15))
BENCH="python3 -m splatvlm.cli bench --preset vlm3d --weights random --prompts $O/prompts.json -o $O/bench"
case $SECTION in
  full0) pick 0; timeout $LEFT $BENCH --full $EXTRA ;;
  full1) pick 1; timeout $LEFT $BENCH --full $EXTRA ;;
  full01) pick 0 1; $BENCH --full $EXTRA ;;
  quick) pick 0 1; timeout $LEFT $BENCH --steps 5 --warmup 3 $EXTRA ;;
  grads) pick 0; timeout $LEFT $BENCH --full --recipe.steps 2000 --recipe.strategy.grow-grad2d 0.0 \
           --recipe.strategy.max-grow-frac 0.2 $EXTRA ;;
  *) echo "unknown section $SECTION (full0, full1, full01, quick, grads)"; exit 2 ;;
esac
rc=$?
echo "bench exit $rc"
cp -r "$O"/bench/report.json "$O"/bench/report.md "$O"/ 2>/dev/null
# The refinement rows (gradient quantiles and counts) of every run, whatever the exit status.
for m in "$O"/bench/runs/ours/*/metrics.jsonl; do
  [ -f "$m" ] || continue
  cp "$m" "$O/metrics-$(basename "$(dirname "$m")").jsonl"  # two folders down at most come back
  python3 - "$m" <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
ref = [r for r in rows if "densify_grown" in r]
print(f"{sys.argv[1]}: {len(rows)} rows, last step {rows[-1]['step'] if rows else None}, {len(ref)} refinements")
print("step  count    grad_p50  grad_p90  grad_p99  qualified  grown  split  pruned")
for r in ref:
    print(f"{r['step']:5d} {r['densify_count']:8d} {r['densify_grad_p50']:9.3g} {r['densify_grad_p90']:9.3g} "
          f"{r['densify_grad_p99']:9.3g} {r['densify_qualified']:9d} {r['densify_grown']:6d} {r['densify_split']:6d} "
          f"{r['densify_pruned']:6d}")
PY
done
exit $rc
