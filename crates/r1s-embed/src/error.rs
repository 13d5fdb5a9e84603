//! Errors of the embedding crate.

use std::path::{Path, PathBuf};

/// Errors of model loading, inference and embedding jobs.
#[derive(Debug, thiserror::Error)]
pub enum EmbedError {
    /// The ONNX Runtime shared library could not be found or loaded.
    #[error(
        "ONNX Runtime library not usable ({reason}); run tools/setup to fetch it into $R1S_HOME/lib, \
         or point ORT_DYLIB_PATH at a libonnxruntime.so (onnxruntime-gpu's for CUDA)"
    )]
    Runtime { reason: String },
    /// A model file is missing or unreadable.
    #[error("{}: {reason}", path.display())]
    Model { path: PathBuf, reason: String },
    /// The model's inputs or outputs are not those of a text encoder.
    #[error("{}: unexpected ONNX signature: {reason}", path.display())]
    Signature { path: PathBuf, reason: String },
    /// The tokenizer failed.
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    /// ONNX Runtime failed while running the model.
    #[error("inference failed: {0}")]
    Inference(String),
    /// The requested execution provider is not available.
    #[error("cannot use device {device}: {reason}")]
    Device { device: String, reason: String },
    /// Reading or writing a file failed.
    #[error("{}: {source}", path.display())]
    Io { path: PathBuf, source: std::io::Error },
    /// A file has the wrong format.
    #[error("{}: {reason}", path.display())]
    BadFile { path: PathBuf, reason: String },
    /// Invalid options or an inconsistent resume.
    #[error("{0}")]
    Options(String),
    /// The corpus could not be read.
    #[error(transparent)]
    Corpus(#[from] r1s_corpus::CorpusError),
    /// The job was cancelled; its progress is kept for a resume.
    #[error("cancelled (rerun the same command to resume)")]
    Cancelled,
}

impl EmbedError {
    pub(crate) fn io(path: impl AsRef<Path>, source: std::io::Error) -> Self {
        EmbedError::Io { path: path.as_ref().to_path_buf(), source }
    }
}

impl From<ort::Error> for EmbedError {
    fn from(e: ort::Error) -> Self {
        EmbedError::Inference(e.to_string())
    }
}

/// Result type of this crate.
pub type Result<T, E = EmbedError> = std::result::Result<T, E>;

pub(crate) trait IoContext<T> {
    fn at(self, path: impl AsRef<Path>) -> Result<T>;
}

impl<T> IoContext<T> for std::io::Result<T> {
    fn at(self, path: impl AsRef<Path>) -> Result<T> {
        self.map_err(|e| EmbedError::io(path, e))
    }
}
