//! Writing `.npz` archives and folders of `.npy` files, from materialized columns or straight
//! from a loader (gathered a block at a time), each file under a temporary name until complete.

use std::fmt;
use std::io::{self, BufWriter, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use crate::batch::Batches;
use crate::error::{Error, Result};
use crate::fsafe::{self, Staged};
use crate::gather::{self, cpu, Strategy};
use crate::loader::Loader;
use crate::memory::checked_bytes;
use crate::mmap::ReadMap;
use crate::output::{Backend, ColumnArray, Report};
use crate::sampler::IndexSlice;
use crate::table::{Column, Table};

use super::header::{NpyHeader, HEADER_ALIGN};
use super::names::check_column_name;

/// Bytes per write call and per progress step when writing files.
const WRITE_CHUNK: usize = 8 << 20;

/// Output bytes gathered per step when draining straight into a file: large enough to amortise
/// a parallel gather and a write call, small enough to stay in the last-level cache.
const GATHER_BLOCK: usize = 4 << 20;

/// Called with the bytes written so far while a file is written.
pub type WriteProgress = Arc<dyn Fn(u64) + Send + Sync>;

/// Called between blocks while a file is written, with the bytes written so far; an error stops
/// the write, and nothing of it is committed (see [`WriteOptions::check_between_blocks`]).
pub type WriteCheck = Arc<dyn Fn(u64) -> Result<()> + Send + Sync>;

/// How to write `.npz` archives and `.npy` files.
#[derive(Clone, Default)]
pub struct WriteOptions {
    compress: bool,
    progress: Option<WriteProgress>,
    check: Option<WriteCheck>,
}

impl WriteOptions {
    /// Stored (uncompressed) `.npz` members, as `numpy.savez` writes them; no progress calls.
    pub fn new() -> Self {
        Self::default()
    }

    /// Deflate `.npz` members (`numpy.savez_compressed`, zlib's default level). `.npy` files
    /// are never compressed.
    pub fn compress(mut self, compress: bool) -> Self {
        self.compress = compress;
        self
    }

    /// Calls `f(bytes_written)` as array data is written (every few MiB).
    pub fn on_progress(mut self, f: impl Fn(u64) + Send + Sync + 'static) -> Self {
        self.progress = Some(Arc::new(f));
        self
    }

    /// Calls `f(bytes_written)` between blocks of array data (every few MiB, after the progress
    /// call): an `Err` (typically [`Error::Interrupted`], for a pending Ctrl-C) stops the write
    /// at once and is returned; every temporary file is removed and nothing is committed.
    pub fn check_between_blocks(
        mut self,
        f: impl Fn(u64) -> Result<()> + Send + Sync + 'static,
    ) -> Self {
        self.check = Some(Arc::new(f));
        self
    }
}

impl fmt::Debug for WriteOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WriteOptions")
            .field("compress", &self.compress)
            .field("progress", &self.progress.is_some())
            .field("check", &self.check.is_some())
            .finish()
    }
}

/// Where the data of a written array comes from.
enum Source<'a> {
    /// Bytes in memory (a materialized column).
    Bytes(&'a [u8]),
    /// A whole `.npy` file image in a read-only map; its pages are released once written.
    Map(&'a ReadMap),
    /// Rows `indices` of a table column, gathered a block at a time into a reused buffer (or,
    /// for a contiguous run, written straight from the column's bytes).
    Gather {
        column: &'a Column<'a>,
        indices: IndexSlice<'a>,
    },
}

/// Writes sources, counting bytes for progress; owns the gather buffer.
struct DataWriter<'o> {
    done: u64,
    progress: Option<&'o WriteProgress>,
    check: Option<&'o WriteCheck>,
    bufs: Vec<Vec<u8>>,
}

impl<'o> DataWriter<'o> {
    fn new(options: &'o WriteOptions) -> Self {
        DataWriter {
            done: 0,
            progress: options.progress.as_ref(),
            check: options.check.as_ref(),
            bufs: Vec::new(),
        }
    }

    fn step(&mut self, path: &Path, w: &mut impl Write, bytes: &[u8]) -> Result<()> {
        w.write_all(bytes).map_err(|e| Error::io(path, e))?;
        self.done += bytes.len() as u64;
        if let Some(p) = self.progress {
            p(self.done);
        }
        if let Some(c) = self.check {
            c(self.done)?;
        }
        Ok(())
    }

