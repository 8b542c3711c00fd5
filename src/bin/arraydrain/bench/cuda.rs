//! The CUDA half of `arraydrain bench`: uploads the workload, measures the GPU floor in the same
//! run — one device→host copy of the output's bytes from a contiguous device buffer into pinned,
//! cacheable host memory ([`CudaEngine::time_d2h_pinned`]) — and times every strategy on the
//! device against it, each output verified against the CPU reference before it is timed. It
//! uses the engine's public API only; in a build without the `cuda` feature it returns
//! [`CudaError::NotCompiled`](arraydrain::cuda::CudaError::NotCompiled).

use std::time::Instant;

use arraydrain::bench::{poison, verify};
use arraydrain::cuda::{CudaEngine, CudaInfo, DeviceTable};
use arraydrain::{Batches, Result, Strategy, Table};

use super::measure::{gbps, BenchRow, Floor, Timing};

/// The floor's name in reports.
pub const FLOOR: &str = "cuda_d2h_pinned";

/// The CUDA results of one benchmark run.
#[derive(Debug, Clone)]
pub struct CudaBench {
    /// The device.
    pub device: CudaInfo,
    /// One D2H copy of the output's bytes into pinned cacheable memory (`cuda_d2h_pinned`).
    pub floor: Floor,
    /// One row per strategy, backend `cuda`.
    pub rows: Vec<BenchRow>,
}

/// Runs `strategies` on device 0; see [`run_on`].
///
/// # Errors
/// As [`run_on`].
pub fn run(
    table: &Table<'_>,
    batches: &Batches,
    strategies: &[Strategy],
    repeat: usize,
    reference: &[Vec<u8>],
) -> Result<CudaBench> {
    let engine = CudaEngine::new(0)?;
    run_on(&engine, table, batches, strategies, repeat, reference)
}

/// Uploads `table`, measures the floor, then for each strategy: one verified run on a
/// poisoned output, then `repeat` timed runs (each on a poisoned output). `Pinned` / `Auto`
/// report the first run's pinning time as `pin_seconds` and time the steady state — a reused
/// pinned output, as across epochs; the classic recipes allocate their output in every run, as
/// they do in a training loop (their fresh output is zero-filled, not poisoned).
///
/// # Errors
/// [`CudaError::Unavailable`](arraydrain::cuda::CudaError::Unavailable) and the engine's errors. A strategy whose output differs from
/// `reference` is not an error: its row says `verified: false`.
pub fn run_on(
    engine: &CudaEngine,
    table: &Table<'_>,
    batches: &Batches,
    strategies: &[Strategy],
    repeat: usize,
    reference: &[Vec<u8>],
) -> Result<CudaBench> {
    let device_table = engine.upload(table)?;
    let bytes: u64 = reference.iter().map(|r| r.len() as u64).sum();
    if engine.info().is_simulator() {
        return simulated(engine, &device_table, batches, strategies, reference);
    }
    let floor = measure_floor(engine, bytes as usize, repeat)?;
    let mut rows = Vec::with_capacity(strategies.len());
    for &strategy in strategies {
        rows.push(bench_strategy(
            engine,
            &device_table,
            batches,
            strategy,
            repeat,
            reference,
            &floor,
            bytes,
        )?);
    }
    Ok(CudaBench {
        device: engine.info().clone(),
        floor,
        rows,
    })
}

/// Under the CUDA driver simulator: every strategy runs once and is verified (the pinned ones
/// also into a poisoned reused output), but nothing is timed — a simulator's times say nothing
/// about a GPU — so the floor and every time, GB/s and floor ratio are NaN (printed as `-`,
/// `null` in JSON), and the rows' backend is `cuda-sim`.
fn simulated(
    engine: &CudaEngine,
    table: &DeviceTable,
    batches: &Batches,
    strategies: &[Strategy],
    reference: &[Vec<u8>],
) -> Result<CudaBench> {
    let none = Timing {
        min: f64::NAN,
        median: f64::NAN,
        max: f64::NAN,
    };
    let mut rows = Vec::with_capacity(strategies.len());
    for &strategy in strategies {
        let mut out = engine.materialize(table, batches, strategy)?;
        let first = out.report().clone();
        let mut verified = verify(&out, reference);
        if matches!(strategy, Strategy::Pinned | Strategy::Auto) {
            poison(&mut out);
            engine.materialize_into(table, batches, &mut out)?;
            verified &= verify(&out, reference);
        }
        rows.push(BenchRow {
            strategy: strategy.name().to_string(),
            backend: SIM_BACKEND.to_string(),
            seconds: none,
            gbps: f64::NAN,
            floor_ratio: f64::NAN,
            floor: "none (simulator)".to_string(),
            peak_alloc_bytes: first.peak_alloc_bytes,
            peak_device_bytes: first.peak_device_bytes,
            pin_seconds: None,
            verified,
        });
    }
    Ok(CudaBench {
        device: engine.info().clone(),
        floor: Floor {
            seconds: f64::NAN,
            gbps: f64::NAN,
            timing: none,
        },
        rows,
    })
}

