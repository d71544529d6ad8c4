//! The CUDA kernels' code, run on the host: `kernels/host_driver.cpp` includes
//! `kernels/convert.cu` (the same element functions and the same vector/scalar
//! split as the GPU kernels) and is built with the system C++ compiler (`$CXX`,
//! else `g++`). Every F16, BF16 and FP8 code point and a large random and
//! edge-case F32 set go through all 21 kernels and must match
//! `tensorstream::convert` bit for bit; misaligned heads, tails and several
//! simulated grid sizes check the vector/scalar split.
//!
//! A missing compiler fails these tests with a message saying so: CI has one.

mod cxx;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tensorstream::convert::{self, convert_into};
use tensorstream::Dtype;

const SOURCES: [Dtype; 8] = [
    Dtype::F32,
    Dtype::F16,
    Dtype::BF16,
    Dtype::F8_E4M3,
    Dtype::F8_E5M2,
    Dtype::F8_E4M3FNUZ,
    Dtype::F8_E5M2FNUZ,
    Dtype::F8_E8M0,
];
const TARGETS: [Dtype; 3] = [Dtype::F32, Dtype::F16, Dtype::BF16];
const POISON: u8 = 0xA5;

fn pairs() -> Vec<(Dtype, Dtype, &'static str)> {
    let mut v = Vec::new();
    for src in SOURCES {
        for dst in TARGETS {
            if src != dst {
                let name = convert::kernel_name(src, dst)
                    .unwrap_or_else(|| panic!("no kernel name for {src} -> {dst}"));
                v.push((src, dst, name));
            }
        }
    }
    v
}

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// Builds kernels/host_driver.cpp once per test run.
fn driver() -> &'static Path {
    static DRIVER: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    match DRIVER.get_or_init(build_driver) {
        Ok(p) => p,
        Err(e) => panic!("{e}"),
    }
}

fn build_driver() -> Result<PathBuf, String> {
    cxx::build(
        "kernels/host_driver.cpp",
        "kernel_host",
        "host_driver",
        &[],
        "kernel_host tests",
    )
}

/// Runs `kernel` in the host driver over `input` and returns the output bytes and
/// the number of elements the vector path converted.
fn run_kernel(
    kernel: &str,
    input: &[u8],
    src_skew: usize,
    dst_skew: usize,
    threads: u64,
) -> (Vec<u8>, u64) {
    let dir = tempfile::tempdir().expect("temp dir");
    let in_path = dir.path().join("in.bin");
    let out_path = dir.path().join("out.bin");
    std::fs::write(&in_path, input).expect("write input");
    std::fs::write(&out_path, [POISON; 16]).expect("poison output");
    let output = Command::new(driver())
        .arg("run")
        .arg(kernel)
        .arg(&in_path)
        .arg(&out_path)
        .arg(src_skew.to_string())
        .arg(dst_skew.to_string())
        .arg(threads.to_string())
        .output()
        .expect("run host driver");
    assert!(
        output.status.success(),
        "host driver {kernel} (skews {src_skew}/{dst_skew}, {threads} threads) failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let stdout = String::from_utf8_lossy(&output.stdout);
    let vector = stdout
        .trim()
        .strip_prefix("vector_elements=")
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("unexpected driver output {stdout:?}"));
    (std::fs::read(&out_path).expect("read output"), vector)
}

/// The crate's conversion of `input`, into a poisoned buffer.
fn expected(src: Dtype, dst: Dtype, input: &[u8]) -> Vec<u8> {
    let len = convert::converted_len(src, dst, input.len() as u64) as usize;
    let mut out = vec![POISON; len];
    convert_into(src, dst, input, &mut out).expect("supported pair");
    out
}

/// Compares element by element and reports the first mismatches readably.
fn assert_same(src: Dtype, dst: Dtype, input: &[u8], got: &[u8], want: &[u8], what: &str) {
    assert_eq!(
        got.len(),
        want.len(),
        "{src} -> {dst} {what}: output length"
    );
    if got == want {
        return;
    }
    let s = (src.bits() / 8) as usize;
    let d = (dst.bits() / 8) as usize;
    let hex = |b: &[u8]| {
        b.iter()
            .rev()
            .map(|x| format!("{x:02x}"))
            .collect::<String>()
    };
    let diffs: Vec<String> = input
        .chunks_exact(s)
        .zip(got.chunks_exact(d).zip(want.chunks_exact(d)))
        .filter(|(_, (g, w))| g != w)
        .take(8)
        .map(|(i, (g, w))| format!("0x{}: kernel 0x{}, crate 0x{}", hex(i), hex(g), hex(w)))
        .collect();
    panic!("{src} -> {dst} {what}: kernel and crate differ: {diffs:?}");
}

fn to_le(src: Dtype, values: impl IntoIterator<Item = u32>) -> Vec<u8> {
    let size = (src.bits() / 8) as usize;
    values
        .into_iter()
        .flat_map(|v| v.to_le_bytes().into_iter().take(size))
        .collect()
}

