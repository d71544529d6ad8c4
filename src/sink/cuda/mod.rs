//! The CUDA sink: a ring of pinned staging slots that the I/O engine fills; each
//! filled slot is copied to the device on one stream (and, for tensors that change
//! dtype, converted there by a kernel from `kernels/`); an event recorded after the
//! slot's last copy tells when it may be refilled, so reading the next slots overlaps
//! the copies of the previous ones. The selected columns of rows read several at a time
//! go by 2-D copies, which take each row's selected bytes.
//!
//! This file is the pipeline and has no `unsafe`: every driver call is in `driver`
//! (context, buffers, streams, events, kernels) and `staging` (the slots).

mod driver;
mod regions;
mod staging;

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

pub use driver::Context;
pub use driver::DeviceBuf;
pub(crate) use driver::StagingKind;
use driver::{internal, located, Kernels, Restore};
use regions::check_destinations;
pub use regions::DeviceRegion;
pub(crate) use staging::{prepare, StagingCache};
use staging::{Slot, Staging};

use super::Landed;
use crate::error::{quoted, Error, Result};
use crate::io::{Buf, IoStats, Sink};
use crate::plan::{self, Place, Plan, ReadOp, Target};

/// Selected columns narrower than this (bytes per row) are gathered by the CPU in the
/// pinned slot rather than by a 2-D copy: the copy engine moves each row of a 2-D copy
/// as a transfer of its own, and rows of a tensor-parallel shard (a kilobyte and more)
/// are well above it.
const CPU_GATHER_BELOW: u64 = 512;

/// Extra scratch bytes, so staged bytes can be shifted to put the first converted
/// element on a 16-byte boundary (the kernels' vector path).
const SCRATCH_PAD: usize = 256;

/// What a CUDA load needs besides its plan: a plain options struct.
pub(crate) struct CudaOptions<'a> {
    /// The device.
    pub ordinal: usize,
    /// Staging slots to pin (at least 2 are).
    pub slots: usize,
    /// Bytes per slot.
    pub slot_len: u64,
    /// One device allocation per tensor rather than per file.
    pub per_tensor: bool,
    /// The loader's kept staging: reused when it has the load's shape, and the load's
    /// staging kept there afterwards. None: allocated for this load only.
    pub cache: Option<&'a StagingCache>,
    /// How to allocate the staging.
    pub kind: StagingKind,
    /// The caller's device memory for each tensor, instead of allocations of the load's.
    pub dests: Option<BTreeMap<String, DeviceRegion>>,
}

/// One CUDA load under way: its sink, and what it reports when done.
pub(crate) struct CudaLoad<'p, 'a> {
    sink: CudaSink<'p>,
    cache: Option<&'a StagingCache>,
    start: Instant,
    /// Time spent getting the context (and staging) ready: the device's set-up.
    init: Duration,
    /// Time until the sink was ready: set-up, pinning, device allocations.
    setup: Duration,
    /// The load runs on the loader's kept staging, which then had this many slots.
    reused: Option<usize>,
    /// The context the caller's regions were checked in, held until the staging has
    /// its own (so it is not torn down and made again in between).
    _held: Option<Arc<Context>>,
    /// Last: the caller's current context comes back once everything else is done.
    _restore: Restore,
}

impl<'p, 'a> CudaLoad<'p, 'a> {
    /// Checks the caller's regions (if any), takes or pins the staging, allocates the
    /// device memory, and loads the kernels the plan's conversions need.
    pub fn begin(plan: &'p Plan, opts: CudaOptions<'a>) -> Result<Self> {
        let restore = Restore::new();
        let start = Instant::now();
        // The caller's regions are checked before the staging is taken or pinned: a
        // refused load pins nothing and leaves the loader's kept staging as it was. The
        // check's time (it waits for the caller's queued work) is not the device's
        // set-up.
        let mut checking = Duration::ZERO;
        let (regions, held) = match &opts.dests {
            Some(d) => {
                let ctx = match kept_context(opts.cache, opts.ordinal) {
                    Some(c) => c,
                    None => Context::new(opts.ordinal)?,
                };
                let check_start = Instant::now();
                let regions = check_destinations(plan, &ctx, d)?;
                checking = check_start.elapsed();
                (Some(regions), Some(ctx))
            }
            None => (None, None),
        };
        let count = opts.slots.max(2);
        let (staging, reused) =
            Staging::reuse_or_new(opts.cache, opts.ordinal, count, opts.slot_len, opts.kind)?;
        let kept_slots = staging.slots.len();
        let init = start.elapsed().saturating_sub(checking);
        let sink = CudaSink::new(plan, staging, count, opts.per_tensor, regions)?;
        Ok(CudaLoad {
            sink,
            cache: opts.cache,
            start,
            init,
            setup: start.elapsed(),
            reused: reused.then_some(kept_slots),
            _held: held,
            _restore: restore,
        })
    }

