//! Opaque dtypes on a real device: columns of any fixed-size NumPy dtype (complex, strings,
//! datetimes, structured with padding, big-endian, zero-sized elements) are uploaded and
//! gathered by the CUDA engine as row bytes, exactly as the CPU reference gathers them, in
//! every GPU strategy; their dtypes (descriptors included) come through unchanged.
//! `#[ignore]`d: run with `--ignored` where a GPU is; without a device it fails, never passes.
#![cfg(feature = "cuda")]

use std::sync::Arc;

use arraydrain::bench::reference;
use arraydrain::cuda::CudaEngine;
use arraydrain::dtype::Opaque;
use arraydrain::{Batches, Column, DType, Indices, Order, Strategy, Table};

fn bytes(n: usize, seed: u64) -> Vec<u8> {
    let mut s = seed;
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            (s >> 24) as u8
        })
        .collect()
}

#[test]
#[ignore = "needs a CUDA device"]
fn opaque_columns_gather_on_the_device_like_the_cpu() {
    let engine = CudaEngine::new(0).unwrap_or_else(|e| panic!("needs a CUDA device: {e}"));
    engine.set_pin_budget(usize::MAX);
    // Row sizes 1, 3, 12, 16, 24, 31 × 5, 0, 8: every vector width and none.
    let descrs: [(&str, &[usize]); 8] = [
        ("'|S1'", &[]),
        ("'|S3'", &[]),
        ("'<U3'", &[]),
        ("'<c16'", &[]),
        (
            "[('a', '|i1'), ('', '|V7'), ('b', '<i8'), ('c', '|i1'), ('', '|V7')]",
            &[],
        ),
        (
            "[('t', '<M8[ns]'), ('n', '|S20'), ('x', '>f2'), ('', '|V1')]",
            &[5],
        ),
        ("[]", &[2]),
        ("'>f8'", &[]),
    ];
    let rows = 10_007;
    let columns: Vec<Column<'static>> = descrs
        .iter()
        .enumerate()
        .map(|(i, (descr, shape))| {
            let dtype = DType::Opaque(Opaque::new(descr).unwrap());
            let n = rows * shape.iter().product::<usize>() * dtype.size();
            Column::from_shared(
                format!("c{i}"),
                dtype,
                shape,
                rows,
                Arc::new(bytes(n, i as u64 + 1)),
            )
            .unwrap()
        })
        .collect();
    let table = Table::new(columns).unwrap();
    let device = engine.upload(&table).unwrap();
    for order in [Order::Sequential, Order::Shuffle { seed: 11 }] {
        let b = Batches::new(
            Indices::resolve(&order, None, false, rows).unwrap(),
            257,
            false,
        )
        .unwrap();
        let expected = reference(&table, &b).unwrap();
        for s in [
            Strategy::Concat,
            Strategy::PerBatch,
            Strategy::Preallocated,
            Strategy::Pinned,
        ] {
            let out = engine.materialize(&device, &b, s).unwrap();
            for ((c, e), src) in out.columns().iter().zip(&expected).zip(table.columns()) {
                assert_eq!(c.dtype(), src.dtype(), "{s} {}", c.name());
                assert_eq!(c.row_shape(), src.row_shape(), "{s} {}", c.name());
                assert!(
                    c.as_bytes() == e.as_slice(),
                    "{s}: column {} differs",
                    c.name()
                );
            }
        }
    }
}
