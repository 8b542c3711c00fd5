//! Index orders: which table rows the loader yields, in which order. Sequential, a seeded
//! shuffle, explicit indices, and sharding by `(rank, world_size)` as PyTorch's
//! `DistributedSampler` does it. An order is resolved and validated once against the row count;
//! the gather stages rely on every index being in range.

use std::sync::Arc;

use crate::error::{Error, Result};

/// The base order of rows, before sharding.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Order {
    /// Rows `0, 1, …, rows-1`.
    Sequential,
    /// A seeded permutation of all rows; see [`shuffled`] for the exact algorithm.
    Shuffle {
        /// The seed; the same seed gives the same permutation on every platform and backend.
        seed: u64,
    },
    /// Exactly these rows, in this order; repeats are allowed.
    Indices(Arc<[u64]>),
}

impl Order {
    /// Explicit indices (a convenience over `Order::Indices(v.into())`).
    pub fn indices(indices: impl Into<Arc<[u64]>>) -> Self {
        Order::Indices(indices.into())
    }

    /// A short description (`sequential`, `shuffle`, `indices`).
    pub fn name(&self) -> &'static str {
        match self {
            Order::Sequential => "sequential",
            Order::Shuffle { .. } => "shuffle",
            Order::Indices(_) => "indices",
        }
    }
}

/// The most ranks a sharded order may have: far above any run (a world size is one process per
/// device), and low enough that everything derived from it (part names, a manifest's checks,
/// per-rank arithmetic) stays small. Larger values are refused before anything is allocated.
pub const MAX_WORLD_SIZE: usize = 1 << 20;

/// One rank's share of the order, with PyTorch `DistributedSampler` semantics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shard {
    /// This process's rank, `0..world_size`.
    pub rank: usize,
    /// Number of ranks.
    pub world_size: usize,
}

impl Shard {
    /// Validates and builds a shard.
    ///
    /// # Errors
    /// [`Error::ZeroWorldSize`], [`Error::WorldSizeTooLarge`] (above [`MAX_WORLD_SIZE`]),
    /// [`Error::RankOutOfRange`].
    pub fn new(rank: usize, world_size: usize) -> Result<Self> {
        if world_size == 0 {
            return Err(Error::ZeroWorldSize);
        }
        if world_size > MAX_WORLD_SIZE {
            return Err(Error::WorldSizeTooLarge {
                world_size,
                max: MAX_WORLD_SIZE,
            });
        }
        if rank >= world_size {
            return Err(Error::RankOutOfRange { rank, world_size });
        }
        Ok(Shard { rank, world_size })
    }

    /// How `DistributedSampler` splits an order of `len` positions over this shard's ranks:
    /// padded by wrapping around to a multiple of the world size, or, with `drop_last` (the
    /// sampler's, not the `DataLoader`'s), cut down to one.
    ///
    /// # Errors
    /// [`Error::SizeOverflow`] when the padded length overflows `usize`.
    pub fn split(self, len: usize, drop_last: bool) -> Result<ShardSplit> {
        let w = self.world_size;
        let per_rank = if drop_last && len % w != 0 {
            // ceil((len - w) / w) == floor(len / w) for len % w != 0.
            len / w
        } else {
            len.div_ceil(w)
        };
        let total = per_rank.checked_mul(w).ok_or_else(|| Error::SizeOverflow {
            what: format!("an order of {len} positions padded to a multiple of {w} ranks"),
        })?;
        Ok(ShardSplit {
            len,
            per_rank,
            total,
        })
    }

    /// The positions (into an order of `len`) this rank takes, in order: `rank, rank +
    /// world_size, …` below the split's total, wrapping around the order for the padding
    /// (repeatedly, when the order is shorter than the padding).
    ///
    /// # Errors
    /// As [`Shard::split`].
    pub fn positions(
        self,
        len: usize,
        drop_last: bool,
    ) -> Result<(impl ExactSizeIterator<Item = usize>, usize)> {
        let split = self.split(len, drop_last)?;
        let count = split.per_rank;
        let (rank, w) = (self.rank, self.world_size);
        // rank < w, so position `rank + k·w` for k < per_rank is below total (checked above).
        let positions = (0..count).map(move |k| (rank + k * w) % len.max(1));
        Ok((positions, count))
    }

