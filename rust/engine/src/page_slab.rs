//! Page buffers for the receiver's contents, carved from large allocations advised for
//! huge pages.
//!
//! A receiver makes a 4 KiB buffer for every distinct content it is sent: a guest's
//! first round is tens of thousands of them, all fresh memory. Allocated one by one,
//! every buffer costs a page fault (the allocator's header write faults it in), and
//! a fault takes the process's page-table and memory-cgroup locks, so two threads
//! making memory wait on each other. Carved from 8 MiB allocations advised
//! `MADV_HUGEPAGE` (THP in `madvise` mode), they fault in 2 MiB at a time.
//!
//! A [`SlabPage`] owns its 4 KiB alone (like a `Box`) and keeps its allocation alive;
//! [`Slabs`] hands out pages and takes back the ones given up, for the next content.
//! When the slabs and every page carved from one allocation are gone, the allocation
//! waits in a process-wide pool (at most [`POOL_CHUNKS`], 1 GiB: as much as the
//! sender's delta caches keep, `mem::Reusable`) for the next receiver,
//! marked `MADV_FREE`: the kernel may take its memory back under pressure, and until it
//! does, the next receiver writes it with no page fault and no clearing. Past the
//! pool's size it goes back to the system.

use std::alloc::{alloc, dealloc, handle_alloc_error, Layout};
use std::ops::{Deref, DerefMut};
use std::ptr::NonNull;
use std::sync::{Arc, Mutex};

use crate::PAGE_SIZE;

/// Bytes of one allocation pages are carved from.
const CHUNK: usize = 8 << 20;
/// Pages in one allocation (2,048).
const CHUNK_PAGES: usize = CHUNK / PAGE_SIZE;
/// A huge page: chunks start on one, so each holds whole huge pages.
const HUGE: usize = 2 << 20;

/// Allocations no receiver uses, kept for the next one: at most this many (1 GiB, so
/// that a receiver of a guest of up to 1 GiB after another writes no fresh memory).
pub(crate) const POOL_CHUNKS: usize = 128;

/// Allocations waiting for a receiver (each from `alloc` with [`Chunk::layout`],
/// advised, and owned by the pool alone), and how many it keeps at most.
pub(crate) struct Pool {
    chunks: Mutex<Vec<Pooled>>,
    max: usize,
}

/// The process's pool.
static POOL: Pool = Pool::new(POOL_CHUNKS);

