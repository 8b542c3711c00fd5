//! An error that cudarc stored in a user's context from an unrelated earlier drop (here: the
//! free of a buffer the engine never saw, made to fail by the CUDA simulator) belongs to that
//! drop, not to the next drain: `wrap`, `materialize` of wrapped columns and `drain_device`
//! must each succeed, with the right bytes. Errors stored while the engine itself reads the
//! user's buffers stay this call's (tests/cudasim_faults.rs).
//! `#[ignore]`d: run by scripts/test-cudasim.sh with --include-ignored.
#![cfg(feature = "cuda")]

mod cudasim_common;

use arraydrain::cuda::{CudaEngine, DeviceBatch, DeviceColumn};
use arraydrain::{Batches, DType, Indices, Order, Strategy};
use cudasim_common::{random_bytes, Sim};

#[test]
#[ignore = "needs the CUDA simulator (scripts/test-cudasim.sh)"]
fn an_unrelated_earlier_failure_is_not_the_next_drains_error() {
    let sim = Sim::get();
    let engine = CudaEngine::new(0).unwrap();
    let rows = 200;
    let bytes = random_bytes(rows * 12, 3);
    // A failed free of a buffer the engine never saw: cudarc stores the error in the context.
    let plant_drop = |junk| {
        let before = sim.stats().injected_faults;
        sim.fail_nth(1);
        drop(junk);
        sim.disarm();
        assert_eq!(
            sim.stats().injected_faults,
            before + 1,
            "the unrelated free was made to fail"
        );
    };
    let plant = || plant_drop(engine.stream().clone_htod(&[7u8; 64]).unwrap());
    let column = || {
        let x = engine.stream().clone_htod(&bytes).unwrap();
        DeviceColumn::new("x", DType::U8, &[12], rows, x).unwrap()
    };
    let sequential = Batches::new(
        Indices::resolve(&Order::Sequential, None, false, rows).unwrap(),
        50,
        false,
    )
    .unwrap();

    // Everything the user makes comes first: cudarc itself reports a stored error from the
    // user's next call into it (e.g. the next allocation), before the engine sees anything.
    let table_column = column();
    let batch = DeviceBatch::new().with(column()).unwrap();

    plant();
    let table = engine
        .wrap(vec![table_column])
        .expect("wrap after an unrelated failed free");
    for strategy in [Strategy::Pinned, Strategy::Preallocated] {
        let junk = engine.stream().clone_htod(&[7u8; 64]).unwrap();
        plant_drop(junk);
        let out = engine
            .materialize(&table, &sequential, strategy)
            .unwrap_or_else(|e| panic!("{strategy:?} after an unrelated failed free: {e}"));
        assert_eq!(out.column("x").unwrap().as_bytes(), &bytes[..]);
    }
    let junk = engine.stream().clone_htod(&[7u8; 64]).unwrap();
    plant_drop(junk);
    let out = engine
        .drain_device(vec![Ok(batch)], Some(rows))
        .expect("drain_device after an unrelated failed free");
    assert_eq!(out.column("x").unwrap().as_bytes(), &bytes[..]);
}
