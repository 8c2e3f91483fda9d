#!/usr/bin/env bash
# Runs a command with the local stack's generated development passwords in its environment
# (.stack/secrets.env, written by stack/stack.sh up; a variable already set wins):
#   scripts/with-stack-secrets.sh iot-consumer migrate
# They travel in the environment, never in an argv.
set -euo pipefail
secrets=${STACK_DIR:-$(cd "$(dirname "$0")/.." && pwd)/.stack}/secrets.env
[[ -f $secrets ]] || { echo "error: $secrets is missing: run 'make stack-up' (stack/stack.sh up) first" >&2; exit 2; }
# shellcheck source=lib/env-file.sh
. "$(dirname "$0")/lib/env-file.sh"
export_missing_from "$secrets"
exec "$@"
