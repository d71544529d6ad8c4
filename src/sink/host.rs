//! The host sinks: a load into new host memory (`HostSink`) and into the caller's own
//! (`CallerSink`). Raw tensor bytes are read straight into their final place; tensors
//! that need a conversion or a column gather go through a small ring of staging slots,
//! placed by a pool of threads beside the reads.

use std::sync::Arc;

use super::host_mem::{to_usize, HostBuf, HostPool};
use super::placer::{Done, Job, Placer, Work};
use super::Landed;
use crate::error::{Error, Result};
use crate::io::{Buf, Sink};
use crate::plan::{Place, Plan, ReadOp, Target};

/// Staging slots whose reads a [`Placer`] copies or converts into place: which are
/// free, which hold a read in flight.
struct Staged {
    /// First, so that it is dropped (its threads done with the slots and the
    /// destinations) before them.
    placer: Placer,
    slots: Vec<HostBuf>,
    free: Vec<usize>,
    /// Which slot each in-flight staged read uses, by buffer address.
    busy: Vec<(*mut u8, usize)>,
}

/// Threads that place staged reads: a load's conversions and staged copies run on
/// them, beside the reads (at most 8).
fn placing_threads() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get().min(8))
}

impl Staged {
    /// `n` slots of `slot_len` bytes, placed by a pool of no more threads than slots
    /// (started only if a read is staged).
    fn new(n: usize, slot_len: u64) -> Result<Staged> {
        let slots = (0..n)
            .map(|_| HostBuf::zeroed(to_usize(slot_len)?))
            .collect::<Result<Vec<_>>>()?;
        Ok(Staged {
            placer: Placer::new(placing_threads().min(n)),
            free: (0..slots.len()).collect(),
            slots,
            busy: Vec::new(),
        })
    }

    /// A slot's memory for a read of `len` bytes, once the placed reads' slots are
    /// back; `None` when every slot is busy.
    fn take(&mut self, plan: &Plan, len: u64) -> Result<Option<Buf>> {
        while let Some(d) = self.placer.try_done() {
            self.placed(plan, d)?;
        }
        let Some(i) = self.free.pop() else {
            return Ok(None);
        };
        let slot = self.slots.get_mut(i).ok_or_else(|| bad("slot"))?;
        let ptr = slot.ptr_at(0, len)?;
        self.busy.push((ptr, i));
        Ok(Some(Buf {
            ptr,
            len: to_usize(len)?,
            fixed: u16::try_from(i).ok(),
            fresh: false,
        }))
    }

    /// The slot a completed read at `ptr` used, if it was staged.
    fn finished(&mut self, ptr: *mut u8) -> Option<usize> {
        let pos = self.busy.iter().position(|&(p, _)| p == ptr)?;
        Some(self.busy.swap_remove(pos).1)
    }

    /// Hands slot `slot`'s read `op` of file `file` to the placer with `work`, or,
    /// when `work` could not be made, frees the slot and gives the error.
    fn place(
        &mut self,
        plan: &Plan,
        file: usize,
        op: &ReadOp,
        slot: usize,
        work: Result<Vec<Work>>,
    ) -> Result<()> {
        let staged = self.slots.get(slot).map(|s| (s.base_ptr(), s.len()));
        match (work, staged) {
            (Ok(work), Some((staged, staged_len))) => {
                self.placer.submit(Job {
                    file,
                    op: *op,
                    slot,
                    staged,
                    staged_len,
                    work,
                });
                Ok(())
            }
            (Err(e), _) => {
                self.free.push(slot);
                Err(at_read(plan, file, op, e))
            }
            (Ok(_), None) => Err(bad("staging slot")),
        }
    }

    /// Takes a placed read's outcome: its slot is free again.
    fn placed(&mut self, plan: &Plan, (slot, file, op, result): Done) -> Result<()> {
        self.free.push(slot);
        result.map_err(|e| at_read(plan, file, &op, e))
    }

