//! Shards of a distributed run and how they go back together.
//!
//! Each rank of `arraydrain convert --distributed --out-dir OUT` writes its `DistributedSampler`
//! shard as `OUT/part-RRRRR-of-WWWWW/COLUMN.npy` (names that sort), and every rank writes the
//! same `OUT/manifest.json`, which it computes alone from the inputs, the world size, the order,
//! the seed and both `drop_last` flags — no rank waits on another. The first rank to start
//! creates the manifest (only where none is: a folder holding another run's manifest fails the
//! run before its drain, so two different runs racing into one folder cannot both succeed). A part
//! is staged in a hidden folder, closed with its record `part.json` (the run id, the rank, and
//! each file's size and CRC-32), and renamed into place as a whole, only where nothing is; so a
//! part folder is either complete or absent, and a second process claiming the same rank fails
//! instead of overwriting it. Everything goes through [`crate::fsafe::Staged`]: a failed or
//! interrupted rank leaves no staging folder, no output folder it made, and no manifest it made
//! that no other rank's part relies on.
//!
//! The run id fingerprints the whole content of every input as the run read it: the CRC-32 of
//! each input file, computed from the very memory maps the drain then reads (and which are
//! checked unchanged before anything is kept). So ranks that read different versions of an input
//! compute different run ids, and their parts never merge.
//!
//! [`merge`] checks every part against the manifest (present, finished, of this run, claimed
//! once, sizes, headers and checksums) and reassembles the global order: exactly
//! `x[sampler order]`, the DistributedSampler's padding removed unless asked to keep it.
//!
//! A shard folder is read as a folder other people may write to ([`crate::fsafe::SafeDir`]):
//! entries are opened relative to it without following symbolic links, only regular files are
//! read, records are size-capped, and each file is checked and then read through the same open
//! file. Errors name the entry that is wrong, never what a link there points to.
//!
//! The manifest (`format` `arraydrain-shards`, `version` 2) is plain JSON and the parts are plain
//! `.npy` files, so other tools read the folder directly (see the README).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::convert::{self, ConvertOptions, ConvertSummary, Device, RunInput};
use crate::error::{Error, FileError, Result};
use crate::fsafe::{self, SafeDir, Staged};
use crate::launcher;
use crate::npy::{self, NpyHeader, WriteOptions};
use crate::table::Column;

/// The manifest's `format` value.
pub const FORMAT: &str = "arraydrain-shards";
/// The manifest's `version` value.
pub const VERSION: u32 = 2;
/// The manifest's file name in the output folder.
pub const MANIFEST: &str = "manifest.json";
/// A part's record file name in its folder.
pub const PART_RECORD: &str = "part.json";
/// The largest `manifest.json` or `part.json` read (bytes): far above any real one (their size
/// grows with the columns and inputs, not with the world size), so a huge file or a device such
/// as `/dev/zero` planted there is refused instead of read until memory runs out.
pub const MAX_RECORD_BYTES: u64 = 64 << 20;
/// At most this many problems of a shard folder are listed; the rest are counted.
pub const MAX_LISTED_ISSUES: usize = 64;

/// The folder name of `rank`'s part: `part-00003-of-00008` (at least five digits, the same
/// width for every rank of a run, so names sort in rank order).
pub fn part_name(rank: usize, world_size: usize) -> String {
    let width = world_size.to_string().len().max(5);
    format!("part-{rank:0width$}-of-{world_size:0width$}")
}

fn parse_part_name(name: &str) -> Option<(usize, usize)> {
    let rest = name.strip_prefix("part-")?;
    let (r, w) = rest.split_once("-of-")?;
    Some((r.parse().ok()?, w.parse().ok()?))
}

/// The manifest of a sharded output: everything needed to check and reassemble the parts,
/// computable by every rank alone. Its size does not grow with the world size: the parts are
/// named and sized by arithmetic ([`Manifest::part`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// Always [`FORMAT`].
    pub format: String,
    /// Always [`VERSION`].
    pub version: u32,
    /// A hash of everything below (16 hex digits): parts of one run carry it; a part or
    /// manifest of another run does not match.
    pub run_id: String,
    /// Number of ranks (and parts), at most [`crate::sampler::MAX_WORLD_SIZE`].
    pub world_size: usize,
    /// Rows of the input table.
    pub table_rows: usize,
    /// The order and how it was split.
    pub order: OrderRecord,
    /// The batching.
    pub batch: BatchRecord,
    /// Output columns.
    pub columns: Vec<ColumnRecord>,
    /// The inputs (file name, size, CRC-32 of the whole content).
    pub inputs: Vec<InputRecord>,
    /// Rows of the merged output: the ranks' rows interleaved in sampler order, without the
    /// padding.
    pub merged_rows: usize,
    /// Rows of the merged output when the padding is kept (the sum of the parts' rows).
    pub rows_with_padding: usize,
    /// Rows of each rank's part (the same for every rank).
    pub part_rows: usize,
}

/// The order of a sharded run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OrderRecord {
    /// `sequential`, `shuffle` or `indices`.
    pub kind: String,
    /// The shuffle's seed.
    pub seed: Option<u64>,
    /// The explicit order's file name.
    pub indices_file: Option<String>,
    /// CRC-32 of the explicit order's file (8 hex digits), so that runs with different orders
    /// of the same size are told apart.
    pub indices_crc32: Option<String>,
    /// Length of the base order, before sharding.
    pub length: usize,
    /// `DistributedSampler(drop_last=)`: the order was cut to an even split.
    pub shard_drop_last: bool,
    /// Whether the sampler padded the order by repeating rows from its start.
    pub padding_repeats_rows: bool,
    /// How many positions are padding (repeats), before batching.
    pub padded_rows: usize,
}

/// The batching of a sharded run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BatchRecord {
    /// Rows per batch.
    pub batch_size: usize,
    /// `DataLoader(drop_last=)`: each rank dropped its short last batch.
    pub drop_last: bool,
}

/// One output column.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ColumnRecord {
    /// Name (and file stem).
    pub name: String,
    /// NumPy dtype string (`<f4`, `<i8`, …).
    pub dtype: String,
    /// Shape of one row.
    pub row_shape: Vec<usize>,
}

/// One input file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InputRecord {
    /// File name (without its folder: ranks may read copies in different places).
    pub name: String,
    /// Size in bytes.
    pub bytes: u64,
    /// CRC-32 (IEEE, as `zlib.crc32`) of the whole file as the run read it, 8 hex digits.
    ///
    /// Why CRC-32: the fingerprint is there to tell apart versions of an input that ranks read
    /// (an edit anywhere in the file changes it; any change of up to 32 consecutive bits always
    /// does, and a random change escapes it once in 2^32), not to stop a forger: nothing in a
    /// manifest is keyed, so whoever can rewrite an input can rewrite the manifest too. It is
    /// computed in parallel chunks that combine, at memory speed beside the copy, and it is the
    /// checksum the parts already carry, checkable with `zlib.crc32`.
    pub crc32: String,
}

/// One rank's part, as the manifest's arithmetic gives it ([`Manifest::part`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartEntry {
    /// The rank.
    pub rank: usize,
    /// Its folder, relative to the output folder.
    pub dir: String,
    /// Its rows.
    pub rows: usize,
    /// Its files, one per column, relative to the output folder.
    pub files: Vec<String>,
}

