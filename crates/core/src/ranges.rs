//! Interval sets over `u128`: the data structure under every allocator in weft.
//!
//! Free space is kept as disjoint, non-adjacent intervals in a `BTreeMap<start, end>`, so
//! taking the lowest free value, taking a given value and giving one back each cost
//! O(log intervals), whatever the number of values allocated. A densely allocated /8 is one or
//! two intervals; only fragmentation (releases in the middle) adds intervals.

use std::collections::BTreeMap;

/// The free values of the inclusive range `lo..=hi`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FreeRanges {
    lo: u128,
    hi: u128,
    /// start -> end (inclusive) of each free interval.
    free: BTreeMap<u128, u128>,
    /// Number of free values; saturates only for a range of 2^128 values.
    free_count: u128,
}

impl FreeRanges {
    /// Every value of `lo..=hi` free. An empty set when `lo > hi`.
    pub fn new(lo: u128, hi: u128) -> FreeRanges {
        let mut free = BTreeMap::new();
        let mut free_count = 0;
        if lo <= hi {
            free.insert(lo, hi);
            free_count = (hi - lo).saturating_add(1);
        }
        FreeRanges { lo, hi, free, free_count }
    }

    /// Number of free values.
    pub fn free_count(&self) -> u128 {
        self.free_count
    }

    /// Number of intervals the free space is split into (a fragmentation gauge).
    pub fn interval_count(&self) -> usize {
        self.free.len()
    }

    /// The free interval holding `value`, if any.
    fn interval_of(&self, value: u128) -> Option<(u128, u128)> {
        self.free.range(..=value).next_back().filter(|(_, end)| **end >= value).map(|(s, e)| (*s, *e))
    }

    pub fn is_free(&self, value: u128) -> bool {
        self.interval_of(value).is_some()
    }

    /// Takes `value` out of the free set; false when it was not free (or is out of range).
    pub fn take(&mut self, value: u128) -> bool {
        self.take_range(value, value)
    }

    /// Takes the lowest free value within `lo..=hi`.
    pub fn take_lowest_in(&mut self, lo: u128, hi: u128) -> Option<u128> {
        let candidate = match self.interval_of(lo) {
            Some(_) => lo,
            None => *self.free.range(lo..).next()?.0,
        };
        if candidate > hi {
            return None;
        }
        self.take(candidate);
        Some(candidate)
    }

    /// Returns `value` to the free set, merging with its neighbours; false when it was already
    /// free or lies outside the managed range.
    pub fn release(&mut self, value: u128) -> bool {
        self.release_range(value, value)
    }

    /// Takes the whole of `lo..=hi`; false (changing nothing) unless every value in it is free.
    pub fn take_range(&mut self, lo: u128, hi: u128) -> bool {
        let Some((start, end)) = self.interval_of(lo) else {
            return false;
        };
        if end < hi {
            return false;
        }
        self.free.remove(&start);
        if start < lo {
            self.free.insert(start, lo - 1);
        }
        if hi < end {
            self.free.insert(hi + 1, end);
        }
        self.free_count -= (hi - lo).saturating_add(1);
        true
    }

    /// Returns the whole of `lo..=hi`, merging with its neighbours; false (changing nothing)
    /// unless every value in it was taken and lies inside the managed range.
    pub fn release_range(&mut self, lo: u128, hi: u128) -> bool {
        if lo > hi || lo < self.lo || hi > self.hi {
            return false;
        }
        // A free interval overlapping lo..=hi either holds lo or starts inside it.
        let touches_free = self.interval_of(lo).is_some() || self.free.range(lo..=hi).next().is_some();
        if touches_free {
            return false;
        }
        let mut start = lo;
        let mut end = hi;
        if lo > 0
            && let Some((s, _)) = self.interval_of(lo - 1)
        {
            self.free.remove(&s);
            start = s;
        }
        if hi < u128::MAX
            && let Some(e) = self.free.remove(&(hi + 1))
        {
            end = e;
        }
        self.free.insert(start, end);
        self.free_count = self.free_count.saturating_add((hi - lo).saturating_add(1));
        true
    }

    /// Free intervals `(start, end)` that end at or after `from`, in order.
    pub fn intervals_from(&self, from: u128) -> impl Iterator<Item = (u128, u128)> + '_ {
        let first = self.interval_of(from).map_or(from, |(s, _)| s);
        self.free.range(first..).map(|(s, e)| (*s, *e))
    }

    /// Number of free values within `lo..=hi` (walks the intervals touching that range).
    pub fn free_within(&self, lo: u128, hi: u128) -> u128 {
        let first = self.interval_of(lo).map(|(s, _)| s).unwrap_or(lo);
        self.free
            .range(first..=hi)
            .map(|(s, e)| (*e).min(hi).saturating_sub((*s).max(lo)).saturating_add(1))
            .fold(0u128, u128::saturating_add)
    }
}

