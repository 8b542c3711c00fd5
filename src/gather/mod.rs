//! Gather: turning a table, an order and a batching into output rows. The strategies live here —
//! the three classic recipes kept as honest baselines, and the parallel preallocated gather —
//! all producing byte-identical output. The CUDA strategies are in `crate::cuda`.
//!
//! Every CPU gather into output goes through [`gather_blocked`] (blocks of rows into output
//! slices, on all threads, with a step between blocks), every gather into a writer through
//! `pipelined` (the next block gathered while the last is written), and both classic recipes
//! end in `concat_kept`.

pub(crate) mod cpu;

use crate::table::TableError;
use std::fmt;
use std::ops::Range;
use std::str::FromStr;
use std::sync::mpsc;
use std::sync::Arc;
use std::time::Instant;

use crate::batch::Batches;
use crate::dtype::DType;
use crate::error::{Error, Result};
use crate::memory::{checked_bytes, AllocCounter, HostBuf};
use crate::output::{Backend, ColumnArray, Materialized, Report};
use crate::sampler::IndexSlice;
use crate::table::{Column, Table};

/// How a drain moves rows into the output.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Strategy {
    /// Keep every batch, concatenate at the end (peak ≈ 2× the output).
    Concat,
    /// Turn each batch into its own host array in the loop, concatenate at the end (≈ 2×).
    PerBatch,
    /// Allocate the output once and write each batch into its slice (≈ 1×). On the CPU the rows
    /// are gathered straight from the table into the output, in parallel.
    Preallocated,
    /// CUDA: chunked gather kernel plus asynchronous copies into pinned output on several streams.
    Pinned,
    /// The fastest available for the source and backend.
    Auto,
}

impl Strategy {
    /// Every strategy, in the order benchmarks list them.
    pub const ALL: [Strategy; 5] = [
        Strategy::Concat,
        Strategy::PerBatch,
        Strategy::Preallocated,
        Strategy::Pinned,
        Strategy::Auto,
    ];

    /// The strategy's name as the CLI and JSON spell it.
    pub fn name(self) -> &'static str {
        match self {
            Strategy::Concat => "concat",
            Strategy::PerBatch => "per-batch",
            Strategy::Preallocated => "preallocated",
            Strategy::Pinned => "pinned",
            Strategy::Auto => "auto",
        }
    }
}

impl fmt::Display for Strategy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Strategy {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Strategy::ALL
            .into_iter()
            .find(|st| st.name() == s || (s == "per_batch" && *st == Strategy::PerBatch))
            .ok_or_else(|| {
                let names: Vec<_> = Strategy::ALL.iter().map(|s| s.name()).collect();
                format!("unknown strategy {s:?} (one of: {})", names.join(", "))
            })
    }
}

/// Called as a drain proceeds with (rows done, bytes done).
pub type Progress = Arc<dyn Fn(usize, u64) + Send + Sync>;

/// Output rows written per step of the preallocated gather (per column): the unit at which
/// progress is reported and at which a memory-mapped output may write back and release pages.
pub(crate) const BLOCK_BYTES: usize = 32 << 20;

/// Runs a CPU strategy over a table.
pub(crate) fn run_cpu(
    table: &Table<'_>,
    batches: &Batches,
    strategy: Strategy,
    progress: Option<&Progress>,
) -> Result<Materialized> {
    let started = Instant::now();
    let counter = AllocCounter::new();
    let (strategy, columns) = match strategy {
        Strategy::Auto | Strategy::Preallocated => {
            let mut out = allocate_output(table, batches.rows(), &counter)?;
            fill_preallocated(table, batches, &mut out, progress)?;
            (Strategy::Preallocated, out)
        }
        Strategy::Concat => (
            strategy,
            classic(table, batches, false, &counter, progress)?,
        ),
        Strategy::PerBatch => (strategy, classic(table, batches, true, &counter, progress)?),
        Strategy::Pinned => {
            return Err(Error::StrategyUnavailable {
                strategy: "pinned",
                reason: "pinned needs the CUDA backend (a device table)".into(),
            })
        }
    };
    let report = Report::new(strategy, Backend::Cpu, batches.rows(), &columns, started)
        .with_peak_alloc(counter.peak());
    Ok(Materialized::new(columns, report))
}

/// One zero-filled, counted heap array per table column, `rows` rows each.
pub(crate) fn allocate_output(
    table: &Table<'_>,
    rows: usize,
    counter: &Arc<AllocCounter>,
) -> Result<Vec<ColumnArray>> {
    table
        .columns()
        .iter()
        .map(|c| {
            let bytes = checked_bytes(&[c.row_bytes(), rows], c.name())?;
            let buf = HostBuf::counted(bytes, c.name(), counter)?;
            // Every byte is written next: fault the pages in ahead, in bulk.
            buf.prefault();
            ColumnArray::new(c.name(), c.dtype(), c.row_shape(), rows, Box::new(buf))
        })
        .collect()
}

