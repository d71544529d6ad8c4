//! Removing a temporary directory when SIGINT or SIGTERM ends the program: the
//! signals are blocked in every thread and taken by one thread that waits for them.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};

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

/// Blocks SIGINT and SIGTERM in this thread and every thread it starts afterwards, and
/// starts a thread that waits for either: it removes `dir`, then ends the process by
/// that same signal (so a shell sees an interrupted program). Call it before any other
/// thread is started. When the waiting thread cannot be started, the signals are
/// unblocked again and a note says that an interrupt would leave `dir` behind.
pub fn remove_on_signal(dir: PathBuf) {
    let set = signal_set();
    // SAFETY: `set` is an initialised signal set; a null old-set pointer is allowed.
    unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) };
    let spawned = std::thread::Builder::new()
        .name("tensorstream-signals".into())
        .spawn(move || wait_and_remove(dir));
    if let Err(e) = spawned {
        // SAFETY: as above.
        unsafe { libc::pthread_sigmask(libc::SIG_UNBLOCK, &set, std::ptr::null_mut()) };
        note(format_args!(
            "note: could not start thread tensorstream-signals ({e}): an interrupt will leave the temporary checkpoint behind"
        ));
    }
}

/// SIGINT and SIGTERM, less any this process was started ignoring (as a shell starts
/// background jobs ignoring SIGINT): those stay ignored.
fn signal_set() -> libc::sigset_t {
    // SAFETY: sigset_t and sigaction are plain data; sigemptyset initialises the set
    // before any use; sigaction with a null new action only reads the current one.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for sig in [libc::SIGINT, libc::SIGTERM] {
            let mut old: libc::sigaction = std::mem::zeroed();
            let ignored = libc::sigaction(sig, std::ptr::null(), &mut old) == 0
                && old.sa_sigaction == libc::SIG_IGN;
            if !ignored {
                libc::sigaddset(&mut set, sig);
            }
        }
        set
    }
}

fn wait_and_remove(dir: PathBuf) {
    let set = signal_set();
    let mut sig: libc::c_int = 0;
    // SAFETY: `set` is initialised and `sig` is a valid place for the result.
    if unsafe { libc::sigwait(&set, &mut sig) } != 0 {
        return;
    }
    INTERRUPTED.store(true, Ordering::SeqCst);
    let _ = std::fs::remove_dir_all(&dir);
    // SAFETY: restoring the default action of a valid signal, unblocking it in this
    // thread and raising it here: the process ends as the signal's default says.
    unsafe {
        libc::signal(sig, libc::SIG_DFL);
        libc::pthread_sigmask(libc::SIG_UNBLOCK, &set, std::ptr::null_mut());
        libc::raise(sig);
    }
    // Not reached unless the signal was ignored meanwhile: exit as a shell would say.
    std::process::exit(128 + sig);
}
