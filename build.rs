//! Build script. With the `cuda` feature the crate embeds kernels/convert.ptx, which
//! kernels/gen_ptx.py generates from kernels/convert.cu with a pinned NVRTC (the
//! machine building the crate needs no CUDA toolkit). The PTX records the SHA-256 of
//! the source it came from; this script fails the build when that is not the current
//! source, so an edited kernel can never ship with the old PTX. (CI also regenerates
//! the PTX and compares it byte for byte: .ci/kernels.sh.)

use std::fs;

use sha2::{Digest, Sha256};

const SOURCE: &str = "kernels/convert.cu";
const PTX: &str = "kernels/convert.ptx";
const MARK: &str = "// source sha256: ";

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-changed={SOURCE}");
    println!("cargo:rerun-if-changed={PTX}");
    candle_cuda();
    if std::env::var_os("CARGO_FEATURE_CUDA").is_none() {
        return;
    }
    if let Err(e) = check() {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}

/// `tensorstream::candle` on candle's CUDA device: needs candle's `cuda` feature, which
/// `--all-features` must not turn on (it links the CUDA libraries and needs nvcc), so it
/// is asked for by TENSORSTREAM_CANDLE_CUDA=1 with the `candle` and `cuda` features.
fn candle_cuda() {
    println!("cargo:rustc-check-cfg=cfg(tensorstream_candle_cuda)");
    println!("cargo:rerun-if-env-changed=TENSORSTREAM_CANDLE_CUDA");
    let on = |v: &str| std::env::var_os(v).is_some();
    if on("CARGO_FEATURE_CANDLE")
        && on("CARGO_FEATURE_CUDA")
        && std::env::var("TENSORSTREAM_CANDLE_CUDA").is_ok_and(|v| v == "1")
    {
        println!("cargo:rustc-cfg=tensorstream_candle_cuda");
    }
}

fn check() -> Result<(), String> {
    let source = fs::read(SOURCE).map_err(|e| format!("{SOURCE}: {e}"))?;
    let ptx = fs::read_to_string(PTX).map_err(|e| format!("{PTX}: {e}"))?;
    let want: String = Sha256::digest(&source)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let recorded = ptx
        .lines()
        .take_while(|l| l.starts_with("//"))
        .find_map(|l| l.strip_prefix(MARK));
    match recorded {
        Some(got) if got.trim() == want => Ok(()),
        Some(got) => Err(format!(
            "{PTX} was generated from another {SOURCE} (sha256 {}, the file now is {want}); \
             regenerate it: python3 -m venv target/kernel-venv && \
             target/kernel-venv/bin/pip install nvidia-cuda-nvrtc-cu12==12.0.140 && \
             target/kernel-venv/bin/python kernels/gen_ptx.py",
            got.trim()
        )),
        None => Err(format!(
            "{PTX} does not say which {SOURCE} it was generated from (no '{}' line); \
             regenerate it with kernels/gen_ptx.py",
            MARK.trim_end()
        )),
    }
}
