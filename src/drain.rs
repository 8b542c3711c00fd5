//! Draining any iterator of batches (a source that is only iterable, not indexable). The first
//! batch fixes the schema; every later batch is checked against it. With a declared row count
//! the output is allocated once up front; a stream that then yields more or fewer rows is an
//! error, never a silently short or truncated array.

use std::sync::Arc;
use std::time::Instant;

use crate::dtype::DType;
use crate::error::{Error, Result};
use crate::gather::{self, cpu, Strategy};
use crate::memory::{checked_bytes, AllocCounter, HostBuf};
use crate::output::{Backend, Batch, ColumnArray, Materialized, Report};

/// Options for [`drain()`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DrainOptions {
    /// The strategy. `Auto` is `Preallocated` when `rows` is declared and `Concat` otherwise.
    pub strategy: Strategy,
    /// The total rows the stream will yield, if known. Required by `Preallocated`.
    pub rows: Option<usize>,
}

impl Default for DrainOptions {
    fn default() -> Self {
        DrainOptions {
            strategy: Strategy::Auto,
            rows: None,
        }
    }
}

impl DrainOptions {
    /// Options with a strategy and no declared row count.
    pub fn new(strategy: Strategy) -> Self {
        DrainOptions {
            strategy,
            rows: None,
        }
    }

    /// Declares the total row count.
    pub fn rows(mut self, rows: usize) -> Self {
        self.rows = Some(rows);
        self
    }
}

/// Drains a stream of batches into one array per column.
///
/// ```
/// use arraydrain::{drain, Batch, DrainOptions, Strategy};
/// use ndarray::Array2;
///
/// let stream = (0..3).map(|k| Batch::new().with("x", Array2::<f32>::from_elem((2, 5), k as f32)));
/// let out = drain(stream, DrainOptions::new(Strategy::Preallocated).rows(6))?;
/// assert_eq!(out.view::<f32>("x")?.shape(), &[6, 5]);
///
/// // A stream that ends early is an error, not a short array.
/// let short = (0..2).map(|_| Batch::new().with("x", Array2::<f32>::zeros((2, 5))));
/// assert!(drain(short, DrainOptions::new(Strategy::Preallocated).rows(6)).is_err());
/// # Ok::<(), arraydrain::Error>(())
/// ```
///
/// # Errors
/// [`Error::Source`] when the stream yields an error; [`Error::BatchMismatch`] naming the batch
/// and column when a batch disagrees with the first; [`Error::StreamLengthMismatch`] when a
/// declared count is not met exactly; [`Error::StrategyUnavailable`] for `Preallocated` without
/// a declared count or for `Pinned` (a host stream); [`Error::HostAllocation`].
pub fn drain<I, E>(batches: I, options: DrainOptions) -> Result<Materialized>
where
    I: IntoIterator<Item = std::result::Result<Batch, E>>,
    E: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let started = Instant::now();
    let counter = AllocCounter::new();
    let strategy = stream_strategy(&options)?;
    let mut acc = Accumulator::new(strategy);
    let mut template: Vec<Template> = Vec::new();
    let mut rows = 0usize;
    for (k, item) in batches.into_iter().enumerate() {
        let batch = item.map_err(|e| Error::Source {
            batch: k,
            source: e.into(),
        })?;
        if k == 0 {
            template = batch
                .columns()
                .iter()
                .map(|c| (c.name().to_string(), c.dtype(), c.row_shape().to_vec()))
                .collect();
        }
        let n = check_batch(&batch, k, &template)?;
        if let Some(declared) = options.rows.filter(|&d| rows + n > d) {
            return Err(Error::StreamLengthMismatch {
                declared,
                got: rows + n,
                more: true,
            });
        }
        acc.take(batch, &template, rows, options.rows.unwrap_or(0), &counter)?;
        rows += n;
    }
    if let Some(declared) = options.rows.filter(|&d| rows != d) {
        return Err(Error::StreamLengthMismatch {
            declared,
            got: rows,
            more: false,
        });
    }
    let columns = acc.finish(&template, rows, &counter)?;
    let report = Report::new(strategy, Backend::Cpu, rows, &columns, started)
        .with_peak_alloc(counter.peak());
    Ok(Materialized::new(columns, report))
}

