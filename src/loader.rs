//! The loader: a builder of options, and the orchestration of header → plan → I/O →
//! sink → tensors.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::checkpoint::Checkpoint;
use crate::device::host::{CallerSink, HostSink};
use crate::device::{Device, HostBuf, HostPool};
use crate::dtype::Dtype;
use crate::error::{Error, Result};
use crate::io::{self, CancelToken, IoBackend, IoChoice, IoStats, Progress, Sink};
use crate::plan::{self, FilePlan, Place, Plan, PlanOptions, PlannedTensor, Slice, SliceRule};

/// A tensor that [`Loader::load_into_host`] (or, on CUDA, `Loader::load_into_device`)
/// is about to load: what will land in the memory given for it.
#[derive(Debug, Clone, Copy)]
#[non_exhaustive]
pub struct TensorSpec<'a> {
    /// Name.
    pub name: &'a str,
    /// The file holding it.
    pub file: &'a Path,
    /// Dtype in the file.
    pub file_dtype: Dtype,
    /// Dtype once loaded (after [`Loader::dtype`]'s conversion).
    pub dtype: Dtype,
    /// Shape (of its slice, under [`Loader::rows`] or [`Loader::columns`]).
    pub shape: &'a [u64],
    /// Bytes once loaded as `dtype`.
    pub len: usize,
    /// Bytes in the file.
    file_len: u64,
}

impl<'a> TensorSpec<'a> {
    /// Planned tensor `t` of file plan `f`.
    pub(crate) fn of(f: &'a FilePlan, t: &'a PlannedTensor) -> Self {
        TensorSpec {
            name: &t.name,
            file: &f.path,
            file_dtype: t.src_dtype,
            dtype: t.dtype,
            shape: &t.shape,
            len: usize::try_from(t.len).unwrap_or(usize::MAX),
            file_len: t.src_len,
        }
    }

    /// [`TensorSpec::len_as`], or the error naming the file and the tensor that a
    /// load into the caller's memory gives for a dtype it cannot be loaded as.
    pub(crate) fn len_for(&self, dtype: Dtype) -> Result<usize> {
        self.len_as(dtype).ok_or_else(|| {
            Error::InvalidArgument(format!(
                "{}: tensor '{}': cannot load {} as {dtype} (floating tensors convert to F32, \
                 F16 or BF16; others load as they are)",
                self.file.display(),
                self.name,
                self.file_dtype
            ))
        })
    }

    /// Bytes of the tensor loaded as `dtype`: its dtype in the file, or F32, F16 or
    /// BF16 for a floating one; `None` for a dtype it cannot be loaded as.
    pub fn len_as(&self, dtype: Dtype) -> Option<usize> {
        if dtype != self.file_dtype
            && !(self.file_dtype.is_convertible_float() && dtype.is_conversion_target())
        {
            return None;
        }
        usize::try_from(crate::convert::converted_len(
            self.file_dtype,
            dtype,
            self.file_len,
        ))
        .ok()
    }
}

/// Host memory the caller gives [`Loader::load_into_host`] for one tensor, and the
/// dtype to load it as.
#[derive(Debug)]
pub struct HostRegion<'m> {
    /// Exactly the tensor's bytes in `dtype` ([`TensorSpec::len_as`]).
    pub bytes: &'m mut [u8],
    /// Its dtype in the file, or F32, F16 or BF16 for a floating tensor.
    pub dtype: Dtype,
}