    /// The pinned slots.
    pub fn slot_count(&self) -> usize {
        self.sink.staging.slots.len()
    }

    /// The sink the I/O engine reads into.
    pub fn sink(&mut self) -> &mut CudaSink<'p> {
        &mut self.sink
    }

    /// Once every read is queued (`stats`): waits for the stream, logs the phases
    /// (`path`: the I/O path), gives the staging back to the loader's cache, and hands
    /// back the device buffers, the device's set-up time, and whether the load ran on
    /// kept staging and pinned nothing.
    pub fn finish(
        self,
        stats: &IoStats,
        path: &str,
    ) -> Result<(Landed<driver::DeviceBuf>, Duration, bool)> {
        let copied = self.start.elapsed();
        let CudaSink {
            mut staging,
            landed,
            kernels,
            ..
        } = self.sink;
        if let Err(e) = staging.drain() {
            // The stream may still hold copies into the device memory: the staging
            // waits for it again as it goes, before that memory is freed.
            drop(staging);
            drop(kernels);
            drop(landed);
            return Err(e);
        }
        drop(kernels);
        let synced = self.start.elapsed();
        tracing::debug!(
            "cuda load phases ({path}): context {:.3} s, staging and device allocations {:.3} s{}, \
             reads and copies enqueued {:.3} s (of it waiting for reads {:.3} s, for a free \
             slot {:.3} s), final synchronize {:.3} s",
            self.init.as_secs_f64(),
            (self.setup.saturating_sub(self.init)).as_secs_f64(),
            if self.reused.is_some() {
                " (the loader's kept staging)"
            } else {
                ""
            },
            (copied.saturating_sub(self.setup)).as_secs_f64(),
            stats.waiting_for_reads.as_secs_f64(),
            stats.waiting_for_buffers.as_secs_f64(),
            (synced.saturating_sub(copied)).as_secs_f64()
        );
        let pinned_none = self.reused == Some(staging.slots.len());
        if let Some(cache) = self.cache {
            *cache.lock().unwrap_or_else(|e| e.into_inner()) = Some(staging);
        }
        Ok((landed, self.init, pinned_none))
    }
}

/// The context of the loader's kept staging, when it is of device `ordinal`.
fn kept_context(cache: Option<&StagingCache>, ordinal: usize) -> Option<Arc<Context>> {
    let cache = cache?;
    let kept = cache.lock().unwrap_or_else(|e| e.into_inner());
    kept.as_ref()
        .filter(|s| s.ctx.ordinal == ordinal)
        .map(|s| Arc::clone(&s.ctx))
}

