//! io_uring engine: reads go straight from the kernel into the caller's memory, many
//! at once; staging slots can be registered as fixed buffers.

use std::io;

use io_uring::{opcode, types, IoUring};

use super::{Done, Engine, Req};

pub(crate) struct UringEngine {
    ring: IoUring,
    in_flight: usize,
    registered: bool,
}

impl UringEngine {
    /// A ring with room for `depth` reads; `fixed` buffers are registered (best effort:
    /// a refused registration, e.g. from RLIMIT_MEMLOCK, leaves plain reads in use).
    pub(crate) fn new(depth: usize, fixed: &[(*mut u8, usize)]) -> io::Result<Self> {
        let entries = (depth.max(1) as u32).next_power_of_two();
        let ring = IoUring::builder().setup_clamp().build(entries)?;
        let mut registered = false;
        if !fixed.is_empty() && fixed.len() <= u16::MAX as usize {
            let iov: Vec<libc::iovec> = fixed
                .iter()
                .map(|&(ptr, len)| libc::iovec {
                    iov_base: ptr.cast(),
                    iov_len: len,
                })
                .collect();
            // SAFETY: the sink that owns these buffers outlives the engine (the loader
            // drops the engine first), so they stay valid while registered.
            match unsafe { ring.submitter().register_buffers(&iov) } {
                Ok(()) => registered = true,
                Err(e) => tracing::debug!("io_uring fixed buffers refused ({e}); plain reads"),
            }
        }
        Ok(UringEngine {
            ring,
            in_flight: 0,
            registered,
        })
    }

    /// After `io_uring_enter` failed for good: the reads the kernel took still land
    /// in the caller's memory, and closing the ring does not wait for them, so poll
    /// the completion queue until they are all in. Entries it never took (still in the
    /// submission queue) read nothing and are dropped with the ring.
    fn await_taken(&mut self) {
        let mut sink = Vec::new();
        loop {
            self.reap(&mut sink);
            sink.clear();
            let untaken = self.ring.submission().len();
            if self.in_flight <= untaken {
                break;
            }
            // A system call: it also runs any completion work queued for this thread.
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        self.in_flight = 0;
    }

    fn reap(&mut self, out: &mut Vec<Done>) {
        for cqe in self.ring.completion() {
            let res = cqe.result();
            self.in_flight = self.in_flight.saturating_sub(1);
            out.push(Done {
                id: cqe.user_data() as usize,
                res: if res < 0 {
                    Err(io::Error::from_raw_os_error(-res))
                } else {
                    Ok(res as usize)
                },
            });
        }
    }
}

impl Engine for UringEngine {
    fn submit(&mut self, req: Req) -> io::Result<()> {
        super::populate(&req);
        let len = u32::try_from(req.len).unwrap_or(0xFFFF_F000);
        let fd = types::Fd(req.fd);
        let entry = match req.fixed {
            Some(index) if self.registered => opcode::ReadFixed::new(fd, req.ptr, len, index)
                .offset(req.offset)
                .build(),
            _ => opcode::Read::new(fd, req.ptr, len)
                .offset(req.offset)
                .build(),
        }
        .user_data(req.id as u64);
        loop {
            // SAFETY: the entry points at memory the coordinator keeps alive and
            // untouched until this read's completion is reaped (see Engine::submit).
            let pushed = unsafe { self.ring.submission().push(&entry) };
            if pushed.is_ok() {
                break;
            }
            // Submission queue full: hand what is queued to the kernel and retry.
            self.ring.submit()?;
        }
        self.in_flight += 1;
        Ok(())
    }

    fn wait(&mut self, out: &mut Vec<Done>) -> io::Result<()> {
        let before = out.len();
        while out.len() == before {
            match self.ring.submit_and_wait(1) {
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.raw_os_error() == Some(libc::EBUSY) => {}
                Err(e) => return Err(e),
            }
            self.reap(out);
        }
        Ok(())
    }

    fn drain(&mut self) {
        let mut sink = Vec::new();
        while self.in_flight > 0 {
            match self.ring.submit_and_wait(1) {
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.raw_os_error() == Some(libc::EBUSY) => {}
                Err(_) => {
                    self.await_taken();
                    break;
                }
            }
            self.reap(&mut sink);
            sink.clear();
        }
    }
}

impl Drop for UringEngine {
    fn drop(&mut self) {
        self.drain();
    }
}
