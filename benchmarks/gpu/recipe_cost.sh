# Cost of the references' Gaussian-side recipe (densification from the prior alone, no size pruning, the means'
# rate 1e-4 -> 1e-5 over the first 15%, mixed elevations, learned background) beside today's `vlm3d`, in ONE
# device call: the full step at 300k Gaussians (as `bench --preset vlm3d --weights random --reference --limit 1
# --steps 8 --warmup 2 --gaussians 300000`), the whole asset (as `bench --preset vlm3d --weights random --full
# --limit 1`) of both, and the eager reference's full step. One process: the models are built and compiled once.
#
# Usage (carry .whl):  bash benchmarks/gpu/recipe_cost.sh
#   env SET="strategy.grow_grad2d=0.1"  more overrides of the new recipe (KEY=YAML, space-separated)
#   env NO_COMPILE=1    both recipes without torch.compile: a cold inductor cache then costs nothing; step times
#                       are the eager-graph ones (both recipes alike), not the preset's
#   env PARTS=quick,full,ref (default; any subset)   env LIMIT_S=530 (the call's own budget, setup included)
# Expected on one H100, machine warm and inductor cache warm: load ~20 s, quick x3 ~60 s, full x2 ~2 x 190 s,
# reference ~40 s. A cold machine adds the gsplat build (~90 s) and a cold compile (minutes): parts that would end
# past LIMIT_S are skipped and listed under "skipped" in the JSON; run again on the warm machine for them
# (PARTS=full). Writes $OUT/recipe_cost/recipe_cost.json after each part.
. benchmarks/gpu/setup.sh > /tmp/setup.log 2>&1 || { tail -5 /tmp/setup.log; exit 1; }
tail -1 /tmp/setup.log
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
DEADLINE=$((${LIMIT_S:-530} - SECONDS - 15))
echo "setup took ${SECONDS} s; parts must end within ${DEADLINE} s"
timeout -s KILL $((DEADLINE + 40)) python3 benchmarks/gpu/recipe_cost.py --out "$OUT" --deadline-s "$DEADLINE" \
  --parts "${PARTS:-quick,full,ref}" ${NO_COMPILE:+--no-compile} ${SET:+--set $SET} 2>&1 \
  | grep -vE 'Warning|warn\(' | cut -c1-400
echo "exit ${PIPESTATUS[0]}"
