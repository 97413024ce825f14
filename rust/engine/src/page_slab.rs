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
//!
//! A [`SlabRun`] is several pages of one chunk side by side, written as one buffer (a
//! batch's block decompressed straight into the receiver's page memory) and then taken
//! apart into pages, so those pages are never copied. Chunks are mapped anonymous
//! memory, which the kernel gives zeroed and `MADV_FREE` leaves either as it was or
//! zero: every byte of a chunk always holds a value, so a run may be handed out as
//! bytes before it is written.

use std::alloc::{handle_alloc_error, Layout};
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

/// Allocations waiting for a receiver (each from [`Chunk::map`], advised, and owned by
/// the pool alone), and how many it keeps at most.
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
    /// One from `pool`, or a new mapping.
    fn get(pool: &'static Pool) -> Self {
        if let Some(Pooled(ptr)) = pool.lock().pop() {
            return Self { ptr, pool };
        }
        let ptr = Self::map();
        crate::mem::advise(ptr.as_ptr(), CHUNK);
        Self { ptr, pool }
    }

    /// `CHUNK` bytes of fresh anonymous memory (zeroed by the kernel) starting on a
    /// huge page.
    fn map() -> NonNull<u8> {
        let len = CHUNK + HUGE;
        // SAFETY: a new private anonymous mapping: no file, no existing memory touched
        let base = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if base == libc::MAP_FAILED {
            handle_alloc_error(Layout::from_size_align(CHUNK, HUGE).expect("a valid layout"));
        }
        let base = base as usize;
        let start = base.next_multiple_of(HUGE);
        // SAFETY: the two ranges lie inside the mapping just made and outside
        // [start, start + CHUNK), which is all that is kept (failure leaves them mapped,
        // unused: harmless)
        unsafe {
            if start > base {
                libc::munmap(base as *mut libc::c_void, start - base);
            }
            let end = start + CHUNK;
            if base + len > end {
                libc::munmap(end as *mut libc::c_void, base + len - end);
            }
        }
        NonNull::new(start as *mut u8).expect("a mapping is not at address zero")
    }
}

impl Drop for Chunk {
    /// No page uses the chunk any more: into the pool if there is room, else unmapped.
    fn drop(&mut self) {
        let mut pool = self.pool.lock();
        if pool.len() < self.pool.max {
            // nothing reads or writes the chunk now; its bytes stay values (what they
            // were, or zero once the kernel takes the memory back)
            crate::mem::lazily_free(self.ptr.as_ptr(), CHUNK);
            pool.push(Pooled(self.ptr));
        } else {
            // SAFETY: `ptr` is the start of a `CHUNK`-byte mapping from `map`, and only
            // this chunk holds it
            unsafe { libc::munmap(self.ptr.as_ptr().cast(), CHUNK) };
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
        // reaches these bytes, and they hold values (a chunk's always do: see the
        // module's doc)
        unsafe { self.page.as_ref() }
    }
}

impl DerefMut for SlabPage {
    fn deref_mut(&mut self) -> &mut Self::Target {
        // SAFETY: as for `deref`; `&mut self` makes this the only access
        unsafe { self.page.as_mut() }
    }
}

/// Pages of one chunk side by side, owned alone: one buffer until [`into_pages`]
/// takes it apart.
///
/// [`into_pages`]: SlabRun::into_pages
pub(crate) struct SlabRun {
    start: NonNull<u8>,
    pages: usize,
    chunk: Arc<Chunk>,
}

// SAFETY: as for `SlabPage`: the only handle to its bytes.
unsafe impl Send for SlabRun {}
// SAFETY: shared access gives only `&[u8]`.
unsafe impl Sync for SlabRun {}

impl SlabRun {
    /// The run's bytes.
    pub(crate) fn bytes(&self) -> &[u8] {
        // SAFETY: the run lies inside the live chunk it keeps, no other handle reaches
        // these bytes, and they hold values (the module's doc)
        unsafe { std::slice::from_raw_parts(self.start.as_ptr(), self.pages * PAGE_SIZE) }
    }

    /// The run's bytes, to write.
    pub(crate) fn bytes_mut(&mut self) -> &mut [u8] {
        // SAFETY: as for `bytes`; `&mut self` makes this the only access
        unsafe { std::slice::from_raw_parts_mut(self.start.as_ptr(), self.pages * PAGE_SIZE) }
    }

