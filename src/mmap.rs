//! Memory maps of files: the crate's only unsafe code outside `cuda`, kept to three safe types.
//!
//! - [`ReadMap`]: a read-only map of an input file (a `.npy` or `.npz` read without copying it).
//! - [`WriteMap`]: a writable, shared map of a byte range of an output file that was created at
//!   its final size, so a drain writes rows straight into the file's pages.
//! - [`WriteMap::release`] / [`ReadMap::release`]: write back and drop a finished range from the
//!   process (`msync(MS_ASYNC)` then `madvise(MADV_DONTNEED)`), so an output or input larger
//!   than RAM never has to be resident at once.
//!
//! The contract every map here relies on, as for `numpy.memmap`: **no other process truncates
//! or shrinks a mapped file while it is mapped** (that would make a later access fault with
//! `SIGBUS`). Output files are created by this crate under a private temporary name, so only the
//! inputs depend on the caller keeping that promise.

use std::fs::File;
use std::ops::Range;
use std::path::{Path, PathBuf};

use memmap2::{Mmap, MmapMut, MmapOptions, UncheckedAdvice};

use crate::error::{Error, Result};

/// A read-only map of a whole file.
#[derive(Debug)]
pub struct ReadMap {
    map: Mmap,
    path: PathBuf,
}

impl ReadMap {
    /// Maps `path` read-only. An empty file gives an empty map.
    ///
    /// # Errors
    /// [`Error::Io`] naming the file when it cannot be opened or mapped.
    pub fn open(path: &Path) -> Result<ReadMap> {
        let file = File::open(path).map_err(|e| Error::io(path, e))?;
        // SAFETY: the map is read-only and private to this process; its bytes are only read
        // through `&[u8]`. The one thing that could invalidate them is another process truncating
        // the file while it is mapped, which the module contract (see the module docs) rules out,
        // exactly as for `numpy.memmap`. The `File` may be dropped: the mapping keeps its own
        // reference to the file.
        let map = unsafe { MmapOptions::new().map(&file) }.map_err(|e| Error::io(path, e))?;
        Ok(ReadMap {
            map,
            path: path.to_path_buf(),
        })
    }

    /// The file's bytes.
    pub fn bytes(&self) -> &[u8] {
        &self.map
    }

    /// The mapped file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Tells the kernel the map will be read front to back (more read-ahead). Advice only.
    pub fn advise_sequential(&self) {
        // Advice only: where it is unsupported the map works the same, so the error is ignored.
        let _ = self.map.advise(memmap2::Advice::Sequential);
    }

    /// Drops the pages of `range` from this process (they stay in the page cache, and a later
    /// read maps them again), so reading a file larger than RAM keeps the process small.
    ///
    /// # Errors
    /// [`Error::Io`] when the range is out of bounds or the kernel refuses the advice.
    pub fn release(&self, range: Range<usize>) -> Result<()> {
        check_range(&range, self.map.len(), &self.path)?;
        if range.is_empty() {
            return Ok(());
        }
        // SAFETY: `MADV_DONTNEED` on a shared or private *read-only* file mapping only drops page
        // table entries: no page was ever written through this map, so a later read faults the
        // file's unchanged bytes back in and every `&[u8]` borrowed from `bytes()` keeps seeing
        // the same contents. The range was checked against the map's length above.
        unsafe {
            self.map
                .unchecked_advise_range(UncheckedAdvice::DontNeed, range.start, range.len())
        }
        .map_err(|e| Error::io(&self.path, e))
    }
}

/// A writable, shared map of `len` bytes at `offset` of a file that is at least
/// `offset + len` bytes long. Writes land in the file's page cache; nothing is copied.
#[derive(Debug)]
pub struct WriteMap {
    map: MmapMut,
    path: PathBuf,
}

