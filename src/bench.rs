//! The benchmark harness behind `arraydrain bench`: a synthetic workload, a naive reference
//! gather to verify every output before it is timed, the same-run floors, and the result rows
//! (printed as a table and written as JSON). Backends add their rows through [`BenchRow`].

use std::time::Instant;

use serde::Serialize;

use crate::batch::Batches;
use crate::memory::HostBuf;
use crate::output::Materialized;
use crate::table::Table;

/// Minimum, median and maximum seconds over repeated runs.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Timing {
    /// Fastest run.
    pub min: f64,
    /// Median run.
    pub median: f64,
    /// Slowest run.
    pub max: f64,
}

impl Timing {
    /// Summarises run times in seconds (an empty list gives zeros).
    pub fn from_runs(runs: &[f64]) -> Timing {
        let mut v = runs.to_vec();
        v.sort_by(f64::total_cmp);
        if v.is_empty() {
            return Timing {
                min: 0.0,
                median: 0.0,
                max: 0.0,
            };
        }
        let median = if v.len() % 2 == 1 {
            v[v.len() / 2]
        } else {
            (v[v.len() / 2 - 1] + v[v.len() / 2]) / 2.0
        };
        Timing {
            min: v[0],
            median,
            max: v[v.len() - 1],
        }
    }
}

/// A floor: the time of a plain copy of the same output bytes, measured in the same run.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Floor {
    /// Median seconds.
    pub seconds: f64,
    /// Output gigabytes (1e9 bytes) per second at the median.
    pub gbps: f64,
    /// All three statistics.
    pub timing: Timing,
}

impl Floor {
    /// A floor from run times over `bytes` bytes.
    pub fn new(runs: &[f64], bytes: u64) -> Floor {
        let timing = Timing::from_runs(runs);
        Floor {
            seconds: timing.median,
            gbps: gbps(bytes, timing.median),
            timing,
        }
    }
}

/// One strategy on one backend.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct BenchRow {
    /// Strategy name (`concat`, `per-batch`, `preallocated`, `pinned`, `auto`, or a
    /// comparison recipe's name).
    pub strategy: String,
    /// `cpu` or `cuda`.
    pub backend: String,
    /// Run times.
    pub seconds: Timing,
    /// Output GB/s at the median.
    pub gbps: f64,
    /// Median seconds over the floor's median seconds (1.0 is the floor).
    pub floor_ratio: f64,
    /// The floor the ratio is taken against (`cpu_fresh`, `cuda_d2h_pinned`, …).
    pub floor: String,
    /// Peak host bytes the strategy allocated.
    pub peak_alloc_bytes: u64,
    /// Peak device bytes the strategy allocated (CUDA).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub peak_device_bytes: Option<u64>,
    /// Seconds spent allocating / pinning page-locked memory (CUDA `pinned`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pin_seconds: Option<f64>,
    /// Whether the output equalled the reference gather before timing.
    pub verified: bool,
}

/// Gigabytes (1e9 bytes) per second.
pub fn gbps(bytes: u64, seconds: f64) -> f64 {
    if seconds > 0.0 {
        bytes as f64 / seconds / 1e9
    } else {
        0.0
    }
}

/// Times `f` `repeat` times (at least once), returning each run's seconds.
///
/// # Errors
/// The first error `f` returns.
pub fn time_runs<E>(repeat: usize, mut f: impl FnMut() -> Result<(), E>) -> Result<Vec<f64>, E> {
    let mut runs = Vec::with_capacity(repeat.max(1));
    for _ in 0..repeat.max(1) {
        let t = Instant::now();
        f()?;
        runs.push(t.elapsed().as_secs_f64());
    }
    Ok(runs)
}