    /// Whether some slot holds a read that is being placed (neither free nor in flight).
    fn placing(&self) -> bool {
        self.free.len() + self.busy.len() < self.slots.len()
    }

    /// When every slot is busy and no read is in flight: waits for a placed read.
    fn wait(&mut self, plan: &Plan) -> Result<()> {
        if self.free.is_empty() {
            match self.placer.wait_done() {
                Some(d) => self.placed(plan, d)?,
                None => return Err(bad("no staging slot free and no read in flight")),
            }
        }
        Ok(())
    }

    /// After the reads: waits for every staged read to be placed; the first error.
    fn finish(&mut self, plan: &Plan) -> Result<()> {
        let mut first = Ok(());
        while let Some(d) = self.placer.wait_done() {
            let r = self.placed(plan, d);
            if first.is_ok() {
                first = r;
            }
        }
        first
    }

    fn fixed_buffers(&self) -> Vec<(*mut u8, usize)> {
        self.slots.iter().map(|s| (s.base_ptr(), s.len())).collect()
    }
}

/// Loads into host memory: per file one raw buffer and one converted area.
pub(crate) struct HostSink<'p> {
    /// First, so that its placing threads are done before the areas are freed.
    staged: Staged,
    plan: &'p Plan,
    pub raw: Vec<HostBuf>,
    /// Per raw buffer: freshly mapped (rather than reused from a pool).
    raw_fresh: Vec<bool>,
    /// Per converted area: freshly mapped.
    converted_fresh: Vec<bool>,
    pub converted: Vec<HostBuf>,
    /// Bytes read straight into the file buffers.
    pub in_place: u64,
}

impl<'p> HostSink<'p> {
    /// Allocates every destination of `plan` (raw buffers from `pool` when it has
    /// them), and `slots` staging slots of `slot_len` bytes when some tensor needs a
    /// conversion.
    pub fn new(
        plan: &'p Plan,
        slots: usize,
        slot_len: u64,
        pool: Option<&HostPool>,
    ) -> Result<Self> {
        let mut raw = Vec::with_capacity(plan.files.len());
        let mut raw_fresh = Vec::with_capacity(plan.files.len());
        let mut converted_fresh = Vec::with_capacity(plan.files.len());
        let mut converted = Vec::with_capacity(plan.files.len());
        let mut any_convert = false;
        for f in &plan.files {
            let (buf, fresh) = HostBuf::for_load(to_usize(f.raw_len)?, pool)?;
            raw.push(buf);
            raw_fresh.push(fresh);
            let (buf, fresh) = HostBuf::for_load(to_usize(f.converted_len)?, pool)?;
            converted.push(buf);
            converted_fresh.push(fresh);
            any_convert |= f.converted_len > 0;
        }
        let n = if any_convert { slots.max(1) } else { 0 };
        Ok(HostSink {
            staged: Staged::new(n, slot_len)?,
            plan,
            raw,
            raw_fresh,
            converted_fresh,
            converted,
            in_place: 0,
        })
    }

    /// After the reads: waits for every conversion to land; the first error.
    pub fn finish(&mut self) -> Result<()> {
        self.staged.finish(self.plan)
    }
}

impl HostSink<'_> {
    /// After a successful load: zeroes the bytes of reused buffers that nothing
    /// wrote (gaps between read ranges or converted tensors, alignment slack past the
    /// end of a file), so that nothing of a buffer's previous contents stays visible.
    fn zero_unwritten(&mut self) -> Result<()> {
        for (i, f) in self.plan.files.iter().enumerate() {
            if !self.raw_fresh.get(i).copied().unwrap_or(true) {
                let written = f.reads.iter().filter_map(|op| match op.target {
                    Target::Raw { dest } => Some((dest, dest.saturating_add(op.required))),
                    Target::Convert { .. } => None,
                });
                let buf = self.raw.get_mut(i).ok_or_else(|| bad("file"))?;
                zero_outside(buf.as_mut_slice(), written.collect())?;
            }
            if !self.converted_fresh.get(i).copied().unwrap_or(true) {
                let written = f.tensors.iter().filter_map(|t| match t.place {
                    Place::Converted(base) => Some((base, base.saturating_add(t.len))),
                    Place::Raw(_) => None,
                });
                let buf = self.converted.get_mut(i).ok_or_else(|| bad("file"))?;
                zero_outside(buf.as_mut_slice(), written.collect())?;
            }
        }
        Ok(())
    }
}

