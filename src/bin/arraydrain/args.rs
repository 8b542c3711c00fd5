//! The arguments of `arraydrain convert` and `arraydrain merge`, turned into the library's plain
//! option structs.

use std::path::PathBuf;

use arraydrain::convert::{ConvertOptions, Device};
use arraydrain::shards::MergeOptions;
use arraydrain::Strategy;

/// Which backend drains.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum DeviceArg {
    /// CUDA when a device is usable, else the CPU.
    Auto,
    /// Host threads.
    Cpu,
    /// The CUDA engine (an error when it cannot be used).
    Cuda,
}

impl From<DeviceArg> for Device {
    fn from(d: DeviceArg) -> Device {
        match d {
            DeviceArg::Auto => Device::Auto,
            DeviceArg::Cpu => Device::Cpu,
            DeviceArg::Cuda => Device::Cuda,
        }
    }
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
    #[arg(long, value_enum, default_value_t = DeviceArg::Auto)]
    pub device: DeviceArg,
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

impl ConvertArgs {
    /// The library's options (without a progress callback).
    pub fn to_options(&self) -> ConvertOptions {
        let mut o = ConvertOptions::new(self.inputs.clone());
        o.out = self.out.clone();
        o.out_dir = self.out_dir.clone();
        o.compress = self.compress;
        o.batch = self.batch;
        o.shuffle = self.shuffle;
        o.seed = self.seed;
        o.indices = self.indices.clone();
        o.rank = self.rank;
        o.world_size = self.world_size;
        o.drop_last = self.drop_last;
        o.shard_drop_last = self.shard_drop_last;
        o.strategy = self.strategy;
        o.device = self.device.into();
        o.columns = self.columns.clone();
        o.mmap = self.mmap;
        o.save_order = self.save_order.clone();
        o
    }
}

/// Arguments of `arraydrain merge`.
#[derive(Debug, Clone, clap::Args)]
#[command(group(clap::ArgGroup::new("output").required(true).args(["out", "out_dir"])))]
pub struct MergeArgs {
    /// The shard folder (holding `manifest.json` and `part-…` folders).
    #[arg(value_name = "DIR")]
    pub dir: PathBuf,
    /// Write one `.npz` archive (one member per column).
    #[arg(long, value_name = "OUT.npz")]
    pub out: Option<PathBuf>,
    /// Write a folder of `.npy` files (one per column), streamed: never held in memory.
    #[arg(long, value_name = "DIR")]
    pub out_dir: Option<PathBuf>,
    /// For `--out X.npz`: stage the columns as `.npy` files beside the archive and stream them
    /// into it, so outputs larger than RAM work (without it the columns are gathered in memory).
    #[arg(long)]
    pub mmap: bool,
    /// Keep the rows `DistributedSampler` repeated to pad the shards to an even split.
    #[arg(long)]
    pub keep_padding: bool,
}

impl MergeArgs {
    /// The library's options.
    pub fn to_options(&self) -> MergeOptions {
        MergeOptions {
            dir: self.dir.clone(),
            out: self.out.clone(),
            out_dir: self.out_dir.clone(),
            mmap: self.mmap,
            keep_padding: self.keep_padding,
        }
    }
}