/// When a device load took another path than the I/O choice names: its name, and why.
pub(crate) type PathOverride = (&'static str, String);

/// What a device's load gives back: the tensors, the I/O statistics, the path that
/// ran when it is not the I/O choice's, the device's set-up time, and whether the
/// load ran on the loader's kept staging and pinned nothing.
pub(crate) type Loaded = (
    BTreeMap<String, Tensor>,
    IoStats,
    Option<PathOverride>,
    Duration,
    bool,
);

/// How a CUDA load of files that are all in the page cache divides their bytes
/// between the pinned staging slots (which the CPU fills from the page cache) and the
/// page cache itself, registered with the driver so that the device copies from it
/// with no CPU copy ([`Loader::split`]).
#[derive(Debug, Clone, Copy, PartialEq, Default)]
#[non_exhaustive]
pub enum Split {
    /// Everything through the pinned slots.
    #[default]
    Off,
    /// This share (0 to 1) of each file's bytes, its tail, from the registered page
    /// cache; the rest through the slots.
    Share(f64),
    /// Each read to the side that reaches it first: the slots go forwards from the
    /// first file's start, the registered page cache backwards from the last file's
    /// end, until they meet. The division follows the two sides' speeds on the
    /// machine at hand; the load's report gives the share that came of it.
    Balanced,
}

/// Builds and runs loads. Cheap to clone; one `Loader` may run many loads, also from
/// several threads at once (`Loader` is `Send + Sync`).
#[derive(Clone)]
pub struct Loader {
    device: Device,
    io: IoBackend,
    plan: PlanOptions,
    queue_depth: usize,
    /// None: the device's default ([`Loader::staging_bytes`]).
    staging_bytes: Option<u64>,
    progress: Option<Progress>,
    cancel: Option<CancelToken>,
    per_tensor: bool,
    host_pool: Option<HostPool>,
    fail_nth: Option<u64>,
    staging_write_combined: bool,
    /// None: the default (huge pages unless write-combined).
    staging_huge_pages: Option<bool>,
    host_gather: bool,
    split: Split,
    keep_staging: bool,
    /// Pinned staging (and so the device's context) kept between CUDA loads; shared
    /// by clones of this loader.
    #[cfg(feature = "cuda")]
    staging_cache: crate::device::cuda::StagingCache,
}

impl Default for Loader {
    fn default() -> Self {
        Loader::new()
    }
}

impl std::fmt::Debug for Loader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Loader")
            .field("device", &self.device)
            .field("io", &self.io)
            .field("plan", &self.plan)
            .field("queue_depth", &self.queue_depth)
            .field("staging_bytes", &self.staging_bytes_value())
            .finish_non_exhaustive()
    }
}

impl Loader {
    /// A loader with the default options.
    pub fn new() -> Self {
        Loader {
            device: Device::Cpu,
            io: IoBackend::Auto,
            plan: PlanOptions::default(),
            queue_depth: 16,
            staging_bytes: None,
            progress: None,
            cancel: None,
            per_tensor: false,
            host_pool: None,
            fail_nth: None,
            staging_write_combined: false,
            staging_huge_pages: None,
            host_gather: false,
            split: Split::Off,
            keep_staging: true,
            #[cfg(feature = "cuda")]
            staging_cache: Default::default(),
        }
    }

    /// Where tensors are loaded. By default, [`Device::Cpu`].
    pub fn device(mut self, device: Device) -> Self {
        self.device = device;
        self
    }

    /// The I/O backend. By default, [`IoBackend::Auto`].
    pub fn io(mut self, io: IoBackend) -> Self {
        self.io = io;
        self
    }

    /// Largest single read, in bytes, rounded up to 4 KiB. By default, 4 MiB.
    pub fn chunk_size(mut self, bytes: u64) -> Self {
        // Saturates instead of overflowing: planning then refuses the size by name.
        self.plan.chunk_size = bytes
            .max(1)
            .checked_next_multiple_of(4096)
            .unwrap_or(u64::MAX);
        self
    }

    /// Reads in flight at once, from 1 to 4096. By default, 16.
    pub fn queue_depth(mut self, depth: usize) -> Self {
        self.queue_depth = depth.clamp(1, 4096);
        self
    }

    /// Bytes of staging memory (pinned on CUDA) in slots of the chunk size. By
    /// default, 128 MiB on CUDA (the best measured on an H200 for a loader that keeps
    /// its staging; in a fresh process, on huge pages, the same as 64 MiB, and from
    /// `cuMemHostAlloc`, where huge pages are off, slower: see BENCHMARKS.md) and 64 MiB
    /// on the host. Host loads without conversion
    /// read straight into their destination and use no staging.
    pub fn staging_bytes(mut self, bytes: u64) -> Self {
        self.staging_bytes = Some(bytes);
        self
    }

    /// The staging size this loader's loads use.
    fn staging_bytes_value(&self) -> u64 {
        self.staging_bytes.unwrap_or(match self.device {
            Device::Cpu => 64 << 20,
            Device::Cuda(_) => 128 << 20,
        })
    }

    /// Loads only tensors whose whole name matches this glob (`*`, `?`); may be given
    /// several times. By default, every tensor.
    pub fn only(mut self, pattern: impl Into<String>) -> Self {
        self.plan.only.push(pattern.into());
        self
    }

    /// Loads only rows `slice` (indices along dimension 0) of the tensors whose whole
    /// name matches this glob, reading only their bytes; the loaded tensor's shape is
    /// theirs. Rules from this and [`Loader::columns`] may be given several times; the
    /// first that matches a tensor applies. The load fails, naming the file and the
    /// tensor, when a rule matches no tensor of the checkpoint, when a tensor matches
    /// both a row and a column rule, or when a matching tensor cannot satisfy its rule
    /// (a scalar, rows past its end, rows that do not split into equal parts, sub-byte
    /// rows that are not whole bytes).
    ///
    /// A tensor-parallel rank loads its shard of the column-parallel weights (q/k/v,
    /// gate/up, a vocabulary-parallel embedding) with [`Slice::Part`]; experts `a..b`
    /// of a fused expert tensor with [`Slice::Range`].
    pub fn rows(self, pattern: impl Into<String>, slice: Slice) -> Self {
        self.slice(pattern.into(), 0, slice)
    }

