//! The `Pinned` pipeline: chunks of output rows spread over lanes (streams with their own
//! staging buffers, index buffers and events), gathered on the device and copied
//! asynchronously — straight into pinned output (direct) or through a ring of pinned buffers
//! into any output (staged).
//!
//! Ordering, all by construction:
//! - within a lane everything is one stream: index upload → gather → copy of chunk `k`, then
//!   the same for chunk `k + LANES`, so a lane's staging and index buffers are never reused
//!   before the work that reads them has run;
//! - the host rewrites a lane's pinned index buffer only after that lane's `idx_free` event
//!   (recorded after the upload that reads it) has completed;
//! - the staged mode reads a lane's ring buffer only after that lane's `done` event (recorded
//!   after the copy into it) has completed;
//! - every exit waits for all lanes ([`LaneGuard`]), so no copy outlives the borrow of the
//!   output it targets.
//!
//! The engine's context has cudarc's event tracking off (CUDA-NOTES pitfall 4): lanes never
//! share a buffer, so nothing needs it, and it would serialise the lanes.

use std::collections::VecDeque;
use std::ops::Range;
use std::sync::Arc;

use cudarc::driver::{CudaContext, CudaEvent, CudaStream};
use rayon::prelude::*;

use super::device::cuda_err;
use super::kernels::{Gather, Kernels};
use super::memory::{dtoh_async, htod_async, DevBuf, PinnedAlloc};
use super::table::DeviceTable;
use crate::batch::Batches;
use crate::error::{Error, Result};
use crate::gather::cpu::par_copy;
use crate::memory::AllocCounter;
use crate::output::ColumnArray;
use crate::sampler::{IndexSlice, Indices};

/// Streams ("lanes") the `Pinned` pipeline spreads chunks over. Two keep the copy engine busy
/// while the next chunk is gathered; a third absorbs jitter.
pub const LANES: usize = 3;

/// Output bytes (all columns) per chunk: large enough that a device→host copy runs at full
/// link speed, small enough that `LANES` staging buffers stay a few tens of MiB.
pub const CHUNK_BYTES: usize = 16 << 20;

/// At most this many rows per chunk, so a lane's index buffers stay ≤ 16 MiB for tiny rows.
const MAX_CHUNK_ROWS: usize = 2 << 20;

/// Column regions in a staging buffer start at multiples of this (keeps 16-byte vector access).
const STAGING_ALIGN: usize = 256;

/// One stream and the buffers only it uses.
pub(crate) struct Lane {
    pub(crate) stream: Arc<CudaStream>,
    staging: Option<DevBuf>,
    idx_dev: Option<DevBuf>,
    idx_host: Option<PinnedAlloc>,
    ring: Option<PinnedAlloc>,
    /// Recorded after the upload from `idx_host`: when complete, `idx_host` may be rewritten.
    idx_free: CudaEvent,
    /// Recorded after a staged chunk's copy into `ring`: when complete, `ring` may be read.
    done: CudaEvent,
}

impl Lane {
    pub(crate) fn new(ctx: &Arc<CudaContext>) -> Result<Self> {
        let err = cuda_err("creating a lane (stream and events)");
        Ok(Lane {
            stream: ctx.new_stream().map_err(err)?,
            staging: None,
            idx_dev: None,
            idx_host: None,
            ring: None,
            idx_free: ctx
                .new_event(None)
                .map_err(cuda_err("creating a lane event"))?,
            done: ctx
                .new_event(None)
                .map_err(cuda_err("creating a lane event"))?,
        })
    }

    /// Grows the lane's buffers to what `plan` needs; adds pinned allocation time to
    /// `pin_seconds`. Called while the lane is idle (between drains).
    fn prepare(&mut self, need: &Need, pin_seconds: &mut f64) -> Result<()> {
        let ctx = Arc::clone(self.stream.context());
        if need.staging > 0 && self.staging.as_ref().is_none_or(|b| b.len() < need.staging) {
            self.staging = None;
            self.staging = Some(DevBuf::alloc(
                &self.stream,
                need.staging,
                "gather staging",
                None,
            )?);
        }
        let idx_bytes = need.idx_rows * 8;
        if idx_bytes > 0 {
            if self.idx_dev.as_ref().is_none_or(|b| b.len() < idx_bytes) {
                self.idx_dev = None;
                self.idx_dev = Some(DevBuf::alloc(
                    &self.stream,
                    idx_bytes,
                    "chunk indices",
                    None,
                )?);
            }
            if self.idx_host.as_ref().is_none_or(|b| b.cap() < idx_bytes) {
                let t = std::time::Instant::now();
                self.idx_host = None;
                self.idx_host = Some(PinnedAlloc::new(&ctx, idx_bytes)?);
                *pin_seconds += t.elapsed().as_secs_f64();
            }
        }
        if need.ring > 0 && self.ring.as_ref().is_none_or(|b| b.cap() < need.ring) {
            let t = std::time::Instant::now();
            self.ring = None;
            self.ring = Some(PinnedAlloc::new(&ctx, need.ring)?);
            *pin_seconds += t.elapsed().as_secs_f64();
        }
        Ok(())
    }

