//! Reading `.npy` files and `.npz` archives into table columns (memory-mapped where the bytes
//! can be used in place), and index files.

use std::collections::HashMap;
use std::io::{self, Read};
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::dtype::DType;
use crate::error::{Error, Result};
use crate::memory::HostBuf;
use crate::mmap::ReadMap;
use crate::table::{Column, SharedBytes, Table};

use super::bad;
use super::header::NpyHeader;
use super::names::unsafe_name_reason;

impl SharedBytes for ReadMap {
    fn bytes(&self) -> &[u8] {
        ReadMap::bytes(self)
    }
}

/// A sub-range of bytes kept alive by their owner (a file map, an inflated member).
struct SubBytes {
    owner: Arc<dyn SharedBytes>,
    range: Range<usize>,
}

impl SharedBytes for SubBytes {
    fn bytes(&self) -> &[u8] {
        // The range was checked against the owner's length when this was made.
        self.owner.bytes().get(self.range.clone()).unwrap_or(&[])
    }
}

/// Makes a column named `name` from a `.npy` image held by `owner` at `image` (a whole file,
/// or one member of an archive). `what` prefixes messages (e.g. the member's name).
fn column_from_image(
    path: &Path,
    what: &str,
    name: String,
    owner: Arc<dyn SharedBytes>,
    image: Range<usize>,
) -> Result<Column<'static>> {
    let msg = |r: String| bad(path, format!("{what}{r}"));
    let bytes = owner.bytes().get(image.clone()).unwrap_or(&[]);
    let header = NpyHeader::parse(bytes).map_err(|e| msg(e.to_string()))?;
    let Some((&rows, row_shape)) = header.shape.split_first() else {
        return Err(msg(
            "a 0-dimensional array has no rows; a column needs a first axis".into(),
        ));
    };
    let have = bytes.len() - header.data_offset;
    if have < header.data_len {
        return Err(msg(format!(
            "truncated: shape {:?} of {} needs {} data bytes, the file has {have}",
            header.shape, header.dtype, header.data_len
        )));
    }
    // Bytes after the data are ignored, as NumPy ignores them.
    let data = image.start + header.data_offset..image.start + header.data_offset + header.data_len;
    // Fortran and C order coincide when at most one axis is longer than 1.
    let transpose = header.fortran_order && header.shape.iter().filter(|&&d| d > 1).count() > 1;
    let shared: Arc<dyn SharedBytes> = if !transpose {
        Arc::new(SubBytes { owner, range: data })
    } else {
        let src = &owner.bytes()[data];
        check_fits_memory(path, what, src.len() as u64)?;
        let mut buf = HostBuf::zeroed(src.len(), &name)?;
        fortran_to_c(src, header.dtype.size(), &header.shape, buf.as_bytes_mut());
        Arc::new(buf)
    };
    Column::from_shared(name, header.dtype, row_shape, rows, shared)
}

/// Copies Fortran-order elements of `size` bytes into C order. `src` and `dst` both hold
/// `prod(shape) × size` bytes (checked by the caller); elements are moved as opaque bytes, so
/// every dtype is transposed alike.
fn fortran_to_c(src: &[u8], size: usize, shape: &[usize], dst: &mut [u8]) {
    if size == 0 || shape.contains(&0) {
        return;
    }
    // Fortran strides, in elements: the first axis varies fastest.
    let mut strides = Vec::with_capacity(shape.len());
    let mut s = 1usize;
    for &d in shape {
        strides.push(s);
        s = s.saturating_mul(d);
    }
    // Walk C order with an odometer over the index, tracking the Fortran offset.
    let mut index = vec![0usize; shape.len()];
    let mut f = 0usize;
    for d in dst.chunks_exact_mut(size) {
        d.copy_from_slice(&src[f * size..(f + 1) * size]);
        for axis in (0..shape.len()).rev() {
            index[axis] += 1;
            f += strides[axis];
            if index[axis] < shape[axis] {
                break;
            }
            f -= strides[axis] * shape[axis];
            index[axis] = 0;
        }
    }
}

