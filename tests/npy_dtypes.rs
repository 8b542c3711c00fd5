//! Every fixed-size NumPy dtype, byte-exact: files written by NumPy itself (complex, strings,
//! datetimes with units, void, long double, structured with nesting, padding, titles and
//! subarrays, big-endian numerics, Fortran order) go through `arraydrain convert` in every
//! output mode and order, and NumPy reads back the identical dtype and bytes. NumPy's own test
//! arrays (`numpy/lib/tests/test_format.py` and `numpy/lib/tests/data/`) are converted or
//! refused exactly where NumPy loads or refuses them, and descriptor sizes match NumPy's.

#[path = "py/harness.rs"]
mod harness;

use arraydrain::TableError;
use std::path::Path;
use std::process::{Command, Output};

use arraydrain::dtype::Opaque;
use arraydrain::{npy, DType, Error, Loader, Strategy};
use harness::{json, numpy_python, strings, text, Scratch};
use serde_json::{json, Value};

fn npdtypes(py: &Path, args: &[&str]) {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/py/npdtypes.py");
    let out = Command::new(py)
        .arg(&script)
        .args(args)
        .output()
        .expect("run python");
    assert!(
        out.status.success(),
        "npdtypes.py {args:?} failed:\n{}",
        text(&out)
    );
}

fn check(py: &Path, specs: &[Value], at: &Path) {
    std::fs::write(at, serde_json::to_string(specs).unwrap()).unwrap();
    harness::fixtures(py, &["check", at.to_str().unwrap()]);
}

fn convert(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_arraydrain"))
        .arg("convert")
        .args(args)
        .args(["--device", "cpu", "--quiet"])
        .output()
        .expect("run arraydrain")
}

fn p(path: &Path) -> &str {
    path.to_str().unwrap()
}

/// The output modes: (tag, flags before the target, target is a folder, extra flags, the
/// order as `npfixtures.py check` computes it).
fn modes(saved: &Path) -> Vec<(&'static str, &'static str, Vec<String>, Value)> {
    let shuffled = json!({"file": saved, "permutation": true});
    let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
    vec![
        ("seq", "--out", s(&[]), json!({"seq": true})),
        (
            "shuffle-compress",
            "--out",
            s(&["--shuffle", "--seed", "3", "--compress"]),
            shuffled.clone(),
        ),
        (
            "shuffle-dir",
            "--out-dir",
            s(&["--shuffle", "--seed", "4", "--batch", "7"]),
            shuffled.clone(),
        ),
        (
            "shuffle-mmap",
            "--out-dir",
            s(&["--shuffle", "--seed", "5", "--mmap"]),
            shuffled,
        ),
        (
            "shard",
            "--out",
            s(&["--rank", "1", "--world-size", "3"]),
            json!({"shard": [1, 3]}),
        ),
        (
            "shard-mmap",
            "--out-dir",
            s(&["--rank", "2", "--world-size", "4", "--mmap"]),
            json!({"shard": [2, 4]}),
        ),
    ]
}

/// Runs one convert of `inputs` in `mode`, asserting success; returns the check spec.
fn run_mode(
    inputs: &[String],
    out_root: &Path,
    tag: &str,
    mode: &(&str, &str, Vec<String>, Value),
) -> Value {
    let (name, flag, extra, order) = mode;
    let is_dir = *flag == "--out-dir";
    let out = out_root.join(format!("{tag}-{name}{}", if is_dir { "" } else { ".npz" }));
    let saved = out_root.join(format!("{tag}-{name}.order.npy"));
    let mut args: Vec<&str> = inputs.iter().map(String::as_str).collect();
    args.extend([*flag, p(&out), "--save-order", p(&saved)]);
    args.extend(extra.iter().map(String::as_str));
    let o = convert(&args);
    assert!(o.status.success(), "convert {args:?}\n{}", text(&o));
    let mut order = order.clone();
    if order.get("file").is_some() {
        order["file"] = json!(saved);
    }
    json!({"inputs": inputs, "output": out, "kind": if is_dir { "dir" } else { "npz" },
           "order": order, "expect_order": saved,
           "compressed": extra.iter().any(|e| e == "--compress")})
}

