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
use super::kernels::{Gather, IndexWidth, Kernels};
use super::memory::{
    bind_ctx, dtoh_async, htod_async, take_stale_error, wait_event, wait_stream, DevBuf,
    PinnedAlloc,
};
use super::table::DeviceTable;
use crate::batch::Batches;
use crate::cuda::CudaError;
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

/// Indices per rayon task when a chunk's indices are checked and copied.
const INDEX_TASK: usize = 1 << 16;

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
        let idx_bytes = need.idx_rows * need.idx_width.bytes();
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
    /// lane's device index buffer (through its pinned host buffer) as `width` integers, checking
    /// on the way, on all host threads, that every index is below `table_rows`; returns the
    /// device address. Requires `prepare` with enough `idx_rows` of this width.
    fn upload_indices(
        &mut self,
        list: &[u64],
        width: IndexWidth,
        table_rows: usize,
        first: usize,
    ) -> Result<u64> {
        let (Some(host), Some(dev)) = (self.idx_host.as_mut(), self.idx_dev.as_ref()) else {
            return Err(internal("lane index buffers missing"));
        };
        let bytes = list.len() * width.bytes();
        if bytes > host.cap() || bytes > dev.len() {
            return Err(internal("chunk larger than the lane's index buffers"));
        }
        // The previous upload from `host` has completed: it may be rewritten.
        wait_event(&self.idx_free, "waiting for a lane's index upload")?;
        match width {
            IndexWidth::U64 => {
                let dst: &mut [u64] = bytemuck::try_cast_slice_mut(host.bytes_mut(bytes))
                    .map_err(|_| internal("misaligned pinned index buffer"))?;
                copy_checked(dst, list, table_rows, first)?;
            }
            IndexWidth::U32 => {
                let dst: &mut [u32] = bytemuck::try_cast_slice_mut(host.bytes_mut(bytes))
                    .map_err(|_| internal("misaligned pinned index buffer"))?;
                copy_checked(dst, list, table_rows, first)?;
            }
        }
        // SAFETY: `dev` holds ≥ `bytes` bytes (checked above), used only on this lane's
        // stream; `host` is pinned, holds them, and is rewritten only after `idx_free`, recorded
        // just below, has completed; the context is bound (by `htod_async`).
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
    Error::Cuda(CudaError::Driver {
        context: "the pinned pipeline".into(),
        message: format!("internal error: {what}"),
    })
}

/// Something a drain queued work on and must wait for: a stream (in the engine) or a stand-in
/// (in the tests of [`LaneGuard`]).
pub(crate) trait Waitable {
    /// Takes and clears an error stored earlier in the stream's context by a call that could not
    /// return it (cudarc records failures inside `Drop` and hands them to the next call, which
    /// then fails *without doing its work*).
    fn take_stale(&self) -> Option<Error>;
    /// Blocks until all work queued so far has run; a stale error does not stop it.
    fn wait(&self) -> Result<()>;
}

impl Waitable for Arc<CudaStream> {
    fn take_stale(&self) -> Option<Error> {
        take_stale_error(self.context()).map(|e| {
            Error::Cuda(CudaError::Driver {
                context: "an earlier asynchronous release (reported late by the driver)".into(),
                message: super::device::describe(e),
            })
        })
    }
    fn wait(&self) -> Result<()> {
        wait_stream(self)
    }
}

/// Waits for every lane when dropped, so no copy scheduled by a drain outlives it — on error
/// and unwinding paths too. [`LaneGuard::finish`] is the normal, error-reporting exit.
///
/// Stale errors are cleared first and every stream is waited for before anything is reported:
/// a wait that returned a stale error early would let the output (or a pinned buffer going back
/// to the pool) be reused while a copy still writes into it.
pub(crate) struct LaneGuard<S: Waitable = Arc<CudaStream>> {
    streams: Vec<S>,
    armed: bool,
}

impl<S: Waitable> LaneGuard<S> {
    pub(crate) fn new(streams: Vec<S>) -> Self {
        LaneGuard {
            streams,
            armed: true,
        }
    }

