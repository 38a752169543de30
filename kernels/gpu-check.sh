#!/usr/bin/env bash
# GPU check, whole: configure (Release, sm_90), build, run smartkv-gpu-check,
# and leave one JSON file of results in OUT_DIR (plus the logs beside it).
#
#   kernels/gpu-check.sh OUT_DIR
#
# Stages: build; the device-code check (test/ptx-check.sh: PTX/SASS facts,
# no GPU needed); smartkv-gpu-check (checks, then timings; its JSON is
# rewritten after every record, so a timeout keeps what was measured); then,
# when compute-sanitizer exists, memcheck over the quick grid
# (OUT_DIR/gpu-check-memcheck.{json,log}, its verdict added to the log).
#
# Needs CMake >= 3.22, a C++17 compiler and nvcc (CUDA 12+; /usr/local/cuda
# is searched when nvcc is not on PATH). No network, no Node. Budget: under
# 5 minutes on a 16-core H200 machine, a few GB of device memory.
# Env: SMARTKV_GPU_BUILD (build dir), SMARTKV_CUDA_ARCH (default 90),
#      SMARTKV_GPU_QUICK=1 (smaller grid, headline timing only),
#      SMARTKV_GPU_MEMCHECK=0 (skip compute-sanitizer even where it exists).
set -uo pipefail

OUT_DIR=${1:?usage: kernels/gpu-check.sh OUT_DIR}
mkdir -p "$OUT_DIR" && OUT_DIR=$(cd "$OUT_DIR" && pwd)
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
BUILD=${SMARTKV_GPU_BUILD:-${TMPDIR:-/tmp}/smartkv-gpu-build}
ARCH=${SMARTKV_CUDA_ARCH:-90}
JSON="$OUT_DIR/gpu-check.json"
LOG="$OUT_DIR/gpu-check.log"
JOBS=$(nproc 2>/dev/null || echo 8)
START=$(date +%s)
rm -f "$JSON"

# A JSON file even when a stage fails: {"ok": false, "stage": ..., "log_tail": ...}
fail_json() {
  local stage=$1 file=$2
  local tail_text
  tail_text=$(tail -n 40 "$file" 2>/dev/null | sed -e 's/\\/\\\\/g' -e 's/"/\\"/g' -e 's/\t/ /g' | awk '{printf "%s\\n", $0}')
  printf '{\n"ok": false,\n"stage": "%s",\n"seconds": %d,\n"log_tail": "%s"\n}\n' \
    "$stage" "$(( $(date +%s) - START ))" "$tail_text" > "$JSON"
  echo "gpu-check: $stage failed; see $file and $JSON" >&2
  exit 1
}

{
  echo "== gpu-check $(date -u +%Y-%m-%dT%H:%M:%SZ) on $(hostname)"
  command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
  NVCC=$(command -v nvcc || echo /usr/local/cuda/bin/nvcc)
  "$NVCC" --version | tail -n 2
  cmake --version | head -n 1
} > "$LOG" 2>&1

GEN=()
command -v ninja >/dev/null && GEN=(-G Ninja)
[ -f "$BUILD/CMakeCache.txt" ] && GEN=()  # keep whatever generator the build dir has
echo "== configure" >> "$LOG"
cmake -S "$HERE" -B "$BUILD" ${GEN[@]+"${GEN[@]}"} -DCMAKE_BUILD_TYPE=Release -DSMARTKV_CUDA=ON \
  -DCMAKE_CUDA_ARCHITECTURES="$ARCH" >> "$LOG" 2>&1 || fail_json configure "$LOG"
echo "== build" >> "$LOG"
timeout 200 cmake --build "$BUILD" -j "$JOBS" --target smartkv-gpu-check >> "$LOG" 2>&1 || fail_json build "$LOG"
echo "== build done after $(( $(date +%s) - START )) s" >> "$LOG"

echo "== device-code check (ptx-check.sh)" >> "$LOG"
NVCC="$NVCC" timeout 60 bash "$HERE/test/ptx-check.sh" "$BUILD/ptx-check" >> "$LOG" 2>&1
PTX_RC=$?
echo "== device-code check exit $PTX_RC" >> "$LOG"

# compute-sanitizer: PATH, then beside nvcc. It slows kernels 10-100x, so it
# runs the quick grid's GPU checks only (no timings), with the time kept for it.
SAN=$(command -v compute-sanitizer || true)
[ -z "$SAN" ] && [ -x "$(dirname "$NVCC")/compute-sanitizer" ] && SAN=$(dirname "$NVCC")/compute-sanitizer
[ -z "$SAN" ] && [ -x /usr/local/cuda/bin/compute-sanitizer ] && SAN=/usr/local/cuda/bin/compute-sanitizer
[ "${SMARTKV_GPU_MEMCHECK:-1}" = 0 ] && SAN=""
SAN_BUDGET=0
[ -n "$SAN" ] && SAN_BUDGET=60

ARGS=(--json "$JSON")
[ "${SMARTKV_GPU_QUICK:-0}" = 1 ] && ARGS+=(--quick)
LEFT=$(( 285 - SAN_BUDGET - ($(date +%s) - START) ))
[ "$LEFT" -lt 30 ] && LEFT=30
echo "== run (limit ${LEFT} s)" >> "$LOG"
timeout "$LEFT" "$BUILD/cuda/smartkv-gpu-check" "${ARGS[@]}" 2>&1 | tee -a "$LOG"
RC=${PIPESTATUS[0]}
echo "== exit $RC after $(( $(date +%s) - START )) s" >> "$LOG"
[ -s "$JSON" ] || fail_json "run (exit $RC)" "$LOG"

if [ -n "$SAN" ]; then
  MLOG="$OUT_DIR/gpu-check-memcheck.log"
  MLEFT=$(( 290 - ($(date +%s) - START) ))
  [ "$MLEFT" -lt 30 ] && MLEFT=30
  echo "== memcheck: $SAN --tool memcheck, quick grid, GPU checks only (limit ${MLEFT} s)" >> "$LOG"
  timeout "$MLEFT" "$SAN" --tool memcheck --error-exitcode 86 --print-limit 20 \
    "$BUILD/cuda/smartkv-gpu-check" --quick --json "$OUT_DIR/gpu-check-memcheck.json" gpu_ > "$MLOG" 2>&1
  MRC=$?
  SUMMARY=$(grep -h "ERROR SUMMARY" "$MLOG" | tail -n 1)
  # errors are printed as they happen, so a run cut short still shows them
  NERR=$(grep -cE '^========= (Invalid|Program hit|Uninitialized|Race|Barrier|Error)' "$MLOG")
  echo "== memcheck exit $MRC: ${SUMMARY:-no summary (timed out after ${MLEFT} s)}; $NERR error reports" | tee -a "$LOG"
  # memory errors fail the run; a memcheck timeout without errors is reported, not failed
  { [ "$MRC" = 86 ] || [ "$NERR" -gt 0 ]; } && RC=1
else
  echo "== memcheck: compute-sanitizer not found, skipped" | tee -a "$LOG"
fi
[ "$PTX_RC" != 0 ] && echo "gpu-check: device-code check FAILED (see $LOG)" && RC=1
echo "gpu-check: results in $JSON (log: $LOG)"
exit "$RC"
