//! The coordinator: runs a plan's reads through an engine into a sink, at most
//! `depth` in flight, resubmitting short reads, checking each file's size and mtime
//! from open to close, and draining every read in flight before returning an error.

use std::collections::HashMap;
use std::fs::File;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::os::unix::io::AsRawFd;
use std::path::Path;
use std::time::{Instant, SystemTime};

use super::prefault;
use super::{
    open_file, Buf, CancelToken, Done, Engine, EngineKind, IoChoice, IoStats, Progress, Req, Sink,
};
use crate::error::{Error, Result};
use crate::plan::{FilePlan, Plan, ReadOp};

/// A file opened for a load, with the size and mtime it had then.
pub(crate) struct OpenFile {
    file: File,
    len: u64,
    mtime: Option<SystemTime>,
}

struct InFlight {
    file: usize,
    read: usize,
    buf: Buf,
    /// Bytes of the read already in `buf`.
    got: usize,
}

/// Runs every read of `plan` through `engine` into `sink`, at most `depth` at a time.
/// On any error, waits for all reads in flight before returning it, so no engine
/// writes into memory the caller frees afterwards.
pub(crate) fn execute(
    plan: &Plan,
    choice: &IoChoice,
    engine: &mut dyn Engine,
    sink: &mut dyn Sink,
    depth: usize,
    cancel: Option<&CancelToken>,
    progress: Option<&Progress>,
) -> Result<IoStats> {
    let jobs: Vec<(usize, usize)> = plan
        .files
        .iter()
        .enumerate()
        .flat_map(|(f, fp)| (0..fp.reads.len()).map(move |r| (f, r)))
        .collect();
    let depth = depth.max(1);
    let prefaulter = prefault::Prefaulter::start(prefault_ranges(plan, choice, &jobs, sink));
    let mut run = Run {
        plan,
        choice,
        engine,
        sink,
        progress,
        // The files stay open until every read queued on them is done: a read queued
        // (but not yet handed to the kernel) when a load fails would otherwise be
        // submitted on a file descriptor number another thread may have reused.
        open: plan.files.iter().map(|_| None).collect(),
        remaining: plan.files.iter().map(|f| f.reads.len()).collect(),
        inflight: HashMap::with_capacity(depth),
        jobs,
        next: 0,
        bytes_done: 0,
        total: plan.required_bytes(),
        stats: IoStats::default(),
        prefaulter,
    };
    let r = run.all(depth, cancel);
    if r.is_err() {
        run.engine.drain();
    }
    let stats = std::mem::take(&mut run.stats);
    drop(run);
    r.map(|()| stats)
}

/// The destinations an engine would fault in on the reading thread (io_uring, and
/// O_DIRECT reads on the pread pool), for the prefault thread to populate ahead of
/// the reads. Buffered pread copies populate on their own threads.
fn prefault_ranges(
    plan: &Plan,
    choice: &IoChoice,
    jobs: &[(usize, usize)],
    sink: &mut dyn Sink,
) -> Vec<prefault::Range> {
    let ahead = |f: usize| match choice.engine {
        EngineKind::Uring => true,
        EngineKind::Pread => choice.files.get(f).is_some_and(|m| m.direct),
    };
    jobs.iter()
        .enumerate()
        .filter(|&(_, &(f, _))| ahead(f))
        .filter_map(|(i, &(f, r))| {
            let (_, op) = job(plan, f, r).ok()?;
            let (ptr, len) = sink.destination(f, op)?;
            Some(prefault::Range {
                job: i,
                addr: ptr as usize,
                len,
            })
        })
        .collect()
}

/// One execution's state.
struct Run<'a> {
    plan: &'a Plan,
    choice: &'a IoChoice,
    engine: &'a mut dyn Engine,
    sink: &'a mut dyn Sink,
    progress: Option<&'a Progress>,
    open: Vec<Option<OpenFile>>,
    /// Per file: reads not yet done.
    remaining: Vec<usize>,
    inflight: HashMap<usize, InFlight>,
    /// Every read, as (file, read), in order; `next` is the first not submitted.
    jobs: Vec<(usize, usize)>,
    next: usize,
    bytes_done: u64,
    total: u64,
    stats: IoStats,
    prefaulter: Option<prefault::Prefaulter>,
}

