//! The writer fed from device memory (`arraydrain::cuda::DeviceWriter`) under the CUDA
//! simulator, whose streams run asynchronously with random delays:
//! - the output equals the bytes written, rows addressed in a shuffled order or appended, batches
//!   split over staging blocks (some larger than the whole pool), a host column beside a device
//!   one, to memory and to a `.npy` file;
//! - each batch is read after its producer's last write, queued behind hundreds of other writes
//!   on the producer's stream (the copy waits for an event recorded on it);
//! - the producer's stream is ordered after the copy: work it queues after `write_device`
//!   returns (overwriting the batch, as PyTorch's allocator reusing its memory would) does not
//!   change what lands;
//! - back-pressure: while copies are held up behind a slow producer, the bytes pending never
//!   exceed the staging pool and no more pinned memory is taken than the pool;
//! - refused input (wrong column count or length, an index past the output, rows by index after
//!   appended ones, memory of another context, bytes past an allocation, freed memory) is a
//!   typed error that writes nothing;
//! - every failable driver call of the path, failed in turn, ends in a typed error and writes
//!   nothing of the failed batch, never a panic or an abort, with no copy left in flight.
//!
//! `#[ignore]`d: run by scripts/test-cudasim.sh with --include-ignored.
#![cfg(feature = "cuda")]

mod cudasim_common;

use std::sync::Arc;

use arraydrain::cuda::cudarc::driver::{CudaContext, CudaStream, DevicePtr};
use arraydrain::cuda::{CudaError, DeviceWriter, WriteSource, STAGING_BLOCKS};
use arraydrain::{DType, Error, TableError, Writer, WriterBuilder, Written};
use cudasim_common::{
    device, engine_with_producer, free, free_all, in_child_process, is_driver_failure,
    queue_memsets, queue_slow_write, random_bytes, raw_alloc, rows_differing, rows_of, shuffled,
    sweep_failing_calls, Sim,
};

/// Row bytes of the two columns: `a` (device) and `b` (device or host).
const A: usize = 24;
const B: usize = 7;

/// Memsets the producer queues in front of a batch's last write.
const SLOW: u32 = 300;

/// Batch sizes covering `n` rows: small, empty, one row, and larger than the whole pool.
fn sizes(n: usize) -> Vec<usize> {
    let pattern = [37usize, 0, 1, 250, 13, 900, 64];
    let mut out = Vec::new();
    let mut left = n;
    let mut k = 0;
    while left > 0 {
        let s = pattern[k % pattern.len()].min(left);
        out.push(s);
        left -= s;
        k += 1;
    }
    out
}

/// An output of `rows` rows of column `a` alone, still to be opened (in memory, or given a path).
fn column_a(rows: usize) -> WriterBuilder {
    Writer::builder(rows).column("a", DType::U8, &[A])
}

/// An output in memory of `rows` rows of columns `a` and `b`.
fn memory_writer(rows: usize) -> Writer {
    column_a(rows).column("b", DType::U8, &[B]).open().unwrap()
}

/// The bytes of column `name` of a memory writer's output.
fn column(w: &Written, name: &str) -> Vec<u8> {
    let m = w
        .memory
        .as_ref()
        .expect("a memory writer returns its arrays");
    m.column(name).unwrap().as_bytes().to_vec()
}

/// Columns `a` and `b` of a memory writer's output.
fn columns(w: Written) -> (Vec<u8>, Vec<u8>) {
    (column(&w, "a"), column(&w, "b"))
}