impl WriteMap {
    /// Maps `len` bytes at `offset` of `file` (opened for reading and writing, already sized).
    ///
    /// # Errors
    /// [`Error::Io`] when the file is shorter than `offset + len` or cannot be mapped.
    pub fn new(file: &File, path: &Path, offset: u64, len: usize) -> Result<WriteMap> {
        let file_len = file.metadata().map_err(|e| Error::io(path, e))?.len();
        let end = offset.checked_add(len as u64);
        if end.is_none_or(|end| end > file_len) {
            return Err(Error::io(
                path,
                std::io::Error::new(
                    std::io::ErrorKind::InvalidInput,
                    format!("cannot map {len} bytes at {offset} of a {file_len}-byte file"),
                ),
            ));
        }
        // SAFETY: the mapping is shared and file-backed, and lies within the file's current
        // length (checked above). The caller created the file under a private temporary name
        // for this output (module contract), so nothing else truncates it or writes to it while
        // it is mapped; all access goes through `&self`/`&mut self` borrows of this map.
        let map = unsafe { MmapOptions::new().offset(offset).len(len).map_mut(file) }
            .map_err(|e| Error::io(path, e))?;
        Ok(WriteMap {
            map,
            path: path.to_path_buf(),
        })
    }

    /// The mapped bytes.
    pub fn bytes(&self) -> &[u8] {
        &self.map
    }

    /// The mapped bytes, writable.
    pub fn bytes_mut(&mut self) -> &mut [u8] {
        &mut self.map
    }

    /// Starts writing back `range` and drops its pages from this process: the bytes stay in the
    /// file (and in the page cache until the kernel reclaims it), and a later access reads them
    /// back. This is what keeps an output larger than RAM from ever being resident at once.
    ///
    /// # Errors
    /// [`Error::Io`] when the range is out of bounds or the kernel refuses.
    pub fn release(&mut self, range: Range<usize>) -> Result<()> {
        check_range(&range, self.map.len(), &self.path)?;
        if range.is_empty() {
            return Ok(());
        }
        self.map
            .flush_async_range(range.start, range.len())
            .map_err(|e| Error::io(&self.path, e))?;
        // SAFETY: this map is `MAP_SHARED` and file-backed (made in `WriteMap::new`), so
        // `MADV_DONTNEED` only unmaps the pages: dirty pages keep their contents in the page
        // cache (the kernel moves the dirty bit to the page) and are written to the file; a
        // later access maps the same bytes again. No borrow observes a change: `&mut self` is
        // held, and the contents are identical before and after. The range was checked above.
        unsafe {
            self.map
                .unchecked_advise_range(UncheckedAdvice::DontNeed, range.start, range.len())
        }
        .map_err(|e| Error::io(&self.path, e))
    }

    /// Writes every modified page back to the file and waits for it (`msync(MS_SYNC)`).
    ///
    /// # Errors
    /// [`Error::Io`] when the write-back fails.
    pub fn flush(&self) -> Result<()> {
        self.map.flush().map_err(|e| Error::io(&self.path, e))
    }
}

fn check_range(range: &Range<usize>, len: usize, path: &Path) -> Result<()> {
    if range.start > range.end || range.end > len {
        return Err(Error::io(
            path,
            std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                format!("range {range:?} is outside a map of {len} bytes"),
            ),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn written_bytes_survive_release_and_reach_the_file() {
        let dir = std::env::temp_dir().join(format!("arraydrain-mmap-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("w.bin");
        let mut file = File::options()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)
            .unwrap();
        file.write_all(b"HEAD").unwrap();
        let len = 3 * 4096 + 17;
        file.set_len(4 + len as u64).unwrap();
        let mut map = WriteMap::new(&file, &path, 4, len).unwrap();
        for (i, b) in map.bytes_mut().iter_mut().enumerate() {
            *b = (i % 251) as u8;
        }
        map.release(0..5000).unwrap();
        map.release(5000..len).unwrap();
        assert!(map.release(0..len + 1).is_err());
        assert!(map
            .bytes()
            .iter()
            .enumerate()
            .all(|(i, &b)| b == (i % 251) as u8));
        map.flush().unwrap();
        drop(map);
        let back = std::fs::read(&path).unwrap();
        assert_eq!(&back[..4], b"HEAD");
        assert!(back[4..]
            .iter()
            .enumerate()
            .all(|(i, &b)| b == (i % 251) as u8));

        let r = ReadMap::open(&path).unwrap();
        r.release(0..r.bytes().len()).unwrap();
        assert_eq!(r.bytes(), &back[..]);
        assert!(WriteMap::new(&file, &path, 8, len).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
