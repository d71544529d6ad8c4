//! Host memory the loads fill: page-aligned zeroed buffers (`HostBuf`), the anonymous
//! maps behind them (`Region`), and a pool that keeps them for the next load (`HostPool`).

use std::alloc::{self, Layout};
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use crate::error::{Error, Result};

/// Page-aligned, zero-initialised host memory. Large buffers are anonymous maps of
/// their own, returned to the system as soon as they are dropped.
///
/// Transparent huge pages were measured and rejected: on the development VM the first
/// touch of fresh huge pages ran at 0.4–0.5 GB/s against about 1.8 GB/s for 4 KiB pages
/// (see BENCHMARKS.md), and they were fast only when memory had just been freed.
pub struct HostBuf {
    ptr: NonNull<u8>,
    len: usize,
    alloc: Alloc,
}

enum Alloc {
    None,
    Heap(Layout),
    /// A map of its own; goes back to `pool` on drop when there is one.
    Map {
        region: Region,
        pool: Option<HostPool>,
    },
}

/// A private anonymous mapping, unmapped on drop.
#[derive(Debug)]
pub(crate) struct Region {
    base: NonNull<libc::c_void>,
    len: usize,
}

// SAFETY: a Region is the only owner of its mapping.
unsafe impl Send for Region {}

impl Region {
    /// A fresh map of at least `len` bytes (whole pages); an error when memory runs out.
    pub(crate) fn for_len(len: usize) -> Result<Region> {
        let oom = || Error::InvalidArgument(format!("out of host memory allocating {len} bytes"));
        let map_len = len
            .checked_next_multiple_of(HostBuf::ALIGN)
            .ok_or_else(oom)?;
        Region::new(map_len).ok_or_else(oom)
    }

    fn new(len: usize) -> Option<Region> {
        // SAFETY: a fresh private anonymous mapping; no existing memory is touched.
        let base = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if base == libc::MAP_FAILED {
            return None;
        }
        NonNull::new(base).map(|base| Region { base, len })
    }
}

impl Region {
    /// The first byte of the mapping.
    #[cfg(feature = "cuda")]
    pub(crate) fn base(&self) -> *mut u8 {
        self.base.as_ptr().cast()
    }
}

impl Drop for Region {
    fn drop(&mut self) {
        // SAFETY: the whole mapping made in Region::new, unmapped once.
        unsafe {
            libc::munmap(self.base.as_ptr(), self.len);
        }
    }
}

/// Host memory kept between loads, for a process that loads checkpoint after
/// checkpoint (a server switching models, a benchmark loop).
///
/// Freshly allocated memory costs a page fault and a zeroed page for every 4 KiB on
/// its first write, and that, not the copy, is most of the time of a load from the
/// page cache (BENCHMARKS.md). With a pool given to [`crate::Loader::host_pool`], the
/// file buffers (raw and converted) of a dropped [`crate::Model`] are kept here, already backed, and the
/// next load of a file of the same size or a little smaller reads straight into one.
/// The bytes of a reused buffer that no tensor covers are zeroed again, so a buffer
/// never shows what it held before. Idle memory counts in the process's RSS: the
/// pool keeps at most `limit` bytes idle and unmaps the rest; [`HostPool::clear`]
/// gives it all back. Cheap to clone; clones share the memory.
///
/// ```
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// # let dir = tempfile::tempdir()?;
/// # let spec = tensorstream::synth::SynthSpec::for_size(8 << 20);
/// # let path = tensorstream::synth::write_checkpoint(dir.path(), &spec, 1, 7)?;
/// use tensorstream::{HostPool, Loader};
///
/// let pool = HostPool::new(16 << 30); // keep up to 16 GiB idle
/// let loader = Loader::new().host_pool(pool.clone());
/// let first = loader.load(&path)?;
/// let bytes = first.stats().tensor_bytes;
/// drop(first); // its buffer goes back to the pool
/// assert!(pool.idle_bytes() >= bytes);
/// let second = loader.load(&path)?; // reads into that buffer
/// assert_eq!(pool.idle_bytes(), 0);
/// # drop(second);
/// # Ok(())
/// # }
/// ```
#[derive(Clone, Debug)]
pub struct HostPool {
    inner: Arc<Mutex<PoolInner>>,
}

#[derive(Debug)]
struct PoolInner {
    idle: Vec<Region>,
    limit: u64,
}

impl HostPool {
    /// A pool keeping at most `limit` bytes of idle memory.
    pub fn new(limit: u64) -> HostPool {
        HostPool {
            inner: Arc::new(Mutex::new(PoolInner {
                idle: Vec::new(),
                limit,
            })),
        }
    }

    fn lock(&self) -> MutexGuard<'_, PoolInner> {
        // A panic elsewhere while holding the lock leaves a consistent list behind.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Bytes held idle now.
    pub fn idle_bytes(&self) -> u64 {
        self.lock().idle.iter().map(|r| r.len as u64).sum()
    }

    /// Unmaps every idle buffer.
    pub fn clear(&self) {
        let idle = std::mem::take(&mut self.lock().idle);
        drop(idle);
    }

    /// The smallest idle region of at least `len` bytes, if it wastes at most a
    /// quarter of itself.
    fn take(&self, len: usize) -> Option<Region> {
        let mut inner = self.lock();
        let best = inner
            .idle
            .iter()
            .enumerate()
            .filter(|(_, r)| r.len >= len && r.len - len <= r.len / 4)
            .min_by_key(|(_, r)| r.len)
            .map(|(i, _)| i)?;
        Some(inner.idle.swap_remove(best))
    }

