//! A remote reward model for OpenRLHF, as R1-Searcher's `train/reward_server_*.py` serve it:
//! `POST /get_reward` `{"query": [text, ...]}` → `{"rewards": [float, ...]}`, one reward per text
//! (prompt + rollout), the gold answers looked up in a question file by the question the text holds.
//! `GET /health` says how many questions are loaded and which reward is computed. Under a group
//! reward (R1-Searcher++'s `r1searcher-plus`) the texts of one request that hold the same question
//! are one group, scored together ([`crate::reward::score_group`]): send a question's rollouts in one
//! request.
//!
//! The question is read from the text as the prompt placed it: R1-Searcher's base prompt
//! (`…\n\nUser:{question}\nAssistant: <think>`; the rollout is what follows), Search-R1's
//! (its instruction then `{question}\n`, raw or as the user turn), a Llama 3 chat rendering (R1-Searcher's
//! Llama 3.1 reward servers': `…<|start_header_id|>user<|end_header_id|>\n\n{question}<|eot_id|>
//! <|start_header_id|>assistant<|end_header_id|>\n\n<think>`), or a ChatML user turn
//! (`<|im_start|>user\n{question}<|im_end|>`). It and the file's questions are compared by
//! [`question_key`], R1-Searcher's servers' `normalize_text`; questions of the file with one key share
//! their gold answers (R1-Searcher's servers keep the last one's).
//!
//! Errors are FastAPI's shape, `{"detail": message}`: 422 for a body that is not `{"query": [str…]}`,
//! is larger than the limit, holds too many texts, or a text whose question is not in the file (the
//! message names the text's index); 503 with `Retry-After: 1` when more requests are in flight than
//! allowed; 503 while shutting down. Rewards are computed on blocking threads, in time linear in
//! the texts' length.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::Response;
use axum::routing::{get, post};
use serde_json::Value;

use crate::eval::Question;
use crate::reward::{Reward, reward_of, score_group};

/// Settings of the reward server.
#[derive(Debug, Clone)]
pub struct RewardServerConfig {
    pub reward: Reward,
    /// The group reward of a group-level reward (the texts of one request that hold the same question
    /// are one group).
    pub group: crate::plus::GroupReward,
    /// Largest request body in bytes (422 above).
    pub max_body_bytes: usize,
    /// Most texts in one request (422 above).
    pub max_texts: usize,
    /// Most requests being answered at once; more get 503 + Retry-After.
    pub max_in_flight: usize,
}

impl Default for RewardServerConfig {
    fn default() -> Self {
        RewardServerConfig {
            reward: Reward::Stage2,
            group: crate::plus::GroupReward::default(),
            max_body_bytes: 64 << 20,
            max_texts: 8192,
            max_in_flight: 64,
        }
    }
}

/// The characters R1-Searcher's reward servers' `normalize_text` turns into spaces: its class
/// `[,.:\"'\[\]\-=\+\\|!@#$%^&*();<>?/！￥…（）—\{\}：”“《》？]` as python3 reads the (non-raw) string.
const KEY_PUNCT: &str = "!\"#$%&'()*+,-./:;<=>?@[]^{|}—“”…《》！（）：？￥";

/// Whitespace as Python's `re` `\s` and `str.strip` read it: Unicode's, and the separators
/// U+001C–U+001F.
fn py_space(c: char) -> bool {
    c.is_whitespace() || ('\u{1c}'..='\u{1f}').contains(&c)
}

/// The lookup key of a question, R1-Searcher's `normalize_text` (`train/reward_server_*.py`, with
/// which its servers key both the question file and the question a text holds): lower-cased, the
/// characters of [`KEY_PUNCT`] made spaces, `import X as Y` lines removed, whitespace runs made one
/// space, stripped. Search-R1's prompt adds a `?` to questions that lack one; the key drops it.
pub fn question_key(q: &str) -> String {
    let lowered: String = q.to_lowercase().chars().map(|c| if KEY_PUNCT.contains(c) { ' ' } else { c }).collect();
    let text = drop_import_lines(&lowered);
    let mut key = String::with_capacity(text.len());
    for word in text.split(py_space).filter(|w| !w.is_empty()) {
        if !key.is_empty() {
            key.push(' ');
        }
        key.push_str(word);
    }
    key
}