    fn write(&mut self, path: &Path, w: &mut impl Write, source: &Source<'_>) -> Result<()> {
        match source {
            Source::Bytes(bytes) => {
                for chunk in bytes.chunks(WRITE_CHUNK) {
                    self.step(path, w, chunk)?;
                }
            }
            Source::Map(map) => {
                for (k, chunk) in map.bytes().chunks(WRITE_CHUNK).enumerate() {
                    self.step(path, w, chunk)?;
                    let start = k * WRITE_CHUNK;
                    map.release(start..start + chunk.len())?;
                }
            }
            Source::Gather { column, indices } => self.gather(path, w, column, *indices)?,
        }
        Ok(())
    }

    /// Gathers blocks of rows on one side and writes them on the other, overlapped: a scoped
    /// thread gathers block `k+1` (on rayon's pool when there are more than two threads) into
    /// one of two buffers while this thread writes block `k` from the other. A contiguous order
    /// goes through the buffers as well, so that reading the input (page faults on its map)
    /// overlaps writing.
    fn gather(
        &mut self,
        path: &Path,
        w: &mut impl Write,
        column: &Column<'_>,
        indices: IndexSlice<'_>,
    ) -> Result<()> {
        let rb = column.row_bytes();
        if rb == 0 || indices.is_empty() {
            return Ok(());
        }
        let block_rows = (GATHER_BLOCK / rb).max(1).min(indices.len());
        let block_len = block_rows * rb;
        while self.bufs.len() < 2 {
            self.bufs.push(Vec::new());
        }
        for buf in &mut self.bufs {
            if buf.len() < block_len {
                buf.try_reserve_exact(block_len - buf.len())
                    .map_err(|e| Error::alloc(block_len, column.name(), e))?;
                buf.resize(block_len, 0);
            }
        }
        // With two cores, the writer and this gatherer have one each: rayon's workers would
        // only take turns with the writer (and spin while they wait for the next block).
        let parallel = rayon::current_num_threads() > 2;
        let n = indices.len();
        let mut bufs = std::mem::take(&mut self.bufs);
        let written = gather::pipelined(
            n.div_ceil(block_rows),
            &mut bufs,
            |k, buf| {
                let block = indices.view(k * block_rows, ((k + 1) * block_rows).min(n));
                let len = block.len() * rb;
                if parallel {
                    cpu::par_gather(column.bytes(), rb, block, &mut buf[..len]);
                } else {
                    cpu::gather_serial(column.bytes(), rb, block, &mut buf[..len]);
                }
                len
            },
            |bytes| self.step(path, w, bytes),
        );
        self.bufs = bufs;
        written
    }
}

/// One array to write: its `.npy` header (empty when the source is a whole `.npy` image) and
/// its data.
struct Array<'a> {
    name: String,
    header: Vec<u8>,
    source: Source<'a>,
    len: usize,
}

fn check_writable(column: &ColumnArray) -> Result<Vec<u8>> {
    NpyHeader::encode(&column.dtype(), &column.shape())
}

fn materialized_arrays(columns: &[ColumnArray]) -> Result<Vec<Array<'_>>> {
    columns
        .iter()
        .map(|c| {
            Ok(Array {
                name: c.name().to_string(),
                header: check_writable(c)?,
                source: Source::Bytes(c.as_bytes()),
                len: c.as_bytes().len(),
            })
        })
        .collect()
}

fn loader_arrays<'a>(table: &'a Table<'a>, batches: &'a Batches) -> Result<Vec<Array<'a>>> {
    let rows = batches.rows();
    table
        .columns()
        .iter()
        .map(|c| {
            let mut shape = vec![rows];
            shape.extend_from_slice(c.row_shape());
            Ok(Array {
                name: c.name().to_string(),
                header: NpyHeader::encode(&c.dtype(), &shape)?,
                source: Source::Gather {
                    column: c,
                    indices: batches.indices().view(0, rows),
                },
                len: checked_bytes(&[rows, c.row_bytes()], c.name())?,
            })
        })
        .collect()
}

/// Writes one column as a `.npy` file (written to a temporary name, renamed when complete).
///
/// # Errors
/// [`FileError::NoSpace`](crate::error::FileError::NoSpace) when the file system is full;
/// [`FileError::Io`](crate::error::FileError::Io) naming the file.
pub fn write_npy(path: impl AsRef<Path>, column: &ColumnArray) -> Result<()> {
    let arrays = materialized_arrays(std::slice::from_ref(column))?;
    let mut staged = Staged::new();
    let options = WriteOptions::new();
    let mut w = DataWriter::new(&options);
    arrays
        .iter()
        .try_for_each(|a| write_one_npy(&mut staged, path.as_ref(), a, &mut w))?;
    staged.commit().map(drop)
}

