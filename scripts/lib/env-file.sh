# Sourced, not run: export_missing_from FILE exports each NAME=value line of FILE (the format
# scripts/dev-secrets.sh writes) whose variable is not set yet - a value already in the
# environment wins. `export` is a shell builtin: no value ever appears in an argv.
export_missing_from() {
  local line name
  while IFS= read -r line; do
    [[ $line =~ ^([A-Z_][A-Z0-9_]*)=(.*)$ ]] || continue
    name=${BASH_REMATCH[1]}
    [[ -n ${!name:-} ]] || export "$name=${BASH_REMATCH[2]}"
  done <"$1"
}
