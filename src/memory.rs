//! Host memory: fallible, aligned, lazily zeroed buffers, the parallel copy that fills them, and
//! the counter that reports how many bytes a strategy had allocated at its peak.
//!
//! Large buffers are anonymous memory maps: the kernel hands out zeroed pages on first touch (no
//! zeroing pass), the mapping is page-aligned (so every dtype can be viewed in place), a failed
//! request is an error rather than an abort, and the transparent-huge-page advice cuts the page
//! faults that dominate filling fresh memory. Small buffers come from the allocator.
//!
//! One exception to the advice: in a virtual machine whose balloon device has *free page
//! reporting*, the hypervisor takes back every free 2 MiB block a couple of seconds after it is
//! freed, and a huge page is always such a block, so a fresh huge-page buffer is backed again by
//! the host on first touch — measured at 3–10× the cost of the same bytes on 4 KiB pages, which the
//! kernel hands out from smaller free blocks the host never took. There the advice is given only
//! when about as many bytes of large buffers were freed within the last second (their blocks are
//! still backed: an epoch loop that drops one output and drains the next); a first drain in a
//! fresh process, or one after a pause, gets 4 KiB pages.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use memmap2::MmapMut;
use rayon::prelude::*;

use crate::error::{Error, Result};

/// Bytes of output one parallel task handles: large enough to amortise scheduling, small enough
/// that two cores share the work of a few MiB evenly.
pub(crate) const TASK_BYTES: usize = 256 << 10;

/// Copies `src` into `dst` (equal lengths) on all threads.
pub fn par_copy(src: &[u8], dst: &mut [u8]) {
    debug_assert_eq!(src.len(), dst.len());
    if dst.len() <= TASK_BYTES {
        dst.copy_from_slice(&src[..dst.len()]);
        return;
    }
    dst.par_chunks_mut(TASK_BYTES)
        .zip(src.par_chunks(TASK_BYTES))
        .for_each(|(d, s)| d.copy_from_slice(s));
}

/// Below this many bytes a buffer is an ordinary vector (one map per small batch would cost more
/// than the copy it serves).
const MAP_THRESHOLD: usize = 1 << 20;

/// Counts the bytes a run holds in engine-made buffers, and the peak of that count.
#[derive(Debug, Default)]
pub struct AllocCounter {
    current: AtomicU64,
    peak: AtomicU64,
}

impl AllocCounter {
    /// A fresh counter, shared by the buffers it counts.
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// The most bytes held at once since creation.
    pub fn peak(&self) -> u64 {
        self.peak.load(Ordering::Relaxed)
    }

    /// Bytes held now.
    pub fn current(&self) -> u64 {
        self.current.load(Ordering::Relaxed)
    }

    pub(crate) fn add(&self, bytes: u64) {
        let now = self.current.fetch_add(bytes, Ordering::Relaxed) + bytes;
        self.peak.fetch_max(now, Ordering::Relaxed);
    }

    pub(crate) fn sub(&self, bytes: u64) {
        self.current.fetch_sub(bytes, Ordering::Relaxed);
    }
}

enum Backing {
    Vec(Vec<u64>),
    /// An anonymous map, and whether it was left on 4 KiB pages (no huge-page advice).
    Map(MmapMut, bool),
}

/// A host byte buffer aligned to at least 8 bytes (page-aligned when large), zero-filled.
pub struct HostBuf {
    backing: Backing,
    len: usize,
    counter: Option<Arc<AllocCounter>>,
}

impl HostBuf {
    /// Allocates `len` zeroed bytes.
    ///
    /// # Errors
    /// [`Error::HostAllocation`] when the system refuses the memory.
    pub fn zeroed(len: usize, what: &str) -> Result<Self> {
        let backing = if len < MAP_THRESHOLD {
            let words = len.div_ceil(8);
            let mut v: Vec<u64> = Vec::new();
            v.try_reserve_exact(words)
                .map_err(|e| Error::alloc(len, what, e))?;
            v.resize(words, 0);
            Backing::Vec(v)
        } else {
            let map = MmapMut::map_anon(len).map_err(|e| Error::alloc(len, what, e))?;
            let mut small_pages = true;
            #[cfg(target_os = "linux")]
            if huge_page_advice(free_blocks_reported(), recently_freed(), len) {
                // Advice only: where transparent huge pages are off or unsupported, ignore it.
                small_pages = map.advise(memmap2::Advice::HugePage).is_err();
            }
            Backing::Map(map, small_pages)
        };
        Ok(HostBuf {
            backing,
            len,
            counter: None,
        })
    }

    /// Allocates `len` zeroed bytes and charges them to `counter` until the buffer is dropped.
    ///
    /// # Errors
    /// [`Error::HostAllocation`] when the system refuses the memory.
    pub fn counted(len: usize, what: &str, counter: &Arc<AllocCounter>) -> Result<Self> {
        let mut buf = Self::zeroed(len, what)?;
        counter.add(len as u64);
        buf.counter = Some(Arc::clone(counter));
        Ok(buf)
    }

