//! An encoder's or a decoder's threads for one call: the caller's own thread plus a
//! pool of `threads - 1` helpers, woken as the call starts.
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

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use crate::error::{EngineError, Result};

/// Longest a woken helper waits for the parallel part before going back to sleep.
const SPIN: Duration = Duration::from_millis(1);

/// `threads` if it is a thread count an encoder or a decoder takes.
///
/// # Errors
/// [`EngineError::InvalidArgument`] outside 1..=1024.
pub(crate) fn check_threads(threads: usize) -> Result<usize> {
    if (1..=1024).contains(&threads) {
        Ok(threads)
    } else {
        Err(EngineError::invalid("threads must be 1..=1024"))
    }
}

/// A pool of `threads - 1` helpers named `name-N` (none for one thread).
///
/// # Errors
/// [`EngineError::InvalidArgument`] for a thread count outside 1..=1024, or if the
/// pool cannot be made.
pub(crate) fn helper_pool(threads: usize, name: &'static str) -> Result<Option<rayon::ThreadPool>> {
    if check_threads(threads)? == 1 {
        return Ok(None);
    }
    rayon::ThreadPoolBuilder::new()
        .num_threads(threads - 1)
        .thread_name(move |i| format!("{name}-{i}"))
        .build()
        .map(Some)
        .map_err(|e| EngineError::invalid(format!("thread pool: {e}")))
}