impl HostSink<'_> {
    /// After a successful load ([`HostSink::finish`]): the buffers, for the tensors to
    /// be views of, with nothing of a reused buffer's earlier contents left visible.
    pub fn into_landed(mut self) -> Result<Landed<HostBuf>> {
        self.zero_unwritten()?;
        let files = self.plan.files.len();
        let shared = |v: Vec<HostBuf>| v.into_iter().map(|b| Some(Arc::new(b))).collect();
        Ok(Landed {
            raw: shared(std::mem::take(&mut self.raw)),
            converted: shared(std::mem::take(&mut self.converted)),
            own: (0..files).map(|_| Vec::new()).collect(),
        })
    }
}

/// Zeroes the bytes of `bytes` outside the `written` ranges.
fn zero_outside(bytes: &mut [u8], mut written: Vec<(u64, u64)>) -> Result<()> {
    written.sort_unstable();
    let len = bytes.len() as u64;
    let mut at = 0usize;
    for (start, end) in written.into_iter().chain([(len, len)]) {
        let (start, end) = (to_usize(start.min(len))?, to_usize(end.min(len))?);
        if let Some(gap) = bytes.get_mut(at..start) {
            gap.fill(0);
        }
        at = at.max(end);
    }
    Ok(())
}

impl Sink for HostSink<'_> {
    fn buffer(&mut self, file: usize, op: &ReadOp) -> Result<Option<Buf>> {
        match op.target {
            Target::Raw { dest } => {
                let raw = self.raw.get_mut(file).ok_or_else(|| bad("file"))?;
                Ok(Some(Buf {
                    ptr: raw.ptr_at(dest, op.len)?,
                    len: op.len as usize,
                    fixed: None,
                    fresh: self.raw_fresh.get(file).copied().unwrap_or(false),
                }))
            }
            Target::Convert { .. } => self.staged.take(self.plan, op.len),
        }
    }

    fn complete(&mut self, file: usize, op: &ReadOp, buf: Buf) -> Result<()> {
        let Target::Convert {
            tensor,
            first,
            count,
            skip,
            gather,
        } = op.target
        else {
            self.in_place += op.required;
            return Ok(());
        };
        let slot = self
            .staged
            .finished(buf.ptr)
            .ok_or_else(|| bad("staging slot"))?;
        let work = (|| {
            let fp = self.plan.files.get(file).ok_or_else(|| bad("file"))?;
            let t = fp.tensors.get(tensor).ok_or_else(|| bad("tensor"))?;
            let Place::Converted(base) = t.place else {
                return Err(bad("place"));
            };
            let out_size = t.dtype.bits() / 8;
            let to = self
                .converted
                .get_mut(file)
                .ok_or_else(|| bad("file"))?
                .ptr_at(base + first * out_size, count * out_size)?;
            Ok(vec![Work::convert(t, (skip, count, gather), to)])
        })();
        self.staged.place(self.plan, file, op, slot, work)
    }

    fn destination(&mut self, file: usize, op: &ReadOp) -> Option<(*mut u8, usize)> {
        let Target::Raw { dest } = op.target else {
            return None;
        };
        if !self.raw_fresh.get(file).copied().unwrap_or(false) {
            return None;
        }
        let raw = self.raw.get_mut(file)?;
        Some((raw.ptr_at(dest, op.len).ok()?, op.len as usize))
    }

    fn fixed_buffers(&self) -> Vec<(*mut u8, usize)> {
        self.staged.fixed_buffers()
    }

    fn wait_for_slot(&mut self) -> Result<()> {
        self.staged.wait(self.plan)
    }

    fn held_after_reads(&self) -> bool {
        self.staged.placing()
    }
}

