//! Criterion benchmarks: one group per workload, one function per strategy, on the same input.
//! Every strategy's output is checked against the naive reference once before it is timed.

use std::hint::black_box;
use std::time::Duration;

use arraydrain::bench::{reference, synthetic_table, verify};
use arraydrain::{Loader, Order, Strategy};
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};

struct Workload {
    name: &'static str,
    rows: usize,
    dim: usize,
    batch: usize,
    shuffle: bool,
}

const WORKLOADS: [Workload; 3] = [
    Workload {
        name: "classic_1000x10_b10",
        rows: 1000,
        dim: 10,
        batch: 10,
        shuffle: false,
    },
    Workload {
        name: "shuffled_100kx128_b256",
        rows: 100_000,
        dim: 128,
        batch: 256,
        shuffle: true,
    },
    Workload {
        name: "sequential_1Mx128_b256",
        rows: 1_000_000,
        dim: 128,
        batch: 256,
        shuffle: false,
    },
];

fn drain_benches(c: &mut Criterion) {
    for w in &WORKLOADS {
        let table = synthetic_table(w.rows, w.dim, 1).expect("synthetic table");
        let mut loader = Loader::new(&table).batch_size(w.batch);
        if w.shuffle {
            loader = loader.order(Order::Shuffle { seed: 1 });
        }
        let batches = loader.batches().expect("batches");
        let expected = reference(&table, &batches).expect("reference");
        let bytes: u64 = expected.iter().map(|r| r.len() as u64).sum();

        let mut group = c.benchmark_group(w.name);
        group.throughput(Throughput::Bytes(bytes));
        if bytes > 10 << 20 {
            group
                .sample_size(10)
                .measurement_time(Duration::from_secs(3));
        }
        for strategy in [
            Strategy::Concat,
            Strategy::PerBatch,
            Strategy::Preallocated,
            Strategy::Auto,
        ] {
            let out = loader.materialize(strategy).expect("drain");
            assert!(
                verify(&out, &expected),
                "{} output differs from the reference",
                strategy
            );
            drop(out);
            group.bench_function(BenchmarkId::new("oneshot", strategy.name()), |b| {
                b.iter(|| black_box(loader.materialize(strategy).expect("drain")))
            });
        }
        // "prebuilt": drain again into a reused output (allocation excluded).
        let mut out = loader.materialize(Strategy::Preallocated).expect("drain");
        loader.materialize_into(&mut out).expect("drain");
        assert!(
            verify(&out, &expected),
            "materialize_into output differs from the reference"
        );
        group.bench_function(BenchmarkId::new("prebuilt", "preallocated"), |b| {
            b.iter(|| loader.materialize_into(black_box(&mut out)).expect("drain"))
        });
        group.finish();
    }
}

criterion_group!(benches, drain_benches);
criterion_main!(benches);