    /// Uploads `list` — the indices of output rows `first..first + list.len()` — into the
    /// lane's device index buffer (through its pinned host buffer), checking on the way that
    /// every index is below `table_rows`; returns the device address. Requires `prepare` with
    /// enough `idx_rows`.
    fn upload_indices(&mut self, list: &[u64], table_rows: usize, first: usize) -> Result<u64> {
        let (Some(host), Some(dev)) = (self.idx_host.as_mut(), self.idx_dev.as_ref()) else {
            return Err(internal("lane index buffers missing"));
        };
        let bytes = list.len() * 8;
        if bytes > host.cap() || bytes > dev.len() {
            return Err(internal("chunk larger than the lane's index buffers"));
        }
        // The previous upload from `host` has completed: it may be rewritten.
        self.idx_free
            .synchronize()
            .map_err(cuda_err("waiting for a lane's index upload"))?;
        let dst: &mut [u64] = bytemuck::try_cast_slice_mut(host.bytes_mut(bytes))
            .map_err(|_| internal("misaligned pinned index buffer"))?;
        copy_checked(dst, list, table_rows, first)?;
        // SAFETY: `dev` holds ≥ `bytes` bytes (checked above), used only on this lane's
        // stream; `host` is pinned, holds them, and is rewritten only after `idx_free`, recorded
        // just below, has completed; the context is bound (by the synchronize above).
        unsafe { htod_async(dev.ptr(), host.as_ptr(), bytes, &self.stream)? };
        self.idx_free
            .record(&self.stream)
            .map_err(cuda_err("recording a lane event"))?;
        Ok(dev.ptr())
    }

    fn staging_ptr(&self) -> Result<u64> {
        self.staging
            .as_ref()
            .map(DevBuf::ptr)
            .ok_or_else(|| internal("lane staging buffer missing"))
    }

    fn ring_ptr(&self) -> Result<*mut u8> {
        self.ring
            .as_ref()
            .map(PinnedAlloc::as_ptr)
            .ok_or_else(|| internal("lane ring buffer missing"))
    }
}

fn internal(what: &str) -> Error {
    Error::Cuda {
        context: "the pinned pipeline".into(),
        message: format!("internal error: {what}"),
    }
}

/// Waits for every lane when dropped, so no copy scheduled by a drain outlives it — on error
/// and unwinding paths too. [`LaneGuard::finish`] is the normal, error-reporting exit.
pub(crate) struct LaneGuard {
    streams: Vec<Arc<CudaStream>>,
    armed: bool,
}

impl LaneGuard {
    pub(crate) fn new(streams: Vec<Arc<CudaStream>>) -> Self {
        LaneGuard {
            streams,
            armed: true,
        }
    }

    /// Waits for all streams, reporting the first failure (e.g. a faulted kernel).
    pub(crate) fn finish(mut self) -> Result<()> {
        self.armed = false;
        let mut first = Ok(());
        for s in &self.streams {
            let r = s
                .synchronize()
                .map_err(cuda_err("waiting for the device work of a drain"));
            if first.is_ok() {
                first = r;
            }
        }
        first
    }
}

impl Drop for LaneGuard {
    fn drop(&mut self) {
        if self.armed {
            for s in &self.streams {
                // Nothing to report to on this path; the error that brought us here is returned.
                let _ = s.synchronize();
            }
        }
    }
}

/// What a drain needs of each lane.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Need {
    staging: usize,
    idx_rows: usize,
    ring: usize,
}

/// One column's part of a chunk plan.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ColPlan {
    /// Device address of the column's row 0.
    pub(crate) src: u64,
    pub(crate) row_bytes: usize,
    /// Where the column's rows of a chunk start in a staging / ring buffer.
    pub(crate) offset: usize,
}