#[test]
#[ignore = "needs the CUDA simulator (scripts/test-cudasim.sh)"]
fn output_equals_the_bytes_written_shuffled_or_appended_device_and_host_columns() {
    let _sim = Sim::get();
    let (engine, producer, p) = engine_with_producer();
    let rows = 3000;
    let a = random_bytes(rows * A, 1);
    let b = random_bytes(rows * B, 2);
    for (shuffle, host_b) in [(true, false), (true, true), (false, false)] {
        // A small ring: 4 blocks of ~1.2 KiB, so batches are split and the pool cycles.
        let mut w = DeviceWriter::new(Arc::clone(&engine), memory_writer(rows), 5000).unwrap();
        let order = if shuffle {
            shuffled(rows, 7)
        } else {
            (0..rows as u64).collect()
        };
        let mut ptrs = Vec::new();
        let mut s = 0;
        for n in sizes(rows) {
            let at = &order[s..s + n];
            s += n;
            let (ba, bb) = (rows_of(&a, at, A), rows_of(&b, at, B));
            let pa = raw_alloc(&producer, &ba);
            let pb = raw_alloc(&producer, &bb);
            ptrs.extend([pa, pb]);
            let col_b = if host_b {
                WriteSource::Host(&bb)
            } else {
                device(pb, bb.len())
            };
            let cols = [device(pa, ba.len()), col_b];
            w.write_device(shuffle.then_some(at), &cols, n, p).unwrap();
            assert!(w.pending_bytes() <= w.pool_bytes());
        }
        let (ga, gb) = columns(w.close().unwrap());
        assert!(
            ga == a,
            "shuffle {shuffle}, host b {host_b}: column a differs"
        );
        assert!(
            gb == b,
            "shuffle {shuffle}, host b {host_b}: column b differs"
        );
        free_all(&producer, ptrs);
    }

    // To a .npy file: the file holds the rows written, in place.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("a.npy");
    let writer = column_a(rows).path(&path).open().unwrap();
    let mut w = DeviceWriter::new(Arc::clone(&engine), writer, 1 << 14).unwrap();
    let order = shuffled(rows, 9);
    let mut ptrs = Vec::new();
    for at in order.chunks(333) {
        let bytes = rows_of(&a, at, A);
        let ptr = raw_alloc(&producer, &bytes);
        ptrs.push(ptr);
        w.write_device(Some(at), &[device(ptr, bytes.len())], at.len(), p)
            .unwrap();
    }
    assert!(!path.exists(), "nothing is visible before close");
    w.close().unwrap();
    let back = arraydrain::npy::read_npy(&path).unwrap();
    assert!(back.bytes() == a.as_slice(), "the .npy file differs");
    free_all(&producer, ptrs);
}

/// Writes `want` (column `a`) from device memory through a device writer with a 1 MiB pool, in
/// batches of `batch` rows of the order `shuffled(rows, seed)`, each written on a producer stream
/// of the test's own: `stage(producer, k, bytes)` returns the device address batch `k` is read
/// from, which holds `bytes` once the work queued on the producer has run, and what must live
/// until then; `after(producer, ptr, len)` runs right after the batch's `write_device` returned.
/// Returns how many rows of the output differ from `want`.
fn rows_wrong_after_writing<K>(
    want: &[u8],
    (batch, seed): (usize, u64),
    mut stage: impl FnMut(&Arc<CudaStream>, usize, &[u8]) -> (u64, K),
    mut after: impl FnMut(&Arc<CudaStream>, u64, usize),
) -> usize {
    let (engine, producer, p) = engine_with_producer();
    let rows = want.len() / A;
    let writer = column_a(rows).open().unwrap();
    let mut w = DeviceWriter::new(Arc::clone(&engine), writer, 1 << 20).unwrap();
    let (mut ptrs, mut keep) = (Vec::new(), Vec::new());
    for (k, at) in shuffled(rows, seed).chunks(batch).enumerate() {
        let bytes = rows_of(want, at, A);
        let (ptr, kept) = stage(&producer, k, &bytes);
        w.write_device(Some(at), &[device(ptr, bytes.len())], at.len(), p)
            .unwrap();
        after(&producer, ptr, bytes.len());
        ptrs.push(ptr);
        keep.push(kept);
    }
    let got = column(&w.close().unwrap(), "a");
    drop(keep);
    free_all(&producer, ptrs);
    rows_differing(&got, want, A)
}

#[test]
#[ignore = "needs the CUDA simulator (scripts/test-cudasim.sh)"]
fn each_batch_is_read_after_its_producers_last_write() {
    let _sim = Sim::get();
    let after = random_bytes(1200 * A, 3);
    // Each batch's memory holds other bytes, then many writes and, last, the batch's rows.
    let slowly_written = |producer: &Arc<CudaStream>, k: usize, bytes: &[u8]| {
        let ptr = raw_alloc(producer, &random_bytes(bytes.len(), 100 + k as u64));
        (ptr, queue_slow_write(producer, ptr, bytes, SLOW))
    };
    let wrong = rows_wrong_after_writing(&after, (100, 4), slowly_written, |_, _, _| {});
    assert_eq!(
        wrong, 0,
        "{wrong} rows were copied before their producer's last write"
    );
}

