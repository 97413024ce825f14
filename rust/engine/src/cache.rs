//! The sender's bounded cache of page contents the receiver holds (delta bases).
//!
//! Keyed by content hash (xxh3-128), not by page index: a content held by many pages
//! (duplicates) is kept once, and zero pages are never kept (their base is the zero
//! page itself). A page's delta base is the cached content whose hash is the
//! receiver's version of that page. One slab of `capacity` page slots, handed out in
//! order (no memory is touched for slots never used; the slab is one an earlier
//! encoder left when one fits, see `mem::Reusable`). Contents no page holds any more are
//! forgotten and their slots reused first, so the slots in use stay at the receiver's
//! live distinct contents (a fresh slot means page faults on fresh memory, which cost
//! more than the copy); past `capacity` the least recently used content is evicted.
//! Memory: 4 KiB per slot plus about 60 bytes of bookkeeping.

use std::collections::VecDeque;

use crate::error::{EngineError, Result};
use crate::fasthash::FastMap;
use crate::workers::Workers;
use crate::PAGE_SIZE;

/// Fewer slots than this are worked on by the caller's thread alone. A call's
/// `Workers` keep their helpers awake from its start to its end (see `workers`), so a
/// parallel part pays no wake-up, only the hand-over. (Tests take the parallel path
/// with fewer.)
const PARALLEL_COPIES: usize = if cfg!(test) { 16 } else { 64 };

/// Work on slots (`items` in slot order) split for `workers`: equal shares of the
/// items (one share when they are few: done on the caller's thread), each with the
/// first slot and the stretch of `slab` its slots lie in.
#[allow(clippy::type_complexity)]
fn shares<'a, T>(
    slab: &'a mut [u8],
    items: &'a [(usize, T)],
    workers: &Workers<'_>,
) -> Vec<(usize, &'a mut [u8], &'a [(usize, T)])> {
    let shares = if items.len() >= PARALLEL_COPIES {
        workers.threads() * 4
    } else {
        1
    };
    let share = items.len().div_ceil(shares).max(1);
    let mut jobs = Vec::new();
    let mut rest = slab;
    let mut base = 0;
    for group in items.chunks(share) {
        let end = group[group.len() - 1].0 + 1;
        let (stretch, tail) = std::mem::take(&mut rest).split_at_mut((end - base) * PAGE_SIZE);
        jobs.push((base, stretch, group));
        (rest, base) = (tail, end);
    }
    jobs
}

/// Page contents by hash.
pub struct PageCache {
    capacity: usize,
    /// `capacity` slots, each written before it is read (a reused buffer: unspecified
    /// until then)
    slab: crate::mem::Reusable,
    /// slots handed out so far (the rest of the slab was never touched)
    grown: usize,
    /// hash -> (slot, stamp of its last use)
    slots: FastMap<u128, (usize, u64)>,
    /// (hash, stamp) in order of use; entries whose stamp is stale are skipped
    order: VecDeque<(u128, u64)>,
    /// slots of forgotten contents, reused before the slab grows
    free: Vec<usize>,
    clock: u64,
}

impl PageCache {
    /// A cache of at most `capacity` pages (0 disables it).
    ///
    /// # Errors
    /// [`EngineError::InvalidArgument`] if the system refuses the address space for
    /// `capacity` pages (the memory itself is only taken as slots are used).
    pub fn new(capacity: usize) -> Result<Self> {
        let slab = capacity
            .checked_mul(PAGE_SIZE)
            .and_then(crate::mem::Reusable::new)
            .ok_or_else(|| {
                EngineError::invalid(format!("no memory for a delta cache of {capacity} pages"))
            })?;
        Ok(Self {
            capacity,
            slab,
            grown: 0,
            slots: FastMap::default(),
            order: VecDeque::new(),
            free: Vec::new(),
            clock: 0,
        })
    }

    /// The content with `hash`, if cached.
    #[must_use]
    pub fn get(&self, hash: u128) -> Option<&[u8]> {
        self.slots
            .get(&hash)
            .map(|&(slot, _)| &self.slab[slot * PAGE_SIZE..(slot + 1) * PAGE_SIZE])
    }

    /// Whether the content with `hash` is cached.
    #[must_use]
    pub fn contains(&self, hash: u128) -> bool {
        self.slots.contains_key(&hash)
    }