    /// Keeps `region` if it fits under the limit (dropping, and so unmapping, it otherwise).
    fn put(&self, region: Region) {
        let mut inner = self.lock();
        let idle: u64 = inner.idle.iter().map(|r| r.len as u64).sum();
        if idle + region.len as u64 <= inner.limit {
            inner.idle.push(region);
        }
    }
}

// SAFETY: HostBuf owns its allocation exclusively, like a Box<[u8]>.
unsafe impl Send for HostBuf {}
// SAFETY: shared access only hands out &[u8]; mutation needs &mut self.
unsafe impl Sync for HostBuf {}

/// Buffers at least this large get an anonymous map of their own.
const MAP_MIN: usize = 2 << 20;

static LIVE: AtomicU64 = AtomicU64::new(0);
static PEAK: AtomicU64 = AtomicU64::new(0);

/// Bytes of host memory held by tensorstream buffers now, and the most held at once
/// since the last [`reset_host_peak`] (destinations and staging, process-wide).
pub fn host_memory() -> (u64, u64) {
    (LIVE.load(Ordering::Relaxed), PEAK.load(Ordering::Relaxed))
}

/// Restarts the peak of [`host_memory`] from the bytes held now.
pub fn reset_host_peak() {
    PEAK.store(LIVE.load(Ordering::Relaxed), Ordering::Relaxed);
}

fn account(len: usize) {
    let now = LIVE.fetch_add(len as u64, Ordering::Relaxed) + len as u64;
    PEAK.fetch_max(now, Ordering::Relaxed);
}

impl HostBuf {
    /// Alignment of every buffer.
    pub const ALIGN: usize = 4096;

    /// Allocates `len` zeroed bytes; an error (not an abort) when memory runs out.
    pub fn zeroed(len: usize) -> Result<HostBuf> {
        if len == 0 {
            return Ok(HostBuf {
                ptr: NonNull::dangling(),
                len: 0,
                alloc: Alloc::None,
            });
        }
        let oom = || Error::InvalidArgument(format!("out of host memory allocating {len} bytes"));
        if len >= MAP_MIN {
            return Ok(HostBuf::from_region(Region::for_len(len)?, len, None));
        }
        let layout = Layout::from_size_align(len, Self::ALIGN).map_err(|_| oom())?;
        // SAFETY: layout has a non-zero size.
        let ptr = unsafe { alloc::alloc_zeroed(layout) };
        let ptr = NonNull::new(ptr).ok_or_else(oom)?;
        account(len);
        Ok(HostBuf {
            ptr,
            len,
            alloc: Alloc::Heap(layout),
        })
    }

    /// `len` bytes for a load: from `pool` when it holds a fitting buffer (whose old
    /// contents are still there: the caller overwrites or zeroes every byte), freshly
    /// mapped and zeroed otherwise. Also says whether the memory is fresh.
    pub(crate) fn for_load(len: usize, pool: Option<&HostPool>) -> Result<(HostBuf, bool)> {
        let Some(pool) = pool.filter(|_| len >= MAP_MIN) else {
            return Ok((HostBuf::zeroed(len)?, true));
        };
        let (region, fresh) = match pool.take(len) {
            Some(region) => (region, false),
            None => (Region::for_len(len)?, true),
        };
        Ok((HostBuf::from_region(region, len, Some(pool.clone())), fresh))
    }

    fn from_region(region: Region, len: usize, pool: Option<HostPool>) -> HostBuf {
        account(len);
        HostBuf {
            ptr: region.base.cast::<u8>(),
            len,
            alloc: Alloc::Map { region, pool },
        }
    }

    /// Length in bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// True when empty.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The bytes.
    pub fn as_slice(&self) -> &[u8] {
        // SAFETY: ptr is valid for len initialised bytes (zeroed at allocation).
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }

    /// The bytes, mutably.
    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        // SAFETY: as above, and &mut self guarantees exclusive access.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.len) }
    }

    /// The first byte, for registering the buffer with io_uring.
    pub(crate) fn base_ptr(&self) -> *mut u8 {
        self.ptr.as_ptr()
    }

    /// Raw pointer for the I/O engine, `off` bytes in, checked to leave room for `len`.
    pub(crate) fn ptr_at(&mut self, off: u64, len: u64) -> Result<*mut u8> {
        let end = off.checked_add(len);
        if end.is_none_or(|e| e > self.len as u64) {
            return Err(Error::InvalidArgument(format!(
                "internal error: range {off}+{len} outside a {}-byte buffer",
                self.len
            )));
        }
        // SAFETY: off + len ≤ self.len, checked just above.
        Ok(unsafe { self.ptr.as_ptr().add(off as usize) })
    }
}

impl Drop for HostBuf {
    fn drop(&mut self) {
        if !matches!(self.alloc, Alloc::None) {
            LIVE.fetch_sub(self.len as u64, Ordering::Relaxed);
        }
        match std::mem::replace(&mut self.alloc, Alloc::None) {
            Alloc::None => {}
            // SAFETY: allocated in `zeroed` with this very layout.
            Alloc::Heap(layout) => unsafe { alloc::dealloc(self.ptr.as_ptr(), layout) },
            Alloc::Map {
                region,
                pool: Some(pool),
            } => pool.put(region),
            Alloc::Map { region, pool: None } => drop(region),
        }
    }
}

impl std::fmt::Debug for HostBuf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "HostBuf({} bytes)", self.len)
    }
}

/// `x` bytes as a length in memory, or an error saying they do not fit.
pub(crate) fn to_usize(x: u64) -> Result<usize> {
    usize::try_from(x)
        .map_err(|_| Error::InvalidArgument(format!("{x} bytes do not fit in memory")))
}