fn utf8_name(path: &Path, s: Option<&std::ffi::OsStr>) -> Result<String> {
    let name = s
        .and_then(|s| s.to_str())
        .filter(|s| !s.is_empty())
        .map(str::to_string)
        .ok_or_else(|| {
            bad(
                path,
                "the file name is not valid UTF-8 (it names the column)",
            )
        })?;
    if let Some(reason) = unsafe_name_reason(&name) {
        return Err(bad(
            path,
            format!("the file name gives column name {name:?}, which cannot name a file: {reason}"),
        ));
    }
    Ok(name)
}

/// Refuses to make an in-memory copy of `bytes` (an inflated member, a converted array) that
/// cannot fit in the memory this process may use ([`crate::sysmem`]: the smaller of
/// `MemAvailable` and the control group's free room), rather than being killed for it.
fn check_fits_memory(path: &Path, what: &str, bytes: u64) -> Result<()> {
    match crate::sysmem::available_bytes() {
        Some(avail) if bytes > avail => Err(bad(
            path,
            format!(
                "{what}needs {bytes} bytes in memory, more than the {avail} bytes available \
                 to this process (MemAvailable and the control group's limit)"
            ),
        )),
        _ => Ok(()),
    }
}

/// Reads a `.npy` file as a column named after the file's stem (`x.npy` → `"x"`).
///
/// A C-order array is memory-mapped, not read: the column is a view of the file, so files
/// larger than RAM can be drained. A Fortran-order array is transposed into memory once. Any
/// fixed-size dtype is read (see [`crate::npy`]): a numeric one as its [`DType`], any other
/// — big-endian ones included, never byte-swapped — as [`DType::Opaque`] with the header's
/// descriptor verbatim. Bytes after the data are ignored, as NumPy ignores them.
///
/// ```
/// # let dir = std::env::temp_dir().join(format!("arraydrain-doc-read-npy-{}", std::process::id()));
/// # std::fs::create_dir_all(&dir)?;
/// use arraydrain::{npy, ColumnArray};
/// use ndarray::Array2;
///
/// let x = ColumnArray::from_array("x", Array2::from_shape_fn((4, 3), |(i, j)| (i * 3 + j) as f32))?;
/// npy::write_npy(dir.join("x.npy"), &x)?;
///
/// let column = npy::read_npy(dir.join("x.npy"))?;
/// assert_eq!((column.name(), column.rows(), column.row_shape()), ("x", 4, &[3][..]));
/// assert_eq!(column.bytes(), x.as_bytes());
/// # std::fs::remove_dir_all(&dir)?;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
///
/// # Errors
/// [`FileError::Io`](crate::error::FileError::Io) when the file cannot be opened or mapped; [`FileError::BadFile`](crate::error::FileError::BadFile) naming the file
/// for a wrong magic, a header NumPy would refuse, an object dtype, a 0-dimensional array, or
/// fewer data bytes than the header declares.
pub fn read_npy(path: impl AsRef<Path>) -> Result<Column<'static>> {
    let path = path.as_ref();
    npy_from_map(path, Arc::new(ReadMap::open(path)?))
}

/// [`read_npy`] of a file already open (checked by the caller, e.g. opened without following
/// links), named `path` in errors; returns the map too (the whole file's bytes).
pub(crate) fn read_npy_file(
    file: std::fs::File,
    path: &Path,
) -> Result<(Column<'static>, Arc<ReadMap>)> {
    let map = Arc::new(ReadMap::from_file(file, path)?);
    Ok((npy_from_map(path, Arc::clone(&map))?, map))
}

fn npy_from_map(path: &Path, map: Arc<ReadMap>) -> Result<Column<'static>> {
    let name = utf8_name(path, path.file_stem())?;
    let len = map.bytes().len();
    column_from_image(path, "", name, map, 0..len)
}

