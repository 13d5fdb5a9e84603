//! Remote parts for the loop: [`HttpPolicy`], a client of any OpenAI-compatible `/v1/completions`
//! server (vLLM, llama.cpp, sglang), and [`HttpRetriever`], a client of a Search-R1 `/retrieve` or
//! R1-Searcher `/queries` retrieval server (`r1s serve` speaks both).

use std::time::Duration;

use r1s_core::{Completion, Finish, GenerateSettings, Hit, Policy, Retriever};
use serde_json::{Value, json};

/// Errors of the HTTP clients.
#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    #[error("{url}: {source}")]
    Request { url: String, source: reqwest::Error },
    #[error("{url}: HTTP {status}: {body}")]
    Status { url: String, status: u16, body: String },
    #[error("{url}: unexpected response: {reason}")]
    Response { url: String, reason: String },
}

/// A transport error, its URL said once (reqwest's own message repeats it).
fn request_error(url: &str, source: reqwest::Error) -> HttpError {
    HttpError::Request { url: url.into(), source: source.without_url() }
}

fn client(timeout: Duration) -> reqwest::blocking::Client {
    reqwest::blocking::Client::builder().timeout(timeout).build().unwrap_or_default()
}

fn post(c: &reqwest::blocking::Client, url: &str, body: &Value) -> Result<Value, HttpError> {
    let r = c.post(url).json(body).send().map_err(|source| request_error(url, source))?;
    let status = r.status().as_u16();
    let text = r.text().map_err(|source| request_error(url, source))?;
    if !(200..300).contains(&status) {
        return Err(HttpError::Status { url: url.into(), status, body: text.chars().take(300).collect() });
    }
    serde_json::from_str(&text).map_err(|e| HttpError::Response { url: url.into(), reason: e.to_string() })
}

/// A policy served by an OpenAI-compatible completions endpoint.
#[derive(Debug, Clone)]
pub struct HttpPolicy {
    /// Base URL, e.g. `http://127.0.0.1:8000` (`/v1/completions` is appended).
    pub url: String,
    /// The `model` field of requests.
    pub model: String,
    client: reqwest::blocking::Client,
}

impl HttpPolicy {
    pub fn new(url: &str, model: &str) -> HttpPolicy {
        HttpPolicy {
            url: url.trim_end_matches('/').to_owned(),
            model: model.to_owned(),
            client: client(Duration::from_secs(600)),
        }
    }
}

impl Policy for HttpPolicy {
    type Error = HttpError;

    /// One request with every context as the prompt list; choices are matched back by `index`.
    fn complete(&self, contexts: &[String], s: &GenerateSettings) -> Result<Vec<Completion>, HttpError> {
        let url = format!("{}/v1/completions", self.url);
        let body = json!({
            "model": self.model, "prompt": contexts, "max_tokens": s.max_new_tokens,
            "temperature": s.temperature, "top_p": s.top_p, "seed": s.seed, "stop": s.stop,
        });
        let v = post(&self.client, &url, &body)?;
        let bad = |reason: String| HttpError::Response { url: url.clone(), reason };
        let choices = v["choices"].as_array().ok_or_else(|| bad("no \"choices\" list".into()))?;
        let mut out: Vec<Option<Completion>> = vec![None; contexts.len()];
        for (n, c) in choices.iter().enumerate() {
            let i = c["index"].as_u64().map_or(n, |i| i as usize);
            let text = c["text"].as_str().ok_or_else(|| bad(format!("choice {i} has no text")))?.to_owned();
            // vLLM names the matched stop string in `stop_reason`, SGLang in `matched_stop`; other
            // servers (llama.cpp) only say "stop"
            let named = c["stop_reason"].as_str().or_else(|| c["matched_stop"].as_str());
            let finish = match (c["finish_reason"].as_str(), named) {
                (Some("length"), _) => Finish::Length,
                (_, Some(stop)) if s.stop.iter().any(|x| x == stop) => Finish::Stop(stop.to_owned()),
                (Some("stop"), _) => match stop_left_open(&text, &s.stop) {
                    Some(stop) => Finish::Stop(stop.to_owned()),
                    None => Finish::Eos,
                },
                _ => Finish::Eos,
            };
            let slot = out.get_mut(i).ok_or_else(|| bad(format!("choice index {i} out of range")))?;
            *slot = Some(Completion { text, finish, tokens: vec![], logprobs: vec![] });
        }
        out.into_iter().enumerate().map(|(i, c)| c.ok_or_else(|| bad(format!("no choice for prompt {i}")))).collect()
    }
}

