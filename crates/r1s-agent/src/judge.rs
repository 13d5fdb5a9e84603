//! LLM-as-judge, as R1-Searcher computes the accuracy it reports beside F1 (its
//! `evaluation/metric_calc_gpt_as_judge.py`, GPT-4o-mini as the judge): for each result row, one user
//! message asking whether the predicted answer matches the golden one, sent to any OpenAI-compatible
//! `/v1/chat/completions` endpoint; the reply read as a True/False verdict.
//!
//! [`Judge`] sends the requests with bounded concurrency, retries 429, 5xx and transport errors with a
//! growing delay (a server's `Retry-After` is honoured), and keeps every reply in an on-disk cache keyed
//! by the model and the exact request, so a rerun sends nothing already answered. A reply that cannot
//! be read as a verdict, and a request that failed for good, are returned as such: callers count them
//! apart and never score them as wrong.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use r1s_core::Cancel;
use serde_json::{Value, json};

/// R1-Searcher's judge prompt, byte for byte as python3 reads the triple-quoted string of
/// `metric_calc_gpt_as_judge.py` (newlines between the sentences; four spaces after the last line),
/// with its three fields: see [`judge_message`].
pub const JUDGE_PROMPT: &str = "Given a Question and its Golden Answer, verify whether the Predicted Answer is correct.\n\
The prediction is correct if it fully aligns with the meaning and key information of the Golden Answer.\n\
Respond with True if the prediction is correct and False otherwise.\n\
\n\
Question: {question}\n\
Golden Answer: {reference}\n\
Predicted Answer: {prediction}\n    ";

/// The judge model R1-Searcher reports (its default here).
pub const DEFAULT_JUDGE_MODEL: &str = "gpt-4o-mini";

/// The `max_tokens` of R1-Searcher's judge requests.
pub const JUDGE_MAX_TOKENS: u32 = 1024;

/// The user message for one row: [`JUDGE_PROMPT`] filled as Python's `str.format` fills it (each value
/// inserted once, as text). `reference` is the row's gold answer as the script formats it: see
/// [`reference_text`].
pub fn judge_message(question: &str, reference: &str, prediction: &str) -> String {
    let mut out = String::with_capacity(JUDGE_PROMPT.len() + question.len() + reference.len() + prediction.len());
    let mut rest = JUDGE_PROMPT;
    for (field, value) in [("{question}", question), ("{reference}", reference), ("{prediction}", prediction)] {
        // the template holds each field once, in this order
        let at = rest.find(field).unwrap_or(rest.len());
        out.push_str(&rest[..at]);
        out.push_str(value);
        rest = rest.get(at + field.len()..).unwrap_or("");
    }
    out.push_str(rest);
    out
}

/// A result row's gold answer (`answer`, else `golden_answers`) as the script puts it in the prompt:
/// Python's `str()` of the JSON value, with `true`/`false` made "yes"/"no" as the script maps them. A
/// string is itself; a list is Python's list repr (`['a', "b's"]`); a number its digits; `null` "None".
pub fn reference_text(v: &Value) -> String {
    match v {
        Value::Bool(true) => "yes".into(),
        Value::Bool(false) => "no".into(),
        Value::String(s) => s.clone(),
        other => py_str(other),
    }
}

/// Python's `str()` of a JSON value as `json.loads` gives it (dicts and lists as their repr).
fn py_str(v: &Value) -> String {
    match v {
        Value::Null => "None".into(),
        Value::Bool(b) => if *b { "True" } else { "False" }.into(),
        Value::Number(n) => n.to_string(),
        Value::String(s) => s.clone(),
        Value::Array(a) => format!("[{}]", a.iter().map(py_repr).collect::<Vec<_>>().join(", ")),
        Value::Object(o) => {
            format!(
                "{{{}}}",
                o.iter().map(|(k, x)| format!("{}: {}", py_str_repr(k), py_repr(x))).collect::<Vec<_>>().join(", ")
            )
        }
    }
}

