//! The equivalence property under the CUDA driver simulator and many of its seeds: every GPU
//! strategy — the classic recipes, `Pinned` direct into pinned output, staged (pin budget 0) and
//! into reused poisoned outputs — equals the CPU reference, for 0-row, 0-width and 1-row tables,
//! odd row sizes, sequential, shuffled and explicit orders with repeats, `drop_last`, outputs
//! cut into chunks over every lane, 32-bit indices (the pipeline below 2^32 rows) and 64-bit
//! ones (the classic recipes always; the pipeline over a table past 2^32 rows).
//!
//! The simulator reads its seed once per process, so each seed runs in a child process.
//! More than 2^32 output bytes do not fit a CI machine; the reduced case is a sparse simulated
//! table of 2^32 + 4097 one-byte rows (4 GiB of device address space, almost none of it
//! touched), gathered through 64-bit indices past 2^32 into a small output.
//! `#[ignore]`d: run by scripts/test-cudasim.sh with --include-ignored.
#![cfg(feature = "cuda")]

mod cudasim_common;

use std::sync::Arc;

use arraydrain::bench::poison;
use arraydrain::bench::reference;
use arraydrain::cuda::{CudaEngine, DeviceColumn, DeviceTable};
use arraydrain::{
    Batches, Column, DType, Indices, Materialized, Order, StorageKind, Strategy, Table,
};
use cudasim_common::{child, is_child, random_bytes, splitmix, Sim};

/// Simulator seeds the property runs under (each in its own process).
const SEEDS: u64 = 20;

const STRATEGIES: [Strategy; 5] = [
    Strategy::Concat,
    Strategy::PerBatch,
    Strategy::Preallocated,
    Strategy::Pinned,
    Strategy::Auto,
];

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

fn batches(rows: usize, order: &Order, bs: usize, drop: bool) -> Batches {
    Batches::new(Indices::resolve(order, None, drop, rows).unwrap(), bs, drop).unwrap()
}

fn same(out: &Materialized, expected: &[Vec<u8>], what: &str) {
    assert_eq!(out.columns().len(), expected.len(), "{what}: column count");
    for (c, e) in out.columns().iter().zip(expected) {
        assert!(
            c.as_bytes() == e.as_slice(),
            "{what}: column {} differs from the reference (first at byte {:?} of {})",
            c.name(),
            c.as_bytes().iter().zip(e).position(|(a, b)| a != b),
            e.len()
        );
    }
}

/// Every strategy, the direct and staged modes, and reuse of poisoned outputs.
fn check(
    engine: &CudaEngine,
    t: &Table<'_>,
    dt: &DeviceTable,
    b: &Batches,
    classic: bool,
    what: &str,
) {
    let expected = reference(t, b).unwrap();
    for s in STRATEGIES {
        if !classic && !matches!(s, Strategy::Pinned | Strategy::Auto) {
            continue;
        }
        let out = engine
            .materialize(dt, b, s)
            .unwrap_or_else(|e| panic!("{what} {s}: {e}"));
        same(&out, &expected, &format!("{what} {s}"));
    }
    let mut out = engine.materialize(dt, b, Strategy::Pinned).unwrap();
    assert!(out
        .columns()
        .iter()
        .all(|c| c.storage_kind() == StorageKind::Pinned));
    poison(&mut out);
    engine.materialize_into(dt, b, &mut out).unwrap();
    same(&out, &expected, &format!("{what} into poisoned pinned"));
    engine.set_pin_budget(0);
    let staged = engine.materialize(dt, b, Strategy::Pinned);
    engine.set_pin_budget(usize::MAX);
    let mut staged = staged.unwrap_or_else(|e| panic!("{what} staged: {e}"));
    assert!(
        staged
            .columns()
            .iter()
            .all(|c| c.storage_kind() != StorageKind::Pinned),
        "{what}: staged output is pinned"
    );
    same(&staged, &expected, &format!("{what} staged"));
    poison(&mut staged);
    engine.materialize_into(dt, b, &mut staged).unwrap();
    same(
        &staged,
        &expected,
        &format!("{what} staged into poisoned heap"),
    );
}