    /// Drops the content with `hash` (no page holds it any more): its slot is reused
    /// by the next new content.
    pub fn forget(&mut self, hash: u128) {
        if let Some((slot, _)) = self.slots.remove(&hash) {
            self.free.push(slot);
        }
    }

    /// Turns the cached contents `base` into the contents `hash` by applying `delta`
    /// (made against `base`) to them where they lie, for each `(base, hash, delta)` of
    /// `deltas` in order: no page copy. The caller knows no page holds a `base` any
    /// more. Nothing happens to a `base` that is not cached or whose `hash` is; a delta
    /// that does not apply drops its content (its slot is reused, as after
    /// [`PageCache::forget`]). The bookkeeping runs on the caller, the deltas are
    /// applied by `workers` when they are many.
    pub(crate) fn replace_by_deltas(
        &mut self,
        deltas: &[(u128, u128, &[u8])],
        workers: &mut Workers<'_>,
    ) {
        let mut edits: Vec<(usize, (u128, &[u8]))> = Vec::with_capacity(deltas.len());
        for (base, hash, delta) in deltas {
            if self.slots.contains_key(hash) {
                continue;
            }
            let Some((slot, _)) = self.slots.remove(base) else {
                continue;
            };
            self.file(*hash, slot);
            edits.push((slot, (*hash, delta)));
        }
        // (a slot edited twice keeps its edits' order: the sort is stable and a slot's
        // edits fall in one share)
        edits.sort_by_key(|&(slot, _)| slot);
        let jobs = shares(&mut self.slab, &edits, workers);
        let failed = workers.each(jobs, |(base, stretch, group)| {
            let mut failed = Vec::new();
            for &(slot, (hash, delta)) in group {
                let at = (slot - base) * PAGE_SIZE;
                if crate::delta::apply(&mut stretch[at..at + PAGE_SIZE], delta).is_err() {
                    failed.push(hash);
                }
            }
            failed
        });
        for hash in failed.into_iter().flatten() {
            self.forget(hash);
        }
    }

    /// Files `hash` in `slot` as the most recently used content.
    fn file(&mut self, hash: u128, slot: usize) {
        self.clock += 1;
        self.slots.insert(hash, (slot, self.clock));
        self.order.push_back((hash, self.clock));
    }

    /// One delta in place (see [`PageCache::replace_by_deltas`]).
    #[cfg(test)]
    pub fn replace_by_delta(&mut self, base: u128, hash: u128, delta: &[u8]) {
        self.replace_by_deltas(&[(base, hash, delta)], &mut Workers::start(None));
    }

    /// Stores one page (the sequential reference for [`PageCache::put_many`]).
    #[cfg(test)]
    pub fn put(&mut self, hash: u128, page: &[u8]) {
        self.put_many(&[(hash, page)], &mut Workers::start(None));
    }

    /// Stores pages as if put one by one: contents already cached are only marked
    /// used, new ones are copied once into their slots (by `workers`, when there are
    /// many, in equal shares of the copies).
    pub(crate) fn put_many(&mut self, pages: &[(u128, &[u8])], workers: &mut Workers<'_>) {
        if self.capacity == 0 || pages.is_empty() {
            return;
        }
        let mut copies: Vec<(usize, &[u8])> = Vec::new();
        for &(hash, page) in pages {
            let slot = match self.slots.get(&hash) {
                Some(&(slot, _)) => slot, // same content: nothing to copy
                None => {
                    let slot = self.take_slot();
                    copies.push((slot, page));
                    slot
                }
            };
            self.file(hash, slot);
        }
        // in slot order (a stable sort: slots taken from fresh room come in order, so
        // this is one pass); a slot taken twice in one call (evicted again) keeps its
        // last content
        copies.sort_by_key(|&(slot, _)| slot);
        copies.dedup_by(|later, earlier| {
            let same = later.0 == earlier.0;
            if same {
                earlier.1 = later.1;
            }
            same
        });
        let jobs = shares(&mut self.slab, &copies, workers);
        workers.each(jobs, |(base, stretch, group)| {
            for &(slot, src) in group {
                let at = (slot - base) * PAGE_SIZE;
                stretch[at..at + PAGE_SIZE].copy_from_slice(src);
            }
        });
        if self.order.len() > 2 * self.capacity + 64 {
            let slots = &self.slots;
            self.order
                .retain(|(hash, stamp)| slots.get(hash).is_some_and(|&(_, s)| s == *stamp));
        }
    }

