//! The loader: PyTorch `DataLoader`'s counterpart over an indexable [`Table`]. It owns the
//! choices (batch size, order, sharding, the two `drop_last` flags), resolves them into [`Batches`] once, and
//! either yields batch after batch or drains everything into a [`Materialized`] output.

use std::fmt;
use std::sync::{Arc, OnceLock};
use std::time::Instant;

use crate::batch::Batches;
use crate::dtype::DType;
use crate::error::{Error, Result};
use crate::gather::{self, cpu, Progress, Strategy};
use crate::memory::{checked_bytes, HostBuf};
use crate::output::{Backend, Batch, ColumnArray, Materialized, Report};
use crate::sampler::{Indices, Order, Shard};
use crate::table::Table;

/// Batches over a table, in a chosen order.
///
/// ```
/// use arraydrain::{Loader, Strategy, Table};
/// use ndarray::{Array1, Array2};
///
/// let x = Array2::from_shape_fn((10, 4), |(i, j)| (i * 4 + j) as f32);
/// let y = Array1::from_iter(0..10i64);
/// let table = Table::builder().view("x", x.view()).view("y", y.view()).build()?;
///
/// // Iterate like a DataLoader …
/// let loader = Loader::new(&table).batch_size(4).shuffle(42);
/// let sizes: Vec<usize> = loader.iter()?.map(|b| b.map(|b| b.rows().unwrap_or(0))).collect::<Result<_, _>>()?;
/// assert_eq!(sizes, [4, 4, 2]);
///
/// // … or drain everything at once, in the same order.
/// let out = loader.materialize(Strategy::Auto)?;
/// let order = loader.batches()?.output_indices().to_vec();
/// let y_out = out.view::<i64>("y")?;
/// assert!(order.iter().zip(y_out.iter()).all(|(&i, &v)| i as i64 == v));
/// # Ok::<(), arraydrain::Error>(())
/// ```
#[derive(Clone)]
pub struct Loader<'t, 'a> {
    table: &'t Table<'a>,
    batch_size: usize,
    drop_last: bool,
    order: Order,
    shard: Option<(usize, usize)>,
    shard_drop_last: bool,
    progress: Option<Progress>,
    /// The resolved batches, computed once (a shuffle of millions of rows costs milliseconds)
    /// and reset by every builder method.
    resolved: OnceLock<Batches>,
}

impl<'t, 'a> Loader<'t, 'a> {
    /// A loader with PyTorch's defaults: batch size 1, sequential, keep the last batch (and, when
    /// sharded, pad the order to an even split).
    pub fn new(table: &'t Table<'a>) -> Self {
        Loader {
            table,
            batch_size: 1,
            drop_last: false,
            order: Order::Sequential,
            shard: None,
            shard_drop_last: false,
            progress: None,
            resolved: OnceLock::new(),
        }
    }

    /// Rows per batch (checked when batches are made: 0 is [`Error::ZeroBatchSize`]).
    pub fn batch_size(mut self, batch_size: usize) -> Self {
        self.batch_size = batch_size;
        self.resolved = OnceLock::new();
        self
    }

    /// Drop a short last batch, as `DataLoader(drop_last=True)` does. Batching only: how a shard
    /// is split is [`Loader::shard_drop_last`].
    pub fn drop_last(mut self, drop_last: bool) -> Self {
        self.drop_last = drop_last;
        self.resolved = OnceLock::new();
        self
    }

    /// The base order.
    pub fn order(mut self, order: Order) -> Self {
        self.order = order;
        self.resolved = OnceLock::new();
        self
    }

    /// A seeded shuffle ([`Order::Shuffle`]).
    pub fn shuffle(self, seed: u64) -> Self {
        self.order(Order::Shuffle { seed })
    }

    /// Explicit row indices ([`Order::Indices`]); checked when batches are made.
    pub fn indices(self, indices: impl Into<Arc<[u64]>>) -> Self {
        self.order(Order::Indices(indices.into()))
    }

    /// This rank's shard of the order (checked when batches are made).
    pub fn shard(mut self, rank: usize, world_size: usize) -> Self {
        self.shard = Some((rank, world_size));
        self.resolved = OnceLock::new();
        self
    }

    /// With sharding, cut the order down to an even split instead of padding it by wrapping
    /// around, as `DistributedSampler(drop_last=True)` does. Independent of
    /// [`Loader::drop_last`], which drops a short last batch; both are off by default, as in
    /// PyTorch.
    pub fn shard_drop_last(mut self, shard_drop_last: bool) -> Self {
        self.shard_drop_last = shard_drop_last;
        self.resolved = OnceLock::new();
        self
    }

    /// Calls `f(rows_done, bytes_done)` as a drain proceeds.
    pub fn on_progress(mut self, f: impl Fn(usize, u64) + Send + Sync + 'static) -> Self {
        self.progress = Some(Arc::new(f));
        self
    }

    /// The table.
    pub fn table(&self) -> &'t Table<'a> {
        self.table
    }

    /// Resolves and validates the order and batching.
    ///
    /// # Errors
    /// [`Error::ZeroBatchSize`], [`Error::ZeroWorldSize`], [`Error::RankOutOfRange`],
    /// [`Error::IndexOutOfBounds`].
    pub fn batches(&self) -> Result<Batches> {
        if let Some(b) = self.resolved.get() {
            return Ok(b.clone());
        }
        let shard = self.shard.map(|(r, w)| Shard::new(r, w)).transpose()?;
        if self.batch_size == 0 {
            return Err(Error::ZeroBatchSize);
        }
        let indices =
            Indices::resolve(&self.order, shard, self.shard_drop_last, self.table.rows())?;
        let batches = Batches::new(indices, self.batch_size, self.drop_last)?;
        Ok(self.resolved.get_or_init(|| batches).clone())
    }

