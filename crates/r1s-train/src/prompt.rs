//! The prompts for a question under each protocol: `base` (the raw training prompt of base models)
//! or `chat` (the model's chat template). R1-Searcher: its base prompt, or its system message and the
//! question then `<think>`. Search-R1: its instruction + question as the raw prompt, or as the user
//! message of the chat template (with the template's own default system message, as verl renders it).

use r1s_agent::Protocol;
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

    /// The R1-Searcher prompt of `question`.
    pub fn render(&self, question: &str) -> String {
        self.render_with(Protocol::R1Searcher, question)
    }

    /// The prompt of `question` under `protocol`.
    pub fn render_with(&self, protocol: Protocol, question: &str) -> String {
        if protocol == Protocol::SearchR1 {
            let user = r1s_agent::searchr1::user_message(question);
            return match self {
                PromptKind::Base => user,
                PromptKind::Chat(t) => t.render(&[Message::new("user", &user)]),
            };
        }
        match self {
            PromptKind::Base => base_prompt(question),
            PromptKind::Chat(t) => {
                let msgs = [Message::new("system", SYSTEM_PROMPT), Message::new("user", question)];
                format!("{}<think>", t.render(&msgs))
            }
        }
    }
}
