//! The kernels: sources embedded from `kernels/*.cu`, compiled with NVRTC to a CUBIN for the
//! device's own architecture once per process (cached by architecture), loaded into each
//! engine's context, and launched from exactly one place (`Kernels::gather`), which quotes the
//! kernel's contract.

use std::collections::HashMap;
use std::ffi::{c_char, CString};
use std::sync::{Arc, Mutex};

use cudarc::driver::{CudaContext, CudaFunction, CudaStream, LaunchConfig, PushKernelArg};
use cudarc::nvrtc::{result as nvrtc, sys as nvrtc_sys, Ptx};

use super::device::{catch, cuda_err};
use super::libs;
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
        "gather_rows_v16",
        "gather_rows_v8",
        "gather_rows_v4",
        "gather_rows_v2",
        "gather_rows_v1",
    ],
}];

/// Vector widths of the gather kernel, widest first, matching `SOURCES[0].entry_points`.
pub const WIDTHS: [usize; 5] = [16, 8, 4, 2, 1];

/// Threads per block of the gather kernel.
const BLOCK_THREADS: usize = 256;

/// A compiled kernel: the CUBIN and NVRTC's log (with `--ptxas-options=-v`, the register and
/// spill report per entry point).
#[derive(Debug, Clone)]
pub struct Compiled {
    /// The CUBIN image.
    pub cubin: Vec<u8>,
    /// NVRTC's program log.
    pub log: String,
}

/// Compiles `source` with NVRTC to a CUBIN for `arch` (e.g. `"sm_90"`), with `extra` options
/// after the engine's own (`--gpu-architecture`, `-lineinfo`). Needs only libnvrtc, no driver.
///
/// # Errors
/// [`Error::CudaUnavailable`] when libnvrtc cannot be found; [`Error::KernelCompile`] with the
/// log when compilation fails.
pub fn compile_cubin(name: &str, source: &str, arch: &str, extra: &[&str]) -> Result<Compiled> {
    libs::ensure_nvrtc().map_err(|reason| Error::CudaUnavailable { reason })?;
    let nul = |what: &str| Error::KernelCompile {
        log: format!("{what} contains a NUL byte"),
    };
    let src = CString::new(source).map_err(|_| nul("the source"))?;
    let cname = CString::new(name).map_err(|_| nul("the name"))?;
    let mut opts = vec![
        format!("--gpu-architecture={arch}"),
        "-lineinfo".to_string(),
    ];
    opts.extend(extra.iter().map(|s| s.to_string()));
    if opts.iter().any(|o| o.contains('\0')) {
        return Err(nul("an option"));
    }
    catch("compiling kernels with NVRTC", || {
        let nv = |what: &'static str| {
            move |e: nvrtc::NvrtcError| Error::KernelCompile {
                log: format!("{what}: {e:?}"),
            }
        };
        let prog = nvrtc::create_program(&src, Some(&cname)).map_err(nv("nvrtcCreateProgram"))?;
        let program = Program(prog);
        // SAFETY: `program.0` was created just above and is destroyed only by `Program`'s
        // Drop; the options contain no NUL (checked above), so cudarc's CString::new succeeds.
        let compiled = unsafe { nvrtc::compile_program(program.0, &opts) };
        // SAFETY: same live program.
        let log = unsafe { nvrtc::get_program_log(program.0) }
            .map(|raw| c_chars_to_string(&raw))
            .unwrap_or_default();
        if let Err(e) = compiled {
            return Err(Error::KernelCompile {
                log: format!("{name} for {arch}: {e:?}\n{log}"),
            });
        }
        let mut size = 0usize;
        // SAFETY: live program, compiled successfully; `size` is a live local.
        unsafe { nvrtc_sys::nvrtcGetCUBINSize(program.0, &mut size) }
            .result()
            .map_err(nv("nvrtcGetCUBINSize"))?;
        let mut cubin = vec![0u8; size];
        // SAFETY: `cubin` holds exactly the `size` bytes nvrtcGetCUBINSize reported.
        unsafe { nvrtc_sys::nvrtcGetCUBIN(program.0, cubin.as_mut_ptr().cast::<c_char>()) }
            .result()
            .map_err(nv("nvrtcGetCUBIN"))?;
        Ok(Compiled { cubin, log })
    })
}

/// An NVRTC program, destroyed on drop.
struct Program(nvrtc_sys::nvrtcProgram);

impl Drop for Program {
    fn drop(&mut self) {
        // SAFETY: the program was created by nvrtcCreateProgram and is destroyed only here.
        // A failure to free it is not actionable.
        let _ = unsafe { nvrtc::destroy_program(self.0) };
    }
}

fn c_chars_to_string(raw: &[c_char]) -> String {
    let bytes: Vec<u8> = raw
        .iter()
        .take_while(|&&c| c != 0)
        .map(|&c| c as u8)
        .collect();
    String::from_utf8_lossy(&bytes).into_owned()
}

