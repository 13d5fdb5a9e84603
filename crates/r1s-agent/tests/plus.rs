//! R1-Searcher++: its strings, format rules, rewards (the group reward on hand-made groups), the loop
//! with a scripted policy over a real retriever (documents masked, `<internal>` trained), RC, and the
//! deterministic rewriter of the memorisation step.

use r1s_agent::plus::{self, GroupReward, Ties};
use r1s_agent::{Protocol, Reward, Source};
use r1s_core::Finish;

use super::{Scripted, small_index};

fn golds(a: &str) -> Vec<String> {
    vec![a.to_owned()]
}

/// A well-formed rollout that searched `n` times and answered `answer`.
fn searched(n: usize, answer: &str) -> String {
    let mut s = String::from("Let me look it up. ");
    for i in 0..n {
        s.push_str(&format!(
            "<external> query {i}</external>\n\n<document>\n(1)\"Doc {i}\"\nText {i}.\n</document>\n\n"
        ));
    }
    s.push_str(&format!("Done. </think>\n\n<answer> {answer} </answer>"));
    s
}

#[test]
fn plus_strings_are_byte_stable() {
    let sys = plus::SYSTEM_PROMPT;
    assert!(sys.starts_with(
        "You are a helpful assistant.\nGiven a question, you should answer it by first thinking about the reasoning process"
    ));
    // the quoted example's two newlines are characters, as R1-Searcher's Python strings evaluate
    assert!(sys.contains("i.e., \"<think> reasoning process here </think>\n\n<answer> final answer here </answer>\"."));
    assert!(sys.contains(
        "**you can recall knowledge you are sure of** with the format of \"<internal> known fact </internal>\", and \
         **you can perform searching for uncertain knowledge** if necessary with the format of \"<external> search \
         query (only list keywords, such as **\"keyword_1 keyword_2 ...\"**) </external>\". **A query must involve \
         only a single triple**."
    ));
    assert!(sys.ends_with("with the format of \"<document> ...search results... </document>\"."));
    assert_eq!(sys.len(), 889, "the system message's length is fixed: a change retrains every policy");
    let p = plus::base_prompt("Who?");
    assert!(p.starts_with("The User asks a question, and the Assistant solves it.\n"));
    assert!(p.ends_with("<document> ...search results... </document>\".\n\nUser:Who?\nAssistant: <think>"));
    assert_eq!(plus::extract_query(" so <external> \"Evan\"   Morris 's\tjob... ", true).unwrap(), "Evan Morris s job");
    assert_eq!(plus::extract_query("<internal> x </internal> no search", false), None);
    let (mine, docs) = plus::splice("  I know <internal> a </internal> <external> q ", "(1)d\n");
    assert_eq!(mine, "I know <internal> a </internal> <external> q</external>\n\n");
    assert_eq!(docs, "<document>\n(1)d\n</document>\n\n");
    assert_eq!("r1searcher-plus".parse::<Protocol>().unwrap(), Protocol::R1SearcherPlus);
    assert_eq!(serde_json::json!(Protocol::R1SearcherPlus), "r1searcher-plus");
    assert_eq!("r1searcher-plus".parse::<Reward>().unwrap(), Reward::R1SearcherPlus);
    // the reward server finds the question in its base prompt
    let text = format!("{p} <internal> x </internal> </think>\n\n<answer> y </answer>");
    let (q, at) = r1s_agent::reward_server::find_question(&text).unwrap();
    assert_eq!((q, &text[at..at + 11]), ("Who?", " <internal>"));
}