    /// This rank's share of `order` (any values: dataset indices, PyTorch's permutation), as
    /// `DistributedSampler` takes it.
    ///
    /// # Errors
    /// As [`Shard::split`]; [`Error::HostAllocation`] when the share cannot be allocated.
    pub fn take<T: Copy>(self, order: &[T], drop_last: bool) -> Result<Vec<T>> {
        let (positions, count) = self.positions(order.len(), drop_last)?;
        let mut out = Vec::new();
        out.try_reserve_exact(count).map_err(|e| {
            Error::alloc(
                count.saturating_mul(std::mem::size_of::<T>()),
                "the shard's index list",
                e,
            )
        })?;
        out.extend(positions.map(|p| order[p]));
        Ok(out)
    }
}

/// The sizes of one `DistributedSampler` split (see [`Shard::split`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ShardSplit {
    /// Length of the order before the split.
    pub len: usize,
    /// Positions each rank takes.
    pub per_rank: usize,
    /// Length of the padded (or cut) order: `per_rank × world_size`.
    pub total: usize,
}

impl ShardSplit {
    /// Positions repeated from the order's start to pad it (0 when cut or even).
    pub fn padding(&self) -> usize {
        self.total.saturating_sub(self.len)
    }
}

/// A resolved, validated index list: every entry is `< rows` of the table it was made for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Indices {
    /// Rows `start..end`, contiguous (the fast path: a plain copy).
    Range {
        /// First row.
        start: usize,
        /// One past the last row.
        end: usize,
    },
    /// An explicit list.
    List(Arc<[u64]>),
}

impl Indices {
    /// Number of indices.
    pub fn len(&self) -> usize {
        match self {
            Indices::Range { start, end } => end - start,
            Indices::List(l) => l.len(),
        }
    }

    /// True when there are none.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The `i`-th index (`None` past the end).
    pub fn get(&self, i: usize) -> Option<usize> {
        match self {
            Indices::Range { start, end } => (start + i < *end).then_some(start + i),
            // Entries were checked to be < rows (a usize) at construction.
            Indices::List(l) => l.get(i).map(|&v| v as usize),
        }
    }

    /// The indices `from..to` of this list as a list of their own.
    pub fn slice(&self, from: usize, to: usize) -> Indices {
        match self {
            Indices::Range { start, .. } => Indices::Range {
                start: start + from,
                end: start + to,
            },
            Indices::List(l) => Indices::List(l[from..to].into()),
        }
    }

    /// A borrowed view of the indices `from..to` (no copy).
    pub fn view(&self, from: usize, to: usize) -> IndexSlice<'_> {
        match self {
            Indices::Range { start, .. } => IndexSlice::Range {
                start: start + from,
                end: start + to,
            },
            Indices::List(l) => IndexSlice::List(&l[from..to]),
        }
    }

    /// All indices as a vector of `u64` (for device upload, tests and export).
    pub fn to_vec(&self) -> Vec<u64> {
        match self {
            Indices::Range { start, end } => (*start as u64..*end as u64).collect(),
            Indices::List(l) => l.to_vec(),
        }
    }

    /// Resolves `order` (then `shard`) against a table of `rows` rows.
    ///
    /// Sharding follows PyTorch's `DistributedSampler`: the order is padded by wrapping around to
    /// a multiple of `world_size` (or, with `shard_drop_last` — the sampler's `drop_last`, not
    /// the `DataLoader`'s — cut down to one), then rank `r` takes positions
    /// `r, r + world_size, r + 2·world_size, …`.
    ///
    /// # Errors
    /// [`Error::IndexOutOfBounds`] for an explicit index `>= rows`; [`Error::HostAllocation`]
    /// when a shuffled or sharded index list cannot be allocated; [`Error::SizeOverflow`] when
    /// the padded length of a sharded order overflows.
    pub fn resolve(
        order: &Order,
        shard: Option<Shard>,
        shard_drop_last: bool,
        rows: usize,
    ) -> Result<Self> {
        let base = match order {
            Order::Sequential => Indices::Range {
                start: 0,
                end: rows,
            },
            Order::Shuffle { seed } => Indices::List(try_shuffled(rows, *seed)?.into()),
            Order::Indices(list) => {
                if let Some((position, &index)) =
                    list.iter().enumerate().find(|(_, &i)| i >= rows as u64)
                {
                    return Err(Error::IndexOutOfBounds {
                        index,
                        position,
                        rows,
                    });
                }
                Indices::List(Arc::clone(list))
            }
        };
        let Some(shard) = shard else {
            return Ok(base);
        };
        let (positions, count) = shard.positions(base.len(), shard_drop_last)?;
        let mut list = index_vec(count, "the shard's index list")?;
        list.extend(positions.map(|p| base.get(p).map_or(0, |v| v as u64)));
        Ok(Indices::List(list.into()))
    }
}

