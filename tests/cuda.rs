//! The CUDA path against the host path, byte for byte. Runs on a machine with a GPU
//! (the GPU check script runs this binary there). Elsewhere
//! `every_test_here_passes_on_the_fake_driver` runs them all again in a child
//! process under the fake driver of tests/fake_cuda, which carries the driver calls
//! out on host memory and checks their order, bounds and clean-up; the tests
//! themselves, run without any driver, print why they skip and pass.
#![cfg(feature = "cuda")]

mod fake_cuda;

use std::path::{Path, PathBuf};

use rand::{Rng, SeedableRng};
use safetensors::tensor::TensorView;
use tensorstream::internals::Context;
use tensorstream::FileReport;
use tensorstream::{Device, Dtype, ErrorKind, IoBackend, Loader, Model};

/// Whether a GPU is usable; prints the reason when not.
fn gpu() -> bool {
    match Context::new(0) {
        Ok(_) => true,
        Err(e) => {
            eprintln!("skipping: no usable CUDA device ({e})");
            false
        }
    }
}

/// The fixture of `seed` in a new directory (kept alive by the returned guard), read
/// once so that it is in the page cache.
fn cached_fixture(seed: u64) -> (tempfile::TempDir, PathBuf) {
    let (dir, path) = new_fixture(seed);
    std::fs::read(&path).unwrap();
    (dir, path)
}

/// The fixture of `seed` in a new directory, kept alive by the returned guard.
fn new_fixture(seed: u64) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let path = fixture_file(dir.path(), seed, "cuda-fixture.safetensors", "");
    (dir, path)
}

/// `shards` files of the fixture (tensor names prefixed with the shard) in `dir`, a
/// sharded checkpoint.
fn sharded_fixture(dir: &Path, seed: u64, shards: u64) -> PathBuf {
    for s in 0..shards {
        let name = format!("model-{:05}-of-{shards:05}.safetensors", s + 1);
        fixture_file(dir, seed + s, &name, &format!("s{s}."));
    }
    dir.to_path_buf()
}