#[test]
fn plus_format_rules() {
    let good = [
        " <internal> Paris is in France. </internal> So Paris. </think>\n\n<answer> Paris </answer>".to_owned(),
        searched(0, "Paris"),
        searched(3, "Paris"),
        format!("<internal> a </internal>{}", searched(1, "x")),
    ];
    for s in &good {
        assert_eq!(plus::format_problem(s), None, "{s:?}");
    }
    let bad = [
        ("no closing think <answer> a </answer>", "</think>"),
        ("<think> x </think>\n\n<answer> a </answer>", "<think>"),
        ("x </think>\n\n<answer> a </answer><answer> b </answer>", "<answer>"),
        ("x </think> no answer", "<answer>"),
        ("x <answer> a </answer> </think>", "after </think>"),
        ("x </think>\n\n<answer> <internal> a </internal> </answer>", "tag after"),
        ("<internal> never closed </think>\n\n<answer> a </answer>", "closed"),
        ("<internal> a <external> q </external> </internal> </think>\n\n<answer> a </answer>", "<internal> block"),
        ("a </internal> </think>\n\n<answer> a </answer>", "closing tag"),
        ("<external> q </external> no documents </think>\n\n<answer> a </answer>", "documents"),
        ("<external>  </external>\n\n<document>\n(1)d\n</document>\n\n</think>\n\n<answer> a </answer>", "empty"),
        ("I write <document>\n(1)made up\n</document>\n\n </think>\n\n<answer> a </answer>", "model-written"),
        // unterminated documents run to the end: the policy wrote no </think>
        ("<external> q </external>\n\n<document>\n(1)d\n </think>\n\n<answer> a </answer>", "</think>"),
        ("Assistant: x </think>\n\n<answer> a </answer>", "Assistant"),
    ];
    for (s, why) in bad {
        let p = plus::format_problem(s).unwrap_or_else(|| panic!("{s:?} passed the format check"));
        assert!(p.contains(why), "{s:?}: {p:?} does not say {why:?}");
        assert_eq!(plus::reward(s, &golds("a")), -2.0 + f64::from(u8::from(plus::answer_correct(s, &golds("a")))));
    }
    // a long rollout of many steps parses in one pass (untrusted texts reach the reward server)
    let many = format!("{}</think>\n\n<answer> a </answer>", "<internal> f </internal> < x ".repeat(20_000));
    assert_eq!(plus::parse_steps(&many).unwrap().len(), 40_000);
    assert_eq!(plus::format_problem(&many), None);
    // R_answer: cover-EM with at most 10 words
    assert!(plus::answer_correct(&searched(1, "the city of Paris"), &golds("Paris")));
    // ten words pass, eleven do not
    assert!(plus::answer_correct(&searched(1, "one two three four five six seven eight nine Paris"), &golds("Paris")));
    assert!(!plus::answer_correct(
        &searched(1, "one two three four five six seven eight nine ten Paris"),
        &golds("Paris")
    ));
    assert!(!plus::answer_correct("Paris </think> no tags", &golds("Paris")));
    assert_eq!(plus::reward(&searched(2, "Paris"), &golds("Paris")), 1.0);
    assert_eq!(plus::reward(&searched(2, "Lyon"), &golds("Paris")), 0.0);
}