/// Reads every member of a `.npz` archive as a column named after the member (`x.npy` → `"x"`),
/// in archive order.
///
/// Stored (uncompressed) members are memory-mapped in place after their CRC is checked;
/// compressed members are inflated into memory.
///
/// # Errors
/// [`FileError::Io`](crate::error::FileError::Io) when the file cannot be opened; [`FileError::BadFile`](crate::error::FileError::BadFile) naming the file for an
/// archive that is not a readable zip, a member that is not a `.npy`, a CRC mismatch, or any
/// of [`read_npy`]'s failures in a member.
pub fn read_npz(path: impl AsRef<Path>) -> Result<Vec<Column<'static>>> {
    let path = path.as_ref();
    npz_from_map(path, Arc::new(ReadMap::open(path)?))
}

fn npz_from_map(path: &Path, map: Arc<ReadMap>) -> Result<Vec<Column<'static>>> {
    let zip_err = |e: zip::result::ZipError| bad(path, format!("not a readable .npz archive: {e}"));
    let mut archive = zip::ZipArchive::new(io::Cursor::new(map.bytes())).map_err(zip_err)?;
    let mut columns = Vec::with_capacity(archive.len());
    let mut scratch = vec![0u8; 1 << 20];
    for i in 0..archive.len() {
        let mut member = archive.by_index(i).map_err(zip_err)?;
        if member.is_dir() {
            continue;
        }
        let member_name = member.name().to_string();
        let what = format!("member {member_name:?}: ");
        let Some(name) = member_name.strip_suffix(".npy").filter(|n| !n.is_empty()) else {
            return Err(bad(
                path,
                format!("{what}not a .npy array (an .npz holds only NAME.npy members)"),
            ));
        };
        if let Some(reason) = unsafe_name_reason(name) {
            return Err(bad(
                path,
                format!("{what}the member name cannot name a column file: {reason}"),
            ));
        }
        let size = member.size();
        let size_usize = usize::try_from(size)
            .map_err(|_| bad(path, format!("{what}too large for this machine")))?;
        let member_err = |e: io::Error| bad(path, format!("{what}{e}"));
        if member.compression() == zip::CompressionMethod::Stored {
            let start = usize::try_from(member.data_start()).unwrap_or(usize::MAX);
            let range = start..start.saturating_add(size_usize);
            if member.compressed_size() != size || range.end > map.bytes().len() {
                return Err(bad(path, format!("{what}truncated archive")));
            }
            // Check the CRC by streaming the member through the zip reader (which verifies it
            // at the end); the data itself stays where it is, in the map.
            loop {
                match member.read(&mut scratch) {
                    Ok(0) => break,
                    Ok(_) => {}
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => return Err(member_err(e)),
                }
            }
            drop(member);
            let owner: Arc<dyn SharedBytes> = Arc::clone(&map) as Arc<dyn SharedBytes>;
            columns.push(column_from_image(
                path,
                &what,
                name.to_string(),
                owner,
                range,
            )?);
        } else {
            check_fits_memory(path, &what, size)?;
            let mut buf =
                HostBuf::zeroed(size_usize, name).map_err(|e| bad(path, format!("{what}{e}")))?;
            member.read_exact(buf.as_bytes_mut()).map_err(member_err)?;
            // One more read reaches the end, where the reader checks the CRC.
            let mut extra = [0u8; 1];
            match member.read(&mut extra) {
                Ok(0) => {}
                Ok(_) => {
                    return Err(bad(
                        path,
                        format!("{what}longer than the {size} bytes the archive declares"),
                    ))
                }
                Err(e) => return Err(member_err(e)),
            }
            drop(member);
            columns.push(column_from_image(
                path,
                &what,
                name.to_string(),
                Arc::new(buf),
                0..size_usize,
            )?);
        }
    }
    if columns.is_empty() {
        return Err(bad(path, "the archive holds no arrays"));
    }
    Ok(columns)
}

