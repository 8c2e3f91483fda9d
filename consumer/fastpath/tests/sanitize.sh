#!/usr/bin/env bash
# The native decoder under AddressSanitizer and UndefinedBehaviorSanitizer (make test-native):
#   1. the pure-C units (lib/) through the C test driver (tests/driver.c);
#   2. the whole extension built with the sanitizers, driven by the Python differential and fuzz
#      tests (tests/unit/test_fastpath.py: Hypothesis-generated record batches, byte flips,
#      header bytes, transaction markers) - so the binding's own code is covered too.
# Any finding aborts with a report; the build goes to .artifacts/fastpath-sanitize (ignored).
set -euo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/../../.." && pwd)
cd "$repo"
here=consumer/fastpath
out=.artifacts/fastpath-sanitize
python=${PYTHON:-.venv/bin/python}
mkdir -p "$out"
flags=(-O1 -g -fsanitize=address,undefined -fno-sanitize-recover=all -fno-omit-frame-pointer)

echo "[sanitize] C units through tests/driver.c"
cc -std=c11 -Wall -Wextra -Werror "${flags[@]}" -I"$here/lib" "$here/tests/driver.c" "$here"/lib/*.c -o "$out/driver" -lm
"$out/driver"

echo "[sanitize] the extension under ASan + UBSan, driven by tests/unit/test_fastpath.py"
rm -rf "$out/ext" "$out/tmp"
(cd "$here" && CFLAGS="${flags[*]}" LDFLAGS="-fsanitize=address,undefined" \
  "$repo/$python" setup.py -q build_ext --build-lib "$repo/$out/ext" --build-temp "$repo/$out/tmp") >/dev/null
asan_runtime="$(cc -print-file-name=libasan.so) $(cc -print-file-name=libubsan.so)"
export LD_PRELOAD=$asan_runtime
# CPython's own allocations are not ours to report; what matters is reads and writes out of bounds.
export ASAN_OPTIONS=detect_leaks=0:abort_on_error=1 UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1
export PYTHONPATH=$repo/$out/ext IOT_REQUIRE_FASTPATH=1
"$python" -c "import iot_fastpath, sys; sys.exit(0 if iot_fastpath.__file__.startswith('$repo/$out/ext') else 'the sanitizer build was not the one imported: ' + iot_fastpath.__file__)"
"$python" -m pytest -q -p no:cacheprovider tests/unit/test_fastpath.py