/// `re.sub("import\s[a-zA-Z\.]+(\sas\s[a-zA-Z\.]+)\n", " ", text)`, the second step of
/// R1-Searcher's `normalize_text`, without a regex engine: each match, left to right, becomes a space.
fn drop_import_lines(text: &str) -> std::borrow::Cow<'_, str> {
    if !text.contains("import") {
        return std::borrow::Cow::Borrowed(text);
    }
    // the end of a match starting at `at`: import, \s, name, \s, as, \s, name, \n
    let match_at = |at: usize| -> Option<usize> {
        let name = |from: usize| {
            let n = text[from..].bytes().take_while(|b| b.is_ascii_alphabetic() || *b == b'.').count();
            (n > 0).then_some(from + n)
        };
        let space = |from: usize| text[from..].chars().next().filter(|&c| py_space(c)).map(|c| from + c.len_utf8());
        let mut i = at.checked_add(6).filter(|_| text[at..].starts_with("import"))?;
        i = name(space(i)?)?;
        i = space(i)?;
        i = space(i.checked_add(2).filter(|_| text[i..].starts_with("as"))?)?;
        i = name(i)?;
        text[i..].starts_with('\n').then_some(i + 1)
    };
    let mut out = String::with_capacity(text.len());
    let mut at = 0;
    while at < text.len() {
        if let Some(end) = match_at(at) {
            out.push(' ');
            at = end;
        } else {
            let c = text[at..].chars().next().unwrap_or(' ');
            out.push(c);
            at += c.len_utf8();
        }
    }
    std::borrow::Cow::Owned(out)
}

/// Llama 3's user header, after which its chat template writes the (trimmed) user message.
const LLAMA_USER: &str = "<|start_header_id|>user<|end_header_id|>\n\n";
/// Llama 3's end of a turn and assistant header, as its chat template writes them before a reply.
const LLAMA_ASSISTANT: &str = "<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n";
/// The assistant headers of the chat templates read here (ChatML's, Llama 3's).
const ASSISTANT_HEADERS: [&str; 2] = ["<|im_start|>assistant", "<|start_header_id|>assistant<|end_header_id|>"];

/// Where a reply starts after byte `from` of `text`: past the first assistant header and the
/// whitespace after it. `None` when no header follows.
fn after_assistant_header(text: &str, from: usize) -> Option<usize> {
    let rest = &text[from..];
    let (at, len) = ASSISTANT_HEADERS.iter().filter_map(|h| rest.find(h).map(|i| (i, h.len()))).min()?;
    let after = from + at + len;
    Some(after + text[after..].len() - text[after..].trim_start().len())
}

/// `at` moved past a `<think>` that starts there (R1-Searcher's chat prompts end with it).
fn past_think(text: &str, at: usize) -> usize {
    if text[at..].starts_with("<think>") { at + "<think>".len() } else { at }
}

