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
        let n = self.indices.len();
        if self.drop_last {
            n / self.batch_size
        } else {
            n.div_ceil(self.batch_size)
        }
    }

    /// True when there are no batches.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Rows in the output: the sum of all batch sizes.
    pub fn rows(&self) -> usize {
        if self.drop_last {
            self.len() * self.batch_size
        } else {
            self.indices.len()
        }
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
}
