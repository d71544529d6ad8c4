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
//!
//! [`carry_out`] runs a schedule against a driver ([`Pinner`]) and a stream of copies
//! ([`Windows`]): threads register windows ahead of the copies and give them back
//! behind them; tested here with a fake driver. [`split_plan`] divides a load between
//! the registered page cache and the pinned slots, for split loads.

use std::collections::VecDeque;
use std::ops::Range;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::{Condvar, Mutex, MutexGuard};

use crate::error::{Error, Result};

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

/// Plans the windows for `reads`, (offset, length) pairs sorted by offset with
/// length > 0, in a file whose last page ends at `pages_end`; a window spans at most
/// `window_bytes` of the file unless one read alone is longer. `page` is the system's
/// page size (a power of two dividing `pages_end`): the driver pins whole pages, and
/// two registrations may not share one.
pub(crate) fn schedule(
    reads: &[(u64, u64)],
    window_bytes: u64,
    pages_end: u64,
    page: u64,
) -> RegSchedule {
    let mut out = RegSchedule::default();
    // Registrations not yet given back, oldest first (indices into out.regs).
    let mut live: VecDeque<usize> = Default::default();
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
        let start = (lo & !(page - 1)).max(registered_to);
        let end = hi.next_multiple_of(page).min(pages_end);
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

/// [`schedule`] for a file read from its end backwards: `reads` sorted by end,
/// descending (length > 0). Each window holds the reads just below the previous one's,
/// and registers the pages below what is registered already; the schedule is that of
/// the file mirrored (offset `o` as `pages_end - o`), with `regs` in the file's own
/// offsets. `pages_end` is a multiple of `page` at or past every read's end.
pub(crate) fn schedule_backwards(
    reads: &[(u64, u64)],
    window_bytes: u64,
    pages_end: u64,
    page: u64,
) -> RegSchedule {
    let mirrored: Vec<(u64, u64)> = reads
        .iter()
        .map(|&(off, len)| (pages_end.saturating_sub(off.saturating_add(len)), len))
        .collect();
    let mut s = schedule(&mirrored, window_bytes, pages_end, page);
    for g in &mut s.regs {
        (g.start, g.end) = (pages_end - g.end, pages_end - g.start);
    }
    s
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

/// Divides `rows` rows of `width` bytes, `pitch` bytes apart from host address
/// `start`, into runs of consecutive rows `(first, count)` that one 2-D copy may take:
/// from the run's first byte to its last, no registration begins (`reg_starts`, sorted,
/// as [`split_at_registrations`]). A row that itself runs into the next registration
/// is a run of one, for the caller to split. Runs are as long as they can be.
pub(crate) fn rows_by_registration(
    start: u64,
    pitch: u64,
    width: u64,
    rows: u64,
    reg_starts: &[u64],
) -> Vec<(u64, u64)> {
    if rows <= 1 || pitch == 0 || reg_starts.is_empty() {
        return vec![(0, rows)];
    }
    let mut runs = Vec::new();
    let mut r = 0;
    while r < rows {
        let a = start.saturating_add(r.saturating_mul(pitch));
        // The first registration beginning after this row's first byte.
        let next = reg_starts.partition_point(|&b| b <= a);
        let limit = reg_starts.get(next).copied().unwrap_or(u64::MAX);
        let n = match limit.checked_sub(a.saturating_add(width)) {
            Some(room) => (room / pitch).saturating_add(1).min(rows - r),
            None => 1,
        };
        runs.push((r, n));
        r += n;
    }
    runs
}

/// Splits `plan` for a load that copies part of each cached file straight from the
/// registered page cache while the pinned slots take the rest: of each file that
/// `buffered(file)` says is read through the page cache, the reads holding the last
/// `share` (0 to 1) of its bytes by offset go to the first plan and the others to the
/// second; a file read otherwise (O_DIRECT) goes whole to the second. Both keep every
/// file, with its index, tensors and destinations; each read lands in exactly one.
pub(crate) fn split_plan(
    plan: &crate::plan::Plan,
    share: f64,
    buffered: impl Fn(usize) -> bool,
) -> (crate::plan::Plan, crate::plan::Plan) {
    let share = if share.is_nan() {
        0.0
    } else {
        share.clamp(0.0, 1.0)
    };
    let mut registered = plan.clone();
    let mut slots = plan.clone();
    for (i, (r, s)) in registered
        .files
        .iter_mut()
        .zip(slots.files.iter_mut())
        .enumerate()
    {
        let reads = std::mem::take(&mut s.reads);
        r.reads.clear();
        if !buffered(i) {
            s.reads = reads;
            continue;
        }
        let total: u64 = reads.iter().map(|op| op.required).sum();
        let want = (total as f64 * share).round() as u64;
        let mut by_offset: Vec<usize> = (0..reads.len()).collect();
        by_offset.sort_by_key(|&k| reads.get(k).map_or(0, |op| op.offset));
        let mut to_registered = vec![false; reads.len()];
        let mut taken = 0u64;
        for &k in by_offset.iter().rev() {
            if taken >= want {
                break;
            }
            if let (Some(op), Some(t)) = (reads.get(k), to_registered.get_mut(k)) {
                taken += op.required;
                *t = true;
            }
        }
        for (op, reg) in reads.into_iter().zip(to_registered) {
            if reg {
                r.reads.push(op);
            } else {
                s.reads.push(op);
            }
        }
    }
    (registered, slots)
}

/// Who has each read of a balanced split load. The pinned slots take reads in the
/// plan's order, from the first file's start; the registered page cache takes them
/// window by window from the last file's end backwards; each claims a read before it
/// starts on it, so every read goes to exactly one side and the two meet wherever
/// their speeds bring them, with no share to guess.
pub(crate) struct Claims {
    files: Vec<Vec<AtomicU8>>,
}

const FREE: u8 = 0;
const SLOTS: u8 = 1;
const REGISTERED: u8 = 2;

impl Claims {
    /// Every read of `plan` free.
    pub(crate) fn new(plan: &crate::plan::Plan) -> Claims {
        Claims {
            files: plan
                .files
                .iter()
                .map(|f| f.reads.iter().map(|_| AtomicU8::new(FREE)).collect())
                .collect(),
        }
    }

    fn claim(&self, file: usize, read: usize, side: u8) -> bool {
        match self.files.get(file).and_then(|f| f.get(read)) {
            Some(c) => match c.compare_exchange(FREE, side, Ordering::AcqRel, Ordering::Acquire) {
                Ok(_) => true,
                Err(had) => had == side,
            },
            // Not in the plan: only the slots, which do what they are given.
            None => side == SLOTS,
        }
    }

    /// Claims read `read` of file `file` for the pinned slots: true when it is theirs
    /// (now or before), false when the registered side has it.
    pub(crate) fn for_slots(&self, file: usize, read: usize) -> bool {
        self.claim(file, read, SLOTS)
    }

    /// Claims read `read` of file `file` for the registered page cache.
    pub(crate) fn for_registered(&self, file: usize, read: usize) -> bool {
        self.claim(file, read, REGISTERED)
    }

    /// Claims window `reads` of file `file` for the registered side: `ids` holds each
    /// of the file's (sorted) reads' index in the plan, `taken` gets which of the
    /// window's reads this side got.
    pub(crate) fn window_for_registered(
        &self,
        file: usize,
        ids: &[usize],
        reads: Range<usize>,
        taken: &mut [bool],
    ) -> Claimed {
        let (mut got, mut missed) = (false, false);
        for k in reads {
            let mine = ids.get(k).is_some_and(|&id| self.for_registered(file, id));
            if let Some(t) = taken.get_mut(k) {
                *t = mine;
            }
            got |= mine;
            missed |= !mine;
        }
        match (got, missed) {
            (_, false) => Claimed::All,
            (true, true) => Claimed::Last,
            (false, true) => Claimed::Nothing,
        }
    }

    /// `plan` with only the reads the registered side claimed (what the slots must do
    /// after all when the driver refused its first registration).
    pub(crate) fn registered_part(&self, plan: &crate::plan::Plan) -> crate::plan::Plan {
        let mut part = plan.clone();
        for (f, fp) in part.files.iter_mut().enumerate() {
            let mut k = 0;
            fp.reads.retain(|_| {
                let keep = self
                    .files
                    .get(f)
                    .and_then(|c| c.get(k))
                    .is_some_and(|c| c.load(Ordering::Acquire) == REGISTERED);
                k += 1;
                keep
            });
        }
        part
    }
}

/// How the registered path goes: the span of each window and how many threads
/// register (and give back) windows ahead of the copies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct RegShape {
    pub window_bytes: u64,
    pub threads: usize,
}

impl RegShape {
    /// `depth` registrations in flight (1 to 32) sharing `staging_bytes`: registered
    /// at once are about `staging_bytes` ahead of the copies, as much again behind
    /// them while their copies finish, and a few windows more, however many threads.
    pub(crate) fn new(staging_bytes: u64, depth: usize) -> RegShape {
        let threads = depth.clamp(1, 32);
        RegShape {
            window_bytes: (staging_bytes / threads as u64).max(1),
            threads,
        }
    }
}

/// The driver's part: pinning host ranges so the device can copy from them. Called
/// from several registration threads at once.
pub(crate) trait Pinner: Sync {
    /// Registers the `len` bytes at `addr` (read-only).
    fn register(&self, addr: usize, len: usize) -> std::result::Result<(), String>;
    /// Gives back the registration that begins at `addr`.
    fn unregister(&self, addr: usize) -> std::result::Result<(), String>;
}

/// The copies of one file's windows, enqueued in order on one stream.
pub(crate) trait Windows {
    /// Enqueues window `w`: the sorted reads `reads`, each split where a registration
    /// begins ([`split_at_registrations`]).
    fn copy(&mut self, w: usize, reads: Range<usize>) -> Result<()>;
    /// Waits for the copies of window `w` and every earlier one; returns the bytes
    /// of the windows not waited for before.
    fn wait(&mut self, w: usize) -> Result<u64>;
    /// [`Self::wait`] if the copies of window `w` are done already; None if not.
    fn poll(&mut self, w: usize) -> Result<Option<u64>>;
    /// Waits for every copy enqueued, whatever happened before (after an error).
    fn settle(&mut self);
    /// Claims window `w`'s reads for this side, just before they are copied. In a
    /// balanced split the pinned slots may have taken some already, and then this
    /// side stops after this window. By default every read is this side's.
    fn claim(&mut self, _w: usize, _reads: Range<usize>) -> Claimed {
        Claimed::All
    }
    /// Whether another side takes whatever reads this one leaves (a balanced split):
    /// a registration the driver refuses after the load's first then stops this side
    /// where it is, instead of failing the load. By default, no.
    fn leaves_rest(&self) -> bool {
        false
    }
}

/// How much of a window [`Windows::claim`] got.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Claimed {
    All,
    /// Some of its reads: it is this side's last window.
    Last,
    /// None: this side stops before it.
    Nothing,
}

