# Speed round 11 (issue 18): one device call per PART, each under 10 minutes (carry .whl). Timeouts send SIGKILL.
#   PART=ab      the attention A/B (attention_ab.py: the reward's three attention shapes under other kernels),
#                then the kernel profile of the defaults (the reward's stream at high priority), of
#                long_pole_priority=false, and of the defaults again (new models; against order effects)
#   PART=varlen  the attention A/B again, one case per process (a variant that fails inside a capture can leave
#                CUDA unusable: round 11's first try lost its windows and images cases so), the CUDA tests of
#                the varlen path (segments and lower-right causal against SDPA; the graphed demo and random 7B
#                against the reference), then the kernel profile of the defaults and of vlm.varlen_attention=true
#   PART=bench   the CUDA tests of the varlen path (the graphed demo and random 7B against the reference; round 11's
#                PART=varlen selected none of them), then the 300k quick bench beside the reference (8 timed
#                steps), twice; TAG names the results
#   PART=full    the whole vlm3d recipe, measured (bench --full)
# Usage: PART=ab bash benchmarks/gpu/speed11.sh
. benchmarks/gpu/setup.sh > /tmp/setup.log 2>&1 || { tail -5 /tmp/setup.log; exit 1; }
tail -1 /tmp/setup.log
mkdir -p "$OUT"
set -o pipefail
BENCH="python3 -m splatvlm.cli bench --preset vlm3d --weights random --reference --limit 1 --steps 8 --warmup 2 \
  --gaussians 300000"
case "$PART" in
  ab)
    timeout -s KILL ${ATTN_LIMIT:-150} python3 benchmarks/gpu/attention_ab.py ${ATTN_FLAGS:---flex} \
      --out "$OUT/attention-r11.json" 2>&1 | grep -vE '^\{' | grep -v Warning | cut -c1-200
    timeout -s KILL ${PROFILE_LIMIT:-330} python3 benchmarks/gpu/profile_step.py --phases "4x256px +reward" \
      --variants streams streams:long_pole_priority=false streams:long_pole_priority=true \
      ${PROFILE_VARIANTS:-} --traces 2 --profiled 2 --out "$OUT/profile-r11.json" 2>&1 | grep -E '^\{|Error' \
      | cut -c1-330 ;;
  varlen)
    for CASE in llm windows images; do
      timeout -s KILL ${ATTN_LIMIT:-90} python3 benchmarks/gpu/attention_ab.py --flex --cases $CASE \
        --out "$OUT/attention-r11-$CASE.json" 2>&1 | grep -E '^(llm|windows|images) |Error' | cut -c1-200
    done
    timeout -s KILL ${TEST_LIMIT:-180} python3 -m pytest -q -s -p no:cacheprovider -m cuda tests/test_reward.py \
      -k "varlen" 2>&1 | grep -E 'cosine|passed|failed|Error' | cut -c1-300
    timeout -s KILL ${PROFILE_LIMIT:-250} python3 benchmarks/gpu/profile_step.py --phases "4x256px +reward" \
      --variants streams streams:vlm.varlen_attention=true --traces 2 --profiled 2 \
      --out "$OUT/profile-r11-varlen.json" 2>&1 | grep -E '^\{|Error' | cut -c1-330 ;;
  bench)
    timeout -s KILL ${TEST_LIMIT:-200} python3 -m pytest -q -s -p no:cacheprovider -m cuda tests/test_reward.py \
      -k "varlen and not 3b" 2>&1 | grep -E 'cosine|passed|failed|Error' | cut -c1-300
    for RUN in 1 2; do
      timeout -s KILL 270 $BENCH ${FLAGS:-} -o /tmp/bref$RUN 2>&1 | tail -6 | cut -c1-300
      cp /tmp/bref$RUN/report.json "$OUT/bench-reference-300k-${TAG:-r11}-run$RUN.json"
    done ;;
  full)
    timeout -s KILL 400 python3 -m splatvlm.cli bench --preset vlm3d --weights random --full --limit 1 ${FLAGS:-} \
      -o /tmp/bfull 2>&1 | tail -12 | cut -c1-300
    cp /tmp/bfull/report.json "$OUT/whole-run-${TAG:-r11}.json" ;;
  *) echo "PART must be ab, varlen, bench or full"; exit 2 ;;
esac
