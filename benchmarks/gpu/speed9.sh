# Speed rounds 8 to 10 (issue 18): one device call per PART, each under 10 minutes (carry .whl). Timeouts send SIGKILL.
#   PART=profile  the CUDA tests of the render and the densification (the band-0 gsplat test among them), then the
#                 kernel profile of the full step at 300,000 Gaussians: two streams with the reward queued first
#                 (the defaults), two streams in the terms' own order, one stream, and two streams with the VAE and
#                 UNet channels-last; the traces of the first two are kept
#   PART=levers   after the densification statistics' pageable host-to-device copy went (round 8's profile found
#                 it): the kernel profile of the defaults, channels-last, e4m3 down projections, both, and the
#                 defaults again (against order effects), with the host's sync points of the first
#   PART=bench    the 300k quick bench beside the reference (8 timed steps), with the defaults and $FLAGS, then
#                 (when $SECOND is set) once more with those flags instead
#   PART=full     the whole vlm3d recipe, measured (bench --full)
#   PART=round9   round 9: the CUDA test of the channels-last VAE encoder, the kernel profile of the defaults (the
#                 encoder channels-last), the old layout and the defaults with the bench's CUDA events (traces of
#                 the first two); then PART=bench TAG=r9
#   PART=sdpa     round 9: the kernel profile of the defaults, then (another process, a fresh inductor cache) of
#                 SDPA without its cuDNN backend (flash attention); VARIANTS= picks which of the two
#   PART=round10  round 10: the CUDA test of the graphed reward against the reference and the eager fast path (demo,
#                 random 7B), then the kernel profile of the defaults (the prompt prefix's keys and values cached)
#                 and of vlm.prefix_cache=false, the first one's trace kept
# Usage: PART=profile bash benchmarks/gpu/speed9.sh
. benchmarks/gpu/setup.sh > /tmp/setup.log 2>&1 || { tail -5 /tmp/setup.log; exit 1; }
tail -1 /tmp/setup.log
mkdir -p "$OUT"
set -o pipefail
BENCH="python3 -m splatvlm.cli bench --preset vlm3d --weights random --reference --limit 1 --steps 8 --warmup 2 \
  --gaussians 300000"
case "$PART" in
  profile)
    timeout -s KILL 120 python3 -m pytest -q -p no:cacheprovider -m cuda tests/test_render.py tests/test_densify.py \
      2>&1 | tail -3
    timeout -s KILL ${PROFILE_LIMIT:-400} python3 benchmarks/gpu/profile_step.py --phases "4x256px +reward" \
      --variants streams streams-registered one-stream "streams:sds.channels_last=true" --traces 2 \
      --out "$OUT/profile-r8.json" 2>&1 | grep -E '^\{|Error' | cut -c1-330 ;;
  levers)
    FP8=vlm.fp8=true,vlm.fp8_forward=false,vlm.fp8_projections=[down_proj]
    timeout -s KILL ${PROFILE_LIMIT:-560} python3 benchmarks/gpu/profile_step.py --phases "4x256px +reward" \
      --variants streams streams:sds.channels_last=true streams:$FP8 streams:sds.channels_last=true,$FP8 streams \
      --traces 1 --profiled 2 --sync-points --out "$OUT/profile-r8-levers.json" 2>&1 | grep -E '^\{|Error' \
      | cut -c1-330 ;;
  bench)
    timeout -s KILL 270 $BENCH ${FLAGS:-} -o /tmp/bref 2>&1 | tail -14 | cut -c1-300
    cp /tmp/bref/report.json "$OUT/bench-reference-300k-${TAG:-r8}.json"
    if [ -n "${SECOND:-}" ]; then
      timeout -s KILL 270 $BENCH $SECOND -o /tmp/bref8 2>&1 | tail -14 | cut -c1-300
      cp /tmp/bref8/report.json "$OUT/bench-reference-300k-${TAG:-r8}-second.json"
    fi ;;
  full)
    timeout -s KILL 400 python3 -m splatvlm.cli bench --preset vlm3d --weights random --full --limit 1 ${FLAGS:-} \
      -o /tmp/bfull 2>&1 | tail -12 | cut -c1-300
    cp /tmp/bfull/report.json "$OUT/whole-run-${TAG:-r8}.json" ;;
  round9)
    timeout -s KILL 100 python3 -m pytest -q -p no:cacheprovider -m cuda tests/test_sds.py -k compiled_vae 2>&1 \
      | tail -3
    timeout -s KILL ${PROFILE_LIMIT:-260} python3 benchmarks/gpu/profile_step.py --phases "4x256px +reward" \
      --variants streams streams:sds.compile_vae_channels_last=false streams-timed --traces 2 --profiled 2 \
      --out "$OUT/profile-r9.json" 2>&1 | grep -E '^\{|Error' | cut -c1-330 ;;
  sdpa)  # two processes: AOTAutograd's cache ignores the SDPA backend, so the second compiles in a fresh cache
    for V in ${VARIANTS:-streams streams-nocudnn}; do
      FRESH=$([ $V = streams ] || echo TORCHINDUCTOR_CACHE_DIR=/tmp/inductor-$V)
      env $FRESH timeout -s KILL ${PROFILE_LIMIT:-250} python3 benchmarks/gpu/profile_step.py \
        --phases "4x256px +reward" --variants $V --traces 0 --profiled 2 --out "$OUT/profile-sdpa-$V.json" 2>&1 \
        | grep -E '^\{|Error' | cut -c1-330
    done ;;
  round10)
    timeout -s KILL ${TEST_LIMIT:-240} python3 -m pytest -q -s -p no:cacheprovider -m cuda tests/test_reward.py \
      -k "cuda_graph_matches_reference and (demo or 7b)" 2>&1 | grep -E 'cosine|passed|failed|Error' | cut -c1-300
    timeout -s KILL ${PROFILE_LIMIT:-300} python3 benchmarks/gpu/profile_step.py --phases "4x256px +reward" \
      --variants streams streams:vlm.prefix_cache=false --traces 1 --profiled 2 --out "$OUT/profile-r10.json" 2>&1 \
      | grep -E '^\{|Error' | cut -c1-330 ;;
  *) echo "PART must be profile, levers, bench, full, round9, sdpa or round10"; exit 2 ;;
esac
