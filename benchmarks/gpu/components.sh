# One device call: CUDA tests, then render / SDS / reward component benchmarks. Usage: bash benchmarks/gpu/components.sh
. benchmarks/gpu/setup.sh || exit 1
mkdir -p $OUT
python3 -m pytest -q -m cuda -p no:cacheprovider tests -s 2>&1 | tee $OUT/cuda_tests.log | grep -E "PSNR|psnr|cos|passed|failed|Error|error" | tail -40
python3 benchmarks/bench_render.py --out $OUT/bench_render.json 2>&1 | tail -14
python3 benchmarks/bench_sds.py --out $OUT/bench_sds.json 2>&1 | tail -8
python3 benchmarks/bench_sds.py --channels-last --out $OUT/bench_sds_cl.json 2>&1 | tail -5
python3 benchmarks/bench_reward.py --out $OUT/bench_reward.json 2>&1 | tail -12
