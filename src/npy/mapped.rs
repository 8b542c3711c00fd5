//! Memory-mapped output: [`MappedNpy`], an output column that is a `.npy` file being written
//! through a map, and [`mapped_output`], one per column in a folder.

use std::fmt;
use std::fs::File;
use std::io::Write;
use std::ops::Range;
use std::path::{Path, PathBuf};

use crate::dtype::DType;
use crate::error::{Error, Result};
use crate::fsafe::{self, Staged};
use crate::loader::OutputSpec;
use crate::memory::checked_bytes;
use crate::mmap::{self, WriteMap};
use crate::output::{ColumnArray, Materialized, Storage, StorageKind};

use super::header::NpyHeader;
use super::names::check_column_name;

/// An output column that is a `.npy` file mapped into memory: created at its final size with its
/// header written, the data region mapped writable, so a drain writes rows straight into the
/// file and no second copy is made. Outputs larger than RAM work: each finished region is
/// written back and dropped from the process ([`Storage::region_done`]), so only the region
/// being filled is ever resident.
///
/// The file is written under a temporary name beside `path` and renamed into place by
/// [`Storage::finish`] after a full write-back; dropped unfinished (a failed drain), it is
/// removed, so a failed run leaves no output file.
///
/// ```
/// # let dir = std::env::temp_dir().join(format!("arraydrain-doc-mapped-{}", std::process::id()));
/// use arraydrain::{npy, Loader, Table};
/// use ndarray::Array2;
///
/// let x = Array2::from_shape_fn((100, 4), |(i, j)| (i * 4 + j) as f32);
/// let table = Table::builder().view("x", x.view()).build()?;
/// let loader = Loader::new(&table).batch_size(16).shuffle(3);
///
/// let mut out = npy::mapped_output(&dir, &loader.output_specs()?)?;
/// loader.materialize_into(&mut out)?;
/// assert_eq!(out.column("x")?.storage_kind(), arraydrain::StorageKind::Mapped);
/// assert_eq!(npy::read_npy(dir.join("x.npy"))?.bytes(), out.column("x")?.as_bytes());
/// # std::fs::remove_dir_all(&dir)?;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct MappedNpy {
    map: Option<WriteMap>,
    /// Where the file is while being written.
    temp: PathBuf,
    /// Where it ends up.
    path: PathBuf,
    /// The file's own staging, when it is not part of a larger set (see [`MappedNpy::create`]).
    own: Option<Staged>,
    finished: bool,
    released: u64,
}

impl MappedNpy {
    /// Creates `path` (under a temporary name until finished) for an array of `dtype` and
    /// `shape`, with its full size reserved on disk, and maps its data region.
    ///
    /// # Errors
    /// [`Error::HostAllocation`] when the size
    /// overflows; [`FileError::NoSpace`](crate::error::FileError::NoSpace) when the file system cannot hold it; [`FileError::Io`](crate::error::FileError::Io) naming
    /// the file when it cannot be created or mapped.
    pub fn create(path: impl AsRef<Path>, dtype: DType, shape: &[usize]) -> Result<MappedNpy> {
        let path = path.as_ref();
        let mut staged = Staged::new();
        let (temp, file) = staged.file(path)?;
        Self::init(path, temp, file, dtype, shape, Some(staged))
    }

    /// A file staged in `staged` (renamed into place, with every other output of that set,
    /// when the set is committed); `finish` only writes it back.
    ///
    /// # Errors
    /// As [`MappedNpy::create`].
    pub fn create_staged(
        staged: &mut Staged,
        path: &Path,
        dtype: DType,
        shape: &[usize],
    ) -> Result<MappedNpy> {
        let (temp, file) = staged.file(path)?;
        Self::init(path, temp, file, dtype, shape, None)
    }

    /// A file made at `path` itself, which must not exist (inside a private scratch folder).
    pub(crate) fn create_scratch(path: &Path, dtype: DType, shape: &[usize]) -> Result<MappedNpy> {
        let file = File::options()
            .read(true)
            .write(true)
            .create_new(true)
            .open(path)
            .map_err(|e| Error::io(path, e))?;
        Self::init(path, path.to_path_buf(), file, dtype, shape, None)
    }

    fn init(
        path: &Path,
        temp: PathBuf,
        mut file: File,
        dtype: DType,
        shape: &[usize],
        own: Option<Staged>,
    ) -> Result<MappedNpy> {
        let header = NpyHeader::encode(&dtype, shape)?;
        let mut parts = shape.to_vec();
        parts.push(dtype.size());
        let data_len = checked_bytes(&parts, &path.display().to_string())?;
        let total = (header.len() as u64)
            .checked_add(data_len as u64)
            .ok_or_else(|| Error::SizeOverflow {
                what: path.display().to_string(),
            })?;
        file.write_all(&header)
            .map_err(|e| fsafe::write_error(path, e, total))?;
        // Every block the map will write is allocated now: a full disk is an error here, not a
        // SIGBUS in the middle of the drain.
        mmap::reserve(&file, path, total)?;
        let map = if data_len == 0 {
            None
        } else {
            Some(WriteMap::new(&file, path, header.len() as u64, data_len)?)
        };
        Ok(MappedNpy {
            map,
            temp,
            path: path.to_path_buf(),
            own,
            finished: false,
            released: 0,
        })
    }

