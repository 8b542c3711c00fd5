#!/usr/bin/env bash
# Speed of a distributed conversion on one machine, against same-run floors:
#  1. two ranks (RANK/WORLD_SIZE set by hand, as torchrun would) converting ROWS x DIM f32 + int64
#     together with `convert --distributed`, against one process converting all of it;
#  2. `merge` of their shards into a .npy folder, against `cp` of the same shard files.
# Each figure is the best of REPEAT runs; outputs are removed between runs and `sync` flushes the
# dirty pages before each timed command (outside its time), so that no command pays for writing
# back another's output; no command fsyncs its own.
# Usage: scripts/distributed-speed.sh [ROWS] [DIM] [REPEAT]   (defaults 1000000 128 3)
set -euo pipefail
cd "$(dirname "$0")/.."
rows=${1:-1000000}
dim=${2:-128}
repeat=${3:-3}
py=${ARRAYDRAIN_PYTHON:-python3}
cargo build --release --quiet
bin=$PWD/target/release/arraydrain
work=$(mktemp -d "${TMPDIR:-/tmp}/arraydrain-dist-speed.XXXXXX")
trap 'rm -rf "$work"' EXIT
cd "$work"
"$py" -c "
import numpy as np
rng = np.random.default_rng(0)
np.save('x.npy', rng.random(($rows, $dim), dtype=np.float32))
np.save('y.npy', np.arange($rows, dtype=np.int64))
"

now() { date +%s.%N; }
best() { sort -g | head -1; }

one() {
  rm -rf one
  sync
  local t0; t0=$(now)
  "$bin" convert x.npy y.npy --out-dir one --device cpu --quiet >/dev/null
  echo "$(now) - $t0" | bc
}
two() {
  rm -rf sh
  sync
  local t0; t0=$(now)
  RANK=0 WORLD_SIZE=2 LOCAL_RANK=0 "$bin" convert x.npy y.npy --distributed --out-dir sh --device cpu --quiet >/dev/null &
  local a=$!
  RANK=1 WORLD_SIZE=2 LOCAL_RANK=1 "$bin" convert x.npy y.npy --distributed --out-dir sh --device cpu --quiet >/dev/null &
  local b=$!
  wait $a; wait $b
  echo "$(now) - $t0" | bc
}
merge() {
  rm -rf merged
  sync
  local t0; t0=$(now)
  "$bin" merge sh --out-dir merged >/dev/null
  echo "$(now) - $t0" | bc
}
copy() {
  rm -rf copied; mkdir copied
  sync
  local t0; t0=$(now)
  cp sh/part-00000-of-00002/x.npy copied/x0.npy
  cp sh/part-00001-of-00002/x.npy copied/x1.npy
  cp sh/part-00000-of-00002/y.npy copied/y0.npy
  cp sh/part-00001-of-00002/y.npy copied/y1.npy
  echo "$(now) - $t0" | bc
}

# Warm the page cache and the binary once, then alternate so machine noise weighs on all alike.
one >/dev/null; two >/dev/null
t_one=(); t_two=(); t_merge=(); t_cp=()
for _ in $(seq "$repeat"); do
  t_one+=("$(one)"); t_two+=("$(two)"); t_merge+=("$(merge)"); t_cp+=("$(copy)")
done
b_one=$(printf '%s\n' "${t_one[@]}" | best)
b_two=$(printf '%s\n' "${t_two[@]}" | best)
b_merge=$(printf '%s\n' "${t_merge[@]}" | best)
b_cp=$(printf '%s\n' "${t_cp[@]}" | best)
bytes=$(du -cb sh/part-*/x.npy sh/part-*/y.npy | tail -1 | cut -f1)
echo "workload: $rows x $dim f32 + int64, $(echo "scale=1; $bytes / 1000000" | bc) MB of shards, $(nproc) cores, best of $repeat"
printf 'one process convert:   %.3f s\n' "$b_one"
printf 'two ranks convert:     %.3f s   (x %.2f of one process; target 1.2)\n' "$b_two" "$(echo "$b_two / $b_one" | bc -l)"
printf 'cp of the shards:      %.3f s\n' "$b_cp"
printf 'merge --out-dir:       %.3f s   (x %.2f of cp; target 1.5)\n' "$b_merge" "$(echo "$b_merge / $b_cp" | bc -l)"
