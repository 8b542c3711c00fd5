//! The classic recipes on the GPU, as a plain training loop writes them: each batch is gathered
//! into its own device buffer (what a GPU data loader yields), then
//! - `Concat`: every batch is kept on the device, concatenated there, copied to host once;
//! - `PerBatch`: each batch is copied into a host array of its own, concatenated on the host;
//! - `Preallocated`: each batch is copied into its slice of a preallocated host output.
//!
//! One stream, ordinary (pageable) host memory: every copy to host is synchronous, and the link
//! idles between batches. They are kept as honest baselines for `Pinned`.

use std::sync::Arc;
use std::time::Instant;

use cudarc::driver::result::{self, mem_pool};
use cudarc::driver::{sys, CudaContext};

use super::engine::CudaEngine;
use super::kernels::Gather;
use super::memory::{dtod_async, dtoh_async, htod_async, DevBuf};
use super::pipeline::LaneGuard;
use super::table::DeviceTable;
use crate::batch::Batches;
use crate::error::Result;
use crate::gather::cpu::par_copy;
use crate::gather::Strategy;
use crate::memory::{checked_bytes, AllocCounter, HostBuf};
use crate::output::{Backend, ColumnArray, Materialized, Report};
use crate::sampler::IndexSlice;

/// Runs `Concat`, `PerBatch` or `Preallocated` (anything else is treated as `Preallocated`).
pub(crate) fn run(
    engine: &CudaEngine,
    table: &DeviceTable,
    batches: &Batches,
    strategy: Strategy,
) -> Result<Materialized> {
    let started = Instant::now();
    let host = AllocCounter::new();
    let dev = AllocCounter::new();
    let stream = engine.stream();
    stream
        .context()
        .bind_to_thread()
        .map_err(super::device::cuda_err("binding the CUDA context"))?;
    // Dropped last: the device buffers below are freed (stream-ordered) before it restores
    // the pool's release threshold.
    let _caching = CachingPool::enter(stream.context());
    let guard = LaneGuard::new(vec![Arc::clone(stream)]);
    let mut loader = BatchGather::new(engine, table, batches, &dev)?;
    let rows = batches.rows();
    let cols = table.columns();
    let strategy = match strategy {
        Strategy::Concat | Strategy::PerBatch => strategy,
        _ => Strategy::Preallocated,
    };
    let columns = match strategy {
        Strategy::Concat => {
            let mut kept: Vec<Vec<DevBuf>> = Vec::with_capacity(batches.len());
            for k in 0..batches.len() {
                kept.push(loader.batch(k, None)?);
            }
            let mut out = Vec::with_capacity(cols.len());
            for (c, col) in cols.iter().enumerate() {
                let bytes = checked_bytes(&[rows, col.row_bytes()], col.name())?;
                let full = DevBuf::alloc(stream, bytes, "concatenated column", Some(&dev))?;
                let mut at = 0u64;
                for b in &kept {
                    // SAFETY: `b[c]` holds exactly its batch's rows of this column (written by
                    // the gather on this stream), `full` has room for all batches' rows; both are
                    // this stream's buffers, distinct allocations.
                    unsafe { dtod_async(full.ptr() + at, b[c].ptr(), b[c].len(), stream)? };
                    at += b[c].len() as u64;
                }
                let mut buf = HostBuf::counted(bytes, col.name(), &host)?;
                // SAFETY (dtoh_async): 1. `full` was filled by the copies above on this stream;
                // 2. `buf` holds `bytes` bytes and is untouched until the synchronize below;
                // 3. the context was bound at the start.
                unsafe { dtoh_async(buf.as_bytes_mut().as_mut_ptr(), full.ptr(), bytes, stream)? };
                stream
                    .synchronize()
                    .map_err(super::device::cuda_err("copying a concatenated column"))?;
                out.push(ColumnArray::new(
                    col.name(),
                    col.dtype(),
                    col.row_shape(),
                    rows,
                    Box::new(buf),
                )?);
            }
            out
        }
        Strategy::PerBatch => {
            let mut kept: Vec<Vec<HostBuf>> = Vec::with_capacity(batches.len());
            for k in 0..batches.len() {
                let on_device = loader.batch(k, None)?;
                let mut on_host = Vec::with_capacity(cols.len());
                for (col, d) in cols.iter().zip(&on_device) {
                    let mut buf = HostBuf::counted(d.len(), col.name(), &host)?;
                    // SAFETY (dtoh_async): 1. `d` was written by the gather on this stream;
                    // 2. `buf` holds d.len() bytes, untouched until the synchronize below;
                    // 3. bound at the start.
                    unsafe {
                        dtoh_async(buf.as_bytes_mut().as_mut_ptr(), d.ptr(), d.len(), stream)?
                    };
                    on_host.push(buf);
                }
                stream
                    .synchronize()
                    .map_err(super::device::cuda_err("copying a batch to host"))?;
                kept.push(on_host);
            }
            let mut out = Vec::with_capacity(cols.len());
            for (c, col) in cols.iter().enumerate() {
                let bytes = checked_bytes(&[rows, col.row_bytes()], col.name())?;
                let mut buf = HostBuf::counted(bytes, col.name(), &host)?;
                let dst = buf.as_bytes_mut();
                let mut at = 0;
                for b in &kept {
                    let src = b[c].as_bytes();
                    par_copy(src, &mut dst[at..at + src.len()]);
                    at += src.len();
                }
                out.push(ColumnArray::new(
                    col.name(),
                    col.dtype(),
                    col.row_shape(),
                    rows,
                    Box::new(buf),
                )?);
            }
            out
        }
        _ => {
            let mut outs = Vec::with_capacity(cols.len());
            for col in cols {
                let bytes = checked_bytes(&[rows, col.row_bytes()], col.name())?;
                outs.push(HostBuf::counted(bytes, col.name(), &host)?);
            }
            // One device buffer per column, reused by every batch (as a caching allocator would).
            let mut reuse: Vec<DevBuf> = Vec::with_capacity(cols.len());
            for col in cols {
                let bytes = checked_bytes(
                    &[batches.batch_size().min(rows), col.row_bytes()],
                    col.name(),
                )?;
                reuse.push(DevBuf::alloc(stream, bytes, "batch buffer", Some(&dev))?);
            }
            for k in 0..batches.len() {
                let r = batches.range(k);
                loader.batch(k, Some(&reuse))?;
                for ((col, d), o) in cols.iter().zip(&reuse).zip(outs.iter_mut()) {
                    let at = r.start * col.row_bytes();
                    let len = r.len() * col.row_bytes();
                    let dst = &mut o.as_bytes_mut()[at..at + len];
                    // SAFETY (dtoh_async): 1. `d` holds this batch's rows, written by the gather
                    // on this stream, rewritten only by the next batch's gather on this stream;
                    // 2. `dst` is the batch's slice of the output, untouched until the
                    // synchronize below; 3. bound at the start.
                    unsafe { dtoh_async(dst.as_mut_ptr(), d.ptr(), len, stream)? };
                }
                stream
                    .synchronize()
                    .map_err(super::device::cuda_err("copying a batch to host"))?;
            }
            outs.into_iter()
                .zip(cols)
                .map(|(buf, col)| {
                    ColumnArray::new(
                        col.name(),
                        col.dtype(),
                        col.row_shape(),
                        rows,
                        Box::new(buf),
                    )
                })
                .collect::<Result<Vec<_>>>()?
        }
    };
    guard.finish()?;
    drop(loader);
    let bytes = columns.iter().map(|c| c.as_bytes().len() as u64).sum();
    Ok(Materialized::new(
        columns,
        Report {
            strategy,
            backend: Backend::Cuda,
            rows,
            bytes,
            elapsed: started.elapsed(),
            peak_alloc_bytes: host.peak(),
            peak_device_bytes: Some(dev.peak()),
            pin_seconds: None,
        },
    ))
}

