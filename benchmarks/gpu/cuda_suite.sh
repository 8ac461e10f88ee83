# One device call: the whole CUDA test suite (`pytest -m cuda tests`) with every test's duration, inside the
# call's limit (8 minutes by default, the machine's setup included; BUDGET_S to change it). If the suite runs
# long it gets SIGINT first, so pytest still prints its summary and the durations of the tests that ran.
# Writes $OUT/cuda_suite.log (the whole output) and $OUT/cuda_suite_summary.txt (device, date, versions, the
# summary line, the failures and the durations) and prints the summary file.
# Usage (carry .whl): bash benchmarks/gpu/cuda_suite.sh
BUDGET_S=${BUDGET_S:-480}
. benchmarks/gpu/setup.sh > /tmp/setup.log 2>&1 || { tail -5 /tmp/setup.log; exit 1; }
tail -1 /tmp/setup.log
mkdir -p "$OUT"
LEFT=$((BUDGET_S - SECONDS - 30))  # 30 s for pytest's summary and the copy back
echo "setup took ${SECONDS} s; the suite gets ${LEFT} s"
START=$SECONDS
# One worker per test file (pytest-xdist, --dist loadfile): a file's tests share its built models, and the files
# overlap their compiles and model builds, which are mostly CPU work. WORKERS=0: one process.
WORKERS=${WORKERS:-4}
PAR=""
[ "$WORKERS" -gt 0 ] && PAR="-n $WORKERS --dist loadfile"
CMD="pytest -m cuda tests -p no:cacheprovider -v -rfEs --durations=0 --durations-min=0.5 $PAR"
timeout -s INT -k 20 "$LEFT" python3 -m $CMD > "$OUT/cuda_suite.log" 2>&1
RC=$?
{
  echo "device: $(python3 -c 'import torch; print(torch.cuda.get_device_name(), torch.cuda.device_count(), "GPU(s)")')"
  echo "date: $(date -u +%Y-%m-%dT%H:%MZ)   versions: $(python3 -c 'import torch, transformers, diffusers; print("torch", torch.__version__, "transformers", transformers.__version__, "diffusers", diffusers.__version__)')"
  echo "command: $CMD"
  case "$RC" in 124|137) CUT=" (cut by the time budget)" ;; *) CUT="" ;; esac
  echo "pytest exit code: ${RC}${CUT}; suite wall: $((SECONDS - START)) s of ${LEFT} s"
  [ -n "$CUT" ] && { echo "the log's last lines when cut:"; grep -E "(PASSED|FAILED|ERROR|SKIPPED)" "$OUT/cuda_suite.log" | tail -4; }
  grep -E "^=+ .*(passed|failed|error|skipped|deselected).* =+$" "$OUT/cuda_suite.log" | tail -1
  echo
  sed -n '/short test summary info/,$p' "$OUT/cuda_suite.log" | grep -E "^(FAILED|ERROR|SKIPPED)"
  echo
  sed -n '/slowest durations/,$p' "$OUT/cuda_suite.log" | grep -E "^[0-9.]+s (setup|call|teardown) "
} > "$OUT/cuda_suite_summary.txt"
cat "$OUT/cuda_suite_summary.txt"
