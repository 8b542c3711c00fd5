//! The other direction: [`Writer`] takes rows pushed by the caller (model outputs, batch after
//! batch) and puts each at its row of one output — a memory-mapped `.npy` file, a `.npz`
//! archive, a folder of `.npy` files, or arrays in memory — which appears once, complete, when
//! the writer is closed, and never otherwise.
//!
//! - **Bounded memory, no waiting on the destination**: [`Writer::write`] copies the batch into
//!   a block of a small ring of host blocks and returns; a background thread moves finished
//!   blocks into the destination and hands them back. When every block is in flight (the
//!   destination is slower than the producer), `write` waits for one: back-pressure, not growth.
//! - **Row addressing**: rows go to the dataset indices given ([`Writer::write_at`]), so
//!   shuffled, subset and distributed orders land every row in place, or are appended in order
//!   ([`Writer::write`]); one writer does one or the other, and a joined writer only the first
//!   (an append has no meaning beside rows placed by index, nor in another process). A row
//!   written twice keeps its last bytes (PyTorch's `DistributedSampler` pads with duplicates,
//!   which write identical bytes).
//! - **Exactly once**: a bitmap records every row written; [`Writer::close`] refuses to commit
//!   while any row is missing ([`Error::RowsMissing`], naming how many and the first ones) and
//!   otherwise renames the output into place once. Files are staged with
//!   [`Staged`], so a writer dropped without `close`, a failed close or an
//!   interrupted process leaves nothing at the destination.
//!
//! - **Many processes, one output**: the ranks of one run (torchrun, Slurm, MPI) write into one
//!   output: one writer creates it ([`Writer::shared_path`] names its temporary file or folder),
//!   the others join it ([`WriterBuilder::join`]) and write their rows in place through their
//!   own maps; each joined writer writes its rows back ([`Writer::close`]) and hands its
//!   coverage bitmap to the creator, whose [`Writer::close_with`] checks the union and renames
//!   the output into place once. How the path and bitmaps travel between processes is the
//!   caller's (the Python package uses `torch.distributed`).
//!
//! It must not know where the rows come from (no loader, no sampler) nor parse a command line.

mod joined;

use crate::table::TableError;
use std::path::{Path, PathBuf};
use std::sync::mpsc::{self, Receiver, SyncSender};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;

use crate::dtype::DType;
use crate::error::{Error, FileError, Result};
use crate::fsafe::Staged;
use crate::memory::{checked_bytes, HostBuf};
use crate::npy::{self, MappedNpy, WriteOptions};
use crate::output::{Batch, ColumnArray, Materialized};

/// Host memory of the ring by default: 64 MiB, in blocks of about [`DEFAULT_BLOCK_BYTES`].
pub const DEFAULT_RING_BYTES: usize = 64 << 20;
/// Bytes of one block of the ring by default (the ring holds `ring_bytes / DEFAULT_BLOCK_BYTES`
/// blocks, 4 to 1024): small enough that the block `write` fills was read by the background
/// thread a short while before (still in cache), many enough that the background thread is
/// rarely waited for.
pub const DEFAULT_BLOCK_BYTES: usize = 1 << 20;
/// Bytes the background thread faults in ahead between two blocks of rows (a fresh output in
/// memory, on 4 KiB pages).
const FAULT_STEP: usize = 4 << 20;

/// Where a [`Writer`]'s rows end up.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Destination {
    /// Arrays in memory, returned by [`Writer::close`].
    Memory,
    /// One `.npy` file (exactly one column), written through a memory map.
    Npy(PathBuf),
    /// A `.npz` archive, one `NAME.npy` member per column (compressed when `compress`); the
    /// columns are written to scratch maps beside it and packed when the writer closes.
    Npz {
        /// The archive.
        path: PathBuf,
        /// Deflate the members, as `numpy.savez_compressed`.
        compress: bool,
    },
    /// A folder of `NAME.npy` files, made under a temporary name and renamed into place whole.
    Dir(PathBuf),
}

impl Destination {
    /// The destination `path` names by its extension: `.npy` a file, `.npz` an archive,
    /// anything else a folder of `.npy` files.
    pub fn from_path(path: impl AsRef<Path>) -> Destination {
        let path = path.as_ref().to_path_buf();
        match path.extension().and_then(|e| e.to_str()) {
            Some("npy") => Destination::Npy(path),
            Some("npz") => Destination::Npz {
                path,
                compress: false,
            },
            _ => Destination::Dir(path),
        }
    }
}

