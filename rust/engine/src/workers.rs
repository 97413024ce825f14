//! The encoder's threads for one call: the caller's own thread plus a pool of
//! `threads - 1` helpers, woken as the call starts.
//!
//! A pool's idle threads sleep; waking one is a futex wake and, on a virtual machine,
//! the host scheduling an idle vCPU back in: hundreds of microseconds here, as long
//! as the parallel part of a small later round. So:
//! - [`Workers::start`] sends the helpers a task that spins (at most [`SPIN`]) while
//!   the caller does the call's sequential work: their wake-up overlaps that work.
//! - [`Workers::each`] runs jobs from one queue on the caller and the helpers alike.
//!   The caller never hands the work off and waits: a helper that is late only takes
//!   fewer jobs (the caller waits at the end only for jobs a helper has begun, and
//!   for a helper that never woke to find the queue empty).

use std::mem::MaybeUninit;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use crate::mem::write_slice;

/// Longest a woken helper waits for the parallel part before going back to sleep.
const SPIN: Duration = Duration::from_millis(1);

/// Runs a call's parallel parts on the caller and the encoder's helper threads.
pub(crate) struct Workers<'p> {
    helpers: Option<&'p rayon::ThreadPool>,
    /// set when the spinning helpers are to stop
    go: Option<Arc<AtomicBool>>,
}

impl<'p> Workers<'p> {
    /// Wakes `helpers`' threads (none: every part runs on the caller alone).
    pub(crate) fn start(helpers: Option<&'p rayon::ThreadPool>) -> Self {
        let go = helpers.map(|pool| {
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
        Self { helpers, go }
    }

    /// How many threads the parallel parts run on (the caller's included).
    pub(crate) fn threads(&self) -> usize {
        1 + self
            .helpers
            .map_or(0, rayon::ThreadPool::current_num_threads)
    }

    /// `work` applied to every job, on the caller and the helpers; the results in the
    /// jobs' order.
    pub(crate) fn each<J: Send, R: Send>(
        &mut self,
        jobs: Vec<J>,
        work: impl Fn(J) -> R + Sync,
    ) -> Vec<R> {
        self.stop_spinning();
        let n = jobs.len();
        let Some(pool) = self.helpers.filter(|_| n > 1) else {
            return jobs.into_iter().map(work).collect();
        };
        let helpers = pool.current_num_threads().min(n - 1);
        let queue = Mutex::new(jobs.into_iter().enumerate());
        let done = Mutex::new(Vec::with_capacity(n));
        let drain = || loop {
            // (a job that panics poisons nothing: no lock is held while it runs, and
            // the scope passes the panic on to the caller)
            let next = queue.lock().unwrap_or_else(PoisonError::into_inner).next();
            let Some((i, job)) = next else { break };
            let result = work(job);
            done.lock()
                .unwrap_or_else(PoisonError::into_inner)
                .push((i, result));
        };
        pool.in_place_scope(|scope| {
            for _ in 0..helpers {
                scope.spawn(|_| drain());
            }
            drain();
        });
        let mut done = done.into_inner().unwrap_or_else(PoisonError::into_inner);
        done.sort_unstable_by_key(|&(i, _)| i);
        done.into_iter().map(|(_, result)| result).collect()
    }

    /// `pieces` copied back to back into `out` (exactly as long as they are together;
    /// every byte of it is written), one piece per job.
    ///
    /// # Panics
    /// When `out` is not exactly as long as the pieces together.
    pub(crate) fn join_into(&mut self, pieces: &[Vec<u8>], out: &mut [MaybeUninit<u8>]) {
        let total = pieces.iter().map(Vec::len).sum::<usize>();
        assert_eq!(out.len(), total);
        let mut rest = out;
        let mut jobs = Vec::with_capacity(pieces.len());
        for piece in pieces {
            let (head, tail) = std::mem::take(&mut rest).split_at_mut(piece.len());
            jobs.push((piece.as_slice(), head));
            rest = tail;
        }
        self.each(jobs, |(piece, to)| write_slice(to, piece));
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

    fn helpers(threads: usize) -> rayon::ThreadPool {
        rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .unwrap()
    }

    #[test]
    fn jobs_run_on_the_caller_and_the_helpers_and_keep_their_order() {
        let pool = helpers(1);
        let mut workers = Workers::start(Some(&pool));
        assert_eq!(workers.threads(), 2);
        let out = workers.each((0..1000u64).collect(), |j| {
            std::thread::sleep(Duration::from_micros(j % 3));
            (j * j, rayon::current_thread_index())
        });
        assert_eq!(
            out.iter().map(|&(sq, _)| sq).collect::<Vec<_>>(),
            (0..1000u64).map(|j| j * j).collect::<Vec<_>>()
        );
        // the caller took jobs (it is no pool thread)
        assert!(out.iter().any(|&(_, thread)| thread.is_none()));
        assert!(workers.each(Vec::<u8>::new(), |j| j).is_empty());
    }

    #[test]
    fn helpers_woken_for_nothing_go_back_and_the_pool_still_works() {
        let pool = helpers(2);
        drop(Workers::start(Some(&pool)));
        let mut workers = Workers::start(Some(&pool));
        assert_eq!(workers.each(vec![1, 2, 3], |j| j + 1), vec![2, 3, 4]);
    }

    #[test]
    fn pieces_are_joined_in_order_with_and_without_helpers() {
        let pool = helpers(1);
        let pieces: Vec<Vec<u8>> = (0..40u8).map(|n| vec![n; usize::from(n) * 3]).collect();
        let want = pieces.concat();
        for few in [&pieces[..3], &pieces[..]] {
            for pool in [None, Some(&pool)] {
                let mut out = vec![MaybeUninit::new(0xEE); few.iter().map(Vec::len).sum()];
                Workers::start(pool).join_into(few, &mut out);
                assert_eq!(init(&out), few.concat());
            }
        }
        let mut out = vec![MaybeUninit::uninit(); want.len()];
        Workers::start(Some(&pool)).join_into(&pieces, &mut out);
        assert_eq!(init(&out), want);
    }

    fn init(bytes: &[MaybeUninit<u8>]) -> Vec<u8> {
        // SAFETY: only called on buffers `join_into` wrote whole
        bytes.iter().map(|b| unsafe { b.assume_init() }).collect()
    }

    #[test]
    #[should_panic(expected = "assertion")]
    fn joining_into_a_buffer_of_another_length_panics() {
        Workers::start(None).join_into(&[vec![1, 2]], &mut [MaybeUninit::new(0); 3]);
    }

    #[test]
    fn without_helpers_every_job_runs_on_the_caller() {
        let mut workers = Workers::start(None);
        assert_eq!(workers.threads(), 1);
        let out = workers.each(vec![1, 2], |j| (j, rayon::current_thread_index()));
        assert_eq!(out, vec![(1, None), (2, None)]);
    }

    #[test]
    #[should_panic(expected = "job 7")]
    fn a_panicking_job_reaches_the_caller() {
        let pool = helpers(1);
        let mut workers = Workers::start(Some(&pool));
        workers.each((0..20).collect(), |j: i32| assert!(j != 7, "job 7"));
    }
}
