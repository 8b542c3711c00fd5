//! One test per error variant: bad input gets a clear, typed error, never a panic.

use arraydrain::TableError;
use arraydrain::{
    drain, Batch, Column, DType, DrainOptions, Error, Loader, Materialized, Strategy, Table,
};
use ndarray::{arr0, Array1, Array2};

fn xy() -> (Array2<f32>, Array1<i64>) {
    (
        Array2::from_shape_fn((10, 3), |(i, j)| (i * 3 + j) as f32),
        Array1::from_iter(0..10),
    )
}

#[test]
fn empty_table() {
    assert!(matches!(
        Table::new(vec![]),
        Err(Error::Table(TableError::EmptyTable))
    ));
}

#[test]
fn duplicate_column() {
    let (x, _) = xy();
    let err = Table::builder()
        .view("x", x.view())
        .view("x", x.view())
        .build()
        .unwrap_err();
    assert!(
        matches!(err, Error::Table(TableError::DuplicateColumn { ref name }) if name == "x"),
        "{err}"
    );
}

#[test]
fn unknown_column_on_table_and_output() {
    let (x, y) = xy();
    let t = Table::builder()
        .view("x", x.view())
        .view("y", y.view())
        .build()
        .unwrap();
    assert!(matches!(
        t.column("z"),
        Err(Error::Table(TableError::UnknownColumn { .. }))
    ));
    let out = Loader::new(&t).materialize(Strategy::Preallocated).unwrap();
    let err = out.view::<f32>("z").unwrap_err();
    assert!(
        matches!(err, Error::Table(TableError::UnknownColumn { ref available, .. }) if available == &["x", "y"]),
        "{err}"
    );
    assert!(matches!(
        t.select(&["x", "nope"]),
        Err(Error::Table(TableError::UnknownColumn { .. }))
    ));
}

#[test]
fn row_count_mismatch() {
    let (x, _) = xy();
    let y = Array1::<i64>::zeros(9);
    let err = Table::builder()
        .view("x", x.view())
        .view("y", y.view())
        .build()
        .unwrap_err();
    assert!(
        matches!(err, Error::Table(TableError::RowCountMismatch { ref column, expected: 10, got: 9 }) if column == "y"),
        "{err}"
    );
}

#[test]
fn zero_dimensional_column() {
    let a = arr0(1.0f32);
    let err = Table::builder().view("s", a.view()).build().unwrap_err();
    assert!(
        matches!(err, Error::Table(TableError::NoRowAxis { .. })),
        "{err}"
    );
    assert!(matches!(
        Batch::new().with("s", arr0(1i64)),
        Err(Error::Table(TableError::NoRowAxis { .. }))
    ));
}

#[test]
fn byte_length_mismatch() {
    let bytes = [0u8; 10];
    let err = Column::from_bytes("b", DType::I32, &[], 3, &bytes).unwrap_err();
    assert!(
        matches!(
            err,
            Error::Table(TableError::ByteLengthMismatch {
                expected: 12,
                got: 10,
                ..
            })
        ),
        "{err}"
    );
}

#[test]
fn index_out_of_bounds() {
    let (x, _) = xy();
    let t = Table::builder().view("x", x.view()).build().unwrap();
    let err = Loader::new(&t)
        .indices(vec![1u64, 10, 2])
        .materialize(Strategy::Auto)
        .unwrap_err();
    assert!(
        matches!(
            err,
            Error::IndexOutOfBounds {
                index: 10,
                position: 1,
                rows: 10
            }
        ),
        "{err}"
    );
    let err = Loader::new(&t).indices(vec![u64::MAX]).iter().unwrap_err();
    assert!(matches!(err, Error::IndexOutOfBounds { .. }), "{err}");
}

#[test]
fn zero_batch_size() {
    let (x, _) = xy();
    let t = Table::builder().view("x", x.view()).build().unwrap();
    assert!(matches!(
        Loader::new(&t).batch_size(0).materialize(Strategy::Auto),
        Err(Error::ZeroBatchSize)
    ));
    assert!(matches!(
        Loader::new(&t).batch_size(0).iter(),
        Err(Error::ZeroBatchSize)
    ));
}

#[test]
fn bad_shards() {
    let (x, _) = xy();
    let t = Table::builder().view("x", x.view()).build().unwrap();
    assert!(matches!(
        Loader::new(&t).shard(0, 0).batches(),
        Err(Error::ZeroWorldSize)
    ));
    let err = Loader::new(&t).shard(3, 3).batches().unwrap_err();
    assert!(
        matches!(
            err,
            Error::RankOutOfRange {
                rank: 3,
                world_size: 3
            }
        ),
        "{err}"
    );
}