fn fixture_file(dir: &Path, seed: u64, file: &str, prefix: &str) -> PathBuf {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let specs: Vec<(String, safetensors::Dtype, Vec<usize>)> = vec![
        ("a.f32".into(), safetensors::Dtype::F32, vec![257, 33]),
        ("b.f16".into(), safetensors::Dtype::F16, vec![1000, 3]),
        ("c.bf16".into(), safetensors::Dtype::BF16, vec![4097]),
        ("d.e4m3".into(), safetensors::Dtype::F8_E4M3, vec![65_537]),
        ("e.e5m2".into(), safetensors::Dtype::F8_E5M2, vec![3, 5, 7]),
        (
            "f.e4m3fnuz".into(),
            safetensors::Dtype::F8_E4M3FNUZ,
            vec![513],
        ),
        (
            "g.e5m2fnuz".into(),
            safetensors::Dtype::F8_E5M2FNUZ,
            vec![255],
        ),
        ("h.e8m0".into(), safetensors::Dtype::F8_E8M0, vec![256]),
        ("i.i32".into(), safetensors::Dtype::I32, vec![77]),
        ("j.bool".into(), safetensors::Dtype::BOOL, vec![9]),
        ("k.big.bf16".into(), safetensors::Dtype::BF16, vec![3 << 20]),
        ("l.empty".into(), safetensors::Dtype::F32, vec![0, 4]),
        ("m.scalar".into(), safetensors::Dtype::F16, vec![]),
    ];
    let data: Vec<Vec<u8>> = specs
        .iter()
        .map(|(_, d, s)| {
            let n = s.iter().product::<usize>() * d.bitsize() / 8;
            let mut v = vec![0u8; n];
            rng.fill(&mut v[..]);
            v
        })
        .collect();
    let views: Vec<(String, TensorView<'_>)> = specs
        .iter()
        .zip(&data)
        .map(|((n, d, s), v)| {
            (
                format!("{prefix}{n}"),
                TensorView::new(*d, s.clone(), v).unwrap(),
            )
        })
        .collect();
    let path = dir.join(file);
    safetensors::serialize_to_file(views, None, &path).unwrap();
    path
}

/// The directory a fixture file is in.
fn dir_of(path: &Path) -> PathBuf {
    path.parent().unwrap().to_path_buf()
}

/// A loader to cuda:0 through `io`, converting to `dtype`, with reads of `chunk`
/// bytes, `staging` bytes of staging and `depth` reads in flight.
fn cuda_loader(
    io: IoBackend,
    dtype: Option<Dtype>,
    chunk: u64,
    staging: u64,
    depth: usize,
) -> Loader {
    Loader::new()
        .device(Device::Cuda(0))
        .io(io)
        .dtype(dtype)
        .chunk_size(chunk)
        .staging_bytes(staging)
        .queue_depth(depth)
}

type HostTensors = Vec<(String, Dtype, Vec<u8>)>;

/// Every tensor of `m`, copied to the host, with its name and dtype.
fn on_host(m: &Model) -> HostTensors {
    m.tensors()
        .map(|t| (t.name.clone(), t.dtype, t.to_host().unwrap()))
        .collect()
}

fn host_bytes(l: Loader, path: &Path) -> HostTensors {
    on_host(&l.load(path).unwrap())
}

/// Loads `path` with `l` and says which path read it: the tensors on the host, and
/// the first file's report.
fn loaded_via(l: Loader, path: &Path, what: &str) -> (HostTensors, FileReport) {
    let m = l.load(path).unwrap();
    let report = m.stats().files[0].clone();
    eprintln!("{what}: {} ({})", report.io_path, report.reason);
    (on_host(&m), report)
}

#[test]
fn cuda_loads_equal_host_loads_for_every_dtype_conversion_and_backend() {
    if !gpu() {
        return;
    }
    let (_dir, path) = new_fixture(1);
    for dtype in [None, Some(Dtype::F32), Some(Dtype::F16), Some(Dtype::BF16)] {
        let want = host_bytes(Loader::new().dtype(dtype), &path);
        for io in [
            IoBackend::Auto,
            IoBackend::Direct,
            IoBackend::Buffered,
            IoBackend::Pread,
            IoBackend::PreadDirect,
        ] {
            for per_tensor in [false, true] {
                let l = Loader::new()
                    .device(Device::Cuda(0))
                    .io(io)
                    .dtype(dtype)
                    .chunk_size(64 << 10)
                    .per_tensor_allocations(per_tensor);
                let m = match l.load(&path) {
                    Err(e) if e.kind() == ErrorKind::Unsupported => {
                        eprintln!("skipping {io:?}: {e}");
                        continue;
                    }
                    r => r.unwrap(),
                };
                let got: Vec<_> = m
                    .tensors()
                    .map(|t| {
                        assert_eq!(t.device(), Device::Cuda(0));
                        assert!(t.device_ptr().is_some());
                        (t.name.clone(), t.dtype, t.to_host().unwrap())
                    })
                    .collect();
                assert_eq!(got.len(), want.len());
                for (g, w) in got.iter().zip(&want) {
                    assert_eq!(
                        g, w,
                        "{} differs ({io:?}, {dtype:?}, per_tensor {per_tensor})",
                        w.0
                    );
                }
            }
        }
    }
}

/// The pread pool on CUDA, for small and large staging and chunks, one reading thread
/// or several, raw and converted, one allocation per file or per tensor.
#[test]
fn every_staging_size_and_depth_equals_host_loads() {
    if !gpu() {
        return;
    }
    let (_dir, path) = cached_fixture(5);
    for dtype in [None, Some(Dtype::F32), Some(Dtype::BF16)] {
        let want = host_bytes(Loader::new().dtype(dtype), &path);
        // (chunk, staging, registrations in flight): one thread or several, windows
        // of many pages or of one.
        for (chunk, staging, depth) in [
            (4 << 20, 64 << 20, 16),
            (64 << 10, 256 << 10, 3),
            (4096, 8192, 1),
            (4096, 64 << 10, 8),
        ] {
            for per_tensor in [false, true] {
                let what = format!(
                    "{dtype:?}, chunk {chunk}, staging {staging}, depth {depth}, per_tensor {per_tensor}"
                );
                let l = cuda_loader(IoBackend::Pread, dtype, chunk, staging, depth)
                    .per_tensor_allocations(per_tensor);
                let (got, report) = loaded_via(l, &path, &what);
                assert_eq!(report.io_path, "pread buffered", "{what}: {report:?}");
                assert_eq!(got.len(), want.len(), "{what}");
                for (g, w) in got.iter().zip(&want) {
                    assert_eq!(g, w, "{} differs ({what})", w.0);
                }
            }
        }
    }
}

/// Loads, copies back and frees leave the calling thread's current context as they
/// found it: none on a thread that had none, and another device's context (as a
/// framework or the CUDA runtime has current) on a thread that had it, which then
/// still works.
#[test]
fn the_callers_current_context_is_left_as_it_was() {
    use cudarc::driver::result;
    if !gpu() {
        return;
    }
    let (_dir, path) = cached_fixture(11);
    let want = host_bytes(Loader::new().dtype(Some(Dtype::F16)), &path);
    let current = || result::ctx::get_current().unwrap();
    let loads = |had: Option<cudarc::driver::sys::CUcontext>| {
        for io in [IoBackend::Pread, IoBackend::Buffered, IoBackend::Direct] {
            let what = format!("{io:?}");
            let l = Loader::new()
                .device(Device::Cuda(0))
                .io(io)
                .dtype(Some(Dtype::F16))
                .per_tensor_allocations(true);
            let m = l.load(&path).unwrap();
            assert_eq!(current(), had, "{what}: after the load");
            assert_eq!(on_host(&m), want, "{what}");
            assert_eq!(current(), had, "{what}: after copies back");
            drop(m);
            assert_eq!(current(), had, "{what}: after freeing the tensors");
            drop(l);
            assert_eq!(current(), had, "{what}: after freeing the staging");
        }
    };
    std::thread::scope(|scope| {
        scope.spawn(|| loads(None));
    });
    if let Err(e) = Context::new(1) {
        eprintln!("not run: a second device's context current needs a second CUDA device ({e})");
        return;
    }
    std::thread::scope(|scope| {
        scope.spawn(|| {
            let dev = result::device::get(1).unwrap();
            // SAFETY: a device handle from cuDeviceGet; released below.
            let ctx = unsafe { result::primary_ctx::retain(dev) }.unwrap();
            // SAFETY: a retained context.
            unsafe { result::ctx::set_current(ctx) }.unwrap();
            loads(Some(ctx));
            // SAFETY: the context is current; the memory is freed at once.
            let p = unsafe { result::malloc_sync(4096) }.unwrap();
            // SAFETY: allocated just above.
            unsafe { result::free_sync(p) }.unwrap();
            // SAFETY: retained above.
            unsafe { result::primary_ctx::release(dev) }.unwrap();
        });
    });
}

#[test]
fn filters_and_small_staging_on_cuda() {
    if !gpu() {
        return;
    }
    let (_dir, path) = new_fixture(2);
    let want = host_bytes(Loader::new().only("*.bf16").dtype(Some(Dtype::F32)), &path);
    let got = host_bytes(
        Loader::new()
            .device(Device::Cuda(0))
            .only("*.bf16")
            .dtype(Some(Dtype::F32))
            .chunk_size(4096)
            .staging_bytes(8192)
            .queue_depth(1),
        &path,
    );
    assert_eq!(got, want);
}

/// A tensor-parallel rank's rows and columns (and other ranges, one crossing many
/// chunks, columns of rows longer than a read) on every path to the device, raw and
/// converted, the columns gathered by 2-D copies (or by the CPU, narrow ones), as the host loads
/// them; and into memory the caller allocated, where each tensor is described by its
/// slice.
#[test]
fn selected_rows_and_columns_load_on_cuda_as_on_the_host() {
    use tensorstream::{Checkpoint, DeviceRegion, Slice};
    if !gpu() {
        return;
    }
    let (_dir, path) = cached_fixture(3);
    let sliced = |l: Loader| {
        l.rows(
            "a.f32",
            Slice::Range {
                start: 100,
                end: 200,
            },
        )
        .columns("b.f16", Slice::Range { start: 1, end: 3 })
        .columns("e.e5m2", Slice::Part { rank: 4, world: 5 })
        .rows(
            "k.big.bf16",
            Slice::Range {
                start: 1001,
                end: 2_000_003,
            },
        )
        .columns("l.empty", Slice::Range { start: 1, end: 2 })
    };
    for (dtype, chunk) in [(None, 64 << 10), (Some(Dtype::F16), 64 << 10), (None, 4096)] {
        let want = host_bytes(sliced(Loader::new().dtype(dtype)), &path);
        for io in [IoBackend::Pread, IoBackend::Direct, IoBackend::Buffered] {
            for (per_tensor, wc) in [(false, false), (true, false), (false, true)] {
                let what =
                    format!("{dtype:?} {chunk} {io:?} per_tensor {per_tensor} write-combined {wc}");
                let l = sliced(cuda_loader(io, dtype, chunk, 1 << 20, 8))
                    .per_tensor_allocations(per_tensor)
                    .write_combined_staging(wc);
                let m = match l.load(&path) {
                    Err(e) if e.kind() == ErrorKind::Unsupported => {
                        eprintln!("skipping {what}: {e}");
                        continue;
                    }
                    r => r.unwrap(),
                };
                assert_eq!(m.get("b.f16").unwrap().shape, vec![1000, 2], "{what}");
                assert_eq!(on_host(&m), want, "{what}");
            }
        }
    }
    // Rows only, through the mapped file.
    let rows_only = |l: Loader| l.rows("k.big.bf16", Slice::Part { rank: 1, world: 3 });
    let want = host_bytes(rows_only(Loader::new()), &path);
    let (got, _) = loaded_via(
        rows_only(cuda_loader(IoBackend::Buffered, None, 64 << 10, 1 << 20, 2)),
        &path,
        "rows, buffered",
    );
    assert_eq!(got, want);

    // Columns of rows longer than a read: each row's selected bytes are read on their
    // own, nothing is gathered, and they are copied, raw and converted, straight to
    // their places.
    let long = dir_of(&path).join("long-rows.safetensors");
    let mut rng = rand::rngs::StdRng::seed_from_u64(5);
    let mut data = vec![0u8; 3 * 5000 * 4];
    rng.fill(&mut data[..]);
    let view = TensorView::new(safetensors::Dtype::F32, vec![3, 5000], &data).unwrap();
    safetensors::serialize_to_file([("w", view)], None, &long).unwrap();
    std::fs::read(&long).unwrap();
    for dtype in [None, Some(Dtype::BF16)] {
        let part = |l: Loader| l.columns("w", Slice::Part { rank: 2, world: 4 });
        let want = host_bytes(part(Loader::new().dtype(dtype).chunk_size(4096)), &long);
        for io in [IoBackend::Buffered, IoBackend::Pread] {
            let (got, _) = loaded_via(
                part(cuda_loader(io, dtype, 4096, 1 << 20, 2)),
                &long,
                "long rows",
            );
            assert_eq!(got, want, "{dtype:?} {io:?}");
        }
    }

    let ckpt = Checkpoint::open(&path).unwrap();
    let want = host_bytes(sliced(Loader::new().dtype(Some(Dtype::F32))), &path);
    let (at, len) = arena_layout(&want);
    let arena = Arena::new(0, len, 7);
    let l = sliced(cuda_loader(
        IoBackend::Pread,
        Some(Dtype::F32),
        64 << 10,
        1 << 20,
        8,
    ));
    let mut shapes = std::collections::BTreeMap::new();
    // SAFETY: every region lies in the live arena, no two overlap, and nothing else
    // uses the arena during the load.
    let m = unsafe {
        l.load_into_device(&ckpt, |t| {
            shapes.insert(t.name.to_string(), t.shape.to_vec());
            Some(DeviceRegion {
                ptr: arena.ptr + at[t.name] as u64,
                len: t.len,
                dtype: t.dtype,
            })
        })
    }
    .unwrap();
    assert_eq!(shapes["a.f32"], vec![100, 33]);
    assert_eq!(shapes["e.e5m2"], vec![3, 1, 7]);
    assert_eq!(shapes["k.big.bf16"], vec![2_000_003 - 1001]);
    assert_eq!(on_host(&m), want, "into the caller's memory");
    drop(m);
    arena.assert_holds(want.iter().map(|(n, _, b)| (at[n], b.as_slice())), "slices");
}

#[test]
fn a_bad_device_index_is_a_clear_error() {
    if !gpu() {
        return;
    }
    let (_dir, path) = new_fixture(3);
    let e = Loader::new()
        .device(Device::Cuda(999))
        .load(&path)
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Cuda);
    assert!(e.to_string().contains("cuda:999 does not exist"), "{e}");
}

