//! Memory maps of files: the crate's only unsafe code outside `cuda`, kept to three safe types.
//!
//! - [`ReadMap`]: a read-only map of an input file (a `.npy` or `.npz` read without copying it).
//! - [`WriteMap`]: a writable, shared map of a byte range of an output file that was created at
//!   its final size, so a drain writes rows straight into the file's pages.
//! - [`WriteMap::release`] / [`ReadMap::release`]: write back and drop a finished range from the
//!   process (`msync(MS_ASYNC)` then `madvise(MADV_DONTNEED)`), so an output or input larger
//!   than RAM never has to be resident at once.
//!
//! - [`reserve`]: allocate an output file's blocks before it is mapped (`posix_fallocate`), so
//!   writing through the map cannot fault for lack of space; a full disk is an
//!   [`FileError::NoSpace`] up front instead of a `SIGBUS` mid-run.
//! - [`catch_input_faults`] and [`verify_inputs`]: an input truncated by another process while
//!   it is mapped makes reads past its new end fault with `SIGBUS`. Once `catch_input_faults`
//!   has run, a fault inside a [`ReadMap`] is answered by mapping a zero page there (the read
//!   goes on) and recorded; `verify_inputs` then reports the file as changed
//!   ([`FileError::FileChanged`]), as it does a file whose size or modification time changed, so the
//!   caller discards what it read instead of trusting it. Faults anywhere else keep their
//!   default action.
//! - [`check_map_budget`]: the kernel's per-process limit on maps (`vm.max_map_count`), checked
//!   before a run makes one map per output column.
//!
//! Output files are created by this crate under a private temporary name and their space is
//! reserved before they are mapped, so nothing else shrinks them while mapped.

use std::fs::File;
use std::ops::Range;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use memmap2::{Mmap, MmapMut, MmapOptions, UncheckedAdvice};

use crate::error::{Error, FileError, Result};

/// A read-only map of a whole file.
#[derive(Debug)]
pub struct ReadMap {
    map: Mmap,
    path: PathBuf,
    watch: Arc<Watched>,
    id: u64,
    slot: Option<usize>,
}

/// What [`verify_inputs`] needs of a live [`ReadMap`].
#[derive(Debug)]
struct Watched {
    path: PathBuf,
    /// Kept open to compare its size and modification time with `stamp`.
    file: File,
    /// Size and modification time when mapped.
    stamp: (u64, i64, i64),
    range: Range<usize>,
}

/// The live [`ReadMap`]s, by id.
static WATCHED: Mutex<Vec<(u64, Arc<Watched>)>> = Mutex::new(Vec::new());
static NEXT_WATCH: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);

