#!/usr/bin/env bash
# Device-code check, no GPU needed: compiles the attention kernels to PTX with
# the installed nvcc, assembles that PTX with ptxas -v for sm_90, and asserts
# what the device code must contain. The host emulator (gpu-emulate.cc) runs
# the host branch of every `#if __CUDA_ARCH__`; this is what sees the other.
#
#   kernels/test/ptx-check.sh [WORK_DIR]
#
# Per kernel (one .entry of the PTX, one "Compiling entry function" of ptxas):
#   attend_partials_kernel<D,QT>  128-bit read-only global loads
#                                 (ld.global.nc.v4) are present: key rows are
#                                 read 16 bytes at a time through __ldg; and
#                                 cp.async (global -> shared) with its wait:
#                                 the value tiles are copied asynchronously
#   every kernel checked          no local memory in the PTX (.local / ld.local
#                                 / st.local), ptxas: 0 bytes of stack frame,
#                                 spill stores and spill loads; registers at
#                                 or under what the launch bound allows
#                                 (65536 / (maxntid * minnctapersm), rounded
#                                 down to ptxas' allocation unit of 8, <= 255)
# Exit 0: all hold. Exit 1: an assertion failed (each is printed). Exit 0
# with "SKIP" when nvcc or ptxas is absent (the CPU-only install).
# Env: NVCC (compiler), SMARTKV_CUDA_ARCH (default 90), PTX_CHECK_VERBOSE=1
#      (print the per-kernel table even when everything passes).
set -uo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
KERNELS=$(cd "$HERE/.." && pwd)
ARCH=${SMARTKV_CUDA_ARCH:-90}

NVCC=${NVCC:-}
if [ -z "$NVCC" ]; then
  NVCC=$(command -v nvcc 2>/dev/null || true)
  [ -z "$NVCC" ] && [ -x /usr/local/cuda/bin/nvcc ] && NVCC=/usr/local/cuda/bin/nvcc
fi
if [ -z "$NVCC" ] || [ ! -x "$NVCC" ]; then
  echo "ptx-check: SKIP: nvcc not found (NVCC=${NVCC:-unset}, PATH, /usr/local/cuda/bin); the device code was not checked"
  exit 0
fi
PTXAS=$(dirname "$NVCC")/ptxas
[ -x "$PTXAS" ] || PTXAS=$(command -v ptxas 2>/dev/null || true)
if [ -z "$PTXAS" ] || [ ! -x "$PTXAS" ]; then
  echo "ptx-check: SKIP: ptxas not found beside $NVCC; the device code was not checked"
  exit 0
fi

WORK=${1:-}
if [ -z "$WORK" ]; then
  WORK=$(mktemp -d "${TMPDIR:-/tmp}/smartkv-ptx-check.XXXXXX")
  trap 'rm -rf "$WORK"' EXIT
fi
mkdir -p "$WORK"

# The flags of kernels/cuda/CMakeLists.txt that shape device code.
FLAGS=(-std=c++17 -O3 -arch=sm_$ARCH -I"$KERNELS/include" -I"$KERNELS/src" -I"$KERNELS/cuda")
# file : which kernels must show 128-bit read-only loads (an awk regex on the
# mangled entry name; "-" for none)
UNITS=(
  "attend-d64.cu:attend_partials_kernel"
  "attend-d128.cu:attend_partials_kernel"
  "attend-d256.cu:attend_partials_kernel"
  "attend-merge.cu:-"
  "query-prep.cu:-"
)

fail=0
pids=()
for u in "${UNITS[@]}"; do
  f=${u%%:*}
  base=${f%.cu}
  (
    "$NVCC" "${FLAGS[@]}" -ptx "$KERNELS/cuda/$f" -o "$WORK/$base.ptx" > "$WORK/$base.nvcc.log" 2>&1 &&
      "$PTXAS" -arch=sm_$ARCH -v "$WORK/$base.ptx" -o "$WORK/$base.cubin" > "$WORK/$base.ptxas.log" 2>&1
  ) &
  pids+=($!)
done
i=0
for u in "${UNITS[@]}"; do
  f=${u%%:*}
  if ! wait "${pids[$i]}"; then
    echo "ptx-check: FAIL: $f did not compile to sm_$ARCH PTX/SASS:"
    tail -n 20 "$WORK/${f%.cu}.nvcc.log" "$WORK/${f%.cu}.ptxas.log" 2>/dev/null
    fail=1
  fi
  i=$((i + 1))
done
[ "$fail" = 0 ] || exit 1