/// How a drain of `rows` output rows is cut into chunks, and where each column goes in a
/// lane's staging buffer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Plan {
    /// Rows of the device table (every index must be below it).
    pub(crate) table_rows: usize,
    pub(crate) rows: usize,
    pub(crate) chunk_rows: usize,
    pub(crate) cols: Vec<ColPlan>,
    /// Bytes of one staging (and ring) buffer: every column's rows of one chunk.
    pub(crate) staging_bytes: usize,
}

impl Plan {
    pub(crate) fn new(
        cols: &[(u64, usize)],
        table_rows: usize,
        rows: usize,
        chunk_bytes: usize,
    ) -> Self {
        let row_bytes: usize = cols.iter().map(|c| c.1).sum();
        let chunk_rows = (chunk_bytes / row_bytes.max(1)).clamp(1, MAX_CHUNK_ROWS);
        let chunk_rows = chunk_rows.min(rows.max(1));
        let mut offset = 0;
        let cols = cols
            .iter()
            .map(|&(src, row_bytes)| {
                let c = ColPlan {
                    src,
                    row_bytes,
                    offset,
                };
                offset = (offset + chunk_rows * row_bytes).next_multiple_of(STAGING_ALIGN);
                c
            })
            .collect();
        Plan {
            table_rows,
            rows,
            chunk_rows,
            cols,
            staging_bytes: offset,
        }
    }

    pub(crate) fn for_table(table: &DeviceTable, rows: usize) -> Self {
        let cols: Vec<(u64, usize)> = table
            .columns()
            .iter()
            .map(|c| (c.address(), c.row_bytes()))
            .collect();
        Plan::new(&cols, table.rows(), rows, CHUNK_BYTES)
    }

    /// Chunk `k`'s output rows, for every chunk.
    pub(crate) fn chunks(&self) -> impl Iterator<Item = (usize, Range<usize>)> + '_ {
        (0..self.rows.div_ceil(self.chunk_rows)).map(move |k| {
            let start = k * self.chunk_rows;
            (k, start..(start + self.chunk_rows).min(self.rows))
        })
    }

    /// Extra device bytes the lanes use for this drain (staging and indices; none when the
    /// order is sequential and rows are copied straight from the table).
    pub(crate) fn device_bytes(&self, sequential: bool) -> u64 {
        if sequential || self.rows == 0 {
            0
        } else {
            (LANES * (self.staging_bytes + self.chunk_rows * 8)) as u64
        }
    }

    fn need(&self, sequential: bool, staged: bool) -> Need {
        Need {
            staging: if sequential { 0 } else { self.staging_bytes },
            idx_rows: if sequential { 0 } else { self.chunk_rows },
            ring: if staged { self.staging_bytes } else { 0 },
        }
    }
}

/// Checks that every output row's source index is a row of the device table (the index list
/// was validated against the host table it was made for, which may not be this one).
pub(crate) fn check_indices(table_rows: usize, batches: &Batches) -> Result<()> {
    let rows = batches.rows();
    match batches.indices().view(0, rows) {
        IndexSlice::Range { start, end } => {
            if end > table_rows {
                let position = table_rows.saturating_sub(start);
                return Err(Error::IndexOutOfBounds {
                    index: (start + position) as u64,
                    position,
                    rows: table_rows,
                });
            }
        }
        IndexSlice::List(list) => {
            if let Some(position) = list.par_iter().position_first(|&i| i >= table_rows as u64) {
                return Err(Error::IndexOutOfBounds {
                    index: list[position],
                    position,
                    rows: table_rows,
                });
            }
        }
    }
    Ok(())
}

/// Binds the lanes' context to the calling thread (raw driver calls need it: CUDA-NOTES
/// pitfall 7).
fn bind(lanes: &[Lane]) -> Result<()> {
    match lanes.first() {
        Some(l) => l
            .stream
            .context()
            .bind_to_thread()
            .map_err(cuda_err("binding the CUDA context")),
        None => Err(internal("no lanes")),
    }
}

