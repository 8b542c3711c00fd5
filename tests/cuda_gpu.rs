//! The CUDA engine on a real device: every GPU strategy produces exactly the bytes of the CPU
//! reference gather. Each test is `#[ignore]`d (run them with `--ignored` where a GPU is, as
//! `scripts/device-check.sh run` does) and fails — never passes vacuously — without a device.
//! Outputs are poisoned before each run so an element a strategy forgets to write shows.
//!
//! The tests share one device and some fill most of its memory, so they take a lock and run one
//! at a time.
#![cfg(feature = "cuda")]

mod cuda_common;

use arraydrain::TableError;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};

use arraydrain::bench::poison;
use arraydrain::bench::reference;
use arraydrain::cuda::cudarc::driver::CudaContext;
use arraydrain::cuda::CudaError;
use arraydrain::cuda::{CudaEngine, DeviceBatch, DeviceColumn, DeviceTable};
use arraydrain::{
    Batches, Column, DType, Error, Indices, Materialized, Order, Shard, StorageKind, Strategy,
    Table,
};
use cuda_common::{device_engine, random_bytes, splitmix};
use proptest::prelude::*;
use proptest::strategy::Strategy as _;

const STRATEGIES: [Strategy; 5] = [
    Strategy::Concat,
    Strategy::PerBatch,
    Strategy::Preallocated,
    Strategy::Pinned,
    Strategy::Auto,
];

/// One engine per test process, and one test at a time on it.
fn engine() -> (MutexGuard<'static, ()>, &'static CudaEngine) {
    static LOCK: Mutex<()> = Mutex::new(());
    static ENGINE: OnceLock<CudaEngine> = OnceLock::new();
    let guard = LOCK.lock().unwrap_or_else(|p| p.into_inner());
    let engine = ENGINE.get_or_init(device_engine);
    engine.set_pin_budget(usize::MAX);
    (guard, engine)
}

/// A table of `rows` rows with one column per `(dtype, row_shape)`, random bytes.
fn table(rows: usize, cols: &[(DType, &[usize])], seed: u64) -> Table<'static> {
    let columns = cols
        .iter()
        .enumerate()
        .map(|(i, (dtype, shape))| {
            let row_bytes = shape.iter().product::<usize>() * dtype.size();
            let bytes = random_bytes(rows * row_bytes, seed ^ ((i as u64 + 1) * 7919));
            Column::from_shared(format!("c{i}"), dtype.clone(), shape, rows, Arc::new(bytes))
                .unwrap()
        })
        .collect();
    Table::new(columns).unwrap()
}

fn batches(rows: usize, order: &Order, shard: Option<Shard>, bs: usize, drop: bool) -> Batches {
    Batches::new(
        Indices::resolve(order, shard, drop, rows).unwrap(),
        bs,
        drop,
    )
    .unwrap()
}

fn same(out: &Materialized, expected: &[Vec<u8>], what: &str) {
    assert_eq!(out.columns().len(), expected.len(), "{what}: column count");
    for (c, e) in out.columns().iter().zip(expected) {
        if c.as_bytes() != e.as_slice() {
            let at = c
                .as_bytes()
                .iter()
                .zip(e)
                .position(|(a, b)| a != b)
                .unwrap_or(e.len().min(c.as_bytes().len()));
            panic!(
                "{what}: column {} differs from the reference at byte {at} of {} (row bytes {})",
                c.name(),
                e.len(),
                c.row_bytes()
            );
        }
    }
}

