#!/usr/bin/env bash
# Test-only sanitizer builds of the C core's scanner (driven by tests/test_fuzz_native.py).
#   tests/fuzz/build.sh OUTDIR            -> OUTDIR/scan_fuzz (ASan+UBSan, gcc or clang)
#                                            OUTDIR/scan_libfuzzer (only when clang works)
# Exit 0 when scan_fuzz was built; 77 when no compiler/sanitizer runtime is available.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
native="$here/../../native"
out="${1:?usage: build.sh OUTDIR}"
mkdir -p "$out"
srcs=("$native/format.c" "$native/crc32c.c" "$native/sys.c")
flags=(-std=c11 -D_GNU_SOURCE -g -O1 -fno-omit-frame-pointer -I"$native"
       -fsanitize=address,undefined -fno-sanitize-recover=all)
cc="${CC:-}"
if [ -z "$cc" ]; then
  for c in clang gcc cc; do
    if command -v "$c" >/dev/null 2>&1; then cc="$c"; break; fi
  done
fi
[ -n "$cc" ] || { echo "no C compiler"; exit 77; }
probe="$out/probe.c"
echo 'int main(void){return 0;}' > "$probe"
if ! "$cc" "${flags[@]}" "$probe" -o "$out/probe" 2>"$out/probe.err" || ! "$out/probe"; then
  echo "$cc cannot build with -fsanitize=address,undefined: $(head -c 300 "$out/probe.err")"
  exit 77
fi
"$cc" "${flags[@]}" "$here/scan_fuzz.c" "${srcs[@]}" -lpthread -o "$out/scan_fuzz"
echo "built $out/scan_fuzz with $cc"
if command -v clang >/dev/null 2>&1; then
  if clang "${flags[@]}" -fsanitize=fuzzer -DLIBFUZZER "$here/scan_fuzz.c" "${srcs[@]}" \
       -lpthread -o "$out/scan_libfuzzer" 2>"$out/libfuzzer.err"; then
    echo "built $out/scan_libfuzzer with clang"
  else
    echo "clang present but no libFuzzer runtime: $(head -c 300 "$out/libfuzzer.err")"
  fi
fi