/// Disjoint ranges of one address family owned by someone: which network holds which part of
/// the address space. Keeps the complement too, so finding room for a new subnet walks free
/// space rather than every owned range.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RangeIndex<O> {
    /// start -> (end inclusive, owner).
    ranges: BTreeMap<u128, (u128, O)>,
    /// Everything no range owns.
    unowned: FreeRanges,
}

impl<O> Default for RangeIndex<O> {
    fn default() -> Self {
        RangeIndex { ranges: BTreeMap::new(), unowned: FreeRanges::new(0, u128::MAX) }
    }
}

impl<O: Clone> RangeIndex<O> {
    /// The owned range overlapping `lo..=hi` that starts last, if any. Because owned ranges are
    /// disjoint, no overlap exists when this returns `None`.
    pub fn overlapping(&self, lo: u128, hi: u128) -> Option<(u128, u128, &O)> {
        self.ranges
            .range(..=hi)
            .next_back()
            .filter(|(_, (end, _))| *end >= lo)
            .map(|(start, (end, owner))| (*start, *end, owner))
    }

    /// Records a range; false (changing nothing) when it overlaps an owned one.
    pub fn insert(&mut self, lo: u128, hi: u128, owner: O) -> bool {
        if !self.unowned.take_range(lo, hi) {
            return false;
        }
        self.ranges.insert(lo, (hi, owner));
        true
    }

    /// Forgets the range starting at `lo`.
    pub fn remove(&mut self, lo: u128) {
        if let Some((hi, _)) = self.ranges.remove(&lo) {
            self.unowned.release_range(lo, hi);
        }
    }