/// One output column of a [`Writer`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WriterColumn {
    /// Name (the file or member name in `.npz` and folder outputs).
    pub name: String,
    /// Element type.
    pub dtype: DType,
    /// Shape of one row.
    pub row_shape: Vec<usize>,
}

impl WriterColumn {
    fn row_bytes(&self) -> Result<usize> {
        let mut parts = self.row_shape.clone();
        parts.push(self.dtype.size());
        checked_bytes(&parts, &self.name)
    }
}

/// Options of a [`Writer`], built by [`Writer::builder`].
#[derive(Debug, Clone)]
pub struct WriterBuilder {
    rows: usize,
    columns: Vec<WriterColumn>,
    destination: Destination,
    ring_bytes: usize,
    blocks: Option<usize>,
    join: Option<PathBuf>,
}

impl WriterBuilder {
    /// Writes into the output another writer of the same run created (usually in another
    /// process) instead of creating one: `shared` is that writer's [`Writer::shared_path`], a
    /// `.arraydrain-*` temporary file (`.npy`) or folder (`.npz`, folder). The destination kind,
    /// columns and rows must be the creator's: every file's header and length are checked
    /// before it is mapped. A joined writer commits nothing: its [`Writer::close`] writes its
    /// rows back to the file, and its [`Writer::coverage`] goes to the creator's
    /// [`Writer::close_with`]; dropped, it leaves the file to the creator.
    pub fn join(mut self, shared: impl Into<PathBuf>) -> Self {
        self.join = Some(shared.into());
        self
    }

    /// Adds a column of `dtype` whose rows have `row_shape`.
    pub fn column(mut self, name: impl Into<String>, dtype: DType, row_shape: &[usize]) -> Self {
        self.columns.push(WriterColumn {
            name: name.into(),
            dtype,
            row_shape: row_shape.to_vec(),
        });
        self
    }

    /// Where the rows go (default: [`Destination::Memory`]).
    pub fn destination(mut self, destination: Destination) -> Self {
        self.destination = destination;
        self
    }

    /// [`Destination::from_path`].
    pub fn path(self, path: impl AsRef<Path>) -> Self {
        self.destination(Destination::from_path(path))
    }

    /// Host memory of the ring, all blocks together (default [`DEFAULT_RING_BYTES`]). A block
    /// always holds at least one row, so a row larger than a block makes the ring that many
    /// rows instead; a ring larger than the output is cut to the blocks its rows fill, plus one.
    pub fn ring_bytes(mut self, bytes: usize) -> Self {
        self.ring_bytes = bytes;
        self
    }

    /// Blocks in the ring (at least 2; by default one per [`DEFAULT_BLOCK_BYTES`] of the
    /// ring, 4 to 1024).
    pub fn blocks(mut self, blocks: usize) -> Self {
        self.blocks = Some(blocks.max(2));
        self
    }

    /// Creates the destination (under temporary names) and starts the background thread.
    ///
    /// # Errors
    /// [`TableError::EmptyTable`] without columns; [`TableError::DuplicateColumn`]; [`FileError::UnsafeName`]
    /// for a name that cannot name a file (file destinations); [`Error::ConflictingOptions`] for a
    /// `.npy` destination with other than one column; [`FileError::PathConflict`] for a destination
    /// that cannot be replaced (a folder where a file goes, anything where a folder goes);
    /// [`Error::UnsupportedDType`], [`FileError::NoSpace`], [`FileError::Io`] as
    /// [`MappedNpy::create`]; [`Error::HostAllocation`] for the ring or in-memory output.
    pub fn open(self) -> Result<Writer> {
        Writer::open(self)
    }
}