#[test]
fn every_fixed_size_dtype_converts_byte_exact_in_every_mode() {
    let py = numpy_python();
    let s = Scratch::new("npy-dtypes");
    let dir = s.path("in");
    npdtypes(py, &["make-dtypes", p(&dir), "37"]);
    let manifest = json(&dir.join("manifest.json"));
    let inputs = strings(&manifest["inputs"]);
    let out_root = s.path("out");
    std::fs::create_dir_all(&out_root).unwrap();
    let saved = out_root.join("unused");
    let specs: Vec<Value> = modes(&saved)
        .iter()
        .map(|m| run_mode(&inputs, &out_root, "all", m))
        .collect();
    check(py, &specs, &s.path("checks.json"));

    // Every column comes back with the identical dtype: numeric ones equal, opaque ones with
    // the descriptor text exactly as the input's header wrote it.
    let table = npy::read_table(&inputs).unwrap();
    for spec in &specs {
        let out = spec["output"].as_str().unwrap();
        let back = if spec["kind"] == "dir" {
            let mut files: Vec<_> = std::fs::read_dir(out)
                .unwrap()
                .map(|e| e.unwrap().path())
                .collect();
            files.sort();
            npy::read_table(&files).unwrap()
        } else {
            npy::read_table(&[out]).unwrap()
        };
        assert_eq!(back.columns().len(), table.columns().len());
        for c in table.columns() {
            let b = back.column(c.name()).unwrap();
            assert_eq!(b.dtype(), c.dtype(), "{out}: {}", c.name());
            assert_eq!(b.row_shape(), c.row_shape(), "{out}: {}", c.name());
        }
    }
    let descrs = manifest["descrs"].as_object().unwrap();
    let mut opaque = 0;
    for (name, descr) in descrs {
        let c = table.column(name).unwrap();
        match c.dtype() {
            DType::Opaque(o) => {
                assert_eq!(o.descr(), descr.as_str().unwrap(), "{name}");
                opaque += 1;
            }
            d => assert!(
                ["trailing", "code_d", "code_bool"].contains(&name.as_str()),
                "{name} read as {d}"
            ),
        }
    }
    assert!(opaque >= 20, "{opaque} opaque columns");
}