impl Run<'_> {
    /// Submits and reaps until every read is done.
    fn all(&mut self, depth: usize, cancel: Option<&CancelToken>) -> Result<()> {
        let mut done = Vec::with_capacity(depth);
        loop {
            if cancel.is_some_and(CancelToken::is_cancelled) {
                return Err(Error::Cancelled);
            }
            let starved = self.submit_up_to(depth)?;
            if self.inflight.is_empty() {
                if self.next >= self.jobs.len() {
                    return Ok(());
                }
                let t = Instant::now();
                self.sink.wait_for_slot()?;
                self.stats.waiting_for_buffers += t.elapsed();
                continue;
            }
            let t = Instant::now();
            self.engine
                .wait(&mut done)
                .map_err(|e| Error::io(Path::new("<io engine>"), "wait for reads", e))?;
            if starved {
                self.stats.waiting_for_buffers += t.elapsed();
            } else {
                self.stats.waiting_for_reads += t.elapsed();
            }
            for d in done.drain(..) {
                self.reaped(d)?;
            }
        }
    }

    /// Submits reads until `depth` are in flight or the sink has no buffer; true when
    /// it stopped for want of a buffer that a finished read still holds (not one whose
    /// read is in flight: then reading is the limit).
    fn submit_up_to(&mut self, depth: usize) -> Result<bool> {
        while self.inflight.len() < depth {
            let Some(&(f, r)) = self.jobs.get(self.next) else {
                return Ok(false);
            };
            let (fp, op) = job(self.plan, f, r)?;
            let slot = self.open.get_mut(f).ok_or_else(|| internal("file index"))?;
            if slot.is_none() {
                let direct = self.choice.files.get(f).is_some_and(|m| m.direct);
                *slot = Some(open_checked(&fp.path, direct, fp.file_len)?);
            }
            let fd = slot.as_ref().map(|o| o.file.as_raw_fd()).unwrap_or(-1);
            let Some(buf) = self.sink.buffer(f, op)? else {
                return Ok(self.sink.held_after_reads());
            };
            if buf.len < op.len as usize {
                return Err(internal("sink buffer shorter than the read"));
            }
            let req = Req {
                id: self.next,
                fd,
                offset: op.offset,
                ptr: buf.ptr,
                len: op.len as usize,
                fixed: buf.fixed,
                fresh: buf.fresh,
            };
            self.engine
                .submit(req)
                .map_err(|e| Error::io(&fp.path, "submit read", e))?;
            self.stats.requests += 1;
            let read = InFlight {
                file: f,
                read: r,
                buf,
                got: 0,
            };
            self.inflight.insert(self.next, read);
            self.next += 1;
            if let Some(p) = &self.prefaulter {
                p.advance(self.next);
            }
        }
        Ok(false)
    }

    /// Takes completion `d`: hands a whole read to the sink, or asks for the rest of a
    /// short or interrupted one.
    fn reaped(&mut self, d: Done) -> Result<()> {
        let Some(mut j) = self.inflight.remove(&d.id) else {
            return Err(internal("completion for an unknown read"));
        };
        let (fp, op) = job(self.plan, j.file, j.read)?;
        let direct = self.choice.files.get(j.file).is_some_and(|m| m.direct);
        match d.res {
            Ok(n) => {
                self.stats.bytes_read += n as u64;
                // A short O_DIRECT read of a regular file means end of file: the
                // remaining bytes cannot arrive (and an aligned retry would repeat it).
                let eof = n == 0 || (direct && n < op.len as usize - j.got);
                j.got += n;
                if eof && (j.got as u64) < op.required {
                    return Err(Error::changed(
                        &fp.path,
                        format_args!(
                            "end of file at offset {} while {} bytes were expected there",
                            op.offset + j.got as u64,
                            op.required - j.got as u64
                        ),
                    ));
                }
                if (j.got as u64) >= op.required {
                    self.sink.complete(j.file, op, j.buf)?;
                    self.bytes_done += op.required;
                    if let Some(p) = self.progress {
                        p(self.bytes_done, self.total);
                    }
                    return self.read_done(j.file, &fp.path);
                }
                // Short read: ask for the rest (O_DIRECT needs an aligned restart).
                self.stats.resubmitted += 1;
                if direct {
                    j.got -= j.got % 4096;
                }
            }
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::Interrupted | io::ErrorKind::WouldBlock
                ) =>
            {
                self.stats.resubmitted += 1;
            }
            Err(e) => return Err(Error::io(&fp.path, "read", e)),
        }
        self.resubmit(d.id, j, op, &fp.path)
    }

    /// Submits the rest of read `j` (`op` of the file at `path`) under its id.
    fn resubmit(&mut self, id: usize, j: InFlight, op: &ReadOp, path: &Path) -> Result<()> {
        let fd = self
            .open
            .get(j.file)
            .and_then(|o| o.as_ref())
            .map(|o| o.file.as_raw_fd())
            .ok_or_else(|| internal("resubmit on a closed file"))?;
        // SAFETY: got < len, so the pointer stays inside the buffer of `len` bytes.
        let ptr = unsafe { j.buf.ptr.add(j.got) };
        let req = Req {
            id,
            fd,
            offset: op.offset + j.got as u64,
            ptr,
            len: op.len as usize - j.got,
            fixed: j.buf.fixed,
            fresh: false,
        };
        self.engine
            .submit(req)
            .map_err(|e| Error::io(path, "submit read", e))?;
        self.stats.requests += 1;
        self.inflight.insert(id, j);
        Ok(())
    }

    /// Counts one more read of file `f` done; after its last, closes the file,
    /// checking that it did not change meanwhile.
    fn read_done(&mut self, f: usize, path: &Path) -> Result<()> {
        let rem = self.remaining.get_mut(f).ok_or_else(|| internal("file"))?;
        *rem -= 1;
        if *rem == 0 {
            if let Some(o) = self.open.get_mut(f).and_then(Option::take) {
                self.engine.file_closed(o.file.as_raw_fd());
                close_checked(path, o)?;
            }
        }
        Ok(())
    }
}