    /// The lowest block of `2^block_bits` values, aligned to its size, inside `lo..=hi` that
    /// overlaps no owned range. Walks the unowned intervals from `lo`: only fragments too small
    /// for a block are skipped, so carving next to a thousand contiguous subnets costs the same
    /// as next to one.
    pub fn lowest_free_block(&self, lo: u128, hi: u128, block_bits: u32) -> Option<u128> {
        if block_bits >= 128 {
            return None;
        }
        let step = 1u128 << block_bits;
        for (start, end) in self.unowned.intervals_from(lo) {
            let aligned = start.max(lo).checked_add(step - 1)? & !(step - 1);
            let block_end = aligned.checked_add(step - 1)?;
            if block_end > hi {
                return None;
            }
            if block_end <= end {
                return Some(aligned);
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lowest_free_is_handed_out_first_and_reused_after_release() {
        let mut f = FreeRanges::new(10, 20);
        assert_eq!(f.take_lowest_in(0, 100), Some(10));
        assert_eq!(f.take_lowest_in(0, 100), Some(11));
        assert_eq!(f.take_lowest_in(0, 100), Some(12));
        assert!(f.release(11));
        assert_eq!(f.take_lowest_in(0, 100), Some(11));
        assert_eq!(f.take_lowest_in(0, 100), Some(13));
        assert_eq!(f.free_count(), 7);
    }

    #[test]
    fn take_splits_and_release_merges() {
        let mut f = FreeRanges::new(0, 9);
        assert!(f.take(5));
        assert!(!f.take(5));
        assert_eq!(f.interval_count(), 2);
        assert!(f.release(5));
        assert!(!f.release(5));
        assert_eq!(f.interval_count(), 1);
        assert_eq!(f.free_count(), 10);
        assert!(!f.release(10), "outside the range");
    }

    #[test]
    fn take_lowest_in_respects_the_window() {
        let mut f = FreeRanges::new(0, 99);
        assert_eq!(f.take_lowest_in(50, 52), Some(50));
        assert!(f.take(51));
        assert!(f.take(52));
        assert_eq!(f.take_lowest_in(50, 52), None);
        assert_eq!(f.free_within(50, 52), 0);
        assert_eq!(f.free_within(0, 99), 97);
    }

    #[test]
    fn extreme_bounds_do_not_overflow() {
        let mut f = FreeRanges::new(u128::MAX - 1, u128::MAX);
        assert_eq!(f.take_lowest_in(0, u128::MAX), Some(u128::MAX - 1));
        assert!(f.take(u128::MAX));
        assert!(f.release(u128::MAX));
        assert!(f.release(u128::MAX - 1));
        assert_eq!(f.free_count(), 2);
        let whole = FreeRanges::new(0, u128::MAX);
        assert_eq!(whole.free_count(), u128::MAX);
    }

    #[test]
    fn ranges_are_taken_and_released_whole() {
        let mut f = FreeRanges::new(0, 99);
        assert!(f.take_range(10, 19));
        assert!(!f.take_range(15, 25), "partly taken already");
        assert!(f.take_range(20, 29));
        assert_eq!(f.free_count(), 80);
        assert!(!f.release_range(5, 12), "partly free");
        assert!(f.release_range(10, 19));
        assert!(f.release_range(20, 29));
        assert_eq!((f.free_count(), f.interval_count()), (100, 1));
        assert!(!f.release_range(90, 100), "outside the range");
        let mut whole = FreeRanges::new(0, u128::MAX);
        assert!(whole.take_range(0, u128::MAX));
        assert!(whole.release_range(0, u128::MAX));
    }

    #[test]
    fn blocks_skip_owned_ranges() {
        let mut idx = RangeIndex::default();
        assert!(idx.insert(0, 255, "a"));
        assert!(idx.insert(512, 1023, "b"));
        assert!(!idx.insert(1000, 1100, "overlaps b"));
        assert_eq!(idx.lowest_free_block(0, 4095, 8), Some(256));
        assert!(idx.insert(256, 511, "c"));
        assert_eq!(idx.lowest_free_block(0, 4095, 8), Some(1024));
        // An owned range that is not block-aligned still blocks the blocks it touches.
        assert!(idx.insert(1100, 1100, "d"));
        assert_eq!(idx.lowest_free_block(1024, 4095, 8), Some(1280));
        assert_eq!(idx.lowest_free_block(1024, 1279, 8), None);
        assert_eq!(idx.overlapping(1000, 1100).map(|(s, _, o)| (s, *o)), Some((1100, "d")));
        idx.remove(512);
        assert_eq!(idx.lowest_free_block(0, 4095, 8), Some(512));
        assert_eq!(idx.lowest_free_block(600, 4095, 8), Some(768));
    }

    mod model {
        use std::collections::BTreeSet;

        use proptest::prelude::*;

        use super::super::FreeRanges;

        #[derive(Debug, Clone)]
        enum Op {
            Take(u128),
            Release(u128),
            TakeLowest(u128, u128),
            TakeRange(u128, u128),
            ReleaseRange(u128, u128),
        }

        fn op() -> impl Strategy<Value = Op> {
            let v = 0..70u128;
            prop_oneof![
                v.clone().prop_map(Op::Take),
                v.clone().prop_map(Op::Release),
                (v.clone(), v.clone()).prop_map(|(a, b)| Op::TakeLowest(a.min(b), a.max(b))),
                (v.clone(), 0..6u128).prop_map(|(a, n)| Op::TakeRange(a, a + n)),
                (v, 0..6u128).prop_map(|(a, n)| Op::ReleaseRange(a, a + n)),
            ]
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(2000))]

            /// Every operation agrees with a plain set of free values over 0..64.
            #[test]
            fn free_ranges_behave_like_a_set(ops in prop::collection::vec(op(), 1..100)) {
                let mut f = FreeRanges::new(0, 63);
                let mut free: BTreeSet<u128> = (0..64).collect();
                for op in ops {
                    match op {
                        Op::Take(v) => prop_assert_eq!(f.take(v), free.remove(&v)),
                        Op::Release(v) => prop_assert_eq!(f.release(v), v < 64 && free.insert(v)),
                        Op::TakeLowest(lo, hi) => {
                            let expect = free.range(lo..=hi).next().copied();
                            if let Some(v) = expect { free.remove(&v); }
                            prop_assert_eq!(f.take_lowest_in(lo, hi), expect);
                        }
                        Op::TakeRange(lo, hi) => {
                            let all_free = (lo..=hi).all(|v| free.contains(&v));
                            if all_free { for v in lo..=hi { free.remove(&v); } }
                            prop_assert_eq!(f.take_range(lo, hi), all_free);
                        }
                        Op::ReleaseRange(lo, hi) => {
                            let all_taken = hi < 64 && (lo..=hi).all(|v| !free.contains(&v));
                            if all_taken { free.extend(lo..=hi); }
                            prop_assert_eq!(f.release_range(lo, hi), all_taken);
                        }
                    }
                    prop_assert_eq!(f.free_count(), free.len() as u128);
                    let listed: Vec<u128> = f.intervals_from(0).flat_map(|(s, e)| s..=e).collect();
                    prop_assert_eq!(listed, free.iter().copied().collect::<Vec<_>>());
                    // Intervals stay merged: no two touch.
                    let intervals: Vec<(u128, u128)> = f.intervals_from(0).collect();
                    prop_assert!(intervals.windows(2).all(|w| w[0].1 + 1 < w[1].0));
                    prop_assert_eq!(f.free_within(10, 40), free.range(10..=40).count() as u128);
                }
            }
        }
    }
}
