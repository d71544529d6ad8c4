//! The portable engine: a pool of threads calling pread(2). Always built; the
//! reference the other engines are tested against.

use std::io;
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use super::{Done, Engine, Req};

pub(crate) struct PreadEngine {
    jobs: Option<Sender<Req>>,
    done: Receiver<Done>,
    workers: Vec<JoinHandle<()>>,
    in_flight: usize,
    /// A worker that could not be started: the pool was stopped, and the first
    /// `submit` returns this (the error is reported at the next call, as the engine is
    /// built infallibly).
    failed: Option<(io::ErrorKind, String)>,
}

impl PreadEngine {
    /// `threads` workers (at most 64). When the OS refuses a thread, the ones started
    /// are stopped and joined, and the first `submit` fails saying which thread and why.
    pub(crate) fn new(threads: usize) -> Self {
        let (jobs_tx, jobs_rx) = mpsc::channel::<Req>();
        let (done_tx, done_rx) = mpsc::channel::<Done>();
        let jobs_rx = Arc::new(Mutex::new(jobs_rx));
        let mut workers = Vec::new();
        let mut failed = None;
        for i in 0..threads.clamp(1, 64) {
            let rx = Arc::clone(&jobs_rx);
            let tx = done_tx.clone();
            let name = format!("tensorstream-pread-{i}");
            // A refusal by pthread_create (EAGAIN: a process, thread or memory limit)
            // comes back here. Under an address-space limit (ulimit -v) a few failures
            // abort instead, before any of our code runs and out of reach of any
            // caller: std mapping the new thread's signal stack ("failed to allocate an
            // alternative stack"), glibc registering its TLS destructors, or any
            // allocation of the Rust runtime ("memory allocation of N bytes failed").
            match std::thread::Builder::new()
                .name(name.clone())
                .spawn(move || worker(&rx, &tx))
            {
                Ok(h) => workers.push(h),
                Err(e) => {
                    failed = Some((e.kind(), format!("could not start thread {name}: {e}")));
                    break;
                }
            }
        }
        let mut engine = PreadEngine {
            jobs: Some(jobs_tx),
            done: done_rx,
            workers,
            in_flight: 0,
            failed: None,
        };
        if failed.is_some() {
            engine.stop();
            engine.failed = failed;
        }
        engine
    }

    /// Closes the queue and joins the workers (each ends once the queue is closed).
    fn stop(&mut self) {
        self.jobs = None;
        for w in self.workers.drain(..) {
            let _ = w.join();
        }
    }
}

fn worker(rx: &Mutex<Receiver<Req>>, tx: &Sender<Done>) {
    loop {
        let req = match rx.lock() {
            Ok(guard) => match guard.recv() {
                Ok(r) => r,
                Err(_) => return,
            },
            Err(_) => return,
        };
        super::populate(&req);
        // SAFETY: req.ptr points at req.len writable bytes that the coordinator keeps
        // alive and untouched until it receives this read's Done.
        let n = unsafe { libc::pread(req.fd, req.ptr.cast(), req.len, req.offset as libc::off_t) };
        let res = if n < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(n as usize)
        };
        if tx.send(Done { id: req.id, res }).is_err() {
            return;
        }
    }
}

impl Engine for PreadEngine {
    fn submit(&mut self, req: Req) -> io::Result<()> {
        if let Some((kind, why)) = &self.failed {
            return Err(io::Error::new(*kind, why.clone()));
        }
        let tx = self
            .jobs
            .as_ref()
            .ok_or_else(|| io::Error::other("pread pool stopped"))?;
        tx.send(req)
            .map_err(|_| io::Error::other("pread pool stopped"))?;
        self.in_flight += 1;
        Ok(())
    }

    fn wait(&mut self, out: &mut Vec<Done>) -> io::Result<()> {
        let first = self
            .done
            .recv()
            .map_err(|_| io::Error::other("pread pool stopped"))?;
        let before = out.len();
        out.push(first);
        out.extend(self.done.try_iter());
        self.in_flight = self.in_flight.saturating_sub(out.len() - before);
        Ok(())
    }

    fn drain(&mut self) {
        while self.in_flight > 0 {
            match self.done.recv() {
                Ok(_) => self.in_flight -= 1,
                Err(_) => break,
            }
        }
    }
}

impl Drop for PreadEngine {
    fn drop(&mut self) {
        self.drain();
        self.stop();
    }
}
