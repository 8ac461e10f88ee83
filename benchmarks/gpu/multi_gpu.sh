# Multi-GPU runs for issue 9 on a machine with N >= 2 GPUs (nvidia-h200-x2 / -x4 / -x8), random full-size
# weights (vlm3d: MVDream-size UNet + Qwen2.5-VL-7B), results as JSON under $OUT/multi_gpu/.
#
# Usage: bash benchmarks/gpu/multi_gpu.sh SECTION   (one device call per section keeps each under 10 min)
#   tests      the 2-GPU CUDA tests (split vs single placement, graph and eager) and the CPU torchrun tests
#   bench      splatvlm bench prompts/hour: 1 GPU (plain, as before) vs N GPUs (torchrun --nproc-per-node N)
#   batch      a short real batch generate (--steps $STEPS) on 1 vs N GPUs: batch_report.json prompts/hour
#   placement  one asset's step time and peak memory: one GPU vs --placement split over 2 GPUs
#   all        every section (over 10 min: only where the call limit allows)
# Env: N (processes/GPUs, default all), LIMIT (bench prompts, default 12 = the shipped set), BATCH (batch prompts,
# default 8), STEPS (batch steps per prompt, default 200).
# Both prompts/hour figures divide by the whole wall time, so each process's model loading and first-prompt
# compilation/graph capture count against it: few prompts per GPU understate the scaling (see *_per_prompt_s).
#
# Multi-node (not run here; --out-dir on a filesystem every node sees), on each of 2 nodes:
#   torchrun --nnodes 2 --node-rank $NODE --nproc-per-node 8 --rdzv-backend c10d --rdzv-endpoint $HOST:29500 \
#     -m splatvlm.cli generate --prompts prompts.json --out-dir /shared/run --preset vlm3d
# A re-run of the same command (any --nnodes/--nproc-per-node) runs only the prompts without summary.json.
. benchmarks/gpu/setup.sh || exit 1
N=${N:-$(python3 -c "import torch; print(torch.cuda.device_count())")}
LIMIT=${LIMIT:-12}
BATCH=${BATCH:-8}
STEPS=${STEPS:-200}
O=$OUT/multi_gpu
mkdir -p "$O"
RUN="python3 -m torch.distributed.run --standalone"
SECTION=${1:-all}
echo "multi_gpu.sh $SECTION: N=$N LIMIT=$LIMIT BATCH=$BATCH STEPS=$STEPS"
nvidia-smi --query-gpu=index,name,memory.total --format=csv,noheader | tee "$O/gpus.txt"

if [ "$SECTION" = tests ] || [ "$SECTION" = all ]; then
  timeout 500 python3 -m pytest -q -p no:cacheprovider tests/test_distributed.py -s -rs 2>&1 | tee "$O/tests.log" | grep -E "split vs single|passed|failed|skipped|Error" | tail -20
fi

if [ "$SECTION" = bench ] || [ "$SECTION" = all ]; then
  B="--preset vlm3d --weights random --limit $LIMIT --steps 5 --warmup 2"
  rm -rf "$O/bench_1gpu" "$O/bench_${N}gpu"
  CUDA_VISIBLE_DEVICES=0 timeout 250 python3 -m splatvlm.cli bench $B -o "$O/bench_1gpu" 2>&1 | grep -E "full step|prompts/hour|asset|error" | tail -5
  timeout 200 $RUN --nproc-per-node "$N" -m splatvlm.cli bench $B -o "$O/bench_${N}gpu" 2>&1 | grep -E "full step|prompts/hour|asset|error|Error" | tail -8
fi

if [ "$SECTION" = batch ] || [ "$SECTION" = all ]; then
  G="--preset vlm3d --sds.model random --vlm.model random-7b --steps $STEPS --turntable-frames 0 --checkpoint-every 0"
  python3 -c "import json; json.dump(json.load(open('src/splatvlm/data/bench_prompts.json'))[:$BATCH], open('$O/prompts.json', 'w'))"
  rm -rf "$O/batch_1gpu" "$O/batch_${N}gpu"
  mkdir -p "$O/batch_1gpu" "$O/batch_${N}gpu"
  # torchrun with one process writes the same batch_report.json as N processes.
  CUDA_VISIBLE_DEVICES=0 timeout 250 $RUN --nproc-per-node 1 -m splatvlm.cli generate --prompts "$O/prompts.json" --out-dir "$O/batch_1gpu" $G 2>&1 | grep -E "^batch over|error|Error" | tail -4
  timeout 200 $RUN --nproc-per-node "$N" -m splatvlm.cli generate --prompts "$O/prompts.json" --out-dir "$O/batch_${N}gpu" $G 2>&1 | grep -E "^batch over|error|Error" | tail -6
  cp "$O/batch_${N}gpu/batch_report.json" "$O/batch_${N}gpu_report.json"
  # Re-run on N GPUs: nothing is pending, so no prompt runs again (its report: every prompt already_done).
  timeout 100 $RUN --nproc-per-node "$N" -m splatvlm.cli generate --prompts "$O/prompts.json" --out-dir "$O/batch_${N}gpu" $G 2>&1 | grep -E "^batch over" | tail -2
