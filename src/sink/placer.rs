//! Staged reads placed off the I/O coordinator: a small pool of threads copies or
//! converts each staged read's bytes into their destination, so that conversions
//! (and gathers, and copies into a caller's memory) run in parallel with each other
//! and with the reads, instead of one after another on the thread that submits them.

use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use crate::convert;
use crate::dtype::Dtype;
use crate::error::{Error, Result};
use crate::plan::{self, Gather, ReadOp};

/// One thing to do with a staged read's bytes.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Work {
    /// Copy `len` bytes from `from` (offset in the slot) to `to`.
    Copy {
        from: usize,
        to: *mut u8,
        len: usize,
    },
    /// Gather `gather`'s rows first (when given), then convert `count` elements from
    /// `skip` in the slot, `src` to `dst`, into `to` (`count` elements of `dst`).
    Convert {
        skip: u64,
        count: u64,
        gather: Option<Gather>,
        src: Dtype,
        dst: Dtype,
        to: *mut u8,
    },
}

impl Work {
    /// Converting `count` elements of planned tensor `t` from `skip` in the slot
    /// (gathering `gather`'s rows first) into `to`.
    pub fn convert(
        t: &crate::plan::PlannedTensor,
        (skip, count, gather): (u64, u64, Option<Gather>),
        to: *mut u8,
    ) -> Work {
        Work::Convert {
            skip,
            count,
            gather,
            src: t.src_dtype,
            dst: t.dtype,
            to,
        }
    }
}

/// A staged read to place: its slot (index, memory) and what to do with it.
pub(crate) struct Job {
    /// File index and read, for the error's context.
    pub file: usize,
    pub op: ReadOp,
    pub slot: usize,
    pub staged: *mut u8,
    pub staged_len: usize,
    pub work: Vec<Work>,
}

// SAFETY: a Job's pointers are to the slot it names and to destination ranges that
// the sink hands to no one else until the job's result comes back (the slot is not
// reused, the ranges are disjoint from every other job's and from every read's), and
// that outlive it (the sink waits for every job before it frees or hands out memory).
unsafe impl Send for Job {}

/// A job's outcome: its slot (free again), file and read, and result.
pub(crate) type Done = (usize, usize, ReadOp, Result<()>);

/// The pool: jobs in, outcomes out. With one thread or none, jobs run inline. Its
/// threads start with the first job, so a load that stages nothing starts none.
pub(crate) struct Placer {
    /// Threads to start with the first job.
    threads: usize,
    jobs: Option<Sender<Job>>,
    done_tx: Sender<Done>,
    done: Receiver<Done>,
    workers: Vec<JoinHandle<()>>,
    /// Jobs sent whose outcome has not been taken.
    pending: usize,
    /// A thread the OS refused to start (its name, the OS error): the pool was
    /// stopped, and every job's outcome is this error.
    failed: Option<(String, std::io::ErrorKind, Option<i32>)>,
}

impl Placer {
    /// A pool of `threads` threads (0 or 1: jobs run on the caller's thread).
    pub fn new(threads: usize) -> Placer {
        let (done_tx, done) = mpsc::channel::<Done>();
        Placer {
            threads,
            jobs: None,
            done_tx,
            done,
            workers: Vec::new(),
            pending: 0,
            failed: None,
        }
    }

    /// Starts the threads (once, with the first job; none for fewer than 2). When the
    /// OS refuses one, those started are stopped and joined, and the failure recorded.
    fn start(&mut self) {
        let threads = std::mem::take(&mut self.threads);
        if threads <= 1 {
            return;
        }
        let (tx, rx) = mpsc::channel::<Job>();
        let rx = Arc::new(Mutex::new(rx));
        for i in 0..threads {
            let rx = Arc::clone(&rx);
            let out = self.done_tx.clone();
            let name = format!("tensorstream-place-{i}");
            match std::thread::Builder::new()
                .name(name.clone())
                .spawn(move || worker(&rx, &out))
            {
                Ok(h) => self.workers.push(h),
                Err(e) => {
                    self.failed = Some((name, e.kind(), e.raw_os_error()));
                    drop(tx);
                    for w in self.workers.drain(..) {
                        let _ = w.join();
                    }
                    return;
                }
            }
        }
        // A worker ends only when the queue closes (in Drop) or the outcomes' receiver
        // is gone (with self): while the pool lives, every job sent gets an outcome.
        self.jobs = Some(tx);
    }

