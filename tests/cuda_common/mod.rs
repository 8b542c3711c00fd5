//! Shared by the CUDA tests, on a real device (tests/cuda_*.rs, `mod cuda_common;`) and under
//! the CUDA driver simulator (tests/cudasim_*.rs, which get it through tests/cudasim_common/):
//! deterministic test data, the engine on device 0, and device memory allocated, written and
//! freed through the driver on a producer stream of the test's own, as a framework's allocator
//! would hand it over (not a `CudaSlice`: nothing but the test frees it).
#![allow(dead_code)]

use std::sync::Arc;

use arraydrain::cuda::cudarc::driver::{result, CudaStream, DevicePtr};
use arraydrain::cuda::{CudaEngine, WriteSource};

/// One step of splitmix64: the tests' one source of pseudo-random numbers.
pub fn splitmix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// `n` pseudo-random bytes drawn from `seed`.
pub fn random_bytes(n: usize, seed: u64) -> Vec<u8> {
    let mut s = seed;
    (0..n)
        .map(|_| {
            s = splitmix(s);
            (s >> 56) as u8
        })
        .collect()
}

/// A shuffled permutation of `0..n`, drawn from `seed`.
pub fn shuffled(n: usize, seed: u64) -> Vec<u64> {
    let mut v: Vec<u64> = (0..n as u64).collect();
    let mut s = seed;
    for i in (1..n).rev() {
        s = splitmix(s);
        v.swap(i, (s % (i as u64 + 1)) as usize);
    }
    v
}

/// The rows `at` (in that order) of `data`, a column of `row` bytes per row.
pub fn rows_of(data: &[u8], at: &[u64], row: usize) -> Vec<u8> {
    at.iter()
        .flat_map(|&i| &data[i as usize * row..(i as usize + 1) * row])
        .copied()
        .collect()
}

/// How many rows of `row` bytes differ between `got` and `want` (a length mismatch counts every
/// row past the shorter one).
pub fn rows_differing(got: &[u8], want: &[u8], row: usize) -> usize {
    let rows = got.len().max(want.len()).div_ceil(row);
    (0..rows)
        .filter(|&i| got.get(i * row..(i + 1) * row) != want.get(i * row..(i + 1) * row))
        .count()
}

/// The CUDA engine on device 0 (its description printed), or a panic naming why it cannot
/// start: the GPU tests fail, never pass vacuously, without a device.
pub fn device_engine() -> CudaEngine {
    match CudaEngine::new(0) {
        Ok(e) => {
            println!("device: {}", e.info());
            e
        }
        Err(e) => panic!("these tests need a CUDA device: {e}"),
    }
}

/// [`device_engine`], shared, and a stream of the test's own on its context: the producer whose
/// writes the engine's reads must follow. Last, that stream's handle as the engine takes it.
pub fn engine_with_producer() -> (Arc<CudaEngine>, Arc<CudaStream>, usize) {
    let engine = Arc::new(device_engine());
    let producer = engine.context().new_stream().unwrap();
    let handle = producer.cu_stream() as usize;
    (engine, producer, handle)
}

/// A batch column of `bytes` bytes of device memory at `ptr`, for `DeviceWriter::write_device`.
pub fn device(ptr: u64, bytes: usize) -> WriteSource<'static> {
    WriteSource::Device { ptr, bytes }
}

/// `before.len()` bytes (at least one) of device memory allocated through the driver on
/// `stream`, holding `before` once this returns; freed by [`free`] only.
pub fn raw_alloc(stream: &Arc<CudaStream>, before: &[u8]) -> u64 {
    stream.context().bind_to_thread().unwrap();
    // SAFETY: a stream-ordered allocation on a live stream of the current context; written
    // below before anything reads it.
    let ptr = unsafe { result::malloc_async(stream.cu_stream(), before.len().max(1)) }.unwrap();
    // SAFETY: `ptr` holds `before.len()` bytes; `before` outlives the copy, waited for below.
    unsafe { result::memcpy_htod_async(ptr, before, stream.cu_stream()) }.unwrap();
    stream.synchronize().unwrap();
    ptr
}

/// Frees `ptr`, allocated by [`raw_alloc`] on `stream`, after everything queued on `stream`
/// has run. A second free of the same memory aborts the simulator.
pub fn free(stream: &Arc<CudaStream>, ptr: u64) {
    stream.synchronize().unwrap();
    stream.context().bind_to_thread().unwrap();
    // SAFETY: allocated by `raw_alloc`, freed once, after the stream (and every use of the
    // test that was ordered on it or waited for) ran.
    unsafe { result::free_sync(ptr) }.unwrap();
}

/// [`free`]s each of `ptrs`.
pub fn free_all(stream: &Arc<CudaStream>, ptrs: impl IntoIterator<Item = u64>) {
    for ptr in ptrs {
        free(stream, ptr);
    }
}

/// Queues on `stream` `ops` memsets of the `len` bytes at `ptr`, the `v`-th to
/// `value + v` (wrapping).
pub fn queue_memsets(stream: &Arc<CudaStream>, ptr: u64, len: usize, ops: u32, value: u8) {
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

/// Queues on `stream` a copy of the `len` device bytes at `src` into `dst`.
pub fn queue_copy(stream: &Arc<CudaStream>, dst: u64, src: u64, len: usize) {
    stream.context().bind_to_thread().unwrap();
    // SAFETY: both ranges hold `len` device bytes of this context, freed only after the stream
    // has run the copy.
    unsafe { result::memcpy_dtod_async(dst, src, len, stream.cu_stream()) }.unwrap();
}

/// Queues on `stream` `ops` writes of the whole of `ptr` (memsets) and, last, a copy of `after`
/// into it: its final contents, long after this returns. Returns the copy's source buffer, to
/// keep until the stream has run.
pub fn queue_slow_write(stream: &Arc<CudaStream>, ptr: u64, after: &[u8], ops: u32) -> impl Drop {
    let src = stream.clone_htod(after).unwrap();
    let (src_ptr, record) = src.device_ptr(stream);
    queue_memsets(stream, ptr, after.len(), ops, 0);
    queue_copy(stream, ptr, src_ptr, after.len());
    drop(record);
    src
}