/// Copies `list` (the indices of output rows `first..`) into `dst`, failing with
/// [`Error::IndexOutOfBounds`] if one is not below `table_rows`. One pass, fused with the copy
/// the pipeline makes anyway, so an index list made for another table is caught before the
/// kernel could read past the device column.
pub(crate) fn copy_checked(
    dst: &mut [u64],
    list: &[u64],
    table_rows: usize,
    first: usize,
) -> Result<()> {
    let mut max = 0u64;
    for (d, &s) in dst.iter_mut().zip(list) {
        *d = s;
        max = max.max(s);
    }
    if !list.is_empty() && max >= table_rows as u64 {
        let p = list
            .iter()
            .position(|&i| i >= table_rows as u64)
            .unwrap_or(0);
        return Err(Error::IndexOutOfBounds {
            index: list[p],
            position: first + p,
            rows: table_rows,
        });
    }
    Ok(())
}

/// The bounds check the pipeline does not do itself: a sequential order must end within the
/// table (explicit lists are checked chunk by chunk as they are uploaded).
pub(crate) fn check_range(table_rows: usize, batches: &Batches) -> Result<()> {
    match batches.indices() {
        Indices::Range { .. } => check_indices(table_rows, batches),
        Indices::List(_) => Ok(()),
    }
}

fn is_sequential(idx: &Indices) -> bool {
    matches!(idx, Indices::Range { .. })
}

/// Enqueues the gather of the chunk of output rows starting at `first`, whose source rows are
/// `list`, for every column into `lane`'s staging buffer (after checking `list` against the
/// table's rows).
///
/// # Safety
/// `plan` was made for a table whose columns stay alive and unwritten until the lane's stream
/// has run this work; the lane was prepared for `plan`.
unsafe fn gather_chunk(
    lane: &mut Lane,
    kernels: &Kernels,
    plan: &Plan,
    list: &[u64],
    first: usize,
) -> Result<()> {
    let idx = lane.upload_indices(list, plan.table_rows, first)?;
    let staging = lane.staging_ptr()?;
    for col in &plan.cols {
        // SAFETY (Kernels::gather's items): 1. `col.src` is a live device column of the table
        // (this function's contract) and every index of `list` is below its rows (checked by
        // `upload_indices`, which returned Ok); 2. `idx` holds
        // `list.len()` u64 just uploaded on this stream, rewritten only after `idx_free`; 3. the
        // column's region `staging + offset .. + n × row_bytes` lies inside the lane's staging
        // buffer (`prepare` sized it to `plan.staging_bytes`, n ≤ chunk_rows), which is used only
        // by this lane's stream, in order; 4. every pointer is of the engine's context.
        unsafe {
            kernels.gather(
                &lane.stream,
                Gather {
                    src: col.src,
                    idx,
                    base: 0,
                    dst: staging + col.offset as u64,
                    n: list.len(),
                    row_bytes: col.row_bytes,
                },
            )?
        };
    }
    Ok(())
}

/// The direct mode: every chunk is copied straight into its final rows of `dsts` (one byte
/// slice per column, `plan.rows × row_bytes` each, pinned for the copies to be asynchronous).
/// Returns the extra device bytes used.
pub(crate) fn run_direct(
    lanes: &mut [Lane],
    kernels: &Kernels,
    plan: &Plan,
    idx: &Indices,
    dsts: &mut [&mut [u8]],
    pin_seconds: &mut f64,
    host: &AllocCounter,
) -> Result<u64> {
    let sequential = is_sequential(idx);
    for (d, c) in dsts.iter().zip(&plan.cols) {
        if d.len() != plan.rows * c.row_bytes {
            return Err(internal("output column of the wrong size"));
        }
    }
    bind(lanes)?;
    let need = plan.need(sequential, false);
    for lane in lanes.iter_mut() {
        lane.prepare(&need, pin_seconds)?;
    }
    host.add((need.idx_rows * 8 * lanes.len()) as u64);
    // One base pointer per column, taken once; `dsts` stays mutably borrowed by our caller
    // until we return, after the guard has waited for every copy.
    let bases: Vec<*mut u8> = dsts.iter_mut().map(|d| d.as_mut_ptr()).collect();
    let guard = LaneGuard::new(lanes.iter().map(|l| Arc::clone(&l.stream)).collect());
    for (k, range) in plan.chunks() {
        let lane = &mut lanes[k % lanes.len()];
        let n = range.len();
        match idx.view(range.start, range.end) {
            IndexSlice::Range { start, .. } => {
                for (col, &base) in plan.cols.iter().zip(&bases) {
                    // SAFETY (dtoh_async): 1. source rows start..start+n of a live table column
                    // (within it: `check_range` ran before the drain), not written during it;
                    // 2. destination rows range.start..range.end of column slice `base`
                    // (length checked above), untouched until `guard` has waited; 3. the context
                    // is bound (`bind` above).
                    unsafe {
                        dtoh_async(
                            base.add(range.start * col.row_bytes),
                            col.src + (start * col.row_bytes) as u64,
                            n * col.row_bytes,
                            &lane.stream,
                        )?
                    };
                }
            }
            IndexSlice::List(list) => {
                // SAFETY: the table outlives the drain (borrowed by our caller); the lane was
                // prepared for `plan` above.
                unsafe { gather_chunk(lane, kernels, plan, list, range.start)? };
                let staging = lane.staging_ptr()?;
                for (col, &base) in plan.cols.iter().zip(&bases) {
                    // SAFETY (dtoh_async): 1. the column's staging region, written by the
                    // gather just enqueued on this stream and not rewritten before this copy has
                    // run (same stream); 2. and 3. as in the sequential case.
                    unsafe {
                        dtoh_async(
                            base.add(range.start * col.row_bytes),
                            staging + col.offset as u64,
                            n * col.row_bytes,
                            &lane.stream,
                        )?
                    };
                }
            }
        }
    }
    guard.finish()?;
    Ok(plan.device_bytes(sequential))
}