/// Loads into host memory the caller gave, tensor by tensor
/// ([`crate::Loader::load_into_host`]): raw reads that lie within one tensor go
/// straight into its place, the others through staging slots, copied or converted into
/// place by a [`Placer`].
pub(crate) struct CallerSink<'p> {
    /// First, so that its placing threads are done before the slots are freed (the
    /// caller's memory outlives the sink).
    staged: Staged,
    plan: &'p Plan,
    /// Per file, per tensor of the plan: the caller's memory (address, length), which
    /// the caller does not touch until the load returns.
    regions: Vec<Vec<(*mut u8, usize)>>,
    /// Per file: read with O_DIRECT, so a read's destination must be aligned.
    direct: Vec<bool>,
    /// Bytes read straight into the caller's memory.
    pub in_place: u64,
}

/// The alignment an O_DIRECT read's destination gets here (the engines' own).
const DIRECT_ALIGN: usize = 4096;

impl<'p> CallerSink<'p> {
    /// A sink writing the tensors of `plan` into `regions` (per file and tensor, each
    /// exactly the tensor's bytes as loaded), with `slots` staging slots of `slot_len`.
    pub fn new(
        plan: &'p Plan,
        regions: Vec<Vec<(*mut u8, usize)>>,
        direct: Vec<bool>,
        slots: usize,
        slot_len: u64,
    ) -> Result<Self> {
        for (f, r) in plan.files.iter().zip(&regions) {
            if f.tensors.len() != r.len()
                || f.tensors
                    .iter()
                    .zip(r)
                    .any(|(t, &(_, len))| t.len != len as u64)
            {
                return Err(bad("regions unlike the plan's tensors"));
            }
        }
        if plan.files.len() != regions.len() {
            return Err(bad("regions unlike the plan's files"));
        }
        // No two regions may share a byte (the loader gives each tensor its own).
        let mut spans: Vec<(usize, usize)> = regions
            .iter()
            .flatten()
            .filter(|r| r.1 > 0)
            .map(|&(p, len)| (p as usize, len))
            .collect();
        spans.sort_unstable();
        if spans
            .windows(2)
            .any(|w| matches!(w, [a, b] if a.0.saturating_add(a.1) > b.0))
        {
            return Err(bad("two regions overlap"));
        }
        Ok(CallerSink {
            staged: Staged::new(slots.max(1), slot_len)?,
            plan,
            regions,
            direct,
            in_place: 0,
        })
    }

    /// After the reads: waits for every staged read to land; the first error.
    pub fn finish(&mut self) -> Result<()> {
        self.staged.finish(self.plan)
    }

    /// Where raw read `op` of file `file` may land straight: inside the place of the
    /// tensor whose segment it reads (tensors that share file bytes, as tied weights of
    /// a PyTorch checkpoint do, each have their own), aligned for O_DIRECT when the
    /// file is read so.
    fn in_place(&self, file: usize, op: &ReadOp) -> Option<*mut u8> {
        let fp = self.plan.files.get(file)?;
        let end = op.offset.checked_add(op.len)?;
        let Target::Raw { dest } = op.target else {
            return None;
        };
        let shift = i128::from(dest) - i128::from(op.offset);
        let k = fp.tensors.iter().position(|t| {
            matches!(t.place, Place::Raw(at) if i128::from(at) - i128::from(t.file_offset) == shift)
                && t.file_offset <= op.offset
                && end <= t.file_offset.saturating_add(t.src_len)
        })?;
        let &(base, len) = self.regions.get(file)?.get(k)?;
        let at = usize::try_from(op.offset - fp.tensors.get(k)?.file_offset).ok()?;
        if at.checked_add(usize::try_from(op.len).ok()?)? > len {
            return None;
        }
        let ptr = base.wrapping_add(at);
        if self.direct.get(file).copied().unwrap_or(true)
            && !(ptr as usize).is_multiple_of(DIRECT_ALIGN)
        {
            return None;
        }
        Some(ptr)
    }

