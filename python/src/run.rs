//! Runs a load on a worker thread while the calling thread, GIL released, wakes every
//! 50 ms to report progress and run Python's signal handlers: a `KeyboardInterrupt`
//! (or an exception from the progress callback) cancels the load, waits for the
//! worker, and is raised.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use pyo3::exceptions::{PyOSError, PyRuntimeError};
use pyo3::prelude::*;
use tensorstream::{CancelToken, Loader};

use crate::to_py;

/// How often the waiting thread takes the GIL back to check for signals.
const POLL: Duration = Duration::from_millis(50);

/// Runs `job` with `loader` (given a cancel token and, with `progress`, a progress
/// recorder) on a worker thread; calls `progress(done, total)` from this thread as
/// the load advances, and once more at the end.
pub(crate) fn run<T: Send>(
    py: Python<'_>,
    loader: Loader,
    progress: Option<&Bound<'_, PyAny>>,
    job: impl FnOnce(&Loader) -> tensorstream::Result<T> + Send,
) -> PyResult<T> {
    let token = CancelToken::new();
    let seen = Arc::new((AtomicU64::new(0), AtomicU64::new(0)));
    let mut loader = loader.cancel_token(token.clone());
    if progress.is_some() {
        let seen = Arc::clone(&seen);
        loader = loader.progress(move |done, total| {
            seen.1.store(total, Ordering::Relaxed);
            seen.0.store(done, Ordering::Relaxed);
        });
    }
    let report = |py: Python<'_>| -> PyResult<()> {
        match progress {
            Some(cb) => cb
                .call1((
                    seen.0.load(Ordering::Relaxed),
                    seen.1.load(Ordering::Relaxed),
                ))
                .map(drop),
            None => Ok(()),
        }
        .and_then(|()| py.check_signals())
    };
    // Set by the worker before it wakes this thread: `is_finished` may still be false
    // just after the wake-up, and waiting out another POLL for it cost up to 50 ms a load.
    let done = AtomicBool::new(false);
    std::thread::scope(|s| {
        let waiting = std::thread::current();
        let loader = &loader;
        let done = &done;
        let worker = std::thread::Builder::new()
            .name("tensorstream-py".into())
            .spawn_scoped(s, move || {
                let r = job(loader);
                done.store(true, Ordering::Release);
                waiting.unpark();
                r
            })
            .map_err(|e| PyOSError::new_err(format!("could not start the load's thread: {e}")))?;
        let mut raised = None;
        loop {
            py.allow_threads(|| std::thread::park_timeout(POLL));
            if done.load(Ordering::Acquire) || worker.is_finished() {
                break;
            }
            if let Err(e) = report(py) {
                token.cancel();
                raised = Some(e);
                break;
            }
        }
        let result = py.allow_threads(|| worker.join());
        if let Some(e) = raised {
            return Err(e);
        }
        let value = result
            .map_err(|_| PyRuntimeError::new_err("internal error: the load's thread panicked"))?
            .map_err(to_py)?;
        report(py)?;
        Ok(value)
    })
}
