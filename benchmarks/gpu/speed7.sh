# Speed round 6 (issue 18), the README's preset rows (issue 15) and the toy world at GPU scale (issue 13): one device call per
# PART, each under 10 minutes (carry .whl). Timeouts send SIGKILL (the trainer turns SIGTERM into a clean stop).
#   PART=levers    the CUDA tests of the render and of FP8; the training render's variants (render_ab.py); the
#                  reward in bf16 / e4m3 both ways / e4m3 input gradient only / the same with the vision MLPs
#                  (levers.py --only reward). Copies its JSON to /tmp/r6 for PART=bench.
#   PART=bench     the 300k quick bench beside the reference, with the levers that the rule below keeps from
#                  /tmp/r6 (or FLAGS, when set)
#   PART=sd21 | mvdream | vlm3d | vlm3d-3b   that preset's row of the README's table (preset_table.py)
#   PART=toybuild  two toy priors at GPU scale side by side (the shipped settings; + --vae-shapeless 2), the shipped
#                  reward kept, returned as $OUT/toy-<name>.tar; one toy eval run on the GPU meanwhile, for timing
#   PART=toymore   continue the prior in FROM (a weights folder: /tmp/tw-shapeless on a warm machine, or one carried
#                  in the tree) for PRIOR_MAX_S more seconds (--prior-from), returned as $OUT/toy-more.tar
#   PART=toyeval   toyworld eval of each build in /tmp/tw-* (or of WEIGHTS), every object, both methods, seeds 0 1 2,
#                  in PROCS processes per build; one merged report.json per build
# Usage: PART=levers bash benchmarks/gpu/speed7.sh
. benchmarks/gpu/setup.sh > /tmp/setup.log 2>&1 || { tail -5 /tmp/setup.log; exit 1; }
tail -1 /tmp/setup.log
mkdir -p "$OUT" /tmp/r6
set -o pipefail
case "$PART" in
  levers)
    timeout -s KILL 150 python3 -m pytest -q -p no:cacheprovider -m cuda tests/test_render.py tests/test_fp8.py 2>&1 | tail -2
    timeout -s KILL 90 python3 benchmarks/gpu/render_ab.py --out "$OUT/render-ab-r6.json" 2>&1 | tail -4
    timeout -s KILL 330 python3 benchmarks/gpu/levers.py --only reward --out "$OUT/levers-r6-fp8.json" 2>&1 \
      | tee "$OUT/levers.log" | grep -E '^\{|Error' | cut -c1-420
    cp "$OUT"/*.json /tmp/r6/ ;;
  bench)
    # The rule, written before the levers were measured: FP8 for the LLM's input gradient when its pixel-gradient
    # cosine against bf16 is >= 0.99 and it is faster; the vision MLPs too when that holds again against it; the
    # dense projection when render_ab timed it faster than packed (both without depth).
    [ -n "$FLAGS" ] || FLAGS=$(python3 - <<'PY'
import json
lev = {r["lever"]: r for r in json.load(open("/tmp/r6/levers-r6-fp8.json"))["results"]}
ren = {(r["packed"], r["depth"]): r["ms_median"] for r in json.load(open("/tmp/r6/render-ab-r6.json"))["records"]}
flags, base = [], lev["reward_bf16"]["ms_median"]
g = lev.get("reward_fp8_grad_only", {})
if g.get("grad_cosine_vs_bf16", 0) >= 0.99 and g["ms_median"] < base:
    flags += ["--recipe.vlm.fp8", "--recipe.vlm.no-fp8-forward"]
    v = lev.get("reward_fp8_grad_only_vision", {})
    if v.get("grad_cosine_vs_bf16", 0) >= 0.99 and v["ms_median"] < g["ms_median"]:
        flags += ["--recipe.vlm.fp8-vision"]
if ren[(False, False)] < ren[(True, False)]:
    flags += ["--recipe.render.no-packed"]
print(" ".join(flags))
PY
)
    echo "FLAGS: $FLAGS"
    timeout -s KILL 300 python3 -m splatvlm.cli bench --preset vlm3d --weights random --reference --limit 1 --steps 4 \
      --warmup 2 --gaussians 300000 $FLAGS -o /tmp/bref 2>&1 | tail -14 | cut -c1-300
    cp /tmp/bref/report.json "$OUT/bench-reference-300k-r6.json" ;;
  sd21 | mvdream | vlm3d | vlm3d-3b)
    timeout -s KILL 560 python3 benchmarks/gpu/preset_table.py "$PART" 2>&1 | tail -1 | cut -c1-900
    cp "$OUT"/preset_table/*.json "$OUT"/ 2>/dev/null; rm -rf "$OUT/preset_table" ;;
  toybuild)
    TOY="python3 -m splatvlm.cli toyworld build --only prior --device cuda --groups 48 --vae-steps 3000 --vae-batch 8 \
      --prior-batch 32 --prior-steps 12000 --prior-max-s ${PRIOR_MAX_S:-240} --threads 4"
    for name in plain shapeless; do rm -rf /tmp/tw-$name && cp -r src/splatvlm/toyworld/weights /tmp/tw-$name; done
    timeout -s KILL ${TOY_LIMIT:-540} $TOY --out /tmp/tw-plain > "$OUT/toy-build-plain.log" 2>&1 &
    timeout -s KILL ${TOY_LIMIT:-540} $TOY --out /tmp/tw-shapeless --vae-shapeless 2 > "$OUT/toy-build-shapeless.log" 2>&1 &
    timeout -s KILL 200 python3 -m splatvlm.cli toyworld eval --device cuda --objects snowman --steps 300 --seeds 0 \
      -o /tmp/toyprobe 2>&1 | grep -v -i warn | tail -3
    wait
    for name in plain shapeless; do
      grep -E 'rendered|time limit|wrote|Error' "$OUT/toy-build-$name.log" | cut -c1-300
      grep -E '^(vae|prior) step' "$OUT/toy-build-$name.log" | tail -2
      tar -C /tmp/tw-$name -cf "$OUT/toy-$name.tar" .
    done ;;
  toymore)
    W=/tmp/tw-more
    [ "$FROM" = "$W" ] || { rm -rf "$W" && cp -r "${FROM:-/tmp/tw-shapeless}" "$W"; }
    timeout -s KILL ${TOY_LIMIT:-540} python3 -m splatvlm.cli toyworld build --only prior --device cuda --groups 48 \
      --prior-batch 32 --prior-steps 12000 --prior-max-s ${PRIOR_MAX_S:-420} --threads 8 --prior-from "$W" --out "$W" \
      > "$OUT/toy-more.log" 2>&1
    grep -E 'rendered|time limit|wrote|Error' "$OUT/toy-more.log" | cut -c1-300
    tar -C "$W" -cf "$OUT/toy-more.tar" . ;;
  toyeval)
    P=${PROCS:-4}
    OBJS=$(python3 -c "from splatvlm.toyworld.world import world; print(' '.join(o.name for o in world()))")
    for w in ${WEIGHTS:-/tmp/tw-plain /tmp/tw-shapeless}; do
      name=$(basename "$w")
      rm -rf "/tmp/eval-$name" /tmp/objs-$name-*
      i=0
      for obj in $OBJS; do echo "$obj" >> "/tmp/objs-$name-$((i % P))"; i=$((i + 1)); done
      for k in $(seq 0 $((P - 1))); do
        timeout -s KILL ${EVAL_LIMIT:-540} python3 -m splatvlm.cli toyworld eval --device cuda --steps ${STEPS:-300} \
          --seeds 0 1 2 --weights "$w" --objects $(cat /tmp/objs-$name-$k) -o "/tmp/eval-$name/part$k" \
          > "/tmp/eval-$name-$k.log" 2>&1 &
      done
    done
    wait
    for w in ${WEIGHTS:-/tmp/tw-plain /tmp/tw-shapeless}; do
      name=$(basename "$w")
      python3 - "/tmp/eval-$name" "$OUT/toyworld-$name.json" <<'PY'
import glob, json, sys
from splatvlm.toyworld.eval import summarize
reports = [json.load(open(p)) for p in sorted(glob.glob(sys.argv[1] + "/part*/report.json"))]
merged = dict(reports[0], command=" ; ".join(r["command"] for r in reports), results=[x for r in reports for x in r["results"]])
json.dump(merged, open(sys.argv[2], "w"), indent=2)
print(sys.argv[2], len(merged["results"]), "runs", json.dumps(summarize(merged["results"])))
PY
      tar -C "/tmp/eval-$name" -czf "$OUT/eval-$name-pictures.tgz" --exclude runs .
    done ;;
  *) echo "PART must be levers, bench, sd21, mvdream, vlm3d, vlm3d-3b, toybuild, toymore or toyeval"; exit 2 ;;
esac
