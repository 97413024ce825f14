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
//! The memory goes back to the system when the slabs and every page carved from them
//! are gone; until then a page given back is reused, never returned.

use std::alloc::{alloc, dealloc, handle_alloc_error, Layout};
use std::ops::{Deref, DerefMut};
use std::ptr::NonNull;
use std::sync::Arc;

use crate::PAGE_SIZE;

/// Bytes of one allocation pages are carved from (2,048 pages).
const CHUNK: usize = 8 << 20;
/// A huge page: chunks start on one, so each holds whole huge pages.
const HUGE: usize = 2 << 20;

/// One allocation pages are carved from.
struct Chunk {
    ptr: NonNull<u8>,
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

    fn new() -> Self {
        let layout = Self::layout();
        // SAFETY: the layout's size is not zero
        let ptr = unsafe { alloc(layout) };
        let Some(ptr) = NonNull::new(ptr) else {
            handle_alloc_error(layout)
        };
        crate::mem::advise(ptr.as_ptr(), CHUNK);
        Self { ptr }
    }
}

impl Drop for Chunk {
    fn drop(&mut self) {
        // SAFETY: `ptr` came from `alloc` with this very layout and is freed once, here
        unsafe { dealloc(self.ptr.as_ptr(), Self::layout()) };
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
#[derive(Default)]
pub(crate) struct Slabs {
    /// the chunk pages are being carved from, and how many it has handed out
    current: Option<(Arc<Chunk>, usize)>,
    /// pages given back
    free: Vec<SlabPage>,
}

impl Slabs {
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
            Some((chunk, used)) if *used < CHUNK / PAGE_SIZE => (chunk, used),
            current => {
                let (chunk, used) = current.insert((Arc::new(Chunk::new()), 0));
                (chunk, used)
            }
        };
        // SAFETY: `used < CHUNK / PAGE_SIZE`, so the page lies inside the chunk; each
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
        let mut slabs = Slabs::default();
        let pages: Vec<SlabPage> = (0..CHUNK / PAGE_SIZE + 3)
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
        let mut slabs = Slabs::default();
        let page = slabs.filled(&[9; PAGE_SIZE]);
        drop(slabs);
        assert!(page.iter().all(|&b| b == 9));
        let moved = std::thread::spawn(move || page.iter().map(|&b| u64::from(b)).sum::<u64>())
            .join()
            .unwrap();
        assert_eq!(moved, 9 * PAGE_SIZE as u64);
    }
}