    /// The caller's bytes `[at, at + n)` of tensor `k` of file `file`, for a staged
    /// read's bytes to be copied or converted into.
    fn target(&self, file: usize, k: usize, at: u64, n: u64) -> Result<*mut u8> {
        let &(base, len) = self
            .regions
            .get(file)
            .and_then(|r| r.get(k))
            .ok_or_else(|| bad("region"))?;
        let (at, n) = (to_usize(at)?, to_usize(n)?);
        if at.checked_add(n).is_none_or(|e| e > len) {
            return Err(bad("bytes past a region"));
        }
        Ok(base.wrapping_add(at))
    }

    /// What to do with staged read `op` of file `file`: copy each raw tensor's part of
    /// it, or convert its elements, into the caller's memory. A raw read copies only
    /// the tensors of its own segment (those it lands in the raw layout for): with
    /// each tensor read on its own and 4 KiB alignment, a neighbour's read also holds
    /// the page two tensors share, and two reads' copies must not write the same
    /// bytes (they run on different threads).
    fn work(&self, file: usize, op: &ReadOp) -> Result<Vec<Work>> {
        let fp = self.plan.files.get(file).ok_or_else(|| bad("file"))?;
        match op.target {
            Target::Raw { dest } => {
                let (r0, r1) = (op.offset, op.offset.saturating_add(op.required));
                let shift = i128::from(dest) - i128::from(r0);
                let mut work = Vec::new();
                for (k, t) in fp.tensors.iter().enumerate() {
                    let Place::Raw(at) = t.place else {
                        continue;
                    };
                    if i128::from(at) - i128::from(t.file_offset) != shift {
                        continue;
                    }
                    let (t0, t1) = (t.file_offset, t.file_offset.saturating_add(t.src_len));
                    let (a, b) = (t0.max(r0), t1.min(r1));
                    if a < b {
                        work.push(Work::Copy {
                            from: to_usize(a - r0)?,
                            to: self.target(file, k, a - t0, b - a)?,
                            len: to_usize(b - a)?,
                        });
                    }
                }
                Ok(work)
            }
            Target::Convert {
                tensor,
                first,
                count,
                skip,
                gather,
            } => {
                let t = fp.tensors.get(tensor).ok_or_else(|| bad("tensor"))?;
                let out_size = t.dtype.bits() / 8;
                let to = self.target(file, tensor, first * out_size, count * out_size)?;
                Ok(vec![Work::convert(t, (skip, count, gather), to)])
            }
        }
    }
}

impl Sink for CallerSink<'_> {
    fn buffer(&mut self, file: usize, op: &ReadOp) -> Result<Option<Buf>> {
        if let Target::Raw { .. } = op.target {
            if let Some(ptr) = self.in_place(file, op) {
                // The caller's memory is often a framework's new allocation, not yet
                // faulted in: populating it per read on the reader threads is faster
                // (pages already present cost a page-table walk). BENCHMARKS.md.
                return Ok(Some(Buf {
                    ptr,
                    len: to_usize(op.len)?,
                    fixed: None,
                    fresh: true,
                }));
            }
        }
        self.staged.take(self.plan, op.len)
    }

    fn complete(&mut self, file: usize, op: &ReadOp, buf: Buf) -> Result<()> {
        let Some(slot) = self.staged.finished(buf.ptr) else {
            // Read straight into place.
            self.in_place += op.required;
            return Ok(());
        };
        let work = self.work(file, op);
        self.staged.place(self.plan, file, op, slot, work)
    }

    fn fixed_buffers(&self) -> Vec<(*mut u8, usize)> {
        self.staged.fixed_buffers()
    }

    fn wait_for_slot(&mut self) -> Result<()> {
        self.staged.wait(self.plan)
    }

    fn held_after_reads(&self) -> bool {
        self.staged.placing()
    }
}

