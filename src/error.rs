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
    #[error("{}: tensor '{tensor}': {reason}", path.display())]
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
