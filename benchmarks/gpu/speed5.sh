# Speed round 4 (issue 18), one device call per PART (carry .whl):
#   PART=profile  the CUDA tests of the sync-free trainer step; profile_step.py on the new code (two streams and
#                 one, the 4x256 phases), then channels-last as an A/B in the prior-only phase
#   PART=bench    the 300k quick bench beside the reference, then the whole vlm3d recipe (bench --full)
#   PART=rows     the README's sd21 and vlm3d-3b rows (preset_table.py)
# Usage: PART=profile bash benchmarks/gpu/speed5.sh
# Timeouts send SIGKILL: the trainer turns SIGTERM into a clean stop of the current run only, so a plain `timeout`
# around pytest let the next test start (one call lost all its output that way, 2026-12-01).
. benchmarks/gpu/setup.sh > /tmp/setup.log 2>&1 || { tail -5 /tmp/setup.log; exit 1; }
tail -1 /tmp/setup.log
mkdir -p "$OUT"
set -o pipefail
case "$PART" in
  profile)
    timeout -s KILL 100 python3 -m pytest -q -p no:cacheprovider -m cuda tests/test_trainer.py 2>&1 | tail -2
    timeout -s KILL 240 python3 benchmarks/gpu/profile_step.py --out "$OUT/profile-r4.json" --traces 3 \
      --phases "4x256px +reward" 4x256px 2>&1 | grep '^{' | cut -c1-700
    timeout -s KILL 150 python3 benchmarks/gpu/profile_step.py --out "$OUT/profile-r4-channels-last.json" --traces 0 \
      --phases 4x256px --variants streams "streams:sds.channels_last=true" 2>&1 | grep '^{' | cut -c1-400 ;;
  bench)
    timeout -s KILL 260 python3 -m splatvlm.cli bench --preset vlm3d --weights random --reference --limit 1 --steps 4 \
      --warmup 2 --gaussians 300000 -o /tmp/bref 2>&1 | tail -14 | cut -c1-300
    cp /tmp/bref/report.json "$OUT/bench-reference-300k-r4.json"
    timeout -s KILL 330 python3 -m splatvlm.cli bench --preset vlm3d --weights random --full --limit 1 -o /tmp/bfull 2>&1 | tail -12 | cut -c1-300
    cp /tmp/bfull/report.json "$OUT/whole-run-r4.json" ;;
  rows)
    for p in sd21 vlm3d-3b; do
      timeout -s KILL 280 python3 benchmarks/gpu/preset_table.py "$p" 2>&1 | tail -1 | cut -c1-600
    done
    cp "$OUT"/preset_table/*.json "$OUT"/ 2>/dev/null; rm -rf "$OUT/preset_table" ;;
  *) echo "PART must be profile, bench or rows"; exit 2 ;;
esac
