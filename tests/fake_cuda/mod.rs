//! The fake NVIDIA driver of `tests/fake_cuda/fake_cuda.cpp`: built once per test
//! run with g++, put in front of the real one with `LD_LIBRARY_PATH`, and its
//! report read back. See the C++ file for what it models and checks.
#![allow(dead_code)]

#[path = "../cxx/mod.rs"]
mod cxx;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

/// Set in processes that run under the fake driver.
pub const MARK: &str = "TS_UNDER_FAKE_CUDA";

/// Whether this process runs under the fake driver.
pub fn active() -> bool {
    std::env::var_os(MARK).is_some()
}

/// The directory holding the fake `libcuda.so.1` (and `libcuda.so`), built on
/// first use.
pub fn library_dir() -> &'static Path {
    static DIR: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    match DIR.get_or_init(build) {
        Ok(p) => p,
        Err(e) => panic!("{e}"),
    }
}

fn build() -> Result<PathBuf, String> {
    let lib = cxx::build(
        "tests/fake_cuda/fake_cuda.cpp",
        "fake_cuda",
        "libcuda.so.1",
        &["-shared", "-fPIC", "-pthread"],
        "the fake-driver tests",
    )?;
    // cudarc looks for libcuda.so first.
    let dir = lib.parent().ok_or("no directory")?.to_path_buf();
    let alias = dir.join(format!("libcuda.so.new-{}", std::process::id()));
    std::fs::copy(&lib, &alias)
        .and_then(|_| std::fs::rename(&alias, dir.join("libcuda.so")))
        .map_err(|e| format!("installing libcuda.so in {}: {e}", dir.display()))?;
    Ok(dir)
}

/// `program` set up to run under the fake driver, writing its report to `report`.
pub fn command(program: impl AsRef<std::ffi::OsStr>, report: &Path) -> Command {
    let mut c = Command::new(program);
    c.env("LD_LIBRARY_PATH", library_dir())
        .env("FAKE_CUDA_REPORT", report)
        .env(MARK, "1")
        .env_remove("FAKE_CUDA_FAIL")
        .env_remove("FAKE_CUDA_DELAY_US")
        .env_remove("FAKE_CUDA_MEM")
        .env_remove("FAKE_CUDA_DEVICES")
        .env_remove("FAKE_CUDA_NO_REGISTER")
        .env_remove("FAKE_CUDA_ASYNC_FAULT");
    c
}

/// Runs `c` to its end: whether it succeeded, and its stdout and stderr together.
pub fn run(c: &mut Command) -> (bool, String) {
    let out = c.output().expect("running a child under the fake driver");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

/// What the fake driver reported at the exit of a process.
#[derive(Debug)]
pub struct Report(BTreeMap<String, u64>);

impl Report {
    pub fn read(path: &Path) -> Report {
        let text = std::fs::read_to_string(path)
            .unwrap_or_else(|e| panic!("no fake-driver report at {}: {e}", path.display()));
        Report(
            text.lines()
                .filter_map(|l| l.split_once('='))
                .map(|(k, v)| (k.to_string(), v.trim().parse().expect("a number")))
                .collect(),
        )
    }

    pub fn get(&self, key: &str) -> u64 {
        *self
            .0
            .get(key)
            .unwrap_or_else(|| panic!("no {key} in the fake-driver report {:?}", self.0))
    }

    /// No violation, and nothing left allocated, registered or retained.
    pub fn assert_clean(&self, what: &str) {
        assert_eq!(self.get("violations"), 0, "{what}: violations in {self:?}");
        for (k, v) in &self.0 {
            if k.starts_with("live_") || k == "context_refs" {
                assert_eq!(*v, 0, "{what}: {k} left at exit: {self:?}");
            }
        }
    }
}