/// A part's record, `part.json`, written last into the part's folder.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PartRecord {
    /// Always [`FORMAT`].
    pub format: String,
    /// Always [`VERSION`].
    pub version: u32,
    /// The run this part belongs to (the manifest's `run_id`).
    pub run_id: String,
    /// The rank that wrote it.
    pub rank: usize,
    /// The world size it was written for.
    pub world_size: usize,
    /// Rows.
    pub rows: usize,
    /// Each file: name in the part folder, size, CRC-32 (IEEE, as `zlib.crc32`) of the whole
    /// file, as 8 hex digits.
    pub files: Vec<FileRecord>,
    /// Who wrote it: `host:pid`.
    pub writer: String,
}

/// One written file of a part.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileRecord {
    /// File name in the part folder.
    pub name: String,
    /// Size in bytes.
    pub bytes: u64,
    /// CRC-32 of the whole file, 8 hex digits.
    pub crc32: String,
}

/// What a manifest is computed from.
#[derive(Debug, Clone)]
pub struct RunSpec {
    /// Number of ranks.
    pub world_size: usize,
    /// Rows of the input table.
    pub table_rows: usize,
    /// `sequential`, `shuffle` or `indices`, with the seed or the indices' file name.
    pub order_kind: &'static str,
    /// The shuffle's seed.
    pub seed: Option<u64>,
    /// The explicit order's file name.
    pub indices_file: Option<String>,
    /// CRC-32 of the explicit order's file.
    pub indices_crc32: Option<String>,
    /// Length of the base order.
    pub order_length: usize,
    /// `DistributedSampler(drop_last=)`.
    pub shard_drop_last: bool,
    /// Rows per batch.
    pub batch_size: usize,
    /// `DataLoader(drop_last=)`.
    pub drop_last: bool,
    /// Output columns.
    pub columns: Vec<ColumnRecord>,
    /// Inputs.
    pub inputs: Vec<InputRecord>,
}

impl Manifest {
    /// The manifest of a run, by arithmetic alone (as PyTorch's `DistributedSampler` and
    /// `BatchSampler` split and batch).
    ///
    /// # Errors
    /// [`Error::ZeroWorldSize`], [`Error::WorldSizeTooLarge`], [`Error::ZeroBatchSize`],
    /// [`Error::SizeOverflow`].
    pub fn compute(spec: &RunSpec) -> Result<Manifest> {
        let w = spec.world_size;
        // The world size is bounded before anything is derived from it.
        let shard = crate::sampler::Shard::new(0, w)?;
        if spec.batch_size == 0 {
            return Err(Error::ZeroBatchSize);
        }
        let split = shard.split(spec.order_length, spec.shard_drop_last)?;
        let kept = crate::batch::kept_rows(split.per_rank, spec.batch_size, spec.drop_last)?;
        let n = split.len;
        let padded_total = split.total;
        // kept ≤ per_rank, so this is at most the split's (checked) total.
        let rows_with_padding = kept.checked_mul(w).ok_or_else(|| Error::SizeOverflow {
            what: format!("an order of {n} positions split over {w} ranks"),
        })?;
        let mut m = Manifest {
            format: FORMAT.into(),
            version: VERSION,
            run_id: String::new(),
            world_size: w,
            table_rows: spec.table_rows,
            order: OrderRecord {
                kind: spec.order_kind.into(),
                seed: spec.seed,
                indices_file: spec.indices_file.clone(),
                indices_crc32: spec.indices_crc32.clone(),
                length: n,
                shard_drop_last: spec.shard_drop_last,
                padding_repeats_rows: padded_total > n,
                padded_rows: padded_total.saturating_sub(n),
            },
            batch: BatchRecord {
                batch_size: spec.batch_size,
                drop_last: spec.drop_last,
            },
            columns: spec.columns.clone(),
            inputs: spec.inputs.clone(),
            merged_rows: rows_with_padding.min(n),
            rows_with_padding,
            part_rows: kept,
        };
        m.run_id = m.content_id();
        Ok(m)
    }

    /// The part of `rank` (below `world_size`): its folder, rows and files.
    pub fn part(&self, rank: usize) -> PartEntry {
        let dir = part_name(rank, self.world_size);
        PartEntry {
            rank,
            files: self
                .columns
                .iter()
                .map(|c| format!("{dir}/{}.npy", c.name))
                .collect(),
            dir,
            rows: self.part_rows,
        }
    }

    /// The hash of everything but `run_id` (FNV-1a, 64 bits, over the compact JSON).
    fn content_id(&self) -> String {
        let mut copy = self.clone();
        copy.run_id = String::new();
        let text = serde_json::to_string(&copy).unwrap_or_default();
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for b in text.bytes() {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
        format!("{h:016x}")
    }

    /// Reads and checks `DIR/manifest.json` (see [`Manifest::read_in`]).
    ///
    /// # Errors
    /// As [`Manifest::read_in`]; [`FileError::Io`] when `dir` cannot be opened.
    pub fn read(dir: &Path) -> Result<Manifest> {
        Manifest::read_in(&SafeDir::open(dir)?)
    }

    /// Reads and checks `manifest.json` in an open folder: a regular file (not a link, FIFO or
    /// device) of at most [`MAX_RECORD_BYTES`], of this format and version, matching its own
    /// run id, with every derived field what its inputs give, column names that are plain,
    /// distinct file names, and a bounded world size.
    ///
    /// # Errors
    /// [`FileError::Io`] or [`FileError::BadFile`] when it cannot be read as such a file;
    /// [`ShardError::ManifestInvalid`] when it is not a manifest of this format and version, or its
    /// content does not match its run id or its inputs.
    pub fn read_in(dir: &SafeDir) -> Result<Manifest> {
        let path = dir.path().join(MANIFEST);
        let bytes = dir.read_capped(MANIFEST, MAX_RECORD_BYTES, "a manifest")?;
        let invalid = |reason: String| {
            Error::Shard(ShardError::ManifestInvalid {
                path: path.clone(),
                reason,
            })
        };
        let value: serde_json::Value =
            serde_json::from_slice(&bytes).map_err(|e| invalid(e.to_string()))?;
        let format = value.get("format").and_then(|v| v.as_str());
        let version = value.get("version").and_then(|v| v.as_u64());
        if format != Some(FORMAT) || version != Some(u64::from(VERSION)) {
            return Err(invalid(format!(
                "format {} version {}; this build reads {FORMAT:?} version {VERSION}",
                format.map_or_else(|| "(none)".to_string(), |f| format!("{f:?}")),
                version.map_or_else(|| "(none)".to_string(), |v| v.to_string()),
            )));
        }
        let m: Manifest = serde_json::from_value(value).map_err(|e| invalid(e.to_string()))?;
        let id = m.content_id();
        if id != m.run_id {
            return Err(invalid(format!(
                "its content hashes to {id}, not to its run id {}: it was edited or damaged",
                m.run_id
            )));
        }
        // Every derived field must be what the run's inputs give, and every column name a plain,
        // distinct file name: a manifest is a file, and files are untrusted.
        let mut seen = HashSet::with_capacity(m.columns.len());
        for c in &m.columns {
            if let Some(why) = crate::npy::unsafe_name_reason(&c.name) {
                return Err(invalid(format!(
                    "column name {:?} is not a plain file name: {why}",
                    c.name
                )));
            }
            if !seen.insert(c.name.as_str()) {
                return Err(invalid(format!("column name {:?} appears twice", c.name)));
            }
        }
        let order_kind = match m.order.kind.as_str() {
            "sequential" => "sequential",
            "shuffle" => "shuffle",
            "indices" => "indices",
            other => return Err(invalid(format!("unknown order kind {other:?}"))),
        };
        let spec = RunSpec {
            world_size: m.world_size,
            table_rows: m.table_rows,
            order_kind,
            seed: m.order.seed,
            indices_file: m.order.indices_file.clone(),
            indices_crc32: m.order.indices_crc32.clone(),
            order_length: m.order.length,
            shard_drop_last: m.order.shard_drop_last,
            batch_size: m.batch.batch_size,
            drop_last: m.batch.drop_last,
            columns: m.columns.clone(),
            inputs: m.inputs.clone(),
        };
        match Manifest::compute(&spec) {
            Ok(expected) if expected == m => Ok(m),
            Ok(_) => Err(invalid(
                "its parts or row counts are not those of its world size, order and batching"
                    .into(),
            )),
            Err(e) => Err(invalid(e.to_string())),
        }
    }
}

/// The CRC-32 state of `data`, hashed in parallel chunks and combined.
fn crc_hasher(data: &[u8]) -> crc32fast::Hasher {
    let chunks: Vec<crc32fast::Hasher> = data
        .par_chunks(4 << 20)
        .map(|c| {
            let mut h = crc32fast::Hasher::new();
            h.update(c);
            h
        })
        .collect();
    let mut h = crc32fast::Hasher::new();
    for c in &chunks {
        h.combine(c);
    }
    h
}

/// CRC-32 of `data` as 8 hex digits.
fn crc_hex(data: &[u8]) -> String {
    format!("{:08x}", crc_hasher(data).finalize())
}

fn writer_id() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "unknown-host".into());
    format!("{host}:{}", std::process::id())
}

