//! The receiver's copy of the guest, which the decoder applies batches to.
//!
//! The copy is content-addressed: each page index names the hash of its content, and
//! each distinct non-zero content is kept once, in one map from hash to the content and
//! the number of pages holding it. Zero pages take no memory, a page repeated a
//! thousand times takes one page, and a `dup-ref` to an announced page costs no copy
//! (the page store's pages are shared, `Arc`). The contents the receiver makes are
//! carved from large buffers ([`page_slab`](crate::page_slab)), and a dropped
//! content's buffer is reused.
//!
//! The sender follows the same holdings with [`Holdings`](crate::holdings::Holdings)
//! (which also names one holder of each content, for its references); the receiver
//! needs only the counts, so it keeps them beside the contents: one map lookup where a
//! map of contents and one of counts took two.
//!
//! A batch changes nothing unless it succeeds: the page versions it replaced are
//! journaled, a content no page holds any more is kept until the batch ends, and a
//! failed batch is taken back whole.

use std::collections::hash_map::Entry;
use std::sync::Arc;

use crate::error::{EngineError, Result};
use crate::fasthash::FastMap;
use crate::mem::{try_zeroed, PageBits};
use crate::page_slab::{SlabPage, Slabs};
use crate::scan::{zero_hash, ZERO_PAGE};
use crate::store::Pinned;
use crate::{delta, hash_page, is_zero_page};

/// A content the receiver keeps: a page it made, or one of the page store's.
enum Content {
    Own(SlabPage),
    Shared(Arc<[u8]>),
}

impl std::ops::Deref for Content {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        match self {
            Self::Own(page) => &page[..],
            Self::Shared(page) => page,
        }
    }
}

/// A kept content and how many pages hold it (none, within a batch, for a content the
/// batch replaced or made and replaced again: dropped when the batch ends).
struct Kept {
    content: Content,
    holders: u64,
}

