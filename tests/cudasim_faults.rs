//! The fault sweep under the CUDA driver simulator: for each kind of drain (the pinned pipeline
//! direct and staged, sequential and shuffled; the classic recipes; a drain of device batches;
//! opening the engine), every failable driver call it makes — allocations, pinned host
//! allocations, copies, launches, module loads, synchronisations, streams and events — is made
//! to fail in turn. Each run must end in a typed error or a correct output, never a panic or an
//! abort; leave no copy into or out of host memory in flight (so no pinned buffer goes back to
//! the pool, or is freed, with a copy pending — the simulator also aborts on such a free); and the next drain on the same
//! engine must be correct. When everything is dropped, the simulator must find no allocation
//! left live. One test (one process): the leak count is the process's.
//! `#[ignore]`d: run by scripts/test-cudasim.sh with --include-ignored.
#![cfg(feature = "cuda")]

mod cudasim_common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use arraydrain::bench::reference;
use arraydrain::cuda::CudaError;
use arraydrain::cuda::{CudaEngine, DeviceBatch, DeviceColumn, DeviceTable};
use arraydrain::{Batches, Column, DType, Error, Indices, Materialized, Order, Strategy, Table};
use cudasim_common::{random_bytes, Sim};

static PANICS: AtomicUsize = AtomicUsize::new(0);

fn table(rows: usize) -> Table<'static> {
    let cols: [(DType, &[usize]); 2] = [(DType::F32, &[3]), (DType::U8, &[5])];
    let columns = cols
        .iter()
        .enumerate()
        .map(|(i, (dtype, shape))| {
            let rb = shape.iter().product::<usize>() * dtype.size();
            Column::from_shared(
                format!("c{i}"),
                dtype.clone(),
                shape,
                rows,
                Arc::new(random_bytes(rows * rb, i as u64 + 9)),
            )
            .unwrap()
        })
        .collect();
    Table::new(columns).unwrap()
}

#[derive(Debug, Clone, Copy)]
enum Drain {
    Pinned,
    Staged,
    Sequential,
    Concat,
    PerBatch,
    Preallocated,
    Device,
    /// The user's own device columns, adopted with `wrap`, then drained.
    Wrapped,
}

/// What a drain of the user's device buffers gets, uploaded before any failure is armed.
enum Prepared {
    Batches(Vec<Result<DeviceBatch, Error>>),
    Columns(Vec<DeviceColumn>),
}

/// Three device batches of 40 rows of `t`, uploaded by the test (before any failure is armed:
/// the sweep is of the engine's calls; cudarc itself leaks an allocation whose tracking events
/// cannot be created).
fn device_batches(engine: &CudaEngine, t: &Table<'_>) -> Vec<Result<DeviceBatch, Error>> {
    let s = engine.stream();
    (0..3)
        .map(|k| {
            let rows = 40;
            let mut batch = DeviceBatch::new();
            for c in t.columns() {
                let bytes = &c.bytes()[k * rows * c.row_bytes()..(k + 1) * rows * c.row_bytes()];
                let x = s.clone_htod(bytes).unwrap();
                batch.push(DeviceColumn::new(
                    c.name(),
                    c.dtype(),
                    c.row_shape(),
                    rows,
                    x,
                )?)?;
            }
            Ok(batch)
        })
        .collect()
}