/// Python's `repr()` of a JSON value.
fn py_repr(v: &Value) -> String {
    match v {
        Value::String(s) => py_str_repr(s),
        other => py_str(other),
    }
}

/// Python's `repr()` of a string: single quotes unless it holds `'` and no `"`; backslashes, the quote,
/// `\n`, `\r`, `\t` escaped; other control and non-printable separator characters as `\xNN`, `\uNNNN`.
fn py_str_repr(s: &str) -> String {
    let quote = if s.contains('\'') && !s.contains('"') { '"' } else { '\'' };
    let mut out = String::with_capacity(s.len() + 2);
    out.push(quote);
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c == quote => {
                out.push('\\');
                out.push(c);
            }
            c if (c as u32) < 0x20 || (0x7f..0xa1).contains(&(c as u32)) || c == '\u{ad}' => {
                out.push_str(&format!("\\x{:02x}", c as u32))
            }
            '\u{2028}' | '\u{2029}' | '\u{200b}'..='\u{200f}' | '\u{2060}'..='\u{2064}' | '\u{feff}' => {
                out.push_str(&format!("\\u{:04x}", c as u32))
            }
            c => out.push(c),
        }
    }
    out.push(quote);
    out
}

/// A judge's reply read as a verdict: `Some(true)` for True, `Some(false)` for False, `None` when it is
/// neither. R1-Searcher's judge answers with the bare word (all 1,750 verdicts of its released results
/// are exactly `True` or `False`); here case, surrounding whitespace, quotes, `*` and a final `.` are
/// ignored, and a longer reply counts when it names exactly one of the two words (as whole words).
pub fn parse_verdict(reply: &str) -> Option<bool> {
    let words: Vec<String> =
        reply.split(|c: char| !c.is_alphanumeric()).filter(|w| !w.is_empty()).map(str::to_lowercase).collect();
    let (t, f) = (words.iter().any(|w| w == "true"), words.iter().any(|w| w == "false"));
    match (t, f) {
        (true, false) => Some(true),
        (false, true) => Some(false),
        _ => None,
    }
}

/// What came of judging one row.
#[derive(Debug, Clone, PartialEq)]
pub struct Judged {
    /// The judge's reply, when one came.
    pub reply: Option<String>,
    /// The verdict read from it ([`parse_verdict`]); `None` when there was no reply or it was neither.
    pub verdict: Option<bool>,
    /// Why there is no reply (the last error after the retries).
    pub error: Option<String>,
    /// Whether the reply came from the cache.
    pub cached: bool,
}

/// Errors of the judge that stop it (a failed request is a [`Judged`] with an error, not this).
#[derive(Debug, thiserror::Error)]
pub enum JudgeError {
    #[error("judge cache {}: {source}", path.display())]
    Cache { path: PathBuf, source: std::io::Error },
    #[error("stopped")]
    Cancelled,
}

/// An OpenAI-compatible chat endpoint used as the judge.
#[derive(Debug, Clone)]
pub struct Judge {
    /// `…/v1/chat/completions` (a base URL gets it appended).
    pub url: String,
    /// The `model` of the requests.
    pub model: String,
    /// Sent as `Authorization: Bearer …` when set (never logged or cached).
    pub api_key: Option<String>,
    /// Replies kept here, one file per request (none when `None`).
    pub cache: Option<PathBuf>,
    /// Requests in flight at once (at least 1).
    pub concurrency: usize,
    /// Tries per request (at least 1): the first and the retries.
    pub tries: u32,
    /// The delay before the first retry; each next one doubles it, up to 30 s.
    pub backoff: Duration,
    /// Per-request timeout.
    pub timeout: Duration,
}