/// The device memory of a load: per file the raw buffer and the converted area, or
/// per tensor its own allocation (or the caller's region).
fn device_buffers(
    plan: &Plan,
    ctx: &Arc<Context>,
    per_tensor: bool,
    regions: Option<Vec<Vec<DeviceRegion>>>,
) -> Result<Landed<DeviceBuf>> {
    let mut landed = Landed {
        raw: Vec::new(),
        converted: Vec::new(),
        own: Vec::new(),
    };
    if let Some(regions) = regions {
        for regions in regions {
            landed.raw.push(None);
            landed.converted.push(None);
            landed.own.push(
                regions
                    .into_iter()
                    .map(|r| Some(Arc::new(DeviceBuf::borrowed(ctx, r.ptr, r.len))))
                    .collect(),
            );
        }
        return Ok(landed);
    }
    // A failed allocation names the file (and the tensor, one per tensor).
    for f in &plan.files {
        if per_tensor {
            landed.raw.push(None);
            landed.converted.push(None);
            let bufs = f
                .tensors
                .iter()
                .map(|t| {
                    DeviceBuf::alloc(ctx, t.len as usize)
                        .map(|b| Some(Arc::new(b)))
                        .map_err(|e| {
                            located(
                                e,
                                format_args!("{}: tensor {}", f.path.display(), quoted(&t.name)),
                            )
                        })
                })
                .collect::<Result<Vec<_>>>()?;
            landed.own.push(bufs);
        } else {
            let alloc = |len: u64| {
                DeviceBuf::alloc(ctx, len as usize)
                    .map(|b| Some(Arc::new(b)))
                    .map_err(|e| located(e, f.path.display()))
            };
            landed.raw.push(alloc(f.raw_len)?);
            landed.converted.push(alloc(f.converted_len)?);
            landed.own.push(Vec::new());
        }
    }
    Ok(landed)
}

/// Pinned staging, the kernels and the destinations of one load; the I/O engine
/// fills the slots, and each filled slot is copied (or converted) on the stream.
pub(crate) struct CudaSink<'p> {
    /// First, so that on a failed load it is dropped (its stream waited for) before the
    /// kernels and the device memory its queued work uses.
    staging: Staging,
    kernels: Option<Kernels>,
    landed: Landed<DeviceBuf>,
    plan: &'p Plan,
    /// Per slot: lent to a read, or holding one whose copies may still run.
    busy: Vec<bool>,
    /// Busy slots whose copies are queued, oldest first.
    order: VecDeque<usize>,
}

impl<'p> CudaSink<'p> {
    /// A sink copying through `staging`, pinned up to `count` slots first (a kept
    /// staging already has them); the device memory is allocated on another thread
    /// meanwhile.
    fn new(
        plan: &'p Plan,
        mut staging: Staging,
        count: usize,
        per_tensor: bool,
        regions: Option<Vec<Vec<DeviceRegion>>>,
    ) -> Result<Self> {
        let ctx = Arc::clone(&staging.ctx);
        let (landed, pinned) = std::thread::scope(|scope| {
            let device = std::thread::Builder::new()
                .name("tensorstream-alloc".into())
                .spawn_scoped(scope, || device_buffers(plan, &ctx, per_tensor, regions));
            let pinned = staging.fill(count);
            let landed = match device {
                Ok(handle) => handle
                    .join()
                    .unwrap_or_else(|_| Err(internal("the device allocation thread panicked"))),
                Err(source) => Err(Error::Io {
                    path: plan
                        .files
                        .first()
                        .map(|f| f.path.clone())
                        .unwrap_or_default(),
                    op: "starting the device allocation thread",
                    source,
                }),
            };
            (landed, pinned)
        });
        pinned?;
        let landed = landed?;
        ctx.bind()?;
        let pairs: Vec<_> = plan
            .files
            .iter()
            .flat_map(|f| &f.tensors)
            .filter(|t| t.dtype != t.src_dtype)
            .map(|t| (t.src_dtype, t.dtype))
            .collect();
        let kernels = if pairs.is_empty() {
            None
        } else {
            let len = staging.slot_len + SCRATCH_PAD;
            for s in &mut staging.slots {
                if s.scratch.is_none() {
                    s.scratch = Some(DeviceBuf::alloc(&ctx, len)?);
                }
            }
            Some(Kernels::load(&ctx, &pairs)?)
        };
        let busy = vec![false; staging.slots.len()];
        Ok(CudaSink {
            staging,
            kernels,
            landed,
            plan,
            busy,
            order: VecDeque::new(),
        })
    }

    /// The device buffer and offset where converted tensor `tensor` of file `file`,
    /// planned at `place`, lands.
    fn converted_at(&self, file: usize, tensor: usize, place: Place) -> Result<(&DeviceBuf, u64)> {
        self.landed
            .buffer_of(file, tensor, place)
            .map(|(b, at)| (b.as_ref(), at))
            .ok_or_else(|| internal("converted area"))
    }

