//! Large buffers backed by transparent huge pages where the kernel offers them, and
//! copies into memory not yet initialised.
//!
//! The sender's delta cache is hundreds of MiB touched page by page; with 4 KiB pages
//! that is one page fault per 4 KiB. `MADV_HUGEPAGE` lets the kernel back it with
//! 2 MiB pages (THP in `madvise` mode).

use std::mem::MaybeUninit;

/// A buffer of `len` zero bytes, advised for huge pages. A large one is fresh memory
/// from the kernel (`calloc` neither clears nor touches it), so nothing is written and
/// no page faults until a page of it is first used, and that first use (a copy,
/// perhaps on another thread) is the only write.
#[must_use]
pub fn zeroed(len: usize) -> Vec<u8> {
    let buf = vec![0u8; len];
    advise(buf.as_ptr(), buf.len());
    buf
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
    const PAGE: usize = 4096;
    if len < 4 * 1024 * 1024 {
        return; // small buffers gain nothing
    }
    let start = (ptr as usize).div_ceil(PAGE) * PAGE;
    let end = (ptr as usize + len) / PAGE * PAGE;
    if end <= start {
        return;
    }
    // SAFETY: [start, end) lies inside one live allocation of `len` bytes at `ptr`
    // (rounded inwards to page boundaries). MADV_HUGEPAGE is only advice about how to
    // back the range: it never changes its contents or validity, and failure (e.g. THP
    // disabled) is harmless, so the result is ignored.
    unsafe {
        libc::madvise(start as *mut libc::c_void, end - start, libc::MADV_HUGEPAGE);
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
    use super::with_room;

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
}
