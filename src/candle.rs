//! The candle backend: loads checkpoints into candle tensors and a candle-nn
//! `VarBuilder`, each tensor read straight into memory that candle then owns.
//!
//! ```no_run
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use candle_core::{DType, Device};
//!
//! // Every tensor, floating ones as BF16, in candle's own host memory.
//! let tensors = tensorstream::candle::load("model.safetensors", &Device::Cpu, Some(DType::BF16))?;
//! println!("{} tensors", tensors.len());
//!
//! // A VarBuilder for a candle-transformers model.
//! let vb = tensorstream::candle::var_builder(&["model.safetensors"], DType::F32, &Device::Cpu)?;
//! let w = vb.get((384, 384), "encoder.layer.0.attention.self.query.weight")?;
//! # let _ = w;
//! # Ok(())
//! # }
//! ```
//!
//! On the CPU each tensor is read (through [`Loader::load_into_host`]) into the buffer
//! that candle's tensor then owns: no second copy. On CUDA each tensor lands in memory
//! allocated by candle's `CudaDevice` on its stream, through `Loader::load_into_device`,
//! which first waits for the work queued in the device's primary context (candle's
//! too) and returns once its copies are complete: work that candle queues afterwards
//! sees the loaded bytes. The CUDA path needs the `candle` and `cuda` features, candle's
//! own `cuda` feature, and `TENSORSTREAM_CANDLE_CUDA=1` at build time (not a feature,
//! so that `--all-features` builds without the CUDA toolkit candle's kernels need);
//! without it a CUDA device is an error saying so.
//!
//! The dtypes are candle's: U8, U32, I16, I32, I64, BF16, F16, F32, F64, F8_E4M3 and the
//! raw F6_E2M3, F6_E3M2, F4 and F8_E8M0; U16 widens to U32 as in
//! `candle_core::safetensors::load`. A tensor of another dtype (BOOL, I8, U64, C64,
//! F8_E5M2, the FNUZ types) is refused with an error naming it, before any byte is
//! read, unless a conversion asked for (`dtype` F32, F16 or BF16) turns it into one of
//! candle's.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{CpuStorage, DType, Device, Shape, Storage, Tensor};
use candle_nn::var_builder::SimpleBackend;
use candle_nn::VarBuilder;

use crate::checkpoint::Checkpoint;
use crate::dtype::Dtype;
use crate::error::{quoted, Error, Result};
use crate::load::regions::{HostRegion, TensorSpec};
use crate::load::Loader;

/// Loads the checkpoint at `path` (a file, a directory of shards or an index) into
/// candle tensors on `device`: the same names, dtypes, shapes and values as
/// `candle_core::safetensors::load` gives for each of its files. `dtype` `Some(F32)`,
/// `Some(F16)` or `Some(BF16)` converts the floating tensors (F32, F16, BF16 and the FP8
/// types) while loading; other tensors load as they are. `None`: no conversion.
pub fn load(
    path: impl AsRef<Path>,
    device: &Device,
    dtype: Option<DType>,
) -> Result<HashMap<String, Tensor>> {
    load_with(&Loader::new(), path, device, dtype)
}

/// [`load`] with the options of `loader`: the tensors it selects ([`Loader::only`]),
/// the rows or columns a tensor-parallel rank keeps ([`Loader::rows`],
/// [`Loader::columns`]), the I/O path, staging, progress and cancellation. Its device
/// and dtype are replaced by `device` and `dtype`.
pub fn load_with(
    loader: &Loader,
    path: impl AsRef<Path>,
    device: &Device,
    dtype: Option<DType>,
) -> Result<HashMap<String, Tensor>> {
    let ckpt = Checkpoint::open(path.as_ref())?;
    Ok(load_checkpoint(loader, &ckpt, device, dtype)?
        .into_iter()
        .map(|(name, (tensor, _))| (name, tensor))
        .collect())
}

