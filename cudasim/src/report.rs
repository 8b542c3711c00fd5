//! How the simulator fails: a report on stderr naming the call (or the running operation) and
//! the allocation concerned, then `abort()` — a test that misuses the driver dies loudly, as
//! under compute-sanitizer. Memory faults inside simulated operations (a kernel past a guard
//! page, a copy into freed memory) are caught by a SIGSEGV/SIGBUS handler that reports the same
//! way.

use std::cell::{Cell, UnsafeCell};
use std::sync::Once;

use crate::mem;

/// Prints the report and aborts the process.
pub fn fail(call: &str, msg: &str) -> ! {
    eprintln!("cudasim: ERROR in {call}: {msg}");
    eprintln!("cudasim: aborting (a misuse of the CUDA driver API was detected)");
    std::process::abort()
}

const OP_LEN: usize = 480;

thread_local! {
    static OP: UnsafeCell<[u8; OP_LEN]> = const { UnsafeCell::new([0; OP_LEN]) };
    static OP_USED: Cell<usize> = const { Cell::new(0) };
}

/// Names the operation this thread runs now, for the fault handler.
pub fn set_current_op(desc: &str) {
    let n = desc.len().min(OP_LEN);
    OP.with(|b| {
        // SAFETY: the buffer is this thread's own; the only other reader is this thread's signal
        // handler, which reads at most `OP_USED` bytes, set after the copy.
        unsafe { (&mut *b.get())[..n].copy_from_slice(&desc.as_bytes()[..n]) };
    });
    OP_USED.with(|u| u.set(n));
}

fn raw_write(s: &[u8]) {
    // SAFETY: write(2) on stderr with a valid buffer; async-signal-safe.
    unsafe { libc::write(2, s.as_ptr().cast(), s.len()) };
}

static mut OLD_SEGV: Option<libc::sigaction> = None;
static mut OLD_BUS: Option<libc::sigaction> = None;

extern "C" fn on_fault(sig: libc::c_int, info: *mut libc::siginfo_t, ctx: *mut libc::c_void) {
    // SAFETY: the kernel passes a valid siginfo for SA_SIGINFO handlers.
    let addr = unsafe { (*info).si_addr() } as usize;
    let used = OP_USED.with(|u| u.get());
    let mut ours = used > 0;
    let mut line = String::new();
    if let Some(reg) = mem::try_registry() {
        if let Some(a) = reg.around(addr) {
            ours = true;
            line = format!(
                "cudasim: ERROR: memory fault at host address {addr:#x} (device {:#x}): {} of {a}\n",
                addr as u64 + mem::DEVICE_OFFSET,
                match &a.life {
                    mem::Life::Freed(_) => "a use after free",
                    _ => "out of bounds",
                },
            );
        }
    }
    if ours {
        if line.is_empty() {
            line = format!("cudasim: ERROR: memory fault at address {addr:#x} (no simulated allocation there; 0 is also what a non-canonical address such as a device pointer reports)\n");
        }
        raw_write(line.as_bytes());
        if used > 0 {
            raw_write(b"cudasim: while running ");
            OP.with(|b| {
                // SAFETY: this thread's buffer, `used` bytes written by `set_current_op`.
                raw_write(unsafe { &(&*b.get())[..used] })
            });
            raw_write(b"\n");
        }
        raw_write(b"cudasim: aborting (a misuse of the CUDA driver API was detected)\n");
        std::process::abort();
    }
    if addr < 4096 || (addr as u64) >= 1 << 47 {
        raw_write(b"cudasim: memory fault outside any simulated operation at a null or non-canonical address (a device pointer dereferenced on the host?)\n");
    }
    // Not ours: hand it to the handler installed before (e.g. Rust's stack-overflow check), or
    // let the default action run when the faulting instruction is retried.
    // SAFETY: reading the handlers saved at installation, which never change afterwards.
    unsafe {
        let old = if sig == libc::SIGBUS {
            (*std::ptr::addr_of!(OLD_BUS)).as_ref()
        } else {
            (*std::ptr::addr_of!(OLD_SEGV)).as_ref()
        };
        match old {
            Some(o) if o.sa_flags & libc::SA_SIGINFO != 0 && o.sa_sigaction > 1 => {
                let f: extern "C" fn(libc::c_int, *mut libc::siginfo_t, *mut libc::c_void) =
                    std::mem::transmute(o.sa_sigaction);
                f(sig, info, ctx);
            }
            Some(o) if o.sa_sigaction > 1 => {
                let f: extern "C" fn(libc::c_int) = std::mem::transmute(o.sa_sigaction);
                f(sig);
            }
            _ => {
                libc::signal(sig, libc::SIG_DFL);
            }
        }
    }
}

/// Installs the fault handler once (at `cuInit`).
pub fn install_fault_handler() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        // SAFETY: installs a handler for SIGSEGV and SIGBUS, saving the previous ones, before any
        // simulated operation runs; the handler only reads state and writes to stderr before
        // aborting, or chains to the previous handler.
        unsafe {
            for (sig, slot) in [
                (libc::SIGSEGV, std::ptr::addr_of_mut!(OLD_SEGV)),
                (libc::SIGBUS, std::ptr::addr_of_mut!(OLD_BUS)),
            ] {
                let mut sa: libc::sigaction = std::mem::zeroed();
                sa.sa_sigaction = on_fault as *const () as usize;
                sa.sa_flags = libc::SA_SIGINFO | libc::SA_ONSTACK;
                libc::sigemptyset(&mut sa.sa_mask);
                let mut old: libc::sigaction = std::mem::zeroed();
                if libc::sigaction(sig, &sa, &mut old) == 0 {
                    *slot = Some(old);
                }
            }
        }
    });
}