/// Rows pushed batch by batch, each to its row of one output that appears, complete, on
/// [`Writer::close`] (see the [module](self) for how).
///
/// ```
/// # let dir = std::env::temp_dir().join(format!("arraydrain-doc-writer-{}", std::process::id()));
/// # std::fs::create_dir_all(&dir)?;
/// use arraydrain::{npy, Batch, DType, Writer};
/// use ndarray::Array2;
///
/// // 10 rows of 4 features, produced in a shuffled order, two batches of 5.
/// let order = [7usize, 2, 9, 0, 4, 1, 8, 3, 6, 5];
/// let path = dir.join("feats.npy");
/// let mut w = Writer::builder(10).column("feats", DType::F32, &[4]).path(&path).open()?;
/// for at in order.chunks(5) {
///     let out = Array2::from_shape_fn((5, 4), |(r, j)| (at[r] * 10 + j) as f32);
///     w.write_at(at, &Batch::new().with("feats", out)?)?;
///     assert!(!path.exists()); // nothing is visible before close
/// }
/// w.close()?;
/// let back = npy::read_npy(&path)?;
/// let row3: &[f32] = bytemuck::cast_slice(back.row(3).unwrap());
/// assert_eq!(row3, [30.0, 31.0, 32.0, 33.0]); // row 3 holds the output for dataset index 3
/// # std::fs::remove_dir_all(&dir)?;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug)]
pub struct Writer {
    columns: Vec<WriterColumn>,
    row_bytes: Vec<usize>,
    rows: usize,
    /// One bit per output row: written at least once.
    written: Vec<u64>,
    covered: usize,
    /// Next row of an append ([`Writer::write`]).
    next: usize,
    /// How the rows written so far were addressed: `Some(true)` by index, `Some(false)`
    /// appended, `None` before the first row.
    by_index: Option<bool>,
    batches: usize,
    /// Rows one block holds.
    block_rows: usize,
    /// Host memory of the ring, every block together.
    ring_bytes: usize,
    /// The block being filled (sent when full, or by [`Writer::sync`]).
    current: Option<Block>,
    to_sink: Option<SyncSender<Block>>,
    /// Blocks handed back by the background thread.
    free: Arc<FreeBlocks>,
    thread: Option<JoinHandle<Result<Sink>>>,
    /// The destination once the thread has stopped ([`Writer::sync`]).
    stopped: Option<Sink>,
    /// The temporary file or folder other writers can join.
    shared: Option<PathBuf>,
    /// Whether this writer joined another's output (and commits nothing).
    joined: bool,
}

/// What [`Writer::close`] made.
#[derive(Debug)]
pub struct Written {
    /// The files or folder put in place (empty for [`Destination::Memory`]).
    pub paths: Vec<PathBuf>,
    /// The arrays, for [`Destination::Memory`].
    pub memory: Option<Materialized>,
}

/// Rows on their way to the destination: the rows of consecutive writes, packed, each write's
/// part a [`Segment`].
struct Block {
    buf: Vec<u8>,
    segments: Vec<Segment>,
}

impl std::fmt::Debug for Block {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Block")
            .field("bytes", &self.buf.len())
            .field("segments", &self.segments.len())
            .finish()
    }
}

/// `rows` rows of every column, column after column, from `offset` in the block's bytes, for
/// the output rows `at` (or `start..start + rows` when `at` is empty).
struct Segment {
    offset: usize,
    rows: usize,
    at: Vec<u64>,
    start: usize,
}

/// The ring's free blocks, handed back by the background thread. A stack, not a queue: the
/// block `write` fills next is the one the background thread finished last, still in cache
/// (a copy into a block in cache costs a fraction of one into a block that is not),
/// while the rest of the ring waits for bursts.
#[derive(Debug, Default)]
struct FreeBlocks {
    state: Mutex<FreeState>,
    ready: Condvar,
}

#[derive(Debug, Default)]
struct FreeState {
    blocks: Vec<Vec<u8>>,
    /// The background thread has stopped: no block will come back.
    stopped: bool,
}

impl FreeBlocks {
    /// The block handed back last, waiting for one while none is free; `None` once the
    /// background thread has stopped with none left.
    fn take(&self) -> Option<Vec<u8>> {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            if let Some(buf) = state.blocks.pop() {
                return Some(buf);
            }
            if state.stopped {
                return None;
            }
            state = self.ready.wait(state).unwrap_or_else(|e| e.into_inner());
        }
    }
}

/// The background thread's side of [`FreeBlocks`]: marks it stopped when dropped (the thread
/// ended, by an error or a panic too), so that a waiting `write` wakes up.
struct FreeSide(Arc<FreeBlocks>);

impl FreeSide {
    fn give(&self, buf: Vec<u8>) {
        let mut state = self.0.state.lock().unwrap_or_else(|e| e.into_inner());
        state.blocks.push(buf);
        drop(state);
        self.0.ready.notify_one();
    }
}

impl Drop for FreeSide {
    fn drop(&mut self) {
        let mut state = self.0.state.lock().unwrap_or_else(|e| e.into_inner());
        state.stopped = true;
        drop(state);
        self.0.ready.notify_all();
    }
}

/// The destination, owned by the background thread while the writer is open.
#[derive(Debug)]
struct Sink {
    columns: Vec<ColumnArray>,
    row_bytes: Vec<usize>,
    staged: Option<Staged>,
    destination: Destination,
}