    /// Clears stale errors, waits for every stream, then reports the first failure: a wait that
    /// failed (e.g. a faulted kernel), else a stale error.
    pub(crate) fn finish(mut self) -> Result<()> {
        self.armed = false;
        wait_all(&self.streams)
    }
}

fn wait_all<S: Waitable>(streams: &[S]) -> Result<()> {
    let stale: Vec<Error> = streams.iter().filter_map(Waitable::take_stale).collect();
    let mut first = Ok(());
    for s in streams {
        let r = s.wait();
        if first.is_ok() {
            first = r;
        }
    }
    first?;
    match stale.into_iter().next() {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

impl<S: Waitable> Drop for LaneGuard<S> {
    fn drop(&mut self) {
        if self.armed {
            // Nothing to report to on this path; the error that brought us here is returned.
            let _ = wait_all(&self.streams);
        }
    }
}

/// What a drain needs of each lane.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Need {
    staging: usize,
    idx_rows: usize,
    idx_width: IndexWidth,
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
    /// How the chunks' indices are uploaded (u32 when every index fits).
    pub(crate) idx_width: IndexWidth,
}

impl Plan {
    pub(crate) fn new(
        cols: &[(u64, usize)],
        table_rows: usize,
        rows: usize,
        chunk_bytes: usize,
    ) -> Self {
        let row_bytes: usize = cols.iter().map(|c| c.1).sum();
        // Columns whose rows are all zero bytes move nothing: no chunks, no staging (the engine
        // checks such a drain's indices in full instead).
        let rows = if row_bytes == 0 { 0 } else { rows };
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
            idx_width: IndexWidth::for_rows(table_rows),
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
            (LANES * (self.staging_bytes + self.chunk_rows * self.idx_width.bytes())) as u64
        }
    }

    fn need(&self, sequential: bool, staged: bool) -> Need {
        Need {
            staging: if sequential { 0 } else { self.staging_bytes },
            idx_rows: if sequential { 0 } else { self.chunk_rows },
            idx_width: self.idx_width,
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
/// pitfall 7), without consuming a stale error (see [`LaneGuard`]).
fn bind(lanes: &[Lane]) -> Result<()> {
    match lanes.first() {
        Some(l) => bind_ctx(l.stream.context()),
        None => Err(internal("no lanes")),
    }
}

/// An integer type the gather kernel reads indices as.
pub(crate) trait DeviceIndex: Copy + Send + Sync {
    /// `i` as this type; only called for `i < table_rows`, which [`IndexWidth::for_rows`]
    /// guarantees fits.
    fn from_u64(i: u64) -> Self;
}

impl DeviceIndex for u64 {
    fn from_u64(i: u64) -> Self {
        i
    }
}

impl DeviceIndex for u32 {
    fn from_u64(i: u64) -> Self {
        i as u32
    }
}

/// Copies `list` (the indices of output rows `first..`) into `dst`, failing with
/// [`Error::IndexOutOfBounds`] (the first bad position) if one is not below `table_rows`. One
/// pass on all host threads, fused with the copy the pipeline makes anyway, so an index list
/// made for another table is caught before the kernel could read past the device column. Every
/// index written is below `table_rows`, so it fits `T` when the plan chose `T`.
pub(crate) fn copy_checked<T: DeviceIndex>(
    dst: &mut [T],
    list: &[u64],
    table_rows: usize,
    first: usize,
) -> Result<()> {
    let rows = table_rows as u64;
    let bad = dst
        .par_chunks_mut(INDEX_TASK)
        .zip(list.par_chunks(INDEX_TASK))
        .enumerate()
        .filter_map(|(k, (d, l))| {
            let mut max = 0u64;
            for (d, &s) in d.iter_mut().zip(l) {
                *d = T::from_u64(s);
                max = max.max(s);
            }
            if l.is_empty() || max < rows {
                return None;
            }
            l.iter()
                .position(|&i| i >= rows)
                .map(|p| k * INDEX_TASK + p)
        })
        .min();
    match bad {
        Some(p) => Err(Error::IndexOutOfBounds {
            index: list[p],
            position: first + p,
            rows: table_rows,
        }),
        None => Ok(()),
    }
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
    let idx = lane.upload_indices(list, plan.idx_width, plan.table_rows, first)?;
    let staging = lane.staging_ptr()?;
    for col in &plan.cols {
        // SAFETY (Kernels::gather's items): 1. `col.src` is a live device column of the table
        // (this function's contract) and every index of `list` is below its rows (checked by
        // `upload_indices`, which returned Ok); 2. `idx` holds
        // `list.len()` indices of `plan.idx_width` just uploaded on this stream, rewritten only after `idx_free`; 3. the
        // column's region `staging + offset .. + n × row_bytes` lies inside the lane's staging
        // buffer (`prepare` sized it to `plan.staging_bytes`, n ≤ chunk_rows), which is used only
        // by this lane's stream, in order; 4. every pointer is of the engine's context.
        unsafe {
            kernels.gather(
                &lane.stream,
                Gather {
                    src: col.src,
                    idx,
                    idx_width: plan.idx_width,
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
    if plan.rows == 0 {
        // Nothing to move (no rows, or zero-byte rows, whose indices the engine checked in
        // full before the drain).
        return Ok(0);
    }
    bind(lanes)?;
    let need = plan.need(sequential, false);
    for lane in lanes.iter_mut() {
        lane.prepare(&need, pin_seconds)?;
    }
    host.add((need.idx_rows * need.idx_width.bytes() * lanes.len()) as u64);
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
    if plan.rows == 0 {
        // Nothing to move (no rows, or zero-byte rows, whose indices the engine checked in
        // full before the drain): the outputs are empty, so every region is done.
        for o in out.iter_mut() {
            o.storage_mut().region_done(0..0)?;
        }
        return Ok(0);
    }
    bind(lanes)?;
    let need = plan.need(sequential, true);
    for lane in lanes.iter_mut() {
        lane.prepare(&need, pin_seconds)?;
    }
    host.add(((need.idx_rows * need.idx_width.bytes() + need.ring) * lanes.len()) as u64);
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
    wait_event(&lane.done, "waiting for a staged chunk")?;
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
    }

    /// Tables whose rows are all zero bytes wide move nothing: no chunks, so no lane ever asks
    /// for a staging buffer that was never allocated (once "internal error: staging missing").
    #[test]
    fn zero_width_tables_have_no_chunks_and_need_no_staging() {
        for cols in [&[(0u64, 0usize)][..], &[(0, 0), (64, 0), (128, 0)][..]] {
            let plan = Plan::new(cols, 10, 10, CHUNK_BYTES);
            assert_eq!(plan.chunks().count(), 0, "{cols:?}");
            assert_eq!(plan.rows, 0);
            assert_eq!(plan.staging_bytes, 0);
            assert_eq!(plan.device_bytes(false), 0);
            let need = plan.need(false, true);
            assert_eq!((need.staging, need.ring), (0, 0));
        }
        // One zero-width column beside a real one still moves the real one.
        let plan = Plan::new(&[(0, 0), (64, 4)], 10, 10, CHUNK_BYTES);
        assert_eq!(plan.chunks().count(), 1);
        assert_eq!(plan.rows, 10);
    }

    #[test]
    fn plans_upload_u32_indices_for_tables_below_2_pow_32_rows() {
        let plan = Plan::new(&[(0, 1)], 1000, 1000, CHUNK_BYTES);
        assert_eq!(plan.idx_width, IndexWidth::U32);
        assert_eq!(plan.need(false, false).idx_width, IndexWidth::U32);
        assert_eq!(
            plan.device_bytes(false),
            (LANES * (plan.staging_bytes + plan.chunk_rows * 4)) as u64
        );
        let plan = Plan::new(&[(0, 1)], (1 << 32) + 1, 10, CHUNK_BYTES);
        assert_eq!(plan.idx_width, IndexWidth::U64);
    }

    #[test]
    fn indices_are_checked_and_narrowed_in_parallel_reporting_the_first_bad_one() {
        let n = 5 * INDEX_TASK + 123;
        let list: Vec<u64> = (0..n as u64).map(|i| (i * 7919) % 1_000_000).collect();
        let mut dst = vec![0u32; n];
        copy_checked(&mut dst, &list, 1_000_000, 0).unwrap();
        assert!(dst.iter().zip(&list).all(|(&d, &s)| d as u64 == s));
        // Two bad indices in different tasks: the first position is reported.
        let mut bad = list.clone();
        bad[3 * INDEX_TASK + 5] = 2_000_000;
        bad[INDEX_TASK + 9] = 1_000_000;
        let e = copy_checked(&mut dst, &bad, 1_000_000, 40).unwrap_err();
        assert!(
            matches!(e, Error::IndexOutOfBounds { index: 1_000_000, position, rows: 1_000_000 }
                if position == 40 + INDEX_TASK + 9),
            "{e}"
        );
        // u64 indices past 2^32 stay exact.
        let big = [(1u64 << 32) + 5, 3];
        let mut wide = [0u64; 2];
        copy_checked(&mut wide, &big, 1usize << 33, 0).unwrap();
        assert_eq!(wide, big);
    }

    /// A stand-in stream: a stale error waiting in its context, a wait that may fail, and a log
    /// of what was done in which order.
    struct Fake {
        name: &'static str,
        stale: std::cell::Cell<bool>,
        fail_wait: bool,
        log: std::rc::Rc<std::cell::RefCell<Vec<String>>>,
    }

    impl Waitable for Fake {
        fn take_stale(&self) -> Option<Error> {
            self.log.borrow_mut().push(format!("clear {}", self.name));
            self.stale.replace(false).then(|| {
                Error::Cuda(CudaError::Driver {
                    context: "stale".into(),
                    message: self.name.into(),
                })
            })
        }
        fn wait(&self) -> Result<()> {
            // A wait with a stale error still pending would return early without waiting.
            assert!(
                !self.stale.get(),
                "{} waited with a stale error pending",
                self.name
            );
            self.log.borrow_mut().push(format!("wait {}", self.name));
            if self.fail_wait {
                Err(Error::Cuda(CudaError::Driver {
                    context: "wait".into(),
                    message: self.name.into(),
                }))
            } else {
                Ok(())
            }
        }
    }

    fn fakes(
        spec: &[(&'static str, bool, bool)],
    ) -> (Vec<Fake>, std::rc::Rc<std::cell::RefCell<Vec<String>>>) {
        let log = std::rc::Rc::new(std::cell::RefCell::new(Vec::new()));
        let v = spec
            .iter()
            .map(|&(name, stale, fail_wait)| Fake {
                name,
                stale: std::cell::Cell::new(stale),
                fail_wait,
                log: std::rc::Rc::clone(&log),
            })
            .collect();
        (v, log)
    }

    #[test]
    fn lane_guard_clears_stale_errors_waits_for_every_stream_then_reports() {
        // A stale error on the first lane: every lane is still waited for, then it is reported.
        let (streams, log) = fakes(&[("a", true, false), ("b", false, false), ("c", true, false)]);
        let e = LaneGuard::new(streams).finish().unwrap_err();
        assert!(
            matches!(&e, Error::Cuda(CudaError::Driver { context, message }) if context == "stale" && message == "a"),
            "{e}"
        );
        assert_eq!(
            *log.borrow(),
            ["clear a", "clear b", "clear c", "wait a", "wait b", "wait c"]
        );
        // A failed wait is reported before a stale error, and the later lanes are still waited
        // for.
        let (streams, log) = fakes(&[("a", false, true), ("b", true, false)]);
        let e = LaneGuard::new(streams).finish().unwrap_err();
        assert!(
            matches!(&e, Error::Cuda(CudaError::Driver { context, .. }) if context == "wait"),
            "{e}"
        );
        assert_eq!(*log.borrow(), ["clear a", "clear b", "wait a", "wait b"]);
        // Dropped without finish (an error path): same waits.
        let (streams, log) = fakes(&[("a", true, false), ("b", false, false)]);
        drop(LaneGuard::new(streams));
        assert_eq!(*log.borrow(), ["clear a", "clear b", "wait a", "wait b"]);
        let (streams, _) = fakes(&[("a", false, false)]);
        assert!(LaneGuard::new(streams).finish().is_ok());
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
