//! The kernels: sources embedded from `kernels/*.cu`, compiled with NVRTC (12.x or 13.x, see
//! `nvrtc`) to a CUBIN for the device's own architecture once per process (cached by
//! architecture and NVRTC), loaded into each
//! engine's context, and launched from exactly one place (`Kernels::gather`), which quotes the
//! kernel's contract.

use std::collections::HashMap;
use std::ffi::CString;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use cudarc::driver::{CudaContext, CudaFunction, CudaStream, LaunchConfig, PushKernelArg};
use cudarc::nvrtc::Ptx;

use super::device::{catch, cuda_err};
use super::nvrtc::{self, Nvrtc};
use crate::cuda::CudaError;
use crate::error::{Error, Result};

/// One embedded kernel source file and the entry points it must define.
#[derive(Debug, Clone, Copy)]
pub struct KernelSource {
    /// File name under `kernels/`.
    pub file: &'static str,
    /// The source text, embedded at build time.
    pub source: &'static str,
    /// The `extern "C"` entry points the engine loads from it.
    pub entry_points: &'static [&'static str],
}

/// Every kernel source the engine embeds.
pub const SOURCES: &[KernelSource] = &[KernelSource {
    file: "gather.cu",
    source: include_str!("../../kernels/gather.cu"),
    entry_points: &[
        "gather_rows_v16_u64",
        "gather_rows_v8_u64",
        "gather_rows_v4_u64",
        "gather_rows_v2_u64",
        "gather_rows_v1_u64",
        "gather_rows_v16_u32",
        "gather_rows_v8_u32",
        "gather_rows_v4_u32",
        "gather_rows_v2_u32",
        "gather_rows_v1_u32",
    ],
}];

/// Vector widths of the gather kernel, widest first, matching `SOURCES[0].entry_points` (first
/// the five with 64-bit indices, then the five with 32-bit indices).
pub const WIDTHS: [usize; 5] = [16, 8, 4, 2, 1];

/// Threads per block of the gather kernel.
const BLOCK_THREADS: usize = 256;

/// The most words one work unit (a row segment) copies: 8 words per thread of a full block
/// (32 KiB at 16-byte words).
const MAX_SEG_WORDS: usize = 8 * BLOCK_THREADS;

/// Work units per multiprocessor a launch aims for, so that every chunk fills the device.
const UNITS_PER_SM: usize = 4;

/// How the gather reads its indices.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IndexWidth {
    /// 32-bit indices: tables of at most 2^32 rows. Halves the index upload, which bounds the
    /// speed of narrow rows (1–4 bytes).
    U32,
    /// 64-bit indices: any table.
    U64,
}

impl IndexWidth {
    /// The narrowest width that holds every row number of a table of `table_rows` rows.
    pub fn for_rows(table_rows: usize) -> IndexWidth {
        if table_rows as u128 <= 1u128 << 32 {
            IndexWidth::U32
        } else {
            IndexWidth::U64
        }
    }

    /// Bytes per index.
    pub fn bytes(self) -> usize {
        match self {
            IndexWidth::U32 => 4,
            IndexWidth::U64 => 8,
        }
    }
}

/// A compiled kernel: the CUBIN and NVRTC's log (with `--ptxas-options=-v`, the register and
/// spill report per entry point).
#[derive(Debug, Clone)]
pub struct Compiled {
    /// The CUBIN image.
    pub cubin: Vec<u8>,
    /// NVRTC's program log.
    pub log: String,
    /// The NVRTC that compiled it, `(major, minor)`.
    pub nvrtc_version: (i32, i32),
}

/// Compiles `source` with the newest NVRTC found (see [`nvrtc::for_driver`]) to a CUBIN for
/// `arch` (e.g. `"sm_90"`), with `extra` options after the engine's own
/// (`--gpu-architecture`, `-lineinfo`). Needs only libnvrtc, no driver.
///
/// # Errors
/// [`CudaError::Unavailable`] when no libnvrtc can be loaded; [`CudaError::KernelCompile`] with the
/// log when compilation fails.
pub fn compile_cubin(name: &str, source: &str, arch: &str, extra: &[&str]) -> Result<Compiled> {
    let nvrtc =
        nvrtc::for_driver(None).map_err(|reason| Error::Cuda(CudaError::Unavailable { reason }))?;
    compile_cubin_with(nvrtc, name, source, arch, extra)
}

