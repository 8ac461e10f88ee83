# Toy world on one GPU (issue 13): rebuild the toy models at GPU scale, then eval both presets over 3 seeds.
# Usage: bash benchmarks/gpu/toyworld.sh SECTION   (one device call per section keeps each under 10 min)
#   build   retrain prior + reward at GPU scale into $OUT/toyworld/weights (build.json has the times)
#   eval    eval every object, mvdream vs vlm3d, seeds $SEEDS, with $OUT/toyworld/weights (or the shipped ones
#           when WEIGHTS is unset and no build ran), report.json under $OUT/toyworld/eval-s<seeds>
#   merge   one report.json from every $OUT/toyworld/eval-*/report.json (run it in the last call)
# Env: STEPS (eval steps per run, default 400), SEEDS (default "0"; one seed per call keeps a call under 10 min:
# SEEDS=0, then SEEDS=1 and SEEDS=2, then merge). The lead copies report.json to
# benchmarks/results/<date>-h200-toyworld.json; ship the rebuilt weights only if they fit in 40 MB (they do:
# same model sizes).
. benchmarks/gpu/setup.sh || exit 1
O=$OUT/toyworld
mkdir -p "$O"
STEPS=${STEPS:-400}
SEEDS=${SEEDS:-0}
SECTION=${1:-eval}
if [ "$SECTION" = build ]; then
  python3 -m splatvlm.cli toyworld build --device cuda --out "$O/weights" --groups 48 --vae-steps 2000 --vae-batch 8 \
    --prior-steps 15000 --prior-batch 8 --reward-steps 1500 2>&1 | grep -v -i warn | tail -40
fi
if [ "$SECTION" = eval ]; then
  W=${WEIGHTS:-$O/weights}
  [ -f "$W/prior/model_index.json" ] || W=src/splatvlm/toyworld/weights
  python3 -m splatvlm.cli toyworld eval --device cuda --steps "$STEPS" --seeds $SEEDS --weights "$W" \
    -o "$O/eval-s${SEEDS// /}" 2>&1 | grep -v -i warn | tail -60
fi
if [ "$SECTION" = merge ]; then
  python3 - "$O" <<'PY'
import glob, json, sys
reports = [json.load(open(p)) for p in sorted(glob.glob(sys.argv[1] + "/eval-*/report.json"))]
merged = dict(reports[0], command=" ; ".join(r["command"] for r in reports), results=[x for r in reports for x in r["results"]])
json.dump(merged, open(sys.argv[1] + "/report.json", "w"), indent=2)
from splatvlm.toyworld.eval import summarize
print(json.dumps(summarize(merged["results"]), indent=2))
PY
fi
