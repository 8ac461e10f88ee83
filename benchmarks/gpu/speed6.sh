# Speed round 5 (issue 18) and the toy world's GPU build (issue 13), one device call per PART (carry .whl):
#   PART=ab     the CUDA tests of the trainer; channels-last as an A/B (profile_step.py, 4x256 with and without
#               the reward, two streams)
#   PART=bench  the 300k quick bench beside the reference, then the whole vlm3d recipe (bench --full);
#               FLAGS (e.g. "--recipe.sds.channels-last") go to both
#   PART=toy    the toy prior trained on the GPU (toyworld build --only prior; the shipped reward kept),
#               returned as $OUT/toy-weights.tar
#   PART=rows   the README's sd21, vlm3d-3b and mvdream rows (preset_table.py); ROWS picks which
# Usage: PART=ab bash benchmarks/gpu/speed6.sh
# Timeouts send SIGKILL: the trainer turns SIGTERM into a clean stop of the current run only.
. benchmarks/gpu/setup.sh > /tmp/setup.log 2>&1 || { tail -5 /tmp/setup.log; exit 1; }
tail -1 /tmp/setup.log
mkdir -p "$OUT"
set -o pipefail
case "$PART" in
  ab)
    timeout -s KILL 120 python3 -m pytest -q -p no:cacheprovider -m cuda tests/test_trainer.py 2>&1 | tail -3
    timeout -s KILL 300 python3 benchmarks/gpu/profile_step.py --out "$OUT/profile-r5-channels-last.json" --traces 0 \
      --phases "4x256px +reward" 4x256px --variants streams "streams:sds.channels_last=true" 2>&1 \
      | tee "$OUT/ab.log" | grep '^{' | cut -c1-400 ;;
  bench)
    timeout -s KILL 260 python3 -m splatvlm.cli bench --preset vlm3d --weights random --reference --limit 1 --steps 4 \
      --warmup 2 --gaussians 300000 $FLAGS -o /tmp/bref 2>&1 | tail -14 | cut -c1-300
    cp /tmp/bref/report.json "$OUT/bench-reference-300k-r5.json"
    timeout -s KILL 320 python3 -m splatvlm.cli bench --preset vlm3d --weights random --full --limit 1 $FLAGS \
      -o /tmp/bfull 2>&1 | tail -12 | cut -c1-300
    cp /tmp/bfull/report.json "$OUT/whole-run-r5.json" ;;
  toy)
    W=/tmp/toy-weights
    rm -rf "$W" && cp -r src/splatvlm/toyworld/weights "$W"
    timeout -s KILL ${TOY_LIMIT:-420} python3 -m splatvlm.cli toyworld build --only prior --device cuda --out "$W" \
      --threads 8 --groups 48 --vae-steps 3000 --vae-batch 8 --prior-batch 16 --prior-steps ${PRIOR_STEPS:-12000} \
      --prior-max-s ${PRIOR_MAX_S:-300} 2>&1 | grep -v -i warn | tee "$OUT/toy-build.log" | grep -v '^prior step\|^vae step' | tail -8
    grep '^prior step\|^vae step' "$OUT/toy-build.log" | awk 'NR % 40 == 0' | tail -12
    tar -C "$W" -cf "$OUT/toy-weights.tar" . ;;
  rows)
    for p in ${ROWS:-sd21 vlm3d-3b mvdream}; do
      timeout -s KILL 280 python3 benchmarks/gpu/preset_table.py "$p" 2>&1 | tail -1 | cut -c1-600
    done
    cp "$OUT"/preset_table/*.json "$OUT"/ 2>/dev/null; rm -rf "$OUT/preset_table" ;;
  *) echo "PART must be ab, bench, toy or rows"; exit 2 ;;
esac