/// Every strategy (and the staged mode, and reuse into poisoned outputs) against the reference.
fn check_all(engine: &CudaEngine, table: &Table<'_>, dt: &DeviceTable, b: &Batches, what: &str) {
    // The naive reference equals the CPU's Preallocated output (tests/equivalence.rs).
    let expected = reference(table, b).unwrap();
    for s in STRATEGIES {
        let out = engine
            .materialize(dt, b, s)
            .unwrap_or_else(|e| panic!("{what} {s}: {e}"));
        same(&out, &expected, &format!("{what} {s}"));
        assert_eq!(out.report().rows, b.rows());
        assert_eq!(out.report().backend, arraydrain::Backend::Cuda);
    }
    // Direct pinned path into a reused, poisoned pinned output.
    let mut out = engine.materialize(dt, b, Strategy::Pinned).unwrap();
    assert!(out
        .columns()
        .iter()
        .all(|c| c.storage_kind() == StorageKind::Pinned));
    poison(&mut out);
    engine.materialize_into(dt, b, &mut out).unwrap();
    same(
        &out,
        &expected,
        &format!("{what} pinned into poisoned pinned"),
    );
    // Staged path into a poisoned heap output.
    let mut heap = engine.materialize(dt, b, Strategy::Preallocated).unwrap();
    poison(&mut heap);
    engine.materialize_into(dt, b, &mut heap).unwrap();
    same(
        &heap,
        &expected,
        &format!("{what} staged into poisoned heap"),
    );
    // Staged mode chosen by Pinned itself (pin budget 0).
    engine.set_pin_budget(0);
    let staged = engine.materialize(dt, b, Strategy::Pinned);
    engine.set_pin_budget(usize::MAX);
    let staged = staged.unwrap();
    assert!(staged
        .columns()
        .iter()
        .all(|c| c.storage_kind() != StorageKind::Pinned));
    same(&staged, &expected, &format!("{what} pinned (staged)"));
}

#[test]
#[ignore = "needs a CUDA device"]
fn small_drains_for_the_sanitizer() {
    let (_g, engine) = engine();
    let t = table(
        1000,
        &[(DType::F32, &[5]), (DType::I64, &[]), (DType::U8, &[3])],
        1,
    );
    let dt = engine.upload(&t).unwrap();
    for order in [Order::Sequential, Order::Shuffle { seed: 3 }] {
        let b = batches(t.rows(), &order, None, 64, false);
        check_all(engine, &t, &dt, &b, &format!("small {}", order.name()));
    }
}

#[test]
#[ignore = "needs a CUDA device"]
fn odd_row_sizes_orders_and_batchings() {
    let (_g, engine) = engine();
    let shapes: [(DType, &[usize]); 7] = [
        (DType::U8, &[]),
        (DType::U8, &[3]),
        (DType::I16, &[3]),
        (DType::F32, &[3]),
        (DType::U8, &[520]),
        (DType::F64, &[2, 4]),
        (DType::F32, &[32]),
    ];
    let rows = 4099;
    let t = table(rows, &shapes, 11);
    let dt = engine.upload(&t).unwrap();
    let orders = [
        Order::Sequential,
        Order::Shuffle { seed: 5 },
        Order::indices((0..rows as u64).rev().collect::<Vec<_>>()),
        Order::indices(vec![7u64, 7, 0, rows as u64 - 1, 3, 3, 3]),
    ];
    for order in &orders {
        for (bs, drop) in [(1, false), (7, false), (1000, true), (5000, false)] {
            let b = batches(rows, order, None, bs, drop);
            check_all(
                engine,
                &t,
                &dt,
                &b,
                &format!("{} bs={bs} drop={drop}", order.name()),
            );
        }
    }
    for (rank, world) in [(0, 3), (2, 3)] {
        let shard = Shard::new(rank, world).unwrap();
        let b = batches(rows, &Order::Shuffle { seed: 9 }, Some(shard), 33, false);
        check_all(engine, &t, &dt, &b, &format!("shard {rank}/{world}"));
    }
    // Zero rows and a single row.
    for n in [0, 1] {
        let t = table(n, &shapes, 2);
        let dt = engine.upload(&t).unwrap();
        let b = batches(n, &Order::Shuffle { seed: 1 }, None, 4, false);
        check_all(engine, &t, &dt, &b, &format!("{n} rows"));
    }
}

