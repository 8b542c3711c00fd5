//! The simulator's global state: configuration, contexts, streams, events, modules, and the
//! calling thread's current context.

use std::cell::Cell;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};

use crate::sched::Stream;

/// Settings read once, at `cuInit`.
#[derive(Debug, Clone)]
pub struct Config {
    pub seed: u64,
    pub device_bytes: u64,
    pub pinned_bytes: u64,
    pub max_delay_us: u64,
    pub min_delay_us: u64,
    pub driver_version: i32,
    pub verbose: bool,
}

fn env_bytes(name: &str, default: u64) -> u64 {
    let Ok(v) = std::env::var(name) else {
        return default;
    };
    let v = v.trim();
    let (num, mult) = match v.chars().last() {
        Some('K' | 'k') => (&v[..v.len() - 1], 1u64 << 10),
        Some('M' | 'm') => (&v[..v.len() - 1], 1 << 20),
        Some('G' | 'g') => (&v[..v.len() - 1], 1 << 30),
        _ => (v, 1),
    };
    match num.parse::<u64>() {
        Ok(n) => n.saturating_mul(mult),
        Err(_) => {
            log(&format!("{name}={v} is not a byte count; using {default}"));
            default
        }
    }
}

fn env_num<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(default)
}

impl Config {
    fn from_env() -> Config {
        Config {
            seed: env_num("ARRAYDRAIN_SIM_SEED", 0u64),
            device_bytes: env_bytes("ARRAYDRAIN_SIM_DEVICE_BYTES", 2 << 30),
            pinned_bytes: env_bytes("ARRAYDRAIN_SIM_PINNED_BYTES", 4 << 30),
            max_delay_us: env_num("ARRAYDRAIN_SIM_DELAY_US", 100u64),
            min_delay_us: env_num("ARRAYDRAIN_SIM_MIN_DELAY_US", 0u64),
            driver_version: env_num("ARRAYDRAIN_SIM_DRIVER_VERSION", 13000i32),
            verbose: std::env::var("ARRAYDRAIN_SIM_LOG").is_ok_and(|v| v == "1"),
        }
    }
}

static CONFIG: OnceLock<Config> = OnceLock::new();
static INITIALISED: AtomicBool = AtomicBool::new(false);

pub fn config() -> &'static Config {
    CONFIG.get_or_init(Config::from_env)
}

pub fn initialised() -> bool {
    INITIALISED.load(Ordering::Acquire)
}

pub fn set_initialised() {
    let _ = config();
    INITIALISED.store(true, Ordering::Release);
}

/// Writes one line to stderr, prefixed so it cannot be mistaken for the program's output.
pub fn log(msg: &str) {
    eprintln!("cudasim: {msg}");
}

pub fn trace(msg: impl FnOnce() -> String) {
    if config().verbose {
        log(&msg());
    }
}

/// Handle values: never 0, 1 (`CU_STREAM_LEGACY`) or 2 (`CU_STREAM_PER_THREAD`), distinct per
/// kind, so a handle of the wrong kind is refused.
pub const CTX_BASE: usize = 0xC7_0000;
pub const STREAM_BASE: usize = 0x57_0000;
pub const EVENT_BASE: usize = 0xE7_0000;
pub const MODULE_BASE: usize = 0x30_0000;
pub const FUNCTION_BASE: usize = 0xF0_0000;
pub const POOL_HANDLE: usize = 0x9000_0000;

pub fn handle(base: usize, id: u64) -> usize {
    base + (id as usize) * 0x10
}

pub fn id_of(base: usize, h: usize) -> Option<u64> {
    let off = h.checked_sub(base)?;
    (off % 0x10 == 0 && off > 0 && off < 0x10_0000 * 0x10).then_some((off / 0x10) as u64)
}

pub struct Ctx {
    pub primary: bool,
    pub refs: u64,
    pub legacy: Arc<Stream>,
    /// Streams created in this context (not the legacy one), by id.
    pub streams: Vec<u64>,
    /// Destroyed streams whose issued work may still be running: context synchronisation and
    /// destruction wait for it too.
    pub retired: Vec<Arc<Stream>>,
}

pub struct Event {
    pub ctx: u64,
    /// The stream and operation the last record stands for.
    pub recorded: Option<(Arc<crate::sched::StreamState>, u64)>,
}

pub struct Module {
    pub ctx: u64,
    pub image: Vec<u8>,
}

pub struct Function {
    pub module: u64,
    pub name: String,
    /// Index into the host build's entry points (`kernel::ENTRIES`).
    pub entry: usize,
}

#[derive(Default)]
pub struct Handles {
    pub next: u64,
    pub ctxs: HashMap<u64, Ctx>,
    pub primary: Option<u64>,
    pub streams: HashMap<u64, Arc<Stream>>,
    pub events: HashMap<u64, Event>,
    pub modules: HashMap<u64, Module>,
    pub functions: HashMap<u64, Function>,
    pub release_threshold: u64,
    /// Per-thread default streams, by (thread, context).
    pub per_thread: HashMap<(u64, u64), Arc<Stream>>,
}

impl Handles {
    pub fn fresh_id(&mut self) -> u64 {
        self.next += 1;
        self.next
    }
}

static HANDLES: OnceLock<Mutex<Handles>> = OnceLock::new();

pub fn handles() -> MutexGuard<'static, Handles> {
    HANDLES
        .get_or_init(|| Mutex::new(Handles::default()))
        .lock()
        .unwrap_or_else(|p| p.into_inner())
}

thread_local! {
    /// The calling thread's current context id (0: none).
    pub static CURRENT: Cell<u64> = const { Cell::new(0) };
    static THREAD_ID: Cell<u64> = const { Cell::new(0) };
}

pub fn current_ctx() -> u64 {
    CURRENT.with(|c| c.get())
}

pub fn set_current_ctx(id: u64) {
    CURRENT.with(|c| c.set(id));
}

pub fn thread_id() -> u64 {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
    THREAD_ID.with(|t| {
        if t.get() == 0 {
            t.set(NEXT.fetch_add(1, Ordering::Relaxed));
        }
        t.get()
    })
}
