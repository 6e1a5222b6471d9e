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
        let Some((start, end)) = self.interval_of(value) else {
            return false;
        };
        self.free.remove(&start);
        if start < value {
            self.free.insert(start, value - 1);
        }
        if value < end {
            self.free.insert(value + 1, end);
        }
        self.free_count -= 1;
        true
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
        if value < self.lo || value > self.hi || self.is_free(value) {
            return false;
        }
        let mut start = value;
        let mut end = value;
        if value > 0 {
            if let Some((s, e)) = self.interval_of(value - 1) {
                self.free.remove(&s);
                start = s;
                debug_assert_eq!(e, value - 1);
            }
        }
        if value < u128::MAX {
            if let Some(e) = self.free.remove(&(value + 1)) {
                end = e;
            }
        }
        self.free.insert(start, end);
        self.free_count = self.free_count.saturating_add(1);
        true
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

/// Disjoint ranges owned by someone: which network holds which part of the address space.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RangeIndex<O> {
    /// start -> (end inclusive, owner).
    ranges: BTreeMap<u128, (u128, O)>,
}

impl<O> Default for RangeIndex<O> {
    fn default() -> Self {
        RangeIndex { ranges: BTreeMap::new() }
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

    /// Records a range; the caller has checked it overlaps nothing.
    pub fn insert(&mut self, lo: u128, hi: u128, owner: O) {
        debug_assert!(self.overlapping(lo, hi).is_none());
        self.ranges.insert(lo, (hi, owner));
    }

    pub fn remove(&mut self, lo: u128) {
        self.ranges.remove(&lo);
    }

    /// The lowest block of `2^block_bits` values, aligned to its size, inside `lo..=hi` that
    /// overlaps no owned range. Skips over owned ranges, so the cost grows with the number of
    /// ranges in the way, not with the size of the space.
    pub fn lowest_free_block(&self, lo: u128, hi: u128, block_bits: u32) -> Option<u128> {
        let step: u128 = if block_bits >= 128 { return None } else { 1u128 << block_bits };
        // Align up to the block size.
        let mut candidate = lo.checked_add(step - 1)? & !(step - 1);
        loop {
            let end = candidate.checked_add(step - 1)?;
            if end > hi {
                return None;
            }
            match self.overlapping(candidate, end) {
                None => return Some(candidate),
                Some((_, owned_end, _)) => {
                    // The next aligned block after the obstacle.
                    candidate = (owned_end / step).checked_add(1)?.checked_mul(step)?;
                }
            }
        }
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
    fn blocks_skip_owned_ranges() {
        let mut idx = RangeIndex::default();
        idx.insert(0, 255, "a");
        idx.insert(512, 1023, "b");
        assert_eq!(idx.lowest_free_block(0, 4095, 8), Some(256));
        idx.insert(256, 511, "c");
        assert_eq!(idx.lowest_free_block(0, 4095, 8), Some(1024));
        // An owned range that is not block-aligned still blocks the blocks it touches.
        idx.insert(1100, 1100, "d");
        assert_eq!(idx.lowest_free_block(1024, 4095, 8), Some(1280));
        assert_eq!(idx.lowest_free_block(1024, 1279, 8), None);
        assert_eq!(idx.overlapping(1000, 1100).map(|(s, _, o)| (s, *o)), Some((1100, "d")));
    }
}
