//! The schedule of the registered page-cache path to a CUDA device, worked out without
//! the driver so that it is tested on any machine: which page ranges of a file to
//! register before each window of reads, and which registrations to give back when.
//!
//! Reads arrive sorted by file offset and may share pages (a converted tensor next to
//! raw ones) or overlap. Each page is registered once, by the first window that needs
//! it; a registration is given back only once no later read can touch it (it ends at
//! or before the current window's first read) and the window that last read it is two
//! windows back, so that registering the next window overlaps the copies of the last
//! two. What is still registered after the last window is given back at the end; at
//! any time a few windows' worth of bytes (or a few of the longest reads) is
//! registered, whatever the file's size.

use std::ops::Range;

/// A page-aligned range of a file, registered as one piece.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct RegRange {
    /// File offsets [start, end), multiples of 4096 (end at most the end of the last page).
    pub start: u64,
    pub end: u64,
    /// The last window whose reads touch it.
    pub last_use: usize,
}

/// One window: what to give back first, what to register, which reads to copy.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub(crate) struct WindowStep {
    /// Registrations (indices into [`RegSchedule::regs`]) to give back before this
    /// window, oldest first; each after waiting for its `last_use` window.
    pub retire: Vec<usize>,
    /// The registration this window makes, if it needs new pages.
    pub register: Option<usize>,
    /// The reads (indices into the sorted reads) this window copies.
    pub reads: Range<usize>,
}

/// The whole schedule of one file.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub(crate) struct RegSchedule {
    pub regs: Vec<RegRange>,
    pub steps: Vec<WindowStep>,
    /// Registrations still held after the last window, oldest first.
    pub retire_at_end: Vec<usize>,
}

const PAGE: u64 = 4096;

/// Plans the windows for `reads`, (offset, length) pairs sorted by offset with
/// length > 0, in a file whose last page ends at `pages_end`; a window spans at most
/// `window_bytes` of the file unless one read alone is longer.
pub(crate) fn schedule(reads: &[(u64, u64)], window_bytes: u64, pages_end: u64) -> RegSchedule {
    let mut out = RegSchedule::default();
    // Registrations not yet given back, oldest first (indices into out.regs).
    let mut live: std::collections::VecDeque<usize> = Default::default();
    let mut registered_to = 0u64;
    let mut i = 0usize;
    let mut w = 0usize;
    while i < reads.len() {
        let lo = reads.get(i).map_or(0, |r| r.0);
        let (mut hi, mut j) = (0u64, i);
        while let Some(&(off, len)) = reads.get(j) {
            let end = off.saturating_add(len);
            if j > i && end.max(hi).saturating_sub(lo) > window_bytes {
                break;
            }
            hi = hi.max(end);
            j += 1;
        }
        let mut step = WindowStep {
            reads: i..j,
            ..WindowStep::default()
        };
        i = j;
        while let Some(&r) = live.front() {
            let Some(reg) = out.regs.get(r) else { break };
            if reg.end > lo || reg.last_use + 2 > w {
                break;
            }
            step.retire.push(r);
            live.pop_front();
        }
        let start = (lo & !(PAGE - 1)).max(registered_to);
        let end = hi.next_multiple_of(PAGE).min(pages_end);
        if end > start {
            out.regs.push(RegRange {
                start,
                end,
                last_use: w,
            });
            let r = out.regs.len() - 1;
            live.push_back(r);
            step.register = Some(r);
            registered_to = end;
        }
        for &(off, len) in reads.get(step.reads.clone()).unwrap_or_default() {
            let end = off.saturating_add(len);
            for &r in live.iter().rev() {
                let Some(reg) = out.regs.get_mut(r) else {
                    continue;
                };
                if reg.end <= off {
                    break;
                }
                if reg.start < end {
                    reg.last_use = w;
                }
            }
        }
        out.steps.push(step);
        w += 1;
    }
    out.retire_at_end = live.into_iter().collect();
    out
}