fn file_name(path: &Path) -> String {
    path.file_name()
        .map_or_else(String::new, |n| n.to_string_lossy().into_owned())
}

/// The run described by `args` (inputs, columns, order, batching) for `world_size` ranks, and
/// what it reads: the inputs are read once, and fingerprinted from the same maps the drain reads.
fn run_spec(args: &ConvertOptions, world_size: usize) -> Result<(RunSpec, RunInput)> {
    let (mut table, maps) = npy::read_table_mapped(&args.inputs)?;
    if let Some(names) = &args.columns {
        let names: Vec<&str> = names.iter().map(String::as_str).collect();
        table = table.select(&names)?;
    }
    let columns = table
        .columns()
        .iter()
        .map(|c| ColumnRecord {
            name: c.name().to_string(),
            dtype: npy::descr(&c.dtype()).into_owned(),
            row_shape: c.row_shape().to_vec(),
        })
        .collect::<Vec<_>>();
    let mut inputs: Vec<InputRecord> = args
        .inputs
        .iter()
        .zip(&maps)
        .map(|(p, map)| InputRecord {
            name: file_name(p),
            bytes: map.bytes().len() as u64,
            crc32: crc_hex(map.bytes()),
        })
        .collect();
    let mut indices = None;
    let (order_kind, seed, indices_file, indices_crc32, order_length) = match &args.indices {
        Some(path) => {
            let (list, map) = npy::read_indices_mapped(path)?;
            let crc = crc_hex(map.bytes());
            inputs.push(InputRecord {
                name: file_name(path),
                bytes: map.bytes().len() as u64,
                crc32: crc.clone(),
            });
            let n = list.len();
            indices = Some(list);
            ("indices", None, Some(file_name(path)), Some(crc), n)
        }
        None if args.shuffle => ("shuffle", Some(args.seed), None, None, table.rows()),
        None => ("sequential", None, None, None, table.rows()),
    };
    let spec = RunSpec {
        world_size,
        table_rows: table.rows(),
        order_kind,
        seed,
        indices_file,
        indices_crc32,
        order_length,
        shard_drop_last: args.shard_drop_last,
        batch_size: args.batch,
        drop_last: args.drop_last,
        columns,
        inputs,
    };
    Ok((spec, RunInput { table, indices }))
}

/// Makes sure `OUT/manifest.json` is this run's manifest: creates it where none is (a claim of
/// `staged`), else reads the one there.
///
/// # Errors
/// [`ShardError::Exists`] when the folder holds another run's manifest or something else at its
/// name.
fn claim_manifest(staged: &mut Staged, out: &Path, manifest: &Manifest, text: &[u8]) -> Result<()> {
    let path = out.join(MANIFEST);
    // A rank of this run that failed may remove the manifest it made between our attempt to
    // create it and our reading it: then try again.
    for _ in 0..8 {
        if staged.claim(&path, text)? {
            return Ok(());
        }
        let found = SafeDir::open(out).and_then(|d| Manifest::read_in(&d));
        return match found {
            Ok(m) if m.run_id == manifest.run_id => Ok(()),
            Ok(m) => Err(Error::Shard(ShardError::Exists {
                path,
                reason: format!(
                    "a manifest of another run ({}; this run is {}): write elsewhere, or remove \
                     the folder of the other run",
                    m.run_id, manifest.run_id
                ),
            })),
            Err(Error::File(FileError::Io { source, .. }))
                if source.kind() == std::io::ErrorKind::NotFound =>
            {
                continue
            }
            Err(e) => Err(Error::Shard(ShardError::Exists {
                path,
                reason: format!("a file that is not this run's manifest ({e})"),
            })),
        };
    }
    Err(Error::Shard(ShardError::Exists {
        path,
        reason: "it keeps appearing and disappearing: another process is writing it".into(),
    }))
}

/// `convert --distributed`: this rank's shard into `OUT/part-…/`, and the manifest.
///
/// # Errors
/// As [`convert::run`]; the launcher errors of [`launcher::resolve`];
/// [`Error::ConflictingOptions`] without `--out-dir` or with `--out` / `--save-order`;
/// [`ShardError::Exists`] when this rank's part, or a manifest of another run, is already in the
/// output folder; [`FileError::PathConflict`] when an output would replace an input.
pub fn convert_distributed(args: &ConvertOptions) -> Result<ConvertSummary> {
    let started = Instant::now();
    let out =
        match (&args.out_dir, &args.out, &args.save_order) {
            (Some(dir), None, None) => dir.clone(),
            _ => return Err(Error::ConflictingOptions {
                reason:
                    "--distributed writes one part per rank under --out-dir DIR (not --out, not \
                         --save-order)"
                        .into(),
            }),
        };
    let placement = launcher::detect(args.rank, args.world_size)?;
    let (device, ordinal) = rank_device(args.device, &placement)?;
    // A truncated input then reads as zeros and is reported before anything is kept.
    crate::mmap::catch_input_faults()?;
    let (spec, input) = run_spec(args, placement.world_size)?;
    let manifest = Manifest::compute(&spec)?;
    let text = serde_json::to_string_pretty(&manifest).map_err(|e| {
        Error::Shard(ShardError::ManifestInvalid {
            path: out.join(MANIFEST),
            reason: e.to_string(),
        })
    })?;

    // Everything this rank writes, put in place together at the end or removed.
    let mut staged = Staged::new();
    for p in args.inputs.iter().chain(&args.indices) {
        staged.protect(p);
    }
    staged.create_dir_all(&out)?;
    // Refuse early (before the drain) to mix with another run.
    claim_manifest(&mut staged, &out, &manifest, text.as_bytes())?;
    let entry = manifest.part(placement.rank);
    let part_dir = out.join(&entry.dir);
    if std::fs::symlink_metadata(&part_dir).is_ok() {
        return Err(part_exists(&out, &entry.dir));
    }
    let staging = staged.folder(&part_dir)?;
    let mut inner = args.clone();
    inner.device = device;
    inner.rank = Some(placement.rank);
    inner.world_size = Some(placement.world_size);
    inner.out_dir = Some(staging.clone());
    let mut summary = convert::run_on(&inner, ordinal, Some(input))?;
    if summary.rows != entry.rows {
        return Err(Error::OutputMismatch {
            column: manifest
                .columns
                .first()
                .map_or_else(String::new, |c| c.name.clone()),
            reason: format!(
                "rank {} wrote {} rows, the manifest computes {}",
                placement.rank, summary.rows, entry.rows
            ),
        });
    }
    write_part_record(&staging, &part_dir, &manifest, &placement, entry.rows)?;
    // A rank of this run that failed may have removed the manifest since: make sure it is there.
    claim_manifest(&mut staged, &out, &manifest, text.as_bytes())?;
    // The part appears whole or not at all, and only where nothing is: a second process
    // claiming this rank cannot replace the first one's part.
    staged.commit().map_err(|e| match e {
        Error::File(FileError::PathConflict { path, .. }) if path == part_dir => {
            part_exists(&out, &entry.dir)
        }
        other => other,
    })?;
    summary.outputs = entry.files.iter().map(|f| out.join(f)).collect();
    summary.elapsed = started.elapsed();
    summary.placement = Some(placement);
    Ok(summary)
}