#[test]
fn the_group_reward_on_hand_made_groups() {
    let g = GroupReward::default();
    assert_eq!((g.eta, g.ddof, g.ties), (2.0, 0, Ties::All));
    // one correct rollout: no σ, no bonus
    assert_eq!(g.bonuses(&[true, false, false], &[3, 0, 1]), vec![0.0; 3]);
    // all correct with equal counts: σ = 0
    assert_eq!(g.bonuses(&[true, true, true], &[2, 2, 2]), vec![0.0; 3]);
    // all wrong
    assert_eq!(g.bonuses(&[false, false], &[0, 3]), vec![0.0; 2]);
    // counts {1, 2}: population σ² = 0.25, bonus 2σ² = 0.5 to the one that searched once; a wrong
    // rollout that searched less earns nothing
    assert_eq!(g.bonuses(&[true, true, false], &[1, 2, 0]), vec![0.5, 0.0, 0.0]);
    // counts {0, 0, 3}: mean 1, σ² = 2 → 2σ² = 4, capped at η = 2, to both tied rollouts
    assert_eq!(g.bonuses(&[true, true, true], &[0, 3, 0]), vec![2.0, 0.0, 2.0]);
    let first = GroupReward { ties: Ties::First, ..g };
    assert_eq!(first.bonuses(&[true, true, true], &[0, 3, 0]), vec![2.0, 0.0, 0.0]);
    // ddof 1: counts {1, 2} → sample σ² = 0.5 → 1.0
    let sample = GroupReward { ddof: 1, ..g };
    assert_eq!(sample.bonuses(&[true, true], &[1, 2]), vec![1.0, 0.0]);
    let capped = GroupReward { eta: 0.3, ..g };
    assert_eq!(capped.bonuses(&[true, true], &[1, 2]), vec![0.3, 0.0]);
    assert!(GroupReward { ddof: 2, ..g }.check().is_err() && GroupReward { eta: f64::NAN, ..g }.check().is_err());

    // the whole reward through the group step: R_format + R_answer + R_group
    let sols = [searched(0, "Paris"), searched(2, "Paris"), searched(1, "Lyon"), "Paris </think> bad".to_owned()];
    let rollouts: Vec<(&str, &str)> = sols.iter().map(|s| ("prompt", s.as_str())).collect();
    let r = r1s_agent::reward::score_group(Reward::R1SearcherPlus, &g, &rollouts, &golds("Paris"));
    // correct: counts {0, 2}, σ² = 1, bonus min(2, 2) = 2 to the one that did not search
    assert_eq!(r, vec![3.0, 1.0, 0.0, -2.0]);
    // a malformed rollout with a correct answer is not "correct" for the group: it earns no bonus
    // and does not count in σ
    let m = "<external> q </external> Paris </think>\n\n<answer> Paris </answer>";
    let r = r1s_agent::reward::score_group(
        Reward::R1SearcherPlus,
        &g,
        &[("p", m), ("p", &sols[1]), ("p", &sols[1])],
        &golds("Paris"),
    );
    assert_eq!(r, vec![-1.0, 1.0, 1.0]);
    // a per-rollout reward scored as a group is each rollout alone
    let r = r1s_agent::reward::score_group(Reward::Stage2, &g, &rollouts, &golds("Paris"));
    let alone: Vec<f64> = sols.iter().map(|s| r1s_agent::reward::reward(Reward::Stage2, s, &golds("Paris"))).collect();
    assert_eq!(r, alone);
}

