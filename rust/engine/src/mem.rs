//! Large buffers backed by transparent huge pages where the kernel offers them, kept
//! for reuse, and copies into memory not yet initialised.
//!
//! The sender's delta cache is hundreds of MiB touched page by page; with 4 KiB pages
//! that is one page fault per 4 KiB. `MADV_HUGEPAGE` lets the kernel back it with
//! 2 MiB pages (THP in `madvise` mode).
//!
//! Memory a process gives back and later takes again costs more than the faults: the
//! kernel clears every page, and on a virtual machine whose balloon reports free pages
//! (these machines') the host has discarded them, so each first touch is a host fault
//! too. A delta cache ([`Reusable`]) therefore goes, when its encoder is done, to a
//! process-wide pool for the next encoder (a daemon migrates again and again), marked
//! `MADV_FREE`: the kernel may still take it back under memory pressure. Smaller
//! buffers an object reuses from call to call (an encoder's batch buffers, a decoder's
//! block buffers) are kept in its own [`Spares`].

use std::mem::MaybeUninit;
use std::ops::{Deref, DerefMut};
use std::sync::{Mutex, MutexGuard, PoisonError};

/// The kernel's page size the advice below rounds to.
const PAGE: usize = 4096;

/// A buffer of `len` zero bytes, advised for huge pages, or `None` when the system
/// refuses the memory. A large one is fresh memory from the kernel (`calloc` neither
/// clears nor touches it), so nothing is written and no page faults until a page of it
/// is first used, and that first use (a copy, perhaps on another thread) is the only
/// write.
fn zeroed(len: usize) -> Option<Vec<u8>> {
    let buf = try_zeroed::<u8>(len)?;
    advise(buf.as_ptr(), buf.len());
    Some(buf)
}

/// An empty buffer with room for `len` bytes, the room advised for huge pages (a large
/// one is fresh memory, faulted in 2 MiB at a time as it is written). Room the system
/// refuses (strict overcommit) is not an error: the buffer then grows as it is filled.
#[must_use]
pub fn with_room(len: usize) -> Vec<u8> {
    let mut buf = Vec::new();
    if buf.try_reserve_exact(len).is_ok() {
        advise(buf.as_ptr(), buf.capacity());
    }
    buf
}

/// Advises the whole pages of `len` bytes at `ptr` (one live allocation) for huge
/// pages; a buffer under 4 MiB is left alone.
pub(crate) fn advise(ptr: *const u8, len: usize) {
    if len < 4 * 1024 * 1024 {
        return; // small buffers gain nothing
    }
    let Some((start, end)) = whole_pages(ptr, len) else {
        return;
    };
    // SAFETY: [start, end) lies inside one live allocation of `len` bytes at `ptr`
    // (rounded inwards to page boundaries). MADV_HUGEPAGE is only advice about how to
    // back the range: it never changes its contents or validity, and failure (e.g. THP
    // disabled) is harmless, so the result is ignored.
    unsafe {
        libc::madvise(start as *mut libc::c_void, end - start, libc::MADV_HUGEPAGE);
    }
}

/// Makes room in `buf` for `extra` more bytes. An empty buffer too short is replaced,
/// not grown: growing copies its old allocation whole (the allocator does not know
/// that none of it is in use), and the copy faults in fresh memory for bytes that
/// are about to be overwritten.
pub(crate) fn reserve(buf: &mut Vec<u8>, extra: usize) {
    if buf.capacity() - buf.len() >= extra {
        return;
    }
    if buf.is_empty() {
        *buf = Vec::new(); // the old allocation goes first, for the allocator to reuse
    }
    buf.reserve(extra);
}

/// Buffers kept for the next [`Reusable`]: at most this many ...
const KEPT: usize = 4;
/// ... of at most this many bytes together (what an idle daemon keeps, most of it
/// never touched: a buffer is as long as its cache may grow).
const KEPT_BYTES: usize = 1 << 30;
/// Smaller buffers are the allocator's to reuse.
const KEPT_MIN: usize = 4 * 1024 * 1024;

/// The process's kept buffers.
static KEPT_BUFFERS: Shelf<Vec<u8>> = Shelf::new(KEPT, KEPT_BYTES);

