#!/bin/bash
# The dashboard's read-only login role (docker-compose.yml; runs once, on an empty data volume).
set -euo pipefail
psql -v ON_ERROR_STOP=1 -U "$POSTGRES_USER" -d "$POSTGRES_DB" -v pw="$DASHBOARD_DB_PASSWORD" <<'SQL'
SELECT format('CREATE ROLE iot_dashboard LOGIN PASSWORD %L', :'pw')
WHERE NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'iot_dashboard') \gexec
ALTER ROLE iot_dashboard SET default_transaction_read_only = on;
SQL