/// The backend and CUDA device of this rank: the device is the local rank; `Device::Auto` falls
/// back to the CPU when that device cannot be named, as it does when CUDA cannot be used.
fn rank_device(device: Device, placement: &launcher::Placement) -> Result<(Device, usize)> {
    match device {
        Device::Cpu => Ok((Device::Cpu, 0)),
        Device::Cuda | Device::Auto => match launcher::cuda_ordinal(
            placement.local_rank,
            std::env::var("CUDA_VISIBLE_DEVICES").ok().as_deref(),
        ) {
            Ok(o) => Ok((device, o)),
            Err(e) if device == Device::Cuda => Err(e),
            Err(_) => Ok((Device::Cpu, 0)),
        },
    }
}

/// Closes this rank's staged part: its record `part.json` (the run id, the rank, and each
/// column file's size and CRC-32, read back from the written files) in the staging folder.
fn write_part_record(
    staging: &Path,
    part_dir: &Path,
    manifest: &Manifest,
    placement: &launcher::Placement,
    rows: usize,
) -> Result<()> {
    let mut files = Vec::new();
    for c in &manifest.columns {
        let name = format!("{}.npy", c.name);
        let path = staging.join(&name);
        let map = crate::mmap::ReadMap::open(&path)?;
        files.push(FileRecord {
            name,
            bytes: map.bytes().len() as u64,
            crc32: crc_hex(map.bytes()),
        });
    }
    let record = PartRecord {
        format: FORMAT.into(),
        version: VERSION,
        run_id: manifest.run_id.clone(),
        rank: placement.rank,
        world_size: placement.world_size,
        rows,
        files,
        writer: writer_id(),
    };
    let record_text = serde_json::to_string_pretty(&record).map_err(|e| {
        Error::Shard(ShardError::ManifestInvalid {
            path: part_dir.join(PART_RECORD),
            reason: e.to_string(),
        })
    })?;
    // The staging folder is this run's own (made exclusively, under a random name).
    let record_path = staging.join(PART_RECORD);
    File::create_new(&record_path)
        .and_then(|mut f| f.write_all(record_text.as_bytes()))
        .map_err(|e| fsafe::write_error(&record_path, e, record_text.len() as u64))?;
    Ok(())
}

fn part_exists(out: &Path, dir: &str) -> Error {
    let by = SafeDir::open(out)
        .and_then(|d| d.open_dir(dir))
        .and_then(|d| d.read_capped(PART_RECORD, MAX_RECORD_BYTES, "a part record"))
        .ok()
        .and_then(|t| serde_json::from_slice::<PartRecord>(&t).ok())
        .map_or_else(
            || "an unfinished or unknown writer".to_string(),
            |r| format!("rank {} of run {} ({})", r.rank, r.run_id, r.writer),
        );
    Error::Shard(ShardError::Exists {
        path: out.join(dir),
        reason: format!(
            "a part written by {by}: another process claims the same rank, or the folder holds \
             an earlier run (remove it or write elsewhere)"
        ),
    })
}

/// Why a shard folder cannot be written or merged; wrapped by [`Error::Shard`].
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ShardError {
    /// A distributed run's output folder already holds this rank's part, or another run.
    #[error("{} already exists: {reason}", path.display())]
    Exists {
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
    SetInvalid {
        /// The shard folder.
        dir: PathBuf,
        /// Every problem found.
        issues: Vec<ShardIssue>,
    },
}

/// Something wrong with a shard folder, found by [`check`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ShardIssue {
    /// A rank's part folder is not there.
    MissingPart {
        /// The part folder.
        part: String,
    },
    /// A part folder has no (readable) record: it was not finished by this format's writer.
    Unfinished {
        /// The part folder.
        part: String,
        /// Why the record could not be used.
        reason: String,
    },
    /// A part belongs to another run (its record's run id, or its world size, differs).
    ForeignPart {
        /// The part folder.
        part: String,
        /// Its run id.
        run_id: String,
        /// The manifest's run id.
        expected: String,
    },
    /// Two part folders hold the shard of the same rank.
    DuplicateClaim {
        /// The rank.
        rank: usize,
        /// The folders claiming it.
        parts: Vec<String>,
    },
    /// A part folder holds the shard of another rank.
    Misplaced {
        /// The part folder.
        part: String,
        /// The rank its record claims.
        rank: usize,
    },
    /// A file of a part is missing.
    MissingFile {
        /// The file, relative to the shard folder.
        file: String,
    },
    /// A file's size is not what its record says (truncated or grown).
    SizeMismatch {
        /// The file.
        file: String,
        /// Bytes recorded when it was written.
        expected: u64,
        /// Bytes now.
        got: u64,
    },
    /// A file's content does not match its recorded CRC-32.
    Checksum {
        /// The file.
        file: String,
        /// Recorded CRC-32.
        expected: String,
        /// CRC-32 now.
        got: String,
    },
    /// A file is not the array the manifest describes (or not a regular file, or a link).
    BadFile {
        /// The file.
        file: String,
        /// What is wrong.
        reason: String,
    },
    /// More problems than are listed (see [`MAX_LISTED_ISSUES`]).
    More {
        /// How many were not listed.
        count: usize,
    },
}

impl fmt::Display for ShardIssue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ShardIssue::MissingPart { part } => write!(f, "{part}: missing"),
            ShardIssue::Unfinished { part, reason } => {
                write!(f, "{part}: unfinished or not a part ({reason})")
            }
            ShardIssue::ForeignPart {
                part,
                run_id,
                expected,
            } => write!(
                f,
                "{part}: from another run ({run_id}; the manifest is run {expected})"
            ),
            ShardIssue::DuplicateClaim { rank, parts } => {
                write!(f, "rank {rank} claimed by {}", parts.join(" and "))
            }
            ShardIssue::Misplaced { part, rank } => {
                write!(f, "{part}: holds the shard of rank {rank}")
            }
            ShardIssue::MissingFile { file } => write!(f, "{file}: missing"),
            ShardIssue::SizeMismatch {
                file,
                expected,
                got,
            } => write!(
                f,
                "{file}: {got} bytes, {expected} when written ({})",
                if got < expected { "truncated" } else { "grown" }
            ),
            ShardIssue::Checksum {
                file,
                expected,
                got,
            } => write!(f, "{file}: CRC-32 {got}, {expected} when written (corrupt)"),
            ShardIssue::BadFile { file, reason } => write!(f, "{file}: {reason}"),
            ShardIssue::More { count } => write!(f, "... and {count} more problems"),
        }
    }
}

