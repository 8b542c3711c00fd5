#!/usr/bin/env bash
# Device check for the CUDA engine, in two halves:
#
#   scripts/device-check.sh build   on the build machine (Rust toolchain, no GPU needed):
#                                   the release CLI and the GPU test binaries (cuda_gpu,
#                                   cuda_opaque, cuda_writer), stripped, the Python wheel and the
#                                   compute-sanitizer wheel into .device-bin/ (git-ignored; at
#                                   most 56 MiB, checked), to be carried to the GPU machine with
#                                   the repo.
#   scripts/device-check.sh run     on the GPU machine (no Rust there), from the repo root:
#                                   nvidia-smi and the loader's view of libcuda/libnvrtc,
#                                   `arraydrain info`, the GPU tests, compute-sanitizer memcheck +
#                                   initcheck on a small GPU test, `arraydrain bench --device cuda`
#                                   on 512-byte rows (sequential and shuffled) and on images
#                                   (u8 and f32 3x224x224, shuffled), each against the same-run
#                                   pinned D2H floor, and the PyTorch baselines on the 512-byte
#                                   rows (scripts/torch_compare.py); the CPU engine's shuffled
#                                   gather over 1, 4 and 16 threads; the Python package's CUDA
#                                   tests (pytest -m cuda on python/tests; the writer on CUDA
#                                   tensors, python/tests/test_writer_cuda.py, as a step of its
#                                   own), python/bench.py --device cuda on a smaller workload
#                                   and, last, the writer's inference case on CUDA tensors
#                                   (python/bench_inference.py --device cuda).
#
# The Python half: `build` also puts the package's wheel (maturin from the test venv of
# scripts/venv.sh) and pytest's pure-Python wheels into .device-bin/wheels; `run` installs them into
# .device-bin/pylib (no network, no venv) on top of the GPU machine's python3 with PyTorch and
# NumPy.
#
# Budget: the whole run takes at most DEVICE_CHECK_BUDGET_S seconds (default 480, so that it fits
# 15 minutes of GPU machine time with its start). Every step has its own time box, shrunk to what
# is left of the budget; a step that no longer fits is reported as `skipped`.
#
# Output: everything for the caller is packed into three files under OUT (default
# .device-bin/out): summary.txt (machine, steps with status and seconds, results table),
# logs.tar.gz (every step's full log), bench-json.tar.gz (the bench JSON files).
# On machines where compute-sanitizer answers "Device not supported" (e.g. under gVisor), the
# sanitizer steps are reported as `unsupported`, not as failures, and the run goes on.
#
# compute-sanitizer: SANITIZER if set, else the one on PATH or in /usr/local/cuda/bin, else the one
# in the PyPI wheel nvidia-cuda-sanitizer-api 13.0.x (CUDA 13.0, the GPU machine's driver), which
# `build` downloads into .device-bin/sanitizer (14 MB) and `run` unpacks (its binary, launcher
# libraries and run bits; no docs) into a temporary folder.
#
# Environment: OUT, DEVICE_CHECK_BUDGET_S, SANITIZER (path of compute-sanitizer if not on PATH).
#
# Dry run without a GPU, under the CUDA simulator (scripts/test-cudasim.sh links it into
# target/cudasim-lib): `LD_LIBRARY_PATH=target/cudasim-lib:<NVRTC lib folders> PATH=<test venv>/bin:$PATH
# ARRAYDRAIN_SIM_DEVICE_BYTES=6G scripts/device-check.sh run` runs every step; the GPU tests
# pass (less the 2^32-row table, skipped on the simulator), `bench` verifies and prints no
# figures, and the steps that need PyTorch's CUDA or a real driver under compute-sanitizer fail
# or skip (the sanitizer is unpacked from the carried wheel and starts, then finds no real GPU).
set -uo pipefail
cd "$(dirname "$0")/.."
BIN=.device-bin
# The GPU test binaries carried to the GPU machine (everything else runs in CI, under the CUDA
# simulator or on the CPU).
GPU_TESTS="cuda_gpu cuda_opaque cuda_writer"
# What may travel to the GPU machine: the tree and this folder together must stay under 64 MiB.
CARRY_LIMIT_MIB=56