fn run(
    engine: &CudaEngine,
    dt: &DeviceTable,
    b: &Batches,
    d: Drain,
    prepared: &mut Option<Prepared>,
) -> Result<Materialized, Error> {
    engine.set_pin_budget(usize::MAX);
    let r = match d {
        Drain::Pinned | Drain::Sequential => engine.materialize(dt, b, Strategy::Pinned),
        Drain::Staged => {
            engine.set_pin_budget(0);
            engine.materialize(dt, b, Strategy::Pinned)
        }
        Drain::Concat => engine.materialize(dt, b, Strategy::Concat),
        Drain::PerBatch => engine.materialize(dt, b, Strategy::PerBatch),
        Drain::Preallocated => engine.materialize(dt, b, Strategy::Preallocated),
        Drain::Wrapped => match prepared.take() {
            Some(Prepared::Columns(cols)) => {
                let r = engine.wrap(cols).and_then(|dt| {
                    let out = engine.materialize(&dt, b, Strategy::Pinned);
                    no_late_error(engine, &out, "wrap + materialize");
                    drop(dt);
                    out
                });
                // Dropping the user's own buffers (the table) may store a failure in the user's
                // context, which cudarc reports at the user's next call: the user's drop, not
                // the drain's.
                let _ = engine.context().check_err();
                r
            }
            _ => panic!("no prepared columns"),
        },
        Drain::Device => {
            let Some(Prepared::Batches(items)) = prepared.take() else {
                panic!("no prepared batches")
            };
            let out = engine.drain_device(items, Some(120));
            no_late_error(engine, &out, "drain_device");
            out
        }
    };
    engine.set_pin_budget(usize::MAX);
    r
}

/// A call that succeeded must not leave a failure stored in the user's context (cudarc stores
/// errors of its `Drop`s there, to surface at the user's next, unrelated call): the engine must
/// report what its own reads and releases of the user's buffers caused. After a failed call the
/// stored error is cleared (the call already failed).
fn no_late_error(engine: &CudaEngine, out: &Result<Materialized, Error>, what: &str) {
    let stale = engine.context().check_err();
    if out.is_ok() {
        assert!(
            stale.is_ok(),
            "{what} succeeded but left {stale:?} in the user's context"
        );
    }
}

fn expected(t: &Table<'_>, b: &Batches, d: Drain) -> Vec<Vec<u8>> {
    match d {
        Drain::Device => t
            .columns()
            .iter()
            .map(|c| c.bytes()[..120 * c.row_bytes()].to_vec())
            .collect(),
        _ => reference(t, b).unwrap(),
    }
}

fn equal(out: &Materialized, want: &[Vec<u8>]) -> bool {
    out.columns().len() == want.len()
        && out
            .columns()
            .iter()
            .zip(want)
            .all(|(c, w)| c.as_bytes() == w.as_slice())
}

fn typed(e: &Error) -> bool {
    match e {
        Error::Cuda(CudaError::Driver { message, .. }) => !message.starts_with("panic"),
        Error::Cuda(CudaError::OutOfMemory { .. })
        | Error::HostAllocation { .. }
        | Error::Cuda(CudaError::Unavailable { .. }) => true,
        Error::Cuda(CudaError::KernelCompile { .. }) => true,
        Error::Source { source, .. } => source.downcast_ref::<Error>().is_some_and(typed),
        _ => false,
    }
}

