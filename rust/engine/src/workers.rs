//! The encoder's threads for one call, woken as the call starts.
//!
//! A pool's idle threads sleep; waking one is a futex wake and, on a virtual machine,
//! the host scheduling an idle vCPU back in: hundreds of microseconds here, as much
//! as the parallel part of a small later round. [`Workers::start`] sends the threads a
//! task that spins (at most [`SPIN`]) while the call does its sequential work, so the
//! wake-up overlaps that work; the first parallel part ends the spin and finds the
//! threads awake.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Longest a woken thread waits for the parallel part before going back to sleep.
const SPIN: Duration = Duration::from_millis(1);

/// Runs a call's parallel parts in the encoder's pool (or the current one).
pub(crate) struct Workers<'p> {
    pool: Option<&'p rayon::ThreadPool>,
    /// set when the spinning threads are to stop
    go: Option<Arc<AtomicBool>>,
}

impl<'p> Workers<'p> {
    /// Wakes `pool`'s threads (no pool: the caller's context, nothing to wake).
    pub(crate) fn start(pool: Option<&'p rayon::ThreadPool>) -> Self {
        let go = pool.map(|pool| {
            let go = Arc::new(AtomicBool::new(false));
            let flag = Arc::clone(&go);
            pool.spawn_broadcast(move |_| {
                let until = Instant::now() + SPIN;
                while !flag.load(Ordering::Acquire) && Instant::now() < until {
                    std::hint::spin_loop();
                }
            });
            go
        });
        Self { pool, go }
    }

    /// Whether parallel parts run on more than the caller's thread: a pool of the
    /// encoder's, or a rayon pool the caller runs in.
    pub(crate) fn parallel(&self) -> bool {
        self.pool.is_some() || rayon::current_thread_index().is_some()
    }

    /// How many threads the parallel parts run on.
    pub(crate) fn threads(&self) -> usize {
        self.pool.map_or_else(
            rayon::current_num_threads,
            rayon::ThreadPool::current_num_threads,
        )
    }

    /// Runs `work` (which may use rayon's parallel iterators) in the pool.
    pub(crate) fn run<R: Send>(&mut self, work: impl FnOnce() -> R + Send) -> R {
        self.stop_spinning();
        match self.pool {
            Some(pool) => pool.install(work),
            None => work(),
        }
    }

    fn stop_spinning(&mut self) {
        if let Some(go) = self.go.take() {
            go.store(true, Ordering::Release);
        }
    }
}

impl Drop for Workers<'_> {
    fn drop(&mut self) {
        self.stop_spinning();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rayon::prelude::*;

    #[test]
    fn parts_run_in_the_pool_and_a_call_without_parallel_parts_ends() {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(2)
            .build()
            .unwrap();
        let mut workers = Workers::start(Some(&pool));
        assert!(workers.parallel());
        let sum: u64 = workers.run(|| (0..1000u64).into_par_iter().sum());
        assert_eq!(sum, 499_500);
        assert!(workers.run(rayon::current_thread_index).is_some());
        drop(workers);
        // woken and never used: the spinning tasks end and the pool still works
        drop(Workers::start(Some(&pool)));
        assert_eq!(pool.install(|| (0..10u64).into_par_iter().sum::<u64>()), 45);
    }

    #[test]
    fn without_a_pool_parts_run_on_the_caller() {
        let mut workers = Workers::start(None);
        assert!(!workers.parallel());
        assert_eq!(workers.run(rayon::current_thread_index), None);
    }
}