/// The staged mode: each chunk lands in its lane's pinned ring buffer and host threads copy it
/// into the output's rows (any storage), calling `region_done` per column and chunk, in order.
/// Returns the extra device bytes used.
pub(crate) fn run_staged(
    lanes: &mut [Lane],
    kernels: &Kernels,
    plan: &Plan,
    idx: &Indices,
    out: &mut [ColumnArray],
    pin_seconds: &mut f64,
    host: &AllocCounter,
) -> Result<u64> {
    let sequential = is_sequential(idx);
    for (o, c) in out.iter().zip(&plan.cols) {
        if o.as_bytes().len() != plan.rows * c.row_bytes {
            return Err(internal("output column of the wrong size"));
        }
    }
    bind(lanes)?;
    let need = plan.need(sequential, true);
    for lane in lanes.iter_mut() {
        lane.prepare(&need, pin_seconds)?;
    }
    host.add(((need.idx_rows * 8 + need.ring) * lanes.len()) as u64);
    let n_lanes = lanes.len();
    let guard = LaneGuard::new(lanes.iter().map(|l| Arc::clone(&l.stream)).collect());
    let mut pending: VecDeque<(usize, Range<usize>)> = VecDeque::with_capacity(n_lanes);
    for (k, range) in plan.chunks() {
        if pending.len() == n_lanes {
            if let Some((k0, r0)) = pending.pop_front() {
                // k0 = k - n_lanes: the chunk last queued on the lane we are about to reuse.
                copy_out(&lanes[k0 % n_lanes], plan, r0, out)?;
            }
        }
        let lane = &mut lanes[k % n_lanes];
        let ring = lane.ring_ptr()?;
        let n = range.len();
        match idx.view(range.start, range.end) {
            IndexSlice::Range { start, .. } => {
                for col in &plan.cols {
                    // SAFETY (dtoh_async): 1. live table rows (within it: `check_range`), unwritten;
                    // 2. the column's region of the lane's ring (`prepare` sized it to
                    // `staging_bytes` ≥ offset + n × row_bytes), read by the host only after the
                    // `done` event recorded below has completed, and not reused before (the
                    // lane gets its next chunk only after `copy_out` of this one); 3. bound.
                    unsafe {
                        dtoh_async(
                            ring.add(col.offset),
                            col.src + (start * col.row_bytes) as u64,
                            n * col.row_bytes,
                            &lane.stream,
                        )?
                    };
                }
            }
            IndexSlice::List(list) => {
                // SAFETY: as in `run_direct`.
                unsafe { gather_chunk(lane, kernels, plan, list, range.start)? };
                let staging = lane.staging_ptr()?;
                for col in &plan.cols {
                    // SAFETY (dtoh_async): 1. the staging region the gather above writes, on
                    // this stream; 2. and 3. as in the sequential case.
                    unsafe {
                        dtoh_async(
                            ring.add(col.offset),
                            staging + col.offset as u64,
                            n * col.row_bytes,
                            &lane.stream,
                        )?
                    };
                }
            }
        }
        lane.done
            .record(&lane.stream)
            .map_err(cuda_err("recording a lane event"))?;
        pending.push_back((k, range));
    }
    while let Some((k0, r0)) = pending.pop_front() {
        copy_out(&lanes[k0 % n_lanes], plan, r0, out)?;
    }
    guard.finish()?;
    Ok(plan.device_bytes(sequential))
}

