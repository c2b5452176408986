//! The batch loop, automated with a gate: `train` on the recent journal, `evaluate` the
//! candidate against the catalog running, and take it only if the lower bound of its 95%
//! interval beats the running catalog's measured value. `serve --retrain-every` and
//! `simulate --retrain-every` run it; every attempt is returned with its figures, for the
//! log and the counters.

use std::path::{Path, PathBuf};

use serde::Serialize;

use super::LearnError;
use super::evaluate::{EvaluateOptions, evaluate};
use super::train::{TrainOptions, train};
use crate::journal::join::Reward;

/// What one attempt is told.
#[derive(Debug, Clone)]
pub struct RetrainOptions {
    /// Train and evaluate on the decisions of this long before `now` (ms).
    pub window: i64,
    /// Take the candidate only if it passes the gate; without, take every candidate
    /// (weekly retraining as a person would run it).
    pub gate: bool,
    pub seed: u64,
}

/// One attempt: what was trained, what the gate saw, whether it was taken.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Attempt {
    /// When it ran (ms).
    pub at: i64,
    /// The candidate's rules directory.
    pub candidate: String,
    /// Offers whose propensity was trained (the rest kept theirs).
    pub trained: usize,
    /// The candidate's estimated value per slot (SNIPS) and its 95% interval, on the
    /// window; `None` without the gate.
    pub estimate: Option<(f64, f64, f64)>,
    /// The running catalog's measured value per slot on the window.
    pub running: Option<f64>,
    pub taken: bool,
    /// Why it was not taken.
    pub reason: Option<String>,
}

/// Trains a candidate from the journal in `data` on the decisions of the window before
/// `now`, starting from the catalog running (`running`, a rules directory), writes it to
/// `out` (which must not exist or be empty), and, with the gate, evaluates it there with
/// the reward `value`.
pub fn attempt(
    data: &Path,
    running: &Path,
    out: &Path,
    now: i64,
    options: &RetrainOptions,
) -> Result<Attempt, LearnError> {
    let range = (Some(now - options.window), Some(now));
    let summary = train(
        data,
        running,
        out,
        &TrainOptions {
            range,
            seed: options.seed,
            ..TrainOptions::default()
        },
    )?;
    let trained = summary.offers.iter().filter(|o| o.lambda.is_some()).count();
    let mut attempt = Attempt {
        at: now,
        candidate: out.display().to_string(),
        trained,
        estimate: None,
        running: None,
        taken: false,
        reason: None,
    };
    if trained == 0 {
        attempt.reason = Some("no offer had enough shown slots and accepts to train".into());
        return Ok(attempt);
    }
    if !options.gate {
        attempt.taken = true;
        return Ok(attempt);
    }
    let candidate: PathBuf = out.to_path_buf();
    let e = evaluate(
        data,
        running,
        &[candidate.as_path()],
        None,
        &EvaluateOptions {
            reward: Reward::Value,
            range,
            seed: options.seed,
            ..EvaluateOptions::default()
        },
    )?;
    // Logging, uniform random, champion alone, then the candidate.
    let (Some(logging), Some(c)) = (e.policies.first(), e.policies.get(3)) else {
        attempt.reason = Some("the evaluation has no candidate".into());
        return Ok(attempt);
    };
    let snips = c.overall().estimates.snips;
    let measured = logging.on_policy.map(|m| m.value);
    attempt.estimate = Some((snips.value, snips.low, snips.high));
    attempt.running = measured;
    match measured {
        Some(m) if snips.low > m => attempt.taken = true,
        Some(m) => {
            attempt.reason = Some(format!(
                "its 95% interval's lower bound {:.3} does not beat the running catalog's {m:.3}",
                snips.low
            ))
        }
        None => attempt.reason = Some("the window has no shown slot".into()),
    }
    Ok(attempt)
}
