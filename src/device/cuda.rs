//! CUDA sink: a ring of pinned host staging slots that the I/O engine fills; each
//! filled slot is copied to the device with `cuMemcpyHtoDAsync` on one stream (and,
//! for tensors that change dtype, converted there by a kernel from `kernels/`); an
//! event recorded after the slot's last use tells when the slot may be refilled.
//! Reading the next slots overlaps the copies of the previous ones. The selected
//! columns of rows read several at a time go by `cuMemcpy2DAsync`, which takes each
//! row's selected bytes.
//!
//! Only the NVIDIA driver is needed at run time: the driver library is loaded
//! dynamically (probed first, so a machine without it gets an error, not a panic) and
//! the kernels ship as PTX generated for the oldest supported driver.

use std::collections::BTreeMap;
use std::ffi::{c_void, CString};
use std::sync::Arc;
use std::time::Instant;

use cudarc::driver::{result, sys};

use crate::checkpoint::Checkpoint;
use crate::convert;
use crate::device::regplan;
use crate::device::Device;
use crate::dtype::Dtype;
use crate::error::{Error, Result};
use crate::io::{self, Buf, CancelToken, IoChoice, IoStats, Progress, Sink};
use crate::loader::{Model, Split, Tensor, TensorSpec};
use crate::plan::{self, Place, Plan, ReadOp, Target};

/// Selected columns narrower than this (bytes per row) are gathered by the CPU in the
/// pinned slot rather than by a 2-D copy. A guess, to be settled on a GPU: the copy
/// engine moves each row of a 2-D copy as a transfer of its own, and rows of a
/// tensor-parallel shard (a kilobyte and more) are well above it.
const CPU_GATHER_BELOW: u64 = 512;

/// The conversion kernels, as PTX for the oldest supported driver.
const PTX: &str = include_str!("../../kernels/convert.ptx");

/// Extra scratch bytes, so staged bytes can be shifted to put the first converted
/// element on a 16-byte boundary (the kernels' vector path).
const SCRATCH_PAD: usize = 256;

/// An inconsistency between the plan and the sink: a bug, reported rather than a panic.
fn internal(what: &str) -> Error {
    Error::Cuda(format!("internal: {what}"))
}

/// Driver error `e` (not an internal one) with `place` (a file, and where in it)
/// in front; any other error as it is.
fn located(e: Error, place: impl std::fmt::Display) -> Error {
    match e {
        Error::Cuda(msg) if !msg.starts_with("internal:") => Error::Cuda(format!("{place}: {msg}")),
        e => e,
    }
}

/// `what` failed with driver error `e`.
fn cuda_err(what: impl std::fmt::Display, e: result::DriverError) -> Error {
    Error::Cuda(format!("{what}: {}", words(e)))
}

/// Driver error `e` in words: its name and the driver's description of it, and for
/// a device fault, what that means.
fn words(e: result::DriverError) -> String {
    use sys::CUresult as R;
    let name = e.error_name().map(|n| n.to_string_lossy().into_owned());
    let text = e.error_string().map(|n| n.to_string_lossy().into_owned());
    let msg = match (name, text) {
        (Ok(name), Ok(text)) if text != name => format!("{name} ({text})"),
        (Ok(name), _) => name,
        _ => format!("CUDA error {}", e.0 as i32),
    };
    // Faults in queued work surface at whichever call comes next, and leave the
    // context unusable.
    let sticky = matches!(
        e.0,
        R::CUDA_ERROR_ILLEGAL_ADDRESS
            | R::CUDA_ERROR_LAUNCH_FAILED
            | R::CUDA_ERROR_ECC_UNCORRECTABLE
            | R::CUDA_ERROR_HARDWARE_STACK_ERROR
            | R::CUDA_ERROR_ILLEGAL_INSTRUCTION
            | R::CUDA_ERROR_MISALIGNED_ADDRESS
            | R::CUDA_ERROR_INVALID_ADDRESS_SPACE
            | R::CUDA_ERROR_INVALID_PC
    );
    if sticky {
        format!(
            "{msg}; a device fault, possibly in a copy or kernel queued earlier: this \
             process cannot use the device again"
        )
    } else {
        msg
    }
}

/// Whether the NVIDIA driver library can be loaded (or is loaded already): probed
/// before the first driver call, so that a machine without it gets an error, not
/// cudarc's panic. cudarc's own probe exists only with its dynamic loading; a
/// program that also links candle's CUDA backend turns on cudarc's dynamic linking
/// instead, where the library is already in the process. Both names are among those
/// cudarc's loader tries.
fn driver_library_present() -> bool {
    ["libcuda.so.1", "libcuda.so"].iter().any(|name| {
        let Ok(name) = CString::new(*name) else {
            return false;
        };
        // SAFETY: a NUL-terminated name; loading the driver library runs only its
        // initialisers, and the handle is closed right away (the library stays
        // loaded while cudarc or the program holds it).
        unsafe {
            let handle = libc::dlopen(name.as_ptr(), libc::RTLD_LAZY | libc::RTLD_LOCAL);
            if handle.is_null() {
                return false;
            }
            libc::dlclose(handle);
        }
        true
    })
}

/// The context current on the calling thread when made, made current again when
/// dropped. tensorstream binds its contexts to the caller's thread for the driver calls
/// it makes there (loads, copies back, frees); a caller with a context of its own
/// current (a framework's, the CUDA runtime's, another device's) finds it current
/// again afterwards, and a thread that had none is left with none.
struct Restore(Option<sys::CUcontext>);

impl Restore {
    fn new() -> Restore {
        if !driver_library_present() {
            return Restore(None);
        }
        match result::ctx::get_current() {
            Ok(c) => Restore(Some(c.unwrap_or(std::ptr::null_mut()))),
            // Before cuInit no context can be current: the thread had none.
            Err(e) if e.0 == sys::CUresult::CUDA_ERROR_NOT_INITIALIZED => {
                Restore(Some(std::ptr::null_mut()))
            }
            Err(_) => Restore(None),
        }
    }
}

impl Drop for Restore {
    fn drop(&mut self) {
        if let Some(prev) = self.0 {
            // SAFETY: `prev` was current on this thread when the guard was made (null
            // unbinds); making it current again touches none of its memory.
            let _ = unsafe { result::ctx::set_current(prev) };
        }
    }
}

/// A retained primary context of one device. Released when the last user drops it.
#[derive(Debug)]
pub struct Context {
    ctx: sys::CUcontext,
    dev: sys::CUdevice,
    ordinal: usize,
}

// SAFETY: a CUDA context handle may be used from any thread once made current there;
// every use below calls `bind` first.
unsafe impl Send for Context {}
// SAFETY: as above; the driver synchronises access to a context internally.
unsafe impl Sync for Context {}

impl Context {
    /// Retains the primary context of device `ordinal`, with clear errors when there
    /// is no driver, no device or no such device.
    pub fn new(ordinal: usize) -> Result<Arc<Context>> {
        if !driver_library_present() {
            return Err(Error::Cuda(
                "the NVIDIA driver library (libcuda.so) was not found; is a GPU driver installed?"
                    .into(),
            ));
        }
        let _restore = Restore::new();
        result::init().map_err(|e| cuda_err("cuInit failed (no usable GPU or driver?)", e))?;
        let count = result::device::get_count().map_err(|e| cuda_err("cuDeviceGetCount", e))?;
        if ordinal >= count.max(0) as usize {
            return Err(Error::Cuda(format!(
                "device cuda:{ordinal} does not exist; this machine has {count} CUDA device(s)"
            )));
        }
        let dev = result::device::get(ordinal as i32)
            .map_err(|e| cuda_err(format_args!("cuDeviceGet({ordinal})"), e))?;
        // SAFETY: dev is a valid device handle from cuDeviceGet.
        let ctx = unsafe { result::primary_ctx::retain(dev) }
            .map_err(|e| cuda_err("cuDevicePrimaryCtxRetain", e))?;
        let c = Arc::new(Context { ctx, dev, ordinal });
        // Usable: it can be made current (the caller's current context comes back).
        c.bind()?;
        Ok(c)
    }

    /// Makes this context current on the calling thread (and leaves it so).
    pub fn bind(&self) -> Result<()> {
        // SAFETY: ctx is a retained, not yet released primary context.
        unsafe { result::ctx::set_current(self.ctx) }.map_err(|e| cuda_err("cuCtxSetCurrent", e))
    }

    /// The device ordinal.
    pub fn ordinal(&self) -> usize {
        self.ordinal
    }
}

impl Drop for Context {
    fn drop(&mut self) {
        // SAFETY: retained once in `new`, released once here.
        if let Err(e) = unsafe { result::primary_ctx::release(self.dev) } {
            tracing::warn!("cuDevicePrimaryCtxRelease: {}", words(e));
        }
    }
}

/// Device memory holding one or more loaded tensors. Keeps its context alive; freed
/// when the last tensor viewing it is dropped, unless it is the caller's own memory
/// ([`DeviceBuf::is_borrowed`]).
#[derive(Debug)]
pub struct DeviceBuf {
    ptr: sys::CUdeviceptr,
    len: usize,
    ctx: Arc<Context>,
    /// False for memory the caller allocated ([`crate::Loader::load_into_device`]):
    /// never freed here.
    owned: bool,
}

// SAFETY: a device pointer is plain data; every operation binds the context first.
unsafe impl Send for DeviceBuf {}
// SAFETY: shared access only reads (copies to the host) through the driver.
unsafe impl Sync for DeviceBuf {}

impl DeviceBuf {
    fn alloc(ctx: &Arc<Context>, len: usize) -> Result<DeviceBuf> {
        ctx.bind()?;
        let ptr = if len == 0 {
            0
        } else {
            // SAFETY: the context is current; len > 0.
            unsafe { result::malloc_sync(len) }.map_err(|e| {
                let room = match (e.0, result::mem_get_info()) {
                    (sys::CUresult::CUDA_ERROR_OUT_OF_MEMORY, Ok((free, total))) => {
                        format!(" ({free} of {total} bytes free)")
                    }
                    _ => String::new(),
                };
                cuda_err(
                    format_args!("allocating {len} bytes on cuda:{}{room}", ctx.ordinal),
                    e,
                )
            })?
        };
        Ok(DeviceBuf {
            ptr,
            len,
            ctx: Arc::clone(ctx),
            owned: true,
        })
    }

    /// A view of the caller's device memory `region` (checked by
    /// [`check_destinations`]), never freed here.
    fn borrowed(ctx: &Arc<Context>, region: DeviceRegion) -> DeviceBuf {
        DeviceBuf {
            ptr: region.ptr,
            len: region.len,
            ctx: Arc::clone(ctx),
            owned: false,
        }
    }

    /// The device address of the first byte.
    pub fn device_ptr(&self) -> u64 {
        self.ptr
    }

    /// Length in bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// True when empty.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// True for memory the caller allocated and gave to
    /// [`Loader::load_into_device`](crate::Loader::load_into_device): never freed here,
    /// and valid only while the caller keeps it.
    pub fn is_borrowed(&self) -> bool {
        !self.owned
    }

    /// The device ordinal.
    pub fn ordinal(&self) -> usize {
        self.ctx.ordinal
    }

    /// Copies `len` bytes at `offset` back to the host.
    pub fn copy_to_host(&self, offset: usize, len: usize) -> Result<Vec<u8>> {
        if offset.checked_add(len).is_none_or(|e| e > self.len) {
            return Err(Error::InvalidArgument(format!(
                "range {offset}+{len} outside a {}-byte device buffer",
                self.len
            )));
        }
        let mut out = vec![0u8; len];
        if len == 0 {
            return Ok(out);
        }
        let _restore = Restore::new();
        self.ctx.bind()?;
        // SAFETY: [ptr+offset, +len) lies inside this live allocation (checked above);
        // out has len bytes; the copy is synchronous.
        unsafe { result::memcpy_dtoh_sync(&mut out, self.ptr + offset as u64) }
            .map_err(|e| cuda_err("copying a tensor back to the host", e))?;
        Ok(out)
    }
}

