//! One error type for the whole crate. Every variant carries the context a user
//! needs to act on it: the file, the tensor where there is one, and the rule broken.

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};

/// Result alias used throughout the crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong while reading, validating or loading a checkpoint.
///
/// The `Display` form is the message a user sees; it names the file, the tensor and
/// the problem. Match on [`Error::kind`] rather than on the variants' fields.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The operating system refused an operation on a file.
    #[error("{}: {op}: {source}", path.display())]
    Io {
        /// The file concerned.
        path: PathBuf,
        /// What was being done ("open", "read", ...).
        op: &'static str,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// The header of a safetensors file breaks a format rule.
    #[error("{}: invalid header: {reason}", path.display())]
    InvalidHeader {
        /// The file concerned.
        path: PathBuf,
        /// The rule broken, in words.
        reason: String,
    },
    /// One tensor entry of a header breaks a format rule.
    #[error("{}: tensor {}: {reason}", path.display(), quoted(tensor))]
    InvalidTensor {
        /// The file concerned.
        path: PathBuf,
        /// The tensor's name.
        tensor: String,
        /// The rule broken, in words.
        reason: String,
    },
    /// A sharded checkpoint (index or directory) is inconsistent.
    #[error("{}: {reason}", path.display())]
    InvalidCheckpoint {
        /// The index file or directory concerned.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// A file changed size or could not be read completely while it was being loaded.
    #[error("{}: file changed during load: {reason}", path.display())]
    FileChanged {
        /// The file concerned.
        path: PathBuf,
        /// What was observed.
        reason: String,
    },
    /// The load was cancelled through its [`crate::CancelToken`].
    #[error("load cancelled")]
    Cancelled,
    /// An option or combination of options that cannot be honoured.
    #[error("{0}")]
    InvalidArgument(String),
    /// A backend or conversion that is not available here (io_uring refused, no CUDA, ...).
    #[error("{0}")]
    Unsupported(String),
    /// A CUDA driver call failed.
    #[error("CUDA: {0}")]
    Cuda(String),
}

/// The kind of an [`Error`], for callers that branch on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorKind {
    /// See [`Error::Io`].
    Io,
    /// See [`Error::InvalidHeader`].
    InvalidHeader,
    /// See [`Error::InvalidTensor`].
    InvalidTensor,
    /// See [`Error::InvalidCheckpoint`].
    InvalidCheckpoint,
    /// See [`Error::FileChanged`].
    FileChanged,
    /// See [`Error::Cancelled`].
    Cancelled,
    /// See [`Error::InvalidArgument`].
    InvalidArgument,
    /// See [`Error::Unsupported`].
    Unsupported,
    /// See [`Error::Cuda`].
    Cuda,
}

impl Error {
    /// The kind of this error.
    pub fn kind(&self) -> ErrorKind {
        match self {
            Error::Io { .. } => ErrorKind::Io,
            Error::InvalidHeader { .. } => ErrorKind::InvalidHeader,
            Error::InvalidTensor { .. } => ErrorKind::InvalidTensor,
            Error::InvalidCheckpoint { .. } => ErrorKind::InvalidCheckpoint,
            Error::FileChanged { .. } => ErrorKind::FileChanged,
            Error::Cancelled => ErrorKind::Cancelled,
            Error::InvalidArgument(_) => ErrorKind::InvalidArgument,
            Error::Unsupported(_) => ErrorKind::Unsupported,
            Error::Cuda(_) => ErrorKind::Cuda,
        }
    }

    /// The file this error is about, when there is one.
    pub fn path(&self) -> Option<&Path> {
        match self {
            Error::Io { path, .. }
            | Error::InvalidHeader { path, .. }
            | Error::InvalidTensor { path, .. }
            | Error::InvalidCheckpoint { path, .. }
            | Error::FileChanged { path, .. } => Some(path),
            _ => None,
        }
    }

    /// The tensor this error is about, when there is one.
    pub fn tensor(&self) -> Option<&str> {
        match self {
            Error::InvalidTensor { tensor, .. } => Some(tensor),
            _ => None,
        }
    }

    pub(crate) fn io(path: impl Into<PathBuf>, op: &'static str, source: io::Error) -> Self {
        Error::Io {
            path: path.into(),
            op,
            source,
        }
    }

    /// A thread the library needed could not be started (the OS refused it: a limit
    /// on processes or memory). An I/O error whose path is the thread's name:
    /// "tensorstream-place-1: could not start the thread: Resource temporarily unavailable".
    pub(crate) fn thread(name: &str, source: io::Error) -> Self {
        Error::Io {
            path: PathBuf::from(name),
            op: "could not start the thread",
            source,
        }
    }

    pub(crate) fn header(path: &Path, reason: impl fmt::Display) -> Self {
        Error::InvalidHeader {
            path: path.to_path_buf(),
            reason: reason.to_string(),
        }
    }

    pub(crate) fn tensor_err(path: &Path, tensor: &str, reason: impl fmt::Display) -> Self {
        Error::InvalidTensor {
            path: path.to_path_buf(),
            tensor: tensor.to_string(),
            reason: reason.to_string(),
        }
    }

    pub(crate) fn checkpoint(path: &Path, reason: impl fmt::Display) -> Self {
        Error::InvalidCheckpoint {
            path: path.to_path_buf(),
            reason: reason.to_string(),
        }
    }