/// A borrowed run of validated indices.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IndexSlice<'i> {
    /// Rows `start..end`.
    Range {
        /// First row.
        start: usize,
        /// One past the last row.
        end: usize,
    },
    /// Explicit rows.
    List(&'i [u64]),
}

impl IndexSlice<'_> {
    /// Number of indices.
    pub fn len(&self) -> usize {
        match self {
            IndexSlice::Range { start, end } => end - start,
            IndexSlice::List(l) => l.len(),
        }
    }

    /// True when there are none.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The indices `from..to` of this run (no copy).
    pub fn view(self, from: usize, to: usize) -> Self {
        match self {
            IndexSlice::Range { start, .. } => IndexSlice::Range {
                start: start + from,
                end: start + to,
            },
            IndexSlice::List(l) => IndexSlice::List(&l[from..to]),
        }
    }

    /// Splits at position `mid`.
    pub fn split_at(self, mid: usize) -> (Self, Self) {
        match self {
            IndexSlice::Range { start, end } => (
                IndexSlice::Range {
                    start,
                    end: start + mid,
                },
                IndexSlice::Range {
                    start: start + mid,
                    end,
                },
            ),
            IndexSlice::List(l) => {
                let (a, b) = l.split_at(mid);
                (IndexSlice::List(a), IndexSlice::List(b))
            }
        }
    }
}

/// An empty vector with room for `len` indices, or an error when that memory cannot be had
/// (never an abort).
fn index_vec(len: usize, what: &str) -> Result<Vec<u64>> {
    let mut v = Vec::new();
    v.try_reserve_exact(len)
        .map_err(|e| Error::alloc(len.saturating_mul(8), what, e))?;
    Ok(v)
}

/// [`shuffled`], with the index list's allocation failing as an [`Error::HostAllocation`]
/// instead of aborting.
///
/// # Errors
/// [`Error::HostAllocation`] when `rows` indices do not fit in memory.
pub fn try_shuffled(rows: usize, seed: u64) -> Result<Vec<u64>> {
    let mut v = index_vec(rows, "the shuffled order")?;
    v.extend(0..rows as u64);
    shuffle_in_place(&mut v, seed);
    Ok(v)
}

/// The seeded permutation of `0..rows` used by [`Order::Shuffle`].
///
/// The algorithm, fixed so every platform and backend yields the same order: a SplitMix64
/// generator seeded with `seed` drives a Fisher–Yates shuffle of `0..rows` that walks `i` from
/// `rows-1` down to `1` and swaps position `i` with `j` drawn uniformly from `0..=i` by Lemire's
/// multiply-and-reject method on 64-bit outputs.
pub fn shuffled(rows: usize, seed: u64) -> Vec<u64> {
    let mut v: Vec<u64> = (0..rows as u64).collect();
    shuffle_in_place(&mut v, seed);
    v
}

fn shuffle_in_place(v: &mut [u64], seed: u64) {
    let mut rng = SplitMix64(seed);
    for i in (1..v.len()).rev() {
        let j = rng.below(i as u64 + 1) as usize;
        v.swap(i, j);
    }
}

struct SplitMix64(u64);