impl Drop for DeviceBuf {
    fn drop(&mut self) {
        if self.ptr == 0 || !self.owned {
            return;
        }
        // Dropped before `ctx` (a field): the caller's context comes back while this
        // one is still retained.
        let _restore = Restore::new();
        if self.ctx.bind().is_ok() {
            // SAFETY: allocated in `alloc`, freed once; no copy into it is pending
            // (loads synchronise their stream before handing buffers out or failing).
            if let Err(e) = unsafe { result::free_sync(self.ptr) } {
                tracing::warn!("cuMemFree: {}", words(e));
            }
        }
    }
}

/// How the staging slots' host memory is allocated and pinned.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) enum StagingKind {
    /// The default: [`StagingKind::HugePages`] where the kernel has transparent huge
    /// pages on and the driver pins such memory, else [`StagingKind::HostAlloc`].
    #[default]
    Default,
    /// `cuMemHostAlloc`.
    HostAlloc,
    /// `cuMemHostAlloc`, write-combined.
    WriteCombined,
    /// Anonymous memory on transparent huge pages where the kernel allows them,
    /// populated, then pinned with `cuMemHostRegister`.
    HugePages,
}

/// Alignment (and so page size) of huge-page staging.
const HUGE_PAGE: usize = 2 << 20;

/// Whether the kernel gives transparent huge pages to memory advised to have them
/// (`always` or `madvise`); false where it says `never` or cannot tell.
fn transparent_huge_pages() -> bool {
    std::fs::read_to_string("/sys/kernel/mm/transparent_hugepage/enabled")
        .is_ok_and(|s| s.contains("[always]") || s.contains("[madvise]"))
}

/// Pinned host memory of one slot.
struct HostMem {
    host: *mut u8,
    /// For huge-page staging: the mapping `host` lies in (aligned to a huge page).
    map: Option<crate::device::host::Region>,
}

impl HostMem {
    /// `len` bytes of pinned host memory of `kind`. The context must be current.
    fn alloc(len: usize, kind: StagingKind) -> Result<HostMem> {
        let failed = |e| {
            cuda_err(
                format_args!("allocating {len} bytes of pinned host memory ({kind:?})"),
                e,
            )
        };
        let flags = match kind {
            StagingKind::HostAlloc => 0,
            StagingKind::WriteCombined => sys::CU_MEMHOSTALLOC_WRITECOMBINED,
            StagingKind::HugePages => return HostMem::huge(len),
            StagingKind::Default => return Err(internal("staging kind left undecided")),
        };
        // SAFETY: a context is current (the caller's contract); the pointer is freed
        // by `free`.
        let host = unsafe { result::malloc_host(len, flags) }.map_err(failed)?;
        Ok(HostMem {
            host: host.cast(),
            map: None,
        })
    }

    fn huge(len: usize) -> Result<HostMem> {
        let map_len = len
            .checked_add(HUGE_PAGE)
            .ok_or_else(|| internal("staging size"))?;
        let region = crate::device::host::Region::for_len(map_len)?;
        let skip = (region.base() as usize).next_multiple_of(HUGE_PAGE) - region.base() as usize;
        // SAFETY: skip < HUGE_PAGE, so [host, host + len) lies inside the mapping of
        // len + HUGE_PAGE bytes; it is writable and nothing else uses it yet. The
        // advice asks for huge pages (refused where the kernel has them off: the
        // memory is then in 4 KiB pages, which still works) and keeps a forked child
        // from sharing the pages the device copies from.
        let host = unsafe {
            let host = region.base().add(skip);
            libc::madvise(host.cast(), len, libc::MADV_HUGEPAGE);
            libc::madvise(host.cast(), len, libc::MADV_DONTFORK);
            host
        };
        // The pages are populated by the kernel (MADV_POPULATE_WRITE, Linux 5.14:
        // 128 MiB in 10.6 ms against 14.3 ms for writing zeros on the 2-core VM,
        // bench/cpu/staging_populate.py), or by writing zeros where the kernel does not
        // know the advice; any other refusal (out of memory) is an error, not a fault
        // in the middle of a write.
        match crate::io::populate_range(host as usize, len) {
            Ok(()) => {}
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
                // SAFETY: [host, host + len) lies in the writable mapping (above), which
                // nothing else uses yet.
                unsafe { std::ptr::write_bytes(host, 0, len) };
            }
            Err(e) => {
                return Err(Error::InvalidArgument(format!(
                    "out of host memory populating {len} bytes of huge-page staging: {e}"
                )))
            }
        }
        // SAFETY: [host, host + len) is mapped, writable and populated; it stays
        // mapped until `free`, which gives the registration back first (and a failed
        // registration leaves nothing to give back).
        unsafe { sys::cuMemHostRegister_v2(host.cast(), len, 0) }
            .result()
            .map_err(|e| {
                cuda_err(
                    format_args!("pinning {len} bytes of huge-page staging (cuMemHostRegister)"),
                    e,
                )
            })?;
        Ok(HostMem {
            host,
            map: Some(region),
        })
    }

    /// Leaves the memory to the process, when the driver cannot take it back: a
    /// registered mapping is never unmapped under its registration.
    fn leak(self) {
        if let Some(region) = self.map {
            std::mem::forget(region);
        }
    }

    /// Frees the memory. The context must be current and no copy may still read it.
    fn free(self) {
        match self.map {
            // SAFETY: allocated by `alloc`, freed once here (consumed), after the last
            // copy out of it completed (the caller's contract).
            None => {
                let _ = unsafe { result::free_host(self.host.cast()) };
            }
            Some(region) => {
                // SAFETY: registered by `huge`, given back once here, after the last
                // copy out of it; the mapping goes only after (when `region` drops).
                let _ = unsafe { sys::cuMemHostUnregister(self.host.cast()) };
                drop(region);
            }
        }
    }
}

struct Slot {
    mem: HostMem,
    len: usize,
    event: sys::CUevent,
    /// Device scratch for conversions (allocated only when some tensor converts).
    scratch: Option<DeviceBuf>,
}

impl Slot {
    /// `len` bytes of pinned host memory of `kind` and the event that tells when a
    /// copy out of them has finished. The context must be current on the calling
    /// thread.
    fn alloc(len: usize, kind: StagingKind) -> Result<Slot> {
        Slot::with_mem(HostMem::alloc(len, kind)?, len)
    }

    /// A slot of `len` bytes of pinned `mem` (freed on failure) and its event.
    fn with_mem(mem: HostMem, len: usize) -> Result<Slot> {
        let event = match result::event::create(sys::CUevent_flags::CU_EVENT_DISABLE_TIMING) {
            Ok(ev) => ev,
            Err(e) => {
                mem.free();
                return Err(cuda_err("cuEventCreate", e));
            }
        };
        Ok(Slot {
            mem,
            len,
            event,
            scratch: None,
        })
    }

    /// Frees the memory and the event. The context must be current and no copy may
    /// still read the slot (its stream has drained).
    fn free(self) {
        // SAFETY: created in `with_mem`, destroyed once here (the slot is consumed).
        let _ = unsafe { result::event::destroy(self.event) };
        self.mem.free();
    }
}

/// Pinned staging slots and the stream that copies out of them, as a [`Loader`] keeps
/// them between loads: a server pins its staging (and holds the device's context)
/// once, not per load. Freed when dropped.
///
/// [`Loader`]: crate::Loader
pub(crate) struct Staging {
    ctx: Arc<Context>,
    stream: sys::CUstream,
    slots: Vec<Slot>,
    slot_len: usize,
    /// How the slots are allocated.
    kind: StagingKind,
    /// For [`StagingKind::Default`]: pinning huge-page memory was refused (or the
    /// kernel has no transparent huge pages), so slots are allocated with
    /// `cuMemHostAlloc`.
    huge_refused: bool,
}

// SAFETY: the slots' pinned memory and events, and the stream, are driver objects that
// any thread may use once the context is current there; every use binds it first, and
// a `Staging` is used by one load at a time (it is moved into that load).
unsafe impl Send for Staging {}

impl std::fmt::Debug for Staging {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Staging")
            .field("device", &self.ctx.ordinal)
            .field("slots", &self.slots.len())
            .field("slot_len", &self.slot_len)
            .field("kind", &self.kind)
            .finish()
    }
}

impl Staging {
    /// A stream on `ctx` and no slots yet.
    fn new(ctx: Arc<Context>, slot_len: usize, kind: StagingKind) -> Result<Staging> {
        let huge_refused = kind == StagingKind::Default && !transparent_huge_pages();
        if huge_refused {
            tracing::debug!("no transparent huge pages here: pinning staging with cuMemHostAlloc");
        }
        ctx.bind()?;
        let stream = result::stream::create(result::stream::StreamKind::NonBlocking)
            .map_err(|e| cuda_err("cuStreamCreate", e))?;
        Ok(Staging {
            ctx,
            stream,
            slots: Vec::new(),
            slot_len,
            kind,
            huge_refused,
        })
    }

    /// Adds slots until there are `count`.
    fn fill(&mut self, count: usize) -> Result<()> {
        self.ctx.bind()?;
        while self.slots.len() < count {
            let slot = match self.kind {
                StagingKind::Default if !self.huge_refused => match HostMem::huge(self.slot_len) {
                    Ok(mem) => Slot::with_mem(mem, self.slot_len)?,
                    Err(e) => {
                        tracing::debug!(
                            "huge-page staging refused ({e}); pinning staging with cuMemHostAlloc"
                        );
                        self.huge_refused = true;
                        Slot::alloc(self.slot_len, StagingKind::HostAlloc).map_err(
                            |e2| match e2 {
                                Error::Cuda(m) => Error::Cuda(format!(
                                    "{m} (after huge-page staging was refused: {e})"
                                )),
                                other => other,
                            },
                        )?
                    }
                },
                StagingKind::Default => Slot::alloc(self.slot_len, StagingKind::HostAlloc)?,
                kind => Slot::alloc(self.slot_len, kind)?,
            };
            self.slots.push(slot);
        }
        Ok(())
    }

    /// Staging for up to `count` slots of `slot_len` bytes on device `ordinal`: the
    /// loader's kept staging when it has that device, slot size and kind and at most
    /// `count` slots (the load pins any more it needs; any other kept staging is
    /// freed), else a new one (without slots yet). True when kept.
    fn reuse_or_new(
        cache: Option<&StagingCache>,
        ordinal: usize,
        count: usize,
        slot_len: u64,
        kind: StagingKind,
    ) -> Result<(Staging, bool)> {
        let slot_len = crate::device::host::to_usize(slot_len)?;
        let kept = cache.and_then(|c| c.lock().unwrap_or_else(|e| e.into_inner()).take());
        match kept {
            Some(s)
                if s.ctx.ordinal == ordinal
                    && s.slot_len == slot_len
                    && s.kind == kind
                    && s.slots.len() <= count =>
            {
                s.ctx.bind()?;
                Ok((s, true))
            }
            other => {
                drop(other);
                Ok((Staging::new(Context::new(ordinal)?, slot_len, kind)?, false))
            }
        }
    }
}