/// Waits for `lane`'s last chunk (output rows `range`) to land in its ring, then copies it
/// into every output column on all host threads.
fn copy_out(lane: &Lane, plan: &Plan, range: Range<usize>, out: &mut [ColumnArray]) -> Result<()> {
    lane.done
        .synchronize()
        .map_err(cuda_err("waiting for a staged chunk"))?;
    let Some(ring) = lane.ring.as_ref() else {
        return Err(internal("lane ring buffer missing"));
    };
    let ring = ring.bytes(plan.staging_bytes);
    for (o, col) in out.iter_mut().zip(&plan.cols) {
        let bytes = range.len() * col.row_bytes;
        let dst = range.start * col.row_bytes..range.end * col.row_bytes;
        par_copy(
            &ring[col.offset..col.offset + bytes],
            &mut o.as_bytes_mut()[dst.clone()],
        );
        o.storage_mut().region_done(dst)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sampler::{Indices, Order};

    #[test]
    fn plans_cover_rows_in_order_with_aligned_regions() {
        let plan = Plan::new(
            &[(0, 520), (1 << 20, 8), (2 << 20, 3)],
            100_000,
            100_000,
            CHUNK_BYTES,
        );
        assert_eq!(plan.chunk_rows, CHUNK_BYTES / 531);
        for c in &plan.cols {
            assert_eq!(c.offset % STAGING_ALIGN, 0);
        }
        assert!(plan.staging_bytes >= plan.chunk_rows * 531);
        let ranges: Vec<_> = plan.chunks().map(|(_, r)| r).collect();
        assert_eq!(ranges.first().map(|r| r.start), Some(0));
        assert_eq!(ranges.last().map(|r| r.end), Some(100_000));
        assert!(ranges.windows(2).all(|w| w[0].end == w[1].start));
    }

    #[test]
    fn tiny_rows_cap_chunk_rows_and_empty_outputs_have_no_chunks() {
        let plan = Plan::new(&[(0, 1)], 3_000_000_000, 3_000_000_000, CHUNK_BYTES);
        assert_eq!(plan.chunk_rows, MAX_CHUNK_ROWS);
        assert_eq!(
            plan.chunks().count(),
            3_000_000_000usize.div_ceil(MAX_CHUNK_ROWS)
        );
        let plan = Plan::new(&[(0, 16)], 0, 0, CHUNK_BYTES);
        assert_eq!(plan.chunks().count(), 0);
        assert_eq!(plan.device_bytes(false), 0);
        let plan = Plan::new(&[(0, 0)], 10, 10, CHUNK_BYTES);
        assert_eq!(plan.chunks().count(), 1);
    }

    #[test]
    fn indices_are_checked_against_the_device_table() {
        let b = Batches::new(Indices::Range { start: 0, end: 10 }, 3, false).unwrap();
        assert!(check_indices(10, &b).is_ok());
        let e = check_indices(8, &b).unwrap_err();
        assert!(matches!(
            e,
            Error::IndexOutOfBounds {
                index: 8,
                position: 8,
                rows: 8
            }
        ));
        let idx = Indices::resolve(&Order::indices(vec![1u64, 5, 2, 7]), None, false, 10).unwrap();
        let b = Batches::new(idx, 2, false).unwrap();
        let e = check_indices(6, &b).unwrap_err();
        assert!(matches!(
            e,
            Error::IndexOutOfBounds {
                index: 7,
                position: 3,
                rows: 6
            }
        ));
        assert!(
            check_range(6, &b).is_ok(),
            "lists are checked chunk by chunk"
        );
        let mut dst = [0u64; 4];
        let e = copy_checked(&mut dst, &[1, 5, 2, 7], 6, 100).unwrap_err();
        assert!(matches!(
            e,
            Error::IndexOutOfBounds {
                index: 7,
                position: 103,
                rows: 6
            }
        ));
        assert!(copy_checked(&mut dst, &[1, 5, 2, 7], 8, 0).is_ok());
        assert_eq!(dst, [1, 5, 2, 7]);
        // drop_last: the dropped tail is not checked (it is never read).
        let idx = Indices::resolve(&Order::indices(vec![1u64, 2, 9]), None, false, 10).unwrap();
        let b = Batches::new(idx, 2, true).unwrap();
        assert!(check_indices(5, &b).is_ok());
    }
}
