//! [`DeviceWriter`]: a [`Writer`] fed from device memory. Each batch is copied device→host
//! asynchronously, on the engine's own streams, into pinned staging blocks; finished copies are
//! handed to [`Writer::write_bytes`] in the order they were issued, and the writer's background
//! thread moves them to the destination. The producer's stream never waits for the host.
//!
//! Tested under the CUDA driver simulator only (tests/cudasim_writer.rs,
//! python/tests/test_writer_cuda_sim.py); not yet run on a GPU.

use std::collections::VecDeque;
use std::sync::Arc;

use cudarc::driver::{result, sys, CudaContext, CudaEvent, CudaStream};

use super::current::{ContextGuard, RestoreOnDrop};
use super::device::{catch, cuda_err};
use super::memory::{
    bind_ctx, dtoh_async, pointer_info, take_stale_error, wait_event, wait_stream,
};
use super::table::{check_lent, lent_extent};
use super::{CudaEngine, PinnedBuf, WriteSource, LANES, STAGING_BLOCKS};
use crate::error::{Error, Result};
use crate::writer::{Writer, Written};

/// A pinned staging block: its memory, and how much of it parts in flight or pending use.
struct Block {
    /// `None` until first used.
    buf: Option<PinnedBuf>,
    /// The first byte of `buf` (taken once, when it was allocated and nothing was in flight).
    base: usize,
    /// Bytes handed out since the block was last empty.
    used: usize,
    /// Parts in this block not yet handed to the writer.
    live: usize,
}

/// A part of a batch whose copy was queued: `rows` rows of every column, column after column,
/// from `offset` of block `block`, for output rows `at` (or appended).
struct Part {
    block: usize,
    offset: usize,
    rows: usize,
    at: Option<Vec<u64>>,
    bytes: usize,
    /// The batch it belongs to (its number among this writer's batches).
    batch: usize,
    done: CudaEvent,
}

/// A [`Writer`] fed from device memory through the engine's streams and a bounded pool of
/// pinned staging blocks.
///
/// What one [`DeviceWriter::write_device`] does, in order:
/// 1. checks everything the writer would check (columns, byte lengths, `at`, rows left to
///    append) and asks the driver about every device range, as
///    [`CudaEngine::borrow_column`] does (another device, another context, bytes past the end
///    of an allocation are refused) — before anything is queued;
/// 2. records an event on the producer's stream (the caller's, e.g. PyTorch's current stream),
///    which the engine's streams wait for on the device before they read: the copy comes after
///    the work that produced the batch, with no host synchronisation;
/// 3. cuts the batch into parts that fit the staging blocks (a part holds whole rows; one
///    block holds at least one row) and queues each part's copies on the next of the writer's
///    streams (round robin), each column into its place in the block, then records a
///    copy-done event on that stream;
/// 4. makes the producer's stream wait for every copy-done event: work queued on the producer
///    afterwards — PyTorch reusing the batch's memory for its next allocation on that stream —
///    runs after the copies, so the batch's device memory may be reused as soon as this
///    returns;
/// 5. returns without waiting; parts whose copy has completed (event query, in issue order) are
///    handed to the writer, and their staging space given back, at the next call.
///
/// **Bounded memory, back-pressure**: the staging blocks together hold the ring's bytes
/// (`ring_bytes`, in [`STAGING_BLOCKS`] blocks, at least one row each); when the next part
/// finds no free space, the oldest copy is waited for and handed over. Pending bytes never exceed
/// [`DeviceWriter::pool_bytes`]. A batch larger than three blocks may need the block its own
/// first part went to: it is then handed over in parts, the first ones before the last are
/// queued (a batch larger than the pool always is).
///
/// **Errors**: a driver call that fails is [`Error::Cuda`]; the batch it belonged to is dropped
/// whole (parts not yet handed over are discarded after the streams were waited for), so a
/// failed call writes nothing — except for a batch larger than three blocks, whose parts
/// already handed over stay written. [`DeviceWriter::flush`], [`DeviceWriter::into_writer`] and
/// [`DeviceWriter::close`] wait for every copy.
///
/// ```no_run
/// use std::sync::Arc;
/// use arraydrain::cuda::{CudaEngine, DeviceWriter, WriteSource};
/// use arraydrain::{DType, Writer};
///
/// let engine = Arc::new(CudaEngine::new(0)?);
/// let writer = Writer::builder(1000).column("x", DType::F32, &[16]).path("x.npy").open()?;
/// let mut w = DeviceWriter::new(Arc::clone(&engine), writer, 64 << 20)?;
/// # let (ptr, producer) = (0u64, 0usize);
/// // `ptr`: 100 rows of 16 f32 on the device, produced on stream `producer`.
/// w.write_device(None, &[WriteSource::Device { ptr, bytes: 100 * 64 }], 100, producer)?;
/// // ... more batches; then
/// w.close()?;
/// # Ok::<(), arraydrain::Error>(())
/// ```
pub struct DeviceWriter {
    writer: Writer,
    row_bytes: Vec<usize>,
    ordinal: usize,
    block_bytes: usize,
    cur: usize,
    lane: usize,
    pending_bytes: usize,
    peak_pending: usize,
    /// Rows appended so far, the pending ones included.
    next: usize,
    /// How the device batches accepted so far were addressed (see
    /// [`Writer::check_addressing`]); the writer knows only the landed ones.
    by_index: Option<bool>,
    batches: usize,
    st: Staging,
    engine: Arc<CudaEngine>,
}

