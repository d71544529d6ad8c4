//! Removing a temporary directory when SIGINT or SIGTERM ends the program: one thread
//! waits for either (signal-hook's self-pipe), removes it, and ends the process.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};

use signal_hook::consts::{SIGINT, SIGTERM};
use signal_hook::iterator::Signals;

use super::output::note;

/// Set once a signal has been taken: the program is about to end by it.
static INTERRUPTED: AtomicBool = AtomicBool::new(false);

/// When a signal has been taken, waits for the thread that took it to end the
/// process (so that a load failing because its files were just removed does not
/// report that, nor exit first with its own code).
pub fn wait_if_interrupted() {
    while INTERRUPTED.load(Ordering::SeqCst) {
        std::thread::park();
    }
}

/// Starts a thread that waits for SIGINT or SIGTERM: it removes `dir`, then ends the
/// process as that signal's default action does (so a shell sees an interrupted
/// program). When the handler or its thread cannot be set up, a note says that an
/// interrupt would leave `dir` behind.
pub fn remove_on_signal(dir: PathBuf) {
    let refused = |e: std::io::Error| {
        note(format_args!(
            "note: could not watch for interrupts ({e}): an interrupt will leave the temporary checkpoint behind"
        ))
    };
    let mut signals = match Signals::new([SIGINT, SIGTERM]) {
        Ok(s) => s,
        Err(e) => return refused(e),
    };
    let spawned = std::thread::Builder::new()
        .name("tensorstream-signals".into())
        .spawn(move || {
            if let Some(sig) = signals.forever().next() {
                INTERRUPTED.store(true, Ordering::SeqCst);
                let _ = std::fs::remove_dir_all(&dir);
                let _ = signal_hook::low_level::emulate_default_handler(sig);
                // Not reached for SIGINT and SIGTERM: exit as a shell would say.
                std::process::exit(128 + sig);
            }
        });
    if let Err(e) = spawned {
        refused(e);
    }
}