#[test]
fn wrong_dtype_on_access() {
    let (x, y) = xy();
    let t = Table::builder()
        .view("x", x.view())
        .view("y", y.view())
        .build()
        .unwrap();
    let out = Loader::new(&t).materialize(Strategy::Concat).unwrap();
    let err = out.view::<f64>("x").unwrap_err();
    assert!(
        matches!(
            err,
            Error::Table(TableError::DTypeMismatch {
                actual: DType::F32,
                requested: DType::F64,
                ..
            })
        ),
        "{err}"
    );
    assert!(matches!(
        out.into_array::<i32>("y"),
        Err(Error::Table(TableError::DTypeMismatch { .. }))
    ));
    let b = Batch::new().with("y", y.clone()).unwrap();
    assert!(matches!(
        b.into_array::<u64>("y"),
        Err(Error::Table(TableError::DTypeMismatch { .. }))
    ));
}

fn stream(sizes: &[usize]) -> Vec<Result<Batch, Error>> {
    sizes
        .iter()
        .map(|&n| Batch::new().with("x", Array2::<f32>::zeros((n, 4))))
        .collect()
}

#[test]
fn stream_shorter_or_longer_than_declared() {
    for strategy in [
        Strategy::Preallocated,
        Strategy::Concat,
        Strategy::PerBatch,
        Strategy::Auto,
    ] {
        let err = drain(stream(&[2, 2]), DrainOptions::new(strategy).rows(5)).unwrap_err();
        assert!(
            matches!(
                err,
                Error::StreamLengthMismatch {
                    declared: 5,
                    got: 4,
                    more: false
                }
            ),
            "{strategy}: {err}"
        );
        let err = drain(stream(&[2, 2, 2]), DrainOptions::new(strategy).rows(5)).unwrap_err();
        assert!(
            matches!(
                err,
                Error::StreamLengthMismatch {
                    declared: 5,
                    got: 6,
                    more: true
                }
            ),
            "{strategy}: {err}"
        );
    }
}

#[test]
fn a_longer_stream_is_not_pulled_past_the_declared_count() {
    let pulled = std::cell::Cell::new(0);
    let endless = std::iter::from_fn(|| {
        pulled.set(pulled.get() + 1);
        Some(Batch::new().with("x", Array1::<u8>::zeros(3)))
    });
    let err = drain(endless, DrainOptions::new(Strategy::Preallocated).rows(7)).unwrap_err();
    assert!(
        matches!(err, Error::StreamLengthMismatch { more: true, .. }),
        "{err}"
    );
    assert_eq!(pulled.get(), 3);
}

#[test]
fn batch_mismatches_name_the_batch_and_column() {
    let ok = || {
        Batch::new()
            .with("x", Array2::<f32>::zeros((2, 4)))
            .unwrap()
            .with("y", Array1::<i64>::zeros(2))
            .unwrap()
    };
    let cases: Vec<(Batch, &str)> = vec![
        (
            Batch::new()
                .with("x", Array2::<f64>::zeros((2, 4)))
                .unwrap()
                .with("y", Array1::<i64>::zeros(2))
                .unwrap(),
            "x",
        ),
        (
            Batch::new()
                .with("x", Array2::<f32>::zeros((2, 5)))
                .unwrap()
                .with("y", Array1::<i64>::zeros(2))
                .unwrap(),
            "x",
        ),
        (
            Batch::new()
                .with("x", Array2::<f32>::zeros((2, 4)))
                .unwrap()
                .with("y", Array1::<i64>::zeros(3))
                .unwrap(),
            "y",
        ),
        (
            Batch::new()
                .with("x", Array2::<f32>::zeros((2, 4)))
                .unwrap(),
            "y",
        ),
        (ok().with("z", Array1::<u8>::zeros(2)).unwrap(), "z"),
    ];
    for (bad, column) in cases {
        let err = drain(
            vec![Ok::<_, Error>(ok()), Ok(ok()), Ok(bad)],
            DrainOptions::new(Strategy::Concat),
        )
        .unwrap_err();
        assert!(
            matches!(err, Error::BatchMismatch { batch: 2, column: ref c, .. } if c == column),
            "{err}"
        );
    }
}