impl Writer {
    /// A builder for a writer of `rows` rows.
    pub fn builder(rows: usize) -> WriterBuilder {
        WriterBuilder {
            rows,
            columns: Vec::new(),
            destination: Destination::Memory,
            ring_bytes: DEFAULT_RING_BYTES,
            blocks: None,
            join: None,
        }
    }

    fn open(b: WriterBuilder) -> Result<Writer> {
        if b.columns.is_empty() {
            return Err(Error::Table(TableError::EmptyTable));
        }
        for (i, c) in b.columns.iter().enumerate() {
            if b.columns[..i].iter().any(|o| o.name == c.name) {
                return Err(Error::Table(TableError::DuplicateColumn {
                    name: c.name.clone(),
                }));
            }
        }
        let row_bytes = b
            .columns
            .iter()
            .map(WriterColumn::row_bytes)
            .collect::<Result<Vec<_>>>()?;
        let total_row: usize = row_bytes.iter().sum();
        let blocks = b
            .blocks
            .unwrap_or_else(|| (b.ring_bytes / DEFAULT_BLOCK_BYTES).clamp(4, 1024));
        let block_bytes = b.ring_bytes / blocks;
        let block_rows = (block_bytes / total_row.max(1)).clamp(1, b.rows.max(1));
        // A ring larger than the output would hold memory no write ever needs: at most the
        // blocks the output's rows fill, plus one.
        let blocks = blocks.min(b.rows.div_ceil(block_rows) + 1).max(2);
        let (sink, shared) = match &b.join {
            None => Sink::create(&b.destination, &b.columns, b.rows, row_bytes.clone())?,
            Some(shared) => (
                joined::sink(
                    &b.destination,
                    shared,
                    &b.columns,
                    b.rows,
                    row_bytes.clone(),
                )?,
                Some(shared.clone()),
            ),
        };

        let cap = block_rows
            .checked_mul(total_row)
            .ok_or_else(|| Error::SizeOverflow {
                what: "a writer block".into(),
            })?;
        let free = Arc::new(FreeBlocks::default());
        let free_tx = FreeSide(Arc::clone(&free));
        let mut ring = Vec::with_capacity(blocks);
        for _ in 0..blocks {
            let mut buf = Vec::new();
            buf.try_reserve_exact(cap)
                .map_err(|e| Error::alloc(cap, "the writer's ring", e))?;
            ring.push(buf);
        }
        let (to_sink, queue) = mpsc::sync_channel::<Block>(blocks);
        let thread = std::thread::Builder::new()
            .name("arraydrain-writer".into())
            .spawn(move || sink.run(ring, queue, free_tx))
            .map_err(|e| Error::alloc(0u64, "the writer's thread", e))?;
        Ok(Writer {
            columns: b.columns,
            row_bytes,
            rows: b.rows,
            written: vec![0; b.rows.div_ceil(64)],
            covered: 0,
            next: 0,
            by_index: None,
            batches: 0,
            block_rows,
            ring_bytes: blocks * cap,
            current: None,
            to_sink: Some(to_sink),
            free,
            thread: Some(thread),
            stopped: None,
            shared,
            joined: b.join.is_some(),
        })
    }

    /// The temporary file (`.npy`) or folder (`.npz`, folder) that holds the output until it is
    /// committed, for other writers of the run to [join](WriterBuilder::join); `None` in
    /// memory.
    pub fn shared_path(&self) -> Option<&Path> {
        self.shared.as_deref()
    }

    /// Host memory of the ring, every block together (what [`WriterBuilder::ring_bytes`]
    /// asked for, cut to the output, or raised to hold a row per block).
    pub fn ring_bytes(&self) -> usize {
        self.ring_bytes
    }

    /// Rows of the output.
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// The output's columns.
    pub fn columns(&self) -> &[WriterColumn] {
        &self.columns
    }

    /// Distinct rows written so far.
    pub fn rows_written(&self) -> usize {
        self.covered
    }

    /// Rows not written yet, in order (for messages; at most `limit`).
    pub fn missing_rows(&self, limit: usize) -> Vec<usize> {
        (0..self.rows)
            .filter(|&i| self.written[i / 64] & (1 << (i % 64)) == 0)
            .take(limit)
            .collect()
    }

    /// Rows appended so far ([`Writer::write`]): the next append starts at this row.
    pub fn appended(&self) -> usize {
        self.next
    }

    /// The coverage bitmap: bit `i % 64` of word `i / 64` is set once row `i` was written.
    pub fn coverage(&self) -> &[u64] {
        &self.written
    }