#[test]
fn rust_reads_opaque_columns_as_row_bytes_and_refuses_typed_views() {
    let py = numpy_python();
    let s = Scratch::new("npy-dtypes-rust");
    let dir = s.path("in");
    npdtypes(py, &["make-dtypes", p(&dir), "11"]);
    let inputs = strings(&json(&dir.join("manifest.json"))["inputs"]);
    let table = npy::read_table(&inputs).unwrap();
    assert_eq!(table.rows(), 11);

    // Type codes NumPy reads but never writes are the numeric dtypes they name.
    assert_eq!(table.column("code_d").unwrap().dtype(), DType::F64);
    assert_eq!(table.column("code_bool").unwrap().dtype(), DType::Bool);
    assert_eq!(table.column("trailing").unwrap().dtype(), DType::F32);

    let c64 = table.column("c64").unwrap();
    assert_eq!(
        c64.dtype(),
        DType::Opaque(Opaque::new("'<c8'").unwrap()),
        "complex64"
    );
    assert_eq!((c64.row_shape(), c64.row_bytes()), (&[2][..], 16));
    assert_eq!(
        table.column("u3").unwrap().row_bytes(),
        12,
        "<U3 is 3 UCS-4 characters"
    );
    assert_eq!(table.column("nested").unwrap().row_bytes(), 4 + 12 + 3 + 12);
    assert_eq!(table.column("aligned").unwrap().row_bytes(), 24);
    assert_eq!(table.column("offsets").unwrap().row_bytes(), 16);
    assert_eq!(table.column("subarray").unwrap().row_bytes(), 80);
    assert_eq!(table.column("empty_struct").unwrap().row_bytes(), 0);

    // Big-endian stays big-endian: the bytes are the file's, and typed views are refused.
    let f8be = table.column("f8be").unwrap();
    assert_eq!(npy::byte_swapped(&f8be.dtype()), Some(DType::F64));
    let loader = Loader::new(&table).batch_size(4).shuffle(9);
    let order = loader.batches().unwrap().indices().to_vec();
    let out = loader.materialize(Strategy::Preallocated).unwrap();
    let col = out.column("f8be").unwrap();
    for (i, &src) in order.iter().enumerate() {
        assert_eq!(col.row(i), f8be.row(src as usize), "row {i}");
        let want: Vec<f64> = f8be
            .row(src as usize)
            .unwrap()
            .chunks(8)
            .map(|b| f64::from_be_bytes(b.try_into().unwrap()))
            .collect();
        let got: Vec<f64> = col
            .row(i)
            .unwrap()
            .chunks(8)
            .map(|b| f64::from_be_bytes(b.try_into().unwrap()))
            .collect();
        assert_eq!(got, want);
    }
    assert_eq!(col.row(order.len()), None);
    let err = out.view::<f64>("f8be").unwrap_err();
    assert!(
        matches!(&err, Error::Table(TableError::DTypeMismatch { actual, requested: DType::F64, .. })
            if actual.is_opaque()),
        "{err:?}"
    );
    let msg = err.to_string();
    assert!(
        msg.contains("'>f8'") && msg.contains("raw row bytes"),
        "{msg}"
    );
    assert!(out.view::<u8>("bytes8").is_err());
    assert!(out.view::<f32>("trailing").is_ok());
}

#[test]
fn numpy_test_arrays_convert_where_numpy_loads_them() {
    let py = numpy_python();
    let s = Scratch::new("npy-numpy-tests");
    let dir = s.path("in");
    npdtypes(py, &["make-numpy-tests", p(&dir)]);
    let cases = json(&dir.join("manifest.json"))["cases"]
        .as_array()
        .unwrap()
        .clone();
    let out_root = s.path("out");
    std::fs::create_dir_all(&out_root).unwrap();
    let modes = modes(&out_root.join("unused"));
    let (mut converted, mut refused) = (0, 0);
    let mut specs = Vec::new();
    for (k, case) in cases.iter().enumerate() {
        let path = case["path"].as_str().unwrap().to_string();
        let file = Path::new(&path).file_name().unwrap().to_str().unwrap();
        let tag = format!("t{k}");
        if case["expect"] == "ok" {
            specs.push(run_mode(
                std::slice::from_ref(&path),
                &out_root,
                &tag,
                &modes[k % modes.len()],
            ));
            converted += 1;
        } else {
            let target = out_root.join(format!("{tag}.npz"));
            let o = convert(&[&path, "--out", p(&target)]);
            let stderr = String::from_utf8_lossy(&o.stderr);
            assert!(
                matches!(o.status.code(), Some(1 | 2)),
                "{file}: converted\n{}",
                text(&o)
            );
            let why = case["why"].as_str().unwrap();
            assert!(
                stderr.contains(file) && stderr.contains(why) && !stderr.contains("panicked"),
                "{file}: {stderr}"
            );
            assert!(!target.exists(), "{file}: output left behind");
            refused += 1;
        }
    }
    check(py, &specs, &s.path("checks.json"));
    // The counts are exact for each NumPy release whose test arrays were examined: a release
    // that adds, drops or changes arrays must be looked at (which ones, and why) before its
    // counts are added here.
    let version = numpy_version(py);
    println!(
        "NumPy {version}'s test arrays: {} ({converted} converted, {refused} refused)",
        cases.len()
    );
    let expected = match version.split('.').take(2).collect::<Vec<_>>()[..] {
        // 178 arrays from test_format.py and the 7 files of numpy/lib/tests/data; refused:
        // object arrays (they need pickles) and 0-d arrays (they have no rows).
        ["2", "4"] => (185, 144, 41),
        _ => panic!(
            "NumPy {version}: {} test arrays, {converted} converted, {refused} refused; no \
             counts are recorded for this release: check the cases and add them",
            cases.len()
        ),
    };
    assert_eq!(
        (cases.len(), converted, refused),
        expected,
        "NumPy {version}"
    );
}

