#!/usr/bin/env bash
# The project's version lives in VERSION; this writes it everywhere a tool needs it literally
# (every pyproject.toml, the chart's version and appVersion). tests/unit/test_house_rules.py
# fails when any of them differs from VERSION.
#   scripts/set-version.sh 0.2.0   # set a new version
#   scripts/set-version.sh         # write VERSION's version again
set -euo pipefail
cd "$(dirname "$0")/.."
version="${1:-$(cat VERSION)}"
if [[ ! "$version" =~ ^[0-9]+\.[0-9]+\.[0-9]+([.-][0-9A-Za-z.]+)?$ ]]; then
  echo "error: '$version' is not a version like 1.2.3" >&2
  exit 2
fi
echo "$version" > VERSION
for file in pyproject.toml common/pyproject.toml producer/pyproject.toml consumer/pyproject.toml \
  producer/fastpath/pyproject.toml consumer/fastpath/pyproject.toml exporter/pyproject.toml dashboard/pyproject.toml; do
  # the first `version = ` line is [project]'s
  sed -i "0,/^version = \".*\"/s//version = \"$version\"/" "$file"
done
sed -i -e "s/^version: .*/version: $version/" -e "s/^appVersion: .*/appVersion: \"$version\"/" charts/iot-monitor/Chart.yaml
# the example of a pinned release in the chart's CI values
sed -i "0,/^  tag: \".*\"/s//  tag: \"$version\"/" charts/iot-monitor/ci/managed-kafka-values.yaml
# the chart's README shows the version (generated from Chart.yaml and values.yaml)
python=python3; [[ -x .venv/bin/python ]] && python=.venv/bin/python  # PyYAML
"$python" scripts/chart-readme.py
echo "version $version written to VERSION, 7 pyproject.toml files, the chart and its README"