    /// Appends a batch after the rows appended so far (each column of `batch` by name).
    ///
    /// # Errors
    /// As [`Writer::write_bytes`]; [`TableError::UnknownColumn`] when `batch` lacks a column.
    pub fn write(&mut self, batch: &Batch) -> Result<()> {
        let cols = self.batch_columns(batch)?;
        self.write_bytes(batch.rows().unwrap_or(0), None, &cols)
    }

    /// Writes a batch's rows to the output rows `at` (one index per batch row).
    ///
    /// # Errors
    /// As [`Writer::write_bytes`]; [`TableError::UnknownColumn`] when `batch` lacks a column.
    pub fn write_at(&mut self, at: &[usize], batch: &Batch) -> Result<()> {
        let cols = self.batch_columns(batch)?;
        let at: Vec<u64> = at.iter().map(|&i| i as u64).collect();
        self.write_bytes(batch.rows().unwrap_or(0), Some(&at), &cols)
    }

    fn batch_columns<'b>(&self, batch: &'b Batch) -> Result<Vec<&'b [u8]>> {
        self.columns
            .iter()
            .map(|c| {
                let col = batch.column(&c.name)?;
                if col.dtype() != c.dtype || col.row_shape() != c.row_shape.as_slice() {
                    return Err(self.mismatch(
                        &c.name,
                        format!(
                            "{} rows of shape {:?}, the output holds {} rows of shape {:?}",
                            col.dtype(),
                            col.row_shape(),
                            c.dtype,
                            c.row_shape
                        ),
                    ));
                }
                Ok(col.as_bytes())
            })
            .collect()
    }

    fn mismatch(&self, column: &str, reason: String) -> Error {
        Error::BatchMismatch {
            batch: self.batches,
            column: column.into(),
            reason,
        }
    }

    /// Writes one batch of `n` rows given as bytes: `columns[c]` holds the batch's rows of
    /// column `c` (row-major, `n × row_bytes`), in the writer's column order; `at` names each row's
    /// output row, or `None` to append. Everything is checked before anything is written, so a
    /// refused batch changes nothing. Returns once the rows are copied into the ring (waiting
    /// only while every block is in flight).
    ///
    /// # Errors
    /// [`Error::BatchMismatch`] for a wrong number of columns, a column of another length than
    /// `n` rows, or `at` of another length; [`Error::IndexOutOfBounds`]
    /// for an index (or appended row) past the output; [`Error::ConflictingOptions`] for rows
    /// appended (`at` of `None`) by a writer that placed rows by index before, or by a joined
    /// writer, and for rows by index after appended ones; the destination's error ([`FileError::Io`],
    /// [`FileError::NoSpace`]) when the background thread failed.
    pub fn write_bytes(&mut self, n: usize, at: Option<&[u64]>, columns: &[&[u8]]) -> Result<()> {
        if self.stopped.is_some() {
            return Err(Error::ConflictingOptions {
                reason: "the writer was synced: its rows are final, no more can be written".into(),
            });
        }
        if columns.len() != self.columns.len() {
            return Err(self.mismatch(
                "",
                format!(
                    "{} columns given, the output has {}",
                    columns.len(),
                    self.columns.len()
                ),
            ));
        }
        for ((c, bytes), &rb) in self.columns.iter().zip(columns).zip(&self.row_bytes) {
            if Some(bytes.len()) != n.checked_mul(rb) {
                return Err(self.mismatch(
                    &c.name,
                    format!("{} bytes, not {n} rows of {rb} bytes", bytes.len()),
                ));
            }
        }
        match at {
            Some(at) => {
                if at.len() != n {
                    return Err(
                        self.mismatch("", format!("{} indices for a batch of {n} rows", at.len()))
                    );
                }
                if let Some((position, &index)) =
                    at.iter().enumerate().find(|(_, &i)| i >= self.rows as u64)
                {
                    return Err(Error::IndexOutOfBounds {
                        index,
                        position,
                        rows: self.rows,
                    });
                }
            }
            None if self.next + n > self.rows => {
                return Err(Error::IndexOutOfBounds {
                    index: (self.next + n - 1) as u64,
                    position: n - 1,
                    rows: self.rows,
                });
            }
            None => {}
        }
        let by_index = at.is_some();
        self.check_addressing(self.by_index, by_index, n, self.next)?;
        let start = self.next;
        let total_row: usize = self.row_bytes.iter().sum();
        let mut first = 0;
        while first < n {
            let mut block = match self.current.take() {
                Some(b) => b,
                None => {
                    let mut buf = self.free_block()?;
                    buf.clear();
                    Block {
                        buf,
                        segments: Vec::new(),
                    }
                }
            };
            let room = match total_row {
                0 => n - first,
                t => (self.block_rows * t - block.buf.len()) / t,
            };
            if room == 0 {
                self.send(block)?;
                continue;
            }
            let rows = room.min(n - first);
            let offset = block.buf.len();
            for (bytes, &rb) in columns.iter().zip(&self.row_bytes) {
                block
                    .buf
                    .extend_from_slice(&bytes[first * rb..(first + rows) * rb]);
            }
            block.segments.push(Segment {
                offset,
                rows,
                at: at.map_or_else(Vec::new, |a| a[first..first + rows].to_vec()),
                start: start + first,
            });
            first += rows;
            if total_row > 0 && block.buf.len() + total_row > self.block_rows * total_row {
                self.send(block)?;
            } else {
                self.current = Some(block);
            }
        }
        if n > 0 {
            self.by_index = Some(by_index);
        }
        match at {
            Some(at) => at.iter().for_each(|&i| self.mark(i as usize)),
            None => {
                (start..start + n).for_each(|i| self.mark(i));
                self.next += n;
            }
        }
        self.batches += 1;
        Ok(())
    }

    /// How the rows written so far were addressed: `Some(true)` by index, `Some(false)`
    /// appended, `None` before the first row.
    pub fn addressed_by_index(&self) -> Option<bool> {
        self.by_index
    }

    /// Refuses `n` rows addressed by index (`by_index`) or appended, after rows addressed as
    /// `before` (`appended` of them appended): a writer does one or the other, and a joined
    /// writer places by index only.
    pub(crate) fn check_addressing(
        &self,
        before: Option<bool>,
        by_index: bool,
        n: usize,
        appended: usize,
    ) -> Result<()> {
        if n == 0 {
            return Ok(());
        }
        let reason = match (before, by_index) {
            (_, false) if self.joined => "a writer joined to another's output places its rows \
                by index (write_at): appended rows would start at row 0 in every process"
                .to_string(),
            (Some(false), true) => format!(
                "rows given by index after {appended} appended rows: a writer either appends \
                 every batch or places every batch by index"
            ),
            (Some(true), false) => "a batch to append after rows placed by index: a writer \
                either appends every batch or places every batch by index (an append would \
                start at row 0, over whatever was placed there)"
                .to_string(),
            _ => return Ok(()),
        };
        Err(Error::ConflictingOptions { reason })
    }

    fn mark(&mut self, i: usize) {
        let (w, bit) = (i / 64, 1u64 << (i % 64));
        if self.written[w] & bit == 0 {
            self.written[w] |= bit;
            self.covered += 1;
        }
    }

    /// A free block of the ring, waiting for the background thread to hand one back.
    fn free_block(&mut self) -> Result<Vec<u8>> {
        match self.free.take() {
            Some(buf) => Ok(buf),
            None => Err(self.sink_failure()),
        }
    }

    fn send(&mut self, block: Block) -> Result<()> {
        let sent = self.to_sink.as_ref().map(|tx| tx.send(block).is_ok());
        if sent == Some(true) {
            Ok(())
        } else {
            Err(self.sink_failure())
        }
    }

    /// The background thread's error, once it has stopped.
    fn sink_failure(&mut self) -> Error {
        self.to_sink = None;
        match self.thread.take().map(JoinHandle::join) {
            Some(Ok(Err(e))) => e,
            _ => Error::Interrupted {
                reason: "the writer's background thread stopped".into(),
            },
        }
    }

    /// Waits for every row written so far to reach the destination and, for files, to be
    /// written back to them (`msync`); no more rows can be written afterwards. A joined writer
    /// calls it (through [`Writer::close`]) before the creator commits.
    ///
    /// # Errors
    /// The destination's errors ([`FileError::Io`]).
    pub fn sync(&mut self) -> Result<()> {
        if self.stopped.is_some() {
            return Ok(());
        }
        if let Some(block) = self.current.take().filter(|b| !b.segments.is_empty()) {
            self.send(block)?;
        }
        self.to_sink = None;
        let mut sink = match self.thread.take().map(JoinHandle::join) {
            Some(Ok(result)) => result?,
            _ => {
                return Err(Error::Interrupted {
                    reason: "the writer's background thread stopped".into(),
                })
            }
        };
        for c in &mut sink.columns {
            c.storage_mut().finish()?;
        }
        self.stopped = Some(sink);
        Ok(())
    }

    /// Waits for every row to reach the destination, checks that every row was written, and
    /// puts the output in place (files renamed into place, all at once) or returns it. A
    /// joined writer only writes its rows back ([`Writer::sync`]) and commits nothing.
    ///
    /// # Errors
    /// [`Error::RowsMissing`] when some row was never written (nothing is committed and the
    /// temporary files are removed); the destination's errors ([`FileError::Io`],
    /// [`FileError::NoSpace`], [`FileError::PathConflict`] for a destination that became a folder).
    pub fn close(self) -> Result<Written> {
        self.close_with(&[])
    }

    /// [`Writer::close`] counting the rows of the other writers of the run as written too:
    /// `others` are their [`Writer::coverage`] bitmaps, taken after their [`Writer::sync`]
    /// (their rows are then in the files). The output is committed only when the union covers
    /// every row.
    ///
    /// # Errors
    /// As [`Writer::close`]; [`Error::ConflictingOptions`] for a bitmap of another length.
    pub fn close_with(mut self, others: &[&[u64]]) -> Result<Written> {
        self.sync()?;
        if self.joined {
            return Ok(Written {
                paths: Vec::new(),
                memory: None,
            });
        }
        let mut union = self.written.clone();
        for other in others {
            if other.len() != union.len() {
                return Err(Error::ConflictingOptions {
                    reason: format!(
                        "a coverage bitmap of {} words for an output of {} rows ({} words)",
                        other.len(),
                        self.rows,
                        union.len()
                    ),
                });
            }
            union.iter_mut().zip(*other).for_each(|(u, o)| *u |= o);
        }
        if let Some(last) = union.last_mut().filter(|_| self.rows % 64 != 0) {
            *last &= (1u64 << (self.rows % 64)) - 1;
        }
        let covered: usize = union.iter().map(|w| w.count_ones() as usize).sum();
        if covered < self.rows {
            let first = (0..self.rows)
                .filter(|&i| union[i / 64] & (1 << (i % 64)) == 0)
                .take(8)
                .collect();
            return Err(Error::RowsMissing {
                missing: self.rows - covered,
                rows: self.rows,
                first,
            });
        }
        match self.stopped.take() {
            Some(sink) => sink.commit(),
            None => Err(Error::Interrupted {
                reason: "the writer's background thread stopped".into(),
            }),
        }
    }
}