/// The problems found in a shard folder: the first [`MAX_LISTED_ISSUES`] listed, the rest
/// counted, so that an error stays readable whatever the folder holds.
#[derive(Debug, Default)]
struct Issues {
    listed: Vec<ShardIssue>,
    more: usize,
}

impl Issues {
    fn push(&mut self, issue: ShardIssue) {
        if self.listed.len() < MAX_LISTED_ISSUES {
            self.listed.push(issue);
        } else {
            self.more += 1;
        }
    }

    fn extend(&mut self, issues: impl IntoIterator<Item = ShardIssue>) {
        issues.into_iter().for_each(|i| self.push(i));
    }

    fn is_empty(&self) -> bool {
        self.listed.is_empty() && self.more == 0
    }

    fn into_error(mut self, dir: &Path) -> Result<()> {
        if self.is_empty() {
            return Ok(());
        }
        if self.more > 0 {
            self.listed.push(ShardIssue::More { count: self.more });
        }
        Err(Error::Shard(ShardError::SetInvalid {
            dir: dir.to_path_buf(),
            issues: self.listed,
        }))
    }
}

/// The reason of an error about an entry, without the path (the issue names the entry).
fn reason_of(e: Error) -> String {
    match e {
        Error::File(FileError::BadFile { reason, .. }) => reason,
        Error::File(FileError::Io { source, .. }) => source.to_string(),
        other => other.to_string(),
    }
}

/// A checked shard folder: the manifest and each rank's column files, memory-mapped from the
/// very files that were checked.
#[derive(Debug)]
pub struct ShardSet {
    /// The manifest.
    pub manifest: Manifest,
    /// `parts[rank][column]`.
    parts: Vec<Vec<Column<'static>>>,
    /// `files[rank][column]`: the open files the columns were checked and mapped from.
    files: Vec<Vec<File>>,
    /// `sums[rank][column]`: what the file's CRC-32 must be (checked by [`check`], or by
    /// [`merge`] while it reads the data anyway).
    sums: Vec<Vec<FileSum>>,
    /// Device and inode of every file read (manifest, records, columns).
    read: Vec<(u64, u64)>,
}

/// A file's recorded CRC-32 and the CRC-32 state after its header.
#[derive(Debug, Clone)]
struct FileSum {
    file: String,
    header: crc32fast::Hasher,
    expected: String,
}

impl FileSum {
    /// The issue, if the file's data hashed to `data` does not give the recorded CRC-32.
    fn verify(&self, data: &crc32fast::Hasher) -> Option<ShardIssue> {
        let mut h = self.header.clone();
        h.combine(data);
        let got = format!("{:08x}", h.finalize());
        (got != self.expected).then(|| ShardIssue::Checksum {
            file: self.file.clone(),
            expected: self.expected.clone(),
            got,
        })
    }
}

/// Checks a shard folder against its manifest: every part present, finished, of this run and
/// claimed by one folder only; every file a regular file inside the folder (no link is followed)
/// of the size, CRC-32, dtype and shape recorded.
///
/// # Errors
/// [`ShardError::ManifestInvalid`], [`FileError::BadFile`] or [`FileError::Io`] for the manifest;
/// [`ShardError::SetInvalid`] listing the problems found (at most [`MAX_LISTED_ISSUES`], then
/// their count).
pub fn check(dir: &Path) -> Result<ShardSet> {
    check_set(dir, true, true)
}

fn id_of(file: &File) -> Option<(u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    file.metadata().ok().map(|m| (m.dev(), m.ino()))
}

/// [`check`], the checksums verified only when `verify_sums` (else by the caller, as it reads),
/// the column files kept open for [`ShardSet::files`] only when `keep_files` (each is open anyway
/// while mapped; a second descriptor per file is only held for callers that hand files out).
fn check_set(dir: &Path, verify_sums: bool, keep_files: bool) -> Result<ShardSet> {
    let root = SafeDir::open(dir)?;
    let manifest = Manifest::read_in(&root)?;
    let mut read: Vec<(u64, u64)> = root
        .open_file(MANIFEST)
        .ok()
        .as_ref()
        .and_then(id_of)
        .into_iter()
        .collect();
    let w = manifest.world_size;
    let mut issues = Issues::default();
    // Every part-… entry, by the rank its record claims: the cost follows the entries there
    // are, not the world size the manifest states.
    let mut names: Vec<String> = root
        .names()?
        .into_iter()
        .filter(|n| n.starts_with("part-"))
        .collect();
    names.sort();
    let present: HashSet<&str> = names.iter().map(String::as_str).collect();
    let mut claims: BTreeMap<usize, Vec<String>> = BTreeMap::new();
    let mut records: HashMap<String, (PartRecord, SafeDir)> = HashMap::new();
    for name in &names {
        let unfinished = |reason: String| ShardIssue::Unfinished {
            part: name.clone(),
            reason,
        };
        let part = match root.open_dir(name) {
            Ok(p) => p,
            Err(e) => {
                issues.push(unfinished(reason_of(e)));
                continue;
            }
        };
        let record = part
            .read_capped(PART_RECORD, MAX_RECORD_BYTES, "a part record")
            .map_err(reason_of)
            .and_then(|t| {
                serde_json::from_slice::<PartRecord>(&t)
                    .map_err(|e| format!("{PART_RECORD} is not a part record: {e}"))
            });
        let record = match record {
            Ok(r) => r,
            Err(reason) => {
                issues.push(unfinished(reason));
                continue;
            }
        };
        if record.run_id != manifest.run_id
            || record.world_size != w
            || parse_part_name(name).map(|(_, fw)| fw) != Some(w)
        {
            issues.push(ShardIssue::ForeignPart {
                part: name.clone(),
                run_id: record.run_id.clone(),
                expected: manifest.run_id.clone(),
            });
            continue;
        }
        claims.entry(record.rank).or_default().push(name.clone());
        read.extend(part.open_file(PART_RECORD).ok().as_ref().and_then(id_of));
        records.insert(name.clone(), (record, part));
    }
    for (rank, parts) in &claims {
        if parts.len() > 1 {
            issues.push(ShardIssue::DuplicateClaim {
                rank: *rank,
                parts: parts.clone(),
            });
        } else if *rank >= w || parts.first() != Some(&part_name(*rank, w)) {
            issues.extend(parts.iter().map(|p| ShardIssue::Misplaced {
                part: p.clone(),
                rank: *rank,
            }));
        }
    }
    let mut parts = Vec::new();
    let mut files = Vec::new();
    let mut sums = Vec::new();
    for rank in 0..w {
        let entry_dir = part_name(rank, w);
        // Taken out of the map: the part's folder is closed once its files are checked.
        let Some((record, part)) = records.remove(&entry_dir) else {
            if !present.contains(entry_dir.as_str()) {
                issues.push(ShardIssue::MissingPart { part: entry_dir });
            }
            continue;
        };
        if record.rank != rank || claims.get(&rank).is_some_and(|c| c.len() > 1) {
            continue; // reported as misplaced or claimed twice
        }
        let entry = manifest.part(rank);
        let mut columns = Vec::new();
        let mut part_files = Vec::new();
        let mut part_sums = Vec::new();
        for (c, file) in manifest.columns.iter().zip(&entry.files) {
            match check_file(&part, file, c, entry.rows, &record) {
                Ok((col, opened, sum)) => {
                    if verify_sums {
                        issues.extend(sum.verify(&crc_hasher(col.bytes())));
                    }
                    read.extend(id_of(&opened));
                    columns.push(col);
                    if keep_files {
                        part_files.push(opened);
                    }
                    part_sums.push(sum);
                }
                Err(issue) => issues.push(issue),
            }
        }
        parts.push(columns);
        files.push(part_files);
        sums.push(part_sums);
    }
    issues.into_error(dir)?;
    Ok(ShardSet {
        manifest,
        parts,
        files,
        sums,
        read,
    })
}

