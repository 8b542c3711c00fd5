#!/usr/bin/env bash
# The CUDA engine's tests without a GPU: builds the CUDA driver simulator (cudasim/, test-only),
# links it as libcuda.so.1 / libcuda.so into a folder of its own, puts that folder and NVRTC's
# lib folders on LD_LIBRARY_PATH, and runs
#   - tests/cuda_gpu.rs, tests/cuda_opaque.rs and tests/cuda_writer.rs, unchanged (the tests the
#     device script runs on a real GPU), with --include-ignored; except
#     more_than_two_to_the_32_one_byte_rows, whose 4 GiB table and outputs do not fit a CI
#     machine (tests/cudasim_equivalence.rs runs its reduced case: a sparse table of more than
#     2^32 rows gathered through 64-bit indices);
#   - tests/cudasim_*.rs: the equivalence property under many simulator seeds, the fault sweep,
#     lent memory, the writer fed from device memory (cudasim_writer.rs), and the simulator's own
#     tests (it must catch a missing synchronisation, an off-by-one launch and a use after free).
# NVRTC still compiles the kernels (the simulator checks the CUBIN it is given); its lib folders
# come from LD_LIBRARY_PATH when scripts/test.sh calls this, else from the test venv
# (ARRAYDRAIN_VENV, as scripts/test.sh makes it; created here with the test requirements if
# missing). Extra arguments go to every `cargo test`.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
target=${CARGO_TARGET_DIR:-$root/target}

have_nvrtc=false
IFS=: read -ra ld_dirs <<< "${LD_LIBRARY_PATH:-}"
for d in "${ld_dirs[@]}"; do
  if [ -n "$d" ] && { [ -e "$d/libnvrtc.so.13" ] || [ -e "$d/libnvrtc.so.12" ]; }; then
    have_nvrtc=true
  fi
done
if [ "$have_nvrtc" = false ]; then
  # The test venv of scripts/test.sh (installed by scripts/venv.sh when it is not there yet).
  # shellcheck source=scripts/venv.sh
  source scripts/venv.sh
  nvrtc_dirs=$("$venv/bin/python" - <<'PY'
import glob, os, nvidia
base = list(nvidia.__path__)[0]
dirs = sorted({os.path.dirname(p) for p in glob.glob(os.path.join(base, "**", "libnvrtc.so*"), recursive=True)})
print(":".join(dirs))
PY
)
  export LD_LIBRARY_PATH="$nvrtc_dirs${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
fi

cargo build -p arraydrain-cudasim
libdir="$target/cudasim-lib"
mkdir -p "$libdir"
ln -sf "$target/debug/libarraydrain_cudasim.so" "$libdir/libcuda.so.1"
ln -sf "$target/debug/libarraydrain_cudasim.so" "$libdir/libcuda.so"
export LD_LIBRARY_PATH="$libdir:$LD_LIBRARY_PATH"
# Device memory of the simulated device: enough for the largest test (three 256 MiB buffers and
# a drain of them), small enough for a CI machine.
export ARRAYDRAIN_SIM_DEVICE_BYTES=${ARRAYDRAIN_SIM_DEVICE_BYTES:-2G}

echo "test-cudasim.sh: tests/cuda_gpu.rs, cuda_opaque.rs and cuda_writer.rs under the simulator" >&2
cargo test --test cuda_gpu --test cuda_opaque --test cuda_writer "$@" -- --include-ignored \
  --skip more_than_two_to_the_32_one_byte_rows
echo "test-cudasim.sh: the simulator's own suites" >&2
cargo test --test cudasim_equivalence --test cudasim_faults --test cudasim_pool --test cudasim_selftest \
  --test cudasim_stale --test cudasim_lent --test cudasim_writer "$@" -- --include-ignored