/// What became of one file on the registered path.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum FileOutcome {
    Copied,
    /// Copied up to where the other side of a balanced split had reached, or up to
    /// a registration the driver refused after the load's first (that side takes the
    /// rest): this side has nothing more to do in this file or any other.
    Met,
    /// The driver refused the load's first registration; nothing was copied.
    Refused(String),
}

/// Work for the registration threads.
enum RegJob {
    Register { r: usize, addr: usize, len: usize },
    GiveBack { addr: usize },
}

/// What a registration thread did.
enum RegDone {
    Registered {
        r: usize,
        result: std::result::Result<(), String>,
    },
    GivenBack(std::result::Result<(), String>),
}

type JobList = (VecDeque<RegJob>, bool);

/// The registration threads' jobs, first in first out. Once closed (the file is done,
/// or failed), registrations not yet started are dropped, give-backs still done, and
/// the threads end when it is empty.
#[derive(Default)]
struct RegQueue {
    state: Mutex<JobList>,
    ready: Condvar,
}

impl RegQueue {
    fn lock(&self) -> MutexGuard<'_, JobList> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn push(&self, job: RegJob) {
        self.lock().0.push_back(job);
        self.ready.notify_one();
    }

    fn push_front(&self, job: RegJob) {
        self.lock().0.push_front(job);
        self.ready.notify_one();
    }

    fn close(&self) {
        self.lock().1 = true;
        self.ready.notify_all();
    }

    /// The next job to do; None once closed and empty.
    fn next(&self) -> Option<RegJob> {
        let mut s = self.lock();
        loop {
            let closed = s.1;
            match s.0.pop_front() {
                Some(RegJob::Register { .. }) if closed => {}
                Some(job) => return Some(job),
                None if closed => return None,
                None => s = self.ready.wait(s).unwrap_or_else(|e| e.into_inner()),
            }
        }
    }
}

/// Closes the queue however the main thread leaves the threads' scope.
struct CloseOnDrop<'q>(&'q RegQueue);

