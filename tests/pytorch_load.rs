//! `load`, `inspect`, `verify` and the library on PyTorch zip checkpoints written at
//! test time by tests/pytorch_fixtures.py: every tensor's bytes equal those of the
//! converted safetensors and the fixture's own record, with every option of a load.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

mod common;
use common::{pytorch_fixture, unhex};
use tensorstream::internals::convert_pytorch;
use tensorstream::{Checkpoint, Dtype, HostRegion, IoBackend, Loader, TensorSpec};

/// Writes fixture `case` to `dir/NAME` and returns its path and each tensor's bytes.
fn fixture(dir: &Path, case: &str, name: &str) -> (PathBuf, BTreeMap<String, Vec<u8>>) {
    let path = dir.join(name);
    let json = pytorch_fixture(case, &path);
    let want = json["tensors"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(n, t)| (n.clone(), unhex(t["hex"].as_str().unwrap())))
        .collect();
    (path, want)
}

fn cli(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_tensorstream"))
        .args(args)
        .env_remove("TENSORSTREAM_LOG")
        .output()
        .unwrap()
}

fn ok(o: &Output) -> String {
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    String::from_utf8(o.stdout.clone()).unwrap()
}

/// The loadable fixture as one file and as a sharded set, each with its conversion.
struct Pair {
    _dir: tempfile::TempDir,
    bin: PathBuf,
    st: PathBuf,
    want: BTreeMap<String, Vec<u8>>,
}

fn pair(case: &str) -> Pair {
    let dir = tempfile::tempdir().unwrap();
    let name = if case == "loadable" { "w.bin" } else { "set" };
    let (bin, want) = fixture(dir.path(), case, name);
    let st = dir.path().join("converted");
    convert_pytorch(&bin, &st, None, 200_000).unwrap();
    Pair {
        _dir: dir,
        bin,
        st,
        want,
    }
}

#[test]
fn library_load_gives_each_tensor_its_bytes_as_recorded_and_as_converted() {
    for case in ["loadable", "loadable_sharded"] {
        let p = pair(case);
        let from_bin = Loader::new().load(&p.bin).unwrap();
        let from_st = Loader::new().load(&p.st).unwrap();
        assert_eq!(from_bin.len(), p.want.len(), "{case}");
        for (name, bytes) in &p.want {
            let t = from_bin.get(name).unwrap();
            assert_eq!(t.host_bytes().unwrap(), &bytes[..], "{case} {name}");
            let s = from_st.get(name).unwrap();
            assert_eq!((t.dtype, &t.shape), (s.dtype, &s.shape), "{case} {name}");
        }
        assert!(p.want["embed.weight"] == p.want["lm_head.weight"]);
        let ckpt = Checkpoint::open(&p.bin).unwrap();
        assert!(ckpt.shards.iter().all(|h| h.is_pytorch()));
        assert_eq!(ckpt.index.is_some(), case != "loadable");
        // The index's metadata, as written, as a safetensors index's is.
        let want_meta = ckpt.index.as_ref().map(|i| {
            let v: serde_json::Value = serde_json::from_slice(&std::fs::read(i).unwrap()).unwrap();
            v["metadata"].clone()
        });
        assert_eq!(ckpt.index_metadata, want_meta, "{case}");
        if case != "loadable" {
            assert!(want_meta.is_some_and(|m| m["total_size"].is_u64()));
        }
        let total: usize = p.want.values().map(Vec::len).sum();
        assert_eq!(ckpt.total_bytes(), total as u64);
    }
}

#[test]
fn a_zip64_archive_loads() {
    let dir = tempfile::tempdir().unwrap();
    let (bin, want) = fixture(dir.path(), "loadable_zip64", "z.bin");
    assert!(std::fs::read(&bin)
        .unwrap()
        .windows(4)
        .any(|w| w == b"PK\x06\x06"));
    let model = Loader::new().load(&bin).unwrap();
    assert_eq!(model.len(), want.len());
    for (name, bytes) in &want {
        assert!(
            model.get(name).unwrap().host_bytes().unwrap() == &bytes[..],
            "{name}"
        );
    }
}

