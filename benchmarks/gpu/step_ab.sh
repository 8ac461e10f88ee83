# The vlm3d full step's cost of the reward's question, in ONE device call: the quick bench (`bench --preset vlm3d
# --weights random --limit 1 --timed-steps 8 --warmup 2 --gaussians 300000`) in up to four arms, one process each:
#   demo-tok-dual    the random 7B with the demo tokenizer (as at 33e48d0), --recipe.vlm.question dual
#   demo-tok-vlm3d   the same, the preset's question (the authors'; the demo tokenizer cuts it into ~300 tokens)
#   fix-vlm3d        this tree: the random models' tokenizer holds each question word as one token (~132 tokens)
#   fix-dual         this tree, --recipe.vlm.question dual
# The demo-tokenizer arms patch splatvlm.models.speed_tokenizer back to the demo folder's tokenizer, which is all the
# fix changed on the bench's path. Each report.json (with vlm_query_tokens) goes to $OUT/step_ab/<arm>.json and a
# summary to $OUT/step_ab/summary.json after each arm.
#
# Usage (carry .whl):  bash benchmarks/gpu/step_ab.sh      env ARMS="demo-tok-dual demo-tok-vlm3d fix-vlm3d fix-dual"
#   env LIMIT_S=530 (the call's own budget, setup included; an arm starts only with ARM_S=100 s or more left)
# Expected on one warm H100: setup ~20 s (+90 s gsplat build on a fresh machine), first arm ~150 s with a cold
# inductor cache, later arms ~60-80 s (the reward recompiles for its new query length).
. benchmarks/gpu/setup.sh > /tmp/setup.log 2>&1 || { tail -5 /tmp/setup.log; exit 1; }
tail -1 /tmp/setup.log
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
mkdir -p "$OUT/step_ab" /tmp/ab
LIMIT=${LIMIT_S:-530}
echo "setup took ${SECONDS} s"
PATCH='import sys
from transformers import AutoTokenizer
import splatvlm.models as m
from splatvlm.demo import demo_vlm_path
m.speed_tokenizer = lambda: AutoTokenizer.from_pretrained(str(demo_vlm_path()))
from splatvlm.cli import main
sys.exit(main())'
BENCH_ARGS="--preset vlm3d --weights random --limit 1 --timed-steps 8 --warmup 2 --gaussians 300000"
for ARM in ${ARMS:-demo-tok-dual demo-tok-vlm3d fix-vlm3d fix-dual}; do
  LEFT=$((LIMIT - SECONDS - 10))
  if [ "$LEFT" -lt "${ARM_S:-100}" ]; then echo "$ARM: skipped, ${LEFT} s left"; continue; fi
  case $ARM in *dual) Q="--recipe.vlm.question dual" ;; *) Q="" ;; esac
  case $ARM in demo-tok-*) RUN=(python3 -c "$PATCH") ;; *) RUN=(python3 -m splatvlm.cli) ;; esac
  T0=$SECONDS
  rm -rf "/tmp/ab/$ARM"
  timeout -s KILL "$LEFT" "${RUN[@]}" bench $BENCH_ARGS $Q -o "/tmp/ab/$ARM" 2>&1 \
    | grep -vE 'Warning|warn\(' | tail -6 | cut -c1-300
  echo "$ARM: exit ${PIPESTATUS[0]} in $((SECONDS - T0)) s"
  [ -f "/tmp/ab/$ARM/report.json" ] && cp "/tmp/ab/$ARM/report.json" "$OUT/step_ab/$ARM.json"
  python3 - "$OUT/step_ab" <<'PY'
import json, pathlib, sys
d = pathlib.Path(sys.argv[1])
rows = {}
for f in sorted(d.glob("*.json")):
    if f.name == "summary.json":
        continue
    r = json.loads(f.read_text())
    rows[f.stem] = {k: r.get(k) for k in ("device", "date", "full_step_ms", "per_component_ms", "vlm_query_tokens",
                                          "asset_s", "peak_gb", "full_step_phase")}
    c = r.get("per_component_ms") or {}
    print(f"  {f.stem}: full step {r.get('full_step_ms', 0):.1f} ms (sds {c.get('sds', 0):.1f}, vlm {c.get('vlm', 0):.1f}), "
          f"query {r.get('vlm_query_tokens')} tokens, asset {r.get('asset_s', 0):.0f} s extrapolated")
(d / "summary.json").write_text(json.dumps(rows, indent=1))
PY
done
