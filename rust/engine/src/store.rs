//! The receiver's page store: content-addressed pages kept across guests and migrations.
//!
//! After a migration the receiver can keep the guest's pages here; before the next one
//! it pins what the store holds and announces those hashes to the sender, which then
//! sends matching pages as 16-byte `dup-ref` records. Pages are immutable and shared
//! (`Arc`), so a pinned page stays valid even if the store evicts it meanwhile.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};

use crate::scan::{identify, zero_hash};
use crate::PAGE_SIZE;

/// A bounded, thread-safe store of pages by xxh3-128 hash, least recently added evicted first.
#[derive(Clone)]
pub struct PageStore {
    inner: Arc<Mutex<Inner>>,
}

struct Inner {
    capacity: usize,
    pages: HashMap<u128, Arc<[u8]>>,
    order: VecDeque<u128>,
}

/// Pages pinned for one migration, by hash.
pub type Pinned = HashMap<u128, Arc<[u8]>>;

impl PageStore {
    /// A store of at most `capacity` pages (4 KiB each).
    #[must_use]
    pub fn new(capacity: usize) -> Self {
        Self {
            inner: Arc::new(Mutex::new(Inner {
                capacity,
                pages: HashMap::new(),
                order: VecDeque::new(),
            })),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // a panic while holding the lock cannot leave the maps inconsistent in a way
        // that matters (entries are whole), so a poisoned lock is still usable
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Adds every non-zero page of `image` (a whole number of pages); returns how many
    /// were new.
    pub fn add_image(&self, image: &[u8]) -> usize {
        let facts: Vec<(u128, bool)> = image.chunks_exact(PAGE_SIZE).map(identify).collect();
        self.add_identified(image, &facts)
    }

    /// Adds the non-zero pages of `pages` whose hash and zero test are known already
    /// (`facts`, one per page, as the scan's `identify` gives them: e.g. the
    /// encoder's); returns how many were new.
    pub fn add_identified(&self, pages: &[u8], facts: &[(u128, bool)]) -> usize {
        debug_assert_eq!(pages.len(), facts.len() * PAGE_SIZE);
        let mut inner = self.lock();
        let mut added = 0;
        for (page, &(hash, zero)) in pages.chunks_exact(PAGE_SIZE).zip(facts) {
            if !zero {
                added += usize::from(inner.add(hash, || Arc::from(page)));
            }
        }
        added
    }

    /// Adds pages given as (hash, what makes the shared page), e.g. a receiver's
    /// arrived contents ([`Decoder::held_page`](crate::Decoder::held_page)); a page is
    /// made only when its hash is new. Zero pages are skipped. Returns how many were new.
    pub fn add_shared<F>(&self, pages: impl IntoIterator<Item = (u128, F)>) -> usize
    where
        F: FnOnce() -> Arc<[u8]>,
    {
        let mut inner = self.lock();
        let mut added = 0;
        for (hash, page) in pages {
            if hash != zero_hash() {
                added += usize::from(inner.add(hash, page));
            }
        }
        added
    }

    /// Pins everything the store holds now (for announcing to a sender), and lists the
    /// hashes in the order they were added: a guest's pages, added in page order, stay
    /// near each other in the announcement, so references to them by position
    /// delta-code small.
    #[must_use]
    pub fn pin_in_order(&self) -> (Pinned, Vec<u128>) {
        let inner = self.lock();
        (inner.pages.clone(), inner.order.iter().copied().collect())
    }

    /// Pages held.
    #[must_use]
    pub fn len(&self) -> usize {
        self.lock().pages.len()
    }

    /// True when the store holds nothing.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl Inner {
    /// Adds the page with `hash` (made by `page` only if it is new), evicting the
    /// oldest pages to make room; false when it was there already or nothing is kept.
    fn add(&mut self, hash: u128, page: impl FnOnce() -> Arc<[u8]>) -> bool {
        if self.capacity == 0 || self.pages.contains_key(&hash) {
            return false;
        }
        while self.pages.len() >= self.capacity {
            match self.order.pop_front() {
                Some(old) => {
                    self.pages.remove(&old);
                }
                None => break,
            }
        }
        self.pages.insert(hash, page());
        self.order.push_back(hash);
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shared_pages_are_made_only_when_new() {
        let store = PageStore::new(8);
        let page: Arc<[u8]> = Arc::from(&[5u8; PAGE_SIZE][..]);
        let hash = identify(&page).0;
        let given = Arc::clone(&page);
        assert_eq!(store.add_shared([(hash, move || given)]), 1);
        // a known hash, and the zero page: neither is made
        let never = || -> Arc<[u8]> { panic!("made a page the store did not need") };
        assert_eq!(store.add_shared([(hash, never), (zero_hash(), never)]), 0);
        let (pinned, order) = store.pin_in_order();
        assert_eq!(order, vec![hash]);
        assert!(Arc::ptr_eq(&pinned[&hash], &page), "shared, not copied");
    }

    #[test]
    fn dedups_skips_zero_and_evicts_oldest() {
        let store = PageStore::new(2);
        let mut image = vec![0u8; 4 * PAGE_SIZE];
        image[PAGE_SIZE] = 1;
        image[2 * PAGE_SIZE] = 1; // same content as page 1
        image[3 * PAGE_SIZE] = 2;
        assert_eq!(store.add_image(&image), 2);
        let (pinned, order) = store.pin_in_order();
        let mut more = vec![0u8; PAGE_SIZE];
        more[0] = 3;
        assert_eq!(store.add_image(&more), 1);
        assert_eq!(store.len(), 2);
        // the pinned copy outlives the eviction of its entry
        assert_eq!(pinned.len(), 2);
        assert!(pinned.values().all(|p| p.len() == PAGE_SIZE));
        // in the order added: page 1's content, then page 3's
        let first = identify(&image[PAGE_SIZE..2 * PAGE_SIZE]).0;
        let last = identify(&image[3 * PAGE_SIZE..]).0;
        assert_eq!(order, vec![first, last]);
        let (_, now) = store.pin_in_order();
        assert_eq!(now[0], last, "the oldest was evicted");
    }
}