#[test]
#[ignore = "needs a CUDA device"]
fn wrapped_columns_at_unaligned_offsets() {
    let (_g, engine) = engine();
    let rows = 3001;
    for (i, (rb, offset)) in [
        (1usize, 1usize),
        (3, 1),
        (6, 2),
        (12, 4),
        (16, 3),
        (520, 5),
        (128, 8),
    ]
    .into_iter()
    .enumerate()
    {
        let data = random_bytes(rows * rb, 100 + i as u64);
        let host = Table::new(vec![
            Column::from_bytes("c", DType::U8, &[rb], rows, &data).unwrap()
        ])
        .unwrap();
        let mut padded = vec![0xEEu8; offset];
        padded.extend_from_slice(&data);
        padded.extend_from_slice(&[0xEE; 7]);
        let slice = engine.stream().clone_htod(&padded).unwrap();
        let col = DeviceColumn::with_offset("c", DType::U8, &[rb], rows, slice, offset).unwrap();
        let dt = engine.wrap(vec![col]).unwrap();
        let b = batches(rows, &Order::Shuffle { seed: 4 }, None, 100, false);
        check_all(
            engine,
            &host,
            &dt,
            &b,
            &format!("row {rb} B at offset {offset}"),
        );
    }
    // Columns from the user's own context and stream (event tracking on), typed.
    let ctx = CudaContext::new(0).unwrap();
    let stream = ctx.new_stream().unwrap();
    let xs: Vec<f32> = (0..rows * 4).map(|i| i as f32 * 0.5).collect();
    let x = stream.clone_htod(&xs).unwrap();
    let col = DeviceColumn::typed("x", &[4], x).unwrap();
    let dt = engine.wrap(vec![col]).unwrap();
    let host = Table::new(vec![Column::from_bytes(
        "x",
        DType::F32,
        &[4],
        rows,
        bytemuck::cast_slice(&xs),
    )
    .unwrap()])
    .unwrap();
    let b = batches(rows, &Order::Shuffle { seed: 8 }, None, 50, true);
    check_all(engine, &host, &dt, &b, "user context");
}

#[test]
#[ignore = "needs a CUDA device"]
fn repeated_drains_into_a_reused_pinned_output() {
    let (_g, engine) = engine();
    let t = table(200_000, &[(DType::F32, &[32]), (DType::I64, &[])], 21);
    let dt = engine.upload(&t).unwrap();
    let b0 = batches(t.rows(), &Order::Shuffle { seed: 0 }, None, 256, false);
    let mut out = engine.materialize(&dt, &b0, Strategy::Pinned).unwrap();
    same(&out, &reference(&t, &b0).unwrap(), "first");
    for seed in 1..5 {
        let b = batches(t.rows(), &Order::Shuffle { seed }, None, 256, false);
        poison(&mut out);
        let report = engine.materialize_into(&dt, &b, &mut out).unwrap();
        assert_eq!(report.pin_seconds, Some(0.0));
        same(&out, &reference(&t, &b).unwrap(), &format!("epoch {seed}"));
    }
    // The pool hands the same memory to the next drain of the same size: no pinning time.
    drop(out);
    assert!(engine.pinned_pool().cached_bytes() > 0);
    let again = engine.materialize(&dt, &b0, Strategy::Pinned).unwrap();
    assert_eq!(again.report().pin_seconds, Some(0.0));
    same(&again, &reference(&t, &b0).unwrap(), "from the pool");
    // Peak device memory is the staging, not the dataset.
    let staging = again.report().peak_device_bytes.unwrap();
    assert!(staging > 0 && staging < 256 << 20, "staging {staging}");
}

#[test]
#[ignore = "needs a CUDA device"]
fn more_than_two_to_the_32_one_byte_rows() {
    let (_g, engine) = engine();
    // Past 2^32 rows: 64-bit indices (every other test's table takes the 32-bit path).
    let rows = (1usize << 32) + 4097;
    let data: Vec<u8> = {
        use rayon::prelude::*;
        let mut v = vec![0u8; rows];
        v.par_chunks_mut(1 << 20).enumerate().for_each(|(k, c)| {
            for (i, b) in c.iter_mut().enumerate() {
                *b = (splitmix((k << 20 | i) as u64) >> 56) as u8;
            }
        });
        v
    };
    let t = Table::new(vec![
        Column::from_bytes("b", DType::U8, &[], rows, &data).unwrap()
    ])
    .unwrap();
    let dt = engine.upload(&t).unwrap();
    // Sequential, whole table: the output is the table.
    let b = batches(rows, &Order::Sequential, None, 1 << 24, false);
    let out = engine.materialize(&dt, &b, Strategy::Pinned).unwrap();
    assert!(
        out.columns()[0].as_bytes() == data.as_slice(),
        "sequential > 2^32 rows"
    );
    drop(out);
    let out = engine.materialize(&dt, &b, Strategy::Preallocated).unwrap();
    assert!(
        out.columns()[0].as_bytes() == data.as_slice(),
        "preallocated > 2^32 rows"
    );
    drop(out);
    // Explicit indices past 2^32 through the kernel (64-bit indices), in the direct and the
    // staged mode.
    let mut s = 77u64;
    let idx: Vec<u64> = (0..3_000_000)
        .map(|i| {
            s = splitmix(s);
            if i % 2 == 0 {
                (1u64 << 32) + s % 4097
            } else {
                s % rows as u64
            }
        })
        .collect();
    let b = batches(rows, &Order::indices(idx.clone()), None, 4096, false);
    let expected: Vec<u8> = idx.iter().map(|&i| data[i as usize]).collect();
    let out = engine.materialize(&dt, &b, Strategy::Pinned).unwrap();
    assert!(
        out.columns()[0].as_bytes() == expected.as_slice(),
        "indices past 2^32"
    );
    engine.set_pin_budget(0);
    let staged = engine.materialize(&dt, &b, Strategy::Pinned);
    engine.set_pin_budget(usize::MAX);
    assert!(staged.unwrap().columns()[0].as_bytes() == expected.as_slice());
    let out = engine.materialize(&dt, &b, Strategy::Concat).unwrap();
    assert!(
        out.columns()[0].as_bytes() == expected.as_slice(),
        "concat past 2^32"
    );
}

