# One device call (~5 min): is the two-stream step (RunConfig.parallel_terms) finite again now that each CUDA graph
# has its own capture stream, and what does it save at the cap? Turn parallel_terms back on only if all three pass.
#   1. the CUDA tests of the trainer and the graphs (test_graphed_prior_and_reward_on_streams_stay_finite)
#   2. nan_probe.py: each term alone, then 4 trainer steps on two streams and on one (full-size random weights)
#   3. the quick bench at 300,000 Gaussians with --recipe.parallel-terms (compare with the default's 80.7 ms)
. benchmarks/gpu/setup.sh || exit 1
mkdir -p "$OUT"
python3 -m pytest -q -p no:cacheprovider -m cuda tests/test_trainer.py tests/test_graphs.py 2>&1 | tail -4
timeout 200 python3 benchmarks/gpu/nan_probe.py --out "$OUT/nan_probe.json" 2>&1 | grep '"parallel"' | cut -c1-400
timeout 200 python3 -m splatvlm.cli bench --preset vlm3d --weights random --limit 1 --steps 6 --warmup 2 \
  --gaussians 300000 --recipe.parallel-terms -o /tmp/bp 2>&1 | grep -v -i warn | tail -14
cp /tmp/bp/report.json "$OUT/bench_parallel_300k.json" 2>/dev/null
