//! The mmap engine (copy out of a shared read-only map) and page-cache residency.

use std::collections::hash_map::Entry;
use std::collections::HashMap;
use std::fs::File;
use std::io;
use std::mem::ManuallyDrop;
use std::os::unix::io::{FromRawFd, RawFd};

use memmap2::Mmap;

use super::{Done, Engine, Req};

#[derive(Default)]
pub(crate) struct MmapEngine {
    maps: HashMap<RawFd, Mmap>,
    done: Vec<Done>,
}

impl MmapEngine {
    fn copy(&mut self, req: &Req) -> io::Result<usize> {
        let map = match self.maps.entry(req.fd) {
            Entry::Occupied(e) => e.into_mut(),
            Entry::Vacant(v) => {
                // SAFETY: the fd is open for the duration of the load (the coordinator
                // closes it only after its last read); ManuallyDrop keeps it from closing.
                let file = ManuallyDrop::new(unsafe { File::from_raw_fd(req.fd) });
                // SAFETY: a read-only shared map; another process truncating the file
                // would raise SIGBUS, which the IoBackend::Mmap documentation warns about.
                v.insert(unsafe { Mmap::map(&*file)? })
            }
        };
        let start = usize::try_from(req.offset)
            .unwrap_or(usize::MAX)
            .min(map.len());
        let n = req.len.min(map.len() - start);
        let src = map.get(start..start + n).unwrap_or_default();
        super::populate(req);
        // SAFETY: req.ptr points at req.len ≥ n writable bytes that nothing else touches
        // until this read's Done is returned; the map and the buffer do not overlap.
        unsafe { std::ptr::copy_nonoverlapping(src.as_ptr(), req.ptr, n) };
        Ok(n)
    }
}

impl Engine for MmapEngine {
    fn submit(&mut self, req: Req) -> io::Result<()> {
        let res = self.copy(&req);
        self.done.push(Done { id: req.id, res });
        Ok(())
    }

    fn wait(&mut self, out: &mut Vec<Done>) -> io::Result<()> {
        out.append(&mut self.done);
        Ok(())
    }

    fn drain(&mut self) {
        self.done.clear();
    }

    fn file_closed(&mut self, fd: RawFd) {
        // The fd number may be reused for another file: forget its map.
        self.maps.remove(&fd);
    }
}

/// Fraction of up to 1024 evenly spaced pages of `file` that are in the page cache.
pub(crate) fn resident_fraction(file: &File) -> io::Result<f64> {
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
