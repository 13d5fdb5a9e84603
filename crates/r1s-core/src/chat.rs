//! Chat templates: ChatML (SmolLM2, Qwen) and Llama 3, chosen from the model's Jinja template, plus
//! raw prompts. The default system message some templates insert is taken from the template text.

/// One chat message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    pub role: String,
    pub content: String,
}

impl Message {
    pub fn new(role: &str, content: &str) -> Message {
        Message { role: role.into(), content: content.into() }
    }
}

/// A chat format.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Template {
    /// `<|im_start|>{role}\n{content}<|im_end|>\n` …, then `<|im_start|>assistant\n`.
    ChatMl { default_system: Option<String> },
    /// `<|begin_of_text|><|start_header_id|>{role}<|end_header_id|>\n\n{content}<|eot_id|>` …
    /// (Meta-Llama-3-Instruct's template; contents trimmed).
    Llama3,
    /// Llama 3.1-Instruct's template (its `tokenizer_config.json`, without tools): Llama 3's, with a
    /// system turn always first that opens with `Cutting Knowledge Date: December 2023\nToday Date: 26
    /// Jul 2024\n\n` (the template's default date) before the system message, empty when there is none.
    /// (Llama 3.2's templates take today's date through `strftime_now` where transformers provides it;
    /// this renders the default date.)
    Llama31,
    /// Messages' contents joined by newlines (for base models).
    Raw,
}

impl Template {
    /// Picks the format from a Jinja template's text.
    pub fn detect(jinja: Option<&str>) -> Template {
        let Some(j) = jinja else { return Template::Raw };
        if j.contains("<|start_header_id|>") {
            return if j.contains("Cutting Knowledge Date") { Template::Llama31 } else { Template::Llama3 };
        }
        if j.contains("<|im_start|>") {
            return Template::ChatMl { default_system: default_system(j) };
        }
        Template::Raw
    }

    /// The prompt text for `messages`, ending with the assistant's turn opened.
    pub fn render(&self, messages: &[Message]) -> String {
        let mut s = String::new();
        match self {
            Template::ChatMl { default_system } => {
                if let Some(sys) =
                    default_system.as_deref().filter(|_| messages.first().is_none_or(|m| m.role != "system"))
                {
                    s.push_str(&format!("<|im_start|>system\n{sys}<|im_end|>\n"));
                }
                for m in messages {
                    s.push_str(&format!("<|im_start|>{}\n{}<|im_end|>\n", m.role, m.content));
                }
                s.push_str("<|im_start|>assistant\n");
            }
            Template::Llama3 | Template::Llama31 => {
                s.push_str("<|begin_of_text|>");
                let mut messages = messages;
                if *self == Template::Llama31 {
                    let (system, rest) = match messages.split_first() {
                        Some((m, rest)) if m.role == "system" => (m.content.trim(), rest),
                        _ => ("", messages),
                    };
                    s.push_str("<|start_header_id|>system<|end_header_id|>\n\n");
                    s.push_str("Cutting Knowledge Date: December 2023\nToday Date: 26 Jul 2024\n\n");
                    s.push_str(system);
                    s.push_str("<|eot_id|>");
                    messages = rest;
                }
                for m in messages {
                    s.push_str(&format!(
                        "<|start_header_id|>{}<|end_header_id|>\n\n{}<|eot_id|>",
                        m.role,
                        m.content.trim()
                    ));
                }
                s.push_str("<|start_header_id|>assistant<|end_header_id|>\n\n");
            }
            Template::Raw => {
                let parts: Vec<&str> = messages.iter().map(|m| m.content.as_str()).collect();
                s.push_str(&parts.join("\n"));
            }
        }
        s
    }
}

/// The literal system message a ChatML template inserts when none is given:
/// `<|im_start|>system\n…<|im_end|>` inside a string literal of the template.
fn default_system(j: &str) -> Option<String> {
    // the newline is a real one in some templates and an escaped `\n` in others
    let (at, marker) =
        ["<|im_start|>system\n", "<|im_start|>system\\n"].iter().filter_map(|m| j.find(m).map(|i| (i, *m))).min()?;
    let rest = &j[at + marker.len()..];
    let end = rest.find("<|im_end|>")?;
    let text = &rest[..end];
    (!text.contains("{{") && !text.contains('\'') && !text.is_empty()).then(|| text.replace("\\n", "\n"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn llama_3_1_is_told_from_llama_3_and_opens_with_its_dated_system_turn() {
        let l3 = "{% set content = '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n' %}";
        let l31 = "{{- \"<|start_header_id|>system<|end_header_id|>\\n\\n\" }}{{- \"Cutting Knowledge Date: December 2023\\n\" }}";
        assert_eq!((Template::detect(Some(l3)), Template::detect(Some(l31))), (Template::Llama3, Template::Llama31));
        // no system message: the dated system turn is there, empty
        assert_eq!(
            Template::Llama31.render(&[Message::new("user", " Hi ")]),
            "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nCutting Knowledge Date: December 2023\n\
             Today Date: 26 Jul 2024\n\n<|eot_id|><|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|>\
             <|start_header_id|>assistant<|end_header_id|>\n\n"
        );
    }
}
