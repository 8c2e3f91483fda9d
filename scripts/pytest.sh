#!/usr/bin/env bash
# Runs pytest and refuses to pass silently: pytest's exit 5 ("no tests collected") fails.
set -uo pipefail
cd "$(dirname "$0")/.."
.venv/bin/python -m pytest "$@"
rc=$?
if [[ $rc -eq 5 ]]; then
  echo "error: pytest collected no tests ($*) - refusing to pass" >&2
  exit 1
fi
exit $rc