fn numpy_version(py: &Path) -> String {
    let o = Command::new(py)
        .args(["-c", "import numpy; print(numpy.__version__)"])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", text(&o));
    String::from_utf8_lossy(&o.stdout).trim().to_string()
}

#[test]
fn descriptor_sizes_match_numpys() {
    let py = numpy_python();
    let s = Scratch::new("npy-descr-oracle");
    let out = s.path("oracle.json");
    npdtypes(py, &["descr-oracle", p(&out)]);
    // Spellings NumPy reads but never writes, refused by design (see `arraydrain::npy`).
    let by_design = [
        "'f4,i4'",
        "'(2,)i4'",
        "'2i4'",
        "'S 3'",
        "'S+3'",
        "'M8[us/2]'",
        "'<datetime64'",
        "('<f4', '<i4')",
    ];
    let oracle = json(&out);
    let entries = oracle.as_array().unwrap();
    let (mut same, mut refused_both) = (0, 0);
    for e in entries {
        let text = e["text"].as_str().unwrap();
        let ours = Opaque::new(text);
        if let Some(err) = e.get("error") {
            assert!(
                ours.is_err(),
                "{text}: NumPy refuses it ({err}), we read {ours:?}"
            );
            refused_both += 1;
        } else if e["object"] == true {
            let msg = ours.unwrap_err().to_string();
            assert!(msg.contains("object"), "{text}: {msg}");
        } else if by_design.contains(&text) {
            let msg = ours.unwrap_err().to_string();
            assert!(msg.contains(text) || msg.contains("pair"), "{text}: {msg}");
        } else {
            let size = e["size"].as_u64().unwrap() as usize;
            let ours = ours.unwrap_or_else(|err| panic!("{text}: NumPy reads it, we: {err}"));
            assert_eq!(ours.size(), size, "{text}");
            same += 1;
        }
    }
    for d in by_design {
        let e = entries.iter().find(|e| e["text"] == d).unwrap();
        assert!(e.get("error").is_none(), "{d} is refused by NumPy too");
    }
    assert!(same >= 70 && refused_both >= 25, "{same} / {refused_both}");
}

#[test]
fn refusals_are_short_and_name_what_numpy_would_refuse() {
    let py = numpy_python();
    let s = Scratch::new("npy-dtypes-bad");
    let dir = s.path("bad");
    harness::fixtures(py, &["make-bad", p(&dir)]);
    let bad = json(&dir.join("bad.json"));
    let mut seen = Vec::new();
    for case in bad["read"].as_array().unwrap() {
        let name = case["name"].as_str().unwrap();
        let mut args = strings(&case["inputs"]);
        args.extend(["--out".into(), p(&s.path("out.npz")).into()]);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let o = convert(&args);
        assert!(matches!(o.status.code(), Some(1 | 2)), "{name}: converted");
        let stderr = String::from_utf8_lossy(&o.stderr);
        assert!(
            stderr.len() < 1000,
            "{name}: {} bytes of stderr",
            stderr.len()
        );
        for w in strings(&case["expect"]) {
            assert!(
                stderr.contains(w.as_str()),
                "{name}: {stderr:?} lacks {w:?}"
            );
        }
        seen.push(name.to_string());
    }
    for name in [
        "version 1.1",
        "version 1.255",
        "version 2.1",
        "version 3.1",
        "shape (4)",
        "fortran_order 'False'",
        "object field of a 10,001-field header",
    ] {
        assert!(seen.iter().any(|s| s == name), "{name} not among the cases");
    }
}
