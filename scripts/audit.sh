#!/usr/bin/env bash
# Audit the installed dependencies (the project's .venv) for known vulnerabilities with pip-audit.
#
#   exit 0  no known vulnerability, or the audit could not run for lack of network
#           (then it prints "audit skipped: <reason>")
#   exit 1  vulnerabilities found (listed)
#   exit 2  pip-audit failed for another reason
#
# The vulnerability services are tried in turn (PyPI's JSON API, then OSV); one that answers for
# none of the dependencies counts as unreachable. The editable project itself is not audited.
# PIP_AUDIT_SERVICES overrides the list, e.g. PIP_AUDIT_SERVICES=osv.
set -uo pipefail
cd "$(dirname "$0")/.."

PY=.venv/bin/python
if [ ! -x "$PY" ]; then
  echo "audit: no .venv; run scripts/bootstrap.sh first" >&2
  exit 2
fi

if ! "$PY" -m pip_audit --version >/dev/null 2>&1; then
  echo "audit: installing pip-audit into .venv" >&2
  if ! "$PY" -m pip install -q "pip-audit>=2.7" >/dev/null 2>&1; then
    echo "audit skipped: pip-audit is not installed and could not be installed (no network?)"
    exit 0
  fi
fi

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
reasons=()

for service in ${PIP_AUDIT_SERVICES:-pypi osv}; do
  report="$work/$service.json"
  "$PY" -m pip_audit --vulnerability-service "$service" --skip-editable \
    --progress-spinner off --format json --output "$report" >"$work/$service.out" 2>"$work/$service.err"
  status=$?
  # Classify what pip-audit produced: findings, a clean audit, or no answer at all.
  verdict=$("$PY" - "$report" "$work/$service.err" "$status" <<'PY'
import json
import re
import sys

report, errors, status = sys.argv[1], open(sys.argv[2], errors="replace").read(), int(sys.argv[3])
network = re.compile(
    r"ConnectionError|Max retries|NameResolution|name resolution|timed out|Timeout|"
    r"Network is unreachable|Connection refused|ProxyError|SSLError|ServiceError",
    re.IGNORECASE,
)
try:
    with open(report) as handle:
        dependencies = json.load(handle)["dependencies"]
except (OSError, ValueError, KeyError):
    last = (errors.strip().splitlines() or [f"pip-audit exited {status}"])[-1]
    print(("unreachable " if network.search(errors) else "error ") + last)
    sys.exit()
audited = [d for d in dependencies if "skip_reason" not in d]
vulnerable = [d for d in audited if d.get("vulns")]
if not audited:
    print(f"unreachable it answered for none of the {len(dependencies)} dependencies")
elif vulnerable:
    print(f"findings {sum(len(d['vulns']) for d in vulnerable)} in {len(vulnerable)} packages")
    for dep in vulnerable:
        for vuln in dep["vulns"]:
            fixes = ", ".join(vuln.get("fix_versions") or []) or "no fixed version"
            print(f"  {dep['name']} {dep['version']}: {vuln['id']} (fixed in {fixes})")
else:
    skipped = len(dependencies) - len(audited)
    print(f"clean {len(audited)} dependencies audited, {skipped} not known to the service")
PY
)
  kind=${verdict%% *}
  detail=${verdict#* }
  case "$kind" in
    findings)
      echo "audit ($service): vulnerabilities found: $detail"
      exit 1
      ;;
    clean)
      echo "audit ($service): no known vulnerabilities ($detail)"
      exit 0
      ;;
    unreachable)
      reasons+=("$service: $detail")
      ;;
    *)
      echo "audit ($service): pip-audit failed: $detail" >&2
      exit 2
      ;;
  esac
done

joined=$(printf '%s; ' "${reasons[@]}")
echo "audit skipped: no vulnerability service could be used (${joined%; })"
exit 0
