# Speed round 7 (issue 18) and the toy world's build timed on the GPU (issue 13): one device call per PART, each
# under 10 minutes (carry .whl). Timeouts send SIGKILL (the trainer turns SIGTERM into a clean stop).
#   PART=levers    the CUDA tests of the reward's fast path (the fp32 7B parity among them) and of FP8; the reward
#                  as the defaults run it (q/k/v and gate/up fused), unfused, and with e4m3 input gradients for the
#                  MLPs' down projection alone and for all three (levers.py). Copies its JSON to /tmp/r7.
#   PART=bench     the 300k quick bench beside the reference with the defaults, then (by the rule below, from
#                  /tmp/r7) once more with FP8 for the down projections' input gradient
#   PART=idle      after the two syncs were removed: the CUDA tests of the render, the densification and the reward
#                  (not the fp32 7B), the quick bench beside the reference
#   PART=profile   the CUDA tests of the render and the densification, then the kernel profile of the defaults (one
#                  stream, two streams): how much idle is left
#   PART=toybuild  `toyworld build --device cuda` with the shipped settings, its two stages side by side
#                  (--only prior, --only reward), for the build's run time on the GPU
# Usage: PART=levers bash benchmarks/gpu/speed8.sh
. benchmarks/gpu/setup.sh > /tmp/setup.log 2>&1 || { tail -5 /tmp/setup.log; exit 1; }
tail -1 /tmp/setup.log
mkdir -p "$OUT" /tmp/r7
set -o pipefail
BENCH="python3 -m splatvlm.cli bench --preset vlm3d --weights random --reference --limit 1 --steps 4 --warmup 2 \
  --gaussians 300000"
case "$PART" in
  levers)
    timeout -s KILL 150 python3 -m pytest -q -p no:cacheprovider -m cuda tests/test_reward.py tests/test_fp8.py \
      tests/test_qwen_fast.py 2>&1 | tail -3
    timeout -s KILL 330 python3 benchmarks/gpu/levers.py --only reward --out "$OUT/levers-r7.json" \
      --reward-variants reward_bf16 reward_bf16_unfused reward_fp8_grad_only_down reward_fp8_grad_only 2>&1 \
      | tee "$OUT/levers.log" | grep -E '^\{|Error' | cut -c1-420
    cp "$OUT"/*.json /tmp/r7/ ;;
  bench)
    timeout -s KILL 280 $BENCH -o /tmp/bref 2>&1 | tail -14 | cut -c1-300
    cp /tmp/bref/report.json "$OUT/bench-reference-300k-r7.json"
    # The rule, written before the levers were measured: FP8 for the down projections' input gradient when its
    # pixel-gradient cosine against the defaults is >= 0.9956 (the angle the fast path's own 0.9944 against the
    # reference leaves under the goal's 0.99) and it is faster.
    FLAGS=$(python3 - <<'PY'
import json
lev = {r["lever"]: r for r in json.load(open("/tmp/r7/levers-r7.json"))["results"]}
d, base = lev.get("reward_fp8_grad_only_down", {}), lev["reward_bf16"]["ms_median"]
ok = d.get("grad_cosine_vs_bf16", 0) >= 0.9956 and d["ms_median"] < base
print("--recipe.vlm.fp8 --recipe.vlm.no-fp8-forward --recipe.vlm.fp8-projections down_proj" if ok else "")
PY
)
    echo "FLAGS: $FLAGS"
    if [ -n "$FLAGS" ]; then
      timeout -s KILL 280 $BENCH $FLAGS -o /tmp/bref8 2>&1 | tail -14 | cut -c1-300
      cp /tmp/bref8/report.json "$OUT/bench-reference-300k-r7-fp8down.json"
    fi ;;
  idle)
    timeout -s KILL 100 python3 -m pytest -q -p no:cacheprovider -m cuda tests/test_render.py tests/test_densify.py \
      tests/test_reward.py tests/test_qwen_fast.py -k "not 7b" 2>&1 | tail -3
    timeout -s KILL 230 $BENCH -o /tmp/bref 2>&1 | tail -14 | cut -c1-300
    cp /tmp/bref/report.json "$OUT/bench-reference-300k-r7-nosync.json" ;;
  profile)
    # (the call above also ran a 110 s profile first, which a fresh machine's ~120 s compile outlived)
    timeout -s KILL 120 python3 -m pytest -q -p no:cacheprovider -m cuda tests/test_render.py tests/test_densify.py \
      2>&1 | tail -3
    timeout -s KILL 330 python3 benchmarks/gpu/profile_step.py --phases "4x256px +reward" 4x256px --variants one-stream \
      streams --traces 1 --out "$OUT/profile-r7-nosync.json" 2>&1 | grep '^{' | cut -c1-330 ;;
  toybuild)
    for stage in prior reward; do
      rm -rf /tmp/tw-$stage && cp -r src/splatvlm/toyworld/weights /tmp/tw-$stage
      timeout -s KILL ${TOY_LIMIT:-560} python3 -m splatvlm.cli toyworld build --device cuda --only $stage \
        --out /tmp/tw-$stage > "$OUT/toy-build-$stage.log" 2>&1 &
    done
    wait
    for stage in prior reward; do
      grep -E 'rendered|wrote|Error' "$OUT/toy-build-$stage.log" | cut -c1-600
      grep -E 'step' "$OUT/toy-build-$stage.log" | tail -2 | cut -c1-300
      cp /tmp/tw-$stage/build.json "$OUT/toy-build-$stage.json" 2>/dev/null
    done ;;
  *) echo "PART must be levers, bench, idle, profile or toybuild"; exit 2 ;;
esac