/// What copies in flight write into, and the streams they run on: dropping it waits for them.
struct Staging {
    ctx: Arc<CudaContext>,
    streams: Vec<Arc<CudaStream>>,
    blocks: Vec<Block>,
    pending: VecDeque<Part>,
    /// Why the writer can no longer be used (a wait for the device failed: staging memory may
    /// still be written by a copy).
    broken: Option<String>,
    /// Last: the caller's context comes back after the fields above freed streams and events.
    restore: RestoreOnDrop,
}

impl std::fmt::Debug for DeviceWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeviceWriter")
            .field("writer", &self.writer)
            .field("pool_bytes", &self.pool_bytes())
            .field("pending_bytes", &self.pending_bytes)
            .field("pending_parts", &self.st.pending.len())
            .finish()
    }
}

impl DeviceWriter {
    /// Wraps `writer` for device batches on `engine`'s device (appends continue after its
    /// [`Writer::appended`] rows), with `ring_bytes` of pinned staging memory in
    /// [`STAGING_BLOCKS`] blocks (each at least one output row). Creates the writer's streams in
    /// the engine's context; the blocks are taken from the engine's pinned pool when first used.
    ///
    /// # Errors
    /// [`Error::Cuda`] when a stream cannot be created; [`Error::SizeOverflow`].
    pub fn new(engine: Arc<CudaEngine>, writer: Writer, ring_bytes: usize) -> Result<Self> {
        let _current = ContextGuard::save();
        let ctx = Arc::clone(engine.own_context());
        catch("opening a device writer", || {
            bind_ctx(&ctx)?;
            let row_bytes: Vec<usize> = writer
                .columns()
                .iter()
                .map(|c| {
                    let mut parts = c.row_shape.clone();
                    parts.push(c.dtype.size());
                    crate::memory::checked_bytes(&parts, &c.name)
                })
                .collect::<Result<_>>()?;
            let total_row = row_bytes
                .iter()
                .try_fold(0usize, |a, &b| a.checked_add(b))
                .ok_or_else(|| Error::SizeOverflow {
                    what: "a row of the device writer".into(),
                })?;
            let block_bytes = (ring_bytes / STAGING_BLOCKS).max(total_row).max(1);
            let streams = (0..LANES)
                .map(|_| ctx.new_stream())
                .collect::<std::result::Result<Vec<_>, _>>()
                .map_err(cuda_err("creating a device writer's streams"))?;
            Ok(DeviceWriter {
                next: writer.appended(),
                by_index: writer.addressed_by_index(),
                writer,
                row_bytes,
                ordinal: engine.info().ordinal,
                block_bytes,
                cur: 0,
                lane: 0,
                pending_bytes: 0,
                peak_pending: 0,
                batches: 0,
                st: Staging {
                    ctx: Arc::clone(&ctx),
                    streams,
                    blocks: (0..STAGING_BLOCKS)
                        .map(|_| Block {
                            buf: None,
                            base: 0,
                            used: 0,
                            live: 0,
                        })
                        .collect(),
                    pending: VecDeque::new(),
                    broken: None,
                    restore: RestoreOnDrop::default(),
                },
                engine,
            })
        })
    }