fi

if [ "$SECTION" = placement ] || [ "$SECTION" = all ]; then
  P="--preset vlm3d --weights random --limit 1 --steps 10 --warmup 3"
  rm -rf "$O/place_single" "$O/place_split"
  CUDA_VISIBLE_DEVICES=0,1 timeout 250 python3 -m splatvlm.cli bench $P -o "$O/place_single" 2>&1 | grep -E "full step|asset|error" | tail -3
  CUDA_VISIBLE_DEVICES=0,1 timeout 250 python3 -m splatvlm.cli bench $P --placement split -o "$O/place_split" 2>&1 | grep -E "full step|asset|error" | tail -3
fi

# One summary of whatever ran.
python3 - "$O" "$N" <<'PY'
import json, sys
from pathlib import Path

o, n = Path(sys.argv[1]), int(sys.argv[2])
def load(path):
    p = o / path
    return json.loads(p.read_text()) if p.is_file() else None
out = {"gpus": (o / "gpus.txt").read_text().strip().splitlines(), "n": n}
b1, bn = load("bench_1gpu/report.json"), load(f"bench_{n}gpu/report.json")
if b1 and bn:
    out["bench"] = {
        "prompts": len(bn["ours"]["prompts"]),
        "prompts_per_hour_1gpu": b1["prompts_per_hour"], f"prompts_per_hour_{n}gpu": bn["prompts_per_hour"],
        "scaling": bn["prompts_per_hour"] / b1["prompts_per_hour"], "ideal": n,
        "full_step_ms_1gpu": b1["full_step_ms"], f"full_step_ms_{n}gpu": bn["full_step_ms"],
        "asset_s_1gpu": b1["asset_s"], f"asset_s_{n}gpu": bn["asset_s"],
        "load_s_per_rank": bn["load_s_per_rank"], "wall_s_1gpu": b1["bench_wall_s"], f"wall_s_{n}gpu": bn["bench_wall_s"],
        "per_prompt_s_1gpu": [round(r["bench_wall_s"], 2) for r in b1["ours"]["prompts"]],
        f"per_prompt_s_{n}gpu": [round(r["bench_wall_s"], 2) for r in bn["ours"]["prompts"]],
    }
g1, gn = load("batch_1gpu/batch_report.json"), load(f"batch_{n}gpu_report.json")
if g1 and gn:
    out["batch"] = {
        "prompts": g1["num_prompts"],
        "statuses_1gpu": [e["status"] for e in g1["prompts"]], f"statuses_{n}gpu": [e["status"] for e in gn["prompts"]],
        "prompts_per_hour_1gpu": g1["prompts_per_hour"], f"prompts_per_hour_{n}gpu": gn["prompts_per_hour"],
        "wall_s_1gpu": g1["wall_s"], f"wall_s_{n}gpu": gn["wall_s"], "shards": gn["shards"],
        "per_prompt_s_1gpu": [e["seconds"] for e in g1["prompts"]], f"per_prompt_s_{n}gpu": [e["seconds"] for e in gn["prompts"]],
        "devices": gn["devices"],
    }
    rerun = load(f"batch_{n}gpu/batch_report.json")
    if rerun is not None:
        out["batch"]["rerun_statuses"] = [e["status"] for e in rerun["prompts"]]

s, p = load("place_single/report.json"), load("place_split/report.json")
if s and p:
    out["placement"] = {
        "full_step_ms_single": s["full_step_ms"], "full_step_ms_split": p["full_step_ms"],
        "split_over_single": p["full_step_ms"] / s["full_step_ms"],
        "per_component_ms_single": s["per_component_ms"], "per_component_ms_split": p["per_component_ms"],
        "peak_gb_single": s["peak_gb"], "peak_gb_split_prior_gpu": p["peak_gb"],
        "peak_gb_split_reward_gpu": p.get("vlm_device_peak_gb"), "devices_split": p["devices"],
    }
(o / "summary.json").write_text(json.dumps(out, indent=2))
print(json.dumps(out, indent=2))
PY
