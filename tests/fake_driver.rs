//! The command line's CUDA path on a machine without a GPU, under the fake driver
//! of tests/fake_cuda: `load --device cuda --digest` must print what the CPU path
//! prints for every I/O path, staging kind and conversion, with copies and kernels
//! delayed so that early reuse or early release of memory would be caught; a
//! driver call failing anywhere must end in exit 1 with a message naming what
//! failed, never a panic, with every allocation, registration, stream and event
//! given back.
#![cfg(feature = "cuda")]

mod common;
mod fake_cuda;

use std::path::{Path, PathBuf};
use std::process::Output;

use common::Spec;
use tensorstream::Dtype;

/// Two shards and an index: every float dtype the kernels take, integers and bools,
/// tensors larger than a chunk and an odd-sized one, random bytes.
fn checkpoint(dir: &Path) -> PathBuf {
    let mut rng = common::rng(41);
    let shards: [Vec<(&str, Dtype, Vec<u64>)>; 2] = [
        vec![
            ("embed.bf16", Dtype::BF16, vec![2048, 1536]),
            ("norm.f32", Dtype::F32, vec![4097]),
            ("proj.f16", Dtype::F16, vec![513, 1031]),
            ("ids.i32", Dtype::I32, vec![77]),
        ],
        vec![
            ("experts.e4m3", Dtype::F8_E4M3, vec![3000, 1001]),
            ("scale.e5m2", Dtype::F8_E5M2, vec![9, 7]),
            ("mask.bool", Dtype::BOOL, vec![33]),
            ("head.bf16", Dtype::BF16, vec![1000, 2049]),
        ],
    ];
    let mut map = Vec::new();
    for (i, tensors) in shards.iter().enumerate() {
        let file = format!("model-{:05}-of-00002.safetensors", i + 1);
        let specs: Vec<Spec> = tensors
            .iter()
            .map(|(n, d, s)| Spec::random(*n, *d, s, &mut rng))
            .collect();
        common::write_file_ref(&dir.join(&file), &specs, None);
        map.extend(tensors.iter().map(|(n, ..)| (n.to_string(), file.clone())));
    }
    common::write_index(dir, map.iter().map(|(t, f)| (t.as_str(), f.as_str())))
}

/// Environment variables for the fake driver.
type Env<'a> = &'a [(&'a str, &'a str)];

