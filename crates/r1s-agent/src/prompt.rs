//! The prompts for a question under each protocol: `base` (the raw training prompt of base models)
//! or `chat` (the model's chat template). R1-Searcher: its base prompt, or its system message and the
//! question then `<think>`; R1-Searcher++ the same with its own system message ([`crate::plus`]).
//! Search-R1: its instruction + question as the raw prompt, or as the user message of the chat
//! template (with the template's own default system message, as verl renders it).

use r1s_core::chat::{Message, Template};

use crate::Protocol;
use crate::protocol::{SYSTEM_PROMPT, base_prompt};

/// A prompt name other than `chat` or `base`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown prompt {0:?} (chat, base)")]
pub struct UnknownPrompt(pub String);

/// Which prompt.
#[derive(Debug, Clone, PartialEq)]
pub enum PromptKind {
    Base,
    Chat(Template),
}

impl PromptKind {
    /// `base` or `chat` (with `template`).
    pub fn parse(name: &str, template: Template) -> Result<PromptKind, UnknownPrompt> {
        match name {
            "base" => Ok(PromptKind::Base),
            "chat" => Ok(PromptKind::Chat(template)),
            other => Err(UnknownPrompt(other.to_owned())),
        }
    }

    /// The R1-Searcher prompt of `question`.
    pub fn render(&self, question: &str) -> String {
        self.render_with(Protocol::R1Searcher, question)
    }

    /// The prompt of `question` under `protocol`.
    pub fn render_with(&self, protocol: Protocol, question: &str) -> String {
        if protocol == Protocol::SearchR1 {
            let user = crate::searchr1::user_message(question);
            return match self {
                PromptKind::Base => user,
                PromptKind::Chat(t) => t.render(&[Message::new("user", &user)]),
            };
        }
        let (system, base): (&str, fn(&str) -> String) = match protocol {
            Protocol::R1SearcherPlus => (crate::plus::SYSTEM_PROMPT, crate::plus::base_prompt),
            _ => (SYSTEM_PROMPT, base_prompt),
        };
        match self {
            PromptKind::Base => base(question),
            PromptKind::Chat(t) => {
                let msgs = [Message::new("system", system), Message::new("user", question)];
                format!("{}<think>", t.render(&msgs))
            }
        }
    }
}