#[test]
fn a_failed_read_on_cuda_is_an_error() {
    if !gpu() {
        return;
    }
    let (_dir, path) = new_fixture(4);
    let e = Loader::new()
        .device(Device::Cuda(0))
        .chunk_size(64 << 10)
        .fail_nth_read(2)
        .load(&path)
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Io, "{e}");
    // The device is still usable afterwards.
    assert!(Loader::new().device(Device::Cuda(0)).load(&path).is_ok());
}

#[test]
fn without_a_gpu_the_error_is_clear_and_not_a_panic() {
    if gpu() {
        return;
    }
    let (_dir, path) = new_fixture(5);
    let e = Loader::new()
        .device(Device::Cuda(0))
        .load(&path)
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Cuda);
    assert!(e.to_string().starts_with("CUDA: "), "{e}");
    let e = Loader::new().device(Device::Cuda(0)).prepare().unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Cuda);
    assert!(e.to_string().starts_with("CUDA: "), "{e}");
}

/// One loader (and its clones) keeps its pinned staging between loads: later loads
/// reuse it, also after a failed load, from three threads at once (two of them
/// allocate their own), and after `prepare`; kept or not, write-combined, on huge
/// pages or neither (the second kept load of a kind reuses the first's), over mmap,
/// pread and O_DIRECT: each load still equals the host load.
#[test]
fn a_loader_reuses_its_staging_across_loads_and_threads() {
    if !gpu() {
        return;
    }
    let (_dir, path) = new_fixture(6);
    let dtypes = [None, Some(Dtype::F32), Some(Dtype::BF16)];
    let want: Vec<_> = dtypes
        .iter()
        .map(|&d| host_bytes(Loader::new().dtype(d), &path))
        .collect();
    let l = Loader::new()
        .device(Device::Cuda(0))
        .chunk_size(64 << 10)
        .staging_bytes(1 << 20);
    l.prepare().unwrap();
    for round in 0..2 {
        for (d, w) in dtypes.iter().zip(&want) {
            assert_eq!(
                &host_bytes(l.clone().dtype(*d), &path),
                w,
                "round {round}, {d:?}"
            );
        }
        let e = l.clone().fail_nth_read(3).load(&path).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Io, "{e}");
    }
    std::thread::scope(|s| {
        let runs: Vec<_> = dtypes
            .iter()
            .zip(&want)
            .map(|(d, w)| {
                let (l, path) = (l.clone().dtype(*d), &path);
                s.spawn(move || assert_eq!(&host_bytes(l, path), w, "{d:?}"))
            })
            .collect();
        for r in runs {
            r.join().unwrap();
        }
    });
    l.release_staging();
    assert_eq!(
        &host_bytes(l.clone(), &path),
        &want[0],
        "after release_staging"
    );
    let w = host_bytes(Loader::new().dtype(Some(Dtype::F16)), &path);
    // (keep, write-combined, huge pages)
    for (keep, wc, huge) in [
        (false, false, false),
        (true, false, false),
        (true, true, false),
        (true, true, false),
        (false, true, false),
        (true, false, true),
        (true, false, true),
        (false, false, true),
    ] {
        for io in [IoBackend::Buffered, IoBackend::Pread, IoBackend::Direct] {
            let l = l
                .clone()
                .dtype(Some(Dtype::F16))
                .io(io)
                .keep_staging(keep)
                .write_combined_staging(wc)
                .huge_page_staging(huge);
            let m = match l.load(&path) {
                Err(e) if e.kind() == ErrorKind::Unsupported => {
                    eprintln!("skipping {io:?}: {e}");
                    continue;
                }
                r => r.unwrap(),
            };
            assert_eq!(
                on_host(&m),
                w,
                "keep {keep}, write-combined {wc}, huge pages {huge}, {io:?}"
            );
        }
    }
    let e = l
        .clone()
        .write_combined_staging(true)
        .huge_page_staging(true)
        .load(&path)
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidArgument, "{e}");
}

