#!/usr/bin/env bash
# The AVX-512 files (smartkv_kernels_avx512) are compiled with -mavx512*, so
# their copies of inline code shared with the generic objects (std::vector
# members, header helpers: weak symbols) hold AVX-512 instructions. The linker
# keeps one copy of each; if it keeps theirs, generic code faults on a CPU
# without AVX-512 (it did: std::vector<float>::assign in cpu_engine). This
# checks, in each linked binary, that no weak symbol defined in both kinds of
# object holds an AVX-512 instruction (zmm or mask registers, xmm/ymm16-31).
#
#   kernels/test/simd-link-check.sh BUILD_DIR BINARY...
#
# Skips (exit 0) when binutils or the build is absent.
set -uo pipefail
BUILD=${1:?usage: simd-link-check.sh BUILD_DIR BINARY...}
shift
for tool in nm objdump; do
  command -v "$tool" >/dev/null || { echo "SKIP: $tool not found"; exit 0; }
done
# An object is an AVX-512 one if its code uses zmm registers (by content, not
# by directory, so a fast-path file moved back into the generic archive counts).
AVX=() GEN=()
while IFS= read -r o; do
  # grep -c reads to the end: grep -q would close the pipe early, and under
  # pipefail objdump's SIGPIPE would turn a match into a miss.
  if [ "$(objdump -d --no-show-raw-insn "$o" 2>/dev/null | grep -c '%zmm')" -gt 0 ]; then AVX+=("$o"); else GEN+=("$o"); fi
done < <(find "$BUILD" \( -path '*smartkv_kernels*.dir*' -o -path '*smartkv_cuda.dir*' \) -name '*.cc.o')
[ "${#AVX[@]}" -gt 0 ] && [ "${#GEN[@]}" -gt 0 ] || { echo "SKIP: no kernel objects under $BUILD"; exit 0; }

weak() { nm "$@" 2>/dev/null | awk '$2 == "W" { print $3 }' | sort -u; }
mapfile -t SHARED < <(comm -12 <(weak "${AVX[@]}") <(weak "${GEN[@]}"))
echo "weak symbols in both AVX-512 and generic objects: ${#SHARED[@]}"
bad=0
for bin in "$@"; do
  [ -f "$bin" ] || { echo "SKIP: $bin not built"; continue; }
  n=0
  for sym in "${SHARED[@]}"; do
    if [ "$(objdump -d --no-show-raw-insn --disassemble="$sym" "$bin" 2>/dev/null |
        grep -cE '%zmm|%k[1-7]|%[xy]mm(1[6-9]|2[0-9]|3[01])')" -gt 0 ]; then
      echo "FAIL: $bin keeps the AVX-512 copy of $(echo "$sym" | c++filt 2>/dev/null || echo "$sym")"
      n=$((n + 1))
    fi
  done
  echo "$bin: ${#SHARED[@]} shared symbols, $n with AVX-512 code"
  bad=$((bad + n))
done
[ "$bad" -eq 0 ]