    /// Queues the copies of the required bytes of raw read `op`, held in `slot`, to
    /// their place on the device.
    fn raw_copy(&self, slot: &Slot, file: usize, op: &ReadOp, dest: u64) -> Result<()> {
        let stream = self.staging.stream()?;
        if let Some(buf) = self.landed.raw.get(file).and_then(Option::as_ref) {
            return slot.copy_to(stream, 0, op.required, buf, dest);
        }
        // Per-tensor memory: copy each tensor's part of this read to its buffer.
        let fp = self.plan.files.get(file).ok_or_else(|| internal("file"))?;
        let own = self.landed.own.get(file).ok_or_else(|| internal("file"))?;
        let (r0, r1) = (op.offset, op.offset + op.required);
        for (t, b) in fp.tensors.iter().zip(own) {
            let (Place::Raw(_), Some(b)) = (t.place, b) else {
                continue;
            };
            let (t0, t1) = (t.file_offset, t.file_offset + t.src_len);
            let (s, e) = (t0.max(r0), t1.min(r1));
            if s < e {
                slot.copy_to(stream, s - r0, e - s, b, s - t0)?;
            }
        }
        Ok(())
    }

    /// Queues what read `op` of file `file`, held in slot `i`, is for: a copy to the
    /// destination, or a copy to the slot's scratch and the conversion kernel from
    /// there. A driver error names the file, the bytes and the tensor(s) concerned.
    fn consume(&mut self, i: usize, file: usize, op: &ReadOp) -> Result<()> {
        let mut op = *op;
        // Narrow rows of selected columns are cheap for the CPU to move together and
        // costly for the copy engine to take one by one (not in write-combined
        // staging, which the CPU must not read).
        if let Target::Convert {
            skip,
            gather: Some(g),
            ..
        } = op.target
        {
            if g.keep < CPU_GATHER_BELOW && self.staging.kind != StagingKind::WriteCombined {
                let slot = self
                    .staging
                    .slots
                    .get_mut(i)
                    .ok_or_else(|| internal("slot"))?;
                plan::gather_in_place(slot.bytes_mut()?, skip, &g)
                    .map_err(|e| self.at_read(file, &op, e))?;
                if let Target::Convert { gather, .. } = &mut op.target {
                    *gather = None;
                }
            }
        }
        let slot = self.staging.slots.get(i).ok_or_else(|| internal("slot"))?;
        self.enqueue(slot, file, &op)
            .map_err(|e| self.at_read(file, &op, e))
    }

    /// [`CudaSink::consume`]'s copies and kernel for `op`, held in `slot`.
    fn enqueue(&self, slot: &Slot, file: usize, op: &ReadOp) -> Result<()> {
        let stream = self.staging.stream()?;
        let Target::Convert {
            tensor,
            first,
            count,
            skip,
            gather,
        } = op.target
        else {
            let Target::Raw { dest } = op.target else {
                return Err(internal("target"));
            };
            return self.raw_copy(slot, file, op, dest);
        };
        let fp = self.plan.files.get(file).ok_or_else(|| internal("file"))?;
        let t = fp.tensors.get(tensor).ok_or_else(|| internal("tensor"))?;
        let out_size = t.dtype.bits() / 8;
        let (out, base) = self.converted_at(file, tensor, t.place)?;
        let out_at = base + first * out_size;
        let packed = count * (t.src_dtype.bits() / 8);
        // The destination (perhaps the caller's memory) holds exactly t.len.
        if (first + count) * out_size > t.len {
            return Err(internal("elements past the tensor"));
        }
        let scratch = || slot.scratch.as_ref().ok_or_else(|| internal("scratch"));
        let kernel = |input: &DeviceBuf, at: u64| -> Result<()> {
            let kernels = self.kernels.as_ref().ok_or_else(|| internal("kernels"))?;
            kernels.launch(
                stream,
                (t.src_dtype, t.dtype),
                (input, at),
                (out, out_at),
                count,
            )?;
            // The scratch is reused once the slot's event says the kernel has run.
            slot.record(stream)
        };
        if let Some(g) = gather {
            // Rows of selected columns: the copy engine gathers them, straight to
            // their place or into the scratch to convert.
            if g.rows.checked_mul(g.keep) != Some(packed) || g.keep > g.stride {
                return Err(internal("gathered rows unlike their elements"));
            }
            let shape = (g.stride, g.keep, g.rows);
            if t.dtype == t.src_dtype {
                return slot.copy_rows_to(stream, skip, shape, out, out_at);
            }
            let scratch = scratch()?;
            slot.copy_rows_to(stream, skip, shape, scratch, 0)?;
            return kernel(scratch, 0);
        }
        // Up to the last element.
        let needed = skip + packed;
        if needed > op.required {
            return Err(internal("elements past the read"));
        }
        if t.dtype == t.src_dtype {
            // Selected columns, not converted: straight to their place.
            return slot.copy_to(stream, skip, needed - skip, out, out_at);
        }
        // Shifted so that the first element sits on a 16-byte boundary.
        let pad = (16 - skip % 16) % 16;
        let scratch = scratch()?;
        slot.copy_to(stream, 0, needed, scratch, pad)?;
        kernel(scratch, pad + skip)
    }

