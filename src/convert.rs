//! `arraydrain convert`: NumPy files in, drained and reordered NumPy files out — the loader's
//! options over a table read from `.npy` / `.npz` inputs, written as one `.npz` or a folder of
//! `.npy` files. Library code, so the command line is a thin call to [`run`].
//!
//! Every file of a run (the outputs and the `--save-order` file) is written under a temporary
//! name in its destination folder and all are renamed into place only when all are complete
//! (see [`crate::fsafe`]); a failed run removes everything it created. Before anything is
//! written, output paths that name an input or another output of the run are refused, and
//! after the drain every mapped input is checked to be unchanged ([`crate::mmap`]). With
//! `--mmap` (or when the output would not fit comfortably in the memory this process may use)
//! the drain writes straight into memory-mapped `.npy` files
//! ([`MappedNpy`](crate::npy::MappedNpy)) whose space is reserved first, so outputs larger than
//! RAM work; for `--out X.npz` those files are made in a private scratch folder beside the
//! archive and streamed into it.

use std::collections::HashMap;
use std::fmt;
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::cuda::{CudaEngine, DeviceTable};
use crate::error::{Error, FileError, Result};
use crate::fsafe::{file_id, normalized, Staged};
use crate::gather::Strategy;
use crate::loader::Loader;
use crate::loader::OutputSpec;
use crate::npy::{self, MappedIn, WriteOptions};
use crate::output::{Backend, Materialized};
use crate::table::Table;

/// Which backend drains.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Device {
    /// CUDA when a device is usable, else the CPU.
    #[default]
    Auto,
    /// Host threads.
    Cpu,
    /// The CUDA engine (an error when it cannot be used).
    Cuda,
}

/// A phase of a conversion, as reported to [`ConvertOptions::progress`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Rows gathered and written to the output files in one pass.
    DrainAndWrite,
    /// Rows gathered into the output (in memory or memory-mapped files).
    Drain,
    /// The output written to its files.
    Write,
}

impl Phase {
    /// A short label: `drain + write`, `drain`, `write`.
    pub fn label(self) -> &'static str {
        match self {
            Phase::DrainAndWrite => "drain + write",
            Phase::Drain => "drain",
            Phase::Write => "write",
        }
    }
}

/// Where a conversion is: reported at the start of each phase (`bytes_done` 0) and as it goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Progress {
    /// The phase running.
    pub phase: Phase,
    /// Output bytes done in this phase.
    pub bytes_done: u64,
    /// Output bytes of the whole output.
    pub bytes_total: u64,
    /// Rows gathered so far, when the phase counts rows ([`Phase::Drain`]).
    pub rows_done: Option<usize>,
    /// Output rows.
    pub rows_total: usize,
}

/// A progress callback: called from the threads that do the work.
pub type ProgressFn = Arc<dyn Fn(&Progress) + Send + Sync>;

/// What a conversion reads, how it orders and batches the rows, and what it writes (the options
/// of `arraydrain convert`). [`ConvertOptions::new`] gives the defaults.
#[derive(Clone)]
pub struct ConvertOptions {
    /// Input `.npy` files (column = file stem) and/or `.npz` archives (column = member name).
    pub inputs: Vec<PathBuf>,
    /// Write one `.npz` archive (one member per column). Exactly one of `out` / `out_dir`.
    pub out: Option<PathBuf>,
    /// Write a folder of `.npy` files (one per column).
    pub out_dir: Option<PathBuf>,
    /// Deflate the `.npz` members (as `numpy.savez_compressed`); only with `out`.
    pub compress: bool,
    /// Rows per batch.
    pub batch: usize,
    /// Shuffle the rows (seeded; the same seed gives the same order everywhere).
    pub shuffle: bool,
    /// Seed of the shuffle.
    pub seed: u64,
    /// An explicit order: a 1-D int64/uint64/int32 `.npy` of row indices.
    pub indices: Option<PathBuf>,
    /// This process's rank (with `world_size`): PyTorch `DistributedSampler` sharding.
    pub rank: Option<usize>,
    /// Number of ranks (with `rank`).
    pub world_size: Option<usize>,
    /// Drop a short last batch (as PyTorch's `DataLoader(drop_last=True)`).
    pub drop_last: bool,
    /// Sharded: cut the order to an even split across ranks instead of padding it by repeating
    /// rows (as PyTorch's `DistributedSampler(drop_last=True)`).
    pub shard_drop_last: bool,
    /// The strategy.
    pub strategy: Strategy,
    /// The backend.
    pub device: Device,
    /// Keep only these columns, in this order.
    pub columns: Option<Vec<String>>,
    /// Drain into memory-mapped `.npy` files (outputs larger than RAM). Chosen automatically
    /// when the output would take more than half of the available memory.
    pub mmap: bool,
    /// Write the output's row order (the index of each output row in the input) here, as an
    /// int64 `.npy`.
    pub save_order: Option<PathBuf>,
    /// Called as the conversion progresses (none: nothing is reported).
    pub progress: Option<ProgressFn>,
}

