# One device call: whole step against the reference (pad + streams, no compile), then with the reward compiled.
. benchmarks/gpu/setup.sh || exit 1
mkdir -p $OUT
t() { local s=$1; shift; timeout "$s" "$@"; }
t 200 python3 -m splatvlm.cli bench --preset vlm3d --weights random --reference --limit 1 --steps 6 --warmup 2 --recipe.vlm.no-compile -o /tmp/b_nc 2>&1 | grep -v -i warn | tail -22
cp /tmp/b_nc/report.json $OUT/bench_nocompile_ref.json 2>/dev/null
t 170 python3 -m splatvlm.cli bench --preset vlm3d --weights random --limit 1 --steps 6 --warmup 2 -o /tmp/b_c 2>&1 | grep -v -i warn | tail -16
cp /tmp/b_c/report.json $OUT/bench_reward_compiled.json 2>/dev/null
ls $OUT