#[test]
fn source_errors_are_passed_on_with_the_batch_number() {
    let items: Vec<Result<Batch, std::io::Error>> = vec![
        Batch::new()
            .with("x", Array1::<u8>::zeros(2))
            .map_err(|e| std::io::Error::other(e.to_string())),
        Err(std::io::Error::other("disk on fire")),
    ];
    let err = drain(items, DrainOptions::default()).unwrap_err();
    assert!(matches!(err, Error::Source { batch: 1, .. }), "{err}");
    assert!(err.to_string().contains("disk on fire"));
}

#[test]
fn strategy_unavailable() {
    let err = drain(stream(&[1]), DrainOptions::new(Strategy::Preallocated)).unwrap_err();
    assert!(
        matches!(
            err,
            Error::StrategyUnavailable {
                strategy: "preallocated",
                ..
            }
        ),
        "{err}"
    );
    let (x, _) = xy();
    let t = Table::builder().view("x", x.view()).build().unwrap();
    let err = Loader::new(&t).materialize(Strategy::Pinned).unwrap_err();
    assert!(
        matches!(
            err,
            Error::StrategyUnavailable {
                strategy: "pinned",
                ..
            }
        ),
        "{err}"
    );
}

#[test]
fn output_too_large_is_an_allocation_error() {
    // 2^40 declared rows of 4 KiB: 4 PiB, refused by the allocator, reported, not aborted.
    let err = drain(
        stream(&[1]),
        DrainOptions::new(Strategy::Preallocated).rows(1 << 40),
    )
    .unwrap_err();
    assert!(matches!(err, Error::HostAllocation { .. }), "{err}");
    // A size that overflows usize is the same error.
    let err = drain(
        stream(&[1]),
        DrainOptions::new(Strategy::Preallocated).rows(usize::MAX / 2),
    )
    .unwrap_err();
    assert!(matches!(err, Error::HostAllocation { .. }), "{err}");
}

#[test]
fn materialize_into_an_output_of_another_shape() {
    let (x, y) = xy();
    let t = Table::builder()
        .view("x", x.view())
        .view("y", y.view())
        .build()
        .unwrap();
    let mut out = Loader::new(&t)
        .batch_size(4)
        .materialize(Strategy::Auto)
        .unwrap();
    let err = Loader::new(&t)
        .batch_size(4)
        .drop_last(true)
        .materialize_into(&mut out)
        .unwrap_err();
    assert!(
        matches!(err, Error::OutputMismatch { ref column, .. } if column == "x"),
        "{err}"
    );
    let mut other = Materialized::from_columns(vec![]);
    assert!(Loader::new(&t).materialize_into(&mut other).is_err());
    let ys = Array1::from_iter(0..10i64);
    let t2 = Table::builder()
        .view("x", x.view())
        .view("y", ys.view())
        .build()
        .unwrap();
    assert!(Loader::new(&t2).materialize_into(&mut out).is_ok());
}

#[test]
fn a_write_stopped_between_blocks_is_interrupted_and_commits_nothing() {
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::Arc;
    // 64 MiB of rows: several blocks, so the check runs before the write is done.
    let x = Array2::from_shape_fn((1 << 16, 256), |(i, j)| (i + j) as f32);
    let t = Table::builder().view("x", x.view()).build().unwrap();
    let loader = Loader::new(&t).batch_size(1000).shuffle(3);
    let dir = tempfile::tempdir().unwrap();
    for kind in ["npz", "dir"] {
        let calls = Arc::new(AtomicU64::new(0));
        let seen = Arc::clone(&calls);
        let options = arraydrain::npy::WriteOptions::new().check_between_blocks(move |bytes| {
            assert!(bytes > 0, "called after a block is written");
            if seen.fetch_add(1, Ordering::SeqCst) == 1 {
                return Err(Error::Interrupted {
                    reason: "the test asked to stop".into(),
                });
            }
            Ok(())
        });
        let err = match kind {
            "npz" => arraydrain::npy::drain_to_npz(&loader, dir.path().join("o.npz"), &options),
            _ => arraydrain::npy::drain_to_npy_dir(&loader, dir.path().join("d"), &options),
        }
        .unwrap_err();
        assert!(
            matches!(&err, Error::Interrupted { reason } if reason == "the test asked to stop"),
            "{err}"
        );
        assert!(err.to_string().contains("nothing was written"), "{err}");
        assert_eq!(calls.load(Ordering::SeqCst), 2, "stopped at the first Err");
        let left: Vec<_> = std::fs::read_dir(dir.path()).unwrap().flatten().collect();
        assert!(left.is_empty(), "{kind}: {left:?}");
    }
}
