//! R1-Searcher's prompts for a question: `base` (the training prompt of base models) or `chat`
//! (the model's chat template with R1-Searcher's system message, then `<think>`).

use r1s_agent::protocol::{SYSTEM_PROMPT, base_prompt};
use r1s_policy::chat::{Message, Template};

use crate::error::{Result, TrainError};

/// Which prompt.
#[derive(Debug, Clone, PartialEq)]
pub enum PromptKind {
    Base,
    Chat(Template),
}

impl PromptKind {
    /// `base` or `chat` (with `template`).
    pub fn parse(name: &str, template: Template) -> Result<PromptKind> {
        match name {
            "base" => Ok(PromptKind::Base),
            "chat" => Ok(PromptKind::Chat(template)),
            other => Err(TrainError::Options(format!("unknown prompt {other:?} (chat, base)"))),
        }
    }

    /// The prompt of `question`.
    pub fn render(&self, question: &str) -> String {
        match self {
            PromptKind::Base => base_prompt(question),
            PromptKind::Chat(t) => {
                let msgs = [Message::new("system", SYSTEM_PROMPT), Message::new("user", question)];
                format!("{}<think>", t.render(&msgs))
            }
        }
    }
}