impl ConvertOptions {
    /// The defaults for `inputs`: no output chosen yet, batches of 256, the sequential order,
    /// strategy and device `Auto`.
    pub fn new(inputs: Vec<PathBuf>) -> ConvertOptions {
        ConvertOptions {
            inputs,
            out: None,
            out_dir: None,
            compress: false,
            batch: 256,
            shuffle: false,
            seed: 0,
            indices: None,
            rank: None,
            world_size: None,
            drop_last: false,
            shard_drop_last: false,
            strategy: Strategy::Auto,
            device: Device::Auto,
            columns: None,
            mmap: false,
            save_order: None,
            progress: None,
        }
    }

    /// Reports `phase` at `bytes_done` of `bytes_total` to the progress callback, if any.
    fn report(&self, phase: Phase, bytes_done: u64, total: (u64, usize), rows_done: Option<usize>) {
        if let Some(f) = &self.progress {
            f(&Progress {
                phase,
                bytes_done,
                bytes_total: total.0,
                rows_done,
                rows_total: total.1,
            });
        }
    }
}

impl fmt::Debug for ConvertOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConvertOptions")
            .field("inputs", &self.inputs)
            .field("out", &self.out)
            .field("out_dir", &self.out_dir)
            .field("compress", &self.compress)
            .field("batch", &self.batch)
            .field("shuffle", &self.shuffle)
            .field("seed", &self.seed)
            .field("indices", &self.indices)
            .field("rank", &self.rank)
            .field("world_size", &self.world_size)
            .field("drop_last", &self.drop_last)
            .field("shard_drop_last", &self.shard_drop_last)
            .field("strategy", &self.strategy)
            .field("device", &self.device)
            .field("columns", &self.columns)
            .field("mmap", &self.mmap)
            .field("save_order", &self.save_order)
            .field("progress", &self.progress.as_ref().map(|_| "callback"))
            .finish()
    }
}

/// What a conversion did.
#[derive(Debug, Clone)]
pub struct ConvertSummary {
    /// Output rows.
    pub rows: usize,
    /// Output bytes (array data, all columns).
    pub bytes: u64,
    /// Wall time of the whole conversion.
    pub elapsed: Duration,
    /// Time of the drain (reading and gathering into the output).
    pub drain: Duration,
    /// Time of writing the output files (for a mapped output, packing and renaming).
    pub write: Duration,
    /// The strategy that ran.
    pub strategy: Strategy,
    /// The backend that ran it.
    pub backend: Backend,
    /// Whether the drain wrote into memory-mapped files.
    pub mapped: bool,
    /// Whether rows were gathered block by block straight into the output files (no output in
    /// memory; `drain` then covers writing too).
    pub streamed: bool,
    /// The files written.
    pub outputs: Vec<PathBuf>,
    /// With `--distributed`: where this process sat in the run.
    pub placement: Option<crate::launcher::Placement>,
}