    /// The writer (rows of copies still pending are not in it yet).
    pub fn writer(&self) -> &Writer {
        &self.writer
    }

    /// The engine.
    pub fn engine(&self) -> &Arc<CudaEngine> {
        &self.engine
    }

    /// Pinned staging bytes of the pool, all blocks together: at least `ring_bytes`'s share per
    /// block, rounded down, and one row.
    pub fn pool_bytes(&self) -> usize {
        self.block_bytes * STAGING_BLOCKS
    }

    /// Bytes whose copy was queued and that were not yet handed to the writer.
    pub fn pending_bytes(&self) -> usize {
        self.pending_bytes
    }

    /// The most [`DeviceWriter::pending_bytes`] has been.
    pub fn peak_pending_bytes(&self) -> usize {
        self.peak_pending
    }

    /// Parts whose copy was queued and that were not yet handed to the writer.
    pub fn pending_parts(&self) -> usize {
        self.st.pending.len()
    }

    fn mismatch(&self, column: &str, reason: String) -> Error {
        Error::BatchMismatch {
            batch: self.batches,
            column: column.into(),
            reason,
        }
    }

    fn check_usable(&self) -> Result<()> {
        match &self.st.broken {
            Some(why) => Err(Error::Interrupted {
                reason: format!("the device writer cannot be used any more: {why}"),
            }),
            None => Ok(()),
        }
    }