    /// Error `e` with the file, byte range and tensor(s) of read `op` in front.
    fn at_read(&self, file: usize, op: &ReadOp, e: Error) -> Error {
        match self.where_read(file, op) {
            Some(place) => located(e, place),
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
                "{}: bytes {}..{r1}, tensor {}",
                fp.path.display(),
                r0 + skip,
                quoted(&t.name)
            ));
        }
        let mut names = fp
            .tensors
            .iter()
            .filter(|t| t.file_offset < r1 && r0 < t.file_offset + t.src_len)
            .map(|t| quoted(&t.name));
        let tensors = match (names.next(), names.count()) {
            (None, _) => String::new(),
            (Some(n), 0) => format!(", tensor {n}"),
            (Some(n), more) => format!(", tensor {n} and {more} more"),
        };
        Some(format!("{}: bytes {r0}..{r1}{tensors}", fp.path.display()))
    }
}

impl Sink for CudaSink<'_> {
    fn buffer(&mut self, _file: usize, op: &ReadOp) -> Result<Option<Buf>> {
        let slots = &self.staging.slots;
        // Recycle slots whose copies have finished, oldest first.
        while let Some(&i) = self.order.front() {
            if !slots.get(i).is_some_and(Slot::idle) {
                break;
            }
            self.order.pop_front();
            if let Some(b) = self.busy.get_mut(i) {
                *b = false;
            }
        }
        let Some(i) = self.busy.iter().position(|b| !b) else {
            return Ok(None);
        };
        let (Some(s), Some(b)) = (slots.get(i), self.busy.get_mut(i)) else {
            return Err(internal("slot"));
        };
        if (op.len as usize) > s.len() {
            return Err(internal("read larger than a staging slot"));
        }
        let ptr = s
            .lend()
            .ok_or_else(|| internal("a staging slot lent while a copy reads it"))?;
        *b = true;
        Ok(Some(Buf {
            ptr,
            len: s.len(),
            fixed: u16::try_from(i).ok(),
            fresh: false,
        }))
    }

    fn complete(&mut self, file: usize, op: &ReadOp, buf: Buf) -> Result<()> {
        let i = self
            .staging
            .slots
            .iter()
            .position(|s| s.holds(buf.ptr))
            .ok_or_else(|| internal("unknown staging slot"))?;
        self.consume(i, file, op)?;
        self.order.push_back(i);
        Ok(())
    }

    fn wait_for_slot(&mut self) -> Result<()> {
        if let Some(i) = self.order.pop_front() {
            if let Some(s) = self.staging.slots.get(i) {
                s.wait()?;
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
        self.staging
            .slots
            .iter()
            .filter_map(|s| s.lend().map(|p| (p, s.len())))
            .collect()
    }
}
