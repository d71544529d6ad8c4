//! The one pipeline every load runs: plan the selected tensors, choose the I/O path,
//! read into a sink (new host memory, the caller's host memory, or a CUDA device),
//! and hand back the tensors and the load's figures.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::model::{FileReport, LoadStats, Model, Storage, Tensor};
use super::regions::{HostRegion, TensorSpec};
use super::{Device, Loader};
use crate::checkpoint::Checkpoint;
use crate::dtype::Dtype;
use crate::error::{quoted, Error, Result};
use crate::io::{self, IoChoice, IoStats, Sink};
use crate::plan::{self, Plan, PlanOptions};
#[cfg(feature = "cuda")]
use crate::sink::cuda::{CudaLoad, CudaOptions, DeviceRegion};
use crate::sink::host::{CallerSink, HostSink};
use crate::sink::Landed;

/// Whose memory a load's tensors land in.
enum Dest<'m> {
    /// New memory of the load's: host buffers, or device allocations.
    Own,
    /// The caller's host memory, by tensor name.
    Host(BTreeMap<String, HostRegion<'m>>),
    /// The caller's device memory, by tensor name.
    #[cfg(feature = "cuda")]
    Device(BTreeMap<String, DeviceRegion>),
}

impl Dest<'_> {
    /// What `pick` of [`plan::plan_where`] answers for tensor `name`: left out, or
    /// loaded in the dtype its region asks for (`None`: the loader's choice).
    fn pick(&self, name: &str) -> Option<Option<Dtype>> {
        match self {
            Dest::Own => Some(None),
            Dest::Host(m) => m.get(name).map(|r| Some(r.dtype)),
            #[cfg(feature = "cuda")]
            Dest::Device(m) => m.get(name).map(|r| Some(r.dtype)),
        }
    }
}

/// What a sink hands back: the tensors (none for the caller's host memory), the I/O
/// figures, the device's set-up time, and whether kept staging served the load.
type Landing = (BTreeMap<String, Tensor>, IoStats, Duration, bool);

impl Loader {
    /// Opens, validates and loads the checkpoint at `path` (a file, a directory of
    /// shards or an index).
    pub fn load(&self, path: impl AsRef<Path>) -> Result<Model> {
        let ckpt = Checkpoint::open(path.as_ref())?;
        self.load_checkpoint(&ckpt)
    }

    /// Loads an already opened checkpoint.
    pub fn load_checkpoint(&self, ckpt: &Checkpoint) -> Result<Model> {
        self.run(ckpt, Dest::Own)
    }