#[test]
fn cli_digests_equal_the_converted_safetensors_for_every_option() {
    let p = pair("loadable_sharded");
    let (bin, st) = (p.bin.to_str().unwrap(), p.st.to_str().unwrap());
    let options: [&[&str]; 12] = [
        &[],
        &["--io", "pread"],
        &["--io", "buffered"],
        &["--io", "direct"],
        &["--io", "pread-direct"],
        &["--dtype", "F32"],
        &["--dtype", "BF16", "--chunk-size", "64K"],
        &["--dtype", "F16", "--io", "direct"],
        &["--only", "layers.*", "--only", "big"],
        &["--rows", "big=1:3", "--rows", "rows=1/2"],
        &["--cols", "big=1/3", "--cols", "rows*=0:2"],
        &["--cols", "big=2/4", "--chunk-size", "16K", "--dtype", "F32"],
    ];
    for extra in options {
        let run = |path: &str| {
            let mut args = vec!["load", path, "--digest"];
            args.extend_from_slice(extra);
            ok(&cli(&args))
        };
        let (a, b) = (run(bin), run(st));
        assert!(a.lines().count() > 1, "{extra:?}: {a}");
        assert_eq!(a, b, "{extra:?}");
    }
}

#[test]
fn tied_and_overlapping_tensors_load_into_the_callers_memory() {
    let p = pair("loadable");
    let ckpt = Checkpoint::open(&p.bin).unwrap();
    for io in [
        IoBackend::Auto,
        IoBackend::Direct,
        IoBackend::PreadDirect,
        IoBackend::Pread,
    ] {
        let mut bufs: BTreeMap<String, Vec<u8>> = BTreeMap::new();
        for t in ckpt.shards.iter().flat_map(|h| &h.tensors) {
            bufs.insert(t.name.clone(), vec![0xA5; t.len() as usize]);
        }
        let mut regions: BTreeMap<String, &mut Vec<u8>> =
            bufs.iter_mut().map(|(k, v)| (k.clone(), v)).collect();
        Loader::new()
            .io(io)
            .load_into_host(&ckpt, |t: &TensorSpec<'_>| {
                let buf = regions.remove(t.name)?;
                Some(HostRegion {
                    bytes: buf.as_mut_slice(),
                    dtype: t.file_dtype,
                })
            })
            .unwrap();
        assert_eq!(bufs.len(), p.want.len());
        for (name, bytes) in &p.want {
            assert!(bufs[name] == *bytes, "{io:?} {name}");
        }
        assert!(bufs["rows"][..] == p.want["rows_overlap"][24..]);
    }
}

#[test]
fn strided_views_are_refused_by_name_and_convert_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let (bin, _) = fixture(dir.path(), "basic", "basic.bin");
    let e = Loader::new().load(&bin).unwrap_err().to_string();
    assert!(
        e.contains("'transposed'") && e.contains("tensorstream convert"),
        "{e}"
    );
    let o = cli(&["verify", bin.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(1));
    let out = String::from_utf8_lossy(&o.stdout);
    for name in ["'transposed'", "'narrow'", "'fp8'"] {
        assert!(out.contains(name) && out.contains("strided view"), "{out}");
    }
    for cmd in ["load", "inspect"] {
        let o = cli(&[cmd, bin.to_str().unwrap()]);
        assert_eq!(o.status.code(), Some(1), "{cmd}");
        assert!(String::from_utf8_lossy(&o.stderr).contains("'transposed'"));
    }
}

#[test]
fn verify_names_every_entry_that_is_not_a_tensor_and_passes() {
    let dir = tempfile::tempdir().unwrap();
    let (bin, _) = fixture(dir.path(), "loadable_nested", "nested.bin");
    let out = ok(&cli(&["verify", bin.to_str().unwrap()]));
    for s in ["epoch (int)", "optimizer (dict)"] {
        assert!(out.contains(&format!("not a tensor: {s}\n")), "{out}");
    }
    assert!(out.lines().last().unwrap().starts_with("ok: "), "{out}");
    let p = pair("loadable");
    let out = ok(&cli(&["verify", p.bin.to_str().unwrap()]));
    assert!(out.starts_with("tensors only"), "{out}");
}

#[test]
fn verify_lists_every_problem_of_a_broken_file() {
    let dir = tempfile::tempdir().unwrap();
    for (case, words) in [
        ("offset_past", "'bad'"),
        ("missing_entry", "storage entry data/40 is missing"),
        ("os_system", "posix.system"),
        ("big_endian", "only little-endian"),
        ("deflated", "compressed"),
        ("truncated", "not a valid zip archive"),
    ] {
        let (bin, _) = fixture(dir.path(), case, &format!("{case}.bin"));
        let o = cli(&["verify", bin.to_str().unwrap()]);
        let out = String::from_utf8_lossy(&o.stdout);
        assert_eq!(o.status.code(), Some(1), "{case}: {out}");
        assert!(out.contains(words), "{case}: {out}");
        assert!(!dir.path().join(format!("{case}.bin.pwned")).exists());
        let o = cli(&["load", bin.to_str().unwrap()]);
        assert_eq!(o.status.code(), Some(1), "{case}");
    }
}

