//! The prompts of each protocol ([`r1s_agent::prompt`], where they belong; kept under this path for
//! callers of r1s-train).

pub use r1s_agent::prompt::{PromptKind, UnknownPrompt};