impl Drop for CloseOnDrop<'_> {
    fn drop(&mut self) {
        self.0.close();
    }
}

fn registration_thread(pinner: &impl Pinner, queue: &RegQueue, done: &Sender<RegDone>) {
    while let Some(job) = queue.next() {
        let msg = match job {
            RegJob::Register { r, addr, len } => RegDone::Registered {
                r,
                result: pinner.register(addr, len),
            },
            RegJob::GiveBack { addr } => RegDone::GivenBack(pinner.unregister(addr)),
        };
        if done.send(msg).is_err() {
            break;
        }
    }
}

/// The main thread's view of the registrations of one file.
struct Registrar<'q> {
    queue: &'q RegQueue,
    done: Receiver<RegDone>,
    /// Per registration: None until its thread reports, then what it reported.
    state: Vec<Option<std::result::Result<(), String>>>,
    /// Per registration: its address while registered and not yet handed to a
    /// thread to give back.
    held: Vec<Option<usize>>,
    starts: Vec<usize>,
    give_back_failed: Option<String>,
}

impl Registrar<'_> {
    fn absorb(&mut self, msg: RegDone) {
        match msg {
            RegDone::Registered { r, result } => {
                if result.is_ok() {
                    if let (Some(h), Some(&a)) = (self.held.get_mut(r), self.starts.get(r)) {
                        *h = Some(a);
                    }
                }
                if let Some(s) = self.state.get_mut(r) {
                    *s = Some(result);
                }
            }
            RegDone::GivenBack(Err(e)) => {
                self.give_back_failed.get_or_insert(e);
            }
            RegDone::GivenBack(Ok(())) => {}
        }
    }

    /// Waits for registration `r`'s result.
    fn wait(&mut self, r: usize) -> Result<std::result::Result<(), String>> {
        loop {
            match self.state.get(r) {
                Some(Some(result)) => return Ok(result.clone()),
                Some(None) => {}
                None => return Err(internal("registration index")),
            }
            let msg = self
                .done
                .recv()
                .map_err(|_| internal("the registration threads stopped"))?;
            self.absorb(msg);
        }
    }

    /// Hands registration `r` to a thread to give back, ahead of the registrations
    /// waiting (what is pinned stays near its bound).
    fn give_back(&mut self, r: usize) {
        if let Some(addr) = self.held.get_mut(r).and_then(Option::take) {
            self.queue.push_front(RegJob::GiveBack { addr });
        }
    }
}

fn internal(what: &str) -> Error {
    Error::Cuda(format!("internal: {what}"))
}

/// One file's side of the registered path, carried out for a file mapped at `base`:
/// `shape.threads` threads register the windows of `sched` up to that many windows
/// ahead of the copies (pinning is the driver's slow part, and it runs in parallel),
/// the calling thread enqueues each window's copies once its pages are registered and
/// hands a registration back to the threads to give back once the copies that read
/// it are done (waiting for them only when `shape.threads` are waiting already, so
/// that several windows' copies stay queued on the device). `first` is true while no registration of the load has been made; a
/// refusal then is [`FileOutcome::Refused`], later an error. Whatever happens, every
/// registration made is given back before this returns, after the copies settle.
#[allow(clippy::too_many_arguments)]
pub(crate) fn carry_out(
    sched: &RegSchedule,
    base: usize,
    shape: RegShape,
    path: &std::path::Path,
    pinner: &impl Pinner,
    windows: &mut impl Windows,
    first: &mut bool,
    cancelled: &dyn Fn() -> bool,
    copied: &mut dyn FnMut(u64),
) -> Result<FileOutcome> {
    let queue = RegQueue::default();
    let (tx, rx) = channel();
    let n = sched.regs.len();
    let mut reg = Registrar {
        queue: &queue,
        done: rx,
        state: vec![None; n],
        held: vec![None; n],
        starts: sched
            .regs
            .iter()
            .map(|g| base.saturating_add(g.start as usize))
            .collect(),
        give_back_failed: None,
    };
    let threads = shape.threads.min(n).max(1);
    let outcome = std::thread::scope(|scope| {
        let _close = CloseOnDrop(&queue);
        for _ in 0..threads {
            let (q, tx) = (&queue, tx.clone());
            scope.spawn(move || registration_thread(pinner, q, &tx));
        }
        drop(tx);
        main_thread(
            sched, shape, path, windows, first, cancelled, copied, &mut reg,
        )
    });
    // The threads have ended: record what they did meanwhile; after an error, wait
    // for the copies and give back what is still registered.
    while let Ok(msg) = reg.done.try_recv() {
        reg.absorb(msg);
    }
    if reg.held.iter().any(Option::is_some) {
        windows.settle();
        for addr in reg.held.iter_mut().filter_map(Option::take) {
            if let Err(e) = pinner.unregister(addr) {
                reg.give_back_failed.get_or_insert(e);
            }
        }
    }
    let outcome = outcome?;
    if let Some(e) = reg.give_back_failed {
        return Err(Error::Cuda(format!(
            "giving back a registration of {}: {e}",
            path.display()
        )));
    }
    Ok(outcome)
}

