//! The native half of the Python package `tensorstream`: opens checkpoints, plans
//! loads, and fills memory that NumPy or PyTorch allocated, with the GIL released.
//!
//! # Who allocates
//!
//! The Python layer allocates every destination in the tensor's final dtype and shape
//! as an array or tensor of the framework's own (host memory: NumPy arrays, each large
//! one over an anonymous map of its own, which PyTorch CPU tensors share; CUDA:
//! `torch.empty(device=...)`, PyTorch's caching allocator), and this module fills it through [`tensorstream::Loader::load_into_host`] or, on
//! CUDA, `Loader::load_into_device`. Exporting the library's own buffers through
//! DLPack instead (the `dlpark` crate) was weighed and not chosen: both are zero-copy,
//! but DLPack hands the framework foreign memory with a foreign deleter, which keeps
//! a whole file's buffer alive while any one tensor of it lives and which PyTorch's
//! caching allocator does not count (`torch.cuda.memory_allocated` would not see the
//! weights, nor could the allocator reuse their memory). Memory the framework
//! allocated is its own: freed with the last tensor that uses it, counted where
//! users look, and safe to hand to any stream, because a CUDA load waits for the
//! primary context (which PyTorch uses) before its first copy and returns only when
//! its copies are complete.
//!
//! # Threads and signals
//!
//! Each load runs on a worker thread while the calling thread releases the GIL and
//! wakes every 50 ms to run Python's signal handlers: Ctrl-C cancels the load, waits
//! for the worker, and raises `KeyboardInterrupt` (see `run.rs`).

use std::collections::BTreeMap;
use std::path::PathBuf;