    /// Places `job`: on a thread of the pool, or here when there is none.
    pub fn submit(&mut self, job: Job) {
        if self.threads > 0 {
            self.start();
        }
        self.pending += 1;
        if let Some((name, kind, os)) = &self.failed {
            let e = match os {
                Some(code) => std::io::Error::from_raw_os_error(*code),
                None => std::io::Error::from(*kind),
            };
            let _ = self
                .done_tx
                .send((job.slot, job.file, job.op, Err(Error::thread(name, e))));
            return;
        }
        let job = match &self.jobs {
            Some(tx) => match tx.send(job) {
                Ok(()) => return,
                Err(mpsc::SendError(job)) => job,
            },
            None => job,
        };
        let result = run(&job);
        // The receiver lives in self: this cannot fail.
        let _ = self.done_tx.send((job.slot, job.file, job.op, result));
    }

    /// An outcome that is ready, if any.
    pub fn try_done(&mut self) -> Option<Done> {
        let d = self.done.try_recv().ok()?;
        self.pending -= 1;
        Some(d)
    }

    /// The next outcome, waiting for it; `None` when no job is pending.
    pub fn wait_done(&mut self) -> Option<Done> {
        if self.pending == 0 {
            return None;
        }
        let d = self.done.recv().ok()?;
        self.pending -= 1;
        Some(d)
    }
}

/// A placing thread: jobs from the queue until it closes, each outcome sent back.
fn worker(rx: &Mutex<Receiver<Job>>, out: &Sender<Done>) {
    loop {
        let job = match rx.lock() {
            Ok(r) => r.recv(),
            Err(_) => return,
        };
        let Ok(job) = job else {
            return;
        };
        // A panic (a bug) is an error of this job, not a lost outcome that would leave
        // the sink waiting for it.
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| run(&job)))
            .unwrap_or_else(|p| {
                let why = p
                    .downcast_ref::<&str>()
                    .map(|s| s.to_string())
                    .or_else(|| p.downcast_ref::<String>().cloned())
                    .unwrap_or_default();
                Err(bad(&format!("a placing thread panicked: {why}")))
            });
        if out.send((job.slot, job.file, job.op, result)).is_err() {
            return;
        }
    }
}

impl Drop for Placer {
    fn drop(&mut self) {
        // Every job finishes before the memory it uses can be freed: close the queue,
        // let the workers drain it, and join them.
        self.jobs = None;
        for w in self.workers.drain(..) {
            let _ = w.join();
        }
    }
}

/// Carries out `job`.
fn run(job: &Job) -> Result<()> {
    // SAFETY: the slot's staged_len bytes are this job's alone until its outcome is
    // taken (see Job's Send).
    let staged = unsafe { std::slice::from_raw_parts_mut(job.staged, job.staged_len) };
    for w in &job.work {
        match *w {
            Work::Copy { from, to, len } => {
                let src = from
                    .checked_add(len)
                    .and_then(|end| staged.get(from..end))
                    .ok_or_else(|| bad("copy past the staged bytes"))?;
                // SAFETY: `to` holds `len` bytes that are this job's alone (Job's Send);
                // they do not overlap the slot.
                let dst = unsafe { std::slice::from_raw_parts_mut(to, len) };
                dst.copy_from_slice(src);
            }
            Work::Convert {
                skip,
                count,
                gather,
                src,
                dst,
                to,
            } => {
                if let Some(g) = &gather {
                    plan::gather_in_place(staged, skip, g)?;
                }
                let (in_size, out_size) = (src.bits() / 8, dst.bits() / 8);
                let span = |n: u64| usize::try_from(n).map_err(|_| bad("length"));
                let (a, b) = (span(skip)?, span(skip + count * in_size)?);
                let input = staged.get(a..b).ok_or_else(|| bad("staged range"))?;
                // SAFETY: `to` holds count * out_size bytes that are this job's alone
                // (Job's Send); they do not overlap the slot.
                let output = unsafe { std::slice::from_raw_parts_mut(to, span(count * out_size)?) };
                convert::convert_into(src, dst, input, output)?;
            }
        }
    }
    Ok(())
}