/// The CLI under the fake driver, with `env` on top; its output and report.
fn under_fake(args: &[&str], env: Env) -> (Output, fake_cuda::Report) {
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let report = dir.path().join("report.txt");
    let mut c = fake_cuda::command(env!("CARGO_BIN_EXE_tensorstream"), &report);
    c.args(args).env_remove("TENSORSTREAM_LOG");
    for (k, v) in env {
        c.env(k, v);
    }
    let out = c.output().expect("run tensorstream");
    assert!(
        out.status.code().is_some(),
        "{args:?} {env:?}: killed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    (out, fake_cuda::Report::read(&report))
}

fn cpu_digests(index: &Path, dtype: Option<&str>) -> String {
    cpu_digests_with(index, &[], dtype)
}

/// [`cpu_digests`] with `extra` arguments (row and column rules) too.
fn cpu_digests_with(index: &Path, extra: &[&str], dtype: Option<&str>) -> String {
    let mut args = vec!["load", index.to_str().unwrap(), "--digest"];
    args.extend_from_slice(extra);
    if let Some(d) = dtype {
        args.extend(["--dtype", d]);
    }
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_tensorstream"))
        .args(&args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Loads `idx` to cuda with `--digest` and `args` under the fake driver (each queued
/// operation delayed by `delay_us`): it succeeds, gives the digests `want`, and leaves
/// the driver clean. Returns the driver's report.
fn cuda_digests_equal(idx: &str, args: &[&str], delay_us: &str, want: &str) -> fake_cuda::Report {
    let mut all = vec!["load", idx, "--device", "cuda", "--digest"];
    all.extend_from_slice(args);
    let (out, report) = under_fake(&all, &[("FAKE_CUDA_DELAY_US", delay_us)]);
    assert!(out.status.success(), "{args:?}: {}", stderr(&out));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        want,
        "{args:?}: digests differ from the CPU path"
    );
    report.assert_clean(&format!("{args:?}"));
    report
}

/// Whether the kernel gives transparent huge pages to memory that asks for them (the
/// loader's default staging is then on huge pages, pinned by registering it).
fn thp() -> bool {
    std::fs::read_to_string("/sys/kernel/mm/transparent_hugepage/enabled")
        .is_ok_and(|s| s.contains("[always]") || s.contains("[madvise]"))
}

fn dtype_of(extra: &[&str]) -> Option<&'static str> {
    let i = extra.iter().position(|a| *a == "--dtype")?;
    ["F32", "F16", "BF16"]
        .into_iter()
        .find(|d| extra.get(i + 1) == Some(d))
}

#[test]
fn cuda_digests_equal_the_cpu_path_for_every_io_path_staging_and_dtype() {
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let index = checkpoint(dir.path());
    let idx = index.to_str().unwrap();
    let configs: [&[&str]; 16] = [
        &[],
        &["--io", "pread"],
        &["--io", "buffered"],
        &["--io", "direct"],
        &["--io", "pread", "--queue-depth", "2"],
        &["--io", "pread", "--queue-depth", "1", "--staging", "1M"],
        &["--io", "pread", "--queue-depth", "8", "--staging", "2M"],
        &[
            "--io",
            "pread-direct",
            "--staging",
            "2M",
            "--chunk-size",
            "256K",
        ],
        &[
            "--io",
            "pread-direct",
            "--dtype",
            "BF16",
            "--chunk-size",
            "128K",
        ],
        &["--staging-huge"],
        &[
            "--no-staging-huge",
            "--staging",
            "1M",
            "--chunk-size",
            "128K",
        ],
        &["--staging-wc", "--staging", "1M", "--chunk-size", "128K"],
        &["--dtype", "F32"],
        &["--dtype", "F16", "--staging", "1M", "--chunk-size", "64K"],
        &["--dtype", "BF16", "--io", "pread", "--staging", "1M"],
        &["--dtype", "F32", "--io", "direct", "--staging", "2M"],
    ];
    let mut want = std::collections::HashMap::new();
    for extra in configs {
        let dtype = dtype_of(extra);
        let want = want
            .entry(dtype)
            .or_insert_with(|| cpu_digests(&index, dtype));
        let report = cuda_digests_equal(idx, extra, "100", want);
        assert_eq!(report.get("htod_pageable"), 0, "{extra:?}: a pageable copy");
        assert!(report.get("htod_pinned") > 0, "{extra:?}: {report:?}");
        // The slots are on huge pages (pinned by registering them) unless asked not to
        // be, or write-combined, or the kernel has no transparent huge pages; nothing
        // else is registered.
        let huge = extra.contains(&"--staging-huge")
            || (thp() && !extra.contains(&"--staging-wc") && !extra.contains(&"--no-staging-huge"));
        assert_eq!(report.get("registrations") > 0, huge, "{extra:?}");
        assert_eq!(report.get("launches") > 0, dtype.is_some(), "{extra:?}");
    }
}

/// A tensor-parallel rank's columns (and rows) through the command line on every path
/// to the device: gathered by 2-D copies from the pinned slots, with every I/O path
/// and write-combined staging; the digests are the CPU load's of the same rules.
#[test]
fn selected_columns_on_every_cuda_path_equal_the_cpu_path() {
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let index = checkpoint(dir.path());
    let idx = index.to_str().unwrap();
    let rules = [
        "--cols",
        "embed.bf16=1/4",
        "--cols",
        "proj.f16=100:613",
        "--cols",
        "experts.e4m3=2/7",
        "--rows",
        "head.bf16=1/4",
        "--chunk-size",
        "64K",
        "--staging",
        "1M",
    ];
    let configs: [&[&str]; 7] = [
        &[],
        &["--dtype", "F32"],
        &["--io", "pread", "--queue-depth", "2"],
        &["--io", "pread", "--dtype", "BF16", "--queue-depth", "3"],
        &["--io", "direct", "--dtype", "F16"],
        &["--staging-wc", "--dtype", "F16"],
        &["--staging-wc"],
    ];
    let mut want = std::collections::HashMap::new();
    for extra in configs {
        let dtype = dtype_of(extra);
        let want = want
            .entry(dtype)
            .or_insert_with(|| cpu_digests_with(&index, &rules, dtype));
        let args: Vec<&str> = rules.iter().chain(extra).copied().collect();
        let report = cuda_digests_equal(idx, &args, "20", want);
        assert!(report.get("htod_2d") > 0, "{extra:?}: {report:?}");
    }
}

#[test]
fn a_failed_driver_call_anywhere_is_exit_1_a_clear_message_and_nothing_left_behind() {
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let index = checkpoint(dir.path());
    let idx = index.to_str().unwrap();
    // (driver call:n-th, extra arguments, words the message must hold)
    let cases: [(&str, &[&str], &str); 18] = [
        ("cuInit:1", &[], "cuInit"),
        (
            "cuDevicePrimaryCtxRetain:1",
            &[],
            "cuDevicePrimaryCtxRetain",
        ),
        (
            "cuMemAlloc_v2:1",
            &[],
            "model-00001-of-00002.safetensors: allocating",
        ),
        (
            "cuMemAlloc_v2:2",
            &[],
            "model-00002-of-00002.safetensors: allocating",
        ),
        (
            "cuMemHostAlloc:2",
            &["--no-staging-huge"],
            "pinned host memory",
        ),
        ("cuStreamCreate:1", &[], "cuStreamCreate"),
        ("cuEventCreate:3", &[], "cuEventCreate"),
        ("cuMemcpyHtoDAsync_v2:4", &[], "safetensors: bytes"),
        ("cuEventRecord:3", &[], "safetensors: bytes"),
        (
            "cuEventSynchronize:1",
            &["--staging", "1M", "--chunk-size", "256K"],
            "staging slot",
        ),
        ("cuStreamSynchronize:1", &[], "waiting for the copies"),
        (
            "cuModuleLoadData:1",
            &["--dtype", "F32"],
            "conversion kernels",
        ),
        ("cuLaunchKernel:3", &["--dtype", "F16"], "launching convert"),
        (
            "cuMemHostRegister_v2:1",
            &["--staging-huge"],
            "huge-page staging",
        ),
        (
            "cuMemcpyHtoDAsync_v2:3",
            &["--io", "pread", "--staging", "2M"],
            "safetensors: bytes",
        ),
        ("cuMemcpyDtoH_v2:2", &[], "copying a tensor back"),
        (
            "cuMemcpy2DAsync_v2:3",
            &["--cols", "embed.bf16=1/4", "--chunk-size", "64K"],
            "tensor 'embed.bf16': cuMemcpy2DAsync",
        ),
        (
            "cuMemcpy2DAsync_v2:1",
            &[
                "--cols",
                "proj.f16=3:900",
                "--io",
                "pread",
                "--dtype",
                "F32",
            ],
            "tensor 'proj.f16': cuMemcpy2DAsync",
        ),
    ];
    for (fail, extra, words) in cases {
        let mut args = vec!["load", idx, "--device", "cuda", "--digest"];
        args.extend_from_slice(extra);
        // A wait for a staging slot happens only while every slot's copy is still
        // queued: slow copies make sure of it rather than the threads' timing.
        let delay = if words == "staging slot" { "3000" } else { "0" };
        let (out, report) = under_fake(
            &args,
            &[("FAKE_CUDA_FAIL", fail), ("FAKE_CUDA_DELAY_US", delay)],
        );
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(1), "{fail} {extra:?}: {err}");
        assert!(!err.contains("panicked"), "{fail} {extra:?}: {err}");
        assert!(
            err.starts_with("error: CUDA: ") && err.contains(words),
            "{fail} {extra:?}: the message should name {words:?}: {err}"
        );
        report.assert_clean(&format!("{fail} {extra:?}"));
    }
}

/// On a GPU older than the kernels' sm_80 (a T4, a V100), a load that converts says
/// so and exits 1; one that converts nothing loads.
#[test]
fn conversions_on_a_pre_ampere_gpu_are_a_clear_error() {
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let index = checkpoint(dir.path());
    let idx = index.to_str().unwrap();
    let old = [("FAKE_CUDA_CC", "7.5")];
    let (out, report) = under_fake(&["load", idx, "--device", "cuda", "--dtype", "F16"], &old);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("compute capability 8.0 or newer (this one is 7.5)"),
        "{err}"
    );
    report.assert_clean("--dtype F16 on 7.5");
    let (out, report) = under_fake(&["load", idx, "--device", "cuda", "--digest"], &old);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        cpu_digests(&index, None)
    );
    report.assert_clean("no conversion on 7.5");
}

