//! The R1-Searcher protocol: released evaluation figures, rewards, prompts and splicing, and the loop
//! with a scripted policy over a real retriever.

use std::path::{Path, PathBuf};

use r1s_agent::reward::reward;
use r1s_agent::{Reward, score_file};

fn shared(rel: &str) -> PathBuf {
    Path::new(&std::env::var_os("CARGO_MANIFEST_DIR").unwrap_or_else(|| env!("CARGO_MANIFEST_DIR").into()))
        .join("../../../shared/data")
        .join(rel)
}

#[test]
fn released_eval_results_score_as_published() {
    // (file, EM, cover-EM, F1) from ../shared/data/README.md
    let figures = [
        ("hotpotqa_qwen", 58.0, 65.4, 71.9),
        ("hotpotqa_llama", 58.4, 64.8, 70.6),
        ("2wiki_qwen", 55.4, 63.6, 63.7),
        ("bamboogle_qwen", 45.6, 52.8, 57.7),
        ("bamboogle_llama", 44.0, 50.4, 57.1),
    ];
    for (name, em, cem, f1) in figures {
        let s = score_file(&shared(&format!("r1searcher/eval_results/{name}.jsonl"))).unwrap();
        eprintln!("{name}\n{}", s.table());
        let close = |a: f64, b: f64| (a - b).abs() <= 0.051;
        assert!(close(s.em, em) && close(s.cover_em, cem) && close(s.f1, f1), "{name}: {s:?}");
    }
}

#[test]
fn metrics_edge_cases() {
    use r1s_agent::metrics::*;
    assert_eq!(normalize("The  Beatles’ `Abbey_Road`!"), "beatles abbey road");
    assert!(exact_match("True", "yes") && exact_match(" an Apple ", "apple"));
    assert_eq!(f1("yes", "no"), 0.0);
    assert_eq!(f1("no answer", "noanswer"), 0.0);
    assert!((f1("the Eiffel Tower in Paris", "Eiffel Tower") - 2.0 * (2.0 / 4.0) / (2.0 / 4.0 + 1.0)).abs() < 1e-12);
    assert!(cover_em("Paris, France", "france paris") && !cover_em_2("Paris, France", "france paris"));
    assert!(cover_em_2("it was Paris France indeed", "paris france"));
    assert_eq!(extract_answer("x <answer> a </answer> <answer> b </answer> y"), "b");
}

/// A well-formed solution with one retrieval, as the loop writes it.
fn good_sol() -> String {
    " I should look this up. <|begin_of_query|> Evan Morris employer<|end_of_query|>\n\n<|begin_of_documents|>\n(1)\"Evan Morris\"\nEvan Morris was a lobbyist.\n<|end_of_documents|>\n\nHe worked for Genentech. </think>\n\n<answer> Genentech </answer>".to_owned()
}

#[test]
fn every_format_rule_and_reward_variant() {
    use r1s_agent::reward::format_problem;
    let golds = vec!["Genentech".to_owned()];
    let good = good_sol();
    assert_eq!(format_problem(&good), None);
    assert_eq!(reward(Reward::Stage1, &good, &golds), 1.0);
    assert_eq!(reward(Reward::Stage1Code, &good, &golds), 2.0);
    assert_eq!(reward(Reward::Stage2, &good, &golds), 1.0);
    assert_eq!(reward(Reward::Stage2Llama, &good, &golds), 1.0);
    let bad_cases = [
        (good.replace("<|end_of_documents|>\n\n", "<|end_of_documents|>\n"), "retrieval tags"),
        (good.replace("(1)", "(0)"), "retrieval tags"),
        (good.replace("I should", "Assistant: I should"), "Assistant"),
        (good.replace("I should", "<think> I should"), "<think>"),
        (good.replace(" </think>", ""), "<think>"),
        (format!("{good} <answer> again </answer>"), "<answer>"),
        (good.replace("Genentech </answer>", "<|begin_of_query|> x </answer>"), "retrieval tags"),
        (
            good.replace("Genentech </answer>", "one two three four five six seven eight nine ten eleven </answer>"),
            "10 words",
        ),
        (good.replace("He worked", "他 worked"), "CJK"),
    ];
    for (sol, why) in &bad_cases {
        let problem = format_problem(sol).unwrap_or_else(|| panic!("not caught: {why}"));
        assert!(problem.contains(why), "{why}: {problem}");
        assert_eq!(reward(Reward::Stage2, sol, &golds), reward_f1(sol) - 2.0, "{why}");
    }
    // CJK inside documents is fine
    assert_eq!(format_problem(&good.replace("was a lobbyist", "was a 说客")), None);
    // an unclosed documents block is no block: R1-Searcher's servers remove whole blocks
    // (`<\|begin_of_documents\|>.*?<\|end_of_documents\|>`), so CJK after an unclosed opening counts
    use r1s_agent::reward::cjk_outside_documents;
    assert!(cjk_outside_documents("x <|begin_of_documents|>\n说客 </think>"));
    assert!(!cjk_outside_documents("x <|begin_of_documents|>\n说客<|end_of_documents|> y"));
    assert!(cjk_outside_documents("<|begin_of_documents|>a<|end_of_documents|> <|begin_of_documents|> 说"));
    // no retrieval: stage 1 pays only for the format
    let no_search = " Easy. </think>\n\n<answer> Genentech </answer>";
    assert_eq!(reward(Reward::Stage1, no_search, &golds), 0.5);
    assert_eq!(reward(Reward::Stage1Code, no_search, &golds), 1.0 + 0.5);
    // stage1-code: a wrong answer is -1; no answer tags at all -1 and no tag bonus
    assert_eq!(reward(Reward::Stage1Code, &good.replace("Genentech </answer>", "Roche </answer>"), &golds), 0.0);
    assert_eq!(reward(Reward::Stage1Code, " nothing", &golds), -1.0);
    // stage 2 without answer tags: F1 0, and the format is bad
    assert_eq!(reward(Reward::Stage2, " nothing", &golds), -2.0);
    assert_eq!(reward(Reward::Stage2Llama, " nothing", &golds), -1.0);
}

fn reward_f1(sol: &str) -> f64 {
    r1s_agent::metrics::f1(&r1s_agent::metrics::extract_answer(sol), "Genentech")
}