    /// Queues the copy of one batch of `rows` rows from the device (see [`DeviceWriter`]):
    /// `columns[c]` holds the rows of the writer's column `c`; `at` names each row's output row,
    /// or `None` to append. `producer` is the raw `CUstream` handle of the stream the device
    /// columns were written on (PyTorch's `torch.cuda.current_stream().cuda_stream`; 0 for the
    /// legacy default stream), a stream of the engine's context. Returns without waiting for
    /// the copies, unless the staging pool is full (then for the oldest ones).
    ///
    /// # Correctness
    /// Every write to the device columns was queued on `producer` (or has completed) before
    /// this call, and the memory stays allocated until work queued on `producer` after this
    /// call runs (PyTorch's caching allocator guarantees it for memory freed on that stream).
    ///
    /// # Errors
    /// [`Error::BatchMismatch`] (columns, byte lengths, `at` length), [`Error::IndexOutOfBounds`],
    /// [`CudaError::WrongDevice`](crate::cuda::CudaError::WrongDevice),
    /// [`CudaError::UnorderableColumn`](crate::cuda::CudaError::UnorderableColumn) (memory of
    /// another context), [`TableError::ByteLengthMismatch`](crate::TableError::ByteLengthMismatch)
    /// (bytes past the end of an allocation), [`Error::Cuda`] (a failed driver call), the
    /// writer's errors when earlier parts are handed over, [`Error::Interrupted`] once a wait
    /// for the device has failed. On error nothing of this batch is written (but see
    /// [`DeviceWriter`] on batches larger than three blocks).
    pub fn write_device(
        &mut self,
        at: Option<&[u64]>,
        columns: &[WriteSource<'_>],
        rows: usize,
        producer: usize,
    ) -> Result<()> {
        let _current = ContextGuard::save();
        self.check_usable()?;
        let ctx = Arc::clone(&self.st.ctx);
        catch("writing a device batch", || {
            bind_ctx(&ctx)?;
            self.check(at, columns, rows)?;
            let total_row: usize = self.row_bytes.iter().sum();
            if rows == 0 || total_row == 0 {
                // Nothing to copy: in order after what is pending.
                self.flush_inner()?;
                let host: Vec<&[u8]> = columns.iter().map(|_| &[][..]).collect();
                self.writer.write_bytes(rows, at, &host)?;
            } else {
                let batch = self.batches;
                if let Err(e) = self.issue(at, columns, rows, producer, batch) {
                    self.discard(batch);
                    return Err(e);
                }
                self.retire();
            }
            if at.is_none() {
                self.next += rows;
            }
            if rows > 0 {
                self.by_index = Some(at.is_some());
            }
            self.batches += 1;
            Ok(())
        })
    }

    /// Everything [`Writer::write_bytes`] checks, and the device ranges, before anything runs.
    fn check(&self, at: Option<&[u64]>, columns: &[WriteSource<'_>], rows: usize) -> Result<()> {
        let out = self.writer.columns();
        if columns.len() != out.len() {
            return Err(self.mismatch(
                "",
                format!(
                    "{} columns given, the output has {}",
                    columns.len(),
                    out.len()
                ),
            ));
        }
        for ((c, src), &rb) in out.iter().zip(columns).zip(&self.row_bytes) {
            if Some(src.len()) != rows.checked_mul(rb) {
                return Err(self.mismatch(
                    &c.name,
                    format!("{} bytes, not {rows} rows of {rb} bytes", src.len()),
                ));
            }
        }
        let total = self.writer.rows();
        match at {
            Some(at) => {
                if at.len() != rows {
                    return Err(self.mismatch(
                        "",
                        format!("{} indices for a batch of {rows} rows", at.len()),
                    ));
                }
                if let Some((position, &index)) =
                    at.iter().enumerate().find(|(_, &i)| i >= total as u64)
                {
                    return Err(Error::IndexOutOfBounds {
                        index,
                        position,
                        rows: total,
                    });
                }
            }
            None if self.next.saturating_add(rows) > total => {
                return Err(Error::IndexOutOfBounds {
                    index: (self.next + rows - 1) as u64,
                    position: rows - 1,
                    rows: total,
                });
            }
            None => {}
        }
        let before = self.by_index.or(self.writer.addressed_by_index());
        self.writer
            .check_addressing(before, at.is_some(), rows, self.next)?;
        let engine_ctx = self.st.ctx.cu_ctx() as usize;
        for (c, src) in out.iter().zip(columns) {
            if let WriteSource::Device { ptr, bytes } = *src {
                if bytes == 0 {
                    continue;
                }
                let first = pointer_info(ptr).map_err(cuda_err(format!(
                    "column {:?}: asking the driver about device address {ptr:#x}",
                    c.name
                )))?;
                let end = ptr.saturating_add(bytes as u64);
                let info = lent_extent(&first, end, |a| pointer_info(a).ok());
                check_lent(&c.name, self.ordinal, engine_ctx, ptr, bytes, &info)?;
            }
        }
        Ok(())
    }

    /// Queues the batch's parts (steps 2–4 of [`DeviceWriter`]). On error, the caller discards
    /// the parts of `batch` still pending.
    fn issue(
        &mut self,
        at: Option<&[u64]>,
        columns: &[WriteSource<'_>],
        rows: usize,
        producer: usize,
        batch: usize,
    ) -> Result<()> {
        let total_row: usize = self.row_bytes.iter().sum();
        let ready = self
            .st
            .ctx
            .new_event(None)
            .map_err(cuda_err("creating an event"))?;
        // SAFETY: `ready` is a live event of the engine's context, which `write_device` made
        // current. `producer` is a handle the caller promises names a live stream of that
        // context or a default stream (see `write_device`); the driver checks stream handles and
        // refuses one it does not know. Recording reads and writes no memory.
        unsafe { result::event::record(ready.cu_event(), producer as sys::CUstream) }
            .map_err(cuda_err("recording an event on the producer's stream"))?;
        let mut first = 0;
        while first < rows {
            let (block, offset, room) = self.place(total_row)?;
            let n = room.min(rows - first);
            let stream = Arc::clone(&self.st.streams[self.lane % self.st.streams.len()]);
            self.lane = self.lane.wrapping_add(1);
            stream
                .wait(&ready)
                .map_err(cuda_err("ordering a copy after the producer's stream"))?;
            let base = self.st.blocks[block].base;
            let mut col_off = offset;
            for (src, &rb) in columns.iter().zip(&self.row_bytes) {
                let len = n * rb;
                let dst = (base + col_off) as *mut u8;
                match *src {
                    WriteSource::Host(bytes) => {
                        let part = &bytes[first * rb..first * rb + len];
                        // SAFETY: `dst .. dst + len` lies inside block `block` (`place` gave
                        // `offset .. offset + n × total_row` within its capacity), a range no
                        // copy writes and no reference covers: it was handed out just now, and
                        // the block's earlier parts (which copies may still write) lie before
                        // it. `part` is host memory of the caller, not inside the block.
                        unsafe { std::ptr::copy_nonoverlapping(part.as_ptr(), dst, len) };
                    }
                    WriteSource::Device { ptr, .. } => {
                        // SAFETY (dtoh_async): 1. `ptr + first × rb .. + len` lies inside the
                        // column's `rows × rb` bytes, which `check` found inside one live
                        // allocation of this device and context; the caller promises nothing
                        // writes them after the producer work this stream waits for (and the
                        // producer waits for this copy before its later work); 2. `dst .. + len`
                        // lies inside the pinned block, in a range handed out just now, which
                        // nothing reads or writes until the part's `done` event has completed
                        // (`hand_over`, `discard`, `Drop` wait for it first), and the block is
                        // kept by `self` until then; 3. bound by `dtoh_async`.
                        unsafe { dtoh_async(dst, ptr + (first * rb) as u64, len, &stream)? };
                    }
                }
                col_off += len;
            }
            let done = stream
                .record_event(None)
                .map_err(cuda_err("recording a copy event"))?;
            let done_event = done.cu_event();
            let bytes = n * total_row;
            self.st.blocks[block].used = offset + bytes;
            self.st.blocks[block].live += 1;
            self.st.pending.push_back(Part {
                block,
                offset,
                rows: n,
                at: at.map(|a| a[first..first + n].to_vec()),
                bytes,
                batch,
                done,
            });
            self.pending_bytes += bytes;
            self.peak_pending = self.peak_pending.max(self.pending_bytes);
            {
                // SAFETY: `done` is a live event of the engine's context (owned by the part
                // just queued), `producer` as above. Waiting reads and writes no memory.
                unsafe {
                    result::stream::wait_event(
                        producer as sys::CUstream,
                        done_event,
                        sys::CUevent_wait_flags::CU_EVENT_WAIT_DEFAULT,
                    )
                }
                .map_err(cuda_err("ordering the producer's stream after a copy"))?;
            }
            first += n;
        }
        Ok(())
    }

    /// Where the next part goes: `(block, offset, rows that fit)`, at least one row. Moves to
    /// the next block when the current one is full, waiting for (and handing over) the oldest
    /// parts until that block is free.
    fn place(&mut self, total_row: usize) -> Result<(usize, usize, usize)> {
        loop {
            let b = &self.st.blocks[self.cur];
            let room = (self.block_bytes - b.used) / total_row;
            if room > 0 && b.buf.is_some() {
                return Ok((self.cur, b.used, room));
            }
            if room > 0 {
                let (mut buf, _secs) = self.engine.pinned_pool().take(self.block_bytes)?;
                // Nothing is in flight into a block without memory: the address is taken once.
                let base = crate::output::Storage::as_bytes_mut(&mut buf).as_mut_ptr() as usize;
                let b = &mut self.st.blocks[self.cur];
                b.buf = Some(buf);
                b.base = base;
                continue;
            }
            let next = (self.cur + 1) % self.st.blocks.len();
            while self.st.blocks[next].live > 0 {
                self.complete_front(true)?;
            }
            self.st.blocks[next].used = 0;
            self.cur = next;
        }
    }

    /// Hands the oldest pending part to the writer if its copy has completed (or, with `wait`,
    /// once it has). Returns whether a part was handed over.
    fn complete_front(&mut self, wait: bool) -> Result<bool> {
        let Some(front) = self.st.pending.front() else {
            return Ok(false);
        };
        if wait {
            wait_event(&front.done, "waiting for a device writer's copy")?;
        } else if !front.done.try_is_complete().unwrap_or(false) {
            // A failed query is only "not known to be complete": the wait at the next flush
            // reports the error.
            return Ok(false);
        }
        let Some(part) = self.st.pending.pop_front() else {
            return Ok(false);
        };
        self.hand_over(part)?;
        Ok(true)
    }

    /// Copies a completed part into the writer and gives its staging space back.
    fn hand_over(&mut self, part: Part) -> Result<()> {
        let base = self.st.blocks[part.block].base;
        let mut off = part.offset;
        let mut cols = Vec::with_capacity(self.row_bytes.len());
        for &rb in &self.row_bytes {
            let len = part.rows * rb;
            // SAFETY: `base + off .. + len` lies inside the part's range of its block, which the
            // block's pinned memory (kept by `self.st.blocks`) holds, initialised (zeroed when
            // allocated, then written by the part's copies); those copies have completed (the
            // caller waited for or queried `part.done`), and nothing else writes that range until
            // it is handed out again, after `live` drops to 0 below.
            cols.push(unsafe { std::slice::from_raw_parts((base + off) as *const u8, len) });
            off += len;
        }
        let r = self
            .writer
            .write_bytes(part.rows, part.at.as_deref(), &cols);
        drop(cols);
        let b = &mut self.st.blocks[part.block];
        b.live -= 1;
        self.pending_bytes -= part.bytes;
        r
    }

    /// Hands over every part already complete, without waiting.
    fn retire(&mut self) {
        while let Ok(true) = self.complete_front(false) {}
    }

    /// After a failed [`DeviceWriter::issue`] of `batch`: waits for the streams, then drops
    /// the batch's parts still pending (the newest ones).
    fn discard(&mut self, batch: usize) {
        let mut failed = None;
        for s in &self.st.streams {
            if let Err(e) = wait_stream(s) {
                failed.get_or_insert(e);
            }
        }
        if let Some(e) = failed {
            self.st.broken = Some(e.to_string());
        }
        while self.st.pending.back().is_some_and(|p| p.batch == batch) {
            if let Some(p) = self.st.pending.pop_back() {
                self.st.blocks[p.block].live -= 1;
                self.pending_bytes -= p.bytes;
            }
        }
    }

    fn flush_inner(&mut self) -> Result<()> {
        while self.complete_front(true)? {}
        if let Some(e) = take_stale_error(&self.st.ctx) {
            return Err(cuda_err("releasing a device writer's events")(e));
        }
        Ok(())
    }

    /// Waits for every queued copy and hands it to the writer, in order.
    ///
    /// # Errors
    /// [`Error::Cuda`] when a wait fails; the writer's errors.
    pub fn flush(&mut self) -> Result<()> {
        let _current = ContextGuard::save();
        self.check_usable()?;
        let ctx = Arc::clone(&self.st.ctx);
        catch("flushing a device writer", || {
            bind_ctx(&ctx)?;
            self.flush_inner()
        })
    }

    /// Writes a batch of host bytes ([`Writer::write_bytes`]) after every pending device batch.
    ///
    /// # Errors
    /// As [`DeviceWriter::flush`] and [`Writer::write_bytes`].
    pub fn write_bytes(&mut self, n: usize, at: Option<&[u64]>, columns: &[&[u8]]) -> Result<()> {
        self.flush()?;
        self.writer.write_bytes(n, at, columns)?;
        if at.is_none() {
            self.next += n;
        }
        self.batches += 1;
        Ok(())
    }

    /// Waits for every copy, hands it over, and gives the writer back.
    ///
    /// # Errors
    /// As [`DeviceWriter::flush`].
    pub fn into_writer(mut self) -> Result<Writer> {
        self.flush()?;
        // Nothing is pending: dropping the staging gives the blocks back to the pool.
        Ok(self.writer)
    }

    /// [`DeviceWriter::flush`], then [`Writer::close`].
    ///
    /// # Errors
    /// As [`DeviceWriter::flush`] and [`Writer::close`].
    pub fn close(self) -> Result<Written> {
        self.into_writer()?.close()
    }
}

impl Drop for Staging {
    /// Waits for every copy still in flight (nothing more is handed to the writer) before the
    /// staging blocks go back to the pool.
    fn drop(&mut self) {
        self.restore.arm();
        let _ = bind_ctx(&self.ctx);
        for s in &self.streams {
            let _ = wait_stream(s);
        }
        self.pending.clear();
        if self.broken.is_some() {
            // A wait failed: a copy may still write the blocks. Their memory is left allocated
            // rather than handed to another user.
            for b in &mut self.blocks {
                std::mem::forget(b.buf.take());
            }
        }
    }
}
