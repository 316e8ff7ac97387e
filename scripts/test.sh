#!/usr/bin/env bash
# The test suite: unit, contract and end-to-end tests (real redis-server, celery beat and worker).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh
exec .venv/bin/python -m pytest "$@"
