//! What the policy commands share (`eval`, `policy generate | train | sft | task | reject`, `reward`):
//! their argument parsers, and the policy and the retriever they open. A leaf module, so that the
//! commands borrow from it instead of from each other.

use std::path::{Path, PathBuf};

use crate::{Globals, must_exist};

/// The help of `--device` on the commands that load the policy.
pub(crate) const DEVICE_HELP: &str = "The policy's device: cpu (burn's flex backend), cuda / cuda:N (built with \
     --features cuda), tch-cpu / tch-cuda / tch-cuda:N (burn's LibTorch backend: built with --features tch)";

/// The help of `--weights` on the commands that generate with a local policy.
pub(crate) const WEIGHTS_HELP: &str = "Weights the decode steps multiply by: f32 (the model's own), bf16 or q8_0 (copies \
     packed at load: 2 or 1.125 bytes per weight, faster where decoding is bound by memory bandwidth). Prefill and the \
     scoring of given tokens keep f32; the sampled tokens' log-probabilities come from the packed decode steps. cpu \
     device only";

/// A weight format by name (`--weights`).
pub(crate) fn parse_weights(s: &str) -> Result<r1s_policy::WeightFormat, String> {
    s.parse()
}

/// A count of at least 1.
pub(crate) fn parse_count(s: &str) -> Result<usize, String> {
    match s.parse::<usize>() {
        Ok(n) if n >= 1 => Ok(n),
        _ => Err(format!("{s:?} is not a whole number >= 1")),
    }
}

/// A nucleus mass in (0, 1].
pub(crate) fn parse_top_p(s: &str) -> Result<f32, String> {
    match s.parse::<f32>() {
        Ok(x) if x > 0.0 && x <= 1.0 => Ok(x),
        _ => Err(format!("{s:?} is not a number in (0, 1]")),
    }
}

/// A share in [0, 1] (`--search-share`).
pub(crate) fn parse_share(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(x) if (0.0..=1.0).contains(&x) => Ok(x),
        _ => Err(format!("{s:?} is not a share in [0, 1]")),
    }
}

/// An agent protocol by name.
pub(crate) fn parse_protocol(s: &str) -> Result<r1s_agent::Protocol, String> {
    s.parse()
}

/// A reward by name.
pub(crate) fn parse_reward(s: &str) -> Result<r1s_agent::Reward, String> {
    s.parse()
}

/// The policy at `model` on `device` with `adapters` merged in order (a line per adapter unless
/// quiet), its decode steps on `weights`.
pub(crate) fn load_policy(
    model: &Path,
    adapters: &[PathBuf],
    device: &str,
    weights: r1s_policy::WeightFormat,
    g: &Globals,
) -> anyhow::Result<r1s_policy::Policy> {
    if model != Path::new("smollm2") {
        must_exist(model, "model file or directory")?;
    }
    for dir in adapters {
        must_exist(dir, "adapter directory")?;
    }
    let dev = r1s_policy::device(device)?;
    if !weights.runs_on(device) {
        return Err(anyhow::Error::new(crate::UsageError(format!(
            "--weights {weights} runs on --device cpu only (its kernels run on the host), not on {device}"
        ))));
    }
    let mut policy = r1s_policy::Policy::load(model, &dev)?;
    for dir in adapters {
        let m = policy.apply_adapter(dir)?;
        if !g.quiet {
            let (lo, hi) = (m.layers.first().copied().unwrap_or(0), m.layers.last().copied().unwrap_or(0));
            eprintln!(
                "merged LoRA adapter {} (r {}, scale {}; {} projections in layers {lo}–{hi})",
                dir.display(),
                m.rank,
                m.scale,
                m.modules
            );
        }
    }
    policy.set_weights(weights)?;
    Ok(policy)
}

/// An in-process retriever over `index`, or a retrieval server at `url`.
pub(crate) fn open_retriever(index: Option<&Path>, url: Option<&str>, threads: usize) -> anyhow::Result<FnRetriever> {
    let f: RetrieveFn = match (index, url) {
        (_, Some(url)) => {
            let r = r1s_agent::HttpRetriever::new(url);
            Box::new(move |q, k| Ok(r1s_core::Retriever::retrieve(&r, q, k)?))
        }
        (Some(index), None) => {
            crate::must_exist(index, "index directory")?;
            let r = r1s_retrieve::AnyRetriever::open(
                index,
                &r1s_retrieve::RetrieverOptions {
                    dense: r1s_retrieve::DenseOptions { threads, ..Default::default() },
                    ..Default::default()
                },
            )?;
            Box::new(move |q, k| Ok(r1s_core::Retriever::retrieve(&r, q, k)?))
        }
        (None, None) => anyhow::bail!("--index or --retriever-url is required"),
    };
    Ok(FnRetriever(f))
}

pub(crate) type RetrieveFn = Box<dyn Fn(&[&str], usize) -> anyhow::Result<Vec<Vec<r1s_core::Hit>>> + Send + Sync>;

/// Any retrieval closure as a core `Retriever` (in-process or HTTP, chosen at run time).
pub(crate) struct FnRetriever(RetrieveFn);

#[derive(Debug)]
pub(crate) struct RetrieveFailed(String);

impl std::fmt::Display for RetrieveFailed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for RetrieveFailed {}

impl r1s_core::Retriever for FnRetriever {
    type Error = RetrieveFailed;
    fn retrieve(&self, queries: &[&str], k: usize) -> Result<Vec<Vec<r1s_core::Hit>>, RetrieveFailed> {
        (self.0)(queries, k).map_err(|e| RetrieveFailed(format!("{e:#}")))
    }
}