/// Every F16, BF16 and FP8 code point (and random F32 bits), converted on the GPU to
/// each target, equals the host's conversion (which CI checks exhaustively against
/// independent references): the kernels' device-only code paths (table lookups,
/// hardware conversions) are checked here. Each tensor also appears at an odd offset,
/// so both the vector and the single-element paths run.
#[test]
fn every_code_point_converts_on_the_gpu_as_on_the_host() {
    if !gpu() {
        return;
    }
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    let sixteen: Vec<u8> = (0..=u16::MAX).flat_map(u16::to_le_bytes).collect();
    let bytes: Vec<u8> = (0..=255u8).cycle().take(256 * 33).collect();
    let mut f32s = vec![0u8; 4 * 100_003];
    rng.fill(&mut f32s[..]);
    let mut specs: Vec<(String, safetensors::Dtype, Vec<u8>)> = vec![
        ("f16".into(), safetensors::Dtype::F16, sixteen.clone()),
        ("bf16".into(), safetensors::Dtype::BF16, sixteen),
        ("f32".into(), safetensors::Dtype::F32, f32s),
    ];
    for d in [
        safetensors::Dtype::F8_E4M3,
        safetensors::Dtype::F8_E5M2,
        safetensors::Dtype::F8_E4M3FNUZ,
        safetensors::Dtype::F8_E5M2FNUZ,
        safetensors::Dtype::F8_E8M0,
    ] {
        specs.push((format!("{d:?}"), d, bytes.clone()));
    }
    // The same bytes once more behind a 1-element tensor, which shifts them off
    // the 16-byte alignment.
    let mut all = Vec::new();
    for (name, d, data) in specs {
        let w = d.bitsize() / 8;
        all.push((format!("{name}.pad"), d, data[..w].to_vec()));
        all.push((format!("{name}.all"), d, data.clone()));
        all.push((format!("{name}.shifted"), d, data[w..].to_vec()));
    }
    let views: Vec<(String, TensorView<'_>)> = all
        .iter()
        .map(|(n, d, v)| {
            let elems = v.len() * 8 / d.bitsize();
            (n.clone(), TensorView::new(*d, vec![elems], v).unwrap())
        })
        .collect();
    let path = dir.path().join("code-points.safetensors");
    safetensors::serialize_to_file(views, None, &path).unwrap();
    for dtype in [Some(Dtype::F32), Some(Dtype::F16), Some(Dtype::BF16)] {
        let want = host_bytes(Loader::new().dtype(dtype), &path);
        for chunk in [64 << 10, 4 << 20] {
            let got = host_bytes(
                Loader::new()
                    .device(Device::Cuda(0))
                    .dtype(dtype)
                    .chunk_size(chunk),
                &path,
            );
            assert_eq!(got.len(), want.len());
            for (g, w) in got.iter().zip(&want) {
                assert!(g == w, "{} to {dtype:?} differs (chunk {chunk})", w.0);
            }
        }
    }
}

/// A token cancelled from the progress callback stops a CUDA load on every path
/// (pread, mmap, a queue of one read or several) with
/// `Cancelled` and no tensors; the device and the same loader's settings then load
/// the file right. (Under the fake driver, the report also shows nothing given back
/// before the copies reading it ran, and nothing left allocated.)
#[test]
fn a_cancelled_cuda_load_stops_cleanly_on_every_path() {
    if !gpu() {
        return;
    }
    let (_dir, path) = cached_fixture(9);
    let want = host_bytes(Loader::new().dtype(Some(Dtype::BF16)), &path);
    let paths: [(&str, IoBackend, usize); 4] = [
        ("pread", IoBackend::Pread, 4),
        ("pread, depth 1", IoBackend::Pread, 1),
        ("buffered, depth 1", IoBackend::Buffered, 1),
        ("buffered", IoBackend::Buffered, 8),
    ];
    for (what, io, depth) in paths {
        for per_tensor in [false, true] {
            let l = Loader::new()
                .device(Device::Cuda(0))
                .io(io)
                .dtype(Some(Dtype::BF16))
                .chunk_size(64 << 10)
                .staging_bytes(256 << 10)
                .queue_depth(depth)
                .per_tensor_allocations(per_tensor);
            let token = tensorstream::CancelToken::new();
            let t2 = token.clone();
            let cancelling = l
                .clone()
                .progress(move |_, _| t2.cancel())
                .cancel_token(token);
            match cancelling.load(&path) {
                Ok(_) => {
                    panic!("{what}, per_tensor {per_tensor}: a cancelled load returned tensors")
                }
                Err(e) => assert_eq!(e.kind(), ErrorKind::Cancelled, "{what}: {e}"),
            }
            assert_eq!(
                host_bytes(l, &path),
                want,
                "{what}, per_tensor {per_tensor}"
            );
        }
    }
}

/// Device tensors outlive their model and loader (they keep the context alive), can
/// be read and dropped from threads that never touched CUDA, and with per-tensor
/// allocations each has its own buffer, freed with it. (Under the fake driver, the
/// report at exit shows every buffer freed and the context released last.)
#[test]
fn device_tensors_outlive_their_loader_and_free_one_by_one_on_any_thread() {
    if !gpu() {
        return;
    }
    let (_dir, path) = new_fixture(11);
    let want: std::collections::BTreeMap<String, Vec<u8>> = host_bytes(Loader::new(), &path)
        .into_iter()
        .map(|(n, _, b)| (n, b))
        .collect();
    for per_tensor in [false, true] {
        let loader = Loader::new()
            .device(Device::Cuda(0))
            .keep_staging(true)
            .per_tensor_allocations(per_tensor);
        let mut tensors = loader.load(&path).unwrap().into_tensors();
        drop(loader);
        if per_tensor {
            let mut ptrs: Vec<_> = tensors
                .values()
                .filter(|t| !t.is_empty())
                .map(|t| t.device_ptr().unwrap())
                .collect();
            let n = ptrs.len();
            ptrs.sort_unstable();
            ptrs.dedup();
            assert_eq!(ptrs.len(), n, "per-tensor buffers share an address");
        }
        // Half dropped on a thread that makes no other CUDA call, the rest read and
        // dropped on threads of their own.
        let names: Vec<String> = tensors.keys().cloned().collect();
        let half: Vec<_> = names
            .iter()
            .step_by(2)
            .filter_map(|n| tensors.remove(n))
            .collect();
        std::thread::spawn(move || drop(half)).join().unwrap();
        std::thread::scope(|scope| {
            for (name, t) in tensors {
                let want = &want;
                scope.spawn(move || {
                    assert_eq!(&t.to_host().unwrap(), &want[&name], "{name}");
                    assert_eq!(t.len(), want[&name].len());
                    drop(t);
                });
            }
        });
    }
}

/// Two devices at once, as a tensor-parallel server loads its ranks: a thread per
/// device, each loading twice with a clone of one loader (whose kept staging the
/// clones share, so it passes from one device to the other), by pread and by mmap,
/// with a conversion: every tensor is
/// on its thread's device and equals the host load. Needs two devices (the fake
/// driver provides them).
#[test]
fn two_devices_load_at_once_from_two_threads() {
    if !gpu() {
        return;
    }
    if let Err(e) = Context::new(1) {
        eprintln!("not run: needs a second CUDA device ({e})");
        return;
    }
    let (_dir, path) = cached_fixture(10);
    let want = host_bytes(Loader::new().dtype(Some(Dtype::F16)), &path);
    let shared = Loader::new()
        .keep_staging(true)
        .dtype(Some(Dtype::F16))
        .chunk_size(256 << 10)
        .staging_bytes(2 << 20);
    for io in [IoBackend::Pread, IoBackend::Buffered] {
        std::thread::scope(|scope| {
            for d in [0, 1] {
                let l = shared.clone().device(Device::Cuda(d)).io(io);
                let (path, want) = (&path, &want);
                scope.spawn(move || {
                    for round in 0..2 {
                        let m = l.load(path).unwrap();
                        assert!(m.tensors().all(|t| t.device() == Device::Cuda(d)));
                        assert_eq!(on_host(&m), *want, "cuda:{d} {io:?} round {round}");
                    }
                });
            }
        });
    }
}

/// Device memory this test allocates itself on cuda:`ordinal`, as a framework
/// allocates its parameters: with its context current on the calling thread, which
/// tensorstream must leave current.
struct Arena {
    dev: cudarc::driver::sys::CUdevice,
    ctx: cudarc::driver::sys::CUcontext,
    ptr: u64,
    poison: Vec<u8>,
}

// SAFETY: a context handle and a device pointer may be used from any thread (Drop
// makes the context current on the thread it runs on).
unsafe impl Send for Arena {}

impl Arena {
    /// `len` bytes filled with random poison.
    fn new(ordinal: i32, len: usize, seed: u64) -> Arena {
        use cudarc::driver::result;
        let dev = result::device::get(ordinal).unwrap();
        // SAFETY: a device handle from cuDeviceGet; released in Drop.
        let ctx = unsafe { result::primary_ctx::retain(dev) }.unwrap();
        // SAFETY: a retained context.
        unsafe { result::ctx::set_current(ctx) }.unwrap();
        // SAFETY: the context is current; len > 0.
        let ptr = unsafe { result::malloc_sync(len) }.unwrap();
        let mut poison = vec![0u8; len];
        rand::rngs::StdRng::seed_from_u64(seed).fill(&mut poison[..]);
        // SAFETY: ptr holds len bytes; the copy is synchronous.
        unsafe { result::memcpy_htod_sync(ptr, &poison) }.unwrap();
        Arena {
            dev,
            ctx,
            ptr,
            poison,
        }
    }

    /// Asserts that the arena holds `regions` (offset, bytes) and its poison
    /// everywhere else.
    fn assert_holds<'a>(&self, regions: impl IntoIterator<Item = (usize, &'a [u8])>, what: &str) {
        let mut expect = self.poison.clone();
        for (off, bytes) in regions {
            expect[off..off + bytes.len()].copy_from_slice(bytes);
        }
        assert!(
            self.bytes() == expect,
            "{what}: bytes outside the regions written, or regions wrong"
        );
    }

    /// What the arena holds now.
    fn bytes(&self) -> Vec<u8> {
        let mut out = vec![0u8; self.poison.len()];
        // SAFETY: ptr holds out.len() bytes; the copy is synchronous.
        unsafe { cudarc::driver::result::memcpy_dtoh_sync(&mut out, self.ptr) }.unwrap();
        out
    }
}