/// A large buffer whose contents are unspecified until written (a kept one holds what
/// its last user wrote, or zeros where the kernel took pages back), advised for huge
/// pages; when dropped it is kept for the next one, if there is room.
pub(crate) struct Reusable {
    buf: Vec<u8>,
    len: usize,
    pool: &'static Shelf<Vec<u8>>,
}

impl Reusable {
    /// `len` bytes: the shortest kept buffer that is long enough, or a new one; `None`
    /// when the system refuses the memory.
    #[must_use]
    pub(crate) fn new(len: usize) -> Option<Self> {
        Self::from_pool(len, &KEPT_BUFFERS)
    }

    fn from_pool(len: usize, pool: &'static Shelf<Vec<u8>>) -> Option<Self> {
        let buf = match pool.take_if(|kept| kept.len() >= len) {
            Some(kept) => kept,
            None => zeroed(len)?,
        };
        Some(Self { buf, len, pool })
    }
}

impl Deref for Reusable {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        &self.buf[..self.len]
    }
}

impl DerefMut for Reusable {
    fn deref_mut(&mut self) -> &mut [u8] {
        &mut self.buf[..self.len]
    }
}

impl Drop for Reusable {
    fn drop(&mut self) {
        if self.buf.len() >= KEPT_MIN {
            self.pool.put(std::mem::take(&mut self.buf));
        }
    }
}

/// Lets the kernel take back the whole pages of `len` bytes at `ptr` when it runs
/// short. The caller vouches that they are one live allocation whose contents no one
/// reads before writing them again (a page taken back reads as zero).
pub(crate) fn lazily_free(ptr: *const u8, len: usize) {
    let Some((start, end)) = whole_pages(ptr, len) else {
        return;
    };
    // SAFETY: [start, end) lies inside one live allocation (rounded inwards to page
    // boundaries). MADV_FREE only lets the kernel drop the range's contents (a page
    // taken back reads as zero, a later write keeps it), which the caller does not rely
    // on (a `Reusable`'s contents are unspecified until written; a slab page is written
    // whole before it is read). Failure is harmless.
    unsafe {
        libc::madvise(start as *mut libc::c_void, end - start, libc::MADV_FREE);
    }
}

/// Faults in (writable) the pages of the `len` bytes at address `at`, in the spare
/// room of a buffer that does not move while this runs, without writing to them: a
/// page already there is left as it is, so another thread may be writing to the same
/// pages meanwhile. Spreads the first touch of a large output (the kernel clearing
/// each page, and on a VM whose balloon reports free pages the host backing it again)
/// over the threads that produce it. Kernels without `MADV_POPULATE_WRITE` (before
/// 5.14) refuse it; the pages are then faulted in when written, as they would have
/// been.
pub(crate) fn populate(at: usize, len: usize) {
    if len == 0 {
        return;
    }
    let start = at / PAGE * PAGE;
    let end = (at + len).div_ceil(PAGE) * PAGE;
    // SAFETY: MADV_POPULATE_WRITE reads and writes no byte: it faults pages in as a
    // write would before the write, leaves present pages and every byte as they are,
    // and fails (harmlessly: the result is ignored) on a range that is not mapped
    // writable. The caller's range lies in one live anonymous buffer that does not
    // move meanwhile (the rounding outwards reaches only pages mapped with it).
    unsafe {
        libc::madvise(
            start as *mut libc::c_void,
            end - start,
            libc::MADV_POPULATE_WRITE,
        );
    }
}

/// Types for which all-zero bytes are a valid value (`false`, `0`).
///
/// # Safety
/// Only for types whose every value is valid as all-zero bytes.
pub(crate) unsafe trait ZeroBits: Copy {}
// SAFETY: 0 is a valid u128.
unsafe impl ZeroBits for u128 {}
// SAFETY: false is a zero byte.
unsafe impl ZeroBits for bool {}
// SAFETY: any byte is a valid u8.
unsafe impl ZeroBits for u8 {}
// SAFETY: 0 is a valid u64.
unsafe impl ZeroBits for u64 {}

/// One bit per page, all clear at first: which pages have a version (an eighth of the
/// memory of a `bool` a page, which keeps it in the caches of a guest's per-page reads).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct PageBits(Vec<u64>);

impl PageBits {
    /// `len` clear bits, or `None` when the system refuses the memory.
    pub(crate) fn try_new(len: usize) -> Option<Self> {
        try_zeroed(len.div_ceil(64)).map(Self)
    }