/// Splits the host range `[start, start + len)` where a registration begins: the driver
/// treats each registration as an allocation of its own and refuses a copy whose source
/// runs from one into the next (`CUDA_ERROR_INVALID_VALUE`), even when both are
/// registered and adjacent. `reg_starts` are the addresses where registrations begin,
/// sorted. Returns (offset into the range, length) pieces covering it in order.
pub(crate) fn split_at_registrations(start: u64, len: u64, reg_starts: &[u64]) -> Vec<(u64, u64)> {
    let end = start.saturating_add(len);
    let first = reg_starts.partition_point(|&b| b <= start);
    let mut pieces = Vec::new();
    let mut at = start;
    for &b in reg_starts.get(first..).unwrap_or_default() {
        if b >= end {
            break;
        }
        pieces.push((at - start, b - at));
        at = b;
    }
    if end > at || pieces.is_empty() {
        pieces.push((at - start, end - at));
    }
    pieces
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Checks the schedule's promises for `reads`.
    fn check(reads: &[(u64, u64)], window: u64, pages_end: u64) {
        let s = schedule(reads, window, pages_end);
        // Windows cover the reads in order, once each.
        let mut next = 0;
        for st in &s.steps {
            assert_eq!(st.reads.start, next);
            assert!(st.reads.end > st.reads.start);
            next = st.reads.end;
        }
        assert_eq!(next, reads.len());
        // Registrations: page-aligned, inside the file's pages, disjoint, in order.
        for (k, r) in s.regs.iter().enumerate() {
            assert!(
                r.start % PAGE == 0 && r.start < r.end && r.end <= pages_end,
                "{r:?}"
            );
            assert!(r.end % PAGE == 0 || r.end == pages_end);
            if let Some(prev) = k.checked_sub(1).and_then(|p| s.regs.get(p)) {
                assert!(prev.end <= r.start, "{prev:?} overlaps {r:?}");
            }
        }
        // Simulate: when each registration is made and given back.
        let mut made = vec![None; s.regs.len()];
        let mut gone = vec![None; s.regs.len()];
        for (w, st) in s.steps.iter().enumerate() {
            for &r in &st.retire {
                assert!(
                    made[r].is_some() && gone[r].is_none(),
                    "retire {r} twice or unmade"
                );
                // Given back only after the window that last read it.
                assert!(s.regs[r].last_use < w, "reg {r} retired at {w}");
                gone[r] = Some(w);
            }
            if let Some(r) = st.register {
                assert!(made[r].is_none());
                made[r] = Some(w);
            }
            // Every page every read of this window touches is registered now and
            // stays registered at least until after this window.
            for &(off, len) in &reads[st.reads.clone()] {
                let mut page = off & !(PAGE - 1);
                while page < off + len {
                    let r = s
                        .regs
                        .iter()
                        .position(|r| r.start <= page && page < r.end)
                        .unwrap_or_else(|| panic!("page {page} of read {off}+{len} unregistered"));
                    assert!(
                        made[r].is_some_and(|m| m <= w),
                        "page {page}: reg {r} not made yet"
                    );
                    assert!(gone[r].is_none(), "page {page}: reg {r} already given back");
                    assert!(s.regs[r].last_use >= w, "reg {r} last_use below window {w}");
                    page += PAGE;
                }
            }
        }
        // Each read, split where registrations begin, gives pieces that lie inside one
        // registration each and cover the read exactly.
        let starts: Vec<u64> = s.regs.iter().map(|r| r.start).collect();
        for &(off, len) in reads {
            let pieces = split_at_registrations(off, len, &starts);
            let mut at = 0;
            for &(p, l) in &pieces {
                assert_eq!(p, at, "pieces of {off}+{len} not contiguous: {pieces:?}");
                assert!(l > 0, "empty piece of {off}+{len}: {pieces:?}");
                let (a, b) = (off + p, off + p + l);
                assert!(
                    s.regs.iter().any(|r| r.start <= a && b <= r.end),
                    "piece {a}..{b} of read {off}+{len} spans registrations"
                );
                at += l;
            }
            assert_eq!(at, len);
        }
        for &r in &s.retire_at_end {
            assert!(made[r].is_some() && gone[r].is_none());
            gone[r] = Some(usize::MAX);
        }
        assert!(
            gone.iter().all(Option::is_some),
            "a registration is never given back"
        );
        // Registered bytes held at once are bounded by a few windows (or a few of the
        // longest reads), whatever the file's size.
        let longest = reads.iter().map(|r| r.1).max().unwrap_or(0);
        let bound = 4 * (window.max(longest) + 2 * PAGE);
        for w in 0..s.steps.len() {
            let held: u64 = (0..s.regs.len())
                .filter(|&r| made[r].is_some_and(|m| m <= w) && gone[r].is_none_or(|g| g > w))
                .map(|r| s.regs[r].end - s.regs[r].start)
                .sum();
            assert!(
                held <= bound,
                "{held} bytes registered at window {w} (bound {bound})"
            );
        }
    }

    #[test]
    fn reads_sharing_pages_across_windows() {
        // Raw chunks with a converted read on their boundary page, small windows.
        let reads = [
            (0, 8192),
            (8192, 8192),
            (12_000, 100),
            (16_384, 4096),
            (20_000, 50_000),
        ];
        for window in [1, 4096, 8192, 20_000, 1 << 20] {
            check(&reads, window, 73_728);
        }
    }

    #[test]
    fn copies_are_split_where_registrations_meet() {
        assert_eq!(split_at_registrations(100, 50, &[]), vec![(0, 50)]);
        assert_eq!(split_at_registrations(100, 50, &[100, 150]), vec![(0, 50)]);
        assert_eq!(
            split_at_registrations(100, 100, &[0, 120, 160, 400]),
            vec![(0, 20), (20, 40), (60, 40)]
        );
        assert_eq!(split_at_registrations(100, 0, &[0]), vec![(0, 0)]);
    }

    #[test]
    fn one_window_for_a_small_file() {
        let s = schedule(&[(4096, 100), (4200, 10)], 1 << 20, 8192);
        assert_eq!(s.steps.len(), 1);
        assert_eq!(
            s.regs,
            vec![RegRange {
                start: 4096,
                end: 8192,
                last_use: 0
            }]
        );
        assert_eq!(s.retire_at_end, vec![0]);
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]
        #[test]
        fn every_read_is_covered_while_it_copies(
            raw in proptest::collection::vec((0u64..3_000_000, 1u64..300_000), 1..60),
            window in prop_oneof![Just(1u64), 1u64..100_000, 100_000u64..2_000_000],
        ) {
            let mut reads = raw;
            reads.sort_unstable();
            let end = reads.iter().map(|&(o, l)| o + l).max().unwrap_or(0);
            check(&reads, window, end.next_multiple_of(PAGE));
        }
    }
}
