//! The I/O engine: moves planned byte ranges from files into memory handed out by a
//! sink (`Sink`, crate-internal), with a bounded number of reads in flight, whatever
//! the model size.
//!
//! Backends behind one `Engine` interface: io_uring (O_DIRECT or buffered, per
//! file), a pread thread pool (O_DIRECT or buffered, per file; portable, always built)
//! and mmap. `auto` chooses per file and falls back when the kernel refuses io_uring or
//! O_DIRECT.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::os::unix::io::{AsRawFd, RawFd};
use std::path::Path;
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use crate::error::{Error, Result};
use crate::plan::{Plan, ReadOp};

mod mmap;
mod pread;
mod prefault;
#[cfg(target_os = "linux")]
mod uring;

pub(crate) use mmap::MmapEngine;
pub(crate) use pread::PreadEngine;
#[cfg(target_os = "linux")]
pub(crate) use uring::UringEngine;

/// Which I/O path reads the files.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum IoBackend {
    /// Per file: O_DIRECT when the file is not in the page cache and its file system
    /// supports it, buffered otherwise. io_uring when some file is cold (a pread pool
    /// when io_uring is refused); a pread pool, which copies from the page cache on
    /// several threads at once, when every file is cached. Falls back instead of
    /// failing, and records why.
    #[default]
    Auto,
    /// io_uring with O_DIRECT; an error when either is unavailable.
    Direct,
    /// io_uring through the page cache; an error when io_uring is unavailable.
    Buffered,
    /// A pool of threads calling pread (through the page cache).
    Pread,
    /// A pool of threads calling pread on files opened with O_DIRECT; an error when
    /// O_DIRECT is unavailable. Many reads are in the kernel at once, each from its own
    /// thread, which on a multi-queue block device spreads them over the device's
    /// queues (io_uring submits from one thread). Needs no io_uring.
    PreadDirect,
    /// Copy from a memory map of each file. A file truncated by another process while
    /// it is mapped kills the process with SIGBUS: use only on files you control.
    ///
    /// On a CUDA device (feature `cuda`) the map is instead registered with the driver,
    /// read-only, window by window, and copied to the device straight from the page
    /// cache with no CPU copy (the process never reads the map, so no SIGBUS there);
    /// where the device or driver refuses read-only registration it copies through the
    /// pinned slots and the file report says why.
    Mmap,
}

impl IoBackend {
    /// Every backend, in the order `--io` lists them.
    pub const ALL: [IoBackend; 6] = [
        IoBackend::Auto,
        IoBackend::Direct,
        IoBackend::Buffered,
        IoBackend::Pread,
        IoBackend::PreadDirect,
        IoBackend::Mmap,
    ];

    /// The name `--io` and [`FromStr`] take ("auto", "pread-direct", ...).
    pub fn name(self) -> &'static str {
        match self {
            IoBackend::Auto => "auto",
            IoBackend::Direct => "direct",
            IoBackend::Buffered => "buffered",
            IoBackend::Pread => "pread",
            IoBackend::PreadDirect => "pread-direct",
            IoBackend::Mmap => "mmap",
        }
    }
}

impl std::fmt::Display for IoBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for IoBackend {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        IoBackend::ALL
            .into_iter()
            .find(|b| b.name() == s)
            .ok_or_else(|| {
                let names: Vec<&str> = IoBackend::ALL.iter().map(|b| b.name()).collect();
                format!("unknown io backend '{s}' ({})", names.join(", "))
            })
    }
}

/// The engine a load actually used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EngineKind {
    /// io_uring.
    Uring,
    /// pread thread pool.
    Pread,
    /// mmap + copy.
    Mmap,
}

/// How one file is read, decided before the load.
#[derive(Debug, Clone)]
pub struct FileMode {
    /// Opened with O_DIRECT.
    pub direct: bool,
    /// Why this path was chosen (for logs and reports).
    pub reason: String,
}

/// The resolved I/O choice for a load.
#[derive(Debug, Clone)]
pub struct IoChoice {
    /// The engine.
    pub engine: EngineKind,
    /// Why this engine (e.g. why io_uring was not used).
    pub engine_reason: String,
    /// One mode per planned file.
    pub files: Vec<FileMode>,
}