#[test]
#[ignore = "needs the CUDA simulator (scripts/test-cudasim.sh)"]
fn the_producer_stream_runs_its_later_work_after_the_copy() {
    let _sim = Sim::get();
    let data = random_bytes(2000 * A, 5);
    let written =
        |producer: &Arc<CudaStream>, _: usize, bytes: &[u8]| (raw_alloc(producer, bytes), ());
    // What the producer does next with the batch's memory (PyTorch reusing it for the next
    // allocation on its stream): overwrite it, at once.
    let reused_at_once = |producer: &Arc<CudaStream>, ptr: u64, len: usize| {
        queue_memsets(producer, ptr, len, 1, 0xEE)
    };
    let wrong = rows_wrong_after_writing(&data, (50, 6), written, reused_at_once);
    assert_eq!(
        wrong, 0,
        "{wrong} rows were overwritten by producer work queued after write_device"
    );
}

#[test]
#[ignore = "needs the CUDA simulator (scripts/test-cudasim.sh)"]
fn pending_bytes_never_exceed_the_pool_behind_a_slow_producer() {
    // In a child process of its own: the simulator counts the pinned allocations of the whole
    // process, and the other tests of this binary run beside this one.
    if !in_child_process("pending_bytes_never_exceed_the_pool_behind_a_slow_producer") {
        return;
    }
    let sim = Sim::get();
    let (engine, producer, p) = engine_with_producer();
    let rows = 4000;
    let after = random_bytes(rows * A, 8);
    let writer = column_a(rows).open().unwrap();
    let ring = 16 << 10;
    let order = shuffled(rows, 10);
    engine.pinned_pool().trim();
    let pinned_before = sim.stats().pinned_allocs;
    let mut w = DeviceWriter::new(Arc::clone(&engine), writer, ring).unwrap();
    assert!(w.pool_bytes() <= ring);
    // Every buffer first: allocating on the producer's stream waits for it (and so for the
    // copies it is ordered before).
    let batches: Vec<(&[u64], Vec<u8>, u64)> = order
        .chunks(100)
        .enumerate()
        .map(|(k, at)| {
            let bytes = rows_of(&after, at, A);
            let ptr = raw_alloc(&producer, &random_bytes(bytes.len(), 200 + k as u64));
            (at, bytes, ptr)
        })
        .collect();
    let mut srcs = Vec::new();
    let mut peak_pinned = 0;
    for &(at, ref bytes, ptr) in &batches {
        srcs.push(queue_slow_write(&producer, ptr, bytes, SLOW));
        w.write_device(Some(at), &[device(ptr, bytes.len())], at.len(), p)
            .unwrap();
        assert!(
            w.pending_bytes() <= w.pool_bytes(),
            "{} bytes pending, pool {}",
            w.pending_bytes(),
            w.pool_bytes()
        );
        peak_pinned = peak_pinned.max(sim.stats().pinned_allocs - pinned_before);
    }
    // The pool did fill (copies waited behind the producer), and no pinned memory beyond the
    // pool's blocks was taken.
    assert!(
        w.peak_pending_bytes() > w.pool_bytes() / 2,
        "peak {} of {}: the pool never filled, nothing was tested",
        w.peak_pending_bytes(),
        w.pool_bytes()
    );
    assert!(
        peak_pinned as usize <= STAGING_BLOCKS,
        "{peak_pinned} pinned allocations"
    );
    assert!(column(&w.close().unwrap(), "a") == after);
    drop(srcs);
    free_all(&producer, batches.into_iter().map(|(_, _, ptr)| ptr));
}

