# Sourced by scripts/test.sh and scripts/device-check.sh: the test venv, installed once from
# scripts/test-requirements.txt into a folder cached outside the checkout (ARRAYDRAIN_VENV,
# default ~/.cache/arraydrain/venv-<hash of the requirements>), one installer at a time (flock).
# Sets `venv` (its prefix) and `py` (its python). Needs no root.
req=scripts/test-requirements.txt
hash=$(sha256sum "$req" | cut -c1-12)
venv=${ARRAYDRAIN_VENV:-${XDG_CACHE_HOME:-$HOME/.cache}/arraydrain/venv-$hash}
mkdir -p "$(dirname "$venv")"
# One installer at a time: a second run waits for the first, then finds the venv complete.
exec 9>"$venv.lock"
flock 9
if [ ! -f "$venv/.complete" ]; then
  echo "installing test requirements into $venv" >&2
  rm -rf "$venv"
  python3 -m venv "$venv"
  "$venv/bin/python" -m pip install -q --disable-pip-version-check -r "$req"
  touch "$venv/.complete"
fi
flock -u 9
exec 9>&-
py="$venv/bin/python"