/// The deliberately naive reference: for each column, the bytes of each output row copied one
/// at a time, in order, from the table.
pub fn reference(table: &Table<'_>, batches: &Batches) -> Vec<Vec<u8>> {
    let idx = batches.indices();
    table
        .columns()
        .iter()
        .map(|c| {
            let mut out = Vec::with_capacity(batches.rows() * c.row_bytes());
            for p in 0..batches.rows() {
                if let Some(row) = idx.get(p).and_then(|i| c.row(i)) {
                    out.extend_from_slice(row);
                }
            }
            out
        })
        .collect()
}

/// Whether an output equals the reference, column by column, byte for byte.
pub fn verify(out: &Materialized, reference: &[Vec<u8>]) -> bool {
    out.columns().len() == reference.len()
        && out
            .columns()
            .iter()
            .zip(reference)
            .all(|(c, r)| c.as_bytes() == r.as_slice())
}

/// The built-in workload: `x` f32 `[rows, dim]` uniform in `[0, 1)` and `y` i64 `[rows]` labels
/// in `0..10`, like the classic "features and labels" example. Deterministic for a seed.
///
/// # Errors
/// [`crate::Error::HostAllocation`] when the table does not fit in memory.
pub fn synthetic_table(rows: usize, dim: usize, seed: u64) -> crate::Result<Table<'static>> {
    use rayon::prelude::*;
    use std::sync::Arc;

    use crate::memory::{checked_bytes, HostBuf};
    use crate::table::Column;
    use crate::DType;

    const CHUNK: usize = 1 << 16;
    let x_bytes = checked_bytes(&[rows, dim, 4], "x")?;
    let mut x = HostBuf::zeroed(x_bytes, "x")?;
    let xs: &mut [f32] = bytemuck::cast_slice_mut(x.as_bytes_mut());
    xs.par_chunks_mut(CHUNK).enumerate().for_each(|(k, c)| {
        let mut s = seed ^ (k as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        for v in c {
            s = splitmix(s);
            *v = (s >> 40) as f32 / (1u64 << 24) as f32;
        }
    });
    let mut y = HostBuf::zeroed(checked_bytes(&[rows, 8], "y")?, "y")?;
    let ys: &mut [i64] = bytemuck::cast_slice_mut(y.as_bytes_mut());
    ys.par_chunks_mut(CHUNK).enumerate().for_each(|(k, c)| {
        let mut s = !seed ^ (k as u64).wrapping_mul(0xD1B5_4A32_D192_ED03);
        for v in c {
            s = splitmix(s);
            *v = ((s >> 33) % 10) as i64;
        }
    });
    Table::new(vec![
        Column::from_shared("x", DType::F32, &[dim], rows, Arc::new(x))?,
        Column::from_shared("y", DType::I64, &[], rows, Arc::new(y))?,
    ])
}

fn splitmix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// The CPU floors, measured over the reference's bytes (the exact output bytes, contiguous).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CpuFloors {
    /// A parallel copy into freshly allocated memory (huge-page advice where available),
    /// allocation and page faults included — what a one-shot drain must also pay.
    pub cpu_fresh: Floor,
    /// The same copy into already-touched memory — the floor for draining again into a reused
    /// output.
    pub cpu_warm: Floor,
}

/// One contestant of the CPU benchmark.
enum Contestant {
    Fresh,
    Warm(Vec<HostBuf>),
    Strategy(crate::Strategy),
    Into(crate::Materialized),
}

