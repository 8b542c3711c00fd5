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

use std::sync::Arc;

use arraydrain::cuda::cudarc::driver::{result, CudaStream};
use arraydrain::cuda::{CudaEngine, DeviceWriter, WriteSource};
use arraydrain::{DType, Writer};

fn engine() -> Arc<CudaEngine> {
    match CudaEngine::new(0) {
        Ok(e) => {
            println!("device: {}", e.info());
            Arc::new(e)
        }
        Err(e) => panic!("these tests need a CUDA device: {e}"),
    }
}

fn splitmix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

fn random_bytes(n: usize, seed: u64) -> Vec<u8> {
    let mut s = seed;
    (0..n)
        .map(|_| {
            s = splitmix(s);
            (s >> 56) as u8
        })
        .collect()
}

fn shuffled(n: usize, seed: u64) -> Vec<u64> {
    let mut v: Vec<u64> = (0..n as u64).collect();
    let mut s = seed;
    for i in (1..n).rev() {
        s = splitmix(s);
        v.swap(i, (s % (i as u64 + 1)) as usize);
    }
    v
}

fn rows_of(data: &[u8], at: &[u64], row: usize) -> Vec<u8> {
    at.iter()
        .flat_map(|&i| &data[i as usize * row..(i as usize + 1) * row])
        .copied()
        .collect()
}

/// Device memory holding `bytes` once this returns (allocated through the driver on `stream`;
/// freed by [`free`] only).
fn raw_alloc(stream: &Arc<CudaStream>, bytes: &[u8]) -> u64 {
    stream.context().bind_to_thread().unwrap();
    // SAFETY: a stream-ordered allocation on a live stream of the current context; written
    // below before anything reads it.
    let ptr = unsafe { result::malloc_async(stream.cu_stream(), bytes.len().max(1)) }.unwrap();
    // SAFETY: `ptr` holds `bytes.len()` bytes; `bytes` outlives the copy, waited for below.
    unsafe { result::memcpy_htod_async(ptr, bytes, stream.cu_stream()) }.unwrap();
    stream.synchronize().unwrap();
    ptr
}

fn free(stream: &Arc<CudaStream>, ptr: u64) {
    stream.synchronize().unwrap();
    stream.context().bind_to_thread().unwrap();
    // SAFETY: allocated by `raw_alloc`, freed once, after the stream (and every write of the
    // test) ran.
    unsafe { result::free_sync(ptr) }.unwrap();
}

/// Queues `ops` memsets of `len` bytes at `ptr` on `stream`.
fn memsets(stream: &Arc<CudaStream>, ptr: u64, len: usize, ops: u32, value: u8) {
    stream.context().bind_to_thread().unwrap();
    for v in 0..ops {
        // SAFETY: `ptr` holds `len` device bytes of this context, freed only after the stream
        // has been synchronised.
        unsafe {
            result::memset_d8_async(ptr, value.wrapping_add(v as u8), len, stream.cu_stream())
        }
        .unwrap();
    }
}

#[test]
#[ignore = "needs a CUDA device (device-check.sh) or the simulator (test-cudasim.sh)"]
fn device_batches_land_at_their_rows_after_their_producer_and_before_its_later_work() {
    let engine = engine();
    let producer = engine.context().new_stream().unwrap();
    let p = producer.cu_stream() as usize;
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
        memsets(&producer, dst, n, 50, 0);
        producer.context().bind_to_thread().unwrap();
        // SAFETY: both ranges hold `n` device bytes of this context, alive until freed below.
        unsafe { result::memcpy_dtod_async(dst, src, n, producer.cu_stream()) }.unwrap();
        let host_b = rows_of(&col_b, at, b);
        let cols = [
            WriteSource::Device { ptr: dst, bytes: n },
            WriteSource::Host(&host_b),
        ];
        w.write_device(Some(at), &cols, at.len(), p).unwrap();
        assert!(w.pending_bytes() <= w.pool_bytes());
        // The producer's next work on the batch's memory: after the copy.
        memsets(&producer, dst, n, 1, 0xEE);
    }
    let m = w.close().unwrap().memory.unwrap();
    let got = m.column("a").unwrap().as_bytes();
    let wrong = (0..rows)
        .filter(|&i| got[i * a..(i + 1) * a] != final_a[i * a..(i + 1) * a])
        .count();
    assert_eq!(wrong, 0, "{wrong} rows of column a differ");
    assert!(m.column("b").unwrap().as_bytes() == col_b.as_slice());
    for (dst, src) in bufs {
        free(&producer, dst);
        free(&producer, src);
    }
}

#[test]
#[ignore = "needs a CUDA device (device-check.sh) or the simulator (test-cudasim.sh)"]
fn a_slab_larger_than_the_pool_is_appended_whole_to_a_npy_file() {
    let engine = engine();
    let producer = engine.context().new_stream().unwrap();
    let p = producer.cu_stream() as usize;
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
    let cols = [WriteSource::Device {
        ptr,
        bytes: first * row,
    }];
    w.write_device(None, &cols, first, p).unwrap();
    let cols = [WriteSource::Device {
        ptr: ptr + (first * row) as u64,
        bytes: (rows - first) * row,
    }];
    w.write_device(None, &cols, rows - first, p).unwrap();
    assert!(w.peak_pending_bytes() <= w.pool_bytes());
    w.close().unwrap();
    let back = arraydrain::npy::read_npy(&path).unwrap();
    assert!(back.bytes() == data.as_slice(), "the .npy file differs");
    free(&producer, ptr);
}
