#!/usr/bin/env bash
# Development secrets, generated on this machine at install time instead of committed:
#   scripts/dev-secrets.sh [FILE]     (default: .env, which docker compose reads)
# adds every password below that FILE does not define yet, as NAME=<32 random hex digits>, and
# keeps the ones it has (the databases and brokers already use them). FILE is created 0600.
# stack/stack.sh keeps the local stack's in .stack/secrets.env; docker-compose.yml requires them.
# Nothing here passes a secret in an argv: they are read from /dev/urandom and written by the shell.
set -euo pipefail
cd "$(dirname "$0")/.."
file=${1:-.env}
NAMES=(
  POSTGRES_PASSWORD      # the schema's owner (iot): migrations only
  CONSUMER_DB_PASSWORD   # iot_consumer
  EXPORTER_DB_PASSWORD   # iot_exporter
  DASHBOARD_DB_PASSWORD  # iot_dashboard
  DASHBOARD_PASSWORD     # the dashboard page's sign-in
  STACK_SCRAM_PASSWORD   # the local broker's SASL_SSL user (stack/stack.sh)
)
# The directory is private too (.stack/ also holds the broker's key): where the 'postgres' user
# cannot enter it, stack.sh keeps PostgreSQL's data outside (pg_data_home).
umask 077
mkdir -p "$(dirname "$file")"
touch "$file"
added=()
for name in "${NAMES[@]}"; do
  grep -q "^$name=" "$file" && continue
  value=$(od -An -N16 -tx1 /dev/urandom | tr -d ' \n')
  printf '%s=%s\n' "$name" "$value" >>"$file"
  added+=("$name")
done
chmod 0600 "$file"
if ((${#added[@]})); then
  printf '[dev-secrets] generated %s in %s\n' "${added[*]}" "$file" >&2
fi
