//! Device memory lent to the engine (`CudaEngine::borrow_column`, how PyTorch's CUDA tensors are
//! read in place), under the CUDA simulator:
//! - the memory is allocated and written through the driver on a stream of the lender's own,
//!   with a long queue of work in front of the last write; the engine's reads wait, on the
//!   device, for the event it records on that stream when the memory is lent — the simulator's
//!   streams run with random delays, so a read not ordered after the producer returns the bytes
//!   from before that write;
//! - the engine never frees lent memory (the driver still knows it as live memory after the
//!   engine dropped it, and the lender frees it afterwards: a double free would abort the
//!   simulator);
//! - memory of another context, bytes past the end of an allocation, or an address that is no
//!   device memory are refused with typed errors;
//! - a device stream of lent batches whose length is only a hint is drained as it comes into an
//!   output allocated for the hint, grown or cut to what the stream yields.
//!
//! `#[ignore]`d: run by scripts/test-cudasim.sh with --include-ignored.
#![cfg(feature = "cuda")]

mod cudasim_common;

use arraydrain::TableError;

use arraydrain::cuda::cudarc::driver::{sys, CudaContext, DevicePtr};
use arraydrain::cuda::{CudaEngine, CudaError, DeviceBatch};
use arraydrain::{Batches, DType, Error, Indices, Order, Strategy};
use cudasim_common::{
    free, in_child_process, is_driver_failure, queue_slow_write, random_bytes, raw_alloc,
    sweep_failing_calls, Sim,
};

const ROW: usize = 24;

/// Memsets the lender queues in front of its last write of the memory it lends.
const SLOW: u32 = 400;

/// Whether `ptr` is still live device memory, as the driver says.
fn is_live(ptr: u64) -> bool {
    let mut size = 0usize;
    // SAFETY: RANGE_SIZE writes one size_t into a live local.
    let rc = unsafe {
        sys::cuPointerGetAttribute(
            (&mut size as *mut usize).cast(),
            sys::CUpointer_attribute::CU_POINTER_ATTRIBUTE_RANGE_SIZE,
            ptr,
        )
    };
    rc == sys::CUresult::CUDA_SUCCESS && size > 0
}

fn order(rows: usize, seed: u64) -> Batches {
    let idx = Indices::resolve(&Order::Shuffle { seed }, None, false, rows).unwrap();
    Batches::new(idx, 37, false).unwrap()
}

fn expected(bytes: &[u8], batches: &Batches) -> Vec<u8> {
    let mut out = Vec::new();
    for i in batches.indices().to_vec() {
        let i = i as usize;
        out.extend_from_slice(&bytes[i * ROW..(i + 1) * ROW]);
    }
    out
}

#[test]
#[ignore = "needs the CUDA simulator (scripts/test-cudasim.sh)"]
fn lent_memory_is_read_after_its_producers_last_write_and_never_freed() {
    let _sim = Sim::get();
    let engine = CudaEngine::new(0).unwrap();
    let producer = engine.context().new_stream().unwrap();
    let rows = 3000;
    let before = random_bytes(rows * ROW, 1);
    let after = random_bytes(rows * ROW, 2);
    for strategy in [Strategy::Pinned, Strategy::Preallocated] {
        let ptr = raw_alloc(&producer, &before);
        let src = queue_slow_write(&producer, ptr, &after, SLOW);
        let column = engine
            .borrow_column(
                "x",
                DType::U8,
                &[ROW],
                rows,
                ptr,
                producer.cu_stream() as usize,
                (),
            )
            .unwrap();
        assert!(column.is_borrowed());
        let table = engine.wrap(vec![column]).unwrap();
        let batches = order(rows, 9);
        let out = engine.materialize(&table, &batches, strategy).unwrap();
        assert!(
            out.column("x").unwrap().as_bytes() == expected(&after, &batches).as_slice(),
            "{strategy:?}: the engine read the lent memory before its producer's last write"
        );
        drop(out);
        drop(table);
        drop(src);
        // Lent memory is the lender's: still allocated after the engine dropped its column.
        producer.synchronize().unwrap();
        assert!(is_live(ptr), "{strategy:?}: the engine freed lent memory");
        // The lender frees it (a second free would abort the simulator).
        free(&producer, ptr);
        assert!(!is_live(ptr));
    }
}