/// Writes `array` as a `.npy` file staged for `path`.
fn write_one_npy(
    staged: &mut Staged,
    path: &Path,
    array: &Array<'_>,
    w: &mut DataWriter<'_>,
) -> Result<()> {
    let total = array.header.len() as u64 + array.len as u64;
    let (_, file) = staged.file(path)?;
    let no_room = |e| fsafe::write_error(path, e, total);
    let mut file = BufWriter::with_capacity(1 << 16, file);
    file.write_all(&array.header).map_err(no_room)?;
    w.write(path, &mut file, &array.source)
        .map_err(|e| fsafe::space_error(e, total))?;
    file.flush().map_err(no_room)?;
    Ok(())
}

/// Stages `DIR/NAME.npy` for each array (creating the folder if needed); returns the paths.
fn write_dir(
    staged: &mut Staged,
    dir: &Path,
    arrays: &[Array<'_>],
    options: &WriteOptions,
) -> Result<Vec<PathBuf>> {
    for a in arrays {
        check_column_name(&a.name)?;
    }
    staged.create_dir_all(dir)?;
    let mut w = DataWriter::new(options);
    arrays
        .iter()
        .map(|a| {
            let path = dir.join(format!("{}.npy", a.name));
            write_one_npy(staged, &path, a, &mut w)?;
            Ok(path)
        })
        .collect()
}

/// Writes each column as `DIR/NAME.npy` (the folder is created if needed); returns the paths.
///
/// Every file is written under a temporary name and all are renamed into place once all are
/// complete: a failure leaves none of them (and removes the folder if this call made it).
///
/// # Errors
/// As [`write_npy`]; [`FileError::UnsafeName`](crate::error::FileError::UnsafeName) for a column name that cannot name a file;
/// [`FileError::PathConflict`](crate::error::FileError::PathConflict) when a `NAME.npy` is a folder; [`FileError::Io`](crate::error::FileError::Io) when the folder cannot
/// be created.
pub fn write_npy_dir(dir: impl AsRef<Path>, columns: &[ColumnArray]) -> Result<Vec<PathBuf>> {
    write_npy_dir_with(dir, columns, &WriteOptions::new())
}

/// [`write_npy_dir`] with progress.
///
/// # Errors
/// As [`write_npy_dir`].
pub fn write_npy_dir_with(
    dir: impl AsRef<Path>,
    columns: &[ColumnArray],
    options: &WriteOptions,
) -> Result<Vec<PathBuf>> {
    let mut staged = Staged::new();
    let paths = write_dir(
        &mut staged,
        dir.as_ref(),
        &materialized_arrays(columns)?,
        options,
    )?;
    staged.commit()?;
    Ok(paths)
}

/// [`write_npy_dir_with`], staged in `staged` (put in place when it is committed).
pub(crate) fn stage_npy_dir(
    staged: &mut Staged,
    dir: &Path,
    columns: &[ColumnArray],
    options: &WriteOptions,
) -> Result<Vec<PathBuf>> {
    write_dir(staged, dir, &materialized_arrays(columns)?, options)
}

/// Writes columns as a `.npz` archive, one `NAME.npy` member per column, as `numpy.savez`
/// (or, with [`WriteOptions::compress`], `numpy.savez_compressed`) does. Stored members are
/// aligned so each array's data starts at a multiple of 64 bytes in the file.
///
/// ```
/// # let dir = std::env::temp_dir().join(format!("arraydrain-doc-npz-{}", std::process::id()));
/// # std::fs::create_dir_all(&dir)?;
/// use arraydrain::{npy, Loader, Strategy, Table};
/// use ndarray::{Array1, Array2};
///
/// let x = Array2::from_shape_fn((8, 2), |(i, j)| (i * 2 + j) as f64);
/// let y = Array1::from_iter(0..8u16);
/// let table = Table::builder().view("x", x.view()).view("y", y.view()).build()?;
/// let out = Loader::new(&table).batch_size(3).shuffle(5).materialize(Strategy::Auto)?;
///
/// npy::write_npz(dir.join("out.npz"), out.columns(), &npy::WriteOptions::new().compress(true))?;
/// let back = npy::read_npz(dir.join("out.npz"))?;
/// assert_eq!(back[0].bytes(), out.column("x")?.as_bytes());
/// # std::fs::remove_dir_all(&dir)?;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
///
/// # Errors
/// [`FileError::Io`](crate::error::FileError::Io) naming the file.
pub fn write_npz(
    path: impl AsRef<Path>,
    columns: &[ColumnArray],
    options: &WriteOptions,
) -> Result<()> {
    let mut staged = Staged::new();
    write_archive(
        &mut staged,
        path.as_ref(),
        &materialized_arrays(columns)?,
        options,
    )?;
    staged.commit().map(drop)
}

/// [`write_npz`], staged in `staged`.
pub(crate) fn stage_npz(
    staged: &mut Staged,
    path: &Path,
    columns: &[ColumnArray],
    options: &WriteOptions,
) -> Result<()> {
    write_archive(staged, path, &materialized_arrays(columns)?, options)
}

/// Drains a loader straight into a `.npz` archive, without the output ever existing in memory:
/// each column's rows are gathered a few MiB at a time into one reused buffer (the parallel
/// preallocated gather, block by block) and written; a sequential order is written straight
/// from the input's pages. The archive holds the same bytes as
/// `write_npz(path, loader.materialize(..)?.columns(), ..)` would write.
///
/// ```
/// # let dir = std::env::temp_dir().join(format!("arraydrain-doc-drain-npz-{}", std::process::id()));
/// # std::fs::create_dir_all(&dir)?;
/// use arraydrain::{npy, Loader, Strategy, Table};
/// use ndarray::Array2;
///
/// let x = Array2::from_shape_fn((1000, 8), |(i, j)| (i * 8 + j) as f32);
/// let table = Table::builder().view("x", x.view()).build()?;
/// let loader = Loader::new(&table).batch_size(64).shuffle(7);
///
/// let report = npy::drain_to_npz(&loader, dir.join("x.npz"), &npy::WriteOptions::new())?;
/// assert_eq!(report.rows, 1000);
/// let back = npy::read_npz(dir.join("x.npz"))?;
/// assert_eq!(back[0].bytes(), loader.materialize(Strategy::Auto)?.column("x")?.as_bytes());
/// # std::fs::remove_dir_all(&dir)?;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
///
/// # Errors
/// As [`Loader::batches`](crate::Loader::batches) and [`write_npz`].
pub fn drain_to_npz(
    loader: &Loader<'_, '_>,
    path: impl AsRef<Path>,
    options: &WriteOptions,
) -> Result<Report> {
    let mut staged = Staged::new();
    let report = stage_drain_npz(&mut staged, loader, path.as_ref(), options)?;
    staged.commit()?;
    Ok(report)
}

/// [`drain_to_npz`], staged in `staged`.
pub(crate) fn stage_drain_npz(
    staged: &mut Staged,
    loader: &Loader<'_, '_>,
    path: &Path,
    options: &WriteOptions,
) -> Result<Report> {
    let started = Instant::now();
    let batches = loader.batches()?;
    let arrays = loader_arrays(loader.table(), &batches)?;
    write_archive(staged, path, &arrays, options)?;
    Ok(stream_report(&arrays, batches.rows(), started))
}

/// [`drain_to_npz`] into a folder of `.npy` files, `DIR/NAME.npy` (created if needed); each
/// file appears under its name when complete.
///
/// # Errors
/// As [`drain_to_npz`].
pub fn drain_to_npy_dir(
    loader: &Loader<'_, '_>,
    dir: impl AsRef<Path>,
    options: &WriteOptions,
) -> Result<Report> {
    let mut staged = Staged::new();
    let report = stage_drain_npy_dir(&mut staged, loader, dir.as_ref(), options)?;
    staged.commit()?;
    Ok(report)
}

/// [`drain_to_npy_dir`], staged in `staged`.
pub(crate) fn stage_drain_npy_dir(
    staged: &mut Staged,
    loader: &Loader<'_, '_>,
    dir: &Path,
    options: &WriteOptions,
) -> Result<Report> {
    let started = Instant::now();
    let batches = loader.batches()?;
    let arrays = loader_arrays(loader.table(), &batches)?;
    write_dir(staged, dir, &arrays, options)?;
    Ok(stream_report(&arrays, batches.rows(), started))
}

fn stream_report(arrays: &[Array<'_>], rows: usize, started: Instant) -> Report {
    let buffer = arrays
        .iter()
        .map(|a| match a.source {
            Source::Gather {
                column,
                indices: IndexSlice::List(_),
            } if column.row_bytes() > 0 => {
                (GATHER_BLOCK / column.row_bytes()).max(1) * column.row_bytes()
            }
            _ => 0,
        })
        .max()
        .unwrap_or(0);
    Report::new(Strategy::Preallocated, Backend::Cpu, rows, &[], started)
        .with_bytes(arrays.iter().map(|a| a.len as u64).sum())
        .with_peak_alloc(buffer as u64)
}

/// Packs `.npy` files into a `.npz` archive, member `NAME.npy` for each `(NAME, file)`, streaming
/// each file from a read-only map and dropping the pages already written, so packing files
/// larger than RAM stays small. The files are not checked beyond being readable.
pub(crate) fn pack_npz(
    staged: &mut Staged,
    path: &Path,
    files: &[(String, PathBuf)],
    options: &WriteOptions,
) -> Result<()> {
    let maps = files
        .iter()
        .map(|(_, f)| ReadMap::open(f))
        .collect::<Result<Vec<_>>>()?;
    let arrays: Vec<Array<'_>> = files
        .iter()
        .zip(&maps)
        .map(|((name, _), map)| {
            map.advise_sequential();
            Array {
                name: name.clone(),
                header: Vec::new(),
                source: Source::Map(map),
                len: map.bytes().len(),
            }
        })
        .collect();
    write_archive(staged, path, &arrays, options)
}

fn write_archive(
    staged: &mut Staged,
    path: &Path,
    arrays: &[Array<'_>],
    options: &WriteOptions,
) -> Result<()> {
    for a in arrays {
        check_column_name(&a.name)?;
    }
    let total = arrays
        .iter()
        .try_fold(0u64, |t, a| {
            t.checked_add(a.header.len() as u64)?
                .checked_add(a.len as u64)
        })
        .ok_or_else(|| Error::SizeOverflow {
            what: format!("the archive {}", path.display()),
        })?;
    let (_, file) = staged.file(path)?;
    let no_room = |e| fsafe::write_error(path, e, total);
    let zip_err = |e: zip::result::ZipError| match e {
        zip::result::ZipError::Io(e) => no_room(e),
        other => Error::io(path, io::Error::other(other)),
    };
    let mut zip = zip::ZipWriter::new(QuietAfterError::new(BufWriter::with_capacity(
        1 << 20,
        file,
    )));
    let mut w = DataWriter::new(options);
    for a in arrays {
        let member_len = (a.header.len() + a.len) as u64;
        let base =
            zip::write::SimpleFileOptions::default().large_file(member_len >= u32::MAX as u64);
        let opts = if options.compress {
            base.compression_method(zip::CompressionMethod::Deflated)
        } else {
            base.compression_method(zip::CompressionMethod::Stored)
                .with_alignment(HEADER_ALIGN as u16)
        };
        zip.start_file(format!("{}.npy", a.name), opts)
            .map_err(zip_err)?;
        zip.write_all(&a.header).map_err(no_room)?;
        w.write(path, &mut zip, &a.source)
            .map_err(|e| fsafe::space_error(e, total))?;
    }
    let mut inner = zip.finish().map_err(zip_err)?;
    inner.flush().map_err(no_room)?;
    Ok(())
}

/// A writer that, once a write, flush or seek has failed, accepts and discards everything
/// after it (keeping track of the position it would have reached). The zip writer finishes its
/// archive when dropped and prints to stderr if that fails; after the first error (which is
/// what gets reported) the archive is abandoned anyway, so its drop must neither print nor
/// write more.
struct QuietAfterError<W> {
    inner: W,
    failed: bool,
    pos: u64,
    end: u64,
}

impl<W> QuietAfterError<W> {
    fn new(inner: W) -> Self {
        QuietAfterError {
            inner,
            failed: false,
            pos: 0,
            end: 0,
        }
    }

    fn advance(&mut self, n: usize) {
        self.pos = self.pos.saturating_add(n as u64);
        self.end = self.end.max(self.pos);
    }
}

impl<W: Write> Write for QuietAfterError<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if self.failed {
            self.advance(buf.len());
            return Ok(buf.len());
        }
        match self.inner.write(buf) {
            Ok(n) => {
                self.advance(n);
                Ok(n)
            }
            Err(e) => {
                // Count the failed bytes as written: the zip writer computes offsets past them.
                self.failed = true;
                self.advance(buf.len());
                Err(e)
            }
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        if self.failed {
            return Ok(());
        }
        self.inner.flush().inspect_err(|_| self.failed = true)
    }
}

impl<W: Seek> Seek for QuietAfterError<W> {
    fn seek(&mut self, pos: SeekFrom) -> io::Result<u64> {
        if !self.failed {
            let at = self.inner.seek(pos).inspect_err(|_| self.failed = true)?;
            self.pos = at;
            self.end = self.end.max(at);
            return Ok(at);
        }
        let base = match pos {
            SeekFrom::Start(n) => Some(n),
            SeekFrom::Current(d) => self.pos.checked_add_signed(d),
            SeekFrom::End(d) => self.end.checked_add_signed(d),
        };
        self.pos = base.ok_or_else(|| io::Error::from(io::ErrorKind::InvalidInput))?;
        self.end = self.end.max(self.pos);
        Ok(self.pos)
    }
}