/// Checks one column file of a part (opened in the part's folder, not following links) and maps
/// it; returns the column, the open file and its checksum state.
fn check_file(
    part: &SafeDir,
    file: &str,
    c: &ColumnRecord,
    rows: usize,
    record: &PartRecord,
) -> std::result::Result<(Column<'static>, File, FileSum), ShardIssue> {
    let name = format!("{}.npy", c.name);
    let bad = |reason: String| ShardIssue::BadFile {
        file: file.into(),
        reason,
    };
    let Some(rec) = record.files.iter().find(|f| f.name == name) else {
        return Err(bad("not in its part's record".into()));
    };
    let opened = match part.open_file(&name) {
        Ok(f) => f,
        Err(Error::File(FileError::Io { source, .. }))
            if source.kind() == std::io::ErrorKind::NotFound =>
        {
            return Err(ShardIssue::MissingFile { file: file.into() })
        }
        Err(e) => return Err(bad(reason_of(e))),
    };
    let len = opened.metadata().map_err(|e| bad(e.to_string()))?.len();
    if len != rec.bytes {
        return Err(ShardIssue::SizeMismatch {
            file: file.into(),
            expected: rec.bytes,
            got: len,
        });
    }
    let keep = opened.try_clone().map_err(|e| bad(e.to_string()))?;
    let (col, map) =
        npy::read_npy_file(opened, &part.path().join(&name)).map_err(|e| bad(reason_of(e)))?;
    let descr = npy::descr(&col.dtype()).into_owned();
    if descr != c.dtype || col.row_shape() != c.row_shape.as_slice() || col.rows() != rows {
        return Err(bad(format!(
            "holds {descr} {:?} x {} rows; the manifest says {} {:?} x {rows} rows",
            col.row_shape(),
            col.rows(),
            c.dtype,
            c.row_shape
        )));
    }
    let whole = map.bytes();
    let header_len = NpyHeader::parse(whole)
        .map_err(|e| bad(e.to_string()))?
        .data_offset;
    if header_len.checked_add(col.bytes().len()) != Some(whole.len()) {
        return Err(bad(
            "has bytes after its data (or changed while being read)".into(),
        ));
    }
    let mut h = crc32fast::Hasher::new();
    h.update(&whole[..header_len]);
    Ok((
        col,
        keep,
        FileSum {
            file: file.into(),
            header: h,
            expected: rec.crc32.clone(),
        },
    ))
}

impl ShardSet {
    /// The open column files of every rank (`[rank][column]`), the very files that were checked
    /// and are read: reopening them by path could read something else. (Empty for the set
    /// [`merge`] checks internally.)
    pub fn files(&self) -> &[Vec<File>] {
        &self.files
    }

    /// Rows of the merged output (`keep_padding`: with the sampler's repeated rows).
    pub fn rows(&self, keep_padding: bool) -> usize {
        if keep_padding {
            self.manifest.rows_with_padding
        } else {
            self.manifest.merged_rows
        }
    }

    /// Writes column `index` in global order into `w` (the `.npy` data only, no header):
    /// output row `p` is row `p / world_size` of rank `p % world_size`'s part. Rows are gathered
    /// a few MiB at a time, in parallel, while the previous block is being written; each part's
    /// data is hashed as it is read (rows left out of the output too), so the checksums cost no
    /// pass of their own. Returns the issues of files whose CRC-32 does not match.
    fn write_column(
        &self,
        index: usize,
        rows: usize,
        w: &mut (dyn Write + Send),
    ) -> std::io::Result<Vec<ShardIssue>> {
        let world = self.manifest.world_size;
        let sources: Vec<&[u8]> = self.parts.iter().map(|p| p[index].bytes()).collect();
        let row_bytes = self.parts.first().map_or(0, |p| p[index].row_bytes());
        let mut hashers = vec![crc32fast::Hasher::new(); world];
        // Rows of each part hashed so far.
        let mut hashed = vec![0usize; world];
        if rows > 0 && row_bytes > 0 {
            // A multiple of the world size, so a block takes the same rows from every part.
            let block_rows = ((8usize << 20) / row_bytes / world).max(1) * world;
            let fill = |k: usize, buf: &mut [u8]| {
                let start = k * block_rows;
                let end = (start + block_rows).min(rows);
                let len = (end - start) * row_bytes;
                let buf = &mut buf[..len];
                let sub = (1usize << 16).div_ceil(row_bytes).max(1);
                buf.par_chunks_mut(sub * row_bytes)
                    .enumerate()
                    .for_each(|(k, chunk)| {
                        for (j, dst) in chunk.chunks_exact_mut(row_bytes).enumerate() {
                            let p = start + k * sub + j;
                            let (rank, i) = (p % world, p / world);
                            dst.copy_from_slice(&sources[rank][i * row_bytes..(i + 1) * row_bytes]);
                        }
                    });
                // The rows just read, still in cache: rank r's rows below `(end - r) / world`.
                hashers
                    .par_iter_mut()
                    .zip(hashed.par_iter_mut())
                    .enumerate()
                    .for_each(|(r, (h, done))| {
                        let upto = if end > r {
                            (end - r).div_ceil(world)
                        } else {
                            0
                        };
                        let upto = upto.max(*done);
                        h.update(&sources[r][*done * row_bytes..upto * row_bytes]);
                        *done = upto;
                    });
                len
            };
            // Block k + 1 is gathered while block k is written.
            let block_len = block_rows.min(rows) * row_bytes;
            let mut bufs = vec![vec![0u8; block_len], vec![0u8; block_len]];
            crate::gather::pipelined(rows.div_ceil(block_rows), &mut bufs, fill, |bytes| {
                w.write_all(bytes)
            })?;
        }
        // Rows not in the output (the padding, when it is dropped) are checked too.
        let mut issues = Vec::new();
        for (r, (h, done)) in hashers.iter_mut().zip(&hashed).enumerate() {
            h.update(&sources[r][(*done * row_bytes).min(sources[r].len())..]);
            issues.extend(self.sums[r][index].verify(h));
        }
        Ok(issues)
    }

    /// Stages column `index` as the `.npy` file `dest` in `staged` (put in place when the set is
    /// committed, by the caller, once every checksum has matched); returns the open file and the
    /// checksum issues found while reading.
    fn stage_column(
        &self,
        staged: &mut Staged,
        index: usize,
        rows: usize,
        dest: &Path,
    ) -> Result<(File, Vec<ShardIssue>)> {
        let c = &self.manifest.columns[index];
        let col = &self.parts[0][index];
        let mut shape = vec![rows];
        shape.extend_from_slice(&c.row_shape);
        let header = NpyHeader::encode(&col.dtype(), &shape)?;
        let total = header.len() as u64 + (col.row_bytes() as u64).saturating_mul(rows as u64);
        let (temp, file) = staged.file(dest)?;
        let no_room = |e| fsafe::write_error(&temp, e, total);
        let issues = {
            let mut out = BufWriter::with_capacity(1 << 20, &file);
            out.write_all(&header).map_err(no_room)?;
            let issues = self.write_column(index, rows, &mut out).map_err(no_room)?;
            out.flush().map_err(no_room)?;
            issues
        };
        Ok((file, issues))
    }
}

