//! The crate's one error type. Every failure, from bad input to a missing CUDA driver, is a
//! structured variant here; library code never panics on input.
//!
//! The variants fall into domains. Orders, streams and memory are variants of [`Error`]
//! itself; tables, their columns and typed views are [`TableError`](crate::table::TableError),
//! wrapped as [`Error::Table`]; files (reading, writing, naming, space, maps) are [`FileError`],
//! wrapped as [`Error::File`]. A distributed run's errors belong to their modules and are
//! wrapped: [`LauncherError`](crate::launcher::LauncherError) as [`Error::Launcher`] and
//! [`ShardError`](crate::shards::ShardError) as [`Error::Shard`]; so are the CUDA engine's,
//! [`CudaError`](crate::cuda::CudaError) as [`Error::Cuda`] (defined in every build: without the
//! `cuda` feature every engine call is `CudaError::NotCompiled`). Sources are typed
//! ([`std::io::Error`], a batch source's own error). The enum is matched exhaustively by the
//! Python binding, so a new variant must be given its Python exception class there.

use std::path::PathBuf;

/// Result alias used throughout the crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong in arraydrain.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    // ---- tables and their columns ------------------------------------------------------------
    /// A table, a column or a typed view is not what it must be.
    #[error(transparent)]
    Table(#[from] crate::table::TableError),

    // ---- orders and batching ------------------------------------------------------------------
    /// An explicit index is not a row of the table.
    #[error("index {index} at position {position} is out of range for a table of {rows} rows")]
    IndexOutOfBounds {
        /// The bad index.
        index: u64,
        /// Where it sits in the index list.
        position: usize,
        /// Rows in the table.
        rows: usize,
    },
    /// `batch_size` must be at least 1.
    #[error("batch_size must be at least 1")]
    ZeroBatchSize,
    /// `world_size` must be at least 1.
    #[error("world_size must be at least 1")]
    ZeroWorldSize,
    /// `world_size` is above the most ranks a run may have.
    #[error(
        "world_size {world_size} is more ranks than a run may have (at most {max}); \
         the value is wrong or was not meant for this run"
    )]
    WorldSizeTooLarge {
        /// The world size given.
        world_size: usize,
        /// The largest accepted ([`crate::sampler::MAX_WORLD_SIZE`]).
        max: usize,
    },
    /// `rank` must be below `world_size`.
    #[error("rank {rank} is not below world_size {world_size}")]
    RankOutOfRange {
        /// The rank asked for.
        rank: usize,
        /// The world size.
        world_size: usize,
    },

    // ---- distributed runs ---------------------------------------------------------------------
    /// A launcher's variables (or the explicit rank and world size) cannot place this process
    /// in a distributed run.
    #[error(transparent)]
    Launcher(#[from] crate::launcher::LauncherError),
    /// A shard folder of a distributed run cannot be written or merged.
    #[error(transparent)]
    Shard(#[from] crate::shards::ShardError),

    // ---- typed access -------------------------------------------------------------------------
    /// An element type has no arraydrain dtype, or a file declares one we do not support.
    #[error("unsupported dtype {descr:?}")]
    UnsupportedDType {
        /// The descriptor (NumPy `descr`, or a Rust type name).
        descr: String,
    },

    /// A NumPy dtype descriptor that cannot be carried: it holds Python objects, or it is not a
    /// descriptor NumPy would read (or one of the spellings arraydrain does not size).
    #[error("dtype descriptor {descr}: {reason}")]
    BadDescriptor {
        /// The descriptor's text, quoted and cut to a readable length.
        descr: String,
        /// Why it cannot be carried.
        reason: String,
    },

    // ---- streams of batches -------------------------------------------------------------------
    /// A stream of batches yielded more or fewer rows than it declared.
    #[error("the stream declared {declared} rows but yielded {got}{}", if *.more { " or more" } else { "" })]
    StreamLengthMismatch {
        /// Rows declared up front.
        declared: usize,
        /// Rows seen when the mismatch was detected.
        got: usize,
        /// True when the stream was stopped as soon as it passed the declared count.
        more: bool,
    },
    /// A batch of a stream disagrees with the first batch, or its own columns disagree.
    #[error("batch {batch}, column {column:?}: {reason}")]
    BatchMismatch {
        /// Zero-based batch number in the stream.
        batch: usize,
        /// The column concerned.
        column: String,
        /// What differs.
        reason: String,
    },
    /// An existing output does not fit the drain (columns, dtypes, row shapes or rows differ).
    #[error("output column {column:?} does not fit the drain: {reason}")]
    OutputMismatch {
        /// The column concerned.
        column: String,
        /// What differs.
        reason: String,
    },
    /// A batch source yielded an error of its own.
    #[error("batch {batch} of the source failed: {source}")]
    Source {
        /// Zero-based batch number in the stream.
        batch: usize,
        /// The source's error.
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// The strategy cannot run on this source (e.g. `Preallocated` with no declared row count).
    #[error("strategy {strategy} cannot run here: {reason}")]
    StrategyUnavailable {
        /// The strategy's name.
        strategy: &'static str,
        /// Why.
        reason: String,
    },

    // ---- memory -------------------------------------------------------------------------------
    /// An allocation of host memory failed or its size overflowed.
    #[error("cannot allocate {bytes} bytes of host memory for {what}: {reason}")]
    HostAllocation {
        /// Requested bytes (saturated at `usize::MAX` on overflow).
        bytes: u128,
        /// What the memory was for.
        what: String,
        /// The system's answer.
        reason: String,
    },

    // ---- files ----------------------------------------------------------------------------------
    /// A file cannot be read, written or named, or changed while it was read.
    #[error(transparent)]
    File(#[from] FileError),

    // ---- sizes, interruptions, options ---------------------------------------------------------
    /// A size, count or offset computed from the input does not fit the machine's integers.
    #[error("the size of {what} overflows")]
    SizeOverflow {
        /// What was being sized.
        what: String,
    },
    /// A caller's check between blocks of a write asked to stop (for example a pending
    /// Ctrl-C); nothing of the write was committed.
    #[error("interrupted: {reason}; nothing was written")]
    Interrupted {
        /// What asked to stop.
        reason: String,
    },
    /// Options that cannot be used together, or an option that cannot be used here.
    #[error("conflicting options: {reason}")]
    ConflictingOptions {
        /// Which, and why.
        reason: String,
    },

    // ---- CUDA ---------------------------------------------------------------------------------
    /// The CUDA engine cannot be used, or a CUDA call failed.
    #[error(transparent)]
    Cuda(#[from] crate::cuda::CudaError),

    // ---- writer -------------------------------------------------------------------------------
    /// A writer was closed before every row of its output was written; nothing was committed.
    #[error(
        "{missing} of {rows} rows were never written (the first: {first:?}); nothing was committed"
    )]
    RowsMissing {
        /// Rows never written.
        missing: usize,
        /// Rows of the output.
        rows: usize,
        /// The first missing rows, in order (a few).
        first: Vec<usize>,
    },
}

impl Error {
    #[allow(dead_code)] // used by the file readers
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::File(FileError::Io {
            path: path.into(),
            source,
        })
    }

    pub(crate) fn alloc(
        bytes: impl TryInto<u128>,
        what: impl Into<String>,
        reason: impl ToString,
    ) -> Self {
        Error::HostAllocation {
            bytes: bytes.try_into().unwrap_or(u128::MAX),
            what: what.into(),
            reason: reason.to_string(),
        }
    }
}

/// Files: reading, writing, naming and mapping them; wrapped by [`Error::File`].
#[derive(Debug, thiserror::Error)]
pub enum FileError {
    /// An I/O error on a named file.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// A file is not a valid or supported NumPy file.
    #[error("{}: {reason}", path.display())]
    BadFile {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// A column name cannot be used as a file name (it comes from an input, so it is refused
    /// rather than rewritten).
    #[error("column name {name:?} cannot name a file: {reason}")]
    UnsafeName {
        /// The name.
        name: String,
        /// Why not.
        reason: String,
    },
    /// An output path of a run names one of its inputs, another of its outputs, or something
    /// an output file cannot replace (a folder).
    #[error("{}: {reason}", path.display())]
    PathConflict {
        /// The output path.
        path: PathBuf,
        /// What it collides with.
        reason: String,
    },
    /// The file system has no room for a file (or the process may not write one that large).
    #[error("not enough space on {device} for {bytes} bytes ({}: {source})", path.display())]
    NoSpace {
        /// The file being written.
        path: PathBuf,
        /// The file system (device and mount point) it is on.
        device: String,
        /// The bytes that were to be reserved or written.
        bytes: u64,
        /// The system's answer (ENOSPC, EDQUOT or EFBIG).
        source: std::io::Error,
    },
    /// An input file was truncated or rewritten while it was being read through its map.
    #[error("{} changed while being read ({reason}); the output was discarded", path.display())]
    FileChanged {
        /// The input file.
        path: PathBuf,
        /// What was seen.
        reason: String,
    },
    /// The handler that turns a fault in a file map into an error cannot be installed.
    #[error("cannot install the {signal} handler: {source}")]
    SignalHandler {
        /// The signal.
        signal: &'static str,
        /// The system's error.
        source: std::io::Error,
    },
    /// More memory maps are needed than the kernel allows one process.
    #[error(
        "{needed} memory maps are needed but vm.max_map_count allows {limit} ({in_use} in use); \
         raise it (sysctl vm.max_map_count) or drain without --mmap"
    )]
    MapLimit {
        /// Maps this run would add.
        needed: u64,
        /// `/proc/sys/vm/max_map_count`.
        limit: u64,
        /// Maps the process already has.
        in_use: u64,
    },
}
