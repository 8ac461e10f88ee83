# One device call: the speed levers of issue 18, each measured. Usage: bash benchmarks/gpu/speed.sh
. benchmarks/gpu/setup.sh || exit 1
mkdir -p $OUT
t() { local s=$1; shift; timeout "$s" "$@"; }
t 120 python3 -m pytest -q -m cuda -p no:cacheprovider tests/test_trainer.py tests/test_qwen_fast.py tests/test_reward.py -k "stream or demo or pad" 2>&1 | tail -4 | tee $OUT/cuda_tests.log
t 100 python3 benchmarks/bench_reward.py --models random-7b --sizes 252 --paths graph --pad-gemm --iters 20 --out $OUT/reward_pad.json 2>&1 | tail -3
t 120 python3 benchmarks/bench_reward.py --models random-7b --sizes 252 --paths graph --pad-gemm --compile --iters 20 --out $OUT/reward_pad_compile.json 2>&1 | tail -3
t 330 python3 -m splatvlm.cli bench --preset vlm3d --weights random --reference --limit 2 --steps 10 -o /tmp/b_all 2>&1 | tail -25
cp /tmp/b_all/report.json $OUT/bench_all.json 2>/dev/null
t 100 python3 -m splatvlm.cli bench --preset vlm3d --weights random --limit 1 --steps 10 --recipe.parallel-terms False -o /tmp/b_seq 2>&1 | grep -E "full step|ms" | head -8
cp /tmp/b_seq/report.json $OUT/bench_sequential.json 2>/dev/null
ls -la $OUT