/// Error `e` of read `op` of file `file` with the file, the bytes and the tensor(s)
/// in front (errors of other kinds than InvalidArgument name their own).
fn at_read(plan: &Plan, file: usize, op: &ReadOp, e: Error) -> Error {
    let (Error::InvalidArgument(msg), Some(fp)) = (&e, plan.files.get(file)) else {
        return e;
    };
    let (r0, r1) = (op.offset, op.offset.saturating_add(op.required));
    let names: Vec<&str> = match op.target {
        Target::Convert { tensor, .. } => fp
            .tensors
            .get(tensor)
            .map(|t| t.name.as_str())
            .into_iter()
            .collect(),
        Target::Raw { .. } => fp
            .tensors
            .iter()
            .filter(|t| t.file_offset < r1 && r0 < t.file_offset.saturating_add(t.src_len))
            .map(|t| t.name.as_str())
            .collect(),
    };
    let tensors = match names.as_slice() {
        [] => String::new(),
        [one] => format!(", tensor '{one}'"),
        [first, rest @ ..] => format!(", tensor '{first}' and {} more", rest.len()),
    };
    Error::InvalidArgument(format!(
        "{}: bytes {r0}..{r1}{tensors}: {msg}",
        fp.path.display()
    ))
}

fn bad(what: &str) -> Error {
    Error::InvalidArgument(format!("internal error in the host sink: {what}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::{plan, PlanOptions};

    /// Each tensor read on its own at 4 KiB alignment, neighbours' reads share pages:
    /// still, no two staged reads of a load into the caller's memory copy to the same
    /// byte (their copies run on different threads), and together they cover every
    /// raw tensor byte once.
    #[test]
    fn staged_raw_copies_into_the_callers_memory_never_overlap() {
        let dir = tempfile::tempdir().unwrap();
        let spec = crate::synth::SynthSpec::for_size(1 << 20);
        let path = crate::synth::write_checkpoint(dir.path(), &spec, 1, 3).unwrap();
        let ckpt = crate::Checkpoint::open(&path).unwrap();
        for chunk in [4096, 16384] {
            let opts = PlanOptions {
                split_at_tensors: true,
                chunk_size: chunk,
                ..PlanOptions::default()
            };
            let p = plan(&ckpt, &opts).unwrap();
            let mut memory: Vec<Vec<Vec<u8>>> = p
                .files
                .iter()
                .map(|f| {
                    f.tensors
                        .iter()
                        .map(|t| vec![0u8; t.len as usize])
                        .collect()
                })
                .collect();
            let regions = memory
                .iter_mut()
                .map(|f| f.iter_mut().map(|m| (m.as_mut_ptr(), m.len())).collect())
                .collect();
            let sink = CallerSink::new(&p, regions, vec![true; p.files.len()], 2, opts.slot_len())
                .unwrap();
            let mut spans = Vec::new();
            for (i, f) in p.files.iter().enumerate() {
                for op in &f.reads {
                    for w in sink.work(i, op).unwrap() {
                        if let Work::Copy { to, len, .. } = w {
                            spans.push((to as usize, len));
                        }
                    }
                }
            }
            spans.sort_unstable();
            for w in spans.windows(2) {
                assert!(
                    w[0].0 + w[0].1 <= w[1].0,
                    "chunk {chunk}: copies overlap: {w:?}"
                );
            }
            let copied: usize = spans.iter().map(|s| s.1).sum();
            let raw: u64 = p.files.iter().flat_map(|f| &f.tensors).map(|t| t.len).sum();
            assert_eq!(copied as u64, raw, "chunk {chunk}");
        }
    }
}