/// Runs a call's parallel parts on the caller and the helper threads.
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
            pool.spawn_broadcast(move |_| spin(&flag));
            go
        });
        Self { helpers, go }
    }

    /// True while the helpers are kept awake (woken at the start, or spinning since
    /// the last parallel part): with helpers, always, until the workers go.
    #[cfg(test)]
    fn awake(&self) -> bool {
        self.go.is_some()
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
        let n = jobs.len();
        let mut jobs = jobs.into_iter();
        self.each_made(n, || jobs.next(), work)
    }

    /// `work` applied to every job `make` gives (until it gives `None`), the results in
    /// the jobs' order. The caller makes the jobs one after another while the helpers
    /// already work on the first ones (a sequential step that yields the jobs in order
    /// then overlaps the parallel part instead of preceding it), and works through the
    /// rest itself once `make` is done. `expected`: how many jobs `make` will give (it
    /// decides how many helpers are used).
    pub(crate) fn each_made<J: Send, R: Send>(
        &mut self,
        expected: usize,
        make: impl FnMut() -> Option<J>,
        work: impl Fn(J) -> R + Sync,
    ) -> Vec<R> {
        let mut out = Vec::with_capacity(expected);
        self.each_made_in_order(expected, make, work, |result| out.push(result));
        out
    }

    /// As [`Workers::each_made`], but each result goes to `consume` in the jobs' order as
    /// soon as it and every one before it are done, on the thread that finished the
    /// last of them (one at a time): results wait only for those before them, not for
    /// the whole call, and the consuming is spread over the threads.
    pub(crate) fn each_made_in_order<J: Send, R: Send>(
        &mut self,
        expected: usize,
        mut make: impl FnMut() -> Option<J>,
        work: impl Fn(J) -> R + Sync,
        mut consume: impl FnMut(R) + Send,
    ) {
        let Some(pool) = self.helpers.filter(|_| expected > 1) else {
            while let Some(job) = make() {
                consume(work(job));
            }
            return;
        };
        self.stop_spinning();
        let helpers = pool.current_num_threads().min(expected - 1);
        let feed = Mutex::new(Feed {
            jobs: VecDeque::with_capacity(expected),
            closed: false,
        });
        let mut delivery = Mutex::new(Delivery {
            ready: std::collections::BTreeMap::new(),
            next: 0,
            consume,
        });
        // results not yet taken in by the delivering thread (held only to add or take)
        let incoming = Mutex::new(Vec::new());
        let take_in =
            || std::mem::take(&mut *incoming.lock().unwrap_or_else(PoisonError::into_inner));
        // delivers what is ready unless another thread is at it: that one takes in
        // what arrived meanwhile before it stops (a thread never sleeps on the lock:
        // a wake-up costs more than the copy it waited for)
        let deliver = || loop {
            let Ok(mut guard) = delivery.try_lock() else {
                return;
            };
            guard.deliver(take_in());
            drop(guard);
            if incoming
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .is_empty()
            {
                return;
            }
        };
        // one job run and its result delivered (with any it was the last missing
        // one for); false once the feed is closed and empty
        let one = || loop {
            let next = {
                let mut feed = feed.lock().unwrap_or_else(PoisonError::into_inner);
                match feed.jobs.pop_front() {
                    Some(next) => Some(next),
                    None if feed.closed => return false,
                    None => None,
                }
            };
            // (no job yet: the caller is making it, a short wait on a woken thread; a
            // job that panics poisons nothing: no lock is held while it runs, and the
            // scope passes the panic on to the caller)
            let Some((i, job)) = next else {
                std::hint::spin_loop();
                continue;
            };
            let result = work(job);
            incoming
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .push((i, result));
            deliver();
            return true;
        };
        let again = Arc::new(AtomicBool::new(false));
        pool.in_place_scope(|scope| {
            for _ in 0..helpers {
                scope.spawn(|_| {
                    while one() {}
                    keep_awake(pool, &again);
                });
            }
            // (the feed is closed even if `make` panics: helpers never wait forever)
            let close = Close(&feed);
            let mut made = 0usize;
            while let Some(job) = make() {
                feed.lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .jobs
                    .push_back((made, job));
                made += 1;
            }
            drop(close);
            while one() {}
        });
        self.go = Some(again);
        // (every thread is done: whatever is left is delivered here)
        let left = take_in();
        delivery
            .get_mut()
            .unwrap_or_else(PoisonError::into_inner)
            .deliver(left);
    }

    /// `work` applied to every job, on the caller and the helpers, and `consume` to
    /// the results in the jobs' order, on the caller, each as soon as it is ready (while
    /// the helpers work on later jobs). Each job comes with a weight (the memory its
    /// result holds): a job starts only while the jobs started and not yet consumed
    /// weigh at most `budget` together, but the next one to consume always may. Stops
    /// at the first error of `consume` and returns it (later jobs not begun never run).
    pub(crate) fn in_order<J: Send, R: Send>(
        &mut self,
        jobs: Vec<(usize, J)>,
        budget: usize,
        work: impl Fn(J) -> R + Sync,
        mut consume: impl FnMut(R) -> Result<()>,
    ) -> Result<()> {
        let Some(pool) = self.helpers.filter(|_| jobs.len() > 1) else {
            for (_, job) in jobs {
                consume(work(job))?;
            }
            return Ok(());
        };
        self.stop_spinning();
        let n = jobs.len();
        let helpers = pool.current_num_threads().min(n - 1);
        let weights: Vec<usize> = jobs.iter().map(|&(w, _)| w).collect();
        let line = Mutex::new(Line {
            jobs: jobs.into_iter().enumerate().collect(),
            ready: (0..n).map(|_| None).collect(),
            next: 0,
            weight: 0,
            stop: false,
            broken: false,
        });
        let lock = || line.lock().unwrap_or_else(PoisonError::into_inner);
        let run = |(i, job): (usize, J)| {
            // (a panic in `work` marks the line broken: the caller stops waiting, and
            // the scope passes the panic on)
            let broken = Broken(&line);
            let result = work(job);
            std::mem::forget(broken);
            lock().ready[i] = Some(result);
        };
        let helper = || loop {
            let taken = {
                let mut line = lock();
                if line.stop {
                    break;
                }
                match line.take(budget) {
                    Take::Job(job) => Some(job),
                    Take::None => break,
                    Take::Wait => None,
                }
            };
            match taken {
                Some(job) => run(job),
                None => std::hint::spin_loop(),
            }
        };
        let again = Arc::new(AtomicBool::new(false));
        let outcome = pool.in_place_scope(|scope| {
            for _ in 0..helpers {
                scope.spawn(|_| {
                    helper();
                    keep_awake(pool, &again);
                });
            }
            // (the helpers stop at the end, on an error and if the caller panics)
            let _stop = Stop(&line);
            for (i, &weight) in weights.iter().enumerate() {
                let result = loop {
                    let taken = {
                        let mut line = lock();
                        if let Some(result) = line.ready[i].take() {
                            line.next = i + 1;
                            line.weight -= weight;
                            break result;
                        }
                        if line.broken {
                            return Ok(()); // the scope panics with the helper's panic
                        }
                        line.take(budget)
                    };
                    match taken {
                        Take::Job(job) => run(job),
                        Take::None | Take::Wait => std::hint::spin_loop(),
                    }
                };
                consume(result)?;
            }
            Ok(())
        });
        self.go = Some(again);
        outcome
    }

    fn stop_spinning(&mut self) {
        if let Some(go) = self.go.take() {
            go.store(true, Ordering::Release);
        }
    }
}

