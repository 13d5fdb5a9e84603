//! Stand-in for the Milvus client when r1s is built without the `milvus` feature: every operation
//! is a clear error (the same API as `client.rs`, so callers carry no `#[cfg]`).

use std::path::Path;
use std::time::Duration;

use r1s_core::{Cancel, Progress, Scored, VectorIndex};

use super::{Identity, MilvusBuild, MilvusParams};
use crate::error::{IndexError, Result};
use crate::flat::Matrix;

fn disabled() -> IndexError {
    IndexError::Options("this r1s was built without the `milvus` feature (cargo build --features milvus)".into())
}

/// Never constructed without the feature.
#[derive(Debug)]
pub struct MilvusIndex {
    pub params: MilvusParams,
    never: std::convert::Infallible,
}

impl MilvusIndex {
    pub fn open(_: MilvusParams, _: usize, _: u64, _: Option<&Identity>) -> Result<MilvusIndex> {
        Err(disabled())
    }
    pub fn set_ef_search(&mut self, _: usize) {
        match self.never {}
    }
    pub fn health(&self, _: Duration) -> Result<u64> {
        match self.never {}
    }
    pub fn search_ef(&self, _: &[f32], _: usize, _: usize) -> Result<Vec<Vec<Scored>>> {
        match self.never {}
    }
}

impl VectorIndex for MilvusIndex {
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

pub fn build(
    _: &Path,
    _: &Matrix,
    _: Identity,
    _: &MilvusBuild,
    _: &dyn Progress,
    _: &Cancel,
) -> Result<serde_json::Value> {
    Err(disabled())
}

pub fn drop_collection(_: &MilvusParams) -> Result<bool> {
    Err(disabled())
}