    /// Whether bit `index` is set.
    pub(crate) fn get(&self, index: usize) -> bool {
        self.0[index / 64] >> (index % 64) & 1 == 1
    }

    /// Sets bit `index` to `on`.
    pub(crate) fn set(&mut self, index: usize, on: bool) {
        let word = &mut self.0[index / 64];
        let bit = 1u64 << (index % 64);
        if on {
            *word |= bit;
        } else {
            *word &= !bit;
        }
    }
}

/// `len` zero values, or `None` when the system refuses the memory: per-page state of
/// a guest whose size a peer claimed must not abort the process when it is too large.
/// Zeroed by the allocator (`calloc`: fresh pages from the kernel are not written), so
/// only what is used is ever touched.
pub(crate) fn try_zeroed<T: ZeroBits>(len: usize) -> Option<Vec<T>> {
    let layout = std::alloc::Layout::array::<T>(len).ok()?;
    if layout.size() == 0 {
        return Some(Vec::new());
    }
    // SAFETY: `layout` has a non-zero size (checked).
    let ptr = unsafe { std::alloc::alloc_zeroed(layout) }.cast::<T>();
    if ptr.is_null() {
        return None;
    }
    // SAFETY: `ptr` was allocated by the global allocator with `T`'s alignment and room
    // for exactly `len` values (`layout`), all of them initialised as zero bytes, which
    // is a valid `T` (`ZeroBits`).
    Some(unsafe { Vec::from_raw_parts(ptr, len, len) })
}

/// The whole 4 KiB pages of the `len` bytes at `ptr`: their first and end addresses
/// (none when no whole page lies within).
fn whole_pages(ptr: *const u8, len: usize) -> Option<(usize, usize)> {
    let start = (ptr as usize).div_ceil(PAGE) * PAGE;
    let end = (ptr as usize + len) / PAGE * PAGE;
    (end > start).then_some((start, end))
}

/// Buffers (or other state) kept from one use to the next, at most a given number:
/// memory already touched instead of a fresh allocation each time.
pub(crate) struct Spares<T>(Mutex<Vec<T>>);

impl<T> Default for Spares<T> {
    fn default() -> Self {
        Self::new()
    }
}

impl<T> Spares<T> {
    pub(crate) const fn new() -> Self {
        Self(Mutex::new(Vec::new()))
    }

    fn lock(&self) -> MutexGuard<'_, Vec<T>> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A kept one, if any.
    pub(crate) fn kept(&self) -> Option<T> {
        self.lock().pop()
    }

    /// Keeps `spare` unless `keep` are kept already.
    pub(crate) fn give(&self, spare: T, keep: usize) {
        let mut kept = self.lock();
        if kept.len() < keep {
            kept.push(spare);
        }
    }
}

impl<T: Buffers + Default> Spares<T> {
    /// A kept one, or one from `shelf` (what earlier owners left), or a new one.
    pub(crate) fn take_or_shelved(&self, shelf: &Shelf<T>) -> T {
        self.kept().or_else(|| shelf.take()).unwrap_or_default()
    }

    /// Every kept one put on `shelf` (for the next owner), as far as it has room.
    pub(crate) fn shelve(&self, shelf: &Shelf<T>) {
        let kept = std::mem::take(&mut *self.lock());
        for spare in kept {
            shelf.put(spare);
        }
    }
}

/// Memory a value holds in large buffers.
pub trait Buffers {
    /// The room of its buffers, in bytes.
    fn room(&self) -> usize;
    /// Lets the kernel take back its buffers' pages (their contents are unspecified
    /// until written again: see [`lazily_free`]).
    fn lazily_free(&self);
}

impl Buffers for Vec<u8> {
    fn room(&self) -> usize {
        self.capacity()
    }

    fn lazily_free(&self) {
        lazily_free(self.as_ptr(), self.capacity());
    }
}

/// Buffers left by owners that are done (an encoder's batch buffers, when it is
/// dropped), for the next owner: a process migrates again and again, and buffers
/// already touched spare it the page faults (and the clearing) of fresh ones. At most
/// `count` values of `bytes` together; marked `MADV_FREE` as they are put here, so
/// the kernel can still take the memory back while it waits.
pub struct Shelf<T> {
    kept: Spares<T>,
    count: usize,
    bytes: usize,
}