/// On R1-Searcher's released trajectories (the prompt ends with `<think>`, so `gen_text_store` is the
/// solution): stage-1 rewards follow from retrievals and format, and the good-format ones are most.
#[test]
fn rewards_on_released_trajectories() {
    let text = std::fs::read_to_string(shared("r1searcher/eval_results/hotpotqa_qwen.jsonl")).unwrap();
    let (mut good, mut n) = (0, 0);
    for line in text.lines() {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        let sol = v["gen_text_store"].as_str().unwrap();
        let golds = vec![v["answer"].as_str().unwrap().to_owned()];
        let r1 = reward(Reward::Stage1, sol, &golds);
        let searched = r1s_agent::reward::retrievals(sol) > 0;
        let fmt = r1s_agent::reward::format_problem(sol).is_none();
        assert_eq!(r1, 0.5 * f64::from(u8::from(searched)) + 0.5 * f64::from(u8::from(fmt)));
        let r2 = reward(Reward::Stage2, sol, &golds);
        assert!(if fmt { (0.0..=1.0).contains(&r2) } else { (-2.0..=-1.0).contains(&r2) });
        good += usize::from(fmt);
        n += 1;
    }
    assert_eq!(n, 500);
    assert!(good >= 450, "only {good} of 500 released trajectories have a good format");
}

#[test]
fn prompts_are_r1_searchers() {
    use r1s_agent::protocol::*;
    // byte for byte against R1-Searcher's prompt strings as python3 evaluates their source (the
    // `\n\n` of the quoted format are newlines; tests/fixtures/make_r1searcher_prompts.py)
    let fixture: serde_json::Value =
        serde_json::from_str(include_str!("fixtures/r1searcher_prompts.json")).expect("the prompt fixture");
    assert_eq!(base_prompt("Who?"), fixture["base_prompt_who"].as_str().unwrap());
    assert_eq!(SYSTEM_PROMPT, fixture["system_prompt"].as_str().unwrap());
    assert!(SYSTEM_PROMPT.contains("</think>\n\n<answer>") && !SYSTEM_PROMPT.contains("\\n"));
    assert_eq!(
        extract_query(" so <|begin_of_query|> \"Evan\"   Morris 's\tjob... ", true).unwrap(),
        "Evan Morris s job"
    );
    assert_eq!(
        extract_query(" so <|begin_of_query|> \"Evan\"   Morris 's\tjob... ", false).unwrap(),
        "Evan Morris 's job..."
    );
    assert_eq!(extract_query("no query", false), None);
    assert_eq!(format_docs(&["12  Alpha text", "Beta"]), "(1)Alpha text\n(2)Beta\n");
    assert_eq!(format_docs::<&str>(&[]), "None");
    let (mine, docs) = splice("  think <|begin_of_query|> q ", "(1)d\n");
    assert_eq!(mine, "think <|begin_of_query|> q<|end_of_query|>\n\n");
    assert_eq!(docs, "<|begin_of_documents|>\n(1)d\n<|end_of_documents|>\n\n");
}

