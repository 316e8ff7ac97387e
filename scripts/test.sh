#!/usr/bin/env bash
# The test suite: unit, contract and end-to-end tests (real redis-server, celery beat and worker).
# With no arguments, the fault scenarios (tests/faults, mostly waiting on real time) run in a
# second pytest process beside the rest, which keeps CI under 15 minutes on 2 cores. With
# arguments, one pytest runs them: `bash scripts/test.sh tests/test_schedules.py -k dst`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh
if [ "$#" -gt 0 ]; then
    exec .venv/bin/python -m pytest "$@"
fi
log=$(mktemp)
.venv/bin/python -m pytest tests/faults --durations=10 >"$log" 2>&1 &
faults=$!
status=0
.venv/bin/python -m pytest --ignore=tests/faults --durations=15 || status=$?
wait "$faults" || status=$?
echo "== tests/faults (run beside the rest)"
cat "$log"
rm -f "$log"
exit "$status"