impl<T: Buffers> Shelf<T> {
    /// A shelf for at most `count` values of `bytes` of room together.
    #[must_use]
    pub const fn new(count: usize, bytes: usize) -> Self {
        Self {
            kept: Spares::new(),
            count,
            bytes,
        }
    }

    fn take(&self) -> Option<T> {
        self.kept.kept()
    }

    /// The shelved value with the least room of those that `fit`, if any.
    pub fn take_if(&self, fits: impl Fn(&T) -> bool) -> Option<T> {
        let mut kept = self.kept.lock();
        let at = (0..kept.len())
            .filter(|&i| fits(&kept[i]))
            .min_by_key(|&i| kept[i].room())?;
        Some(kept.swap_remove(at))
    }

    /// Shelves `spare` (marked `MADV_FREE`) if there is room, else drops it.
    pub fn put(&self, spare: T) {
        let mut kept = self.kept.lock();
        let held: usize = kept.iter().map(Buffers::room).sum();
        if kept.len() < self.count && held + spare.room() <= self.bytes {
            spare.lazily_free();
            kept.push(spare);
        }
    }
}

/// `from` copied into `to` (as long), initialising it: a buffer that is only ever
/// written whole need not be cleared first (for a fresh one, clearing means faulting
/// every page in and writing it once more).
///
/// # Panics
/// When the two differ in length.
pub fn write_slice(to: &mut [MaybeUninit<u8>], from: &[u8]) {
    assert_eq!(to.len(), from.len());
    // SAFETY: both are valid for `from.len()` bytes (checked), `to` is writable and a
    // distinct borrow from `from` (no overlap), and `MaybeUninit<u8>` has the layout of `u8`.
    unsafe {
        std::ptr::copy_nonoverlapping(from.as_ptr(), to.as_mut_ptr().cast::<u8>(), from.len());
    }
}

#[cfg(test)]
mod tests {
    use super::{
        populate, reserve, try_zeroed, with_room, PageBits, Reusable, Shelf, Spares, KEPT,
        KEPT_BYTES,
    };
    use proptest::prelude::*;

    proptest! {
        /// Page bits read back as a `bool` a page would, set and cleared in any order.
        #[test]
        fn page_bits_follow_a_bool_a_page(
            len in 1usize..300,
            sets in prop::collection::vec((0usize..300, any::<bool>()), 0..100),
        ) {
            let mut bits = PageBits::try_new(len).unwrap();
            let mut model = vec![false; len];
            for (i, on) in sets {
                let i = i % len;
                bits.set(i, on);
                model[i] = on;
                for (j, &want) in model.iter().enumerate() {
                    prop_assert_eq!(bits.get(j), want);
                }
            }
        }
    }

    #[test]
    fn zeroed_state_is_zero_or_refused() {
        let v = try_zeroed::<u128>(1000).unwrap();
        assert_eq!(v.len(), 1000);
        assert!(v.iter().all(|&x| x == 0));
        assert!(try_zeroed::<bool>(3).unwrap().iter().all(|&b| !b));
        assert!(try_zeroed::<u128>(0).unwrap().is_empty());
        // more than any address space: refused, not an abort (`black_box`: an optimised
        // build may otherwise drop an allocation nothing reads, and call it a success)
        assert!(std::hint::black_box(try_zeroed::<u128>(usize::MAX / 8)).is_none());
        assert!(std::hint::black_box(try_zeroed::<u128>(1 << 58)).is_none());
    }

    #[test]
    fn room_is_reserved_or_left_to_growth() {
        let buf = with_room(5 << 20);
        assert!(buf.is_empty() && buf.capacity() >= 5 << 20);
        // room no allocator gives: an empty buffer that grows as it is filled
        let mut buf = with_room(usize::MAX);
        assert_eq!(buf.capacity(), 0);
        buf.extend_from_slice(b"grows");
        assert_eq!(buf, b"grows");
    }