#[test]
#[ignore = "needs the CUDA simulator (scripts/test-cudasim.sh)"]
fn every_failing_driver_call_of_a_drain_ends_in_a_typed_error_without_leaks() {
    let sim = Sim::get();
    let hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        PANICS.fetch_add(1, Ordering::SeqCst);
        hook(info);
    }));
    let mut report = Vec::new();
    // Opening the engine: module load, streams, events, ...
    let before = sim.calls();
    let engine = CudaEngine::new(0).unwrap();
    let open_calls = sim.calls() - before;
    drop(engine);
    for k in 1..=open_calls {
        sim.fail_nth(k);
        let r = CudaEngine::new(0);
        sim.disarm();
        match r {
            Ok(e) => drop(e),
            Err(e) => assert!(typed(&e), "opening, call {k} failing: untyped {e:?}"),
        }
        assert_eq!(
            sim.stats().pending_host_copies,
            0,
            "opening, call {k}: work in flight"
        );
    }
    report.push(format!("open: {open_calls} calls"));

    let engine = CudaEngine::new(0).unwrap();
    let t = table(300);
    let dt = engine.upload(&t).unwrap();
    let shuffled = Batches::new(
        Indices::resolve(&Order::Shuffle { seed: 4 }, None, false, 300).unwrap(),
        64,
        false,
    )
    .unwrap();
    let sequential = Batches::new(
        Indices::resolve(&Order::Sequential, None, false, 300).unwrap(),
        64,
        false,
    )
    .unwrap();
    for d in [
        Drain::Pinned,
        Drain::Staged,
        Drain::Sequential,
        Drain::Concat,
        Drain::PerBatch,
        Drain::Preallocated,
        Drain::Device,
        Drain::Wrapped,
    ] {
        let b = if matches!(d, Drain::Sequential) {
            &sequential
        } else {
            &shuffled
        };
        let want = expected(&t, b, d);
        let prep = |d: Drain| match d {
            Drain::Device => Some(Prepared::Batches(device_batches(&engine, &t))),
            Drain::Wrapped => Some(Prepared::Columns(
                t.columns()
                    .iter()
                    .map(|c| {
                        let x = engine.stream().clone_htod(c.bytes()).unwrap();
                        DeviceColumn::new(c.name(), c.dtype(), c.row_shape(), c.rows(), x).unwrap()
                    })
                    .collect(),
            )),
            _ => None,
        };
        // A first run makes what later runs reuse (lane buffers, pooled pinned memory); the
        // sweep covers the calls of the steady state, and counts injections that were reached.
        let out = run(&engine, &dt, b, d, &mut prep(d)).unwrap();
        assert!(equal(&out, &want), "{d:?} without faults");
        drop(out);
        let mut p = prep(d);
        let before = sim.calls();
        let out = run(&engine, &dt, b, d, &mut p).unwrap();
        assert!(equal(&out, &want), "{d:?} without faults, again");
        drop(out);
        let n = sim.calls() - before;
        let (mut errors, mut fine, mut unreached) = (0, 0, 0);
        for k in 1..=n {
            let mut batches = prep(d);
            let injected = sim.stats().injected_faults;
            sim.fail_nth(k);
            let r = run(&engine, &dt, b, d, &mut batches);
            sim.disarm();
            // How many event polls a drain makes depends on timing, so the last calls of one
            // run may not exist in another: such a run is checked like any other, and counted.
            let reached = sim.stats().injected_faults > injected;
            if !reached {
                unreached += 1;
            }
            assert_eq!(
                sim.stats().pending_host_copies,
                0,
                "{d:?}, call {k} of {n} failing: work left in flight"
            );
            match r {
                Ok(out) => {
                    // A failure the engine may absorb (a refused pinned allocation: staged
                    // instead); the output must still be right.
                    assert!(
                        equal(&out, &want),
                        "{d:?}, call {k} of {n} failing: wrong output"
                    );
                    if reached {
                        fine += 1;
                        eprintln!("{d:?}: call {k} of {n} failing was absorbed");
                    }
                }
                Err(e) => {
                    assert!(
                        typed(&e),
                        "{d:?}, call {k} of {n} failing: untyped error {e:?}"
                    );
                    errors += 1;
                }
            }
            let again = run(&engine, &dt, b, d, &mut prep(d))
                .unwrap_or_else(|e| panic!("{d:?}: the drain after call {k} failed: {e}"));
            assert!(
                equal(&again, &want),
                "{d:?}: the drain after call {k} failing is wrong"
            );
        }
        assert!(errors > 0, "{d:?}: no injected failure surfaced");
        assert!(
            unreached * 4 <= n,
            "{d:?}: {unreached} of {n} injections never reached"
        );
        report.push(format!(
            "{d:?}: {n} calls, {errors} errors, {fine} absorbed, {unreached} not reached"
        ));
    }
    assert_eq!(
        PANICS.load(Ordering::SeqCst),
        0,
        "a panic happened (caught or not)"
    );
    drop(dt);
    drop(engine);
    let st = sim.stats();
    assert_eq!(
        st.leaked_allocs, 0,
        "the context was destroyed with allocations live"
    );
    assert_eq!(
        (st.device_allocs, st.pinned_allocs),
        (0, 0),
        "allocations left: {st:?}"
    );
    assert!(st.injected_faults > 0);
    println!("{}", report.join("\n"));
}
