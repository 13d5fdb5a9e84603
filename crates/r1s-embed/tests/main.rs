//! Integration tests of r1s-embed against the onnxruntime-python and sentence-transformers
//! references in `../shared/data/reference` (one test binary; the ONNX environment is per process).

mod common;
mod job;
mod reference;