    #[test]
    fn dropped_buffers_serve_the_next_ones_that_fit_up_to_a_bound() {
        static POOL: Shelf<Vec<u8>> = Shelf::new(KEPT, KEPT_BYTES);
        let mib = 1 << 20;
        let mut first = Reusable::from_pool(8 * mib, &POOL).unwrap();
        assert_eq!(first.len(), 8 * mib);
        first[8 * mib - 1] = 7;
        let at = first.buf.as_ptr();
        drop(first);
        assert_eq!(POOL.kept.lock().len(), 1, "a large buffer is kept");
        // a shorter one is served from it (its own length); a longer one is new
        let shorter = Reusable::from_pool(6 * mib, &POOL).unwrap();
        assert_eq!((shorter.buf.as_ptr(), shorter.len()), (at, 6 * mib));
        let longer = Reusable::from_pool(9 * mib, &POOL).unwrap();
        assert_ne!(longer.buf.as_ptr(), at);
        drop((shorter, longer));
        assert_eq!(POOL.kept.lock().len(), 2);
        // the shortest that fits is taken
        let fits = Reusable::from_pool(5 * mib, &POOL).unwrap();
        assert_eq!(fits.buf.as_ptr(), at);
        drop(fits);
        // small buffers are not kept, nor more than KEPT, nor past KEPT_BYTES
        drop(Reusable::from_pool(4096, &POOL).unwrap());
        assert_eq!(POOL.kept.lock().len(), 2);
        let many: Vec<Reusable> = (0..KEPT + 1)
            .map(|_| Reusable::from_pool(4 * mib, &POOL).unwrap())
            .collect();
        drop(many);
        assert_eq!(POOL.kept.lock().len(), KEPT);
        let huge = Reusable::from_pool(KEPT_BYTES, &POOL).unwrap();
        drop(huge);
        assert!(POOL.kept.lock().iter().all(|b| b.len() < KEPT_BYTES));
    }

    #[test]
    fn an_empty_buffer_is_replaced_and_a_filled_one_grown() {
        let mut empty = Vec::with_capacity(16);
        reserve(&mut empty, 1 << 20);
        assert!(empty.is_empty() && empty.capacity() >= 1 << 20);
        let mut filled = b"kept".to_vec();
        reserve(&mut filled, 1 << 20);
        assert!(filled.capacity() >= 4 + (1 << 20));
        assert_eq!(filled, b"kept");
        // room enough already: the same allocation
        let at = filled.as_ptr();
        reserve(&mut filled, 10);
        assert_eq!(filled.as_ptr(), at);
    }

    #[test]
    fn populating_leaves_every_byte_as_it_was() {
        let mut buf = with_room(8 << 20);
        buf.extend((0..3 * 4096 + 100).map(|i| (i % 251) as u8));
        let before = buf.clone();
        // over written bytes, a page boundary and the untouched room beyond
        populate(buf.as_ptr() as usize + 5, 6 << 20);
        assert_eq!(buf, before);
        let len = buf.len();
        buf.resize(len + (5 << 20), 9);
        assert!(buf[len..].iter().all(|&b| b == 9));
        populate(buf.as_ptr() as usize, 0); // nothing: no page
    }

    #[test]
    fn shelved_buffers_serve_later_owners_up_to_a_bound() {
        static SHELF: Shelf<Vec<u8>> = Shelf::new(2, 3 << 20);
        let owner: Spares<Vec<u8>> = Spares::new();
        let mut first = owner.take_or_shelved(&SHELF);
        assert_eq!(first.capacity(), 0, "nothing shelved yet: a new one");
        first.reserve_exact(1 << 20);
        let at = first.as_ptr();
        owner.give(first, 4);
        owner.give(Vec::with_capacity(1 << 20), 4);
        owner.give(Vec::with_capacity(1 << 20), 4);
        // the owner is done: two of its three go on the shelf (its count)
        owner.shelve(&SHELF);
        assert!(owner.kept().is_none());
        let later: Spares<Vec<u8>> = Spares::new();
        let a = later.take_or_shelved(&SHELF);
        let b = later.take_or_shelved(&SHELF);
        assert!(a.capacity() >= 1 << 20 && b.capacity() >= 1 << 20);
        assert!(a.as_ptr() == at || b.as_ptr() == at);
        assert_eq!(
            later.take_or_shelved(&SHELF).capacity(),
            0,
            "the shelf is empty"
        );
        // what would pass the bytes bound stays off the shelf
        later.give(Vec::with_capacity(4 << 20), 1);
        later.shelve(&SHELF);
        assert_eq!(later.take_or_shelved(&SHELF).capacity(), 0);
        // a shelved buffer is written as any (its old contents unspecified)
        let mut a = a;
        a.clear();
        a.extend_from_slice(b"again");
        assert_eq!(a, b"again");
    }
}
