use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use r1s_embed::{EmbedderConfig, OnnxEmbedder};

pub fn shared(rel: &str) -> PathBuf {
    let p = Path::new(&std::env::var_os("CARGO_MANIFEST_DIR").unwrap_or_else(|| env!("CARGO_MANIFEST_DIR").into()))
        .join("../../../shared/data")
        .join(rel);
    assert!(p.exists(), "test data {} is missing", p.display());
    p
}

/// The default MiniLM embedder (fetched by tools/setup), loaded once for the test binary.
pub fn minilm() -> &'static OnnxEmbedder {
    static E: OnceLock<OnnxEmbedder> = OnceLock::new();
    E.get_or_init(|| {
        let cfg = EmbedderConfig { threads: 2, ..EmbedderConfig::default() };
        OnnxEmbedder::load(&cfg).unwrap_or_else(|e| panic!("loading MiniLM (run tools/setup): {e}"))
    })
}

pub fn cosine(a: &[f32], b: &[f64]) -> f64 {
    let dot: f64 = a.iter().zip(b).map(|(&x, &y)| f64::from(x) * y).sum();
    let na: f64 = a.iter().map(|&x| f64::from(x) * f64::from(x)).sum::<f64>().sqrt();
    let nb: f64 = b.iter().map(|y| y * y).sum::<f64>().sqrt();
    dot / (na * nb)
}

pub fn max_abs(a: &[f32], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(&x, &y)| (f64::from(x) - y).abs()).fold(0.0, f64::max)
}