    /// Loads only columns `slice` (indices along dimension 1) of the tensors whose
    /// whole name matches this glob: the shard of a row-parallel weight (o_proj,
    /// down_proj) that a tensor-parallel rank keeps. The destination and the copies to
    /// a device hold only the selected columns. Rows that fit a read are read whole
    /// (from the first selected byte of the first row to the last of the last) and
    /// their selected columns gathered: in staging memory on the CPU, by 2-D copies
    /// to the device on CUDA (see [`Loader::gather_columns_on_host`]); longer rows are
    /// read as their selected bytes alone. The tensor needs two dimensions or more, and
    /// elements of a byte or more. See [`Loader::rows`] for how rules combine and fail.
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # let dir = tempfile::tempdir()?;
    /// # let path = dir.path().join("model.safetensors");
    /// // Two 4x4 U8 weights, w[r][c] = 4r + c for "up", 16 + 4r + c for "down".
    /// # let json = r#"{"up":{"dtype":"U8","shape":[4,4],"data_offsets":[0,16]},"down":{"dtype":"U8","shape":[4,4],"data_offsets":[16,32]}}"#;
    /// # let mut file = (json.len() as u64).to_le_bytes().to_vec();
    /// # file.extend_from_slice(json.as_bytes());
    /// # file.extend((0..32u8).collect::<Vec<u8>>());
    /// # std::fs::write(&path, file)?;
    /// use tensorstream::{Loader, Slice};
    ///
    /// // Rank 1 of 2: rows 2..4 of the column-parallel weight, columns 2..4 of the
    /// // row-parallel one.
    /// let rank = Slice::Part { rank: 1, world: 2 };
    /// let model = Loader::new()
    ///     .rows("up", rank)
    ///     .columns("down", rank)
    ///     .load(&path)?;
    /// let up = model.get("up").unwrap();
    /// assert_eq!(up.shape, vec![2, 4]);
    /// assert_eq!(up.host_bytes().unwrap(), &[8, 9, 10, 11, 12, 13, 14, 15]);
    /// let down = model.get("down").unwrap();
    /// assert_eq!(down.shape, vec![4, 2]);
    /// assert_eq!(down.host_bytes().unwrap(), &[18, 19, 22, 23, 26, 27, 30, 31]);
    /// # Ok(())
    /// # }
    /// ```
    pub fn columns(self, pattern: impl Into<String>, slice: Slice) -> Self {
        self.slice(pattern.into(), 1, slice)
    }

    fn slice(mut self, pattern: String, dim: usize, slice: Slice) -> Self {
        self.plan.slices.push(SliceRule {
            pattern,
            dim,
            slice,
        });
        self
    }

    /// Converts floating tensors (F32, F16, BF16, FP8) to `dtype` (F32, F16 or BF16);
    /// other tensors load unchanged. By default, no conversion.
    pub fn dtype(mut self, dtype: Option<Dtype>) -> Self {
        self.plan.dtype = dtype;
        self
    }

    /// Reads closer than this many bytes apart are merged. By default, 64 KiB.
    pub fn coalesce_gap(mut self, bytes: u64) -> Self {
        self.plan.coalesce_gap = bytes;
        self
    }

    /// On CUDA, one device allocation per tensor instead of one per file, so that a
    /// framework can free tensors one by one. By default, one per file.
    pub fn per_tensor_allocations(mut self, yes: bool) -> Self {
        self.per_tensor = yes;
        self
    }

    /// On CUDA, allocate the pinned staging write-combined: the CPU's writes into it
    /// (reads from the page cache) bypass its caches and the copies to the device do
    /// not snoop them. The CPU never reads staging back, which write-combined memory
    /// would make slow, except to gather selected columns on request
    /// ([`Loader::gather_columns_on_host`]): a load with both is refused. Off by
    /// default.
    pub fn write_combined_staging(mut self, yes: bool) -> Self {
        self.staging_write_combined = yes;
        self
    }