    pub(crate) fn changed(path: &Path, reason: impl fmt::Display) -> Self {
        Error::FileChanged {
            path: path.to_path_buf(),
            reason: reason.to_string(),
        }
    }
}

/// Longest stretch of file-controlled text a message quotes, in characters.
const QUOTE_MAX: usize = 200;

/// Longest message of a parser (serde_json) shown whole, in characters.
const CLIP_MAX: usize = 400;

/// Whether `c` is shown escaped: control characters, and the invisible formatting
/// characters that reorder or hide text on a terminal (bidi overrides and isolates,
/// zero-width characters, line and paragraph separators, the byte-order mark).
fn hidden(c: char) -> bool {
    c.is_control()
        || matches!(
            c,
            '\u{061C}'
                | '\u{200B}'..='\u{200F}'
                | '\u{2028}'..='\u{202E}'
                | '\u{2060}'..='\u{2064}'
                | '\u{2066}'..='\u{2069}'
                | '\u{FEFF}'
                | '\u{FFF9}'..='\u{FFFB}'
        )
}

fn push_escaped(out: &mut String, c: char, backslash: bool) {
    match c {
        '\n' => out.push_str("\\n"),
        '\r' => out.push_str("\\r"),
        '\t' => out.push_str("\\t"),
        '\0' => out.push_str("\\0"),
        '\\' if backslash => out.push_str("\\\\"),
        c if hidden(c) => {
            use std::fmt::Write;
            let _ = write!(out, "\\u{{{:x}}}", u32::from(c));
        }
        c => out.push(c),
    }
}

/// Text from a file (a tensor name, a metadata value) made safe to show on a
/// terminal: control characters, bidi overrides and other invisible formatting
/// characters appear as escapes (`\n`, `\u{1b}`, `\u{202e}`), a backslash as `\\`;
/// letters of every script stay as they are. Nothing is cut.
#[doc(hidden)]
pub fn escape(s: &str) -> std::borrow::Cow<'_, str> {
    escape_with(s, true)
}

/// A whole message made safe for one terminal line: control and invisible formatting
/// characters escaped as [`escape`] does, backslashes left alone (the message's quoted
/// parts are escaped already).
#[doc(hidden)]
pub fn escape_line(s: &str) -> std::borrow::Cow<'_, str> {
    escape_with(s, false)
}

fn escape_with(s: &str, backslash: bool) -> std::borrow::Cow<'_, str> {
    if !s.chars().any(|c| hidden(c) || (backslash && c == '\\')) {
        return std::borrow::Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        push_escaped(&mut out, c, backslash);
    }
    std::borrow::Cow::Owned(out)
}

/// File-controlled text as a message quotes it: escaped (see [`escape`]) between single
/// quotes, and cut after 200 characters with the whole size said:
/// `'aaaa…' (10000000 bytes)`.
pub(crate) fn quoted(s: &str) -> String {
    cut(s, QUOTE_MAX, "'", escape)
}

/// As [`quoted`], without the quotes (for a file name from an index, shown as a name).
pub(crate) fn bounded(s: &str) -> String {
    cut(s, QUOTE_MAX, "", escape)
}

/// `s` shown by `show` between `quote`s, cut after `max` characters with the whole
/// size said after the closing quote.
fn cut(s: &str, max: usize, quote: &str, show: fn(&str) -> std::borrow::Cow<'_, str>) -> String {
    match s.char_indices().nth(max) {
        None => format!("{quote}{}{quote}", show(s)),
        Some((at, _)) => format!(
            "{quote}{}…{quote} ({} bytes)",
            show(s.get(..at).unwrap_or_default()),
            s.len()
        ),
    }
}

/// A parser's message, which may repeat input of any length: control characters
/// escaped, and cut after 400 characters with the whole size said.
pub(crate) fn clip(s: &str) -> String {
    cut(s, CLIP_MAX, "", escape_line)
}

/// A parser's error with its position kept: `clip`ped, then ` at line L column C`.
pub(crate) fn clip_json(e: &serde_json::Error) -> String {
    let full = e.to_string();
    let at = format!(" at line {} column {}", e.line(), e.column());
    match full.strip_suffix(&at) {
        Some(msg) if e.line() > 0 => format!("{}{at}", clip(msg)),
        _ => clip(&full),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoted_escapes_controls_and_bidi_but_keeps_letters() {
        assert_eq!(quoted("k\u{1b}[2J"), "'k\\u{1b}[2J'");
        assert_eq!(quoted("a\nb\r\0"), "'a\\nb\\r\\0'");
        assert_eq!(quoted("x\u{202e}y\\"), "'x\\u{202e}y\\\\'");
        assert_eq!(quoted("поле_权重_é"), "'поле_权重_é'");
        assert_eq!(escape_line("a\\b\u{7}"), "a\\b\\u{7}");
    }

    #[test]
    fn quoted_cuts_long_text_and_says_its_size() {
        let long = "é".repeat(5_000_000);
        let q = quoted(&long);
        assert_eq!(q, format!("'{}…' (10000000 bytes)", "é".repeat(200)));
        let c = clip(&"x".repeat(1000));
        assert!(c.ends_with("… (1000 bytes)") && c.len() < 420, "{c}");
    }
}
