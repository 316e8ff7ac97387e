#!/usr/bin/env bash
# The main job: three beat replicas and a worker on a throwaway real Redis; one replica is killed
# half-way; prints expected / received / duplicate fires per entry.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh
exec .venv/bin/python examples/demo/run.py "$@"