    /// On CUDA, how the selected columns of [`Loader::columns`] are gathered when rows
    /// are read several at a time. Off (the default): the copies to the device gather
    /// them, one 2-D copy (`cuMemcpy2DAsync`) per read taking each row's selected
    /// bytes, so the CPU does no more than read, and every path (the registered page
    /// cache, split loads, write-combined staging) serves column selections; only
    /// rows of under 512 selected bytes in a pinned slot (not write-combined) are
    /// moved together by the CPU, which costs little there. On: the CPU moves every
    /// read's columns together in the pinned slot and one plain copy follows; such a
    /// load runs wholly through the slots. Host loads always gather on the CPU.
    pub fn gather_columns_on_host(mut self, yes: bool) -> Self {
        self.host_gather = yes;
        self
    }

    /// See [`Loader::gather_columns_on_host`].
    #[cfg(feature = "cuda")]
    pub(crate) fn host_gather_value(&self) -> bool {
        self.host_gather
    }

    /// On CUDA, allocate the staging as ordinary memory on transparent huge pages
    /// (where the kernel allows them), populate it, and pin it with
    /// `cuMemHostRegister`, instead of `cuMemHostAlloc`: fewer, larger pages to pin
    /// and to translate while the CPU copies into them.
    ///
    /// By default on (unless [`Loader::write_combined_staging`] is), falling back to
    /// `cuMemHostAlloc` where the kernel has transparent huge pages off or the driver
    /// refuses to pin such memory. `true` insists: a refusal fails the load, and asking
    /// for write-combined staging too is refused. `false`: always `cuMemHostAlloc`.
    pub fn huge_page_staging(mut self, yes: bool) -> Self {
        self.staging_huge_pages = Some(yes);
        self
    }

    /// On CUDA, when every file is in the page cache, how to divide the load between
    /// the pinned slots and the page cache itself, registered with the driver by a
    /// quarter of [`Loader::queue_depth`]'s threads, so that the device copies from
    /// both at once (see [`Split`]). By default, [`Split::Off`]: everything through the
    /// slots. Where the driver refuses registration, everything goes through the slots
    /// (and the load's report says so).
    pub fn split(mut self, split: Split) -> Self {
        self.split = match split {
            Split::Share(s) if s.is_nan() || s <= 0.0 => Split::Off,
            Split::Share(s) => Split::Share(s.min(1.0)),
            other => other,
        };
        self
    }

    /// Shorthand for [`Loader::split`] with [`Split::Share`] (0 for [`Split::Off`]).
    pub fn registered_share(self, share: f64) -> Self {
        self.split(Split::Share(share))
    }

    /// See [`Loader::split`].
    #[cfg(feature = "cuda")]
    pub(crate) fn split_value(&self) -> Split {
        self.split
    }

    /// How a CUDA load allocates its staging.
    #[cfg(feature = "cuda")]
    fn staging_kind(&self) -> Result<crate::device::cuda::StagingKind> {
        use crate::device::cuda::StagingKind;
        match (self.staging_write_combined, self.staging_huge_pages) {
            (false, None) => Ok(StagingKind::Default),
            (false, Some(false)) => Ok(StagingKind::HostAlloc),
            (true, None | Some(false)) => Ok(StagingKind::WriteCombined),
            (false, Some(true)) => Ok(StagingKind::HugePages),
            (true, Some(true)) => Err(Error::InvalidArgument(
                "write-combined and huge-page staging exclude each other".into(),
            )),
        }
    }

    /// On CUDA, keep the pinned staging (and with it the device's context) after a
    /// load for the next load with the same device, chunk size and staging size; it is
    /// freed with the last clone of this loader. On by default: a server or framework
    /// that loads several checkpoints pins its staging once. Off: each load pins and
    /// frees its own.
    pub fn keep_staging(mut self, yes: bool) -> Self {
        self.keep_staging = yes;
        self
    }

    /// Makes the next load start at once: on CUDA, creates the device's context and
    /// pins the staging now (a server calls this at start-up); on the CPU, nothing.
    /// Needs [`Loader::keep_staging`] (the default).
    pub fn prepare(&self) -> Result<()> {
        match self.device {
            Device::Cpu => Ok(()),
            #[cfg(feature = "cuda")]
            Device::Cuda(ordinal) => {
                if !self.keep_staging {
                    return Ok(());
                }
                crate::device::cuda::prepare(
                    &self.staging_cache,
                    ordinal,
                    self.staging_slots(),
                    self.plan.slot_len(),
                    self.staging_kind()?,
                )
            }
            #[cfg(not(feature = "cuda"))]
            Device::Cuda(_) => Err(Error::Unsupported(
                "this build has no CUDA support (rebuild with --features cuda)".into(),
            )),
        }
    }