/// What [`merge`] reads and writes (the options of `arraydrain merge`).
#[derive(Debug, Clone, Default)]
pub struct MergeOptions {
    /// The shard folder (holding `manifest.json` and `part-…` folders).
    pub dir: PathBuf,
    /// Write one `.npz` archive (one member per column). Exactly one of `out` / `out_dir`.
    pub out: Option<PathBuf>,
    /// Write a folder of `.npy` files (one per column), streamed: never held in memory.
    pub out_dir: Option<PathBuf>,
    /// With `out`: stage the columns as `.npy` files beside the archive and stream them into
    /// it, so outputs larger than RAM work (without it the columns are gathered in memory).
    pub mmap: bool,
    /// Keep the rows `DistributedSampler` repeated to pad the shards to an even split.
    pub keep_padding: bool,
}

/// `merge --out-dir DIR`: each column streamed into its staged `.npy` file; returns the files,
/// open.
fn merge_to_dir(
    set: &ShardSet,
    names: &[String],
    rows: usize,
    dir: &Path,
    mut staged: Staged,
    refuse: impl Fn(Vec<ShardIssue>) -> Result<()>,
) -> Result<Vec<File>> {
    staged.create_dir_all(dir)?;
    let mut issues = Vec::new();
    let mut opened = Vec::new();
    for (i, n) in names.iter().enumerate() {
        let path = dir.join(format!("{n}.npy"));
        let (file, found) = set.stage_column(&mut staged, i, rows, &path)?;
        issues.extend(found);
        opened.push(file);
    }
    refuse(issues)?;
    staged.commit()?;
    Ok(opened)
}

/// `merge --out X.npz --mmap`: the columns staged as `.npy` files in a scratch folder beside the
/// archive, then streamed into it.
fn merge_to_npz_mapped(
    set: &ShardSet,
    names: &[String],
    rows: usize,
    path: &Path,
    mut staged: Staged,
    refuse: impl Fn(Vec<ShardIssue>) -> Result<()>,
) -> Result<()> {
    staged.check_not_input(path)?;
    let scratch = staged.scratch_dir(path)?;
    let mut files = Vec::new();
    let mut issues = Vec::new();
    let mut inner = Staged::new();
    for (i, n) in names.iter().enumerate() {
        let file = scratch.join(format!("{n}.npy"));
        let (_, found) = set.stage_column(&mut inner, i, rows, &file)?;
        issues.extend(found);
        files.push((n.clone(), file));
    }
    refuse(issues)?;
    inner.commit()?;
    npy::pack_npz(&mut staged, path, &files, &WriteOptions::new())?;
    staged.commit()?;
    Ok(())
}

/// `merge --out X.npz`: the columns gathered in memory, then written into the archive.
fn merge_to_npz(
    set: &ShardSet,
    names: &[String],
    rows: usize,
    path: &Path,
    mut staged: Staged,
    refuse: impl Fn(Vec<ShardIssue>) -> Result<()>,
) -> Result<()> {
    staged.check_not_input(path)?;
    let mut columns = Vec::new();
    let mut issues = Vec::new();
    for (i, n) in names.iter().enumerate() {
        let src = &set.parts[0][i];
        let mut col = crate::output::ColumnArray::zeroed(n, src.dtype(), src.row_shape(), rows)?;
        let found = set
            .write_column(i, rows, &mut std::io::Cursor::new(col.as_bytes_mut()))
            .map_err(|e| Error::io(path, e))?;
        issues.extend(found);
        columns.push(col);
    }
    refuse(issues)?;
    npy::stage_npz(&mut staged, path, &columns, &WriteOptions::new())?;
    staged.commit()?;
    Ok(())
}

/// What a merge did.
#[derive(Debug, Clone)]
pub struct MergeSummary {
    /// Ranks merged.
    pub parts: usize,
    /// Output rows.
    pub rows: usize,
    /// Padding rows dropped.
    pub padding_dropped: usize,
    /// Output bytes (array data).
    pub bytes: u64,
    /// Time spent checking the manifest, the parts' records, sizes and headers (the checksums
    /// are verified while the data is read for the output).
    pub check: Duration,
    /// Wall time.
    pub elapsed: Duration,
    /// The files written.
    pub outputs: Vec<PathBuf>,
}

impl fmt::Display for MergeSummary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let secs = self.elapsed.as_secs_f64();
        write!(
            f,
            "{} parts checked in {:.3} s, {} rows ({} padding rows dropped), {:.1} MB in {:.3} s ({:.2} GB/s) -> {}",
            self.parts,
            self.check.as_secs_f64(),
            self.rows,
            self.padding_dropped,
            self.bytes as f64 / 1e6,
            secs,
            if secs > 0.0 { self.bytes as f64 / secs / 1e9 } else { 0.0 },
            match self.outputs.as_slice() {
                [one] => one.display().to_string(),
                many => format!("{} files", many.len()),
            }
        )
    }
}

/// `arraydrain merge`: checks a shard folder ([`check`]) and writes its columns in global
/// sampler order.
///
/// Every output goes through one [`Staged`] set: written under temporary names and put in place
/// together only when every file is complete and every checksum matched (a `--out-dir` folder
/// gets all its files or none), removed on failure or `SIGINT`/`SIGTERM`. No output may be
/// inside the shard folder or be any file the merge reads (by any spelling or hard link).
///
/// # Errors
/// As [`check`] (then nothing is written); [`FileError::PathConflict`] for an output that would
/// replace an input; [`FileError::Io`] or [`FileError::NoSpace`] for the outputs.
pub fn merge(args: &MergeOptions) -> Result<MergeSummary> {
    merge_open(args).map(|(summary, _)| summary)
}

