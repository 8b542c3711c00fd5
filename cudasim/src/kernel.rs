//! The host build of `kernels/gather.cu` and its launches: the shape is checked against the
//! simulated device, the arguments against the kernel's contract (K1–K6 in the source's header),
//! then every thread of the grid runs, blocks in a seeded random order.

use crate::mem::{registry, Found, Kind, DEVICE_OFFSET};
use crate::report::fail;

/// The entry points the host build has, in `runner.cpp`'s order: (name, vector width W, bytes
/// per index).
pub const ENTRIES: [(&str, u64, u64); 10] = [
    ("gather_rows_v16_u64", 16, 8),
    ("gather_rows_v8_u64", 8, 8),
    ("gather_rows_v4_u64", 4, 8),
    ("gather_rows_v2_u64", 2, 8),
    ("gather_rows_v1_u64", 1, 8),
    ("gather_rows_v16_u32", 16, 4),
    ("gather_rows_v8_u32", 8, 4),
    ("gather_rows_v4_u32", 4, 4),
    ("gather_rows_v2_u32", 2, 4),
    ("gather_rows_v1_u32", 1, 4),
];

/// The simulated device's limits (an H100 SXM: compute capability 9.0).
pub const SMS: i32 = 132;
pub const MAX_THREADS_PER_BLOCK: u32 = 1024;
pub const MAX_BLOCK: [u32; 3] = [1024, 1024, 64];
pub const MAX_GRID: [u32; 3] = [i32::MAX as u32, 65535, 65535];
pub const MAX_SHARED_PER_BLOCK: u32 = 48 << 10;

extern "C" {
    fn cudasim_run_block(
        entry: i32,
        args: *const u64,
        grid: *const u32,
        block: *const u32,
        bidx: *const u32,
    ) -> i32;
}

/// One launch, as issued.
#[derive(Debug, Clone, Copy)]
pub struct Launch {
    pub entry: usize,
    pub grid: [u32; 3],
    pub block: [u32; 3],
    /// src, idx, base, dst, n, row_words, seg_words, segs (device addresses).
    pub args: [u64; 8],
}

const CALL: &str = "cuLaunchKernel";

fn host_of(dev: u64) -> usize {
    dev.wrapping_sub(DEVICE_OFFSET) as usize
}