impl Judge {
    /// A judge at `url` (a base URL such as `http://host:port` or `https://api.openai.com`, or the full
    /// `…/chat/completions` endpoint) asking `model`: 8 requests at once, 6 tries, 1 s first backoff,
    /// 120 s timeout, no cache.
    pub fn new(url: &str, model: &str) -> Judge {
        let url = url.trim_end_matches('/');
        let url = if url.ends_with("/chat/completions") {
            url.to_owned()
        } else if url.ends_with("/v1") {
            format!("{url}/chat/completions")
        } else {
            format!("{url}/v1/chat/completions")
        };
        Judge {
            url,
            model: model.to_owned(),
            api_key: None,
            cache: None,
            concurrency: 8,
            tries: 6,
            backoff: Duration::from_secs(1),
            timeout: Duration::from_secs(120),
        }
    }

    /// The request body for one user message: R1-Searcher's (the model, the message alone, `max_tokens`
    /// 1024; no temperature).
    pub fn request(&self, message: &str) -> Value {
        json!({
            "model": self.model,
            "messages": [{"role": "user", "content": message}],
            "max_tokens": JUDGE_MAX_TOKENS,
        })
    }

    /// The cache file of a request: the SHA-256 of the model and the exact request body.
    fn cache_path(&self, body: &str) -> Option<PathBuf> {
        let dir = self.cache.as_ref()?;
        let key = r1s_core::fsutil::sha256_hex(format!("{}\n{body}", self.model).as_bytes());
        Some(dir.join(format!("{key}.json")))
    }

    fn cached(&self, path: &Path, body: &Value) -> Option<String> {
        let v: Value = serde_json::from_slice(&std::fs::read(path).ok()?).ok()?;
        (v["request"] == *body).then(|| v["reply"].as_str().map(str::to_owned)).flatten()
    }

    /// Judges each user message, in order. `on_done` is called once per message as it is judged (for
    /// progress); `cancel` stops the run between requests.
    pub fn judge_all(
        &self,
        messages: &[String],
        cancel: &Cancel,
        on_done: &(dyn Fn(&Judged) + Sync),
    ) -> Result<Vec<Judged>, JudgeError> {
        if let Some(dir) = &self.cache {
            std::fs::create_dir_all(dir).map_err(|source| JudgeError::Cache { path: dir.clone(), source })?;
        }
        let client = reqwest::blocking::Client::builder().timeout(self.timeout).build().unwrap_or_default();
        let next = AtomicUsize::new(0);
        let results: Vec<std::sync::Mutex<Option<Judged>>> = messages.iter().map(|_| Default::default()).collect();
        let failure: std::sync::Mutex<Option<JudgeError>> = Default::default();
        std::thread::scope(|s| {
            for _ in 0..self.concurrency.clamp(1, messages.len().max(1)) {
                s.spawn(|| {
                    loop {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        if i >= messages.len() || failure.lock().map_or(true, |f| f.is_some()) {
                            return;
                        }
                        if cancel.is_cancelled() {
                            if let Ok(mut f) = failure.lock() {
                                *f = Some(JudgeError::Cancelled);
                            }
                            return;
                        }
                        match self.judge_one(&client, &messages[i], cancel) {
                            Ok(j) => {
                                on_done(&j);
                                if let Ok(mut slot) = results[i].lock() {
                                    *slot = Some(j);
                                }
                            }
                            Err(e) => {
                                if let Ok(mut f) = failure.lock() {
                                    f.get_or_insert(e);
                                }
                                return;
                            }
                        }
                    }
                });
            }
        });
        if let Some(e) = failure.into_inner().ok().flatten() {
            return Err(e);
        }
        Ok(results
            .into_iter()
            .map(|m| {
                m.into_inner().ok().flatten().unwrap_or(Judged {
                    reply: None,
                    verdict: None,
                    error: Some("not judged".into()),
                    cached: false,
                })
            })
            .collect())
    }

