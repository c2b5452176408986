//! `nextbest train`: fits each offer's response model from the journal and writes a new
//! catalog whose `propensity` terms carry the learned models as rule-language formulas.
//!
//! Per offer, the rows are the slots where it was shown: its inputs ([`Encoder`]), whether
//! it was accepted within the window, and a weight of 1/p (the logged propensity, clipped
//! at [`MAX_WEIGHT`] and normalised to mean 1), so the model describes everyone the offer
//! could have been shown to, not only those the old scores favoured. The L2 penalty is
//! chosen from [`LAMBDAS`] by the weighted log loss on a held-out fifth of the decisions
//! (split by a hash of the decision id and the seed), then the model is refitted on all.
//! An offer with too few rows or accepts keeps its hand-written propensity.
//!
//! The output directory is a copy of the rules with only the trained offers'
//! `propensity:` entries replaced (comments and everything else kept); it is loaded and
//! checked before `train` reports success.

use std::path::Path;

use serde::Serialize;

use super::LearnError;
use super::model::{Logistic, Rows, expression};
use super::replay::read;
use crate::catalog::Catalog;
use crate::journal::join::Reward;
use crate::schema::EventKind;

/// The largest importance weight a row gets.
pub const MAX_WEIGHT: f64 = 50.0;
/// The L2 penalties tried.
pub const LAMBDAS: [f64; 4] = [0.3, 3.0, 30.0, 300.0];

#[derive(Debug, Clone)]
pub struct TrainOptions {
    pub window: i64,
    pub range: (Option<i64>, Option<i64>),
    pub seed: u64,
    /// An offer needs this many shown slots...
    pub min_rows: usize,
    /// ...and this many accepts to be trained.
    pub min_accepts: usize,
}