impl Drop for Staging {
    /// Waits for the stream, then frees the slots and destroys the stream. A staging
    /// whose stream is null (a load's, once handed back to the loader) holds nothing.
    fn drop(&mut self) {
        let _restore = Restore::new();
        if self.ctx.bind().is_err() {
            // Nothing can be given back to the driver. Huge-page slots stay mapped: their
            // registrations still name those pages, and a new mapping at the same
            // addresses must not inherit them.
            for s in self.slots.drain(..) {
                s.mem.leak();
            }
            return;
        }
        if !self.stream.is_null() {
            // SAFETY: the stream is live (created by `Staging::new`, destroyed only below).
            let _ = unsafe { result::stream::synchronize(self.stream) };
        }
        for s in self.slots.drain(..) {
            s.free();
        }
        if !self.stream.is_null() {
            // SAFETY: created by `Staging::new`, destroyed once here, after draining.
            let _ = unsafe { result::stream::destroy(self.stream) };
        }
    }
}

/// Where a [`Loader`] keeps its staging between loads (at most one; a load running
/// while another holds it allocates its own, and the last one handed back is kept).
///
/// [`Loader`]: crate::Loader
pub(crate) type StagingCache = Arc<std::sync::Mutex<Option<Staging>>>;

/// Allocates, before a load starts, the staging a load on device `ordinal` with this
/// slot geometry would use, and keeps it in `cache` (see [`crate::Loader::prepare`]).
pub(crate) fn prepare(
    cache: &StagingCache,
    ordinal: usize,
    slots: usize,
    slot_len: u64,
    kind: StagingKind,
) -> Result<()> {
    let _restore = Restore::new();
    let count = slots.max(2);
    let (mut staging, _) = Staging::reuse_or_new(Some(cache), ordinal, count, slot_len, kind)?;
    staging.fill(count)?;
    *cache.lock().unwrap_or_else(|e| e.into_inner()) = Some(staging);
    Ok(())
}

/// How a load gets its pinned staging.
pub(crate) struct StagingOptions<'a> {
    /// The loader's kept staging: reused when it has the load's shape, and the load's
    /// staging kept there afterwards. None: allocated for this load only.
    pub cache: Option<&'a StagingCache>,
    /// How to allocate it (see [`crate::Loader::write_combined_staging`] and
    /// [`crate::Loader::huge_page_staging`]).
    pub kind: StagingKind,
    /// The caller's device memory for each tensor, instead of allocations of the load's.
    pub dests: Option<&'a Destinations>,
}

/// Pinned staging, a stream, and the destinations of one load.
struct CudaSink<'p> {
    plan: &'p Plan,
    /// Its slots, stream and context (the stream null once handed back to the loader).
    staging: Staging,
    /// Per file: the raw buffer (or none when per-tensor), the converted area.
    raw: Vec<Option<Arc<DeviceBuf>>>,
    converted: Vec<Option<Arc<DeviceBuf>>>,
    /// Per file, per tensor: own allocation when per-tensor allocations are on.
    own: Vec<Vec<Option<Arc<DeviceBuf>>>>,
    module: Option<sys::CUmodule>,
    kernels: BTreeMap<(Dtype, Dtype), sys::CUfunction>,
    /// The slots' selected columns are gathered by the CPU before their copies
    /// ([`crate::Loader::gather_columns_on_host`]), not by 2-D copies.
    host_gather: bool,
}

// SAFETY: shared use of a sink only reads its fields and calls the driver (which is
// thread-safe) with handles that stay valid for the whole load: the registered share
// of a split load copies on its own stream from one thread while the slots' side
// (whose mutable state is in `SlotSink`) copies on the staging's stream from another.
unsafe impl Sync for CudaSink<'_> {}

/// Device memory the caller allocated, for one tensor of
/// [`Loader::load_into_device`](crate::Loader::load_into_device).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeviceRegion {
    /// Device address of the first byte.
    pub ptr: u64,
    /// Length in bytes: the tensor's length in `dtype` ([`TensorSpec::len_as`]).
    pub len: usize,
    /// The dtype the tensor lands in: its dtype in the file, or, for a floating tensor
    /// (F32, F16, BF16, the F8 types), F32, F16 or BF16 to convert it to. The loader's
    /// own choice is [`TensorSpec::dtype`].
    pub dtype: Dtype,
}

/// The caller's device memory of a load, by tensor name. Made only by
/// [`Loader::load_into_device`](crate::Loader::load_into_device), whose caller
/// vouches for it.
pub(crate) struct Destinations(BTreeMap<String, DeviceRegion>);

