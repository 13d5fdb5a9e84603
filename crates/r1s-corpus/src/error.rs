//! Errors of the corpus crate. Every variant that concerns a file names it, with the line or byte
//! offset where that makes sense.

use std::path::{Path, PathBuf};

/// Where in an input something went wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Location {
    /// 1-based line of a line-oriented file (JSONL).
    Line(u64),
    /// A record of a TSV file: the 1-based line it starts on and its byte offset (a quoted field
    /// may span lines).
    Record { line: u64, byte: u64 },
    /// Byte offset in the file as stored.
    Byte(u64),
    /// Byte offset in the decompressed stream (for `.bz2` input).
    DecompressedByte(u64),
    /// Byte offset in one bz2 stream of a multistream dump: (stream's offset in the file, offset
    /// inside the decompressed stream).
    Stream { stream_offset: u64, byte: u64 },
    /// A JSON object key (sample-corpus JSON).
    Key(String),
}

impl std::fmt::Display for Location {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Location::Line(l) => write!(f, "line {l}"),
            Location::Record { line, byte } => write!(f, "line {line} (byte {byte})"),
            Location::Byte(b) => write!(f, "byte {b}"),
            Location::DecompressedByte(b) => write!(f, "byte {b} of the decompressed stream"),
            Location::Stream { stream_offset, byte } => {
                write!(f, "byte {byte} of the bz2 stream at file offset {stream_offset}")
            }
            Location::Key(k) => write!(f, "entry {k:?}"),
        }
    }
}

/// Errors of corpus ingestion, export and access.
#[derive(Debug, thiserror::Error)]
pub enum CorpusError {
    /// Reading or writing a file failed.
    #[error("{}: {source}", path.display())]
    Io { path: PathBuf, source: std::io::Error },
    /// The input is malformed at a known place.
    #[error("{}: {at}: {message}", path.display())]
    BadInput { path: PathBuf, at: Location, message: String },
    /// The input format could not be recognised.
    #[error("{}: cannot tell the input format ({reason}); pass --format", path.display())]
    UnknownFormat { path: PathBuf, reason: String },
    /// The output exists already.
    #[error("{}: already exists (pass --force to replace it)", path.display())]
    OutputExists { path: PathBuf },
    /// The output exists and is not a corpus (nor empty): never replaced, even with force.
    #[error("{}: exists and is not a corpus (--force replaces a corpus or an empty directory, never other files): give another --out", path.display())]
    OutputNotCorpus { path: PathBuf },
    /// A corpus directory is missing a file or has an incompatible format.
    #[error("{}: not a usable r1s corpus: {reason}", path.display())]
    BadCorpus { path: PathBuf, reason: String },
    /// A row beyond the corpus was asked for.
    #[error("row {row} is out of range: the corpus has {rows} passages")]
    RowOutOfRange { row: u64, rows: u64 },
    /// Writing Parquet failed.
    #[error("{}: parquet: {source}", path.display())]
    Parquet { path: PathBuf, source: parquet::errors::ParquetError },
    /// Invalid options.
    #[error("{0}")]
    Options(String),
    /// The job was cancelled; nothing that looks finished was left behind.
    #[error("cancelled")]
    Cancelled,
}

impl CorpusError {
    /// Builds an [`CorpusError::Io`] for `path`.
    pub fn io(path: impl AsRef<Path>, source: std::io::Error) -> Self {
        CorpusError::Io { path: path.as_ref().to_path_buf(), source }
    }

    /// Builds a [`CorpusError::BadInput`].
    pub fn bad(path: impl AsRef<Path>, at: Location, message: impl Into<String>) -> Self {
        CorpusError::BadInput { path: path.as_ref().to_path_buf(), at, message: message.into() }
    }

    /// Whether the error is about the input data (as opposed to the system or the options).
    pub fn is_bad_input(&self) -> bool {
        matches!(self, CorpusError::BadInput { .. } | CorpusError::UnknownFormat { .. } | CorpusError::BadCorpus { .. })
    }
}

/// Result type of this crate.
pub type Result<T, E = CorpusError> = std::result::Result<T, E>;

/// Adds the path to I/O errors.
pub(crate) trait IoContext<T> {
    fn at(self, path: impl AsRef<Path>) -> Result<T>;
}

impl<T> IoContext<T> for std::io::Result<T> {
    fn at(self, path: impl AsRef<Path>) -> Result<T> {
        self.map_err(|e| CorpusError::io(path, e))
    }
}