/// A column allocated on one stream of the user's context (event tracking on) and written on
/// another — as a loader that allocates on one stream and computes on another does — is read
/// only after that write, by `wrap` + `materialize` and by `drain_device`. The write is a chain
/// of device copies that ends with the expected bytes, long enough that reading early shows.
#[test]
#[ignore = "needs a CUDA device"]
fn columns_written_on_another_stream_are_waited_for() {
    let (_g, engine) = engine();
    let ctx = CudaContext::new(0).unwrap();
    let alloc_stream = ctx.new_stream().unwrap();
    let write_stream = ctx.new_stream().unwrap();
    let (rows, per_row) = (1usize << 22, 16usize); // 256 MiB of f32
    let host: Vec<f32> = (0..rows * per_row)
        .map(|i| (i % 4093) as f32 + 1.0)
        .collect();
    let filled = write_stream.clone_htod(&host).unwrap();
    let zeros = write_stream.alloc_zeros::<f32>(rows * per_row).unwrap();
    write_stream.synchronize().unwrap();
    let written_elsewhere = || {
        let mut x = alloc_stream.alloc_zeros::<f32>(rows * per_row).unwrap();
        for _ in 0..8 {
            write_stream.memcpy_dtod(&zeros, &mut x).unwrap();
            write_stream.memcpy_dtod(&filled, &mut x).unwrap();
        }
        DeviceColumn::typed("x", &[per_row], x).unwrap()
    };
    let dt = engine.wrap(vec![written_elsewhere()]).unwrap();
    let b = batches(rows, &Order::Sequential, None, 4096, false);
    let out = engine.materialize(&dt, &b, Strategy::Pinned).unwrap();
    assert!(
        out.view::<f32>("x").unwrap().as_slice().unwrap() == host.as_slice(),
        "wrap read the column before its last write"
    );
    drop((out, dt));
    let batch = DeviceBatch::new().with(written_elsewhere()).unwrap();
    let out = engine.drain_device(vec![Ok(batch)], Some(rows)).unwrap();
    assert!(
        out.view::<f32>("x").unwrap().as_slice().unwrap() == host.as_slice(),
        "drain_device copied the batch before its last write"
    );
}