impl Default for TrainOptions {
    fn default() -> Self {
        TrainOptions {
            window: 7 * 86_400_000,
            range: (None, None),
            seed: 0,
            min_rows: 200,
            min_accepts: 10,
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Trained {
    pub offer: String,
    pub rows: usize,
    pub accepts: usize,
    /// The chosen L2 penalty, or none when the offer was not trained.
    pub lambda: Option<f64>,
    /// Held-out weighted log loss of the model, and of the base rate alone.
    pub holdout_loss: Option<f64>,
    pub baseline_loss: Option<f64>,
    /// Why the offer kept its hand-written propensity.
    pub skipped: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    pub decisions: u64,
    pub slots: usize,
    pub inputs: usize,
    pub offers: Vec<Trained>,
    pub out: String,
}

fn holdout(seed: u64, decision: u128) -> bool {
    xxhash_rust::xxh3::xxh3_64_with_seed(&decision.to_le_bytes(), seed ^ 0x7261_696e)
        .is_multiple_of(5)
}

/// Trains from the journal in `data` on the catalog in `rules`, writing the new catalog
/// to `out` (which must not exist or be empty).
pub fn train(
    data: &Path,
    rules: &Path,
    out: &Path,
    options: &TrainOptions,
) -> Result<Summary, LearnError> {
    if out.exists() && std::fs::read_dir(out)?.next().is_some() {
        return Err(LearnError::OutputNotEmpty(out.to_path_buf()));
    }
    let catalog = Catalog::load(rules).map_err(LearnError::Catalog)?;
    let log = read(
        data,
        &catalog,
        &[],
        Reward::Kind(EventKind::Accept),
        options.window,
        options.range,
    )?;
    let encoder = log.encoder(&catalog.schema);
    let mut offers = Vec::new();
    let mut formulas = Vec::new();
    for offer in &catalog.offers {
        let mut report = Trained {
            offer: offer.id.clone(),
            rows: 0,
            accepts: 0,
            lambda: None,
            holdout_loss: None,
            baseline_loss: None,
            skipped: None,
        };
        if !offer.propensity.models().is_empty() {
            // Learned online already: a batch formula would replace the model.
            report.skipped = Some("its propensity is an adaptive model's".into());
            offers.push(report);
            continue;
        }
        let Some(o) = log.offers.get(&offer.id) else {
            report.skipped = Some("never shown".into());
            offers.push(report);
            continue;
        };
        // One more input than the encoder's: the slot, so that offers mostly shown low on
        // the page are not judged less appealing for it; the formula is the first slot's.
        let width = encoder.len() + 1;
        let (mut fit, mut check, mut all) = (Rows::new(width), Rows::new(width), Rows::new(width));
        for s in log.slots.iter().filter(|s| s.chosen == o) {
            let y = f64::from(u8::from(s.reward > 0.0));
            let w = (1.0 / s.logged_probability()).min(MAX_WEIGHT);
            for rows in [
                &mut all,
                if holdout(options.seed, s.decision) {
                    &mut check
                } else {
                    &mut fit
                },
            ] {
                encoder.encode(&s.customer_values, &s.context_values, &mut rows.x);
                rows.x.push(f64::from(s.slot));
                rows.y.push(y);
                rows.w.push(w);
            }
        }
        for rows in [&mut fit, &mut check, &mut all] {
            let mean = rows.w.iter().sum::<f64>() / rows.w.len().max(1) as f64;
            rows.w.iter_mut().for_each(|w| *w /= mean);
        }
        report.rows = all.len();
        report.accepts = all.y.iter().filter(|y| **y > 0.0).count();
        if report.rows < options.min_rows || report.accepts < options.min_accepts {
            report.skipped = Some(format!(
                "{} shown slots and {} accepts; training needs {} and {}",
                report.rows, report.accepts, options.min_rows, options.min_accepts
            ));
            offers.push(report);
            continue;
        }
        let mut best: Option<(f64, f64)> = None;
        for lambda in LAMBDAS {
            let loss = check.log_loss(&Logistic::fit(&fit, lambda));
            if best.is_none_or(|(_, l)| loss < l) {
                best = Some((lambda, loss));
            }
        }
        let (lambda, loss) = best.expect("LAMBDAS is not empty");
        let base = Logistic::fit(
            &Rows {
                x: vec![0.0; fit.len() * fit.width],
                ..fit.clone()
            },
            1e9,
        );
        report.lambda = Some(lambda);
        report.holdout_loss = Some(loss);
        report.baseline_loss = Some(check.log_loss(&base));
        let model = Logistic::fit(&all, lambda);
        formulas.push((
            offer.id.clone(),
            report.rows,
            report.accepts,
            lambda,
            expression(&encoder, &model),
        ));
        offers.push(report);
    }
    copy_rules(rules, out)?;
    for (id, rows, accepts, lambda, formula) in &formulas {
        let note = format!(
            "Trained by `nextbest train` from {rows} shown slots ({accepts} accepts), L2 penalty {lambda}."
        );
        replace_propensity(&out.join("offers"), id, formula, &note)?;
    }
    Catalog::load(out).map_err(|errors| LearnError::TrainedCatalog {
        out: out.to_path_buf(),
        errors,
    })?;
    Ok(Summary {
        decisions: log.decisions,
        slots: log.slots.len(),
        inputs: encoder.len(),
        offers,
        out: out.display().to_string(),
    })
}

/// The summary as a terminal table.
pub fn render(s: &Summary) -> String {
    use std::fmt::Write;
    let mut out = format!(
        "{} decisions, {} shown slots, {} model inputs per offer\n\n{:<24} {:>7} {:>8} {:>7} {:>13} {:>13}\n",
        s.decisions,
        s.slots,
        s.inputs,
        "offer",
        "slots",
        "accepts",
        "L2",
        "held-out loss",
        "base rate"
    );
    for o in &s.offers {
        match (&o.skipped, o.lambda, o.holdout_loss, o.baseline_loss) {
            (None, Some(l), Some(h), Some(b)) => {
                let _ = writeln!(
                    out,
                    "{:<24} {:>7} {:>8} {:>7} {:>13.5} {:>13.5}",
                    o.offer, o.rows, o.accepts, l, h, b
                );
            }
            (reason, ..) => {
                let _ = writeln!(
                    out,
                    "{:<24} {:>7} {:>8}   kept as written: {}",
                    o.offer,
                    o.rows,
                    o.accepts,
                    reason.as_deref().unwrap_or("")
                );
            }
        }
    }
    let _ = writeln!(
        out,
        "\nthe trained catalog is in `{}` (it loads and checks)",
        s.out
    );
    out
}

/// Copies the catalog's files (YAML and whatever sits beside them) from `from` to `to`.
fn copy_rules(from: &Path, to: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(to)?;
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        let target = to.join(entry.file_name());
        if entry.file_type()?.is_dir() {
            copy_rules(&entry.path(), &target)?;
        } else {
            std::fs::copy(entry.path(), target)?;
        }
    }
    Ok(())
}

/// Sets offer `id`'s propensity to `formula` in the offer files under `dir` and its
/// `context_weight`, if it has one, to 1 (the model reads the context itself), keeping
/// every other line.
fn replace_propensity(dir: &Path, id: &str, formula: &str, note: &str) -> Result<(), LearnError> {
    let mut files: Vec<_> = std::fs::read_dir(dir)?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "yaml" || x == "yml"))
        .collect();
    files.sort();
    for path in files {
        let text = std::fs::read_to_string(&path)?;
        if let Some(new) = rewrite(&text, id, "propensity", formula, note, true) {
            let note = "The trained propensity reads the context itself.";
            let new = rewrite(&new, id, "context_weight", "1.0", note, false).unwrap_or(new);
            std::fs::write(&path, new)?;
            return Ok(());
        }
    }
    Err(LearnError::OfferNotInFiles {
        offer: id.to_string(),
        dir: dir.to_path_buf(),
    })
}