    fn take_slot(&mut self) -> usize {
        if let Some(slot) = self.free.pop() {
            return slot;
        }
        if self.grown < self.capacity {
            self.grown += 1;
            return self.grown - 1;
        }
        while let Some((hash, stamp)) = self.order.pop_front() {
            if let Some(&(slot, current)) = self.slots.get(&hash) {
                if current == stamp {
                    self.slots.remove(&hash);
                    return slot;
                }
            }
        }
        unreachable!("a full cache has a current entry in its order")
    }

    /// Contents the cache takes before it evicts.
    #[must_use]
    pub fn room(&self) -> usize {
        self.capacity.saturating_sub(self.slots.len())
    }

    /// Number of contents cached.
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

    fn helpers(threads: usize) -> rayon::ThreadPool {
        rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .unwrap()
    }

    #[test]
    fn a_cache_the_system_cannot_hold_is_refused() {
        for capacity in [usize::MAX, 1 << 50] {
            let err = PageCache::new(capacity).err().expect("refused");
            assert!(
                err.to_string().contains("no memory for a delta cache"),
                "{err}"
            );
        }
    }

    #[test]
    fn evicts_least_recently_used() {
        let mut cache = PageCache::new(2).unwrap();
        cache.put(1, &page(1));
        cache.put(2, &page(2));
        cache.put(1, &page(1)); // used again: now 2 is the oldest
        cache.put(3, &page(3));
        assert_eq!(cache.get(1).unwrap()[0], 1);
        assert!(cache.get(2).is_none() && !cache.contains(2));
        assert_eq!(cache.get(3).unwrap()[0], 3);
        assert_eq!(cache.len(), 2);
    }

    #[test]
    fn many_refreshes_stay_bounded() {
        let mut cache = PageCache::new(4).unwrap();
        for i in 0..10_000u64 {
            cache.put(u128::from(i % 3), &page((i % 3) as u8));
        }
        assert!(cache.order.len() <= 2 * 4 + 64);
        assert_eq!(cache.get(2).unwrap()[0], 2);
    }

    #[test]
    fn put_many_matches_sequential_puts() {
        let pages: Vec<Vec<u8>> = (0..10u8).map(page).collect();
        // hashes stand for contents: equal hash, equal page
        let offer: Vec<(u128, &[u8])> = [3u8, 1, 4, 1, 5, 9, 2, 6, 5, 3]
            .iter()
            .map(|&v| (u128::from(v), pages[v as usize].as_slice()))
            .collect();
        let pool = helpers(1);
        for helpers in [None, Some(&pool)] {
            let mut one = PageCache::new(4).unwrap();
            let mut many = PageCache::new(4).unwrap();
            for &(h, p) in &offer {
                one.put(h, p);
            }
            many.put_many(&offer, &mut Workers::start(helpers));
            for v in 0..10u128 {
                assert_eq!(one.get(v), many.get(v), "content {v}");
            }
            assert_eq!(many.len(), 4);
        }
    }

    #[test]
    fn parallel_copies_match_sequential_puts_with_evictions_and_reuse() {
        let pages: Vec<Vec<u8>> = (0..=255u8).map(page).collect();
        // 300 offers of 256 contents into 100 slots: slots are evicted and taken
        // again within the call, and forgotten slots are reused first
        let offer: Vec<(u128, &[u8])> = (0..300u32)
            .map(|i| (i * 7 + i / 5) % 256)
            .map(|v| (u128::from(v), pages[v as usize].as_slice()))
            .collect();
        let pool = helpers(3);
        let mut one = PageCache::new(100).unwrap();
        let mut many = PageCache::new(100).unwrap();
        for cache in [&mut one, &mut many] {
            for v in 0..40u8 {
                cache.put(u128::from(v), &page(v));
            }
            for v in (0..40u128).step_by(3) {
                cache.forget(v);
            }
        }
        for &(h, p) in &offer {
            one.put(h, p);
        }
        many.put_many(&offer, &mut Workers::start(Some(&pool)));
        for v in 0..256u128 {
            assert_eq!(one.get(v), many.get(v), "content {v}");
        }
        assert_eq!(one.len(), many.len());
    }