impl crate::Loader {
    /// Loads the tensors of `ckpt` into device memory the caller allocated, as a
    /// framework that has allocated its parameters wants: `dest` is called once for
    /// each tensor the load selects (see [`Loader::only`](crate::Loader::only)), file
    /// by file in offset order, with what will land there (name, dtype in the file and
    /// as the loader would load it, shape, bytes), and returns the memory for it and
    /// the dtype to land in (each tensor its own: a framework's parameter dtype, F8
    /// weights kept as they are beside their F32 scales), or `None` to leave the
    /// tensor out.
    ///
    /// Before any byte is read, every region is checked (`cuPointerGetAttribute`): its
    /// dtype must be one the tensor can be loaded as, its length the tensor's in that
    /// dtype; it must lie in one allocation (or reserved address range) of device
    /// memory of the loader's device, made in the device's primary context or in none
    /// (memory pools, `cuMemMap`), not managed memory; a converted tensor's region
    /// must be aligned to its elements; no two regions may overlap. A region that fails is an error naming the file, the
    /// tensor and the problem, and nothing is written. Then the load waits for the
    /// work already queued in the device's primary context (`cuCtxSynchronize`), so a
    /// memset or stream-ordered allocation of the regions on any stream is complete
    /// before the first copy.
    ///
    /// Everything else is as [`Loader::load_checkpoint`](crate::Loader::load_checkpoint)
    /// with [`Loader::per_tensor_allocations`](crate::Loader::per_tensor_allocations):
    /// I/O path, conversion, staging, progress and cancellation. The copies and kernels
    /// run on the loader's own stream, and the call returns once they are complete.
    /// The returned model's tensors are views of the regions
    /// ([`Tensor::device_ptr`](crate::Tensor::device_ptr) is the region's address,
    /// [`DeviceBuf::is_borrowed`] is true): dropping them frees nothing, and they are
    /// valid only while the caller's memory is (copying one back after it is freed
    /// gives a CUDA error or another allocation's bytes). When the load fails, what
    /// the regions hold is unspecified: some tensors may be written, wholly or in
    /// part. A callback that gives no tensor a region is an error (most often names
    /// that do not match).
    ///
    /// ```no_run
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use tensorstream::{Checkpoint, Device, DeviceRegion, Dtype, Loader};
    /// use cudarc::driver::CudaContext;
    ///
    /// // The framework's parameters, allocated by the framework (here with cudarc).
    /// let ctx = CudaContext::new(0)?;
    /// let stream = ctx.default_stream();
    /// let ckpt = Checkpoint::open("model.safetensors")?;
    /// let mut params = std::collections::BTreeMap::new();
    /// for t in ckpt.shards.iter().flat_map(|h| &h.tensors) {
    ///     let n = t.shape.iter().product::<u64>() as usize;
    ///     params.insert(t.name.clone(), stream.alloc_zeros::<u16>(n)?);
    /// }
    /// let loader = Loader::new().device(Device::Cuda(0));
    /// // SAFETY: each region is a live allocation of its own, untouched during the load.
    /// let model = unsafe {
    ///     loader.load_into_device(&ckpt, |t| {
    ///         let p = params.get_mut(t.name)?;
    ///         let (ptr, _sync) = cudarc::driver::DevicePtrMut::device_ptr_mut(p, &stream);
    ///         Some(DeviceRegion { ptr, len: t.len_as(Dtype::BF16)?, dtype: Dtype::BF16 })
    ///     })?
    /// };
    /// println!("{} tensors in place", model.len());
    /// # Ok(())
    /// # }
    /// ```
    ///
    /// # Safety
    ///
    /// For every region `dest` returns:
    /// 1. `[ptr, ptr + len)` is device memory, writable from the device, that stays
    ///    allocated until this call returns (the checks see the allocation it lies
    ///    in, not whether that is the caller's, nor, in a reserved `cuMemMap` range,
    ///    that every page is mapped with read-write access);
    /// 2. from the moment `dest` returns it until this call returns, nothing else
    ///    reads or writes it: no host access to its memory, and no work on any stream
    ///    but what was queued in the device's primary context before the call, which
    ///    the load waits for (work queued in another context is not waited for; and
    ///    a kernel in the primary context that never ends keeps the load waiting).
    pub unsafe fn load_into_device(
        &self,
        ckpt: &Checkpoint,
        mut dest: impl FnMut(&TensorSpec<'_>) -> Option<DeviceRegion>,
    ) -> Result<Model> {
        let start = Instant::now();
        if !matches!(self.device_value(), Device::Cuda(_)) {
            return Err(Error::InvalidArgument(
                "a load into device memory needs a CUDA device (Loader::device)".into(),
            ));
        }
        let all = self.plan_of(ckpt, &|_| Some(None))?;
        crate::loader::unique_names(&all)?;
        let mut chosen = BTreeMap::new();
        for f in &all.files {
            for t in &f.tensors {
                let spec = TensorSpec::of(f, t);
                if let Some(r) = dest(&spec) {
                    spec.len_for(r.dtype)?;
                    chosen.insert(t.name.clone(), r);
                }
            }
        }
        if chosen.is_empty() {
            return Err(Error::InvalidArgument(format!(
                "{}: no tensor was given a destination",
                ckpt.path.display()
            )));
        }
        let plan = self.plan_of(ckpt, &|name| chosen.get(name).map(|r| Some(r.dtype)))?;
        self.run(&plan, start, Some(&Destinations(chosen)))
    }
}

/// The caller's regions for the tensors of `plan`, per file and tensor, once each is
/// checked (the tensor's length, in one allocation of this context's device, aligned
/// to its elements when converted, no two overlapping), once the context's earlier
/// work is complete.
fn check_destinations(
    plan: &Plan,
    ctx: &Context,
    dests: &Destinations,
) -> Result<Vec<Vec<DeviceRegion>>> {
    ctx.bind()?;
    let mut out = Vec::with_capacity(plan.files.len());
    // Non-empty regions: first byte, last byte, and whose.
    let mut spans: Vec<(u64, u64, String)> = Vec::new();
    for f in &plan.files {
        let mut regions = Vec::with_capacity(f.tensors.len());
        for t in &f.tensors {
            let at = format!("{}: tensor '{}'", f.path.display(), t.name);
            let r = *dests
                .0
                .get(&t.name)
                .ok_or_else(|| internal("a tensor without a destination"))?;
            let bad = |what: String| {
                Error::InvalidArgument(format!("{at}: destination {:#x}: {what}", r.ptr))
            };
            if r.len as u64 != t.len {
                return Err(bad(format!(
                    "{} bytes given, but the tensor is {} bytes once loaded ({} {:?})",
                    r.len, t.len, t.dtype, t.shape
                )));
            }
            if r.len > 0 {
                let elem = (t.dtype.bits() / 8).max(1);
                if t.dtype != t.src_dtype && r.ptr % elem != 0 {
                    return Err(bad(format!(
                        "not aligned to the {elem}-byte elements of {} that the conversion writes",
                        t.dtype
                    )));
                }
                let last = r
                    .ptr
                    .checked_add(r.len as u64 - 1)
                    .ok_or_else(|| bad("runs past the end of the address space".into()))?;
                check_region(ctx, r.ptr, last).map_err(bad)?;
                spans.push((r.ptr, last, at));
            }
            regions.push(r);
        }
        out.push(regions);
    }
    spans.sort();
    for w in spans.windows(2) {
        if let [(a0, a1, a), (b0, _, b)] = w {
            if b0 <= a1 {
                return Err(Error::InvalidArgument(format!(
                    "{b}: destination {b0:#x} overlaps that of {a} ({a0:#x}..={a1:#x})"
                )));
            }
        }
    }
    // What the caller queued on the regions before the call (a memset, a stream-ordered
    // allocation) completes before the load's first copy, whatever stream it is on.
    result::ctx::synchronize().map_err(|e| {
        cuda_err(
            "waiting for the device's earlier work before loading into the caller's memory \
             (cuCtxSynchronize)",
            e,
        )
    })?;
    Ok(out)
}

/// One attribute of the memory at `addr` (`cuPointerGetAttribute`), written over `v`.
///
/// # Safety
///
/// `T` is the type the driver writes for `attr` (CUcontext, CUmemorytype as u32,
/// int as i32, CUdeviceptr as u64, size_t as usize).
unsafe fn pointer_attribute<T>(
    attr: sys::CUpointer_attribute,
    addr: u64,
    mut v: T,
) -> std::result::Result<T, result::DriverError> {
    // SAFETY: the driver writes one T (the caller's promise) through a pointer valid
    // for the call.
    unsafe { sys::cuPointerGetAttribute((&mut v as *mut T).cast(), attr, addr) }.result()?;
    Ok(v)
}

/// Ok when `[first, last]` is device memory the load can write from `ctx`: in one
/// allocation (or reserved address range) of `ctx`'s device, not managed memory, of
/// `ctx` or of no context (as pool and mapped memory are), the last byte device memory
/// too; else what is wrong.
fn check_region(ctx: &Context, first: u64, last: u64) -> std::result::Result<(), String> {
    use sys::CUpointer_attribute as A;
    let unknown = |e| format!("is not memory the CUDA driver knows of ({})", words(e));
    // SAFETY (each call): the attribute's type, per `pointer_attribute`.
    let kind: u32 = unsafe { pointer_attribute(A::CU_POINTER_ATTRIBUTE_MEMORY_TYPE, first, 0u32) }
        .map_err(|e| format!("its first byte {}", unknown(e)))?;
    // SAFETY: as above.
    let managed: i32 =
        unsafe { pointer_attribute(A::CU_POINTER_ATTRIBUTE_IS_MANAGED, first, 0i32) }
            .map_err(|e| format!("its first byte {}", unknown(e)))?;
    if managed != 0 {
        return Err(
            "is managed memory (cuMemAllocManaged), which a load does not write: \
                    give device memory (cuMemAlloc, a memory pool, cuMemMap)"
                .into(),
        );
    }
    let kind_words = |k: u32| match k {
        1 => "host memory".to_string(),
        2 => "device memory".to_string(),
        3 => "a CUDA array".to_string(),
        4 => "unified memory".to_string(),
        k => format!("memory of type {k}"),
    };
    if kind != sys::CUmemorytype::CU_MEMORYTYPE_DEVICE as u32 {
        return Err(format!("is {}, not device memory", kind_words(kind)));
    }
    // SAFETY: as above.
    let dev: i32 =
        unsafe { pointer_attribute(A::CU_POINTER_ATTRIBUTE_DEVICE_ORDINAL, first, -1i32) }
            .map_err(|e| format!("has no device the driver can name ({})", words(e)))?;
    if usize::try_from(dev).ok() != Some(ctx.ordinal) {
        return Err(format!(
            "is memory of cuda:{dev}, not of cuda:{}",
            ctx.ordinal
        ));
    }
    // Memory of no context (pools, cuMemMap) may answer null or an error: either way
    // it is not another context's.
    // SAFETY: as above.
    let owner: sys::CUcontext =
        unsafe { pointer_attribute(A::CU_POINTER_ATTRIBUTE_CONTEXT, first, std::ptr::null_mut()) }
            .unwrap_or(std::ptr::null_mut());
    if !owner.is_null() && owner != ctx.ctx {
        return Err(format!(
            "is memory of another CUDA context than cuda:{}'s primary one (cuCtxCreate), \
             where the load's kernels cannot write",
            ctx.ordinal
        ));
    }
    // SAFETY: as above.
    let start: u64 =
        unsafe { pointer_attribute(A::CU_POINTER_ATTRIBUTE_RANGE_START_ADDR, first, 0u64) }
            .map_err(|e| format!("has no allocation the driver can name ({})", words(e)))?;
    // SAFETY: as above.
    let size: usize =
        unsafe { pointer_attribute(A::CU_POINTER_ATTRIBUTE_RANGE_SIZE, first, 0usize) }
            .map_err(|e| format!("has no allocation the driver can name ({})", words(e)))?;
    let end = start.saturating_add(size as u64);
    if first < start || last >= end {
        return Err(format!(
            "runs past the end of its allocation ({start:#x}, {size} bytes): the last byte \
             is {last:#x}"
        ));
    }
    // SAFETY: as above.
    let last_kind: u32 =
        unsafe { pointer_attribute(A::CU_POINTER_ATTRIBUTE_MEMORY_TYPE, last, 0u32) }
            .map_err(|e| format!("its last byte ({last:#x}) {}", unknown(e)))?;
    if last_kind != kind {
        return Err(format!(
            "its last byte ({last:#x}) is {}",
            kind_words(last_kind)
        ));
    }
    Ok(())
}

/// The device buffers of a load: per file the raw buffer and the converted area, or
/// per tensor its own allocation.
type DeviceBuffers = (
    Vec<Option<Arc<DeviceBuf>>>,
    Vec<Option<Arc<DeviceBuf>>>,
    Vec<Vec<Option<Arc<DeviceBuf>>>>,
);

fn device_buffers(
    plan: &Plan,
    ctx: &Arc<Context>,
    per_tensor: bool,
    regions: Option<Vec<Vec<DeviceRegion>>>,
) -> Result<DeviceBuffers> {
    let (mut raw, mut converted, mut own) = (Vec::new(), Vec::new(), Vec::new());
    if let Some(regions) = regions {
        for regions in regions {
            raw.push(None);
            converted.push(None);
            own.push(
                regions
                    .into_iter()
                    .map(|r| Some(Arc::new(DeviceBuf::borrowed(ctx, r))))
                    .collect(),
            );
        }
        return Ok((raw, converted, own));
    }
    // A failed allocation names the file (and the tensor, one per tensor).
    for f in &plan.files {
        if per_tensor {
            raw.push(None);
            converted.push(None);
            let bufs = f
                .tensors
                .iter()
                .map(|t| {
                    DeviceBuf::alloc(ctx, t.len as usize)
                        .map(|b| Some(Arc::new(b)))
                        .map_err(|e| {
                            located(e, format_args!("{}: tensor '{}'", f.path.display(), t.name))
                        })
                })
                .collect::<Result<Vec<_>>>()?;
            own.push(bufs);
        } else {
            let alloc = |len: u64| {
                DeviceBuf::alloc(ctx, len as usize)
                    .map(|b| Some(Arc::new(b)))
                    .map_err(|e| located(e, f.path.display()))
            };
            raw.push(alloc(f.raw_len)?);
            converted.push(alloc(f.converted_len)?);
            own.push(Vec::new());
        }
    }
    Ok((raw, converted, own))
}

impl<'p> CudaSink<'p> {
    /// A sink copying through `staging`, pinned up to `count` (at least 2) slots first (a kept
    /// staging already has them); the device buffers are allocated on another thread
    /// meanwhile.
    fn new(
        plan: &'p Plan,
        mut staging: Staging,
        count: usize,
        per_tensor: bool,
        regions: Option<Vec<Vec<DeviceRegion>>>,
    ) -> Result<Self> {
        let ctx = Arc::clone(&staging.ctx);
        let (buffers, pinned) = std::thread::scope(|scope| {
            let device = scope.spawn(|| device_buffers(plan, &ctx, per_tensor, regions));
            let pinned = staging.fill(count);
            let buffers = device
                .join()
                .unwrap_or_else(|_| Err(internal("the device allocation thread panicked")));
            (buffers, pinned)
        });
        pinned?;
        let (raw, converted, own) = buffers?;
        ctx.bind()?;
        let mut sink = CudaSink {
            plan,
            staging,
            raw,
            converted,
            own,
            module: None,
            kernels: BTreeMap::new(),
            host_gather: false,
        };
        if converts(plan) {
            sink.add_scratch()?;
            sink.load_kernels()?;
        }
        Ok(sink)
    }

    /// Gives each slot without one its device scratch, when some tensor converts.
    fn add_scratch(&mut self) -> Result<()> {
        if !converts(self.plan) {
            return Ok(());
        }
        let len = self.staging.slot_len + SCRATCH_PAD;
        for s in &mut self.staging.slots {
            if s.scratch.is_none() {
                s.scratch = Some(DeviceBuf::alloc(&self.staging.ctx, len)?);
            }
        }
        Ok(())
    }

    /// Pins slots until there are `count`, for the reads that fill them.
    fn grow(&mut self, count: usize) -> Result<()> {
        self.staging.fill(count)?;
        self.add_scratch()
    }

    /// Once the stream has drained: the staging, for the loader to keep.
    fn hand_back(mut self) -> Staging {
        let st = &mut self.staging;
        for s in &mut st.slots {
            s.scratch = None;
        }
        Staging {
            ctx: Arc::clone(&st.ctx),
            stream: std::mem::replace(&mut st.stream, std::ptr::null_mut()),
            slots: std::mem::take(&mut st.slots),
            slot_len: st.slot_len,
            kind: st.kind,
            huge_refused: st.huge_refused,
        }
    }

    fn load_kernels(&mut self) -> Result<()> {
        // The PTX targets sm_80 (it uses Ampere's conversion instructions): an older
        // GPU cannot JIT it, and the driver's error would not say why.
        let ctx = &self.staging.ctx;
        let cc = [
            sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR,
            sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR,
        ]
        // SAFETY: ctx.dev is a device handle from cuDeviceGet.
        .map(|a| unsafe { result::device::get_attribute(ctx.dev, a) });
        if let [Ok(major), Ok(minor)] = cc {
            if major < 8 {
                return Err(Error::Cuda(format!(
                    "cuda:{}: dtype conversion needs a GPU of compute capability 8.0 or newer \
                     (this one is {major}.{minor}); load without --dtype to keep the \
                     checkpoint's dtypes",
                    ctx.ordinal
                )));
            }
        }
        let image = CString::new(PTX).map_err(|_| Error::Cuda("PTX contains a NUL byte".into()))?;
        // SAFETY: image is a NUL-terminated PTX string alive for the call.
        let module = unsafe { result::module::load_data(image.as_ptr().cast()) }
            .map_err(|e| cuda_err("loading the conversion kernels (PTX JIT)", e))?;
        self.module = Some(module);
        for f in &self.plan.files {
            for t in &f.tensors {
                if t.src_dtype == t.dtype || self.kernels.contains_key(&(t.src_dtype, t.dtype)) {
                    continue;
                }
                let name = convert::kernel_name(t.src_dtype, t.dtype).ok_or_else(|| {
                    Error::Cuda(format!("no kernel converts {} to {}", t.src_dtype, t.dtype))
                })?;
                let cname = CString::new(name).map_err(|_| Error::Cuda("kernel name".into()))?;
                // SAFETY: module was loaded above and is unloaded only in Drop.
                let func = unsafe { result::module::get_function(module, cname) }
                    .map_err(|e| cuda_err(format_args!("kernel {name}"), e))?;
                self.kernels.insert((t.src_dtype, t.dtype), func);
            }
        }
        Ok(())
    }

