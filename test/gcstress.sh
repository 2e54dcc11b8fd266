#!/usr/bin/env bash
# test/gcstress.sh [SPEC...] - the busted suite with the garbage collector
# running (almost) all the time, to shake out objects that loom forgets to
# anchor: a box collected while libuv still uses it, a tasklet collected
# while it waits, a string freed under a pending write. Default:
#   LUA_INIT='collectgarbage("incremental", 1, 400, 8)'
# pause 1 starts a new cycle as soon as one ends (0 would mean "keep the
# default"), step multiplier 400 with a step every 2^8 bytes finishes a full
# cycle about every 50 allocations: allocation-heavy code runs ~60x slower.
# The extreme ("incremental", 1, 1000, 0), a cycle per allocation, runs
# ~3000x slower: use it on single specs through GCSTRESS_INIT.
# Child processes started by specs inherit LUA_INIT: they run stressed too.
# Prints "N passed, M failed"; exits non-zero on a failure.
#   LOOM_BUILD=build-rel test/gcstress.sh          (all of spec/)
#   GCSTRESS_INIT='collectgarbage("generational", 1, 1)' test/gcstress.sh
# Running the ASan build here (LOOM_BUILD=build-asan) turns a use after
# free into a report instead of luck.
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
BUILD=${LOOM_BUILD:-build}
BIN=$ROOT/$BUILD/loom
LOG=${LOG:-$ROOT/$BUILD/gcstress-logs}
INIT=${GCSTRESS_INIT:-'collectgarbage("incremental", 1, 400, 8)'}
mkdir -p "$LOG"
[[ -x $BIN ]] || { echo "no $BIN (set LOOM_BUILD)"; echo "0 passed, 1 failed"; exit 1; }

if (($# > 0)); then SPECS=("$@"); else SPECS=(spec/*_spec.lua); fi

PASSED=0
FAILED=0
for spec in "${SPECS[@]}"; do
  name=$(basename "$spec" .lua)
  env LUA_INIT="$INIT" LOOM_BIN="$BIN" timeout -k 10 "${GCSTRESS_TIMEOUT:-1200}" \
    "$BIN" /usr/bin/busted -o TAP --exclude-tags=stock "$spec" >"$LOG/$name.tap" 2>"$LOG/$name.err"
  rc=$?
  ok=$(grep -cE '^ok ' "$LOG/$name.tap" || true)
  notok=$(grep -cE '^not ok ' "$LOG/$name.tap" || true)
  if ((ok + notok == 0)) && grep -qE '^1\.\.0' "$LOG/$name.tap"; then
    : # every test of the file is excluded here (tagged "stock")
  elif ((ok + notok == 0)); then
    notok=1
    echo "gcstress: $spec ran no test (exit $rc); see $LOG/$name.err" >&2
  elif ! grep -qE '^1\.\.[0-9]+' "$LOG/$name.tap"; then
    # busted died before its plan line: a crash
    notok=$((notok + 1))
    echo "gcstress: $spec did not finish (exit $rc)" >&2
  fi
  if grep -qE 'ERROR: AddressSanitizer|runtime error:' "$LOG/$name.err"; then
    notok=$((notok + 1))
    echo "gcstress: $spec: sanitizer report in $LOG/$name.err" >&2
  fi
  PASSED=$((PASSED + ok))
  FAILED=$((FAILED + notok))
  echo "$spec: $ok passed, $notok failed" >&2
done
echo "$PASSED passed, $FAILED failed"
((FAILED == 0))
