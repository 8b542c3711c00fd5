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
use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};

use crate::cuda::{CudaEngine, DeviceTable};
use crate::error::{Error, Result};
use crate::fsafe::{file_id, normalized, Staged};
use crate::gather::Strategy;
use crate::loader::Loader;
use crate::loader::OutputSpec;
use crate::npy::{self, MappedIn, WriteOptions};
use crate::output::{Backend, Materialized};
use crate::table::Table;

/// Which backend drains.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Device {
    /// CUDA when a device is usable, else the CPU.
    Auto,
    /// Host threads.
    Cpu,
    /// The CUDA engine (an error when it cannot be used).
    Cuda,
}

/// Arguments of `arraydrain convert`.
#[derive(Debug, Clone, clap::Args)]
#[command(group(clap::ArgGroup::new("output").required(true).args(["out", "out_dir"])))]
pub struct ConvertArgs {
    /// Input `.npy` files (column = file stem) and/or `.npz` archives (column = member name).
    #[arg(required = true, value_name = "INPUT")]
    pub inputs: Vec<PathBuf>,
    /// Write one `.npz` archive (one member per column).
    #[arg(long, value_name = "OUT.npz")]
    pub out: Option<PathBuf>,
    /// Write a folder of `.npy` files (one per column).
    #[arg(long, value_name = "DIR")]
    pub out_dir: Option<PathBuf>,
    /// Deflate the `.npz` members (as `numpy.savez_compressed`); only with `--out`.
    #[arg(long, requires = "out", conflicts_with = "out_dir")]
    pub compress: bool,
    /// Rows per batch.
    #[arg(long, default_value_t = 256)]
    pub batch: usize,
    /// Shuffle the rows (seeded; the same seed gives the same order everywhere).
    #[arg(long, conflicts_with = "indices")]
    pub shuffle: bool,
    /// Seed of the shuffle.
    #[arg(long, default_value_t = 0, requires = "shuffle")]
    pub seed: u64,
    /// An explicit order: a 1-D int64/uint64/int32 `.npy` of row indices.
    #[arg(long, value_name = "ORDER.npy")]
    pub indices: Option<PathBuf>,
    /// One rank of a distributed run: rank and world size from the launcher's environment
    /// (torchrun, Slurm, Open MPI, MPICH; explicit --rank/--world-size win), this rank's shard
    /// written to `DIR/part-RRRRR-of-WWWWW/` beside `DIR/manifest.json`; `arraydrain merge DIR`
    /// puts the shards back together. With CUDA the device is the local rank.
    #[arg(long, requires = "out_dir", conflicts_with_all = ["out", "save_order"])]
    pub distributed: bool,
    /// This process's rank (with --world-size): PyTorch `DistributedSampler` sharding.
    #[arg(long, requires = "world_size")]
    pub rank: Option<usize>,
    /// Number of ranks (with --rank).
    #[arg(long, requires = "rank")]
    pub world_size: Option<usize>,
    /// Drop a short last batch (as PyTorch's `DataLoader(drop_last=True)`).
    #[arg(long)]
    pub drop_last: bool,
    /// Sharded: cut the order to an even split across ranks instead of padding it by repeating
    /// rows (as PyTorch's `DistributedSampler(drop_last=True)`).
    #[arg(long)]
    pub shard_drop_last: bool,
    /// Strategy: auto, preallocated, concat, per-batch, pinned (CUDA).
    #[arg(long, default_value = "auto")]
    pub strategy: Strategy,
    /// Backend.
    #[arg(long, value_enum, default_value_t = Device::Auto)]
    pub device: Device,
    /// Keep only these columns, in this order (comma-separated).
    #[arg(long, value_delimiter = ',', value_name = "a,b")]
    pub columns: Option<Vec<String>>,
    /// Drain into memory-mapped `.npy` files (outputs larger than RAM). Chosen automatically
    /// when the output would take more than half of the available memory.
    #[arg(long)]
    pub mmap: bool,
    /// Write the output's row order (the index of each output row in the input) here, as an
    /// int64 `.npy`.
    #[arg(long, value_name = "ORDER.npy")]
    pub save_order: Option<PathBuf>,
    /// No progress bar.
    #[arg(long, short)]
    pub quiet: bool,
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
/// With `--strategy auto` on the CPU and no memory-mapped output, rows are gathered a few MiB
/// at a time and written as they go ([`npy::drain_to_npz`]), so the output never exists in
/// memory; any other strategy materializes the output first and then writes it.
///
/// ```
/// # let dir = std::env::temp_dir().join(format!("arraydrain-doc-convert-{}", std::process::id()));
/// # std::fs::create_dir_all(&dir)?;
/// use arraydrain::convert::{self, ConvertArgs};
/// use arraydrain::{npy, ColumnArray};
/// use clap::Parser;
/// use ndarray::Array2;
///
/// #[derive(Parser)]
/// struct Cli {
///     #[command(flatten)]
///     convert: ConvertArgs,
/// }
///
/// let x = ColumnArray::from_array("x", Array2::from_shape_fn((100, 4), |(i, j)| (i * 4 + j) as f32))?;
/// npy::write_npy(dir.join("x.npy"), &x)?;
/// let (input, out) = (dir.join("x.npy"), dir.join("out.npz"));
/// let cli = Cli::try_parse_from([
///     "convert", input.to_str().unwrap(), "--out", out.to_str().unwrap(),
///     "--shuffle", "--seed", "3", "--batch", "32", "--quiet",
/// ])?;
/// let summary = convert::run(&cli.convert)?;
/// assert_eq!(summary.rows, 100);
/// println!("{summary}"); // 100 rows, 0.0 MB in 0.001 s (… GB/s; …), strategy preallocated, backend cpu -> …
/// # std::fs::remove_dir_all(&dir)?;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
///
/// # Errors
/// Every failure as an [`Error`]: unreadable or invalid inputs ([`Error::Io`],
/// [`Error::BadFile`] naming the file), bad options ([`Error::ZeroBatchSize`],
/// [`Error::RankOutOfRange`], [`Error::IndexOutOfBounds`], [`Error::UnknownColumn`]), an
/// unavailable strategy or backend, and output I/O errors. No output file is left behind.
pub fn run(args: &ConvertArgs) -> Result<ConvertSummary> {
    if args.distributed {
        return crate::shards::convert_distributed(args);
    }
    run_on(args, 0, None)
}

/// What a run reads, read once by a caller that needs it first (`convert --distributed`
/// fingerprints the inputs from the same maps the drain then reads).
pub(crate) struct RunInput {
    /// The inputs' table (the `--columns` selection applied or not: it is applied again).
    pub(crate) table: Table<'static>,
    /// The `--indices` order, when given.
    pub(crate) indices: Option<Vec<u64>>,
}

/// [`run`] without `--distributed`, on CUDA device `ordinal` when CUDA drains, over `input`
/// when the caller read it already.
pub(crate) fn run_on(
    args: &ConvertArgs,
    ordinal: usize,
    input: Option<RunInput>,
) -> Result<ConvertSummary> {
    let started = Instant::now();
    if args.compress && args.out.is_none() {
        return Err(Error::ConflictingOptions {
            reason: "--compress deflates the members of an --out archive; .npy files in \
                     --out-dir are never compressed"
                .into(),
        });
    }
    // A truncated input then reads as zeros and is reported before anything is kept.
    crate::mmap::catch_input_faults()?;
    let (mut table, mut indices) = match input {
        Some(RunInput { table, indices }) => (table, indices),
        None => (npy::read_table(&args.inputs)?, None),
    };
    if let Some(names) = &args.columns {
        let names: Vec<&str> = names.iter().map(String::as_str).collect();
        table = table.select(&names)?;
    }
    let mut loader = Loader::new(&table)
        .batch_size(args.batch)
        .drop_last(args.drop_last)
        .shard_drop_last(args.shard_drop_last);
    check_index_memory(args, table.rows())?;
    if args.shuffle {
        loader = loader.shuffle(args.seed);
    }
    if let Some(path) = &args.indices {
        let list = match indices.take() {
            Some(list) => list,
            None => npy::read_indices(path)?,
        };
        loader = loader.indices(list);
    }
    if let (Some(rank), Some(world)) = (args.rank, args.world_size) {
        loader = loader.shard(rank, world);
    }
    // Resolve the order here (the loader keeps it), so that an index out of range names its
    // file.
    loader.batches().map_err(|e| match (&e, &args.indices) {
        (Error::IndexOutOfBounds { .. }, Some(path)) => Error::BadFile {
            path: path.clone(),
            reason: e.to_string(),
        },
        _ => e,
    })?;
    let specs = loader.output_specs()?;
    for s in &specs {
        if npy::descr(&s.dtype).is_none() {
            return Err(Error::UnsupportedDType {
                descr: format!("{} (column {:?}; NumPy has no such dtype)", s.dtype, s.name),
            });
        }
    }
    check_output_paths(args, &specs)?;
    let rows = specs.first().map_or(0, |s| s.rows);
    let bytes = specs.iter().try_fold(0u64, |sum, s| {
        sum.checked_add(s.bytes()? as u64)
            .ok_or_else(|| Error::SizeOverflow {
                what: "the output".into(),
            })
    })?;
    let engine = open_engine(args.device, ordinal, &table)?;
    let backend = if engine.is_some() {
        Backend::Cuda
    } else {
        Backend::Cpu
    };
    // A mapped output is filled in place: by the preallocated gather on the CPU, by the
    // staged pinned pipeline on CUDA.
    let fills_in_place = match args.strategy {
        Strategy::Auto | Strategy::Preallocated => true,
        Strategy::Pinned => backend == Backend::Cuda,
        _ => false,
    };
    let mapped = args.mmap || (fills_in_place && !fits_in_memory(bytes));
    if mapped && !fills_in_place {
        return Err(Error::StrategyUnavailable {
            strategy: args.strategy.name(),
            reason: "--mmap fills the mapped files in place: use --strategy auto or \
                     preallocated (or pinned on CUDA)"
                .into(),
        });
    }

    // Everything the run writes, put in place together at the end (or removed on failure).
    let mut staged = Staged::new();
    // The order file is staged first, so that an unwritable destination fails the run before
    // any work is done.
    let order_file = match &args.save_order {
        Some(path) => Some((path.as_path(), staged.file(path)?.1)),
        None => None,
    };

    let show = !args.quiet && std::io::stderr().is_terminal();
    if !mapped && engine.is_none() && args.strategy == Strategy::Auto {
        // The fastest CPU path: gather a few MiB at a time and write as it goes, so the
        // output never exists in memory (and a sequential order is written from the input's
        // pages directly).
        let bar = progress_bar(show, bytes, "drain + write");
        let options = {
            let bar = bar.clone();
            WriteOptions::new()
                .compress(args.compress)
                .on_progress(move |done| bar.set_position(done))
        };
        let report = match (&args.out_dir, &args.out) {
            (Some(dir), _) => npy::stage_drain_npy_dir(&mut staged, &loader, dir, &options)?,
            (None, Some(path)) => npy::stage_drain_npz(&mut staged, &loader, path, &options)?,
            (None, None) => unreachable_output()?,
        };
        bar.finish_and_clear();
        let outputs = finish(staged, order_file, &loader, &args.inputs)?;
        return Ok(ConvertSummary {
            rows,
            bytes,
            elapsed: started.elapsed(),
            drain: report.elapsed,
            write: Duration::ZERO,
            strategy: report.strategy,
            backend,
            mapped: false,
            streamed: true,
            outputs,
            placement: None,
        });
    }
    let bar = progress_bar(show, bytes, "drain");
    {
        let bar = bar.clone();
        loader = loader.on_progress(move |rows_done, bytes_done| {
            bar.set_position(bytes_done);
            bar.set_message(format!("drain: {rows_done}/{rows} rows"));
        });
    }

    // For `--out X.npz` with a mapped output: the private scratch folder holding the mapped
    // files until they are packed (removed with the staged set, whatever happens).
    let mut scratch = None;
    let drain_started = Instant::now();
    let (out, strategy) = if mapped {
        let mut out = match (&args.out_dir, &args.out) {
            (Some(dir), _) => npy::stage_mapped_output(MappedIn::Staged(&mut staged, dir), &specs)?,
            (None, Some(out)) => {
                let dir = staged.scratch_dir(out)?;
                let files = npy::stage_mapped_output(MappedIn::Scratch(&dir), &specs)?;
                scratch = Some(dir);
                files
            }
            (None, None) => unreachable_output()?,
        };
        let report = match &engine {
            Some((engine, dev)) => engine.materialize_into(dev, &loader.batches()?, &mut out)?,
            None => loader.materialize_into(&mut out)?,
        };
        (out, report.strategy)
    } else {
        let out = match &engine {
            Some((engine, dev)) => engine.materialize(dev, &loader.batches()?, args.strategy)?,
            None => loader.materialize(args.strategy)?,
        };
        let strategy = out.report().strategy;
        (out, strategy)
    };
    let drain = drain_started.elapsed();
    bar.finish_and_clear();

    let write_started = Instant::now();
    let bar = progress_bar(show, bytes, "write");
    write_output(args, &out, mapped, scratch.as_deref(), &bar, &mut staged)?;
    bar.finish_and_clear();
    drop(out);
    let outputs = finish(staged, order_file, &loader, &args.inputs)?;
    Ok(ConvertSummary {
        rows,
        bytes,
        elapsed: started.elapsed(),
        drain,
        write: write_started.elapsed(),
        strategy,
        backend,
        mapped,
        streamed: false,
        outputs,
        placement: None,
    })
}

/// Writes the order file (when asked for), checks that no input changed while it was read,
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

fn unreachable_output<T>() -> Result<T> {
    // clap's argument group requires one of --out / --out-dir; a library caller may not.
    Err(Error::Io {
        path: PathBuf::from("--out/--out-dir"),
        source: std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "convert needs an output: --out OUT.npz or --out-dir DIR",
        ),
    })
}