#[test]
fn a_parameter_with_attributes_loads_and_one_holding_a_tensor_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (bin, want) = fixture(dir.path(), "param_state", "p.bin");
    let model = Loader::new().load(&bin).unwrap();
    assert_eq!(
        model.get("p").unwrap().host_bytes().unwrap(),
        &want["p"][..]
    );
    let (bin, _) = fixture(dir.path(), "param_state_tensor", "q.bin");
    let e = Loader::new().load(&bin).unwrap_err().to_string();
    assert!(e.contains("attributes hold a tensor"), "{e}");
    let e = convert_pytorch(&bin, &dir.path().join("out"), None, u64::MAX).unwrap_err();
    assert!(e.to_string().contains("attributes hold a tensor"), "{e}");
}

#[test]
fn a_directory_holding_a_bin_loads_and_one_with_safetensors_prefers_them() {
    let p = pair("loadable");
    let dir = p.bin.parent().unwrap().join("d");
    std::fs::create_dir(&dir).unwrap();
    std::fs::copy(&p.bin, dir.join("pytorch_model.bin")).unwrap();
    let a = ok(&cli(&["load", dir.to_str().unwrap(), "--digest"]));
    let b = ok(&cli(&["load", p.st.to_str().unwrap(), "--digest"]));
    assert_eq!(a, b);
    let inspect = ok(&cli(&["inspect", dir.to_str().unwrap(), "--json"]));
    let v: serde_json::Value = serde_json::from_str(&inspect).unwrap();
    assert_eq!(v["shards"][0]["format"], "pytorch");
    assert_eq!(v["tensor_count"], p.want.len());
    // Two checkpoint files, neither pytorch_model.bin, and no index: not guessed.
    let two = p.bin.parent().unwrap().join("two");
    std::fs::create_dir(&two).unwrap();
    std::fs::copy(&p.bin, two.join("a.pt")).unwrap();
    std::fs::copy(&p.bin, two.join("b.pth")).unwrap();
    let e = Loader::new().load(&two).unwrap_err().to_string();
    assert!(
        e.contains("2 checkpoint files") && e.contains("name the one"),
        "{e}"
    );
    // Safetensors beside it win: the .bin is not read.
    let first = std::fs::read_dir(&p.st)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|f| f.extension().is_some_and(|x| x == "safetensors"))
        .unwrap();
    std::fs::copy(first, dir.join("a.safetensors")).unwrap();
    let ckpt = Checkpoint::open(&dir).unwrap();
    assert!(ckpt.shards.iter().all(|h| !h.is_pytorch()));
}

#[test]
fn dtype_conversion_of_a_bin_matches_the_converted_file_loaded_plain() {
    let p = pair("loadable");
    let a = Loader::new().dtype(Some(Dtype::F32)).load(&p.bin).unwrap();
    let dir = p.bin.parent().unwrap().join("f32");
    convert_pytorch(&p.bin, &dir, Some(Dtype::F32), u64::MAX).unwrap();
    let b = Loader::new().load(&dir).unwrap();
    for t in b.tensors() {
        let x = a.get(&t.name).unwrap();
        assert_eq!(x.dtype, t.dtype, "{}", t.name);
        assert_eq!(x.host_bytes(), t.host_bytes(), "{}", t.name);
    }
}

#[cfg(feature = "cuda")]
mod fake_cuda;

/// The CUDA path under the fake driver of tests/fake_cuda: `load --device cuda
/// --digest` of a sharded `.bin` set prints what the CPU load of its conversion
/// prints, through every I/O path, conversion and slice, with queued work delayed,
/// and leaves the driver clean.
#[cfg(feature = "cuda")]
#[test]
fn cuda_digests_of_a_bin_equal_the_cpu_digests_of_its_conversion() {
    let p = pair("loadable_sharded");
    let (bin, st) = (p.bin.to_str().unwrap(), p.st.to_str().unwrap());
    let options: [&[&str]; 8] = [
        &[],
        &["--io", "pread"],
        &["--io", "direct", "--staging", "1M", "--chunk-size", "64K"],
        &["--io", "buffered", "--queue-depth", "2"],
        &["--dtype", "F32"],
        &["--dtype", "F16", "--chunk-size", "64K", "--staging", "1M"],
        &["--rows", "big=1:3", "--cols", "rows*=1/3"],
        &["--cols", "big=1/4", "--dtype", "BF16"],
    ];
    for extra in options {
        let mut cpu = vec!["load", st, "--digest"];
        cpu.extend_from_slice(extra);
        let want = ok(&cli(&cpu));
        let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
        let report = dir.path().join("report.txt");
        let mut c = fake_cuda::command(env!("CARGO_BIN_EXE_tensorstream"), &report);
        c.args(["load", bin, "--device", "cuda", "--digest"])
            .args(extra)
            .env("FAKE_CUDA_DELAY_US", "100")
            .env_remove("TENSORSTREAM_LOG");
        let out = c.output().unwrap();
        assert_eq!(ok(&out), want, "{extra:?}");
        let r = fake_cuda::Report::read(&report);
        r.assert_clean(&format!("{extra:?}"));
        assert!(r.get("htod_pinned") > 0, "{extra:?}");
    }
}