/// Runs the CPU floors and `strategies` round-robin: every output is verified against
/// `reference` once, then each repetition runs the floors and every strategy once, in turn, so
/// that a busy or fragmented machine weighs on all of them alike. One-shot runs include
/// allocation (the output is dropped outside the timed region). The strategy name
/// `preallocated-into` drains again into one reused output (the epoch case) and is compared with
/// `cpu_warm`; all others with `cpu_fresh`. `tick` is called once per timed run.
///
/// # Errors
/// The first drain or allocation error, or [`crate::Error::StrategyUnavailable`] for an unknown
/// strategy name.
pub fn run_cpu(
    loader: &crate::Loader<'_, '_>,
    strategies: &[String],
    repeat: usize,
    reference: &[Vec<u8>],
    mut tick: impl FnMut(),
) -> crate::Result<(CpuFloors, Vec<BenchRow>)> {
    use crate::gather::cpu::par_copy;

    let bytes: u64 = reference.iter().map(|r| r.len() as u64).sum();
    let mut contestants = vec![
        Contestant::Fresh,
        Contestant::Warm(
            reference
                .iter()
                .map(|r| HostBuf::copy_of(r, "floor", None))
                .collect::<crate::Result<Vec<_>>>()?,
        ),
    ];
    let mut verified = vec![true, true];
    let mut peaks = vec![0u64, 0];
    for name in strategies {
        if name == "preallocated-into" {
            let mut out = loader.materialize(crate::Strategy::Preallocated)?;
            for c in out.columns_mut() {
                c.as_bytes_mut().fill(0xA5); // poison: an unwritten byte fails verification
            }
            loader.materialize_into(&mut out)?;
            verified.push(verify(&out, reference));
            peaks.push(0);
            contestants.push(Contestant::Into(out));
        } else {
            let strategy: crate::Strategy =
                name.parse()
                    .map_err(|reason| crate::Error::StrategyUnavailable {
                        strategy: "bench",
                        reason,
                    })?;
            let first = loader.materialize(strategy)?;
            verified.push(verify(&first, reference));
            peaks.push(first.report().peak_alloc_bytes);
            drop(first);
            contestants.push(Contestant::Strategy(strategy));
        }
    }
    let mut runs = vec![Vec::with_capacity(repeat); contestants.len()];
    // One untimed round first: the first large allocations after building the table and the
    // reference pay for the kernel reclaiming and compacting memory.
    for round in 0..=repeat.max(1) {
        for (k, c) in contestants.iter_mut().enumerate() {
            if round > 0 {
                tick();
            }
            let t = Instant::now();
            let dropped = match c {
                Contestant::Fresh => {
                    let mut bufs = Vec::with_capacity(reference.len());
                    for r in reference {
                        let mut b = HostBuf::zeroed(r.len(), "floor")?;
                        par_copy(r, b.as_bytes_mut());
                        bufs.push(b);
                    }
                    Some(Box::new(bufs) as Box<dyn std::any::Any>)
                }
                Contestant::Warm(bufs) => {
                    for (r, b) in reference.iter().zip(bufs.iter_mut()) {
                        par_copy(r, b.as_bytes_mut());
                    }
                    None
                }
                Contestant::Strategy(s) => {
                    Some(Box::new(loader.materialize(*s)?) as Box<dyn std::any::Any>)
                }
                Contestant::Into(out) => {
                    loader.materialize_into(out)?;
                    None
                }
            };
            let elapsed = t.elapsed().as_secs_f64();
            drop(dropped);
            if round > 0 {
                runs[k].push(elapsed);
            }
        }
    }
    let floors = CpuFloors {
        cpu_fresh: Floor::new(&runs[0], bytes),
        cpu_warm: Floor::new(&runs[1], bytes),
    };
    let rows = strategies
        .iter()
        .enumerate()
        .map(|(i, name)| {
            let k = i + 2;
            let seconds = Timing::from_runs(&runs[k]);
            let (floor_name, floor) = if name == "preallocated-into" {
                ("cpu_warm", &floors.cpu_warm)
            } else {
                ("cpu_fresh", &floors.cpu_fresh)
            };
            BenchRow {
                strategy: name.clone(),
                backend: "cpu".into(),
                seconds,
                gbps: gbps(bytes, seconds.median),
                floor_ratio: if floor.seconds > 0.0 {
                    seconds.median / floor.seconds
                } else {
                    0.0
                },
                floor: floor_name.into(),
                peak_alloc_bytes: peaks[k],
                peak_device_bytes: None,
                pin_seconds: None,
                verified: verified[k],
            }
        })
        .collect();
    Ok((floors, rows))
}
