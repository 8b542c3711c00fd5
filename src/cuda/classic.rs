//! The classic recipes on the GPU, as a plain training loop writes them: each batch is gathered
//! into its own device buffer (what a GPU data loader yields), then
//! - `Concat`: every batch is kept on the device, concatenated there, copied to host once;
//! - `PerBatch`: each batch is copied into a host array of its own, concatenated on the host;
//! - `Preallocated`: each batch is copied into its slice of a preallocated host output.
//!
//! One stream, ordinary (pageable) host memory: every copy to host is synchronous, and the link
//! idles between batches. They are kept as honest baselines for `Pinned`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use cudarc::driver::result::{self, mem_pool};
use cudarc::driver::{sys, CudaContext, CudaStream};

use super::kernels::{Gather, IndexWidth, Kernels};
use super::memory::{bind_ctx, dtod_async, dtoh_async, htod_async, wait_stream, DevBuf};
use super::pipeline::LaneGuard;
use super::table::DeviceTable;
use crate::batch::Batches;
use crate::error::Result;
use crate::gather::{self, Strategy};
use crate::memory::{checked_bytes, AllocCounter, HostBuf};
use crate::output::{Backend, ColumnArray, Materialized, Report};
use crate::sampler::IndexSlice;

/// Runs `Concat`, `PerBatch` or `Preallocated` (anything else is treated as `Preallocated`) on
/// `stream`, a stream of the engine's context that only this call uses.
pub(crate) fn run(
    stream: &Arc<CudaStream>,
    kernels: &Kernels,
    table: &DeviceTable,
    batches: &Batches,
    strategy: Strategy,
) -> Result<Materialized> {
    let started = Instant::now();
    let host = AllocCounter::new();
    let dev = AllocCounter::new();
    bind_ctx(stream.context())?;
    // Dropped last: the device buffers below are freed (stream-ordered) before it restores
    // the pool's release threshold.
    let _caching = CachingPool::enter(stream.context());
    let guard = LaneGuard::new(vec![Arc::clone(stream)]);
    let mut loader = BatchGather::new(stream, kernels, table, batches, &dev)?;
    let strategy = match strategy {
        Strategy::Concat | Strategy::PerBatch => strategy,
        _ => Strategy::Preallocated,
    };
    let columns = match strategy {
        Strategy::Concat => concat_on_device(&mut loader, &host)?,
        Strategy::PerBatch => per_batch_on_host(&mut loader, &host)?,
        _ => into_preallocated(&mut loader, &host)?,
    };
    guard.finish()?;
    drop(loader);
    let report = Report::new(strategy, Backend::Cuda, batches.rows(), &columns, started)
        .with_peak_alloc(host.peak())
        .with_device(dev.peak(), None);
    Ok(Materialized::new(columns, report))
}

/// `Concat`: every batch kept on the device, each column concatenated there and copied to the
/// host once.
fn concat_on_device(
    loader: &mut BatchGather<'_>,
    host: &Arc<AllocCounter>,
) -> Result<Vec<ColumnArray>> {
    let (stream, batches, dev) = (loader.stream, loader.batches, loader.dev);
    let (rows, cols) = (batches.rows(), loader.table.columns());
    let mut kept: Vec<Vec<DevBuf>> = Vec::with_capacity(batches.len());
    for k in 0..batches.len() {
        kept.push(loader.batch(k, None)?);
    }
    let mut out = Vec::with_capacity(cols.len());
    for (c, col) in cols.iter().enumerate() {
        let bytes = checked_bytes(&[rows, col.row_bytes()], col.name())?;
        let full = DevBuf::alloc(stream, bytes, "concatenated column", Some(dev))?;
        let mut at = 0u64;
        for b in &kept {
            // SAFETY: `b[c]` holds exactly its batch's rows of this column (written by
            // the gather on this stream), `full` has room for all batches' rows; both are
            // this stream's buffers, distinct allocations.
            unsafe { dtod_async(full.ptr() + at, b[c].ptr(), b[c].len(), stream)? };
            at += b[c].len() as u64;
        }
        let mut buf = HostBuf::counted(bytes, col.name(), host)?;
        // SAFETY (dtoh_async): 1. `full` was filled by the copies above on this stream;
        // 2. `buf` holds `bytes` bytes and is untouched until the synchronize below;
        // 3. the context was bound at the start.
        unsafe { dtoh_async(buf.as_bytes_mut().as_mut_ptr(), full.ptr(), bytes, stream)? };
        wait_stream(stream)?;
        out.push(ColumnArray::new(
            col.name(),
            col.dtype(),
            col.row_shape(),
            rows,
            Box::new(buf),
        )?);
    }
    Ok(out)
}