/// A failed conversion names the tensor it converts (regression: the tensor before
/// it, which shares the read's aligned start, was named).
#[test]
fn a_failed_conversion_names_its_tensor() {
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let index = checkpoint(dir.path());
    let idx = index.to_str().unwrap();
    let dtype_of_name = |name: &str| match name.rsplit('.').next() {
        Some("bf16") => "BF16",
        Some("f32") => "F32",
        Some("f16") => "F16",
        Some("e4m3") => "F8_E4M3",
        Some("e5m2") => "F8_E5M2",
        other => panic!("{name}: {other:?}"),
    };
    for n in 1..=4 {
        let fail = format!("cuLaunchKernel:{n}");
        let args = [
            "load",
            idx,
            "--device",
            "cuda",
            "--dtype",
            "F16",
            "--staging",
            "1M",
        ];
        let (out, _) = under_fake(&args, &[("FAKE_CUDA_FAIL", &fail)]);
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(1), "{fail}: {err}");
        let name = err
            .split("tensor '")
            .nth(1)
            .and_then(|r| r.split('\'').next());
        let src = err
            .split("launching convert ")
            .nth(1)
            .and_then(|r| r.split(' ').next());
        let (Some(name), Some(src)) = (name, src) else {
            panic!("{fail}: no tensor or conversion named: {err}");
        };
        assert_eq!(dtype_of_name(name), src, "{fail}: {err}");
        assert!(!err.contains(" more:"), "{fail}: one tensor: {err}");
    }
}