#[test]
#[ignore = "needs the CUDA simulator (scripts/test-cudasim.sh)"]
fn child_equivalence_one_seed() {
    if !is_child("child_equivalence_one_seed") {
        return;
    }
    let sim = Sim::get();
    let seed: u64 = std::env::var("ARRAYDRAIN_SIM_SEED")
        .unwrap()
        .parse()
        .unwrap();
    let engine = CudaEngine::new(0).unwrap();
    assert!(engine.info().is_simulator());
    engine.set_pin_budget(usize::MAX);
    let odd: [(DType, &[usize]); 7] = [
        (DType::U8, &[]),
        (DType::U8, &[3]),
        (DType::I16, &[5]),
        (DType::U8, &[7]),
        (DType::F32, &[3]),
        (DType::F64, &[2]),
        (DType::U8, &[520]),
    ];
    // 0 rows, 0-width rows, 1 row.
    for (rows, cols) in [
        (0usize, &odd[..3]),
        (
            100,
            &[(DType::U8, &[0usize][..]), (DType::F32, &[2, 0][..])][..],
        ),
        (1, &odd[..]),
    ] {
        let t = table(rows, cols, seed);
        let dt = engine.upload(&t).unwrap();
        for order in [Order::Sequential, Order::Shuffle { seed }] {
            let b = batches(rows, &order, 3, false);
            check(
                &engine,
                &t,
                &dt,
                &b,
                true,
                &format!("seed {seed}: {rows} rows {}", order.name()),
            );
        }
    }
    // Odd row sizes; sequential, shuffled, explicit with repeats; drop_last; batch sizes that
    // do not divide the rows.
    let rows = 1500 + (splitmix(seed) % 700) as usize;
    let t = table(rows, &odd, seed);
    let dt = engine.upload(&t).unwrap();
    let mut s = seed;
    let explicit: Vec<u64> = (0..rows + rows / 3)
        .map(|_| {
            s = splitmix(s);
            s % rows as u64
        })
        .collect();
    for (order, bs, drop) in [
        (Order::Sequential, 97, false),
        (Order::Shuffle { seed: seed + 1 }, 128, true),
        (Order::indices(explicit), 301, false),
    ] {
        let b = batches(rows, &order, bs, drop);
        check(
            &engine,
            &t,
            &dt,
            &b,
            true,
            &format!("seed {seed}: odd rows {} bs {bs}", order.name()),
        );
    }
    // Several lanes: 5 M one-byte rows are three chunks of at most 2 M rows.
    let rows = 5_000_000;
    let t = table(rows, &[(DType::U8, &[])], seed);
    let dt = engine.upload(&t).unwrap();
    let b = batches(rows, &Order::Shuffle { seed }, 1 << 16, false);
    check(
        &engine,
        &t,
        &dt,
        &b,
        false,
        &format!("seed {seed}: three lanes"),
    );
    let st = sim.stats();
    assert_eq!(
        st.pending_host_copies, 0,
        "copies left in flight after the drains"
    );
}

#[test]
#[ignore = "needs the CUDA simulator (scripts/test-cudasim.sh)"]
fn every_gpu_strategy_equals_the_reference_under_many_simulator_seeds() {
    let _ = Sim::get();
    let mut failed = Vec::new();
    for seed in 0..SEEDS {
        let out = child(
            "child_equivalence_one_seed",
            &[("ARRAYDRAIN_SIM_SEED", seed.to_string())],
        );
        let stdout = String::from_utf8_lossy(&out.stdout);
        if !out.status.success() || !stdout.contains("1 passed") {
            failed.push(format!(
                "seed {seed}: {:?}\n{stdout}\n{}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
            ));
        }
    }
    assert!(failed.is_empty(), "{}", failed.join("\n"));
}

#[test]
#[ignore = "needs the CUDA simulator (scripts/test-cudasim.sh)"]
fn child_sparse_table_past_two_to_the_32_rows() {
    if !is_child("child_sparse_table_past_two_to_the_32_rows") {
        return;
    }
    let _ = Sim::get();
    let engine = CudaEngine::new(0).unwrap();
    engine.set_pin_budget(usize::MAX);
    let rows = (1usize << 32) + 4097;
    // A 4 GiB device column, zero but for its first and last 4097 rows: the simulator does not
    // touch memory that was never written.
    let mut col = engine.stream().alloc_zeros::<u8>(rows).unwrap();
    let head = random_bytes(4097, 1);
    let tail = random_bytes(4097, 2);
    engine
        .stream()
        .memcpy_htod(&head, &mut col.slice_mut(0..4097))
        .unwrap();
    engine
        .stream()
        .memcpy_htod(&tail, &mut col.slice_mut(rows - 4097..rows))
        .unwrap();
    let byte = |i: u64| -> u8 {
        let i = i as usize;
        if i < 4097 {
            head[i]
        } else if i >= rows - 4097 {
            tail[i - (rows - 4097)]
        } else {
            0
        }
    };
    let dt = engine
        .wrap(vec![DeviceColumn::typed("b", &[], col).unwrap()])
        .unwrap();
    let mut s = 77u64;
    let idx: Vec<u64> = (0..300_000)
        .map(|i| {
            s = splitmix(s);
            match i % 3 {
                0 => (rows - 4097) as u64 + s % 4097,
                1 => s % 4097,
                _ => s % rows as u64,
            }
        })
        .collect();
    let expected: Vec<u8> = idx.iter().map(|&i| byte(i)).collect();
    let b = Batches::new(
        Indices::resolve(&Order::indices(idx), None, false, rows).unwrap(),
        4096,
        false,
    )
    .unwrap();
    let out = engine.materialize(&dt, &b, Strategy::Pinned).unwrap();
    assert!(
        out.columns()[0].as_bytes() == expected.as_slice(),
        "pinned, 64-bit indices"
    );
    engine.set_pin_budget(0);
    let staged = engine.materialize(&dt, &b, Strategy::Pinned);
    engine.set_pin_budget(usize::MAX);
    assert!(
        staged.unwrap().columns()[0].as_bytes() == expected.as_slice(),
        "staged"
    );
    let out = engine.materialize(&dt, &b, Strategy::Preallocated).unwrap();
    assert!(
        out.columns()[0].as_bytes() == expected.as_slice(),
        "preallocated"
    );
}

#[test]
#[ignore = "needs the CUDA simulator (scripts/test-cudasim.sh)"]
fn a_sparse_table_past_two_to_the_32_rows_gathers_through_64_bit_indices() {
    let out = child(
        "child_sparse_table_past_two_to_the_32_rows",
        &[("ARRAYDRAIN_SIM_DEVICE_BYTES", "6G".to_string())],
    );
    assert!(
        out.status.success() && String::from_utf8_lossy(&out.stdout).contains("1 passed"),
        "{:?}\n{}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