#[test]
#[ignore = "needs a CUDA device"]
fn drain_of_device_batches() {
    let (_g, engine) = engine();
    // The user's own context and stream, as a GPU loader would use.
    let ctx = CudaContext::new(0).unwrap();
    let stream = ctx.new_stream().unwrap();
    let sizes = [64usize, 64, 64, 17];
    let rows: usize = sizes.iter().sum();
    let xs: Vec<f32> = (0..rows * 3).map(|i| i as f32).collect();
    let ys: Vec<i64> = (0..rows as i64).collect();
    let make = || {
        let mut at = 0;
        let mut v = Vec::new();
        for &n in &sizes {
            let x = stream.clone_htod(&xs[at * 3..(at + n) * 3]).unwrap();
            let y = stream.clone_htod(&ys[at..at + n]).unwrap();
            v.push(
                DeviceBatch::new()
                    .with(DeviceColumn::typed("x", &[3], x).unwrap())
                    .and_then(|b| b.with(DeviceColumn::typed("y", &[], y).unwrap())),
            );
            at += n;
        }
        v
    };
    for declared in [Some(rows), None] {
        let out = engine.drain_device(make(), declared).unwrap();
        assert_eq!(out.rows(), rows);
        assert_eq!(out.view::<f32>("x").unwrap().as_slice().unwrap(), &xs[..]);
        assert_eq!(out.view::<i64>("y").unwrap().as_slice().unwrap(), &ys[..]);
    }
    let e = engine.drain_device(make(), Some(rows + 1)).unwrap_err();
    assert!(
        matches!(e, Error::StreamLengthMismatch { more: false, .. }),
        "{e}"
    );
    let e = engine.drain_device(make(), Some(rows - 1)).unwrap_err();
    assert!(
        matches!(e, Error::StreamLengthMismatch { more: true, .. }),
        "{e}"
    );
    let mut bad = make();
    let z = stream.clone_htod(&[0u8; 8]).unwrap();
    bad.push(DeviceBatch::new().with(DeviceColumn::typed("x", &[8], z).unwrap()));
    let e = engine.drain_device(bad, None).unwrap_err();
    assert!(matches!(e, Error::BatchMismatch { batch: 4, .. }), "{e}");
    let mut failing = make();
    failing.insert(2, Err(Error::ZeroBatchSize));
    let e = engine.drain_device(failing, None).unwrap_err();
    assert!(matches!(e, Error::Source { batch: 2, .. }), "{e}");
}

#[test]
#[ignore = "needs a CUDA device"]
fn typed_errors_on_bad_input_and_device_oom() {
    let (_g, engine) = engine();
    let t = table(100, &[(DType::F32, &[4])], 3);
    let dt = engine.upload(&t).unwrap();
    // An index list made for a bigger table.
    let b = batches(1000, &Order::Shuffle { seed: 1 }, None, 10, false);
    for s in STRATEGIES {
        let e = engine.materialize(&dt, &b, s).unwrap_err();
        assert!(
            matches!(e, Error::IndexOutOfBounds { rows: 100, .. }),
            "{s}: {e}"
        );
    }
    // An output that does not match the table.
    let b = batches(100, &Order::Sequential, None, 10, false);
    let other = table(50, &[(DType::F32, &[4])], 3);
    let other_dt = engine.upload(&other).unwrap();
    let b50 = batches(50, &Order::Sequential, None, 10, false);
    let mut small = engine
        .materialize(&other_dt, &b50, Strategy::Pinned)
        .unwrap();
    let e = engine.materialize_into(&dt, &b, &mut small).unwrap_err();
    assert!(matches!(e, Error::OutputMismatch { .. }), "{e}");
    // Wrapping validates like Table::new.
    let a = engine.stream().clone_htod(&[0f32; 8]).unwrap();
    let c = engine.stream().clone_htod(&[0f32; 12]).unwrap();
    let e = engine
        .wrap(vec![
            DeviceColumn::typed("a", &[4], a).unwrap(),
            DeviceColumn::typed("c", &[4], c).unwrap(),
        ])
        .unwrap_err();
    assert!(
        matches!(e, Error::Table(TableError::RowCountMismatch { .. })),
        "{e}"
    );
    let short = engine.stream().clone_htod(&[0u8; 10]).unwrap();
    let e = DeviceColumn::new("s", DType::F32, &[4], 1, short).unwrap_err();
    assert!(
        matches!(e, Error::Table(TableError::ByteLengthMismatch { .. })),
        "{e}"
    );
    // Device out of memory: Concat keeps every batch on the device and then needs the whole
    // output again; an output of ~3/4 of device memory cannot fit twice.
    let one = table(1, &[(DType::U8, &[4096])], 5);
    let one_dt = engine.upload(&one).unwrap();
    let n = (engine.info().total_memory as usize / 4096) * 3 / 4;
    let b = Batches::new(
        Indices::resolve(&Order::indices(vec![0u64; n]), None, false, 1).unwrap(),
        1 << 16,
        false,
    )
    .unwrap();
    let e = engine
        .materialize(&one_dt, &b, Strategy::Concat)
        .unwrap_err();
    assert!(
        matches!(e, Error::Cuda(CudaError::OutOfMemory { .. })),
        "{e}"
    );
    // The engine still works afterwards.
    let b = batches(100, &Order::Shuffle { seed: 2 }, None, 7, false);
    let out = engine.materialize(&dt, &b, Strategy::Pinned).unwrap();
    same(&out, &reference(&t, &b).unwrap(), "after OOM");
}

