# What the next device session should run, one call each (each under 10 minutes with setup; carry .whl):
#   PART=sd21 | mvdream   the README's rows with today's recipe (sd21 was cut at step 2201 of 3000 by a 280 s limit)
#   PART=toyprobe         ~60 s: the toy build's autoencoder and prior loops on the GPU for a few hundred steps each,
#                         to size a full build (the last one was killed before it saved)
#   PART=fp8              ~5 min: the reward step in bf16, e4m3 both ways, e4m3 input gradient only (--vlm.no-fp8-forward)
#                         with the pixel-gradient cosine of each against bf16 (levers.py --only reward)
#   PART=render           ~1 min: the CUDA render tests, then the training render with/without the depth channel, packed or dense (render_ab.py)
#   PART=toy              the toy prior trained on the GPU within PRIOR_MAX_S (set it from the probe), returned as
#                         $OUT/toy-weights.tar (the shipped reward kept)
# Usage: PART=sd21 bash benchmarks/gpu/next_calls.sh
. benchmarks/gpu/setup.sh > /tmp/setup.log 2>&1 || { tail -5 /tmp/setup.log; exit 1; }
tail -1 /tmp/setup.log
mkdir -p "$OUT"
set -o pipefail
TOY="python3 -m splatvlm.cli toyworld build --only prior --device cuda --groups 48 --vae-batch 8 --prior-batch 16"
case "$PART" in
  sd21 | mvdream | vlm3d | vlm3d-3b)
    timeout -s KILL 540 python3 benchmarks/gpu/preset_table.py "$PART" 2>&1 | tail -1 | cut -c1-900
    cp "$OUT"/preset_table/*.json "$OUT"/ 2>/dev/null; rm -rf "$OUT/preset_table" ;;
  fp8)
    timeout -s KILL 480 python3 benchmarks/gpu/levers.py --only reward --out "$OUT/levers-fp8.json" 2>&1 \
      | grep -E '^\{|Error|error' | cut -c1-600 ;;
  render)
    timeout -s KILL 120 python3 -m pytest -q -p no:cacheprovider -m cuda tests/test_render.py 2>&1 | tail -2
    timeout -s KILL 120 python3 benchmarks/gpu/render_ab.py --out "$OUT/render-ab.json" 2>&1 | tail -6 ;;
  toyprobe)
    for threads in 1 8; do
      rm -rf /tmp/tw && cp -r src/splatvlm/toyworld/weights /tmp/tw
      timeout -s KILL 150 $TOY --out /tmp/tw --threads $threads --vae-steps 300 --prior-steps 300 2>&1 \
        | grep -v -i warn | tee "$OUT/toyprobe-threads$threads.log" | grep -E 'rendered|step (0|299) |wrote' | cut -c1-300
    done ;;
  toy)
    rm -rf /tmp/tw && cp -r src/splatvlm/toyworld/weights /tmp/tw
    timeout -s KILL ${TOY_LIMIT:-540} $TOY --out /tmp/tw --threads ${THREADS:-1} --vae-steps ${VAE_STEPS:-3000} \
      --prior-steps ${PRIOR_STEPS:-12000} --prior-max-s ${PRIOR_MAX_S:-300} 2>&1 | grep -v -i warn \
      | tee "$OUT/toy-build.log" | grep -E 'rendered|time limit|wrote' | cut -c1-600
    tar -C /tmp/tw -cf "$OUT/toy-weights.tar" . ;;
  *) echo "PART must be sd21, mvdream, vlm3d, vlm3d-3b, fp8, render, toyprobe or toy"; exit 2 ;;
esac