/// `PerBatch`: each batch copied into host arrays of its own, concatenated on the host at the
/// end as the CPU recipe concatenates ([`gather::concat_kept`]).
fn per_batch_on_host(
    loader: &mut BatchGather<'_>,
    host: &Arc<AllocCounter>,
) -> Result<Vec<ColumnArray>> {
    let (stream, batches) = (loader.stream, loader.batches);
    let cols = loader.table.columns();
    let mut kept: Vec<Vec<HostBuf>> = Vec::with_capacity(batches.len());
    for k in 0..batches.len() {
        let on_device = loader.batch(k, None)?;
        let mut on_host = Vec::with_capacity(cols.len());
        for (col, d) in cols.iter().zip(&on_device) {
            let mut buf = HostBuf::counted(d.len(), col.name(), host)?;
            // SAFETY (dtoh_async): 1. `d` was written by the gather on this stream;
            // 2. `buf` holds d.len() bytes, untouched until the synchronize below;
            // 3. bound at the start.
            unsafe { dtoh_async(buf.as_bytes_mut().as_mut_ptr(), d.ptr(), d.len(), stream)? };
            on_host.push(buf);
        }
        wait_stream(stream)?;
        kept.push(on_host);
    }
    let specs: Vec<_> = cols
        .iter()
        .map(|c| (c.name(), c.dtype(), c.row_shape()))
        .collect();
    gather::concat_kept(&specs, batches.rows(), kept.len(), host, |k, c| {
        Ok(kept[k][c].as_bytes())
    })
}

/// `Preallocated`: each batch copied into its slice of the host output, through one device
/// buffer per column that every batch reuses (as a caching allocator would).
fn into_preallocated(
    loader: &mut BatchGather<'_>,
    host: &Arc<AllocCounter>,
) -> Result<Vec<ColumnArray>> {
    let (stream, batches, dev) = (loader.stream, loader.batches, loader.dev);
    let (rows, cols) = (batches.rows(), loader.table.columns());
    let mut outs = Vec::with_capacity(cols.len());
    for col in cols {
        let bytes = checked_bytes(&[rows, col.row_bytes()], col.name())?;
        outs.push(HostBuf::counted(bytes, col.name(), host)?);
    }
    let mut reuse: Vec<DevBuf> = Vec::with_capacity(cols.len());
    for col in cols {
        let bytes = checked_bytes(
            &[batches.batch_size().min(rows), col.row_bytes()],
            col.name(),
        )?;
        reuse.push(DevBuf::alloc(stream, bytes, "batch buffer", Some(dev))?);
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
        wait_stream(stream)?;
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
        .collect()
}

/// Produces batches on the device the way a GPU data loader does: batch `k`'s indices are
/// uploaded (from ordinary memory) and the gather kernel fills one device buffer per column.
struct BatchGather<'e> {
    stream: &'e Arc<CudaStream>,
    kernels: &'e Kernels,
    table: &'e DeviceTable,
    batches: &'e Batches,
    dev: &'e Arc<AllocCounter>,
    idx: Option<DevBuf>,
}

impl<'e> BatchGather<'e> {
    fn new(
        stream: &'e Arc<CudaStream>,
        kernels: &'e Kernels,
        table: &'e DeviceTable,
        batches: &'e Batches,
        dev: &'e Arc<AllocCounter>,
    ) -> Result<Self> {
        let idx = match batches.indices() {
            crate::sampler::Indices::List(_) if !batches.is_empty() => Some(DevBuf::alloc(
                stream,
                batches.batch_size().min(batches.rows()) * 8,
                "batch indices",
                Some(dev),
            )?),
            _ => None,
        };
        Ok(BatchGather {
            stream,
            kernels,
            table,
            batches,
            dev,
            idx,
        })
    }