build() {
  set -e
  rm -rf "$BIN"
  mkdir -p "$BIN/tests"
  cargo build --release
  cp target/release/arraydrain "$BIN/"
  local args=()
  for t in $GPU_TESTS; do args+=(--test "$t"); done
  cargo test --release --no-run "${args[@]}" --message-format=json 2>/dev/null >"$BIN/test-build.json"
  python3 - "$BIN" $GPU_TESTS <<'PY'
import json, shutil, sys, os
bin_dir, wanted = sys.argv[1], set(sys.argv[2:])
seen = []
for line in open(os.path.join(bin_dir, "test-build.json")):
    try:
        m = json.loads(line)
    except ValueError:
        continue
    if m.get("reason") != "compiler-artifact" or not m.get("executable"):
        continue
    t = m["target"]
    if not m.get("profile", {}).get("test") or t["kind"] != ["test"] or t["name"] not in wanted:
        continue
    shutil.copy2(m["executable"], os.path.join(bin_dir, "tests", t["name"]))
    seen.append(t["name"])
missing = wanted - set(seen)
if missing:
    sys.exit(f"test binaries not built: {sorted(missing)}")
print("test binaries:", ", ".join(sorted(seen)))
PY
  rm -f "$BIN/test-build.json"
  strip "$BIN/arraydrain" "$BIN"/tests/*
  # The Python package and pytest, for the CUDA tests of python/tests on the GPU machine; maturin
  # from the test venv (scripts/venv.sh, the one scripts/test.sh uses).
  # shellcheck source=scripts/venv.sh
  source scripts/venv.sh
  PATH="$venv/bin:$PATH" "$py" -m maturin build --release --strip --manifest-path python/Cargo.toml \
    --out "$BIN/wheels"
  # Pure-Python wheels that install on any Python >= 3.9 (exceptiongroup and tomli: what pytest
  # needs below 3.11, named because pip evaluates markers for the running Python).
  "$py" -m pip download -q --only-binary=:all: --python-version 3.9 --implementation py \
    --platform any --dest "$BIN/wheels" pytest exceptiongroup tomli
  # compute-sanitizer for a GPU machine without one: the wheel ships the binary
  # (nvidia/cu13/bin/compute-sanitizer) and the libraries it injects; 13.0.x for CUDA 13.0.
  "$py" -m pip download -q --no-deps --only-binary=:all: --platform manylinux_2_25_x86_64 \
    --dest "$BIN/sanitizer" "nvidia-cuda-sanitizer-api==13.0.*"
  git rev-parse --short HEAD >"$BIN/commit" 2>/dev/null || true
  local kib
  kib=$(du -sk "$BIN" | cut -f1)
  du -sh "$BIN" "$BIN"/* "$BIN"/tests/*
  if [ "$kib" -gt $((CARRY_LIMIT_MIB * 1024)) ]; then
    echo "$BIN is $((kib / 1024)) MiB: over the ${CARRY_LIMIT_MIB} MiB that may travel with the tree" >&2
    exit 1
  fi
  echo "built into $BIN/ — copy the repository (with $BIN/) to the GPU machine and run: scripts/device-check.sh run"
}

# sanitizer DIR: the compute-sanitizer to run — SANITIZER, the one on PATH or in
# /usr/local/cuda/bin, else the one of the wheel `build` carried, unpacked into DIR (the binary,
# its libraries and launchers, with their run bits; the wheel's docs and headers left out).
sanitizer() {
  local found=${SANITIZER:-$(command -v compute-sanitizer || true)}
  if [ -z "$found" ] && [ -x /usr/local/cuda/bin/compute-sanitizer ]; then
    found=/usr/local/cuda/bin/compute-sanitizer
  fi
  if [ -z "$found" ]; then
    local whl
    whl=$(find "$BIN/sanitizer" -name 'nvidia_cuda_sanitizer_api-*.whl' 2>/dev/null | head -n 1)
    if [ -n "$whl" ] && python3 - "$whl" "$1" <<'PY' >&2
import os, sys, zipfile
whl, dest = sys.argv[1], sys.argv[2]
with zipfile.ZipFile(whl) as z:
    for m in z.infolist():
        parts = m.filename.split("/")
        if m.is_dir() or "docs" in parts or "include" in parts or ".." in parts or m.filename.startswith("/"):
            continue
        path = z.extract(m, dest)
        name = parts[-1]
        if name == "compute-sanitizer" or name.startswith("TreeLauncher"):
            os.chmod(path, 0o755)
PY
    then
      for c in "$1"/nvidia/*/bin/compute-sanitizer; do
        [ -x "$c" ] && found=$c && break
      done
    fi
  fi
  echo "$found"
}

STEPS=()
step() { # step NAME STATUS SECONDS
  STEPS+=("$(printf '%-34s %-11s %5ss' "$1" "$2" "$3")")
}

