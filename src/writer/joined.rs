//! A writer that joins the output another writer of the run created: the same files, opened
//! (never created) under their temporary names, checked, and mapped for writing this process's
//! rows in place. It commits nothing and removes nothing: the creator does both.

use std::fs::File;
use std::io::Read;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use crate::error::{Error, FileError, Result};
use crate::fsafe::TEMP_PREFIX;
use crate::mmap::WriteMap;
use crate::npy::{self, NpyHeader};
use crate::output::{ColumnArray, Storage, StorageKind};

use super::{Destination, Sink, WriterColumn};

/// One column file of a joined output.
#[derive(Debug)]
struct JoinedNpy {
    map: Option<WriteMap>,
}

impl Storage for JoinedNpy {
    fn kind(&self) -> StorageKind {
        StorageKind::Mapped
    }

    fn as_bytes(&self) -> &[u8] {
        self.map.as_ref().map_or(&[], |m| m.bytes())
    }

    fn as_bytes_mut(&mut self) -> &mut [u8] {
        self.map.as_mut().map_or(&mut [], |m| m.bytes_mut())
    }

    /// Writes this process's rows back to the file and waits for it.
    fn finish(&mut self) -> Result<()> {
        self.map.as_ref().map_or(Ok(()), WriteMap::flush)
    }

    fn into_any(self: Box<Self>) -> Box<dyn std::any::Any> {
        self
    }
}

fn not_joinable(path: &Path, reason: impl Into<String>) -> Error {
    Error::File(FileError::BadFile {
        path: path.to_path_buf(),
        reason: format!("cannot be joined: {}", reason.into()),
    })
}

/// A shared output that is not there any more is one whose creator failed, was dropped or
/// committed: said so, not only "no such file".
fn gone_or_io(path: &Path, e: std::io::Error) -> Error {
    if e.kind() == std::io::ErrorKind::NotFound {
        not_joinable(
            path,
            "it is gone (the writer that created it failed, was dropped or has committed)",
        )
    } else {
        Error::io(path, e)
    }
}

/// The sink of a writer joining `shared` (the creator's [`super::Writer::shared_path`]).
pub(super) fn sink(
    destination: &Destination,
    shared: &Path,
    columns: &[WriterColumn],
    rows: usize,
    row_bytes: Vec<usize>,
) -> Result<Sink> {
    let named = shared
        .file_name()
        .is_some_and(|n| n.to_string_lossy().starts_with(TEMP_PREFIX));
    if !named {
        return Err(not_joinable(
            shared,
            format!("not a writer's temporary output (named {TEMP_PREFIX}*)"),
        ));
    }
    let files: Vec<PathBuf> = match destination {
        Destination::Memory => {
            return Err(Error::ConflictingOptions {
                reason: "an output in memory cannot be joined by another writer".into(),
            })
        }
        Destination::Npy(_) => {
            if columns.len() != 1 {
                return Err(Error::ConflictingOptions {
                    reason: format!(
                        "a .npy file holds one array, the writer has {} columns",
                        columns.len()
                    ),
                });
            }
            vec![shared.to_path_buf()]
        }
        Destination::Npz { .. } | Destination::Dir(_) => {
            let meta = std::fs::symlink_metadata(shared).map_err(|e| gone_or_io(shared, e))?;
            if !meta.is_dir() {
                return Err(not_joinable(shared, "not a folder"));
            }
            columns
                .iter()
                .map(|c| {
                    npy::check_column_name(&c.name)?;
                    Ok(shared.join(format!("{}.npy", c.name)))
                })
                .collect::<Result<_>>()?
        }
    };
    let columns = columns
        .iter()
        .zip(&files)
        .map(|(c, file)| {
            let mut shape = vec![rows];
            shape.extend_from_slice(&c.row_shape);
            let storage = open(file, &c.dtype, &shape)?;
            ColumnArray::new(
                &c.name,
                c.dtype.clone(),
                &c.row_shape,
                rows,
                Box::new(storage),
            )
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(Sink {
        columns,
        row_bytes,
        staged: None,
        destination: destination.clone(),
    })
}

/// Opens (without following a link, never creating) the `.npy` file `path`, checks that its
/// header and length are exactly those of an array of `dtype` and `shape`, and maps its data.
fn open(path: &Path, dtype: &crate::DType, shape: &[usize]) -> Result<JoinedNpy> {
    let mut file = File::options()
        .read(true)
        .write(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)
        .map_err(|e| gone_or_io(path, e))?;
    let meta = file.metadata().map_err(|e| Error::io(path, e))?;
    if !meta.is_file() {
        return Err(not_joinable(path, "not a regular file"));
    }
    let header = NpyHeader::encode(dtype, shape)?;
    let mut found = vec![0u8; header.len()];
    file.read_exact(&mut found)
        .map_err(|_| not_joinable(path, "shorter than its header"))?;
    if found != header {
        return Err(not_joinable(
            path,
            "its header declares another dtype or shape than this writer's",
        ));
    }
    let data_len = shape.iter().product::<usize>() * dtype.size();
    if meta.len() != header.len() as u64 + data_len as u64 {
        return Err(not_joinable(
            path,
            format!(
                "{} bytes long, the array needs {}",
                meta.len(),
                header.len() + data_len
            ),
        ));
    }
    let map = if data_len == 0 {
        None
    } else {
        Some(WriteMap::new(&file, path, header.len() as u64, data_len)?)
    };
    Ok(JoinedNpy { map })
}
