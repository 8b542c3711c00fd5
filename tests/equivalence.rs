//! The central property: every strategy, the loader's iteration and `drain` produce exactly the
//! bytes of a deliberately naive reference gather, for random tables, orders and batchings.

use std::sync::Arc;

use arraydrain::Strategy as Way;
use arraydrain::{
    drain, Batch, DType, DrainOptions, Indices, Loader, Materialized, Order, Shard, Table,
};
use proptest::prelude::*;

/// A random column: name, dtype, row shape, rows, bytes.
#[derive(Debug, Clone)]
struct ColSpec {
    dtype: DType,
    row_shape: Vec<usize>,
    bytes: Vec<u8>,
}

#[derive(Debug, Clone)]
enum OrderSpec {
    Sequential,
    Shuffle(u64),
    Indices(Vec<u64>),
}

#[derive(Debug, Clone)]
struct Case {
    rows: usize,
    cols: Vec<ColSpec>,
    order: OrderSpec,
    shard: Option<(usize, usize)>,
    batch_size: usize,
    drop_last: bool,
    shard_drop_last: bool,
}

/// Every numeric dtype and opaque ones of odd sizes (3, 12 and 0 bytes, a big-endian `>f8`):
/// the gather moves any row size alike.
fn dtypes() -> Vec<DType> {
    let opaque = [
        "'|S3'",
        "'<U3'",
        "[]",
        "'>f8'",
        "[('a', '<i2'), ('b', '|V5')]",
    ]
    .map(|d| DType::Opaque(arraydrain::dtype::Opaque::new(d).unwrap()));
    DType::ALL.into_iter().chain(opaque).collect()
}

fn col_spec(rows: usize) -> impl Strategy<Value = ColSpec> {
    (
        prop::sample::select(dtypes()),
        prop::collection::vec(0usize..4, 0..3),
    )
        .prop_flat_map(move |(dtype, row_shape)| {
            let n = rows * row_shape.iter().product::<usize>() * dtype.size();
            prop::collection::vec(any::<u8>(), n).prop_map(move |bytes| ColSpec {
                dtype: dtype.clone(),
                row_shape: row_shape.clone(),
                bytes,
            })
        })
}

fn case() -> impl Strategy<Value = Case> {
    (0usize..300).prop_flat_map(|rows| {
        let order = prop_oneof![
            Just(OrderSpec::Sequential),
            any::<u64>().prop_map(OrderSpec::Shuffle),
            if rows == 0 {
                Just(Vec::new()).boxed()
            } else {
                prop::collection::vec(0..rows as u64, 0..400).boxed()
            }
            .prop_map(OrderSpec::Indices),
        ];
        let shard = prop_oneof![
            Just(None),
            (1usize..5)
                .prop_flat_map(|w| (0..w, Just(w)))
                .prop_map(Some)
        ];
        (
            Just(rows),
            prop::collection::vec(col_spec(rows), 1..4),
            order,
            shard,
            1usize..(rows + 6),
            any::<bool>(),
            any::<bool>(),
        )
            .prop_map(
                |(rows, cols, order, shard, batch_size, drop_last, shard_drop_last)| Case {
                    rows,
                    cols,
                    order,
                    shard,
                    batch_size,
                    drop_last,
                    shard_drop_last,
                },
            )
    })
}

fn table(case: &Case) -> Table<'_> {
    let cols = case
        .cols
        .iter()
        .enumerate()
        .map(|(i, c)| {
            arraydrain::Column::from_bytes(
                format!("c{i}"),
                c.dtype.clone(),
                &c.row_shape,
                case.rows,
                &c.bytes,
            )
            .unwrap()
        })
        .collect();
    Table::new(cols).unwrap()
}

fn loader<'t, 'a>(case: &Case, table: &'t Table<'a>) -> Loader<'t, 'a> {
    let order = match &case.order {
        OrderSpec::Sequential => Order::Sequential,
        OrderSpec::Shuffle(seed) => Order::Shuffle { seed: *seed },
        OrderSpec::Indices(v) => Order::Indices(Arc::from(v.as_slice())),
    };
    let mut l = Loader::new(table)
        .batch_size(case.batch_size)
        .drop_last(case.drop_last)
        .shard_drop_last(case.shard_drop_last)
        .order(order);
    if let Some((rank, world)) = case.shard {
        l = l.shard(rank, world);
    }
    l
}

