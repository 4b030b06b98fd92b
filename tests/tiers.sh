#!/usr/bin/env bash
# make test: the whole suite in three tiers, each tier's time printed at the end (and when it ends):
#   fast   the tests that boot nothing and take seconds (make check's tier; GPU tests skip without a GPU)
#   slow   trainer processes and localhost sessions (pytest -m slow)
#   hosts  systemd-nspawn test hosts with simulated GPUs and real vLLM (pytest -m hosts)
# Every tier runs even when an earlier one failed; the exit code is non-zero when any failed.
# Run: bash tests/tiers.sh PYTEST [PYTEST ARGS...]
set -u
PYTEST=$1
shift
failed=0
summary=""
tier() {  # tier NAME MARKER [PYTEST ARGS...]
  local name=$1 marker=$2 start rc took
  shift 2
  start=$(date +%s)
  "$PYTEST" -m "$marker" --durations=20 "$@"  # the 20 slowest of the tier, to see where the time goes
  rc=$?
  [ $rc -eq 5 ] && rc=0  # no test in this tier
  took=$(( $(date +%s) - start ))
  echo "== tier $name: $took s, exit $rc"
  summary="$summary  $name: $took s, exit $rc"$'\n'
  [ $rc -eq 0 ] || failed=1
}
tier fast "not hosts and not slow" "$@"
tier slow "slow and not hosts" "$@"
tier hosts "hosts" "$@"
printf 'make test, time per tier:\n%s' "$summary"
exit $failed