/// Produces batches on the device the way a GPU data loader does: batch `k`'s indices are
/// uploaded (from ordinary memory) and the gather kernel fills one device buffer per column.
struct BatchGather<'e> {
    engine: &'e CudaEngine,
    table: &'e DeviceTable,
    batches: &'e Batches,
    dev: &'e Arc<AllocCounter>,
    idx: Option<DevBuf>,
}

impl<'e> BatchGather<'e> {
    fn new(
        engine: &'e CudaEngine,
        table: &'e DeviceTable,
        batches: &'e Batches,
        dev: &'e Arc<AllocCounter>,
    ) -> Result<Self> {
        let idx = match batches.indices() {
            crate::sampler::Indices::List(_) if !batches.is_empty() => Some(DevBuf::alloc(
                engine.stream(),
                batches.batch_size().min(batches.rows()) * 8,
                "batch indices",
                Some(dev),
            )?),
            _ => None,
        };
        Ok(BatchGather {
            engine,
            table,
            batches,
            dev,
            idx,
        })
    }

    /// Gathers batch `k` of every column, into `into` (buffers large enough for a full batch)
    /// or into new buffers, which are returned.
    fn batch(&mut self, k: usize, into: Option<&[DevBuf]>) -> Result<Vec<DevBuf>> {
        let stream = self.engine.stream();
        let r = self.batches.range(k);
        let n = r.len();
        let (idx, base) = match self.batches.indices().view(r.start, r.end) {
            IndexSlice::Range { start, .. } => (0u64, start as u64),
            IndexSlice::List(list) => {
                let Some(buf) = self.idx.as_ref() else {
                    return Ok(Vec::new());
                };
                let bytes: &[u8] = bytemuck::cast_slice(list);
                // SAFETY (htod_async): 1. `buf` holds batch_size × 8 ≥ bytes.len() bytes, used
                // only on this stream (the previous batch's gather, which read it, runs first);
                // 2. the source is pageable: the driver has copied it when the call returns;
                // 3. the context was bound by `run`.
                unsafe { htod_async(buf.ptr(), bytes.as_ptr(), bytes.len(), stream)? };
                (buf.ptr(), 0)
            }
        };
        let mut made = Vec::new();
        for (c, col) in self.table.columns().iter().enumerate() {
            let len = n * col.row_bytes();
            let dst = match into {
                Some(bufs) => bufs[c].ptr(),
                None => {
                    made.push(DevBuf::alloc(stream, len, "batch", Some(self.dev))?);
                    made[made.len() - 1].ptr()
                }
            };
            // SAFETY (Kernels::gather): 1. the column is alive for the drain and its rows bound
            // every index (pipeline::check_indices ran first); 2. `idx` is 0 or holds the n
            // indices uploaded just above on this stream; 3. `dst` holds ≥ n × row_bytes bytes
            // (a new buffer of exactly that, or a reused full-batch buffer), a distinct
            // allocation used only on this stream; 4. all of the engine's context.
            unsafe {
                self.engine.kernels().gather(
                    stream,
                    Gather {
                        src: col.address(),
                        idx,
                        base,
                        dst,
                        n,
                        row_bytes: col.row_bytes(),
                    },
                )?
            };
        }
        Ok(made)
    }
}