/// Results done but not consumed (by job number), the next to consume, and what
/// consumes them.
struct Delivery<R, C> {
    ready: std::collections::BTreeMap<usize, R>,
    next: usize,
    consume: C,
}

impl<R, C: FnMut(R)> Delivery<R, C> {
    /// Files `arrived` and consumes, in order, every result the next one waited for.
    fn deliver(&mut self, arrived: Vec<(usize, R)>) {
        self.ready.extend(arrived);
        while let Some(result) = self.ready.remove(&self.next) {
            (self.consume)(result);
            self.next += 1;
        }
    }
}

/// Jobs made so far and not yet taken, and whether more will come.
struct Feed<J> {
    jobs: VecDeque<(usize, J)>,
    closed: bool,
}

/// Closes a feed when dropped.
struct Close<'a, J>(&'a Mutex<Feed<J>>);

impl<J> Drop for Close<'_, J> {
    fn drop(&mut self) {
        self.0.lock().unwrap_or_else(PoisonError::into_inner).closed = true;
    }
}

/// Jobs not yet begun (with their index and weight), results not yet consumed.
struct Line<J, R> {
    jobs: VecDeque<(usize, (usize, J))>,
    ready: Vec<Option<R>>,
    /// the index of the next result to consume
    next: usize,
    /// the weight of the jobs begun and not yet consumed
    weight: usize,
    stop: bool,
    /// a job panicked
    broken: bool,
}

enum Take<J> {
    Job((usize, J)),
    /// none left
    None,
    /// the next may not begin yet (the budget is spent)
    Wait,
}

impl<J, R> Line<J, R> {
    /// The next job, if it may begin.
    fn take(&mut self, budget: usize) -> Take<J> {
        let Some(&(i, (w, _))) = self.jobs.front() else {
            return Take::None;
        };
        if i != self.next && self.weight + w > budget {
            return Take::Wait;
        }
        let (i, (w, job)) = self.jobs.pop_front().expect("just seen");
        self.weight += w;
        Take::Job((i, job))
    }
}

/// Stops a line's helpers when dropped.
struct Stop<'a, J, R>(&'a Mutex<Line<J, R>>);

impl<J, R> Drop for Stop<'_, J, R> {
    fn drop(&mut self) {
        self.0.lock().unwrap_or_else(PoisonError::into_inner).stop = true;
    }
}

/// Marks a line broken when dropped (forgotten when its job returns).
struct Broken<'a, J, R>(&'a Mutex<Line<J, R>>);

impl<J, R> Drop for Broken<'_, J, R> {
    fn drop(&mut self) {
        self.0.lock().unwrap_or_else(PoisonError::into_inner).broken = true;
    }
}

/// Keeps the helper this runs on awake after its part: it spins (see [`spin`]) until
/// `go` is set, as the next part or the end of the call sets it. (Spawned from the
/// helper's own thread, the task is the next it runs.)
fn keep_awake(pool: &rayon::ThreadPool, go: &Arc<AtomicBool>) {
    let go = Arc::clone(go);
    pool.spawn(move || spin(&go));
}