impl Drop for Arena {
    fn drop(&mut self) {
        use cudarc::driver::result;
        // SAFETY: retained in `new` (this thread may not have it current).
        unsafe { result::ctx::set_current(self.ctx) }.unwrap();
        // SAFETY: allocated in `new` and freed once; nothing uses it any more. A
        // load that had freed it would make this fail.
        unsafe { result::free_sync(self.ptr) }.unwrap();
        // SAFETY: retained in `new`.
        unsafe { result::primary_ctx::release(self.dev) }.unwrap();
    }
}

/// Where each tensor of `want` goes in an arena: 256-byte aligned, with a gap of at
/// least 64 poisoned bytes before each; and the arena's length.
fn arena_layout(want: &HostTensors) -> (std::collections::BTreeMap<String, usize>, usize) {
    let mut at = std::collections::BTreeMap::new();
    let mut end = 0usize;
    for (name, _, bytes) in want {
        let off = (end + 64).next_multiple_of(256);
        at.insert(name.clone(), off);
        end = off + bytes.len();
    }
    (at, end + 64)
}

/// A framework's own memory as the destination: every path (slots over pread,
/// buffered io_uring and O_DIRECT, mmap), raw and converted, two shards, one tensor left out. Each tensor lands in its region, byte for byte as
/// the host loads it; every byte around and between the regions keeps its poison;
/// the model's tensors are views of the regions and free nothing when dropped.
#[test]
fn a_load_into_memory_the_caller_allocated_fills_exactly_its_regions() {
    use tensorstream::{Checkpoint, DeviceRegion};
    if !gpu() {
        return;
    }
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let path = sharded_fixture(dir.path(), 40, 2);
    let ckpt = Checkpoint::open(&path).unwrap();
    let skipped = "s1.b.f16";
    for (round, (dtype, io, cached)) in [
        (Some(Dtype::F16), IoBackend::Pread, true),
        (None, IoBackend::Direct, false),
        (Some(Dtype::BF16), IoBackend::Buffered, true),
        (Some(Dtype::F32), IoBackend::Pread, false),
        (Some(Dtype::BF16), IoBackend::PreadDirect, false),
    ]
    .into_iter()
    .enumerate()
    {
        let what = format!("{dtype:?} {io:?}");
        if cached {
            for f in std::fs::read_dir(&path).unwrap() {
                std::fs::read(f.unwrap().path()).unwrap();
            }
        }
        let want = host_bytes(Loader::new().dtype(dtype), &path);
        let (at, len) = arena_layout(&want);
        let arena = Arena::new(0, len, 100 + round as u64);
        let l = Loader::new()
            .device(Device::Cuda(0))
            .io(io)
            .dtype(dtype)
            .chunk_size(64 << 10)
            .staging_bytes(1 << 20);
        let mut asked = Vec::new();
        // SAFETY: every region lies in the live arena, no two overlap, and nothing
        // else uses the arena during the load.
        let m = unsafe {
            l.load_into_device(&ckpt, |t| {
                asked.push(t.name.to_string());
                (t.name != skipped).then(|| DeviceRegion {
                    ptr: arena.ptr + at[t.name] as u64,
                    len: t.len,
                    dtype: t.dtype,
                })
            })
        }
        .unwrap();
        assert_eq!(asked.len(), want.len(), "{what}: asked for every tensor");
        let got = on_host(&m);
        let expected: HostTensors = want.iter().filter(|w| w.0 != skipped).cloned().collect();
        assert_eq!(got, expected, "{what}: the model's tensors");
        for t in m.tensors() {
            assert_eq!(
                t.device_ptr(),
                Some(arena.ptr + at[&t.name] as u64),
                "{what}"
            );
            let tensorstream::Storage::Cuda(b) = t.storage().0 else {
                panic!("{what}: {} not on the device", t.name);
            };
            assert!(b.is_borrowed(), "{what}: {}", t.name);
        }
        drop(m);
        arena.assert_holds(
            expected.iter().map(|(n, _, b)| (at[n], b.as_slice())),
            &what,
        );
        drop(arena);
    }
}

/// Each tensor in the dtype its region asks for, as a framework's parameters are:
/// F8 weights kept as they are, the other floats each converted to another target,
/// integers raw; every tensor equals the host load into that dtype.
#[test]
fn a_load_into_memory_the_caller_allocated_gives_each_tensor_its_own_dtype() {
    use std::collections::BTreeMap;
    use tensorstream::{Checkpoint, DeviceRegion};
    if !gpu() {
        return;
    }
    let (_dir, path) = cached_fixture(43);
    let ckpt = Checkpoint::open(&path).unwrap();
    let as_map = |h: HostTensors| -> BTreeMap<String, (Dtype, Vec<u8>)> {
        h.into_iter().map(|(n, d, b)| (n, (d, b))).collect()
    };
    let raw = as_map(host_bytes(Loader::new(), &path));
    let by: BTreeMap<Dtype, BTreeMap<String, (Dtype, Vec<u8>)>> =
        [Dtype::F32, Dtype::F16, Dtype::BF16]
            .into_iter()
            .map(|d| (d, as_map(host_bytes(Loader::new().dtype(Some(d)), &path))))
            .collect();
    let target = |file: Dtype| match file {
        Dtype::F32 => Dtype::BF16,
        Dtype::F16 => Dtype::F32,
        Dtype::BF16 => Dtype::F16,
        other => other,
    };
    let want: HostTensors = raw
        .iter()
        .map(|(n, (d, b))| {
            let t = target(*d);
            let bytes = if t == *d {
                b.clone()
            } else {
                by[&t][n].1.clone()
            };
            (n.clone(), t, bytes)
        })
        .collect();
    let (at, len) = arena_layout(&want);
    let arena = Arena::new(0, len, 11);
    // The loader's own choice (F16 for every float) is overridden tensor by tensor.
    let l = Loader::new()
        .device(Device::Cuda(0))
        .dtype(Some(Dtype::F16));
    // SAFETY: every region lies in the live arena, no two overlap.
    let m = unsafe {
        l.load_into_device(&ckpt, |t| {
            let dtype = target(t.file_dtype);
            Some(DeviceRegion {
                ptr: arena.ptr + at[t.name] as u64,
                len: t.len_as(dtype).unwrap(),
                dtype,
            })
        })
    }
    .unwrap();
    assert_eq!(on_host(&m), want);
    arena.assert_holds(
        want.iter().map(|(n, _, b)| (at[n], b.as_slice())),
        "mixed dtypes",
    );
}

