//! The CPU half of `arraydrain bench`: the same-run CPU floors (a parallel copy of the output's
//! bytes into fresh and into already-touched memory) and every CPU strategy, run round-robin.

use std::time::Instant;

use serde::Serialize;

use arraydrain::bench::verify;
use arraydrain::memory::{par_copy, HostBuf};

use super::measure::{gbps, BenchRow, Floor, Timing};

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
    Strategy(arraydrain::Strategy),
    Into(arraydrain::Materialized),
}

/// Runs the CPU floors and `strategies` round-robin: every output is verified against
/// `reference` once, then each repetition runs the floors and every strategy once, in turn, so
/// that a busy or fragmented machine weighs on all of them alike. One-shot runs include
/// allocation (the output is dropped outside the timed region). The strategy name
/// `preallocated-into` drains again into one reused output (the epoch case) and is compared with
/// `cpu_warm`; all others with `cpu_fresh`. `tick` is called once per timed run.
///
/// # Errors
/// The first drain or allocation error, or [`arraydrain::Error::StrategyUnavailable`] for an unknown
/// strategy name.
pub fn run_cpu(
    loader: &arraydrain::Loader<'_, '_>,
    strategies: &[String],
    repeat: usize,
    reference: &[Vec<u8>],
    mut tick: impl FnMut(),
) -> arraydrain::Result<(CpuFloors, Vec<BenchRow>)> {
    let bytes: u64 = reference.iter().map(|r| r.len() as u64).sum();
    let mut contestants = vec![
        Contestant::Fresh,
        Contestant::Warm(
            reference
                .iter()
                .map(|r| HostBuf::copy_of(r, "floor", None))
                .collect::<arraydrain::Result<Vec<_>>>()?,
        ),
    ];
    let mut verified = vec![true, true];
    let mut peaks = vec![0u64, 0];
    for name in strategies {
        if name == "preallocated-into" {
            let mut out = loader.materialize(arraydrain::Strategy::Preallocated)?;
            for c in out.columns_mut() {
                c.as_bytes_mut().fill(0xA5); // poison: an unwritten byte fails verification
            }
            loader.materialize_into(&mut out)?;
            verified.push(verify(&out, reference));
            peaks.push(0);
            contestants.push(Contestant::Into(out));
        } else {
            let strategy: arraydrain::Strategy =
                name.parse()
                    .map_err(|reason| arraydrain::Error::StrategyUnavailable {
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
