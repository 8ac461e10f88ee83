# What the next device session should run, one call each (each under 10 minutes with setup):
#   PART=vlm3d-3b  the README's vlm3d-3b row (the last call was cut at 246 s by its own timeout)
#   PART=sd21      the README's sd21 row
#   PART=streams   an A/B of --parallel-terms at 300,000 Gaussians, one process each, same machine
# Usage: PART=vlm3d-3b bash benchmarks/gpu/next_calls.sh   (carry .whl)
. benchmarks/gpu/setup.sh > /tmp/setup.log 2>&1 || { tail -5 /tmp/setup.log; exit 1; }
tail -1 /tmp/setup.log
mkdir -p "$OUT"
case "$PART" in
  vlm3d-3b | sd21 | mvdream | vlm3d)
    timeout -s KILL 480 python3 benchmarks/gpu/preset_table.py "$PART" 2>&1 | tail -1 | cut -c1-900
    cp "$OUT"/preset_table/*.json "$OUT"/ 2>/dev/null; rm -rf "$OUT/preset_table" ;;
  streams)
    for p in parallel-terms no-parallel-terms; do
      timeout -s KILL 230 python3 -m splatvlm.cli bench --preset vlm3d --weights random --limit 1 --steps 8 --warmup 3 \
        --gaussians 300000 --recipe.$p -o /tmp/b_$p 2>&1 | grep -E "full step|asset" | head -3
      cp /tmp/b_$p/report.json "$OUT/bench-300k-$p.json" 2>/dev/null
    done ;;
  *) echo "PART must be vlm3d-3b, sd21, mvdream, vlm3d or streams"; exit 2 ;;
esac
