//! Simulated device memory and page-locked host memory: one anonymous mapping per allocation,
//! laid out as
//!
//! ```text
//! [guard page][canary head][data: size bytes][canary tail to the 256-byte rounding][guard page]
//! ```
//!
//! so an access past the end of the rounded allocation hits the guard page at once, and one into
//! the rounding is found by the canary check after every operation that touched it. Device
//! addresses are host addresses plus [`DEVICE_OFFSET`]. Freed memory is unmapped in place
//! (`PROT_NONE`), so any later access faults and the fault handler names the allocation.

use std::collections::{BTreeMap, VecDeque};
use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};

use crate::sched::StreamState;

/// Added to a device allocation's host address to make its device address. Bit 62 set makes
/// the address non-canonical on x86-64, so the host cannot dereference a device pointer.
pub const DEVICE_OFFSET: u64 = 0x4000_0000_0000_0000;

const PAGE: usize = 4096;
/// Allocation granularity of `cuMemAlloc` (device allocations start 256-byte aligned).
pub const ALIGN: usize = 256;
const CANARY: u8 = 0xC5;
/// Fresh allocations up to this size are filled with [`UNINIT`] (as a device's memory holds
/// garbage); larger ones are left zero, so a sparse multi-GiB table costs no host memory.
const FILL_LIMIT: usize = 64 << 20;
pub const UNINIT: u8 = 0xCD;
/// Freed mappings kept in place (unmapped, `PROT_NONE`) before their address range is released.
const QUARANTINE: usize = 4096;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Device,
    Pinned,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Life {
    Live,
    /// `cuMemFreeAsync` was called; the free runs in stream order.
    FreePending(String),
    Freed(String),
}

pub struct Alloc {
    pub id: u64,
    pub kind: Kind,
    /// Host address of the first byte.
    pub host: usize,
    pub size: usize,
    rounded: usize,
    map_base: usize,
    map_len: usize,
    pub ctx: u64,
    pub made_by: String,
    pub life: Life,
    /// Stream-ordered allocation: usable by other streams only once this stream operation ran.
    pub ordered: Option<(Arc<StreamState>, u64)>,
    /// Operations enqueued that use this allocation: (stream, operation).
    pub users: Vec<(Arc<StreamState>, u64)>,
    /// Never written and still all zero (large allocations are not filled): clearing it to 0
    /// is skipped, so a sparse multi-GiB table costs no host memory.
    pub fresh: bool,
}

impl Alloc {
    pub fn device_addr(&self) -> u64 {
        self.host as u64 + DEVICE_OFFSET
    }

    fn addr(&self) -> u64 {
        match self.kind {
            Kind::Device => self.device_addr(),
            Kind::Pinned => self.host as u64,
        }
    }

    /// Checks the canaries around the data; `Err` names the first damaged byte.
    pub fn check_canaries(&self) -> Result<(), String> {
        if self.life != Life::Live && !matches!(self.life, Life::FreePending(_)) {
            return Ok(());
        }
        let head_start = self.map_base + PAGE;
        // SAFETY: the head and tail regions are inside this allocation's mapping, which is
        // readable while it is live.
        let head =
            unsafe { std::slice::from_raw_parts(head_start as *const u8, self.host - head_start) };
        if head.iter().all(|&b| b == CANARY) {
        } else if let Some(p) = head.iter().rposition(|&b| b != CANARY) {
            return Err(format!(
                "{} byte(s) before its start were overwritten (the byte at offset -{})",
                head.len() - p,
                head.len() - p
            ));
        }
        let tail_start = self.host + self.size;
        // SAFETY: as above.
        let tail = unsafe {
            std::slice::from_raw_parts(tail_start as *const u8, self.rounded - self.size)
        };
        if tail.iter().all(|&b| b == CANARY) {
        } else if let Some(p) = tail.iter().position(|&b| b != CANARY) {
            return Err(format!(
                "the byte {} past its end (offset {}) was overwritten",
                p,
                self.size + p
            ));
        }
        Ok(())
    }

    /// Whether `host` lies in the mapping (guards included) of this allocation.
    fn covers_mapping(&self, host: usize) -> bool {
        host >= self.map_base && host < self.map_base + self.map_len
    }
}

impl fmt::Display for Alloc {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = match self.kind {
            Kind::Device => "device allocation",
            Kind::Pinned => "pinned host allocation",
        };
        write!(
            f,
            "{kind} #{} of {} bytes at {:#x} (made by {}, context #{}",
            self.id,
            self.size,
            self.addr(),
            self.made_by,
            self.ctx
        )?;
        match &self.life {
            Life::Live => write!(f, ", live)"),
            Life::FreePending(by) => write!(f, ", free pending: {by})"),
            Life::Freed(by) => write!(f, ", freed by {by})"),
        }
    }
}

#[derive(Default)]
pub struct Registry {
    next: u64,
    /// By host address of the first byte.
    pub allocs: BTreeMap<usize, Alloc>,
    quarantine: VecDeque<usize>,
    pub device_used: u64,
    pub pinned_used: u64,
}

static REGISTRY: OnceLock<Mutex<Registry>> = OnceLock::new();

pub fn registry() -> MutexGuard<'static, Registry> {
    REGISTRY
        .get_or_init(|| Mutex::new(Registry::default()))
        .lock()
        .unwrap_or_else(|p| p.into_inner())
}

