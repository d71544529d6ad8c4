//! The I/O engine: moves planned byte ranges from files into memory handed out by a
//! sink (`Sink`, crate-internal), with a bounded number of reads in flight, whatever
//! the model size.
//!
//! Backends behind one `Engine` interface: io_uring (O_DIRECT or buffered, per
//! file) and a pread thread pool (O_DIRECT or buffered, per file; portable, always
//! built). `auto` chooses per file and falls back when the kernel refuses io_uring or
//! O_DIRECT.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::io::RawFd;
use std::path::Path;
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::error::{Error, Result};
use crate::plan::ReadOp;

mod auto;
mod execute;
mod pread;
mod prefault;
#[cfg(target_os = "linux")]
mod uring;

pub use auto::{choose, drop_page_cache, fill_page_cache, probe_uring, resident_fraction};
pub(crate) use execute::execute;
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
}

impl IoBackend {
    /// Every backend, in the order `--io` lists them.
    pub const ALL: [IoBackend; 5] = [
        IoBackend::Auto,
        IoBackend::Direct,
        IoBackend::Buffered,
        IoBackend::Pread,
        IoBackend::PreadDirect,
    ];

    /// The name `--io` and [`FromStr`] take ("auto", "pread-direct", ...).
    pub fn name(self) -> &'static str {
        match self {
            IoBackend::Auto => "auto",
            IoBackend::Direct => "direct",
            IoBackend::Buffered => "buffered",
            IoBackend::Pread => "pread",
            IoBackend::PreadDirect => "pread-direct",
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
                let names = names.join(", ");
                if s == "mmap" {
                    // Measured slower than `auto` on the host and to a GPU (BENCHMARKS.md).
                    format!("the mmap backend was removed: it was slower than auto ({names})")
                } else {
                    format!("unknown io backend '{s}' ({names})")
                }
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
    /// Memory that may never have been written (a fresh destination or the caller's
    /// memory, rather than a reused slot): engines that copy may populate its pages in
    /// one call before reading into it.
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
///
/// A range whose first and last pages are already present is left alone: memory the
/// caller has written before (a model's parameters, a reused buffer) gains nothing,
/// and populating it again walks every page. Measured on the development VM, a
/// `MADV_POPULATE_WRITE` before each 1 MiB pread into 0.98 GB of such memory made
/// the copy 20–30 ms (25–35%) slower (BENCHMARKS.md).
pub(crate) fn populate_range(addr: usize, len: usize) -> io::Result<()> {
    const MADV_POPULATE_WRITE: libc::c_int = 23;
    let page = 4096usize;
    let start = addr & !(page - 1);
    let end = addr.saturating_add(len);
    if len == 0 || (present(start) && present((end - 1) & !(page - 1))) {
        return Ok(());
    }
    // SAFETY: the range covers writable memory of the caller, rounded out to whole
    // pages that hold some of its bytes and so are mapped; populating changes no byte.
    let r = unsafe { libc::madvise(start as *mut libc::c_void, end - start, MADV_POPULATE_WRITE) };
    if r == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Whether the page at `page_addr` (page-aligned, inside memory of the caller) is
/// present; false when the kernel cannot say.
fn present(page_addr: usize) -> bool {
    let mut v = 0u8;
    // SAFETY: mincore only reads the page tables for one page of a mapping the caller
    // holds and writes one byte into `v`; no memory of the range is touched.
    let r = unsafe { libc::mincore(page_addr as *mut libc::c_void, 1, &mut v) };
    r == 0 && v & 1 == 1
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
    }
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

#[cfg(test)]
mod tests {
    use super::{populate_range, present};

    #[test]
    fn populating_makes_fresh_pages_present_and_leaves_written_ones_as_they_are() {
        let page = 4096usize;
        let len = 64 * page;
        let mut map = memmap2::MmapMut::map_anon(len).unwrap();
        let addr = map.as_ptr() as usize;
        assert!(!present(addr) && !present(addr + 30 * page));
        // The first and last pages written (with random bytes), the middle not: the
        // range counts as written before and is left as it is.
        let (a, b) = (rand::random::<u8>() | 1, rand::random::<u8>() | 1);
        map[0] = a;
        map[len - 1] = b;
        populate_range(addr, len).unwrap();
        assert!(present(addr) && present(addr + len - page));
        assert!(
            !present(addr + 30 * page),
            "a written range was populated again"
        );
        // A fresh range is populated, and no byte changes.
        populate_range(addr + page, 40 * page).unwrap();
        assert!((1..41).all(|i| present(addr + i * page)));
        assert_eq!((map[0], map[len - 1], map[20 * page]), (a, b, 0));
    }
}
