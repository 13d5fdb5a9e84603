//! Loading the ONNX Runtime shared library (`ort` with `load-dynamic`): one environment per process.

use std::path::PathBuf;
use std::sync::OnceLock;

use crate::error::{EmbedError, Result};

/// Environment variable naming the library explicitly (ort's own convention).
pub const DYLIB_ENV: &str = "ORT_DYLIB_PATH";
/// The library file `tools/setup` fetches into `$R1S_HOME/lib`.
pub const SETUP_LIB: &str = "libonnxruntime.so.1.31.1";

/// Where the library is looked for: `$ORT_DYLIB_PATH`, else `$R1S_HOME/lib/libonnxruntime.so.1.31.1`.
pub fn library_path() -> Result<PathBuf> {
    if let Some(p) = std::env::var_os(DYLIB_ENV).filter(|p| !p.is_empty()) {
        let p = PathBuf::from(p);
        return if p.is_file() {
            Ok(p)
        } else {
            Err(EmbedError::Runtime { reason: format!("{DYLIB_ENV}={} does not exist", p.display()) })
        };
    }
    let p = r1s_core::paths::r1s_home().join("lib").join(SETUP_LIB);
    if p.is_file() {
        Ok(p)
    } else {
        Err(EmbedError::Runtime { reason: format!("{} not found and {DYLIB_ENV} not set", p.display()) })
    }
}

static ENV: OnceLock<std::result::Result<ort::environment::Environment, String>> = OnceLock::new();

/// The process-wide ONNX Runtime environment, created on first use.
pub fn environment() -> Result<&'static ort::environment::Environment> {
    let env = ENV.get_or_init(|| {
        let path = library_path().map_err(|e| match e {
            EmbedError::Runtime { reason } => reason,
            other => other.to_string(),
        })?;
        let builder = ort::init_from(&path).map_err(|e| format!("cannot load {}: {e}", path.display()))?;
        builder.with_name("r1s").build().map_err(|e| format!("cannot create the environment: {e}"))
    });
    env.as_ref().map_err(|reason| EmbedError::Runtime { reason: reason.clone() })
}