    /// Where the file will be (or is, once finished).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Where the file is while being written (its temporary name until finished).
    pub(crate) fn temp_path(&self) -> &Path {
        &self.temp
    }

    /// Bytes written back and dropped from memory so far by [`Storage::region_done`].
    pub fn released_bytes(&self) -> u64 {
        self.released
    }
}

impl fmt::Debug for MappedNpy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MappedNpy")
            .field("path", &self.path)
            .field("temp", &self.temp)
            .field("len", &self.as_bytes().len())
            .field("finished", &self.finished)
            .finish()
    }
}

impl Storage for MappedNpy {
    fn kind(&self) -> StorageKind {
        StorageKind::Mapped
    }

    fn as_bytes(&self) -> &[u8] {
        self.map.as_ref().map_or(&[], |m| m.bytes())
    }

    fn as_bytes_mut(&mut self) -> &mut [u8] {
        self.map.as_mut().map_or(&mut [], |m| m.bytes_mut())
    }

    /// Starts writing `range` back and drops its pages from the process.
    fn region_done(&mut self, range: Range<usize>) -> Result<()> {
        if let Some(m) = &mut self.map {
            m.release(range.clone())?;
            self.released += range.len() as u64;
        }
        Ok(())
    }

    /// Writes everything back, waits for it, and renames the file into place.
    fn finish(&mut self) -> Result<()> {
        if self.finished {
            return Ok(());
        }
        if let Some(m) = &self.map {
            m.flush()?;
        }
        if let Some(own) = self.own.take() {
            own.commit()?;
        }
        self.finished = true;
        Ok(())
    }

    fn into_any(self: Box<Self>) -> Box<dyn std::any::Any> {
        self
    }
}

/// An output of one [`MappedNpy`] per spec, `DIR/NAME.npy` (the folder is created if needed), for
/// [`Loader::materialize_into`](crate::Loader::materialize_into). The files appear under their
/// names when the drain finishes; if it fails, they are removed when the output is dropped.
///
/// # Errors
/// As [`MappedNpy::create`]; [`FileError::Io`](crate::error::FileError::Io) when the folder cannot be created.
pub fn mapped_output(dir: impl AsRef<Path>, specs: &[OutputSpec]) -> Result<Materialized> {
    let dir = dir.as_ref();
    check_specs(specs)?;
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    build(specs, |s, shape| {
        MappedNpy::create(dir.join(format!("{}.npy", s.name)), s.dtype.clone(), shape)
    })
}

/// Where the files of [`stage_mapped_output`] go.
pub(crate) enum MappedIn<'a> {
    /// Staged for `DIR/NAME.npy` in the set (renamed into place when it is committed).
    Staged(&'a mut Staged, &'a Path),
    /// Made as `DIR/NAME.npy` in a private scratch folder.
    Scratch(&'a Path),
}

/// [`mapped_output`] whose files are part of a larger staged set, or scratch files.
pub(crate) fn stage_mapped_output(
    into: MappedIn<'_>,
    specs: &[OutputSpec],
) -> Result<Materialized> {
    check_specs(specs)?;
    match into {
        MappedIn::Staged(staged, dir) => {
            staged.create_dir_all(dir)?;
            build(specs, |s, shape| {
                MappedNpy::create_staged(
                    staged,
                    &dir.join(format!("{}.npy", s.name)),
                    s.dtype.clone(),
                    shape,
                )
            })
        }
        MappedIn::Scratch(dir) => build(specs, |s, shape| {
            MappedNpy::create_scratch(&dir.join(format!("{}.npy", s.name)), s.dtype.clone(), shape)
        }),
    }
}

/// Names that can name files, and few enough maps for the kernel's limit.
fn check_specs(specs: &[OutputSpec]) -> Result<()> {
    for s in specs {
        check_column_name(&s.name)?;
    }
    let maps = specs
        .iter()
        .filter(|s| s.bytes().is_ok_and(|b| b > 0))
        .count();
    mmap::check_map_budget(maps as u64)
}

fn build(
    specs: &[OutputSpec],
    mut make: impl FnMut(&OutputSpec, &[usize]) -> Result<MappedNpy>,
) -> Result<Materialized> {
    let columns = specs
        .iter()
        .map(|s| {
            let mut shape = vec![s.rows];
            shape.extend_from_slice(&s.row_shape);
            let storage = make(s, &shape)?;
            ColumnArray::new(
                &s.name,
                s.dtype.clone(),
                &s.row_shape,
                s.rows,
                Box::new(storage),
            )
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(Materialized::from_columns(columns))
}
