#!/usr/bin/env bash
# Device check for the CUDA engine, in two halves:
#
#   scripts/device-check.sh build   on the build machine (Rust toolchain, no GPU needed):
#                                   release binary + release test binaries into .device-bin/
#                                   (git-ignored), to be copied to the GPU machine with the repo.
#   scripts/device-check.sh run     on the GPU machine (no Rust there), from the repo root:
#                                   nvidia-smi and the loader's view of libcuda/libnvrtc, the GPU
#                                   tests, compute-sanitizer memcheck + racecheck on a small GPU
#                                   test, `arraydrain bench --device cuda` (default workload
#                                   sequential and shuffled, and an 8 GB workload), the PyTorch
#                                   baselines on the same shapes (scripts/torch_compare.py), the
#                                   Python package's CUDA tests (pytest -m cuda, python/tests) and
#                                   python/bench.py --device cuda on a smaller workload, and a
#                                   summary table, printed last. Budget: under 7 minutes.
#
# The Python half: `build` also puts the package's wheel and pytest's wheels (pure Python) into
# .device-bin/wheels; `run` installs them into .device-bin/pylib (no network, no venv) on top of
# the GPU machine's python3 with PyTorch and NumPy.
#
# Environment: OUT (where results go; default .device-bin/out), DEVICE_CHECK_QUICK=1 (skip the
# 8 GB workload), SANITIZER (path of compute-sanitizer if not on PATH).
set -uo pipefail
cd "$(dirname "$0")/.."
BIN=.device-bin

build() {
  set -e
  rm -rf "$BIN"
  mkdir -p "$BIN/tests"
  cargo build --release
  cp target/release/arraydrain "$BIN/"
  cargo test --release --no-run --message-format=json 2>/dev/null >"$BIN/test-build.json"
  python3 - "$BIN" <<'PY'
import json, shutil, sys, os
bin_dir = sys.argv[1]
seen = []
for line in open(os.path.join(bin_dir, "test-build.json")):
    try:
        m = json.loads(line)
    except ValueError:
        continue
    if m.get("reason") != "compiler-artifact" or not m.get("executable"):
        continue
    if not m.get("profile", {}).get("test"):
        continue
    t = m["target"]
    kind = t["kind"][0] if t["kind"] else "x"
    name = t["name"] if kind == "test" else f"{kind}-{t['name']}"
    shutil.copy2(m["executable"], os.path.join(bin_dir, "tests", name))
    seen.append(name)
print("test binaries:", ", ".join(sorted(seen)))
PY
  rm -f "$BIN/test-build.json"
  # The Python package and pytest, for the CUDA tests of python/tests on the GPU machine.
  local py=${ARRAYDRAIN_PYTHON:-python3}
  "$py" -m maturin build --release --manifest-path python/Cargo.toml --out "$BIN/wheels"
  # Pure-Python wheels that install on any Python >= 3.9 (exceptiongroup and tomli: what pytest
  # needs below 3.11, named because pip evaluates markers for the running Python).
  "$py" -m pip download -q --only-binary=:all: --python-version 3.9 --implementation py \
    --platform any --dest "$BIN/wheels" pytest exceptiongroup tomli
  git rev-parse --short HEAD >"$BIN/commit" 2>/dev/null || true
  du -sh "$BIN"
  echo "built into $BIN/ — copy the repository (with $BIN/) to the GPU machine and run: scripts/device-check.sh run"
}

STEPS=()
step() { # step NAME STATUS SECONDS
  STEPS+=("$(printf '%-34s %-6s %5ss' "$1" "$2" "$3")")
}

run_step() { # run_step NAME TIMEOUT_S LOGFILE CMD...
  local name=$1 limit=$2 log=$3
  shift 3
  local t0=$SECONDS
  echo
  echo "=== $name ($*)"
  timeout --kill-after=10 "$limit" "$@" 2>&1 | tee "$log" | tail -n 40
  local rc=${PIPESTATUS[0]}
  local status=ok
  [ "$rc" = 124 ] && status=TIMEOUT
  [ "$rc" != 0 ] && [ "$rc" != 124 ] && status="rc=$rc"
  step "$name" "$status" $((SECONDS - t0))
  return 0
}