/// Checks that `out` has exactly the columns described by `specs` (name, dtype, row shape, in
/// order), each with `rows` rows: the contract of draining into an existing output.
pub(crate) fn check_output<'s>(
    specs: impl ExactSizeIterator<Item = (&'s str, DType, &'s [usize])>,
    rows: usize,
    out: &[ColumnArray],
) -> Result<()> {
    let expected = specs.len();
    for (i, (name, dtype, row_shape)) in specs.enumerate() {
        let Some(o) = out.get(i) else {
            return Err(Error::Table(TableError::UnknownColumn {
                name: name.to_string(),
                available: out.iter().map(|o| o.name().to_string()).collect(),
            }));
        };
        let reason = if o.name() != name {
            Some(format!("output column {i} is {:?}", o.name()))
        } else if o.dtype() != dtype {
            Some(format!(
                "output holds {}, the source holds {dtype}",
                o.dtype()
            ))
        } else if o.row_shape() != row_shape {
            Some(format!(
                "output rows are {:?}, source rows are {row_shape:?}",
                o.row_shape()
            ))
        } else if o.rows() != rows {
            Some(format!(
                "output has {} rows, the drain yields {rows}",
                o.rows()
            ))
        } else {
            None
        };
        if let Some(reason) = reason {
            return Err(Error::OutputMismatch {
                column: name.to_string(),
                reason,
            });
        }
    }
    if let Some(extra) = out.get(expected) {
        return Err(Error::OutputMismatch {
            column: extra.name().to_string(),
            reason: "output has a column the source lacks".into(),
        });
    }
    Ok(())
}

/// [`check_output`] for a host table.
pub(crate) fn check_table_output(
    table: &Table<'_>,
    rows: usize,
    out: &[ColumnArray],
) -> Result<()> {
    check_output(
        table
            .columns()
            .iter()
            .map(|c| (c.name(), c.dtype(), c.row_shape())),
        rows,
        out,
    )
}

/// The preallocated gather: every column's rows straight from the table into `out`, in blocks
/// of about [`BLOCK_BYTES`], each block on all threads.
pub(crate) fn fill_preallocated(
    table: &Table<'_>,
    batches: &Batches,
    out: &mut [ColumnArray],
    progress: Option<&Progress>,
) -> Result<()> {
    let sources: Vec<(&[u8], usize)> = table
        .columns()
        .iter()
        .map(|c| (c.bytes(), c.row_bytes()))
        .collect();
    let idx = batches.indices().view(0, batches.rows());
    gather_blocked(&sources, idx, out, |out, rows, done_bytes| {
        for o in out.iter_mut() {
            let rb = o.row_bytes();
            o.storage_mut()
                .region_done(rows.start * rb..rows.end * rb)?;
        }
        if let Some(p) = progress {
            p(rows.end, done_bytes);
        }
        Ok::<(), Error>(())
    })?;
    for o in out.iter_mut() {
        o.storage_mut().finish()?;
    }
    Ok(())
}

/// Where a blocked gather writes one column: the output's bytes, `rows × row_bytes` of them.
pub trait GatherOutput {
    /// The bytes to gather into.
    fn output_bytes(&mut self) -> &mut [u8];
}

impl GatherOutput for ColumnArray {
    fn output_bytes(&mut self) -> &mut [u8] {
        self.as_bytes_mut()
    }
}

impl GatherOutput for &mut [u8] {
    fn output_bytes(&mut self) -> &mut [u8] {
        self
    }
}

/// The blocked parallel gather into output slices: rows `idx` of every source `(bytes,
/// row_bytes)` into the matching output, about 32 MiB of output (all columns) per
/// step, each step on all threads. After each step `after_block(outputs, rows, bytes_done)`
/// runs (progress, write-back of a mapped output, a signal check); its error stops the gather.
///
/// Every index of `idx` must be below each source's row count (checked when the order was
/// resolved) and each output must hold `idx.len() × row_bytes` bytes; slices are still
/// bounds-checked, so a broken promise panics rather than reading or writing out of bounds.
pub fn gather_blocked<D: GatherOutput, E>(
    sources: &[(&[u8], usize)],
    idx: IndexSlice<'_>,
    outputs: &mut [D],
    mut after_block: impl FnMut(&mut [D], Range<usize>, u64) -> std::result::Result<(), E>,
) -> std::result::Result<(), E> {
    let rows = idx.len();
    // Zero-width rows have no bytes to move: one step covers them all, however many.
    let block_rows = match sources.iter().map(|s| s.1).sum::<usize>() {
        0 => rows.max(1),
        row_bytes => (BLOCK_BYTES / row_bytes).max(1),
    };
    let mut done_bytes = 0u64;
    let mut start = 0;
    while start < rows {
        let end = (start + block_rows).min(rows);
        for (&(src, rb), o) in sources.iter().zip(outputs.iter_mut()) {
            cpu::par_gather(
                src,
                rb,
                idx.view(start, end),
                &mut o.output_bytes()[start * rb..end * rb],
            );
            done_bytes += ((end - start) * rb) as u64;
        }
        after_block(outputs, start..end, done_bytes)?;
        start = end;
    }
    Ok(())
}