/// File plan `f` of `plan` and its read `r`.
fn job(plan: &Plan, f: usize, r: usize) -> Result<(&FilePlan, &ReadOp)> {
    let fp = plan.files.get(f).ok_or_else(|| internal("file index"))?;
    let op = fp.reads.get(r).ok_or_else(|| internal("read index"))?;
    Ok((fp, op))
}

fn internal(what: &str) -> Error {
    Error::InvalidArgument(format!("internal error in the I/O engine: {what}"))
}

/// Opens `path` (with O_DIRECT when `direct`), checking it still has the length its
/// header was validated with.
pub(crate) fn open_checked(path: &Path, direct: bool, expected_len: u64) -> Result<OpenFile> {
    let file = open_file(path, direct).map_err(|e| Error::io(path, "open", e))?;
    let meta = file.metadata().map_err(|e| Error::io(path, "stat", e))?;
    if meta.len() != expected_len {
        return Err(Error::changed(
            path,
            format_args!(
                "it was {expected_len} bytes when its header was validated and is now {}",
                meta.len()
            ),
        ));
    }
    Ok(OpenFile {
        file,
        len: meta.len(),
        mtime: meta.modified().ok(),
    })
}

/// Checks that `o` kept its size and mtime during the load.
pub(crate) fn close_checked(path: &Path, o: OpenFile) -> Result<()> {
    let meta = o.file.metadata().map_err(|e| Error::io(path, "stat", e))?;
    if meta.len() != o.len {
        return Err(Error::changed(
            path,
            format_args!(
                "it was {} bytes and became {} during the load",
                o.len,
                meta.len()
            ),
        ));
    }
    if meta.modified().ok() != o.mtime {
        return Err(Error::changed(
            path,
            format_args!("it was modified during the load (mtime {})", meta.mtime()),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {

    /// An engine that never completes a read: `drain` checks that the file descriptor
    /// of every read it was handed is still open (a read submitted on a closed one reads
    /// whatever file or socket another thread has opened under that number since).
    struct FdCheck {
        fds: Vec<std::os::unix::io::RawFd>,
        closed_at_drain: Vec<std::os::unix::io::RawFd>,
    }

    impl super::Engine for FdCheck {
        fn submit(&mut self, req: crate::io::Req) -> std::io::Result<()> {
            self.fds.push(req.fd);
            Ok(())
        }
        fn wait(&mut self, _: &mut Vec<crate::io::Done>) -> std::io::Result<()> {
            Err(std::io::Error::other("this engine completes nothing"))
        }
        fn drain(&mut self) {
            for &fd in &self.fds {
                // SAFETY: F_GETFD only asks whether the number is an open descriptor.
                if unsafe { libc::fcntl(fd, libc::F_GETFD) } == -1 {
                    self.closed_at_drain.push(fd);
                }
            }
        }
    }

    /// Regression: a load that failed (here: its second shard grew after validation)
    /// closed its files before the engine drained the reads queued on them.
    #[test]
    fn a_failed_load_keeps_its_files_open_until_queued_reads_are_drained() {
        use std::io::Write;
        let dir = tempfile::tempdir().unwrap();
        let spec = crate::synth::SynthSpec::for_size(3 << 20);
        let path = crate::synth::write_checkpoint(dir.path(), &spec, 2, 7).unwrap();
        let ckpt = crate::Checkpoint::open(&path).unwrap();
        let second = ckpt.shards[1].path.clone();
        std::fs::OpenOptions::new()
            .append(true)
            .open(second)
            .unwrap()
            .write_all(b"x")
            .unwrap();
        let opts = crate::plan::PlanOptions {
            chunk_size: 64 << 10,
            ..Default::default()
        };
        let plan = crate::plan::plan(&ckpt, &opts).unwrap();
        let paths: Vec<&std::path::Path> = plan.files.iter().map(|f| f.path.as_path()).collect();
        let choice = crate::io::choose(crate::io::IoBackend::Pread, &paths).unwrap();
        let mut sink = crate::sink::host::HostSink::new(&plan, 1, opts.slot_len(), None).unwrap();
        let mut engine = FdCheck {
            fds: Vec::new(),
            closed_at_drain: Vec::new(),
        };
        let r = super::execute(&plan, &choice, &mut engine, &mut sink, 64, None, None);
        assert!(r.is_err());
        assert!(!engine.fds.is_empty());
        assert!(
            engine.closed_at_drain.is_empty(),
            "reads queued on closed descriptors {:?}",
            engine.closed_at_drain
        );
    }
}
