# One device call (~8 min): the untried levers of issue 18, then the streams fix.
#   1. levers.py: reward bf16 vs FP8 MLPs; SDS plain vs VAE encoder compiled vs VAE + UNet compiled
#   2. the CUDA tests of the new code (FP8 reward, compiled SDS) and of the streams (trainer, graphs)
#   3. nan_probe.py: 4 trainer steps on two streams and on one, full-size random weights
. benchmarks/gpu/setup.sh > /tmp/setup.log 2>&1 || { tail -5 /tmp/setup.log; exit 1; }
tail -1 /tmp/setup.log
mkdir -p "$OUT"
timeout 330 python3 benchmarks/gpu/levers.py --out "$OUT/levers.json" 2>&1 | grep -E '^\{|Error|error' | cut -c1-600
timeout 120 python3 -m pytest -q -p no:cacheprovider -m cuda tests/test_fp8.py tests/test_trainer.py tests/test_graphs.py \
  tests/test_sds.py::test_cuda_compiled_vae_and_unet_match_the_plain_graph 2>&1 | tail -4
timeout 150 python3 benchmarks/gpu/nan_probe.py --out "$OUT/nan_probe.json" 2>&1 | grep '"parallel"' | cut -c1-500