    fn slot_of(&self, ptr: *mut u8) -> Result<usize> {
        self.staging
            .slots
            .iter()
            .position(|s| s.mem.host == ptr)
            .ok_or_else(|| internal("unknown staging slot"))
    }

    /// Copies `len` bytes of pinned or registered memory at `src` to device address
    /// `dst`, on `stream`.
    fn htod(&self, stream: sys::CUstream, dst: u64, src: *const u8, len: usize) -> Result<()> {
        if len == 0 {
            return Ok(());
        }
        // SAFETY: src points at len bytes of pinned or registered host memory that
        // stay untouched (and registered) until the event recorded after this copy
        // completes; dst lies inside a live device buffer (callers take it from the
        // plan, whose ranges fit the buffers allocated for it); the stream belongs to
        // the current context. The CPU never reads through src.
        unsafe { sys::cuMemcpyHtoDAsync_v2(dst, src.cast::<c_void>(), len, stream) }
            .result()
            .map_err(|e| cuda_err("cuMemcpyHtoDAsync", e))
    }

    /// [`Self::htod`], split where a registration begins (`reg_starts`, sorted host
    /// addresses; empty for pinned slots): a copy may not run from one registered
    /// range into the next.
    fn htod_split(
        &self,
        stream: sys::CUstream,
        dst: u64,
        src: *const u8,
        len: usize,
        reg_starts: &[u64],
    ) -> Result<()> {
        if reg_starts.is_empty() {
            return self.htod(stream, dst, src, len);
        }
        for (at, n) in regplan::split_at_registrations(src as u64, len as u64, reg_starts) {
            // SAFETY: at + n <= len: the pieces cover [src, src + len) exactly.
            let part = unsafe { src.add(at as usize) };
            self.htod(stream, dst + at, part, n as usize)?;
        }
        Ok(())
    }

    /// Copies `rows` rows of `width` bytes, `pitch` bytes apart from `src` in pinned
    /// or registered host memory, to `dst` on the device back to back: the selected
    /// columns of a column selection, gathered by the copy engine instead of the CPU.
    /// Rows that lie in one registration (all of them, from pinned slots) go in one
    /// 2-D copy; a row running into the next registration is split as
    /// [`Self::htod_split`].
    #[allow(clippy::too_many_arguments)]
    fn htod_rows(
        &self,
        stream: sys::CUstream,
        dst: u64,
        src: *const u8,
        pitch: u64,
        width: u64,
        rows: u64,
        reg_starts: &[u64],
    ) -> Result<()> {
        let len = |n: u64| usize::try_from(n).map_err(|_| internal("copy length"));
        for (first, n) in regplan::rows_by_registration(src as u64, pitch, width, rows, reg_starts)
        {
            // SAFETY: first < rows: the row lies inside the caller's range of
            // (rows - 1) * pitch + width bytes at src.
            let from = unsafe { src.add(len(first * pitch)?) };
            let to = dst + first * width;
            if n == 1 || pitch == width {
                // One row, or rows back to back: one plain copy.
                let span = len((n - 1) * pitch + width)?;
                self.htod_split(stream, to, from, span, reg_starts)?;
                continue;
            }
            // Plans gather only rows no longer than a chunk (at most 1 GiB), within the
            // driver's pitch limit (CU_DEVICE_ATTRIBUTE_MAX_PITCH, 2^31 - 1 on current
            // GPUs).
            if pitch > 1 << 30 {
                return Err(internal("gathered rows longer than a chunk"));
            }
            let copy = sys::CUDA_MEMCPY2D {
                srcXInBytes: 0,
                srcY: 0,
                srcMemoryType: sys::CUmemorytype::CU_MEMORYTYPE_HOST,
                srcHost: from.cast::<c_void>(),
                srcDevice: 0,
                srcArray: std::ptr::null_mut(),
                srcPitch: len(pitch)?,
                dstXInBytes: 0,
                dstY: 0,
                dstMemoryType: sys::CUmemorytype::CU_MEMORYTYPE_DEVICE,
                dstHost: std::ptr::null_mut(),
                dstDevice: to,
                dstArray: std::ptr::null_mut(),
                dstPitch: len(width)?,
                WidthInBytes: len(width)?,
                Height: len(n)?,
            };
            // SAFETY: the source rows lie in pinned memory or in one registration
            // (rows_by_registration), untouched until the event recorded after this
            // copy completes; the destination's n * width bytes lie in a live device
            // buffer (the caller checks them against the tensor); the descriptor lives
            // until the call returns (the driver copies it); the stream belongs to the
            // current context.
            unsafe { sys::cuMemcpy2DAsync_v2(&copy, stream) }
                .result()
                .map_err(|e| cuda_err("cuMemcpy2DAsync (selected columns)", e))?;
        }
        Ok(())
    }

    fn launch(
        &self,
        stream: sys::CUstream,
        src: Dtype,
        dst: Dtype,
        input: u64,
        output: u64,
        n: u64,
    ) -> Result<()> {
        let func = *self
            .kernels
            .get(&(src, dst))
            .ok_or_else(|| Error::Cuda(format!("no kernel for {src} -> {dst}")))?;
        let threads = 256u64;
        // Each thread converts groups of 8 elements (grid-stride beyond that).
        let blocks = n.div_ceil(threads * 8).clamp(1, 65_535) as u32;
        let (mut a, mut b, mut c) = (input, output, n);
        let mut params: [*mut c_void; 3] = [
            (&mut a as *mut u64).cast(),
            (&mut b as *mut u64).cast(),
            (&mut c as *mut u64).cast(),
        ];
        // SAFETY: func comes from the loaded module; its parameters are
        // (const u8*, u8*, u64) matching a, b, c, which live until the call returns
        // (the driver copies parameter values at launch); input and output ranges lie
        // in live device buffers.
        unsafe {
            result::launch_kernel(
                func,
                (blocks, 1, 1),
                (threads as u32, 1, 1),
                0,
                stream,
                &mut params,
            )
        }
        .map_err(|e| cuda_err(format_args!("launching convert {src} -> {dst}"), e))
    }

    fn synchronize(&self) -> Result<()> {
        // SAFETY: the stream is live until Drop.
        unsafe { result::stream::synchronize(self.staging.stream) }.map_err(|e| {
            cuda_err(
                "waiting for the copies to the device (cuStreamSynchronize)",
                e,
            )
        })
    }

    /// Copies the required bytes of raw read `op`, found at `src` in pinned or
    /// registered host memory, to their place on the device.
    fn raw_copy(
        &self,
        stream: sys::CUstream,
        file: usize,
        op: &ReadOp,
        dest: u64,
        src: *const u8,
        reg_starts: &[u64],
    ) -> Result<()> {
        let len = op.required as usize;
        if let Some(buf) = self.raw.get(file).and_then(Option::as_ref) {
            if dest + len as u64 > buf.len as u64 {
                return Err(internal("copy past a device buffer"));
            }
            return self.htod_split(stream, buf.ptr + dest, src, len, reg_starts);
        }
        // Per-tensor allocations: copy each tensor's part of this read to its buffer.
        let fp = self.plan.files.get(file).ok_or_else(|| internal("file"))?;
        let own = self.own.get(file).ok_or_else(|| internal("file"))?;
        let (r0, r1) = (op.offset, op.offset + op.required);
        for (t, b) in fp.tensors.iter().zip(own) {
            let (Place::Raw(_), Some(b)) = (t.place, b) else {
                continue;
            };
            let (t0, t1) = (t.file_offset, t.file_offset + t.src_len);
            let (s, e) = (t0.max(r0), t1.min(r1));
            if s >= e {
                continue;
            }
            // SAFETY: s - r0 < required, and `src` holds the read's required bytes.
            let part = unsafe { src.add((s - r0) as usize) };
            self.htod_split(stream, b.ptr + (s - t0), part, (e - s) as usize, reg_starts)?;
        }
        Ok(())
    }
}

impl CudaSink<'_> {
    /// The device address of converted tensor `tensor` of file `file` at `place`: its
    /// own allocation, or its place in the file's converted area.
    fn converted_at(&self, file: usize, tensor: usize, place: Place) -> Result<u64> {
        match (place, self.own.get(file).and_then(|o| o.get(tensor))) {
            (_, Some(Some(b))) => Ok(b.ptr),
            (Place::Converted(base), _) => self
                .converted
                .get(file)
                .and_then(Option::as_ref)
                .map(|c| c.ptr + base)
                .ok_or_else(|| internal("converted area")),
            _ => Err(internal("place")),
        }
    }

    /// Enqueues on `stream` what read `op` of file `file` is for, its required
    /// bytes being at `src` in pinned or registered host memory: a copy to the
    /// destination, or a copy to `scratch` and the conversion kernel from there.
    /// A driver error names the file, the bytes and the tensor(s) concerned.
    fn consume(
        &self,
        stream: sys::CUstream,
        file: usize,
        op: &ReadOp,
        src: *const u8,
        scratch: Option<&DeviceBuf>,
        reg_starts: &[u64],
    ) -> Result<()> {
        let enqueue = || -> Result<()> {
            match op.target {
                Target::Raw { dest } => self.raw_copy(stream, file, op, dest, src, reg_starts),
                Target::Convert {
                    tensor,
                    first,
                    count,
                    skip,
                    gather,
                } => {
                    let fp = self.plan.files.get(file).ok_or_else(|| internal("file"))?;
                    let t = fp.tensors.get(tensor).ok_or_else(|| internal("tensor"))?;
                    let out_size = t.dtype.bits() / 8;
                    let out = self.converted_at(file, tensor, t.place)? + first * out_size;
                    let packed = count * (t.src_dtype.bits() / 8);
                    // Up to the last element.
                    let needed = skip + packed;
                    // The destination (perhaps the caller's memory) holds exactly t.len.
                    if (first + count) * out_size > t.len {
                        return Err(internal("elements past the tensor"));
                    }
                    if let Some(g) = gather {
                        // Rows of selected columns: the copy engine gathers them,
                        // straight to their place or into the scratch to convert.
                        let span = g
                            .rows
                            .checked_sub(1)
                            .and_then(|r| r.checked_mul(g.stride))
                            .and_then(|x| x.checked_add(g.keep))
                            .and_then(|x| x.checked_add(skip));
                        if g.rows.checked_mul(g.keep) != Some(packed) || g.keep > g.stride {
                            return Err(internal("gathered rows unlike their elements"));
                        }
                        if span.is_none_or(|x| x > op.required) {
                            return Err(internal("rows past the read"));
                        }
                        let at = usize::try_from(skip).map_err(|_| internal("skip"))?;
                        // SAFETY: skip < span <= op.required: inside the read.
                        let from = unsafe { src.add(at) };
                        let rows = |to| {
                            self.htod_rows(stream, to, from, g.stride, g.keep, g.rows, reg_starts)
                        };
                        if t.dtype == t.src_dtype {
                            return rows(out);
                        }
                        let scratch = scratch.ok_or_else(|| internal("scratch"))?;
                        if packed as usize + SCRATCH_PAD > scratch.len {
                            return Err(internal("rows larger than the scratch buffer"));
                        }
                        // The scratch's start is aligned for the kernel.
                        rows(scratch.ptr)?;
                        return self.launch(stream, t.src_dtype, t.dtype, scratch.ptr, out, count);
                    }
                    if needed > op.required {
                        return Err(internal("elements past the read"));
                    }
                    if t.dtype == t.src_dtype {
                        // Selected columns, not converted: straight to their place.
                        let at = usize::try_from(skip).map_err(|_| internal("skip"))?;
                        // SAFETY: skip <= needed <= op.required: inside the read.
                        let from = unsafe { src.add(at) };
                        let len = (needed - skip) as usize;
                        return self.htod_split(stream, out, from, len, reg_starts);
                    }
                    let scratch = scratch.ok_or_else(|| internal("scratch"))?;
                    if needed as usize + SCRATCH_PAD > scratch.len {
                        return Err(internal("read larger than the scratch buffer"));
                    }
                    // Shift so that the first element sits on a 16-byte boundary.
                    let pad = (16 - skip % 16) % 16;
                    self.htod_split(stream, scratch.ptr + pad, src, needed as usize, reg_starts)?;
                    self.launch(
                        stream,
                        t.src_dtype,
                        t.dtype,
                        scratch.ptr + pad + skip,
                        out,
                        count,
                    )
                }
            }
        };
        enqueue().map_err(|e| self.at_read(file, op, e))
    }

