//! Builds the tests' C++ helpers (the kernels' host driver, the fake CUDA driver)
//! with the system C++ compiler (`$CXX`, else `g++`).
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;

/// Compiles `source` (relative to the repository) with the flags every helper uses
/// and `extra`, into `CARGO_TARGET_TMPDIR/<dir>/<name>`. Built under a name of its
/// own, then renamed over the shared one, so that concurrent test runs never use a
/// half-written file. `who` says which tests need it, for the error message.
pub fn build(
    source: &str,
    dir: &str,
    name: &str,
    extra: &[&str],
    who: &str,
) -> Result<PathBuf, String> {
    let cxx = std::env::var("CXX").unwrap_or_else(|_| "g++".to_string());
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(dir);
    std::fs::create_dir_all(&dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
    let source = Path::new(env!("CARGO_MANIFEST_DIR")).join(source);
    let building = dir.join(format!("{name}.building-{}", std::process::id()));
    let output = Command::new(&cxx)
        .args([
            "-std=c++17",
            "-O2",
            "-Wall",
            "-Wextra",
            "-Werror",
            "-fno-strict-aliasing",
        ])
        .args(extra)
        .arg(&source)
        .arg("-o")
        .arg(&building)
        .output()
        .map_err(|e| {
            format!(
                "{who} need a C++17 compiler to build {}: running `{cxx}` failed: {e} \
                 (install g++ or set CXX)",
                source.display()
            )
        })?;
    if !output.status.success() {
        return Err(format!(
            "`{cxx}` failed to build {}:\n{}",
            source.display(),
            String::from_utf8_lossy(&output.stderr)
        ));
    }
    let out = dir.join(name);
    std::fs::rename(&building, &out).map_err(|e| format!("renaming to {}: {e}", out.display()))?;
    Ok(out)
}
