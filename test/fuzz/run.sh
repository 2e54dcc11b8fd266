#!/usr/bin/env bash
# test/fuzz/run.sh [SECONDS] - builds the fuzz targets (build.sh) and runs
# each for SECONDS (default 20) from its seed corpus test/fuzz/corpus/<t>/.
# New inputs go to build-fuzz/corpus/<t>/ (the committed seeds stay as they
# are); a crash leaves build-fuzz/artifacts/<t>/crash-* and fails the target.
# Prints one line per target and "N passed, M failed"; exits non-zero on a
# failure. CI: test/fuzz/run.sh 20
set -uo pipefail
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
OUT=${FUZZ_BUILD:-$ROOT/build-fuzz}
SECONDS_EACH=${1:-20}
TARGETS=${FUZZ_TARGETS:-"resp http addr ops"}

if ! bash "$ROOT/test/fuzz/build.sh"; then
  echo "fuzz: the build failed"
  echo "0 passed, 1 failed"
  exit 1
fi

declare -A MAXLEN=([resp]=4096 [http]=4096 [addr]=256 [ops]=512)
PASSED=0
FAILED=0
for t in $TARGETS; do
  mkdir -p "$OUT/corpus/$t" "$OUT/artifacts/$t"
  log="$OUT/fuzz_$t.log"
  # -rss_limit_mb: loom + Lua + ASan; -timeout: one input may not take 10 s.
  ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1} \
  UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1} \
    timeout -k 10 $((SECONDS_EACH + 120)) "$OUT/fuzz_$t" \
    -max_total_time="$SECONDS_EACH" -max_len="${MAXLEN[$t]:-1024}" -timeout=10 \
    -rss_limit_mb=4096 -print_final_stats=1 \
    -artifact_prefix="$OUT/artifacts/$t/" "$OUT/corpus/$t" "$ROOT/test/fuzz/corpus/$t" \
    >"$log" 2>&1
  rc=$?
  execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
  cov=$(grep -oE 'cov: [0-9]+' "$log" | tail -1)
  if grep -q "does not exist yet: nothing to fuzz" "$log"; then
    echo "fuzz $t: skipped ($(grep -m1 'does not exist yet' "$log"))"
  elif [[ $rc -eq 0 ]]; then
    echo "fuzz $t: ok, ${execs:-?} runs, ${cov:-cov ?}"
    PASSED=$((PASSED + 1))
  else
    echo "fuzz $t: FAILED (exit $rc) after ${execs:-?} runs; log $log"
    grep -E "violation|ERROR: |runtime error|SUMMARY|Test unit written" "$log" | head -8 | sed 's/^/  /'
    FAILED=$((FAILED + 1))
  fi
done
echo "$PASSED passed, $FAILED failed"
((FAILED == 0))