    /// Error `e` with the file, byte range and tensor(s) of read `op` in front.
    fn at_read(&self, file: usize, op: &ReadOp, e: Error) -> Error {
        match self.where_read(file, op) {
            Some(place) => located(e, place),
            None => e,
        }
    }

    /// Error `e` with file `file` in front.
    fn in_file(&self, file: usize, e: Error) -> Error {
        match self.plan.files.get(file) {
            Some(f) => located(e, f.path.display()),
            None => e,
        }
    }

    /// The file, byte range and tensor(s) of read `op`.
    fn where_read(&self, file: usize, op: &ReadOp) -> Option<String> {
        let fp = self.plan.files.get(file)?;
        let (r0, r1) = (op.offset, op.offset + op.required);
        // A conversion is of one tensor: name it and its bytes, not the neighbours
        // that share the read's aligned start.
        if let Target::Convert { tensor, skip, .. } = op.target {
            let t = fp.tensors.get(tensor)?;
            return Some(format!(
                "{}: bytes {}..{r1}, tensor '{}'",
                fp.path.display(),
                r0 + skip,
                t.name
            ));
        }
        let mut names = fp
            .tensors
            .iter()
            .filter(|t| t.file_offset < r1 && r0 < t.file_offset + t.src_len)
            .map(|t| t.name.as_str());
        let tensors = match (names.next(), names.count()) {
            (None, _) => String::new(),
            (Some(n), 0) => format!(", tensor '{n}'"),
            (Some(n), more) => format!(", tensor '{n}' and {more} more"),
        };
        Some(format!("{}: bytes {r0}..{r1}{tensors}", fp.path.display()))
    }
}

/// The pinned slots' side of a load, which the I/O engine fills: which slots await
/// their copies. Holds the sink shared, so that the registered page-cache path can
/// copy from other threads meanwhile.
struct SlotSink<'s, 'p> {
    sink: &'s CudaSink<'p>,
    /// In a balanced split, who has which read.
    claims: Option<&'s regplan::Claims>,
    busy: Vec<bool>,
    /// Busy slots whose copies are enqueued, oldest first.
    order: std::collections::VecDeque<usize>,
}

impl<'s, 'p> SlotSink<'s, 'p> {
    fn new(sink: &'s CudaSink<'p>, claims: Option<&'s regplan::Claims>) -> Self {
        SlotSink {
            sink,
            claims,
            busy: vec![false; sink.staging.slots.len()],
            order: Default::default(),
        }
    }
}

impl Sink for SlotSink<'_, '_> {
    fn buffer(&mut self, _file: usize, op: &ReadOp) -> Result<Option<Buf>> {
        let slots = &self.sink.staging.slots;
        // Recycle slots whose copies have finished, oldest first.
        while let Some(&i) = self.order.front() {
            let Some(s) = slots.get(i) else {
                break;
            };
            // SAFETY: the event is live until the slot is freed, after this load.
            if unsafe { result::event::query(s.event) }.is_ok() {
                self.order.pop_front();
                if let Some(b) = self.busy.get_mut(i) {
                    *b = false;
                }
            } else {
                break;
            }
        }
        let Some(i) = self.busy.iter().position(|b| !b) else {
            return Ok(None);
        };
        let (Some(s), Some(b)) = (slots.get(i), self.busy.get_mut(i)) else {
            return Err(internal("slot"));
        };
        if (op.len as usize) > s.len {
            return Err(internal("read larger than a staging slot"));
        }
        *b = true;
        Ok(Some(Buf {
            ptr: s.mem.host,
            len: s.len,
            fixed: u16::try_from(i).ok(),
            fresh: false,
        }))
    }

    fn complete(&mut self, file: usize, op: &ReadOp, buf: Buf) -> Result<()> {
        let sink = self.sink;
        let i = sink.slot_of(buf.ptr)?;
        let slot = sink.staging.slots.get(i).ok_or_else(|| internal("slot"))?;
        let stream = sink.staging.stream;
        let mut op = *op;
        if let Target::Convert {
            skip,
            gather: Some(g),
            ..
        } = op.target
        {
            // Narrow rows are cheap for the CPU to move together and costly for the
            // copy engine to take one by one (not for write-combined staging, which
            // the CPU must not read).
            let narrow =
                g.keep < CPU_GATHER_BELOW && sink.staging.kind != StagingKind::WriteCombined;
            if sink.host_gather || narrow {
                // SAFETY: the slot holds slot.len bytes of pinned memory; its read has
                // completed, and no copy from it is queued until consume below (its
                // last copy completed before the slot was handed out), so nothing else
                // touches it now.
                let staged = unsafe { std::slice::from_raw_parts_mut(slot.mem.host, slot.len) };
                plan::gather_in_place(staged, skip, &g).map_err(|e| sink.at_read(file, &op, e))?;
                // Its elements now lie back to back, as in any other read.
                if let Target::Convert { gather, .. } = &mut op.target {
                    *gather = None;
                }
            }
        }
        let op = &op;
        sink.consume(stream, file, op, slot.mem.host, slot.scratch.as_ref(), &[])?;
        // SAFETY: event and stream are live until the staging is freed.
        unsafe { result::event::record(slot.event, stream) }
            .map_err(|e| sink.at_read(file, op, cuda_err("cuEventRecord", e)))?;
        self.order.push_back(i);
        Ok(())
    }

    fn wait_for_slot(&mut self) -> Result<()> {
        if let Some(i) = self.order.pop_front() {
            if let Some(s) = self.sink.staging.slots.get(i) {
                // SAFETY: the event is live until the slot is freed, after this load.
                unsafe { result::event::synchronize(s.event) }.map_err(|e| {
                    cuda_err("waiting for a staging slot's copy (cuEventSynchronize)", e)
                })?;
            }
            if let Some(b) = self.busy.get_mut(i) {
                *b = false;
            }
        }
        Ok(())
    }

    fn held_after_reads(&self) -> bool {
        // Slots whose copies were queued and had not finished when last asked.
        !self.order.is_empty()
    }

    fn fixed_buffers(&self) -> Vec<(*mut u8, usize)> {
        self.sink
            .staging
            .slots
            .iter()
            .map(|s| (s.mem.host, s.len))
            .collect()
    }

    fn wants(&mut self, file: usize, read: usize) -> bool {
        self.claims.is_none_or(|c| c.for_slots(file, read))
    }
}

impl Drop for CudaSink<'_> {
    fn drop(&mut self) {
        if self.staging.ctx.bind().is_err() {
            return;
        }
        // Nothing may still read a slot or write a buffer when they are freed (the
        // staging and the buffers are dropped after this); a handed-back staging took
        // the stream along, after it had drained.
        if !self.staging.stream.is_null() {
            let _ = self.synchronize();
        }
        if let Some(m) = self.module.take() {
            // SAFETY: loaded in load_kernels; no launch is pending after the sync.
            let _ = unsafe { result::module::unload(m) };
        }
    }
}

/// The system's page size: the driver pins memory in whole pages, so registrations
/// that share one collide (4 KiB on x86-64; 64 KiB on some arm64 kernels).
fn page_size() -> u64 {
    // SAFETY: sysconf reads a system constant and has no preconditions.
    let p = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    match u64::try_from(p) {
        Ok(p) if p.is_power_of_two() && p >= 4096 => p,
        _ => 4096,
    }
}

/// Why the device cannot copy straight from registered page-cache memory, if it cannot.
fn registration_refused(ctx: &Context) -> Option<String> {
    for (attr, what) in [
        (
            sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_HOST_REGISTER_SUPPORTED,
            "host memory registration",
        ),
        (
            sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_READ_ONLY_HOST_REGISTER_SUPPORTED,
            "read-only host memory registration",
        ),
    ] {
        // SAFETY: ctx.dev is a device handle from cuDeviceGet.
        match unsafe { result::device::get_attribute(ctx.dev, attr) } {
            Ok(1) => {}
            Ok(v) => {
                return Some(format!(
                    "the device does not support {what} (attribute {v})"
                ))
            }
            Err(e) => return Some(format!("asking the device about {what}: {}", words(e))),
        }
    }
    None
}

/// The event recorded after a window's copies, and the bytes those copies moved.
struct WindowEvent {
    window: usize,
    event: sys::CUevent,
    bytes: u64,
}

/// Registers ranges of one file's read-only map with the driver (any thread).
struct MapPinner<'m> {
    ctx: &'m Context,
    /// The map's first byte and the end of its last page.
    start: usize,
    end: usize,
}

impl regplan::Pinner for MapPinner<'_> {
    fn register(&self, addr: usize, len: usize) -> std::result::Result<(), String> {
        if addr < self.start || addr.saturating_add(len) > self.end || len == 0 {
            return Err(format!("internal: bytes {addr:#x}+{len} outside the map"));
        }
        self.ctx.bind().map_err(|e| e.to_string())?;
        // SAFETY: [addr, addr + len) lies inside the map (whole pages up to the end of
        // its last page, which the map covers; checked above), which outlives this
        // pinner (borrowed for 'm); read-only registration never writes to it.
        unsafe {
            sys::cuMemHostRegister_v2(addr as *mut c_void, len, sys::CU_MEMHOSTREGISTER_READ_ONLY)
        }
        .result()
        .map_err(words)
    }

    fn unregister(&self, addr: usize) -> std::result::Result<(), String> {
        self.ctx.bind().map_err(|e| e.to_string())?;
        // SAFETY: the driver looks `addr` up among its registrations (an unknown one is
        // an error, not undefined behaviour); `carry_out` gives a registration back
        // only once the copies that read it have completed.
        unsafe { sys::cuMemHostUnregister(addr as *mut c_void) }
            .result()
            .map_err(words)
    }
}

/// The copies of one file's windows on the sink's stream, an event after each.
struct MapWindows<'a, 'p> {
    sink: &'a CudaSink<'p>,
    stream: sys::CUstream,
    scratch: Option<&'a DeviceBuf>,
    file: usize,
    ops: &'a [&'a ReadOp],
    /// Each op's index among its file's reads, and whether this side claimed it (in a
    /// balanced split: `claims`).
    ids: &'a [usize],
    taken: Vec<bool>,
    claims: Option<&'a regplan::Claims>,
    base: u64,
    reg_starts: Vec<u64>,
    events: std::collections::VecDeque<WindowEvent>,
    stats: &'a mut IoStats,
}

