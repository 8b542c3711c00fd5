//! The CUDA driver simulator's own tests: it must fail loudly on exactly the mistakes it exists
//! to catch. Each planted mistake runs in a child process (the simulator aborts the process, as
//! compute-sanitizer would fail the run) and the parent checks the abort and its report:
//! a missing synchronisation (stale bytes read, and a pinned buffer freed with its copy
//! pending), an off-by-one launch (past the destination; an index past the table), and a use
//! after free. Also: fault injection by environment, the leak report, and the refusal of
//! calls it does not simulate. `#[ignore]`d: they need the simulator on the loader path, which
//! scripts/test-cudasim.sh arranges (it runs them with --include-ignored).
#![cfg(feature = "cuda")]

mod cudasim_common;

use std::os::unix::process::ExitStatusExt;
use std::sync::Arc;

use arraydrain::cuda::cudarc::driver::{
    sys, CudaContext, CudaSlice, CudaStream, DevicePtr, LaunchConfig, PushKernelArg,
};
use arraydrain::cuda::cudarc::nvrtc::Ptx;
use arraydrain::cuda::kernels::{compile_cubin, SOURCES};
use cudasim_common::{child, is_child, random_bytes, Sim};

/// Runs child test `name` and checks that the simulator aborted it with a report holding every
/// one of `needles`.
fn expect_abort(name: &str, env: &[(&str, String)], needles: &[&str]) {
    let out = child(name, env);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        out.status.signal(),
        Some(libc::SIGABRT),
        "{name}: the simulator did not abort ({:?}); stderr:\n{stderr}",
        out.status
    );
    assert!(
        stderr.contains("cudasim: ERROR"),
        "{name}: no report:\n{stderr}"
    );
    for n in needles {
        assert!(
            stderr.contains(n),
            "{name}: the report does not say {n:?}:\n{stderr}"
        );
    }
}

fn setup() -> (Arc<CudaContext>, Arc<CudaStream>) {
    let _ = Sim::get();
    let ctx = CudaContext::new(0).expect("a context on the simulated device");
    let stream = ctx.new_stream().expect("a stream");
    (ctx, stream)
}

/// Slow every simulated operation down so that a missing synchronisation is certain to show.
fn slow() -> Vec<(&'static str, String)> {
    vec![("ARRAYDRAIN_SIM_MIN_DELAY_US", "20000".to_string())]
}

#[test]
#[ignore = "needs the CUDA simulator (scripts/test-cudasim.sh)"]
fn child_missing_sync_reads_stale_bytes() {
    if !is_child("child_missing_sync_reads_stale_bytes") {
        return;
    }
    let (ctx, stream) = setup();
    let n = 1 << 20;
    let data = random_bytes(n, 1);
    let dev = stream.clone_htod(&data).unwrap();
    stream.synchronize().unwrap();
    // SAFETY: zeroed just below before any read.
    let mut pinned = unsafe { ctx.alloc_pinned_with_flags::<u8>(n, 0) }.unwrap();
    pinned.as_mut_slice().unwrap().fill(0);
    let host = pinned.as_mut_ptr().unwrap();
    let (src, _rec) = dev.device_ptr(&stream);
    // SAFETY: `host` holds n pinned bytes, `src` n device bytes of this context.
    unsafe { sys::cuMemcpyDtoHAsync_v2(host.cast(), src, n, stream.cu_stream()) }
        .result()
        .unwrap();
    // The planted bug: read without synchronising.
    // SAFETY: n initialised bytes (zeroed above); the race is the point of the test.
    let early = unsafe { std::slice::from_raw_parts(host, n) }.to_vec();
    assert!(
        early != data,
        "the read before the synchronisation saw the copied bytes: the simulator did not make the missing synchronisation visible"
    );
    stream.synchronize().unwrap();
    // SAFETY: as above, after the copy completed.
    let late = unsafe { std::slice::from_raw_parts(host, n) }.to_vec();
    assert!(
        late == data,
        "after the synchronisation the bytes must be there"
    );
}

#[test]
#[ignore = "needs the CUDA simulator (scripts/test-cudasim.sh)"]
fn a_missing_synchronisation_shows_as_stale_bytes() {
    let out = child("child_missing_sync_reads_stale_bytes", &slow());
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("1 passed"));
}

#[test]
#[ignore = "needs the CUDA simulator (scripts/test-cudasim.sh)"]
fn child_pinned_free_with_copy_pending() {
    if !is_child("child_pinned_free_with_copy_pending") {
        return;
    }
    let (ctx, stream) = setup();
    let n = 4096;
    let dev = stream.clone_htod(&random_bytes(n, 2)).unwrap();
    stream.synchronize().unwrap();
    // SAFETY: never read.
    let mut pinned = unsafe { ctx.alloc_pinned_with_flags::<u8>(n, 0) }.unwrap();
    let host = pinned.as_mut_ptr().unwrap();
    let (src, _rec) = dev.device_ptr(&stream);
    // SAFETY: valid ranges; the planted bug is the free below.
    unsafe { sys::cuMemcpyDtoHAsync_v2(host.cast(), src, n, stream.cu_stream()) }
        .result()
        .unwrap();
    drop(pinned); // The planted bug: freed (or recycled) before the copy into it completed.
    stream.synchronize().unwrap();
}