/// The naive reference: the base order written out by hand, sharded as DistributedSampler does
/// (pad by wrapping, or cut with the sampler's drop_last; rank takes every world-th), batched
/// (dropping a short last batch with the loader's drop_last), and each row's bytes copied one
/// at a time.
fn naive(case: &Case) -> Vec<Vec<u8>> {
    let base: Vec<u64> = match &case.order {
        OrderSpec::Sequential => (0..case.rows as u64).collect(),
        OrderSpec::Shuffle(seed) => arraydrain::sampler::shuffled(case.rows, *seed),
        OrderSpec::Indices(v) => v.clone(),
    };
    let order: Vec<u64> = match case.shard {
        None => base,
        Some((rank, world)) => {
            let n = base.len();
            let per = if case.shard_drop_last && n % world != 0 {
                n / world
            } else {
                n.div_ceil(world)
            };
            let total = per * world;
            let mut padded = base.clone();
            while padded.len() < total {
                let need = total - padded.len();
                padded.extend(base.iter().take(need).copied());
            }
            padded.truncate(total);
            padded.iter().skip(rank).step_by(world).copied().collect()
        }
    };
    let mut kept = Vec::new();
    for batch in order.chunks(case.batch_size) {
        if case.drop_last && batch.len() < case.batch_size {
            break;
        }
        kept.extend_from_slice(batch);
    }
    case.cols
        .iter()
        .map(|c| {
            let rb = c.row_shape.iter().product::<usize>() * c.dtype.size();
            let mut out = Vec::new();
            for &i in &kept {
                for b in 0..rb {
                    out.push(c.bytes[i as usize * rb + b]);
                }
            }
            out
        })
        .collect()
}

fn assert_output(out: &Materialized, expected: &[Vec<u8>], case: &Case, what: &str) {
    assert_eq!(out.columns().len(), expected.len(), "{what}: column count");
    for (i, (c, e)) in out.columns().iter().zip(expected).enumerate() {
        assert_eq!(c.name(), format!("c{i}"), "{what}: column order");
        assert_eq!(c.dtype(), case.cols[i].dtype, "{what}: dtype");
        assert_eq!(
            c.row_shape(),
            case.cols[i].row_shape.as_slice(),
            "{what}: row shape"
        );
        assert!(
            c.as_bytes() == e.as_slice(),
            "{what}: column {i} bytes differ"
        );
    }
}

/// Bytes of one parallel gather task and of one preallocated block, as in `src/gather/`
/// (`cpu::TASK_BYTES`, `BLOCK_BYTES`): the large cases below exceed both, so the gather splits
/// each block into many parallel tasks and the output into several blocks.
const TASK_BYTES: usize = 256 << 10;
const BLOCK_BYTES: usize = 32 << 20;