/// The stop string that must have fired when a server says only "stop": the one whose opening tag is
/// left open at the end of the text (R1-Searcher's `<|end_of_query|>` after an unanswered
/// `<|begin_of_query|>`; Search-R1's `</search>` / `</answer>` after an unclosed `<search>` /
/// `<answer>`), the latest opened first.
fn stop_left_open<'a>(text: &str, stops: &'a [String]) -> Option<&'a str> {
    use crate::protocol::{BEGIN_QUERY, END_QUERY};
    let opener = |stop: &str| -> Option<String> {
        match stop {
            END_QUERY => Some(BEGIN_QUERY.to_owned()),
            s => s.strip_prefix("</").map(|rest| format!("<{rest}")),
        }
    };
    stops
        .iter()
        .filter_map(|stop| {
            let open = opener(stop)?;
            let at = text.rfind(&open)?;
            (!text[at..].contains(stop.as_str())).then_some((at, stop.as_str()))
        })
        .max_by_key(|(at, _)| *at)
        .map(|(_, stop)| stop)
}

/// Which retrieval API a server speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RetrievalApi {
    /// Search-R1: `POST /retrieve` `{"queries","topk","return_scores"}`.
    SearchR1,
    /// R1-Searcher: `POST /queries` `{"queries","k"}`.
    R1Searcher,
}

/// A remote retriever.
#[derive(Debug, Clone)]
pub struct HttpRetriever {
    /// The endpoint, e.g. `http://127.0.0.1:8000/retrieve` or `.../queries`.
    pub url: String,
    pub api: RetrievalApi,
    client: reqwest::blocking::Client,
}

impl HttpRetriever {
    /// The API is taken from the path (`/queries` → R1-Searcher, else Search-R1; a bare host gets
    /// `/retrieve`).
    pub fn new(url: &str) -> HttpRetriever {
        let url = url.trim_end_matches('/');
        let (url, api) = if url.ends_with("/queries") {
            (url.to_owned(), RetrievalApi::R1Searcher)
        } else if url.ends_with("/retrieve") {
            (url.to_owned(), RetrievalApi::SearchR1)
        } else {
            (format!("{url}/retrieve"), RetrievalApi::SearchR1)
        };
        HttpRetriever { url, api, client: client(Duration::from_secs(120)) }
    }
}

impl Retriever for HttpRetriever {
    type Error = HttpError;

    fn retrieve(&self, queries: &[&str], k: usize) -> Result<Vec<Vec<Hit>>, HttpError> {
        let bad = |reason: &str| HttpError::Response { url: self.url.clone(), reason: reason.into() };
        let hit = |id: &str, score: f32, contents: &str| Hit {
            row: 0,
            id: id.to_owned(),
            score,
            title: String::new(),
            contents: contents.to_owned(),
        };
        match self.api {
            RetrievalApi::SearchR1 => {
                let v = post(&self.client, &self.url, &json!({"queries": queries, "topk": k, "return_scores": true}))?;
                let lists = v["result"].as_array().ok_or_else(|| bad("no \"result\" list"))?;
                lists
                    .iter()
                    .map(|l| {
                        l.as_array()
                            .ok_or_else(|| bad("a result is not a list"))?
                            .iter()
                            .map(|d| {
                                let doc = &d["document"];
                                let contents =
                                    doc["contents"].as_str().ok_or_else(|| bad("a document has no contents"))?;
                                let id = doc["id"].as_str().map_or_else(|| doc["id"].to_string(), str::to_owned);
                                Ok(hit(&id, d["score"].as_f64().unwrap_or(0.0) as f32, contents))
                            })
                            .collect()
                    })
                    .collect()
            }
            RetrievalApi::R1Searcher => {
                let v = post(&self.client, &self.url, &json!({"queries": queries, "k": k}))?;
                let lists = v["answers"].as_array().ok_or_else(|| bad("no \"answers\" list"))?;
                lists
                    .iter()
                    .map(|l| {
                        l.as_array()
                            .ok_or_else(|| bad("an answer is not a list"))?
                            .iter()
                            .map(|d| Ok(hit("", 0.0, d.as_str().ok_or_else(|| bad("a document is not a string"))?)))
                            .collect()
                    })
                    .collect()
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::stop_left_open;

    #[test]
    fn the_stop_that_fired_is_the_one_left_open() {
        let r1 = vec!["<|end_of_query|>".to_owned()];
        assert_eq!(stop_left_open("x <|begin_of_query|> q", &r1), Some("<|end_of_query|>"));
        assert_eq!(stop_left_open("x <answer> a </answer>", &r1), None);
        let sr1 = vec!["</search>".to_owned(), "</answer>".to_owned()];
        assert_eq!(stop_left_open("<think> t </think>\n<search> q ", &sr1), Some("</search>"));
        assert_eq!(stop_left_open("<search> q </search> <answer> Paris ", &sr1), Some("</answer>"));
        assert_eq!(stop_left_open("<answer> a </answer>", &sr1), None);
    }
}