    /// Gathers batch `k` of every column, into `into` (buffers large enough for a full batch)
    /// or into new buffers, which are returned.
    fn batch(&mut self, k: usize, into: Option<&[DevBuf]>) -> Result<Vec<DevBuf>> {
        let stream = self.stream;
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
                self.kernels.gather(
                    stream,
                    Gather {
                        src: col.address(),
                        idx,
                        idx_width: IndexWidth::U64,
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
/// default), which would make each batch's allocation cost a driver allocation. When the last
/// classic run of the process on that pool ends, the threshold it had before the first one began
/// is restored and unused memory released. Runs overlap (several threads, several engines): a
/// process-wide count per pool ([`Holders`]) makes the first save and the last restore, so an
/// overlapping run can never save `u64::MAX` as "the previous value" and leave it set.
struct CachingPool {
    pool: Option<sys::CUmemoryPool>,
}

/// How many classic runs hold each pool's threshold raised, and the value to restore.
#[derive(Debug, Default)]
pub(crate) struct Holders {
    pools: HashMap<usize, (usize, u64)>,
}

impl Holders {
    /// One more run holds `pool`. Returns `true` when it is the first: the caller must then
    /// read the current threshold (`save`), raise it, and call [`Holders::saved`].
    pub(crate) fn enter(&mut self, pool: usize) -> bool {
        let e = self.pools.entry(pool).or_insert((0, 0));
        e.0 += 1;
        e.0 == 1
    }

    /// Records the threshold the first holder found.
    pub(crate) fn saved(&mut self, pool: usize, previous: u64) {
        if let Some(e) = self.pools.get_mut(&pool) {
            e.1 = previous;
        }
    }

    /// One run releases `pool`. Returns the threshold to restore when it was the last holder.
    pub(crate) fn leave(&mut self, pool: usize) -> Option<u64> {
        let e = self.pools.get_mut(&pool)?;
        e.0 = e.0.saturating_sub(1);
        if e.0 > 0 {
            return None;
        }
        self.pools.remove(&pool).map(|(_, previous)| previous)
    }
}

static HOLDERS: Mutex<Option<Holders>> = Mutex::new(None);

fn with_holders<T>(f: impl FnOnce(&mut Holders) -> T) -> T {
    let mut g = HOLDERS.lock().unwrap_or_else(|p| p.into_inner());
    f(g.get_or_insert_with(Holders::default))
}

const THRESHOLD: sys::CUmemPool_attribute =
    sys::CUmemPool_attribute::CU_MEMPOOL_ATTR_RELEASE_THRESHOLD;

/// The release threshold of the device's current stream-ordered memory pool (`None` when the
/// device has no memory pools).
pub(crate) fn release_threshold(ctx: &Arc<CudaContext>) -> Result<Option<u64>> {
    if !ctx.has_async_alloc() {
        return Ok(None);
    }
    bind_ctx(ctx)?;
    let err = super::device::cuda_err("reading the memory pool's release threshold");
    // SAFETY: as in `CachingPool::enter`: the context's device, bound; a u64 attribute read into
    // a live local.
    unsafe {
        let pool = result::device::get_mem_pool(ctx.cu_device()).map_err(err)?;
        let mut value: u64 = 0;
        mem_pool::get_attribute(pool, THRESHOLD, (&mut value as *mut u64).cast()).map_err(
            super::device::cuda_err("reading the memory pool's release threshold"),
        )?;
        Ok(Some(value))
    }
}

impl CachingPool {
    fn enter(ctx: &Arc<CudaContext>) -> Self {
        if !ctx.has_async_alloc() {
            return CachingPool { pool: None };
        }
        // SAFETY: `cu_device` is the context's device (from cuDeviceGet); the context is bound
        // (by `run`), and the pool returned is the device's current pool, which lives as long as
        // the device.
        let Ok(pool) = (unsafe { result::device::get_mem_pool(ctx.cu_device()) }) else {
            return CachingPool { pool: None };
        };
        let key = pool as usize;
        // The lock is held across the attribute calls so that a concurrent first / last holder
        // cannot interleave between the save and the raise.
        with_holders(|h| {
            if h.enter(key) {
                let mut previous: u64 = 0;
                // SAFETY: a valid pool (above); the threshold attribute is a u64 (cuuint64_t),
                // read into / written from live locals.
                unsafe {
                    if mem_pool::get_attribute(pool, THRESHOLD, (&mut previous as *mut u64).cast())
                        .is_ok()
                    {
                        h.saved(key, previous);
                        let mut keep = u64::MAX;
                        let _ = mem_pool::set_attribute(
                            pool,
                            THRESHOLD,
                            (&mut keep as *mut u64).cast(),
                        );
                    }
                }
            }
        });
        CachingPool { pool: Some(pool) }
    }
}

impl Drop for CachingPool {
    fn drop(&mut self) {
        let Some(pool) = self.pool.take() else {
            return;
        };
        with_holders(|h| {
            if let Some(mut previous) = h.leave(pool as usize) {
                // The threshold goes back to what it was; the pool is not trimmed. It is the
                // device's current pool, which others use too (PyTorch's `cudaMallocAsync`
                // backend caches its blocks in it): with the previous threshold back, the
                // driver itself releases what exceeds it at the next synchronisation, as it
                // would have without the engine, and never what the owner chose to keep.
                // SAFETY: the same valid pool and u64 attribute as in `enter`. A failure only
                // leaves the raised threshold (memory stays cached), which is harmless, so it
                // is ignored.
                unsafe {
                    let _ = mem_pool::set_attribute(
                        pool,
                        THRESHOLD,
                        (&mut previous as *mut u64).cast(),
                    );
                }
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::Holders;

    #[test]
    fn overlapping_runs_restore_the_first_saved_threshold_once() {
        let mut h = Holders::default();
        // Run A enters first and saves the default threshold 0; run B overlaps it.
        assert!(h.enter(7));
        h.saved(7, 0);
        assert!(
            !h.enter(7),
            "the second holder must not save (it would save u64::MAX)"
        );
        // A ends first: B still runs, nothing is restored.
        assert_eq!(h.leave(7), None);
        // B ends: the value saved by A comes back.
        assert_eq!(h.leave(7), Some(0));
        // A later run starts afresh.
        assert!(h.enter(7));
        h.saved(7, 42);
        assert!(h.enter(9), "another pool is counted apart");
        assert_eq!(h.leave(7), Some(42));
        assert_eq!(h.leave(9), Some(0));
        assert_eq!(h.leave(9), None, "an unmatched leave restores nothing");
    }
}
