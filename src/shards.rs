//! Shards of a distributed run and how they go back together.
//!
//! Each rank of `arraydrain convert --distributed --out-dir OUT` writes its `DistributedSampler`
//! shard as `OUT/part-RRRRR-of-WWWWW/COLUMN.npy` (names that sort), and every rank writes the
//! same `OUT/manifest.json`, which it computes alone from the inputs, the world size, the order,
//! the seed and both `drop_last` flags — no rank waits on another. A part is staged in a hidden
//! folder, closed with its record `part.json` (the run id, the rank, and each file's size and
//! CRC-32), and renamed into place as a whole; so a part folder is either complete or absent, and
//! a second process claiming the same rank fails instead of overwriting it.
//!
//! [`merge`] checks every part against the manifest (present, finished, of this run, claimed
//! once, sizes, headers and checksums) and reassembles the global order: exactly
//! `x[sampler order]`, the DistributedSampler's padding removed unless asked to keep it.
//!
//! The manifest (`format` `arraydrain-shards`, `version` 1) is plain JSON and the parts are plain
//! `.npy` files, so other tools read the folder directly (see the README).

use std::collections::BTreeMap;
use std::fmt;
use std::fs::File;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::convert::{self, ConvertArgs, ConvertSummary, Device};
use crate::error::{Error, Result};
use crate::launcher::{self, Placement};
use crate::npy::{self, NpyHeader, WriteOptions};
use crate::table::Column;

/// The manifest's `format` value.
pub const FORMAT: &str = "arraydrain-shards";
/// The manifest's `version` value.
pub const VERSION: u32 = 1;
/// The manifest's file name in the output folder.
pub const MANIFEST: &str = "manifest.json";
/// A part's record file name in its folder.
pub const PART_RECORD: &str = "part.json";

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
/// computable by every rank alone.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    /// Always [`FORMAT`].
    pub format: String,
    /// Always [`VERSION`].
    pub version: u32,
    /// A hash of everything below (16 hex digits): parts of one run carry it; a part or
    /// manifest of another run does not match.
    pub run_id: String,
    /// Number of ranks (and parts).
    pub world_size: usize,
    /// Rows of the input table.
    pub table_rows: usize,
    /// The order and how it was split.
    pub order: OrderRecord,
    /// The batching.
    pub batch: BatchRecord,
    /// Output columns.
    pub columns: Vec<ColumnRecord>,
    /// The inputs (file name and size).
    pub inputs: Vec<InputRecord>,
    /// Rows of the merged output: the ranks' rows interleaved in sampler order, without the
    /// padding.
    pub merged_rows: usize,
    /// Rows of the merged output when the padding is kept (the sum of the parts' rows).
    pub rows_with_padding: usize,
    /// One entry per rank.
    pub parts: Vec<PartEntry>,
}

/// The order of a sharded run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
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
pub struct BatchRecord {
    /// Rows per batch.
    pub batch_size: usize,
    /// `DataLoader(drop_last=)`: each rank dropped its short last batch.
    pub drop_last: bool,
}

/// One output column.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
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
pub struct InputRecord {
    /// File name (without its folder: ranks may read copies in different places).
    pub name: String,
    /// Size in bytes.
    pub bytes: u64,
    /// CRC-32 of its first and last MiB (the whole file when smaller), 8 hex digits: a cheap
    /// fingerprint that tells regenerated inputs of the same size apart.
    pub sample_crc32: String,
}