    /// The run as its pages, in order.
    pub(crate) fn into_pages(self) -> impl Iterator<Item = SlabPage> {
        (0..self.pages).map(move |i| SlabPage {
            // SAFETY: page `i` of the run lies inside it; each is made once
            page: NonNull::new(unsafe { self.start.as_ptr().add(i * PAGE_SIZE) }.cast())
                .expect("inside a live allocation"),
            _chunk: Arc::clone(&self.chunk),
        })
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
    pub(crate) fn spare(&self) -> usize {
        self.free.len()
    }

    /// Every page given back and not yet reused, for other slabs.
    pub(crate) fn take_spare(&mut self) -> Vec<SlabPage> {
        std::mem::take(&mut self.free)
    }

    /// `pages` fresh pages side by side (from the current chunk, or a new one: what was
    /// left of the current one is given back, page by page); none when `pages` is zero
    /// or more than a chunk holds.
    pub(crate) fn run(&mut self, pages: usize) -> Option<SlabRun> {
        if pages == 0 || pages > CHUNK_PAGES {
            return None;
        }
        let room = self
            .current
            .as_ref()
            .map_or(0, |(_, used)| CHUNK_PAGES - used);
        if room < pages {
            for _ in 0..room {
                let page = self.carve();
                self.free.push(page);
            }
        }
        let first = self.carve(); // (from a new chunk when the current one is used up)
        let (chunk, used) = self.current.as_mut().expect("carve made one");
        // the rest of the run follows its first page, inside the chunk (room checked)
        *used += pages - 1;
        let start = first.page.cast::<u8>();
        Some(SlabRun {
            start,
            pages,
            chunk: Arc::clone(chunk),
        })
    }

    /// A page given back earlier, or a fresh one.
    fn take(&mut self) -> SlabPage {
        self.free.pop().unwrap_or_else(|| self.carve())
    }

    /// A fresh page (a new chunk when the current one is used up).
    fn carve(&mut self) -> SlabPage {
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
    fn runs_lie_side_by_side_and_come_apart_into_their_pages() {
        static OWN: Pool = Pool::new(4);
        let mut slabs = Slabs::with_pool(&OWN);
        assert!(slabs.run(0).is_none());
        assert!(slabs.run(CHUNK_PAGES + 1).is_none());
        let single = slabs.filled(&[1; PAGE_SIZE]);
        let base = single.as_ptr() as usize;
        let mut run = slabs.run(3).expect("room in the chunk");
        assert_eq!(run.bytes().as_ptr() as usize, base + PAGE_SIZE);
        assert!(
            run.bytes().iter().all(|&b| b == 0),
            "a fresh chunk reads as zero"
        );
        for (i, byte) in run.bytes_mut().iter_mut().enumerate() {
            *byte = (i / PAGE_SIZE) as u8 + 10;
        }
        let pages: Vec<SlabPage> = run.into_pages().collect();
        assert_eq!(pages.len(), 3);
        for (i, page) in pages.iter().enumerate() {
            assert_eq!(page.as_ptr() as usize, base + (i + 1) * PAGE_SIZE);
            assert!(page.iter().all(|&b| b == i as u8 + 10), "page {i}");
        }
        // a run longer than what is left of the chunk starts a new one, and what was
        // left is given back page by page, for other contents
        let left = CHUNK_PAGES - 4;
        let long = slabs.run(left + 1).expect("a new chunk");
        assert_eq!(long.bytes().as_ptr() as usize % HUGE, 0, "a chunk's start");
        assert_eq!(slabs.spare(), left);
        let spare = slabs.take_spare();
        assert_eq!(slabs.spare(), 0);
        assert_eq!(spare[0].as_ptr() as usize, base + 4 * PAGE_SIZE);
        let next = slabs.filled(&[2; PAGE_SIZE]);
        assert_eq!(
            next.as_ptr() as usize,
            long.bytes().as_ptr() as usize + (left + 1) * PAGE_SIZE,
            "carving goes on after the run"
        );
        drop((single, pages, spare, long, next, slabs));
        assert_eq!(OWN.lock().len(), 2, "both chunks went to the pool");
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