    /// Allocates a buffer holding a copy of `bytes`.
    ///
    /// # Errors
    /// [`Error::HostAllocation`] when the system refuses the memory.
    pub fn copy_of(bytes: &[u8], what: &str, counter: Option<&Arc<AllocCounter>>) -> Result<Self> {
        let mut buf = match counter {
            Some(c) => Self::counted(bytes.len(), what, c)?,
            None => Self::zeroed(bytes.len(), what)?,
        };
        par_copy(bytes, buf.as_bytes_mut());
        Ok(buf)
    }

    /// Faults in every page of a buffer about to be written whole, on all threads, one system
    /// call per 4 MiB (`MADV_POPULATE_WRITE`, Linux 5.14): on 4 KiB pages a quarter cheaper than
    /// a fault per page as the writes reach them. Huge-page buffers fault as they are written
    /// (260 faults for 520 MB), which leaves the zeroed lines in cache for the writes. Advice
    /// only: where the kernel refuses it, the pages fault as before.
    pub(crate) fn prefault(&self) {
        #[cfg(target_os = "linux")]
        if let Backing::Map(map, true) = &self.backing {
            const STEP: usize = 4 << 20;
            (0..self.len.div_ceil(STEP)).into_par_iter().for_each(|k| {
                let at = k * STEP;
                let _ =
                    map.advise_range(memmap2::Advice::PopulateWrite, at, STEP.min(self.len - at));
            });
        }
    }

    /// Faults in the pages of `range` (`MADV_POPULATE_WRITE`), on the calling thread, huge
    /// pages too: for a background thread that faults in a fresh output a step at a time while
    /// its rows arrive. Advice only (where the kernel refuses it, pages fault as they are
    /// written); nothing for small buffers.
    pub(crate) fn prefault_range(&self, range: std::ops::Range<usize>) {
        #[cfg(target_os = "linux")]
        if let Backing::Map(map, _) = &self.backing {
            let end = range.end.min(self.len);
            if range.start < end {
                let _ = map.advise_range(
                    memmap2::Advice::PopulateWrite,
                    range.start,
                    end - range.start,
                );
            }
        }
        #[cfg(not(target_os = "linux"))]
        let _ = range;
    }

    /// Length in bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// True when the buffer holds no bytes.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The bytes.
    pub fn as_bytes(&self) -> &[u8] {
        match &self.backing {
            Backing::Vec(v) => &bytemuck::cast_slice(v)[..self.len],
            Backing::Map(m, _) => &m[..self.len],
        }
    }

    /// The bytes, writable.
    pub fn as_bytes_mut(&mut self) -> &mut [u8] {
        match &mut self.backing {
            Backing::Vec(v) => &mut bytemuck::cast_slice_mut(v)[..self.len],
            Backing::Map(m, _) => &mut m[..self.len],
        }
    }
}

impl Drop for HostBuf {
    fn drop(&mut self) {
        if let Some(c) = &self.counter {
            c.sub(self.len as u64);
        }
        if matches!(self.backing, Backing::Map(..)) {
            note_freed(self.len);
        }
    }
}

/// How long freed huge pages stay backed by the host: the kernel reports free blocks to the
/// hypervisor two seconds after they are freed; half of that leaves a margin.
const STILL_BACKED: Duration = Duration::from_secs(1);

/// Whether to advise huge pages for a new large buffer of `len` bytes, given whether the host
/// reclaims free 2 MiB blocks and how many bytes of large buffers were freed within
/// [`STILL_BACKED`]: always where blocks are not reclaimed; there, only when at least half of
/// `len` comes from blocks freed so recently that they are still backed.
fn huge_page_advice(blocks_reported: bool, recently_freed: u64, len: usize) -> bool {
    !blocks_reported || recently_freed.saturating_mul(2) >= len as u64
}

/// Whether this machine's hypervisor takes back free 2 MiB blocks: a virtio balloon device
/// offering free page reporting (feature bit 5, `VIRTIO_BALLOON_F_REPORTING`, in the
/// `features` string sysfs writes bit 0 first). Read once.
fn free_blocks_reported() -> bool {
    static REPORTED: OnceLock<bool> = OnceLock::new();
    *REPORTED.get_or_init(|| {
        let Ok(devices) = std::fs::read_dir("/sys/bus/virtio/drivers/virtio_balloon") else {
            return false;
        };
        devices.flatten().any(|d| {
            d.file_name().to_string_lossy().starts_with("virtio")
                && std::fs::read_to_string(d.path().join("features"))
                    .is_ok_and(|f| f.as_bytes().get(5) == Some(&b'1'))
        })
    })
}

