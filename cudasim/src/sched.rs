//! Streams: each runs its operations in issue order on a worker thread of its own, after a
//! seeded random delay, once the operations it depends on (event waits, the legacy default
//! stream's implicit ordering) have completed.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{channel, Sender};
use std::sync::{Arc, Condvar, Mutex, OnceLock, Weak};
use std::time::Duration;

use crate::report;
use crate::state::config;

/// Progress of one stream: operations issued and completed, numbered from 1.
pub struct StreamState {
    pub id: u64,
    issued: AtomicU64,
    completed: AtomicU64,
}

impl StreamState {
    pub fn issued(&self) -> u64 {
        self.issued.load(Ordering::Acquire)
    }
    pub fn completed(&self) -> u64 {
        self.completed.load(Ordering::Acquire)
    }
    pub fn done(&self, seq: u64) -> bool {
        self.completed() >= seq
    }
}

/// One condition variable for every completion (the simulator is for tests, not speed).
fn signal() -> &'static (Mutex<()>, Condvar) {
    static S: OnceLock<(Mutex<()>, Condvar)> = OnceLock::new();
    S.get_or_init(|| (Mutex::new(()), Condvar::new()))
}

/// Blocks until operation `seq` of `state` has completed.
pub fn wait_for(state: &StreamState, seq: u64) {
    let (m, c) = signal();
    let mut g = m.lock().unwrap_or_else(|p| p.into_inner());
    while !state.done(seq) {
        g = c
            .wait_timeout(g, Duration::from_millis(50))
            .unwrap_or_else(|p| p.into_inner())
            .0;
    }
}

fn notify() {
    let (m, c) = signal();
    let _g = m.lock().unwrap_or_else(|p| p.into_inner());
    c.notify_all();
}

pub type Dep = (Arc<StreamState>, u64);

pub struct Op {
    pub seq: u64,
    pub name: &'static str,
    pub desc: String,
    pub deps: Vec<Dep>,
    pub work: Box<dyn FnOnce() + Send>,
}

pub struct Stream {
    pub id: u64,
    pub ctx: u64,
    /// Synchronises with the legacy default stream (flag 0, and the per-thread stream).
    pub blocking: bool,
    pub legacy: bool,
    pub state: Arc<StreamState>,
    tx: Mutex<Option<Sender<Op>>>,
}

fn all_states() -> &'static Mutex<Vec<Weak<StreamState>>> {
    static ALL: OnceLock<Mutex<Vec<Weak<StreamState>>>> = OnceLock::new();
    ALL.get_or_init(|| Mutex::new(Vec::new()))
}

/// Operations issued on any stream and not yet completed.
pub fn pending() -> u64 {
    let mut all = all_states().lock().unwrap_or_else(|p| p.into_inner());
    all.retain(|w| w.strong_count() > 0);
    all.iter()
        .filter_map(Weak::upgrade)
        .map(|s| s.issued() - s.completed())
        .sum()
}

fn splitmix(z: &mut u64) -> u64 {
    *z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut x = *z;
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

/// A seeded generator for stream `id`'s delays and launch orders.
pub fn rng_for(id: u64, salt: u64) -> u64 {
    let mut s = config().seed ^ id.wrapping_mul(0xA076_1D64_78BD_642F) ^ salt;
    splitmix(&mut s)
}

pub fn next(r: &mut u64) -> u64 {
    splitmix(r)
}

/// The delay before an operation, from one random draw: the minimum, plus for one operation in
/// 16 a uniform delay up to the maximum, and for one in 256 ten times the maximum — enough
/// that work issued without the ordering it needs often runs late, cheap enough that the
/// simulated suites take minutes.
fn delay_us(cfg: &crate::state::Config, r: u64) -> u64 {
    let span = cfg.max_delay_us.saturating_sub(cfg.min_delay_us);
    let extra = match r >> 56 {
        0 => span.saturating_mul(10),
        x if x % 16 == 0 && span > 0 => (r & 0xFFFF_FFFF) % (span + 1),
        _ => 0,
    };
    cfg.min_delay_us + extra
}

impl Stream {
    pub fn new(id: u64, ctx: u64, blocking: bool, legacy: bool) -> Arc<Stream> {
        let state = Arc::new(StreamState {
            id,
            issued: AtomicU64::new(0),
            completed: AtomicU64::new(0),
        });
        all_states()
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(Arc::downgrade(&state));
        let (tx, rx) = channel::<Op>();
        let worker_state = Arc::clone(&state);
        std::thread::Builder::new()
            .name(format!("cudasim-stream-{id}"))
            .spawn(move || {
                let cfg = config();
                let mut rng = rng_for(id, 0x5EED);
                for op in rx {
                    for (dep, seq) in &op.deps {
                        wait_for(dep, *seq);
                    }
                    let r = next(&mut rng);
                    let us = delay_us(cfg, r);
                    if us > 0 {
                        std::thread::sleep(Duration::from_micros(us));
                    }
                    report::set_current_op(&op.desc);
                    (op.work)();
                    report::set_current_op("");
                    worker_state.completed.store(op.seq, Ordering::Release);
                    notify();
                }
            })
            .expect("cudasim: cannot start a stream worker thread");
        Arc::new(Stream {
            id,
            ctx,
            blocking,
            legacy,
            state,
            tx: Mutex::new(Some(tx)),
        })
    }

    /// Issues an operation; returns its number on this stream.
    pub fn issue(
        &self,
        name: &'static str,
        desc: String,
        deps: Vec<Dep>,
        work: Box<dyn FnOnce() + Send>,
    ) -> u64 {
        let tx = self.tx.lock().unwrap_or_else(|p| p.into_inner());
        let seq = self.state.issued() + 1;
        self.state.issued.store(seq, Ordering::Release);
        let op = Op {
            seq,
            name,
            desc,
            deps,
            work,
        };
        match tx.as_ref() {
            Some(tx) if tx.send(op).is_ok() => {}
            _ => report::fail(name, &format!("stream #{} was destroyed", self.id)),
        }
        seq
    }

    /// Lets the worker finish what was issued, then stop.
    pub fn close(&self) {
        self.tx.lock().unwrap_or_else(|p| p.into_inner()).take();
    }

    /// Blocks until everything issued so far has completed.
    pub fn drain(&self) {
        wait_for(&self.state, self.state.issued());
    }
}

impl Op {
    #[allow(dead_code)]
    pub fn describe(&self) -> String {
        format!("{} ({})", self.name, self.desc)
    }
}