impl ReadMap {
    /// Maps `path` read-only. An empty file gives an empty map. Only regular files are read:
    /// a FIFO, socket or device would block or change under the map.
    ///
    /// # Errors
    /// [`FileError::BadFile`] for something that is not a regular file; [`FileError::Io`] naming the
    /// file when it cannot be opened or mapped.
    pub fn open(path: &Path) -> Result<ReadMap> {
        // Non-blocking, so that opening a FIFO returns at once (and is then refused) instead of
        // waiting for a writer; the flag means nothing for the regular files that are read.
        let file = File::options()
            .read(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(path)
            .map_err(|e| Error::io(path, e))?;
        ReadMap::from_file(file, path)
    }

    /// Maps a file already open for reading (e.g. by [`SafeDir::open_file`](crate::fsafe::SafeDir::open_file)),
    /// so that what was checked and what is read are the same file; `path` names it in errors.
    ///
    /// # Errors
    /// As [`ReadMap::open`].
    pub fn from_file(file: File, path: &Path) -> Result<ReadMap> {
        let meta = file.metadata().map_err(|e| Error::io(path, e))?;
        if !meta.is_file() {
            let kind = match meta.file_type() {
                t if t.is_dir() => "a folder",
                _ => "not a regular file (a FIFO, socket or device)",
            };
            return Err(Error::File(FileError::BadFile {
                path: path.to_path_buf(),
                reason: format!("is {kind}; only regular .npy/.npz files are read"),
            }));
        }
        // SAFETY: the map is read-only and private to this process; its bytes are only read
        // through `&[u8]`. Another process truncating the file while it is mapped would make a
        // later read fault with SIGBUS: with `catch_input_faults` installed that fault maps a
        // zero page (the bytes stay readable memory) and `verify_inputs` reports the file, as
        // described in the module docs; without it the process stops, as `numpy.memmap` does.
        // The file is kept open to compare its size and times later.
        let map = unsafe { MmapOptions::new().map(&file) }.map_err(|e| Error::io(path, e))?;
        let start = map.as_ptr() as usize;
        let slot = register_read_map(start, map.len());
        let watch = Arc::new(Watched {
            path: path.to_path_buf(),
            file,
            stamp: stamp(&meta),
            range: start..start + map.len(),
        });
        let id = NEXT_WATCH.fetch_add(1, Ordering::Relaxed);
        WATCHED
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push((id, Arc::clone(&watch)));
        Ok(ReadMap {
            map,
            path: path.to_path_buf(),
            watch,
            id,
            slot,
        })
    }

    /// Whether the file is as it was when mapped: no read of it faulted (see
    /// [`catch_input_faults`]), and its size and modification time are unchanged.
    ///
    /// # Errors
    /// [`FileError::FileChanged`] naming the file.
    pub fn check_unchanged(&self) -> Result<()> {
        self.watch.check()
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
    /// [`FileError::Io`] when the range is out of bounds or the kernel refuses the advice.
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

impl Drop for ReadMap {
    fn drop(&mut self) {
        WATCHED
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|(id, _)| *id != self.id);
        if let Some(slot) = self.slot {
            unregister_read_map(slot);
        }
        forget_faults(self.watch.range.clone());
    }
}

impl Watched {
    fn check(&self) -> Result<()> {
        let changed = |reason: String| {
            Error::File(FileError::FileChanged {
                path: self.path.clone(),
                reason,
            })
        };
        let faults = recorded_faults(self.range.clone());
        if faults > 0 {
            return Err(changed(format!(
                "reads past its new end faulted ({faults} pages); it was truncated or replaced"
            )));
        }
        let now = self.file.metadata().map_err(|e| Error::io(&self.path, e))?;
        if stamp(&now) != self.stamp {
            return Err(changed(format!(
                "its size or modification time changed (was {} bytes, now {})",
                self.stamp.0,
                now.len()
            )));
        }
        Ok(())
    }
}

fn stamp(meta: &std::fs::Metadata) -> (u64, i64, i64) {
    (meta.len(), meta.mtime(), meta.mtime_nsec())
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
    /// [`FileError::Io`] when the file is shorter than `offset + len` or cannot be mapped.
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
        // for this output (module contract), so nothing else truncates it while it is mapped;
        // all access goes through `&self`/`&mut self` borrows of this map. The one other writer
        // is a `Writer` of the same run in another process (src/writer/joined.rs), which writes
        // through its own map only rows this process writes identical bytes to or does not
        // touch, and has written back and stopped before the creating process reads the file
        // (to pack an archive): no byte this process reads changes under it.
        let map = unsafe { MmapOptions::new().offset(offset).len(len).map_mut(file) }
            .map_err(|e| map_error(path, e))?;
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
    /// [`FileError::Io`] when the range is out of bounds or the kernel refuses.
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
    /// [`FileError::NoSpace`] when the file system has no room for the pages written back;
    /// [`FileError::Io`] when the write-back fails otherwise.
    pub fn flush(&self) -> Result<()> {
        // A file system that delays allocation (or a full quota) may answer the write-back
        // with ENOSPC or EDQUOT even though the length was reserved: that is NoSpace too.
        self.map
            .flush()
            .map_err(|e| crate::fsafe::write_error(&self.path, e, self.map.len() as u64))
    }
}

/// An `mmap` failure; `ENOMEM` with the process at its map limit is [`FileError::MapLimit`].
fn map_error(path: &Path, e: std::io::Error) -> Error {
    if e.raw_os_error() == Some(libc::ENOMEM) {
        let (limit, in_use) = (max_map_count(), maps_in_use());
        if let (Some(limit), Some(in_use)) = (limit, in_use) {
            if in_use + 16 >= limit {
                return Error::File(FileError::MapLimit {
                    needed: 1,
                    limit,
                    in_use,
                });
            }
        }
    }
    Error::io(path, e)
}

fn max_map_count() -> Option<u64> {
    std::fs::read_to_string("/proc/sys/vm/max_map_count")
        .ok()?
        .trim()
        .parse()
        .ok()
}

fn maps_in_use() -> Option<u64> {
    let maps = std::fs::read("/proc/self/maps").ok()?;
    Some(maps.iter().filter(|&&b| b == b'\n').count() as u64)
}

/// Checks that `needed` more maps fit under the kernel's per-process limit
/// (`/proc/sys/vm/max_map_count`, with a margin for the allocator and libraries). Passes when the
/// limit cannot be read.
///
/// # Errors
/// [`FileError::MapLimit`] naming the limit.
pub fn check_map_budget(needed: u64) -> Result<()> {
    const MARGIN: u64 = 1024;
    if let (Some(limit), Some(in_use)) = (max_map_count(), maps_in_use()) {
        if in_use + needed + MARGIN > limit {
            return Err(Error::File(FileError::MapLimit {
                needed,
                limit,
                in_use,
            }));
        }
    }
    Ok(())
}

/// Allocates the first `len` bytes of `file` on disk (`posix_fallocate`), extending it to
/// `len` bytes, so that later writes into that range, through a map or not, cannot fail for
/// lack of space.
///
/// # Errors
/// [`FileError::NoSpace`] naming the file system when it has no room (or the file would exceed the
/// process's file size limit); [`FileError::Io`] otherwise.
pub fn reserve(file: &File, path: &Path, len: u64) -> Result<()> {
    let Ok(len_off) = libc::off_t::try_from(len) else {
        return Err(Error::SizeOverflow {
            what: format!("{} ({len} bytes)", path.display()),
        });
    };
    if len_off == 0 {
        return Ok(());
    }
    // SAFETY: `posix_fallocate` only reads its integer arguments; the descriptor belongs to
    // `file`, which is open (borrowed for the call) and writable by the caller's contract. It
    // returns an error number instead of setting errno.
    let rc = unsafe { libc::posix_fallocate(file.as_raw_fd(), 0, len_off) };
    if rc == 0 {
        return Ok(());
    }
    Err(crate::fsafe::write_error(
        path,
        std::io::Error::from_raw_os_error(rc),
        len,
    ))
}

// ---- faults of truncated inputs -------------------------------------------------------------

/// Address ranges of the live [`ReadMap`]s, for the signal handler (which may only use atomics):
/// slot `i` holds `[start, end)`, `0..0` when free.
const SLOTS: usize = 1024;
static MAP_START: [AtomicUsize; SLOTS] = [const { AtomicUsize::new(0) }; SLOTS];
static MAP_END: [AtomicUsize; SLOTS] = [const { AtomicUsize::new(0) }; SLOTS];
/// Pages answered by the handler: their count and the first few addresses.
const RECORDED: usize = 256;
static FAULTS: AtomicUsize = AtomicUsize::new(0);
static FAULT_PAGES: [AtomicUsize; RECORDED] = [const { AtomicUsize::new(0) }; RECORDED];
static PAGE_SIZE: AtomicUsize = AtomicUsize::new(4096);
/// Serialises slot allocation (never taken by the handler).
static SLOT_LOCK: Mutex<()> = Mutex::new(());
/// The `SIGBUS` action in force before ours, restored for faults that are not ours. Written once,
/// before our handler is installed (so before the handler can run), then only read: the handler
/// reads it with `OnceLock::get` (one atomic load, async-signal-safe), never through a lock.
static PREVIOUS: OnceLock<libc::sigaction> = OnceLock::new();

fn register_read_map(start: usize, len: usize) -> Option<usize> {
    if len == 0 {
        return None;
    }
    let _guard = SLOT_LOCK.lock().unwrap_or_else(|e| e.into_inner());
    let slot = (0..SLOTS).find(|&i| MAP_END[i].load(Ordering::Acquire) == 0)?;
    MAP_START[slot].store(start, Ordering::Release);
    MAP_END[slot].store(start + len, Ordering::Release);
    Some(slot)
}

fn unregister_read_map(slot: usize) {
    let _guard = SLOT_LOCK.lock().unwrap_or_else(|e| e.into_inner());
    MAP_END[slot].store(0, Ordering::Release);
    MAP_START[slot].store(0, Ordering::Release);
}

fn in_read_map(addr: usize) -> bool {
    (0..SLOTS).any(|i| {
        let end = MAP_END[i].load(Ordering::Acquire);
        end != 0 && MAP_START[i].load(Ordering::Acquire) <= addr && addr < end
    })
}

fn recorded_faults(range: Range<usize>) -> usize {
    let n = FAULTS.load(Ordering::Acquire).min(RECORDED);
    FAULT_PAGES[..n]
        .iter()
        .filter(|p| range.contains(&p.load(Ordering::Acquire)))
        .count()
}

fn forget_faults(range: Range<usize>) {
    for p in &FAULT_PAGES {
        let _ = p.fetch_update(Ordering::AcqRel, Ordering::Acquire, |a| {
            range.contains(&a).then_some(usize::MAX)
        });
    }
}

extern "C" fn on_sigbus(signal: libc::c_int, info: *mut libc::siginfo_t, _ctx: *mut libc::c_void) {
    // Only atomics and raw system calls here (async-signal-safe).
    // SAFETY: the kernel passes a valid siginfo for a handler installed with SA_SIGINFO;
    // `si_addr` is the field it fills for SIGBUS.
    let (code, addr) = unsafe { ((*info).si_code, (*info).si_addr() as usize) };
    if code == libc::BUS_ADRERR && in_read_map(addr) {
        let page_size = PAGE_SIZE.load(Ordering::Relaxed);
        let page = addr & !(page_size - 1);
        // SAFETY: `page` lies inside a live read-only input map of this process (checked just
        // above against the registered ranges), which only ever hands out `&[u8]`: replacing that
        // one page by a private zero page keeps every borrow pointing at readable memory, and
        // `verify_inputs` reports the file before anything read from it is trusted. MAP_FIXED
        // replaces exactly this page of our own mapping and nothing else.
        let p = unsafe {
            libc::mmap(
                page as *mut libc::c_void,
                page_size,
                libc::PROT_READ,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_FIXED,
                -1,
                0,
            )
        };
        if p != libc::MAP_FAILED {
            let n = FAULTS.fetch_add(1, Ordering::AcqRel);
            if n < RECORDED {
                FAULT_PAGES[n].store(page, Ordering::Release);
            }
            return;
        }
    }
    // Not a fault of ours: put the previous action back and return, so the access faults again
    // and is handled (or ends the process) as it would have been without us.
    // `OnceLock::get` is one atomic load (acquire) and a pointer read: no lock, no allocation.
    if let Some(old) = PREVIOUS.get() {
        // SAFETY: `old` is the action the kernel returned before ours was installed, stored
        // before the install and never changed after.
        unsafe { libc::sigaction(signal, old, std::ptr::null_mut()) };
        return;
    }
    // SAFETY: restoring the default action of SIGBUS takes no pointers.
    unsafe { libc::signal(signal, libc::SIG_DFL) };
}

/// Installs (once per process) the `SIGBUS` handler that answers faults inside [`ReadMap`]s
/// with zero pages and records them (see the module docs). Whoever calls it must call
/// [`verify_inputs`] (or [`ReadMap::check_unchanged`]) before trusting bytes read from a map.
///
/// # Errors
/// [`FileError::Io`] when the handler cannot be installed.
pub fn catch_input_faults() -> Result<()> {
    SIGBUS_HANDLER.run(install_sigbus_handler)
}

/// Something installed once per process: a call after a success does nothing; a failed install
/// is reported, and tried again (and reported again) by the next call, never taken for success.
struct InstallOnce {
    installed: AtomicBool,
    lock: Mutex<()>,
}

impl InstallOnce {
    const fn new() -> InstallOnce {
        InstallOnce {
            installed: AtomicBool::new(false),
            lock: Mutex::new(()),
        }
    }

    fn run(&self, install: impl FnOnce() -> Result<()>) -> Result<()> {
        if self.installed.load(Ordering::Acquire) {
            return Ok(());
        }
        // Two threads never install at once.
        let _guard = self.lock.lock().unwrap_or_else(|e| e.into_inner());
        if self.installed.load(Ordering::Acquire) {
            return Ok(());
        }
        install()?;
        self.installed.store(true, Ordering::Release);
        Ok(())
    }
}

static SIGBUS_HANDLER: InstallOnce = InstallOnce::new();

fn install_sigbus_handler() -> Result<()> {
    // SAFETY: sysconf only reads its argument.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    if let Ok(page) = usize::try_from(page) {
        if page.is_power_of_two() {
            PAGE_SIZE.store(page, Ordering::Relaxed);
        }
    }
    if PREVIOUS.get().is_none() {
        // SAFETY: an all-zero `sigaction` is a valid value; it receives the current action.
        let mut old: libc::sigaction = unsafe { std::mem::zeroed() };
        // SAFETY: a null new action only reads the current one into `old`, a live value.
        let rc = unsafe { libc::sigaction(libc::SIGBUS, std::ptr::null(), &mut old) };
        if rc != 0 {
            return Err(Error::File(FileError::SignalHandler {
                signal: "SIGBUS",
                source: std::io::Error::last_os_error(),
            }));
        }
        let _ = PREVIOUS.set(old);
    }
    // SAFETY: an all-zero `sigaction` is a valid value (empty mask, no flags); the fields
    // set below make it a SA_SIGINFO action whose handler has the matching signature and
    // only uses async-signal-safe operations (atomics, mmap, sigaction).
    let mut action: libc::sigaction = unsafe { std::mem::zeroed() };
    action.sa_sigaction = on_sigbus as *const () as libc::sighandler_t;
    action.sa_flags = libc::SA_SIGINFO | libc::SA_NODEFER;
    // SAFETY: the pointer is to a live, initialised `sigaction`; the previous action was saved
    // above, before this one can run.
    let rc = unsafe { libc::sigaction(libc::SIGBUS, &action, std::ptr::null_mut()) };
    if rc != 0 {
        return Err(Error::File(FileError::SignalHandler {
            signal: "SIGBUS",
            source: std::io::Error::last_os_error(),
        }));
    }
    Ok(())
}

/// Checks the live [`ReadMap`]s of `paths` (as they were given to [`ReadMap::open`]) with
/// [`ReadMap::check_unchanged`]: call before keeping anything derived from those inputs.
///
/// # Errors
/// [`FileError::FileChanged`] naming the first changed input.
pub fn verify_inputs<P: AsRef<Path>>(paths: &[P]) -> Result<()> {
    let watched: Vec<Arc<Watched>> = WATCHED
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .iter()
        .filter(|(_, w)| paths.iter().any(|p| p.as_ref() == w.path))
        .map(|(_, w)| Arc::clone(w))
        .collect();
    watched.iter().try_for_each(|w| w.check())
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
    fn a_failed_install_is_reported_and_retried_never_taken_for_success() {
        let once = InstallOnce::new();
        let calls = std::cell::Cell::new(0);
        let fail = || {
            calls.set(calls.get() + 1);
            Err(Error::io(
                "SIGBUS handler",
                std::io::Error::other("refused"),
            ))
        };
        assert!(once.run(fail).is_err());
        assert!(
            once.run(fail).is_err(),
            "a second call after a failure is not Ok"
        );
        assert_eq!(calls.get(), 2);
        assert!(once.run(|| Ok(())).is_ok());
        assert!(once.run(fail).is_ok(), "installed: nothing more to do");
        assert_eq!(calls.get(), 2);
    }

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