/// A column of the first batch: name, dtype, row shape.
type Template = (String, DType, Vec<usize>);

/// What a strategy holds while the stream runs.
enum Accumulator {
    /// `Preallocated`: the output itself, allocated at the first batch.
    Output(Option<Vec<ColumnArray>>),
    /// `Concat` keeps the caller's batches (their bytes counted as held by the strategy) and
    /// `PerBatch` a host copy of each; both concatenate at the end.
    Kept {
        kept: Vec<Kept>,
        batch_bytes: u64,
        host_copies: bool,
    },
}

impl Accumulator {
    fn new(strategy: Strategy) -> Self {
        match strategy {
            Strategy::Preallocated => Accumulator::Output(None),
            s => Accumulator::Kept {
                kept: Vec::new(),
                batch_bytes: 0,
                host_copies: s == Strategy::PerBatch,
            },
        }
    }

    /// Takes one checked batch whose rows start at `at` (`declared`: the output's rows).
    fn take(
        &mut self,
        batch: Batch,
        template: &[Template],
        at: usize,
        declared: usize,
        counter: &Arc<AllocCounter>,
    ) -> Result<()> {
        match self {
            Accumulator::Output(out) => {
                if out.is_none() {
                    *out = Some(preallocate(template, declared, counter)?);
                }
                if let Some(out) = out.as_mut() {
                    copy_at(out, template, &batch, at)?;
                }
            }
            Accumulator::Kept {
                kept,
                batch_bytes,
                host_copies,
            } => {
                if *host_copies {
                    // A host array of each batch, made in the loop; the caller's batch is dropped.
                    let cols = template
                        .iter()
                        .map(|(name, _, _)| {
                            HostBuf::copy_of(batch.column(name)?.as_bytes(), name, Some(counter))
                        })
                        .collect::<Result<Vec<_>>>()?;
                    kept.push(Kept::Host(cols));
                } else {
                    let bytes: u64 = batch
                        .columns()
                        .iter()
                        .map(|c| c.as_bytes().len() as u64)
                        .sum();
                    counter.add(bytes);
                    *batch_bytes += bytes;
                    kept.push(Kept::Batch(batch));
                }
            }
        }
        Ok(())
    }

    /// The output columns of `rows` rows.
    fn finish(
        self,
        template: &[Template],
        rows: usize,
        counter: &Arc<AllocCounter>,
    ) -> Result<Vec<ColumnArray>> {
        match self {
            Accumulator::Output(Some(mut out)) => {
                for o in &mut out {
                    o.storage_mut().finish()?;
                }
                Ok(out)
            }
            // An empty stream: no batch, so no columns.
            Accumulator::Output(None) => Ok(Vec::new()),
            Accumulator::Kept {
                kept, batch_bytes, ..
            } => {
                let specs: Vec<_> = template
                    .iter()
                    .map(|(name, dtype, shape)| (name.as_str(), dtype.clone(), shape.as_slice()))
                    .collect();
                let out =
                    gather::concat_kept(&specs, rows, kept.len(), counter, |k, c| {
                        match &kept[k] {
                            Kept::Batch(batch) => Ok(batch.column(specs[c].0)?.as_bytes()),
                            Kept::Host(cols) => Ok(cols[c].as_bytes()),
                        }
                    })?;
                drop(kept);
                counter.sub(batch_bytes);
                Ok(out)
            }
        }
    }
}

/// The strategy a stream is drained with: `Auto` preallocates when the row count is declared
/// and concatenates otherwise.
fn stream_strategy(options: &DrainOptions) -> Result<Strategy> {
    match (options.strategy, options.rows) {
        (Strategy::Auto, Some(_)) => Ok(Strategy::Preallocated),
        (Strategy::Auto, None) => Ok(Strategy::Concat),
        (Strategy::Preallocated, None) => Err(Error::StrategyUnavailable {
            strategy: "preallocated",
            reason: "a stream needs a declared row count (DrainOptions::rows) to preallocate"
                .into(),
        }),
        (Strategy::Pinned, _) => Err(Error::StrategyUnavailable {
            strategy: "pinned",
            reason: "pinned drains device batches; use the CUDA engine's drain".into(),
        }),
        (s, _) => Ok(s),
    }
}