/// Gather-while-writing: block `k + 1` is filled on a scoped thread while this thread writes
/// block `k`, through the buffers in `bufs` (two, each at least as long as a block; they are
/// left in `bufs` for the next call). `fill(k, buf)` fills block `k` of `blocks` into `buf` and
/// returns how many bytes it filled; `write` gets each block's bytes in order, and its first
/// error stops both sides and is returned.
pub(crate) fn pipelined<E>(
    blocks: usize,
    bufs: &mut Vec<Vec<u8>>,
    mut fill: impl FnMut(usize, &mut [u8]) -> usize + Send,
    mut write: impl FnMut(&[u8]) -> std::result::Result<(), E>,
) -> std::result::Result<(), E> {
    debug_assert!(!bufs.is_empty(), "a pipeline needs a buffer");
    let (to_fill, empty) = mpsc::sync_channel::<Vec<u8>>(bufs.len());
    let (to_write, full) = mpsc::sync_channel::<(Vec<u8>, usize)>(bufs.len());
    for buf in bufs.drain(..) {
        // The receiver is alive: it is this function's `empty`.
        let _ = to_fill.send(buf);
    }
    std::thread::scope(|scope| {
        let filler = scope.spawn(move || {
            for k in 0..blocks {
                // A closed channel means the writer stopped (an error): stop too.
                let Ok(mut buf) = empty.recv() else { break };
                let len = fill(k, &mut buf);
                if to_write.send((buf, len)).is_err() {
                    break;
                }
            }
            // Handed back with the buffers still in it.
            empty
        });
        let mut result = Ok(());
        for (buf, len) in full.iter() {
            if result.is_ok() {
                result = write(&buf[..len]);
            }
            if result.is_ok() {
                // The filler may already be done; the buffer then comes home below.
                if let Err(mpsc::SendError(buf)) = to_fill.send(buf) {
                    bufs.push(buf);
                }
            } else {
                bufs.push(buf);
                break;
            }
        }
        // Without a sender the filler's next wait ends; each channel holds at most the buffers
        // there are, so its sends never block. Every buffer then comes home.
        drop(to_fill);
        let empty = match filler.join() {
            Ok(empty) => empty,
            Err(panic) => std::panic::resume_unwind(panic),
        };
        bufs.extend(full.try_iter().map(|(buf, _)| buf));
        bufs.extend(empty.try_iter());
        result
    })
}

/// Gathers batch `k` of one column into a new counted buffer, on the calling thread, as a
/// plain loader's collate step does.
fn gather_batch(
    col: &Column<'_>,
    batches: &Batches,
    k: usize,
    counter: &Arc<AllocCounter>,
) -> Result<HostBuf> {
    let r = batches.range(k);
    let mut buf = HostBuf::counted((r.end - r.start) * col.row_bytes(), col.name(), counter)?;
    cpu::gather_serial(
        col.bytes(),
        col.row_bytes(),
        batches.indices().view(r.start, r.end),
        buf.as_bytes_mut(),
    );
    Ok(buf)
}

/// The classic recipes. `Concat` keeps every batch as the loader made it and concatenates at
/// the end; `PerBatch` also turns each batch into a host array of its own in the loop (one more
/// copy, the batch itself dropped) before the final concatenation.
fn classic(
    table: &Table<'_>,
    batches: &Batches,
    per_batch: bool,
    counter: &Arc<AllocCounter>,
    progress: Option<&Progress>,
) -> Result<Vec<ColumnArray>> {
    let mut kept: Vec<Vec<HostBuf>> = Vec::new();
    kept.try_reserve_exact(batches.len()).map_err(|e| {
        Error::alloc(
            (batches.len() as u128).saturating_mul(std::mem::size_of::<Vec<HostBuf>>() as u128),
            "the list of batches",
            e,
        )
    })?;
    let mut done = 0u64;
    for k in 0..batches.len() {
        let mut cols = Vec::with_capacity(table.columns().len());
        for col in table.columns() {
            let batch = gather_batch(col, batches, k, counter)?;
            let buf = if per_batch {
                HostBuf::copy_of(batch.as_bytes(), col.name(), Some(counter))?
            } else {
                batch
            };
            done += buf.len() as u64;
            cols.push(buf);
        }
        kept.push(cols);
        if let Some(p) = progress {
            p(batches.range(k).end, done);
        }
    }
    let specs: Vec<_> = table
        .columns()
        .iter()
        .map(|c| (c.name(), c.dtype(), c.row_shape()))
        .collect();
    concat_kept(&specs, batches.rows(), kept.len(), counter, |k, c| {
        Ok(kept[k][c].as_bytes())
    })
}