/// [`compile_cubin`] with the given NVRTC (e.g. [`nvrtc::load`] of a library path).
///
/// # Errors
/// [`CudaError::KernelCompile`] with the log when compilation fails.
pub fn compile_cubin_with(
    nvrtc: &Nvrtc,
    name: &str,
    source: &str,
    arch: &str,
    extra: &[&str],
) -> Result<Compiled> {
    let nul = |what: &str| {
        Error::Cuda(CudaError::KernelCompile {
            log: format!("{what} contains a NUL byte"),
        })
    };
    let src = CString::new(source).map_err(|_| nul("the source"))?;
    let cname = CString::new(name).map_err(|_| nul("the name"))?;
    let mut opts = vec![
        format!("--gpu-architecture={arch}"),
        "-lineinfo".to_string(),
    ];
    opts.extend(extra.iter().map(|s| s.to_string()));
    let opts = opts
        .into_iter()
        .map(CString::new)
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|_| nul("an option"))?;
    let (major, minor) = nvrtc.version();
    catch("compiling kernels with NVRTC", || {
        let out = nvrtc.compile(&src, &cname, &opts);
        match (out.cubin, out.error) {
            (Some(cubin), None) => Ok(Compiled {
                cubin,
                log: out.log,
                nvrtc_version: (major, minor),
            }),
            (_, error) => Err(Error::Cuda(CudaError::KernelCompile {
                log: format!(
                    "{name} for {arch} with NVRTC {major}.{minor}: {}\n{}",
                    error.unwrap_or_default(),
                    out.log
                ),
            })),
        }
    })
}

/// The CUBIN of every source for one architecture, compiled once per process with the NVRTC
/// chosen for a driver of version `driver`.
fn cubins(arch: &str, driver: i32) -> Result<Arc<Vec<Vec<u8>>>> {
    type ByArch = HashMap<(String, PathBuf), Arc<Vec<Vec<u8>>>>;
    static CACHE: Mutex<Option<ByArch>> = Mutex::new(None);
    let nvrtc = nvrtc::for_driver(Some(driver))
        .map_err(|reason| Error::Cuda(CudaError::Unavailable { reason }))?;
    let key = (arch.to_string(), nvrtc.path().to_path_buf());
    let mut cache = CACHE.lock().unwrap_or_else(|p| p.into_inner());
    let map = cache.get_or_insert_with(HashMap::new);
    if let Some(c) = map.get(&key) {
        return Ok(Arc::clone(c));
    }
    let compiled = SOURCES
        .iter()
        .map(|s| compile_cubin_with(nvrtc, s.file, s.source, arch, &[]).map(|c| c.cubin))
        .collect::<Result<Vec<_>>>()?;
    let compiled = Arc::new(compiled);
    map.insert(key, Arc::clone(&compiled));
    Ok(compiled)
}

/// The loaded gather entry points of one engine, widest first (see [`WIDTHS`]).
#[derive(Debug)]
pub(crate) struct Kernels {
    gather: Vec<CudaFunction>,
    /// Streaming multiprocessors, for the grid size.
    sms: usize,
}

impl Kernels {
    /// Compiles (once per process, architecture and NVRTC) and loads the kernels into `ctx`,
    /// with the NVRTC chosen for a driver of version `driver`.
    pub(crate) fn load(ctx: &Arc<CudaContext>, arch: &str, driver: i32) -> Result<Self> {
        let images = cubins(arch, driver)?;
        let module = ctx
            .load_module(Ptx::from_binary(images[0].clone()))
            .map_err(cuda_err(format!("loading the {arch} kernels")))?;
        let gather = SOURCES[0]
            .entry_points
            .iter()
            .map(|name| {
                module
                    .load_function(name)
                    .map_err(cuda_err(format!("loading kernel {name}")))
            })
            .collect::<Result<Vec<_>>>()?;
        let sms = ctx
            .attribute(
                cudarc::driver::sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT,
            )
            .map_err(cuda_err("reading the multiprocessor count"))?;
        Ok(Kernels {
            gather,
            sms: sms.max(1) as usize,
        })
    }