# One line per kernel: name v4nc local maxntid minncta (from the PTX), then
# regs stack spill_st spill_ld (from ptxas), joined on the entry name.
for u in "${UNITS[@]}"; do
  f=${u%%:*}
  need=${u#*:}
  base=${f%.cu}
  awk -v need="$need" -v unit="$f" '
    FNR == 1 { file++ }
    # PTX: split by .entry; count loads and local memory inside each body.
    file == 1 && /^\.(visible )?\.?entry / || (file == 1 && /\.entry /) {
      name = $0; sub(/.*\.entry[ \t]+/, "", name); sub(/[( \t].*/, "", name)
      cur = name; order[++n] = name; v4[name] = 0; loc[name] = 0; ntid[name] = 0; ncta[name] = 0
      cpa[name] = 0; cpw[name] = 0
      next
    }
    file == 1 && cur != "" {
      if ($0 ~ /ld\.global\.nc\.v4\./) v4[cur]++
      if ($0 ~ /cp\.async\.c[ag]\.shared\.global/) cpa[cur]++
      if ($0 ~ /cp\.async\.wait_(all|group)/) cpw[cur]++
      if ($0 ~ /(^|[ \t])\.local[ \t]|ld\.local|st\.local/) loc[cur]++
      if ($0 ~ /\.maxntid/) { t = $0; sub(/.*\.maxntid[ \t]+/, "", t); sub(/,.*/, "", t); ntid[cur] = t + 0 }
      if ($0 ~ /\.minnctapersm/) { t = $0; sub(/.*\.minnctapersm[ \t]+/, "", t); ncta[cur] = t + 0 }
    }
    # ptxas -v: "Compiling entry function NAME", then frame/spill and register lines.
    file == 2 && /Compiling entry function/ { e = $0; sub(/.*function .?/, "", e); sub(/. for .*/, "", e); pe = e; next }
    file == 2 && pe != "" && /bytes stack frame/ {
      match($0, /[0-9]+ bytes stack frame/); stack[pe] = substr($0, RSTART, RLENGTH) + 0
      match($0, /[0-9]+ bytes spill stores/); sst[pe] = substr($0, RSTART, RLENGTH) + 0
      match($0, /[0-9]+ bytes spill loads/); sld[pe] = substr($0, RSTART, RLENGTH) + 0
    }
    file == 2 && pe != "" && /Used [0-9]+ registers/ {
      match($0, /Used [0-9]+ registers/); t = substr($0, RSTART + 5, RLENGTH - 5); regs[pe] = t + 0
    }
    END {
      for (k = 1; k <= n; k++) {
        e = order[k]
        want_v4 = (need != "-" && e ~ need) ? 1 : 0
        cap = 255
        if (ntid[e] > 0) {
          m = ncta[e] > 0 ? ncta[e] : 1
          c = int(65536 / (ntid[e] * m)); c = c - c % 8; if (c < cap) cap = c
        }
        printf "%s %s %d %d %d %d %d %d %d %d %d %d %d\n", unit, e, want_v4, v4[e], loc[e], \
          (e in regs) ? regs[e] : -1, cap, stack[e] + 0, sst[e] + 0, sld[e] + 0, ncta[e] + 0, cpa[e] + 0, cpw[e] + 0
      }
    }' "$WORK/$base.ptx" "$WORK/$base.ptxas.log"
done > "$WORK/kernels.txt"

if [ ! -s "$WORK/kernels.txt" ]; then
  echo "ptx-check: FAIL: no kernel entries found in the PTX (the parse is out of date?)"
  exit 1
fi

demangle() { if command -v c++filt >/dev/null; then c++filt "$1" | sed -e 's/(anonymous namespace):://' -e 's/smartkv::cuda::\(attend_detail::\)\{0,1\}//' -e 's/(.*//'; else echo "$1"; fi; }

n_partials=0
table=""
while read -r unit name want_v4 v4 loc regs cap stack sst sld ncta cpa cpw; do
  short=$(demangle "$name")
  row=$(printf '  %-16s %-40s regs %3s/%3s  v4.nc %3s  cp.async %3s  local %s  stack %s  spill %s/%s' \
    "$unit" "$short" "$regs" "$cap" "$v4" "$cpa" "$loc" "$stack" "$sst" "$sld")
  table+="$row"$'\n'
  bad=()
  [ "$want_v4" = 1 ] && n_partials=$((n_partials + 1))
  [ "$want_v4" = 1 ] && [ "$v4" -eq 0 ] &&
    bad+=("no 128-bit read-only global loads (ld.global.nc.v4): K/V rows are not read through __ldg")
  [ "$want_v4" = 1 ] && { [ "$cpa" -eq 0 ] || [ "$cpw" -eq 0 ]; } &&
    bad+=("no cp.async global->shared copies with a wait ($cpa copies, $cpw waits): the value tiles are not loaded asynchronously")
  [ "$loc" -ne 0 ] && bad+=("$loc local-memory instructions in the PTX")
  [ "$regs" -lt 0 ] && bad+=("no ptxas register report for it")
  [ "$regs" -gt "$cap" ] && bad+=("$regs registers over the launch bound's $cap")
  [ "$stack" -ne 0 ] && bad+=("$stack bytes of stack frame")
  [ "$sst" -ne 0 ] || [ "$sld" -ne 0 ] && bad+=("spills: $sst bytes stored, $sld bytes loaded")
  for b in "${bad[@]+"${bad[@]}"}"; do
    echo "ptx-check: FAIL: $unit $short: $b"
    fail=1
  done
done < "$WORK/kernels.txt"

# Every head_dim x query tile (3 x 4, less D=256 QT=8) must be seen, or the parse broke.
if [ "$n_partials" -ne 11 ]; then
  echo "ptx-check: FAIL: expected 11 attend_partials_kernel instantiations (3 head dims x 4 query tiles, no 8-slot tile at 256), found $n_partials"
  fail=1
fi

if [ "$fail" != 0 ] || [ "${PTX_CHECK_VERBOSE:-0}" = 1 ]; then
  echo "ptx-check: sm_$ARCH, $("$NVCC" --version | grep -o 'release [0-9.]*')"
  printf '%s' "$table"
fi
if [ "$fail" != 0 ]; then
  echo "ptx-check: FAILED"
  exit 1
fi
echo "ptx-check: passed ($(wc -l < "$WORK/kernels.txt") kernels, sm_$ARCH: 128-bit read-only loads and cp.async value tiles in all $n_partials attention partials kernels, no local memory, no spills, registers within launch bounds)"