# run_step NAME TIMEOUT_S LOGFILE CMD...: runs CMD time-boxed to min(TIMEOUT_S, what is left of
# the budget), its output into LOGFILE (the last lines echoed).
run_step() {
  local name=$1 limit=$2 log=$3
  shift 3
  local left=$((DEADLINE - SECONDS))
  if [ "$left" -lt 15 ]; then
    echo "=== $name: skipped (budget spent)"
    step "$name" skipped 0
    return 0
  fi
  [ "$limit" -gt "$left" ] && limit=$left
  local t0=$SECONDS
  echo
  echo "=== $name (limit ${limit}s: $*)"
  timeout --kill-after=5 "$limit" "$@" >"$log" 2>&1
  local rc=$?
  tail -n 25 "$log"
  local status=ok
  if [ "$rc" = 124 ] || [ "$rc" = 137 ]; then
    status=TIMEOUT
  elif [ "$rc" != 0 ]; then
    status="rc=$rc"
  fi
  if [ "$status" != ok ] && grep -qi 'device not supported' "$log"; then
    status=unsupported
  fi
  step "$name" "$status" $((SECONDS - t0))
  return 0
}

run() {
  local started=$SECONDS
  DEADLINE=$((started + ${DEVICE_CHECK_BUDGET_S:-480} - 10))
  OUT=${OUT:-$BIN/out}
  mkdir -p "$OUT"
  local W
  W=$(mktemp -d)
  mkdir -p "$W/logs" "$W/json"
  [ -x "$BIN/arraydrain" ] || { echo "no $BIN/arraydrain: run 'scripts/device-check.sh build' on the build machine first"; exit 2; }
  export PATH="$PATH:/usr/local/cuda/bin"
  # The engine finds NVRTC where pip puts it (site-packages/nvidia/*/lib of VIRTUAL_ENV), as it
  # does for a PyTorch user's activated environment; the GPU machine's python3 is such a one.
  if [ -z "${VIRTUAL_ENV:-}" ]; then
    VIRTUAL_ENV=$(python3 -c 'import sys; print(sys.prefix)' 2>/dev/null || true)
    export VIRTUAL_ENV
  fi
  {
    echo "=== machine"
    timeout 20 nvidia-smi || echo "nvidia-smi failed"
    echo "--- loader view of libcuda / libnvrtc"
    ldconfig -p | grep -E 'libcuda|libnvrtc' || echo "(none in the ld.so cache)"
    find /usr/local/cuda/lib64/ -maxdepth 1 -name "libnvrtc*" 2>/dev/null | head
    echo "LD_LIBRARY_PATH=${LD_LIBRARY_PATH:-}"
    echo "commit: $(cat "$BIN/commit" 2>/dev/null || echo '?')"
    timeout 30 "$BIN/arraydrain" info
  } >"$W/machine.txt" 2>&1
  cat "$W/machine.txt"

  local T=$BIN/tests L=$W/logs J=$W/json AD=$BIN/arraydrain
  # A dry run under the CUDA simulator skips, as scripts/test-cudasim.sh does, the table of more
  # than 2^32 rows (4 GiB, twice; 80 s of host work there, a second on a GPU).
  local skip=()
  if grep -q "CUDA simulator" "$W/machine.txt"; then
    skip=(--skip more_than_two_to_the_32_one_byte_rows)
  fi
  # The rayon test runs alone, time-boxed: a deadlock there must not hang every other GPU test.
  run_step "GPU tests (--ignored)" 170 "$L/gpu-tests.log" "$T/cuda_gpu" --ignored --test-threads=1 \
    --skip the_engine_can_be_called_from_rayon_jobs "${skip[@]}"
  run_step "GPU test, rayon jobs (alone)" 30 "$L/gpu-tests-rayon.log" "$T/cuda_gpu" --ignored \
    --exact the_engine_can_be_called_from_rayon_jobs
  run_step "GPU tests, opaque dtypes (--ignored)" 30 "$L/gpu-tests-opaque.log" \
    "$T/cuda_opaque" --ignored --test-threads=1
  # The writer fed from device memory (DeviceWriter): run under the CUDA simulator only so far.
  run_step "GPU tests, device writer (--ignored)" 30 "$L/gpu-tests-writer.log" \
    "$T/cuda_writer" --ignored --test-threads=1
  # The Python package on CUDA tensors, from the wheels built with `build`: python/tests -m cuda.
  rm -rf "$BIN/pylib"
  if timeout 60 python3 -m pip install -q --no-index --no-deps --target "$BIN/pylib" \
    "$BIN"/wheels/*.whl >"$L/pylib.log" 2>&1; then
    run_step "pytest -m cuda (python/tests)" 120 "$L/pytest-cuda.log" \
      env PYTHONPATH="$BIN/pylib" python3 -m pytest python/tests -m cuda -q -rs -p no:cacheprovider \
      --ignore=python/tests/test_writer_cuda.py
    # The writer on CUDA tensors (the engine's device writer: copies on its streams after
    # PyTorch's current stream, which waits for them), a step of its own: it has only run under
    # the CUDA simulator so far.
    run_step "pytest writer, CUDA tensors (test_writer_cuda.py)" 60 "$L/pytest-writer-cuda.log" \
      env PYTHONPATH="$BIN/pylib" python3 -m pytest python/tests/test_writer_cuda.py -q -rs \
      -p no:cacheprovider
  else
    cat "$L/pylib.log"
    step "python wheels install" FAIL 0
  fi
  local san
  san=$(sanitizer "$W/sanitizer")
  echo "compute-sanitizer: ${san:-none}" | tee -a "$W/machine.txt"
  # memcheck: out-of-bounds and misaligned accesses; initcheck: copies of device memory nothing
  # wrote (a staging buffer copied before its gather). racecheck has nothing to find in a kernel
  # without shared memory.
  for tool in memcheck initcheck; do
    if [ -z "$san" ]; then
      step "compute-sanitizer $tool" missing 0
      continue
    fi
    run_step "compute-sanitizer $tool" 60 "$L/sanitizer-$tool.log" \
      "$san" --tool "$tool" --error-exitcode 3 --print-limit 20 \
      "$T/cuda_gpu" --ignored --exact small_drains_for_the_sanitizer --test-threads=1
  done
  # 512-byte rows (x f32 [128] + y i64): 1M rows, 520 MB out.
  run_step "bench 512 B rows sequential" 45 "$L/bench-seq.log" \
    "$AD" bench --device cuda --repeat 3 --json "$J/bench-seq.json"
  run_step "bench 512 B rows shuffled" 45 "$L/bench-shuf.log" \
    "$AD" bench --device cuda --repeat 3 --shuffle --json "$J/bench-shuf.json"
  # Images: u8 3x224x224 (147 KiB rows, 4000 rows: 602 MB) and f32 (588 KiB rows, 1000 rows).
  run_step "bench u8 3x224x224 shuffled" 45 "$L/bench-img-u8.log" \
    "$AD" bench --device cuda --rows 4000 --row-shape 3,224,224 --dtype u8 --batch 64 \
    --shuffle --repeat 3 --json "$J/bench-img-u8.json"
  run_step "bench f32 3x224x224 shuffled" 45 "$L/bench-img-f32.log" \
    "$AD" bench --device cuda --rows 1000 --row-shape 3,224,224 --dtype f32 --batch 64 \
    --shuffle --repeat 3 --json "$J/bench-img-f32.json"
  if [ -f "$J/bench-shuf.json" ]; then
    run_step "torch 512 B rows shuffled" 60 "$L/torch-shuf.log" \
      python3 scripts/torch_compare.py --from-json "$J/bench-shuf.json" --label shuf --repeat 3
  fi
  # The CPU engine's shuffled 512-byte gather against its same-run copy floors, scaled over the
  # GPU machine's cores (issue 21's goal: <= 1.3x; on the 2-core build VM it stays at 1.5-1.7x).
  run_step "bench CPU 512 B rows shuffled, threads 1,4,16" 45 "$L/bench-cpu-threads.log" \
    "$AD" bench --device cpu --shuffle --strategies preallocated,preallocated-into --repeat 3 \
    --threads 1,4,16 --json "$J/bench-cpu-threads.json"

  # python/bench.py on CUDA tensors (last: the first step the budget drops). Smaller than the Rust
  # benches: the classic recipes over a DataLoader fetch CUDA samples one by one.
  if [ -d "$BIN/pylib/arraydrain" ]; then
    run_step "python/bench.py --device cuda" 90 "$L/py-bench.log" \
      env PYTHONPATH="$BIN/pylib" python3 python/bench.py --device cuda --orders shuffled \
      --rows 200000 --repeat 3 --recipe-repeat 1 --no-memory --rust-bin "$AD" \
      --json "$J/py-bench.json"
  fi

  # The writer's inference case on CUDA tensors: a model on the GPU, its outputs kept as one array
  # (or .npy) by the writer beside the append/.cpu()/concatenate recipe; peak GPU memory too.
  if [ -d "$BIN/pylib/arraydrain" ]; then
    run_step "python/bench_inference.py --device cuda" 90 "$L/py-inference.log" \
      env PYTHONPATH="$BIN/pylib" python3 python/bench_inference.py --device cuda \
      --rows 1000000 --repeat 3 --json "$J/py-inference.json"
  fi

  {
    cat "$W/machine.txt"
    echo
    echo "=== steps (budget ${DEVICE_CHECK_BUDGET_S:-480} s)"
    printf '%s\n' "${STEPS[@]}"
    echo "total $((SECONDS - started)) s"
    python3 - "$J" "$L" <<'PY'
import json, os, sys
jdir, ldir = sys.argv[1], sys.argv[2]
def load_bench(w):
    p = os.path.join(jdir, f"bench-{w}.json")
    return json.load(open(p)) if os.path.exists(p) else None
def load_torch(w):
    p = os.path.join(ldir, f"torch-{w}.log")
    if not os.path.exists(p):
        return None
    for line in open(p):
        if line.startswith("TORCH_JSON "):
            return json.loads(line[len("TORCH_JSON "):])
    return None
print()
print("=== summary (GB/s of output; x floor = time / cuda_d2h_pinned time of the same run, 1.00 is the floor)")
print(f"{'workload':<10} {'row B':>7} {'MB':>6} {'floor':>7} {'pinned':>7} {'x floor':>7} {'prealloc':>8} {'pin/pre':>7} {'torch best':>10} {'pin/torch':>9} {'ok':>3}")
for w in ["seq", "shuf", "img-u8", "img-f32"]:
    b = load_bench(w)
    if not b:
        print(f"{w:<10} (no bench result)")
        continue
    t = load_torch(w)
    res = {r["strategy"]: r for r in b["results"] if r["backend"] == "cuda"}
    floor = b.get("floors", {}).get("cuda_d2h_pinned", {})
    pin, pre = res.get("pinned"), res.get("preallocated")
    ok = all(r.get("verified") for r in b["results"])
    best = None
    if t:
        best = max((r for r in t["results"] if r["strategy"].startswith("torch-best")), key=lambda r: r["gbps"], default=None)
        ok = ok and all(r["verified"] for r in t["results"])
    g = lambda r: r["gbps"] if r else float("nan")
    wl = b["workload"]
    mb = wl["output_bytes"] / 1e6
    row = wl["output_bytes"] // max(wl["rows"], 1)
    print(f"{w:<10} {row:>7} {mb:>6.0f} {floor.get('gbps', float('nan')):>7.2f} {g(pin):>7.2f} "
          f"{(pin or {}).get('floor_ratio', float('nan')):>7.3f} {g(pre):>8.2f} {g(pin) / g(pre) if pre else float('nan'):>7.2f} "
          f"{g(best):>10.2f} {g(pin) / g(best) if best else float('nan'):>9.2f} {'yes' if ok else 'NO':>3}")
    if t:
        print(f"{'':<10} torch: " + ", ".join(f"{r['strategy'][6:]} {r['gbps']:.2f}" for r in t["results"]))
print("targets: pinned x floor <= 1.11 (>= 0.9x floor speed) for >= 512 MB; pin/pre >= 3; pin/torch >= 1")
PY
    if [ -f "$L/bench-cpu-threads.log" ]; then
      echo
      echo "=== CPU engine, 512 B rows shuffled, over threads (x floor: cpu_fresh / cpu_warm)"
      grep -A4 '^scaling' "$L/bench-cpu-threads.log"
    fi
    if [ -f "$L/pytest-cuda.log" ]; then
      echo
      echo "=== pytest -m cuda (python/tests), last lines"
      tail -n 15 "$L/pytest-cuda.log"
    fi
    if [ -f "$L/pytest-writer-cuda.log" ]; then
      echo
      echo "=== pytest writer, CUDA tensors (test_writer_cuda.py), last lines"
      tail -n 15 "$L/pytest-writer-cuda.log"
    fi
    if [ -f "$L/py-inference.log" ]; then
      echo
      echo "=== python/bench_inference.py --device cuda"
      tail -n 8 "$L/py-inference.log"
    fi
    if [ -f "$L/py-bench.log" ]; then
      echo
      echo "=== python/bench.py --device cuda"
      grep -v '^\[' "$L/py-bench.log" | tail -n 45
    fi
  } >"$OUT/summary.txt" 2>&1
  tar -czf "$OUT/logs.tar.gz" -C "$W" logs machine.txt
  tar -czf "$OUT/bench-json.tar.gz" -C "$W" json
  rm -rf "$W"
  echo
  cat "$OUT/summary.txt"
  echo "results: $OUT/summary.txt, $OUT/logs.tar.gz, $OUT/bench-json.tar.gz"
}

case "${1:-}" in
  build) build ;;
  run) run ;;
  *)
    echo "usage: $0 build|run" >&2
    exit 2
    ;;
esac