/// A test double of the language model only: replays fixed turns, checking the contexts and stop
/// strings the loop gives it.
struct Scripted {
    turns: Vec<(&'static str, r1s_core::Finish)>,
    seen: std::sync::Mutex<Vec<(String, Vec<String>)>>,
}

#[derive(Debug, thiserror::Error)]
#[error("script exhausted")]
struct Exhausted;

impl r1s_core::Policy for Scripted {
    type Error = Exhausted;
    fn complete(
        &self,
        contexts: &[String],
        s: &r1s_core::GenerateSettings,
    ) -> Result<Vec<r1s_core::Completion>, Exhausted> {
        let mut seen = self.seen.lock().unwrap();
        contexts
            .iter()
            .map(|c| {
                let k = seen.len() / contexts.len().max(1);
                seen.push((c.clone(), s.stop.clone()));
                let (text, finish) = self.turns.get(k).ok_or(Exhausted)?;
                Ok(r1s_core::Completion {
                    text: (*text).to_owned(),
                    finish: finish.clone(),
                    tokens: vec![],
                    logprobs: vec![],
                })
            })
            .collect()
    }
}

/// A flat MiniLM index over 60 real passages in `dir`.
fn small_index(dir: &Path) -> PathBuf {
    use r1s_core::{Cancel, NoProgress};
    let passages = std::fs::read_to_string(shared("r1searcher/passages.jsonl")).unwrap();
    let src = dir.join("p.jsonl");
    std::fs::write(&src, passages.lines().take(60).map(|l| format!("{l}\n")).collect::<String>()).unwrap();
    let corpus = dir.join("corpus");
    r1s_corpus::ingest(&[src], &corpus, &Default::default(), &NoProgress, &Cancel::new()).unwrap();
    let e = r1s_embed::OnnxEmbedder::load(&r1s_embed::EmbedderConfig { threads: 2, ..Default::default() }).unwrap();
    let index = dir.join("index");
    r1s_embed::embed_corpus(&e, &r1s_embed::EmbedJob::new(&corpus, &index), &NoProgress, &Cancel::new()).unwrap();
    r1s_index::build(&index, r1s_index::Kind::Flat, &Default::default(), &NoProgress, &Cancel::new()).unwrap();
    index
}

/// The loop with a scripted policy and a real retriever (MiniLM + flat index over 60 real passages):
/// the spliced text is byte-exact, the spans cover exactly what each side wrote.
#[test]
fn the_loop_splices_byte_for_byte_with_a_real_retriever() {
    use r1s_agent::protocol::{END_QUERY, base_prompt};
    use r1s_core::{Finish, Retriever};
    let tmp = tempfile::tempdir().unwrap();
    let retriever = r1s_retrieve::DenseRetriever::open(&small_index(tmp.path()), &Default::default()).unwrap();

    let turn1 = " I need the Strozzi family. <|begin_of_query|> \"Barbara Strozzi\" composer ";
    // R1-Searcher's evaluation stops at `</answer>`: the text comes without it
    let turn2 = " She was a composer. </think>\n\n<answer> Italian ";
    let policy = Scripted {
        turns: vec![(turn1, Finish::Stop(END_QUERY.into())), (turn2, Finish::Stop("</answer>".into()))],
        seen: Default::default(),
    };
    let prompt = base_prompt("What nationality was Barbara Strozzi?");
    let cfg = r1s_agent::LoopConfig::evaluation();
    let t = r1s_agent::run(&policy, &retriever, std::slice::from_ref(&prompt), &cfg).unwrap().remove(0);

    let hits = retriever.retrieve(&["Barbara Strozzi composer"], 5).unwrap().remove(0);
    let mut docs = String::new();
    for (j, h) in hits.iter().enumerate() {
        docs.push_str(&format!("({}){}\n", j + 1, h.contents));
    }
    let mine1 = "I need the Strozzi family. <|begin_of_query|> \"Barbara Strozzi\" composer<|end_of_query|>\n\n";
    let retrieved = format!("<|begin_of_documents|>\n{docs}<|end_of_documents|>\n\n");
    let turn2 = format!("{turn2}</answer>");
    assert_eq!(t.sol, format!("{mine1}{retrieved}{turn2}"));
    let spans: Vec<(r1s_agent::Source, &str)> = t.spans.iter().map(|s| (s.source, &t.sol[s.start..s.end])).collect();
    assert_eq!(
        spans,
        vec![
            (r1s_agent::Source::Policy, mine1),
            (r1s_agent::Source::Retrieval, retrieved.as_str()),
            (r1s_agent::Source::Policy, turn2.as_str())
        ]
    );
    assert_eq!(t.queries, vec!["Barbara Strozzi composer"]);
    assert_eq!(t.retrieved[0], hits.iter().map(|h| h.id.clone()).collect::<Vec<_>>());
    // the script's answer: the turn's text after `<answer>`, not stripped
    assert_eq!(t.pred, " Italian ");
    assert_eq!(t.stop_reason_final, "finished");
    // the second turn continued from exactly prompt + everything so far, with the stop strings set
    let seen = policy.seen.lock().unwrap();
    let stops: Vec<String> = r1s_agent::protocol::EVAL_STOPS.iter().map(|s| s.to_string()).collect();
    assert_eq!(seen[0], (prompt.clone(), stops));
    assert_eq!(seen[1].0, format!("{prompt}{mine1}{retrieved}"));
    assert_eq!(r1s_agent::reward::reward(r1s_agent::Reward::Stage1, &t.sol, &["Italian".into()]), 1.0);
}

/// A minimal OpenAI-style completions server on a loopback port (std only): the first turn asks a
/// query (finish "stop" with vLLM's `stop_reason`), a context with documents gets the answer up to
/// the `</answer>` it stopped at (finish "stop" without naming it, as llama.cpp answers). Every
/// request must carry R1-Searcher's evaluation stop strings. Returns the base URL.
fn completions_server() -> String {
    use std::io::{BufRead, BufReader, Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { return };
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut len = 0;
            loop {
                let mut line = String::new();
                if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                    break;
                }
                if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                    len = v.trim().parse().unwrap();
                }
            }
            let mut body = vec![0; len];
            reader.read_exact(&mut body).unwrap();
            let req: serde_json::Value = serde_json::from_slice(&body).unwrap();
            assert_eq!(req["model"], "scripted");
            assert_eq!(req["temperature"], 0.0);
            assert_eq!(req["stop"], serde_json::json!(r1s_agent::protocol::EVAL_STOPS));
            let choices: Vec<serde_json::Value> = req["prompt"]
                .as_array()
                .unwrap()
                .iter()
                .enumerate()
                .map(|(i, p)| {
                    if p.as_str().unwrap().contains("<|begin_of_documents|>\n(1)") {
                        serde_json::json!({"index": i, "text": " She composed. </think>\n\n<answer> Italian", "finish_reason": "stop"})
                    } else {
                        serde_json::json!({"index": i, "text": " Look up. <|begin_of_query|> Barbara Strozzi composer", "finish_reason": "stop", "stop_reason": "<|end_of_query|>"})
                    }
                })
                .collect();
            let reply = serde_json::json!({"object": "text_completion", "choices": choices}).to_string();
            let _ = write!(
                stream,
                "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{reply}",
                reply.len()
            );
        }
    });
    url
}

/// The loop over HTTP on both sides: `HttpPolicy` against a completions server, `HttpRetriever`
/// against `r1s serve`'s Search-R1 API (a real server in process): the same trajectory as in process.
#[test]
fn the_loop_over_http_policy_and_http_retriever() {
    use r1s_core::Retriever;
    let tmp = tempfile::tempdir().unwrap();
    let local =
        std::sync::Arc::new(r1s_retrieve::DenseRetriever::open(&small_index(tmp.path()), &Default::default()).unwrap());
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let listener = rt.block_on(tokio::net::TcpListener::bind("127.0.0.1:0")).unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server =
        rt.spawn(r1s_retrieve::serve(local.clone(), listener, Default::default(), serde_json::json!({}), async {
            let _ = stopped.await;
        }));
    let policy = r1s_agent::HttpPolicy::new(&completions_server(), "scripted");
    let prompts = vec![r1s_agent::protocol::base_prompt("Barbara Strozzi's nationality?"); 3];
    let cfg = r1s_agent::LoopConfig::evaluation();
    for url in [format!("http://{addr}"), format!("http://{addr}/queries")] {
        let remote = r1s_agent::HttpRetriever::new(&url);
        let ts = r1s_agent::run(&policy, &remote, &prompts, &cfg).unwrap();
        let hits = local.retrieve(&["Barbara Strozzi composer"], 5).unwrap().remove(0);
        for t in &ts {
            assert_eq!((t.pred.as_str(), t.stop_reason_final.as_str()), (" Italian", "finished"));
            assert_eq!(t.queries, vec!["Barbara Strozzi composer"]);
            for (j, h) in hits.iter().enumerate() {
                assert!(t.sol.contains(&format!("({}){}\n", j + 1, h.contents)), "{url}: document {j} missing");
            }
            assert_eq!(t.spans.len(), 3);
        }
    }
    let _ = stop.send(());
    rt.block_on(server).unwrap().unwrap();
}

