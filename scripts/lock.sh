#!/usr/bin/env bash
# Regenerates the hashed dependency locks (run `make lock` after changing any pyproject.toml):
#   <service>/requirements.lock  what that service's image installs (pip --require-hashes);
#   requirements-dev.lock        what `make dev` installs: every service plus the dev tools.
# One resolution for Python >= 3.11 on every platform (uv --universal), so the same file serves
# the images (Debian, Python 3.11) and developers' machines.
set -euo pipefail
cd "$(dirname "$0")/.."
UV=${UV:-.venv/bin/uv}
common=(--universal --python-version 3.11 --generate-hashes --custom-compile-command "make lock" --quiet
        --no-emit-package iot-common)
for service in producer consumer exporter dashboard; do
  printf './common\n./%s\n' "$service" |
    "$UV" pip compile - "${common[@]}" --no-emit-package "iot-$service" -o "$service/requirements.lock"
  echo "[lock] $service/requirements.lock: $(grep -c '==' "$service/requirements.lock") packages"
done
printf './common\n./producer\n./consumer\n./exporter\n./dashboard\n' |
  "$UV" pip compile - --group pyproject.toml:dev "${common[@]}" \
    --no-emit-package iot-producer --no-emit-package iot-consumer --no-emit-package iot-exporter \
    --no-emit-package iot-dashboard -o requirements-dev.lock
echo "[lock] requirements-dev.lock: $(grep -c '==' requirements-dev.lock) packages"