#[test]
#[ignore = "needs the CUDA simulator (scripts/test-cudasim.sh)"]
fn a_pinned_buffer_freed_with_its_copy_pending_aborts() {
    expect_abort(
        "child_pinned_free_with_copy_pending",
        &slow(),
        &["cuMemFreeHost", "still pending", "pinned host allocation"],
    );
}

/// Launches the real gather kernel (1-byte rows, 32-bit indices) over a table of 1000 rows
/// with `n` output rows into a destination of 1000 rows, the indices `idx`.
fn launch_gather(n: u64, idx: &[u32]) {
    let (ctx, stream) = setup();
    let cubin = compile_cubin("gather.cu", SOURCES[0].source, "sm_90", &[]).unwrap();
    let module = ctx.load_module(Ptx::from_binary(cubin.cubin)).unwrap();
    let f = module.load_function("gather_rows_v1_u32").unwrap();
    let src: CudaSlice<u8> = stream.clone_htod(&random_bytes(1000, 3)).unwrap();
    let idx: CudaSlice<u32> = stream.clone_htod(idx).unwrap();
    let dst: CudaSlice<u8> = stream.alloc_zeros(1000).unwrap();
    let (base, row_words, seg_words, segs) = (0u64, 1u64, 1u64, 1u64);
    let mut b = stream.launch_builder(&f);
    b.arg(&src)
        .arg(&idx)
        .arg(&base)
        .arg(&dst)
        .arg(&n)
        .arg(&row_words)
        .arg(&seg_words)
        .arg(&segs);
    let cfg = LaunchConfig {
        grid_dim: (4, 1, 1),
        block_dim: (1, 256, 1),
        shared_mem_bytes: 0,
    };
    // SAFETY: deliberately not: the planted bug is in these arguments.
    unsafe { b.launch(cfg) }.unwrap();
    stream.synchronize().unwrap();
}

#[test]
#[ignore = "needs the CUDA simulator (scripts/test-cudasim.sh)"]
fn child_off_by_one_rows() {
    if !is_child("child_off_by_one_rows") {
        return;
    }
    let idx: Vec<u32> = (0..1001).map(|i| i % 1000).collect();
    launch_gather(1001, &idx); // one row more than the destination holds
}

#[test]
#[ignore = "needs the CUDA simulator (scripts/test-cudasim.sh)"]
fn an_off_by_one_launch_past_its_destination_aborts() {
    expect_abort(
        "child_off_by_one_rows",
        &[],
        &[
            "cuLaunchKernel",
            "breaks K4",
            "gather_rows_v1_u32",
            "not inside live memory",
        ],
    );
}

#[test]
#[ignore = "needs the CUDA simulator (scripts/test-cudasim.sh)"]
fn child_index_past_the_table() {
    if !is_child("child_index_past_the_table") {
        return;
    }
    let idx: Vec<u32> = (0..1000).map(|i| if i == 500 { 1000 } else { i }).collect();
    launch_gather(1000, &idx); // row 1000 of a 1000-row table
}

#[test]
#[ignore = "needs the CUDA simulator (scripts/test-cudasim.sh)"]
fn an_index_one_past_the_table_aborts() {
    expect_abort(
        "child_index_past_the_table",
        &[],
        &["breaks K2", "source row 1000 is read", "1000 rows"],
    );
}

#[test]
#[ignore = "needs the CUDA simulator (scripts/test-cudasim.sh)"]
fn child_use_after_free() {
    if !is_child("child_use_after_free") {
        return;
    }
    let (_ctx, stream) = setup();
    let x = stream.clone_htod(&[7u8; 4096]).unwrap();
    let p = {
        let (p, _rec) = x.device_ptr(&stream);
        p
    };
    drop(x); // freed (stream-ordered)
    stream.synchronize().unwrap();
    let mut back = vec![0u8; 4096];
    // SAFETY: deliberately not: the planted bug is reading freed device memory.
    let _ =
        unsafe { sys::cuMemcpyDtoHAsync_v2(back.as_mut_ptr().cast(), p, 4096, stream.cu_stream()) };
}

#[test]
#[ignore = "needs the CUDA simulator (scripts/test-cudasim.sh)"]
fn a_use_after_free_aborts() {
    expect_abort(
        "child_use_after_free",
        &[],
        &[
            "cuMemcpyDtoHAsync_v2",
            "use after free",
            "freed by cuMemFreeAsync",
        ],
    );
}