/// The CUBIN of every source for one architecture, compiled once per process.
fn cubins(arch: &str) -> Result<Arc<Vec<Vec<u8>>>> {
    type ByArch = HashMap<String, Arc<Vec<Vec<u8>>>>;
    static CACHE: Mutex<Option<ByArch>> = Mutex::new(None);
    let mut cache = CACHE.lock().unwrap_or_else(|p| p.into_inner());
    let map = cache.get_or_insert_with(HashMap::new);
    if let Some(c) = map.get(arch) {
        return Ok(Arc::clone(c));
    }
    let compiled = SOURCES
        .iter()
        .map(|s| compile_cubin(s.file, s.source, arch, &[]).map(|c| c.cubin))
        .collect::<Result<Vec<_>>>()?;
    let compiled = Arc::new(compiled);
    map.insert(arch.to_string(), Arc::clone(&compiled));
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
    /// Compiles (once per process and architecture) and loads the kernels into `ctx`.
    pub(crate) fn load(ctx: &Arc<CudaContext>, arch: &str) -> Result<Self> {
        let images = cubins(arch)?;
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
    /// 2. `g.idx` is 0 or points at `n` device `u64`s, 8-byte aligned, unchanged until the
    ///    launch has run (K3);
    /// 3. `g.dst` points at `n × row_bytes` writable device bytes overlapping neither the source
    ///    nor the indices (K4), not read or written by other work until the launch has run;
    /// 4. all three pointers belong to `stream`'s context.
    ///
    /// K1 (vector width), K5 (sizes) and K6 (launch shape) are established here.
    pub(crate) unsafe fn gather(&self, stream: &CudaStream, g: Gather) -> Result<()> {
        let Gather {
            src,
            idx,
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
        let (cfg, _) = launch_shape(n, row_bytes / w, self.sms);
        let (n, row_words) = (n as u64, (row_bytes / w) as u64);
        let mut launch = stream.launch_builder(&self.gather[slot]);
        launch
            .arg(&src)
            .arg(&idx)
            .arg(&base)
            .arg(&dst)
            .arg(&n)
            .arg(&row_words);
        // SAFETY: kernels/gather.cu's contract —
        //   K1 alignment: `w = vector_width(row_bytes, src, dst)` is the widest of 16/8/4/2/1
        //      dividing row_bytes, src and dst, and `slot` picks the entry point of width w;
        //   K2 source bounds, K3 index list, K4 destination: this function's safety items 1–3;
        //   K5 sizes: n ≥ 1 and row_words ≥ 1 (checked above); byte offsets are below the sizes
        //      of real allocations, so they fit in 64 bits;
        //   K6 launch shape: `launch_shape` gives blockDim (tx, ty, 1) with tx·ty = 256 and a
        //      grid of at least one block.
        // The six arguments match the entry point's six parameters (three pointers passed as
        // u64 device addresses, three u64), and live until `launch` returns.
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
    /// Device address of `n` u64 row indices, or 0 for rows `base..base + n`.
    pub(crate) idx: u64,
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

/// The gather's launch shape for `n` rows of `row_words` words: `tx` threads per row (the
/// smallest power of two covering a row, at most a warp), `ty = 256 / tx` rows per block, and
/// enough blocks to cover the rows up to 32 per multiprocessor (the kernel loops over the
/// rest). Returns the config and `tx`.
pub(crate) fn launch_shape(n: usize, row_words: usize, sms: usize) -> (LaunchConfig, usize) {
    let tx = row_words.next_power_of_two().clamp(1, 32);
    let ty = BLOCK_THREADS / tx;
    let blocks = n.div_ceil(ty).clamp(1, (sms * 32).max(1));
    (
        LaunchConfig {
            grid_dim: (blocks as u32, 1, 1),
            block_dim: (tx as u32, ty as u32, 1),
            shared_mem_bytes: 0,
        },
        tx,
    )
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

    #[test]
    fn launch_shapes_cover_rows() {
        let (cfg, tx) = launch_shape(1000, 8, 132);
        assert_eq!(tx, 8);
        assert_eq!(cfg.block_dim, (8, 32, 1));
        assert_eq!(cfg.grid_dim.0, 1000usize.div_ceil(32) as u32);
        let (cfg, tx) = launch_shape(10, 65, 132);
        assert_eq!((tx, cfg.block_dim), (32, (32, 8, 1)));
        let (cfg, _) = launch_shape(3_000_000_000, 1, 132);
        assert_eq!(cfg.grid_dim.0, 132 * 32);
        assert_eq!(cfg.block_dim, (1, 256, 1));
    }

    #[test]
    fn entry_points_match_widths() {
        for (w, name) in WIDTHS.iter().zip(SOURCES[0].entry_points) {
            assert_eq!(*name, format!("gather_rows_v{w}"));
            assert!(SOURCES[0].source.contains(name));
        }
    }
}
