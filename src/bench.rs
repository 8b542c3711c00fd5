//! The benchmark harness behind `arraydrain bench`: a synthetic workload, a naive reference
//! gather to verify every output before it is timed, the same-run floors, and the result rows
//! (printed as a table and written as JSON). Backends add their rows through [`BenchRow`].

use std::time::Instant;

use serde::Serialize;

use crate::batch::Batches;
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
