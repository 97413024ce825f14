//! The sender's bounded cache of page versions the receiver holds (delta bases).
//!
//! One slab of `capacity` page slots, grown on demand (no memory is touched for
//! slots never used), with least-recently-written eviction. Memory: 4 KiB per slot
//! plus about 40 bytes of bookkeeping.

use std::collections::{HashMap, VecDeque};

use crate::PAGE_SIZE;

/// Page versions by page index.
pub struct PageCache {
    capacity: usize,
    slab: Vec<u8>,
    slots: HashMap<u64, (usize, u64)>,
    order: VecDeque<(u64, u64)>,
    free: Vec<usize>,
    clock: u64,
}

impl PageCache {
    /// A cache of at most `capacity` pages (0 keeps nothing).
    #[must_use]
    pub fn new(capacity: usize) -> Self {
        Self {
            capacity,
            // address space only: pages are touched as slots are first used
            slab: crate::mem::with_capacity(capacity.saturating_mul(PAGE_SIZE)),
            slots: HashMap::new(),
            order: VecDeque::new(),
            free: Vec::new(),
            clock: 0,
        }
    }

    /// The cached version of `index`.
    #[must_use]
    pub fn get(&self, index: u64) -> Option<&[u8]> {
        self.slots
            .get(&index)
            .map(|&(slot, _)| &self.slab[slot * PAGE_SIZE..(slot + 1) * PAGE_SIZE])
    }

    /// Stores `page` as the version of `index`, evicting the least recently stored page.
    /// (The one-page reference for [`PageCache::put_many`], which the encoder uses.)
    #[cfg(test)]
    pub fn put(&mut self, index: u64, page: &[u8]) {
        if self.capacity == 0 {
            return;
        }
        let slot = self.assign(index);
        self.slab[slot * PAGE_SIZE..(slot + 1) * PAGE_SIZE].copy_from_slice(page);
        self.compact_if_needed();
    }

    /// Stores many pages; with `parallel`, the copies run on the current rayon pool.
    /// Equivalent to calling [`PageCache::put`] for each pair in order.
    pub fn put_many(&mut self, pages: &[(u64, &[u8])], parallel: bool) {
        use rayon::prelude::*;
        if self.capacity == 0 || pages.is_empty() {
            return;
        }
        // slots are assigned in order (eviction depends on it); a slot assigned twice
        // (a page named twice, or evicted and reused) keeps the last content given
        let mut source: HashMap<usize, &[u8]> = HashMap::with_capacity(pages.len());
        for &(index, page) in pages {
            let slot = self.assign(index);
            source.insert(slot, page);
        }
        let copy = |(slot, dst): (usize, &mut [u8])| {
            if let Some(src) = source.get(&slot) {
                dst.copy_from_slice(src);
            }
        };
        if parallel {
            self.slab
                .par_chunks_mut(PAGE_SIZE)
                .enumerate()
                .for_each(copy);
        } else {
            self.slab.chunks_mut(PAGE_SIZE).enumerate().for_each(copy);
        }
        self.compact_if_needed();
    }

    /// The slot that now holds `index` (its own, or a free or evicted one), marked as
    /// the most recently stored.
    fn assign(&mut self, index: u64) -> usize {
        self.clock += 1;
        let slot = match self.slots.get(&index) {
            Some(&(slot, _)) => slot,
            None => self.take_slot(),
        };
        self.slots.insert(index, (slot, self.clock));
        self.order.push_back((index, self.clock));
        slot
    }

    fn take_slot(&mut self) -> usize {
        if let Some(slot) = self.free.pop() {
            return slot;
        }
        if self.slots.len() < self.capacity {
            let slot = self.slab.len() / PAGE_SIZE;
            self.slab.resize(self.slab.len() + PAGE_SIZE, 0);
            return slot;
        }
        // evict: the oldest entry of `order` that is still current
        while let Some((index, stamp)) = self.order.pop_front() {
            if let Some(&(slot, current)) = self.slots.get(&index) {
                if current == stamp {
                    self.slots.remove(&index);
                    return slot;
                }
            }
        }
        unreachable!("a full cache has a current entry in its order")
    }

    fn compact_if_needed(&mut self) {
        if self.order.len() > 2 * self.capacity + 64 {
            self.compact();
        }
    }

    fn compact(&mut self) {
        let slots = &self.slots;
        self.order
            .retain(|(index, stamp)| slots.get(index).is_some_and(|&(_, s)| s == *stamp));
    }

    /// Pages currently cached.
    #[must_use]
    pub fn len(&self) -> usize {
        self.slots.len()
    }

    /// True when nothing is cached.
    #[cfg(test)]
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn page(v: u8) -> Vec<u8> {
        vec![v; PAGE_SIZE]
    }

    #[test]
    fn evicts_least_recently_stored() {
        let mut cache = PageCache::new(2);
        cache.put(1, &page(1));
        cache.put(2, &page(2));
        cache.put(1, &page(11)); // refresh 1: now 2 is the oldest
        cache.put(3, &page(3));
        assert_eq!(cache.get(1).unwrap()[0], 11);
        assert!(cache.get(2).is_none());
        assert_eq!(cache.get(3).unwrap()[0], 3);
        assert_eq!(cache.len(), 2);
    }

    #[test]
    fn many_refreshes_stay_bounded() {
        let mut cache = PageCache::new(4);
        for i in 0..10_000u64 {
            cache.put(i % 3, &page(i as u8));
        }
        assert!(cache.order.len() <= 2 * 4 + 64);
        assert_eq!(
            cache.get(0).unwrap()[0],
            9999u64.wrapping_sub(9999 % 3) as u8
        );
    }

    #[test]
    fn put_many_matches_sequential_puts() {
        let pages: Vec<Vec<u8>> = (0..10u8).map(page).collect();
        let offer: Vec<(u64, &[u8])> = [3u64, 1, 4, 1, 5, 9, 2, 6, 5, 3]
            .iter()
            .zip(&pages)
            .map(|(&i, p)| (i, p.as_slice()))
            .collect();
        for parallel in [false, true] {
            let mut one = PageCache::new(4);
            let mut many = PageCache::new(4);
            for &(i, p) in &offer {
                one.put(i, p);
            }
            many.put_many(&offer, parallel);
            for i in 0..10 {
                assert_eq!(one.get(i), many.get(i), "index {i}");
            }
        }
    }

    #[test]
    fn zero_capacity_keeps_nothing() {
        let mut cache = PageCache::new(0);
        cache.put(1, &page(1));
        assert!(cache.get(1).is_none() && cache.is_empty());
    }
}