/// Random F32 bit patterns: uniform, in and around the F16 range, in the F16
/// subnormal range, and exact F16 and BF16 rounding ties; plus edge cases.
fn f32_inputs(count: usize) -> Vec<u32> {
    let mut v: Vec<u32> = vec![
        0x0000_0000,
        0x8000_0000,
        0x0000_0001,
        0x807F_FFFF,
        0x0080_0000,
        0x3880_0000,
        0x387F_FFFF,
        0x3380_0000,
        0x3300_0000,
        0x3300_0001,
        0x477F_E000,
        0x477F_EFFF,
        0x477F_F000,
        0x4780_0000,
        0x7F7F_FFFF,
        0xFF7F_8000,
        0x7F80_0000,
        0xFF80_0000,
        0x7F80_0001,
        0x7FC0_0000,
        0x7FFF_FFFF,
        0xFF80_0001,
        0xFFC0_1234,
    ];
    let mut rng = StdRng::seed_from_u64(0x0C0D_E5EE);
    for i in 0..count {
        v.push(match i % 5 {
            0 | 1 => rng.gen::<u32>(),
            2 => rng.gen_range(-70000.0f32..70000.0).to_bits(),
            3 => {
                let e = rng.gen_range(95u32..=113);
                (rng.gen::<u32>() & 0x807F_FFFF) | (e << 23)
            }
            _ => {
                if rng.gen() {
                    let e = rng.gen_range(100u32..=143);
                    (rng.gen::<u32>() & 0x807F_E000) | (e << 23) | 0x1000
                } else {
                    (rng.gen::<u32>() & 0xFFFF_0000) | 0x8000
                }
            }
        });
    }
    v
}

#[test]
fn driver_kernels_are_the_crates_and_the_ptxs() {
    let out = Command::new(driver())
        .arg("list")
        .output()
        .expect("run host driver");
    assert!(out.status.success());
    let mut listed: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_string)
        .collect();
    let mut names: Vec<String> = pairs().iter().map(|p| p.2.to_string()).collect();
    listed.sort();
    names.sort();
    assert_eq!(listed.len(), 21);
    assert_eq!(listed, names);

    let ptx = std::fs::read_to_string(repo().join("kernels/convert.ptx")).expect("read PTX");
    assert!(
        ptx.lines().any(|l| l.trim() == ".version 8.0"),
        "convert.ptx must be PTX ISA 8.0 (CUDA 12.0 drivers)"
    );
    for name in &names {
        assert!(
            ptx.contains(&format!(".visible .entry {name}(")),
            "{name} missing from kernels/convert.ptx"
        );
    }
}

#[test]
fn every_16_bit_code_point() {
    for (src, dst, kernel) in pairs() {
        if src.bits() != 16 {
            continue;
        }
        let input = to_le(src, 0..=0xFFFF);
        let (got, vector) = run_kernel(kernel, &input, 0, 0, 7);
        assert!(vector > 65000, "{kernel}: vector path unused");
        assert_same(
            src,
            dst,
            &input,
            &got,
            &expected(src, dst, &input),
            "all codes",
        );
    }
}

#[test]
fn every_8_bit_code_point() {
    for (src, dst, kernel) in pairs() {
        if src.bits() != 8 {
            continue;
        }
        // Each code point twice: once in the vector body, once in the tail.
        let input: Vec<u8> = (0..=255u8).chain((0..=255u8).rev()).chain(0..=6).collect();
        let (got, vector) = run_kernel(kernel, &input, 0, 0, 3);
        assert_eq!(vector, 512, "{kernel}");
        assert_same(
            src,
            dst,
            &input,
            &got,
            &expected(src, dst, &input),
            "all codes",
        );
        // All in single-element paths: a source one byte past alignment.
        let (got, vector) = run_kernel(kernel, &input, 1, 0, 2);
        assert!(vector < 512, "{kernel}");
        assert_same(
            src,
            dst,
            &input,
            &got,
            &expected(src, dst, &input),
            "skewed",
        );
    }
}

#[test]
fn f32_random_and_edge_cases() {
    let input = to_le(Dtype::F32, f32_inputs(600_000));
    for dst in [Dtype::F16, Dtype::BF16] {
        let kernel = convert::kernel_name(Dtype::F32, dst).expect("kernel");
        let (got, vector) = run_kernel(kernel, &input, 0, 0, 5);
        assert!(vector > 600_000, "{kernel}: vector path unused");
        assert_same(
            Dtype::F32,
            dst,
            &input,
            &got,
            &expected(Dtype::F32, dst, &input),
            "random",
        );
    }
}

#[test]
fn misaligned_heads_tails_and_grids() {
    let mut rng = StdRng::seed_from_u64(0xA11C_0FF5);
    for (src, dst, kernel) in pairs() {
        let s = (src.bits() / 8) as usize;
        let d = (dst.bits() / 8) as usize;
        // (source skew, destination skew) in bytes past a 256-byte boundary.
        let skews = [
            (0, 0),
            (s, d),
            (3 * s, 3 * d),
            (5 * s, 0),
            (0, 7 * d),
            (1, 0),
            (0, 1),
            (12 * s, 12 * d),
        ];
        for (i, &(src_skew, dst_skew)) in skews.iter().enumerate() {
            for n in [0usize, 1, 9, 1003] {
                let input: Vec<u8> = if src == Dtype::F32 {
                    to_le(src, f32_inputs(n).into_iter().take(n))
                } else {
                    (0..n * s).map(|_| rng.gen()).collect()
                };
                let threads = [1, 2, 5, 64][i % 4];
                let (got, vector) = run_kernel(kernel, &input, src_skew, dst_skew, threads);
                let what = format!("n={n} skews={src_skew}/{dst_skew} threads={threads}");
                assert_same(src, dst, &input, &got, &expected(src, dst, &input), &what);
                if src_skew % s != 0 || dst_skew % d != 0 {
                    assert_eq!(vector, 0, "{kernel} {what}: misaligned element vectorised");
                } else if src_skew / s == dst_skew / d {
                    // Pointers whose element offsets agree: at most a group's worth of
                    // head and of tail goes the single way.
                    let min = n.saturating_sub(14) as u64;
                    assert!(vector >= min, "{kernel} {what}: {vector} vectorised");
                }
            }
        }
    }
}