use pyo3::create_exception;
use pyo3::exceptions::{PyKeyboardInterrupt, PyOSError, PyRuntimeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::PyDict;
use tensorstream::plan::{PlanOptions, SliceRule};
use tensorstream::{Dtype, ErrorKind, IoBackend, LoadStats, Loader};

mod regions;
mod run;

create_exception!(
    tensorstream,
    SafetensorError,
    PyValueError,
    "An invalid checkpoint, tensor or argument; the message names the file and the tensor."
);

/// The Python exception for a library error: `OSError` (with its errno where the OS
/// gave one) for I/O, `KeyboardInterrupt` for a cancelled load, `RuntimeError` for
/// CUDA and what this build does not support, `SafetensorError` for the rest.
pub(crate) fn to_py(e: tensorstream::Error) -> PyErr {
    let msg = e.to_string();
    match e.kind() {
        ErrorKind::Io => {
            let errno = std::error::Error::source(&e)
                .and_then(|s| s.downcast_ref::<std::io::Error>())
                .and_then(|io| io.raw_os_error());
            match errno {
                Some(n) => PyOSError::new_err((n, msg)),
                None => PyOSError::new_err(msg),
            }
        }
        ErrorKind::FileChanged => PyOSError::new_err(msg),
        ErrorKind::Cancelled => PyKeyboardInterrupt::new_err(msg),
        ErrorKind::Unsupported | ErrorKind::Cuda => PyRuntimeError::new_err(msg),
        _ => SafetensorError::new_err(msg),
    }
}

/// A `SafetensorError` with this message.
pub(crate) fn bad_arg(msg: impl Into<String>) -> PyErr {
    SafetensorError::new_err(msg.into())
}

/// An opened checkpoint: every shard's header, validated; no tensor bytes read.
#[pyclass(frozen, module = "tensorstream._native")]
struct Checkpoint {
    inner: tensorstream::Checkpoint,
}

#[pymethods]
impl Checkpoint {
    /// Opens a file, a directory of shards or a `model.safetensors.index.json`.
    #[new]
    fn open(py: Python<'_>, path: PathBuf) -> PyResult<Self> {
        let inner = py
            .allow_threads(|| tensorstream::Checkpoint::open(&path))
            .map_err(to_py)?;
        Ok(Checkpoint { inner })
    }

    /// `(name, dtype, shape)` of every tensor, shard by shard, each in offset order.
    fn tensors(&self) -> Vec<(String, String, Vec<u64>)> {
        self.inner
            .tensors()
            .map(|t| {
                let i = t.info;
                (i.name.clone(), i.dtype.to_string(), i.shape.clone())
            })
            .collect()
    }

    /// The `__metadata__` of the shards, merged (a single file's as it is); `None`
    /// when no shard has one.
    fn metadata(&self) -> Option<BTreeMap<String, String>> {
        let mut all: Option<BTreeMap<String, String>> = None;
        for m in self.inner.shards.iter().filter_map(|h| h.metadata.as_ref()) {
            all.get_or_insert_with(BTreeMap::new)
                .extend(m.iter().map(|(k, v)| (k.clone(), v.clone())));
        }
        all
    }

    /// The path it was opened from.
    #[getter]
    fn path(&self) -> PathBuf {
        self.inner.path.clone()
    }

    /// Bytes of all its tensors.
    #[getter]
    fn total_bytes(&self) -> u64 {
        self.inner.total_bytes()
    }

    fn __len__(&self) -> usize {
        self.inner.tensor_count()
    }
}

/// The options of a load, as the Python functions take them.
struct Options {
    dtype: Option<Dtype>,
    only: Vec<String>,
    slices: Vec<SliceRule>,
    io: IoBackend,
}

impl Options {
    fn parse(
        dtype: Option<&str>,
        only: Vec<String>,
        rows: Vec<String>,
        cols: Vec<String>,
        io: Option<&str>,
    ) -> PyResult<Options> {
        let dtype = dtype
            .map(|d| d.parse::<Dtype>().map_err(bad_arg))
            .transpose()?;
        let mut slices = Vec::new();
        for (dim, specs) in [(0, rows), (1, cols)] {
            for s in specs {
                slices.push(SliceRule::parse(&s, dim).map_err(bad_arg)?);
            }
        }
        let io = io.unwrap_or("auto").parse::<IoBackend>().map_err(bad_arg)?;
        Ok(Options {
            dtype,
            only,
            slices,
            io,
        })
    }

    fn loader(&self) -> Loader {
        let mut l = Loader::new().io(self.io).dtype(self.dtype);
        for g in &self.only {
            l = l.only(g.clone());
        }
        for r in &self.slices {
            l = match r.dim {
                0 => l.rows(r.pattern.clone(), r.slice),
                _ => l.columns(r.pattern.clone(), r.slice),
            };
        }
        l
    }
}

/// A planned tensor as Python sees it: (name, dtype in the file, dtype loaded, shape,
/// bytes).
type Spec = (String, String, String, Vec<u64>, u64);

/// The options of a load, parsed once, and the loader that runs them: its clones share
/// the pinned staging a CUDA load keeps, so the batches of one `iter_tensors` pin it
/// once.
#[pyclass(frozen, module = "tensorstream._native", name = "Loader")]
struct PyLoader {
    opts: Options,
    loader: Loader,
}

#[pymethods]
impl PyLoader {
    /// `dtype`: "F32", "F16" or "BF16"; `only`: globs; `rows`/`cols`: `GLOB=START:END`
    /// or `GLOB=RANK/WORLD`; `io`: the backend's name; `device`: a CUDA ordinal for
    /// `load_device`.
    #[new]
    #[pyo3(signature = (*, dtype=None, only=vec![], rows=vec![], cols=vec![], io=None, device=None))]
    fn new(
        dtype: Option<&str>,
        only: Vec<String>,
        rows: Vec<String>,
        cols: Vec<String>,
        io: Option<&str>,
        device: Option<usize>,
    ) -> PyResult<Self> {
        let opts = Options::parse(dtype, only, rows, cols, io)?;
        let mut loader = opts.loader();
        if let Some(n) = device {
            loader = loader.device(tensorstream::Device::Cuda(n));
        }
        Ok(PyLoader { opts, loader })
    }

    /// What a load with these options lands, per tensor, shard by shard in offset
    /// order. Raises the errors the load would (a glob matching nothing, a slice a
    /// tensor cannot satisfy).
    fn plan(&self, ckpt: &Checkpoint) -> PyResult<Vec<Spec>> {
        let opts = PlanOptions {
            only: self.opts.only.clone(),
            dtype: self.opts.dtype,
            slices: self.opts.slices.clone(),
            ..PlanOptions::default()
        };
        let names: Vec<&str> = ckpt.inner.tensors().map(|t| t.info.name.as_str()).collect();
        let globs = opts.only.iter().map(|g| (g, "only")).chain(
            opts.slices
                .iter()
                .map(|r| (&r.pattern, if r.dim == 0 { "rows" } else { "cols" })),
        );
        for (glob, what) in globs {
            if !names
                .iter()
                .any(|n| tensorstream::plan::glob_match(glob, n))
            {
                return Err(bad_arg(format!(
                    "no tensor of {} matches '{glob}' ({what})",
                    ckpt.inner.path.display()
                )));
            }
        }
        let p = tensorstream::plan::plan(&ckpt.inner, &opts).map_err(to_py)?;
        Ok(p.files
            .iter()
            .flat_map(|f| &f.tensors)
            .map(|t| {
                let (src, dtype) = (t.src_dtype.to_string(), t.dtype.to_string());
                (t.name.clone(), src, dtype, t.shape.clone(), t.len)
            })
            .collect())
    }

    /// Fills host memory the caller allocated: `regions` is a list of `(name, array,
    /// dtype)` where `array` is a writable, C-contiguous one-dimensional `uint8` NumPy
    /// array of exactly the tensor's bytes in `dtype`. Returns the load's figures.
    #[pyo3(signature = (ckpt, regions, progress=None))]
    fn load_host(
        &self,
        py: Python<'_>,
        ckpt: &Checkpoint,
        regions: Vec<regions::Dest<'_>>,
        progress: Option<Bound<'_, PyAny>>,
    ) -> PyResult<Py<PyDict>> {
        // The regions borrow `regions`, which holds the arrays until this returns.
        let mut chosen = regions::host_regions(&regions)?;
        let ckpt = &ckpt.inner;
        let stats = run::run(py, self.loader.clone(), progress.as_ref(), move |l| {
            l.load_into_host(ckpt, |t| chosen.remove(t.name))
        })?;
        stats_dict(py, &stats)
    }

    /// Fills device memory the caller allocated (PyTorch CUDA tensors): `regions` is a
    /// list of `(name, tensor, dtype)` where `tensor` is a contiguous `uint8` CUDA
    /// tensor of exactly the tensor's bytes in `dtype`, on the loader's device.
    #[cfg(feature = "cuda")]
    #[pyo3(signature = (ckpt, regions, progress=None))]
    fn load_device(
        &self,
        py: Python<'_>,
        ckpt: &Checkpoint,
        regions: Vec<regions::Dest<'_>>,
        progress: Option<Bound<'_, PyAny>>,
    ) -> PyResult<Py<PyDict>> {
        // `regions` holds the tensors, and so their memory, until this returns.
        let chosen = regions::device_regions(&regions)?;
        let ckpt = &ckpt.inner;
        let stats = run::run(py, self.loader.clone(), progress.as_ref(), move |l| {
            regions::load_device(l, ckpt, chosen)
        })?;
        stats_dict(py, &stats)
    }
}

/// Whether a tensor stored as `file_dtype` can be loaded as `dtype` (the format's
/// names, such as "F8_E4M3" and "BF16").
#[pyfunction]
fn loads_as(file_dtype: &str, dtype: &str) -> PyResult<bool> {
    let parse = |d: &str| d.parse::<Dtype>().map_err(bad_arg);
    Ok(parse(file_dtype)?.loads_as(parse(dtype)?))
}

/// Whether this build loads into CUDA memory.
#[pyfunction]
fn has_cuda() -> bool {
    cfg!(feature = "cuda")
}

/// The figures of a load as a dict.
fn stats_dict(py: Python<'_>, s: &LoadStats) -> PyResult<Py<PyDict>> {
    let d = PyDict::new(py);
    d.set_item("tensor_bytes", s.tensor_bytes)?;
    d.set_item("output_bytes", s.output_bytes)?;
    d.set_item("read_bytes", s.read_bytes)?;
    d.set_item("in_place_bytes", s.in_place_bytes)?;
    d.set_item("seconds", s.elapsed.as_secs_f64())?;
    let paths: Vec<&str> = s.files.iter().map(|f| f.io_path).collect();
    d.set_item("io_paths", paths)?;
    Ok(d.unbind())
}

/// The module `tensorstream._native`.
#[pymodule]
fn _native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add("SafetensorError", m.py().get_type::<SafetensorError>())?;
    m.add_class::<Checkpoint>()?;
    m.add_class::<PyLoader>()?;
    m.add_function(wrap_pyfunction!(has_cuda, m)?)?;
    m.add_function(wrap_pyfunction!(loads_as, m)?)?;
    Ok(())
}