/// A candle-nn `VarBuilder` over the tensors of the checkpoints at `paths` (files,
/// directories of shards or indexes), loaded at once on `device`. Floating tensors are
/// loaded as `dtype` when it is F32, F16 or BF16; `VarBuilder::get` converts the rest
/// to the dtype asked for, as candle's own builders do. `get` checks the shape asked
/// for and fails, naming the file, the tensor and both shapes, on a mismatch.
pub fn var_builder<P: AsRef<Path>>(
    paths: &[P],
    dtype: DType,
    device: &Device,
) -> Result<VarBuilder<'static>> {
    var_builder_with(&Loader::new(), paths, dtype, device)
}

/// [`var_builder`] with the options of `loader` (see [`load_with`]): with
/// [`Loader::rows`] and [`Loader::columns`] a tensor-parallel rank loads, and its model
/// gets, only its shard of each weight.
///
/// ```no_run
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// use candle_core::{DType, Device};
/// use tensorstream::{Loader, Slice};
///
/// // Rank 0 of 2: half the rows of q/k/v, half the columns of o_proj.
/// let rank = Slice::Part { rank: 0, world: 2 };
/// let loader = Loader::new()
///     .rows("*.self_attn.[qkv]_proj.weight", rank)
///     .columns("*.self_attn.o_proj.weight", rank);
/// let vb = tensorstream::candle::var_builder_with(&loader, &["model"], DType::BF16, &Device::Cpu)?;
/// # let _ = vb;
/// # Ok(())
/// # }
/// ```
pub fn var_builder_with<P: AsRef<Path>>(
    loader: &Loader,
    paths: &[P],
    dtype: DType,
    device: &Device,
) -> Result<VarBuilder<'static>> {
    let convert = matches!(dtype, DType::F32 | DType::F16 | DType::BF16).then_some(dtype);
    let mut tensors: HashMap<String, (Tensor, PathBuf)> = HashMap::new();
    for path in paths {
        let ckpt = Checkpoint::open(path.as_ref())?;
        for (name, (tensor, file)) in load_checkpoint(loader, &ckpt, device, convert)? {
            if let Some((_, first)) = tensors.get(&name) {
                return Err(Error::checkpoint(
                    &file,
                    format!(
                        "tensor {} is also in {}: each name once across the paths",
                        quoted(&name),
                        first.display()
                    ),
                ));
            }
            tensors.insert(name, (tensor, file));
        }
    }
    Ok(VarBuilder::from_backend(
        Box::new(Backend { tensors }),
        dtype,
        device.clone(),
    ))
}

/// The tensors behind a [`var_builder`]: each with the file it came from.
struct Backend {
    tensors: HashMap<String, (Tensor, PathBuf)>,
}

impl Backend {
    fn find(&self, name: &str) -> candle_core::Result<&(Tensor, PathBuf)> {
        self.tensors.get(name).ok_or_else(|| {
            candle_core::Error::CannotFindTensor {
                path: name.to_string(),
            }
            .bt()
        })
    }
}

impl SimpleBackend for Backend {
    fn get(
        &self,
        shape: Shape,
        name: &str,
        _: candle_nn::Init,
        dtype: DType,
        dev: &Device,
    ) -> candle_core::Result<Tensor> {
        let (tensor, file) = self.find(name)?;
        if tensor.shape() != &shape {
            return Err(candle_core::Error::Msg(format!(
                "{}: tensor {}: shape {:?} as loaded, but the model asks for {:?}",
                file.display(),
                quoted(name),
                tensor.dims(),
                shape.dims()
            ))
            .bt());
        }
        tensor.to_device(dev)?.to_dtype(dtype)
    }

    fn get_unchecked(&self, name: &str, dtype: DType, dev: &Device) -> candle_core::Result<Tensor> {
        self.find(name)?.0.to_device(dev)?.to_dtype(dtype)
    }

    fn contains_tensor(&self, name: &str) -> bool {
        self.tensors.contains_key(name)
    }
}

/// One tensor the load selected: what [`TensorSpec`] says of it, owned.
struct Wanted {
    name: String,
    file: PathBuf,
    /// Its dtype once loaded (after conversion), in the file's terms.
    dtype: Dtype,
    /// The same as candle's: U16 widened to U32.
    candle: DType,
    shape: Vec<usize>,
    /// Bytes once loaded as `dtype`.
    len: usize,
}