/// Reads `.npy` files and `.npz` archives (by extension; anything else is tried as `.npy`)
/// into one table, columns in the order given.
///
/// ```
/// # let dir = std::env::temp_dir().join(format!("arraydrain-doc-read-table-{}", std::process::id()));
/// # std::fs::create_dir_all(&dir)?;
/// use arraydrain::{npy, ColumnArray, Loader, Strategy};
/// use ndarray::{Array1, Array2};
///
/// let x = ColumnArray::from_array("x", Array2::<f32>::ones((6, 2)))?;
/// let y = ColumnArray::from_array("y", Array1::from_iter(0..6i64))?;
/// npy::write_npz(dir.join("data.npz"), &[x, y], &npy::WriteOptions::default())?;
///
/// let table = npy::read_table(&[dir.join("data.npz")])?;
/// let out = Loader::new(&table).batch_size(4).shuffle(1).materialize(Strategy::Auto)?;
/// npy::write_npy_dir(dir.join("out"), out.columns())?;
/// assert!(dir.join("out/y.npy").exists());
/// # std::fs::remove_dir_all(&dir)?;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
///
/// # Errors
/// Those of [`read_npy`] and [`read_npz`]; [`FileError::BadFile`](crate::error::FileError::BadFile) naming the file whose column
/// repeats an earlier name or whose row count differs from the first file's;
/// [`TableError::EmptyTable`](crate::TableError::EmptyTable)(crate::Error::EmptyTable) when no path is given.
pub fn read_table<P: AsRef<Path>>(paths: &[P]) -> Result<Table<'static>> {
    read_table_mapped(paths).map(|(t, _)| t)
}