/// Large buffers freed recently: milliseconds since [`clock_base`] of the last free (0: none),
/// and the bytes freed since the window before it closed.
static LAST_FREE_MS: AtomicU64 = AtomicU64::new(0);
static FREED_BYTES: AtomicU64 = AtomicU64::new(0);

fn clock_base() -> Instant {
    static BASE: OnceLock<Instant> = OnceLock::new();
    *BASE.get_or_init(Instant::now)
}

fn now_ms() -> u64 {
    // +1 so that a free in the first millisecond is not read as "none".
    clock_base().elapsed().as_millis() as u64 + 1
}

/// Records a large buffer's release (a speed hint only: concurrent updates may lose a count).
fn note_freed(len: usize) {
    let now = now_ms();
    let last = LAST_FREE_MS.swap(now, Ordering::Relaxed);
    if last == 0 || now - last.min(now) > STILL_BACKED.as_millis() as u64 {
        FREED_BYTES.store(len as u64, Ordering::Relaxed);
    } else {
        FREED_BYTES.fetch_add(len as u64, Ordering::Relaxed);
    }
}

/// Bytes of large buffers freed within [`STILL_BACKED`] of now.
fn recently_freed() -> u64 {
    let last = LAST_FREE_MS.load(Ordering::Relaxed);
    if last == 0 || now_ms() - last.min(now_ms()) > STILL_BACKED.as_millis() as u64 {
        0
    } else {
        FREED_BYTES.load(Ordering::Relaxed)
    }
}

impl fmt::Debug for HostBuf {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = match self.backing {
            Backing::Vec(_) => "vec",
            Backing::Map(..) => "anonymous map",
        };
        f.debug_struct("HostBuf")
            .field("len", &self.len)
            .field("backing", &kind)
            .finish()
    }
}

/// Multiplies sizes, turning overflow into an allocation error.
pub(crate) fn checked_bytes(parts: &[usize], what: &str) -> Result<usize> {
    parts
        .iter()
        .try_fold(1usize, |acc, &p| acc.checked_mul(p))
        .ok_or_else(|| {
            let wide = parts
                .iter()
                .fold(1u128, |acc, &p| acc.saturating_mul(p as u128));
            Error::alloc(wide, what, "size overflows the address space")
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counter_tracks_current_and_peak() {
        let c = AllocCounter::new();
        let a = HostBuf::counted(100, "a", &c).unwrap();
        let b = HostBuf::counted(2 << 20, "b", &c).unwrap();
        assert_eq!(c.current(), 100 + (2 << 20));
        drop(a);
        drop(b);
        assert_eq!(c.current(), 0);
        assert_eq!(c.peak(), 100 + (2 << 20));
    }

    #[test]
    fn huge_pages_are_advised_unless_the_host_reclaims_free_blocks() {
        // Bare metal, or no free page reporting: always.
        assert!(huge_page_advice(false, 0, 1 << 30));
        // Reported blocks: only when half the request was freed moments ago.
        assert!(!huge_page_advice(true, 0, 1 << 30));
        assert!(!huge_page_advice(true, (1 << 29) - 1, 1 << 30));
        assert!(huge_page_advice(true, 1 << 29, 1 << 30));
        assert!(huge_page_advice(true, u64::MAX, usize::MAX));
    }

    #[test]
    fn dropping_a_large_buffer_counts_as_recently_freed() {
        let b = HostBuf::zeroed(MAP_THRESHOLD + 5, "t").unwrap();
        let t = Instant::now();
        drop(b);
        let freed = recently_freed();
        // Other tests free buffers concurrently; this one's bytes are at least among them, unless
        // this thread was descheduled past the window (then there is nothing to check).
        if t.elapsed() < STILL_BACKED {
            assert!(freed >= (MAP_THRESHOLD + 5) as u64, "{freed}");
        }
    }

    #[test]
    fn prefaulted_buffers_stay_zeroed_and_writable() {
        let mut b = HostBuf::zeroed(9 << 20, "t").unwrap();
        b.prefault();
        assert!(b.as_bytes().iter().all(|&x| x == 0));
        b.as_bytes_mut().fill(7);
        assert!(b.as_bytes().iter().all(|&x| x == 7));
        HostBuf::zeroed(100, "small").unwrap().prefault();
    }

    #[test]
    fn huge_request_is_an_error_not_an_abort() {
        let err = HostBuf::zeroed(1usize << 60, "test").unwrap_err();
        assert!(matches!(err, Error::HostAllocation { .. }), "{err}");
    }

    #[test]
    fn buffers_are_zeroed_and_aligned() {
        for len in [0, 1, 7, 4096, MAP_THRESHOLD + 3] {
            let b = HostBuf::zeroed(len, "t").unwrap();
            assert_eq!(b.len(), len);
            assert!(b.as_bytes().iter().all(|&x| x == 0));
            assert_eq!(b.as_bytes().as_ptr() as usize % 8, 0);
        }
    }
}