impl SplitMix64 {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (n ≥ 1), unbiased (Lemire 2019).
    fn below(&mut self, n: u64) -> u64 {
        let mut m = (self.next() as u128) * (n as u128);
        if (m as u64) < n {
            let threshold = n.wrapping_neg() % n;
            while (m as u64) < threshold {
                m = (self.next() as u128) * (n as u128);
            }
        }
        (m >> 64) as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shuffle_is_a_fixed_permutation() {
        let a = shuffled(1000, 7);
        let mut sorted = a.clone();
        sorted.sort_unstable();
        assert_eq!(sorted, (0..1000).collect::<Vec<u64>>());
        assert_eq!(a, shuffled(1000, 7));
        assert_ne!(a, shuffled(1000, 8));
        // Pinned values (checked against an independent Python transcription of the documented
        // algorithm): the algorithm is part of the contract.
        assert_eq!(shuffled(8, 0), vec![1, 2, 6, 5, 4, 0, 3, 7]);
    }

    #[test]
    fn huge_orders_are_errors_not_aborts() {
        let s = Shard::new(0, 2).unwrap();
        // usize::MAX rows padded to a multiple of 2 ranks overflows.
        assert!(matches!(
            Indices::resolve(&Order::Sequential, Some(s), false, usize::MAX),
            Err(Error::SizeOverflow { .. })
        ));
        // 2^61 indices (16 EiB) cannot be allocated.
        assert!(matches!(
            Indices::resolve(&Order::Shuffle { seed: 1 }, None, false, 1 << 61),
            Err(Error::HostAllocation { .. })
        ));
        assert_eq!(try_shuffled(8, 0).unwrap(), shuffled(8, 0));
    }

    #[test]
    fn shards_match_distributed_sampler() {
        // torch DistributedSampler(range(10), num_replicas=4, shuffle=False):
        // rank 0 -> [0, 4, 8], rank 1 -> [1, 5, 9], rank 2 -> [2, 6, 0], rank 3 -> [3, 7, 1]
        let expect = [[0, 4, 8], [1, 5, 9], [2, 6, 0], [3, 7, 1]];
        for (rank, e) in expect.iter().enumerate() {
            let s = Shard::new(rank, 4).unwrap();
            let got = Indices::resolve(&Order::Sequential, Some(s), false, 10).unwrap();
            assert_eq!(got.to_vec(), e.to_vec());
        }
        // drop_last=True: total 8 -> rank r takes r, r+4.
        let s = Shard::new(3, 4).unwrap();
        let got = Indices::resolve(&Order::Sequential, Some(s), true, 10).unwrap();
        assert_eq!(got.to_vec(), vec![3, 7]);
        // Padding longer than the data wraps repeatedly: 2 rows over 5 ranks.
        let all: Vec<u64> = (0..5)
            .flat_map(|r| {
                Indices::resolve(
                    &Order::Sequential,
                    Some(Shard::new(r, 5).unwrap()),
                    false,
                    2,
                )
                .unwrap()
                .to_vec()
            })
            .collect();
        assert_eq!(all, vec![0, 1, 0, 1, 0]);
    }

    #[test]
    fn split_at_the_limits() {
        let max = MAX_WORLD_SIZE;
        // Padding usize::MAX positions to a multiple of 2 (or of the largest world) overflows;
        // the error names the sizes.
        for w in [2, 7, max] {
            let err = Shard::new(0, w)
                .unwrap()
                .split(usize::MAX, false)
                .unwrap_err();
            assert!(matches!(err, Error::SizeOverflow { .. }), "{err}");
            assert!(err.to_string().contains(&w.to_string()), "{err}");
        }
        // Cutting never overflows, nor does a split that is already even.
        let s = Shard::new(max - 1, max)
            .unwrap()
            .split(usize::MAX, true)
            .unwrap();
        assert_eq!(s.per_rank, usize::MAX / max);
        assert_eq!(s.total, usize::MAX / max * max);
        assert_eq!(s.padding(), 0);
        let s = Shard::new(0, 1).unwrap().split(usize::MAX, false).unwrap();
        assert_eq!((s.per_rank, s.total), (usize::MAX, usize::MAX));
        // The largest order that pads without overflow: total is the largest multiple of w.
        let w = 3usize;
        let top = usize::MAX - usize::MAX % w; // a multiple of 3
        let s = Shard::new(2, w).unwrap().split(top - 1, false).unwrap();
        assert_eq!((s.total, s.padding()), (top, 1));
        // The last rank's last position of that split is in range, and wraps for the padding.
        let (mut pos, count) = Shard::new(2, w).unwrap().positions(top - 1, false).unwrap();
        assert_eq!(count, top / w);
        assert_eq!(pos.nth(count - 1), Some(0));
        // Empty orders split into nothing; world sizes past the limit are refused first.
        let s = Shard::new(0, 4).unwrap().split(0, false).unwrap();
        assert_eq!((s.per_rank, s.total), (0, 0));
        assert!(matches!(
            Shard::new(0, max + 1),
            Err(Error::WorldSizeTooLarge { .. })
        ));
    }

    #[test]
    fn take_shards_any_values() {
        // torch DistributedSampler(range(10), num_replicas=4) over a permutation: rank 2 takes
        // positions 2, 6 and (padding) 10 % 10 = 0.
        let perm = [9i64, 3, 7, 1, 0, 2, 8, 4, 6, 5];
        let s = Shard::new(2, 4).unwrap();
        assert_eq!(s.take(&perm, false).unwrap(), vec![7, 8, 9]);
        assert_eq!(s.take(&perm, true).unwrap(), vec![7, 8]);
        assert!(s.take::<i64>(&[], false).unwrap().is_empty());
    }
}