impl regplan::Windows for MapWindows<'_, '_> {
    fn copy(&mut self, w: usize, reads: std::ops::Range<usize>) -> Result<()> {
        let window = self
            .ops
            .get(reads.clone())
            .ok_or_else(|| internal("window"))?;
        let mut bytes = 0;
        for (k, &op) in reads.zip(window) {
            if self.claims.is_some() && !self.taken.get(k).copied().unwrap_or(false) {
                continue;
            }
            let src = (self.base + op.offset) as *const u8;
            self.sink.consume(
                self.stream,
                self.file,
                op,
                src,
                self.scratch,
                &self.reg_starts,
            )?;
            self.stats.requests += 1;
            self.stats.bytes_read += op.required;
            bytes += op.required;
        }
        let event = result::event::create(sys::CUevent_flags::CU_EVENT_DISABLE_TIMING)
            .map_err(|e| self.sink.in_file(self.file, cuda_err("cuEventCreate", e)))?;
        self.events.push_back(WindowEvent {
            window: w,
            event,
            bytes,
        });
        // SAFETY: event and stream are live; the event marks this window's copies.
        unsafe { result::event::record(event, self.stream) }
            .map_err(|e| self.sink.in_file(self.file, cuda_err("cuEventRecord", e)))
    }

    fn wait(&mut self, w: usize) -> Result<u64> {
        let mut bytes = 0;
        while self.events.front().is_some_and(|e| e.window <= w) {
            let Some(e) = self.events.pop_front() else {
                break;
            };
            // SAFETY: created and recorded on the stream by `copy`.
            let waited = unsafe { result::event::synchronize(e.event) };
            // SAFETY: destroyed once; nothing waits on it any more.
            let _ = unsafe { result::event::destroy(e.event) };
            waited.map_err(|err| {
                let e = cuda_err("waiting for copies (cuEventSynchronize)", err);
                self.sink.in_file(self.file, e)
            })?;
            bytes += e.bytes;
        }
        Ok(bytes)
    }

    fn poll(&mut self, w: usize) -> Result<Option<u64>> {
        // Copies on one stream complete in order: the last event up to window `w`
        // tells for all of them.
        let Some(last) = self.events.iter().take_while(|e| e.window <= w).last() else {
            return Ok(Some(0));
        };
        // SAFETY: created and recorded on the stream by `copy`, not yet destroyed.
        match unsafe { sys::cuEventQuery(last.event) } {
            sys::CUresult::CUDA_SUCCESS => self.wait(w).map(Some),
            sys::CUresult::CUDA_ERROR_NOT_READY => Ok(None),
            e => Err(self
                .sink
                .in_file(self.file, cuda_err("cuEventQuery", result::DriverError(e)))),
        }
    }

    fn settle(&mut self) {
        // SAFETY: the stream outlives these windows (its owner drops after them).
        let _ = unsafe { result::stream::synchronize(self.stream) };
    }

    fn claim(&mut self, _w: usize, reads: std::ops::Range<usize>) -> regplan::Claimed {
        let Some(claims) = self.claims else {
            return regplan::Claimed::All;
        };
        claims.window_for_registered(self.file, self.ids, reads, &mut self.taken)
    }

    fn leaves_rest(&self) -> bool {
        self.claims.is_some()
    }
}

impl Drop for MapWindows<'_, '_> {
    fn drop(&mut self) {
        regplan::Windows::settle(self);
        for e in self.events.drain(..) {
            // SAFETY: created in `copy`, destroyed once, after the stream drained.
            let _ = unsafe { result::event::destroy(e.event) };
        }
    }
}

/// What the registered path did.
enum Registration {
    Done(IoStats),
    /// The driver refused the very first registration: nothing was copied.
    Refused(String),
}

/// `--io mmap` to a CUDA device: each file is mapped read-only, the driver pins the
/// page-cache pages of a window of it (`cuMemHostRegister`, read-only) and the copies
/// (and conversions, through `scratch`) read them directly, on `stream`: no CPU copy
/// into a staging buffer. Which pages to register before each window, when to give
/// them back and how threads register ahead of the copies is [`regplan`]'s (tested
/// without a GPU); here the driver does it. This process never reads the map, so a
/// file truncated meanwhile makes registration fail (an error), never SIGBUS; a
/// change during the load is caught by the size and mtime check at the end of each
/// file, as on the other paths. `report` gets the bytes copied so far.
///
/// With `claims` (a balanced split), the files go last first and each from its end
/// backwards, every window's reads claimed just before they are copied, until the
/// pinned slots (going forwards) are met.
#[allow(clippy::too_many_arguments)]
fn load_registered(
    sink: &CudaSink<'_>,
    plan: &Plan,
    shape: regplan::RegShape,
    stream: sys::CUstream,
    scratch: Option<&DeviceBuf>,
    claims: Option<&regplan::Claims>,
    cancelled: &dyn Fn() -> bool,
    report: &dyn Fn(u64),
) -> Result<Registration> {
    let mut stats = IoStats::default();
    let mut done = 0u64;
    let mut copied = |bytes: u64| {
        done += bytes;
        report(done);
    };
    let mut first = true;
    let backwards = claims.is_some();
    let page = page_size();
    let order: Vec<usize> = if backwards {
        (0..plan.files.len()).rev().collect()
    } else {
        (0..plan.files.len()).collect()
    };
    for fi in order {
        let fp = plan.files.get(fi).ok_or_else(|| internal("file"))?;
        let mut ops: Vec<(usize, &ReadOp)> = fp
            .reads
            .iter()
            .enumerate()
            .filter(|(_, op)| op.required > 0)
            .collect();
        if ops.is_empty() {
            continue;
        }
        if backwards {
            ops.sort_by_key(|(_, op)| std::cmp::Reverse((op.offset + op.required, op.offset)));
        } else {
            ops.sort_by_key(|(_, op)| op.offset);
        }
        let (ids, ops): (Vec<usize>, Vec<&ReadOp>) = ops.into_iter().unzip();
        let open = io::open_checked(&fp.path, false, fp.file_len)?;
        // SAFETY: a read-only shared map that this process never reads through: only
        // the driver pins its pages and the copy engine reads them (see above).
        let map = unsafe { memmap2::Mmap::map(open.file()) }
            .map_err(|e| Error::io(&fp.path, "mmap", e))?;
        let base = map.as_ptr() as u64;
        let pages_end = (map.len() as u64).next_multiple_of(page);
        let ranges: Vec<(u64, u64)> = ops.iter().map(|op| (op.offset, op.required)).collect();
        let sched = if backwards {
            regplan::schedule_backwards(&ranges, shape.window_bytes, pages_end, page)
        } else {
            regplan::schedule(&ranges, shape.window_bytes, pages_end, page)
        };
        let mut reg_starts: Vec<u64> = sched.regs.iter().map(|g| base + g.start).collect();
        reg_starts.sort_unstable();
        let pinner = MapPinner {
            ctx: &sink.staging.ctx,
            start: base as usize,
            end: (base + pages_end) as usize,
        };
        let mut windows = MapWindows {
            sink,
            stream,
            scratch,
            file: fi,
            ops: &ops,
            ids: &ids,
            taken: vec![false; ops.len()],
            claims,
            base,
            reg_starts,
            events: Default::default(),
            stats: &mut stats,
        };
        let outcome = regplan::carry_out(
            &sched,
            base as usize,
            shape,
            &fp.path,
            &pinner,
            &mut windows,
            &mut first,
            cancelled,
            &mut copied,
        )?;
        drop(windows);
        let met = match outcome {
            regplan::FileOutcome::Refused(why) => return Ok(Registration::Refused(why)),
            regplan::FileOutcome::Met => true,
            regplan::FileOutcome::Copied => false,
        };
        drop(map);
        io::close_checked(&fp.path, open)?;
        if met {
            break;
        }
    }
    Ok(Registration::Done(stats))
}

/// Runs `plan`'s reads through the pinned slots: the I/O engine fills them, each is
/// copied (or converted) on the staging's stream.
#[allow(clippy::too_many_arguments)]
fn run_slots(
    loader: &crate::loader::Loader,
    sink: &CudaSink<'_>,
    plan: &Plan,
    claims: Option<&regplan::Claims>,
    choice: &IoChoice,
    depth: usize,
    cancel: Option<&CancelToken>,
    progress: Option<&Progress>,
) -> Result<IoStats> {
    let mut slots = SlotSink::new(sink, claims);
    let fixed = slots.fixed_buffers();
    let mut engine = loader.engine(io::new_engine(
        choice.engine,
        depth.min(sink.staging.slots.len()),
        &fixed,
    )?);
    io::execute(
        plan,
        choice,
        engine.as_mut(),
        &mut slots,
        depth,
        cancel,
        progress,
    )
}

/// A stream of the load's own, waited for and destroyed when dropped.
struct OwnStream(sys::CUstream);

impl OwnStream {
    fn new(ctx: &Context) -> Result<OwnStream> {
        ctx.bind()?;
        result::stream::create(result::stream::StreamKind::NonBlocking)
            .map(OwnStream)
            .map_err(|e| cuda_err("cuStreamCreate", e))
    }
}

impl Drop for OwnStream {
    fn drop(&mut self) {
        // SAFETY: created in `new`, destroyed once here, after its work drained.
        unsafe {
            let _ = result::stream::synchronize(self.0);
            let _ = result::stream::destroy(self.0);
        }
    }
}

/// How a split load divides its reads.
enum Division<'a> {
    /// Fixed parts ([`regplan::split_plan`]): the registered side's and the slots'.
    Fixed {
        registered: &'a Plan,
        slots: &'a Plan,
    },
    /// The whole plan, each read to the side that claims it first
    /// ([`regplan::Claims`]).
    Balanced(&'a Plan),
}

/// What a split load did: the reads' statistics, the bytes the registered side
/// copied, and, when the driver refused the first registration, why (the registered
/// side's reads then went through the slots).
struct SplitDone {
    stats: IoStats,
    registered_bytes: u64,
    refused: Option<String>,
}

