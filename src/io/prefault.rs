//! Populating fresh destinations on a helper thread, ahead of the reads that fill them.
//!
//! An O_DIRECT read pins its destination pages when it is submitted, which faults in
//! and zeroes every page not yet present, one by one, on the submitting thread. For a
//! load into freshly allocated memory that work is as large as the reads themselves,
//! and done on the coordinator (io_uring) it delays every submission behind it; done by
//! a pread worker before its O_DIRECT read, that read reaches the disk late. The prefaulter
//! does it on another core while the disk is busy (one thread: a second one, measured on the
//! 2-core VM, competed with the coordinator and was slower), in the order the reads will be
//! submitted, skipping whatever the coordinator has already passed.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

/// Populated per call, so that a stop or a cursor move is noticed quickly.
const STEP: usize = 4 << 20;

/// One fresh destination: the index of the job that reads into it, its address, its length.
pub(crate) struct Range {
    pub job: usize,
    pub addr: usize,
    pub len: usize,
}

/// The helper thread. Dropping it stops the thread and waits for it, so it never
/// touches memory after the load that owns the memory has returned.
pub(crate) struct Prefaulter {
    stop: Arc<AtomicBool>,
    cursor: Arc<AtomicUsize>,
    handle: Option<JoinHandle<()>>,
}

impl Prefaulter {
    /// Starts populating `ranges` (in job order). The memory must stay mapped until
    /// the prefaulter is dropped.
    pub(crate) fn start(ranges: Vec<Range>) -> Option<Prefaulter> {
        if ranges.is_empty() {
            return None;
        }
        let stop = Arc::new(AtomicBool::new(false));
        let cursor = Arc::new(AtomicUsize::new(0));
        let (s, c) = (Arc::clone(&stop), Arc::clone(&cursor));
        // The prefaulter only saves time: when the OS refuses the thread, the load goes
        // on without it (its reads fault the pages in themselves), and says so.
        let handle = std::thread::Builder::new()
            .name("tensorstream-prefault".into())
            .spawn(move || work(&ranges, &s, &c))
            .map_err(|e| {
                tracing::warn!("could not start thread tensorstream-prefault ({e}): reads fault in their own pages")
            })
            .ok()?;
        Some(Prefaulter {
            stop,
            cursor,
            handle: Some(handle),
        })
    }

    /// The coordinator is about to submit job `job`: earlier ranges need no more help.
    pub(crate) fn advance(&self, job: usize) {
        self.cursor.store(job, Ordering::Relaxed);
    }
}

fn work(ranges: &[Range], stop: &AtomicBool, cursor: &AtomicUsize) {
    for r in ranges {
        let mut off = 0;
        while off < r.len {
            if stop.load(Ordering::Relaxed) {
                return;
            }
            if r.job < cursor.load(Ordering::Relaxed) {
                break;
            }
            let len = STEP.min(r.len - off);
            let _ = super::populate_range(r.addr + off, len);
            off += len;
        }
    }
}

impl Drop for Prefaulter {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}