/// R1-Searcher's evaluation decisions replayed on scripted turns, each expectation read off its
/// `evaluation/eval_search_loacl.py` (the turn loop of `main`; seen in the copy at
/// sonam13/Capstone_UOA `evaluation/search_loacl.py`, commit e8637712): generation stops at
/// `<|im_end|>`, `<|endoftext|>`, `<|end_of_query|>`, `</answer>`; `"<answer>" in generated_text and
/// stop_reason == "</answer>"` finishes with `generated_text.split("<answer>")[-1].split("</answer>")[0]`;
/// `"<|begin_of_query|>" in generated_text and stop_reason == "<|end_of_query|>"` searches when the
/// query, with `"` `'` `...` removed and tabs made spaces, is not empty (else `query_inst_error`);
/// anything else is `shot_down`; the tenth generation (`k == 9`) is `many_retrieve`; the three
/// give "I don't know.".
#[test]
fn r1_searcher_evaluation_stops_where_its_script_stops() {
    use r1s_agent::protocol::{END_QUERY, base_prompt};
    use r1s_core::Finish;
    let stop = |s: &str| Finish::Stop(s.to_owned());
    let q = |t: &'static str| (t, stop(END_QUERY));
    let idk = "I don't know.";
    let tmp = tempfile::tempdir().unwrap();
    let retriever = r1s_retrieve::DenseRetriever::open(&small_index(tmp.path()), &Default::default()).unwrap();
    // (what broke, the turns, the expected reason, answer and searches)
    type Turns = Vec<(&'static str, Finish)>;
    let cases: Vec<(&str, Turns, &str, &str, usize)> = vec![
        (
            "an answer closed by the stop",
            vec![(" t </think>\n\n<answer> Paris ", stop("</answer>"))],
            "finished",
            " Paris ",
            0,
        ),
        ("the last <answer> of the turn", vec![("<answer> a <answer> b", stop("</answer>"))], "finished", " b", 0),
        (
            "a budget-cut answer is no answer",
            vec![(" t </think>\n\n<answer> Paris", Finish::Length)],
            "shot_down",
            idk,
            0,
        ),
        ("an answer ended by EOS", vec![("<answer> Paris", Finish::Eos)], "shot_down", idk, 0),
        ("an answer ended by <|im_end|>", vec![("<answer> Paris", stop("<|im_end|>"))], "shot_down", idk, 0),
        ("</answer> without <answer>", vec![(" Paris", stop("</answer>"))], "shot_down", idk, 0),
        ("<|end_of_query|> without <|begin_of_query|>", vec![(" Strozzi", stop(END_QUERY))], "shot_down", idk, 0),
        ("an empty query", vec![q(" <|begin_of_query|>\"...\"")], "query_inst_error", idk, 0),
        (
            "a query of whitespace is searched",
            vec![q("<|begin_of_query|> ' \t'"), ("<answer> x", stop("</answer>"))],
            "finished",
            " x",
            1,
        ),
        (
            "the answer of an earlier turn does not count",
            vec![q("<answer> early <|begin_of_query|> Barbara Strozzi"), (" so </think>", stop("</answer>"))],
            "shot_down",
            idk,
            1,
        ),
        (
            "a search, then the answer",
            vec![
                q(" <|begin_of_query|> \"Barbara Strozzi\"\tcomposer..."),
                (" </think>\n\n<answer> Italian", stop("</answer>")),
            ],
            "finished",
            " Italian",
            1,
        ),
        ("searching at the ninth turn", vec![q("<|begin_of_query|> Barbara Strozzi"); 9], "many_retrieve", idk, 8),
        (
            "an answer at the ninth turn",
            [vec![q("<|begin_of_query|> Barbara Strozzi"); 8], vec![("<answer> Venice", stop("</answer>"))]].concat(),
            "finished",
            " Venice",
            8,
        ),
    ];
    let prompt = base_prompt("What nationality was Barbara Strozzi?");
    let cfg = r1s_agent::LoopConfig::evaluation();
    for (what, turns, reason, pred, searches) in cases {
        let n = turns.len();
        let policy = Scripted { turns, seen: Default::default() };
        let t = r1s_agent::run(&policy, &retriever, std::slice::from_ref(&prompt), &cfg).unwrap().remove(0);
        assert_eq!(
            (t.stop_reason_final.as_str(), t.pred.as_str(), t.queries.len(), t.turn_finishes.len()),
            (reason, pred, searches, n),
            "{what}"
        );
        let seen = policy.seen.lock().unwrap();
        assert!(seen.iter().all(|(_, stops)| stops == &r1s_agent::protocol::EVAL_STOPS), "{what}: stop strings");
    }
    // the query as the script cleans it (whitespace collapsed here)
    let policy = Scripted {
        turns: vec![q(" <|begin_of_query|> \"Barbara Strozzi's\"\tcomposer..."), ("<answer> x", stop("</answer>"))],
        seen: Default::default(),
    };
    let t = r1s_agent::run(&policy, &retriever, std::slice::from_ref(&prompt), &cfg).unwrap().remove(0);
    assert_eq!(t.queries, vec!["Barbara Strozzis composer"]);
}

/// The real local policy (SmolLM2) under R1-Searcher's evaluation: the loop hands it the script's
/// four stop strings and the turn that writes `</answer>` ends there, its answer the turn's text after
/// `<answer>`, instead of running on to EOS or the token budget.
#[test]
fn the_local_policy_stops_at_the_answer_under_r1_searchers_evaluation() {
    #[derive(Debug, thiserror::Error)]
    #[error("no search was expected")]
    struct Unexpected;
    struct NoSearch;
    impl r1s_core::Retriever for NoSearch {
        type Error = Unexpected;
        fn retrieve(&self, _: &[&str], _: usize) -> Result<Vec<Vec<r1s_core::Hit>>, Unexpected> {
            Err(Unexpected)
        }
    }
    let path = r1s_core::paths::r1s_home().join("models/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf");
    let policy = r1s_policy::Policy::load(&path, &r1s_policy::device("cpu").unwrap()).unwrap();
    let shots = "Question: What is the capital of Italy?\n<answer> Rome </answer>\n\n\
                 Question: What is the capital of Spain?\n<answer> Madrid </answer>\n\n\
                 Question: What is the capital of France?\n";
    let mut cfg = r1s_agent::LoopConfig::evaluation();
    cfg.sampling.max_new_tokens = 24;
    let t = r1s_agent::run(&policy, &NoSearch, &[shots.to_owned()], &cfg).unwrap().remove(0);
    assert_eq!(t.turn_finishes, vec![r1s_core::Finish::Stop("</answer>".into())], "{:?}", t.sol);
    assert_eq!((t.stop_reason_final.as_str(), t.pred.trim()), ("finished", "Paris"), "{:?}", t.sol);
    assert!(t.sol.ends_with("</answer>") && t.sol.matches("</answer>").count() == 1, "{:?}", t.sol);
}

/// R1-Searcher's Llama 3.1 reward servers' inputs: prompt + rollout texts rendered by the real Llama
/// 3.1 and Llama 3 chat templates (fixture written by python3 + jinja2, `fixtures/make_llama3_reward_texts.py`).
/// The question found is the one the upstream server's `get_qa` reads, its key the server's
/// `normalize_text` of the file's question, and `serve_rewards` under `stage2-llama` (with the real
/// stage-2 question file) answers each text with the reward the server's rules give.
#[test]
fn llama3_chat_texts_are_read_as_r1_searchers_llama_reward_server_reads_them() {
    use r1s_agent::reward_server::{RewardServerConfig, find_question, question_key, serve_rewards};
    let fx: serde_json::Value = serde_json::from_str(include_str!("fixtures/llama3_reward_texts.json")).unwrap();
    let cases = fx["cases"].as_array().unwrap();
    assert_eq!(cases.len(), 8);
    let s = |c: &serde_json::Value, k: &str| c[k].as_str().unwrap().to_owned();
    for c in cases {
        let text = s(c, "text");
        let (q, at) = find_question(&text).unwrap_or_else(|| panic!("no question in {text:?}"));
        assert_eq!((q, &text[at..]), (s(c, "question").as_str(), s(c, "rollout").as_str()), "{}", s(c, "template"));
        assert_eq!((question_key(q), question_key(&s(c, "question"))), (s(c, "key"), s(c, "file_key")));
    }
    // r1s renders R1-Searcher's chat prompt as the real templates do (the text up to the assistant
    // header is the prompt; R1-Searcher adds `<think>` after it)
    let fixture: serde_json::Value = serde_json::from_str(include_str!("fixtures/r1searcher_prompts.json")).unwrap();
    let system = fixture["system_prompt"].as_str().unwrap();
    for c in cases {
        let text = s(c, "text");
        let header = "<|start_header_id|>assistant<|end_header_id|>\n\n";
        let prompt = &text[..text.find(header).unwrap() + header.len()];
        let template = match s(c, "template").as_str() {
            "llama-3.1" => r1s_policy::chat::Template::Llama31,
            _ => r1s_policy::chat::Template::Llama3,
        };
        let messages = [
            r1s_policy::chat::Message::new("system", system),
            r1s_policy::chat::Message::new("user", &s(c, "question")),
        ];
        assert_eq!(template.render(&messages), prompt, "{}", s(c, "template"));
    }
    // each step of normalize_text, against python3's result
    for pair in fx["keys"].as_array().unwrap() {
        assert_eq!(question_key(pair[0].as_str().unwrap()), pair[1].as_str().unwrap(), "{pair}");
    }
    let questions = r1s_agent::read_questions(&shared("r1searcher/training_set/stage_2.jsonl"), None).unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let listener = rt.block_on(tokio::net::TcpListener::bind("127.0.0.1:0")).unwrap();
    let url = format!("http://{}/get_reward", listener.local_addr().unwrap());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let cfg = RewardServerConfig { reward: r1s_agent::Reward::Stage2Llama, ..Default::default() };
    let server = rt.spawn(async move {
        serve_rewards(&questions, cfg, listener, async {
            let _ = stopped.await;
        })
        .await
    });
    let texts: Vec<String> = cases.iter().map(|c| s(c, "text")).collect();
    let v: serde_json::Value = reqwest::blocking::Client::new()
        .post(&url)
        .json(&serde_json::json!({ "query": texts }))
        .send()
        .unwrap()
        .error_for_status()
        .unwrap()
        .json()
        .unwrap();
    for (c, got) in cases.iter().zip(v["rewards"].as_array().unwrap()) {
        let want = c["stage2_llama"].as_f64().unwrap();
        assert!(
            (got.as_f64().unwrap() - want).abs() < 1e-12,
            "{}: {got} vs {want} ({})",
            s(c, "template"),
            s(c, "why")
        );
    }
    let _ = stop.send(());
    rt.block_on(server).unwrap().unwrap();
}

#[test]
fn questions_in_both_formats() {
    let tmp = tempfile::tempdir().unwrap();
    let f = tmp.path().join("q.jsonl");
    std::fs::write(
        &f,
        "{\"id\": \"test_0\", \"question\": \"Who?\", \"golden_answers\": [\"A\", \"B\"]}\n\n{\"idx\": 7, \"question\": \"What?\", \"answer\": \"C\"}\n",
    )
    .unwrap();
    let qs = r1s_agent::read_questions(&f, None).unwrap();
    assert_eq!((qs[0].id.as_str(), qs[0].answers.len()), ("test_0", 2));
    assert_eq!((qs[1].id.as_str(), qs[1].answers[0].as_str()), ("7", "C"));
    std::fs::write(&f, "{\"question\": \"no answer\"}\n").unwrap();
    let err = r1s_agent::read_questions(&f, None).unwrap_err();
    assert!(err.to_string().contains("q.jsonl: line 1"), "{err}");
    let real = r1s_agent::read_questions(&shared("r1searcher/eval_set/bamboogle.jsonl"), Some(10)).unwrap();
    assert!(r1s_agent::read_questions(&shared("r1searcher/eval_set/bamboogle.jsonl"), Some(0)).unwrap().is_empty());
    assert_eq!(real.len(), 10);
}

/// Search-R1's rewards equal its Python code's values (`reward_cases.jsonl`: `qa_em.py` and
/// `qa_em_format.py` run unmodified) on every line: EM, sub-EM, format-aware EM with the default and
/// the v0.3 weights, the sequence check, retrieval correctness and the extracted answer.
#[test]
fn search_r1_rewards_equal_the_reference_on_every_case() {
    use r1s_agent::searchr1 as s;
    let text = std::fs::read_to_string(shared("searchr1/reward_cases.jsonl")).unwrap();
    let (mut n, mut verl) = (0, 0);
    for (i, line) in text.lines().enumerate() {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        let seq = v["solution_str"].as_str().unwrap();
        let golds: Vec<String> =
            v["golden_answers"].as_array().unwrap().iter().map(|g| g.as_str().unwrap().to_owned()).collect();
        let f = |k: &str| v[k].as_f64().unwrap();
        let line_no = i + 1;
        assert_eq!(s::extract_answer(seq), v["answer"].as_str(), "line {line_no}: answer");
        assert_eq!(
            s::is_valid_sequence(seq),
            v["valid"].as_bool().unwrap(),
            "line {line_no}: {:?}",
            s::validate_sequence(seq)
        );
        assert_eq!(s::retrieval_correct(seq, &golds), v["retrieval_correct"].as_bool().unwrap(), "line {line_no}");
        assert_eq!(reward(Reward::SearchR1Em, seq, &golds), f("em"), "line {line_no}: em");
        assert_eq!(reward(Reward::SearchR1SubEm, seq, &golds), f("subem"), "line {line_no}: subem");
        assert!((reward(Reward::SearchR1Format, seq, &golds) - f("format_em")).abs() < 1e-12, "line {line_no}");
        assert!((reward(Reward::SearchR1FormatV03, seq, &golds) - f("format_em_v03")).abs() < 1e-12, "line {line_no}");
        // split anywhere into prompt and rollout, the score is the same
        let cut = seq.char_indices().nth(seq.chars().count() / 2).map_or(0, |(b, _)| b);
        let (p, r) = seq.split_at(cut);
        assert_eq!(r1s_agent::reward::reward_of(Reward::SearchR1Em, p, r, &golds), f("em"));
        // verl's port reads the response alone (after the assistant header): the same EM where the
        // response holds an answer, quartered past 10 answer tags; sub-EM likewise, never quartered
        if let Some(at) = seq.find("<|im_start|>assistant\n") {
            let response = &seq[at..];
            let many = response.matches("<answer>").count() > 10 || response.matches("</answer>").count() > 10;
            let answered = response.contains("<answer>") && response.contains("</answer>");
            let em = if answered { f("em") } else { 0.0 };
            assert_eq!(
                reward(Reward::VerlSearchR1Em, response, &golds),
                if many { em / 4.0 } else { em },
                "line {line_no}"
            );
            let subem = if answered { f("subem") } else { 0.0 };
            assert_eq!(reward(Reward::VerlSearchR1SubEm, response, &golds), subem, "line {line_no}: verl subem");
            verl += 1;
        }
        n += 1;
    }
    assert_eq!(n, 400);
    assert!(verl >= 150, "{verl} cases with an assistant header");
    // one answer only (the prompt's example is not there): Search-R1's rule finds none, verl's finds it
    let golds = vec!["Canberra".to_owned()];
    let one = "<think> … </think> <answer> Canberra </answer>";
    assert_eq!(reward(Reward::SearchR1Em, one, &golds), 0.0);
    assert_eq!(reward(Reward::VerlSearchR1Em, one, &golds), 1.0);
    assert_eq!(
        reward(Reward::VerlSearchR1Em, &"<answer> x </answer>".repeat(11).replace(" x ", " Canberra "), &golds),
        0.25
    );
    assert_eq!(reward(Reward::VerlSearchR1SubEm, "<answer> in Canberra, ACT </answer>", &golds), 1.0);
    assert_eq!("verl-searchr1-em".parse::<Reward>(), Ok(Reward::VerlSearchR1Em));
}

/// The Search-R1 loop with a scripted policy over the same real retriever: an invalid turn gets the
/// invalid-action text, a search gets `Doc i(Title: …)` lines inside `<information>` with the blank
/// lines around, the answer ends the episode; the spans say exactly which bytes the policy wrote;
/// the prompt is Search-R1's, byte for byte (reward_cases.jsonl line 1 holds one, rendered by Qwen's
/// ChatML template); after `max_turns` searching turns one final turn cannot search.
#[test]
fn the_search_r1_loop_writes_its_observations_byte_for_byte() {
    use r1s_agent::searchr1::{INVALID_ACTION, user_message};
    use r1s_agent::{Protocol, Source};
    use r1s_core::{Finish, Retriever};
    let tmp = tempfile::tempdir().unwrap();
    let retriever = r1s_retrieve::DenseRetriever::open(&small_index(tmp.path()), &Default::default()).unwrap();

    // the prompt: reward case 1's is Qwen2.5's ChatML with its default system message
    let case: serde_json::Value = serde_json::from_str(
        std::fs::read_to_string(shared("searchr1/reward_cases.jsonl")).unwrap().lines().next().unwrap(),
    )
    .unwrap();
    let seq = case["solution_str"].as_str().unwrap();
    let prompt_part = &seq[..seq.find("<|im_start|>assistant\n").unwrap() + "<|im_start|>assistant\n".len()];
    let qwen = r1s_policy::chat::Template::ChatMl { default_system: Some("You are a helpful assistant.".into()) };
    let rendered =
        qwen.render(&[r1s_policy::chat::Message::new("user", &user_message("what is the capital of australia"))]);
    assert_eq!(rendered, prompt_part);

    let turn1 = "<think> Let me think. </think> Strozzi was Venetian.";
    let turn2 = "<think> I should search. </think>\n<search> Barbara Strozzi composer ";
    let turn3 = "<think> She was born in Venice. </think>\n<answer> Italian ";
    let policy = Scripted {
        turns: vec![
            (turn1, Finish::Eos),
            (turn2, Finish::Stop("</search>".into())),
            (turn3, Finish::Stop("</answer>".into())),
        ],
        seen: Default::default(),
    };
    let prompt =
        qwen.render(&[r1s_policy::chat::Message::new("user", &user_message("What nationality was Barbara Strozzi"))]);
    let cfg = r1s_agent::LoopConfig::search_r1();
    assert_eq!((cfg.protocol, cfg.topk, cfg.max_turns), (Protocol::SearchR1, 3, 4));
    let t = r1s_agent::run(&policy, &retriever, std::slice::from_ref(&prompt), &cfg).unwrap().remove(0);
    let hits = retriever.retrieve(&["Barbara Strozzi composer"], 3).unwrap().remove(0);
    let mut docs = String::new();
    for (j, h) in hits.iter().enumerate() {
        let (title, text) = h.contents.split_once('\n').unwrap_or((h.contents.as_str(), ""));
        docs.push_str(&format!("Doc {}(Title: {title}) {text}\n", j + 1));
    }
    let information = format!("\n\n<information>{}</information>\n\n", docs.trim());
    let turn2_kept = format!("{turn2}</search>");
    let turn3_kept = format!("{turn3}</answer>");
    let spans: Vec<(Source, &str)> = t.spans.iter().map(|s| (s.source, &t.sol[s.start..s.end])).collect();
    assert_eq!(
        spans,
        vec![
            (Source::Policy, turn1),
            (Source::Retrieval, INVALID_ACTION),
            (Source::Policy, turn2_kept.as_str()),
            (Source::Retrieval, information.as_str()),
            (Source::Policy, turn3_kept.as_str()),
        ]
    );
    assert_eq!(
        INVALID_ACTION,
        "\nMy previous action is invalid. If I want to search, I should put the query between <search> and </search>. If I want to give the final answer, I should put the answer between <answer> and </answer>. Let me try again.\n"
    );
    assert_eq!(
        (t.queries.clone(), t.pred.as_str(), t.stop_reason_final.as_str()),
        (vec!["Barbara Strozzi composer".to_owned()], "Italian", "finished")
    );
    {
        let seen = policy.seen.lock().unwrap();
        assert_eq!(seen[0].1, vec!["</search>".to_owned(), "</answer>".to_owned()]);
        assert_eq!(seen[2].0, format!("{prompt}{turn1}{INVALID_ACTION}{turn2_kept}{information}"));
    }
    // the sequence is valid Search-R1 except for the invalid turn's stray text, and the reward reads it
    assert!(Protocol::SearchR1.format_bad(&t.prompt, &t.sol));
    let golds = vec!["Italian".to_owned()];
    assert_eq!(r1s_agent::reward::reward_of(r1s_agent::Reward::SearchR1Em, &t.prompt, &t.sol, &golds), 1.0);
    assert_eq!(r1s_agent::reward::reward_of(r1s_agent::Reward::SearchR1Format, &t.prompt, &t.sol, &golds), 0.8);

    // two searching turns at most, then a final one: a policy that keeps searching stops there
    let always = Scripted { turns: vec![(turn2, Finish::Stop("</search>".into())); 3], seen: Default::default() };
    let cfg = r1s_agent::LoopConfig { max_turns: 2, ..r1s_agent::LoopConfig::search_r1() };
    let t = r1s_agent::run(&always, &retriever, std::slice::from_ref(&prompt), &cfg).unwrap().remove(0);
    assert_eq!((t.queries.len(), t.turn_finishes.len(), t.stop_reason_final.as_str()), (2, 3, "max_turns"));
    assert!(t.sol.ends_with("</search>"), "the final turn's search is not answered");
}

/// Turns a policy's first turn of every even episode into a search (`<search> … </search>`), so
/// that a small untrained model exercises retrieval; the rest is the model's own.
struct SearchFirst<'a> {
    inner: &'a r1s_policy::Policy,
    turns: std::sync::Mutex<std::collections::HashMap<usize, usize>>,
}