/// What a woken helper does until the call's next parallel part (or its end): spin,
/// at most [`SPIN`], so that part needs no wake-up.
fn spin(go: &AtomicBool) {
    let until = Instant::now() + SPIN;
    while !go.load(Ordering::Acquire) && Instant::now() < until {
        std::hint::spin_loop();
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
    fn results_are_consumed_in_order_as_they_come() {
        let pool = helpers(1);
        for pool in [None, Some(&pool)] {
            let mut workers = Workers::start(pool);
            let consumed = std::sync::atomic::AtomicU64::new(0);
            let mut made = 0u64;
            // (without helpers each result is consumed before the next job is made)
            let mut behind = Vec::new();
            let make = || {
                behind.push(made - consumed.load(Ordering::Relaxed));
                made += 1;
                (made <= 200).then_some(made)
            };
            let mut got = Vec::new();
            workers.each_made_in_order(
                200,
                make,
                |j| {
                    std::thread::sleep(Duration::from_micros(j % 7 * 20));
                    j * 3
                },
                |r| {
                    got.push(r);
                    consumed.fetch_add(1, Ordering::Relaxed);
                },
            );
            assert_eq!(got, (1..=200u64).map(|j| j * 3).collect::<Vec<_>>());
            if pool.is_none() {
                assert!(behind.iter().all(|&b| b == 0), "{behind:?}");
            }
            // fewer jobs than expected, and none at all
            let mut few = vec![1, 2].into_iter();
            let mut got = Vec::new();
            workers.each_made_in_order(5, || few.next(), |j| j * 10, |r| got.push(r));
            assert_eq!(got, vec![10, 20]);
            workers.each_made_in_order(0, || None::<u8>, |j| j, |_| panic!("no job"));
        }
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

    #[test]
    fn jobs_made_one_by_one_run_while_the_rest_are_made_and_keep_their_order() {
        let pool = helpers(1);
        for pool in [None, Some(&pool)] {
            let mut workers = Workers::start(pool);
            let mut next = 0u64;
            let make = || {
                next += 1;
                (next <= 300).then_some(next)
            };
            let out = workers.each_made(300, make, |j| {
                std::thread::sleep(Duration::from_micros(j % 3));
                (j * j, rayon::current_thread_index())
            });
            let squares: Vec<u64> = out.iter().map(|&(sq, _)| sq).collect();
            assert_eq!(squares, (1..=300u64).map(|j| j * j).collect::<Vec<_>>());
            // the caller works too; with helpers, they do part of it
            assert!(out.iter().any(|&(_, thread)| thread.is_none()));
            // fewer jobs than expected, and none at all
            let mut few = vec![1, 2].into_iter();
            assert_eq!(
                workers.each_made(5, || few.next(), |j| j * 10),
                vec![10, 20]
            );
            assert!(workers.each_made(0, || None::<u8>, |j| j).is_empty());
        }
    }

    #[test]
    fn helpers_stay_awake_between_parts_until_the_workers_go() {
        let pool = helpers(1);
        let mut workers = Workers::start(Some(&pool));
        assert!(workers.awake());
        // a part done on the caller alone leaves them spinning
        assert_eq!(workers.each(vec![1], |j| j), vec![1]);
        assert!(workers.awake());
        assert_eq!(workers.each(vec![1, 2, 3], |j| j * 2), vec![2, 4, 6]);
        assert!(workers.awake(), "kept awake after a parallel part");
        let mut n = 0;
        let made = workers.each_made(
            4,
            || {
                n += 1;
                (n <= 4).then_some(n)
            },
            |j| j,
        );
        assert_eq!(made, vec![1, 2, 3, 4]);
        assert!(workers.awake());
        drop(workers);
        // the helper went back to the pool, which still works
        let mut again = Workers::start(Some(&pool));
        assert_eq!(again.each(vec![5, 6], |j| j + 1), vec![6, 7]);
        assert!(!Workers::start(None).awake());
    }

    #[test]
    fn results_are_consumed_in_order_as_they_come_within_the_budget() {
        let pool = helpers(2);
        for pool in [None, Some(&pool)] {
            let mut workers = Workers::start(pool);
            // weights 3 with a budget of 7: at most two jobs ahead of the one consumed
            let begun = std::sync::atomic::AtomicUsize::new(0);
            let done = std::sync::atomic::AtomicUsize::new(0);
            let most_ahead = std::sync::atomic::AtomicUsize::new(0);
            let jobs: Vec<(usize, u64)> = (0..200u64).map(|j| (3, j)).collect();
            let mut seen = Vec::new();
            let mut by_helpers = 0;
            workers
                .in_order(
                    jobs,
                    7,
                    |j| {
                        let ahead =
                            begun.fetch_add(1, Ordering::SeqCst) + 1 - done.load(Ordering::SeqCst);
                        most_ahead.fetch_max(ahead, Ordering::SeqCst);
                        std::thread::sleep(Duration::from_micros(j % 4 * 20));
                        (j * j, rayon::current_thread_index())
                    },
                    |(square, thread)| {
                        done.fetch_add(1, Ordering::SeqCst);
                        seen.push(square);
                        by_helpers += usize::from(thread.is_some());
                        Ok(())
                    },
                )
                .unwrap();
            assert_eq!(seen, (0..200u64).map(|j| j * j).collect::<Vec<_>>());
            assert!(most_ahead.load(Ordering::SeqCst) <= 3, "the budget held");
            assert_eq!(by_helpers > 0, pool.is_some());
            // one heavier than the budget still runs (it is the next to consume)
            let mut got = Vec::new();
            workers
                .in_order(
                    vec![(100, 1), (100, 2)],
                    7,
                    |j| j,
                    |r| {
                        got.push(r);
                        Ok(())
                    },
                )
                .unwrap();
            assert_eq!(got, vec![1, 2]);
        }
    }

    #[test]
    fn consuming_stops_at_the_first_error_and_later_jobs_do_not_run() {
        let pool = helpers(1);
        for pool in [None, Some(&pool)] {
            let ran = std::sync::atomic::AtomicUsize::new(0);
            let mut consumed = Vec::new();
            let err = Workers::start(pool)
                .in_order(
                    (0..100usize).map(|j| (1, j)).collect(),
                    4,
                    |j| {
                        ran.fetch_add(1, Ordering::SeqCst);
                        j
                    },
                    |j| {
                        if j == 10 {
                            return Err(EngineError::malformed("job 10"));
                        }
                        consumed.push(j);
                        Ok(())
                    },
                )
                .unwrap_err();
            assert!(err.to_string().contains("job 10"));
            assert_eq!(consumed, (0..10).collect::<Vec<_>>());
            // no more than the budget's worth beyond the failing one was begun
            assert!(ran.load(Ordering::SeqCst) <= 10 + 1 + 4);
        }
    }

    #[test]
    #[should_panic(expected = "job 13")]
    fn a_job_panicking_on_a_helper_reaches_the_caller() {
        let pool = helpers(2);
        let _ = Workers::start(Some(&pool)).in_order(
            (0..40).map(|j| (1, j)).collect(),
            8,
            |j: i32| {
                // (the caller takes job 0 first; 13 is likely a helper's)
                assert!(j != 13, "job 13");
                std::thread::sleep(Duration::from_micros(50));
            },
            |()| Ok(()),
        );
    }

    #[test]
    #[should_panic(expected = "made 5")]
    fn a_panic_while_making_jobs_reaches_the_caller_and_stops_the_helpers() {
        let pool = helpers(2);
        let mut workers = Workers::start(Some(&pool));
        let mut n = 0;
        workers.each_made(
            10,
            || {
                n += 1;
                assert!(n != 5, "made 5");
                Some(n)
            },
            |j| j,
        );
    }
}