    /// Enqueues on `stream` the gather `g`: `g.n` rows of `g.row_bytes` bytes; row `i` of
    /// `g.dst` gets source row `g.idx[i]` (or `g.base + i` when `g.idx` is 0) of the column at
    /// `g.src`.
    ///
    /// # Safety
    /// The caller guarantees the kernel contract of `kernels/gather.cu` for these arguments
    /// (with `src_rows` the source column's row count):
    /// 1. `g.src` points at `src_rows × row_bytes` device bytes readable until the launch has
    ///    run, and every source row is below `src_rows` (K2);
    /// 2. `g.idx` is 0 or points at `n` device integers of `g.idx_width`, naturally aligned,
    ///    unchanged until the launch has run (K3);
    /// 3. `g.dst` points at `n × row_bytes` writable device bytes overlapping neither the source
    ///    nor the indices (K4), not read or written by other work until the launch has run;
    /// 4. all three pointers belong to `stream`'s context.
    ///
    /// K1 (vector width), K5 (sizes) and K6 (launch shape) are established here.
    pub(crate) unsafe fn gather(&self, stream: &CudaStream, g: Gather) -> Result<()> {
        let Gather {
            src,
            idx,
            idx_width,
            base,
            dst,
            n,
            row_bytes,
        } = g;
        if n == 0 || row_bytes == 0 {
            return Ok(()); // K5 asks n ≥ 1 and row_words ≥ 1: nothing to do.
        }
        let w = vector_width(row_bytes, src, dst);
        let slot = WIDTHS
            .iter()
            .position(|&x| x == w)
            .unwrap_or(WIDTHS.len() - 1);
        let slot = match idx_width {
            IndexWidth::U64 => slot,
            IndexWidth::U32 => slot + WIDTHS.len(),
        };
        let shape = launch_shape(n, row_bytes / w, self.sms);
        let cfg = shape.config();
        let (n, row_words) = (n as u64, (row_bytes / w) as u64);
        let (seg_words, segs) = (shape.seg_words as u64, shape.segs as u64);
        let Some(function) = self.gather.get(slot) else {
            return Err(Error::Cuda(CudaError::Driver {
                context: "launching the gather kernel".into(),
                message: format!("internal error: no entry point {slot}"),
            }));
        };
        let mut launch = stream.launch_builder(function);
        launch
            .arg(&src)
            .arg(&idx)
            .arg(&base)
            .arg(&dst)
            .arg(&n)
            .arg(&row_words)
            .arg(&seg_words)
            .arg(&segs);
        // SAFETY: kernels/gather.cu's contract —
        //   K1 alignment: `w = vector_width(row_bytes, src, dst)` is the widest of 16/8/4/2/1
        //      dividing row_bytes, src and dst, and `slot` picks the entry point of width w
        //      (and of the index type `idx_width`);
        //   K2 source bounds, K3 index list, K4 destination: this function's safety items 1–3;
        //   K5 sizes: n ≥ 1 and row_words ≥ 1 (checked above); `launch_shape` gives
        //      seg_words ≥ 1 and segs = ceil(row_words / seg_words) ≤ row_words, so n × segs ≤
        //      n × row_words; byte offsets are below the sizes of real allocations, so all fit in
        //      64 bits;
        //   K6 launch shape: `launch_shape` gives blockDim (tx, ty, 1) with tx·ty = 256 and a
        //      grid of at least one block.
        // The eight arguments match the entry point's eight parameters (three pointers passed
        // as u64 device addresses, five u64), and live until `launch` returns.
        unsafe { launch.launch(cfg) }
            .map_err(cuda_err(format!("launching the gather kernel (width {w})")))?;
        Ok(())
    }
}

/// The arguments of one gather launch (see [`Kernels::gather`]).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Gather {
    /// Device address of the source column's row 0.
    pub(crate) src: u64,
    /// Device address of `n` row indices, or 0 for rows `base..base + n`.
    pub(crate) idx: u64,
    /// The integer type of the indices at `idx`.
    pub(crate) idx_width: IndexWidth,
    /// First source row when `idx` is 0.
    pub(crate) base: u64,
    /// Device address of the `n × row_bytes` output bytes.
    pub(crate) dst: u64,
    /// Rows to gather.
    pub(crate) n: usize,
    /// Bytes per row.
    pub(crate) row_bytes: usize,
}