/// What one record writes to its page.
pub(crate) enum Op<'a> {
    Zero,
    Unchanged,
    Dup(u128),
    Delta(&'a [u8]),
    /// a delta against the content with this hash
    DeltaFrom(u128, &'a [u8]),
    /// a page and its hash
    Page(&'a [u8], u128),
    /// a page already in the receiver's page memory, and its hash
    Own(SlabPage, u128),
}

/// What a batch did so far, to take back if it fails or to finish if it succeeds.
#[derive(Default)]
pub(crate) struct Journal {
    /// each page the batch changed and the content it held before (newest last)
    writes: Vec<(usize, Option<u128>)>,
    /// contents the batch made (kept by no page before it)
    made: Vec<u128>,
    /// contents the batch's writes took from a page
    replaced: Vec<u128>,
}

/// The receiver's copy of one guest.
pub(crate) struct GuestCopy {
    /// each page's content hash, where `present` says it has one
    hashes: Vec<u128>,
    present: PageBits,
    /// every distinct non-zero content some page holds (and, within a batch, those it
    /// replaced or made)
    contents: FastMap<u128, Kept>,
    /// pages holding the zero content (which is never kept)
    zero_holders: u64,
    /// the page store's pages announced for this stream
    pub(crate) pinned: Pinned,
    /// the buffers of the contents the receiver makes, and of dropped ones, for the
    /// next (the allocator's own reuse walks cold free lists on every page)
    slabs: Slabs,
}

impl GuestCopy {
    /// A copy of a guest of `pages` pages, none of which the receiver has yet (16 bytes and a bit a
    /// page, touched as pages are written).
    ///
    /// # Errors
    /// [`EngineError::InvalidArgument`] when the system refuses the memory.
    pub(crate) fn new(pages: usize) -> Result<Self> {
        let refused = || {
            EngineError::invalid(format!(
                "no memory for the state of a guest of {pages} pages"
            ))
        };
        Ok(Self {
            hashes: try_zeroed(pages).ok_or_else(refused)?,
            present: PageBits::try_new(pages).ok_or_else(refused)?,
            contents: FastMap::default(),
            zero_holders: 0,
            pinned: Pinned::new(),
            slabs: Slabs::default(),
        })
    }

    /// Takes `pages` of page memory for later contents.
    pub(crate) fn give_back(&mut self, pages: impl IntoIterator<Item = SlabPage>) {
        for page in pages {
            self.slabs.give_back(page);
        }
    }

    /// Pages of page memory given back and not yet reused.
    pub(crate) fn spare_pages(&self) -> usize {
        self.slabs.spare()
    }

    /// The hash of the receiver's copy of `index`, if it has one.
    pub(crate) fn hash_of(&self, index: usize) -> Option<u128> {
        self.present.get(index).then(|| self.hashes[index])
    }

    /// The copy of page `index` (zero if it never had one).
    pub(crate) fn page(&self, index: usize) -> &[u8] {
        self.hash_of(index).map_or(&ZERO_PAGE, |hash| {
            content_in(&self.contents, hash).expect("held contents are kept")
        })
    }

    /// The content of page `index` as a shared page, unless it is zero: the store's
    /// own when it came from there, else a copy (the receiver's own pages are carved
    /// from its large buffers, which a page kept elsewhere must not hold on to).
    pub(crate) fn held_page(
        &self,
        index: usize,
    ) -> Option<(u128, impl FnOnce() -> Arc<[u8]> + '_)> {
        let hash = self.hash_of(index).filter(|&h| h != zero_hash())?;
        let content = &self.contents[&hash].content;
        Some((hash, move || match content {
            Content::Own(page) => Arc::from(&page[..]),
            Content::Shared(page) => Arc::clone(page),
        }))
    }

    /// Distinct non-zero contents held (between batches).
    pub(crate) fn distinct_contents(&self) -> usize {
        self.contents.len()
    }

    /// How many pages hold content `hash`.
    fn holders(&self, hash: u128) -> u64 {
        if hash == zero_hash() {
            self.zero_holders
        } else {
            self.contents.get(&hash).map_or(0, |kept| kept.holders)
        }
    }

    /// Counts one more (`up`) or one fewer page holding `hash`, which is kept.
    fn count(&mut self, hash: u128, up: bool) {
        let holders = if hash == zero_hash() {
            &mut self.zero_holders
        } else {
            &mut self
                .contents
                .get_mut(&hash)
                .expect("a counted content is kept")
                .holders
        };
        if up {
            *holders += 1;
        } else {
            *holders -= 1;
        }
    }

    /// Page `index` now holds `hash` (a kept content, or zero).
    fn set(&mut self, index: usize, hash: u128) {
        self.hashes[index] = hash;
        self.present.set(index, true);
    }

    /// Applies `ops` (one batch's records, in order); returns how many pages they wrote.
    /// On an error, the batch is taken back whole.
    pub(crate) fn write_all<'a>(
        &mut self,
        ops: impl Iterator<Item = (usize, Op<'a>)>,
    ) -> Result<u64> {
        // A dup reference, a delta or an unchanged record can only be found bad while
        // applying (they depend on earlier writes of the same batch).
        let mut journal = Journal::default();
        let mut written = 0;
        for (index, op) in ops {
            match self.write(index, op, &mut journal) {
                Ok(wrote) => written += u64::from(wrote),
                Err(err) => {
                    self.undo(journal);
                    return Err(err);
                }
            }
        }
        self.drop_unheld(journal.replaced);
        Ok(written)
    }

    /// Takes back a failed batch's writes, newest first, and drops what it made.
    fn undo(&mut self, journal: Journal) {
        for (index, before) in journal.writes.into_iter().rev() {
            let now = self.hash_of(index).expect("a written page has a content");
            self.count(now, false);
            match before {
                Some(hash) => {
                    self.count(hash, true);
                    self.set(index, hash);
                }
                None => {
                    self.hashes[index] = 0;
                    self.present.set(index, false);
                }
            }
        }
        self.drop_unheld(journal.made);
    }

    /// Forgets those of `hashes` no page holds.
    fn drop_unheld(&mut self, hashes: Vec<u128>) {
        for hash in hashes {
            if let Entry::Occupied(kept) = self.contents.entry(hash) {
                if kept.get().holders == 0 {
                    if let Content::Own(page) = kept.remove().content {
                        self.slabs.give_back(page);
                    }
                }
            }
        }
    }

    /// Applies one record; returns whether it wrote the page.
    fn write(&mut self, index: usize, op: Op<'_>, journal: &mut Journal) -> Result<bool> {
        let old = self.hash_of(index);
        let (hash, new) = match op {
            Op::Unchanged => {
                // (the sender re-registers the page in its content index; a receiver
                // resolves references by any holder and has nothing to do)
                return old.map(|_| false).ok_or_else(|| {
                    EngineError::malformed("unchanged page the receiver never had")
                });
            }
            Op::Zero => (zero_hash(), None),
            Op::Page(src, hash) => (hash, Some(New::Copy(src))),
            Op::Own(page, hash) => (hash, Some(New::Made(page))),
            Op::Delta(d) => {
                let base = old.and_then(|h| content_in(&self.contents, h));
                let base = base.ok_or_else(|| {
                    EngineError::malformed("delta for a page the receiver never had")
                })?;
                let page = patched(&mut self.slabs, base, d)?;
                (hash_page(&page[..]), Some(New::Made(page)))
            }
            Op::DeltaFrom(base, d) => {
                let base = content_in(&self.contents, base)
                    .ok_or_else(|| EngineError::malformed("delta base not held"))?;
                let page = patched(&mut self.slabs, base, d)?;
                (hash_page(&page[..]), Some(New::Made(page)))
            }
            Op::Dup(hash) => {
                // any page holding that content will do (the sender names only the one it
                // registered, but a decoder need not know which)
                if self.holders(hash) > 0 {
                    (hash, None)
                } else {
                    let Some(page) = self.pinned.get(&hash) else {
                        return Err(EngineError::malformed(
                            "dup reference to a page the receiver does not hold",
                        ));
                    };
                    (hash, Some(New::Shared(Arc::clone(page))))
                }
            }
        };
        // (counted where the content's entry is found or made: one lookup)
        self.hold(hash, u64::from(old != Some(hash)), new, journal);
        if old != Some(hash) {
            journal.writes.push((index, old));
            if let Some(old) = old {
                self.count(old, false);
                if old != zero_hash() {
                    journal.replaced.push(old);
                }
            }
            self.set(index, hash);
        }
        Ok(true)
    }

    /// Counts `up` more pages holding content `hash` (zero, or kept: found, or made of
    /// `new`, whose buffer goes back to the spares when the content is kept already).
    fn hold(&mut self, hash: u128, up: u64, new: Option<New<'_>>, journal: &mut Journal) {
        if hash == zero_hash() {
            self.zero_holders += up;
            if let Some(New::Made(page)) = new {
                self.slabs.give_back(page);
            }
            return;
        }
        match self.contents.entry(hash) {
            Entry::Occupied(mut kept) => {
                kept.get_mut().holders += up;
                if let Some(New::Made(page)) = new {
                    self.slabs.give_back(page);
                }
            }
            Entry::Vacant(slot) => {
                let content = match new.expect("a content no page holds comes with the record") {
                    New::Copy(src) => Content::Own(self.slabs.filled(src)),
                    New::Made(page) => {
                        debug_assert!(!is_zero_page(&page[..]));
                        Content::Own(page)
                    }
                    New::Shared(page) => Content::Shared(page),
                };
                slot.insert(Kept {
                    content,
                    holders: up,
                });
                journal.made.push(hash);
            }
        }
    }
}

/// Where a content a record writes comes from, if no page keeps it yet.
enum New<'a> {
    /// the record's page, to copy
    Copy(&'a [u8]),
    /// a page the receiver just made (a delta applied)
    Made(SlabPage),
    /// a page of the page store
    Shared(Arc<[u8]>),
}

/// The content with hash `hash`, if the receiver keeps it (zero always).
fn content_in(contents: &FastMap<u128, Kept>, hash: u128) -> Option<&[u8]> {
    if hash == zero_hash() {
        Some(&ZERO_PAGE)
    } else {
        contents.get(&hash).map(|kept| &kept.content[..])
    }
}

/// A copy of `base` with `delta` applied.
fn patched(slabs: &mut Slabs, base: &[u8], delta: &[u8]) -> Result<SlabPage> {
    let mut page = slabs.filled(base);
    match delta::apply(&mut page[..], delta) {
        Ok(()) => Ok(page),
        Err(err) => {
            slabs.give_back(page);
            Err(err)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::PAGE_SIZE;
    use proptest::prelude::*;

    const PAGES: usize = 6;

    /// Content `c` (0 is the zero page): a few bytes differ from its neighbours', so
    /// deltas between any two are small.
    fn content(c: u8) -> Vec<u8> {
        let mut page = vec![0; PAGE_SIZE];
        page[usize::from(c) * 100..usize::from(c) * 100 + 5].fill(c);
        page
    }

    #[derive(Debug, Clone)]
    enum Step {
        Zero,
        Unchanged,
        Page(u8),
        Dup(u8),
        Delta(u8),
        /// to content `.1` from what page `.0` held when the batch began
        DeltaFrom(usize, u8),
        BadDelta,
    }

    fn step() -> impl Strategy<Value = Step> {
        prop_oneof![
            Just(Step::Zero),
            Just(Step::Unchanged),
            (1u8..5).prop_map(Step::Page),
            (0u8..5).prop_map(Step::Dup),
            (0u8..5).prop_map(Step::Delta),
            (0..PAGES, 0u8..5).prop_map(|(b, c)| Step::DeltaFrom(b, c)),
            Just(Step::BadDelta),
        ]
    }

    /// The copy holds exactly `model`'s pages, counts every content's holders right and
    /// keeps no content no page holds.
    fn agrees(copy: &GuestCopy, model: &[Option<u8>]) {
        for (i, want) in model.iter().enumerate() {
            assert_eq!(copy.hash_of(i), want.map(|c| hash_page(&content(c))));
            assert_eq!(copy.page(i), &content(want.unwrap_or(0))[..]);
        }
        let held: Vec<u8> = model.iter().flatten().copied().collect();
        for c in 0..5u8 {
            let count = held.iter().filter(|&&h| h == c).count() as u64;
            assert_eq!(copy.holders(hash_page(&content(c))), count, "content {c}");
        }
        let distinct = (1..5u8).filter(|c| held.contains(c)).count();
        assert_eq!(copy.distinct_contents(), distinct);
    }

    proptest! {
        /// Batches of any records either apply whole (the copy then holds what they
        /// wrote) or change nothing (when one of them cannot apply).
        #[test]
        fn a_batch_applies_whole_or_not_at_all(
            batches in prop::collection::vec(prop::collection::vec((0..PAGES, step()), 1..8), 1..8),
            pin in prop::option::of(1u8..5),
        ) {
            let mut copy = GuestCopy::new(PAGES).unwrap();
            if let Some(c) = pin {
                copy.pinned.insert(hash_page(&content(c)), Arc::from(content(c)));
            }
            let mut model: Vec<Option<u8>> = vec![None; PAGES];
            for batch in batches {
                let began = model.clone();
                let mut after = model.clone();
                let mut good = true;
                let mut deltas = Vec::new(); // the delta bytes, made before the ops borrow them
                for (index, step) in &batch {
                    let (from, to) = match *step {
                        Step::Delta(c) => (after[*index], c),
                        Step::DeltaFrom(b, c) => (began[b], c),
                        _ => (None, 0),
                    };
                    let d = from.map(|f| delta::encode(&content(f), &content(to), 2 * PAGE_SIZE));
                    deltas.push(d.flatten().unwrap_or_default());
                    let ok = match *step {
                        Step::Zero => { after[*index] = Some(0); true }
                        Step::Unchanged => after[*index].is_some(),
                        Step::Page(c) => { after[*index] = Some(c); true }
                        Step::Dup(c) => {
                            let ok = after.contains(&Some(c)) || pin == Some(c);
                            after[*index] = Some(c);
                            ok
                        }
                        Step::Delta(c) => {
                            let ok = after[*index].is_some();
                            after[*index] = Some(c);
                            ok
                        }
                        Step::DeltaFrom(b, c) => { after[*index] = Some(c); began[b].is_some() }
                        Step::BadDelta => false,
                    };
                    good &= ok;
                    if !good { break; }
                }
                let ops = batch.iter().zip(&deltas).map(|((index, step), d)| {
                    let op = match *step {
                        Step::Zero => Op::Zero,
                        Step::Unchanged => Op::Unchanged,
                        Step::Page(c) => Op::Page(Box::leak(content(c).into_boxed_slice()), hash_page(&content(c))),
                        Step::Dup(c) => Op::Dup(hash_page(&content(c))),
                        Step::Delta(_) => Op::Delta(&d[..]),
                        // (a base page with no content when the batch began: a hash
                        // no page holds)
                        Step::DeltaFrom(b, _) => Op::DeltaFrom(
                            began[b].map_or(12_345, |c| hash_page(&content(c))),
                            &d[..],
                        ),
                        Step::BadDelta => Op::Delta(&[0xff, 0xff, 0xff][..]),
                    };
                    (*index, op)
                });
                let result = copy.write_all(ops);
                prop_assert_eq!(result.is_ok(), good, "batch {:?}", batch);
                if good {
                    model = after;
                }
                agrees(&copy, &model);
            }
        }
    }
}