impl Drop for Writer {
    /// A writer dropped unclosed waits for its thread and removes every temporary file.
    fn drop(&mut self) {
        self.to_sink = None;
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A [`FileError::NoSpace`] of a scratch file under a temporary name, named by what the user
/// asked for (`visible`) instead: the temporary name is gone by the time the error is read.
fn named_as(e: Error, visible: &Path) -> Error {
    match e {
        Error::File(FileError::NoSpace {
            device,
            bytes,
            source,
            ..
        }) => Error::File(FileError::NoSpace {
            path: visible.to_path_buf(),
            device,
            bytes,
            source,
        }),
        other => other,
    }
}

impl Sink {
    fn create(
        destination: &Destination,
        columns: &[WriterColumn],
        rows: usize,
        row_bytes: Vec<usize>,
    ) -> Result<(Sink, Option<PathBuf>)> {
        let shape = |c: &WriterColumn| {
            let mut s = vec![rows];
            s.extend_from_slice(&c.row_shape);
            s
        };
        let mapped = |m: MappedNpy, c: &WriterColumn| {
            ColumnArray::new(&c.name, c.dtype.clone(), &c.row_shape, rows, Box::new(m))
        };
        let mut staged = Staged::new();
        let shared;
        let columns = match destination {
            Destination::Memory => {
                let cols = columns
                    .iter()
                    .zip(&row_bytes)
                    .map(|(c, &rb)| {
                        let bytes = rb.checked_mul(rows).ok_or_else(|| Error::SizeOverflow {
                            what: format!("column {}", c.name),
                        })?;
                        let buf = HostBuf::zeroed(bytes, &c.name)?;
                        ColumnArray::new(
                            &c.name,
                            c.dtype.clone(),
                            &c.row_shape,
                            rows,
                            Box::new(buf),
                        )
                    })
                    .collect::<Result<Vec<_>>>()?;
                let sink = Sink {
                    columns: cols,
                    row_bytes,
                    staged: None,
                    destination: Destination::Memory,
                };
                return Ok((sink, None));
            }
            Destination::Npy(path) => {
                let [c] = columns else {
                    return Err(Error::ConflictingOptions {
                        reason: format!(
                            "{}: a .npy file holds one array, the writer has {} columns \
                             (write a .npz or a folder)",
                            path.display(),
                            columns.len()
                        ),
                    });
                };
                let m = MappedNpy::create_staged(&mut staged, path, c.dtype.clone(), &shape(c))?;
                shared = m.temp_path().to_path_buf();
                vec![mapped(m, c)?]
            }
            Destination::Npz { path, .. } | Destination::Dir(path) => {
                for c in columns {
                    npy::check_column_name(&c.name)?;
                }
                crate::mmap::check_map_budget(columns.len() as u64)?;
                let dir = if matches!(destination, Destination::Dir(_)) {
                    staged.folder(path)?
                } else {
                    if std::fs::symlink_metadata(path).is_ok_and(|m| m.is_dir()) {
                        return Err(Error::File(FileError::PathConflict {
                            path: path.clone(),
                            reason: "is a folder; an output file cannot replace it".into(),
                        }));
                    }
                    staged.check_not_input(path)?;
                    staged.scratch_dir(path)?
                };
                shared = dir.clone();
                columns
                    .iter()
                    .map(|c| {
                        let file = dir.join(format!("{}.npy", c.name));
                        // What the user will see: the folder's file, or the archive.
                        let visible = match destination {
                            Destination::Dir(_) => path.join(format!("{}.npy", c.name)),
                            _ => path.clone(),
                        };
                        let m = MappedNpy::create_scratch(&file, c.dtype.clone(), &shape(c))
                            .map_err(|e| named_as(e, &visible))?;
                        mapped(m, c)
                    })
                    .collect::<Result<Vec<_>>>()?
            }
        };
        let sink = Sink {
            columns,
            row_bytes,
            staged: Some(staged),
            destination: destination.clone(),
        };
        Ok((sink, Some(shared)))
    }

    /// The background thread: touches the ring's blocks and hands them to the writer (their
    /// first-use page faults are paid here, not in `write`), then moves each block's rows into
    /// place and hands the block back; between blocks, while none is waiting, it faults in the
    /// destination ahead of the rows ([`Storage::fault_in`](crate::output::Storage::fault_in)).
    fn run(mut self, ring: Vec<Vec<u8>>, blocks: Receiver<Block>, free: FreeSide) -> Result<Sink> {
        for mut buf in ring {
            buf.resize(buf.capacity(), 0);
            buf.clear();
            free.give(buf);
        }
        let steps: Vec<(usize, std::ops::Range<usize>)> = (self.columns.iter().enumerate())
            .flat_map(|(c, col)| {
                let len = col.as_bytes().len();
                (0..len.div_ceil(FAULT_STEP))
                    .map(move |k| (c, k * FAULT_STEP..len.min((k + 1) * FAULT_STEP)))
            })
            .collect();
        let mut ahead = steps.into_iter();
        loop {
            match blocks.try_recv() {
                Ok(block) => self.take(block, &free),
                Err(mpsc::TryRecvError::Disconnected) => return Ok(self),
                Err(mpsc::TryRecvError::Empty) => match ahead.next() {
                    Some((c, range)) => self.columns[c].storage().fault_in(range),
                    None => break,
                },
            }
        }
        for block in blocks {
            self.take(block, &free);
        }
        Ok(self)
    }

    fn take(&mut self, block: Block, free: &FreeSide) {
        self.place(&block);
        free.give(block.buf);
    }

    fn place(&mut self, block: &Block) {
        for seg in &block.segments {
            let mut offset = seg.offset;
            for (col, &rb) in self.columns.iter_mut().zip(&self.row_bytes) {
                let src = &block.buf[offset..offset + seg.rows * rb];
                offset += seg.rows * rb;
                let dst = col.as_bytes_mut();
                if seg.at.is_empty() {
                    dst[seg.start * rb..(seg.start + seg.rows) * rb].copy_from_slice(src);
                } else {
                    // Indices were checked against the output's rows by `write_bytes`.
                    for (r, &i) in seg.at.iter().enumerate() {
                        let i = i as usize;
                        dst[i * rb..(i + 1) * rb].copy_from_slice(&src[r * rb..(r + 1) * rb]);
                    }
                }
            }
        }
    }

    fn commit(mut self) -> Result<Written> {
        for c in &mut self.columns {
            c.storage_mut().finish()?;
        }
        let Some(mut staged) = self.staged.take() else {
            return Ok(Written {
                paths: Vec::new(),
                memory: Some(Materialized::from_columns(self.columns)),
            });
        };
        if let Destination::Npz { path, compress } = &self.destination {
            let options = WriteOptions::new().compress(*compress);
            npy::stage_npz(&mut staged, path, &self.columns, &options)?;
        }
        // The maps are released before the files move.
        drop(self.columns);
        let paths = staged.commit()?;
        Ok(Written {
            paths,
            memory: None,
        })
    }
}