impl IoChoice {
    /// Human-readable name of the path that reads file `i`.
    pub fn path_name(&self, i: usize) -> &'static str {
        let direct = self.files.get(i).is_some_and(|m| m.direct);
        match (self.engine, direct) {
            (EngineKind::Uring, true) => "io_uring+O_DIRECT",
            (EngineKind::Uring, false) => "io_uring buffered",
            (EngineKind::Pread, true) => "pread+O_DIRECT",
            (EngineKind::Pread, false) => "pread buffered",
            (EngineKind::Mmap, _) => "mmap",
        }
    }
}

/// A shared flag that cancels a load from another thread.
#[derive(Debug, Clone, Default)]
pub struct CancelToken {
    flag: Arc<AtomicBool>,
}

impl CancelToken {
    /// A token not yet cancelled.
    pub fn new() -> Self {
        Self::default()
    }
    /// Asks every load holding this token to stop; they return [`Error::Cancelled`].
    pub fn cancel(&self) {
        self.flag.store(true, Ordering::Relaxed);
    }
    /// Whether [`CancelToken::cancel`] was called.
    pub fn is_cancelled(&self) -> bool {
        self.flag.load(Ordering::Relaxed)
    }
}

/// Progress callback: (bytes done, bytes total).
pub type Progress = Arc<dyn Fn(u64, u64) + Send + Sync>;

/// Memory for one read, owned by the sink; it stays valid and untouched by anyone
/// else until the sink gets it back through [`Sink::complete`].
#[derive(Debug, Clone, Copy)]
pub(crate) struct Buf {
    pub ptr: *mut u8,
    pub len: usize,
    /// Index of the buffer registered with io_uring, when it is one.
    pub fixed: Option<u16>,
    /// Memory never written before (a fresh destination rather than a reused slot):
    /// engines that copy may populate its pages in one call before reading into it.
    pub fresh: bool,
}

/// Where read bytes go: the host or a device.
pub(crate) trait Sink {
    /// Memory for read `op` of file `file`; `None` when every staging slot is busy.
    fn buffer(&mut self, file: usize, op: &ReadOp) -> Result<Option<Buf>>;
    /// Read `op` finished: its required bytes are in `buf`.
    fn complete(&mut self, file: usize, op: &ReadOp, buf: Buf) -> Result<()>;
    /// Blocks until a staging slot may be free; called when no read is in flight.
    fn wait_for_slot(&mut self) -> Result<()>;
    /// Buffers the io_uring engine should register as fixed buffers.
    fn fixed_buffers(&self) -> Vec<(*mut u8, usize)> {
        Vec::new()
    }
    /// Where read `op` of file `file` will land when that is fresh memory known in
    /// advance (a final destination, not a staging slot), without claiming anything.
    fn destination(&mut self, _file: usize, _op: &ReadOp) -> Option<(*mut u8, usize)> {
        None
    }
    /// Whether some staging slot is held by a read that has finished but whose bytes
    /// are still being copied, converted or placed (so a `None` from
    /// [`Sink::buffer`] is what follows the reads holding the load back, not the reads
    /// themselves). By default none.
    fn held_after_reads(&self) -> bool {
        false
    }
}

/// One read handed to an engine.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Req {
    pub id: usize,
    pub fd: RawFd,
    pub offset: u64,
    pub ptr: *mut u8,
    pub len: usize,
    pub fixed: Option<u16>,
    /// See [`Buf::fresh`].
    pub fresh: bool,
}

// SAFETY: a Req only carries a pointer to memory the coordinator keeps alive and
// untouched until the request completes; the engines write through it and nothing else.
unsafe impl Send for Req {}

/// Reads at least this long get their fresh destination populated first.
const POPULATE_MIN: usize = 64 << 10;

/// Makes the pages under a fresh destination present and writable in one call
/// (`MADV_POPULATE_WRITE`, Linux 5.14) before a copy into them. Faulting them in one by
/// one inside the copy costs more: measured on the development VM, pread into fresh
/// memory ran 15–25% faster with it (BENCHMARKS.md). The contents are not changed; a
/// kernel without the call, or any error, just leaves the pages to be faulted in.
pub(crate) fn populate(req: &Req) {
    if req.fresh && req.len >= POPULATE_MIN {
        let _ = populate_range(req.ptr as usize, req.len);
    }
}