#[test]
#[ignore = "needs the CUDA simulator (scripts/test-cudasim.sh)"]
fn lent_device_batches_are_read_after_their_producer_and_a_row_hint_is_only_a_hint() {
    let _sim = Sim::get();
    let engine = CudaEngine::new(0).unwrap();
    let producer = engine.context().new_stream().unwrap();
    let sizes = [100usize, 37, 250, 1, 0, 90];
    let total: usize = sizes.iter().sum();
    let after = random_bytes(total * ROW, 4);
    // Exact, and hints under, over and at the real count.
    for expect in [
        None,
        Some(total),
        Some(10),
        Some(total * 3),
        Some(total - 1),
    ] {
        let mut lent = Vec::new();
        let mut batches = Vec::new();
        let mut at = 0;
        for (k, &n) in sizes.iter().enumerate() {
            let bytes = &after[at * ROW..(at + n) * ROW];
            at += n;
            if n == 0 {
                // An empty batch: PyTorch gives no memory (address 0).
                let c = engine
                    .borrow_column("x", DType::U8, &[ROW], 0, 0, 0, ())
                    .unwrap();
                batches.push(Ok(DeviceBatch::new().with(c).unwrap()));
                continue;
            }
            let ptr = raw_alloc(&producer, &random_bytes(bytes.len(), 100 + k as u64));
            let src = queue_slow_write(&producer, ptr, bytes, SLOW);
            let c = engine
                .borrow_column(
                    "x",
                    DType::U8,
                    &[ROW],
                    n,
                    ptr,
                    producer.cu_stream() as usize,
                    (),
                )
                .unwrap();
            batches.push(Ok(DeviceBatch::new().with(c).unwrap()));
            lent.push((ptr, src));
        }
        let out = match expect {
            None => engine.drain_device(batches, None),
            Some(d) if d == total => engine.drain_device(batches, Some(d)),
            Some(d) => engine.drain_device_expecting(batches, d),
        }
        .unwrap_or_else(|e| panic!("expecting {expect:?}: {e}"));
        assert_eq!(out.rows(), total, "expecting {expect:?}");
        assert!(
            out.column("x").unwrap().as_bytes() == after.as_slice(),
            "expecting {expect:?}: a batch was read before its producer's last write"
        );
        drop(out);
        for (ptr, src) in lent {
            drop(src);
            assert!(
                is_live(ptr),
                "expecting {expect:?}: the engine freed a lent batch"
            );
            free(&producer, ptr);
        }
    }
    // A declared count stays a contract.
    let c = |n| {
        let ptr = raw_alloc(&producer, &random_bytes(n * ROW, 7));
        let col = engine
            .borrow_column(
                "x",
                DType::U8,
                &[ROW],
                n,
                ptr,
                producer.cu_stream() as usize,
                (),
            )
            .unwrap();
        (ptr, DeviceBatch::new().with(col).unwrap())
    };
    let (p, b) = c(5);
    let e = engine.drain_device(vec![Ok(b)], Some(4)).unwrap_err();
    assert!(matches!(e, Error::StreamLengthMismatch { .. }), "{e}");
    free(&producer, p);
}