    /// Iterates batch by batch; each batch holds one array per column.
    ///
    /// # Errors
    /// As [`Loader::batches`]; each item may fail with [`Error::HostAllocation`].
    pub fn iter(&self) -> Result<BatchIter<'_, 'a>> {
        Ok(BatchIter {
            table: self.table,
            batches: self.batches()?,
            next: 0,
        })
    }

    /// Name, dtype, row shape and row count of each output column (for preparing an output of
    /// one's own storage, e.g. memory-mapped files, for [`Loader::materialize_into`]).
    ///
    /// # Errors
    /// As [`Loader::batches`].
    pub fn output_specs(&self) -> Result<Vec<OutputSpec>> {
        let rows = self.batches()?.rows();
        Ok(self
            .table
            .columns()
            .iter()
            .map(|c| OutputSpec {
                name: c.name().to_string(),
                dtype: c.dtype(),
                row_shape: c.row_shape().to_vec(),
                rows,
            })
            .collect())
    }

    /// Drains every batch into a new output with `strategy`, on the CPU.
    ///
    /// `Auto` is `Preallocated` here; `Pinned` needs a device table (see the `cuda` module).
    ///
    /// # Errors
    /// As [`Loader::batches`]; [`Error::HostAllocation`] when the output cannot be allocated;
    /// [`Error::StrategyUnavailable`] for `Pinned`.
    pub fn materialize(&self, strategy: Strategy) -> Result<Materialized> {
        let batches = self.batches()?;
        gather::run_cpu(self.table, &batches, strategy, self.progress.as_ref())
    }

    /// Drains again into an existing output (reusing its allocation, whatever its storage),
    /// with the preallocated gather. The output must have this loader's columns and rows.
    ///
    /// # Errors
    /// As [`Loader::batches`]; [`Error::OutputMismatch`] or [`TableError::UnknownColumn`](crate::TableError::UnknownColumn) when the
    /// output does not fit; storage errors (I/O of a mapped file).
    pub fn materialize_into(&self, out: &mut Materialized) -> Result<Report> {
        let started = Instant::now();
        let batches = self.batches()?;
        gather::check_table_output(self.table, batches.rows(), out.columns())?;
        gather::fill_preallocated(
            self.table,
            &batches,
            out.columns_mut(),
            self.progress.as_ref(),
        )?;
        let report = Report::new(
            Strategy::Preallocated,
            Backend::Cpu,
            batches.rows(),
            out.columns(),
            started,
        );
        out.set_report(report.clone());
        Ok(report)
    }
}

impl fmt::Debug for Loader<'_, '_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Loader")
            .field("rows", &self.table.rows())
            .field("batch_size", &self.batch_size)
            .field("drop_last", &self.drop_last)
            .field("order", &self.order.name())
            .field("shard", &self.shard)
            .field("shard_drop_last", &self.shard_drop_last)
            .finish()
    }
}

/// Describes one output column.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutputSpec {
    /// Column name.
    pub name: String,
    /// Element type.
    pub dtype: DType,
    /// Shape of one row.
    pub row_shape: Vec<usize>,
    /// Output rows.
    pub rows: usize,
}

impl OutputSpec {
    /// Total bytes of the column.
    ///
    /// # Errors
    /// [`Error::HostAllocation`] when the size overflows.
    pub fn bytes(&self) -> Result<usize> {
        let mut parts = self.row_shape.clone();
        parts.extend([self.dtype.size(), self.rows]);
        checked_bytes(&parts, &self.name)
    }
}

impl Materialized {
    /// An output made of columns prepared by the caller (any storage), to be filled by
    /// [`Loader::materialize_into`]. Its report is empty until then.
    pub fn from_columns(columns: Vec<ColumnArray>) -> Self {
        let rows = columns.first().map_or(0, |c| c.rows());
        let mut report = Report::new(
            Strategy::Preallocated,
            Backend::Cpu,
            rows,
            &columns,
            std::time::Instant::now(),
        )
        .with_bytes(0);
        report.elapsed = std::time::Duration::ZERO;
        Materialized::new(columns, report)
    }
}

/// Yields a loader's batches in order.
#[derive(Debug)]
pub struct BatchIter<'t, 'a> {
    table: &'t Table<'a>,
    batches: Batches,
    next: usize,
}

impl Iterator for BatchIter<'_, '_> {
    type Item = Result<Batch>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.next >= self.batches.len() {
            return None;
        }
        let k = self.next;
        self.next += 1;
        let r = self.batches.range(k);
        let idx = self.batches.indices().view(r.start, r.end);
        let make = || -> Result<Batch> {
            let mut batch = Batch::new();
            for col in self.table.columns() {
                let bytes = checked_bytes(&[col.row_bytes(), idx.len()], col.name())?;
                let mut buf = HostBuf::zeroed(bytes, col.name())?;
                cpu::par_gather(col.bytes(), col.row_bytes(), idx, buf.as_bytes_mut());
                batch.push(ColumnArray::new(
                    col.name(),
                    col.dtype(),
                    col.row_shape(),
                    idx.len(),
                    Box::new(buf),
                )?)?;
            }
            Ok(batch)
        };
        Some(make())
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        let left = self.batches.len() - self.next;
        (left, Some(left))
    }
}

impl ExactSizeIterator for BatchIter<'_, '_> {}