/// The tensors of `ckpt` that `loader` selects, loaded on `device` with floating ones
/// converted to `dtype`, each with the file it came from.
fn load_checkpoint(
    loader: &Loader,
    ckpt: &Checkpoint,
    device: &Device,
    dtype: Option<DType>,
) -> Result<HashMap<String, (Tensor, PathBuf)>> {
    let loader = loader.clone().dtype(conversion(dtype)?);
    let wanted = selected(&loader, ckpt)?;
    let tensors = match device {
        Device::Cpu => load_cpu(&loader, ckpt, wanted)?,
        #[cfg(tensorstream_candle_cuda)]
        Device::Cuda(dev) => cuda::load(&loader, ckpt, dev, wanted)?,
        #[cfg(not(tensorstream_candle_cuda))]
        Device::Cuda(_) => {
            return Err(Error::Unsupported(
                "this build of tensorstream has no candle CUDA support (build it with the \
                 `candle` and `cuda` features and TENSORSTREAM_CANDLE_CUDA=1, candle with \
                 its `cuda` feature)"
                    .into(),
            ))
        }
        Device::Metal(_) => {
            return Err(Error::Unsupported(
                "tensorstream loads candle tensors on the CPU and CUDA, not Metal".into(),
            ))
        }
    };
    Ok(tensors)
}

/// The loader's dtype for candle dtype `dtype`: only F32, F16 and BF16 are conversion
/// targets.
fn conversion(dtype: Option<DType>) -> Result<Option<Dtype>> {
    match dtype {
        None => Ok(None),
        Some(DType::F32) => Ok(Some(Dtype::F32)),
        Some(DType::F16) => Ok(Some(Dtype::F16)),
        Some(DType::BF16) => Ok(Some(Dtype::BF16)),
        Some(other) => Err(Error::InvalidArgument(format!(
            "tensorstream converts floating tensors to F32, F16 or BF16 while loading, not \
             {other:?} (load them as they are and use Tensor::to_dtype)"
        ))),
    }
}

/// The tensors `loader` selects from `ckpt`, each with its candle dtype; an error
/// naming the first whose dtype candle lacks. Reads no tensor bytes: the load is asked
/// for the tensors and given no memory for any, which it refuses before reading.
fn selected(loader: &Loader, ckpt: &Checkpoint) -> Result<Vec<Wanted>> {
    if ckpt.tensor_count() == 0 {
        return Ok(Vec::new());
    }
    let mut specs = Vec::new();
    let asked = loader.load_into_host(ckpt, |spec: &TensorSpec<'_>| {
        specs.push((
            spec.name.to_string(),
            spec.file.to_path_buf(),
            spec.file_dtype,
            spec.dtype,
            spec.shape.to_vec(),
            spec.len,
        ));
        None::<HostRegion<'_>>
    });
    match asked {
        // A load given no memory fails once every tensor has been asked for; any other
        // failure (a glob that matches nothing, a bad slice) comes before.
        Err(_) if !specs.is_empty() => {}
        Err(e) => return Err(e),
        Ok(_) => {
            return Err(Error::InvalidArgument(
                "internal: a load given no memory succeeded".into(),
            ))
        }
    }
    specs
        .into_iter()
        .map(|(name, file, file_dtype, dtype, shape, len)| {
            let candle = candle_dtype(dtype).ok_or_else(|| {
                let hint = if file_dtype.is_convertible_float() {
                    " (load it with dtype F32, F16 or BF16 to convert it)"
                } else {
                    ""
                };
                Error::Unsupported(format!(
                    "{}: tensor {}: candle has no {dtype} tensors{hint}",
                    file.display(),
                    quoted(&name)
                ))
            })?;
            let shape = shape
                .iter()
                .map(|&d| usize::try_from(d))
                .collect::<std::result::Result<Vec<_>, _>>()
                .map_err(|_| Error::tensor_err(&file, &name, "shape too large for this host"))?;
            Ok(Wanted {
                name,
                file,
                dtype,
                candle,
                shape,
                len,
            })
        })
        .collect()
}