/// Large cases: one or two columns of 1,400-1,700-byte rows, 25,000-30,000 rows (over 35 MB
/// per column), shuffled or explicit orders, filled from a seed (not drawn byte by byte).
fn big_case() -> impl Strategy<Value = Case> {
    (
        25_000usize..30_000,
        prop::collection::vec((1_400usize..1_700, any::<u64>()), 1..3),
        any::<u64>(),
        any::<bool>(),
        1usize..1_000,
        any::<bool>(),
    )
        .prop_map(|(rows, widths, seed, explicit, batch_size, drop_last)| {
            let mut z = seed | 1;
            let mut next = move || {
                z ^= z << 13;
                z ^= z >> 7;
                z ^= z << 17;
                z
            };
            let cols = widths
                .iter()
                .map(|&(width, s)| {
                    let mut x = s | 1;
                    let bytes = (0..rows * width)
                        .map(|_| {
                            x ^= x << 13;
                            x ^= x >> 7;
                            x ^= x << 17;
                            x as u8
                        })
                        .collect();
                    ColSpec {
                        dtype: DType::U8,
                        row_shape: vec![width],
                        bytes,
                    }
                })
                .collect();
            let order = if explicit {
                // Repeats and gaps, as an explicit order may have.
                OrderSpec::Indices((0..rows + 777).map(|_| next() % rows as u64).collect())
            } else {
                OrderSpec::Shuffle(seed)
            };
            Case {
                rows,
                cols,
                order,
                shard: None,
                batch_size,
                drop_last,
                shard_drop_last: false,
            }
        })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 4, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn large_outputs_through_the_parallel_and_multi_block_gather_equal_the_naive_one(case in big_case()) {
        let table = table(&case);
        let loader = loader(&case, &table);
        let expected = naive(&case);
        let width = case.cols[0].row_shape[0];
        let out_rows = expected[0].len() / width;
        // The paths this test exists for: many tasks per block, several blocks.
        prop_assert!(out_rows > TASK_BYTES / width);
        prop_assert!(table.row_bytes() * out_rows > BLOCK_BYTES, "{} bytes", table.row_bytes() * out_rows);
        for strategy in [Way::Concat, Way::PerBatch, Way::Preallocated, Way::Auto] {
            let out = loader.materialize(strategy).unwrap();
            assert_output(&out, &expected, &case, strategy.name());
        }
        let mut out = loader.materialize(Way::Preallocated).unwrap();
        for c in out.columns_mut() {
            c.as_bytes_mut().fill(0xEE);
        }
        loader.materialize_into(&mut out).unwrap();
        assert_output(&out, &expected, &case, "materialize_into");
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn every_strategy_equals_the_naive_gather(case in case()) {
        let table = table(&case);
        let loader = loader(&case, &table);
        let expected = naive(&case);
        for strategy in [Way::Concat, Way::PerBatch, Way::Preallocated, Way::Auto] {
            let out = loader.materialize(strategy).unwrap();
            assert_output(&out, &expected, &case, strategy.name());
            let row_bytes = case.cols[0].row_shape.iter().product::<usize>() * case.cols[0].dtype.size();
            let rows = expected.first().map_or(0, |e| e.len() / row_bytes.max(1));
            if row_bytes > 0 {
                prop_assert_eq!(out.rows(), rows);
            }
        }
        // Draining again into a reused, poisoned output.
        let mut out = loader.materialize(Way::Preallocated).unwrap();
        for c in out.columns_mut() {
            c.as_bytes_mut().fill(0xEE);
        }
        loader.materialize_into(&mut out).unwrap();
        assert_output(&out, &expected, &case, "materialize_into");
    }

    #[test]
    fn iteration_yields_the_batches_of_the_output(case in case()) {
        let table = table(&case);
        let loader = loader(&case, &table);
        let batches = loader.batches().unwrap();
        let out = loader.materialize(Way::Preallocated).unwrap();
        let mut seen = vec![Vec::new(); case.cols.len()];
        let mut count = 0;
        for (k, batch) in loader.iter().unwrap().enumerate() {
            let batch = batch.unwrap();
            let r = batches.range(k);
            prop_assert_eq!(batch.rows(), Some(r.end - r.start));
            prop_assert!(r.end - r.start <= case.batch_size);
            for (i, c) in batch.columns().iter().enumerate() {
                seen[i].extend_from_slice(c.as_bytes());
            }
            count += 1;
        }
        prop_assert_eq!(count, batches.len());
        for (s, c) in seen.iter().zip(out.columns()) {
            prop_assert!(s.as_slice() == c.as_bytes());
        }
    }

    #[test]
    fn drain_of_the_loaders_batches_equals_the_naive_gather(case in case()) {
        let table = table(&case);
        let loader = loader(&case, &table);
        let batches = loader.batches().unwrap();
        let expected = naive(&case);
        let options = [
            DrainOptions::new(Way::Concat),
            DrainOptions::new(Way::PerBatch),
            DrainOptions::new(Way::Auto),
            DrainOptions::new(Way::Preallocated).rows(batches.rows()),
            DrainOptions::new(Way::Auto).rows(batches.rows()),
            DrainOptions::new(Way::Concat).rows(batches.rows()),
        ];
        for opt in options {
            let stream: Vec<Result<Batch, arraydrain::Error>> = loader.iter().unwrap().collect();
            let out = drain(stream, opt).unwrap();
            if batches.is_empty() {
                prop_assert!(out.columns().is_empty(), "no batches, no schema");
            } else {
                assert_output(&out, &expected, &case, &format!("drain {opt:?}"));
            }
        }
    }

    #[test]
    fn shards_of_all_ranks_cover_the_padded_order(rows in 0usize..200, world in 1usize..9, seed in any::<u64>(), drop_last in any::<bool>()) {
        let base = arraydrain::sampler::shuffled(rows, seed);
        let order = Order::Shuffle { seed };
        let shards: Vec<Vec<u64>> = (0..world)
            .map(|r| Indices::resolve(&order, Some(Shard::new(r, world).unwrap()), drop_last, rows).unwrap().to_vec())
            .collect();
        let per = shards[0].len();
        prop_assert!(shards.iter().all(|s| s.len() == per), "equal split");
        // Interleaving the ranks back gives the padded (or cut) base order.
        let mut merged = Vec::new();
        for p in 0..per {
            for s in &shards {
                merged.push(s[p]);
            }
        }
        let expected: Vec<u64> = (0..per * world).map(|p| base[p % rows.max(1)]).collect();
        prop_assert_eq!(&merged, &expected);
        if drop_last {
            prop_assert_eq!(per, rows / world);
        } else {
            prop_assert_eq!(per, rows.div_ceil(world));
        }
    }
}

#[test]
fn typed_views_have_the_right_shapes_and_values() {
    let x = ndarray::Array3::from_shape_fn((7, 3, 2), |(i, j, k)| (i * 100 + j * 10 + k) as f64);
    let y = ndarray::Array1::from_iter((0..7).map(|i| i % 2 == 0).map(u8::from));
    let table = Table::builder()
        .view("x", x.view())
        .view("y", y.view())
        .build()
        .unwrap();
    let out = Loader::new(&table)
        .batch_size(3)
        .indices(vec![6u64, 0, 0, 3])
        .materialize(Way::Preallocated)
        .unwrap();
    let xv = out.view::<f64>("x").unwrap();
    assert_eq!(xv.shape(), &[4, 3, 2]);
    assert_eq!(xv[[0, 2, 1]], 621.0);
    assert_eq!(xv[[3, 1, 0]], 310.0);
    let yv = out.view::<u8>("y").unwrap();
    assert_eq!(yv.as_slice().unwrap(), &[1, 1, 1, 0]);
    let owned = out.into_array::<f64>("x").unwrap();
    assert_eq!(owned.shape(), &[4, 3, 2]);
}