#[test]
#[ignore = "needs the CUDA simulator (scripts/test-cudasim.sh)"]
fn child_env_faults_and_leaks() {
    if !is_child("child_env_faults_and_leaks") {
        return;
    }
    let (_ctx, stream) = setup();
    // ARRAYDRAIN_SIM_FAIL=cuMemAllocAsync:2: the second allocation fails as a full device does.
    let a = stream.alloc_zeros::<u8>(16).unwrap();
    let e = stream.alloc_zeros::<u8>(16).unwrap_err();
    assert_eq!(e.0, sys::CUresult::CUDA_ERROR_OUT_OF_MEMORY, "{e:?}");
    let c = stream.alloc_zeros::<u8>(16).unwrap();
    drop((a, c));
    // A call the simulator does not model is refused, never a silent success.
    let mut dev = 0;
    // SAFETY: writes one CUdevice.
    let rc = unsafe { sys::cuCtxGetDevice(&mut dev) };
    assert_eq!(rc, sys::CUresult::CUDA_ERROR_NOT_SUPPORTED);
    // A context destroyed with memory still allocated: the simulator reports it.
    let other = CudaContext::new_non_primary(0, 0).unwrap();
    let s = other.new_stream().unwrap();
    let _never_freed = s.alloc_zeros::<u8>(1234).unwrap().leak();
    drop(s);
    drop(other);
}

#[test]
#[ignore = "needs the CUDA simulator (scripts/test-cudasim.sh)"]
fn faults_by_environment_unsupported_calls_and_leaks_are_reported() {
    let out = child(
        "child_env_faults_and_leaks",
        &[("ARRAYDRAIN_SIM_FAIL", "cuMemAllocAsync:2".to_string())],
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    for needle in [
        "injected failure: call 2 of cuMemAllocAsync",
        "cuCtxGetDevice is not simulated: CUDA_ERROR_NOT_SUPPORTED",
        "LEAK: context",
        "device allocation",
        "of 1234 bytes",
    ] {
        assert!(stderr.contains(needle), "no {needle:?} in:\n{stderr}");
    }
}

/// Nothing the simulator runs may look like a GPU figure: `arraydrain info` names it, and
/// `bench` on it verifies every CUDA strategy but prints no time, GB/s or floor ratio for them.
#[test]
#[ignore = "needs the CUDA simulator (scripts/test-cudasim.sh)"]
fn info_names_the_simulator_and_bench_prints_no_gpu_figures() {
    let _ = Sim::get();
    let exe = env!("CARGO_BIN_EXE_arraydrain");
    let out = std::process::Command::new(exe)
        .arg("info")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}");
    assert!(stdout.contains("CUDA simulator"), "{stdout}");
    let out = std::process::Command::new(exe)
        .args([
            "bench", "--rows", "5000", "--dim", "8", "--repeat", "1", "--device", "cuda",
        ])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("nothing timed"), "{stdout}");
    assert!(
        !stdout.contains("cuda_d2h_pinned"),
        "a GPU floor was printed:\n{stdout}"
    );
    let rows: Vec<&str> = stdout.lines().filter(|l| l.contains("cuda-sim")).collect();
    assert_eq!(rows.len(), 5, "{stdout}");
    for r in rows {
        let fields: Vec<&str> = r.split_whitespace().collect();
        // strategy, backend, median, min, max, GB/s, x floor, floor, peak MiB, verified
        assert_eq!(&fields[2..8], ["-"; 6], "{r}");
        assert_eq!(fields.last(), Some(&"yes"), "{r}");
    }
}

#[test]
#[ignore = "needs the CUDA simulator (scripts/test-cudasim.sh)"]
fn child_touch_past_an_allocation() {
    if !is_child("child_touch_past_an_allocation") {
        return;
    }
    let (_ctx, stream) = setup();
    let x = stream.alloc_zeros::<u8>(1000).unwrap();
    let (p, _rec) = x.device_ptr(&stream);
    // The simulator's device addresses are its host addresses plus 2^62; an allocation's
    // 256-byte rounding ends against a guard page. Touching the first byte past the rounding, as
    // a kernel running past its buffer would, must fault and be reported.
    let host = (p - 0x4000_0000_0000_0000 + 1024) as *const u8;
    // SAFETY: deliberately not: the planted bug is the out-of-bounds read.
    let v = unsafe { std::ptr::read_volatile(host) };
    println!("read {v} past the end: the guard page is missing");
}

#[test]
#[ignore = "needs the CUDA simulator (scripts/test-cudasim.sh)"]
fn memory_past_an_allocation_is_a_guard_page_and_the_fault_names_it() {
    expect_abort(
        "child_touch_past_an_allocation",
        &[],
        &[
            "memory fault",
            "out of bounds of device allocation",
            "of 1000 bytes",
        ],
    );
}