#[test]
#[ignore = "needs the CUDA simulator (scripts/test-cudasim.sh)"]
fn refused_input_is_a_typed_error_that_writes_nothing() {
    let _sim = Sim::get();
    let (engine, producer, p) = engine_with_producer();
    let rows = 10;
    let mut w = DeviceWriter::new(Arc::clone(&engine), memory_writer(rows), 1 << 16).unwrap();
    let pa = raw_alloc(&producer, &random_bytes(rows * A, 1));
    let pb = raw_alloc(&producer, &random_bytes(rows * B, 2));
    let expect_nothing_written = |w: &mut DeviceWriter, what: &str| {
        w.flush().unwrap();
        assert_eq!(w.writer().rows_written(), 0, "{what}: rows were written");
        assert_eq!(w.pending_bytes(), 0, "{what}: copies pending");
    };

    // Columns: too few, a wrong length.
    let e = w
        .write_device(None, &[device(pa, 4 * A)], 4, p)
        .unwrap_err();
    assert!(
        matches!(&e, Error::BatchMismatch { reason, .. }
            if reason.contains("1 columns given, the output has 2")),
        "{e}"
    );
    let e = w
        .write_device(None, &[device(pa, 4 * A), device(pb, 3 * B)], 4, p)
        .unwrap_err();
    assert!(
        matches!(&e, Error::BatchMismatch { column, reason, .. }
            if column == "b" && reason.contains("21 bytes, not 4 rows of 7 bytes")),
        "{e}"
    );
    expect_nothing_written(&mut w, "wrong columns");

    // Indices: past the output, or of another length; appends past the end.
    let e = w
        .write_device(
            Some(&[0, 10]),
            &[device(pa, 2 * A), device(pb, 2 * B)],
            2,
            p,
        )
        .unwrap_err();
    assert!(
        matches!(
            e,
            Error::IndexOutOfBounds {
                index: 10,
                position: 1,
                rows: 10
            }
        ),
        "{e}"
    );
    let e = w
        .write_device(Some(&[0]), &[device(pa, 2 * A), device(pb, 2 * B)], 2, p)
        .unwrap_err();
    assert!(
        e.to_string().contains("1 indices for a batch of 2 rows"),
        "{e}"
    );
    w.write_device(None, &[device(pa, 8 * A), device(pb, 8 * B)], 8, p)
        .unwrap();
    let e = w
        .write_device(None, &[device(pa, 3 * A), device(pb, 3 * B)], 3, p)
        .unwrap_err();
    assert!(
        matches!(
            e,
            Error::IndexOutOfBounds {
                index: 10,
                rows: 10,
                ..
            }
        ),
        "{e}"
    );
    // Rows by index after the append (its copies maybe still pending): refused before any copy
    // is issued, as the writer refuses them.
    let e = w
        .write_device(Some(&[8, 9]), &[device(pa, 2 * A), device(pb, 2 * B)], 2, p)
        .unwrap_err();
    assert!(
        matches!(&e, Error::ConflictingOptions { reason }
            if reason.contains("by index after 8 appended rows")),
        "{e}"
    );
    w.flush().unwrap();
    assert_eq!(w.writer().rows_written(), 8, "only the good append landed");
    drop(w);

    let mut w = DeviceWriter::new(Arc::clone(&engine), memory_writer(rows), 1 << 16).unwrap();
    // Bytes past the end of the allocation.
    let e = w
        .write_device(
            None,
            &[device(pa + A as u64, rows * A), device(pb, rows * B)],
            rows,
            p,
        )
        .unwrap_err();
    match &e {
        Error::Table(TableError::ByteLengthMismatch {
            column,
            expected,
            got,
        }) => {
            assert_eq!(column, "a");
            assert_eq!((*expected, *got), (rows * A, (rows - 1) * A));
        }
        other => panic!("past the allocation: {other}"),
    }
    expect_nothing_written(&mut w, "past the allocation");

    // Memory of another context of the device.
    let other = CudaContext::new_non_primary(0, 0).unwrap();
    let s = other.new_stream().unwrap();
    let foreign = s.alloc_zeros::<u8>(rows * B).unwrap();
    let (fptr, record) = foreign.device_ptr(&s);
    drop(record);
    let e = w
        .write_device(
            None,
            &[device(pa, rows * A), device(fptr, rows * B)],
            rows,
            p,
        )
        .unwrap_err();
    match &e {
        Error::Cuda(CudaError::UnorderableColumn { column, reason }) => {
            assert_eq!(column, "b");
            assert!(reason.contains("another CUDA context"), "{reason}");
        }
        other => panic!("another context: {other}"),
    }
    drop(foreign);
    drop(s);
    drop(other);
    expect_nothing_written(&mut w, "another context");

    // Memory that is no longer allocated.
    free(&producer, pb);
    let e = w
        .write_device(None, &[device(pa, rows * A), device(pb, rows * B)], rows, p)
        .unwrap_err();
    match &e {
        Error::Cuda(CudaError::Driver { context, message }) => {
            assert!(
                context.contains("\"b\"") && context.contains(&format!("{pb:#x}")),
                "{context}"
            );
            assert!(message.contains("CUDA_ERROR_INVALID_VALUE"), "{message}");
        }
        other => panic!("freed memory: {other}"),
    }
    expect_nothing_written(&mut w, "freed memory");
    free(&producer, pa);
}

