//! The measurements of `arraydrain bench`: run times, floors and one result row per strategy.

use serde::Serialize;

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
