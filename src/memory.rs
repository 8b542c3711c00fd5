//! Host memory: fallible, aligned, lazily zeroed buffers, and the counter that reports how many
//! bytes a strategy had allocated at its peak.
//!
//! Large buffers are anonymous memory maps: the kernel hands out zeroed pages on first touch (no
//! zeroing pass), the mapping is page-aligned (so every dtype can be viewed in place), a failed
//! request is an error rather than an abort, and the transparent-huge-page advice cuts the page
//! faults that dominate filling fresh memory. Small buffers come from the allocator.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use memmap2::MmapMut;

use crate::error::{Error, Result};

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
    Map(MmapMut),
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
            #[cfg(target_os = "linux")]
            {
                // Advice only: where transparent huge pages are off or unsupported, ignore it.
                let _ = map.advise(memmap2::Advice::HugePage);
            }
            Backing::Map(map)
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
        crate::gather::cpu::par_copy(bytes, buf.as_bytes_mut());
        Ok(buf)
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
            Backing::Map(m) => &m[..self.len],
        }
    }

    /// The bytes, writable.
    pub fn as_bytes_mut(&mut self) -> &mut [u8] {
        match &mut self.backing {
            Backing::Vec(v) => &mut bytemuck::cast_slice_mut(v)[..self.len],
            Backing::Map(m) => &mut m[..self.len],
        }
    }
}

impl Drop for HostBuf {
    fn drop(&mut self) {
        if let Some(c) = &self.counter {
            c.sub(self.len as u64);
        }
    }
}

impl fmt::Debug for HostBuf {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = match self.backing {
            Backing::Vec(_) => "vec",
            Backing::Map(_) => "anonymous map",
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
