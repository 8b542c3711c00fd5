"""NumPy side of arraydrain's dtype tests: files of every fixed-size dtype written by NumPy,
NumPy's own test arrays, and NumPy's verdict on dtype descriptors.

    npdtypes.py make-dtypes DIR ROWS      one .npy per dtype (+ .npz archives), DIR/manifest.json
    npdtypes.py make-numpy-tests DIR      NumPy's test arrays (numpy/lib/tests/test_format.py and
                                          numpy/lib/tests/data/), DIR/manifest.json
    npdtypes.py descr-oracle OUT.json     descriptor literals with NumPy's itemsize or its error

Outputs are checked with ``npfixtures.py check``, which compares dtypes (byte order included)
and bytes with NumPy's own gather.
"""

import ast
import glob
import json
import os
import sys
import warnings

import numpy as np
from numpy.lib import format as npformat


def header_of(path):
    """The descr literal text of a .npy file's header, as written."""
    with open(path, "rb") as f:
        major, _ = npformat.read_magic(f)
        n = int.from_bytes(f.read(2 if major == 1 else 4), "little")
        text = f.read(n).decode("latin1" if major < 3 else "utf8")
    return ast.literal_eval(text)["descr"]


def raw_npy(path, header, data):
    h = header.encode("latin1")
    pad = 64 - (10 + len(h) + 1) % 64
    h = h + b" " * pad + b"\n"
    with open(path, "wb") as f:
        f.write(b"\x93NUMPY\x01\x00" + len(h).to_bytes(2, "little") + h + data)


def dtype_arrays(n):
    """One array of n rows per dtype the engine carries as opaque bytes (and a few numeric)."""
    rng = np.random.default_rng(7)
    raw = lambda dt, shape=(): rng.integers(0, 256, (n, *shape, np.dtype(dt).itemsize),
                                            dtype=np.uint8).view(dt).reshape(n, *shape)
    nested = np.dtype([
        ("id", "<i4"),
        ("pos", [("x", "<f8"), ("y", ">f4")]),
        ("tag", "|S3"),
        ("grid", "<u2", (2, 3)),
    ])
    aligned = np.dtype([("a", "i1"), ("b", "<i8"), ("c", "i1")], align=True)
    offsets = np.dtype({"names": ["a", "b"], "formats": ["<i4", "<f4"], "offsets": [2, 9],
                        "itemsize": 16})
    titles = np.dtype({"names": ["a", "b"], "formats": ["<i4", "|S2"],
                       "titles": ["first field", "second"]})
    subarray = np.dtype([("c", ("<f8", (5,)), (2,))])
    words = np.array(["", "a", "ab", "abc", "\u00e9t\u00e9", "\u4e2d"])
    out = {
        "c64": (rng.standard_normal((n, 2)) + 1j * rng.standard_normal((n, 2))).astype("<c8"),
        "c128": (rng.standard_normal(n) + 1j).astype("<c16"),
        "c128be": (rng.standard_normal(n) - 2j).astype(">c16"),
        "bytes8": np.array([b"row%05d" % i for i in range(n)], dtype="|S8"),
        "u3": words[rng.integers(0, len(words), n)].astype("<U3"),
        "u3be": words[rng.integers(0, len(words), (n, 2))].astype(">U3"),
        "dt_ns": rng.integers(-(2**62), 2**62, n).astype("<M8[ns]"),
        "dt_d": rng.integers(-10**5, 10**5, (n, 2)).astype("<M8[D]"),
        "dt_25s": rng.integers(0, 10**9, n).astype("<M8[25s]"),
        "td_us": rng.integers(-(2**40), 2**40, n).astype("<m8[us]"),
        "td_be": rng.integers(0, 10**6, n).astype(">m8[h]"),
        "void8": raw("|V8"),
        "longdouble": rng.standard_normal(n).astype(np.longdouble),
        "f8be": rng.standard_normal((n, 3)).astype(">f8"),
        "i2be": rng.integers(-3000, 3000, n).astype(">i2"),
        "u8be": rng.integers(0, 2**63, n, dtype=np.uint64).astype(">u8"),
        "f2be": rng.standard_normal(n).astype(">f2"),
        "nested": raw(nested),
        "aligned": raw(aligned),
        "offsets": raw(offsets),
        "titles": raw(titles),
        "subarray": raw(subarray),
        "empty_struct": np.zeros(n, dtype=[]),
        "fortran_c16": np.asfortranarray((rng.standard_normal((n, 3, 2)) * 1j).astype("<c16")),
        "fortran_rec": np.asfortranarray(raw(nested, (4,)).reshape(n, 2, 2)),
    }
    return out