/// candle's dtype for a tensor loaded as `dtype`, as `candle_core::safetensors` maps
/// it (U16 widened to U32); `None` where candle has none.
fn candle_dtype(dtype: Dtype) -> Option<DType> {
    Some(match dtype {
        Dtype::U8 => DType::U8,
        Dtype::U16 | Dtype::U32 => DType::U32,
        Dtype::I16 => DType::I16,
        Dtype::I32 => DType::I32,
        Dtype::I64 => DType::I64,
        Dtype::BF16 => DType::BF16,
        Dtype::F16 => DType::F16,
        Dtype::F32 => DType::F32,
        Dtype::F64 => DType::F64,
        Dtype::F8_E4M3 => DType::F8E4M3,
        Dtype::F6_E2M3 => DType::F6E2M3,
        Dtype::F6_E3M2 => DType::F6E3M2,
        Dtype::F4 => DType::F4,
        Dtype::F8_E8M0 => DType::F8E8M0,
        Dtype::BOOL
        | Dtype::I8
        | Dtype::F8_E5M2
        | Dtype::F8_E4M3FNUZ
        | Dtype::F8_E5M2FNUZ
        | Dtype::C64
        | Dtype::U64 => return None,
    })
}

/// The tensors `wanted` of `ckpt`, read by `loader` into host buffers that candle then
/// owns.
fn load_cpu(
    loader: &Loader,
    ckpt: &Checkpoint,
    wanted: Vec<Wanted>,
) -> Result<HashMap<String, (Tensor, PathBuf)>> {
    let mut buffers = HashMap::with_capacity(wanted.len());
    for w in wanted {
        let storage = host_storage(&w)?;
        buffers.insert(w.name.clone(), (w, storage));
    }
    if !buffers.is_empty() {
        let mut free: HashMap<&str, (Dtype, &mut [u8])> = HashMap::with_capacity(buffers.len());
        for (name, (w, storage)) in buffers.iter_mut() {
            let bytes = bytes_mut(storage)
                .get_mut(..w.len)
                .ok_or_else(|| Error::InvalidArgument("internal: candle buffer".into()))?;
            free.insert(name.as_str(), (w.dtype, bytes));
        }
        // The reader threads back each read's part of these fresh buffers just before
        // filling it (`load_into_host` treats the caller's memory as fresh); a thread
        // of our own backing them ahead measured slower (BENCHMARKS.md, "candle").
        loader.load_into_host(ckpt, |spec| {
            let (dtype, bytes) = free.remove(spec.name)?;
            Some(HostRegion { bytes, dtype })
        })?;
    }
    Ok(buffers
        .into_iter()
        .map(|(name, (w, mut storage))| {
            if w.dtype == Dtype::U16 {
                if let CpuStorage::U32(v) = &mut storage {
                    widen_u16(v);
                }
            }
            let tensor = Tensor::from_storage(
                Storage::Cpu(storage),
                w.shape,
                candle_core::op::BackpropOp::none(),
                false,
            );
            (name, (tensor, w.file))
        })
        .collect())
}

/// A zeroed host buffer of candle's type for tensor `w` (fresh pages from the
/// allocator: no byte is touched until the load writes it).
fn host_storage(w: &Wanted) -> Result<CpuStorage> {
    /// A zeroed buffer of `bytes` bytes, in elements of `T`.
    fn zeroed<T: bytemuck::Zeroable>(w: &Wanted, bytes: usize) -> Result<Vec<T>> {
        bytemuck::allocation::try_zeroed_vec(bytes / std::mem::size_of::<T>()).map_err(|()| {
            Error::io(
                &w.file,
                "allocate host memory for a candle tensor",
                std::io::Error::from(std::io::ErrorKind::OutOfMemory),
            )
        })
    }
    let n = w.len;
    Ok(match w.candle {
        DType::U8 => CpuStorage::U8(zeroed(w, n)?),
        // U16 lands in the first half and is widened in place.
        DType::U32 if w.dtype == Dtype::U16 => CpuStorage::U32(zeroed(w, n.saturating_mul(2))?),
        DType::U32 => CpuStorage::U32(zeroed(w, n)?),
        DType::I16 => CpuStorage::I16(zeroed(w, n)?),
        DType::I32 => CpuStorage::I32(zeroed(w, n)?),
        DType::I64 => CpuStorage::I64(zeroed(w, n)?),
        DType::BF16 => CpuStorage::BF16(zeroed(w, n)?),
        DType::F16 => CpuStorage::F16(zeroed(w, n)?),
        DType::F32 => CpuStorage::F32(zeroed(w, n)?),
        DType::F64 => CpuStorage::F64(zeroed(w, n)?),
        DType::F8E4M3 => CpuStorage::F8E4M3(zeroed(w, n)?),
        DType::F6E2M3 => CpuStorage::F6E2M3(zeroed(w, n)?),
        DType::F6E3M2 => CpuStorage::F6E3M2(zeroed(w, n)?),
        DType::F4 => CpuStorage::F4(zeroed(w, n)?),
        DType::F8E8M0 => CpuStorage::F8E8M0(zeroed(w, n)?),
        other => {
            return Err(Error::Unsupported(format!(
                "{}: tensor {}: no candle host buffer for {other:?}",
                w.file.display(),
                quoted(&w.name)
            )))
        }
    })
}

