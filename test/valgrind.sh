#!/usr/bin/env bash
# test/valgrind.sh [SPEC...] - the busted suite under
#   valgrind --leak-check=full --error-exitcode=1
# one spec file at a time (so a report names its file), with the
# suppressions of test/valgrind.supp (external noise only).
# A spec file counts its busted tests; each file whose valgrind log shows an
# error or a definite/indirect leak adds one failure ("valgrind: FILE").
# Prints "N passed, M failed" and exits non-zero on a failure.
#   LOOM_BUILD=build-rel test/valgrind.sh               (all of spec/)
#   test/valgrind.sh spec/81-lifecycle_spec.lua         (a subset)
# The build must be a normal one (valgrind cannot run an ASan build).
# Budget: the whole suite takes a few minutes on 2 cores; VALGRIND_TIMEOUT
# (seconds per spec file, default 900) bounds a stuck file.
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
BUILD=${LOOM_BUILD:-build}
BIN=$ROOT/$BUILD/loom
LOG=${LOG:-$ROOT/$BUILD/valgrind-logs}
mkdir -p "$LOG"
[[ -x $BIN ]] || { echo "no $BIN (set LOOM_BUILD)"; echo "0 passed, 1 failed"; exit 1; }

if (($# > 0)); then SPECS=("$@"); else SPECS=(spec/*_spec.lua); fi

PASSED=0
FAILED=0
for spec in "${SPECS[@]}"; do
  name=$(basename "$spec" .lua)
  rm -f "$LOG/$name".vg.*
  # --error-exitcode=1: busted also exits 1 on a failed test, so the
  # verdict on memory comes from the logs, not from the status.
  env LOOM_BIN="$BIN" timeout -k 10 "${VALGRIND_TIMEOUT:-900}" \
    valgrind --leak-check=full --error-exitcode=1 \
    --errors-for-leak-kinds=definite,indirect --show-leak-kinds=definite,indirect \
    --suppressions="$ROOT/test/valgrind.supp" --num-callers=30 \
    --log-file="$LOG/$name.vg.%p" \
    "$BIN" /usr/bin/busted -o TAP --exclude-tags=stock "$spec" >"$LOG/$name.tap" 2>"$LOG/$name.err"
  rc=$?
  ok=$(grep -cE '^ok ' "$LOG/$name.tap" || true)
  notok=$(grep -cE '^not ok ' "$LOG/$name.tap" || true)
  if ((ok + notok == 0)) && ! grep -qE '^1\.\.0' "$LOG/$name.tap"; then notok=1; fi
  PASSED=$((PASSED + ok))
  FAILED=$((FAILED + notok))
  bad=$(grep -lE 'ERROR SUMMARY: [1-9]|definitely lost: [1-9]|indirectly lost: [1-9]' \
    "$LOG/$name".vg.* 2>/dev/null || true)
  if [[ -n $bad ]]; then
    FAILED=$((FAILED + 1))
    echo "valgrind: $spec: memory errors or leaks (exit $rc): $bad" >&2
    grep -hE -A12 '^==[0-9]+== (Invalid|Conditional|Use of|Syscall|Mismatched|[0-9,]+ bytes in)' \
      $bad | head -60 >&2
  fi
  echo "$spec: $ok passed, $notok failed${bad:+, valgrind errors}" >&2
done
echo "$PASSED passed, $FAILED failed"
((FAILED == 0))