/// Every failable driver call of a device writer's life (opening it, three batches, closing
/// it) is made to fail in turn: each run ends in a typed error or the exact output, never a
/// panic or an abort; a batch whose `write_device` failed is not written (the batches before it
/// are, once flushed); no copy is left in flight; the next run is correct. In a child process
/// of its own: failures are armed process-wide.
#[test]
#[ignore = "needs the CUDA simulator (scripts/test-cudasim.sh)"]
fn every_failing_driver_call_of_the_device_writer_ends_in_a_typed_error() {
    if !in_child_process("every_failing_driver_call_of_the_device_writer_ends_in_a_typed_error") {
        return;
    }
    let _sim = Sim::get();
    let (engine, producer, p) = engine_with_producer();
    let rows = 300;
    let a = random_bytes(rows * A, 11);
    let b = random_bytes(rows * B, 12);
    let order = shuffled(rows, 13);
    // Three batches; the last (6200 bytes) spans three of the ring's 4 blocks of 3000 bytes.
    let cuts = [0usize, 40, 100, rows];
    let prep = || -> Vec<(u64, u64)> {
        cuts.windows(2)
            .map(|c| {
                let at = &order[c[0]..c[1]];
                (
                    raw_alloc(&producer, &rows_of(&a, at, A)),
                    raw_alloc(&producer, &rows_of(&b, at, B)),
                )
            })
            .collect()
    };
    let release =
        |ptrs: Vec<(u64, u64)>| free_all(&producer, ptrs.into_iter().flat_map(<[u64; 2]>::from));
    /// How a run ended: the output, or the error, the batch whose write failed and the rows
    /// covered once the writer was flushed after it (when it could be).
    type Failure = Box<(Error, Option<usize>, Option<Vec<u64>>)>;
    let run = |ptrs: &Vec<(u64, u64)>| -> Result<(Vec<u8>, Vec<u8>), Failure> {
        let mut w = DeviceWriter::new(Arc::clone(&engine), memory_writer(rows), 12000)
            .map_err(|e| Box::new((e, None, None)))?;
        for (j, c) in cuts.windows(2).enumerate() {
            let at = &order[c[0]..c[1]];
            let n = at.len();
            let (pa, pb) = ptrs[j];
            let cols = [device(pa, n * A), device(pb, n * B)];
            if let Err(e) = w.write_device(Some(at), &cols, n, p) {
                let covered = w.flush().ok().map(|_| w.writer().coverage().to_vec());
                return Err(Box::new((e, Some(j), covered)));
            }
        }
        let written = w.close().map_err(|e| Box::new((e, None, None)))?;
        Ok(columns(written))
    };
    let covered = |bits: &[u64], i: u64| bits[i as usize / 64] & (1 << (i % 64)) != 0;
    let mut checked_batches = 0;
    let (n, errors) = sweep_failing_calls(
        engine.context(),
        "device writer",
        &(a.clone(), b.clone()),
        prep,
        run,
        release,
        |k, n, failure| {
            let (e, batch, bits) = *failure;
            assert!(is_driver_failure(&e), "call {k} of {n}: untyped {e:?}");
            if let (Some(j), Some(bits)) = (batch, bits) {
                for (jj, c) in cuts.windows(2).enumerate() {
                    for &i in &order[c[0]..c[1]] {
                        assert_eq!(
                            covered(&bits, i),
                            jj < j,
                            "call {k} of {n}: batch {j} failed, row {i} of batch {jj}"
                        );
                    }
                }
                checked_batches += 1;
            }
        },
    );
    assert!(errors > 0, "no injected failure surfaced");
    assert!(checked_batches > 0, "no failed batch was checked");
    println!("device writer: {n} calls, {errors} errors, {checked_batches} failed batches checked");
}

/// A producer stream the driver does not know (recording the event on it fails) is a typed
/// error naming the producer, writes nothing, and leaves the writer usable.
#[test]
#[ignore = "needs the CUDA simulator (scripts/test-cudasim.sh)"]
fn an_unknown_producer_stream_is_a_typed_error_that_writes_nothing() {
    let _sim = Sim::get();
    let (engine, producer, p) = engine_with_producer();
    let rows = 4;
    let pa = raw_alloc(&producer, &random_bytes(rows * A, 1));
    let pb = raw_alloc(&producer, &random_bytes(rows * B, 2));
    let mut w = DeviceWriter::new(Arc::clone(&engine), memory_writer(rows), 1 << 16).unwrap();
    let cols = [device(pa, rows * A), device(pb, rows * B)];
    let e = w.write_device(None, &cols, rows, 0xdead_0000).unwrap_err();
    assert!(
        matches!(&e, Error::Cuda(CudaError::Driver { context, .. })
            if context.contains("producer")),
        "{e}"
    );
    w.flush().unwrap();
    assert_eq!(w.writer().rows_written(), 0);
    // The same batch on a real stream then lands.
    w.write_device(None, &cols, rows, p).unwrap();
    w.flush().unwrap();
    assert_eq!(w.writer().rows_written(), rows);
    drop(w);
    free(&producer, pa);
    free(&producer, pb);
}