#[test]
fn refused_huge_page_registrations_fall_back_to_cu_mem_host_alloc_and_say_so() {
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let index = checkpoint(dir.path());
    let idx = index.to_str().unwrap();
    let want = cpu_digests(&index, None);
    // (variable, value, arguments, what -v says)
    let cases: [(&str, &str, &[&str], &str); 3] = [
        // The default staging on huge pages, its pinning refused: cuMemHostAlloc
        // instead, for the first slot and every later one (only where the kernel has
        // transparent huge pages: elsewhere the default never tries them).
        (
            "FAKE_CUDA_FAIL",
            "cuMemHostRegister_v2:1",
            &[],
            "huge-page staging refused",
        ),
        (
            "FAKE_CUDA_NO_REGISTER",
            "1",
            &[],
            "huge-page staging refused",
        ),
        (
            "FAKE_CUDA_NO_REGISTER",
            "1",
            &["--io", "pread", "--queue-depth", "2"],
            "huge-page staging refused",
        ),
    ];
    for (key, value, extra, says) in cases {
        let default_staging = !extra.iter().any(|a| a.contains("staging"));
        if default_staging && !thp() {
            eprintln!("{key}={value}: no transparent huge pages here, nothing to refuse");
            continue;
        }
        let mut args = vec!["load", idx, "--device", "cuda", "--digest", "-v"];
        args.extend_from_slice(extra);
        let (out, report) = under_fake(&args, &[(key, value)]);
        assert!(out.status.success(), "{key}={value}: {}", stderr(&out));
        assert_eq!(String::from_utf8_lossy(&out.stdout), want, "{key}={value}");
        assert!(
            stderr(&out).contains(says),
            "{key}={value}: {}",
            stderr(&out)
        );
        report.assert_clean(&format!("{key}={value} {extra:?}"));
        assert_eq!(report.get("live_registrations"), 0);
        if default_staging {
            // After the first refusal no slot asks again: nothing was registered.
            assert_eq!(report.get("registrations"), 0, "{key}={value}");
        }
    }
}

/// The default staging's huge pages refused, then cuMemHostAlloc failing too: exit 1
/// with both reasons, nothing left allocated.
#[test]
fn huge_pages_refused_then_no_pinned_memory_is_one_clear_error() {
    if !thp() {
        eprintln!("no transparent huge pages here: the default never tries them");
        return;
    }
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let index = checkpoint(dir.path());
    let idx = index.to_str().unwrap();
    let (out, report) = under_fake(
        &["load", idx, "--device", "cuda", "--digest"],
        &[
            ("FAKE_CUDA_NO_REGISTER", "1"),
            ("FAKE_CUDA_FAIL", "cuMemHostAlloc:1"),
        ],
    );
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("pinned host memory") && err.contains("after huge-page staging was refused"),
        "{err}"
    );
    report.assert_clean("huge pages refused, then cuMemHostAlloc");
}