/// [`merge`], also returning each written `.npy` file open for reading (with `--out-dir`; none
/// for `--out`), so that a caller reads exactly what was written without reopening it by path.
///
/// # Errors
/// As [`merge`].
pub fn merge_open(args: &MergeOptions) -> Result<(MergeSummary, Vec<File>)> {
    let started = Instant::now();
    // Everything but the checksums, which are verified while the data is read for the output.
    let set = check_set(&args.dir, false, false)?;
    let checked = started.elapsed();
    let rows = set.rows(args.keep_padding);
    let names: Vec<String> = set
        .manifest
        .columns
        .iter()
        .map(|c| c.name.clone())
        .collect();
    let bytes: u64 = set
        .parts
        .first()
        .map_or(0, |p| p.iter().map(|c| (c.row_bytes() * rows) as u64).sum());
    let refuse = |issues: Vec<ShardIssue>| {
        let mut all = Issues::default();
        all.extend(issues);
        all.into_error(&args.dir)
    };
    let mut staged = Staged::new();
    staged.protect_tree(&args.dir);
    staged.protect_ids(&set.read);
    let (outputs, opened) = match (&args.out_dir, &args.out) {
        (Some(dir), _) => {
            let opened = merge_to_dir(&set, &names, rows, dir, staged, refuse)?;
            let paths = names.iter().map(|n| dir.join(format!("{n}.npy"))).collect();
            (paths, opened)
        }
        (None, Some(path)) if args.mmap => {
            merge_to_npz_mapped(&set, &names, rows, path, staged, refuse)?;
            (vec![path.clone()], Vec::new())
        }
        (None, Some(path)) => {
            merge_to_npz(&set, &names, rows, path, staged, refuse)?;
            (vec![path.clone()], Vec::new())
        }
        (None, None) => {
            return Err(Error::ConflictingOptions {
                reason: "merge needs an output: --out OUT.npz or --out-dir DIR".into(),
            })
        }
    };
    let summary = MergeSummary {
        parts: set.manifest.world_size,
        rows,
        padding_dropped: set.manifest.rows_with_padding.saturating_sub(rows),
        bytes,
        check: checked,
        elapsed: started.elapsed(),
        outputs,
    };
    Ok((summary, opened))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(n: usize, w: usize, shard_drop_last: bool, batch: usize, drop_last: bool) -> RunSpec {
        RunSpec {
            world_size: w,
            table_rows: n,
            order_kind: "sequential",
            seed: None,
            indices_file: None,
            indices_crc32: None,
            order_length: n,
            shard_drop_last,
            batch_size: batch,
            drop_last,
            columns: vec![ColumnRecord {
                name: "x".into(),
                dtype: "<f4".into(),
                row_shape: vec![2],
            }],
            inputs: vec![],
        }
    }

    #[test]
    fn part_names_sort_in_rank_order() {
        assert_eq!(part_name(3, 8), "part-00003-of-00008");
        assert_eq!(part_name(7, 123_456), "part-000007-of-123456");
        let mut names: Vec<String> = (0..12).map(|r| part_name(r, 12)).collect();
        let ranks = names.clone();
        names.sort();
        assert_eq!(names, ranks);
        assert_eq!(parse_part_name("part-00003-of-00008"), Some((3, 8)));
        assert_eq!(parse_part_name("part-x-of-8"), None);
    }

    #[test]
    fn manifest_rows_follow_the_sampler_and_the_loader() {
        // 10 rows, 3 ranks: padded to 12 (2 repeats), 4 per rank.
        let m = Manifest::compute(&spec(10, 3, false, 2, false)).unwrap();
        assert_eq!(
            (m.part(0).rows, m.rows_with_padding, m.merged_rows),
            (4, 12, 10)
        );
        assert!(m.order.padding_repeats_rows);
        assert_eq!(m.order.padded_rows, 2);
        // Cut to 9, 3 per rank, no padding.
        let m = Manifest::compute(&spec(10, 3, true, 2, false)).unwrap();
        assert_eq!(
            (m.part(2).rows, m.rows_with_padding, m.merged_rows),
            (3, 9, 9)
        );
        assert!(!m.order.padding_repeats_rows);
        // The loader's drop_last: 3 per rank in batches of 2 keeps 2 each.
        let m = Manifest::compute(&spec(10, 3, true, 2, true)).unwrap();
        assert_eq!((m.part(1).rows, m.merged_rows), (2, 6));
        // Padded 4 per rank, batches of 3: 3 kept each, 9 positions, all within the 10 rows.
        let m = Manifest::compute(&spec(10, 3, false, 3, true)).unwrap();
        assert_eq!((m.rows_with_padding, m.merged_rows), (9, 9));
        // Fewer rows than ranks: 2 rows over 5 ranks pads 3.
        let m = Manifest::compute(&spec(2, 5, false, 1, false)).unwrap();
        assert_eq!(
            (m.rows_with_padding, m.merged_rows, m.order.padded_rows),
            (5, 2, 3)
        );
        assert_eq!(m.part(4).files, ["part-00004-of-00005/x.npy"]);
    }

    #[test]
    fn the_run_id_changes_with_every_input_of_the_manifest() {
        let base = Manifest::compute(&spec(10, 3, false, 2, false)).unwrap();
        assert_eq!(base.run_id.len(), 16);
        assert_eq!(
            base,
            Manifest::compute(&spec(10, 3, false, 2, false)).unwrap()
        );
        for other in [
            spec(11, 3, false, 2, false),
            spec(10, 4, false, 2, false),
            spec(10, 3, true, 2, false),
            spec(10, 3, false, 3, false),
            spec(10, 3, false, 2, true),
        ] {
            assert_ne!(Manifest::compute(&other).unwrap().run_id, base.run_id);
        }
        let mut seeded = spec(10, 3, false, 2, false);
        seeded.order_kind = "shuffle";
        seeded.seed = Some(1);
        let a = Manifest::compute(&seeded).unwrap();
        seeded.seed = Some(2);
        assert_ne!(a.run_id, Manifest::compute(&seeded).unwrap().run_id);
        // Explicit orders of the same file name and size, different content.
        let mut explicit = spec(10, 3, false, 2, false);
        explicit.order_kind = "indices";
        explicit.indices_file = Some("order.npy".into());
        explicit.indices_crc32 = Some("0badf00d".into());
        let a = Manifest::compute(&explicit).unwrap();
        explicit.indices_crc32 = Some("12345678".into());
        assert_ne!(a.run_id, Manifest::compute(&explicit).unwrap().run_id);
    }

    #[test]
    fn a_manifest_whose_derived_fields_were_rewritten_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let write = |m: &Manifest| {
            let mut m = m.clone();
            m.run_id = m.content_id(); // rehashed, as a careful forger would
            std::fs::write(
                dir.path().join(MANIFEST),
                serde_json::to_string(&m).unwrap(),
            )
            .unwrap();
        };
        let good = Manifest::compute(&spec(10, 3, false, 2, false)).unwrap();
        write(&good);
        assert_eq!(Manifest::read(dir.path()).unwrap(), good);
        let reasons = |m: Manifest| {
            write(&m);
            match Manifest::read(dir.path()) {
                Err(Error::Shard(ShardError::ManifestInvalid { reason, .. })) => reason,
                other => panic!("{other:?}"),
            }
        };
        let mut m = good.clone();
        m.merged_rows = 12;
        assert!(reasons(m).contains("row counts"));
        let mut m = good.clone();
        m.part_rows = 5;
        assert!(reasons(m).contains("row counts"));
        let mut m = good.clone();
        m.columns.push(m.columns[0].clone());
        assert!(reasons(m).contains("appears twice"));
        for name in [".arraydrain-AbC123", "evil\u{202E}ypn.npy"] {
            let mut m = good.clone();
            m.columns[0].name = name.into();
            assert!(reasons(m).contains("not a plain file name"), "{name:?}");
        }
        for w in [
            usize::MAX,
            1_000_000_000,
            crate::sampler::MAX_WORLD_SIZE + 1,
        ] {
            let mut m = good.clone();
            m.world_size = w;
            assert!(reasons(m).contains("more ranks than a run may have"), "{w}");
        }
        let mut m = good.clone();
        m.columns[0].name = "../x".into();
        assert!(reasons(m).contains("not a plain file name"));
        let mut m = good.clone();
        m.order.kind = "random".into();
        assert!(reasons(m).contains("unknown order kind"));
        let mut m = good;
        m.batch.batch_size = 0;
        assert!(reasons(m).contains("batch_size"));
    }

    #[test]
    fn crc_in_parallel_chunks_equals_the_plain_crc() {
        let data: Vec<u8> = (0..(9u32 << 20) + 17).map(|i| (i * 7 + 3) as u8).collect();
        let mut plain = crc32fast::Hasher::new();
        plain.update(&data);
        assert_eq!(crc_hasher(&data).finalize(), plain.finalize());
        // zlib.crc32(b"123456789") == 0xcbf43926
        assert_eq!(crc_hex(b"123456789"), "cbf43926");
    }
}