/// Random loads into the caller's memory: any subset of tensors, each in a dtype
/// drawn from those it can be loaded as, small and odd chunk and staging sizes, every
/// path. Each loaded tensor equals the host load into its dtype, and no byte outside
/// the regions changes.
#[test]
fn random_loads_into_memory_the_caller_allocated_equal_host_loads() {
    use std::collections::BTreeMap;
    use tensorstream::{Checkpoint, DeviceRegion};
    if !gpu() {
        return;
    }
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let path = sharded_fixture(dir.path(), 44, 2);
    for f in std::fs::read_dir(&path).unwrap() {
        std::fs::read(f.unwrap().path()).unwrap();
    }
    let ckpt = Checkpoint::open(&path).unwrap();
    // Half the rounds also take slices: rows, gathered columns, columns of an empty
    // tensor.
    let sliced = |l: Loader| {
        use tensorstream::Slice;
        l.rows(
            "s0.a.f32",
            Slice::Range {
                start: 10,
                end: 150,
            },
        )
        .columns("s1.a.f32", Slice::Part { rank: 2, world: 3 })
        .columns("s0.e.e5m2", Slice::Part { rank: 1, world: 5 })
        .rows(
            "s1.d.e4m3",
            Slice::Range {
                start: 1000,
                end: 40_001,
            },
        )
        .columns("s*.l.empty", Slice::Range { start: 1, end: 3 })
    };
    type Oracle = BTreeMap<Option<Dtype>, BTreeMap<String, Vec<u8>>>;
    let oracle = |slice: bool| -> Oracle {
        [None, Some(Dtype::F32), Some(Dtype::F16), Some(Dtype::BF16)]
            .into_iter()
            .map(|d| {
                let l = Loader::new().dtype(d);
                let l = if slice { sliced(l) } else { l };
                let m = host_bytes(l, &path);
                (d, m.into_iter().map(|(n, _, b)| (n, b)).collect())
            })
            .collect()
    };
    let (whole, slices) = (oracle(false), oracle(true));
    let mut rng = rand::rngs::StdRng::seed_from_u64(45);
    for round in 0..16 {
        let io = [
            IoBackend::Pread,
            IoBackend::Buffered,
            IoBackend::Direct,
            IoBackend::PreadDirect,
        ][rng.gen_range(0..4)];
        let chunk = 4096u64 << rng.gen_range(0..6);
        let staging = chunk * rng.gen_range(2..9);
        let depth = rng.gen_range(1..9);
        let global = [None, Some(Dtype::F32), Some(Dtype::BF16)][rng.gen_range(0..3)];
        let slice = rng.gen_bool(0.5);
        let host = if slice { &slices } else { &whole };
        // Per tensor (in the callback's order): left out, or the dtype it lands in.
        let mut picks: BTreeMap<String, Option<Dtype>> = BTreeMap::new();
        let mut layout: BTreeMap<String, (usize, usize)> = BTreeMap::new();
        let mut end = 0usize;
        let what = format!(
            "round {round}: {io:?} chunk {chunk} staging {staging} depth {depth} dtype {global:?} slices {slice}"
        );
        let l = cuda_loader(io, global, chunk, staging, depth);
        let l = if slice { sliced(l) } else { l };
        // A first pass decides and lays out; the arena is then made to fit. The load's
        // callback replays the decisions.
        let draw = |rng: &mut rand::rngs::StdRng, t: &tensorstream::TensorSpec<'_>| {
            if rng.gen_range(0..5) == 0 {
                return None;
            }
            let options: Vec<Dtype> = [t.file_dtype, Dtype::F32, Dtype::F16, Dtype::BF16]
                .into_iter()
                .filter(|d| t.len_as(*d).is_some())
                .collect();
            Some(options[rng.gen_range(0..options.len())])
        };
        // SAFETY: the callback gives no region, so nothing is written (the load is
        // refused before it starts, or there is nothing to load).
        let _ = unsafe {
            l.load_into_device(&ckpt, |t| {
                let pick = draw(&mut rng, t);
                if let Some(d) = pick {
                    let off = (end + rng.gen_range(1..300)).next_multiple_of(4);
                    let len = t.len_as(d).unwrap();
                    layout.insert(t.name.to_string(), (off, len));
                    end = off + len;
                }
                picks.insert(t.name.to_string(), pick);
                None
            })
        };
        if layout.is_empty() {
            continue;
        }
        let arena = Arena::new(0, end + 64, 200 + round);
        // SAFETY: every region lies in the live arena, no two overlap.
        let m = unsafe {
            l.load_into_device(&ckpt, |t| {
                picks[t.name].map(|dtype| DeviceRegion {
                    ptr: arena.ptr + layout[t.name].0 as u64,
                    len: layout[t.name].1,
                    dtype,
                })
            })
        }
        .unwrap();
        let mut want = Vec::new();
        for (name, pick) in &picks {
            let Some(d) = pick else { continue };
            let file_dtype = ckpt
                .shards
                .iter()
                .flat_map(|h| &h.tensors)
                .find(|t| &t.name == name)
                .unwrap()
                .dtype;
            let bytes = &host[&(*d != file_dtype).then_some(*d)][name];
            assert_eq!(bytes.len(), layout[name].1, "{what}: {name}");
            want.push((name.clone(), *d, bytes.clone()));
        }
        assert_eq!(on_host(&m), want, "{what}");
        drop(m);
        arena.assert_holds(
            want.iter().map(|(n, _, b)| (layout[n].0, b.as_slice())),
            &what,
        );
    }
}

/// Driver calls failing during a load into the caller's memory, each in a child
/// process under the fake driver: the load is an error that says so, and when it
/// returns nothing it queued still runs, for the caller frees its memory at once
/// (the fake flags a free under queued work); nothing leaks.
#[test]
fn failed_driver_calls_in_a_load_into_memory_the_caller_allocated_leave_nothing_running() {
    use tensorstream::{Checkpoint, DeviceRegion};
    const CHILD: &str = "TS_LOAD_INTO_CHILD";
    if fake_cuda::active() {
        let Some(io) = std::env::var_os(CHILD) else {
            return; // under every_test_here_passes_on_the_fake_driver: nothing to do
        };
        let io = if io == "buffered" {
            IoBackend::Buffered
        } else {
            IoBackend::Pread
        };
        assert!(gpu(), "the fake driver has no device");
        let (_dir, path) = cached_fixture(46);
        let ckpt = Checkpoint::open(&path).unwrap();
        let want = host_bytes(Loader::new().dtype(Some(Dtype::F16)), &path);
        let (at, len) = arena_layout(&want);
        let arena = Arena::new(0, len, 12);
        let l = Loader::new()
            .device(Device::Cuda(0))
            .io(io)
            .dtype(Some(Dtype::F16))
            .chunk_size(64 << 10)
            .staging_bytes(512 << 10)
            // Slots pinned with cuMemHostAlloc: the registrations counted are the
            // page cache's.
            .huge_page_staging(false);
        // SAFETY: every region lies in the live arena, no two overlap.
        let r = unsafe {
            l.load_into_device(&ckpt, |t| {
                Some(DeviceRegion {
                    ptr: arena.ptr + at[t.name] as u64,
                    len: t.len,
                    dtype: t.dtype,
                })
            })
        };
        match r {
            Ok(m) => {
                assert_eq!(on_host(&m), want);
                println!("LOAD_INTO ok");
            }
            Err(e) => println!("LOAD_INTO error: {e}"),
        }
        drop(l);
        drop(arena);
        return;
    }
    if Context::new(0).is_ok() {
        eprintln!("not needed: a real GPU is present (failures are injected in the fake driver)");
        return;
    }
    for (io, fail) in [
        ("pread", "cuPointerGetAttribute:1"),
        ("pread", "cuPointerGetAttribute:40"),
        ("pread", "cuCtxSynchronize:1"),
        ("pread", "cuMemcpyHtoDAsync_v2:3"),
        ("pread", "cuLaunchKernel:2"),
        ("pread", "cuEventRecord:2"),
        ("buffered", "cuMemcpyHtoDAsync_v2:5"),
    ] {
        let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
        let report = dir.path().join("report.txt");
        let (ok, text) = fake_cuda::run(
            fake_cuda::command(std::env::current_exe().unwrap(), &report)
                .env("FAKE_CUDA_FAIL", fail)
                .env("FAKE_CUDA_DELAY_US", "50")
                .env(CHILD, io)
                .args([
                    "--exact",
                    "failed_driver_calls_in_a_load_into_memory_the_caller_allocated_leave_nothing_running",
                    "--nocapture",
                ]),
        );
        assert!(ok, "{io} {fail}:\n{text}");
        assert!(
            text.contains("LOAD_INTO error: "),
            "{io} {fail}: the load did not fail:\n{text}"
        );
        fake_cuda::Report::read(&report).assert_clean(&format!("{io} {fail}"));
    }
}