/// See [`populate`]: `len` bytes at `addr`, which must be memory the caller may write.
/// The kernel's error where it refused: `EINVAL` before Linux 5.14 (the pages are then
/// faulted in as they are first touched), `ENOMEM` when memory ran out.
pub(crate) fn populate_range(addr: usize, len: usize) -> io::Result<()> {
    const MADV_POPULATE_WRITE: libc::c_int = 23;
    let page = 4096usize;
    let start = addr & !(page - 1);
    let end = addr.saturating_add(len);
    // SAFETY: the range covers writable memory of the caller, rounded out to whole
    // pages that hold some of its bytes and so are mapped; populating changes no byte.
    let r = unsafe { libc::madvise(start as *mut libc::c_void, end - start, MADV_POPULATE_WRITE) };
    if r == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// A finished read: bytes read (0 at end of file) or the OS error.
#[derive(Debug)]
pub(crate) struct Done {
    pub id: usize,
    pub res: io::Result<usize>,
}

/// A way of performing reads. Dropping an engine waits for every read it started.
pub(crate) trait Engine {
    /// Starts a read. The memory at `req.ptr` must stay valid until its `Done` is returned.
    fn submit(&mut self, req: Req) -> io::Result<()>;
    /// Blocks until at least one read finishes; appends every finished read to `out`.
    fn wait(&mut self, out: &mut Vec<Done>) -> io::Result<()>;
    /// Waits for every read in flight, discarding results.
    fn drain(&mut self);
    /// The coordinator is about to close `fd` (its reads are all done).
    fn file_closed(&mut self, _fd: RawFd) {}
}

/// Wraps an engine and turns the `nth` completion (1-based) into an EIO error: the
/// fault injection behind [`crate::Loader::fail_nth_read`].
pub(crate) struct FaultEngine {
    pub inner: Box<dyn Engine>,
    pub nth: u64,
    pub seen: u64,
}

impl Engine for FaultEngine {
    fn submit(&mut self, req: Req) -> io::Result<()> {
        self.inner.submit(req)
    }
    fn wait(&mut self, out: &mut Vec<Done>) -> io::Result<()> {
        let start = out.len();
        self.inner.wait(out)?;
        for d in out.iter_mut().skip(start) {
            self.seen += 1;
            if self.seen == self.nth {
                d.res = Err(io::Error::from_raw_os_error(libc::EIO));
            }
        }
        Ok(())
    }
    fn drain(&mut self) {
        self.inner.drain();
    }
    fn file_closed(&mut self, fd: RawFd) {
        self.inner.file_closed(fd);
    }
}

/// Creates the engine of `kind`.
pub(crate) fn new_engine(
    kind: EngineKind,
    depth: usize,
    fixed: &[(*mut u8, usize)],
) -> Result<Box<dyn Engine>> {
    match kind {
        #[cfg(target_os = "linux")]
        EngineKind::Uring => {
            Ok(Box::new(UringEngine::new(depth, fixed).map_err(|e| {
                Error::Unsupported(format!("io_uring is not available: {e}"))
            })?))
        }
        #[cfg(not(target_os = "linux"))]
        EngineKind::Uring => Err(Error::Unsupported("io_uring needs Linux".into())),
        EngineKind::Pread => Ok(Box::new(PreadEngine::new(depth))),
        EngineKind::Mmap => Ok(Box::new(MmapEngine::default())),
    }
}

/// Whether io_uring can be set up here (seccomp, sysctl and old kernels refuse it).
pub fn probe_uring() -> std::result::Result<(), String> {
    #[cfg(target_os = "linux")]
    {
        UringEngine::new(4, &[])
            .map(drop)
            .map_err(|e| e.to_string())
    }
    #[cfg(not(target_os = "linux"))]
    {
        Err("io_uring needs Linux".to_string())
    }
}

/// Fraction of a sample of the file's pages that are in the page cache.
pub fn resident_fraction(path: &Path) -> Result<f64> {
    let file = File::open(path).map_err(|e| Error::io(path, "open", e))?;
    mmap::resident_fraction(&file).map_err(|e| Error::io(path, "mincore", e))
}

/// Opens `path` for reading, with O_DIRECT when `direct`.
pub(crate) fn open_file(path: &Path, direct: bool) -> io::Result<File> {
    let mut o = OpenOptions::new();
    o.read(true);
    #[cfg(target_os = "linux")]
    if direct {
        o.custom_flags(libc::O_DIRECT);
    }
    #[cfg(not(target_os = "linux"))]
    if direct {
        return Err(io::Error::new(
            io::ErrorKind::Unsupported,
            "O_DIRECT needs Linux",
        ));
    }
    o.open(path)
}

/// Decides the engine and the per-file mode for `paths`.
pub fn choose(backend: IoBackend, paths: &[&Path]) -> Result<IoChoice> {
    let (engine, engine_reason) = match backend {
        IoBackend::Direct | IoBackend::Buffered => {
            probe_uring()
                .map_err(|e| Error::Unsupported(format!("io_uring is not available here: {e}")))?;
            (EngineKind::Uring, "requested".to_string())
        }
        IoBackend::Pread | IoBackend::PreadDirect => (EngineKind::Pread, "requested".to_string()),
        IoBackend::Mmap => (EngineKind::Mmap, "requested".to_string()),
        // Decided below, once it is known whether any file is cold.
        IoBackend::Auto => (EngineKind::Uring, String::new()),
    };
    let mut files = Vec::with_capacity(paths.len());
    for p in paths {
        let mode = match backend {
            IoBackend::Direct | IoBackend::PreadDirect => {
                open_file(p, true).map_err(|e| {
                    Error::Unsupported(format!(
                        "{}: O_DIRECT is not supported here: {e}",
                        p.display()
                    ))
                })?;
                FileMode {
                    direct: true,
                    reason: "requested".into(),
                }
            }
            IoBackend::Buffered | IoBackend::Pread | IoBackend::Mmap => FileMode {
                direct: false,
                reason: "requested".into(),
            },
            IoBackend::Auto => auto_mode(p),
        };
        tracing::debug!("{}: direct={} ({})", p.display(), mode.direct, mode.reason);
        files.push(mode);
    }
    if backend != IoBackend::Auto {
        return Ok(IoChoice {
            engine,
            engine_reason,
            files,
        });
    }
    // Files in the page cache are copied, not read from disk: a pool of threads
    // copies in parallel, where buffered io_uring copies on the submitting thread.
    // Cold files go to io_uring (O_DIRECT where it works); pread when it is refused.
    let (engine, engine_reason) = if files.iter().all(|m| !m.direct) {
        (
            EngineKind::Pread,
            "no file needs the disk: parallel buffered copies".to_string(),
        )
    } else {
        match probe_uring() {
            Ok(()) => (EngineKind::Uring, "io_uring available".to_string()),
            Err(e) => {
                tracing::debug!("io_uring refused ({e}); falling back to pread");
                (
                    EngineKind::Pread,
                    format!("io_uring refused ({e}); fell back to pread"),
                )
            }
        }
    };
    tracing::debug!("engine {engine:?}: {engine_reason}");
    Ok(IoChoice {
        engine,
        engine_reason,
        files,
    })
}

fn auto_mode(p: &Path) -> FileMode {
    if let Err(e) = open_file(p, true) {
        return FileMode {
            direct: false,
            reason: format!("O_DIRECT refused ({e})"),
        };
    }
    match resident_fraction(p) {
        Ok(f) if f >= 0.5 => FileMode {
            direct: false,
            reason: format!("{:.0}% of sampled pages cached", f * 100.0),
        },
        Ok(f) => FileMode {
            direct: true,
            reason: format!("{:.0}% of sampled pages cached", f * 100.0),
        },
        Err(e) => FileMode {
            direct: false,
            reason: format!("page-cache residency unknown ({e})"),
        },
    }
}

/// What the engine did.
#[derive(Debug, Clone, Default)]
pub struct IoStats {
    /// Bytes the reads returned.
    pub bytes_read: u64,
    /// Read requests submitted, resubmissions included.
    pub requests: u64,
    /// Short or interrupted reads that were resubmitted.
    pub resubmitted: u64,
    /// Bytes read straight into their final place, with no staging copy (host loads;
    /// the sink counts them).
    pub in_place_bytes: u64,
    /// Time the coordinator waited for reads while it had nothing more to submit:
    /// every read allowed in flight was submitted, or none was left. Long when reading
    /// (the disk, or the copy out of the page cache) is what limits the load.
    pub waiting_for_reads: Duration,
    /// Time the coordinator waited with fewer reads in flight than allowed because the
    /// sink had no free buffer and some staging slot held a finished read whose copy to
    /// the device, conversion or placement had not finished. Long when what follows
    /// the reads is what limits the load. (Slots all held by reads in flight count as
    /// waiting for reads.)
    pub waiting_for_buffers: Duration,
}

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
    let mut stats = IoStats::default();
    // The files stay open until every read queued on them is done: a read queued (but
    // not yet handed to the kernel) when a load fails would otherwise be submitted on a
    // file descriptor number that another thread may have reused meanwhile.
    let mut open: Vec<Option<OpenFile>> = plan.files.iter().map(|_| None).collect();
    let r = run(
        plan,
        choice,
        engine,
        sink,
        depth.max(1),
        cancel,
        progress,
        &mut stats,
        &mut open,
    );
    if r.is_err() {
        engine.drain();
    }
    drop(open);
    r.map(|()| stats)
}