fn bad(what: &str) -> Error {
    Error::InvalidArgument(format!("internal error placing a staged read: {what}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::Target;

    fn op() -> ReadOp {
        ReadOp {
            offset: 0,
            len: 0,
            required: 0,
            target: Target::Raw { dest: 0 },
        }
    }

    #[test]
    fn jobs_run_on_the_pool_or_inline_and_every_outcome_comes_back() {
        for threads in [0, 1, 3] {
            let mut p = Placer::new(threads);
            // Slot i holds 8 bytes of i; each job copies them, converts them as 4 F16
            // to F32, or runs past the slot (an error, not a panic).
            let mut slots: Vec<Vec<u8>> = (0..30u8).map(|i| vec![i; 8]).collect();
            let mut out: Vec<Vec<u8>> = (0..30).map(|_| vec![0u8; 16]).collect();
            for (i, (slot, o)) in slots.iter_mut().zip(out.iter_mut()).enumerate() {
                let work = match i % 3 {
                    0 => Work::Copy {
                        from: 0,
                        to: o.as_mut_ptr(),
                        len: 8,
                    },
                    1 => Work::Convert {
                        skip: 0,
                        count: 4,
                        gather: None,
                        src: Dtype::F16,
                        dst: Dtype::F32,
                        to: o.as_mut_ptr(),
                    },
                    _ => Work::Copy {
                        from: 4,
                        to: o.as_mut_ptr(),
                        len: 8,
                    },
                };
                p.submit(Job {
                    file: i,
                    op: op(),
                    slot: i,
                    staged: slot.as_mut_ptr(),
                    staged_len: slot.len(),
                    work: vec![work],
                });
            }
            let mut seen = [false; 30];
            while let Some((slot, file, _, result)) = p.wait_done() {
                assert_eq!(slot, file);
                assert!(!std::mem::replace(&mut seen[slot], true), "{slot} twice");
                assert_eq!(
                    result.is_err(),
                    slot % 3 == 2,
                    "{threads} threads, job {slot}"
                );
            }
            assert!(
                seen.iter().all(|&s| s),
                "{threads} threads: an outcome is missing"
            );
            assert!(p.try_done().is_none());
            for (i, o) in out.iter().enumerate() {
                let b = i as u8;
                match i % 3 {
                    0 => assert_eq!(&o[..8], &[b; 8]),
                    1 => {
                        let h = half::f16::from_bits(u16::from_le_bytes([b, b]));
                        let f = f32::from(h);
                        if !f.is_nan() {
                            assert_eq!(&o[..4], &f.to_le_bytes(), "{i}");
                        }
                    }
                    _ => assert_eq!(o, &vec![0u8; 16]),
                }
            }
        }
    }

    #[test]
    fn dropping_the_pool_waits_for_the_jobs_queued() {
        let mut slot = vec![7u8; 1 << 20];
        let mut out = vec![0u8; 1 << 20];
        let (slot_at, out_at) = (slot.as_mut_ptr(), out.as_mut_ptr());
        {
            let mut p = Placer::new(2);
            for k in 0..64 {
                let at = k * (1 << 14);
                // Each job its own part of the slot memory, as each its own slot.
                p.submit(Job {
                    file: 0,
                    op: op(),
                    slot: k,
                    staged: slot_at.wrapping_add(at),
                    staged_len: 1 << 14,
                    work: vec![Work::Copy {
                        from: 0,
                        to: out_at.wrapping_add(at),
                        len: 1 << 14,
                    }],
                });
            }
            // Dropped here, outcomes untaken.
        }
        assert!(out.iter().all(|&b| b == 7));
    }
}