/// The widest of 16, 8, 4, 2, 1 bytes dividing `row_bytes` and both addresses.
pub(crate) fn vector_width(row_bytes: usize, src: u64, dst: u64) -> usize {
    WIDTHS
        .into_iter()
        .find(|&w| row_bytes % w == 0 && src % w as u64 == 0 && dst % w as u64 == 0)
        .unwrap_or(1)
}

/// How one gather launch covers its rows: `tx × ty` threads per block, each row cut into
/// `segs` segments of `seg_words` words (the last may be shorter), one (row, segment) unit per
/// block row, and `blocks` blocks striding over the units.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Shape {
    pub(crate) tx: usize,
    pub(crate) ty: usize,
    pub(crate) seg_words: usize,
    pub(crate) segs: usize,
    pub(crate) blocks: usize,
}

impl Shape {
    pub(crate) fn config(&self) -> LaunchConfig {
        LaunchConfig {
            grid_dim: (self.blocks as u32, 1, 1),
            block_dim: (self.tx as u32, self.ty as u32, 1),
            shared_mem_bytes: 0,
        }
    }
}

/// The gather's launch shape for `n ≥ 1` rows of `row_words ≥ 1` words on a device with `sms`
/// multiprocessors:
/// - `tx`: the smallest power of two covering a row, at most a whole block (256); `ty = 256 /
///   tx` units per block;
/// - segments: a row longer than what the launch needs per unit to give every multiprocessor
///   `UNITS_PER_SM` units is cut into segments (a multiple of `tx` words, at most 8 words per
///   thread), so a chunk of a few large rows (images) spreads over the whole device instead of
///   running on as many blocks as it has rows;
/// - `blocks`: enough to cover the units, at most 32 per multiprocessor (the kernel strides over
///   the rest), at least one.
pub(crate) fn launch_shape(n: usize, row_words: usize, sms: usize) -> Shape {
    let (n, row_words, sms) = (n.max(1), row_words.max(1), sms.max(1));
    let tx = row_words.next_power_of_two().clamp(1, BLOCK_THREADS);
    let ty = BLOCK_THREADS / tx;
    let want_units = sms * UNITS_PER_SM * ty;
    let per_unit = row_words.saturating_mul(n).div_ceil(want_units);
    let seg_words = per_unit
        .clamp(tx, MAX_SEG_WORDS)
        .next_multiple_of(tx)
        .min(row_words);
    let segs = row_words.div_ceil(seg_words);
    let units = n.saturating_mul(segs);
    let blocks = units
        .div_ceil(ty)
        .clamp(1, (sms * 32).min(i32::MAX as usize));
    Shape {
        tx,
        ty,
        seg_words,
        segs,
        blocks,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn widths_follow_row_size_and_alignment() {
        assert_eq!(vector_width(128, 0, 256), 16);
        assert_eq!(vector_width(520, 0, 0), 8);
        assert_eq!(vector_width(12, 0, 0), 4);
        assert_eq!(vector_width(6, 0, 0), 2);
        assert_eq!(vector_width(3, 0, 0), 1);
        assert_eq!(vector_width(1, 0, 0), 1);
        // An unaligned column offset narrows the access.
        assert_eq!(vector_width(128, 3, 0), 1);
        assert_eq!(vector_width(128, 4, 0), 4);
        assert_eq!(vector_width(128, 8, 24), 8);
    }

    /// Runs the kernel's loops on the host for `shape` and checks that every word of every row
    /// is copied exactly once.
    fn covers_every_word_once(n: usize, row_words: usize, shape: Shape) {
        let mut hits = vec![0u8; n * row_words];
        let units = n * shape.segs;
        let step = shape.blocks * shape.ty;
        for bx in 0..shape.blocks {
            for y in 0..shape.ty {
                let mut u = bx * shape.ty + y;
                while u < units {
                    let i = if shape.segs == 1 { u } else { u / shape.segs };
                    let seg = u - i * shape.segs;
                    let w0 = seg * shape.seg_words;
                    let w1 = (w0 + shape.seg_words).min(row_words);
                    for x in 0..shape.tx {
                        let mut w = w0 + x;
                        while w < w1 {
                            hits[i * row_words + w] += 1;
                            w += shape.tx;
                        }
                    }
                    u += step;
                }
            }
        }
        assert!(
            hits.iter().all(|&h| h == 1),
            "n {n} row_words {row_words} {shape:?}"
        );
    }

    #[test]
    fn launch_shapes_cover_every_word_exactly_once() {
        for (n, row_words, sms) in [
            (1, 1, 1),
            (1000, 8, 4),
            (10, 65, 2),
            (3, 5000, 2),
            (1, 100_000, 3),
            (7, 257, 1),
            (33, 2049, 2),
            (2, 300, 132),
        ] {
            let shape = launch_shape(n, row_words, sms);
            assert_eq!(shape.tx * shape.ty, BLOCK_THREADS);
            assert!(shape.seg_words >= 1 && shape.segs * shape.seg_words >= row_words);
            assert!((shape.segs - 1) * shape.seg_words < row_words);
            assert!(shape.blocks >= 1 && shape.blocks <= sms * 32);
            covers_every_word_once(n, row_words, shape);
        }
    }

    #[test]
    fn small_rows_pack_many_per_block() {
        let s = launch_shape(1000, 8, 132);
        assert_eq!((s.tx, s.ty, s.segs), (8, 32, 1));
        assert_eq!(s.blocks, 1000usize.div_ceil(32));
        let s = launch_shape(10, 65, 132);
        assert_eq!((s.tx, s.ty, s.segs), (128, 2, 1));
        let s = launch_shape(3_000_000_000, 1, 132);
        assert_eq!((s.tx, s.ty, s.segs, s.blocks), (1, 256, 1, 132 * 32));
    }

    #[test]
    fn image_and_huge_rows_fill_every_multiprocessor() {
        let sms = 132;
        // A 16 MiB chunk of 3x224x224 f32 images (588 KiB rows, 16-byte words): 27 rows.
        let row_words = 3 * 224 * 224 * 4 / 16;
        let n = (16 << 20) / (row_words * 16);
        let s = launch_shape(n, row_words, sms);
        assert!(s.segs > 1, "{s:?}");
        assert!(
            s.blocks >= sms,
            "only {} blocks for {n} image rows",
            s.blocks
        );
        // u8 images (147 KiB rows): 111 rows per chunk.
        let row_words = 3 * 224 * 224 / 16;
        let s = launch_shape((16 << 20) / (row_words * 16), row_words, sms);
        assert!(s.blocks >= sms, "{s:?}");
        // One 16 MiB row: hundreds of blocks, not one block of 32 threads.
        let s = launch_shape(1, (16 << 20) / 16, sms);
        assert_eq!(s.tx, 256);
        assert!(s.blocks >= sms, "{s:?}");
        assert!(s.seg_words <= MAX_SEG_WORDS);
    }

    #[test]
    fn index_width_is_u32_while_every_row_number_fits() {
        assert_eq!(IndexWidth::for_rows(0), IndexWidth::U32);
        assert_eq!(IndexWidth::for_rows(1000), IndexWidth::U32);
        assert_eq!(IndexWidth::for_rows(u32::MAX as usize), IndexWidth::U32);
        assert_eq!(IndexWidth::for_rows(1 << 32), IndexWidth::U32);
        assert_eq!(IndexWidth::for_rows((1 << 32) + 1), IndexWidth::U64);
        assert_eq!(IndexWidth::for_rows(usize::MAX), IndexWidth::U64);
        assert_eq!(IndexWidth::U32.bytes(), 4);
        assert_eq!(IndexWidth::U64.bytes(), 8);
    }

    #[test]
    fn entry_points_match_widths_and_index_types() {
        let eps = SOURCES[0].entry_points;
        assert_eq!(eps.len(), 2 * WIDTHS.len());
        for (k, w) in WIDTHS.iter().enumerate() {
            assert_eq!(eps[k], format!("gather_rows_v{w}_u64"));
            assert_eq!(eps[k + WIDTHS.len()], format!("gather_rows_v{w}_u32"));
            let v = format!("W{w}");
            assert!(SOURCES[0]
                .source
                .contains(&format!("GATHER_ENTRY({w}, {v}, u64, u64)")));
            assert!(SOURCES[0]
                .source
                .contains(&format!("GATHER_ENTRY({w}, {v}, u32, unsigned int)")));
        }
    }
}