#[allow(clippy::too_many_arguments)]
fn run(
    plan: &Plan,
    choice: &IoChoice,
    engine: &mut dyn Engine,
    sink: &mut dyn Sink,
    depth: usize,
    cancel: Option<&CancelToken>,
    progress: Option<&Progress>,
    stats: &mut IoStats,
    open: &mut [Option<OpenFile>],
) -> Result<()> {
    let jobs: Vec<(usize, usize)> = plan
        .files
        .iter()
        .enumerate()
        .flat_map(|(f, fp)| (0..fp.reads.len()).map(move |r| (f, r)))
        .collect();
    let total = plan.required_bytes();
    let mut remaining: Vec<usize> = plan.files.iter().map(|f| f.reads.len()).collect();
    let mut inflight: HashMap<usize, InFlight> = HashMap::with_capacity(depth);
    let mut done = Vec::with_capacity(depth);
    let mut next = 0usize;
    let mut bytes_done = 0u64;
    // An io_uring read faults in its fresh destination on this thread (O_DIRECT pins it
    // page by page at submission; a buffered read copies into it), and an O_DIRECT read
    // on the pread pool pins its destination in front of the read on that worker. Let
    // another thread populate those destinations ahead of the reads. Buffered pread and
    // mmap copies populate on their own threads as they go.
    let ahead = |f: usize| match choice.engine {
        EngineKind::Uring => true,
        EngineKind::Pread => choice.files.get(f).is_some_and(|m| m.direct),
        EngineKind::Mmap => false,
    };
    let ranges = jobs
        .iter()
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
        .collect();
    let prefaulter = prefault::Prefaulter::start(ranges);
    loop {
        if cancel.is_some_and(CancelToken::is_cancelled) {
            return Err(Error::Cancelled);
        }
        // Whether submitting stopped for want of a buffer that a finished read still
        // holds (not one whose read is in flight: then reading is the limit).
        let mut starved = false;
        while inflight.len() < depth {
            let Some(&(f, r)) = jobs.get(next) else { break };
            let (fp, op) = job(plan, f, r)?;
            let slot = open.get_mut(f).ok_or_else(|| internal("file index"))?;
            if slot.is_none() {
                let direct = choice.files.get(f).is_some_and(|m| m.direct);
                *slot = Some(open_checked(&fp.path, direct, fp.file_len)?);
            }
            let fd = slot.as_ref().map(|o| o.file.as_raw_fd()).unwrap_or(-1);
            let Some(buf) = sink.buffer(f, op)? else {
                starved = sink.held_after_reads();
                break;
            };
            if buf.len < op.len as usize {
                return Err(internal("sink buffer shorter than the read"));
            }
            engine
                .submit(Req {
                    id: next,
                    fd,
                    offset: op.offset,
                    ptr: buf.ptr,
                    len: op.len as usize,
                    fixed: buf.fixed,
                    fresh: buf.fresh,
                })
                .map_err(|e| Error::io(&fp.path, "submit read", e))?;
            stats.requests += 1;
            inflight.insert(
                next,
                InFlight {
                    file: f,
                    read: r,
                    buf,
                    got: 0,
                },
            );
            next += 1;
            if let Some(p) = &prefaulter {
                p.advance(next);
            }
        }
        if inflight.is_empty() {
            if next >= jobs.len() {
                return Ok(());
            }
            let t = Instant::now();
            sink.wait_for_slot()?;
            stats.waiting_for_buffers += t.elapsed();
            continue;
        }
        let t = Instant::now();
        engine
            .wait(&mut done)
            .map_err(|e| Error::io(Path::new("<io engine>"), "wait for reads", e))?;
        if starved {
            stats.waiting_for_buffers += t.elapsed();
        } else {
            stats.waiting_for_reads += t.elapsed();
        }
        for d in done.drain(..) {
            let Some(mut j) = inflight.remove(&d.id) else {
                return Err(internal("completion for an unknown read"));
            };
            let (fp, op) = job(plan, j.file, j.read)?;
            let direct = choice.files.get(j.file).is_some_and(|m| m.direct);
            match d.res {
                Ok(n) => {
                    stats.bytes_read += n as u64;
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
                    if (j.got as u64) < op.required {
                        // Short read: ask for the rest (O_DIRECT needs an aligned restart).
                        stats.resubmitted += 1;
                        if direct {
                            j.got -= j.got % 4096;
                        }
                    } else {
                        sink.complete(j.file, op, j.buf)?;
                        bytes_done += op.required;
                        if let Some(p) = progress {
                            p(bytes_done, total);
                        }
                        read_done(&mut remaining, open, engine, j.file, &fp.path)?;
                        continue;
                    }
                }
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::Interrupted | io::ErrorKind::WouldBlock
                    ) =>
                {
                    stats.resubmitted += 1;
                }
                Err(e) => return Err(Error::io(&fp.path, "read", e)),
            }
            let fd = open
                .get(j.file)
                .and_then(|o| o.as_ref())
                .map(|o| o.file.as_raw_fd())
                .ok_or_else(|| internal("resubmit on a closed file"))?;
            // SAFETY: got < len, so the pointer stays inside the buffer of `len` bytes.
            let ptr = unsafe { j.buf.ptr.add(j.got) };
            engine
                .submit(Req {
                    id: d.id,
                    fd,
                    offset: op.offset + j.got as u64,
                    ptr,
                    len: op.len as usize - j.got,
                    fixed: j.buf.fixed,
                    fresh: false,
                })
                .map_err(|e| Error::io(&fp.path, "submit read", e))?;
            stats.requests += 1;
            inflight.insert(d.id, j);
        }
    }
}