impl Launch {
    fn name(&self) -> &'static str {
        ENTRIES[self.entry].0
    }

    pub fn describe(&self) -> String {
        let a = &self.args;
        format!(
            "{CALL} of {} grid ({}, {}, {}) block ({}, {}, {}): src {:#x} idx {:#x} base {} dst {:#x} n {} row_words {} seg_words {} segs {}",
            self.name(),
            self.grid[0], self.grid[1], self.grid[2], self.block[0], self.block[1], self.block[2],
            a[0], a[1], a[2], a[3], a[4], a[5], a[6], a[7]
        )
    }

    fn bad(&self, item: &str, msg: String) -> ! {
        fail(
            CALL,
            &format!(
                "{} breaks {item} of kernels/gather.cu: {msg}",
                self.describe()
            ),
        )
    }

    /// The checks that need no device memory contents: launch shape (K6), sizes (K5),
    /// alignment (K1), and that every pointer lies in a live device allocation of `ctx` (K3, K4,
    /// and the start of K2). Run when the launch is issued.
    pub fn check_issue(&self, ctx: u64) {
        let [src, idx, _base, dst, n, row_words, seg_words, segs] = self.args;
        let (_, w, ib) = ENTRIES[self.entry];
        // K6 and the device's limits.
        let threads = self.block.iter().map(|&b| b as u64).product::<u64>();
        if self.block.contains(&0) || self.grid.contains(&0) {
            self.bad("K6", "a zero grid or block dimension".into());
        }
        for d in 0..3 {
            if self.block[d] > MAX_BLOCK[d] || self.grid[d] > MAX_GRID[d] {
                self.bad("K6", format!("dimension {d} exceeds the device's limits"));
            }
        }
        if threads > MAX_THREADS_PER_BLOCK as u64 {
            self.bad(
                "K6",
                format!("{threads} threads per block (the device allows 1024)"),
            );
        }
        if self.block[2] != 1 || self.grid[1] != 1 || self.grid[2] != 1 {
            self.bad(
                "K6",
                "blockDim must be (tx, ty, 1) and the grid one-dimensional".into(),
            );
        }
        // K5.
        if n == 0 || row_words == 0 || seg_words == 0 {
            self.bad("K5", "n, row_words and seg_words must be at least 1".into());
        }
        if segs != row_words.div_ceil(seg_words) {
            self.bad(
                "K5",
                format!(
                    "segs is not ceil(row_words / seg_words) = {}",
                    row_words.div_ceil(seg_words)
                ),
            );
        }
        let row_bytes = row_words.checked_mul(w);
        let out_bytes = row_bytes.and_then(|r| r.checked_mul(n));
        if n.checked_mul(segs).is_none() || out_bytes.is_none() {
            self.bad("K5", "n * segs or n * row_bytes overflows 64 bits".into());
        }
        let out_bytes = out_bytes.unwrap_or(0);
        // K1.
        if src % w != 0 || dst % w != 0 {
            self.bad("K1", format!("src or dst is not {w}-byte aligned"));
        }
        let reg = registry();
        let live_in = |ptr: u64, len: u64, what: &str, item: &str| match reg
            .find(host_of(ptr), len as usize)
        {
            Found::Inside(a)
                if a.kind == Kind::Device && a.ctx == ctx && a.life == crate::mem::Life::Live => {}
            Found::Inside(a) | Found::OutOfBounds(a) => self.bad(
                item,
                format!("{what} [{ptr:#x}, +{len}) is not inside live memory of this context: {a}"),
            ),
            Found::Nowhere => self.bad(item, format!("{what} {ptr:#x} is not device memory")),
        };
        // K3.
        if idx != 0 {
            if idx % ib != 0 {
                self.bad("K3", format!("idx is not {ib}-byte aligned"));
            }
            live_in(idx, n * ib, "the index list", "K3");
        }
        // K4 (the destination) and K2's first row.
        live_in(dst, out_bytes, "the destination", "K4");
        live_in(src, row_bytes.unwrap_or(0), "the source", "K2");
    }

    /// Reads the indices (K2 needs them: they were uploaded by earlier operations), checks every
    /// source row and the overlaps of K4, then runs the grid. Run by the stream's worker.
    pub fn run(&self, seed: u64) {
        let [src, idx, base, dst, n, row_words, _seg_words, _segs] = self.args;
        let (_, w, ib) = ENTRIES[self.entry];
        let row_bytes = row_words * w;
        let (lo, hi) = if idx == 0 {
            (
                base,
                base.checked_add(n - 1)
                    .unwrap_or_else(|| self.bad("K5", "base + n overflows".into())),
            )
        } else {
            let host = host_of(idx);
            let (mut lo, mut hi) = (u64::MAX, 0u64);
            for i in 0..n as usize {
                // SAFETY: [idx, idx + n * ib) was checked to lie in a live device allocation at
                // issue and is checked again below (freed memory faults, and is reported).
                let r = unsafe {
                    if ib == 8 {
                        std::ptr::read((host as *const u64).add(i))
                    } else {
                        std::ptr::read((host as *const u32).add(i)) as u64
                    }
                };
                lo = lo.min(r);
                hi = hi.max(r);
            }
            (lo, hi)
        };
        let reg = registry();
        let src_alloc = match reg.find(host_of(src), row_bytes as usize) {
            // A free issued after the launch on the same stream is pending; it runs later.
            Found::Inside(a) if !matches!(a.life, crate::mem::Life::Freed(_)) => a,
            Found::Inside(a) | Found::OutOfBounds(a) => {
                self.bad("K2", format!("the source is not live memory: {a}"))
            }
            Found::Nowhere => self.bad("K2", "the source is not device memory".into()),
        };
        let src_rows = (src_alloc.host + src_alloc.size - host_of(src)) as u64 / row_bytes;
        if hi >= src_rows {
            self.bad(
                "K2",
                format!(
                    "source row {hi} is read, but {src_alloc} holds only {src_rows} rows of {row_bytes} bytes from src"
                ),
            );
        }
        let read = (src + lo * row_bytes, src + (hi + 1) * row_bytes);
        let write = (dst, dst + n * row_bytes);
        let overlap = |a: (u64, u64), b: (u64, u64)| a.0 < b.1 && b.0 < a.1;
        if overlap(read, write) {
            self.bad("K4", "the destination overlaps the source rows read".into());
        }
        if idx != 0 && overlap((idx, idx + n * ib), write) {
            self.bad("K4", "the destination overlaps the index list".into());
        }
        let mut check = vec![src_alloc.host];
        for p in [dst, idx] {
            if p != 0 {
                if let Found::Inside(a) = reg.find(host_of(p), 1) {
                    if matches!(a.life, crate::mem::Life::Freed(_)) {
                        self.bad("K3/K4", format!("{a} was freed before the launch ran"));
                    }
                    check.push(a.host);
                }
            }
        }
        drop(reg);
        // The grid, blocks in random order.
        let blocks = self.grid[0] as usize;
        let mut order: Vec<u32> = (0..blocks as u32).collect();
        let mut r = seed;
        for i in (1..order.len()).rev() {
            let j = (crate::sched::next(&mut r) % (i as u64 + 1)) as usize;
            order.swap(i, j);
        }
        let host_args = [
            host_of(src) as u64,
            if idx == 0 { 0 } else { host_of(idx) as u64 },
            base,
            host_of(dst) as u64,
            n,
            row_words,
            self.args[6],
            self.args[7],
        ];
        for b in order {
            let bidx = [b, 0, 0];
            // SAFETY: the arguments satisfy K1–K6 (checked above and at issue), so the kernel
            // reads and writes only inside the allocations checked; anything else hits a guard
            // page or a canary and is reported.
            let rc = unsafe {
                cudasim_run_block(
                    self.entry as i32,
                    host_args.as_ptr(),
                    self.grid.as_ptr(),
                    self.block.as_ptr(),
                    bidx.as_ptr(),
                )
            };
            if rc != 0 {
                fail(CALL, "internal error: unknown entry point");
            }
        }
        let reg = registry();
        for h in check {
            if let Some(a) = reg.allocs.get(&h) {
                if let Err(e) = a.check_canaries() {
                    fail(CALL, &format!("{} wrote outside {a}: {e}", self.describe()));
                }
            }
        }
    }
}
