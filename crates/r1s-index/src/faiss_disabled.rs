//! Stand-in for the FAISS kind when r1s is built without the `faiss` feature: every operation is a
//! clear error (the same API as `faiss_index.rs`, so callers carry no `#[cfg]`).

use std::path::Path;

use r1s_core::{Cancel, Progress, Scored, VectorIndex};

use crate::error::{IndexError, Result};
use crate::flat::Matrix;

pub const FILE: &str = "faiss.index";

fn disabled() -> IndexError {
    IndexError::Options("this r1s was built without the `faiss` feature (cargo build --features faiss)".into())
}

/// Never constructed without the feature.
#[derive(Debug)]
pub struct FaissIndex {
    never: std::convert::Infallible,
}

impl FaissIndex {
    pub fn build(_: &Matrix, _: &str, _: &dyn Progress, _: &Cancel) -> Result<FaissIndex> {
        Err(disabled())
    }
    pub fn write(&self, _: &Path) -> Result<()> {
        match self.never {}
    }
    pub fn load(_: &Path, _: usize, _: u64) -> Result<FaissIndex> {
        Err(disabled())
    }
    pub fn set_parameter(&self, _: &str, _: f64) -> Result<()> {
        match self.never {}
    }
}

impl VectorIndex for FaissIndex {
    type Error = IndexError;
    fn dim(&self) -> usize {
        match self.never {}
    }
    fn len(&self) -> u64 {
        match self.never {}
    }
    fn search(&self, _: &[f32], _: usize) -> Result<Vec<Vec<Scored>>> {
        match self.never {}
    }
}