impl fmt::Display for ConvertSummary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let secs = self.elapsed.as_secs_f64();
        let gbps = if secs > 0.0 {
            self.bytes as f64 / secs / 1e9
        } else {
            0.0
        };
        let target = match self.outputs.as_slice() {
            [one] => one.display().to_string(),
            many => format!("{} files", many.len()),
        };
        let phases = if self.streamed {
            "gathered and written in one pass".to_string()
        } else {
            format!(
                "drain {:.3} s, write {:.3} s",
                self.drain.as_secs_f64(),
                self.write.as_secs_f64()
            )
        };
        if let Some(p) = &self.placement {
            write!(f, "rank {} of {}: ", p.rank, p.world_size)?;
        }
        write!(
            f,
            "{} rows, {:.1} MB in {:.3} s ({:.2} GB/s; {phases}), strategy {}, backend {}{} -> {}",
            self.rows,
            self.bytes as f64 / 1e6,
            secs,
            gbps,
            self.strategy,
            self.backend.name(),
            if self.mapped { ", memory-mapped" } else { "" },
            target
        )
    }
}

/// Runs a conversion: reads the inputs, drains them with the loader's options, writes the
/// output.
///
/// With strategy `Auto` on the CPU and no memory-mapped output, rows are gathered a few MiB
/// at a time and written as they go ([`npy::drain_to_npz`]), so the output never exists in
/// memory; any other strategy materializes the output first and then writes it. One rank of a
/// distributed run is [`crate::shards::convert_distributed`].
///
/// ```
/// # let dir = std::env::temp_dir().join(format!("arraydrain-doc-convert-{}", std::process::id()));
/// # std::fs::create_dir_all(&dir)?;
/// use arraydrain::convert::{self, ConvertOptions};
/// use arraydrain::{npy, ColumnArray};
/// use ndarray::Array2;
///
/// let x = ColumnArray::from_array("x", Array2::from_shape_fn((100, 4), |(i, j)| (i * 4 + j) as f32))?;
/// npy::write_npy(dir.join("x.npy"), &x)?;
/// let mut options = ConvertOptions::new(vec![dir.join("x.npy")]);
/// options.out = Some(dir.join("out.npz"));
/// options.shuffle = true;
/// options.seed = 3;
/// options.batch = 32;
/// let summary = convert::run(&options)?;
/// assert_eq!(summary.rows, 100);
/// println!("{summary}"); // 100 rows, 0.0 MB in 0.001 s (… GB/s; …), strategy preallocated, backend cpu -> …
/// # std::fs::remove_dir_all(&dir)?;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
///
/// # Errors
/// Every failure as an [`Error`]: unreadable or invalid inputs ([`FileError::Io`],
/// [`FileError::BadFile`] naming the file), bad options ([`Error::ZeroBatchSize`],
/// [`Error::RankOutOfRange`], [`Error::IndexOutOfBounds`], [`TableError::UnknownColumn`](crate::TableError::UnknownColumn),
/// [`Error::ConflictingOptions`] without exactly one output), an unavailable strategy or
/// backend, and output I/O errors. No output file is left behind.
pub fn run(options: &ConvertOptions) -> Result<ConvertSummary> {
    run_on(options, 0, None)
}

/// What a run reads, read once by a caller that needs it first (`convert --distributed`
/// fingerprints the inputs from the same maps the drain then reads).
pub struct RunInput {
    /// The inputs' table (the `columns` selection applied or not: it is applied again).
    pub table: Table<'static>,
    /// The `indices` order, when given.
    pub indices: Option<Vec<u64>>,
}

