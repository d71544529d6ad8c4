//! The CUDA driver layer: every `unsafe` driver call of the CUDA sink, behind safe
//! types (as cudarc layers sys → result → safe). `Context` (a retained primary
//! context), `DeviceBuf` (device memory), `HostMem` (pinned host memory), `Stream`,
//! `Event` and `Kernels` (the conversion kernels); driver errors in words; the checks
//! of a caller's device region. Copies and launches check their ranges against the
//! buffers they name.
//!
//! Only the NVIDIA driver is needed at run time: the driver library is loaded
//! dynamically (probed first, so a machine without it gets an error, not a panic) and
//! the kernels ship as PTX generated for the oldest supported driver.

use std::collections::BTreeMap;
use std::ffi::{c_void, CString};
use std::sync::Arc;

use cudarc::driver::{result, sys};

use crate::convert;
use crate::dtype::Dtype;
use crate::error::{Error, Result};

/// The conversion kernels, as PTX for the oldest supported driver.
const PTX: &str = include_str!("../../../kernels/convert.ptx");

/// An inconsistency between the plan and the sink: a bug, reported rather than a panic.
pub(crate) fn internal(what: &str) -> Error {
    Error::Cuda(format!("internal: {what}"))
}

/// Driver error `e` (not an internal one) with `place` (a file, and where in it)
/// in front; any other error as it is.
pub(crate) fn located(e: Error, place: impl std::fmt::Display) -> Error {
    match e {
        Error::Cuda(msg) if !msg.starts_with("internal:") => Error::Cuda(format!("{place}: {msg}")),
        e => e,
    }
}

/// `what` failed with driver error `e`.
pub(crate) fn cuda_err(what: impl std::fmt::Display, e: result::DriverError) -> Error {
    Error::Cuda(format!("{what}: {}", words(e)))
}