#[allow(clippy::too_many_arguments)]
fn main_thread(
    sched: &RegSchedule,
    shape: RegShape,
    path: &std::path::Path,
    windows: &mut impl Windows,
    first: &mut bool,
    cancelled: &dyn Fn() -> bool,
    copied: &mut dyn FnMut(u64),
    reg: &mut Registrar<'_>,
) -> Result<FileOutcome> {
    let last_use = |r: usize| sched.regs.get(r).map_or(usize::MAX, |g| g.last_use);
    let mut asked = 0;
    // Registrations the schedule retires whose copies may still run: given back once
    // the device is done with them, waited for only when more than `shape.threads`
    // are waiting, so that the copies of several windows stay queued on the device.
    let mut retiring: VecDeque<usize> = VecDeque::new();
    for (w, step) in sched.steps.iter().enumerate() {
        if cancelled() {
            return Err(Error::Cancelled);
        }
        retiring.extend(&step.retire);
        while let Some(&r) = retiring.front() {
            let done = if retiring.len() > shape.threads {
                Some(windows.wait(last_use(r))?)
            } else {
                windows.poll(last_use(r))?
            };
            let Some(bytes) = done else { break };
            copied(bytes);
            reg.give_back(r);
            retiring.pop_front();
        }
        while asked < sched.steps.len() && asked <= w + shape.threads {
            if let Some(r) = sched.steps.get(asked).and_then(|s| s.register) {
                let (Some(g), Some(&addr)) = (sched.regs.get(r), reg.starts.get(r)) else {
                    return Err(internal("registration index"));
                };
                let len = usize::try_from(g.end - g.start)
                    .map_err(|_| internal("registration length"))?;
                reg.queue.push(RegJob::Register { r, addr, len });
            }
            asked += 1;
        }
        if let Some(r) = step.register {
            if let Err(e) = reg.wait(r)? {
                if *first {
                    return Ok(FileOutcome::Refused(format!(
                        "cuMemHostRegister (read-only) of {}: {e}",
                        path.display()
                    )));
                }
                let g = sched.regs.get(r).ok_or_else(|| internal("registration"))?;
                let what = format!(
                    "registering bytes {}..{} of {} (read-only): {e}",
                    g.start,
                    g.end,
                    path.display()
                );
                if windows.leaves_rest() {
                    tracing::debug!("{what}; the pinned slots take the rest");
                    return stop_after(w, asked, sched, windows, copied, reg);
                }
                return Err(Error::Cuda(what));
            }
            *first = false;
        }
        // Claimed as late as possible, once its pages are registered: the other side of
        // a balanced split may take reads up to here, and they meet within a window.
        let claimed = windows.claim(w, step.reads.clone());
        if claimed != Claimed::Nothing {
            windows.copy(w, step.reads.clone())?;
        }
        if claimed != Claimed::All {
            // Met: the rest is the other side's.
            return stop_after(w, asked, sched, windows, copied, reg);
        }
    }
    for r in retiring
        .into_iter()
        .chain(sched.retire_at_end.iter().copied())
    {
        copied(windows.wait(last_use(r))?);
        reg.give_back(r);
    }
    copied(windows.wait(usize::MAX)?);
    Ok(FileOutcome::Copied)
}