/// Memory a framework gets from a stream-ordered pool (`cuMemAllocAsync`, what
/// cudarc's `alloc` uses where the device supports it) is accepted and filled;
/// managed memory is refused by name. On a real GPU only: the fake driver models
/// neither.
#[test]
fn a_load_into_pool_memory_works_and_into_managed_memory_is_refused() {
    use cudarc::driver::{result, sys};
    use tensorstream::{Checkpoint, DeviceRegion};
    if fake_cuda::active() {
        eprintln!("pool and managed memory: real driver only (the fake models neither)");
        return;
    }
    if !gpu() {
        return;
    }
    let (_dir, path) = cached_fixture(47);
    let ckpt = Checkpoint::open(&path).unwrap();
    let want = host_bytes(Loader::new().dtype(Some(Dtype::BF16)), &path);
    let (at, len) = arena_layout(&want);
    let dev = result::device::get(0).unwrap();
    // SAFETY: a device handle from cuDeviceGet; released below.
    let ctx = unsafe { result::primary_ctx::retain(dev) }.unwrap();
    // SAFETY: a retained context.
    unsafe { result::ctx::set_current(ctx) }.unwrap();
    let stream = result::stream::create(result::stream::StreamKind::NonBlocking).unwrap();
    let l = Loader::new()
        .device(Device::Cuda(0))
        .dtype(Some(Dtype::BF16));
    let load = |base: u64| {
        // SAFETY: every region lies in the caller's live allocation of `len` bytes at
        // `base`, no two overlap, and nothing else uses it during the load.
        unsafe {
            l.load_into_device(&ckpt, |t| {
                Some(DeviceRegion {
                    ptr: base + at[t.name] as u64,
                    len: t.len,
                    dtype: t.dtype,
                })
            })
        }
    };
    // SAFETY: the context is current and the stream live; freed below on the stream.
    let pooled = unsafe { result::malloc_async(stream, len) }.unwrap();
    let m = load(pooled).unwrap();
    assert_eq!(on_host(&m), want, "pool memory");
    drop(m);
    // SAFETY: allocated above on this stream; the load has completed.
    unsafe { result::free_async(pooled, stream) }.unwrap();
    // SAFETY: managed memory of len bytes, freed below; nothing else touches it.
    let managed =
        unsafe { result::malloc_managed(len, sys::CUmemAttach_flags::CU_MEM_ATTACH_GLOBAL) }
            .unwrap();
    let e = load(managed).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidArgument, "{e}");
    assert!(e.to_string().contains("managed memory"), "{e}");
    // SAFETY: allocated above; the refused load wrote nothing; the stream is destroyed
    // once, the context released once.
    unsafe {
        result::free_sync(managed).unwrap();
        result::stream::synchronize(stream).unwrap();
        result::stream::destroy(stream).unwrap();
        result::primary_ctx::release(dev).unwrap();
    }
}

/// A load into the caller's memory that is refused pins nothing and leaves the
/// loader's kept staging for the next load; loads after `prepare` report that they
/// ran on it.
#[test]
fn a_refused_load_into_the_callers_memory_keeps_the_loaders_staging() {
    use tensorstream::{Checkpoint, DeviceRegion};
    if !gpu() {
        return;
    }
    let (_dir, path) = cached_fixture(8);
    let ckpt = Checkpoint::open(&path).unwrap();
    let l = cuda_loader(IoBackend::Pread, None, 64 << 10, 1 << 20, 4);
    assert!(!l.load(&path).unwrap().stats().staging_reused, "first load");
    assert!(l.load(&path).unwrap().stats().staging_reused, "second load");
    let arena = Arena::new(0, 1 << 20, 9);
    for _ in 0..2 {
        // SAFETY: the region lies in the live arena; the load is refused before any
        // write (its length is one byte short).
        let e = unsafe {
            l.load_into_device(&ckpt, |t| {
                (t.name == "a.f32").then(|| DeviceRegion {
                    ptr: arena.ptr,
                    len: t.len - 1,
                    dtype: t.dtype,
                })
            })
        }
        .unwrap_err();
        assert_eq!(e.kind(), ErrorKind::InvalidArgument, "{e}");
        let m = l.load(&path).unwrap();
        assert!(m.stats().staging_reused, "the load after a refused one");
    }
    arena.assert_holds([], "refused loads");
    let fresh = cuda_loader(IoBackend::Pread, None, 64 << 10, 1 << 20, 4);
    fresh.prepare().unwrap();
    assert!(
        fresh.load(&path).unwrap().stats().staging_reused,
        "after prepare"
    );
}

