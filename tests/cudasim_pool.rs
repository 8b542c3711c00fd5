//! The pinned pool under the CUDA driver simulator, counted by the simulator itself: repeated
//! drains of the same small output reuse the pinned memory of the last one instead of pinning
//! (and keeping) new memory each time. `#[ignore]`d: run by scripts/test-cudasim.sh.
#![cfg(feature = "cuda")]

mod cudasim_common;

use std::sync::Arc;

use arraydrain::cuda::CudaEngine;
use arraydrain::{Batches, Column, DType, Indices, Order, Strategy, Table};
use cudasim_common::{random_bytes, Sim};

#[test]
#[ignore = "needs the CUDA simulator (scripts/test-cudasim.sh)"]
fn repeated_small_drains_reuse_pooled_pinned_memory() {
    let sim = Sim::get();
    let engine = CudaEngine::new(0).unwrap();
    engine.set_pin_budget(usize::MAX);
    let rows = 300;
    let t = Table::new(vec![
        Column::from_shared(
            "x",
            DType::F32,
            &[3],
            rows,
            Arc::new(random_bytes(rows * 12, 1)),
        )
        .unwrap(),
        Column::from_shared(
            "y",
            DType::U8,
            &[5],
            rows,
            Arc::new(random_bytes(rows * 5, 2)),
        )
        .unwrap(),
    ])
    .unwrap();
    let dt = engine.upload(&t).unwrap();
    let b = Batches::new(
        Indices::resolve(&Order::Shuffle { seed: 1 }, None, false, rows).unwrap(),
        64,
        false,
    )
    .unwrap();
    drop(engine.materialize(&dt, &b, Strategy::Pinned).unwrap());
    let before = sim.stats().pinned_allocs;
    for _ in 0..10 {
        let out = engine.materialize(&dt, &b, Strategy::Pinned).unwrap();
        assert_eq!(
            out.report().pin_seconds,
            Some(0.0),
            "pinned memory was allocated again"
        );
    }
    let after = sim.stats().pinned_allocs;
    assert_eq!(
        after,
        before,
        "ten drains of the same output pinned {} more allocations",
        after - before
    );
}