    /// Loads the tensors of `ckpt` into host memory the caller allocated, as a
    /// framework with its own CPU tensors wants: `dest` is called once for each tensor
    /// the load selects ([`Loader::only`], [`Loader::rows`], [`Loader::columns`]),
    /// file by file in offset order, with what will land there (name, dtype in the file
    /// and as the loader would load it, shape, bytes), and returns the memory for it
    /// and the dtype to land in (each tensor its own), or `None` to leave the tensor
    /// out. The memory must be exactly the tensor's length in that dtype
    /// ([`TensorSpec::len_as`]); any alignment will do.
    ///
    /// Each tensor is read on its own. Raw bytes are read straight into the caller's
    /// memory where a read lies within one tensor: every read of a file not read with
    /// O_DIRECT (there reads need no alignment); under O_DIRECT, the reads of whole
    /// 4 KiB pages of the file inside the tensor whose place is 4 KiB-aligned. The
    /// rest (a tensor's unaligned first and last chunk under O_DIRECT, conversions,
    /// column selections) goes through staging slots and is copied or converted into
    /// place; [`LoadStats::in_place_bytes`] says how much landed in place.
    /// I/O path, conversion, progress and cancellation are as
    /// [`Loader::load_checkpoint`]'s; [`Loader::device`] is not used: the bytes land
    /// where `dest` says. Returns the load's statistics once every byte is in place.
    /// Before anything is read, a region of the wrong length, or a dtype the tensor
    /// cannot be loaded as, is an error naming the file and the tensor; a callback
    /// that gives no tensor a region is an error naming the checkpoint; so is a
    /// checkpoint assembled by hand with two tensors of one name. When the load fails,
    /// what the regions hold is unspecified: some tensors may be written, wholly or in
    /// part.
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # let dir = tempfile::tempdir()?;
    /// # let spec = tensorstream::synth::SynthSpec::for_size(4 << 20);
    /// # let path = tensorstream::synth::write_checkpoint(dir.path(), &spec, 1, 7)?;
    /// use std::collections::BTreeMap;
    /// use tensorstream::{Checkpoint, Dtype, HostRegion, Loader};
    ///
    /// let ckpt = Checkpoint::open(&path)?;
    /// // The framework's own parameters, as F32 bytes, allocated by the framework.
    /// let mut params: BTreeMap<String, Vec<u8>> = BTreeMap::new();
    /// for t in ckpt.shards.iter().flat_map(|h| &h.tensors) {
    ///     params.insert(t.name.clone(), vec![0; 4 * t.shape.iter().product::<u64>() as usize]);
    /// }
    /// // Each region handed out once: the borrow checker sees that no two alias.
    /// let mut free: BTreeMap<&str, &mut Vec<u8>> =
    ///     params.iter_mut().map(|(k, v)| (k.as_str(), v)).collect();
    /// let stats = Loader::new().load_into_host(&ckpt, |t| {
    ///     let bytes = free.remove(t.name)?;
    ///     Some(HostRegion { bytes, dtype: Dtype::F32 })
    /// })?;
    /// assert_eq!(stats.output_bytes, params.values().map(|v| v.len() as u64).sum::<u64>());
    /// # Ok(())
    /// # }
    /// ```
    pub fn load_into_host<'m>(
        &self,
        ckpt: &Checkpoint,
        dest: impl FnMut(&TensorSpec<'_>) -> Option<HostRegion<'m>>,
    ) -> Result<LoadStats> {
        let chosen = self.ask(ckpt, dest, |spec, r: &HostRegion<'m>| {
            let want = spec.len_for(r.dtype)?;
            if r.bytes.len() != want {
                return Err(Error::InvalidArgument(format!(
                    "{}: tensor {}: given {} bytes of memory, but it is {want} bytes as {}",
                    spec.file.display(),
                    quoted(spec.name),
                    r.bytes.len(),
                    r.dtype
                )));
            }
            Ok(())
        })?;
        Ok(self.run(ckpt, Dest::Host(chosen))?.stats)
    }

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
    /// `DeviceBuf::is_borrowed` is true): dropping them frees nothing, and they are
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
    #[cfg(feature = "cuda")]
    pub unsafe fn load_into_device(
        &self,
        ckpt: &Checkpoint,
        dest: impl FnMut(&TensorSpec<'_>) -> Option<DeviceRegion>,
    ) -> Result<Model> {
        if !matches!(self.device, Device::Cuda(_)) {
            return Err(Error::InvalidArgument(
                "a load into device memory needs a CUDA device (Loader::device)".into(),
            ));
        }
        let chosen = self.ask(ckpt, dest, |spec, r: &DeviceRegion| {
            spec.len_for(r.dtype).map(|_| ())
        })?;
        self.run(ckpt, Dest::Device(chosen))
    }

    /// The caller's regions for the tensors the options select: `dest` asked once per
    /// tensor, file by file in offset order, each answer checked by `check`. An error
    /// when two tensors share a name, or when no tensor is given a region.
    fn ask<R>(
        &self,
        ckpt: &Checkpoint,
        mut dest: impl FnMut(&TensorSpec<'_>) -> Option<R>,
        check: impl Fn(&TensorSpec<'_>, &R) -> Result<()>,
    ) -> Result<BTreeMap<String, R>> {
        let all = plan_of(ckpt, &self.plan, &|_| Some(None))?;
        unique_names(&all)?;
        let mut chosen = BTreeMap::new();
        for f in &all.files {
            for t in &f.tensors {
                let spec = TensorSpec::of(f, t);
                if let Some(r) = dest(&spec) {
                    check(&spec, &r)?;
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
        Ok(chosen)
    }

    /// The pipeline: plan, I/O choice, the sink `dest` calls for, the reads into it,
    /// the tensors and the figures.
    fn run(&self, ckpt: &Checkpoint, dest: Dest<'_>) -> Result<Model> {
        let start = Instant::now();
        // The caller's host memory takes each tensor read on its own with no alignment
        // slack, so that every read lies within one tensor and lands in place; files
        // read with O_DIRECT are planned again with its alignment below.
        let mut opts = self.plan.clone();
        if let Dest::Host(_) = dest {
            opts.split_at_tensors = true;
            opts.align = 1;
        }
        let mut plan = plan_of(ckpt, &opts, &|name| dest.pick(name))?;
        let paths: Vec<&Path> = plan.files.iter().map(|f| f.path.as_path()).collect();
        let choice = io::choose(self.io, &paths)?;
        if let Dest::Host(_) = dest {
            if choice.files.iter().any(|m| m.direct) {
                opts.align = self.plan.align;
                plan = plan_of(ckpt, &opts, &|name| dest.pick(name))?;
            }
        }
        let (tensors, stats, device_init, staging_reused) = match dest {
            Dest::Host(chosen) => self.sink_caller_host(&plan, &opts, &choice, chosen)?,
            #[cfg(feature = "cuda")]
            Dest::Device(chosen) => self.sink_cuda(&plan, &choice, Some(chosen))?,
            Dest::Own => match self.device {
                Device::Cpu => self.sink_new_host(&plan, &choice)?,
                #[cfg(feature = "cuda")]
                Device::Cuda(_) => self.sink_cuda(&plan, &choice, None)?,
                #[cfg(not(feature = "cuda"))]
                Device::Cuda(_) => {
                    return Err(Error::Unsupported(
                        "this build has no CUDA support (rebuild with --features cuda)".into(),
                    ))
                }
            },
        };
        Ok(Model {
            tensors,
            stats: stats_of(&plan, &choice, &stats, start, device_init, staging_reused),
        })
    }

    /// Runs the reads of `plan` through `choice`'s engine, `depth` deep, into `sink`.
    fn read(
        &self,
        plan: &Plan,
        choice: &IoChoice,
        sink: &mut dyn Sink,
        depth: usize,
    ) -> Result<IoStats> {
        let fixed = sink.fixed_buffers();
        let mut engine = self.engine(io::new_engine(choice.engine, depth, &fixed)?);
        io::execute(
            plan,
            choice,
            engine.as_mut(),
            sink,
            self.queue_depth,
            self.cancel.as_ref(),
            self.progress.as_ref(),
        )
    }

    /// Wraps `engine` in the fault injector when one was asked for.
    fn engine(&self, engine: Box<dyn io::Engine>) -> Box<dyn io::Engine> {
        match self.fail_nth {
            Some(nth) => Box::new(io::FaultEngine {
                inner: engine,
                nth,
                seen: 0,
            }),
            None => engine,
        }
    }

    /// The host sink: into new host memory (or the loader's [`HostPool`]'s).
    ///
    /// [`HostPool`]: crate::HostPool
    fn sink_new_host(&self, plan: &Plan, choice: &IoChoice) -> Result<Landing> {
        let start = Instant::now();
        let mut sink = HostSink::new(
            plan,
            self.staging_slots(),
            self.plan.slot_len(),
            self.host_pool.as_ref(),
        )?;
        let mut stats = self.read(plan, choice, &mut sink, self.queue_depth)?;
        sink.finish()?;
        stats.in_place_bytes = sink.in_place;
        tracing::debug!(
            "host load: {:.3} s, of it waiting for reads {:.3} s, for a free staging slot {:.3} s",
            start.elapsed().as_secs_f64(),
            stats.waiting_for_reads.as_secs_f64(),
            stats.waiting_for_buffers.as_secs_f64()
        );
        let landed = sink.into_landed()?;
        let tensors = tensors_of(plan, &landed, Storage::Host)?;
        Ok((tensors, stats, Duration::ZERO, false))
    }

    /// The caller's host memory, `chosen` by tensor name, under plan options `opts`.
    fn sink_caller_host(
        &self,
        plan: &Plan,
        opts: &PlanOptions,
        choice: &IoChoice,
        mut chosen: BTreeMap<String, HostRegion<'_>>,
    ) -> Result<Landing> {
        // The regions as (address, length) per file and tensor of the plan; from here
        // on they are written only through these, by the sink and the engine.
        let regions = plan
            .files
            .iter()
            .map(|f| {
                f.tensors
                    .iter()
                    .map(|t| {
                        chosen
                            .get_mut(&t.name)
                            .map(|r| (r.bytes.as_mut_ptr(), r.bytes.len()))
                            .ok_or_else(|| Error::InvalidArgument("internal: region".into()))
                    })
                    .collect::<Result<Vec<_>>>()
            })
            .collect::<Result<Vec<_>>>()?;
        let direct = (0..plan.files.len())
            .map(|i| choice.files.get(i).is_some_and(|m| m.direct))
            .collect();
        let slots = self.staging_slots();
        let mut sink = CallerSink::new(plan, regions, direct, slots, opts.slot_len())?;
        let mut stats = self.read(plan, choice, &mut sink, self.queue_depth)?;
        sink.finish()?;
        stats.in_place_bytes = sink.in_place;
        drop(sink);
        drop(chosen);
        Ok((BTreeMap::new(), stats, Duration::ZERO, false))
    }

    /// The CUDA sink: through pinned staging into new device memory, or into the
    /// caller's (`dests`).
    #[cfg(feature = "cuda")]
    fn sink_cuda(
        &self,
        plan: &Plan,
        choice: &IoChoice,
        dests: Option<BTreeMap<String, DeviceRegion>>,
    ) -> Result<Landing> {
        let Device::Cuda(ordinal) = self.device else {
            return Err(Error::InvalidArgument(
                "a load into device memory needs a CUDA device (Loader::device)".into(),
            ));
        };
        let mut cuda = CudaLoad::begin(
            plan,
            CudaOptions {
                ordinal,
                slots: self.staging_slots(),
                slot_len: self.plan.slot_len(),
                per_tensor: self.per_tensor,
                cache: self.keep_staging.then_some(&self.staging_cache),
                kind: self.staging_kind()?,
                dests,
            },
        )?;
        let depth = self.queue_depth.min(cuda.slot_count());
        let stats = self.read(plan, choice, cuda.sink(), depth)?;
        let (landed, device_init, reused) = cuda.finish(&stats, choice.path_name(0))?;
        let tensors = tensors_of(plan, &landed, Storage::Cuda)?;
        Ok((tensors, stats, device_init, reused))
    }
}

/// The plan of the tensors of `ckpt` that `opts` select and `pick` does not leave
/// out, in the dtypes it asks for (see [`plan::plan_where`]). An error when a glob of
/// `only`, `rows` or `columns` matches no tensor of the checkpoint: one rule for all.
fn plan_of(
    ckpt: &Checkpoint,
    opts: &PlanOptions,
    pick: &dyn Fn(&str) -> Option<Option<Dtype>>,
) -> Result<Plan> {
    let plan = plan::plan_where(ckpt, opts, pick)?;
    let names = || ckpt.shards.iter().flat_map(|h| &h.tensors).map(|t| &t.name);
    let unmatched = |glob: &str| !names().any(|n| plan::glob_match(glob, n));
    if let Some(rule) = opts.slices.iter().find(|r| unmatched(&r.pattern)) {
        return Err(Error::InvalidArgument(format!(
            "no tensor of {} matches '{}' ({})",
            ckpt.path.display(),
            rule.pattern,
            rule.what()
        )));
    }
    if let Some(glob) = opts.only.iter().find(|g| unmatched(g)) {
        return Err(Error::InvalidArgument(format!(
            "no tensor of {} matches '{glob}' (--only)",
            ckpt.path.display()
        )));
    }
    Ok(plan)
}

/// Refuses a plan in which two tensors share a name: a load into the caller's memory
/// gives each name one region. `Checkpoint::open` refuses such checkpoints; one
/// assembled by hand may have them.
fn unique_names(plan: &Plan) -> Result<()> {
    let mut seen: BTreeMap<&str, &Path> = BTreeMap::new();
    for f in &plan.files {
        for t in &f.tensors {
            if let Some(first) = seen.insert(&t.name, &f.path) {
                return Err(Error::InvalidCheckpoint {
                    path: f.path.clone(),
                    reason: format!(
                        "tensor {} appears twice (also in {})",
                        quoted(&t.name),
                        first.display()
                    ),
                });
            }
        }
    }
    Ok(())
}

/// The tensors of `plan` as views of the buffers they `landed` in.
fn tensors_of<B>(
    plan: &Plan,
    landed: &Landed<B>,
    storage: impl Fn(Arc<B>) -> Storage,
) -> Result<BTreeMap<String, Tensor>> {
    let mut tensors = BTreeMap::new();
    for (i, f) in plan.files.iter().enumerate() {
        for (k, t) in f.tensors.iter().enumerate() {
            let (buf, offset) = landed.buffer_of(i, k, t.place).ok_or_else(|| {
                Error::InvalidArgument("internal: a tensor without a buffer".into())
            })?;
            let offset = usize::try_from(offset)
                .map_err(|_| Error::InvalidArgument("internal: tensor offset".into()))?;
            let len = usize::try_from(t.len)
                .map_err(|_| Error::InvalidArgument("internal: tensor length".into()))?;
            let tensor = Tensor::new(
                t.name.clone(),
                t.dtype,
                t.shape.clone(),
                storage(Arc::clone(buf)),
                offset,
                len,
            );
            tensors.insert(t.name.clone(), tensor);
        }
    }
    Ok(tensors)
}

/// The figures of the load of `plan` begun at `start`, read by `choice` with I/O
/// figures `stats`.
fn stats_of(
    plan: &Plan,
    choice: &IoChoice,
    stats: &IoStats,
    start: Instant,
    device_init: Duration,
    staging_reused: bool,
) -> LoadStats {
    let files = plan
        .files
        .iter()
        .enumerate()
        .map(|(i, f)| FileReport {
            path: f.path.clone(),
            io_path: choice.path_name(i),
            reason: choice
                .files
                .get(i)
                .map(|m| m.reason.clone())
                .unwrap_or_default(),
        })
        .collect();
    LoadStats {
        tensor_bytes: plan.tensor_bytes(),
        output_bytes: plan.output_bytes(),
        read_bytes: stats.bytes_read,
        requests: stats.requests,
        in_place_bytes: stats.in_place_bytes,
        waiting_for_reads: stats.waiting_for_reads,
        waiting_for_buffers: stats.waiting_for_buffers,
        elapsed: start.elapsed(),
        device_init,
        staging_reused,
        engine_reason: choice.engine_reason.clone(),
        files,
    }
}