/// Driver error `e` in words: its name and the driver's description of it, and for
/// a device fault, what that means.
pub(crate) fn words(e: result::DriverError) -> String {
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
pub(crate) struct Restore(Option<sys::CUcontext>);

impl Restore {
    pub fn new() -> Restore {
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
    pub(crate) ordinal: usize,
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

    /// Waits for all work queued in this context (made current), on any stream.
    pub(crate) fn synchronize(&self) -> Result<()> {
        self.bind()?;
        result::ctx::synchronize().map_err(|e| {
            cuda_err(
                "waiting for the device's earlier work before loading into the caller's memory \
                 (cuCtxSynchronize)",
                e,
            )
        })
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
    pub(crate) ptr: sys::CUdeviceptr,
    pub(crate) len: usize,
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
    pub(crate) fn alloc(ctx: &Arc<Context>, len: usize) -> Result<DeviceBuf> {
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

    /// A view of the caller's device memory `[ptr, ptr + len)` (checked by
    /// `check_destinations`), never freed here.
    pub(crate) fn borrowed(ctx: &Arc<Context>, ptr: u64, len: usize) -> DeviceBuf {
        DeviceBuf {
            ptr,
            len,
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
pub(crate) fn transparent_huge_pages() -> bool {
    std::fs::read_to_string("/sys/kernel/mm/transparent_hugepage/enabled")
        .is_ok_and(|s| s.contains("[always]") || s.contains("[madvise]"))
}

/// Pinned host memory of one slot.
pub(crate) struct HostMem {
    pub host: *mut u8,
    /// For huge-page staging: the mapping `host` lies in (aligned to a huge page).
    map: Option<crate::sink::host_mem::Region>,
}

impl HostMem {
    /// `len` bytes of pinned host memory of `kind`. The context must be current.
    pub fn alloc(len: usize, kind: StagingKind) -> Result<HostMem> {
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

    pub fn huge(len: usize) -> Result<HostMem> {
        let map_len = len
            .checked_add(HUGE_PAGE)
            .ok_or_else(|| internal("staging size"))?;
        let region = crate::sink::host_mem::Region::for_len(map_len)?;
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
    pub fn leak(self) {
        if let Some(region) = self.map {
            std::mem::forget(region);
        }
    }

    /// Frees the memory. The context must be current and no copy may still read it.
    pub fn free(self) {
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
pub(crate) fn check_region(
    ctx: &Context,
    first: u64,
    last: u64,
) -> std::result::Result<(), String> {
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

impl DeviceBuf {
    /// The device address of bytes `[at, at + len)` of this buffer, or an internal
    /// error when they do not lie inside it.
    pub(crate) fn addr(&self, at: u64, len: u64) -> Result<u64> {
        match at.checked_add(len) {
            Some(end) if end <= self.len as u64 => Ok(self.ptr + at),
            _ => Err(internal("a copy or kernel past a device buffer")),
        }
    }
}

/// A non-blocking stream: a load's copies and kernels run on it in order.
pub(crate) struct Stream(sys::CUstream);

impl Stream {
    /// A new stream on `ctx` (made current).
    pub fn new(ctx: &Context) -> Result<Stream> {
        ctx.bind()?;
        result::stream::create(result::stream::StreamKind::NonBlocking)
            .map(Stream)
            .map_err(|e| cuda_err("cuStreamCreate", e))
    }

    /// Waits until everything queued on the stream has run.
    pub fn synchronize(&self) -> Result<()> {
        // SAFETY: the stream is live until `destroy`.
        unsafe { result::stream::synchronize(self.0) }.map_err(|e| {
            cuda_err(
                "waiting for the copies to the device (cuStreamSynchronize)",
                e,
            )
        })
    }

    /// Waits for the stream, then destroys it. Its context must be current.
    pub fn destroy(self) {
        // SAFETY: live until now; waited for, then destroyed once (consumed).
        unsafe {
            let _ = result::stream::synchronize(self.0);
            let _ = result::stream::destroy(self.0);
        }
    }

    /// Copies `len` bytes of host memory at `src` to device address `dst`.
    ///
    /// # Safety
    ///
    /// 1. `[src, src + len)` is pinned (page-locked) host memory that stays allocated
    ///    and unwritten until an event recorded on this stream after the copy completes;
    /// 2. `[dst, dst + len)` lies in live device memory of the stream's context.
    pub unsafe fn htod(&self, dst: u64, src: *const u8, len: usize) -> Result<()> {
        if len == 0 {
            return Ok(());
        }
        // SAFETY: the caller's contract; the stream is live.
        unsafe { sys::cuMemcpyHtoDAsync_v2(dst, src.cast::<c_void>(), len, self.0) }
            .result()
            .map_err(|e| cuda_err("cuMemcpyHtoDAsync", e))
    }

    /// Copies `rows` rows of `width` bytes, `pitch` bytes apart from `src`, to `dst`
    /// back to back (one `cuMemcpy2DAsync`): the selected columns of a read.
    ///
    /// # Safety
    ///
    /// As [`Stream::htod`], for the `(rows - 1) * pitch + width` bytes at `src` and the
    /// `rows * width` bytes at `dst`.
    pub unsafe fn htod_rows(
        &self,
        dst: u64,
        src: *const u8,
        (pitch, width, rows): (usize, usize, usize),
    ) -> Result<()> {
        let copy = sys::CUDA_MEMCPY2D {
            srcXInBytes: 0,
            srcY: 0,
            srcMemoryType: sys::CUmemorytype::CU_MEMORYTYPE_HOST,
            srcHost: src.cast::<c_void>(),
            srcDevice: 0,
            srcArray: std::ptr::null_mut(),
            srcPitch: pitch,
            dstXInBytes: 0,
            dstY: 0,
            dstMemoryType: sys::CUmemorytype::CU_MEMORYTYPE_DEVICE,
            dstHost: std::ptr::null_mut(),
            dstDevice: dst,
            dstArray: std::ptr::null_mut(),
            dstPitch: width,
            WidthInBytes: width,
            Height: rows,
        };
        // SAFETY: the caller's contract; the descriptor lives until the call returns
        // (the driver copies it); the stream is live.
        unsafe { sys::cuMemcpy2DAsync_v2(&copy, self.0) }
            .result()
            .map_err(|e| cuda_err("cuMemcpy2DAsync (selected columns)", e))
    }
}

/// An event that tells when the work queued before it on a stream has run.
pub(crate) struct Event(sys::CUevent);

impl Event {
    /// A new event (timing off). A context must be current.
    pub fn new() -> Result<Event> {
        result::event::create(sys::CUevent_flags::CU_EVENT_DISABLE_TIMING)
            .map(Event)
            .map_err(|e| cuda_err("cuEventCreate", e))
    }

    /// Records the event after the work queued on `stream` so far.
    pub fn record(&self, stream: &Stream) -> Result<()> {
        // SAFETY: event and stream are live.
        unsafe { result::event::record(self.0, stream.0) }.map_err(|e| cuda_err("cuEventRecord", e))
    }

    /// Whether the work before the last record has run (or none was recorded).
    pub fn done(&self) -> bool {
        // SAFETY: the event is live.
        unsafe { result::event::query(self.0) }.is_ok()
    }

    /// Waits until the work before the last record has run.
    pub fn synchronize(&self) -> Result<()> {
        // SAFETY: the event is live.
        unsafe { result::event::synchronize(self.0) }
            .map_err(|e| cuda_err("waiting for a staging slot's copy (cuEventSynchronize)", e))
    }

    /// Destroys the event. Its context must be current.
    pub fn destroy(self) {
        // SAFETY: created in `new`, destroyed once here (consumed).
        let _ = unsafe { result::event::destroy(self.0) };
    }
}

/// The conversion kernels a load needs, from the PTX module (unloaded when dropped).
pub(crate) struct Kernels {
    ctx: Arc<Context>,
    module: sys::CUmodule,
    functions: BTreeMap<(Dtype, Dtype), sys::CUfunction>,
}

impl Kernels {
    /// Loads the module on `ctx` and the kernels converting each pair of `pairs`.
    pub fn load(ctx: &Arc<Context>, pairs: &[(Dtype, Dtype)]) -> Result<Kernels> {
        ctx.bind()?;
        // The PTX targets sm_80 (it uses Ampere's conversion instructions): an older
        // GPU cannot JIT it, and the driver's error would not say why.
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
        let mut kernels = Kernels {
            ctx: Arc::clone(ctx),
            module,
            functions: BTreeMap::new(),
        };
        for &(src, dst) in pairs {
            if kernels.functions.contains_key(&(src, dst)) {
                continue;
            }
            let name = convert::kernel_name(src, dst)
                .ok_or_else(|| Error::Cuda(format!("no kernel converts {src} to {dst}")))?;
            let cname = CString::new(name).map_err(|_| Error::Cuda("kernel name".into()))?;
            // SAFETY: the module is loaded, and unloaded only in Drop.
            let func = unsafe { result::module::get_function(module, cname) }
                .map_err(|e| cuda_err(format_args!("kernel {name}"), e))?;
            kernels.functions.insert((src, dst), func);
        }
        Ok(kernels)
    }

    /// Queues on `stream` the conversion of `n` elements of `src` at byte `at` of
    /// `input` to `dst` at byte `out_at` of `output`; both ranges are checked.
    pub fn launch(
        &self,
        stream: &Stream,
        (src, dst): (Dtype, Dtype),
        (input, at): (&DeviceBuf, u64),
        (output, out_at): (&DeviceBuf, u64),
        n: u64,
    ) -> Result<()> {
        let func = *self
            .functions
            .get(&(src, dst))
            .ok_or_else(|| Error::Cuda(format!("no kernel for {src} -> {dst}")))?;
        let bytes = |d: Dtype| {
            n.checked_mul(d.bits() / 8)
                .ok_or_else(|| internal("kernel size"))
        };
        let mut a = input.addr(at, bytes(src)?)?;
        let mut b = output.addr(out_at, bytes(dst)?)?;
        let mut c = n;
        let threads = 256u64;
        // Each thread converts groups of 8 elements (grid-stride beyond that).
        let blocks = n.div_ceil(threads * 8).clamp(1, 65_535) as u32;
        let mut params: [*mut c_void; 3] = [
            (&mut a as *mut u64).cast(),
            (&mut b as *mut u64).cast(),
            (&mut c as *mut u64).cast(),
        ];
        // SAFETY: func comes from the loaded module; its parameters are
        // (const u8*, u8*, u64) matching a, b, c, which live until the call returns
        // (the driver copies parameter values at launch); the input and output ranges
        // lie in live device buffers (checked above).
        unsafe {
            result::launch_kernel(
                func,
                (blocks, 1, 1),
                (threads as u32, 1, 1),
                0,
                stream.0,
                &mut params,
            )
        }
        .map_err(|e| cuda_err(format_args!("launching convert {src} -> {dst}"), e))
    }
}

impl Drop for Kernels {
    fn drop(&mut self) {
        if self.ctx.bind().is_ok() {
            // SAFETY: loaded in `load`, unloaded once here; the loads that launch from
            // it wait for their stream before dropping it.
            let _ = unsafe { result::module::unload(self.module) };
        }
    }
}
