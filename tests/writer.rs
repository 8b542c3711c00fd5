//! `Writer`: rows pushed in any order land at their rows of one output, which appears complete
//! on close and never otherwise; bad input is refused and loses nothing; destinations other
//! people can write to are handled as an attacker would use them.

use arraydrain::TableError;
use std::path::Path;

use arraydrain::npy;
use arraydrain::{Batch, ColumnArray, DType, Destination, Error, FileError, Writer};

/// A scratch folder of the test's own, removed when it goes out of scope.
struct Scratch(tempfile::TempDir);

impl AsRef<Path> for Scratch {
    fn as_ref(&self) -> &Path {
        self.0.path()
    }
}

impl std::ops::Deref for Scratch {
    type Target = Path;
    fn deref(&self) -> &Path {
        self.0.path()
    }
}

fn tmp(name: &str) -> Scratch {
    Scratch(
        tempfile::Builder::new()
            .prefix(&format!("arraydrain-writer-{name}-"))
            .tempdir()
            .unwrap(),
    )
}

/// Entries of `dir` (names), sorted.
fn entries(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

/// Deterministic bytes of row `i` of a column (`salt` tells columns apart).
fn row_bytes(i: usize, len: usize, salt: u8) -> Vec<u8> {
    (0..len)
        .map(|j| (i.wrapping_mul(31) ^ j.wrapping_mul(7)) as u8 ^ salt)
        .collect()
}

/// A batch of rows `at` of every column `(name, dtype, row_shape)`.
fn batch(cols: &[(&str, DType, Vec<usize>)], at: &[usize]) -> Batch {
    let mut b = Batch::new();
    for (k, (name, dtype, shape)) in cols.iter().enumerate() {
        let mut c = ColumnArray::zeroed(*name, dtype.clone(), shape, at.len()).unwrap();
        let rb = c.row_bytes();
        for (r, &i) in at.iter().enumerate() {
            let mut bytes = row_bytes(i, rb, k as u8);
            if *dtype == DType::Bool {
                bytes.iter_mut().for_each(|b| *b &= 1);
            }
            c.as_bytes_mut()[r * rb..(r + 1) * rb].copy_from_slice(&bytes);
        }
        b.push(c).unwrap();
    }
    b
}

/// What the output of column `k` must hold: row `i` = the bytes written for dataset index `i`.
fn expected(rows: usize, rb: usize, k: usize, dtype: &DType) -> Vec<u8> {
    (0..rows)
        .flat_map(|i| {
            let mut b = row_bytes(i, rb, k as u8);
            if *dtype == DType::Bool {
                b.iter_mut().for_each(|b| *b &= 1);
            }
            b
        })
        .collect()
}

/// A shuffled order of `n` indices (a fixed permutation).
fn shuffled(n: usize) -> Vec<usize> {
    let mut v: Vec<usize> = (0..n).collect();
    let mut s = 0x9E37_79B9_7F4A_7C15u64;
    for i in (1..n).rev() {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        v.swap(i, (s % (i as u64 + 1)) as usize);
    }
    v
}

fn write_all(w: &mut Writer, cols: &[(&str, DType, Vec<usize>)], order: &[usize], bs: usize) {
    for at in order.chunks(bs) {
        w.write_at(at, &batch(cols, at)).unwrap();
    }
}

fn every_dtype() -> Vec<(&'static str, DType, Vec<usize>)> {
    let names = [
        "f32", "f64", "f16", "bf16", "i8", "i16", "i32", "i64", "u8", "u16", "u32", "u64", "bool",
    ];
    DType::ALL
        .iter()
        .zip(names)
        .enumerate()
        .map(|(k, (d, n))| (n, d.clone(), if k % 2 == 0 { vec![3] } else { vec![2, 2] }))
        .collect()
}

#[test]
fn memory_output_equals_the_oracle_for_every_dtype_and_shuffled_order() {
    let cols = every_dtype();
    let rows = 203;
    let mut b = Writer::builder(rows).ring_bytes(4096).blocks(3);
    for (n, d, s) in &cols {
        b = b.column(*n, d.clone(), s);
    }
    let mut w = b.open().unwrap();
    write_all(&mut w, &cols, &shuffled(rows), 17);
    assert_eq!(w.rows_written(), rows);
    let out = w.close().unwrap().memory.unwrap();
    for (k, (n, d, _)) in cols.iter().enumerate() {
        let c = out.column(n).unwrap();
        assert_eq!(
            c.as_bytes(),
            expected(rows, c.row_bytes(), k, d),
            "column {n}"
        );
    }
}

#[test]
fn appended_rows_keep_their_order() {
    let cols = vec![("x", DType::I64, vec![])];
    let mut w = Writer::builder(10)
        .column("x", DType::I64, &[])
        .open()
        .unwrap();
    for at in (0..10).collect::<Vec<_>>().chunks(3) {
        w.write(&batch(&cols, at)).unwrap();
    }
    let out = w.close().unwrap().memory.unwrap();
    assert_eq!(
        out.column("x").unwrap().as_bytes(),
        expected(10, 8, 0, &DType::I64)
    );
}

#[test]
fn a_ring_smaller_than_one_batch_moves_every_row() {
    // One row per block, two blocks: every write waits for the background thread.
    let cols = vec![("x", DType::F32, vec![64])];
    let dir = tmp("ring");
    let path = dir.join("x.npy");
    let mut w = Writer::builder(500)
        .column("x", DType::F32, &[64])
        .path(&path)
        .ring_bytes(1)
        .blocks(2)
        .open()
        .unwrap();
    write_all(&mut w, &cols, &shuffled(500), 64);
    w.close().unwrap();
    assert_eq!(
        npy::read_npy(&path).unwrap().bytes(),
        expected(500, 256, 0, &DType::F32)
    );
    assert_eq!(entries(&dir), ["x.npy"]);
}

#[test]
fn npy_file_appears_only_on_close_and_reads_back() {
    let cols = vec![("feats", DType::F16, vec![5])];
    let dir = tmp("npy");
    let path = dir.join("feats.npy");
    let mut w = Writer::builder(40)
        .column("feats", DType::F16, &[5])
        .path(&path)
        .open()
        .unwrap();
    write_all(&mut w, &cols, &shuffled(40), 7);
    assert!(!path.exists(), "visible before close");
    let written = w.close().unwrap();
    assert_eq!(written.paths, std::slice::from_ref(&path));
    let back = npy::read_npy(&path).unwrap();
    assert_eq!(back.dtype(), DType::F16);
    assert_eq!(back.row_shape(), [5]);
    assert_eq!(back.bytes(), expected(40, 10, 0, &DType::F16));
    assert_eq!(entries(&dir), ["feats.npy"]);
}

#[test]
fn npz_and_folder_outputs_hold_every_column() {
    let cols = vec![
        ("emb", DType::F32, vec![4]),
        ("logit", DType::F64, vec![]),
        ("id", DType::U8, vec![2, 3]),
    ];
    let dir = tmp("npz");
    for dest in [
        Destination::Npz {
            path: dir.join("out.npz"),
            compress: false,
        },
        Destination::Npz {
            path: dir.join("outc.npz"),
            compress: true,
        },
        Destination::Dir(dir.join("out")),
    ] {
        let mut b = Writer::builder(77).destination(dest.clone());
        for (n, d, s) in &cols {
            b = b.column(*n, d.clone(), s);
        }
        let mut w = b.open().unwrap();
        write_all(&mut w, &cols, &shuffled(77), 10);
        w.close().unwrap();
        let back = match &dest {
            Destination::Npz { path, .. } => npy::read_npz(path).unwrap(),
            Destination::Dir(p) => ["emb", "logit", "id"]
                .iter()
                .map(|n| npy::read_npy(p.join(format!("{n}.npy"))).unwrap())
                .collect(),
            _ => unreachable!(),
        };
        for (k, (n, d, _)) in cols.iter().enumerate() {
            let c = back.iter().find(|c| c.name() == *n).unwrap();
            assert_eq!(c.bytes(), expected(77, c.row_bytes(), k, d), "{dest:?} {n}");
        }
    }
    assert_eq!(entries(&dir), ["out", "out.npz", "outc.npz"]);
}

#[test]
fn a_missing_row_fails_close_naming_how_many_and_commits_nothing() {
    let cols = vec![("x", DType::F32, vec![2])];
    let dir = tmp("missing");
    let path = dir.join("x.npy");
    let mut w = Writer::builder(10)
        .column("x", DType::F32, &[2])
        .path(&path)
        .open()
        .unwrap();
    let order = [0, 1, 2, 3, 5, 6, 8, 9];
    write_all(&mut w, &cols, &order, 3);
    assert_eq!(w.missing_rows(10), [4, 7]);
    let e = w.close().unwrap_err();
    assert!(
        matches!(
            e,
            Error::RowsMissing {
                missing: 2,
                rows: 10,
                ..
            }
        ),
        "{e:?}"
    );
    let msg = e.to_string();
    assert!(
        msg.contains("2 of 10 rows") && msg.contains("[4, 7]"),
        "{msg}"
    );
    assert!(entries(&dir).is_empty(), "{:?}", entries(&dir));
}

#[test]
fn dropped_without_close_leaves_nothing() {
    let cols = vec![("a", DType::I32, vec![]), ("b", DType::I32, vec![])];
    let dir = tmp("dropped");
    for dest in [
        Destination::Npz {
            path: dir.join("o.npz"),
            compress: false,
        },
        Destination::Dir(dir.join("o")),
    ] {
        let mut b = Writer::builder(20).destination(dest);
        for (n, d, s) in &cols {
            b = b.column(*n, d.clone(), s);
        }
        let mut w = b.open().unwrap();
        write_all(&mut w, &cols, &(0..20).collect::<Vec<_>>(), 4);
        drop(w);
        assert!(entries(&dir).is_empty(), "{:?}", entries(&dir));
    }
}

#[test]
fn bad_batches_are_refused_and_change_nothing() {
    let cols = vec![("x", DType::F32, vec![2])];
    let mut w = Writer::builder(6)
        .column("x", DType::F32, &[2])
        .open()
        .unwrap();
    // An index past the output.
    let e = w.write_at(&[1, 6], &batch(&cols, &[1, 5])).unwrap_err();
    assert!(
        matches!(
            e,
            Error::IndexOutOfBounds {
                index: 6,
                position: 1,
                rows: 6
            }
        ),
        "{e}"
    );
    // Fewer indices than rows.
    let e = w.write_at(&[1], &batch(&cols, &[1, 2])).unwrap_err();
    assert!(
        e.to_string().contains("1 indices for a batch of 2 rows"),
        "{e}"
    );
    // Another dtype or row shape.
    let other = vec![("x", DType::F64, vec![2])];
    let e = w.write_at(&[0], &batch(&other, &[0])).unwrap_err();
    assert!(
        e.to_string().contains("column \"x\"") && e.to_string().contains("f64"),
        "{e}"
    );
    let e = w
        .write_at(&[0], &batch(&[("y", DType::F32, vec![2])], &[0]))
        .unwrap_err();
    assert!(
        matches!(e, Error::Table(TableError::UnknownColumn { .. })),
        "{e}"
    );
    // Raw bytes that are not whole rows.
    let e = w.write_bytes(1, None, &[&[0u8; 7]]).unwrap_err();
    assert!(
        e.to_string().contains("7 bytes, not 1 rows of 8 bytes"),
        "{e}"
    );
    // Appending past the end.
    w.write(&batch(&cols, &[0, 1, 2, 3])).unwrap();
    let e = w.write(&batch(&cols, &[4, 5, 6])).unwrap_err();
    assert!(matches!(e, Error::IndexOutOfBounds { index: 6, .. }), "{e}");
    assert_eq!(w.rows_written(), 4);
    // Nothing of the refused batches was written: the rest completes normally.
    w.write(&batch(&cols, &[4, 5])).unwrap();
    let out = w.close().unwrap().memory.unwrap();
    assert_eq!(
        out.column("x").unwrap().as_bytes(),
        expected(6, 8, 0, &DType::F32)
    );
}

#[test]
fn a_writer_either_appends_or_places_by_index_and_a_joined_one_only_by_index() {
    let cols = vec![("x", DType::U8, vec![2])];
    let open = || {
        Writer::builder(4)
            .column("x", DType::U8, &[2])
            .open()
            .unwrap()
    };
    let conflict = |e: Error, says: &str| {
        assert!(
            matches!(e, Error::ConflictingOptions { .. }) && e.to_string().contains(says),
            "{e}"
        );
    };
    // Rows placed by index, then an append: it would land on rows 0 and 1 over what is there
    // and leave the writer's coverage complete, so it is refused and changes nothing.
    let mut w = open();
    w.write_at(&[2, 3], &batch(&cols, &[2, 3])).unwrap();
    conflict(
        w.write(&batch(&cols, &[9, 9])).unwrap_err(),
        "a batch to append after rows placed by index",
    );
    assert_eq!((w.rows_written(), w.appended()), (2, 0));
    // A batch of no rows changes nothing, whichever way it is given.
    w.write(&batch(&cols, &[])).unwrap();
    w.write_at(&[1, 0], &batch(&cols, &[1, 0])).unwrap();
    let out = w.close().unwrap().memory.unwrap();
    assert_eq!(
        out.column("x").unwrap().as_bytes(),
        expected(4, 2, 0, &DType::U8)
    );
    // Appended rows, then rows by index.
    let mut w = open();
    w.write(&batch(&cols, &[0, 1])).unwrap();
    conflict(
        w.write_at(&[2, 3], &batch(&cols, &[2, 3])).unwrap_err(),
        "rows given by index after 2 appended rows",
    );
    w.write(&batch(&cols, &[2, 3])).unwrap();
    let out = w.close().unwrap().memory.unwrap();
    assert_eq!(
        out.column("x").unwrap().as_bytes(),
        expected(4, 2, 0, &DType::U8)
    );
    // A writer joined to another's output: appends would start at row 0 in every process.
    let dir = tmp("append-joined");
    let builder = || {
        Writer::builder(4)
            .column("x", DType::U8, &[2])
            .path(dir.join("o.npy"))
    };
    let mut creator = builder().open().unwrap();
    let shared = creator.shared_path().unwrap().to_path_buf();
    let mut joined = builder().join(&shared).open().unwrap();
    conflict(
        joined.write(&batch(&cols, &[0, 1])).unwrap_err(),
        "places its rows by index",
    );
    joined.write_at(&[1, 0], &batch(&cols, &[1, 0])).unwrap();
    joined.sync().unwrap();
    let theirs = joined.coverage().to_vec();
    joined.close().unwrap();
    creator.write_at(&[3, 2], &batch(&cols, &[3, 2])).unwrap();
    creator.close_with(&[theirs.as_slice()]).unwrap();
    let bytes = std::fs::read(dir.join("o.npy")).unwrap();
    assert!(bytes.ends_with(&expected(4, 2, 0, &DType::U8)));
}

#[test]
fn padded_duplicates_write_the_same_rows_again() {
    // DistributedSampler pads 10 rows to 12 for 3 ranks by repeating the first indices.
    let cols = vec![("x", DType::U16, vec![3])];
    let mut w = Writer::builder(10)
        .column("x", DType::U16, &[3])
        .open()
        .unwrap();
    let padded: Vec<usize> = (0..10).chain(0..2).collect();
    write_all(&mut w, &cols, &padded, 5);
    assert_eq!(w.rows_written(), 10);
    let out = w.close().unwrap().memory.unwrap();
    assert_eq!(
        out.column("x").unwrap().as_bytes(),
        expected(10, 6, 0, &DType::U16)
    );
}

#[test]
fn zero_rows_make_an_empty_file() {
    let dir = tmp("empty");
    let path = dir.join("e.npy");
    let w = Writer::builder(0)
        .column("e", DType::I8, &[4])
        .path(&path)
        .open()
        .unwrap();
    w.close().unwrap();
    let back = npy::read_npy(&path).unwrap();
    assert_eq!((back.rows(), back.row_shape()), (0, &[4][..]));
}

#[test]
fn options_that_cannot_work_are_refused_before_anything_is_made() {
    let dir = tmp("options");
    let e = Writer::builder(3)
        .path(dir.join("x.npy"))
        .open()
        .unwrap_err();
    assert!(matches!(e, Error::Table(TableError::EmptyTable)), "{e}");
    let e = Writer::builder(3)
        .column("a", DType::F32, &[])
        .column("b", DType::F32, &[])
        .path(dir.join("x.npy"))
        .open()
        .unwrap_err();
    assert!(
        e.to_string().contains("holds one array") && e.to_string().contains("2 columns"),
        "{e}"
    );
    let e = Writer::builder(3)
        .column("a", DType::F32, &[])
        .column("a", DType::F32, &[])
        .open()
        .unwrap_err();
    assert!(
        matches!(e, Error::Table(TableError::DuplicateColumn { .. })),
        "{e}"
    );
    for bad in ["../escape", "a/b", "", ".."] {
        let e = Writer::builder(3)
            .column(bad, DType::F32, &[])
            .path(dir.join("out"))
            .open()
            .unwrap_err();
        assert!(
            matches!(e, Error::File(FileError::UnsafeName { .. })),
            "{bad:?}: {e}"
        );
    }
    assert!(entries(&dir).is_empty(), "{:?}", entries(&dir));
    assert!(!dir.parent().unwrap().join("escape.npy").exists());
}

#[test]
fn existing_outputs_folders_and_links_at_the_destination() {
    let dir = tmp("hostile");
    let cols = vec![("x", DType::U8, vec![4])];
    let finish = |path: &Path| {
        let mut w = Writer::builder(8)
            .column("x", DType::U8, &[4])
            .path(path)
            .open()?;
        write_all(&mut w, &cols, &(0..8).collect::<Vec<_>>(), 3);
        w.close()
    };

    // An existing file is replaced whole (as numpy.save does), on close only.
    let file = dir.join("old.npy");
    std::fs::write(&file, b"old").unwrap();
    finish(&file).unwrap();
    assert_eq!(
        npy::read_npy(&file).unwrap().bytes(),
        expected(8, 4, 0, &DType::U8)
    );

    // A folder where the file goes is refused at open, and left alone.
    let folder = dir.join("taken.npy");
    std::fs::create_dir(&folder).unwrap();
    std::fs::write(folder.join("keep"), b"k").unwrap();
    let e = finish(&folder).unwrap_err();
    assert!(
        matches!(e, Error::File(FileError::PathConflict { .. }))
            && e.to_string().contains("is a folder"),
        "{e}"
    );
    assert_eq!(std::fs::read(folder.join("keep")).unwrap(), b"k");
    let e = finish(&dir.join("taken.npy.npz")).map(drop);
    assert!(e.is_ok()); // a different name works
    std::fs::create_dir(dir.join("arch.npz")).unwrap();
    let e = finish(&dir.join("arch.npz")).unwrap_err();
    assert!(
        matches!(e, Error::File(FileError::PathConflict { .. })),
        "{e}"
    );

    // A folder output never replaces or fills an existing folder.
    std::fs::create_dir(dir.join("outdir")).unwrap();
    let e = finish(&dir.join("outdir")).unwrap_err();
    assert!(
        matches!(e, Error::File(FileError::PathConflict { .. })),
        "{e}"
    );
    assert!(entries(&dir.join("outdir")).is_empty());

    // A symbolic link at the destination is replaced, never written through.
    let victim = dir.join("victim");
    std::fs::write(&victim, b"precious").unwrap();
    let link = dir.join("link.npy");
    std::os::unix::fs::symlink(&victim, &link).unwrap();
    finish(&link).unwrap();
    assert_eq!(std::fs::read(&victim).unwrap(), b"precious");
    assert!(!std::fs::symlink_metadata(&link)
        .unwrap()
        .file_type()
        .is_symlink());
    assert_eq!(
        npy::read_npy(&link).unwrap().bytes(),
        expected(8, 4, 0, &DType::U8)
    );

    // A link to a folder elsewhere at a folder destination: refused, nothing written there.
    let elsewhere = tmp("hostile-elsewhere");
    std::os::unix::fs::symlink(&elsewhere, dir.join("linkdir")).unwrap();
    assert!(finish(&dir.join("linkdir")).is_err());
    assert!(entries(&elsewhere).is_empty());

    let leftovers: Vec<String> = entries(&dir)
        .into_iter()
        .filter(|n| n.starts_with(".arraydrain-"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

#[test]
fn concurrent_writers_into_one_path_never_mix() {
    let dir = tmp("concurrent");
    let path = dir.join("x.npy");
    let rows = 4000;
    // Two writers of different contents into one path, interleaved on two threads.
    let handles: Vec<_> = (0..2u8)
        .map(|salt| {
            let path = path.clone();
            std::thread::spawn(move || {
                let mut w = Writer::builder(rows)
                    .column("x", DType::U8, &[16])
                    .path(&path)
                    .ring_bytes(4096)
                    .open()
                    .unwrap();
                for at in shuffled(rows).chunks(50) {
                    let bytes: Vec<u8> = at.iter().flat_map(|&i| row_bytes(i, 16, salt)).collect();
                    w.write_bytes(
                        at.len(),
                        Some(&at.iter().map(|&i| i as u64).collect::<Vec<_>>()),
                        &[&bytes],
                    )
                    .unwrap();
                }
                w.close().unwrap();
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
    let got = npy::read_npy(&path).unwrap().bytes().to_vec();
    let one = expected(rows, 16, 0, &DType::U8);
    let other = expected(rows, 16, 1, &DType::U8);
    assert!(got == one || got == other, "the file mixes the two runs");
    assert_eq!(entries(&dir), ["x.npy"]);
}

#[test]
fn errors_name_what_was_wrong() {
    let e = Error::RowsMissing {
        missing: 3,
        rows: 100,
        first: vec![1, 50, 99],
    };
    assert_eq!(
        e.to_string(),
        "3 of 100 rows were never written (the first: [1, 50, 99]); nothing was committed"
    );
}

#[test]
fn float8_columns_are_bytes_under_the_descriptors_numpy_with_ml_dtypes_writes() {
    // `numpy.save` of ml_dtypes' float8 arrays declares '<V1' (e4m3fn, e4m3fnuz, e5m2fnuz,
    // e4m3b11fnuz); for e5m2 it writes '<f1', which `numpy.load` refuses, so '<V1' there too.
    let dir = tmp("float8");
    for (k, descr) in ["'<V1'"].into_iter().enumerate() {
        let d = DType::Opaque(arraydrain::dtype::Opaque::new(descr).unwrap());
        let path = dir.join(format!("f{k}.npy"));
        let cols = vec![("f", d.clone(), vec![3])];
        let mut w = Writer::builder(9)
            .column("f", d.clone(), &[3])
            .path(&path)
            .open()
            .unwrap();
        write_all(&mut w, &cols, &shuffled(9), 4);
        w.close().unwrap();
        let head = std::fs::read(&path).unwrap();
        let want = format!("{{'descr': {descr}, 'fortran_order': False, 'shape': (9, 3), }}");
        assert_eq!(&head[10..10 + want.len()], want.as_bytes());
        assert_eq!(npy::read_npy(&path).unwrap().bytes(), expected(9, 3, 0, &d));
    }
}

/// Three writers of one run (threads here, processes under torchrun): one creates, two join;
/// the rows of all three make the output, committed once by the creator.
#[test]
fn joined_writers_fill_one_output_and_the_creator_commits_it_once() {
    let dir = tmp("joined");
    let cols = vec![("e", DType::F32, vec![3]), ("l", DType::I64, vec![])];
    let rows = 100;
    // DistributedSampler over 3 ranks pads 100 rows to 102: rank r takes every third index.
    let order: Vec<usize> = shuffled(rows).into_iter().chain(0..2).collect();
    for dest in [
        Destination::Npz {
            path: dir.join("o.npz"),
            compress: false,
        },
        Destination::Dir(dir.join("o")),
    ] {
        let builder = |d: &Destination| {
            let mut b = Writer::builder(rows).destination(d.clone()).ring_bytes(256);
            for (n, t, s) in &cols {
                b = b.column(*n, t.clone(), s);
            }
            b
        };
        let creator = builder(&dest).open().unwrap();
        let shared = creator.shared_path().unwrap().to_path_buf();
        assert!(!dest_exists(&dest));
        let others: Vec<Vec<u64>> = std::thread::scope(|s| {
            let handles: Vec<_> = (1..3)
                .map(|rank| {
                    let (dest, shared, order, cols) = (&dest, &shared, &order, &cols);
                    s.spawn(move || {
                        let mut w = builder(dest).join(shared).open().unwrap();
                        let mine: Vec<usize> =
                            order.iter().copied().skip(rank).step_by(3).collect();
                        write_all(&mut w, cols, &mine, 7);
                        w.sync().unwrap();
                        let coverage = w.coverage().to_vec();
                        assert!(w.close().unwrap().paths.is_empty());
                        coverage
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        let mut creator = creator;
        let mine: Vec<usize> = order.iter().copied().step_by(3).collect();
        write_all(&mut creator, &cols, &mine, 5);
        assert!(creator.rows_written() < rows);
        let refs: Vec<&[u64]> = others.iter().map(Vec::as_slice).collect();
        creator.close_with(&refs).unwrap();
        let back = match &dest {
            Destination::Npz { path, .. } => npy::read_npz(path).unwrap(),
            Destination::Dir(p) => ["e", "l"]
                .iter()
                .map(|n| npy::read_npy(p.join(format!("{n}.npy"))).unwrap())
                .collect(),
            _ => unreachable!(),
        };
        for (k, (n, d, _)) in cols.iter().enumerate() {
            let c = back.iter().find(|c| c.name() == *n).unwrap();
            assert_eq!(
                c.bytes(),
                expected(rows, c.row_bytes(), k, d),
                "{dest:?} {n}"
            );
        }
    }
    assert_eq!(entries(&dir), ["o", "o.npz"]);
}

fn dest_exists(d: &Destination) -> bool {
    match d {
        Destination::Npy(p) | Destination::Dir(p) | Destination::Npz { path: p, .. } => p.exists(),
        _ => false,
    }
}

#[test]
fn a_rank_missing_fails_the_union_and_nothing_is_committed() {
    let dir = tmp("joined-missing");
    let path = dir.join("x.npy");
    let b = || Writer::builder(10).column("x", DType::U8, &[2]).path(&path);
    let cols = vec![("x", DType::U8, vec![2])];
    let mut creator = b().open().unwrap();
    let mut joined = b().join(creator.shared_path().unwrap()).open().unwrap();
    write_all(&mut creator, &cols, &[0, 1, 2, 3, 4], 5);
    write_all(&mut joined, &cols, &[5, 6, 8], 5);
    joined.sync().unwrap();
    let e = joined.write_at(&[9], &batch(&cols, &[9])).unwrap_err();
    assert!(e.to_string().contains("synced"), "{e}");
    let theirs = joined.coverage().to_vec();
    drop(joined); // a joined writer dropped leaves the file to the creator
    let e = creator.close_with(&[&theirs]).unwrap_err();
    assert!(matches!(e, Error::RowsMissing { missing: 2, .. }), "{e}");
    assert!(e.to_string().contains("[7, 9]"), "{e}");
    assert!(entries(&dir).is_empty(), "{:?}", entries(&dir));
}

#[test]
fn joining_checks_what_it_joins() {
    let dir = tmp("joined-hostile");
    let path = dir.join("x.npy");
    let creator = Writer::builder(10)
        .column("x", DType::F32, &[2])
        .path(&path)
        .open()
        .unwrap();
    let shared = creator.shared_path().unwrap().to_path_buf();
    // Another dtype, shape or row count than the creator's: the header differs.
    for (d, s, r) in [
        (DType::I32, vec![2], 10),
        (DType::F32, vec![3], 10),
        (DType::F32, vec![2], 11),
    ] {
        let e = Writer::builder(r)
            .column("x", d, &s)
            .path(&path)
            .join(&shared)
            .open()
            .unwrap_err();
        assert!(e.to_string().contains("cannot be joined"), "{e}");
    }
    // Not a writer's temporary output: refused before it is opened.
    let victim = dir.join("victim.npy");
    std::fs::write(&victim, b"keep").unwrap();
    let e = Writer::builder(10)
        .column("x", DType::F32, &[2])
        .path(&path)
        .join(&victim)
        .open()
        .unwrap_err();
    assert!(
        e.to_string().contains("not a writer's temporary output"),
        "{e}"
    );
    // A link planted under a temporary name is not followed.
    let link = dir.join(".arraydrain-planted");
    std::os::unix::fs::symlink(&shared, &link).unwrap();
    let e = Writer::builder(10)
        .column("x", DType::F32, &[2])
        .path(&path)
        .join(&link)
        .open()
        .unwrap_err();
    assert!(matches!(e, Error::File(FileError::Io { .. })), "{e}");
    // In memory there is nothing to join.
    let e = Writer::builder(10)
        .column("x", DType::F32, &[2])
        .join(&shared)
        .open()
        .unwrap_err();
    assert!(e.to_string().contains("in memory"), "{e}");
    std::fs::remove_file(&link).unwrap();
    drop(creator);
    assert_eq!(entries(&dir), ["victim.npy"]);
    assert_eq!(std::fs::read(&victim).unwrap(), b"keep");
}

#[test]
fn the_ring_is_never_larger_than_the_output_needs() {
    // 1000 rows of 64 bytes: 62.5 KiB of output; the default ring (64 MiB in 1 MiB blocks) is
    // cut to the one block those rows fill, plus one.
    let w = Writer::builder(1000)
        .column("x", DType::F32, &[16])
        .open()
        .unwrap();
    assert_eq!(w.ring_bytes(), 2 * 1000 * 64);
    // A large output keeps the ring asked for.
    let w = Writer::builder(1 << 20)
        .column("x", DType::U8, &[64])
        .ring_bytes(8 << 20)
        .open()
        .unwrap();
    assert_eq!(w.ring_bytes(), 8 << 20);
    // A row larger than a block makes each block one row.
    let w = Writer::builder(100)
        .column("x", DType::U8, &[1 << 20])
        .ring_bytes(1 << 20)
        .open()
        .unwrap();
    assert_eq!(w.ring_bytes(), 4 << 20);
}
