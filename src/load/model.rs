//! What a load hands back: `Model` (tensors by name and `LoadStats`), and each
//! `Tensor`, a view into a host or device buffer it shares with its file's tensors.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use super::Device;
#[cfg(doc)]
use super::Loader;
use crate::dtype::Dtype;
use crate::error::{Error, Result};
#[cfg(feature = "cuda")]
use crate::sink::cuda::DeviceBuf;
use crate::sink::host_mem::HostBuf;

/// Where a tensor's bytes live.
#[derive(Debug, Clone)]
pub enum Storage {
    /// A host buffer shared by the tensors of one file.
    Host(Arc<HostBuf>),
    /// A device buffer (feature `cuda`).
    #[cfg(feature = "cuda")]
    Cuda(Arc<DeviceBuf>),
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

    /// A view of `len` bytes at `offset` of `storage`.
    pub(crate) fn new(
        name: String,
        dtype: Dtype,
        shape: Vec<u64>,
        storage: Storage,
        offset: usize,
        len: usize,
    ) -> Tensor {
        Tensor {
            name,
            dtype,
            shape,
            storage,
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
    /// "io_uring+O_DIRECT", "io_uring buffered", "pread buffered", "pread+O_DIRECT"
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
    /// Bytes read from files: the selected tensor bytes plus alignment slack, small
    /// gaps merged into one read, and whole rows read for a column selection; so it
    /// can exceed `tensor_bytes`.
    pub read_bytes: u64,
    /// Read requests issued.
    pub requests: u64,
    /// Bytes of the reads that landed straight in their final place in host memory,
    /// with no staging copy (alignment slack and small gaps between tensors included):
    /// on the CPU, those of every raw tensor (conversions and gathered columns go
    /// through staging); with [`Loader::load_into_host`], those of the reads that lay
    /// inside one tensor (and, under O_DIRECT, at an aligned address). Zero on CUDA,
    /// where everything passes through pinned staging. Can exceed `output_bytes`: it
    /// counts whole reads, slack included.
    pub in_place_bytes: u64,
    /// Part of `elapsed` the reading thread waited for reads with nothing more to
    /// submit: when long, reading (the disk, or the copy out of the page cache) is
    /// the limit.
    pub waiting_for_reads: Duration,
    /// Part of `elapsed` the reading thread waited for a free staging slot while one
    /// held a finished read: when long, what follows the reads (the copies to the
    /// device, conversions, placements) is the limit.
    pub waiting_for_buffers: Duration,
    /// Wall time of the load, planning, allocation and `device_init` included.
    pub elapsed: Duration,
    /// Part of `elapsed` spent getting the device ready: retaining the CUDA primary
    /// context (creating it, when no one in the process holds it yet). Zero on the CPU.
    /// A framework that already holds the context pays almost none of it.
    pub device_init: Duration,
    /// On CUDA, whether the load ran on the pinned staging the loader kept from an
    /// earlier load or from [`Loader::prepare`] and pinned no more. False on the CPU.
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
    pub(crate) tensors: BTreeMap<String, Tensor>,
    pub(crate) stats: LoadStats,
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