    /// Frees the pinned staging this loader (and its clones) keeps, and its hold on
    /// the device's context, now rather than with the last clone. The next CUDA load
    /// pins its own again.
    pub fn release_staging(&self) {
        #[cfg(feature = "cuda")]
        drop(
            self.staging_cache
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .take(),
        );
    }

    fn staging_slots(&self) -> usize {
        (self.staging_bytes_value() / self.plan.chunk_size).max(1) as usize
    }

    /// Host loads take their file buffers from `pool` when it has fitting ones, and
    /// give them back to it when the model is dropped (see [`HostPool`]). By default,
    /// every load maps fresh memory and unmaps it when dropped.
    pub fn host_pool(mut self, pool: HostPool) -> Self {
        self.host_pool = Some(pool);
        self
    }

    /// Called with (bytes done, bytes total) as reads complete. By default, none.
    pub fn progress(mut self, f: impl Fn(u64, u64) + Send + Sync + 'static) -> Self {
        self.progress = Some(Arc::new(f));
        self
    }

    /// A token that cancels the load from another thread. By default, none.
    pub fn cancel_token(mut self, token: CancelToken) -> Self {
        self.cancel = Some(token);
        self
    }

    /// Fault injection for tests: the `nth` read completion (1-based) fails with EIO.
    #[doc(hidden)]
    pub fn fail_nth_read(mut self, nth: u64) -> Self {
        self.fail_nth = Some(nth);
        self
    }

    /// Wraps `engine` in the fault injector when one was asked for.
    pub(crate) fn engine(&self, engine: Box<dyn io::Engine>) -> Box<dyn io::Engine> {
        match self.fail_nth {
            Some(nth) => Box::new(io::FaultEngine {
                inner: engine,
                nth,
                seen: 0,
            }),
            None => engine,
        }
    }

    /// Opens, validates and loads the checkpoint at `path` (a file, a directory of
    /// shards or an index).
    pub fn load(&self, path: impl AsRef<Path>) -> Result<Model> {
        let ckpt = Checkpoint::open(path.as_ref())?;
        self.load_checkpoint(&ckpt)
    }

    /// Loads an already opened checkpoint.
    pub fn load_checkpoint(&self, ckpt: &Checkpoint) -> Result<Model> {
        let start = Instant::now();
        let plan = self.plan_of(ckpt, &|_| Some(None))?;
        self.run(
            &plan,
            start,
            #[cfg(feature = "cuda")]
            None,
        )
    }

    /// The device loads go to.
    #[cfg(feature = "cuda")]
    pub(crate) fn device_value(&self) -> Device {
        self.device
    }

    /// The plan of the tensors of `ckpt` that the `only` patterns select and `pick`
    /// does not leave out, in the dtypes it asks for (see [`plan::plan_where`]); an
    /// error when the patterns select none.
    pub(crate) fn plan_of(
        &self,
        ckpt: &Checkpoint,
        pick: &dyn Fn(&str) -> Option<Option<Dtype>>,
    ) -> Result<Plan> {
        let plan = plan::plan_where(ckpt, &self.plan, pick)?;
        let names = || ckpt.shards.iter().flat_map(|h| &h.tensors).map(|t| &t.name);
        if let Some(rule) = self
            .plan
            .slices
            .iter()
            .find(|r| !names().any(|n| plan::glob_match(&r.pattern, n)))
        {
            return Err(Error::InvalidArgument(format!(
                "no tensor of {} matches '{}' ({})",
                ckpt.path.display(),
                rule.pattern,
                rule.what()
            )));
        }
        if !self.plan.only.is_empty() && plan.tensor_count() == 0 {
            return Err(Error::InvalidArgument(format!(
                "no tensor of {} matches {}",
                ckpt.path.display(),
                self.plan
                    .only
                    .iter()
                    .map(|p| format!("'{p}'"))
                    .collect::<Vec<_>>()
                    .join(", ")
            )));
        }
        Ok(plan)
    }

