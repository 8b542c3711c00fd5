//! `arraydrain info`: version, threads, backends, and this process's place in a distributed run.

use arraydrain::launcher;

pub fn info() {
    println!("arraydrain {}", env!("CARGO_PKG_VERSION"));
    println!("threads: {}", rayon::current_num_threads());
    println!("backends:");
    println!("  cpu: available");
    println!("  cuda: {}", cuda_status());
    println!("distributed: {}", describe_placement());
}

fn cuda_status() -> String {
    let min = arraydrain::cuda::MIN_DRIVER_VERSION;
    let (device, driver) = match arraydrain::cuda::probe(0) {
        Ok(d) => (
            format!(
                "available: device 0 {}, compute capability {}.{}, {:.1} GiB, driver CUDA {}.{}",
                d.name,
                d.compute_capability.0,
                d.compute_capability.1,
                d.total_memory as f64 / (1u64 << 30) as f64,
                d.driver_version / 1000,
                d.driver_version % 1000 / 10
            ),
            Some(d.driver_version),
        ),
        Err(e) => (e.to_string(), None),
    };
    let nvrtc = match arraydrain::cuda::nvrtc_status(driver) {
        Ok(s) => s,
        Err(reason) => format!("no usable NVRTC: {reason}"),
    };
    format!(
        "{device}\n  cuda kernels: {nvrtc}\n  cuda needs: a driver of CUDA {}.{} or newer, and \
         NVRTC 12.x or 13.x (the newest the driver runs: 13.x needs a 13.x driver)",
        min / 1000,
        min % 1000 / 10
    )
}

/// Where this process would sit in a distributed run: the placement, or why none was found.
fn describe_placement() -> String {
    let env = launcher::process_env();
    match launcher::resolve(None, None, &env) {
        Ok(p) => {
            let device = launcher::cuda_ordinal(
                p.local_rank,
                env.get("CUDA_VISIBLE_DEVICES").map(String::as_str),
            )
            .map_or_else(|e| e.to_string(), |d| format!("CUDA device {d}"));
            format!("{p}; {device}")
        }
        Err(e) => e.to_string(),
    }
}
