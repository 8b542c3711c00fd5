//! The writer fed from device memory (`arraydrain::cuda::DeviceWriter`) on a real device: the
//! test bodies of tests/cudasim_writer.rs that need no simulator, at sizes where a missing
//! ordering shows on a GPU. Each test is `#[ignore]`d: `scripts/device-check.sh run` runs them
//! on the GPU machine, scripts/test-cudasim.sh under the CUDA simulator; without a device they
//! fail, never pass vacuously. (So far they have run under the simulator only.)
//!
//! - rows land at their `at` rows, a device and a host column, through a staging pool far
//!   smaller than the output, each batch read after its producer's last write (queued behind
//!   many other writes on the producer's stream);
//! - work the producer queues right after `write_device` (overwriting the batch, as PyTorch
//!   reusing its memory would) does not change what lands;
//! - the bytes pending never exceed the staging pool.
#![cfg(feature = "cuda")]

mod cuda_common;

use std::sync::Arc;

use arraydrain::cuda::{DeviceWriter, WriteSource};
use arraydrain::{DType, Writer};
use cuda_common::{
    device, engine_with_producer, free, free_all, queue_copy, queue_memsets, random_bytes,
    raw_alloc, rows_differing, rows_of, shuffled,
};

#[test]
#[ignore = "needs a CUDA device (device-check.sh) or the simulator (test-cudasim.sh)"]
fn device_batches_land_at_their_rows_after_their_producer_and_before_its_later_work() {
    let (engine, producer, p) = engine_with_producer();
    let (rows, a, b) = (60_000usize, 64usize, 12usize);
    let final_a = random_bytes(rows * a, 1);
    let col_b = random_bytes(rows * b, 2);
    let batch = 2048;
    let order = shuffled(rows, 3);
    // Every buffer first: allocating on the producer's stream waits for it.
    let bufs: Vec<(u64, u64)> = order
        .chunks(batch)
        .enumerate()
        .map(|(k, at)| {
            let n = at.len() * a;
            let dst = raw_alloc(&producer, &random_bytes(n, 100 + k as u64));
            let src = raw_alloc(&producer, &rows_of(&final_a, at, a));
            (dst, src)
        })
        .collect();
    let writer = Writer::builder(rows)
        .column("a", DType::U8, &[a])
        .column("b", DType::U8, &[b])
        .open()
        .unwrap();
    // 1 MiB of staging for a 4.5 MB output.
    let mut w = DeviceWriter::new(Arc::clone(&engine), writer, 1 << 20).unwrap();
    for (at, &(dst, src)) in order.chunks(batch).zip(&bufs) {
        let n = at.len() * a;
        // The batch's last write, behind many others on the producer's stream.
        queue_memsets(&producer, dst, n, 50, 0);
        queue_copy(&producer, dst, src, n);
        let host_b = rows_of(&col_b, at, b);
        let cols = [device(dst, n), WriteSource::Host(&host_b)];
        w.write_device(Some(at), &cols, at.len(), p).unwrap();
        assert!(w.pending_bytes() <= w.pool_bytes());
        // The producer's next work on the batch's memory: after the copy.
        queue_memsets(&producer, dst, n, 1, 0xEE);
    }
    let m = w.close().unwrap().memory.unwrap();
    let got = m.column("a").unwrap().as_bytes();
    let wrong = rows_differing(got, &final_a, a);
    assert_eq!(wrong, 0, "{wrong} rows of column a differ");
    assert!(m.column("b").unwrap().as_bytes() == col_b.as_slice());
    free_all(&producer, bufs.into_iter().flat_map(<[u64; 2]>::from));
}

#[test]
#[ignore = "needs a CUDA device (device-check.sh) or the simulator (test-cudasim.sh)"]
fn a_slab_larger_than_the_pool_is_appended_whole_to_a_npy_file() {
    let (engine, producer, p) = engine_with_producer();
    let (rows, row) = (200_000usize, 40usize);
    let data = random_bytes(rows * row, 4);
    let ptr = raw_alloc(&producer, &data);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("x.npy");
    let writer = Writer::builder(rows)
        .column("x", DType::U8, &[row])
        .path(&path)
        .open()
        .unwrap();
    let mut w = DeviceWriter::new(Arc::clone(&engine), writer, 1 << 20).unwrap();
    // Two appends: 6.4 MB (six times the pool), then the rest.
    let first = rows * 4 / 5;
    w.write_device(None, &[device(ptr, first * row)], first, p)
        .unwrap();
    let rest = device(ptr + (first * row) as u64, (rows - first) * row);
    w.write_device(None, &[rest], rows - first, p).unwrap();
    assert!(w.peak_pending_bytes() <= w.pool_bytes());
    w.close().unwrap();
    let back = arraydrain::npy::read_npy(&path).unwrap();
    assert!(back.bytes() == data.as_slice(), "the .npy file differs");
    free(&producer, ptr);
}