/// Image-sized rows (u8 and f32 3×224×224: 147 KiB and 588 KiB) go through the (row, segment)
/// launch geometry: every strategy equals the reference, shuffled and with a short last batch.
#[test]
#[ignore = "needs a CUDA device"]
fn image_rows_u8_and_f32() {
    let (_g, engine) = engine();
    for (dtype, rows) in [(DType::U8, 301usize), (DType::F32, 97)] {
        let t = table(
            rows,
            &[(dtype.clone(), &[3, 224, 224]), (DType::I64, &[])],
            17,
        );
        let dt = engine.upload(&t).unwrap();
        for order in [Order::Sequential, Order::Shuffle { seed: 12 }] {
            let b = batches(rows, &order, None, 32, false);
            check_all(
                engine,
                &t,
                &dt,
                &b,
                &format!("{dtype} image {}", order.name()),
            );
        }
    }
    // One row larger than a chunk (16 MiB + 16 bytes).
    let t = table(3, &[(DType::U8, &[(16 << 20) + 16])], 5);
    let dt = engine.upload(&t).unwrap();
    let b = batches(3, &Order::indices(vec![2u64, 0, 2]), None, 2, false);
    check_all(engine, &t, &dt, &b, "rows past a chunk");
}

/// Tables whose rows are zero bytes wide drain with every strategy to empty outputs of the right
/// row count (once an internal error: no staging buffer), and their indices are still checked.
#[test]
#[ignore = "needs a CUDA device"]
fn zero_width_tables_drain_with_every_strategy() {
    let (_g, engine) = engine();
    let t = table(100, &[(DType::U8, &[0]), (DType::F32, &[2, 0])], 1);
    let dt = engine.upload(&t).unwrap();
    for order in [Order::Sequential, Order::Shuffle { seed: 3 }] {
        let b = batches(100, &order, None, 7, false);
        check_all(engine, &t, &dt, &b, &format!("zero width {}", order.name()));
        let out = engine.materialize(&dt, &b, Strategy::Pinned).unwrap();
        assert_eq!(out.rows(), 100);
    }
    let b = batches(1000, &Order::Shuffle { seed: 1 }, None, 10, false);
    for s in STRATEGIES {
        let e = engine.materialize(&dt, &b, s).unwrap_err();
        assert!(
            matches!(e, Error::IndexOutOfBounds { rows: 100, .. }),
            "{s}: {e}"
        );
    }
}

/// The context handed to users tracks events (their buffers are safe across streams), and
/// columns the engine cannot order after are refused with a typed error, by `wrap` and by
/// `drain_device`: the per-thread default stream, a non-primary context.
#[test]
#[ignore = "needs a CUDA device"]
fn user_context_tracks_events_and_unorderable_columns_are_refused() {
    let (_g, engine) = engine();
    assert!(engine.context().is_event_tracking());
    assert!(engine.stream().context().is_event_tracking());
    assert!(engine.context().is_primary());
    let per_thread = engine.context().per_thread_stream();
    let on_per_thread = || {
        let x = per_thread.clone_htod(&[1f32; 8]).unwrap();
        DeviceColumn::typed("x", &[2], x).unwrap()
    };
    let e = engine.wrap(vec![on_per_thread()]).unwrap_err();
    assert!(
        matches!(e, Error::Cuda(CudaError::UnorderableColumn { .. })),
        "{e}"
    );
    let batch = DeviceBatch::new().with(on_per_thread()).unwrap();
    let e = engine.drain_device(vec![Ok(batch)], Some(4)).unwrap_err();
    assert!(
        matches!(e, Error::Cuda(CudaError::UnorderableColumn { .. })),
        "{e}"
    );
    let other = CudaContext::new_non_primary(0, 0).unwrap();
    let stream = other.new_stream().unwrap();
    let x = stream.clone_htod(&[1f32; 8]).unwrap();
    let e = engine
        .wrap(vec![DeviceColumn::typed("x", &[2], x).unwrap()])
        .unwrap_err();
    assert!(
        matches!(e, Error::Cuda(CudaError::UnorderableColumn { .. })),
        "{e}"
    );
    // The legacy default stream of the primary context is fine.
    let legacy = engine.context().default_stream();
    let xs: Vec<f32> = (0..8).map(|i| i as f32).collect();
    let x = legacy.clone_htod(&xs).unwrap();
    let dt = engine
        .wrap(vec![DeviceColumn::typed("x", &[2], x).unwrap()])
        .unwrap();
    let out = engine
        .materialize(
            &dt,
            &batches(4, &Order::Sequential, None, 2, false),
            Strategy::Pinned,
        )
        .unwrap();
    assert_eq!(out.view::<f32>("x").unwrap().as_slice().unwrap(), &xs[..]);
}