impl SearchFirst<'_> {
    fn force(&self, key: usize, mut c: r1s_core::Completion) -> r1s_core::Completion {
        let mut turns = self.turns.lock().unwrap();
        let n = turns.entry(key).or_insert(0);
        if *n == 0 && key.is_multiple_of(2) {
            c.text = format!(
                "<think> Let me look it up. </think>\n<search> {} ",
                ["river Nile", "Barbara Strozzi"][key % 4 / 2]
            );
            c.finish = r1s_core::Finish::Stop("</search>".into());
        }
        *n += 1;
        c
    }
}

impl r1s_core::Policy for SearchFirst<'_> {
    type Error = r1s_policy::PolicyError;
    fn complete(&self, _: &[String], _: &r1s_core::GenerateSettings) -> Result<Vec<r1s_core::Completion>, Self::Error> {
        unreachable!("the loop runs through complete_continuous")
    }
    fn complete_continuous(
        &self,
        jobs: Vec<r1s_core::Job>,
        done: &mut dyn FnMut(r1s_core::Finished) -> std::ops::ControlFlow<(), Vec<r1s_core::Job>>,
    ) -> Result<(), Self::Error> {
        self.inner.complete_continuous(jobs, &mut |ended| {
            done(ended.into_iter().map(|(k, c)| (k, self.force(k, c))).collect())
        })
    }
}

