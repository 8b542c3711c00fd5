#!/usr/bin/env bash
# `arraydrain convert` against `cp` of the same input files, on the same disk, in the same run.
#
#   scripts/convert-vs-cp.sh [DIR] [ROWS] [DIM] [TRIALS]
#
# Writes x.npy (ROWS x DIM float32) and y.npy (ROWS int64) into DIR (default
# target/convert-vs-cp, i.e. the disk the crate is on), then, TRIALS times (default 5): copies
# both files with cp, converts them to one stored .npz sequentially, and converts them shuffled.
# Every command is timed alone, after removing its own previous output and a `sync`, neither
# timed (so each starts from the same state and one run's write-back does not slow the next).
# The inputs are in the page cache for all of them, as they are after being written. Prints
# each trial and the medians, and convert's median over cp's median.
#
# With BASE_BIN=path/to/another/arraydrain set, each trial also times that binary's sequential
# convert (e.g. a build of an earlier commit), so a change is compared in the same run.
set -euo pipefail
cd "$(dirname "$0")/.."
DIR=${1:-target/convert-vs-cp}
ROWS=${2:-1000000}
DIM=${3:-128}
TRIALS=${4:-5}

cargo build --release -q
BIN=$PWD/target/release/arraydrain
mkdir -p "$DIR"
DIR=$(cd "$DIR" && pwd)

# Inputs: float32 features and int64 labels, written with the standard library only.
python3 - "$DIR" "$ROWS" "$DIM" <<'EOF'
import os, sys
d, rows, dim = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
def save(name, descr, shape, nbytes):
    dims = ", ".join(str(s) for s in shape) + ("," if len(shape) == 1 else "")
    h = "{'descr': '%s', 'fortran_order': False, 'shape': (%s), }" % (descr, dims)
    h += " " * (63 - (10 + len(h)) % 64) + "\n"
    path = os.path.join(d, name)
    if os.path.exists(path) and os.path.getsize(path) == 10 + len(h) + nbytes:
        return
    with open(path, "wb") as f:
        f.write(b"\x93NUMPY\x01\x00" + len(h).to_bytes(2, "little") + h.encode())
        left = nbytes
        while left:
            n = min(left, 64 << 20)
            f.write(os.urandom(n))
            left -= n
save("x.npy", "<f4", (rows, dim), rows * dim * 4)
save("y.npy", "<i8", (rows,), rows * 8)
EOF
IN_MB=$(( ( $(stat -c %s "$DIR/x.npy") + $(stat -c %s "$DIR/y.npy") ) / 1000000 ))

secs() { # secs OUTPUT CMD... -> wall seconds of CMD (after removing OUTPUT and a sync)
  rm -rf "$1"; shift
  sync
  local t0 t1
  t0=$(date +%s.%N)
  "$@" >/dev/null
  t1=$(date +%s.%N)
  echo "$t1 - $t0" | bc -l
}

copy_inputs() { mkdir "$DIR/cp" && cp "$DIR/x.npy" "$DIR/y.npy" "$DIR/cp/"; }

median() { sort -g | awk '{a[NR]=$1} END {print (NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2)}'; }

printf 'input: %s MB (x.npy %sx%s f32 + y.npy int64) in %s\n' "$IN_MB" "$ROWS" "$DIM" "$DIR"
printf 'disk: %s\n' "$(df -hT "$DIR" | awk 'NR==2 {print $1, $2}')"
printf '%-6s %10s %16s %16s' trial "cp (s)" "convert seq (s)" "convert shuf (s)"
[ -n "${BASE_BIN:-}" ] && printf ' %16s' "base seq (s)"
printf '\n'
cp_t=(); seq_t=(); shuf_t=(); base_t=()
for i in $(seq 1 "$TRIALS"); do
  a=$(secs "$DIR/cp" copy_inputs)
  b=$(secs "$DIR/seq.npz" "$BIN" convert "$DIR/x.npy" "$DIR/y.npy" --out "$DIR/seq.npz" \
        --device cpu --quiet)
  c=$(secs "$DIR/shuf.npz" "$BIN" convert "$DIR/x.npy" "$DIR/y.npy" --out "$DIR/shuf.npz" \
        --device cpu --shuffle --seed "$i" --quiet)
  cp_t+=("$a"); seq_t+=("$b"); shuf_t+=("$c")
  printf '%-6s %10.3f %16.3f %16.3f' "$i" "$a" "$b" "$c"
  if [ -n "${BASE_BIN:-}" ]; then
    d=$(secs "$DIR/base.npz" "$BASE_BIN" convert "$DIR/x.npy" "$DIR/y.npy" \
          --out "$DIR/base.npz" --device cpu --quiet)
    base_t+=("$d")
    printf ' %16.3f' "$d"
  fi
  printf '\n'
done
mc=$(printf '%s\n' "${cp_t[@]}" | median)
ms=$(printf '%s\n' "${seq_t[@]}" | median)
mh=$(printf '%s\n' "${shuf_t[@]}" | median)
printf '%-6s %10.3f %16.3f %16.3f\n' median "$mc" "$ms" "$mh"
printf '%-6s %10.3f %16.3f %16.3f\n' best "$(printf '%s\n' "${cp_t[@]}" | sort -g | head -1)" \
  "$(printf '%s\n' "${seq_t[@]}" | sort -g | head -1)" "$(printf '%s\n' "${shuf_t[@]}" | sort -g | head -1)"
printf '%-6s %10s %15.2fx %15.2fx   (targets: 1.5x sequential, 2.5x shuffled)\n' \
  "vs cp" "1.00x" "$(echo "$ms / $mc" | bc -l)" "$(echo "$mh / $mc" | bc -l)"
if [ -n "${BASE_BIN:-}" ]; then
  mb=$(printf '%s\n' "${base_t[@]}" | median)
  printf 'base   %10s %16.3f   (%.2fx cp; this build %.2fx base)\n' "seq median" "$mb" \
    "$(echo "$mb / $mc" | bc -l)" "$(echo "$ms / $mb" | bc -l)"
fi
rm -rf "$DIR/cp" "$DIR/seq.npz" "$DIR/shuf.npz" "$DIR/base.npz"
