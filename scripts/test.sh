#!/usr/bin/env bash
# The test suite: unit, contract and end-to-end tests (real redis-server, celery beat and worker).
# With no arguments it runs in three pytest processes side by side, which keeps CI under 15
# minutes on 2 cores: the fault scenarios with the examples (tests/faults,
# tests/test_examples.py) and the end-to-end tests with the simulator's tests (tests/e2e,
# tests/test_simulator.py), which mostly wait on real time, each beside the rest. With arguments, one
# pytest runs them: `bash scripts/test.sh tests/test_schedules.py -k dst`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh
if [ "$#" -gt 0 ]; then
    exec .venv/bin/python -m pytest "$@"
fi
faults_log=$(mktemp)
e2e_log=$(mktemp)
.venv/bin/python -m pytest tests/faults tests/test_examples.py \
    --durations=10 >"$faults_log" 2>&1 &
faults=$!
.venv/bin/python -m pytest tests/e2e tests/test_simulator.py --durations=10 >"$e2e_log" 2>&1 &
e2e=$!
status=0
.venv/bin/python -m pytest --ignore=tests/faults --ignore=tests/e2e --ignore=tests/test_examples.py \
    --ignore=tests/test_simulator.py --durations=15 || status=$?
wait "$e2e" || status=$?
wait "$faults" || status=$?
echo "== tests/e2e and tests/test_simulator.py (run beside the rest)"
cat "$e2e_log"
echo "== tests/faults and tests/test_examples.py (run beside the rest)"
cat "$faults_log"
rm -f "$faults_log" "$e2e_log"
exit "$status"