fn write_output(
    args: &ConvertArgs,
    out: &Materialized,
    mapped: bool,
    scratch: Option<&Path>,
    bar: &ProgressBar,
    staged: &mut Staged,
) -> Result<()> {
    let progress: npy::WriteProgress = {
        let bar = bar.clone();
        Arc::new(move |done: u64| bar.set_position(done))
    };
    match (&args.out, &args.out_dir) {
        // The mapped files are the staged outputs already.
        (_, Some(_)) if mapped => Ok(()),
        (_, Some(dir)) => npy::stage_npy_dir(
            staged,
            dir,
            out.columns(),
            &WriteOptions::new().on_progress(move |done| progress(done)),
        )
        .map(drop),
        (Some(path), None) => {
            let options = WriteOptions::new()
                .compress(args.compress)
                .on_progress(move |done| progress(done));
            if let Some(dir) = scratch {
                // The mapped files are complete (written back) in the scratch folder.
                let files: Vec<(String, PathBuf)> = out
                    .columns()
                    .iter()
                    .map(|c| (c.name().to_string(), dir.join(format!("{}.npy", c.name()))))
                    .collect();
                npy::pack_npz(staged, path, &files, &options)
            } else {
                npy::stage_npz(staged, path, out.columns(), &options)
            }
        }
        (None, None) => unreachable_output(),
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
fn check_index_memory(args: &ConvertArgs, rows: usize) -> Result<()> {
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
fn planned_outputs(args: &ConvertArgs, specs: &[OutputSpec]) -> Vec<(PathBuf, String)> {
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
fn check_output_paths(args: &ConvertArgs, specs: &[OutputSpec]) -> Result<()> {
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
            return Err(Error::PathConflict {
                path: path.clone(),
                reason: format!(
                    "{role} names the input {}; an output never replaces an input",
                    input.display()
                ),
            });
        }
        if let Some(other) = seen.get(&key) {
            return Err(Error::PathConflict {
                path: path.clone(),
                reason: format!("{role} names the same file as {other}"),
            });
        }
        seen.insert(key, role);
    }
    Ok(())
}

fn progress_bar(show: bool, total: u64, phase: &str) -> ProgressBar {
    if !show {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(total);
    let style = ProgressStyle::with_template(
        "{msg:24} [{bar:30}] {binary_bytes}/{binary_total_bytes} {binary_bytes_per_sec} ETA {eta}",
    )
    .map(|s| s.progress_chars("=> "))
    .unwrap_or_else(|_| ProgressStyle::default_bar());
    bar.set_style(style);
    bar.set_message(phase.to_string());
    bar
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