    fn judge_one(
        &self,
        client: &reqwest::blocking::Client,
        message: &str,
        cancel: &Cancel,
    ) -> Result<Judged, JudgeError> {
        let body = self.request(message);
        let text = body.to_string();
        let cache = self.cache_path(&text);
        if let Some(reply) = cache.as_deref().and_then(|p| self.cached(p, &body)) {
            return Ok(Judged { verdict: parse_verdict(&reply), reply: Some(reply), error: None, cached: true });
        }
        let mut delay = self.backoff;
        let mut last = String::new();
        for attempt in 0..self.tries.max(1) {
            if attempt > 0 {
                std::thread::sleep(delay);
                delay = (delay * 2).min(Duration::from_secs(30));
            }
            if cancel.is_cancelled() {
                return Err(JudgeError::Cancelled);
            }
            let mut req = client.post(&self.url).header("content-type", "application/json").body(text.clone());
            if let Some(key) = &self.api_key {
                req = req.bearer_auth(key);
            }
            let resp = match req.send() {
                Ok(r) => r,
                Err(e) => {
                    last = e.without_url().to_string();
                    continue;
                }
            };
            let status = resp.status();
            if let Some(after) = resp
                .headers()
                .get("retry-after")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.trim().parse::<u64>().ok())
            {
                delay = delay.max(Duration::from_secs(after.min(60)));
            }
            let reply = resp.text().unwrap_or_default();
            if status.as_u16() == 429 || status.is_server_error() {
                last = format!("HTTP {status}: {}", reply.chars().take(200).collect::<String>());
                continue;
            }
            if !status.is_success() {
                // a request the server refuses is not retried
                let error = format!("HTTP {status}: {}", reply.chars().take(200).collect::<String>());
                return Ok(Judged { reply: None, verdict: None, error: Some(error), cached: false });
            }
            let content = serde_json::from_str::<Value>(&reply)
                .ok()
                .and_then(|v| v["choices"][0]["message"]["content"].as_str().map(str::to_owned));
            let Some(content) = content else {
                let error = format!("no choices[0].message.content in {}", reply.chars().take(200).collect::<String>());
                return Ok(Judged { reply: None, verdict: None, error: Some(error), cached: false });
            };
            if let Some(path) = &cache {
                let record = json!({"model": self.model, "request": body, "reply": content});
                r1s_core::fsutil::write_atomic(path, record.to_string().as_bytes())
                    .map_err(|source| JudgeError::Cache { path: path.clone(), source })?;
            }
            return Ok(Judged { verdict: parse_verdict(&content), reply: Some(content), error: None, cached: false });
        }
        Ok(Judged {
            reply: None,
            verdict: None,
            error: Some(format!("after {} tries: {last}", self.tries.max(1))),
            cached: false,
        })
    }
}

/// The user message of a result row (`question`, gold `answer` or `golden_answers`, `pred_ans`, "N/A"
/// when it has none), or why it has none.
pub fn row_message(row: &Value) -> Result<String, String> {
    let question = row["question"].as_str().ok_or("no \"question\" string")?;
    let gold = match (&row["answer"], &row["golden_answers"]) {
        (Value::Null, Value::Null) => return Err("no \"answer\" or \"golden_answers\"".into()),
        (Value::Null, g) | (g, _) => g,
    };
    let pred = match &row["pred_ans"] {
        Value::Null => "N/A".to_owned(),
        v => py_str(v),
    };
    Ok(judge_message(question, &reference_text(gold), &pred))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verdicts_and_python_strings() {
        for (reply, v) in [
            ("True", Some(true)),
            ("False", Some(false)),
            (" **True.** ", Some(true)),
            ("false", Some(false)),
            ("The prediction is correct: True", Some(true)),
            ("True or False", None),
            ("Correct", None),
            ("", None),
            ("untrue", None),
        ] {
            assert_eq!(parse_verdict(reply), v, "{reply:?}");
        }
        assert_eq!(reference_text(&json!(false)), "no");
        assert_eq!(reference_text(&json!(["Paris", "it's", "a\\b\n"])), r#"['Paris', "it's", 'a\\b\n']"#);
        assert_eq!(reference_text(&json!([1, null, true])), "[1, None, True]");
        assert_eq!(
            judge_message("{prediction}?", "x", "y"),
            JUDGE_PROMPT.replace("{question}", "{prediction}?").replace("{reference}", "x").replacen(
                "{prediction}\n",
                "y\n",
                1
            )
        );
    }
}