/// The backend name of rows measured on the CUDA driver simulator.
pub const SIM_BACKEND: &str = "cuda-sim";

#[allow(clippy::too_many_arguments)]
fn bench_strategy(
    engine: &CudaEngine,
    table: &DeviceTable,
    batches: &Batches,
    strategy: Strategy,
    repeat: usize,
    reference: &[Vec<u8>],
    floor: &Floor,
    bytes: u64,
) -> Result<BenchRow> {
    let mut runs = Vec::with_capacity(repeat.max(1));
    let (verified, first) = match strategy {
        Strategy::Pinned | Strategy::Auto => {
            let mut out = engine.materialize(table, batches, strategy)?;
            let first = out.report().clone();
            poison(&mut out);
            engine.materialize_into(table, batches, &mut out)?;
            let verified = verify(&out, reference);
            for _ in 0..repeat.max(1) {
                poison(&mut out);
                let t = Instant::now();
                engine.materialize_into(table, batches, &mut out)?;
                runs.push(t.elapsed().as_secs_f64());
            }
            (verified, first)
        }
        _ => {
            let out = engine.materialize(table, batches, strategy)?;
            let verified = verify(&out, reference);
            let first = out.report().clone();
            drop(out);
            for _ in 0..repeat.max(1) {
                let t = Instant::now();
                let out = engine.materialize(table, batches, strategy)?;
                runs.push(t.elapsed().as_secs_f64());
                drop(out);
            }
            (verified, first)
        }
    };
    let seconds = Timing::from_runs(&runs);
    Ok(BenchRow {
        strategy: strategy.name().to_string(),
        backend: "cuda".to_string(),
        seconds,
        gbps: gbps(bytes, seconds.median),
        floor_ratio: if floor.seconds > 0.0 {
            seconds.median / floor.seconds
        } else {
            0.0
        },
        floor: FLOOR.to_string(),
        peak_alloc_bytes: first.peak_alloc_bytes,
        peak_device_bytes: first.peak_device_bytes,
        pin_seconds: first
            .pin_seconds
            .filter(|_| matches!(strategy, Strategy::Pinned | Strategy::Auto)),
        verified,
    })
}

/// The GPU floor: one device→host copy of `bytes` bytes into pinned, cacheable host memory,
/// a warm-up copy, then `repeat` timed ones. The buffers are freed before the strategies run.
fn measure_floor(engine: &CudaEngine, bytes: usize, repeat: usize) -> Result<Floor> {
    let runs = engine.time_d2h_pinned(bytes, repeat.max(1))?;
    Ok(Floor::new(&runs, bytes as u64))
}

#[cfg(test)]
mod tests {
    use arraydrain::cuda::CudaError;
    use arraydrain::{Column, DType, Error, Indices};

    use super::*;

    /// Without a CUDA driver the benchmark says so with a typed error and never panics (on a
    /// machine with a driver there is nothing to check here: tests/cuda_gpu.rs runs there).
    #[test]
    fn without_a_driver_the_cuda_benchmark_is_a_typed_error() {
        if arraydrain::cuda::driver_library_present() {
            println!("CASE: a CUDA driver library is present; nothing to check");
            return;
        }
        let x: Vec<f32> = (0..40).map(|i| i as f32).collect();
        let table = Table::builder()
            .column(Column::from_bytes(
                "x",
                DType::F32,
                &[4],
                10,
                bytemuck::cast_slice(&x),
            ))
            .build()
            .unwrap();
        let batches = Batches::new(Indices::Range { start: 0, end: 10 }, 3, false).unwrap();
        let reference = arraydrain::bench::reference(&table, &batches).unwrap();
        match run(&table, &batches, &[Strategy::Pinned], 1, &reference) {
            Err(Error::Cuda(CudaError::Unavailable { reason })) => assert!(!reason.is_empty()),
            Err(Error::Cuda(CudaError::NotCompiled)) if cfg!(not(feature = "cuda")) => {}
            other => panic!("bench::cuda::run: expected CudaUnavailable, got {other:?}"),
        }
    }
}
