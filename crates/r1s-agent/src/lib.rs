//! The agent protocols of r1s (R1-Searcher's [`protocol`], Search-R1's [`searchr1`], R1-Searcher++'s
//! [`plus`]): strings, the batched agent loop ([`agent::run`]
//! over the core `Policy` and `Retriever` traits), trajectories with exact policy / retrieval spans,
//! [`metrics`], [`reward`]s, and evaluation data and summaries ([`eval`]).

#![cfg_attr(not(test), warn(clippy::unwrap_used))]

pub mod agent;
pub mod eval;
pub mod http;
pub mod judge;
pub mod metrics;
pub mod plus;
pub mod prompt;
pub mod protocol;
pub mod reward;
pub mod reward_server;
pub mod searchr1;

pub use agent::{AgentError, LoopConfig, Protocol, Source, Span, Trajectory, run, run_streaming};
pub use eval::{Question, Row, Summary, read_questions, score_file};
pub use http::{HttpPolicy, HttpRetriever};
pub use reward::Reward;