/// SmolLM2 under Search-R1's loop, batched continuously (episodes join and leave the batch at any
/// step, reuse their caches across turns, and the next question takes a finished one's place) and
/// in rounds: greedy, both write the same episodes.
#[test]
fn continuous_batching_writes_the_episodes_of_rounds() {
    let tmp = tempfile::tempdir().unwrap();
    let retriever = r1s_retrieve::DenseRetriever::open(&small_index(tmp.path()), &Default::default()).unwrap();
    let path = r1s_core::paths::r1s_home().join("models/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf");
    let mut policy = r1s_policy::Policy::load(&path, &r1s_policy::device("cpu").unwrap()).unwrap();
    let questions = [
        "Where is the Nile?",
        "Who was Barbara Strozzi?",
        "What is 2 + 2?",
        "Name a composer.",
        "Why is the sky blue?",
    ];
    let prompts: Vec<String> =
        questions.iter().map(|q| format!("Answer with <answer> and </answer>.\nQuestion: {q}\n")).collect();
    let mut cfg = r1s_agent::LoopConfig { max_turns: 1, max_live: 3, ..r1s_agent::LoopConfig::search_r1() };
    cfg.sampling.max_new_tokens = 24;
    let mut runs = Vec::new();
    for continuous in [true, false] {
        policy.continuous = continuous;
        let p = SearchFirst { inner: &policy, turns: Default::default() };
        let mut order = Vec::new();
        let ts = r1s_agent::run_streaming(&p, &retriever, &prompts, &cfg, &mut |i, _| {
            order.push(i);
            std::ops::ControlFlow::Continue(())
        })
        .unwrap();
        assert_eq!(
            {
                let mut o = order.clone();
                o.sort();
                o
            },
            (0..5).collect::<Vec<_>>(),
            "each episode ends once"
        );
        runs.push(ts);
    }
    let (cont, rounds) = (&runs[0], &runs[1]);
    for (i, (a, b)) in cont.iter().zip(rounds).enumerate() {
        assert_eq!(a.sol, b.sol, "episode {i}");
        assert_eq!(a.turn_tokens, b.turn_tokens, "episode {i}");
        assert_eq!(a.queries, b.queries, "episode {i}");
        assert_eq!(a.stop_reason_final, b.stop_reason_final, "episode {i}");
    }
    assert!(cont.iter().filter(|t| !t.queries.is_empty()).count() >= 2, "the forced searches ran");
    assert!(cont.iter().all(|t| t.turn_finishes.len() >= 2), "every episode took a second turn");
}

