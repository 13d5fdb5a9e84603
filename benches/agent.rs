//! Criterion benches of the R1-Searcher protocol code: metrics and rewards over R1-Searcher's 500
//! released HotpotQA trajectories, and the agent loop's own cost per turn with generation and
//! retrieval replaced by constant-time stand-ins (so that only the loop's bookkeeping, splicing and
//! query extraction are measured). `cargo bench --bench agent`.

use std::convert::Infallible;
use std::path::Path;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use r1s_agent::protocol::END_QUERY;
use r1s_agent::{LoopConfig, Reward};
use r1s_core::{Completion, Finish, GenerateSettings, Hit, Policy, Retriever};

/// Asks a query on every turn but the 4th, then answers.
struct Replay;

#[derive(Debug)]
struct Never;
impl std::fmt::Display for Never {
    fn fmt(&self, _: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        Ok(())
    }
}
impl std::error::Error for Never {}

impl Policy for Replay {
    type Error = Never;
    fn complete(&self, contexts: &[String], _: &GenerateSettings) -> Result<Vec<Completion>, Never> {
        Ok(contexts
            .iter()
            .map(|c| {
                let turns = c.matches("<|end_of_documents|>\n\n").count();
                let (text, finish) = if turns < 3 {
                    (
                        " I should check this fact first. <|begin_of_query|> \"Some Entity\" born year ...",
                        Finish::Stop(END_QUERY.into()),
                    )
                } else {
                    (" So the answer follows. </think>\n\n<answer> 1977 </answer>", Finish::Eos)
                };
                Completion { text: text.into(), finish, tokens: vec![], logprobs: vec![] }
            })
            .collect())
    }
}

/// Five fixed 100-word passages for any query.
struct Fixed(Vec<Hit>);

impl Retriever for Fixed {
    type Error = Infallible;
    fn retrieve(&self, queries: &[&str], k: usize) -> Result<Vec<Vec<Hit>>, Infallible> {
        Ok(queries.iter().map(|_| self.0.iter().take(k).cloned().collect()).collect())
    }
}

fn benches(c: &mut Criterion) {
    let path = Path::new(&std::env::var_os("CARGO_MANIFEST_DIR").unwrap_or_else(|| env!("CARGO_MANIFEST_DIR").into()))
        .join("../shared/data/r1searcher/eval_results/hotpotqa_qwen.jsonl");
    let rows: Vec<(String, Vec<String>, String)> = std::fs::read_to_string(path)
        .expect("eval results")
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).expect("JSON");
            let s = |k: &str| v[k].as_str().unwrap_or("").to_owned();
            (s("pred_ans"), vec![s("answer")], s("gen_text_store"))
        })
        .collect();
    let mut g = c.benchmark_group("agent");
    g.throughput(Throughput::Elements(rows.len() as u64));
    g.bench_function("metrics_500", |b| {
        b.iter(|| rows.iter().map(|(p, gold, _)| r1s_agent::metrics::score(p, gold).f1).sum::<f64>())
    });
    g.bench_function("stage2_reward_500", |b| {
        b.iter(|| rows.iter().map(|(_, gold, sol)| r1s_agent::reward::reward(Reward::Stage2, sol, gold)).sum::<f64>())
    });
    let words = "lorem ipsum dolor sit amet ".repeat(20);
    let hits: Vec<Hit> = (0..5)
        .map(|i| Hit {
            row: i,
            id: i.to_string(),
            score: 0.5,
            title: String::new(),
            contents: format!("\"Title {i}\"\n{words}"),
        })
        .collect();
    let retriever = Fixed(hits);
    let prompts: Vec<String> = (0..64).map(|i| r1s_agent::protocol::base_prompt(&format!("Question {i}?"))).collect();
    let cfg = LoopConfig::evaluation();
    // 64 episodes x 4 turns
    g.throughput(Throughput::Elements(64 * 4));
    g.bench_function("loop_turns_64x4", |b| {
        b.iter(|| r1s_agent::run(&Replay, &retriever, &prompts, &cfg).expect("loop").len())
    });
    g.finish();
}

criterion_group!(agent, benches);
criterion_main!(agent);
