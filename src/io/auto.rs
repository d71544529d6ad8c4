//! The `auto` choice of an I/O path per file (io_uring O_DIRECT for files not in the
//! page cache, the pread pool for cached ones; falling back, and saying why, where the
//! kernel refuses io_uring or O_DIRECT), and the page-cache helpers it rests on.

use std::fs::File;
use std::io;
#[cfg(target_os = "linux")]
use std::os::unix::io::AsRawFd;
use std::path::Path;

use memmap2::Mmap;

#[cfg(target_os = "linux")]
use super::UringEngine;
use super::{open_file, EngineKind, FileMode, IoBackend, IoChoice};
use crate::error::{Error, Result};

/// Whether io_uring can be set up here (seccomp, sysctl and old kernels refuse it).
pub fn probe_uring() -> std::result::Result<(), String> {
    #[cfg(target_os = "linux")]
    {
        UringEngine::new(4, &[])
            .map(drop)
            .map_err(|e| e.to_string())
    }
    #[cfg(not(target_os = "linux"))]
    {
        Err("io_uring needs Linux".to_string())
    }
}

/// Fraction of a sample of the file's pages that are in the page cache.
pub fn resident_fraction(path: &Path) -> Result<f64> {
    let file = File::open(path).map_err(|e| Error::io(path, "open", e))?;
    sampled_residency(&file).map_err(|e| Error::io(path, "mincore", e))
}

/// Decides the engine and the per-file mode for `paths`.
pub fn choose(backend: IoBackend, paths: &[&Path]) -> Result<IoChoice> {
    let (engine, engine_reason) = match backend {
        IoBackend::Direct | IoBackend::Buffered => {
            probe_uring()
                .map_err(|e| Error::Unsupported(format!("io_uring is not available here: {e}")))?;
            (EngineKind::Uring, "requested".to_string())
        }
        IoBackend::Pread | IoBackend::PreadDirect => (EngineKind::Pread, "requested".to_string()),
        // Decided below, once it is known whether any file is cold.
        IoBackend::Auto => (EngineKind::Uring, String::new()),
    };
    let mut files = Vec::with_capacity(paths.len());
    for p in paths {
        let mode = match backend {
            IoBackend::Direct | IoBackend::PreadDirect => {
                open_file(p, true).map_err(|e| {
                    Error::Unsupported(format!(
                        "{}: O_DIRECT is not supported here: {e}",
                        p.display()
                    ))
                })?;
                FileMode {
                    direct: true,
                    reason: "requested".into(),
                }
            }
            IoBackend::Buffered | IoBackend::Pread => FileMode {
                direct: false,
                reason: "requested".into(),
            },
            IoBackend::Auto => auto_mode(p),
        };
        tracing::debug!("{}: direct={} ({})", p.display(), mode.direct, mode.reason);
        files.push(mode);
    }
    if backend != IoBackend::Auto {
        return Ok(IoChoice {
            engine,
            engine_reason,
            files,
        });
    }
    // Files in the page cache are copied, not read from disk: a pool of threads
    // copies in parallel, where buffered io_uring copies on the submitting thread.
    // Cold files go to io_uring (O_DIRECT where it works); pread when it is refused.
    let (engine, engine_reason) = if files.iter().all(|m| !m.direct) {
        (
            EngineKind::Pread,
            "no file needs the disk: parallel buffered copies".to_string(),
        )
    } else {
        match probe_uring() {
            Ok(()) => (EngineKind::Uring, "io_uring available".to_string()),
            Err(e) => {
                tracing::debug!("io_uring refused ({e}); falling back to pread");
                (
                    EngineKind::Pread,
                    format!("io_uring refused ({e}); fell back to pread"),
                )
            }
        }
    };
    tracing::debug!("engine {engine:?}: {engine_reason}");
    Ok(IoChoice {
        engine,
        engine_reason,
        files,
    })
}

fn auto_mode(p: &Path) -> FileMode {
    if let Err(e) = open_file(p, true) {
        return FileMode {
            direct: false,
            reason: format!("O_DIRECT refused ({e})"),
        };
    }
    match resident_fraction(p) {
        Ok(f) if f >= 0.5 => FileMode {
            direct: false,
            reason: format!("{:.0}% of sampled pages cached", f * 100.0),
        },
        Ok(f) => FileMode {
            direct: true,
            reason: format!("{:.0}% of sampled pages cached", f * 100.0),
        },
        Err(e) => FileMode {
            direct: false,
            reason: format!("page-cache residency unknown ({e})"),
        },
    }
}

/// Reads `path` once through the page cache (O_DIRECT loads do not fill it) and
/// returns the fraction of sampled pages resident afterwards.
pub fn fill_page_cache(path: &Path) -> Result<f64> {
    use std::io::Read;
    let mut file = File::open(path).map_err(|e| Error::io(path, "open", e))?;
    let mut buf = vec![0u8; 16 << 20];
    loop {
        match file.read(&mut buf) {
            Ok(0) => break,
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(Error::io(path, "read", e)),
        }
    }
    sampled_residency(&file).map_err(|e| Error::io(path, "mincore", e))
}

/// Drops `path` from the page cache (fdatasync, then POSIX_FADV_DONTNEED) and
/// returns the fraction of sampled pages still resident afterwards.
pub fn drop_page_cache(path: &Path) -> Result<f64> {
    let file = File::open(path).map_err(|e| Error::io(path, "open", e))?;
    file.sync_data()
        .map_err(|e| Error::io(path, "fdatasync", e))?;
    #[cfg(target_os = "linux")]
    {
        // SAFETY: plain syscall on an open fd; no memory is passed.
        let r = unsafe { libc::posix_fadvise(file.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
        if r != 0 {
            return Err(Error::io(
                path,
                "posix_fadvise",
                io::Error::from_raw_os_error(r),
            ));
        }
    }
    sampled_residency(&file).map_err(|e| Error::io(path, "mincore", e))
}

/// Fraction of up to 1024 evenly spaced pages of `file` that are in the page cache.
fn sampled_residency(file: &File) -> io::Result<f64> {
    let len = file.metadata()?.len();
    if len == 0 {
        return Ok(1.0);
    }
    // SAFETY: read-only map used only for mincore; no byte of it is read.
    let map = unsafe { Mmap::map(file)? };
    let page = 4096usize;
    let pages = (map.len().div_ceil(page)).max(1);
    let samples = pages.min(1024);
    let mut resident = 0usize;
    for i in 0..samples {
        let p = i * pages / samples;
        let mut vec = [0u8; 1];
        // SAFETY: the address is page-aligned and inside the live map; vec has room
        // for the one page asked about.
        let r = unsafe {
            libc::mincore(
                map.as_ptr().add(p * page) as *mut libc::c_void,
                1,
                vec.as_mut_ptr().cast(),
            )
        };
        if r != 0 {
            return Err(io::Error::last_os_error());
        }
        resident += usize::from(vec[0] & 1);
    }
    Ok(resident as f64 / samples as f64)
}