/// Counts one more read of file `f` done (or left to another path); after its last,
/// closes the file, checking that it did not change meanwhile.
fn read_done(
    remaining: &mut [usize],
    open: &mut [Option<OpenFile>],
    engine: &mut dyn Engine,
    f: usize,
    path: &Path,
) -> Result<()> {
    let rem = remaining.get_mut(f).ok_or_else(|| internal("file"))?;
    *rem -= 1;
    if *rem == 0 {
        if let Some(o) = open.get_mut(f).and_then(Option::take) {
            engine.file_closed(o.file.as_raw_fd());
            close_checked(path, o)?;
        }
    }
    Ok(())
}

fn job(plan: &Plan, f: usize, r: usize) -> Result<(&crate::plan::FilePlan, &ReadOp)> {
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

/// Reads `path` once through the page cache (O_DIRECT loads do not fill it) and
/// returns the fraction of sampled pages resident afterwards.
pub fn fill_page_cache(path: &Path) -> Result<f64> {
    use std::io::Read;
    let mut file = File::open(path).map_err(|e| Error::io(path, "open", e))?;
    let mut buf = vec![0u8; 16 << 20];
    loop {
        match file.read(&mut buf) {
            Ok(0) => break,
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(Error::io(path, "read", e)),
        }
    }
    mmap::resident_fraction(&file).map_err(|e| Error::io(path, "mincore", e))
}

/// Drops `path` from the page cache (fdatasync, then POSIX_FADV_DONTNEED) and
/// returns the fraction of sampled pages still resident afterwards.
pub fn drop_page_cache(path: &Path) -> Result<f64> {
    let file = File::open(path).map_err(|e| Error::io(path, "open", e))?;
    file.sync_data()
        .map_err(|e| Error::io(path, "fdatasync", e))?;
    #[cfg(target_os = "linux")]
    {
        // SAFETY: plain syscall on an open fd; no memory is passed.
        let r = unsafe { libc::posix_fadvise(file.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
        if r != 0 {
            return Err(Error::io(
                path,
                "posix_fadvise",
                io::Error::from_raw_os_error(r),
            ));
        }
    }
    mmap::resident_fraction(&file).map_err(|e| Error::io(path, "mincore", e))
}

#[cfg(test)]
mod tests {

    /// An engine that never completes a read: `drain` checks that the file descriptor
    /// of every read it was handed is still open (a read submitted on a closed one reads
    /// whatever file or socket another thread has opened under that number since).
    struct FdCheck {
        fds: Vec<super::RawFd>,
        closed_at_drain: Vec<super::RawFd>,
    }

    impl super::Engine for FdCheck {
        fn submit(&mut self, req: super::Req) -> std::io::Result<()> {
            self.fds.push(req.fd);
            Ok(())
        }
        fn wait(&mut self, _: &mut Vec<super::Done>) -> std::io::Result<()> {
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
        let choice = super::choose(super::IoBackend::Pread, &paths).unwrap();
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
