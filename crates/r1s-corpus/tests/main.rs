//! Integration tests of r1s-corpus on real data from `../shared/data` (one test binary).

mod cleaner;
mod common;
mod errors;
mod formats;
mod wiki;
