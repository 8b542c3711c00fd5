//! A small pool of reusable values that are taken for the length of one call and given back
//! when it ends. The engine keeps its lanes (streams with their buffers) here instead of behind a
//! mutex held for a whole drain: a lock held across the drain's waits self-deadlocks when the
//! engine is called again from a rayon job that the waiting thread runs (rayon lets a thread
//! blocked in `join` run other jobs). With a checkout, a nested or concurrent call takes
//! another set of lanes — made on demand — and the lock is held only to pop or push.

use std::ops::{Deref, DerefMut};
use std::sync::Mutex;

use crate::error::Result;

/// Values taken one call at a time; at most `keep` idle ones are kept.
#[derive(Debug)]
pub(crate) struct Checkout<T> {
    free: Mutex<Vec<T>>,
    keep: usize,
}

impl<T> Checkout<T> {
    pub(crate) fn new(initial: Vec<T>, keep: usize) -> Self {
        Checkout {
            free: Mutex::new(initial),
            keep,
        }
    }

    /// An idle value, or a new one from `make` when none is idle. The lock is not held while
    /// `make` runs.
    pub(crate) fn take(&self, make: impl FnOnce() -> Result<T>) -> Result<Held<'_, T>> {
        let idle = self.free.lock().unwrap_or_else(|p| p.into_inner()).pop();
        let item = match idle {
            Some(v) => v,
            None => make()?,
        };
        Ok(Held {
            item: Some(item),
            home: self,
        })
    }

    /// Idle values now.
    #[cfg(test)]
    pub(crate) fn idle(&self) -> usize {
        self.free.lock().unwrap_or_else(|p| p.into_inner()).len()
    }
}

/// A value taken from a [`Checkout`]; given back when dropped.
#[derive(Debug)]
pub(crate) struct Held<'a, T> {
    item: Option<T>,
    home: &'a Checkout<T>,
}

impl<T> Deref for Held<'_, T> {
    type Target = T;
    fn deref(&self) -> &T {
        match &self.item {
            Some(v) => v,
            None => unreachable!("a Held value is present until it is dropped"),
        }
    }
}

impl<T> DerefMut for Held<'_, T> {
    fn deref_mut(&mut self) -> &mut T {
        match &mut self.item {
            Some(v) => v,
            None => unreachable!("a Held value is present until it is dropped"),
        }
    }
}

impl<T> Drop for Held<'_, T> {
    fn drop(&mut self) {
        let Some(v) = self.item.take() else { return };
        let surplus = {
            let mut free = self.home.free.lock().unwrap_or_else(|p| p.into_inner());
            if free.len() < self.home.keep {
                free.push(v);
                None
            } else {
                Some(v)
            }
        };
        // A surplus value is dropped outside the lock (freeing device resources can block).
        drop(surplus);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rayon::prelude::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::mpsc;
    use std::time::Duration;

    /// A call that holds a value across rayon work whose jobs call it again — the shape of a
    /// staged drain (parallel host copies) run from inside a rayon pool — completes: nested
    /// calls take other values instead of waiting for the one held by their own thread.
    #[test]
    fn nested_calls_from_rayon_jobs_do_not_deadlock() {
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(2)
                .build()
                .expect("a rayon pool");
            let made = AtomicUsize::new(0);
            let lanes = Checkout::new(vec![0usize], 2);
            let call = |depth: usize| -> usize {
                fn go(lanes: &Checkout<usize>, made: &AtomicUsize, depth: usize) -> usize {
                    let held = lanes
                        .take(|| Ok(made.fetch_add(1, Ordering::SeqCst) + 1))
                        .expect("take");
                    let inner: usize = if depth == 0 {
                        0
                    } else {
                        (0..8usize)
                            .into_par_iter()
                            .map(|_| go(lanes, made, depth - 1))
                            .sum()
                    };
                    drop(held);
                    inner + 1
                }
                go(&lanes, &made, depth)
            };
            let calls: usize = pool.install(|| (0..4usize).into_par_iter().map(|_| call(2)).sum());
            let _ = tx.send((calls, made.load(Ordering::SeqCst), lanes.idle()));
        });
        let (calls, made, idle) = rx
            .recv_timeout(Duration::from_secs(60))
            .expect("nested calls deadlocked");
        assert_eq!(calls, 4 * (1 + 8 + 64));
        assert!(made >= 1, "nested calls had to make values");
        assert!(idle <= 2, "at most `keep` idle values are kept, not {idle}");
    }

    #[test]
    fn values_are_reused_and_failures_to_make_are_errors() {
        let c = Checkout::new(Vec::<u32>::new(), 1);
        let a = c.take(|| Ok(1)).unwrap();
        let b = c.take(|| Ok(2)).unwrap();
        assert_eq!((*a, *b), (1, 2));
        drop(a);
        drop(b); // over `keep`: dropped
        assert_eq!(c.idle(), 1);
        let again = c.take(|| Ok(9)).unwrap();
        assert_eq!(*again, 1, "the idle value is reused");
        let e = c
            .take(|| Err(crate::Error::Cuda(crate::cuda::CudaError::NotCompiled)))
            .unwrap_err();
        assert!(matches!(
            e,
            crate::Error::Cuda(crate::cuda::CudaError::NotCompiled)
        ));
    }
}
