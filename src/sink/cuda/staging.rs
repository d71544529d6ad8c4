//! Pinned staging: the slots the I/O engine fills and the stream that copies out of
//! them, kept by a `Loader` between loads. A slot lends its memory for a read only once
//! the copies out of it have run (its event), and every copy out of it checks its range
//! and records that event.

use std::sync::Arc;

use super::driver::{
    internal, transparent_huge_pages, Context, DeviceBuf, Event, HostMem, Restore, StagingKind,
    Stream,
};
use crate::error::{Error, Result};
use crate::sink::host_mem::to_usize;

/// One staging slot: pinned host memory, the event recorded after the last copy out of
/// it, and the device scratch a conversion copies into.
pub(crate) struct Slot {
    mem: HostMem,
    len: usize,
    event: Event,
    /// Device scratch for conversions (allocated only when some tensor converts).
    pub scratch: Option<DeviceBuf>,
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
        let event = match Event::new() {
            Ok(ev) => ev,
            Err(e) => {
                mem.free();
                return Err(e);
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
        self.event.destroy();
        self.mem.free();
    }

    /// Length in bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// The slot's memory, for a read to fill, once every copy out of it has run;
    /// `None` while one may still be running.
    pub fn lend(&self) -> Option<*mut u8> {
        self.event.done().then_some(self.mem.host)
    }

    /// Whether `ptr` is this slot's memory.
    pub fn holds(&self, ptr: *mut u8) -> bool {
        self.mem.host == ptr
    }

    /// Whether the copies out of the slot have run.
    pub fn idle(&self) -> bool {
        self.event.done()
    }

    /// Waits until the copies out of the slot have run.
    pub fn wait(&self) -> Result<()> {
        self.event.synchronize()
    }

    /// Records the slot's event after the work queued on `stream` so far (a kernel
    /// reading the slot's scratch).
    pub fn record(&self, stream: &Stream) -> Result<()> {
        self.event.record(stream)
    }

    /// The slot's bytes, to rearrange in place once its read has landed; an error
    /// while a copy out of it may still run.
    pub fn bytes_mut(&mut self) -> Result<&mut [u8]> {
        if !self.event.done() {
            return Err(internal("a staging slot written while a copy reads it"));
        }
        // SAFETY: the slot owns `len` bytes of pinned memory at `host`; no copy reads
        // them (the event says the last one has run, and new ones need `&self`, which
        // this borrow excludes); the read that filled them has completed (the sink
        // calls this from `Sink::complete`).
        Ok(unsafe { std::slice::from_raw_parts_mut(self.mem.host, self.len) })
    }

    /// Queues on `stream` the copy of bytes `[at, at + len)` of the slot to byte
    /// `dst_at` of `dst`, then records the slot's event.
    pub fn copy_to(
        &self,
        stream: &Stream,
        at: u64,
        len: u64,
        dst: &DeviceBuf,
        dst_at: u64,
    ) -> Result<()> {
        let to = dst.addr(dst_at, len)?;
        let from = self.at(at, len)?;
        // SAFETY: both ranges checked; the slot's pinned memory stays allocated until
        // the staging is freed, which waits for the stream first, and is lent for the
        // next read only once the event recorded below has run.
        unsafe { stream.htod(to, from, len as usize) }?;
        self.event.record(stream)
    }

    /// Queues on `stream` the copy of `rows` rows of `width` bytes, `pitch` bytes
    /// apart from byte `at` of the slot, to byte `dst_at` of `dst` back to back, then
    /// records the slot's event.
    pub fn copy_rows_to(
        &self,
        stream: &Stream,
        at: u64,
        (pitch, width, rows): (u64, u64, u64),
        dst: &DeviceBuf,
        dst_at: u64,
    ) -> Result<()> {
        if rows == 0 || width == 0 {
            return Ok(());
        }
        let span = (rows - 1)
            .checked_mul(pitch)
            .and_then(|x| x.checked_add(width))
            .ok_or_else(|| internal("rows size"))?;
        let packed = rows
            .checked_mul(width)
            .ok_or_else(|| internal("rows size"))?;
        let to = dst.addr(dst_at, packed)?;
        let from = self.at(at, span)?;
        if width > pitch {
            return Err(internal("rows wider than their pitch"));
        }
        let n = |x: u64| usize::try_from(x).map_err(|_| internal("rows size"));
        if rows == 1 || pitch == width {
            // SAFETY: as in `copy_to`: the rows lie back to back in the checked range.
            unsafe { stream.htod(to, from, n(packed)?) }?;
        } else {
            // SAFETY: as in `copy_to`, for the checked source span and destination.
            unsafe { stream.htod_rows(to, from, (n(pitch)?, n(width)?, n(rows)?)) }?;
        }
        self.event.record(stream)
    }

    /// The address of bytes `[at, at + len)` of the slot, checked.
    fn at(&self, at: u64, len: u64) -> Result<*const u8> {
        match at.checked_add(len) {
            Some(end) if end <= self.len as u64 => {
                // SAFETY: at < len of the slot's memory (checked), so the pointer stays
                // inside its allocation.
                Ok(unsafe { self.mem.host.add(at as usize) })
            }
            _ => Err(internal("a copy past a staging slot")),
        }
    }
}

/// Pinned staging slots and the stream that copies out of them, as a [`Loader`] keeps
/// them between loads: a server pins its staging (and holds the device's context)
/// once, not per load. Freed when dropped.
///
/// [`Loader`]: crate::Loader
pub(crate) struct Staging {
    pub(crate) ctx: Arc<Context>,
    /// None only while dropping.
    stream: Option<Stream>,
    pub(crate) slots: Vec<Slot>,
    pub(crate) slot_len: usize,
    /// How the slots are allocated.
    pub(crate) kind: StagingKind,
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
    /// The stream the slots' copies run on.
    pub(crate) fn stream(&self) -> Result<&Stream> {
        self.stream
            .as_ref()
            .ok_or_else(|| internal("staging without a stream"))
    }

    /// Waits for the stream, then drops every slot's device scratch (a conversion's).
    pub(crate) fn drain(&mut self) -> Result<()> {
        self.stream()?.synchronize()?;
        for s in &mut self.slots {
            s.scratch = None;
        }
        Ok(())
    }

    /// A stream on `ctx` and no slots yet.
    fn new(ctx: Arc<Context>, slot_len: usize, kind: StagingKind) -> Result<Staging> {
        let huge_refused = kind == StagingKind::Default && !transparent_huge_pages();
        if huge_refused {
            tracing::debug!("no transparent huge pages here: pinning staging with cuMemHostAlloc");
        }
        let stream = Some(Stream::new(&ctx)?);
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
    pub(crate) fn fill(&mut self, count: usize) -> Result<()> {
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
    pub(crate) fn reuse_or_new(
        cache: Option<&StagingCache>,
        ordinal: usize,
        count: usize,
        slot_len: u64,
        kind: StagingKind,
    ) -> Result<(Staging, bool)> {
        let slot_len = to_usize(slot_len)?;
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
    /// Waits for the stream, then frees the slots and destroys the stream.
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
        if let Some(stream) = &self.stream {
            let _ = stream.synchronize();
        }
        for s in self.slots.drain(..) {
            s.free();
        }
        if let Some(stream) = self.stream.take() {
            stream.destroy();
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
