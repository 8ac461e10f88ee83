# Toy world on one device machine: the toy evals run as parallel one-thread CPU processes (16 cores), sharded by
# run (`toyworld eval --shard I/N`) and merged (`--merge`); builds may use the GPU.
# Usage: bash benchmarks/gpu/toyworld.sh SECTION, each section one device call; everything lands in $OUT/toyworld
# and comes back as $OUT/toyworld.tar.gz (reports, pictures, weights, logs; no run folders).
#   build   retrain prior + reward on the GPU into $O/weights
#   priors  retrain the prior alone on the GPU, one build per entry of $PRIORS ("NAME:SHADED_SHARE ..."), side by
#           side, each for $PRIOR_S seconds at $PRIOR_BATCH groups a step from $PRIOR_GROUPS groups an object, with
#           $W's reward, into $O/w-NAME (each folder comes back as its own $OUT/w-NAME.tar.gz); then a prior-only
#           eval of each (the first over $FIRST_OBJS x $FIRST_SEEDS, the others over $OBJS, seed 0, with
#           --sweep $SHADE_SWEEP)                                              -> $O/eval-NAME
#   prior   prior-only runs (mvdream) with snapshots every 50 steps           -> $O/prior
#   reward  hard negatives from $O/prior's snapshots, then the reward fine-tuned from $W's (PGD + the hard
#           negatives, $RSTEPS steps) into $O/weights (with $W's prior)        -> $O/weights, $O/hard.pt
#   sweep   prior + reward (vlm3d) over $SWEEP with $O/weights (or $W)         -> $O/sweep
#   ab      prior-only A/Bs: one eval per entry of $ARMS ("NAME:KEY=V,KEY=V ..."), over $OBJS x $SEEDS with $W
#                                                                              -> $O/ab-NAME
#   final   prior + reward (vlm3d, weights.vlm_mode ratio at $RATIO) over $ALL_OBJS x 0 1 2 with $W -> $O/final
#   phase1  prior, reward, sweep in one call, each phase under its own time limit so the tar always runs
# SECTION may name several ("reward sweep"). Env: HARD_FILE (hard negatives collected elsewhere, for "reward"),
# W (weights to start from, default the shipped ones), OBJS (default the 7 front/back objects), SEEDS (default
# "0 1"), STEPS (300), SWEEP (weights.vlm.start=30,100,300,1000), RSTEPS (150), PROCS (16),
# EXTRA (more `toyworld eval` arguments, e.g. "--set key=value"), PRIOR_LIMIT / REWARD_LIMIT / SWEEP_LIMIT (s; the
# sweep's default: what is left of DEADLINE, 520 s from the start).
T0=$(date +%s)
if [ ! -f /tmp/site/.splatvlm-installed ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
  touch /tmp/site/.splatvlm-installed
fi
export PYTHONPATH=/tmp/site:$PWD/src PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 OMP_NUM_THREADS=1
export SPLATVLM_CACHE=/tmp/splatvlm-cache PATH=/tmp/site/bin:$PATH
O=$OUT/toyworld
mkdir -p "$O"
W=${W:-src/splatvlm/toyworld/weights}
OBJS=${OBJS:-snowman mug bird house robot car pig}
SEEDS=${SEEDS:-0 1}
STEPS=${STEPS:-300}
SWEEP=${SWEEP:-weights.vlm.start=30,100,300,1000}
RSTEPS=${RSTEPS:-150}
P=${PROCS:-16}
SECTION=${1:-phase1}
has() { [ "$SECTION" = phase1 ] || [[ " $SECTION " == *" $1 "* ]]; }  # SECTION may list several: "reward sweep"
DEADLINE=${DEADLINE:-520}  # seconds from the start: the sweep's limit is what is left of it, less the merge and tar
R=/tmp/toyworld-runs  # run folders stay on the machine (too big to bring back)
mkdir -p $R

sharded() {  # NAME LIMIT_S EVAL_ARGS...: P shards of one eval under a time limit, then one merged report
  local name=$1 limit=$2
  shift 2
  for i in $(seq 0 $((P - 1))); do
    timeout "$limit" python3 -m splatvlm.cli toyworld eval --device cpu --threads 1 --shard "$i/$P" \
      -o "$R/$name-$i" "$@" >"$R/$name-$i.log" 2>&1 &
  done
  wait
  grep -h "seed" "$R/$name"-*.log | grep -v -i warn | head -100 >"$O/$name-runs.log"
  python3 -m splatvlm.cli toyworld eval -o "$O/$name" --merge $(for d in "$R/$name"-*/; do [ -f "$d/report.json" ] && echo "$d"; done) 2>&1 | tail -3
  python3 -c "import json,sys; from splatvlm.toyworld.sweep import summarize; print(json.dumps(summarize(json.load(open(sys.argv[1]))['results']), indent=1))" "$O/$name/report.json"
}

if [[ " $SECTION " == *" build "* ]]; then
  python3 -m splatvlm.cli toyworld build --device cuda --out "$O/weights" 2>&1 | grep -v -i warn | tail -30
fi
if [[ " $SECTION " == *" priors "* ]]; then
  t=$(date +%s)
  PRIORS=${PRIORS:-plain:0 shaded:0.5}
  for arm in $PRIORS; do
    name=${arm%%:*}
    mkdir -p "$O/w-$name" && cp -r "$W/reward" "$W/build.json" "$O/w-$name/"
    python3 -m splatvlm.cli toyworld build --only prior --device cuda --threads 4 --out "$O/w-$name" \
      --groups "${PRIOR_GROUPS:-96}" --prior-batch "${PRIOR_BATCH:-32}" --prior-steps 1000000 \
      --prior-max-s "${PRIOR_S:-240}" --shaded-share "${arm##*:}" >"$O/build-$name.log" 2>&1 &
  done
  wait
  for arm in $PRIORS; do tail -2 "$O/build-${arm%%:*}.log"; done
  echo "priors built: $(($(date +%s) - t)) s"
  first=1
  for arm in $PRIORS; do
    name=${arm%%:*}
    tar -czf "$OUT/w-$name.tar.gz" -C "$O" "w-$name"
    if [ $first = 1 ]; then
      sharded "eval-$name" "${EVAL_LIMIT:-200}" --methods mvdream --objects ${FIRST_OBJS:-$OBJS} \
        --seeds ${FIRST_SEEDS:-0 1 2} --steps "$STEPS" --weights "$O/w-$name" $EXTRA
    else
      sharded "eval-$name" "${EVAL_LIMIT:-200}" --methods mvdream --objects $OBJS --seeds 0 --steps "$STEPS" \
        --weights "$O/w-$name" --sweep "${SHADE_SWEEP:-render.shading=albedo,mixed}" $EXTRA
    fi
    first=0
  done
  echo "priors section: $(($(date +%s) - t)) s"
fi
if [[ " $SECTION " == *" final "* ]]; then
  t=$(date +%s)
  ALL=$(python3 -c "from splatvlm.toyworld.world import world; print(' '.join(o.name for o in world()))")
  sharded final "${FINAL_LIMIT:-300}" --methods vlm3d --objects ${ALL_OBJS:-$ALL} --seeds 0 1 2 --steps "$STEPS" \
    --weights "$W" --set weights.vlm_mode=ratio "weights.vlm_ratio.start=${RATIO:-0.3}" $EXTRA
  echo "final section: $(($(date +%s) - t)) s"
fi
if [[ " $SECTION " == *" ab "* ]]; then
  for arm in $ARMS; do
    t=$(date +%s)
    sharded "ab-${arm%%:*}" "${AB_LIMIT:-90}" --methods mvdream --objects $OBJS --seeds $SEEDS --steps "$STEPS" \
      --weights "$W" --set $(echo "${arm#*:}" | tr ',' ' ') $EXTRA
    echo "ab ${arm%%:*}: $(($(date +%s) - t)) s"
  done
fi
if has prior; then
  t=$(date +%s)
  sharded prior "${PRIOR_LIMIT:-100}" --methods mvdream --objects $OBJS --seeds $SEEDS --steps "$STEPS" --weights "$W" \
    --snapshot-every 50 $EXTRA
  echo "prior section: $(($(date +%s) - t)) s"
fi
if has reward; then
  t=$(date +%s)
  if [ -n "$HARD_FILE" ]; then  # collected elsewhere (hard_negatives.py), carried along
    cp "$HARD_FILE" "$O/hard.pt"
  else
    python3 benchmarks/toyworld/hard_negatives.py $(ls -d $R/prior-*/) -o "$O/hard.pt" 2>&1 | tail -2
  fi
  HARD=""
  [ -f "$O/hard.pt" ] && HARD="--reward-hard $O/hard.pt"  # without snapshots: PGD alone
  mkdir -p "$O/weights" && cp -r "$W/prior" "$O/weights/" && cp "$W/build.json" "$O/weights/"
  timeout "${REWARD_LIMIT:-110}" python3 -m splatvlm.cli toyworld build --only reward --device "${RDEVICE:-cpu}" \
    --threads "${RTHREADS:-4}" --out "$O/weights" --reward-from "$W" $HARD \
    --reward-steps "$RSTEPS" --reward-pgd-steps 3 2>&1 | grep -v -i warn | tee "$O/reward-build.log" | tail -8
  echo "reward section: $(($(date +%s) - t)) s"
fi
if has sweep; then
  t=$(date +%s)
  SW=$O/weights
  [ -f "$SW/reward/config.json" ] || SW=$W
  left=$((DEADLINE - ($(date +%s) - T0) - 30))
  echo "sweep limit: ${SWEEP_LIMIT:-$left} s"
  sharded sweep "${SWEEP_LIMIT:-$left}" --methods vlm3d --objects $OBJS --seeds $SEEDS --steps "$STEPS" --weights "$SW" \
    --sweep $SWEEP $EXTRA
  echo "sweep section: $(($(date +%s) - t)) s"
fi
tar -czf "$OUT/toyworld.tar.gz" --exclude=toyworld/weights/prior --exclude='toyworld/w-*' -C "$OUT" toyworld && rm -rf "$O"
ls -la "$OUT"
