//! Loading: the options (`Loader`, a builder), the one pipeline every load runs
//! (`pipeline`: plan → I/O choice → sink → tensors), and what it hands back (`model`).
//! The load methods themselves (`load`, `load_into_host`, `load_into_device`) are in
//! `pipeline.rs`.

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

use crate::dtype::Dtype;
use crate::error::{Error, Result};
use crate::io::{CancelToken, IoBackend, Progress};
use crate::plan::{PlanOptions, Slice, SliceRule};
use crate::sink::host_mem::HostPool;

pub(crate) mod model;
pub(crate) mod pipeline;
pub(crate) mod regions;

/// The target of a load.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Device {
    /// Host memory.
    #[default]
    Cpu,
    /// CUDA device with this ordinal.
    Cuda(usize),
}

impl FromStr for Device {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "cpu" => Ok(Device::Cpu),
            "cuda" => Ok(Device::Cuda(0)),
            _ => s
                .strip_prefix("cuda:")
                .and_then(|n| n.parse().ok())
                .map(Device::Cuda)
                .ok_or_else(|| format!("unknown device '{s}' (cpu, cuda, cuda:N)")),
        }
    }
}

impl fmt::Display for Device {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Device::Cpu => f.write_str("cpu"),
            Device::Cuda(n) => write!(f, "cuda:{n}"),
        }
    }
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
    keep_staging: bool,
    /// Pinned staging (and so the device's context) kept between CUDA loads; shared
    /// by clones of this loader.
    #[cfg(feature = "cuda")]
    staging_cache: crate::sink::cuda::StagingCache,
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
    /// to the device on CUDA (one `cuMemcpy2DAsync` per read; rows of under 512 selected
    /// bytes are moved together by the CPU in the pinned slot first); longer rows are
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
    /// not snoop them. The CPU never reads such staging back (narrow selected columns
    /// then go by 2-D copies too). Off by default.
    pub fn write_combined_staging(mut self, yes: bool) -> Self {
        self.staging_write_combined = yes;
        self
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

    /// How a CUDA load allocates its staging.
    #[cfg(feature = "cuda")]
    fn staging_kind(&self) -> Result<crate::sink::cuda::StagingKind> {
        use crate::sink::cuda::StagingKind;
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
                crate::sink::cuda::prepare(
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
}
