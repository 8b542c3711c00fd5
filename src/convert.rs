//! `arraydrain convert`: NumPy files in, drained and reordered NumPy files out — the loader's
//! options over a table read from `.npy` / `.npz` inputs, written as one `.npz` or a folder of
//! `.npy` files. Library code, so the command line is a thin call to [`run`].
//!
//! Outputs are written under temporary names and renamed when complete. With `--mmap` (or when
//! the output would not fit comfortably in free memory) the drain writes straight into
//! memory-mapped `.npy` files ([`MappedNpy`](crate::npy::MappedNpy)), so outputs larger than RAM
//! work; for `--out X.npz` those files are staged in a hidden folder beside the archive and
//! streamed into it.

use std::fmt;
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};
use ndarray::Array1;

use crate::cuda::{CudaEngine, DeviceTable};
use crate::error::{Error, Result};
use crate::gather::Strategy;
use crate::loader::Loader;
use crate::npy::{self, WriteOptions};
use crate::output::{Backend, ColumnArray, Materialized};
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
    /// Deflate the `.npz` members (as `numpy.savez_compressed`).
    #[arg(long, requires = "out")]
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
    run_on(args, 0)
}

/// [`run`] without `--distributed`, on CUDA device `ordinal` when CUDA drains.
pub(crate) fn run_on(args: &ConvertArgs, ordinal: usize) -> Result<ConvertSummary> {
    let started = Instant::now();
    let mut table = npy::read_table(&args.inputs)?;
    if let Some(names) = &args.columns {
        let names: Vec<&str> = names.iter().map(String::as_str).collect();
        table = table.select(&names)?;
    }
    let mut loader = Loader::new(&table)
        .batch_size(args.batch)
        .drop_last(args.drop_last)
        .shard_drop_last(args.shard_drop_last);
    if args.shuffle {
        loader = loader.shuffle(args.seed);
    }
    if let Some(path) = &args.indices {
        loader = loader.indices(npy::read_indices(path)?);
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
    let rows = specs.first().map_or(0, |s| s.rows);
    let bytes: u64 = specs
        .iter()
        .map(|s| s.bytes().map(|b| b as u64))
        .sum::<Result<u64>>()?;
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
    // Written once the output is complete, so a failed run leaves no file at all.
    let save_order = |loader: &Loader<'_, '_>| -> Result<()> {
        if let Some(path) = &args.save_order {
            let order = loader.batches()?.output_indices().to_vec();
            let order = Array1::from_iter(order.into_iter().map(|i| i as i64));
            npy::write_npy(path, &ColumnArray::from_array("order", order)?)?;
        }
        Ok(())
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
        let (report, outputs) = match (&args.out_dir, &args.out) {
            (Some(dir), _) => {
                let report = npy::drain_to_npy_dir(&loader, dir, &options)?;
                let files = specs
                    .iter()
                    .map(|s| dir.join(format!("{}.npy", s.name)))
                    .collect();
                (report, files)
            }
            (None, Some(path)) => (
                npy::drain_to_npz(&loader, path, &options)?,
                vec![path.clone()],
            ),
            (None, None) => unreachable_output()?,
        };
        bar.finish_and_clear();
        save_order(&loader)?;
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

    // The mapped output's staging folder (for `--out X.npz`), removed however the run ends.
    let mut staging = None;
    let drain_started = Instant::now();
    let (out, strategy) = if mapped {
        let dir = match (&args.out_dir, &args.out) {
            (Some(dir), _) => dir.clone(),
            (None, Some(out)) => {
                let guard = Staging::new(out)?;
                let dir = guard.dir.clone();
                staging = Some(guard);
                dir
            }
            (None, None) => unreachable_output()?,
        };
        let mut out = npy::mapped_output(&dir, &specs)?;
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
    let staged = staging.as_ref().map(|s| s.dir.as_path());
    let outputs = write_output(args, &out, mapped, staged, &bar)?;
    bar.finish_and_clear();
    save_order(&loader)?;
    drop(out);
    drop(staging);
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
    staged: Option<&Path>,
    bar: &ProgressBar,
) -> Result<Vec<PathBuf>> {
    let progress: npy::WriteProgress = {
        let bar = bar.clone();
        Arc::new(move |done: u64| bar.set_position(done))
    };
    match (&args.out, &args.out_dir) {
        (_, Some(dir)) if mapped => Ok(out
            .columns()
            .iter()
            .map(|c| dir.join(format!("{}.npy", c.name())))
            .collect()),
        (_, Some(dir)) => npy::write_npy_dir_with(
            dir,
            out.columns(),
            &WriteOptions::new().on_progress(move |done| progress(done)),
        ),
        (Some(path), None) => {
            let options = WriteOptions::new()
                .compress(args.compress)
                .on_progress(move |done| progress(done));
            if let Some(dir) = staged {
                // The mapped files are complete (finished and renamed) in the staging folder.
                let files: Vec<(String, PathBuf)> = out
                    .columns()
                    .iter()
                    .map(|c| (c.name().to_string(), dir.join(format!("{}.npy", c.name()))))
                    .collect();
                npy::pack_npz(path, &files, &options)?;
            } else {
                npy::write_npz(path, out.columns(), &options)?;
            }
            Ok(vec![path.clone()])
        }
        (None, None) => unreachable_output(),
    }
}

/// A hidden folder beside `OUT.npz` holding the mapped output until it is packed; removed on
/// drop, whatever happened.
struct Staging {
    dir: PathBuf,
}

impl Staging {
    fn new(out: &Path) -> Result<Staging> {
        let name = out
            .file_name()
            .ok_or_else(|| Error::BadFile {
                path: out.to_path_buf(),
                reason: "an output path needs a file name".into(),
            })?
            .to_string_lossy();
        let dir = out.with_file_name(format!(".{name}.{}.staging", std::process::id()));
        std::fs::create_dir_all(&dir).map_err(|e| Error::Io {
            path: dir.clone(),
            source: e,
        })?;
        Ok(Staging { dir })
    }
}

impl Drop for Staging {
    fn drop(&mut self) {
        // Best effort: nothing in it is an output.
        let _ = std::fs::remove_dir_all(&self.dir);
    }
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
