//! Output without panics: stdout through a writer that stops quietly at a closed
//! pipe, best-effort notes on stderr, file text escaped, and errors turned into exit codes.

use std::io::{self, BufWriter, StdoutLock, Write};
use std::path::Path;
use std::process::ExitCode;

use tensorstream::internals as error;
use tensorstream::{Checkpoint, Error};

/// Why a subcommand stopped: the library's error, or stdout refusing a write.
pub enum Fail {
    /// A load or validation failed (exit 1).
    Lib(Error),
    /// Writing to stdout failed for a reason other than a closed pipe (exit 1).
    Out(io::Error),
}

impl From<Error> for Fail {
    fn from(e: Error) -> Self {
        Fail::Lib(e)
    }
}

impl From<io::Error> for Fail {
    fn from(e: io::Error) -> Self {
        Fail::Out(e)
    }
}

/// What a subcommand returns.
pub type CmdResult = Result<ExitCode, Fail>;

/// Buffered stdout. A closed pipe (`| head`) ends the output: later writes are
/// dropped and the subcommand finishes with its own exit code. Any other failure (a
/// full disk) is returned, and becomes exit 1.
pub struct Out {
    w: BufWriter<StdoutLock<'static>>,
    closed: bool,
}

impl Out {
    /// Stdout, locked and buffered.
    pub fn new() -> Out {
        Out {
            w: BufWriter::with_capacity(1 << 16, io::stdout().lock()),
            closed: false,
        }
    }

    /// Whether the reader has gone (a write met a closed pipe).
    pub fn closed(&self) -> bool {
        self.closed
    }

    fn pipe<T>(&mut self, r: io::Result<T>, quiet: T) -> io::Result<T> {
        match r {
            Err(e) if e.kind() == io::ErrorKind::BrokenPipe => {
                self.closed = true;
                Ok(quiet)
            }
            r => r,
        }
    }
}

impl Write for Out {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if self.closed {
            return Ok(buf.len());
        }
        let r = self.w.write(buf);
        self.pipe(r, buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        if self.closed {
            return Ok(());
        }
        let r = self.w.flush();
        self.pipe(r, ())
    }
}

/// Writes one line to stderr, best effort: a closed or full stderr is ignored (there
/// is nowhere left to say so), and the exit code stays the subcommand's.
pub fn note(args: std::fmt::Arguments<'_>) {
    let mut e = io::stderr().lock();
    let _ = e.write_fmt(args).and_then(|()| e.write_all(b"\n"));
}

/// Text from a file (a tensor name, a metadata key or value), escaped for a terminal:
/// control and bidi characters visible (`\u{1b}`, `\n`), letters as they are.
pub fn esc(s: &str) -> std::borrow::Cow<'_, str> {
    error::escape(s)
}

/// A path for a terminal line: lossy UTF-8, control characters escaped.
pub fn show_path(p: &Path) -> String {
    error::escape_line(&p.to_string_lossy()).into_owned()
}

/// A path for JSON output: UTF-8, with bytes that are not UTF-8 replaced by U+FFFD.
pub fn json_path(p: &Path) -> String {
    p.to_string_lossy().into_owned()
}

/// Whether an error (or one it wraps) is EMFILE, the per-process limit on open files.
fn too_many_files(e: &Error) -> bool {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(c) = cur {
        if c.downcast_ref::<io::Error>()
            .is_some_and(|io| io.raw_os_error() == Some(libc::EMFILE))
        {
            return true;
        }
        cur = c.source();
    }
    false
}

/// The exit code of a finished subcommand; an error said on stderr, on one line with
/// control characters escaped, and for EMFILE the shard count and what to do.
pub fn finish(r: CmdResult, path: Option<&Path>) -> ExitCode {
    super::signals::wait_if_interrupted();
    match r {
        Ok(code) => code,
        Err(Fail::Out(e)) => {
            note(format_args!("error: writing to standard output: {e}"));
            ExitCode::from(1)
        }
        Err(Fail::Lib(e)) => {
            let mut msg = error::escape_line(&e.to_string()).into_owned();
            if too_many_files(&e) {
                // Validation opens one file at a time; the load opens every shard.
                msg.push_str("; too many open files: ");
                if let Some(c) = path.and_then(|p| Checkpoint::open(p).ok()) {
                    msg.push_str(&format!("the checkpoint has {} shards; ", c.shards.len()));
                }
                msg.push_str("raise the limit (ulimit -n)");
            }
            note(format_args!("error: {msg}"));
            ExitCode::from(1)
        }
    }
}

/// A command-line usage error (exit 2), or `--help`/`--version` (exit 0; 1 when
/// stdout cannot take them).
pub fn usage(e: clap::Error) -> ExitCode {
    let code = e.exit_code();
    match e.print() {
        Err(err) if code == 0 && err.kind() != io::ErrorKind::BrokenPipe => {
            note(format_args!("error: writing to standard output: {err}"));
            ExitCode::from(1)
        }
        _ => ExitCode::from(u8::try_from(code).unwrap_or(2)),
    }
}