/// For the fault handler: never blocks.
pub fn try_registry() -> Option<MutexGuard<'static, Registry>> {
    REGISTRY.get()?.try_lock().ok()
}

/// Where an address range falls, for checks and reports.
pub enum Found<'a> {
    /// Entirely inside the data of this allocation.
    Inside(&'a Alloc),
    /// Starts inside this allocation's mapping but is not entirely within its data.
    OutOfBounds(&'a Alloc),
    Nowhere,
}

impl Registry {
    /// Maps a new allocation of `size` bytes; `None` when the mapping fails.
    pub fn map(&mut self, kind: Kind, size: usize, ctx: u64, made_by: String) -> Option<&Alloc> {
        let rounded = size.max(1).checked_next_multiple_of(ALIGN)?;
        let data_pages = rounded.checked_next_multiple_of(PAGE)?;
        let map_len = data_pages.checked_add(2 * PAGE)?;
        // SAFETY: a fresh anonymous private mapping; nothing else refers to it.
        let base = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                map_len,
                libc::PROT_NONE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                -1,
                0,
            )
        };
        if base == libc::MAP_FAILED {
            return None;
        }
        let base = base as usize;
        // SAFETY: the data pages lie inside the mapping just made.
        let rc = unsafe {
            libc::mprotect(
                (base + PAGE) as *mut libc::c_void,
                data_pages,
                libc::PROT_READ | libc::PROT_WRITE,
            )
        };
        if rc != 0 {
            // SAFETY: the mapping made above.
            unsafe { libc::munmap(base as *mut libc::c_void, map_len) };
            return None;
        }
        let host = base + PAGE + data_pages - rounded;
        // SAFETY: [base + PAGE, base + PAGE + data_pages) is readable and writable, ours.
        unsafe {
            let head = base + PAGE;
            std::ptr::write_bytes(head as *mut u8, CANARY, host - head);
            std::ptr::write_bytes((host + size) as *mut u8, CANARY, rounded - size);
            if size <= FILL_LIMIT {
                std::ptr::write_bytes(host as *mut u8, UNINIT, size);
            }
        }
        self.next += 1;
        let a = Alloc {
            id: self.next,
            kind,
            host,
            size,
            rounded,
            map_base: base,
            map_len,
            ctx,
            made_by,
            life: Life::Live,
            ordered: None,
            users: Vec::new(),
            fresh: size > FILL_LIMIT,
        };
        match kind {
            Kind::Device => self.device_used += size as u64,
            Kind::Pinned => self.pinned_used += size as u64,
        }
        self.allocs.insert(host, a);
        self.allocs.get(&host)
    }

    /// The allocation whose data or mapping contains host address `host` (freed ones too).
    pub fn around(&self, host: usize) -> Option<&Alloc> {
        // The allocation starting at or before `host`, or the next one (whose head guard and
        // canaries precede its data).
        let before = self.allocs.range(..=host).next_back().map(|(_, a)| a);
        let after = self.allocs.range(host + 1..).next().map(|(_, a)| a);
        [before, after]
            .into_iter()
            .flatten()
            .find(|a| a.covers_mapping(host))
    }

    /// Classifies `[host, host + len)`.
    pub fn find(&self, host: usize, len: usize) -> Found<'_> {
        match self.around(host) {
            Some(a) => {
                let end = host.checked_add(len.max(1));
                if host >= a.host && end.is_some_and(|e| e <= a.host + a.size.max(1)) {
                    Found::Inside(a)
                } else {
                    Found::OutOfBounds(a)
                }
            }
            None => Found::Nowhere,
        }
    }

    pub fn by_base(&mut self, host: usize) -> Option<&mut Alloc> {
        self.allocs.get_mut(&host)
    }

    /// Unmaps the allocation's memory in place (its address range stays reserved, `PROT_NONE`,
    /// until it leaves the quarantine) and marks it freed by `by`.
    pub fn release(&mut self, host: usize, by: String) {
        let Some(a) = self.allocs.get_mut(&host) else {
            return;
        };
        if matches!(a.life, Life::Freed(_)) {
            return;
        }
        a.life = Life::Freed(by);
        a.users.clear();
        match a.kind {
            Kind::Device => self.device_used -= a.size as u64,
            Kind::Pinned => self.pinned_used -= a.size as u64,
        }
        // SAFETY: the allocation's own mapping; no Rust reference into it is held by the
        // simulator, and any later access by the program faults, which is the point.
        unsafe {
            libc::madvise(
                a.map_base as *mut libc::c_void,
                a.map_len,
                libc::MADV_DONTNEED,
            );
            libc::mprotect(a.map_base as *mut libc::c_void, a.map_len, libc::PROT_NONE);
        }
        self.quarantine.push_back(host);
        while self.quarantine.len() > QUARANTINE {
            let Some(old) = self.quarantine.pop_front() else {
                break;
            };
            if let Some(a) = self.allocs.remove(&old) {
                // SAFETY: a freed allocation's mapping, referred to by nothing.
                unsafe { libc::munmap(a.map_base as *mut libc::c_void, a.map_len) };
            }
        }
    }

    /// Live allocations (device and pinned) of context `ctx` (0: any).
    pub fn live(&self, ctx: u64) -> Vec<&Alloc> {
        self.allocs
            .values()
            .filter(|a| !matches!(a.life, Life::Freed(_)) && (ctx == 0 || a.ctx == ctx))
            .collect()
    }
}