/// The loop under R1-Searcher++ with a scripted policy and a real retriever: the first turn recalls a
/// fact and searches, the second answers. The documents (tags included) are the retriever's span, the
/// `<internal>` step the policy's; the text's own spans agree; the rewriter turns the rollout into an
/// internal-only path that passes the format check; a policy that answers from memory has RC 0.
#[test]
fn the_plus_loop_masks_documents_and_rewrites_searches_into_internal_steps() {
    use r1s_core::Retriever;
    let tmp = tempfile::tempdir().unwrap();
    let retriever = r1s_retrieve::DenseRetriever::open(&small_index(tmp.path()), &Default::default()).unwrap();
    let turn1 =
        " <internal> Barbara Strozzi was a composer. </internal> Her nationality? <external> \"Barbara Strozzi\" ";
    let turn2 = " She was Italian. </think>\n\n<answer> Italian </answer>";
    let policy = Scripted {
        turns: vec![(turn1, Finish::Stop(plus::EXTERNAL_CLOSE.into())), (turn2, Finish::Eos)],
        seen: Default::default(),
    };
    let prompt = plus::base_prompt("What nationality was Barbara Strozzi?");
    let cfg = r1s_agent::LoopConfig::evaluation_for(Protocol::R1SearcherPlus);
    assert_eq!((cfg.protocol, cfg.topk, cfg.max_turns), (Protocol::R1SearcherPlus, 5, 9));
    let t = r1s_agent::run(&policy, &retriever, std::slice::from_ref(&prompt), &cfg).unwrap().remove(0);
    let hits = retriever.retrieve(&["Barbara Strozzi"], 5).unwrap().remove(0);
    let docs: Vec<&str> = hits.iter().map(|h| h.contents.as_str()).collect();
    let mine1 = "<internal> Barbara Strozzi was a composer. </internal> Her nationality? <external> \"Barbara Strozzi\"</external>\n\n";
    let retrieved = format!("<document>\n{}</document>\n\n", r1s_agent::protocol::format_docs(&docs));
    assert_eq!(t.sol, format!("{mine1}{retrieved}{turn2}"));
    let spans: Vec<(Source, &str)> = t.spans.iter().map(|s| (s.source, &t.sol[s.start..s.end])).collect();
    assert_eq!(spans, vec![(Source::Policy, mine1), (Source::Retrieval, retrieved.as_str()), (Source::Policy, turn2)]);
    assert_eq!(Protocol::R1SearcherPlus.spans_of_text(&t.sol), t.spans);
    assert_eq!((t.queries.clone(), t.pred.as_str()), (vec!["Barbara Strozzi".to_owned()], "Italian"));
    let seen = policy.seen.lock().unwrap();
    assert_eq!(seen[0], (prompt.clone(), vec!["</external>".to_owned()]));
    assert_eq!(seen[1].0, format!("{prompt}{mine1}{retrieved}"));
    drop(seen);
    assert_eq!(plus::format_problem(&t.sol), None);
    assert_eq!((Protocol::R1SearcherPlus.searches(&t.sol), Protocol::R1SearcherPlus.internal_steps(&t.sol)), (1, 1));

    // the rewriter: the search and its documents become one <internal> step holding a sentence of the
    // documents; the policy's text around it stays; the path is well-formed, searches nothing, answers
    // the same
    let gold = golds("Italian");
    let path = plus::rewrite_internal(&t.sol, &gold).expect("a correct rollout that searched is rewritten");
    assert_eq!(plus::format_problem(&path), None, "{path}");
    assert_eq!((plus::searches(&path), plus::internal_steps(&path)), (0, 2));
    assert!(path.starts_with("<internal> Barbara Strozzi was a composer. </internal> Her nationality? <internal> "));
    assert!(path.ends_with(&format!("</internal>\n\n{turn2}")), "{path}");
    let fact = &path[path.rfind("<internal> ").unwrap() + 11..path.rfind(" </internal>").unwrap()];
    let in_a_document = docs.iter().any(|d| {
        let d = d.replace('\n', " ");
        d.contains(fact) || fact.split_once(": ").is_some_and(|(_, sentence)| d.contains(sentence))
    });
    assert!(in_a_document, "{fact}");
    // a wrong answer, a malformed rollout and one that never searched are not rewritten
    assert_eq!(plus::rewrite_internal(&t.sol, &golds("French")), None);
    assert_eq!(plus::rewrite_internal(&searched(0, "Italian"), &gold), None);
    assert_eq!(plus::rewrite_internal(&t.sol.replace("</think>", ""), &gold), None);
    // the fact covering the gold answer beats a sentence that only shares the query's words
    let body = "(1)\"Strozzi\"\nStrozzi was a Venetian composer. Her work survives.\n(2)\"Italy\"\nStrozzi was born in Italy.\n(3)\"Venice\"\nHer home city was a republic.\n";
    assert_eq!(plus::fact_of("Strozzi composer", body, &golds("Italy")).unwrap().0, "Strozzi was born in Italy.");
    // a sentence that does not name its document's title is written with it
    assert_eq!(
        plus::fact_of("Strozzi city", body, &golds("republic")).unwrap(),
        ("Venice: Her home city was a republic.".to_owned(), true)
    );
    assert_eq!(
        plus::fact_of("Venetian composer", body, &golds("nowhere")).unwrap(),
        ("Strozzi was a Venetian composer.".to_owned(), false)
    );
    // nothing covers the answer or shares a word with the query: no fact, and no path whose facts
    // do not carry the answer
    assert_eq!(plus::fact_of("Monteverdi opera", body, &golds("nowhere")), None);
    let unrelated = format!(
        "<external> Venetian composer</external>\n\n<document>\n{body}</document>\n\n</think>\n\n<answer> Italian </answer>"
    );
    assert_eq!(plus::format_problem(&unrelated), None);
    assert_eq!(plus::rewrite_internal(&unrelated, &golds("Italian")), None);
    // tags inside a retrieved document are not the policy's: they count as no search and no recall
    let quoting = "<external> tags</external>\n\n<document>\n(1)\"Tags\"\nA page shows <external> and <internal> as text.\n</document>\n\n</think>\n\n<answer> Tags </answer>";
    assert_eq!((plus::format_problem(quoting), plus::searches(quoting), plus::internal_steps(quoting)), (None, 1, 0));

    // training: a search past max_retrievals ends the episode with the <external> left open (the
    // last turn keeps the stop string, so the policy never writes documents itself): malformed
    let again = " Not enough. <external> Strozzi birthplace ";
    let policy = Scripted {
        turns: vec![
            (turn1, Finish::Stop(plus::EXTERNAL_CLOSE.into())),
            (again, Finish::Stop(plus::EXTERNAL_CLOSE.into())),
        ],
        seen: Default::default(),
    };
    let train = r1s_agent::LoopConfig {
        protocol: Protocol::R1SearcherPlus,
        max_retrievals: 1,
        ..r1s_agent::LoopConfig::training(3)
    };
    let x = r1s_agent::run(&policy, &retriever, std::slice::from_ref(&prompt), &train).unwrap().remove(0);
    assert_eq!((x.queries.len(), x.stop_reason_final.as_str()), (1, "max_searches"));
    assert!(x.sol.ends_with(again), "{}", x.sol);
    assert!(plus::format_problem(&x.sol).is_some());
    assert!(policy.seen.lock().unwrap().iter().all(|(_, stop)| stop == &vec!["</external>".to_owned()]));

    // a policy that answers from memory: no search, RC 0, and the group reward beside one that searched
    let memo =
        " <internal> Barbara Strozzi was a Venetian composer. </internal> </think>\n\n<answer> Italian </answer>";
    let policy = Scripted { turns: vec![(memo, Finish::Eos)], seen: Default::default() };
    let m = r1s_agent::run(&policy, &retriever, std::slice::from_ref(&prompt), &cfg).unwrap().remove(0);
    assert!(m.queries.is_empty() && m.retrieved.is_empty());
    assert_eq!((m.pred.as_str(), m.stop_reason_final.as_str()), ("Italian", "finished"));
    let summary = r1s_agent::Summary::of([&m, &t].map(|x| r1s_agent::Row {
        pred: &x.pred,
        golds: &gold,
        sol: Some(&x.sol),
        searches: None,
        prompt: &x.prompt,
        reward: None,
        protocol: Protocol::R1SearcherPlus,
        judge: None,
    }));
    assert_eq!((summary.mean_retrievals, summary.mean_internal, summary.zero_search), (0.5, 1.0, 50.0));
    assert_eq!(summary.format_bad, 0.0);
    let alone = r1s_agent::Summary::of([r1s_agent::Row {
        pred: &m.pred,
        golds: &gold,
        sol: Some(&m.sol),
        searches: None,
        prompt: &m.prompt,
        reward: None,
        protocol: Protocol::R1SearcherPlus,
        judge: None,
    }]);
    assert_eq!((alone.mean_retrievals, alone.zero_search, alone.cover_em), (0.0, 100.0, 100.0));
    let r = r1s_agent::reward::score_group(
        Reward::R1SearcherPlus,
        &GroupReward::default(),
        &[(&m.prompt, &m.sol), (&t.prompt, &t.sol)],
        &gold,
    );
    // counts {0, 1}: σ² = 0.25, bonus 0.5 to the rollout that answered from memory
    assert_eq!(r, vec![1.5, 1.0]);
}
