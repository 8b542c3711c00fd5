"""NumPy side of arraydrain's NumPy tests: writes inputs with NumPy itself and checks outputs
against NumPy's own gather (``x[order]``).

    npfixtures.py probe
    npfixtures.py make-inputs DIR ROWS     good inputs + DIR/manifest.json
    npfixtures.py make-bad DIR             bad inputs + DIR/bad.json (args, expected words)
    npfixtures.py check SPEC.json          every check in SPEC; exit 1 on the first mismatch

A check spec is a list of {"inputs": [...], "output": PATH, "kind": "npz" | "dir",
"order": {"file": ORDER.npy} | {"seq": true} | {"shard": [rank, world], "drop_last": bool}
| {"file": ORDER.npy, "permutation": true}, "batch": B, "drop_last": bool, "columns": [...]|null}.
"""

import json
import math
import os
import sys
import zipfile

import numpy as np

try:  # NumPy 2 keeps the header reader for every version here.
    from numpy.lib import _format_impl as _format
except ImportError:  # NumPy 1
    from numpy.lib import format as _format


def save_v(path, arr, version):
    with open(path, "wb") as f:
        np.lib.format.write_array(f, arr, version=version, allow_pickle=False)


def make_inputs(d, rows):
    os.makedirs(d, exist_ok=True)
    rng = np.random.default_rng(1234)
    n = rows
    # .npy files, one column each: scalar and multi-dimensional rows, several dtypes.
    np.save(os.path.join(d, "x.npy"), rng.standard_normal((n, 4, 3), dtype=np.float32))
    np.save(os.path.join(d, "y.npy"), rng.integers(-(2**62), 2**62, n, dtype=np.int64))
    np.save(os.path.join(d, "img.npy"), rng.integers(0, 256, (n, 2, 2, 3), dtype=np.uint8))
    np.save(os.path.join(d, "h.npy"), rng.standard_normal((n, 5)).astype(np.float16))
    np.save(os.path.join(d, "mask.npy"), rng.integers(0, 2, n).astype(np.bool_))
    # Fortran order and big-endian: read correctly, never misread.
    np.save(os.path.join(d, "fort.npy"), np.asfortranarray(rng.standard_normal((n, 3, 2))))
    np.save(os.path.join(d, "big.npy"), rng.integers(-1000, 1000, (n, 2)).astype(">i4"))
    # Format versions 2.0 and 3.0.
    save_v(os.path.join(d, "v2.npy"), rng.integers(0, 60000, n).astype(np.uint16), (2, 0))
    save_v(os.path.join(d, "v3.npy"), rng.standard_normal(n).astype(np.float64), (3, 0))
    # A stored .npz (numpy.savez) with the remaining dtypes …
    np.savez(
        os.path.join(d, "more.npz"),
        a=rng.integers(-30000, 30000, (n, 2)).astype(np.int16),
        b=rng.integers(0, 2**32, n, dtype=np.uint64).astype(np.uint32),
        c=rng.standard_normal((n, 3)),
        d=rng.integers(-128, 128, n).astype(np.int8),
        e=rng.integers(0, 2**63, n, dtype=np.uint64),
        g=rng.integers(-(2**31), 2**31, (n, 1)).astype(np.int32),
    )
    # … and a compressed one (numpy.savez_compressed).
    np.savez_compressed(
        os.path.join(d, "packed.npz"),
        k=rng.standard_normal(n).astype(np.float32),
        m=np.arange(n * 2, dtype=np.uint8).reshape(n, 2),
    )
    # Explicit orders: repeats, reversal, int64 and int32 files.
    order = np.concatenate([np.arange(n)[::-1], [0, 0, n - 1], rng.integers(0, n, 17)])
    np.save(os.path.join(d, "order64.npy"), order.astype(np.int64))
    np.save(os.path.join(d, "order32.npy"), rng.permutation(n)[: n // 2].astype(np.int32))
    np.save(os.path.join(d, "orderu64.npy"), rng.integers(0, n, 10).astype(np.uint64))
    # Zero-row arrays.
    z = os.path.join(d, "zero")
    os.makedirs(z, exist_ok=True)
    np.save(os.path.join(z, "zx.npy"), np.zeros((0, 3), dtype=np.float32))
    np.save(os.path.join(z, "zy.npy"), np.zeros((0,), dtype=np.int64))
    np.savez(os.path.join(z, "zz.npz"), zb=np.zeros((0, 2, 2), dtype=np.bool_))
    files = ["x.npy", "y.npy", "img.npy", "h.npy", "mask.npy", "fort.npy", "big.npy",
             "v2.npy", "v3.npy", "more.npz", "packed.npz"]
    manifest = {
        "rows": n,
        "inputs": [os.path.join(d, f) for f in files],
        "zero_inputs": [os.path.join(z, f) for f in ["zx.npy", "zy.npy", "zz.npz"]],
        "orders": {k: os.path.join(d, f"{k}.npy") for k in ["order64", "order32", "orderu64"]},
    }
    with open(os.path.join(d, "manifest.json"), "w") as f:
        json.dump(manifest, f, indent=1)


def raw_npy(path, header, data=b"", magic=b"\x93NUMPY", version=(1, 0)):
    h = header.encode("latin1")
    n = len(h).to_bytes(2 if version[0] == 1 else 4, "little")
    with open(path, "wb") as f:
        f.write(magic + bytes(version) + n + h + data)


def make_bad(d):
    """Bad files of every kind. Each case: the inputs, and words the error must contain
    (the offending file's name first)."""
    os.makedirs(d, exist_ok=True)
    good = os.path.join(d, "good.npy")
    np.save(good, np.arange(20, dtype=np.float32).reshape(10, 2))
    cases = []

    def case(name, inputs, *words):
        cases.append({"name": name, "inputs": inputs, "expect": list(words)})

    p = os.path.join(d, "wrong_magic.npy")
    with open(p, "wb") as f:
        f.write(b"PK\x03\x04 this is not a numpy file at all" * 4)
    case("wrong magic", [good, p], "wrong_magic.npy", "magic")

    p = os.path.join(d, "empty_file.npy")
    open(p, "wb").close()
    case("empty file", [good, p], "empty_file.npy", "magic")

    p = os.path.join(d, "truncated.npy")
    np.save(p, np.arange(1000, dtype=np.float64))
    with open(p, "r+b") as f:
        f.truncate(os.path.getsize(p) - 100)
    case("truncated data", [p], "truncated.npy", "truncated")

    p = os.path.join(d, "truncated_header.npy")
    with open(good, "rb") as f:
        head = f.read(40)
    with open(p, "wb") as f:
        f.write(head)
    case("truncated header", [p], "truncated_header.npy", "truncated")

    p = os.path.join(d, "bad_header.npy")
    raw_npy(p, "{'descr': '<f4', 'fortran_order': False, 'shape': (10, 2), 'x'\n", bytes(80))
    case("bad header", [good, p], "bad_header.npy", "header")

    p = os.path.join(d, "not_a_dict.npy")
    raw_npy(p, "import os; os.system('echo pwned')\n", bytes(80))
    case("header is code", [p], "not_a_dict.npy", "header")

    p = os.path.join(d, "bad_version.npy")
    raw_npy(p, "{'descr': '<f4', 'fortran_order': False, 'shape': (10, 2), }\n", bytes(80),
            version=(9, 0))
    case("unknown version", [p], "bad_version.npy", "version")

    p = os.path.join(d, "object.npy")
    np.save(p, np.array([{"a": 1}, None, "s"] * 4, dtype=object), allow_pickle=True)
    case("object array", [p], "object.npy", "object")

    # Headers NumPy refuses: unknown minor versions, a shape that is an int, not a tuple,
    # fortran_order that is a string, a structured dtype with an object field.
    hdr = "{'descr': '<f4', 'fortran_order': False, 'shape': (10, 2), }\n"
    for major, minor in [(1, 1), (1, 255), (2, 1), (3, 1)]:
        p = os.path.join(d, f"version_{major}_{minor}.npy")
        with open(p, "wb") as f:
            h = hdr.encode("latin1")
            n = len(h).to_bytes(2 if major == 1 else 4, "little")
            f.write(b"\x93NUMPY" + bytes([major, minor]) + n + h + bytes(80))
        case(f"version {major}.{minor}", [p], f"version_{major}_{minor}.npy",
             f"version {major}.{minor}")

    p = os.path.join(d, "shape_int.npy")
    raw_npy(p, "{'descr': '<f4', 'fortran_order': False, 'shape': (4), }\n", bytes(16))
    case("shape (4)", [p], "shape_int.npy", "shape is not a tuple", "(4)")

    p = os.path.join(d, "fortran_str.npy")
    raw_npy(p, "{'descr': '<f4', 'fortran_order': 'False', 'shape': (4,), }\n", bytes(16))
    case("fortran_order 'False'", [p], "fortran_str.npy", "fortran_order", "'False'")

    p = os.path.join(d, "object_field.npy")
    np.save(p, np.zeros(10, dtype=[("a", "<f4"), ("b", [("c", "O")])]), allow_pickle=True)
    case("object field", [p], "object_field.npy", "object")

    p = os.path.join(d, "object_wide.npy")
    dt = np.dtype([(f"f{i}", "<f4") for i in range(10000)] + [("o", "O")])
    raw_npy(p, "{'descr': %r, 'fortran_order': False, 'shape': (1,), }\n" % (dt.descr,),
            version=(2, 0))
    case("object field of a 10,001-field header", [p], "object_wide.npy", "object")

    p = os.path.join(d, "scalar.npy")
    np.save(p, np.float32(3.0))
    case("0-d array", [p], "scalar.npy", "0-dimensional")

    p = os.path.join(d, "huge_shape.npy")
    raw_npy(p, "{'descr': '<f8', 'fortran_order': False, 'shape': (4611686018427387904, 8), }\n")
    case("shape overflows", [p], "huge_shape.npy", "too large")

    p = os.path.join(d, "eleven_rows.npy")
    np.save(p, np.arange(11, dtype=np.int64))
    case("row counts differ", [good, p], "eleven_rows.npy", "11 rows")

    p = os.path.join(d, "dup.npz")
    np.savez(p, good=np.zeros(10))
    case("duplicate column", [good, p], "dup.npz", "good")

    p = os.path.join(d, "not_zip.npz")
    with open(p, "wb") as f:
        f.write(os.urandom(300))
    case("not a zip", [p], "not_zip.npz", "npz")

    p = os.path.join(d, "truncated.npz")
    np.savez(p, a=np.arange(1000.0), b=np.arange(1000))
    with open(p, "r+b") as f:
        f.truncate(os.path.getsize(p) // 2)
    case("truncated archive", [p], "truncated.npz", "npz")

    p = os.path.join(d, "bad_crc.npz")
    np.savez(p, a=np.arange(1000, dtype=np.int64))
    with zipfile.ZipFile(p) as z:
        info = z.getinfo("a.npy")
        # local header: 30 bytes + name + extra, then the member's bytes; flip one data byte
        off = info.header_offset
    with open(p, "r+b") as f:
        f.seek(off + 26)
        ln = int.from_bytes(f.read(2), "little") + int.from_bytes(f.read(2), "little")
        pos = off + 30 + ln + 128 + 800
        f.seek(pos)
        b = f.read(1)
        f.seek(pos)
        f.write(bytes([b[0] ^ 0xFF]))
    case("CRC mismatch (stored)", [p], "bad_crc.npz", "a.npy")

    p = os.path.join(d, "bad_deflate.npz")
    np.savez_compressed(p, a=np.arange(100000, dtype=np.int64) % 7)
    with zipfile.ZipFile(p) as z:
        info = z.getinfo("a.npy")
        off, csize = info.header_offset, info.compress_size
    with open(p, "r+b") as f:
        f.seek(off + 26)
        ln = int.from_bytes(f.read(2), "little") + int.from_bytes(f.read(2), "little")
        pos = off + 30 + ln + csize // 2
        f.seek(pos)
        b = f.read(1)
        f.seek(pos)
        f.write(bytes([b[0] ^ 0x55]))
    case("corrupt deflate stream", [p], "bad_deflate.npz", "a.npy")

    p = os.path.join(d, "text_member.npz")
    with zipfile.ZipFile(p, "w") as z:
        z.writestr("readme.txt", "hello")
    case("member that is not .npy", [p], "text_member.npz", "readme.txt")

    p = os.path.join(d, "bad_member.npz")
    with zipfile.ZipFile(p, "w") as z:
        z.writestr("a.npy", b"\x93NUMPZ not really")
    case("member with wrong magic", [p], "bad_member.npz", "a.npy", "magic")

    p = os.path.join(d, "object_member.npz")
    np.savez(p, o=np.array([None] * 10, dtype=object))
    case("object array member", [p], "object_member.npz", "object")

    p = os.path.join(d, "empty.npz")
    with zipfile.ZipFile(p, "w"):
        pass
    case("archive without arrays", [p], "empty.npz", "no arrays")

    case("missing file", [good, os.path.join(d, "missing.npy")], "missing.npy")

    # Index files for --indices.
    idx_cases = []

    def idx_case(name, arr, *words):
        q = os.path.join(d, f"{name}.npy")
        np.save(q, arr)
        idx_cases.append({"name": name, "inputs": [good], "indices": q,
                          "expect": [f"{name}.npy", *words]})

    idx_case("idx_negative", np.array([0, 3, -1], dtype=np.int64), "negative")
    idx_case("idx_float", np.array([0.0, 1.0]), "int64")
    idx_case("idx_2d", np.zeros((2, 2), dtype=np.int64), "1-D")
    idx_case("idx_range", np.array([0, 10], dtype=np.int64), "out of range")
    with open(os.path.join(d, "bad.json"), "w") as f:
        json.dump({"read": cases, "indices": idx_cases}, f, indent=1)


def read_raw(f):
    """An array over the exact bytes of a .npy stream. ``np.load`` reads archive members
    field by field, which leaves the padding bytes of a structured dtype undefined; this keeps
    every byte as written."""
    version = np.lib.format.read_magic(f)
    shape, fortran, dtype = _format._read_array_header(f, version, max_header_size=2**20)
    n = math.prod(shape)
    data = f.read(n * dtype.itemsize)
    assert len(data) == n * dtype.itemsize, "truncated"
    if dtype.itemsize == 0:
        return np.zeros(shape, dtype)
    return np.frombuffer(data, dtype, count=n).reshape(shape, order="F" if fortran else "C")


def load(path):
    if path.endswith(".npz"):
        with zipfile.ZipFile(path) as z:
            return {k[:-4]: read_raw(z.open(k)) for k in z.namelist()}
    with open(path, "rb") as f:
        return {os.path.splitext(os.path.basename(path))[0]: read_raw(f)}


def shard_order(n, rank, world, drop_last):
    """torch.utils.data.DistributedSampler(shuffle=False), written out."""
    idx = list(range(n))
    if drop_last and n % world != 0:
        num = math.ceil((n - world) / world)
    else:
        num = math.ceil(n / world)
    total = num * world
    if not drop_last:
        pad = total - n
        if pad <= n:
            idx += idx[:pad]
        else:
            idx += (idx * math.ceil(pad / n))[:pad]
    else:
        idx = idx[:total]
    return np.array(idx[rank:total:world], dtype=np.int64)


def check_one(spec):
    cols = {}
    for p in spec["inputs"]:
        cols.update(load(p))
    if spec.get("columns"):
        cols = {k: cols[k] for k in spec["columns"]}
    n = len(next(iter(cols.values())))
    o = spec["order"]
    if "file" in o:
        order = np.load(o["file"]).astype(np.int64)
        if o.get("permutation"):
            assert np.array_equal(np.sort(order), np.arange(n)), "the order is not a permutation"
            assert n < 3 or not np.array_equal(order, np.arange(n)), "the order is not shuffled"
    elif "shard" in o:
        order = shard_order(n, o["shard"][0], o["shard"][1], o.get("drop_last", False))
    else:
        order = np.arange(n)
    if spec.get("drop_last"):
        b = spec["batch"]
        order = order[: len(order) // b * b]
    if "expect_order" in spec:
        assert np.array_equal(order, np.load(spec["expect_order"])), "saved order differs"
    if spec["kind"] == "npz":
        with zipfile.ZipFile(spec["output"]) as z:
            names = z.namelist()
            methods = {i.compress_type for i in z.infolist()}
        want = zipfile.ZIP_DEFLATED if spec.get("compressed") else zipfile.ZIP_STORED
        assert methods == {want}, f"members stored with {methods}, expected {want}"
        assert names == [f"{k}.npy" for k in cols], f"members {names}, expected {list(cols)}"
        out = load(spec["output"])
    else:
        files = sorted(f for f in os.listdir(spec["output"]))
        assert files == sorted(f"{k}.npy" for k in cols), f"files {files}"
        out = {}
        for k in cols:
            out.update(load(os.path.join(spec["output"], f"{k}.npy")))
    for k, src in cols.items():
        got = out[k]
        exp = src[order]
        # The identical dtype, byte order included, and the identical bytes. The bytes are
        # gathered as raw items (a void view): NumPy's own copy of a structured dtype moves
        # only its fields and leaves padding undefined, while a gather copies whole items.
        if src.dtype.itemsize:
            raw = src.view(np.dtype((np.void, src.dtype.itemsize)))
            exp_bytes = np.ascontiguousarray(raw[order]).tobytes()
        else:
            exp_bytes = b""
        assert got.dtype == exp.dtype, f"{k}: dtype {got.dtype}, expected {exp.dtype}"
        assert got.dtype.str == exp.dtype.str, f"{k}: dtype {got.dtype.str}, expected {exp.dtype.str}"
        assert got.shape == exp.shape, f"{k}: shape {got.shape}, expected {exp.shape}"
        assert got.flags.c_contiguous, f"{k}: not C-contiguous"
        assert np.ascontiguousarray(got).view(np.uint8).tobytes() == exp_bytes, \
            f"{k}: bytes differ from numpy's x[order]"
    return len(order)


def main():
    cmd = sys.argv[1]
    if cmd == "probe":
        print(np.__version__)
    elif cmd == "make-inputs":
        make_inputs(sys.argv[2], int(sys.argv[3]))
    elif cmd == "make-bad":
        make_bad(sys.argv[2])
    elif cmd == "check":
        with open(sys.argv[2]) as f:
            specs = json.load(f)
        for spec in specs:
            try:
                rows = check_one(spec)
            except AssertionError as e:
                print(f"MISMATCH in {spec['output']}: {e}", file=sys.stderr)
                sys.exit(1)
            print(f"ok {spec['output']} ({rows} rows)")
    else:
        sys.exit(f"unknown command {cmd}")


if __name__ == "__main__":
    main()