/// A load of cached files split two ways at once: the pinned slots copy their reads
/// on this thread while another copies the registered side's straight from the
/// registered page cache on a stream of its own. Either side's failure stops the other.
#[allow(clippy::too_many_arguments)]
fn load_split(
    loader: &crate::loader::Loader,
    sink: &CudaSink<'_>,
    division: Division<'_>,
    choice: &IoChoice,
    depth: usize,
    shape: regplan::RegShape,
    cancel: Option<&CancelToken>,
    progress: Option<&Progress>,
) -> Result<SplitDone> {
    use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
    let (reg_plan, slot_plan, claims) = match division {
        Division::Fixed { registered, slots } => (registered, slots, None),
        Division::Balanced(plan) => (plan, plan, Some(regplan::Claims::new(plan))),
    };
    let claims = claims.as_ref();
    let total = if claims.is_some() {
        reg_plan.required_bytes()
    } else {
        reg_plan.required_bytes() + slot_plan.required_bytes()
    };
    let counts = Arc::new((AtomicU64::new(0), AtomicU64::new(0)));
    // Bytes done by the registered side and by the slots, reported as one sum.
    let tell = |reg: u64| {
        counts.0.store(reg, Relaxed);
        if let Some(p) = progress {
            p(reg + counts.1.load(Relaxed), total);
        }
    };
    let slot_progress: Option<Progress> = progress.map(|p| {
        let (p, counts) = (Arc::clone(p), Arc::clone(&counts));
        Arc::new(move |done: u64, _: u64| {
            counts.1.store(done, Relaxed);
            p(counts.0.load(Relaxed) + done, total);
        }) as Progress
    });
    let stop_reg = CancelToken::child(cancel);
    let stop_slots = CancelToken::child(cancel);
    let ctx = &sink.staging.ctx;
    let any_convert = converts(reg_plan);
    let (slots, reg) = std::thread::scope(|scope| {
        let reg = scope.spawn(|| -> Result<Registration> {
            ctx.bind()?;
            // Declared before the stream, so that it is freed after the stream drained.
            let scratch = if any_convert {
                Some(DeviceBuf::alloc(ctx, sink.staging.slot_len + SCRATCH_PAD)?)
            } else {
                None
            };
            let stream = OwnStream::new(ctx)?;
            let r = load_registered(
                sink,
                reg_plan,
                shape,
                stream.0,
                scratch.as_ref(),
                claims,
                &|| stop_reg.is_cancelled(),
                &tell,
            );
            if r.is_err() {
                stop_slots.cancel();
            }
            r
        });
        let slots = run_slots(
            loader,
            sink,
            slot_plan,
            claims,
            choice,
            depth,
            Some(&stop_slots),
            slot_progress.as_ref(),
        );
        if slots.is_err() {
            stop_reg.cancel();
        }
        let reg = reg
            .join()
            .unwrap_or_else(|_| Err(internal("the registered side panicked")));
        (slots, reg)
    });
    // A side stopped by the other's failure says Cancelled: report the failure.
    let (mut stats, reg) = match (slots, reg) {
        (Ok(s), Ok(r)) => (s, r),
        (Err(Error::Cancelled), Err(e)) | (Err(e), _) | (Ok(_), Err(e)) => return Err(e),
    };
    match reg {
        Registration::Done(r) => {
            stats.merge(&r);
            Ok(SplitDone {
                stats,
                registered_bytes: r.bytes_read,
                refused: None,
            })
        }
        Registration::Refused(why) => {
            tracing::debug!("registered page cache refused ({why}): its share through the slots");
            // What the registered side had: all its part, or the reads it claimed.
            let rest = claims.map(|c| c.registered_part(reg_plan));
            let rest = rest.as_ref().unwrap_or(reg_plan);
            // The slots' copies of the first part are done before they are refilled.
            sink.synchronize()?;
            let more = run_slots(loader, sink, rest, None, choice, depth, cancel, None)?;
            stats.merge(&more);
            tell(rest.required_bytes());
            Ok(SplitDone {
                stats,
                registered_bytes: 0,
                refused: Some(why),
            })
        }
    }
}

/// Loads `plan` onto device `ordinal`. Also returns, when the path that ran is not
/// the one `choice` names, its name and why.
#[allow(clippy::too_many_arguments)]
pub(crate) fn load(
    loader: &crate::loader::Loader,
    plan: &Plan,
    choice: &IoChoice,
    ordinal: usize,
    slots: usize,
    slot_len: u64,
    depth: usize,
    per_tensor: bool,
    staging: &StagingOptions<'_>,
    cancel: Option<&CancelToken>,
    progress: Option<&Progress>,
) -> Result<crate::loader::Loaded> {
    // Selected columns are gathered by the copies to the device (2-D copies), or on
    // request by the CPU in the pinned slots.
    let gathering = loader.host_gather_value() && gathers(plan);
    if staging.kind == StagingKind::WriteCombined && gathering {
        return Err(Error::InvalidArgument(
            "column selections gathered by the CPU in the staging, which write-combined \
             staging makes very slow to read: drop write-combined staging or the host gather"
                .into(),
        ));
    }
    let _restore = Restore::new();
    let init_start = std::time::Instant::now();
    // The caller's regions are checked before the staging is taken or pinned: a
    // refused load pins nothing and leaves the loader's kept staging as it was. The
    // context the check retains is held until the staging has its own, so that it is
    // not torn down and made again in between; the check's time (it waits for the
    // caller's queued work) is not the device's set-up.
    let mut checking = std::time::Duration::ZERO;
    let (regions, _held) = match staging.dests {
        Some(d) => {
            let kept_ctx = staging.cache.and_then(|c| {
                let kept = c.lock().unwrap_or_else(|e| e.into_inner());
                kept.as_ref()
                    .filter(|s| s.ctx.ordinal == ordinal)
                    .map(|s| Arc::clone(&s.ctx))
            });
            let ctx = match kept_ctx {
                Some(c) => c,
                None => Context::new(ordinal)?,
            };
            let check_start = std::time::Instant::now();
            let regions = check_destinations(plan, &ctx, d)?;
            checking = check_start.elapsed();
            (Some(regions), Some(ctx))
        }
        None => (None, None),
    };
    let planned = slots.max(2);
    let (kept, reused) =
        Staging::reuse_or_new(staging.cache, ordinal, planned, slot_len, staging.kind)?;
    // Kept staging serves without pinning only if it has every slot this load pins
    // (checked again when the load ends: a fallback may pin more).
    let kept_slots = kept.slots.len();
    let ctx = Arc::clone(&kept.ctx);
    let init = init_start.elapsed().saturating_sub(checking);
    // The registered path copies from the page cache, not through the slots: it pins
    // two (one's device scratch serves conversions) and the rest only if it falls back.
    let registering = choice.engine == io::EngineKind::Mmap;
    let pin = if registering { 2 } else { planned };
    let mut sink = CudaSink::new(plan, kept, pin, per_tensor, regions)?;
    sink.host_gather = gathering;
    let setup = init_start.elapsed();
    // Once everything is enqueued: waits for the stream, logs the phases, and returns
    // the tensors and the staging (to the loader, which keeps it).
    let complete = |sink: CudaSink<'_>,
                    what: &str,
                    stats: IoStats,
                    path: Option<(&'static str, String)>|
     -> Result<crate::loader::Loaded> {
        let copied = init_start.elapsed();
        sink.synchronize()?;
        let synced = init_start.elapsed();
        tracing::debug!(
            "cuda load phases ({what}): context {:.3} s, staging and device allocations {:.3} s{}, \
             reads and copies enqueued {:.3} s (of it waiting for reads {:.3} s, for a free \
             slot {:.3} s), final synchronize {:.3} s",
            init.as_secs_f64(),
            (setup - init).as_secs_f64(),
            if reused {
                " (the loader's kept staging)"
            } else {
                ""
            },
            (copied.saturating_sub(setup)).as_secs_f64(),
            stats.waiting_for_reads.as_secs_f64(),
            stats.waiting_for_buffers.as_secs_f64(),
            (synced.saturating_sub(copied)).as_secs_f64()
        );
        let tensors = tensors_of(plan, &sink)?;
        let pinned_none = reused && sink.staging.slots.len() == kept_slots;
        if let Some(cache) = staging.cache {
            *cache.lock().unwrap_or_else(|e| e.into_inner()) = Some(sink.hand_back());
        }
        Ok((tensors, stats, path, init, pinned_none))
    };
    let all_slots =
        |why: &str| format!("page-cache registration refused ({why}): all through pinned slots");
    let staging_bytes = (slots.max(1) as u64).saturating_mul(slot_len);
    let mut path = None;
    // Why the registered page cache is not used, if it is not.
    let refusal = || {
        if gathering {
            Some("column selections are gathered by the CPU in pinned slots".to_string())
        } else {
            registration_refused(&ctx)
        }
    };
    if registering {
        let shape = regplan::RegShape::new(staging_bytes, depth);
        let why = match refusal() {
            Some(why) => why,
            None => {
                let total = plan.required_bytes();
                let scratch = sink.staging.slots.first().and_then(|s| s.scratch.as_ref());
                let registered = load_registered(
                    &sink,
                    plan,
                    shape,
                    sink.staging.stream,
                    scratch,
                    None,
                    &|| cancel.is_some_and(CancelToken::is_cancelled),
                    &|done| {
                        if let Some(p) = progress {
                            p(done, total);
                        }
                    },
                )?;
                match registered {
                    Registration::Done(stats) => {
                        let how = "copies straight from the page cache, registered read-only";
                        return complete(
                            sink,
                            "registered",
                            stats,
                            Some(("mmap+registered", how.into())),
                        );
                    }
                    Registration::Refused(why) => why,
                }
            }
        };
        tracing::debug!("registered page cache refused ({why}): copying through pinned slots");
        sink.grow(planned)?;
        path = Some(("mmap", all_slots(&why)));
    }
    // Cached files with a registered share: both paths at once.
    let split = loader.split_value();
    let cached = choice.files.iter().all(|m| !m.direct);
    if !registering && split != Split::Off && !cached {
        tracing::debug!("registered share not used: not every file is in the page cache");
    }
    if !registering && split != Split::Off && cached {
        match refusal() {
            Some(why) => {
                tracing::debug!("registered page cache refused ({why}): all through pinned slots");
                path = Some((choice.path_name(0), all_slots(&why)));
            }
            None => {
                let parts;
                let division = match split {
                    Split::Share(share) => {
                        parts = regplan::split_plan(plan, share, |_| true);
                        (parts.0.required_bytes() > 0).then_some(Division::Fixed {
                            registered: &parts.0,
                            slots: &parts.1,
                        })
                    }
                    _ => Some(Division::Balanced(plan)),
                };
                if let Some(division) = division {
                    let shape = regplan::RegShape::new(staging_bytes, (depth / 4).max(1));
                    let done = load_split(
                        loader, &sink, division, choice, depth, shape, cancel, progress,
                    )?;
                    let how = match done.refused {
                        None => (
                            "split+registered",
                            format!(
                                "{:.0}% of the bytes copied straight from the registered page \
                                 cache ({} registering thread{}{}), the rest through pinned \
                                 slots ({})",
                                done.registered_bytes as f64 * 100.0
                                    / plan.required_bytes().max(1) as f64,
                                shape.threads,
                                if shape.threads == 1 { "" } else { "s" },
                                if split == Split::Balanced {
                                    ", balanced: each read to the side that reached it first"
                                } else {
                                    ""
                                },
                                choice.path_name(0)
                            ),
                        ),
                        Some(why) => (choice.path_name(0), all_slots(&why)),
                    };
                    return complete(sink, "split", done.stats, Some(how));
                }
            }
        }
    }
    let stats = run_slots(loader, &sink, plan, None, choice, depth, cancel, progress)?;
    complete(sink, choice.path_name(0), stats, path)
}

/// Whether some tensor of `plan` changes dtype (and so needs the kernels and scratch).
fn converts(plan: &Plan) -> bool {
    plan.files
        .iter()
        .flat_map(|f| &f.tensors)
        .any(|t| t.dtype != t.src_dtype)
}

/// Whether some read of `plan` holds rows of selected columns to gather.
fn gathers(plan: &Plan) -> bool {
    plan.files.iter().flat_map(|f| &f.reads).any(|r| {
        matches!(
            r.target,
            Target::Convert {
                gather: Some(_),
                ..
            }
        )
    })
}

/// The loaded tensors, as views of the sink's device buffers.
fn tensors_of(plan: &Plan, sink: &CudaSink<'_>) -> Result<BTreeMap<String, Tensor>> {
    let mut tensors = BTreeMap::new();
    for (i, f) in plan.files.iter().enumerate() {
        for (k, t) in f.tensors.iter().enumerate() {
            let own = sink.own.get(i).and_then(|o| o.get(k)).cloned().flatten();
            let (buf, offset) = match (own, t.place) {
                (Some(b), _) => (b, 0),
                (None, Place::Raw(o)) => (
                    sink.raw
                        .get(i)
                        .cloned()
                        .flatten()
                        .ok_or_else(|| internal("raw"))?,
                    o,
                ),
                (None, Place::Converted(o)) => (
                    sink.converted
                        .get(i)
                        .cloned()
                        .flatten()
                        .ok_or_else(|| internal("conv"))?,
                    o,
                ),
            };
            tensors.insert(
                t.name.clone(),
                Tensor::new_cuda(
                    t.name.clone(),
                    t.dtype,
                    t.shape.clone(),
                    buf,
                    offset as usize,
                    t.len as usize,
                ),
            );
        }
    }
    Ok(tensors)
}