def make_dtypes(d, n):
    os.makedirs(d, exist_ok=True)
    arrays = dtype_arrays(n)
    inputs = []
    for name, a in arrays.items():
        if name in ("c128", "dt_ns", "titles"):
            continue  # these go into the archives below
        p = os.path.join(d, f"{name}.npy")
        np.save(p, a)
        inputs.append(p)
    np.savez(os.path.join(d, "stored.npz"), c128=arrays["c128"], dt_ns=arrays["dt_ns"])
    np.savez_compressed(os.path.join(d, "packed.npz"), titles=arrays["titles"])
    inputs += [os.path.join(d, "stored.npz"), os.path.join(d, "packed.npz")]
    # Headers NumPy reads but never writes: bytes after the data, the type codes '<d' and '?'.
    rng = np.random.default_rng(3)
    p = os.path.join(d, "trailing.npy")
    np.save(p, rng.standard_normal((n, 2)).astype("<f4"))
    with open(p, "ab") as f:
        f.write(b"bytes after the data, ignored by numpy.load")
    inputs.append(p)
    p = os.path.join(d, "code_d.npy")
    raw_npy(p, "{'descr': '<d', 'fortran_order': False, 'shape': (%d,), }" % n,
            rng.standard_normal(n).astype("<f8").tobytes())
    inputs.append(p)
    p = os.path.join(d, "code_bool.npy")
    raw_npy(p, "{'descr': '?', 'fortran_order': False, 'shape': (%d, 3), }" % n,
            rng.integers(0, 2, (n, 3)).astype(np.bool_).tobytes())
    inputs.append(p)
    for p in inputs:
        if p.endswith(".npy"):
            a = np.load(p)
            assert a.shape[0] == n, p
    with open(os.path.join(d, "manifest.json"), "w") as f:
        json.dump({"rows": n, "inputs": inputs,
                   "descrs": {os.path.basename(p)[:-4]: repr(header_of(p))
                              for p in inputs if p.endswith(".npy")}}, f, indent=1)


def numpy_test_arrays():
    """(name, array) for NumPy's own test arrays, as numpy/lib/tests/test_format.py makes them."""
    from numpy.lib.tests import test_format as tf

    out = []
    for i, a in enumerate(tf.basic_arrays):
        out.append((f"basic{i}", a))
    for i, a in enumerate(tf.record_arrays):
        out.append((f"record{i}", a))
    for i, dt in enumerate([tf.dt1, tf.dt2, tf.dt3, tf.dt4, tf.dt5, tf.dt6]):
        a = np.zeros(3, dt)
        for k in range(3):
            a[k] = k + 5
        out.append((f"padded{i + 1}", a))
    for i, mark in enumerate(getattr(tf.test_descr_to_dtype, "pytestmark", [])):
        for j, dt in enumerate(mark.args[1]):
            out.append((f"descr{i}_{j}", np.zeros(3, dt)))
    for i, mark in enumerate(getattr(tf.test_metadata_dtype, "pytestmark", [])):
        if mark.name != "parametrize":
            continue
        for j, dt in enumerate(mark.args[1]):
            out.append((f"metadata{i}_{j}", np.ones(10, dtype=dt)))
    # test_unicode_field_names and test_version_2_0 arrays.
    out.append(("unicode_fields", np.ones(2, dtype=[("int", int),
                                                     ("\N{CJK UNIFIED IDEOGRAPH-6574}\N{CJK UNIFIED IDEOGRAPH-5F62}", int)])))
    out.append(("version2", np.ones(1000, dtype=[(("%d" % i) * 100, float) for i in range(500)])))
    return out


def make_numpy_tests(d):
    os.makedirs(d, exist_ok=True)
    entries = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for name, a in numpy_test_arrays():
            p = os.path.join(d, f"{name}.npy")
            np.save(p, a, allow_pickle=True)
            entries.append(p)
    data = os.path.join(os.path.dirname(np.lib.__file__), "tests", "data")
    files = sorted(glob.glob(os.path.join(data, "*.np[yz]")))
    assert files, f"no NumPy test data under {data}"
    entries += files
    cases = []
    for p in entries:
        # NumPy's verdict: it loads without pickles, and has rows (a first axis). Its header
        # size guard is raised to arraydrain's bound (1 MiB): the 10 000 default is a knob.
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                if p.endswith(".npz"):
                    with np.load(p, allow_pickle=False, max_header_size=2**20) as z:
                        arrays = [z[k] for k in z.files]
                else:
                    arrays = [np.load(p, allow_pickle=False, max_header_size=2**20)]
            if any(a.ndim == 0 for a in arrays):
                verdict, why = "refuse", "0-dimensional"
            else:
                verdict, why = "ok", ""
        except ValueError as e:
            verdict, why = "refuse", "object" if "allow_pickle" in str(e) else str(e)
        cases.append({"path": p, "expect": verdict, "why": why})
    with open(os.path.join(d, "manifest.json"), "w") as f:
        json.dump({"cases": cases}, f, indent=1)