/// The engine called from inside rayon jobs — nested in a drain whose staged mode waits in
/// rayon, on a pool smaller than the number of calls — neither deadlocks nor mixes outputs.
#[test]
#[ignore = "needs a CUDA device"]
fn the_engine_can_be_called_from_rayon_jobs() {
    use rayon::prelude::*;
    let (_g, engine) = engine();
    let t = table(20_000, &[(DType::F32, &[16]), (DType::I64, &[])], 8);
    let dt = engine.upload(&t).unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::scope(|scope| {
        scope.spawn(|| {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(2)
                .build()
                .unwrap();
            engine.set_pin_budget(0); // staged: host copies on rayon inside the drain
            let ok = pool.install(|| {
                (0..8u64).into_par_iter().all(|seed| {
                    let b = batches(20_000, &Order::Shuffle { seed }, None, 100, false);
                    let out = engine.materialize(&dt, &b, Strategy::Pinned).unwrap();
                    let want = reference(&t, &b).unwrap();
                    out.columns()
                        .iter()
                        .zip(&want)
                        .all(|(c, w)| c.as_bytes() == w.as_slice())
                })
            });
            engine.set_pin_budget(usize::MAX);
            let _ = tx.send(ok);
        });
        let ok = rx
            .recv_timeout(std::time::Duration::from_secs(120))
            .expect("calls from rayon jobs deadlocked");
        assert!(ok, "an output differs from its reference");
    });
}

/// Classic runs on several threads at once leave the device memory pool's release threshold as
/// they found it (a run that saved another run's raised value would leave it at u64::MAX).
#[test]
#[ignore = "needs a CUDA device"]
fn concurrent_classic_runs_restore_the_pool_threshold() {
    let (_g, engine) = engine();
    let before = engine.mem_pool_release_threshold().unwrap();
    let t = table(50_000, &[(DType::F32, &[8])], 4);
    let dt = engine.upload(&t).unwrap();
    let want = |seed| {
        let b = batches(50_000, &Order::Shuffle { seed }, None, 128, false);
        let r = reference(&t, &b).unwrap();
        (b, r)
    };
    std::thread::scope(|scope| {
        for k in 0..4u64 {
            let (dt, want) = (&dt, &want);
            scope.spawn(move || {
                for round in 0..3 {
                    let (b, r) = want(k * 10 + round);
                    let s = [Strategy::Concat, Strategy::PerBatch, Strategy::Preallocated]
                        [(k + round) as usize % 3];
                    let out = engine.materialize(dt, &b, s).unwrap();
                    same(&out, &r, &format!("thread {k} round {round} {s}"));
                }
            });
        }
    });
    assert_eq!(engine.mem_pool_release_threshold().unwrap(), before);
}

/// Pinned sizes that cannot be rounded or allocated are typed errors, never a cudarc assert.
#[test]
#[ignore = "needs a CUDA device"]
fn impossible_pinned_sizes_are_errors() {
    let (_g, engine) = engine();
    for len in [usize::MAX, usize::MAX - 5, isize::MAX as usize] {
        let e = engine.pinned_pool().take(len).unwrap_err();
        assert!(matches!(e, Error::HostAllocation { .. }), "{len}: {e}");
    }
    let (buf, _) = engine.pinned_pool().take(1000).unwrap();
    assert_eq!(buf.len(), 1000);
}

