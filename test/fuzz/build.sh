#!/usr/bin/env bash
# test/fuzz/build.sh - builds loom's libFuzzer targets with clang, ASan and
# UBSan (not part of the main CMake build):
#   fuzz_resp  the RESP parser of examples/redis_server.lua     (resp.lua)
#   fuzz_http  the HTTP parser of examples/http_server.lua      (http.lua)
#   fuzz_addr  hosts, ports and option tables of tcp/udp/dns    (addr.lua)
#   fuzz_ops   bytes -> spawn/channel/timer/kill/select/... programs (ops.lua)
# Each is test/fuzz/fuzz_lua.c (the public C API: loom_new, loom_state,
# loom_close) compiled around its Lua driver. loom itself is built with
# -fsanitize=fuzzer-no-link so that libFuzzer sees its coverage.
#   test/fuzz/build.sh            -> build-fuzz/fuzz_*
#   FUZZ_BUILD=dir test/fuzz/build.sh
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
OUT=${FUZZ_BUILD:-$ROOT/build-fuzz}
TARGETS=${FUZZ_TARGETS:-"resp http addr ops"}

cmake -S "$ROOT" -B "$OUT" -DCMAKE_C_COMPILER=clang -DLOOM_SANITIZE=ON -DLOOM_WERROR=OFF \
  -DCMAKE_BUILD_TYPE=Debug -DBUILD_TESTING=OFF \
  -DCMAKE_C_FLAGS="-fsanitize=fuzzer-no-link" >"$OUT.cmake.log" 2>&1 ||
  { cat "$OUT.cmake.log"; exit 1; }
cmake --build "$OUT" --target loom_static -j"$(nproc)" >"$OUT.build.log" 2>&1 ||
  { tail -30 "$OUT.build.log"; exit 1; }

LUA_A=$(find /usr/lib -name liblua5.4.a 2>/dev/null | head -1)
for t in $TARGETS; do
  clang -g -O1 -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=undefined \
    -I"$ROOT/include" $(pkg-config --cflags lua5.4 libuv) \
    -DLOOM_FUZZ_DRIVER="\"$ROOT/test/fuzz/$t.lua\"" -DLOOM_FUZZ_ROOT="\"$ROOT\"" \
    "$ROOT/test/fuzz/fuzz_lua.c" "$OUT/libloom.a" "${LUA_A:-/usr/lib/x86_64-linux-gnu/liblua5.4.a}" \
    $(pkg-config --libs libuv) -lm -ldl -lpthread -o "$OUT/fuzz_$t"
  echo "built $OUT/fuzz_$t"
done
