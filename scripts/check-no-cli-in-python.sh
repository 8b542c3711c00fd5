#!/usr/bin/env bash
# The Python extension links the library without the application: its normal dependency tree
# (what `maturin` builds) holds no clap, indicatif or signal-hook. Fails, listing them, when it does.
set -euo pipefail
cd "$(dirname "$0")/.."
tree=$(cargo tree -p arraydrain-python -e normal --prefix none)
# The tree must be the extension's (a failed or empty `cargo tree` must not pass the check).
if ! grep -q '^arraydrain v' <<< "$tree"; then
  echo "check-no-cli-in-python.sh: no arraydrain in the tree of arraydrain-python" >&2
  exit 1
fi
if found=$(grep -E '^(clap|clap_builder|clap_derive|indicatif|signal-hook)( |$)' <<< "$tree"); then
  echo "check-no-cli-in-python.sh: the Python extension depends on the command line's crates:" >&2
  sort -u <<< "$found" >&2
  exit 1
fi
echo "check-no-cli-in-python.sh: the Python extension's tree has no clap, indicatif or signal-hook"