#[derive(Debug, Clone)]
struct Case {
    rows: usize,
    shapes: Vec<(usize, Vec<usize>)>,
    order: u8,
    seed: u64,
    batch_size: usize,
    drop_last: bool,
}

fn case() -> impl proptest::strategy::Strategy<Value = Case> {
    (
        0usize..3000,
        prop::collection::vec(
            (
                0usize..DType::ALL.len(),
                prop::collection::vec(1usize..6, 0..3),
            ),
            1..4,
        ),
        0u8..3,
        any::<u64>(),
        1usize..600,
        any::<bool>(),
    )
        .prop_map(|(rows, shapes, order, seed, batch_size, drop_last)| Case {
            rows,
            shapes,
            order,
            seed,
            batch_size,
            drop_last,
        })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, failure_persistence: None, ..ProptestConfig::default() })]

    /// The core equivalence property, on the GPU: random tables (every dtype, row shapes),
    /// sequential / shuffled / explicit orders with repeats, any batch size, drop_last.
    #[test]
    #[ignore = "needs a CUDA device"]
    fn every_gpu_strategy_equals_the_reference(c in case()) {
        let (_g, engine) = engine();
        let cols: Vec<(DType, Vec<usize>)> =
            c.shapes.iter().map(|(d, s)| (DType::ALL[*d].clone(), s.clone())).collect();
        let refs: Vec<(DType, &[usize])> = cols.iter().map(|(d, s)| (d.clone(), s.as_slice())).collect();
        let t = table(c.rows, &refs, c.seed);
        let dt = engine.upload(&t).unwrap();
        let order = match c.order {
            0 => Order::Sequential,
            1 => Order::Shuffle { seed: c.seed },
            _ => {
                let mut s = c.seed;
                let n = c.rows + c.rows / 2;
                Order::indices(
                    (0..if c.rows == 0 { 0 } else { n })
                        .map(|_| { s = splitmix(s); s % c.rows.max(1) as u64 })
                        .collect::<Vec<_>>(),
                )
            }
        };
        let b = batches(c.rows, &order, None, c.batch_size, c.drop_last);
        check_all(engine, &t, &dt, &b, &format!("{c:?}"));
    }
}

/// Every entry point leaves the calling thread's current CUDA context as it found it (cudarc
/// binds its own context in constructors, allocations and drops; PyTorch on another device
/// would otherwise find the engine's context current). A new thread has none current; after
/// uploads, drains, a failed call and the drops of device and pinned memory, it still has none.
#[test]
#[ignore = "needs a CUDA device"]
fn the_callers_current_context_is_left_as_it_was() {
    let (_lock, engine) = engine();
    std::thread::scope(|s| {
        s.spawn(|| {
            use arraydrain::cuda::current_context;
            let none = Some(0);
            assert_eq!(
                current_context(),
                none,
                "a new thread has no current context"
            );
            let t = table(1000, &[(DType::F32, &[4]), (DType::U8, &[3])], 11);
            let dt = engine.upload(&t).unwrap();
            assert_eq!(current_context(), none, "upload");
            let order = Order::Shuffle { seed: 5 };
            for strategy in STRATEGIES {
                let out = engine
                    .materialize(&dt, &batches(1000, &order, None, 64, false), strategy)
                    .unwrap();
                assert_eq!(current_context(), none, "materialize {strategy:?}");
                drop(out);
                assert_eq!(current_context(), none, "dropping a {strategy:?} output");
            }
            let bad = Batches::new(Indices::List(Arc::from(vec![5000u64])), 1, false).unwrap();
            assert!(engine.materialize(&dt, &bad, Strategy::Pinned).is_err());
            assert_eq!(current_context(), none, "a failed drain");
            let ctx = CudaContext::new(0).unwrap();
            ctx.bind_to_thread().unwrap();
            let mine = current_context();
            assert!(mine.is_some_and(|c| c != 0), "{mine:?}");
            let out = engine
                .materialize(&dt, &batches(1000, &order, None, 64, false), Strategy::Auto)
                .unwrap();
            drop(out);
            drop(dt);
            assert_eq!(
                current_context(),
                mine,
                "the caller's own context stays current"
            );
        });
    });
}