/// The bytes of a candle host buffer, for the loader to fill.
fn bytes_mut(storage: &mut CpuStorage) -> &mut [u8] {
    match storage {
        CpuStorage::U8(v)
        | CpuStorage::F6E2M3(v)
        | CpuStorage::F6E3M2(v)
        | CpuStorage::F4(v)
        | CpuStorage::F8E8M0(v) => v,
        CpuStorage::U32(v) => bytemuck::cast_slice_mut(v),
        CpuStorage::I16(v) => bytemuck::cast_slice_mut(v),
        CpuStorage::I32(v) => bytemuck::cast_slice_mut(v),
        CpuStorage::I64(v) => bytemuck::cast_slice_mut(v),
        CpuStorage::BF16(v) => bytemuck::cast_slice_mut(v),
        CpuStorage::F16(v) => bytemuck::cast_slice_mut(v),
        CpuStorage::F32(v) => bytemuck::cast_slice_mut(v),
        CpuStorage::F64(v) => bytemuck::cast_slice_mut(v),
        CpuStorage::F8E4M3(v) => bytemuck::cast_slice_mut(v),
    }
}

/// Widens in place the little-endian U16 values held in the first half of `v`'s
/// bytes into `v`'s U32 elements. From the last element down, so that each U16 is
/// read before the element it lies in is written.
fn widen_u16(v: &mut [u32]) {
    for i in (0..v.len()).rev() {
        let half: &[u16] = bytemuck::cast_slice(v);
        let x = half.get(i).copied().map(u16::from_le).unwrap_or(0);
        if let Some(slot) = v.get_mut(i) {
            *slot = u32::from(x);
        }
    }
}

/// U16 values, as the pairs of little-endian bytes of U8 tensor `pairs`, widened to
/// a U32 tensor of `shape` by candle's own ops (on the tensor's device).
#[cfg_attr(not(tensorstream_candle_cuda), allow(dead_code))]
fn widen_u16_pairs(pairs: &Tensor, shape: &[usize]) -> candle_core::Result<Tensor> {
    let pairs = pairs.reshape(((), 2))?.to_dtype(DType::U32)?;
    let low = pairs.narrow(1, 0, 1)?;
    let high = (pairs.narrow(1, 1, 1)? * 256.0)?;
    (high + low)?.reshape(shape)
}

/// The CUDA path: candle's `CudaDevice` allocates, the loader fills.
#[cfg(tensorstream_candle_cuda)]
mod cuda {
    use std::collections::HashMap;
    use std::path::PathBuf;

    use candle_core::cuda_backend::{CudaStorage, CudaStorageSlice};
    use candle_core::{CudaDevice, DType, DeviceLocation, Storage, Tensor};
    use cudarc::driver::{CudaSlice, DevicePtrMut, DeviceRepr, ValidAsZeroBits};

    use super::{widen_u16_pairs, Wanted};
    use crate::checkpoint::Checkpoint;
    use crate::dtype::Dtype;
    use crate::error::{quoted, Error, Result};
    use crate::load::{Device, Loader};
    use crate::sink::cuda::DeviceRegion;