/// One rank's part.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
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
    /// [`Error::ZeroWorldSize`], [`Error::ZeroBatchSize`].
    pub fn compute(spec: &RunSpec) -> Result<Manifest> {
        let w = spec.world_size;
        if w == 0 {
            return Err(Error::ZeroWorldSize);
        }
        if spec.batch_size == 0 {
            return Err(Error::ZeroBatchSize);
        }
        let n = spec.order_length;
        let per_rank = if spec.shard_drop_last && n % w != 0 {
            n / w
        } else {
            n.div_ceil(w)
        };
        let padded_total = if n == 0 { 0 } else { per_rank * w };
        let kept = if spec.drop_last {
            per_rank / spec.batch_size * spec.batch_size
        } else {
            per_rank
        };
        let rows_with_padding = kept * w;
        let parts = (0..w)
            .map(|rank| {
                let dir = part_name(rank, w);
                PartEntry {
                    rank,
                    files: spec
                        .columns
                        .iter()
                        .map(|c| format!("{dir}/{}.npy", c.name))
                        .collect(),
                    dir,
                    rows: kept,
                }
            })
            .collect();
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
            parts,
        };
        m.run_id = m.content_id();
        Ok(m)
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

    /// Reads and checks `DIR/manifest.json` (format, version, its own run id).
    ///
    /// # Errors
    /// [`Error::Io`] when it cannot be read; [`Error::ManifestInvalid`] when it is not a
    /// manifest of this format and version, or its content does not match its run id.
    pub fn read(dir: &Path) -> Result<Manifest> {
        let path = dir.join(MANIFEST);
        let text = std::fs::read_to_string(&path).map_err(|e| Error::io(&path, e))?;
        let invalid = |reason: String| Error::ManifestInvalid {
            path: path.clone(),
            reason,
        };
        let m: Manifest = serde_json::from_str(&text).map_err(|e| invalid(e.to_string()))?;
        if m.format != FORMAT || m.version != VERSION {
            return Err(invalid(format!(
                "format {:?} version {}; this build reads {FORMAT:?} version {VERSION}",
                m.format, m.version
            )));
        }
        let id = m.content_id();
        if id != m.run_id {
            return Err(invalid(format!(
                "its content hashes to {id}, not to its run id {}: it was edited or damaged",
                m.run_id
            )));
        }
        // Every derived field (parts, files, row counts) must be what the run's inputs give, and
        // every column name a plain file name: a manifest is a file, and files are untrusted.
        for c in &m.columns {
            if let Some(why) = crate::npy::unsafe_name_reason(&c.name) {
                return Err(invalid(format!(
                    "column name {:?} is not a plain file name: {why}",
                    c.name
                )));
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

/// Writes `bytes` to `path` atomically: a temporary file created exclusively in the same
/// folder, then renamed over `path`.
fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let mut tmp = tempfile::Builder::new()
        .prefix(".arraydrain-")
        .suffix(".tmp")
        .tempfile_in(dir)
        .map_err(|e| Error::io(dir, e))?;
    tmp.write_all(bytes).map_err(|e| Error::io(tmp.path(), e))?;
    tmp.persist(path).map_err(|e| Error::io(path, e.error))?;
    Ok(())
}

/// CRC-32 of a whole file, the data region hashed in parallel chunks and combined.
fn file_crc32(path: &Path) -> Result<(u64, u32)> {
    let len = std::fs::metadata(path)
        .map_err(|e| Error::io(path, e))?
        .len();
    let col = npy::read_npy(path)?;
    let data = col.bytes();
    let header_len = len
        .checked_sub(data.len() as u64)
        .ok_or_else(|| Error::BadFile {
            path: path.to_path_buf(),
            reason: "changed while being read".into(),
        })?;
    let mut header = vec![0u8; header_len as usize];
    File::open(path)
        .and_then(|mut f| f.read_exact(&mut header))
        .map_err(|e| Error::io(path, e))?;
    Ok((len, crc_of(&header, data)))
}

fn crc_of(header: &[u8], data: &[u8]) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(header);
    h.combine(&crc_hasher(data));
    h.finalize()
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

/// A file's size and the CRC-32 of its first and last MiB.
fn sample_crc(path: &Path) -> Result<(u64, String)> {
    const EDGE: u64 = 1 << 20;
    let io = |e| Error::io(path, e);
    let mut f = File::open(path).map_err(io)?;
    let len = f.metadata().map_err(io)?.len();
    let mut h = crc32fast::Hasher::new();
    let mut buf = vec![0u8; len.min(EDGE) as usize];
    f.read_exact(&mut buf).map_err(io)?;
    h.update(&buf);
    if len > EDGE {
        use std::io::{Seek, SeekFrom};
        let tail = (len - EDGE).max(EDGE);
        buf.resize((len - tail) as usize, 0);
        f.seek(SeekFrom::Start(tail)).map_err(io)?;
        f.read_exact(&mut buf).map_err(io)?;
        h.update(&buf);
    }
    Ok((len, format!("{:08x}", h.finalize())))
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

/// The run described by `args` (inputs, columns, order, batching) for `world_size` ranks.
fn run_spec(args: &ConvertArgs, world_size: usize) -> Result<RunSpec> {
    let mut table = npy::read_table(&args.inputs)?;
    if let Some(names) = &args.columns {
        let names: Vec<&str> = names.iter().map(String::as_str).collect();
        table = table.select(&names)?;
    }
    let columns = table
        .columns()
        .iter()
        .map(|c| {
            Ok(ColumnRecord {
                name: c.name().to_string(),
                dtype: npy::descr(&c.dtype())
                    .map(|d| d.into_owned())
                    .ok_or_else(|| Error::UnsupportedDType {
                        descr: format!(
                            "{} (column {:?}; NumPy has no such dtype)",
                            c.dtype(),
                            c.name()
                        ),
                    })?,
                row_shape: c.row_shape().to_vec(),
            })
        })
        .collect::<Result<Vec<_>>>()?;
    let mut inputs = Vec::new();
    for p in &args.inputs {
        let (bytes, sample_crc32) = sample_crc(p)?;
        inputs.push(InputRecord {
            name: file_name(p),
            bytes,
            sample_crc32,
        });
    }
    let (order_kind, seed, indices_file, indices_crc32, order_length) = match &args.indices {
        Some(path) => {
            let n = npy::read_indices(path)?.len();
            let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
            inputs.push(InputRecord {
                name: file_name(path),
                bytes: bytes.len() as u64,
                sample_crc32: sample_crc(path)?.1,
            });
            let crc = format!("{:08x}", crc32fast::hash(&bytes));
            ("indices", None, Some(file_name(path)), Some(crc), n)
        }
        None if args.shuffle => ("shuffle", Some(args.seed), None, None, table.rows()),
        None => ("sequential", None, None, None, table.rows()),
    };
    Ok(RunSpec {
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
    })
}

/// `convert --distributed`: this rank's shard into `OUT/part-…/`, and the manifest.
///
/// # Errors
/// As [`convert::run`]; the launcher errors of [`launcher::resolve`];
/// [`Error::OptionConflict`] without `--out-dir` or with `--out` / `--save-order`;
/// [`Error::ShardExists`] when this rank's part, or a manifest of another run, is already in the
/// output folder.
pub fn convert_distributed(args: &ConvertArgs) -> Result<ConvertSummary> {
    let started = Instant::now();
    let out = match (&args.out_dir, &args.out, &args.save_order) {
        (Some(dir), None, None) => dir.clone(),
        _ => {
            return Err(Error::OptionConflict {
                option: "--distributed",
                reason: "writes one part per rank under --out-dir DIR (not --out, not \
                         --save-order)"
                    .into(),
            })
        }
    };
    let placement = launcher::detect(args.rank, args.world_size)?;
    // The CUDA device is the local rank; `--device auto` falls back to the CPU when that device
    // cannot be named, as it does when CUDA cannot be used.
    let mut device = args.device;
    let ordinal = match device {
        Device::Cpu => 0,
        Device::Cuda | Device::Auto => match launcher::cuda_ordinal(
            placement.local_rank,
            std::env::var("CUDA_VISIBLE_DEVICES").ok().as_deref(),
        ) {
            Ok(o) => o,
            Err(e) if device == Device::Cuda => return Err(e),
            Err(_) => {
                device = Device::Cpu;
                0
            }
        },
    };
    let manifest = Manifest::compute(&run_spec(args, placement.world_size)?)?;
    std::fs::create_dir_all(&out).map_err(|e| Error::io(&out, e))?;

    // Refuse early (before the drain) to mix with another run.
    let manifest_path = out.join(MANIFEST);
    if manifest_path.exists() {
        match Manifest::read(&out) {
            Ok(m) if m.run_id == manifest.run_id => {}
            Ok(m) => {
                return Err(Error::ShardExists {
                    path: manifest_path,
                    reason: format!(
                        "a manifest of another run ({}; this run is {})",
                        m.run_id, manifest.run_id
                    ),
                })
            }
            Err(e) => {
                return Err(Error::ShardExists {
                    path: manifest_path,
                    reason: format!("a file that is not this run's manifest ({e})"),
                })
            }
        }
    }
    let entry = &manifest.parts[placement.rank];
    let part_dir = out.join(&entry.dir);
    if part_dir.exists() {
        return Err(part_exists(&part_dir));
    }
    let staging = tempfile::Builder::new()
        .prefix(&format!(".{}.", entry.dir))
        .tempdir_in(&out)
        .map_err(|e| Error::io(&out, e))?;
    let mut inner = args.clone();
    inner.distributed = false;
    inner.device = device;
    inner.rank = Some(placement.rank);
    inner.world_size = Some(placement.world_size);
    inner.out_dir = Some(staging.path().to_path_buf());
    let mut summary = convert::run_on(&inner, ordinal)?;
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
    let mut files = Vec::new();
    for c in &manifest.columns {
        let name = format!("{}.npy", c.name);
        let (bytes, crc) = file_crc32(&staging.path().join(&name))?;
        files.push(FileRecord {
            name,
            bytes,
            crc32: format!("{crc:08x}"),
        });
    }
    let record = PartRecord {
        format: FORMAT.into(),
        version: VERSION,
        run_id: manifest.run_id.clone(),
        rank: placement.rank,
        world_size: placement.world_size,
        rows: entry.rows,
        files,
        writer: writer_id(),
    };
    let text = serde_json::to_string_pretty(&record).map_err(|e| Error::ManifestInvalid {
        path: part_dir.join(PART_RECORD),
        reason: e.to_string(),
    })?;
    write_atomic(&staging.path().join(PART_RECORD), text.as_bytes())?;
    // Every rank writes the same manifest (atomically), once its own part is ready.
    let text = serde_json::to_string_pretty(&manifest).map_err(|e| Error::ManifestInvalid {
        path: manifest_path.clone(),
        reason: e.to_string(),
    })?;
    write_atomic(&manifest_path, text.as_bytes())?;
    // The part appears whole or not at all; renaming onto an existing (non-empty) part fails, so
    // a second process claiming this rank cannot replace the first one's part.
    if part_dir.exists() {
        return Err(part_exists(&part_dir));
    }
    std::fs::rename(staging.path(), &part_dir).map_err(|e| {
        if part_dir.exists() {
            part_exists(&part_dir)
        } else {
            Error::io(&part_dir, e)
        }
    })?;
    let _ = staging.keep();
    summary.outputs = entry.files.iter().map(|f| out.join(f)).collect();
    summary.elapsed = started.elapsed();
    summary.placement = Some(placement);
    Ok(summary)
}

fn part_exists(part_dir: &Path) -> Error {
    let by = std::fs::read_to_string(part_dir.join(PART_RECORD))
        .ok()
        .and_then(|t| serde_json::from_str::<PartRecord>(&t).ok())
        .map_or_else(
            || "an unfinished or unknown writer".to_string(),
            |r| format!("rank {} of run {} ({})", r.rank, r.run_id, r.writer),
        );
    Error::ShardExists {
        path: part_dir.to_path_buf(),
        reason: format!(
            "a part written by {by}: another process claims the same rank, or the folder holds \
             an earlier run (remove it or write elsewhere)"
        ),
    }
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
    /// A file is not the array the manifest describes.
    BadFile {
        /// The file.
        file: String,
        /// What is wrong.
        reason: String,
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
        }
    }
}

/// A checked shard folder: the manifest and each rank's column files, memory-mapped.
#[derive(Debug)]
pub struct ShardSet {
    /// The manifest.
    pub manifest: Manifest,
    /// `parts[rank][column]`.
    parts: Vec<Vec<Column<'static>>>,
    /// `sums[rank][column]`: what the file's CRC-32 must be (checked by [`check`], or by
    /// [`merge`] while it reads the data anyway).
    sums: Vec<Vec<FileSum>>,
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
/// claimed by one folder only; every file of the size, CRC-32, dtype and shape recorded.
///
/// # Errors
/// [`Error::ManifestInvalid`] or [`Error::Io`] for the manifest; [`Error::ShardSetInvalid`]
/// listing every problem found.
pub fn check(dir: &Path) -> Result<ShardSet> {
    check_set(dir, true)
}

/// [`check`], the checksums verified only when `verify_sums` (else by the caller, as it reads).
fn check_set(dir: &Path, verify_sums: bool) -> Result<ShardSet> {
    let manifest = Manifest::read(dir)?;
    let w = manifest.world_size;
    let mut issues = Vec::new();
    // Every part-… folder, by the rank its record claims.
    let mut claims: BTreeMap<usize, Vec<String>> = BTreeMap::new();
    let mut records: BTreeMap<String, PartRecord> = BTreeMap::new();
    let entries = std::fs::read_dir(dir).map_err(|e| Error::io(dir, e))?;
    let mut names: Vec<String> = entries
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("part-"))
        .collect();
    names.sort();
    for name in &names {
        let record_path = dir.join(name).join(PART_RECORD);
        let record = std::fs::read_to_string(&record_path)
            .map_err(|e| e.to_string())
            .and_then(|t| serde_json::from_str::<PartRecord>(&t).map_err(|e| e.to_string()));
        let record = match record {
            Ok(r) => r,
            Err(reason) => {
                issues.push(ShardIssue::Unfinished {
                    part: name.clone(),
                    reason,
                });
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
        records.insert(name.clone(), record);
    }
    for (rank, parts) in &claims {
        if parts.len() > 1 {
            issues.push(ShardIssue::DuplicateClaim {
                rank: *rank,
                parts: parts.clone(),
            });
        } else if parts.first() != Some(&part_name(*rank, w)) {
            issues.extend(parts.iter().map(|p| ShardIssue::Misplaced {
                part: p.clone(),
                rank: *rank,
            }));
        }
    }
    let mut parts = Vec::with_capacity(w);
    let mut sums = Vec::with_capacity(w);
    for entry in &manifest.parts {
        let Some(record) = records.get(&entry.dir) else {
            if !names.contains(&entry.dir) {
                issues.push(ShardIssue::MissingPart {
                    part: entry.dir.clone(),
                });
            }
            continue;
        };
        if record.rank != entry.rank || claims.get(&entry.rank).is_some_and(|c| c.len() > 1) {
            continue; // reported as misplaced or claimed twice
        }
        let mut columns = Vec::new();
        let mut part_sums = Vec::new();
        for (c, file) in manifest.columns.iter().zip(&entry.files) {
            match check_file(dir, file, c, entry.rows, record) {
                Ok((col, sum)) => {
                    if verify_sums {
                        issues.extend(sum.verify(&crc_hasher(col.bytes())));
                    }
                    columns.push(col);
                    part_sums.push(sum);
                }
                Err(issue) => issues.push(issue),
            }
        }
        parts.push(columns);
        sums.push(part_sums);
    }
    if !issues.is_empty() {
        return Err(Error::ShardSetInvalid {
            dir: dir.to_path_buf(),
            issues,
        });
    }
    Ok(ShardSet {
        manifest,
        parts,
        sums,
    })
}

fn check_file(
    dir: &Path,
    file: &str,
    c: &ColumnRecord,
    rows: usize,
    record: &PartRecord,
) -> std::result::Result<(Column<'static>, FileSum), ShardIssue> {
    let path = dir.join(file);
    let name = file_name(&path);
    let Some(rec) = record.files.iter().find(|f| f.name == name) else {
        return Err(ShardIssue::BadFile {
            file: file.into(),
            reason: "not in its part's record".into(),
        });
    };
    let len = match std::fs::metadata(&path) {
        Ok(m) => m.len(),
        Err(_) => return Err(ShardIssue::MissingFile { file: file.into() }),
    };
    if len != rec.bytes {
        return Err(ShardIssue::SizeMismatch {
            file: file.into(),
            expected: rec.bytes,
            got: len,
        });
    }
    let bad = |reason: String| ShardIssue::BadFile {
        file: file.into(),
        reason,
    };
    let col = npy::read_npy(&path).map_err(|e| bad(e.to_string()))?;
    let descr = npy::descr(&col.dtype()).map_or_else(|| "?".to_string(), |d| d.into_owned());
    if descr != c.dtype || col.row_shape() != c.row_shape.as_slice() || col.rows() != rows {
        return Err(bad(format!(
            "holds {descr} {:?} x {} rows; the manifest says {} {:?} x {rows} rows",
            col.row_shape(),
            col.rows(),
            c.dtype,
            c.row_shape
        )));
    }
    let header_len = (len as usize)
        .checked_sub(col.bytes().len())
        .ok_or_else(|| bad("changed while being read".into()))?;
    let mut header = vec![0u8; header_len];
    File::open(&path)
        .and_then(|mut f| f.read_exact(&mut header))
        .map_err(|e| bad(e.to_string()))?;
    let mut h = crc32fast::Hasher::new();
    h.update(&header);
    Ok((
        col,
        FileSum {
            file: file.into(),
            header: h,
            expected: rec.crc32.clone(),
        },
    ))
}

impl ShardSet {
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
            let gather = |buf: &mut Vec<u8>, start: usize| {
                let end = (start + block_rows).min(rows);
                buf.resize((end - start) * row_bytes, 0);
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
            };
            let mut gather = gather;
            let (mut a, mut b) = (Vec::new(), Vec::new());
            gather(&mut a, 0);
            let mut start = 0;
            while start < rows {
                let next = start + block_rows;
                let (written, ()) = rayon::join(
                    || w.write_all(&a),
                    || {
                        if next < rows {
                            gather(&mut b, next);
                        }
                    },
                );
                written?;
                std::mem::swap(&mut a, &mut b);
                start = next;
            }
        }
        // Rows not in the output (the padding, when it is dropped) are checked too.
        let mut issues = Vec::new();
        for (r, (h, done)) in hashers.iter_mut().zip(&hashed).enumerate() {
            h.update(&sources[r][(*done * row_bytes).min(sources[r].len())..]);
            issues.extend(self.sums[r][index].verify(h));
        }
        Ok(issues)
    }

    /// Writes column `index` as a `.npy` file to be renamed to `path` (by the caller, once every
    /// checksum has matched), with the checksum issues found while reading.
    fn write_npy(
        &self,
        index: usize,
        rows: usize,
        path: &Path,
    ) -> Result<(tempfile::NamedTempFile, Vec<ShardIssue>)> {
        let c = &self.manifest.columns[index];
        let col = &self.parts[0][index];
        let mut shape = vec![rows];
        shape.extend_from_slice(&c.row_shape);
        let header = NpyHeader::encode(&col.dtype(), &shape)?;
        let dir = path.parent().unwrap_or(Path::new("."));
        let tmp = tempfile::Builder::new()
            .prefix(".arraydrain-")
            .suffix(".tmp")
            .tempfile_in(dir)
            .map_err(|e| Error::io(dir, e))?;
        let issues = {
            let mut out = std::io::BufWriter::with_capacity(1 << 20, tmp.as_file());
            let issues = out
                .write_all(&header)
                .and_then(|()| self.write_column(index, rows, &mut out))
                .map_err(|e| Error::io(path, e))?;
            out.flush().map_err(|e| Error::io(path, e))?;
            issues
        };
        Ok((tmp, issues))
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
/// # Errors
/// As [`check`] (then nothing is written); [`Error::Io`] for the outputs (each output file is
/// written under a temporary name and renamed when complete, so none is left truncated).
pub fn merge(args: &MergeArgs) -> Result<MergeSummary> {
    let started = Instant::now();
    // Everything but the checksums, which are verified while the data is read for the output.
    let set = check_set(&args.dir, false)?;
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
    let refuse = |issues: Vec<ShardIssue>| -> Result<()> {
        if issues.is_empty() {
            Ok(())
        } else {
            Err(Error::ShardSetInvalid {
                dir: args.dir.clone(),
                issues,
            })
        }
    };
    let outputs = match (&args.out_dir, &args.out) {
        (Some(dir), _) => {
            let created = !dir.exists();
            std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
            let written = (|| -> Result<Vec<PathBuf>> {
                let mut temps = Vec::new();
                let mut issues = Vec::new();
                for (i, n) in names.iter().enumerate() {
                    let path = dir.join(format!("{n}.npy"));
                    let (tmp, found) = set.write_npy(i, rows, &path)?;
                    issues.extend(found);
                    temps.push((tmp, path));
                }
                refuse(issues)?;
                let mut files = Vec::new();
                for (tmp, path) in temps {
                    tmp.persist(&path).map_err(|e| Error::io(&path, e.error))?;
                    files.push(path);
                }
                Ok(files)
            })();
            if written.is_err() && created {
                // Only an empty folder is removed: one this run made and left nothing in.
                let _ = std::fs::remove_dir(dir);
            }
            written?
        }
        (None, Some(path)) if args.mmap => {
            let parent = path.parent().unwrap_or(Path::new("."));
            let staging = tempfile::Builder::new()
                .prefix(".arraydrain-merge-")
                .tempdir_in(parent)
                .map_err(|e| Error::io(parent, e))?;
            let mut files = Vec::new();
            let mut issues = Vec::new();
            for (i, n) in names.iter().enumerate() {
                let file = staging.path().join(format!("{n}.npy"));
                let (tmp, found) = set.write_npy(i, rows, &file)?;
                issues.extend(found);
                tmp.persist(&file).map_err(|e| Error::io(&file, e.error))?;
                files.push((n.clone(), file));
            }
            refuse(issues)?;
            let mut staged = crate::fsafe::Staged::new();
            npy::pack_npz(&mut staged, path, &files, &WriteOptions::new())?;
            staged.commit()?;
            vec![path.clone()]
        }
        (None, Some(path)) => {
            let mut columns = Vec::new();
            let mut issues = Vec::new();
            for (i, n) in names.iter().enumerate() {
                let src = &set.parts[0][i];
                let mut col =
                    crate::output::ColumnArray::zeroed(n, src.dtype(), src.row_shape(), rows)?;
                let found = set
                    .write_column(i, rows, &mut std::io::Cursor::new(col.as_bytes_mut()))
                    .map_err(|e| Error::io(path, e))?;
                issues.extend(found);
                columns.push(col);
            }
            refuse(issues)?;
            npy::write_npz(path, &columns, &WriteOptions::new())?;
            vec![path.clone()]
        }
        (None, None) => {
            return Err(Error::OptionConflict {
                option: "merge",
                reason: "needs an output: --out OUT.npz or --out-dir DIR".into(),
            })
        }
    };
    Ok(MergeSummary {
        parts: set.manifest.world_size,
        rows,
        padding_dropped: set.manifest.rows_with_padding.saturating_sub(rows),
        bytes,
        check: checked,
        elapsed: started.elapsed(),
        outputs,
    })
}

/// Where this process would sit in a distributed run, for `arraydrain info`: the placement, or
/// why none was found.
pub fn describe_placement() -> String {
    let env = launcher::process_env();
    let placement: Result<Placement> = launcher::resolve(None, None, &env);
    match placement {
        Ok(p) => {
            let device = launcher::cuda_ordinal(
                p.local_rank,
                env.get("CUDA_VISIBLE_DEVICES").map(String::as_str),
            )
            .map_or_else(|e| e.to_string(), |d| format!("CUDA device {d}"));
            format!("{p}; {device}")
        }
        Err(e) => e.to_string(),
    }
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
            (m.parts[0].rows, m.rows_with_padding, m.merged_rows),
            (4, 12, 10)
        );
        assert!(m.order.padding_repeats_rows);
        assert_eq!(m.order.padded_rows, 2);
        // Cut to 9, 3 per rank, no padding.
        let m = Manifest::compute(&spec(10, 3, true, 2, false)).unwrap();
        assert_eq!(
            (m.parts[2].rows, m.rows_with_padding, m.merged_rows),
            (3, 9, 9)
        );
        assert!(!m.order.padding_repeats_rows);
        // The loader's drop_last: 3 per rank in batches of 2 keeps 2 each.
        let m = Manifest::compute(&spec(10, 3, true, 2, true)).unwrap();
        assert_eq!((m.parts[1].rows, m.merged_rows), (2, 6));
        // Padded 4 per rank, batches of 3: 3 kept each, 9 positions, all within the 10 rows.
        let m = Manifest::compute(&spec(10, 3, false, 3, true)).unwrap();
        assert_eq!((m.rows_with_padding, m.merged_rows), (9, 9));
        // Fewer rows than ranks: 2 rows over 5 ranks pads 3.
        let m = Manifest::compute(&spec(2, 5, false, 1, false)).unwrap();
        assert_eq!(
            (m.rows_with_padding, m.merged_rows, m.order.padded_rows),
            (5, 2, 3)
        );
        assert_eq!(m.parts[4].files, ["part-00004-of-00005/x.npy"]);
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
                Err(Error::ManifestInvalid { reason, .. }) => reason,
                other => panic!("{other:?}"),
            }
        };
        let mut m = good.clone();
        m.merged_rows = 12;
        assert!(reasons(m).contains("row counts"));
        let mut m = good.clone();
        m.parts[1].rows = 5;
        assert!(reasons(m).contains("row counts"));
        let mut m = good.clone();
        m.parts[0].files[0] = "../../elsewhere/x.npy".into();
        assert!(reasons(m).contains("row counts"));
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
    fn input_fingerprints_see_the_head_and_the_tail() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.bin");
        let small: Vec<u8> = (0..1000u32).map(|i| i as u8).collect();
        std::fs::write(&path, &small).unwrap();
        let (len, crc) = sample_crc(&path).unwrap();
        assert_eq!(
            (len, crc),
            (1000, format!("{:08x}", crc32fast::hash(&small)))
        );
        for size in [(1usize << 20) + 10, 5 << 20] {
            let mut big: Vec<u8> = (0..size).map(|i| (i * 31) as u8).collect();
            std::fs::write(&path, &big).unwrap();
            let (_, before) = sample_crc(&path).unwrap();
            let last = big.len() - 1;
            big[last] ^= 1;
            std::fs::write(&path, &big).unwrap();
            let (_, after) = sample_crc(&path).unwrap();
            assert_ne!(before, after, "{size}");
            big[0] ^= 1;
            big[last] ^= 1;
            std::fs::write(&path, &big).unwrap();
            assert_ne!(sample_crc(&path).unwrap().1, before, "{size}");
        }
    }

    #[test]
    fn crc_in_parallel_chunks_equals_the_plain_crc() {
        let data: Vec<u8> = (0..(9u32 << 20) + 17).map(|i| (i * 7 + 3) as u8).collect();
        let mut plain = crc32fast::Hasher::new();
        plain.update(b"header");
        plain.update(&data);
        assert_eq!(crc_of(b"header", &data), plain.finalize());
        // zlib.crc32(b"123456789") == 0xcbf43926
        assert_eq!(crc_of(b"1234", b"56789"), 0xcbf4_3926);
    }
}