/// The question a prompt + rollout text holds, and where the rollout starts (byte offset), for
/// the prompt formats named in the module docs.
///
/// R1-Searcher's Llama 3.1 reward servers (`train/reward_server_llama_stage{1,2}.py`) read the question
/// as the text after the last Llama 3 user header up to `<|eot_id|>` + the assistant header +
/// `<think>`, stripped, and the rollout as what follows the last such assistant header + `<think>`;
/// so does this (the `<think>` may be missing here).
pub fn find_question(text: &str) -> Option<(&str, usize)> {
    const BASE_ASSISTANT: &str = "\nAssistant: <think>";
    if let (Some(u), Some(a)) = (text.find("\n\nUser:"), text.find(BASE_ASSISTANT)) {
        let start = u + "\n\nUser:".len();
        if start <= a {
            return Some((&text[start..a], a + BASE_ASSISTANT.len()));
        }
    }
    // Search-R1's prompt, raw (a base model's) or as the user turn: its instruction, then the question
    // up to the end of the line (or of the turn: Llama 3's template trims the message's newline)
    if let Some(i) = text.find(crate::searchr1::INSTRUCTION) {
        let start = i + crate::searchr1::INSTRUCTION.len();
        let line = &text[start..];
        let end = start + ["\n", "<|eot_id|>", "<|im_end|>"].iter().filter_map(|m| line.find(m)).min()?;
        let rollout = after_assistant_header(text, end).unwrap_or(end + usize::from(text[end..].starts_with('\n')));
        return Some((&text[start..end], rollout));
    }
    if let Some(u) = text.rfind(LLAMA_USER) {
        let start = u + LLAMA_USER.len();
        let end = start + text[start..].find(LLAMA_ASSISTANT)?;
        let reply = text.rfind(LLAMA_ASSISTANT).map_or(end, |a| a + LLAMA_ASSISTANT.len());
        return Some((text[start..end].trim_matches(py_space), past_think(text, reply)));
    }
    if let Some(u) = text.find("<|im_start|>user\n") {
        let start = u + "<|im_start|>user\n".len();
        let end = start + text[start..].find("<|im_end|>")?;
        // the rollout starts after the assistant marker, its whitespace and the `<think>` that
        // R1-Searcher's chat prompt ends with
        let rollout = after_assistant_header(text, end).map_or(end, |body| past_think(text, body));
        return Some((&text[start..end], rollout));
    }
    None
}

struct App {
    cfg: RewardServerConfig,
    golds: HashMap<String, Vec<String>>,
    questions: usize,
    slots: tokio::sync::Semaphore,
}

fn detail(status: StatusCode, message: &str) -> Response {
    let body = serde_json::json!({ "detail": message }).to_string();
    let mut r = Response::new(Body::from(body));
    *r.status_mut() = status;
    r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    if status == StatusCode::SERVICE_UNAVAILABLE {
        r.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    }
    r
}

fn json(status: StatusCode, body: String) -> Response {
    let mut r = Response::new(Body::from(body));
    *r.status_mut() = status;
    r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    r
}

impl App {
    fn rewards(&self, v: &Value) -> Result<Vec<f64>, String> {
        let list = match v.get("query") {
            Some(Value::Array(list)) => list,
            Some(_) => return Err("\"query\" must be a list of strings".into()),
            None => return Err("\"query\" is required".into()),
        };
        if list.len() > self.cfg.max_texts {
            return Err(format!("{} texts in one request; at most {} are accepted", list.len(), self.cfg.max_texts));
        }
        let parsed = list
            .iter()
            .enumerate()
            .map(|(i, t)| {
                let Value::String(text) = t else { return Err(format!("query[{i}] is not a string: {t}")) };
                let (q, rollout) = find_question(text).ok_or_else(|| {
                    format!("query[{i}]: no question found (expected R1-Searcher's, a ChatML or Search-R1's prompt)")
                })?;
                let key = question_key(q);
                if !self.golds.contains_key(&key) {
                    return Err(format!("query[{i}]: the question {:?} is not in the question file", q.trim()));
                }
                Ok((key, &text[..rollout], &text[rollout..]))
            })
            .collect::<Result<Vec<_>, String>>()?;
        if !self.cfg.reward.is_group() {
            return Ok(parsed.iter().map(|(k, p, s)| reward_of(self.cfg.reward, p, s, &self.golds[k])).collect());
        }
        // a group reward: the texts of one question, scored together
        let groups = crate::reward::group_indices(parsed.iter().map(|(key, ..)| Some(key.as_str())));
        let mut rewards = vec![0.0; parsed.len()];
        for members in &groups {
            let rollouts: Vec<(&str, &str)> = members.iter().map(|&j| (parsed[j].1, parsed[j].2)).collect();
            let scored = score_group(self.cfg.reward, &self.cfg.group, &rollouts, &self.golds[&parsed[members[0]].0]);
            for (&j, r) in members.iter().zip(scored) {
                rewards[j] = r;
            }
        }
        Ok(rewards)
    }
}

