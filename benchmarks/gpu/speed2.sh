# One device call: the whole step against the reference, and the streams lever. Usage: bash benchmarks/gpu/speed2.sh
. benchmarks/gpu/setup.sh || exit 1
mkdir -p $OUT
t() { local s=$1; shift; timeout "$s" "$@"; }
t 300 python3 -m splatvlm.cli bench --preset vlm3d --weights random --reference --limit 1 --steps 8 --warmup 3 -o /tmp/b_all 2>&1 | grep -v Warning | tail -30
cp /tmp/b_all/report.json $OUT/bench_all.json 2>/dev/null; cp /tmp/b_all/report.md $OUT/bench_all.md 2>/dev/null
t 140 python3 -m splatvlm.cli bench --preset vlm3d --weights random --limit 1 --steps 8 --warmup 3 --recipe.parallel-terms False -o /tmp/b_seq 2>&1 | grep -E "full step|step" | head -6
cp /tmp/b_seq/report.json $OUT/bench_sequential.json 2>/dev/null
ls $OUT