# Descriptor literals: what NumPy writes, what it reads, and what it refuses.
DESCRS = [
    "'<f8'", "'<d'", "'d'", "'?'", "'b'", "'B'", "'h'", "'i'", "'l'", "'q'", "'P'", "'e'",
    "'f'", "'g'", "'F'", "'D'", "'G'", "'c'", "'S'", "'a5'", "'U'", "'V'", "'M'", "'m'",
    "'>f8'", "'=f8'", "'|f8'", "'>i1'", "'|b1'", "'>b1'", "'<f2'", "'<f16'", "'<c8'",
    "'>c16'", "'<c32'", "'|S8'", "'>S3'", "'<U3'", "'>U3'", "'|V8'", "'|V0'", "'<M8'",
    "'<M8[ns]'", "'>M8[D]'", "'<m8[25s]'", "'<M8[2147483647s]'", "'<M8[generic]'",
    "'<M8[\u03bcs]'", "'datetime64[ns]'", "'timedelta64'", "'float64'", "'int32'",
    "'complex128'", "'longdouble'", "'bool'", "'str'", "'bytes'", "'void'", "'S2147483647'",
    "'U536870911'",
    "[('a', '<f4'), ('b', '<i8')]", "[('a', '|i1'), ('', '|V3'), ('b', '<i4')]",
    "[('x', '<i4', (2,)), ('y', '<f8', (2, 2)), ('z', '|u1')]",
    "[('c', ('<f8', (5,)), (2,))]", "[(('title', 'a'), '<f4'), ('b', [('c', '|S2')])]",
    "[('', '|V8')]", "[]", "[('', '<f4')]", "[('a', '<f4', 3)]", "[('a', '<f4', ())]",
    "('<f4', (2, 3))", "('<f4', ())", "('<f4', 3)", "[('a', '<f4'), ('', '|V4'), ('', '|V2')]",
    "[['a', '<f4']]", "[((1, 'a'), '<f4')]", "[('\u540d', '<f4')]",
    # refused by NumPy
    "'u'", "'i3'", "'b2'", "'f1'", "'E'", "'!f8'", "'M4'", "'M8[xx]'", "'M8[]'",
    "'M8[-1s]'", "'M8[2147483648s]'", "'S2147483648'", "'U536870912'", "'f8 '",
    "'<float64'", "'Float32'", "'int0'", "[('a', '<f4'), ('a', '<i4')]",
    "[(('t', 'a'), '<f4'), (('t', 'b'), '<f4')]", "[(1, '<f4')]", "[('a',)]",
    "[('a', '<f4', (2,), 1)]", "[('a', '<f4', -1)]", "('<f4', -1)", "('<f4',)", "5", "None",
    "{'a': 1}", "b'<f4'", "[('a', '<f4', (True,))]", "[(b'a', '<f4')]",
    # objects: NumPy reads them (with pickles); arraydrain refuses them
    "'O'", "'|O'", "'O8'", "'object'", "[('a', 'O')]", "[('a', [('b', '<f4'), ('c', 'O')])]",
    "('O', (2,))",
    # spellings NumPy reads but never writes, which arraydrain refuses
    "'f4,i4'", "'(2,)i4'", "'2i4'", "'S 3'", "'S+3'", "'M8[us/2]'", "'<datetime64'",
    "('<f4', '<i4')", "('<f4', (2,), 5)",
]


def descr_oracle(out):
    results = []
    for text in DESCRS:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                dt = npformat.descr_to_dtype(ast.literal_eval(text))
            results.append({"text": text, "size": dt.itemsize, "object": bool(dt.hasobject)})
        except Exception as e:  # noqa: BLE001 - any error is NumPy refusing the descriptor
            results.append({"text": text, "error": f"{type(e).__name__}: {e}"})
    with open(out, "w") as f:
        json.dump(results, f, indent=1)


def main():
    cmd = sys.argv[1]
    if cmd == "make-dtypes":
        make_dtypes(sys.argv[2], int(sys.argv[3]))
    elif cmd == "make-numpy-tests":
        make_numpy_tests(sys.argv[2])
    elif cmd == "descr-oracle":
        descr_oracle(sys.argv[2])
    else:
        sys.exit(f"unknown command {cmd}")


if __name__ == "__main__":
    main()