/// The classic recipes' last step, the same for a table and a stream: one new counted output
/// column per `(name, dtype, row shape)`, `rows` rows each, the concatenation of column `c` of
/// the `batches` kept batches (`part(k, c)`: batch `k`'s bytes of column `c`) in order.
pub(crate) fn concat_kept<'k>(
    columns: &[(&str, DType, &[usize])],
    rows: usize,
    batches: usize,
    counter: &Arc<AllocCounter>,
    part: impl Fn(usize, usize) -> Result<&'k [u8]>,
) -> Result<Vec<ColumnArray>> {
    let mut out = Vec::with_capacity(columns.len());
    for (c, &(name, ref dtype, row_shape)) in columns.iter().enumerate() {
        let bytes = checked_bytes(&[dtype.size(), row_shape.iter().product(), rows], name)?;
        let buf = HostBuf::counted(bytes, name, counter)?;
        // Every byte is written next: fault the pages in ahead, in bulk.
        buf.prefault();
        let mut o = ColumnArray::new(name, dtype.clone(), row_shape, rows, Box::new(buf))?;
        let dst = o.as_bytes_mut();
        let mut at = 0;
        for k in 0..batches {
            let b = part(k, c)?;
            dst[at..at + b.len()].copy_from_slice(b);
            at += b.len();
        }
        out.push(o);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pipelined_writes_every_block_in_order_and_stops_at_the_first_error() {
        let fill = |k: usize, buf: &mut [u8]| {
            let len = 1 + k % 3;
            buf[..len].fill(k as u8);
            len
        };
        let mut bufs = vec![vec![0u8; 4], vec![0u8; 4]];
        let mut got = Vec::new();
        pipelined(50, &mut bufs, fill, |b: &[u8]| {
            got.extend_from_slice(b);
            Ok::<(), String>(())
        })
        .unwrap();
        let expected: Vec<u8> = (0..50u8)
            .flat_map(|k| std::iter::repeat_n(k, 1 + k as usize % 3))
            .collect();
        assert_eq!(got, expected);
        assert_eq!(bufs.len(), 2, "the buffers come home for the next call");
        let mut calls = 0;
        let err = pipelined(50, &mut bufs, fill, |_: &[u8]| {
            calls += 1;
            if calls == 3 {
                Err("disk full")
            } else {
                Ok(())
            }
        })
        .unwrap_err();
        assert_eq!((err, calls), ("disk full", 3));
        assert_eq!(bufs.len(), 2, "the buffers come home after an error too");
    }

    #[test]
    fn gather_blocked_matches_a_naive_gather_and_reports_each_block() {
        let rows = 5000usize;
        let a: Vec<u8> = (0..rows * 12).map(|i| (i % 251) as u8).collect();
        let b: Vec<u8> = (0..rows * 3).map(|i| (i % 13) as u8).collect();
        let list: Vec<u64> = (0..rows as u64).rev().chain([7, 7, 0]).collect();
        let (mut oa, mut ob) = (vec![0u8; list.len() * 12], vec![0u8; list.len() * 3]);
        let mut outs: [&mut [u8]; 2] = [&mut oa, &mut ob];
        let mut ends = Vec::new();
        gather_blocked(
            &[(&a, 12), (&b, 3)],
            IndexSlice::List(&list),
            &mut outs,
            |_, r, done| {
                ends.push((r.end, done));
                Ok::<(), ()>(())
            },
        )
        .unwrap();
        let naive = |src: &[u8], rb: usize| -> Vec<u8> {
            list.iter()
                .flat_map(|&i| src[i as usize * rb..(i as usize + 1) * rb].to_vec())
                .collect()
        };
        assert_eq!(oa, naive(&a, 12));
        assert_eq!(ob, naive(&b, 3));
        assert_eq!(ends.last(), Some(&(list.len(), (list.len() * 15) as u64)));
        // An error from the step stops the gather there.
        let mut outs: [&mut [u8]; 2] = [&mut oa, &mut ob];
        let stopped = gather_blocked(
            &[(&a, 12), (&b, 3)],
            IndexSlice::Range { start: 0, end: 10 },
            &mut outs,
            |_, _, _| Err("interrupted"),
        );
        assert_eq!(stopped, Err("interrupted"));
    }
}