    /// The tensors `wanted` of `ckpt`, each read by `loader` into memory that `dev`
    /// allocated on its stream, then wrapped as candle's storage.
    pub(super) fn load(
        loader: &Loader,
        ckpt: &Checkpoint,
        dev: &CudaDevice,
        wanted: Vec<Wanted>,
    ) -> Result<HashMap<String, (Tensor, PathBuf)>> {
        let DeviceLocation::Cuda { gpu_id } = candle_core::backend::BackendDevice::location(dev)
        else {
            return Err(Error::InvalidArgument("internal: not a CUDA device".into()));
        };
        let loader = loader.clone().device(Device::Cuda(gpu_id));
        let stream = dev.cuda_stream();
        let mut slots = Vec::with_capacity(wanted.len());
        for w in wanted {
            let slot = Slot::alloc(dev, &w)?;
            slots.push((w, slot));
        }
        if !slots.is_empty() {
            let mut regions: HashMap<String, DeviceRegion> = HashMap::with_capacity(slots.len());
            for (w, slot) in &mut slots {
                let ptr = slot.ptr(&stream);
                regions.insert(
                    w.name.clone(),
                    DeviceRegion {
                        ptr,
                        len: w.len,
                        dtype: w.dtype,
                    },
                );
            }
            // SAFETY: each region is a fresh allocation of `dev` (its zeroing queued on
            // candle's stream in the device's primary context, which the load waits for),
            // of exactly the tensor's length in its dtype; the allocations live in
            // `slots` until this call returns, and nothing else holds them: no host
            // access, no other work, until they are wrapped as tensors below.
            unsafe { loader.load_into_device(ckpt, |spec| regions.remove(spec.name)) }?;
        }
        slots
            .into_iter()
            .map(|(w, slot)| {
                let storage = Storage::Cuda(CudaStorage {
                    slice: slot.0,
                    device: dev.clone(),
                });
                let candle_err = |e: candle_core::Error| {
                    Error::Cuda(format!(
                        "{}: tensor {}: {e}",
                        w.file.display(),
                        quoted(&w.name)
                    ))
                };
                let tensor = if w.dtype == Dtype::U16 {
                    let pairs = Tensor::from_storage(
                        storage,
                        w.len,
                        candle_core::op::BackpropOp::none(),
                        false,
                    );
                    widen_u16_pairs(&pairs, &w.shape).map_err(candle_err)?
                } else {
                    Tensor::from_storage(
                        storage,
                        w.shape.clone(),
                        candle_core::op::BackpropOp::none(),
                        false,
                    )
                };
                Ok((w.name, (tensor, w.file)))
            })
            .collect()
    }

    /// One tensor's device memory, of candle's type for it.
    struct Slot(CudaStorageSlice);

    impl Slot {
        /// Zeroed memory of `dev` for tensor `w` (U16 as its bytes, widened once loaded).
        fn alloc(dev: &CudaDevice, w: &Wanted) -> Result<Slot> {
            /// `bytes` bytes of zeroed device memory, in elements of `T`.
            fn zeroed<T: DeviceRepr + ValidAsZeroBits>(
                dev: &CudaDevice,
                w: &Wanted,
                bytes: usize,
            ) -> Result<CudaSlice<T>> {
                dev.alloc_zeros(bytes / std::mem::size_of::<T>())
                    .map_err(|e| {
                        Error::Cuda(format!(
                            "{}: tensor {}: allocating {} bytes: {e}",
                            w.file.display(),
                            quoted(&w.name),
                            w.len
                        ))
                    })
            }
            let n = w.len;
            Ok(Slot(match w.candle {
                DType::U32 if w.dtype == Dtype::U16 => CudaStorageSlice::U8(zeroed(dev, w, n)?),
                DType::U8 => CudaStorageSlice::U8(zeroed(dev, w, n)?),
                DType::U32 => CudaStorageSlice::U32(zeroed(dev, w, n)?),
                DType::I16 => CudaStorageSlice::I16(zeroed(dev, w, n)?),
                DType::I32 => CudaStorageSlice::I32(zeroed(dev, w, n)?),
                DType::I64 => CudaStorageSlice::I64(zeroed(dev, w, n)?),
                DType::BF16 => CudaStorageSlice::BF16(zeroed(dev, w, n)?),
                DType::F16 => CudaStorageSlice::F16(zeroed(dev, w, n)?),
                DType::F32 => CudaStorageSlice::F32(zeroed(dev, w, n)?),
                DType::F64 => CudaStorageSlice::F64(zeroed(dev, w, n)?),
                DType::F8E4M3 => CudaStorageSlice::F8E4M3(zeroed(dev, w, n)?),
                DType::F6E2M3 => CudaStorageSlice::F6E2M3(zeroed(dev, w, n)?),
                DType::F6E3M2 => CudaStorageSlice::F6E3M2(zeroed(dev, w, n)?),
                DType::F4 => CudaStorageSlice::F4(zeroed(dev, w, n)?),
                DType::F8E8M0 => CudaStorageSlice::F8E8M0(zeroed(dev, w, n)?),
                other => {
                    return Err(Error::Unsupported(format!(
                        "{}: tensor {}: no candle CUDA buffer for {other:?}",
                        w.file.display(),
                        quoted(&w.name)
                    )))
                }
            }))
        }

