//! Batching: cutting a resolved index list into batches of `batch_size`, optionally dropping a
//! short last batch. Pure arithmetic over the index order; no data is touched here.

use std::ops::Range;

use crate::error::{Error, Result};
use crate::sampler::Indices;

/// The batches of an index list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Batches {
    indices: Indices,
    batch_size: usize,
    drop_last: bool,
}

impl Batches {
    /// Cuts `indices` into batches.
    ///
    /// # Errors
    /// [`Error::ZeroBatchSize`].
    pub fn new(indices: Indices, batch_size: usize, drop_last: bool) -> Result<Self> {
        if batch_size == 0 {
            return Err(Error::ZeroBatchSize);
        }
        Ok(Batches {
            indices,
            batch_size,
            drop_last,
        })
    }

    /// The index list being batched.
    pub fn indices(&self) -> &Indices {
        &self.indices
    }

    /// Rows per full batch.
    pub fn batch_size(&self) -> usize {
        self.batch_size
    }

    /// Whether a short last batch is dropped.
    pub fn drop_last(&self) -> bool {
        self.drop_last
    }

    /// Number of batches.
    pub fn len(&self) -> usize {
        batch_count(self.indices.len(), self.batch_size, self.drop_last)
    }

    /// True when there are no batches.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Rows in the output: the sum of all batch sizes.
    pub fn rows(&self) -> usize {
        rows_kept(self.indices.len(), self.batch_size, self.drop_last)
    }

    /// Positions (into the index list, and so into the output) of batch `k`.
    pub fn range(&self, k: usize) -> Range<usize> {
        let start = k.saturating_mul(self.batch_size).min(self.rows());
        let end = start.saturating_add(self.batch_size).min(self.rows());
        start..end
    }

    /// The output's rows as indices (the index list cut to [`Batches::rows`]).
    pub fn output_indices(&self) -> Indices {
        self.indices.slice(0, self.rows())
    }
}

/// Batches of `batch_size` (≥ 1) over `rows` positions, as PyTorch's `BatchSampler` counts
/// them: a short last batch counts unless `drop_last`.
fn batch_count(rows: usize, batch_size: usize, drop_last: bool) -> usize {
    if drop_last {
        rows / batch_size
    } else {
        rows.div_ceil(batch_size)
    }
}

/// Positions left of `rows` once cut into batches of `batch_size` (≥ 1): all of them, or with
/// `drop_last` only the full batches' (never more than `rows`, so it cannot overflow).
fn rows_kept(rows: usize, batch_size: usize, drop_last: bool) -> usize {
    if drop_last {
        rows - rows % batch_size
    } else {
        rows
    }
}

/// The rows one rank's loader yields from `rows` positions in batches of `batch_size` — every
/// row, or with `drop_last` (the `DataLoader`'s) those of the full batches only — as
/// [`Batches::rows`] counts them, without an index list.
///
/// # Errors
/// [`Error::ZeroBatchSize`].
pub fn kept_rows(rows: usize, batch_size: usize, drop_last: bool) -> Result<usize> {
    if batch_size == 0 {
        return Err(Error::ZeroBatchSize);
    }
    Ok(rows_kept(rows, batch_size, drop_last))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_and_ranges() {
        let idx = Indices::Range { start: 0, end: 10 };
        let b = Batches::new(idx.clone(), 4, false).unwrap();
        assert_eq!((b.len(), b.rows()), (3, 10));
        assert_eq!(b.range(2), 8..10);
        let b = Batches::new(idx.clone(), 4, true).unwrap();
        assert_eq!((b.len(), b.rows()), (2, 8));
        let b = Batches::new(idx, 11, true).unwrap();
        assert_eq!((b.len(), b.rows()), (0, 0));
        assert!(matches!(
            Batches::new(Indices::Range { start: 0, end: 1 }, 0, false),
            Err(Error::ZeroBatchSize)
        ));
    }

    #[test]
    fn kept_rows_at_the_limits() {
        assert_eq!(kept_rows(usize::MAX, 1, true).unwrap(), usize::MAX);
        assert_eq!(kept_rows(usize::MAX, 2, true).unwrap(), usize::MAX - 1);
        assert_eq!(kept_rows(usize::MAX, usize::MAX, true).unwrap(), usize::MAX);
        assert_eq!(kept_rows(usize::MAX - 1, usize::MAX, true).unwrap(), 0);
        assert_eq!(kept_rows(usize::MAX, 7, false).unwrap(), usize::MAX);
        assert_eq!(kept_rows(0, 3, true).unwrap(), 0);
        let err = kept_rows(5, 0, false).unwrap_err();
        assert!(matches!(err, Error::ZeroBatchSize), "{err}");
        assert!(err.to_string().contains("batch"), "{err}");
        // The same count as a batched index list gives.
        let b = Batches::new(Indices::Range { start: 0, end: 10 }, 4, true).unwrap();
        assert_eq!(kept_rows(10, 4, true).unwrap(), b.rows());
    }
}