impl Pool {
    const fn new(max: usize) -> Self {
        Self {
            chunks: Mutex::new(Vec::new()),
            max,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Pooled>> {
        self.chunks
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// An allocation in the pool.
struct Pooled(NonNull<u8>);

// SAFETY: plain memory with no thread affinity, reached only through the pool's lock
unsafe impl Send for Pooled {}

/// One allocation pages are carved from.
struct Chunk {
    ptr: NonNull<u8>,
    /// where it goes when no page uses it
    pool: &'static Pool,
}

// SAFETY: a chunk is plain memory with no thread affinity; the pages carved from it
// are disjoint, each owned by one `SlabPage`, and the chunk itself only frees it.
unsafe impl Send for Chunk {}
// SAFETY: as above: `&Chunk` gives access to nothing.
unsafe impl Sync for Chunk {}

impl Chunk {
    fn layout() -> Layout {
        Layout::from_size_align(CHUNK, HUGE).expect("a valid layout")
    }

    /// One from `pool`, or a new allocation.
    fn get(pool: &'static Pool) -> Self {
        if let Some(Pooled(ptr)) = pool.lock().pop() {
            return Self { ptr, pool };
        }
        let layout = Self::layout();
        // SAFETY: the layout's size is not zero
        let ptr = unsafe { alloc(layout) };
        let Some(ptr) = NonNull::new(ptr) else {
            handle_alloc_error(layout)
        };
        crate::mem::advise(ptr.as_ptr(), CHUNK);
        Self { ptr, pool }
    }
}

impl Drop for Chunk {
    /// No page uses the chunk any more: into the pool if there is room, else freed.
    fn drop(&mut self) {
        let mut pool = self.pool.lock();
        if pool.len() < self.pool.max {
            // nothing reads or writes the chunk now, and every page is written whole
            // before it is read again
            crate::mem::lazily_free(self.ptr.as_ptr(), CHUNK);
            pool.push(Pooled(self.ptr));
        } else {
            // SAFETY: `ptr` came from `alloc` with this very layout, and only this
            // chunk holds it
            unsafe { dealloc(self.ptr.as_ptr(), Self::layout()) };
        }
    }
}

/// 4 KiB of a chunk, owned alone.
pub(crate) struct SlabPage {
    page: NonNull<[u8; PAGE_SIZE]>,
    /// keeps the page's memory allocated
    _chunk: Arc<Chunk>,
}

// SAFETY: a `SlabPage` is the only handle to its 4 KiB (like a `Box<[u8; 4096]>`), and
// the `Arc<Chunk>` it holds is `Send + Sync`.
unsafe impl Send for SlabPage {}
// SAFETY: shared access gives only `&[u8]`.
unsafe impl Sync for SlabPage {}

impl Deref for SlabPage {
    type Target = [u8; PAGE_SIZE];

    fn deref(&self) -> &Self::Target {
        // SAFETY: the page lies inside the live chunk `_chunk` keeps, no other handle
        // reaches these bytes, and they are initialised: `Slabs` hands a page out
        // only filled (`Slabs::filled` writes all 4 KiB before returning it)
        unsafe { self.page.as_ref() }
    }
}

impl DerefMut for SlabPage {
    fn deref_mut(&mut self) -> &mut Self::Target {
        // SAFETY: as for `deref`; `&mut self` makes this the only access
        unsafe { self.page.as_mut() }
    }
}

/// Hands out pages carved from chunks, and reuses the ones given back.
pub(crate) struct Slabs {
    /// where chunks come from and go back to
    pool: &'static Pool,
    /// the chunk pages are being carved from, and how many it has handed out
    current: Option<(Arc<Chunk>, usize)>,
    /// pages given back
    free: Vec<SlabPage>,
}

impl Default for Slabs {
    fn default() -> Self {
        Self::with_pool(&POOL)
    }
}

impl Slabs {
    /// Slabs whose chunks come from and go back to `pool` (the process's by default).
    pub(crate) fn with_pool(pool: &'static Pool) -> Self {
        Self {
            pool,
            current: None,
            free: Vec::new(),
        }
    }

    /// A page holding a copy of `src` (4 KiB).
    pub(crate) fn filled(&mut self, src: &[u8]) -> SlabPage {
        let mut page = self.take();
        page.copy_from_slice(src);
        page
    }

    /// Takes `page` back for a later content.
    pub(crate) fn give_back(&mut self, page: SlabPage) {
        self.free.push(page);
    }

    /// Pages given back and not yet reused.
    #[cfg(test)]
    fn spare(&self) -> usize {
        self.free.len()
    }

    /// A page given back earlier, or a fresh one (a new chunk when the current one is
    /// used up).
    fn take(&mut self) -> SlabPage {
        if let Some(page) = self.free.pop() {
            return page;
        }
        let (chunk, used) = match &mut self.current {
            Some((chunk, used)) if *used < CHUNK_PAGES => (chunk, used),
            current => {
                let (chunk, used) = current.insert((Arc::new(Chunk::get(self.pool)), 0));
                (chunk, used)
            }
        };
        // SAFETY: `used < CHUNK_PAGES`, so the page lies inside the chunk; each
        // index is handed out once, so pages never overlap
        let start = unsafe { chunk.ptr.as_ptr().add(*used * PAGE_SIZE) };
        *used += 1;
        SlabPage {
            page: NonNull::new(start.cast()).expect("inside a live allocation"),
            _chunk: Arc::clone(chunk),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pages_are_distinct_keep_their_bytes_and_are_reused() {
        static OWN: Pool = Pool::new(4);
        let mut slabs = Slabs::with_pool(&OWN);
        let pages: Vec<SlabPage> = (0..CHUNK_PAGES + 3)
            .map(|i| slabs.filled(&[(i % 251) as u8; PAGE_SIZE]))
            .collect();
        for (i, page) in pages.iter().enumerate() {
            assert!(page.iter().all(|&b| b == (i % 251) as u8), "page {i}");
        }
        // a second chunk was started, and the pages are 4 KiB apart in each
        let first = pages[0].as_ptr() as usize;
        assert_eq!(first % HUGE, 0, "a chunk starts on a huge page");
        assert_eq!(pages[1].as_ptr() as usize, first + PAGE_SIZE);
        let given = pages[5].as_ptr();
        let mut pages = pages;
        slabs.give_back(pages.swap_remove(5));
        assert_eq!(slabs.spare(), 1);
        let again = slabs.filled(&[7; PAGE_SIZE]);
        assert_eq!(again.as_ptr(), given, "a page given back is reused");
        assert_eq!(slabs.spare(), 0);
        assert!(again.iter().all(|&b| b == 7));
    }

    #[test]
    fn pages_outlive_the_slabs_they_came_from() {
        static OWN: Pool = Pool::new(4);
        let mut slabs = Slabs::with_pool(&OWN);
        let page = slabs.filled(&[9; PAGE_SIZE]);
        drop(slabs);
        assert!(OWN.lock().is_empty(), "a page still uses the chunk");
        assert!(page.iter().all(|&b| b == 9));
        let moved = std::thread::spawn(move || page.iter().map(|&b| u64::from(b)).sum::<u64>())
            .join()
            .unwrap();
        assert_eq!(moved, 9 * PAGE_SIZE as u64);
        assert_eq!(
            OWN.lock().len(),
            1,
            "the chunk went to the pool with its last page"
        );
    }

    #[test]
    fn chunks_go_to_the_pool_up_to_its_size_and_are_taken_again() {
        static OWN: Pool = Pool::new(4);
        let mut slabs = Slabs::with_pool(&OWN);
        let pages: Vec<SlabPage> = (0..CHUNK_PAGES * (OWN.max + 2))
            .map(|_| slabs.filled(&[1; PAGE_SIZE]))
            .collect();
        let starts: Vec<usize> = pages
            .iter()
            .step_by(CHUNK_PAGES)
            .map(|p| p.as_ptr() as usize)
            .collect();
        drop((pages, slabs));
        let pooled: Vec<usize> = OWN.lock().iter().map(|p| p.0.as_ptr() as usize).collect();
        assert_eq!(pooled.len(), OWN.max, "the rest went back to the system");
        assert!(pooled.iter().all(|p| starts.contains(p)));
        // the next slabs carve the pooled chunks first, and write them before reading
        let mut next = Slabs::with_pool(&OWN);
        let page = next.filled(&[2; PAGE_SIZE]);
        assert!(pooled.contains(&(page.as_ptr() as usize)));
        assert!(page.iter().all(|&b| b == 2));
        assert_eq!(OWN.lock().len(), OWN.max - 1);
    }
}
