#!/usr/bin/env bash
# Runs a command with the local stack's generated development passwords in its environment
# (.stack/secrets.env, written by stack/stack.sh up; a variable already set wins):
#   scripts/with-stack-secrets.sh iot-consumer migrate
# They travel in the environment, never in an argv.
set -euo pipefail
secrets=${STACK_DIR:-$(cd "$(dirname "$0")/.." && pwd)/.stack}/secrets.env
[[ -f $secrets ]] || { echo "error: $secrets is missing: run 'make stack-up' (stack/stack.sh up) first" >&2; exit 2; }
while IFS= read -r line; do
  [[ $line =~ ^([A-Z_]+)=(.*)$ ]] || continue
  name=${BASH_REMATCH[1]}
  [[ -n ${!name:-} ]] || export "$name=${BASH_REMATCH[2]}"
done <"$secrets"
exec "$@"