/// `Preallocated`: the output of `rows` rows for the first batch's columns, allocated once.
fn preallocate(
    template: &[Template],
    rows: usize,
    counter: &Arc<AllocCounter>,
) -> Result<Vec<ColumnArray>> {
    template
        .iter()
        .map(|(name, dtype, shape)| {
            let mut parts = shape.clone();
            parts.extend([dtype.size(), rows]);
            let bytes = checked_bytes(&parts, name)?;
            let buf = HostBuf::counted(bytes, name, counter)?;
            ColumnArray::new(name.as_str(), dtype.clone(), shape, rows, Box::new(buf))
        })
        .collect()
}

/// `Preallocated`: copies `batch` into the output from row `at` on (its rows were checked to fit).
fn copy_at(out: &mut [ColumnArray], template: &[Template], batch: &Batch, at: usize) -> Result<()> {
    for (o, (name, _, _)) in out.iter_mut().zip(template) {
        let src = batch.column(name)?.as_bytes();
        let start = at * o.row_bytes();
        cpu::par_copy(src, &mut o.as_bytes_mut()[start..start + src.len()]);
    }
    Ok(())
}

/// A batch held by `Concat` (as the caller made it) or `PerBatch` (as a host copy).
enum Kept {
    Batch(Batch),
    Host(Vec<HostBuf>),
}

/// One column of a batch as the schema check sees it: name, dtype, row shape, rows.
pub(crate) type ColumnMeta<'c> = (&'c str, DType, &'c [usize], usize);

/// Checks a batch against the first batch's columns; returns its row count.
fn check_batch(batch: &Batch, k: usize, template: &[Template]) -> Result<usize> {
    let columns: Vec<ColumnMeta<'_>> = batch
        .columns()
        .iter()
        .map(|c| (c.name(), c.dtype(), c.row_shape(), c.rows()))
        .collect();
    check_batch_columns(k, &columns, template)
}

/// Checks batch `k`'s columns against the first batch's (names, dtypes, row shapes) and that
/// they share one row count, which it returns. Used for host and device streams alike.
pub(crate) fn check_batch_columns(
    k: usize,
    columns: &[ColumnMeta<'_>],
    template: &[Template],
) -> Result<usize> {
    let mismatch = |column: &str, reason: String| Error::BatchMismatch {
        batch: k,
        column: column.to_string(),
        reason,
    };
    if columns.is_empty() {
        return Err(mismatch("", "the batch has no columns".into()));
    }
    for (name, ..) in columns {
        if !template.iter().any(|(n, _, _)| n == name) {
            return Err(mismatch(name, "column not in the first batch".into()));
        }
    }
    let mut rows = None;
    for (name, dtype, shape) in template {
        let (_, c_dtype, c_shape, c_rows) = columns
            .iter()
            .find(|c| c.0 == name)
            .ok_or_else(|| mismatch(name, "column missing from this batch".into()))?;
        let (c_shape, c_rows) = (*c_shape, *c_rows);
        if c_dtype != dtype {
            return Err(mismatch(
                name,
                format!("dtype {c_dtype} differs from the first batch's {dtype}"),
            ));
        }
        if c_shape != shape.as_slice() {
            return Err(mismatch(
                name,
                format!("row shape {c_shape:?} differs from the first batch's {shape:?}"),
            ));
        }
        match rows {
            None => rows = Some(c_rows),
            Some(r) if r != c_rows => {
                return Err(mismatch(
                    name,
                    format!("{c_rows} rows, but the batch's first column has {r}"),
                ))
            }
            Some(_) => {}
        }
    }
    Ok(rows.unwrap_or(0))
}
