//! PyTorch keeps two `drop_last` flags apart: `DistributedSampler(drop_last=)` decides whether a
//! rank's shard is padded (by repeating rows from the start) or cut to an even split, and
//! `DataLoader(drop_last=)` decides whether a short last batch is dropped. The loader keeps them
//! apart the same way: [`Loader::shard_drop_last`] and [`Loader::drop_last`], both off by default.
//!
//! The expected orders below are PyTorch's, worked out from `DistributedSampler.__iter__` and
//! `BatchSampler.__iter__` (torch 2.x): 10 rows over 3 ranks, rank 2, batches of 2.
//! - sampler pads: `num_samples = ceil(10 / 3) = 4`, order `0..10` + `[0, 1]`, rank 2 takes
//!   positions 2, 5, 8, 11 → `[2, 5, 8, 1]`;
//! - sampler cuts: `num_samples = ceil((10 - 3) / 3) = 3`, rank 2 takes 2, 5, 8 → `[2, 5, 8]`;
//! - the loader's `drop_last` then drops the last batch when it holds fewer than 2 rows.
//!
//! The real `torch.utils.data` check, under `torchrun`, is in `tests/distributed_launchers.rs`.

use arraydrain::{Loader, Strategy, Table};
use ndarray::Array1;

fn order(table: &Table<'_>, shard_drop_last: bool, drop_last: bool) -> Vec<i64> {
    let loader = Loader::new(table)
        .batch_size(2)
        .shard(2, 3)
        .shard_drop_last(shard_drop_last)
        .drop_last(drop_last);
    let out = loader.materialize(Strategy::Auto).unwrap();
    let got = out
        .view::<i64>("y")
        .unwrap()
        .iter()
        .copied()
        .collect::<Vec<_>>();
    // The batches of the iterator agree with the drained output.
    let mut iterated = Vec::new();
    for b in loader.iter().unwrap() {
        let b = b.unwrap();
        iterated.extend(
            b.column("y")
                .unwrap()
                .view::<i64>()
                .unwrap()
                .iter()
                .copied(),
        );
    }
    assert_eq!(iterated, got);
    got
}

#[test]
fn the_two_drop_last_flags_are_independent_as_in_pytorch() {
    let y = Array1::from_iter(0..10i64);
    let table = Table::builder().view("y", y.view()).build().unwrap();
    assert_eq!(order(&table, false, false), [2, 5, 8, 1]);
    assert_eq!(order(&table, true, false), [2, 5, 8]);
    assert_eq!(order(&table, false, true), [2, 5, 8, 1]);
    assert_eq!(order(&table, true, true), [2, 5]);
    // Defaults are PyTorch's: both off.
    let default = Loader::new(&table).batch_size(2).shard(2, 3);
    assert_eq!(default.batches().unwrap().rows(), 4);
}

#[test]
fn the_loaders_drop_last_does_not_cut_the_shard() {
    // 11 rows over 4 ranks, batches of 3: the padded shard holds 3 rows (one full batch), so the
    // loader's drop_last drops nothing; the sampler's drop_last cuts every shard to 2 rows, and
    // then the loader's drop_last drops that short batch.
    let y = Array1::from_iter(0..11i64);
    let table = Table::builder().view("y", y.view()).build().unwrap();
    let rows = |shard_cut: bool, batch_drop: bool| {
        (0..4)
            .map(|r| {
                Loader::new(&table)
                    .batch_size(3)
                    .shard(r, 4)
                    .shard_drop_last(shard_cut)
                    .drop_last(batch_drop)
                    .batches()
                    .unwrap()
                    .rows()
            })
            .collect::<Vec<_>>()
    };
    assert_eq!(rows(false, false), [3, 3, 3, 3]);
    assert_eq!(rows(false, true), [3, 3, 3, 3]);
    assert_eq!(rows(true, false), [2, 2, 2, 2]);
    assert_eq!(rows(true, true), [0, 0, 0, 0]);
}