#[test]
#[ignore = "needs the CUDA simulator (scripts/test-cudasim.sh)"]
fn memory_of_another_context_past_its_allocation_or_not_on_the_device_is_refused() {
    let _sim = Sim::get();
    let engine = CudaEngine::new(0).unwrap();

    // Another context of the same device: the engine orders nothing after its streams.
    let other = CudaContext::new_non_primary(0, 0).unwrap();
    let s = other.new_stream().unwrap();
    let foreign = s.alloc_zeros::<u8>(ROW * 10).unwrap();
    let (ptr, record) = foreign.device_ptr(&s);
    drop(record);
    let mine = arraydrain::cuda::current_context();
    let e = engine
        .borrow_column("x", DType::U8, &[ROW], 10, ptr, 0, ())
        .unwrap_err();
    match &e {
        Error::Cuda(CudaError::UnorderableColumn { column, reason }) => {
            assert_eq!(column, "x");
            assert!(reason.contains("another CUDA context"), "{reason}");
        }
        other => panic!("memory of another context: {other}"),
    }
    assert_eq!(
        arraydrain::cuda::current_context(),
        mine,
        "the caller's context comes back after a refusal"
    );
    drop(foreign);
    drop(s);
    drop(other);

    // Bytes past the end of the allocation, and a range starting inside it.
    let stream = engine.context().new_stream().unwrap();
    let ptr = raw_alloc(&stream, &random_bytes(ROW * 10, 3));
    for (at, rows) in [(0u64, 11usize), (ROW as u64, 10)] {
        let e = engine
            .borrow_column("x", DType::U8, &[ROW], rows, ptr + at, 0, ())
            .unwrap_err();
        match e {
            Error::Table(TableError::ByteLengthMismatch {
                column,
                expected,
                got,
            }) => {
                assert_eq!(column, "x");
                assert_eq!((expected, got), (rows * ROW, 10 * ROW - at as usize));
            }
            other => panic!("past the allocation: {other}"),
        }
    }
    free(&stream, ptr);

    // An address that is no device memory (freed just above).
    let e = engine
        .borrow_column("x", DType::U8, &[ROW], 1, ptr, 0, ())
        .unwrap_err();
    match e {
        Error::Cuda(CudaError::Driver { context, message }) => {
            assert!(
                context.contains("\"x\"") && context.contains(&format!("{ptr:#x}")),
                "{context}"
            );
            assert!(message.contains("CUDA_ERROR_INVALID_VALUE"), "{message}");
        }
        other => panic!("not device memory: {other}"),
    }
}

/// Lending under the fault sweep: every failable driver call of lending memory and draining it
/// (a table read in place, and a stream of lent batches with a row hint) is made to fail in
/// turn; each run ends in a typed error or a correct output, never a panic or an abort, leaves
/// no copy in flight, never frees the lent memory (the lender frees it after every run), and the
/// next run is correct. In a child process of its own: failures are armed process-wide.
#[test]
#[ignore = "needs the CUDA simulator (scripts/test-cudasim.sh)"]
fn every_failing_driver_call_of_lending_ends_in_a_typed_error() {
    if !in_child_process("every_failing_driver_call_of_lending_ends_in_a_typed_error") {
        return;
    }
    let _sim = Sim::get();
    let engine = CudaEngine::new(0).unwrap();
    let producer = engine.context().new_stream().unwrap();
    let rows = 120;
    let data = random_bytes(rows * ROW, 11);
    let batches = order(rows, 3);
    let want_table = expected(&data, &batches);
    let typed = |e: &Error| match e {
        Error::Source { source, .. } => source.downcast_ref::<Error>().is_some(),
        e => is_driver_failure(e),
    };
    // One run: lends what `prep` allocated (the sweep covers the lending calls) and drains it.
    let run = |table: bool, ptrs: &[u64]| -> Result<Vec<u8>, Error> {
        let lend = |ptr: u64, n: usize| {
            engine.borrow_column(
                "x",
                DType::U8,
                &[ROW],
                n,
                ptr,
                producer.cu_stream() as usize,
                (),
            )
        };
        let out = if table {
            let t = engine.wrap(vec![lend(ptrs[0], rows)?])?;
            engine.materialize(&t, &batches, Strategy::Pinned)?
        } else {
            let items: Vec<Result<DeviceBatch, Error>> = ptrs
                .iter()
                .map(|&p| lend(p, rows / 3).and_then(|c| DeviceBatch::new().with(c)))
                .collect();
            engine.drain_device_expecting(items, 50)?
        };
        Ok(out.column("x").unwrap().as_bytes().to_vec())
    };
    for table in [true, false] {
        let prep = || -> Vec<u64> {
            if table {
                vec![raw_alloc(&producer, &data)]
            } else {
                (0..3)
                    .map(|k| raw_alloc(&producer, &data[k * 40 * ROW..(k + 1) * 40 * ROW]))
                    .collect()
            }
        };
        let want = if table { &want_table } else { &data };
        let release = |ptrs: Vec<u64>| {
            for p in ptrs {
                assert!(is_live(p), "lent memory freed by the engine");
                free(&producer, p);
            }
        };
        let (n, errors) = sweep_failing_calls(
            engine.context(),
            &format!("lending, table {table}"),
            want,
            prep,
            |ptrs| run(table, ptrs),
            release,
            |k, n, e| assert!(typed(&e), "table {table}, call {k} of {n}: untyped {e:?}"),
        );
        assert!(errors > 0, "table {table}: no injected failure surfaced");
        println!("lending, table {table}: {n} calls, {errors} errors");
    }
}