    #[test]
    fn forgotten_slots_are_reused_before_the_slab_grows() {
        let mut cache = PageCache::new(8).unwrap();
        cache.put(1, &page(1));
        cache.put(2, &page(2));
        cache.forget(1);
        cache.forget(5); // not cached: nothing happens
        assert!(cache.get(1).is_none());
        cache.put(3, &page(3));
        assert_eq!(cache.grown, 2);
        assert_eq!(cache.get(3).unwrap()[0], 3);
        assert_eq!(cache.get(2).unwrap()[0], 2);
        assert_eq!(cache.len(), 2);
    }

    #[test]
    fn a_delta_turns_a_cached_base_into_the_new_content_in_place() {
        let mut cache = PageCache::new(8).unwrap();
        cache.put(1, &page(1));
        cache.put(2, &page(2));
        let mut new = page(1);
        new[100] = 9;
        let delta = crate::delta::encode(&page(1), &new, 4096).unwrap();
        cache.replace_by_delta(1, 7, &delta);
        assert!(cache.get(1).is_none());
        assert_eq!(cache.get(7).unwrap(), &new[..]);
        assert_eq!(cache.grown, 2, "no slot taken");
        // a content already cached is not made twice; a base not cached is ignored
        cache.replace_by_delta(2, 7, &delta);
        assert_eq!(cache.get(2).unwrap()[0], 2);
        cache.replace_by_delta(5, 8, &delta);
        assert!(cache.get(8).is_none());
        // a delta that does not fit drops the base and frees its slot
        cache.replace_by_delta(2, 9, &[0xff, 0xff, 0xff, 0xff, 0x0f, 1]);
        assert!(cache.get(2).is_none() && cache.get(9).is_none());
        cache.put(3, &page(3));
        assert_eq!(cache.grown, 2);
    }

    #[test]
    fn zero_capacity_keeps_nothing() {
        let mut cache = PageCache::new(0).unwrap();
        cache.put(1, &page(1));
        assert!(cache.get(1).is_none() && cache.is_empty());
    }

    #[test]
    fn many_deltas_in_place_match_applying_them_one_by_one() {
        // 200 cached contents; 150 deltas turn some into new contents in place, some
        // name a base not cached or a content cached already (nothing happens), one
        // does not apply (its content is dropped)
        let mut rng = 7u64;
        let mut next = || {
            rng = rng.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
            rng >> 33
        };
        let old: Vec<Vec<u8>> = (0..200u8).map(page).collect();
        let mut deltas = Vec::new();
        let mut want: Vec<(u128, Option<Vec<u8>>)> = Vec::new();
        for k in 0..150u128 {
            let base = k + 20 * (k % 2); // bases 0..=169, each once
            let mut new = old[base as usize].clone();
            new[(next() % 4096) as usize] ^= 0x5a;
            let hash = 1000 + k;
            deltas.push((
                base,
                hash,
                crate::delta::encode(&old[base as usize], &new, 4096).unwrap(),
            ));
            want.push((hash, Some(new)));
        }
        deltas.push((500, 2000, vec![0])); // base not cached
        deltas.push((0, 2002, vec![0])); // base taken already: no longer cached
        deltas.push((190, 199, vec![0])); // content cached already
        deltas.push((191, 2001, vec![0xff, 0xff, 0xff, 0xff, 0x0f, 1])); // does not apply
        want.push((2000, None));
        want.push((2001, None));
        want.push((2002, None));
        let pool = helpers(3);
        let mut one = PageCache::new(256).unwrap();
        let mut many = PageCache::new(256).unwrap();
        for cache in [&mut one, &mut many] {
            for (v, p) in old.iter().enumerate() {
                cache.put(v as u128, p);
            }
        }
        for (base, hash, delta) in &deltas {
            one.replace_by_delta(*base, *hash, delta);
        }
        let lent: Vec<(u128, u128, &[u8])> =
            deltas.iter().map(|(b, h, d)| (*b, *h, &d[..])).collect();
        many.replace_by_deltas(&lent, &mut Workers::start(Some(&pool)));
        for (hash, content) in &want {
            assert_eq!(many.get(*hash), content.as_deref(), "content {hash}");
        }
        for v in 0..3000u128 {
            assert_eq!(one.get(v), many.get(v), "content {v}");
        }
        assert_eq!(one.len(), many.len());
        assert_eq!(
            many.grown, 200,
            "no slot taken: the deltas went where the bases were"
        );
        assert_eq!(
            many.free.len(),
            1,
            "the slot of the delta that did not apply"
        );
    }
}
