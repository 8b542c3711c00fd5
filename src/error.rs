//! The crate's one error type. Every failure, from bad input to a missing CUDA driver, is a
//! structured variant here; library code never panics on input.

use std::path::PathBuf;

use crate::dtype::DType;

/// Result alias used throughout the crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong in arraydrain.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    // ---- table construction -------------------------------------------------------------------
    /// A table needs at least one column.
    #[error("a table needs at least one column")]
    EmptyTable,
    /// Two columns share a name.
    #[error("duplicate column name {name:?}")]
    DuplicateColumn {
        /// The repeated name.
        name: String,
    },
    /// A column was asked for by a name the table or output does not have.
    #[error("unknown column {name:?} (available: {available:?})")]
    UnknownColumn {
        /// The requested name.
        name: String,
        /// The names that exist.
        available: Vec<String>,
    },
    /// Columns of one table must share a row count.
    #[error("column {column:?} has {got} rows but the table has {expected}")]
    RowCountMismatch {
        /// The offending column.
        column: String,
        /// Rows of the first column.
        expected: usize,
        /// Rows of this column.
        got: usize,
    },
    /// A column array must have a first (row) axis.
    #[error("column {column:?} is a 0-dimensional array; a column needs a first axis of rows")]
    NoRowAxis {
        /// The offending column.
        column: String,
    },
    /// Raw column bytes do not match the declared dtype, row shape and row count.
    #[error(
        "column {column:?}: expected {expected} bytes for its rows, dtype and row shape, got {got}"
    )]
    ByteLengthMismatch {
        /// The offending column.
        column: String,
        /// Bytes implied by rows × row bytes.
        expected: usize,
        /// Bytes supplied.
        got: usize,
    },

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
    /// `--distributed` found no launcher's variables in the environment.
    #[error(
        "no launcher detected: none of {} is set; run under torchrun, srun or mpirun, or pass \
         --rank and --world-size",
        looked_for.join("; ")
    )]
    LauncherNotDetected {
        /// The variables looked for, one entry per launcher.
        looked_for: Vec<String>,
    },
    /// A launcher's rank or world-size variable is missing while others of its set are there.
    #[error("{launcher}: {} set but {} missing", set.join(", "), missing.join(", "))]
    LauncherIncomplete {
        /// The launcher (`torchrun`, `slurm`, `openmpi`, `mpich`, or `explicit` for the flags).
        launcher: &'static str,
        /// The variables (or flags) that are set.
        set: Vec<String>,
        /// The ones that are missing.
        missing: Vec<String>,
    },
    /// A launcher variable does not hold what it should.
    #[error("{name}={value:?}: {reason}")]
    LauncherVariable {
        /// The variable.
        name: String,
        /// Its value.
        value: String,
        /// What is wrong with it.
        reason: String,
    },
    /// Launcher variables contradict each other.
    #[error("{launcher}: {} — {reason}", variables.iter().map(|(n, v)| format!("{n}={v}")).collect::<Vec<_>>().join(", "))]
    LauncherContradiction {
        /// The launcher (`torchrun`, `slurm`, `openmpi`, `mpich`, `mpi` for Open MPI against
        /// MPICH, `cuda` for the device).
        launcher: &'static str,
        /// The variables concerned, with their values.
        variables: Vec<(String, String)>,
        /// How they contradict each other.
        reason: String,
    },

    /// Options that do not go together.
    #[error("{option}: {reason}")]
    OptionConflict {
        /// The option concerned.
        option: &'static str,
        /// Why.
        reason: String,
    },
    /// A distributed run's output folder already holds this rank's part, or another run.
    #[error("{} already exists: {reason}", path.display())]
    ShardExists {
        /// The part folder or manifest.
        path: PathBuf,
        /// Whose it is, and what to do.
        reason: String,
    },
    /// A shard folder's manifest cannot be used.
    #[error("{}: not a usable shard manifest: {reason}", path.display())]
    ManifestInvalid {
        /// The manifest.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// A shard folder is incomplete, corrupt or mixed with another run.
    #[error("{}: the shards do not match the manifest:\n  {}", dir.display(), issues.iter().map(ToString::to_string).collect::<Vec<_>>().join("\n  "))]
    ShardSetInvalid {
        /// The shard folder.
        dir: PathBuf,
        /// Every problem found.
        issues: Vec<crate::shards::ShardIssue>,
    },

    // ---- typed access -------------------------------------------------------------------------
    /// A column was read as a Rust type that does not match its dtype.
    #[error(
        "column {column:?} holds {actual}, not {requested}{}",
        if actual.is_opaque() {
            " (an opaque dtype is read as raw row bytes with its descriptor, never through a \
             typed view; a big-endian column keeps its byte order)"
        } else {
            ""
        }
    )]
    DTypeMismatch {
        /// The column.
        column: String,
        /// Its dtype.
        actual: DType,
        /// The dtype of the Rust type asked for.
        requested: DType,
    },
    /// A column's storage is not aligned or sized for its element type (a storage bug).
    #[error("column {column:?}: storage does not fit its dtype and shape: {reason}")]
    Misaligned {
        /// The column.
        column: String,
        /// What bytemuck or ndarray reported.
        reason: String,
    },
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

    // ---- files --------------------------------------------------------------------------------
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

    // ---- file safety: names, paths, space, faults ----------------------------------------------
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
    /// Options that cannot be used together.
    #[error("conflicting options: {reason}")]
    ConflictingOptions {
        /// Which, and why.
        reason: String,
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

    // ---- CUDA ---------------------------------------------------------------------------------
    /// The crate was built without the `cuda` feature.
    #[error("CUDA support was not compiled in (build with the `cuda` feature)")]
    CudaNotCompiled,
    /// CUDA cannot be used on this machine: no driver library, no device, or too old a driver.
    #[error("CUDA is unavailable: {reason}")]
    CudaUnavailable {
        /// Why.
        reason: String,
    },
    /// A CUDA driver call failed.
    #[error("CUDA error during {context}: {message}")]
    Cuda {
        /// What was being done.
        context: String,
        /// The driver's message.
        message: String,
    },
    /// Kernel compilation with NVRTC failed.
    #[error("kernel compilation failed: {log}")]
    KernelCompile {
        /// The NVRTC log.
        log: String,
    },
    /// Not enough device memory for a buffer.
    #[error("not enough device memory: {bytes} bytes for {what}")]
    DeviceOutOfMemory {
        /// Requested bytes.
        bytes: u64,
        /// What the memory was for.
        what: String,
    },
    /// A device column the engine cannot order its own work after: made in a non-primary
    /// context or another context than the engine's, or on the per-thread default stream (whose
    /// handle means "this thread's stream" to whichever thread uses it, so the engine cannot
    /// wait for the producer's work).
    #[error("device column {column:?} cannot be used by the engine: {reason}")]
    UnorderableColumn {
        /// The column.
        column: String,
        /// Why.
        reason: String,
    },
    /// A device buffer belongs to another device than the engine's.
    #[error("a buffer of device {got} was given to the engine of device {expected}")]
    WrongDevice {
        /// The engine's ordinal.
        expected: usize,
        /// The buffer's ordinal.
        got: usize,
    },

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
        Error::Io {
            path: path.into(),
            source,
        }
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