    /// Runs the load of `plan` begun at `start`; on CUDA into `dests` when given
    /// (memory the caller allocated, see `Loader::load_into_device`).
    pub(crate) fn run(
        &self,
        plan: &Plan,
        start: Instant,
        #[cfg(feature = "cuda")] dests: Option<&crate::device::cuda::Destinations>,
    ) -> Result<Model> {
        let paths: Vec<&Path> = plan.files.iter().map(|f| f.path.as_path()).collect();
        let choice = io::choose(self.io, &paths)?;
        let slots = self.staging_slots();
        let (tensors, stats, path, device_init, staging_reused): Loaded = match self.device {
            Device::Cpu => {
                let (t, s) = self.load_host(plan, &choice, slots)?;
                tracing::debug!(
                    "host load: {:.3} s, of it waiting for reads {:.3} s, for a free staging slot {:.3} s",
                    start.elapsed().as_secs_f64(),
                    s.waiting_for_reads.as_secs_f64(),
                    s.waiting_for_buffers.as_secs_f64()
                );
                (t, s, None, Duration::ZERO, false)
            }
            #[cfg(feature = "cuda")]
            Device::Cuda(ordinal) => crate::device::cuda::load(
                self,
                plan,
                &choice,
                ordinal,
                slots,
                self.plan.slot_len(),
                self.queue_depth,
                self.per_tensor,
                &crate::device::cuda::StagingOptions {
                    cache: self.keep_staging.then_some(&self.staging_cache),
                    kind: self.staging_kind()?,
                    dests,
                },
                self.cancel.as_ref(),
                self.progress.as_ref(),
            )?,
            #[cfg(not(feature = "cuda"))]
            Device::Cuda(_) => {
                return Err(Error::Unsupported(
                    "this build has no CUDA support (rebuild with --features cuda)".into(),
                ))
            }
        };
        Ok(Model {
            tensors,
            stats: stats_of(
                plan,
                &choice,
                &stats,
                path,
                start,
                device_init,
                staging_reused,
            ),
        })
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
        mut dest: impl FnMut(&TensorSpec<'_>) -> Option<HostRegion<'m>>,
    ) -> Result<LoadStats> {
        let start = Instant::now();
        let all = self.plan_of(ckpt, &|_| Some(None))?;
        unique_names(&all)?;
        let mut chosen: BTreeMap<String, HostRegion<'m>> = BTreeMap::new();
        for f in &all.files {
            for t in &f.tensors {
                let spec = TensorSpec::of(f, t);
                let Some(r) = dest(&spec) else {
                    continue;
                };
                let want = spec.len_for(r.dtype)?;
                if r.bytes.len() != want {
                    return Err(Error::InvalidArgument(format!(
                        "{}: tensor '{}': given {} bytes of memory, but it is {want} bytes as {}",
                        f.path.display(),
                        t.name,
                        r.bytes.len(),
                        r.dtype
                    )));
                }
                chosen.insert(t.name.clone(), r);
            }
        }
        if chosen.is_empty() {
            return Err(Error::InvalidArgument(format!(
                "{}: no tensor was given a destination",
                ckpt.path.display()
            )));
        }
        // Each tensor read on its own and, unless a file is read with O_DIRECT, with no
        // alignment slack: then every read lies within one tensor and lands in place.
        let pick = |name: &str| chosen.get(name).map(|r| Some(r.dtype));
        let mut exact = self.clone();
        exact.plan.split_at_tensors = true;
        exact.plan.align = 1;
        let mut plan = exact.plan_of(ckpt, &pick)?;
        let paths: Vec<&Path> = plan.files.iter().map(|f| f.path.as_path()).collect();
        let choice = io::choose(self.io, &paths)?;
        if choice.files.iter().any(|m| m.direct) {
            // The same tensors, so the same files as the choice's, read aligned.
            exact.plan = PlanOptions {
                split_at_tensors: true,
                ..self.plan.clone()
            };
            plan = exact.plan_of(ckpt, &pick)?;
        }
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
        let mut sink = CallerSink::new(
            &plan,
            regions,
            direct,
            exact.staging_slots(),
            exact.plan.slot_len(),
        )?;
        let mut stats = self.read(&plan, &choice, &mut sink)?;
        sink.finish()?;
        stats.in_place_bytes = sink.in_place;
        drop(sink);
        drop(chosen);
        Ok(stats_of(
            &plan,
            &choice,
            &stats,
            None,
            start,
            Duration::ZERO,
            false,
        ))
    }

    /// Runs the reads of `plan` through `choice`'s engine into `sink`.
    fn read(&self, plan: &Plan, choice: &IoChoice, sink: &mut dyn Sink) -> Result<IoStats> {
        let fixed = sink.fixed_buffers();
        let mut engine = self.engine(io::new_engine(choice.engine, self.queue_depth, &fixed)?);
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

    fn load_host(
        &self,
        plan: &Plan,
        choice: &IoChoice,
        slots: usize,
    ) -> Result<(BTreeMap<String, Tensor>, IoStats)> {
        let mut sink = HostSink::new(plan, slots, self.plan.slot_len(), self.host_pool.as_ref())?;
        let mut stats = self.read(plan, choice, &mut sink)?;
        sink.finish()?;
        stats.in_place_bytes = sink.in_place;
        sink.zero_unwritten()?;
        let raw: Vec<Arc<HostBuf>> = sink.raw.drain(..).map(Arc::new).collect();
        let conv: Vec<Arc<HostBuf>> = sink.converted.drain(..).map(Arc::new).collect();
        let mut tensors = BTreeMap::new();
        for (i, f) in plan.files.iter().enumerate() {
            for t in &f.tensors {
                let (buf, offset) = match t.place {
                    Place::Raw(o) => (raw.get(i), o),
                    Place::Converted(o) => (conv.get(i), o),
                };
                let buf = buf.ok_or_else(|| Error::InvalidArgument("internal: buffer".into()))?;
                tensors.insert(
                    t.name.clone(),
                    Tensor {
                        name: t.name.clone(),
                        dtype: t.dtype,
                        shape: t.shape.clone(),
                        storage: Storage::Host(Arc::clone(buf)),
                        offset: offset as usize,
                        len: t.len as usize,
                    },
                );
            }
        }
        Ok((tensors, stats))
    }
}

/// Refuses a plan in which two tensors share a name: a load into the caller's memory
/// gives each name one region. `Checkpoint::open` refuses such checkpoints; one
/// assembled by hand may have them.
pub(crate) fn unique_names(plan: &Plan) -> Result<()> {
    let mut seen: BTreeMap<&str, &Path> = BTreeMap::new();
    for f in &plan.files {
        for t in &f.tensors {
            if let Some(first) = seen.insert(&t.name, &f.path) {
                return Err(Error::InvalidCheckpoint {
                    path: f.path.clone(),
                    reason: format!(
                        "tensor '{}' appears twice (also in {})",
                        t.name,
                        first.display()
                    ),
                });
            }
        }
    }
    Ok(())
}

/// The statistics of the load of `plan` begun at `start`, read by `choice` (or the
/// path `path` names) with I/O statistics `stats`.
fn stats_of(
    plan: &Plan,
    choice: &IoChoice,
    stats: &IoStats,
    path: Option<PathOverride>,
    start: Instant,
    device_init: Duration,
    staging_reused: bool,
) -> LoadStats {
    let files = plan
        .files
        .iter()
        .enumerate()
        .map(|(i, f)| {
            let (io_path, reason) = match &path {
                Some((name, why)) => (*name, why.clone()),
                None => (
                    choice.path_name(i),
                    choice
                        .files
                        .get(i)
                        .map(|m| m.reason.clone())
                        .unwrap_or_default(),
                ),
            };
            FileReport {
                path: f.path.clone(),
                io_path,
                reason,
            }
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

/// Where a tensor's bytes live.
#[derive(Debug, Clone)]
pub enum Storage {
    /// A host buffer shared by the tensors of one file.
    Host(Arc<HostBuf>),
    /// A device buffer (feature `cuda`).
    #[cfg(feature = "cuda")]
    Cuda(Arc<crate::device::cuda::DeviceBuf>),
}

/// One loaded tensor: a view into a buffer it shares with others of its file.
#[derive(Debug, Clone)]
pub struct Tensor {
    /// Name.
    pub name: String,
    /// Dtype (after conversion).
    pub dtype: Dtype,
    /// Shape.
    pub shape: Vec<u64>,
    storage: Storage,
    offset: usize,
    len: usize,
}

impl Tensor {
    /// Length in bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// True when the tensor has no bytes.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The device the bytes are on.
    pub fn device(&self) -> Device {
        match &self.storage {
            Storage::Host(_) => Device::Cpu,
            #[cfg(feature = "cuda")]
            Storage::Cuda(b) => Device::Cuda(b.ordinal()),
        }
    }

    /// The bytes, when the tensor is in host memory (little-endian, C order).
    pub fn host_bytes(&self) -> Option<&[u8]> {
        match &self.storage {
            Storage::Host(b) => b.as_slice().get(self.offset..self.offset + self.len),
            #[cfg(feature = "cuda")]
            Storage::Cuda(_) => None,
        }
    }

    /// The bytes copied to a new host vector (from the device when needed).
    pub fn to_host(&self) -> Result<Vec<u8>> {
        match &self.storage {
            Storage::Host(_) => self
                .host_bytes()
                .map(<[u8]>::to_vec)
                .ok_or_else(|| Error::InvalidArgument("internal: tensor view".into())),
            #[cfg(feature = "cuda")]
            Storage::Cuda(b) => b.copy_to_host(self.offset, self.len),
        }
    }

    /// The device address of the tensor's first byte, when it is on a CUDA device.
    /// Valid while this tensor (or another view of the same buffer) is alive; after
    /// [`Loader::load_into_device`], while the caller's memory is.
    #[cfg(feature = "cuda")]
    pub fn device_ptr(&self) -> Option<u64> {
        match &self.storage {
            Storage::Cuda(b) => Some(b.device_ptr() + self.offset as u64),
            Storage::Host(_) => None,
        }
    }

    /// The storage and the byte offset of this tensor in it.
    pub fn storage(&self) -> (&Storage, usize) {
        (&self.storage, self.offset)
    }

    #[cfg(feature = "cuda")]
    pub(crate) fn new_cuda(
        name: String,
        dtype: Dtype,
        shape: Vec<u64>,
        buf: Arc<crate::device::cuda::DeviceBuf>,
        offset: usize,
        len: usize,
    ) -> Tensor {
        Tensor {
            name,
            dtype,
            shape,
            storage: Storage::Cuda(buf),
            offset,
            len,
        }
    }
}

/// Which I/O path read a file, and why.
#[derive(Debug, Clone)]
pub struct FileReport {
    /// The file.
    pub path: PathBuf,
    /// "io_uring+O_DIRECT", "io_uring buffered", "pread buffered", "mmap", ...
    pub io_path: &'static str,
    /// Why.
    pub reason: String,
}

/// Figures about a finished load.
#[derive(Debug, Clone)]
pub struct LoadStats {
    /// Tensor bytes as stored in the files.
    pub tensor_bytes: u64,
    /// Tensor bytes handed back (after conversion).
    pub output_bytes: u64,
    /// Bytes read from files (tensor bytes plus alignment slack).
    pub read_bytes: u64,
    /// Read requests issued.
    pub requests: u64,
    /// Bytes of the reads that landed straight in their final place in host memory,
    /// with no staging copy (alignment slack and small gaps between tensors included):
    /// on the CPU, those of every raw tensor (conversions and gathered columns go
    /// through staging); with [`Loader::load_into_host`], those of the reads that lay
    /// inside one tensor (and, under O_DIRECT, at an aligned address). Zero on CUDA,
    /// where everything passes through pinned staging or registered page cache.
    pub in_place_bytes: u64,
    /// Part of `elapsed` the reading thread waited for reads with nothing more to
    /// submit (see [`crate::io::IoStats::waiting_for_reads`]): reading is the limit.
    pub waiting_for_reads: Duration,
    /// Part of `elapsed` the reading thread waited for a free staging slot (see
    /// [`crate::io::IoStats::waiting_for_buffers`]): the copies to the device, conversions
    /// or placements after the reads are the limit. (Only reads through staging slots
    /// count: the registered page cache's side of a split load, and `--io mmap` to a
    /// device, record no waits.)
    pub waiting_for_buffers: Duration,
    /// Wall time of the load, planning, allocation and `device_init` included.
    pub elapsed: Duration,
    /// Part of `elapsed` spent getting the device ready: retaining the CUDA primary
    /// context (creating it, when no one in the process holds it yet). Zero on the CPU.
    /// A framework that already holds the context pays almost none of it.
    pub device_init: Duration,
    /// On CUDA, whether the load ran on the pinned staging the loader kept from an
    /// earlier load or from [`Loader::prepare`] and pinned no more (a load through the
    /// registered page cache keeps only two slots pinned, so the next load through the
    /// slots pins the rest and says false). False on the CPU.
    pub staging_reused: bool,
    /// Why the I/O engine was chosen.
    pub engine_reason: String,
    /// Per file, the path that read it.
    pub files: Vec<FileReport>,
}

impl LoadStats {
    /// Tensor bytes per second, in GB/s (10^9).
    pub fn gbps(&self) -> f64 {
        self.tensor_bytes as f64 / self.elapsed.as_secs_f64().max(1e-9) / 1e9
    }
}

/// A loaded checkpoint: tensors by name.
#[derive(Debug)]
pub struct Model {
    tensors: BTreeMap<String, Tensor>,
    stats: LoadStats,
}

impl Model {
    /// The tensor with this name.
    pub fn get(&self, name: &str) -> Option<&Tensor> {
        self.tensors.get(name)
    }

    /// All tensors, sorted by name.
    pub fn tensors(&self) -> impl Iterator<Item = &Tensor> {
        self.tensors.values()
    }

    /// Number of tensors.
    pub fn len(&self) -> usize {
        self.tensors.len()
    }

    /// True when no tensor was loaded.
    pub fn is_empty(&self) -> bool {
        self.tensors.is_empty()
    }

    /// Takes the tensors out, by name.
    pub fn into_tensors(self) -> BTreeMap<String, Tensor> {
        self.tensors
    }

    /// Figures about the load.
    pub fn stats(&self) -> &LoadStats {
        &self.stats
    }
}
