#!/usr/bin/env bash
# test/allocfail.sh [SCENARIO...] - the allocation-failure sweep of
# test/fuzz/allocfail.c: for k = 1, 2, 3, ... each scenario runs with its
# k-th allocation failing (Lua's, loom's and libuv's allocations all count),
# until it runs to its end; each k must end in success or "not enough
# memory", never a crash, hang or leak (ASan + LeakSanitizer, one forked
# child per k). Scenarios: spawn channel deferred tcp fs new. ALLOCFAIL_UV=1
# also fails libuv's allocations (libuv aborts on some of them: external).
# (A C test under CTest would need test/CMakeLists.txt's list of areas, which
# another engineer owns; this has its own build, like test/fuzz/.)
#   test/allocfail.sh                   all scenarios
#   ALLOCFAIL_STRIDE=7 test/allocfail.sh tcp
# Prints one line per scenario and "N passed, M failed" (a scenario passes
# when no k crashed, hung or leaked; "odd" outcomes - an error that is not
# about memory - are listed but do not fail it).
set -uo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
OUT=${ALLOCFAIL_BUILD:-$ROOT/build-allocfail}
SCEN=("$@")
((${#SCEN[@]})) || SCEN=(new spawn channel deferred tcp fs)

cmake -S "$ROOT" -B "$OUT" -DLOOM_SANITIZE=ON -DLOOM_WERROR=OFF -DCMAKE_BUILD_TYPE=Debug \
  -DBUILD_TESTING=OFF >"$OUT.cmake.log" 2>&1 || { cat "$OUT.cmake.log"; echo "0 passed, 1 failed"; exit 1; }
cmake --build "$OUT" --target loom_static -j"$(nproc)" >"$OUT.build.log" 2>&1 ||
  { tail -30 "$OUT.build.log"; echo "0 passed, 1 failed"; exit 1; }
LUA_A=$(find /usr/lib -name liblua5.4.a 2>/dev/null | head -1)
cc -g -O1 -fsanitize=address,undefined -fno-omit-frame-pointer -I"$ROOT/include" \
  $(pkg-config --cflags lua5.4 libuv) "$ROOT/test/fuzz/allocfail.c" "$OUT/libloom.a" "$LUA_A" \
  $(pkg-config --libs libuv) -lm -ldl -lpthread \
  -Wl,--wrap=malloc,--wrap=calloc,--wrap=realloc -o "$OUT/allocfail" ||
  { echo "0 passed, 1 failed"; exit 1; }

PASSED=0
FAILED=0
for s in "${SCEN[@]}"; do
  log="$OUT/allocfail_$s.log"
  ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1:allocator_may_return_null=1} \
    timeout -k 10 "${ALLOCFAIL_TIMEOUT:-1800}" "$OUT/allocfail" "$s" 1 -1 "${ALLOCFAIL_STRIDE:-0}" \
    >"$log" 2>"$log.err"
  rc=$?
  grep -vE '^$' "$log" | grep -E 'CRASH|LEAK|HANG|odd' | head -10
  tail -1 "$log"
  if ((rc == 0)); then PASSED=$((PASSED + 1)); else FAILED=$((FAILED + 1)); fi
done
echo "$PASSED passed, $FAILED failed"
((FAILED == 0))