/// Makes the device's stream-ordered memory pool keep freed memory for reuse while a classic
/// recipe runs — as PyTorch's caching allocator does for the loops these recipes stand for —
/// instead of returning it to the driver at every synchronisation (release threshold 0, the
/// default), which would make each batch's allocation cost a driver allocation. On drop the
/// previous threshold is restored and unused memory released.
struct CachingPool {
    pool: Option<(sys::CUmemoryPool, u64)>,
}

impl CachingPool {
    fn enter(ctx: &Arc<CudaContext>) -> Self {
        if !ctx.has_async_alloc() {
            return CachingPool { pool: None };
        }
        let attr = sys::CUmemPool_attribute::CU_MEMPOOL_ATTR_RELEASE_THRESHOLD;
        // SAFETY: `cu_device` is the context's device (from cuDeviceGet); the context is bound
        // (by `run`), and the pool returned is the device's current pool, which lives as long as
        // the device. The threshold attribute is a u64 (cuuint64_t) read into / written from a
        // live local.
        let pool = unsafe {
            let Ok(pool) = result::device::get_mem_pool(ctx.cu_device()) else {
                return CachingPool { pool: None };
            };
            let mut previous: u64 = 0;
            if mem_pool::get_attribute(pool, attr, (&mut previous as *mut u64).cast()).is_err() {
                return CachingPool { pool: None };
            }
            let mut keep = u64::MAX;
            if mem_pool::set_attribute(pool, attr, (&mut keep as *mut u64).cast()).is_err() {
                return CachingPool { pool: None };
            }
            (pool, previous)
        };
        CachingPool { pool: Some(pool) }
    }
}

impl Drop for CachingPool {
    fn drop(&mut self) {
        if let Some((pool, mut previous)) = self.pool.take() {
            let attr = sys::CUmemPool_attribute::CU_MEMPOOL_ATTR_RELEASE_THRESHOLD;
            // SAFETY: the same valid pool and u64 attribute as in `enter`. Failures only leave
            // memory cached, which is harmless, so they are ignored.
            unsafe {
                let _ = mem_pool::set_attribute(pool, attr, (&mut previous as *mut u64).cast());
                let _ = mem_pool::trim_to(pool, 0);
            }
        }
    }
}