        /// The device address of the memory (its write recorded on `stream`, which the
        /// load's wait for the context covers).
        fn ptr(&mut self, stream: &std::sync::Arc<cudarc::driver::CudaStream>) -> u64 {
            fn of<T>(
                s: &mut CudaSlice<T>,
                stream: &std::sync::Arc<cudarc::driver::CudaStream>,
            ) -> u64 {
                let (ptr, _record) = s.device_ptr_mut(stream);
                ptr
            }
            match &mut self.0 {
                CudaStorageSlice::U8(s)
                | CudaStorageSlice::F6E2M3(s)
                | CudaStorageSlice::F6E3M2(s)
                | CudaStorageSlice::F4(s)
                | CudaStorageSlice::F8E8M0(s) => of(s, stream),
                CudaStorageSlice::U32(s) => of(s, stream),
                CudaStorageSlice::I16(s) => of(s, stream),
                CudaStorageSlice::I32(s) => of(s, stream),
                CudaStorageSlice::I64(s) => of(s, stream),
                CudaStorageSlice::BF16(s) => of(s, stream),
                CudaStorageSlice::F16(s) => of(s, stream),
                CudaStorageSlice::F32(s) => of(s, stream),
                CudaStorageSlice::F64(s) => of(s, stream),
                CudaStorageSlice::F8E4M3(s) => of(s, stream),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn u16_widens_in_place() {
        let values: Vec<u16> = (0..1001u32).map(|i| (i * 7919 % 65536) as u16).collect();
        let mut v = vec![0xDEAD_BEEFu32; values.len()];
        let bytes: &mut [u8] = bytemuck::cast_slice_mut(&mut v);
        for (i, x) in values.iter().enumerate() {
            bytes[2 * i..2 * i + 2].copy_from_slice(&x.to_le_bytes());
        }
        widen_u16(&mut v);
        let want: Vec<u32> = values.iter().map(|&x| u32::from(x)).collect();
        assert_eq!(v, want);
    }

    #[test]
    fn u16_pairs_widen_with_candle_ops() {
        let values: Vec<u16> = (0..600u32).map(|i| (i * 40503 % 65536) as u16).collect();
        let bytes: Vec<u8> = values.iter().flat_map(|x| x.to_le_bytes()).collect();
        let pairs = Tensor::new(bytes.as_slice(), &Device::Cpu).unwrap();
        let wide = widen_u16_pairs(&pairs, &[20, 30]).unwrap();
        assert_eq!(wide.dims(), [20, 30]);
        let got = wide.flatten_all().unwrap().to_vec1::<u32>().unwrap();
        let want: Vec<u32> = values.iter().map(|&x| u32::from(x)).collect();
        assert_eq!(got, want);
    }

    #[test]
    fn dtypes_candle_lacks_are_none() {
        for d in Dtype::ALL {
            let lacks = matches!(
                d,
                Dtype::BOOL
                    | Dtype::I8
                    | Dtype::F8_E5M2
                    | Dtype::F8_E4M3FNUZ
                    | Dtype::F8_E5M2FNUZ
                    | Dtype::C64
                    | Dtype::U64
            );
            assert_eq!(candle_dtype(d).is_none(), lacks, "{d}");
        }
    }
}