/// Copies to the device slower than the reads (each queued copy delayed): the reading
/// thread's waits are for free slots, and load --json says so.
#[test]
fn slow_copies_show_as_waiting_for_buffers() {
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let index = checkpoint(dir.path());
    let idx = index.to_str().unwrap();
    let (out, report) = under_fake(
        &[
            "load",
            idx,
            "--device",
            "cuda",
            "--json",
            "--io",
            "pread",
            "--staging",
            "1M",
            "--chunk-size",
            "128K",
        ],
        &[("FAKE_CUDA_DELAY_US", "2000")],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("one JSON object");
    let buffers = v["waiting_for_buffers_seconds"].as_f64().unwrap();
    let reads = v["waiting_for_reads_seconds"].as_f64().unwrap();
    assert!(buffers > 2.0 * reads, "{v}");
    report.assert_clean("slow copies");
}

#[test]
fn no_device_no_such_device_and_too_little_memory_are_clear_errors() {
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let index = checkpoint(dir.path());
    let idx = index.to_str().unwrap();
    let cases: [(&[&str], Env, &str); 3] = [
        (
            &["--device", "cuda"],
            &[("FAKE_CUDA_DEVICES", "0")],
            "CUDA_ERROR_NO_DEVICE",
        ),
        (&["--device", "cuda:2"], &[], "device cuda:2 does not exist"),
        (
            &["--device", "cuda"],
            &[("FAKE_CUDA_MEM", "10000000")],
            "allocating",
        ),
    ];
    for (args, env, words) in cases {
        let mut all = vec!["load", idx];
        all.extend_from_slice(args);
        let (out, report) = under_fake(&all, env);
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(1), "{env:?}: {err}");
        assert!(
            err.contains(words) && !err.contains("panicked"),
            "{env:?}: {err}"
        );
        report.assert_clean(&format!("{env:?}"));
    }
    // Out of memory names the file and says how much was free.
    let (out, _) = under_fake(
        &["load", idx, "--device", "cuda"],
        &[("FAKE_CUDA_MEM", "10000000")],
    );
    let err = stderr(&out);
    assert!(
        err.contains("model-00002-of-00002.safetensors")
            && err.contains("bytes free")
            && err.contains("CUDA_ERROR_OUT_OF_MEMORY"),
        "{err}"
    );
}

/// A device fault in queued work (a copy or a kernel failing after the call that
/// queued it returned, as an Xid does): on every path the load ends in exit 1 with
/// a message that says the device faulted, hands back no tensor, and neither hangs
/// nor panics.
#[test]
fn a_device_fault_in_queued_work_is_exit_1_on_every_path() {
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let index = checkpoint(dir.path());
    let idx = index.to_str().unwrap();
    let paths: [&[&str]; 6] = [
        &["--staging", "1M", "--chunk-size", "256K"],
        &["--io", "pread", "--staging", "1M"],
        &["--io", "pread", "--queue-depth", "1", "--staging", "1M"],
        &[
            "--io",
            "pread-direct",
            "--staging",
            "1M",
            "--chunk-size",
            "256K",
        ],
        &["--dtype", "F16", "--staging", "1M", "--chunk-size", "256K"],
        &["--staging-huge", "--staging", "1M", "--chunk-size", "256K"],
    ];
    for extra in paths {
        for n in ["1", "3"] {
            let mut args = vec!["load", idx, "--device", "cuda", "--digest"];
            args.extend_from_slice(extra);
            let (out, report) = under_fake(
                &args,
                &[("FAKE_CUDA_ASYNC_FAULT", n), ("FAKE_CUDA_DELAY_US", "200")],
            );
            let err = stderr(&out);
            assert_eq!(out.status.code(), Some(1), "{extra:?} fault {n}: {err}");
            assert!(
                out.stdout.is_empty(),
                "{extra:?} fault {n}: tensors printed"
            );
            assert!(
                err.contains("error: CUDA: ")
                    && err.contains("device fault")
                    && !err.contains("panicked"),
                "{extra:?} fault {n}: {err}"
            );
            assert_eq!(report.get("violations"), 0, "{extra:?} fault {n}");
        }
    }
}

/// `bench --device cuda` (the README's main job, on a GPU) runs every backend warm
/// and cold under the fake driver and leaves nothing behind.
#[test]
fn bench_to_cuda_runs_every_backend() {
    let (out, report) = under_fake(
        &[
            "bench", "--device", "cuda", "--size", "24M", "--runs", "1", "--json",
        ],
        &[],
    );
    let err = stderr(&out);
    assert!(out.status.success(), "{err}");
    let text = String::from_utf8_lossy(&out.stdout);
    for io in ["direct", "buffered", "pread", "pread-direct"] {
        assert!(text.contains(io), "no {io} in {text}");
    }
    report.assert_clean("bench");
    assert!(
        report.get("htod_pinned") > 0 && report.get("registrations") > 0,
        "{report:?}"
    );
}