/// Regions that cannot be right are refused before any byte is written, each with
/// the file, the tensor and what is wrong: the wrong length, memory the driver does
/// not know, past the end of its allocation, pinned host memory, past the end of the
/// address space, two overlapping, a converted tensor's misaligned, another device's
/// memory; and no region at all, or a CPU loader.
#[test]
fn a_load_into_memory_the_caller_allocated_refuses_bad_regions_before_writing() {
    use tensorstream::{Checkpoint, DeviceRegion};
    if !gpu() {
        return;
    }
    let (_dir, path) = cached_fixture(41);
    let ckpt = Checkpoint::open(&path).unwrap();
    let want = host_bytes(Loader::new().dtype(Some(Dtype::F16)), &path);
    let (at, len) = arena_layout(&want);
    let arena = Arena::new(0, len, 7);
    let l = Loader::new()
        .device(Device::Cuda(0))
        .dtype(Some(Dtype::F16));
    let fitting = |t: &tensorstream::TensorSpec<'_>| DeviceRegion {
        ptr: arena.ptr + at[t.name] as u64,
        len: t.len,
        dtype: t.dtype,
    };
    let refused =
        |l: &Loader,
         what: &str,
         wants: &[&str],
         f: &dyn Fn(&tensorstream::TensorSpec<'_>) -> Option<DeviceRegion>| {
            // SAFETY: the regions that pass the checks lie in the live arena.
            let e = unsafe { l.load_into_device(&ckpt, f) }.unwrap_err();
            assert_eq!(e.kind(), ErrorKind::InvalidArgument, "{what}: {e}");
            let text = e.to_string();
            for w in wants {
                assert!(text.contains(w), "{what}: '{w}' not in: {text}");
            }
            assert!(arena.bytes() == arena.poison, "{what}: bytes written");
        };
    refused(
        &l,
        "length",
        &[
            "cuda-fixture.safetensors",
            "tensor 'b.f16'",
            "3001 bytes given",
            "6000 bytes",
        ],
        &|t| {
            Some(DeviceRegion {
                len: if t.name == "b.f16" { 3001 } else { t.len },
                ..fitting(t)
            })
        },
    );
    refused(
        &l,
        "not device memory",
        // The driver does not know the address (or, with HMM, calls it host memory).
        &["tensor 'c.bf16'", "destination 0x40:"],
        &|t| {
            Some(if t.name == "c.bf16" {
                DeviceRegion {
                    ptr: 64,
                    len: t.len,
                    dtype: t.dtype,
                }
            } else {
                fitting(t)
            })
        },
    );
    refused(
        &l,
        "past the allocation",
        &["tensor 'k.big.bf16'", "end of its allocation"],
        &|t| {
            let mut r = fitting(t);
            if t.name == "k.big.bf16" {
                r.ptr = arena.ptr + (arena.poison.len() - 256) as u64;
            }
            Some(r)
        },
    );
    {
        use cudarc::driver::result;
        // SAFETY: pinned host memory, freed below; nothing else uses it.
        let host = unsafe { result::malloc_host(64 << 10, 0) }.unwrap();
        refused(
            &l,
            "host memory",
            &["tensor 'i.i32'", "is host memory, not device memory"],
            &|t| {
                Some(if t.name == "i.i32" {
                    DeviceRegion {
                        ptr: host as u64,
                        len: t.len,
                        dtype: t.dtype,
                    }
                } else {
                    fitting(t)
                })
            },
        );
        // SAFETY: allocated above; the failed load did not use it.
        unsafe { result::free_host(host) }.unwrap();
    }
    refused(
        &l,
        "address space",
        &["tensor 'a.f32'", "end of the address space"],
        &|t| {
            Some(if t.name == "a.f32" {
                DeviceRegion {
                    ptr: u64::MAX - 255,
                    len: t.len,
                    dtype: t.dtype,
                }
            } else {
                fitting(t)
            })
        },
    );
    refused(&l, "overlap", &["overlaps", "'i.i32'", "'j.bool'"], &|t| {
        let mut r = fitting(t);
        if t.name == "j.bool" {
            r.ptr = arena.ptr + at["i.i32"] as u64 + 8;
        }
        Some(r)
    });
    refused(
        &l,
        "misaligned",
        &["tensor 'a.f32'", "not aligned", "2-byte"],
        &|t| {
            let mut r = fitting(t);
            if t.name == "a.f32" {
                r.ptr += 1; // converted to F16 by a kernel writing 2-byte elements
            }
            Some(r)
        },
    );
    refused(
        &l,
        "integer as float",
        &["tensor 'i.i32'", "cannot load I32 as BF16"],
        &|t| {
            let mut r = fitting(t);
            if t.name == "i.i32" {
                r.dtype = Dtype::BF16;
            }
            Some(r)
        },
    );
    refused(
        &l,
        "float as integer",
        &["tensor 'a.f32'", "cannot load F32 as I32"],
        &|t| {
            let mut r = fitting(t);
            if t.name == "a.f32" {
                r.dtype = Dtype::I32;
            }
            Some(r)
        },
    );
    refused(&l, "none", &["no tensor was given a destination"], &|_| {
        None
    });
    refused(&Loader::new(), "cpu", &["CUDA device"], &|t| {
        Some(fitting(t))
    });
    if let Err(e) = Context::new(1) {
        eprintln!("not run: another device's memory needs a second CUDA device ({e})");
    } else {
        let other = std::thread::scope(|scope| {
            scope
                .spawn(|| {
                    let a = Arena::new(1, 4 << 10, 8);
                    let p = a.ptr;
                    (a, p)
                })
                .join()
                .unwrap()
        });
        refused(
            &l,
            "other device",
            &["tensor 'j.bool'", "cuda:1, not of cuda:0"],
            &|t| {
                Some(if t.name == "j.bool" {
                    DeviceRegion {
                        ptr: other.1,
                        len: t.len,
                        dtype: t.dtype,
                    }
                } else {
                    fitting(t)
                })
            },
        );
        std::thread::scope(|scope| {
            scope.spawn(move || drop(other));
        });
    }
    // The same loader, given regions that fit, loads.
    // SAFETY: every region lies in the live arena, no two overlap.
    let m = unsafe { l.load_into_device(&ckpt, |t| Some(fitting(t))) }.unwrap();
    assert_eq!(on_host(&m), want);
}

/// Work the caller queued on its memory before the call, on a stream of its own
/// (here copies of poison over the first tensor, slowed down under the fake driver),
/// completes before the load writes there: the load's bytes are what remains.
#[test]
fn a_load_into_memory_the_caller_allocated_waits_for_work_queued_on_it() {
    use cudarc::driver::result;
    use tensorstream::{Checkpoint, DeviceRegion};
    if !gpu() {
        return;
    }
    let (_dir, path) = cached_fixture(42);
    let ckpt = Checkpoint::open(&path).unwrap();
    let want = host_bytes(Loader::new().dtype(Some(Dtype::F32)), &path);
    let (at, len) = arena_layout(&want);
    let arena = Arena::new(0, len, 9);
    let stream = result::stream::create(result::stream::StreamKind::NonBlocking).unwrap();
    // SAFETY: pinned host memory of len bytes, freed below once the copies are done.
    let host = unsafe { result::malloc_host(len, 0) }.unwrap();
    // SAFETY: `host` holds len bytes that nothing else uses.
    let poison = unsafe { std::slice::from_raw_parts_mut(host.cast::<u8>(), len) };
    rand::rngs::StdRng::seed_from_u64(10).fill(&mut poison[..]);
    // Many small copies over the first tensor's region: still running (under the
    // fake driver, 50 µs each) when the load starts.
    for _ in 0..2000 {
        // SAFETY: the arena holds len ≥ 4096 bytes; `poison` stays untouched until
        // the stream is synchronised below.
        unsafe { result::memcpy_htod_async(arena.ptr, &poison[..4096], stream) }.unwrap();
    }
    let l = Loader::new()
        .device(Device::Cuda(0))
        .dtype(Some(Dtype::F32));
    // SAFETY: every region lies in the live arena, no two overlap; the copies queued
    // above were queued before the call.
    let m = unsafe {
        l.load_into_device(&ckpt, |t| {
            Some(DeviceRegion {
                ptr: arena.ptr + at[t.name] as u64,
                len: t.len,
                dtype: t.dtype,
            })
        })
    }
    .unwrap();
    assert_eq!(on_host(&m), want);
    // SAFETY: the stream is live, then destroyed once; the memory is freed once.
    unsafe {
        result::stream::synchronize(stream).unwrap();
        result::stream::destroy(stream).unwrap();
        result::free_host(host).unwrap();
    }
}

/// Without a GPU: every other test of this file, in a child process under the fake
/// driver, with each queued copy and kernel delayed so that a staging slot reused,
/// a registration given back or a buffer freed before the work reading it ran
/// would be caught. The fake's report must show the work really ran there (copies
/// from pinned slots, 2-D copies, kernels, huge-page staging registered, two streams
/// busy at once in the two-device test), no violation, and nothing left allocated at exit. The fake has
/// two devices, and checks that work is queued only in the current device's
/// context.
#[test]
fn every_test_here_passes_on_the_fake_driver() {
    if fake_cuda::active() {
        return;
    }
    if Context::new(0).is_ok() {
        eprintln!("not needed: a real GPU is present, and the other tests ran on it");
        return;
    }
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let report = dir.path().join("report.txt");
    let (ok, text) = fake_cuda::run(
        fake_cuda::command(std::env::current_exe().unwrap(), &report)
            .env("FAKE_CUDA_DELAY_US", "50")
            .env("FAKE_CUDA_DEVICES", "2")
            .args([
                "--skip",
                "every_test_here_passes_on_the_fake_driver",
                "--skip",
                "without_a_gpu_the_error_is_clear_and_not_a_panic",
                "--test-threads",
                "2",
                "--nocapture",
            ]),
    );
    assert!(ok, "under the fake driver:\n{text}");
    assert!(
        !text.contains("skipping: no usable CUDA device") && !text.contains("not run:"),
        "a test did not run under the fake driver:\n{text}"
    );
    let r = fake_cuda::Report::read(&report);
    r.assert_clean("the CUDA tests");
    for key in [
        "htod_pinned",
        "htod_2d",
        "launches",
        "registrations",
        "dtoh",
    ] {
        assert!(r.get(key) > 0, "no {key} under the fake driver: {r:?}");
    }
    assert!(r.get("max_queued") > 1, "copies never queued up: {r:?}");
    assert!(
        r.get("max_busy_streams") >= 2,
        "no two streams at once: {r:?}"
    );
}