/// The library's CUDA loads of a `.bin` with tied and overlapping tensors: into the
/// load's own device memory (one allocation per file, or per tensor) and into memory
/// the caller allocated, each tensor its own region; every tensor's bytes, copied
/// back, are the file's. Without a GPU it runs itself again under the fake driver.
#[cfg(feature = "cuda")]
#[test]
fn library_cuda_loads_of_tied_weights_give_each_tensor_its_bytes() {
    use cudarc::driver::result;
    use tensorstream::{Device, DeviceRegion};
    const NAME: &str = "library_cuda_loads_of_tied_weights_give_each_tensor_its_bytes";
    if !fake_cuda::active() && tensorstream::internals::Context::new(0).is_err() {
        let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
        let report = dir.path().join("report.txt");
        let (ok, text) = fake_cuda::run(
            fake_cuda::command(std::env::current_exe().unwrap(), &report)
                .env("FAKE_CUDA_DELAY_US", "50")
                .args(["--exact", NAME, "--nocapture"]),
        );
        assert!(
            ok && text.contains("1 passed"),
            "under the fake driver:\n{text}"
        );
        fake_cuda::Report::read(&report).assert_clean(NAME);
        return;
    }
    let p = pair("loadable");
    let ckpt = Checkpoint::open(&p.bin).unwrap();
    for per_tensor in [false, true] {
        let m = Loader::new()
            .device(Device::Cuda(0))
            .per_tensor_allocations(per_tensor)
            .load_checkpoint(&ckpt)
            .unwrap();
        for (name, bytes) in &p.want {
            let got = m.get(name).unwrap().to_host().unwrap();
            assert!(got == *bytes, "per tensor {per_tensor}: {name}");
        }
    }
    // The caller's memory: one allocation, each tensor 256-byte aligned in it.
    let mut at = BTreeMap::new();
    let mut len = 0usize;
    for (name, bytes) in &p.want {
        at.insert(name.clone(), len);
        len = (len + bytes.len() + 64).next_multiple_of(256);
    }
    let dev = result::device::get(0).unwrap();
    // SAFETY: a device handle from cuDeviceGet; released below.
    let ctx = unsafe { result::primary_ctx::retain(dev) }.unwrap();
    // SAFETY: a retained context.
    unsafe { result::ctx::set_current(ctx) }.unwrap();
    // SAFETY: the context is current; len > 0.
    let ptr = unsafe { result::malloc_sync(len) }.unwrap();
    let loader = Loader::new().device(Device::Cuda(0));
    // SAFETY: every region lies in the live allocation, no two overlap, and nothing
    // else uses it during the load.
    let m = unsafe {
        loader.load_into_device(&ckpt, |t| {
            Some(DeviceRegion {
                ptr: ptr + at[t.name] as u64,
                len: t.len,
                dtype: t.dtype,
            })
        })
    }
    .unwrap();
    for (name, bytes) in &p.want {
        assert!(m.get(name).unwrap().to_host().unwrap() == *bytes, "{name}");
    }
    drop(m);
    let mut all = vec![0u8; len];
    // SAFETY: ptr holds len bytes; the copy is synchronous.
    unsafe { result::memcpy_dtoh_sync(&mut all, ptr) }.unwrap();
    for (name, bytes) in &p.want {
        assert!(all[at[name]..at[name] + bytes.len()] == bytes[..], "{name}");
    }
    // SAFETY: allocated above, freed once; the load is over.
    unsafe { result::free_sync(ptr) }.unwrap();
    // SAFETY: retained above.
    unsafe { result::primary_ctx::release(dev) }.unwrap();
}