fn indent(line: &str) -> usize {
    line.len() - line.trim_start().len()
}

/// `text` with offer `id`'s `key` replaced by `formula` (added after its `id` when
/// `add` says so and it has none), or `None` if the offer is not in it.
fn rewrite(
    text: &str,
    id: &str,
    key: &str,
    formula: &str,
    note: &str,
    add: bool,
) -> Option<String> {
    let lines: Vec<&str> = text.lines().collect();
    // The offer starts at `- id: <id>`; its keys sit two columns right of the dash.
    let start = lines.iter().position(|l| {
        let t = l.trim_start();
        t.strip_prefix("- id:")
            .is_some_and(|rest| rest.trim().trim_matches(|c| c == '"' || c == '\'') == id)
    })?;
    let key_indent = indent(lines[start]) + 2;
    let end = (start + 1..lines.len())
        .find(|&i| {
            let l = lines[i];
            !l.trim().is_empty() && !l.trim_start().starts_with('#') && indent(l) < key_indent
        })
        .unwrap_or(lines.len());
    let pad = " ".repeat(key_indent);
    let mut block = vec![format!("{pad}# {note}"), format!("{pad}{key}: |-")];
    block.extend(formula.lines().map(|l| format!("{pad}  {l}")));
    let mut out: Vec<String> = lines[..start + 1].iter().map(|s| s.to_string()).collect();
    let mut i = start + 1;
    let mut placed = false;
    while i < end {
        let l = lines[i];
        if !placed
            && indent(l) == key_indent
            && l.trim_start()
                .strip_prefix(key)
                .is_some_and(|r| r.starts_with(':'))
        {
            // Skip the key and its continuation lines (more indented, or blank).
            i += 1;
            while i < end && (lines[i].trim().is_empty() || indent(lines[i]) > key_indent) {
                i += 1;
            }
            out.extend(block.iter().cloned());
            placed = true;
            continue;
        }
        out.push(l.to_string());
        i += 1;
    }
    if !placed && !add {
        return Some(text.to_string());
    }
    if !placed {
        let at = start + 1;
        for (k, b) in block.into_iter().enumerate() {
            out.insert(at + k, b);
        }
    }
    out.extend(lines[end..].iter().map(|s| s.to_string()));
    let mut s = out.join("\n");
    if text.ends_with('\n') {
        s.push('\n');
    }
    Some(s)
}

#[cfg(test)]
mod tests {
    use super::rewrite;

    #[test]
    fn rewrites_only_the_named_offers_propensity() {
        let text = "offers:\n  - id: a\n    # keep me\n    propensity: >\n      0.1 +\n      0.2\n    value: 3\n  - id: b\n    propensity: 0.5\n";
        let out = rewrite(
            text,
            "a",
            "propensity",
            "sigmoid(1.0\n  + 2.0)",
            "Trained.",
            true,
        )
        .expect("found");
        assert_eq!(
            out,
            "offers:\n  - id: a\n    # keep me\n    # Trained.\n    propensity: |-\n      sigmoid(1.0\n        + 2.0)\n    value: 3\n  - id: b\n    propensity: 0.5\n"
        );
        let out = rewrite(text, "b", "propensity", "0.25", "T.", true).expect("found");
        assert!(
            out.ends_with("  - id: b\n    # T.\n    propensity: |-\n      0.25\n"),
            "{out}"
        );
        assert!(rewrite(text, "c", "propensity", "1.0", "T.", true).is_none());
        // A key the offer does not have is left out unless asked to add it.
        assert_eq!(
            rewrite(text, "b", "weight", "1.0", "T.", false).as_deref(),
            Some(text)
        );
        // An offer without a propensity gets one after its id.
        let out = rewrite(
            "offers:\n- id: x\n  value: 1\n",
            "x",
            "propensity",
            "0.3",
            "T.",
            true,
        )
        .expect("found");
        assert_eq!(
            out,
            "offers:\n- id: x\n  # T.\n  propensity: |-\n    0.3\n  value: 1\n"
        );
    }
}