mod judge_replay;
mod plus;
use judge_replay::ReplayJudge;

/// `r1s_agent::judge` sends R1-Searcher's judge requests byte for byte: judged through a replay of its
/// judge (which knows only the messages R1-Searcher sent), each of the five released results files
/// gets back every verdict it recorded, and so the judge accuracy computed from its `gpt4o_output`
/// fields (65.0, 54.4, 54.4, 74.6, 75.0 %). Retries ride out 503s and 429s; the cache answers a rerun
/// without a request; a reply that is no verdict is counted apart, not scored.
#[test]
fn the_judge_reproduces_r1_searchers_released_judge_accuracy() {
    use r1s_agent::judge::{Judge, judge_message, parse_verdict, reference_text, row_message};
    let fx: serde_json::Value = serde_json::from_str(include_str!("fixtures/judge_replay.json")).unwrap();
    assert_eq!(
        judge_message("Who?", &reference_text(&serde_json::json!(true)), "yes"),
        fx["example"].as_str().unwrap()
    );
    let cancel = r1s_core::Cancel::new();
    let mut figures = Vec::new();
    for (file, rec) in fx["files"].as_object().unwrap() {
        let server = ReplayJudge::start(judge_replay::verdicts(&fx, file), 0);
        let path = shared(&format!("r1searcher/eval_results/{file}"));
        let rows: Vec<serde_json::Value> =
            std::fs::read_to_string(&path).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
        let messages: Vec<String> = rows.iter().map(|r| row_message(r).unwrap()).collect();
        let judge = Judge::new(&server.url, "gpt-4o-mini");
        let judged = judge.judge_all(&messages, &cancel, &|_| {}).unwrap();
        assert_eq!(server.requests(), rows.len(), "{file}: one request a row");
        for (row, j) in rows.iter().zip(&judged) {
            assert_eq!(j.verdict, parse_verdict(row["gpt4o_output"].as_str().unwrap()), "{file}: {j:?}");
        }
        let correct = judged.iter().filter(|j| j.verdict == Some(true)).count();
        assert_eq!(correct, rec["true"].as_u64().unwrap() as usize, "{file}");
        // the summary of the released file reads the same accuracy from its gpt4o_output fields
        let released = r1s_agent::score_file(&path).unwrap().judge.unwrap();
        let ours = 100.0 * correct as f64 / rows.len() as f64;
        assert!((released - ours).abs() < 1e-9, "{file}: {released} vs {ours}");
        figures.push(format!("{ours:.1}"));
    }
    assert_eq!(figures, ["65.0", "54.4", "54.4", "74.6", "75.0"]);
    // a released row that r1s judged again is read by r1s's verdict only, never by its gpt4o_output
    use r1s_agent::eval::row_verdict;
    let v = |j: serde_json::Value| row_verdict(&j);
    assert_eq!(v(serde_json::json!({"gpt4o_output": "True", "judge": null, "judge_reply": "?"})), Some(None));
    assert_eq!(v(serde_json::json!({"gpt4o_output": "True", "judge": false})), Some(Some(false)));
    assert_eq!(v(serde_json::json!({"gpt4o_output": "True"})), Some(Some(true)));
    assert_eq!(v(serde_json::json!({"pred_ans": "x"})), None);

    // retries (503, 429 + Retry-After), the cache, a reply that is no verdict, a refused request
    let server = ReplayJudge::start(judge_replay::verdicts(&fx, "bamboogle_qwen.jsonl"), 3);
    let rows: Vec<serde_json::Value> = std::fs::read_to_string(shared("r1searcher/eval_results/bamboogle_qwen.jsonl"))
        .unwrap()
        .lines()
        .take(4)
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let mut messages: Vec<String> = rows.iter().map(|r| row_message(r).unwrap()).collect();
    messages.push(judge_message("Unsure?", "x", "y"));
    messages.push(judge_message("Never sent?", "x", "y"));
    let cache = tempfile::tempdir().unwrap();
    let judge = Judge {
        cache: Some(cache.path().to_path_buf()),
        concurrency: 1,
        backoff: std::time::Duration::from_millis(20),
        ..Judge::new(&format!("{}/v1", server.url), "gpt-4o-mini")
    };
    let first = judge.judge_all(&messages, &cancel, &|_| {}).unwrap();
    assert_eq!(server.requests(), 3 + messages.len(), "three refused, then one a message");
    for (row, j) in rows.iter().zip(&first) {
        assert_eq!((j.verdict, j.cached), (parse_verdict(row["gpt4o_output"].as_str().unwrap()), false));
    }
    assert_eq!((first[4].reply.as_deref(), first[4].verdict), (Some("I cannot tell."), None));
    assert!(first[5].error.as_deref().is_some_and(|e| e.contains("400")), "{:?}", first[5]);
    let again = judge.judge_all(&messages, &cancel, &|_| {}).unwrap();
    assert_eq!(server.requests(), 3 + messages.len() + 1, "a rerun asks only what has no reply");
    assert!(again[..5].iter().all(|j| j.cached) && !again[5].cached);
    assert_eq!(
        again.iter().map(|j| j.verdict).collect::<Vec<_>>(),
        first.iter().map(|j| j.verdict).collect::<Vec<_>>()
    );
    // the summary counts the rows left without a verdict apart
    let gold = vec!["x".to_owned()];
    let s = r1s_agent::Summary::of(again.iter().map(|j| r1s_agent::Row {
        pred: "x",
        golds: &gold,
        sol: None,
        searches: None,
        prompt: "",
        reward: None,
        protocol: r1s_agent::Protocol::R1Searcher,
        judge: Some(j.verdict),
    }));
    let correct = again[..4].iter().filter(|j| j.verdict == Some(true)).count();
    assert_eq!((s.judge, s.unjudged), (Some(100.0 * correct as f64 / 4.0), 2));
    assert!(s.table().contains("(2 without a verdict)"), "{}", s.table());
}