/// [`read_table`], with the map of each input file (in the order of `paths`): the bytes the
/// table's columns are read from, e.g. to fingerprint exactly what a run reads.
pub(crate) fn read_table_mapped<P: AsRef<Path>>(
    paths: &[P],
) -> Result<(Table<'static>, Vec<Arc<ReadMap>>)> {
    let mut maps = Vec::with_capacity(paths.len());
    let mut columns: Vec<(Column<'static>, PathBuf)> = Vec::new();
    // Which file each column name came from (a map: archives may hold many thousands).
    let mut seen: HashMap<String, PathBuf> = HashMap::new();
    for path in paths {
        let path = path.as_ref();
        let is_npz = path
            .extension()
            .is_some_and(|e| e.eq_ignore_ascii_case("npz"));
        let map = Arc::new(ReadMap::open(path)?);
        maps.push(Arc::clone(&map));
        let read = if is_npz {
            npz_from_map(path, map)?
        } else {
            vec![npy_from_map(path, map)?]
        };
        for column in read {
            if let Some((first, first_path)) = columns.first() {
                if column.rows() != first.rows() {
                    return Err(bad(
                        path,
                        format!(
                            "column {:?} has {} rows but column {:?} of {} has {}",
                            column.name(),
                            column.rows(),
                            first.name(),
                            first_path.display(),
                            first.rows()
                        ),
                    ));
                }
            }
            if let Some(other) = seen.get(column.name()) {
                return Err(bad(
                    path,
                    format!(
                        "column {:?} is also read from {}",
                        column.name(),
                        other.display()
                    ),
                ));
            }
            seen.insert(column.name().to_string(), path.to_path_buf());
            columns.push((column, path.to_path_buf()));
        }
    }
    let table = Table::new(columns.into_iter().map(|(c, _)| c).collect())?;
    Ok((table, maps))
}

/// Reads a 1-D array of row indices (`int64`, `uint64`, `int32` or `uint32`) from a `.npy` file,
/// e.g. the exact order another loader produced.
///
/// # Errors
/// Those of [`read_npy`]; [`FileError::BadFile`](crate::error::FileError::BadFile) naming the file for another dtype, more than one
/// dimension, or a negative index.
pub fn read_indices(path: impl AsRef<Path>) -> Result<Vec<u64>> {
    let path = path.as_ref();
    read_indices_mapped(path).map(|(i, _)| i)
}

/// [`read_indices`], with the map of the file (the bytes the indices were read from).
pub(crate) fn read_indices_mapped(path: &Path) -> Result<(Vec<u64>, Arc<ReadMap>)> {
    let map = Arc::new(ReadMap::open(path)?);
    let len = map.bytes().len();
    let name = utf8_name(path, path.file_stem())?;
    let column = column_from_image(
        path,
        "",
        name,
        Arc::clone(&map) as Arc<dyn SharedBytes>,
        0..len,
    )?;
    if !column.row_shape().is_empty() {
        return Err(bad(
            path,
            format!(
                "an index file holds a 1-D array; this one has rows of shape {:?}",
                column.row_shape()
            ),
        ));
    }
    // Big-endian index files are read too: their elements are swapped here.
    let (dtype, swapped) = match super::byte_swapped(&column.dtype()) {
        Some(d) => (d, true),
        None => (column.dtype(), false),
    };
    let swapped_bytes;
    let bytes = if swapped {
        let mut b = column.bytes().to_vec();
        for e in b.chunks_exact_mut(dtype.size()) {
            e.reverse();
        }
        swapped_bytes = b;
        &swapped_bytes[..]
    } else {
        column.bytes()
    };
    let negative = |pos: usize, v: i64| {
        bad(
            path,
            format!("index {v} at position {pos} is negative (indices are row numbers)"),
        )
    };
    let mut out = Vec::new();
    out.try_reserve_exact(column.rows())
        .map_err(|e| Error::alloc(column.rows().saturating_mul(8), "the index list", e))?;
    match dtype {
        DType::I64 => {
            for (pos, c) in bytes.chunks_exact(8).enumerate() {
                let v: i64 = bytemuck::pod_read_unaligned(c);
                out.push(u64::try_from(v).map_err(|_| negative(pos, v))?);
            }
        }
        DType::U64 => out.extend(
            bytes
                .chunks_exact(8)
                .map(bytemuck::pod_read_unaligned::<u64>),
        ),
        DType::I32 => {
            for (pos, c) in bytes.chunks_exact(4).enumerate() {
                let v: i32 = bytemuck::pod_read_unaligned(c);
                out.push(u64::try_from(v).map_err(|_| negative(pos, v.into()))?);
            }
        }
        DType::U32 => out.extend(
            bytes
                .chunks_exact(4)
                .map(|c| u64::from(bytemuck::pod_read_unaligned::<u32>(c))),
        ),
        other => {
            return Err(bad(
                path,
                format!("an index file holds int64, uint64, int32 or uint32, not {other}"),
            ))
        }
    }
    // The indices were copied out of the map: make sure the file did not change meanwhile.
    map.check_unchanged()?;
    Ok((out, map))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fortran_order_is_transposed() {
        // A 2x3 array [[0,1,2],[3,4,5]] in Fortran order is stored 0,3,1,4,2,5.
        let src: Vec<u8> = [0u16, 3, 1, 4, 2, 5]
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect();
        let mut dst = vec![0u8; src.len()];
        fortran_to_c(&src, 2, &[2, 3], &mut dst);
        let vals: Vec<u16> = dst
            .chunks(2)
            .map(|c| u16::from_le_bytes([c[0], c[1]]))
            .collect();
        assert_eq!(vals, [0, 1, 2, 3, 4, 5]);
    }

    #[test]
    fn fortran_order_of_any_element_size_matches_ndarray() {
        use ndarray::{ArrayD, IxDyn, ShapeBuilder};
        for shape in [vec![3usize, 4, 5], vec![2, 1, 3, 2], vec![7, 2]] {
            let n: usize = shape.iter().product();
            // 3-byte elements: element k holds k in its bytes.
            let f_order: Vec<[u8; 3]> = (0..n).map(|k| [k as u8, (k >> 8) as u8, 7]).collect();
            let src: Vec<u8> = f_order.iter().flatten().copied().collect();
            let mut dst = vec![0u8; src.len()];
            fortran_to_c(&src, 3, &shape, &mut dst);
            let view = ArrayD::from_shape_vec(IxDyn(&shape).f(), f_order).unwrap();
            let want: Vec<u8> = view.iter().flatten().copied().collect();
            assert_eq!(dst, want, "{shape:?}");
        }
    }
}