run() {
  local started=$SECONDS
  OUT=${OUT:-$BIN/out}
  mkdir -p "$OUT"
  [ -x "$BIN/arraydrain" ] || { echo "no $BIN/arraydrain: run 'scripts/device-check.sh build' on the build machine first"; exit 2; }
  export PATH="$PATH:/usr/local/cuda/bin"
  echo "=== machine"
  nvidia-smi || echo "nvidia-smi failed"
  echo "--- loader view of libcuda / libnvrtc"
  ldconfig -p | grep -E 'libcuda|libnvrtc' || echo "(none in the ld.so cache)"
  ls -1 /usr/local/cuda/lib64/libnvrtc* /usr/local/cuda/lib64/libcudart.so* 2>/dev/null | head
  echo "LD_LIBRARY_PATH=${LD_LIBRARY_PATH:-}"
  echo "commit: $(cat "$BIN/commit" 2>/dev/null || echo '?')"
  "$BIN/arraydrain" info | tee "$OUT/info.txt"

  local T=$BIN/tests
  run_step "kernel NVRTC check" 60 "$OUT/nvrtc.log" "$T/cuda_nvrtc" --test-threads=1
  run_step "cuda_unavailable test" 60 "$OUT/unavailable.log" "$T/cuda_unavailable" --nocapture
  run_step "GPU tests (--ignored)" 200 "$OUT/gpu-tests.log" "$T/cuda_gpu" --ignored --test-threads=1

  local san=${SANITIZER:-$(command -v compute-sanitizer || echo /usr/local/cuda/bin/compute-sanitizer)}
  for tool in memcheck racecheck; do
    run_step "compute-sanitizer $tool" 120 "$OUT/sanitizer-$tool.log" \
      "$san" --tool "$tool" --error-exitcode 3 --print-limit 20 \
      "$T/cuda_gpu" --ignored --exact small_drains_for_the_sanitizer --test-threads=1
  done

  local AD=$BIN/arraydrain
  run_step "bench default sequential" 90 "$OUT/bench-seq.log" \
    "$AD" bench --device cuda --repeat 3 --json "$OUT/bench-seq.json"
  run_step "bench default shuffled" 90 "$OUT/bench-shuf.log" \
    "$AD" bench --device cuda --repeat 3 --shuffle --json "$OUT/bench-shuf.json"
  if [ "${DEVICE_CHECK_QUICK:-0}" != 1 ]; then
    run_step "bench 8 GB shuffled" 150 "$OUT/bench-8g.log" \
      "$AD" bench --device cuda --rows 16000000 --dim 128 --shuffle --repeat 2 --json "$OUT/bench-8g.json"
  fi
  for w in seq shuf 8g; do
    [ -f "$OUT/bench-$w.json" ] || continue
    local extra=(--repeat 3)
    # On 8 GB the slow classic recipes would eat the time budget: keep preallocated (the
    # classic reference) and the best practice.
    [ "$w" = 8g ] && extra=(--repeat 2 --recipes preallocated,best-batched,best-whole)
    run_step "torch $w" 120 "$OUT/torch-$w.log" \
      python3 scripts/torch_compare.py --from-json "$OUT/bench-$w.json" --label "$w" "${extra[@]}"
  done

  # The Python package on CUDA tensors: its pytest CUDA tests, then its benchmark (smaller than
  # the Rust one: the classic recipes over a DataLoader fetch CUDA samples one by one).
  rm -rf "$BIN/pylib"
  if python3 -m pip install -q --no-index --no-deps --target "$BIN/pylib" "$BIN"/wheels/*.whl; then
    run_step "pytest -m cuda (python/tests)" 150 "$OUT/pytest-cuda.log" \
      env PYTHONPATH="$BIN/pylib" python3 -m pytest python/tests -m cuda -q -rs -p no:cacheprovider
    run_step "python/bench.py --device cuda" 150 "$OUT/py-bench.log" \
      env PYTHONPATH="$BIN/pylib" python3 python/bench.py --device cuda --rows 200000 \
      --repeat 2 --no-memory --rust-bin "$AD" --json "$OUT/py-bench.json"
  else
    step "python wheels install" FAIL 0
  fi

  echo
  echo "=== steps"
  printf '%s\n' "${STEPS[@]}"
  echo "total $((SECONDS - started)) s"
  python3 - "$OUT" <<'PY'
import json, os, sys
out = sys.argv[1]
def load_bench(w):
    p = os.path.join(out, f"bench-{w}.json")
    return json.load(open(p)) if os.path.exists(p) else None
def load_torch(w):
    p = os.path.join(out, f"torch-{w}.log")
    if not os.path.exists(p):
        return None
    for line in open(p):
        if line.startswith("TORCH_JSON "):
            return json.loads(line[len("TORCH_JSON "):])
    return None
print()
print("=== summary (GB/s of output; x floor = time / cuda_d2h_pinned time, 1.00 is the floor)")
hdr = f"{'workload':<10} {'MB':>7} {'floor':>7} {'pinned':>7} {'x floor':>7} {'prealloc':>8} {'pin/pre':>7} {'torch best':>10} {'pin/torch':>9} {'dev MiB pin/torch':>18} {'ok':>3}"
print(hdr)
for w in ["seq", "shuf", "8g"]:
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
    def g(r):
        return r["gbps"] if r else float("nan")
    mb = b["workload"]["output_bytes"] / 1e6
    dev = "-"
    if pin and best:
        dev = f"{(pin.get('peak_device_bytes') or 0) / 2**20:.0f}/{best['peak_device_bytes'] / 2**20:.0f}"
    print(f"{w:<10} {mb:>7.0f} {floor.get('gbps', float('nan')):>7.2f} {g(pin):>7.2f} "
          f"{(pin or {}).get('floor_ratio', float('nan')):>7.3f} {g(pre):>8.2f} {g(pin) / g(pre) if pre else float('nan'):>7.2f} "
          f"{g(best):>10.2f} {g(pin) / g(best) if best else float('nan'):>9.2f} {dev:>18} {'yes' if ok else 'NO':>3}")
    if t:
        print(f"{'':<10} torch: " + ", ".join(f"{r['strategy'][6:]} {r['gbps']:.2f}" for r in t["results"]))
print("targets: pinned x floor <= 1.11 (>= 0.9x floor speed) for >= 512 MB; pin/pre >= 3; pin/torch >= 1")
PY
}

case "${1:-}" in
  build) build ;;
  run) run ;;
  *)
    echo "usage: $0 build|run" >&2
    exit 2
    ;;
esac