async fn get_reward(State(app): State<Arc<App>>, body: Body) -> Response {
    let Ok(_slot) = app.slots.try_acquire() else {
        return detail(StatusCode::SERVICE_UNAVAILABLE, "too many requests in flight; retry later");
    };
    let limit = app.cfg.max_body_bytes;
    let bytes = match axum::body::to_bytes(body, limit).await {
        Ok(b) => b,
        Err(e) => {
            return detail(
                StatusCode::UNPROCESSABLE_ENTITY,
                &format!("could not read the request body (at most {limit} bytes): {e}"),
            );
        }
    };
    let v: Value = match serde_json::from_slice(&bytes) {
        Ok(v @ Value::Object(_)) => v,
        Ok(_) => {
            return detail(StatusCode::UNPROCESSABLE_ENTITY, "the body must be a JSON object with a \"query\" list");
        }
        Err(e) => return detail(StatusCode::UNPROCESSABLE_ENTITY, &format!("the body is not valid JSON: {e}")),
    };
    // scoring is linear in the texts' length, but a request may hold megabytes: off the async threads
    let scorer = app.clone();
    match tokio::task::spawn_blocking(move || scorer.rewards(&v)).await {
        Ok(Ok(rewards)) => json(StatusCode::OK, serde_json::json!({ "rewards": rewards }).to_string()),
        Ok(Err(m)) => detail(StatusCode::UNPROCESSABLE_ENTITY, &m),
        Err(e) => detail(StatusCode::INTERNAL_SERVER_ERROR, &format!("scoring failed: {e}")),
    }
}

async fn health(State(app): State<Arc<App>>) -> Response {
    let v = serde_json::json!({"status": "ok", "questions": app.questions, "reward": app.cfg.reward});
    json(StatusCode::OK, v.to_string())
}

/// Serves rewards for `questions` on `listener` until `shutdown` completes.
pub async fn serve_rewards<F>(
    questions: &[Question],
    cfg: RewardServerConfig,
    listener: tokio::net::TcpListener,
    shutdown: F,
) -> std::io::Result<()>
where
    F: Future<Output = ()> + Send + 'static,
{
    let mut golds: HashMap<String, Vec<String>> = HashMap::new();
    for q in questions {
        golds.entry(question_key(&q.question)).or_default().extend(q.answers.iter().cloned());
    }
    let slots = tokio::sync::Semaphore::new(cfg.max_in_flight.max(1));
    let app = Arc::new(App { cfg, golds, questions: questions.len(), slots });
    let router = Router::new().route("/get_reward", post(get_reward)).route("/health", get(health)).with_state(app);
    axum::serve(listener, router).with_graceful_shutdown(shutdown).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn questions_are_found_in_each_prompt_format() {
        let base = crate::protocol::base_prompt("Who wrote Hamlet?");
        let text = format!("{base} I know this. </think>\n\n<answer> Shakespeare </answer>");
        let (q, at) = find_question(&text).unwrap();
        assert_eq!((q, &text[at..]), ("Who wrote Hamlet?", " I know this. </think>\n\n<answer> Shakespeare </answer>"));
        let chat = "<|im_start|>system\nS<|im_end|>\n<|im_start|>user\nWho wrote Hamlet?<|im_end|>\n<|im_start|>assistant\n<think> x";
        let (q, at) = find_question(chat).unwrap();
        assert_eq!((q, &chat[at..]), ("Who wrote Hamlet?", " x"));
        let user = crate::searchr1::user_message("Trivia Question: who wrote hamlet");
        let sr1 = format!("<|im_start|>user\n{user}<|im_end|>\n<|im_start|>assistant\n<think> x");
        let (q, at) = find_question(&sr1).unwrap();
        assert_eq!((question_key(q), &sr1[at..]), ("trivia question who wrote hamlet".into(), "<think> x"));
        let raw = format!("{user}<think> y");
        let (q, at) = find_question(&raw).unwrap();
        assert_eq!((q, &raw[at..]), ("Trivia Question: who wrote hamlet?", "<think> y"));
        assert_eq!(question_key("  who  wrote\nhamlet ? "), question_key("who wrote hamlet"));
        assert_eq!(find_question("no prompt here"), None);
    }
}