/// Stops a file's registered side after window `w` (the other side of a balanced
/// split has the rest): once the registrations asked ahead of it (up to window
/// `asked`) have been made and the copies are done, every registration goes back.
fn stop_after(
    w: usize,
    asked: usize,
    sched: &RegSchedule,
    windows: &mut impl Windows,
    copied: &mut dyn FnMut(u64),
    reg: &mut Registrar<'_>,
) -> Result<FileOutcome> {
    for ahead in w + 1..asked {
        if let Some(r) = sched.steps.get(ahead).and_then(|s| s.register) {
            let _ = reg.wait(r)?;
        }
    }
    copied(windows.wait(usize::MAX)?);
    for r in 0..sched.regs.len() {
        reg.give_back(r);
    }
    Ok(FileOutcome::Met)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const PAGE: u64 = 4096;

    /// Checks the schedule's promises for `reads`.
    fn check(reads: &[(u64, u64)], window: u64, pages_end: u64) {
        check_schedule(
            reads,
            &schedule(reads, window, pages_end, PAGE),
            window,
            pages_end,
            PAGE,
        );
    }

    /// Checks the promises of `s`, a schedule of `reads` (in the order its windows
    /// take them) in a file whose last page ends at `pages_end`.
    fn check_schedule(
        reads: &[(u64, u64)],
        s: &RegSchedule,
        window: u64,
        pages_end: u64,
        page_size: u64,
    ) {
        // Windows cover the reads in order, once each.
        let mut next = 0;
        for st in &s.steps {
            assert_eq!(st.reads.start, next);
            assert!(st.reads.end > st.reads.start);
            next = st.reads.end;
        }
        assert_eq!(next, reads.len());
        // Registrations: page-aligned, inside the file's pages, disjoint.
        let mut by_start = s.regs.clone();
        by_start.sort_by_key(|r| r.start);
        for (k, r) in by_start.iter().enumerate() {
            assert!(
                r.start % page_size == 0 && r.start < r.end && r.end <= pages_end,
                "{r:?}"
            );
            assert!(r.end % page_size == 0 || r.end == pages_end);
            if let Some(prev) = k.checked_sub(1).and_then(|p| by_start.get(p)) {
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
                let mut page = off & !(page_size - 1);
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
                    page += page_size;
                }
            }
        }
        // Each read, split where registrations begin, gives pieces that lie inside one
        // registration each and cover the read exactly.
        let starts: Vec<u64> = by_start.iter().map(|r| r.start).collect();
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
        let bound = 4 * (window.max(longest) + 2 * page_size);
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
    fn rows_are_run_together_up_to_where_a_registration_begins() {
        // Rows of 10 bytes, 30 apart, from 100: 100..110, 130..140, 160..170, ...
        assert_eq!(rows_by_registration(100, 30, 10, 5, &[]), vec![(0, 5)]);
        assert_eq!(
            rows_by_registration(100, 30, 10, 5, &[0, 1000]),
            vec![(0, 5)]
        );
        // A registration from 150 (in the gap): rows 0-1, then 2-4.
        assert_eq!(
            rows_by_registration(100, 30, 10, 5, &[0, 150]),
            vec![(0, 2), (2, 3)]
        );
        // One from 135 (inside row 1): row 1 alone, for the caller to split.
        assert_eq!(
            rows_by_registration(100, 30, 10, 5, &[0, 135]),
            vec![(0, 1), (1, 1), (2, 3)]
        );
        // One from 160 (at row 2's first byte) belongs to row 2's run.
        assert_eq!(
            rows_by_registration(100, 30, 10, 5, &[0, 160]),
            vec![(0, 2), (2, 3)]
        );
        assert_eq!(
            rows_by_registration(100, 30, 10, 0, &[0, 135]),
            vec![(0, 0)]
        );
    }

    #[test]
    fn one_window_for_a_small_file() {
        let s = schedule(&[(4096, 100), (4200, 10)], 1 << 20, 8192, PAGE);
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

    /// What the fake driver saw.
    #[derive(Default)]
    struct Fake {
        /// Registered ranges: start address -> length.
        regs: std::collections::BTreeMap<usize, usize>,
        /// Copies enqueued and not yet complete: (window, address, length).
        pending: Vec<(usize, usize, usize)>,
        violations: Vec<String>,
        registering: usize,
        most_registering: usize,
        most_registered_bytes: usize,
    }

    struct FakePinner<'a> {
        fake: &'a Mutex<Fake>,
        fail_register: Option<usize>,
        fail_give_back: Option<usize>,
        delay: std::time::Duration,
    }

    impl Pinner for FakePinner<'_> {
        fn register(&self, addr: usize, len: usize) -> std::result::Result<(), String> {
            {
                let mut f = self.fake.lock().unwrap();
                f.registering += 1;
                f.most_registering = f.most_registering.max(f.registering);
            }
            std::thread::sleep(self.delay);
            let mut f = self.fake.lock().unwrap();
            f.registering -= 1;
            if self.fail_register == Some(addr) {
                return Err("CUDA_ERROR_INVALID_VALUE".into());
            }
            if f.regs.iter().any(|(&a, &l)| a < addr + len && addr < a + l) {
                f.violations
                    .push(format!("{addr:#x}+{len} registered twice"));
            }
            f.regs.insert(addr, len);
            let total = f.regs.values().sum();
            f.most_registered_bytes = f.most_registered_bytes.max(total);
            Ok(())
        }

        fn unregister(&self, addr: usize) -> std::result::Result<(), String> {
            let mut f = self.fake.lock().unwrap();
            let Some(len) = f.regs.remove(&addr) else {
                f.violations
                    .push(format!("{addr:#x} given back but not registered"));
                return Err("CUDA_ERROR_HOST_MEMORY_NOT_REGISTERED".into());
            };
            let reading: Vec<_> = f
                .pending
                .iter()
                .filter(|&&(_, a, l)| a < addr + len && addr < a + l)
                .copied()
                .collect();
            if !reading.is_empty() {
                f.violations.push(format!(
                    "{addr:#x}+{len} given back while copies read it: {reading:?}"
                ));
            }
            if self.fail_give_back == Some(addr) {
                return Err("CUDA_ERROR_UNKNOWN".into());
            }
            Ok(())
        }
    }

    /// Copies "enqueued" by `copy` happen at `wait`/`settle`, as a stream would.
    struct FakeWindows<'a> {
        fake: &'a Mutex<Fake>,
        file: &'a [u8],
        out: Vec<u8>,
        reads: &'a [(u64, u64)],
        starts: Vec<u64>,
        fail_copy: Option<usize>,
        /// Bytes per window, until waited for.
        bytes: std::collections::BTreeMap<usize, u64>,
        polls: usize,
        slow: bool,
        /// A balanced split's claims, with each read's index among the file's reads;
        /// which reads this side claimed.
        claims: Option<(&'a Claims, Vec<usize>)>,
        taken: Vec<bool>,
    }

    impl FakeWindows<'_> {
        fn complete(&mut self, upto: usize) {
            let base = self.file.as_ptr() as usize;
            let mut f = self.fake.lock().unwrap();
            let (done, left): (Vec<_>, Vec<_>) =
                f.pending.iter().partition(|&&(w, _, _)| w <= upto);
            f.pending = left;
            for (w, a, l) in done {
                if !f.regs.iter().any(|(&s, &n)| s <= a && a + l <= s + n) {
                    f.violations
                        .push(format!("window {w} read {a:#x}+{l} unregistered"));
                }
                let at = a - base;
                self.out[at..at + l].copy_from_slice(&self.file[at..at + l]);
            }
        }
    }

    impl Windows for FakeWindows<'_> {
        fn copy(&mut self, w: usize, reads: Range<usize>) -> Result<()> {
            if self.fail_copy == Some(w) {
                return Err(Error::Cuda("cuMemcpyHtoDAsync: injected".into()));
            }
            let base = self.file.as_ptr() as u64;
            let mut f = self.fake.lock().unwrap();
            for (k, &(off, len)) in reads.clone().zip(&self.reads[reads]) {
                if self.claims.is_some() && !self.taken[k] {
                    continue;
                }
                for (at, n) in split_at_registrations(base + off, len, &self.starts) {
                    let (a, n) = ((base + off + at) as usize, n as usize);
                    if !f.regs.iter().any(|(&s, &l)| s <= a && a + n <= s + l) {
                        f.violations
                            .push(format!("window {w}: copy of {a:#x}+{n} unregistered"));
                    }
                    f.pending.push((w, a, n));
                }
                *self.bytes.entry(w).or_default() += len;
            }
            Ok(())
        }

        fn wait(&mut self, w: usize) -> Result<u64> {
            self.complete(w);
            let later = self.bytes.split_off(&(w.saturating_add(1)));
            let bytes = std::mem::replace(&mut self.bytes, later);
            Ok(bytes.values().sum())
        }

        fn poll(&mut self, w: usize) -> Result<Option<u64>> {
            // A slow device is never done when asked; another is, every other time.
            self.polls += 1;
            if !self.slow && self.polls.is_multiple_of(2) {
                self.wait(w).map(Some)
            } else {
                Ok(None)
            }
        }

        fn settle(&mut self) {
            self.complete(usize::MAX);
        }

        fn claim(&mut self, _w: usize, reads: Range<usize>) -> Claimed {
            let Some((claims, ids)) = &self.claims else {
                return Claimed::All;
            };
            claims.window_for_registered(0, ids, reads, &mut self.taken)
        }

        fn leaves_rest(&self) -> bool {
            self.claims.is_some()
        }
    }

    #[derive(Debug, Clone)]
    enum Mishap {
        None,
        /// The driver refuses registration k (modulo their count).
        Register(usize),
        GiveBack(usize),
        Copy(usize),
        /// Cancelled once the main thread has asked this many times.
        Cancel(usize),
    }

    /// Carries out the schedule of `reads` with the fake driver and checks what it did.
    fn carry(
        reads: &[(u64, u64)],
        shape: RegShape,
        mishap: &Mishap,
        first: bool,
        delay: std::time::Duration,
        slow: bool,
    ) -> (Result<FileOutcome>, Fake) {
        use rand::{RngCore, SeedableRng};
        let pages_end = reads
            .iter()
            .map(|&(o, l)| o + l)
            .max()
            .unwrap_or(0)
            .next_multiple_of(PAGE);
        let mut rng = rand::rngs::StdRng::seed_from_u64(pages_end ^ reads.len() as u64);
        let mut file = vec![0u8; pages_end as usize];
        rng.fill_bytes(&mut file);
        let base = file.as_ptr() as usize;
        let sched = schedule(reads, shape.window_bytes, pages_end, PAGE);
        let n = sched.regs.len();
        let reg_addr = |k: usize| base + sched.regs[k % n].start as usize;
        let fake = Mutex::new(Fake::default());
        let pinner = FakePinner {
            fake: &fake,
            fail_register: matches!(mishap, Mishap::Register(_)).then(|| match mishap {
                Mishap::Register(k) => reg_addr(*k),
                _ => 0,
            }),
            fail_give_back: match mishap {
                Mishap::GiveBack(k) => Some(reg_addr(*k)),
                _ => None,
            },
            delay,
        };
        let mut windows = FakeWindows {
            fake: &fake,
            file: &file,
            out: vec![0; file.len()],
            reads,
            starts: sched.regs.iter().map(|g| base as u64 + g.start).collect(),
            fail_copy: match mishap {
                Mishap::Copy(w) => Some(w % sched.steps.len()),
                _ => None,
            },
            bytes: Default::default(),
            polls: 0,
            slow,
            claims: None,
            taken: Vec::new(),
        };
        let asked = std::sync::atomic::AtomicUsize::new(0);
        let cancelled = || {
            let k = asked.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            matches!(mishap, Mishap::Cancel(c) if k >= *c)
        };
        let mut copied = 0;
        let mut first_now = first;
        let out = carry_out(
            &sched,
            base,
            shape,
            std::path::Path::new("m.safetensors"),
            &pinner,
            &mut windows,
            &mut first_now,
            &cancelled,
            &mut |b| copied += b,
        );
        let out_bytes = std::mem::take(&mut windows.out);
        drop(windows);
        let mut f = fake.into_inner().unwrap();
        // Whatever happened: nothing left registered, nothing left in flight.
        assert!(f.violations.is_empty(), "{:?}", f.violations);
        assert!(f.regs.is_empty(), "left registered: {:?}", f.regs);
        assert!(f.pending.is_empty());
        let longest = reads.iter().map(|r| r.1).max().unwrap_or(0);
        let bound = (3 * shape.threads as u64 + 8) * (shape.window_bytes.max(longest) + 2 * PAGE);
        assert!(
            f.most_registered_bytes as u64 <= bound,
            "{} bytes registered at once (bound {bound})",
            f.most_registered_bytes
        );
        match (&out, mishap) {
            (Ok(FileOutcome::Copied), Mishap::None) => {
                let total: u64 = reads.iter().map(|r| r.1).sum();
                assert_eq!(copied, total, "progress");
                for &(o, l) in reads {
                    let (o, l) = (o as usize, l as usize);
                    assert!(out_bytes[o..o + l] == file[o..o + l], "read {o}+{l}");
                }
                assert!(!first_now);
            }
            (Ok(FileOutcome::Refused(why)), Mishap::Register(k)) => {
                assert!(first && k % n == 0, "refused at {k} (first {first})");
                assert!(why.contains("m.safetensors") && why.contains("INVALID_VALUE"));
            }
            (Err(e), Mishap::Register(k)) => {
                assert!(!first || k % n != 0, "{e}");
                assert!(e.to_string().contains("registering bytes"), "{e}");
            }
            (Err(e), Mishap::GiveBack(_)) => assert!(e.to_string().contains("giving back"), "{e}"),
            (Err(e), Mishap::Copy(_)) => assert!(e.to_string().contains("injected"), "{e}"),
            (Err(Error::Cancelled), Mishap::Cancel(_)) => {}
            // Cancelled after the last window's check: the file completes.
            (Ok(FileOutcome::Copied), Mishap::Cancel(c)) => assert!(*c >= sched.steps.len()),
            (o, m) => panic!("{m:?} gave {o:?}"),
        }
        f.violations.clear();
        (out, f)
    }

    /// A balanced split's registered side going backwards through one file, `reads`
    /// sorted by offset: the slots have claimed the first `prefix` reads already and,
    /// when `racing`, claim the rest forwards on another thread meanwhile. Every read
    /// ends up with exactly one side; the registered side copies exactly its own,
    /// byte for byte, stops where it meets the slots and gives everything back. With
    /// `fail`, the driver refuses registration `fail` (modulo their count): the first
    /// is a refusal of the whole path, a later one stops the registered side there.
    fn carry_backwards(
        reads: &[(u64, u64)],
        shape: RegShape,
        prefix: usize,
        racing: bool,
        fail: Option<usize>,
    ) {
        use rand::{RngCore, SeedableRng};
        let n = reads.len();
        let pages_end = reads
            .iter()
            .map(|&(o, l)| o + l)
            .max()
            .unwrap_or(0)
            .next_multiple_of(PAGE);
        let mut rng = rand::rngs::StdRng::seed_from_u64(pages_end ^ n as u64);
        let mut file = vec![0u8; pages_end as usize];
        rng.fill_bytes(&mut file);
        let base = file.as_ptr() as usize;
        let mut order: Vec<usize> = (0..n).collect();
        order.sort_by_key(|&k| std::cmp::Reverse((reads[k].0 + reads[k].1, reads[k].0)));
        let back: Vec<(u64, u64)> = order.iter().map(|&k| reads[k]).collect();
        let sched = schedule_backwards(&back, shape.window_bytes, pages_end, PAGE);
        check_schedule(&back, &sched, shape.window_bytes, pages_end, PAGE);
        let claims = Claims {
            files: vec![(0..n).map(|_| AtomicU8::new(FREE)).collect()],
        };
        for k in 0..prefix.min(n) {
            assert!(claims.for_slots(0, k));
        }
        let fake = Mutex::new(Fake::default());
        let fail = fail.map(|k| k % sched.regs.len());
        let pinner = FakePinner {
            fake: &fake,
            fail_register: fail.map(|k| base + sched.regs[k].start as usize),
            fail_give_back: None,
            delay: std::time::Duration::from_micros(50),
        };
        let mut starts: Vec<u64> = sched.regs.iter().map(|g| base as u64 + g.start).collect();
        starts.sort_unstable();
        let mut windows = FakeWindows {
            fake: &fake,
            file: &file,
            out: vec![0; file.len()],
            reads: &back,
            starts,
            fail_copy: None,
            bytes: Default::default(),
            polls: 0,
            slow: false,
            claims: Some((&claims, order.clone())),
            taken: vec![false; n],
        };
        let mut copied = 0;
        let out = std::thread::scope(|scope| {
            if racing {
                scope.spawn(|| {
                    for k in 0..n {
                        claims.for_slots(0, k);
                        std::thread::sleep(std::time::Duration::from_micros(30));
                    }
                });
            }
            carry_out(
                &sched,
                base,
                shape,
                std::path::Path::new("m.safetensors"),
                &pinner,
                &mut windows,
                &mut true,
                &|| false,
                &mut |b| copied += b,
            )
        });
        let out_bytes = std::mem::take(&mut windows.out);
        drop(windows);
        let f = fake.into_inner().unwrap();
        assert!(f.violations.is_empty(), "{:?}", f.violations);
        assert!(f.regs.is_empty(), "left registered: {:?}", f.regs);
        assert!(f.pending.is_empty());
        let owner: Vec<u8> = claims.files[0]
            .iter()
            .map(|c| c.load(Ordering::Relaxed))
            .collect();
        let mine: Vec<usize> = (0..n).filter(|&k| owner[k] == REGISTERED).collect();
        assert!(owner[..prefix.min(n)].iter().all(|&o| o == SLOTS));
        if racing {
            assert!(
                owner.iter().all(|&o| o != FREE),
                "a read nobody took: {owner:?}"
            );
        }
        let met = owner.contains(&SLOTS);
        match (out.unwrap(), fail) {
            // The first registration refused: nothing claimed, the slots do it all.
            (FileOutcome::Refused(_), Some(0)) => assert!(mine.is_empty(), "{owner:?}"),
            (FileOutcome::Met, Some(_)) => {}
            (got, fail) => assert_eq!(
                got,
                if met {
                    FileOutcome::Met
                } else {
                    FileOutcome::Copied
                },
                "{owner:?}, fail {fail:?}"
            ),
        }
        assert_eq!(
            copied,
            mine.iter().map(|&k| reads[k].1).sum::<u64>(),
            "progress"
        );
        for &k in &mine {
            let (o, l) = (reads[k].0 as usize, reads[k].1 as usize);
            assert!(out_bytes[o..o + l] == file[o..o + l], "read {o}+{l}");
        }
        // The registered side took the file's end: in its order (by end, descending),
        // every read before the first one the slots had is its own (up to a refused
        // registration, where it stopped: past the first window, it had copied).
        match fail {
            None => {
                let met_at = order.iter().position(|&k| owner[k] == SLOTS).unwrap_or(n);
                assert!(
                    order[..met_at].iter().all(|&k| owner[k] == REGISTERED),
                    "{owner:?} in order {order:?}"
                );
            }
            Some(k) if k > 0 && prefix == 0 && !racing => {
                assert!(
                    owner[order[0]] == REGISTERED,
                    "{owner:?} in order {order:?}"
                );
            }
            Some(_) => {}
        }
    }

    #[test]
    fn a_balanced_split_meets_the_slots_where_they_stopped() {
        let reads: Vec<(u64, u64)> = (0..40)
            .map(|i| (i * 3 * PAGE + 100, 2 * PAGE + 7))
            .collect();
        for threads in [1, 3, 8] {
            let shape = RegShape {
                window_bytes: 5 * PAGE,
                threads,
            };
            for prefix in [0, 1, 17, 39, 40] {
                carry_backwards(&reads, shape, prefix, false, None);
            }
            carry_backwards(&reads, shape, 0, true, None);
            // A registration refused midway: the registered side stops there.
            for fail in [0, 1, 5] {
                carry_backwards(&reads, shape, 0, false, Some(fail));
                carry_backwards(&reads, shape, 0, true, Some(fail));
            }
        }
    }

    fn plan_of(files: &[Vec<(u64, u64)>]) -> crate::plan::Plan {
        use crate::plan::{FilePlan, Plan, ReadOp, Target};
        Plan {
            files: files
                .iter()
                .enumerate()
                .map(|(i, reads)| FilePlan {
                    shard: i,
                    path: format!("f{i}").into(),
                    file_len: reads.iter().map(|r| r.0 + r.1).max().unwrap_or(0),
                    tensors: Vec::new(),
                    raw_len: 0,
                    converted_len: 0,
                    reads: reads
                        .iter()
                        .map(|&(offset, required)| ReadOp {
                            offset,
                            len: required,
                            required,
                            target: Target::Raw { dest: offset },
                        })
                        .collect(),
                })
                .collect(),
        }
    }

    #[test]
    fn a_split_gives_each_read_to_one_side_and_the_tail_to_the_registered_one() {
        // Reads out of offset order, in two buffered files and one O_DIRECT file.
        let file: Vec<(u64, u64)> = (0..10u64).rev().map(|i| (i * 100, 100)).collect();
        let plan = plan_of(&[file.clone(), file.clone(), file]);
        for (share, want) in [
            (0.0, 0),
            (0.25, 300),
            (0.3, 300),
            (0.5, 500),
            (1.0, 1000),
            (f64::NAN, 0),
            (7.0, 1000),
        ] {
            let (reg, slots) = split_plan(&plan, share, |f| f != 1);
            for (f, ((r, s), whole)) in reg
                .files
                .iter()
                .zip(&slots.files)
                .zip(&plan.files)
                .enumerate()
            {
                let mut got: Vec<_> = r.reads.iter().chain(&s.reads).map(|op| op.offset).collect();
                let mut all: Vec<_> = whole.reads.iter().map(|op| op.offset).collect();
                got.sort_unstable();
                all.sort_unstable();
                assert_eq!(got, all, "share {share}, file {f}");
                let on_reg: u64 = r.reads.iter().map(|op| op.required).sum();
                if f == 1 {
                    assert_eq!(on_reg, 0, "O_DIRECT file registered");
                    continue;
                }
                assert_eq!(on_reg, want, "share {share}, file {f}");
                // The registered side holds the file's tail.
                let first_reg = r.reads.iter().map(|op| op.offset).min().unwrap_or(u64::MAX);
                assert!(
                    s.reads.iter().all(|op| op.offset < first_reg),
                    "share {share}"
                );
            }
            assert_eq!(
                reg.required_bytes() + slots.required_bytes(),
                plan.required_bytes()
            );
        }
    }

    #[test]
    fn claims_give_each_read_to_one_side_and_the_registered_part_is_its_reads() {
        let file: Vec<(u64, u64)> = (0..6u64).map(|i| (i * 100, 100)).collect();
        let plan = plan_of(&[file.clone(), file]);
        let claims = Claims::new(&plan);
        assert!(claims.for_slots(0, 0) && claims.for_slots(0, 0));
        assert!(!claims.for_registered(0, 0));
        assert!(claims.for_registered(1, 5) && claims.for_registered(1, 5));
        assert!(!claims.for_slots(1, 5));
        assert!(claims.for_registered(0, 3));
        // Out of the plan: the slots', never the registered side's.
        assert!(claims.for_slots(2, 0) && !claims.for_registered(0, 99));
        let part = claims.registered_part(&plan);
        let offsets: Vec<Vec<u64>> = part
            .files
            .iter()
            .map(|f| f.reads.iter().map(|op| op.offset).collect())
            .collect();
        assert_eq!(offsets, vec![vec![300], vec![500]]);
        assert_eq!(part.required_bytes(), 200);
    }

    #[test]
    fn registration_shape_shares_the_staging() {
        assert_eq!(
            RegShape::new(64 << 20, 16),
            RegShape {
                window_bytes: 4 << 20,
                threads: 16
            }
        );
        assert_eq!(RegShape::new(64 << 20, 0).threads, 1);
        assert_eq!(RegShape::new(64 << 20, 100).threads, 32);
        assert_eq!(RegShape::new(8, 16).window_bytes, 1);
    }

    #[test]
    fn threads_register_ahead_in_parallel() {
        // 64 windows of one page each; each registration takes 2 ms.
        let reads: Vec<(u64, u64)> = (0..64).map(|i| (i * PAGE, PAGE)).collect();
        let shape = RegShape {
            window_bytes: PAGE,
            threads: 8,
        };
        let delay = std::time::Duration::from_millis(2);
        let (out, fake) = carry(&reads, shape, &Mishap::None, true, delay, false);
        assert_eq!(out.unwrap(), FileOutcome::Copied);
        assert!(
            fake.most_registering >= 2,
            "never two registrations at once ({})",
            fake.most_registering
        );
        let one = RegShape {
            window_bytes: PAGE,
            threads: 1,
        };
        let (_, fake) = carry(&reads, one, &Mishap::None, true, delay, false);
        assert_eq!(fake.most_registering, 1);
    }

    #[test]
    fn a_slow_device_bounds_what_stays_registered_in_a_long_file() {
        // 400 windows of one page: without waiting for the device, every page would
        // stay registered until the end.
        let reads: Vec<(u64, u64)> = (0..400).map(|i| (i * PAGE, PAGE)).collect();
        for threads in [1, 2, 5] {
            let shape = RegShape {
                window_bytes: PAGE,
                threads,
            };
            let (out, _) = carry(&reads, shape, &Mishap::None, true, Default::default(), true);
            assert_eq!(out.unwrap(), FileOutcome::Copied);
        }
    }

    #[test]
    fn a_refused_first_registration_is_reported_and_nothing_stays_registered() {
        let reads: Vec<(u64, u64)> = (0..20).map(|i| (i * 3 * PAGE + 7, 2 * PAGE)).collect();
        let shape = RegShape {
            window_bytes: 2 * PAGE,
            threads: 4,
        };
        for first in [true, false] {
            let (out, _) = carry(
                &reads,
                shape,
                &Mishap::Register(0),
                first,
                Default::default(),
                false,
            );
            assert_eq!(matches!(out, Ok(FileOutcome::Refused(_))), first);
        }
    }

    /// Up to 40 sorted reads in 400 KB and how the registered path carries them out:
    /// windows from one byte to 500 KB, 1 to 8 threads.
    fn reads_and_shape() -> impl Strategy<Value = (Vec<(u64, u64)>, RegShape)> {
        (
            proptest::collection::vec((0u64..400_000, 1u64..60_000), 1..40),
            prop_oneof![Just(1u64), 1u64..50_000, 50_000u64..500_000],
            1usize..9,
        )
            .prop_map(|(mut reads, window_bytes, threads)| {
                reads.sort_unstable();
                (
                    reads,
                    RegShape {
                        window_bytes,
                        threads,
                    },
                )
            })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]
        #[test]
        fn carried_out_with_threads_every_read_arrives_and_everything_is_given_back(
            (reads, shape) in reads_and_shape(),
            mishap in prop_oneof![
                4 => Just(Mishap::None),
                1 => (0usize..50).prop_map(Mishap::Register),
                1 => (0usize..50).prop_map(Mishap::GiveBack),
                1 => (0usize..50).prop_map(Mishap::Copy),
                1 => (0usize..50).prop_map(Mishap::Cancel),
            ],
            first in any::<bool>(),
            slow in any::<bool>(),
        ) {
            let _checked = carry(&reads, shape, &mishap, first, Default::default(), slow);
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]
        #[test]
        fn every_read_is_covered_while_it_copies(
            raw in proptest::collection::vec((0u64..3_000_000, 1u64..300_000), 1..60),
            window in prop_oneof![Just(1u64), 1u64..100_000, 100_000u64..2_000_000],
            page in prop_oneof![Just(PAGE), Just(16 * PAGE)],
        ) {
            // 4 KiB pages (x86-64) and 64 KiB ones (some arm64 kernels): no two
            // registrations share a page, whichever.
            let mut reads = raw;
            reads.sort_unstable();
            let end = reads.iter().map(|&(o, l)| o + l).max().unwrap_or(0);
            let pages_end = end.next_multiple_of(page);
            let s = schedule(&reads, window, pages_end, page);
            check_schedule(&reads, &s, window, pages_end, page);
            // The same reads from the file's end backwards.
            reads.sort_unstable_by_key(|&(o, l)| std::cmp::Reverse((o + l, o)));
            let back = schedule_backwards(&reads, window, pages_end, page);
            check_schedule(&reads, &back, window, pages_end, page);
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(128))]
        #[test]
        fn a_balanced_split_gives_each_read_to_one_side(
            (reads, shape) in reads_and_shape(),
            prefix in 0usize..45,
            racing in any::<bool>(),
            fail in proptest::option::of(0usize..50),
        ) {
            carry_backwards(&reads, shape, prefix, racing, fail);
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]
        #[test]
        fn row_runs_cover_every_row_and_stop_only_where_a_registration_begins(
            start in 0u64..10_000,
            width in 1u64..500,
            extra in 0u64..500,
            rows in 0u64..60,
            mut starts in proptest::collection::vec(0u64..40_000, 0..12),
        ) {
            starts.sort_unstable();
            let pitch = width + extra;
            let runs = rows_by_registration(start, pitch, width, rows, &starts);
            let row = |r: u64| start + r * pitch;
            // A registration begins strictly inside [a, b).
            let cut = |a: u64, b: u64| starts.iter().any(|&s| a < s && s < b);
            let mut next = 0;
            for &(first, n) in &runs {
                prop_assert_eq!(first, next);
                prop_assert!(n > 0 || rows == 0);
                let end = row(first + n.max(1) - 1) + width;
                if n > 1 {
                    prop_assert!(!cut(row(first), end), "run {:?} spans a registration", (first, n));
                }
                if first + n < rows {
                    // Maximal: one more row would span a registration.
                    prop_assert!(cut(row(first), row(first + n) + width));
                }
                next = first + n;
            }
            prop_assert_eq!(next, rows);
        }
    }
}
