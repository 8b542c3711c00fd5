//! NumPy interop through the library, checked by real NumPy: NumPy writes the inputs (every
//! supported dtype, scalar and multi-dimensional rows, `.npy` v1/v2/v3, Fortran order,
//! big-endian, stored and compressed `.npz`, zero rows); we read them, drain them in every order
//! and write every output kind; NumPy reads the outputs back and compares them with its own
//! gather `x[order]`.

#[path = "py/harness.rs"]
mod harness;

use std::path::{Path, PathBuf};

use arraydrain::npy::{self, MappedNpy, WriteOptions};
use arraydrain::FileError;
use arraydrain::{ColumnArray, DType, Error, Loader, Storage, StorageKind, Strategy};
use harness::{fixtures, json, numpy_python, strings, Scratch};
use ndarray::Array1;
use serde_json::json;

const ROWS: usize = 1003;

fn save_order(loader: &Loader<'_, '_>, path: &Path) {
    let order = loader.batches().unwrap().output_indices().to_vec();
    let order = Array1::from_iter(order.into_iter().map(|i| i as i64));
    npy::write_npy(path, &ColumnArray::from_array("order", order).unwrap()).unwrap();
}

#[test]
fn numpy_inputs_drain_to_numpy_outputs_equal_to_numpys_own_gather() {
    let py = numpy_python();
    let s = Scratch::new("numpy-roundtrip");
    let inputs_dir = s.path("in");
    fixtures(
        py,
        &[
            "make-inputs",
            inputs_dir.to_str().unwrap(),
            &ROWS.to_string(),
        ],
    );
    let manifest = json(&inputs_dir.join("manifest.json"));
    let inputs = strings(&manifest["inputs"]);
    let table = npy::read_table(&inputs).unwrap();
    assert_eq!(table.rows(), ROWS);
    let names: Vec<&str> = table.columns().iter().map(|c| c.name()).collect();
    assert_eq!(
        names,
        [
            "x", "y", "img", "h", "mask", "fort", "big", "v2", "v3", "a", "b", "c", "d", "e", "g",
            "k", "m"
        ]
    );
    let dtypes: Vec<DType> = table.columns().iter().map(|c| c.dtype()).collect();
    for d in DType::ALL.into_iter().filter(|d| *d != DType::BF16) {
        assert!(dtypes.contains(&d), "no input column of {d}");
    }
    assert_eq!(table.column("img").unwrap().row_shape(), &[2, 2, 3]);
    assert_eq!(table.column("fort").unwrap().row_shape(), &[3, 2]);

    let order64 = manifest["orders"]["order64"].as_str().unwrap().to_string();
    let order32 = manifest["orders"]["order32"].as_str().unwrap().to_string();
    let mut specs = Vec::new();
    let mut case =
        |tag: &str, loader: Loader<'_, '_>, order: serde_json::Value, drop_last: bool| {
            let batch = 64;
            let loader = loader.batch_size(batch).drop_last(drop_last);
            let saved = s.path(&format!("{tag}.order.npy"));
            save_order(&loader, &saved);
            // Four output kinds: stored .npz, compressed .npz, a .npy folder, mapped .npy files.
            let out = loader.materialize(Strategy::Auto).unwrap();
            let npz = s.path(&format!("{tag}.npz"));
            npy::write_npz(&npz, out.columns(), &WriteOptions::new()).unwrap();
            let zpk = s.path(&format!("{tag}.packed.npz"));
            npy::write_npz(&zpk, out.columns(), &WriteOptions::new().compress(true)).unwrap();
            let dir = s.path(&format!("{tag}.dir"));
            npy::write_npy_dir(&dir, out.columns()).unwrap();
            let mapped = s.path(&format!("{tag}.mapped"));
            let mut mout = npy::mapped_output(&mapped, &loader.output_specs().unwrap()).unwrap();
            loader.materialize_into(&mut mout).unwrap();
            assert!(mout
                .columns()
                .iter()
                .all(|c| c.storage_kind() == StorageKind::Mapped));
            for (a, b) in out.columns().iter().zip(mout.columns()) {
                assert_eq!(a.as_bytes(), b.as_bytes(), "{tag}: mapped output differs");
            }
            // And straight from the loader into files, the output never in memory.
            let streamed = s.path(&format!("{tag}.streamed.npz"));
            let report = npy::drain_to_npz(&loader, &streamed, &WriteOptions::new()).unwrap();
            assert_eq!(report.rows, out.rows());
            assert!(report.peak_alloc_bytes <= 8 << 20, "{report:?}");
            let streamed_dir = s.path(&format!("{tag}.streamed"));
            npy::drain_to_npy_dir(&loader, &streamed_dir, &WriteOptions::new()).unwrap();
            // Compare with the library's own order, and (for orders NumPy can compute itself)
            // with NumPy's order too.
            for (path, kind, compressed) in [
                (&npz, "npz", false),
                (&zpk, "npz", true),
                (&dir, "dir", false),
                (&mapped, "dir", false),
                (&streamed, "npz", false),
                (&streamed_dir, "dir", false),
            ] {
                let mut spec = json!({
                    "inputs": inputs, "output": path, "kind": kind, "compressed": compressed,
                    "order": order, "batch": batch, "drop_last": drop_last,
                    "expect_order": saved,
                });
                if order.get("permutation").is_some() {
                    spec.as_object_mut().unwrap().remove("expect_order");
                }
                specs.push(spec);
            }
        };
    case("seq", Loader::new(&table), json!({"seq": true}), false);
    case("seq-drop", Loader::new(&table), json!({"seq": true}), true);
    let shuffled = s.path("shuffle.order.npy");
    case(
        "shuffle",
        Loader::new(&table).shuffle(99),
        json!({"file": shuffled, "permutation": true}),
        false,
    );
    let idx = npy::read_indices(&order64).unwrap();
    case(
        "indices64",
        Loader::new(&table).indices(idx),
        json!({"file": order64}),
        false,
    );
    let idx = npy::read_indices(&order32).unwrap();
    case(
        "indices32",
        Loader::new(&table).indices(idx),
        json!({"file": order32}),
        true,
    );
    case(
        "shard",
        Loader::new(&table).shard(2, 5),
        json!({"shard": [2, 5]}),
        false,
    );
    // The two drop_last flags apart: the sampler's alone, and the loader's alone.
    case(
        "shard-cut",
        Loader::new(&table).shard(4, 7).shard_drop_last(true),
        json!({"shard": [4, 7], "drop_last": true}),
        false,
    );
    case(
        "shard-padded-drop",
        Loader::new(&table).shard(4, 7),
        json!({"shard": [4, 7]}),
        true,
    );
    case(
        "shard-drop",
        Loader::new(&table).shard(4, 7).shard_drop_last(true),
        json!({"shard": [4, 7], "drop_last": true}),
        true,
    );
    let spec_path = s.path("checks.json");
    std::fs::write(&spec_path, serde_json::to_string(&specs).unwrap()).unwrap();
    let report = fixtures(py, &["check", spec_path.to_str().unwrap()]);
    assert_eq!(
        report.lines().filter(|l| l.starts_with("ok ")).count(),
        specs.len()
    );
    // Nothing but the outputs: no temporary files left anywhere.
    let leftovers: Vec<String> = harness::files_under(&s.0)
        .into_iter()
        .filter(|f| f.contains(".tmp") || f.contains("staging"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

#[test]
fn npy_inputs_are_memory_mapped_and_npz_members_by_kind() {
    let py = numpy_python();
    let s = Scratch::new("numpy-mapped-inputs");
    fixtures(py, &["make-inputs", s.0.to_str().unwrap(), "50"]);
    // A C-order little-endian .npy is a view of the file: its bytes are the file's last bytes.
    let x = npy::read_npy(s.path("x.npy")).unwrap();
    let file = std::fs::read(s.path("x.npy")).unwrap();
    assert_eq!(x.bytes(), &file[file.len() - x.bytes().len()..]);
    assert_eq!((x.name(), x.rows(), x.row_shape()), ("x", 50, &[4, 3][..]));
    // Stored and compressed members read the same values NumPy wrote (checked against the
    // NumPy-written .npy of the same data by the round-trip test); here: names and shapes.
    let more = npy::read_npz(s.path("more.npz")).unwrap();
    let shapes: Vec<(&str, DType, &[usize])> = more
        .iter()
        .map(|c| (c.name(), c.dtype(), c.row_shape()))
        .collect();
    assert_eq!(
        shapes,
        [
            ("a", DType::I16, &[2][..]),
            ("b", DType::U32, &[][..]),
            ("c", DType::F64, &[3][..]),
            ("d", DType::I8, &[][..]),
            ("e", DType::U64, &[][..]),
            ("g", DType::I32, &[1][..]),
        ]
    );
    let packed = npy::read_npz(s.path("packed.npz")).unwrap();
    let m = packed.iter().find(|c| c.name() == "m").unwrap();
    let want: Vec<u8> = (0..100u32).map(|i| i as u8).collect();
    assert_eq!(m.bytes(), &want[..]);
}

#[test]
fn zero_row_arrays_round_trip() {
    let py = numpy_python();
    let s = Scratch::new("numpy-zero-rows");
    let inputs_dir = s.path("in");
    fixtures(py, &["make-inputs", inputs_dir.to_str().unwrap(), "3"]);
    let manifest = json(&inputs_dir.join("manifest.json"));
    let inputs = strings(&manifest["zero_inputs"]);
    let table = npy::read_table(&inputs).unwrap();
    assert_eq!(table.rows(), 0);
    let mut specs = Vec::new();
    for (tag, loader) in [
        ("seq", Loader::new(&table).batch_size(4)),
        ("shuffle", Loader::new(&table).batch_size(4).shuffle(1)),
        ("shard", Loader::new(&table).batch_size(4).shard(1, 3)),
    ] {
        let out = loader.materialize(Strategy::Auto).unwrap();
        assert_eq!(out.rows(), 0);
        let npz = s.path(&format!("{tag}.npz"));
        npy::write_npz(&npz, out.columns(), &WriteOptions::new()).unwrap();
        let mapped = s.path(&format!("{tag}.mapped"));
        let mut mout = npy::mapped_output(&mapped, &loader.output_specs().unwrap()).unwrap();
        loader.materialize_into(&mut mout).unwrap();
        for (path, kind) in [(npz, "npz"), (mapped, "dir")] {
            specs.push(json!({"inputs": inputs, "output": path, "kind": kind,
                              "order": {"seq": true}, "batch": 4}));
        }
    }
    let spec_path = s.path("checks.json");
    std::fs::write(&spec_path, serde_json::to_string(&specs).unwrap()).unwrap();
    fixtures(py, &["check", spec_path.to_str().unwrap()]);
}

#[test]
fn bad_files_are_errors_naming_the_file_never_panics() {
    let py = numpy_python();
    let s = Scratch::new("numpy-bad-lib");
    fixtures(py, &["make-bad", s.0.to_str().unwrap()]);
    let bad = json(&s.path("bad.json"));
    for case in bad["read"].as_array().unwrap() {
        let inputs = strings(&case["inputs"]);
        let words = strings(&case["expect"]);
        let result = std::panic::catch_unwind(|| npy::read_table(&inputs));
        let err = match result {
            Ok(Ok(_)) => panic!("{}: read without error", case["name"]),
            Ok(Err(e)) => e,
            Err(_) => panic!("{}: panicked", case["name"]),
        };
        assert!(
            matches!(
                err,
                Error::File(FileError::BadFile { .. }) | Error::File(FileError::Io { .. })
            ),
            "{}: {err:?}",
            case["name"]
        );
        let msg = err.to_string();
        for w in &words {
            assert!(
                msg.contains(w.as_str()),
                "{}: {msg:?} lacks {w:?}",
                case["name"]
            );
        }
    }
    for case in bad["indices"].as_array().unwrap() {
        let path = PathBuf::from(case["indices"].as_str().unwrap());
        let table = npy::read_table(&strings(&case["inputs"])).unwrap();
        let result = npy::read_indices(&path)
            .and_then(|idx| Loader::new(&table).indices(idx).batches().map(|_| ()));
        assert!(result.is_err(), "{}: accepted", case["name"]);
    }
}

#[test]
fn a_failed_mapped_drain_leaves_no_file() {
    let s = Scratch::new("numpy-mapped-failure");
    let path = s.path("x.npy");
    {
        let mut m = MappedNpy::create(&path, DType::F32, &[1000, 8]).unwrap();
        m.as_bytes_mut()[..4].copy_from_slice(&1.5f32.to_le_bytes());
        m.region_done(0..4).unwrap();
        // Dropped without `finish`: a drain that failed half-way.
    }
    assert!(
        harness::files_under(&s.0).is_empty(),
        "{:?}",
        harness::files_under(&s.0)
    );

    // An output that does not fit the loader is refused before any data is written, and its
    // files disappear with it.
    let x = ndarray::Array2::<f32>::zeros((10, 2));
    let table = arraydrain::Table::builder()
        .view("x", x.view())
        .build()
        .unwrap();
    let wrong = Loader::new(&table).batch_size(3).drop_last(true);
    let right = Loader::new(&table).batch_size(3);
    let mut out = npy::mapped_output(s.path("out"), &right.output_specs().unwrap()).unwrap();
    assert!(wrong.materialize_into(&mut out).is_err());
    drop(out);
    assert!(
        harness::files_under(&s.0).is_empty(),
        "{:?}",
        harness::files_under(&s.0)
    );

    // Finished: the file appears under its name, a valid .npy.
    let mut m = MappedNpy::create(&path, DType::F32, &[2, 2]).unwrap();
    m.as_bytes_mut()
        .copy_from_slice(bytemuck::cast_slice(&[1.0f32, 2.0, 3.0, 4.0]));
    m.finish().unwrap();
    assert_eq!(m.path(), path);
    let back = npy::read_npy(&path).unwrap();
    assert_eq!(
        back.bytes(),
        bytemuck::cast_slice::<f32, u8>(&[1.0, 2.0, 3.0, 4.0])
    );
}

#[test]
fn bf16_is_written_as_numpy_with_ml_dtypes_writes_it() {
    // `numpy.save` of an `ml_dtypes.bfloat16` array declares '<V2' (python/tests/test_writer.py
    // compares whole files with NumPy's); NumPy reads it back as 2-byte voids.
    let s = Scratch::new("numpy-bf16");
    let values: Vec<half::bf16> = (0..4)
        .map(|i| half::bf16::from_f32(i as f32 - 1.5))
        .collect();
    let col = ColumnArray::from_array("w", Array1::from_vec(values.clone())).unwrap();
    npy::write_npy(s.path("w.npy"), &col).unwrap();
    npy::write_npz(
        s.path("w.npz"),
        std::slice::from_ref(&col),
        &WriteOptions::new(),
    )
    .unwrap();
    npy::write_npy_dir(s.path("d"), std::slice::from_ref(&col)).unwrap();
    let mut m = MappedNpy::create(s.path("m.npy"), DType::BF16, &[4]).unwrap();
    m.as_bytes_mut().copy_from_slice(col.as_bytes());
    m.finish().unwrap();
    let v2 = DType::Opaque(arraydrain::dtype::Opaque::new("'<V2'").unwrap());
    for back in [
        npy::read_npy(s.path("w.npy")).unwrap(),
        npy::read_npz(s.path("w.npz")).unwrap().remove(0),
        npy::read_npy(s.path("d/w.npy")).unwrap(),
        npy::read_npy(s.path("m.npy")).unwrap(),
    ] {
        assert_eq!(back.dtype(), v2);
        assert_eq!(
            back.bytes(),
            bytemuck::cast_slice::<half::bf16, u8>(&values)
        );
    }
    let head = std::fs::read(s.path("w.npy")).unwrap();
    assert!(head.starts_with(
        b"\x93NUMPY\x01\x00v\x00{'descr': '<V2', 'fortran_order': False, 'shape': (4,), }"
    ));
}