/// The one output of a run.
#[derive(Clone, Copy)]
enum Target<'a> {
    /// One `.npz` archive.
    Npz(&'a Path),
    /// A folder of `.npy` files.
    Dir(&'a Path),
}

impl<'a> Target<'a> {
    fn of(options: &'a ConvertOptions) -> Result<Target<'a>> {
        match (&options.out, &options.out_dir) {
            (Some(path), None) => Ok(Target::Npz(path)),
            (None, Some(dir)) => Ok(Target::Dir(dir)),
            _ => Err(Error::ConflictingOptions {
                reason: "convert writes one output: --out OUT.npz or --out-dir DIR".into(),
            }),
        }
    }
}

/// [`run`] on CUDA device `ordinal` when CUDA drains, over `input` when the caller read it
/// already (the building block of [`crate::shards::convert_distributed`]).
///
/// # Errors
/// As [`run`].
pub fn run_on(
    options: &ConvertOptions,
    ordinal: usize,
    input: Option<RunInput>,
) -> Result<ConvertSummary> {
    let started = Instant::now();
    let target = Target::of(options)?;
    if options.compress && options.out.is_none() {
        return Err(Error::ConflictingOptions {
            reason: "--compress deflates the members of an --out archive; .npy files in \
                     --out-dir are never compressed"
                .into(),
        });
    }
    // A truncated input then reads as zeros and is reported before anything is kept.
    crate::mmap::catch_input_faults()?;
    let (mut table, indices) = match input {
        Some(RunInput { table, indices }) => (table, indices),
        None => (npy::read_table(&options.inputs)?, None),
    };
    if let Some(names) = &options.columns {
        let names: Vec<&str> = names.iter().map(String::as_str).collect();
        table = table.select(&names)?;
    }
    let mut loader = ordered_loader(options, &table, indices)?;
    let specs = loader.output_specs()?;
    let (rows, bytes) = output_size(&specs)?;
    check_output_paths(options, &specs)?;
    let engine = open_engine(options.device, ordinal, &table)?;
    let backend = if engine.is_some() {
        Backend::Cuda
    } else {
        Backend::Cpu
    };
    let mapped = choose_mapped(options, backend, bytes)?;

    // Everything the run writes, put in place together at the end (or removed on failure).
    let mut staged = Staged::new();
    // The order file is staged first, so that an unwritable destination fails the run before
    // any work is done.
    let order_file = match &options.save_order {
        Some(path) => Some((path.as_path(), staged.file(path)?.1)),
        None => None,
    };
    let total = (bytes, rows);
    let summary = |drain, write, strategy, streamed, outputs| ConvertSummary {
        rows,
        bytes,
        elapsed: started.elapsed(),
        drain,
        write,
        strategy,
        backend,
        mapped,
        streamed,
        outputs,
        placement: None,
    };
    if !mapped && engine.is_none() && options.strategy == Strategy::Auto {
        // The fastest CPU path: gather a few MiB at a time and write as it goes, so the
        // output never exists in memory (and a sequential order is written from the input's
        // pages directly).
        let report = drain_and_write(options, &loader, target, &mut staged, total)?;
        let outputs = finish(staged, order_file, &loader, &options.inputs)?;
        return Ok(summary(
            report.elapsed,
            Duration::ZERO,
            report.strategy,
            true,
            outputs,
        ));
    }
    if let Some(f) = options.progress.clone() {
        loader = loader.on_progress(move |rows_done, bytes_done| {
            f(&Progress {
                phase: Phase::Drain,
                bytes_done,
                bytes_total: bytes,
                rows_done: Some(rows_done),
                rows_total: rows,
            })
        });
    }
    options.report(Phase::Drain, 0, total, None);
    let drain_started = Instant::now();
    let drained = drain_output(
        &loader,
        engine.as_ref(),
        options,
        target,
        &specs,
        mapped,
        &mut staged,
    )?;
    let drain = drain_started.elapsed();

    let write_started = Instant::now();
    options.report(Phase::Write, 0, total, None);
    write_output(options, target, &drained, &mut staged, total)?;
    let strategy = drained.strategy;
    drop(drained);
    let outputs = finish(staged, order_file, &loader, &options.inputs)?;
    Ok(summary(
        drain,
        write_started.elapsed(),
        strategy,
        false,
        outputs,
    ))
}

/// The loader of `table` with the options' batching, order and shard; the order is resolved
/// here (the loader keeps it), so that an index out of range names its file.
fn ordered_loader<'t>(
    options: &ConvertOptions,
    table: &'t Table<'static>,
    mut indices: Option<Vec<u64>>,
) -> Result<Loader<'t, 'static>> {
    let mut loader = Loader::new(table)
        .batch_size(options.batch)
        .drop_last(options.drop_last)
        .shard_drop_last(options.shard_drop_last);
    check_index_memory(options, table.rows())?;
    if options.shuffle {
        loader = loader.shuffle(options.seed);
    }
    if let Some(path) = &options.indices {
        let list = match indices.take() {
            Some(list) => list,
            None => npy::read_indices(path)?,
        };
        loader = loader.indices(list);
    }
    if let (Some(rank), Some(world)) = (options.rank, options.world_size) {
        loader = loader.shard(rank, world);
    }
    loader.batches().map_err(|e| match (&e, &options.indices) {
        (Error::IndexOutOfBounds { .. }, Some(path)) => Error::File(FileError::BadFile {
            path: path.clone(),
            reason: e.to_string(),
        }),
        _ => e,
    })?;
    Ok(loader)
}

/// The output's rows and bytes (all columns).
fn output_size(specs: &[OutputSpec]) -> Result<(usize, u64)> {
    let rows = specs.first().map_or(0, |s| s.rows);
    let bytes = specs.iter().try_fold(0u64, |sum, s| {
        sum.checked_add(s.bytes()? as u64)
            .ok_or_else(|| Error::SizeOverflow {
                what: "the output".into(),
            })
    })?;
    Ok((rows, bytes))
}

/// Whether the drain writes into memory-mapped files: when asked, or when the output would not
/// fit comfortably in memory and the strategy fills its output in place (the preallocated
/// gather on the CPU, the staged pinned pipeline on CUDA).
fn choose_mapped(options: &ConvertOptions, backend: Backend, bytes: u64) -> Result<bool> {
    let fills_in_place = match options.strategy {
        Strategy::Auto | Strategy::Preallocated => true,
        Strategy::Pinned => backend == Backend::Cuda,
        _ => false,
    };
    let mapped = options.mmap || (fills_in_place && !fits_in_memory(bytes));
    if mapped && !fills_in_place {
        return Err(Error::StrategyUnavailable {
            strategy: options.strategy.name(),
            reason: "--mmap fills the mapped files in place: use --strategy auto or \
                     preallocated (or pinned on CUDA)"
                .into(),
        });
    }
    Ok(mapped)
}

/// The streamed CPU path: rows gathered block by block straight into the staged output files.
fn drain_and_write(
    options: &ConvertOptions,
    loader: &Loader<'_, '_>,
    target: Target<'_>,
    staged: &mut Staged,
    total: (u64, usize),
) -> Result<crate::Report> {
    options.report(Phase::DrainAndWrite, 0, total, None);
    let write_options = {
        let f = options.progress.clone();
        WriteOptions::new()
            .compress(options.compress)
            .on_progress(move |done| {
                if let Some(f) = &f {
                    f(&Progress {
                        phase: Phase::DrainAndWrite,
                        bytes_done: done,
                        bytes_total: total.0,
                        rows_done: None,
                        rows_total: total.1,
                    })
                }
            })
    };
    match target {
        Target::Dir(dir) => npy::stage_drain_npy_dir(staged, loader, dir, &write_options),
        Target::Npz(path) => npy::stage_drain_npz(staged, loader, path, &write_options),
    }
}

/// A drained output: in memory, or in memory-mapped files (staged outputs, or files of a
/// private scratch folder to be packed into the `.npz`).
struct Drained {
    out: Materialized,
    strategy: Strategy,
    mapped: bool,
    /// For an `.npz` target with a mapped output: the scratch folder holding the mapped files
    /// until they are packed (removed with the staged set, whatever happens).
    scratch: Option<PathBuf>,
}

/// Drains the loader's order into memory or into mapped files, on the engine or the CPU.
fn drain_output(
    loader: &Loader<'_, '_>,
    engine: Option<&(CudaEngine, DeviceTable)>,
    options: &ConvertOptions,
    target: Target<'_>,
    specs: &[OutputSpec],
    mapped: bool,
    staged: &mut Staged,
) -> Result<Drained> {
    if !mapped {
        let out = match engine {
            Some((engine, dev)) => engine.materialize(dev, &loader.batches()?, options.strategy)?,
            None => loader.materialize(options.strategy)?,
        };
        let strategy = out.report().strategy;
        return Ok(Drained {
            out,
            strategy,
            mapped,
            scratch: None,
        });
    }
    let mut scratch = None;
    let mut out = match target {
        Target::Dir(dir) => npy::stage_mapped_output(MappedIn::Staged(staged, dir), specs)?,
        Target::Npz(path) => {
            let dir = staged.scratch_dir(path)?;
            let files = npy::stage_mapped_output(MappedIn::Scratch(&dir), specs)?;
            scratch = Some(dir);
            files
        }
    };
    let report = match engine {
        Some((engine, dev)) => engine.materialize_into(dev, &loader.batches()?, &mut out)?,
        None => loader.materialize_into(&mut out)?,
    };
    Ok(Drained {
        out,
        strategy: report.strategy,
        mapped,
        scratch,
    })
}

/// Writes every staged file but the order file, checks that no input changed while it was read,
/// and puts every staged file in place; returns the output files (without the order file).
fn finish(
    staged: Staged,
    order_file: Option<(&Path, File)>,
    loader: &Loader<'_, '_>,
    inputs: &[PathBuf],
) -> Result<Vec<PathBuf>> {
    let order_path = order_file.as_ref().map(|(p, _)| p.to_path_buf());
    if let Some((path, file)) = order_file {
        write_order(path, file, loader)?;
    }
    crate::mmap::verify_inputs(inputs)?;
    let mut outputs = staged.commit()?;
    outputs.retain(|p| Some(p) != order_path.as_ref());
    Ok(outputs)
}

/// Writes a drained output to its staged files (a mapped `--out-dir` output is its files
/// already).
fn write_output(
    options: &ConvertOptions,
    target: Target<'_>,
    drained: &Drained,
    staged: &mut Staged,
    total: (u64, usize),
) -> Result<()> {
    let write_options = || {
        let f = options.progress.clone();
        WriteOptions::new().on_progress(move |done| {
            if let Some(f) = &f {
                f(&Progress {
                    phase: Phase::Write,
                    bytes_done: done,
                    bytes_total: total.0,
                    rows_done: None,
                    rows_total: total.1,
                })
            }
        })
    };
    let out = &drained.out;
    match target {
        // The mapped files are the staged outputs already.
        Target::Dir(_) if drained.mapped => Ok(()),
        Target::Dir(dir) => {
            npy::stage_npy_dir(staged, dir, out.columns(), &write_options()).map(drop)
        }
        Target::Npz(path) => {
            let write_options = write_options().compress(options.compress);
            if let Some(dir) = &drained.scratch {
                // The mapped files are complete (written back) in the scratch folder.
                let files: Vec<(String, PathBuf)> = out
                    .columns()
                    .iter()
                    .map(|c| (c.name().to_string(), dir.join(format!("{}.npy", c.name()))))
                    .collect();
                npy::pack_npz(staged, path, &files, &write_options)
            } else {
                npy::stage_npz(staged, path, out.columns(), &write_options)
            }
        }
    }
}

/// Writes the output's row order as an int64 `.npy` into `file` (staged for `path`), streamed
/// from the index list: no copy of the order is made in memory.
fn write_order(path: &Path, file: File, loader: &Loader<'_, '_>) -> Result<()> {
    let batches = loader.batches()?;
    let rows = batches.rows();
    let header = npy::NpyHeader::encode(&crate::DType::I64, &[rows])?;
    let total = rows
        .checked_mul(8)
        .and_then(|b| b.checked_add(header.len()))
        .ok_or_else(|| Error::SizeOverflow {
            what: format!("the order file {} ({rows} rows)", path.display()),
        })? as u64;
    let no_room = |e| crate::fsafe::write_error(path, e, total);
    let mut w = std::io::BufWriter::with_capacity(1 << 20, file);
    w.write_all(&header).map_err(no_room)?;
    let order = batches.indices();
    let mut chunk = Vec::with_capacity(8 << 10);
    let mut at = 0;
    while at < rows {
        let end = (at + 1024).min(rows);
        chunk.clear();
        for i in at..end {
            // Entries were validated against the table's row count, which fits an i64 file
            // (a file of more rows could not have been read).
            let v = order.get(i).unwrap_or(0) as i64;
            chunk.extend_from_slice(&v.to_le_bytes());
        }
        w.write_all(&chunk).map_err(no_room)?;
        at = end;
    }
    w.flush().map_err(no_room)
}

/// Refuses a shuffle or shard whose index lists (8 bytes an entry) cannot fit in the memory
/// this process may use, before they are built.
fn check_index_memory(args: &ConvertOptions, rows: usize) -> Result<()> {
    let shuffled = if args.shuffle { rows } else { 0 };
    let sharded = match args.world_size {
        Some(world) if world > 0 => rows.div_ceil(world),
        _ => 0,
    };
    let what = format!("the index list of an order of {rows} rows");
    let bytes = shuffled
        .checked_add(sharded)
        .and_then(|n| n.checked_mul(8))
        .ok_or_else(|| Error::SizeOverflow { what: what.clone() })?;
    match crate::sysmem::available_bytes() {
        Some(avail) if bytes as u64 > avail => Err(Error::HostAllocation {
            bytes: bytes as u128,
            what,
            reason: format!("only {avail} bytes of memory are available to this process"),
        }),
        _ => Ok(()),
    }
}

/// The output files a run will write (with the option that names each).
fn planned_outputs(args: &ConvertOptions, specs: &[OutputSpec]) -> Vec<(PathBuf, String)> {
    let mut out = Vec::new();
    if let Some(path) = &args.out {
        out.push((path.clone(), "--out".to_string()));
    }
    if let Some(dir) = &args.out_dir {
        for s in specs {
            out.push((
                dir.join(format!("{}.npy", s.name)),
                format!("column {:?} in --out-dir", s.name),
            ));
        }
    }
    if let Some(path) = &args.save_order {
        out.push((path.clone(), "--save-order".to_string()));
    }
    out
}

/// Refuses output paths that name an input (the same file, by path or by device and inode:
/// links count) or another output of the same run.
fn check_output_paths(args: &ConvertOptions, specs: &[OutputSpec]) -> Result<()> {
    let inputs: Vec<&PathBuf> = args.inputs.iter().chain(&args.indices).collect();
    let input_ids: Vec<_> = inputs
        .iter()
        .map(|p| (file_id(p), normalized(p), *p))
        .collect();
    let outputs = planned_outputs(args, specs);
    let mut seen: HashMap<PathBuf, &str> = HashMap::with_capacity(outputs.len());
    for (path, role) in &outputs {
        let key = normalized(path);
        let id = file_id(path);
        if let Some((_, _, input)) = input_ids
            .iter()
            .find(|(iid, ikey, _)| *ikey == key || (id.is_some() && *iid == id))
        {
            return Err(Error::File(FileError::PathConflict {
                path: path.clone(),
                reason: format!(
                    "{role} names the input {}; an output never replaces an input",
                    input.display()
                ),
            }));
        }
        if let Some(other) = seen.get(&key) {
            return Err(Error::File(FileError::PathConflict {
                path: path.clone(),
                reason: format!("{role} names the same file as {other}"),
            }));
        }
        seen.insert(key, role);
    }
    Ok(())
}

/// The CUDA engine and the table uploaded to it, or `None` for the CPU: `cpu` never opens
/// CUDA, `cuda` fails when it cannot be used, `auto` uses it when it can and falls back to the
/// CPU otherwise (no driver, no device, a build without the `cuda` feature, a table too large
/// for the device).
fn open_engine(
    device: Device,
    ordinal: usize,
    table: &Table<'_>,
) -> Result<Option<(CudaEngine, DeviceTable)>> {
    let open = || -> Result<(CudaEngine, DeviceTable)> {
        let engine = CudaEngine::new(ordinal)?;
        let dev = engine.upload(table)?;
        Ok((engine, dev))
    };
    match device {
        Device::Cpu => Ok(None),
        Device::Cuda => open().map(Some),
        Device::Auto => Ok(open().ok()),
    }
}

/// Whether `bytes` fit comfortably (in half of the memory available to this process: the smaller
/// of `MemAvailable` and the cgroup's free room, see [`crate::sysmem`]); true when unknown.
fn fits_in_memory(bytes: u64) -> bool {
    crate::sysmem::available_bytes().is_none_or(|avail| bytes <= avail / 2)
}
