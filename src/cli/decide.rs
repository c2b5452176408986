//! `nextbest decide`: one decision, from a customer file and context flags, printed as
//! JSON.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context as _, anyhow, bail};
use serde_json::json;

use super::{RulesDir, parse_time};
use crate::catalog::{Catalog, MAX_SLOTS};
use crate::decide::{self, Context, Decision, Options};
use crate::schema::{Value, time};
use crate::state::{self, CustomerState, Event, EventKind, History, HistoryLimits};

#[derive(Debug, clap::Args)]
pub(super) struct DecideArgs {
    #[command(flatten)]
    rules: RulesDir,
    /// The placement id, e.g. `email.hero`.
    #[arg(long)]
    placement: String,
    /// The customer as JSON (`-` for stdin): `{"id": "...", "attributes": {...},
    /// "history": [{"at": "...", "offer": "...", "channel": "...", "kind": "impression"}]}`.
    /// A file without `id`, or no file, is an anonymous caller.
    #[arg(long)]
    customer: Option<PathBuf>,
    /// A context attribute, `name=value`; repeatable.
    #[arg(long = "context", value_name = "NAME=VALUE")]
    context: Vec<String>,
    /// The decision time (RFC 3339); default now.
    #[arg(long)]
    at: Option<String>,
    /// Fill this many slots (1 to 64) instead of the placement's number.
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=i64::from(MAX_SLOTS)))]
    slots: Option<u32>,
    /// Say for every offer of the placement where it stopped and why.
    #[arg(long)]
    explain: bool,
}

impl DecideArgs {
    pub(super) fn run(self) -> anyhow::Result<ExitCode> {
        let catalog = self.rules.load()?;
        let placement = &self.placement;
        let Some(p) = catalog.placement(placement) else {
            let ids: Vec<&str> = catalog.placements.iter().map(|p| p.id.as_str()).collect();
            bail!(
                "unknown placement `{placement}`; the catalog has {}",
                ids.join(", ")
            );
        };
        let now = match &self.at {
            Some(text) => {
                let at = parse_time(text)?;
                time::decision("--at", at)?;
                at
            }
            None => crate::setup::now_ms(),
        };
        let customer = match &self.customer {
            None => CustomerState::anonymous(vec![]),
            Some(path) => read_customer(&catalog, path, now)?,
        };
        let mut values = vec![Value::Missing; catalog.schema.context.len()];
        for pair in &self.context {
            let (name, value) = pair
                .split_once('=')
                .ok_or_else(|| anyhow!("`--context {pair}`: expected NAME=VALUE"))?;
            let (slot, value) =
                state::parse_text_attribute("context", &catalog.schema.context, name, value)?;
            values[slot as usize] = value;
        }
        if let Some(given) = Context::conflicting_channel(&catalog, p, &values) {
            bail!(
                "`--context channel={given}`: placement `{placement}` is in channel `{}`, and the channel is the placement's (leave it out)",
                catalog.placements[p].channel
            );
        }
        let context = Context::for_placement(&catalog, p, values);
        let options = Options {
            explain: self.explain,
            slots: self.slots,
            ..Options::new(crate::db::decision_id(now))
        };
        let decision = decide::decide(&catalog, &customer, &context, p, now, &options);
        println!("{:#}", decision_json(&catalog, &customer, &decision));
        Ok(ExitCode::SUCCESS)
    }
}

/// The customer file of `nextbest decide`.
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct CustomerFile {
    id: Option<String>,
    #[serde(default)]
    attributes: serde_json::Map<String, serde_json::Value>,
    #[serde(default)]
    history: Vec<HistoryEntry>,
}

#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct HistoryEntry {
    at: String,
    offer: String,
    channel: String,
    kind: EventKind,
}

/// A customer file, its history trimmed as of the decision time `now`.
fn read_customer(catalog: &Catalog, path: &Path, now: i64) -> anyhow::Result<CustomerState> {
    let text = if path.as_os_str() == "-" {
        std::io::read_to_string(std::io::stdin()).context("reading the customer from stdin")?
    } else {
        std::fs::read_to_string(path).with_context(|| format!("reading `{}`", path.display()))?
    };
    let file: CustomerFile = serde_json::from_str(&text)
        .with_context(|| format!("`{}` is not a customer file", path.display()))?;
    let attributes =
        state::parse_attributes("customer", &catalog.schema.customer, &file.attributes)?;
    let mut history = History::default();
    let limits = HistoryLimits::for_catalog(catalog);
    for (i, e) in file.history.iter().enumerate() {
        let at = parse_time(&e.at).with_context(|| format!("history event {i}"))?;
        let group = catalog
            .offer(&e.offer)
            .and_then(|o| catalog.offers[o].group.as_deref());
        history.record(
            Event::new(at, &e.offer, group, &e.channel, e.kind),
            limits,
            now,
        );
    }
    Ok(CustomerState {
        id: file.id,
        attributes,
        history,
        seq: 0,
    })
}

fn rfc3339(ms: i64) -> String {
    jiff::Timestamp::from_millisecond(ms).map_or_else(|_| ms.to_string(), |t| t.to_string())
}

/// A decision as `nextbest decide` prints it (docs/decisions.md).
fn decision_json(catalog: &Catalog, customer: &CustomerState, d: &Decision) -> serde_json::Value {
    let p = &catalog.placements[d.placement];
    let experiment = d.experiment.map(|e| &catalog.experiments[e]);
    let offers: Vec<_> = d
        .offers
        .iter()
        .map(|s| {
            let o = &catalog.offers[s.offer];
            json!({
                "slot": s.slot,
                "offer": o.id,
                "name": o.name,
                "score": s.score,
                "propensity": s.propensity,
                "explored": s.explored,
                "fallback": s.fallback,
                "content": o.content.get(&d.placement),
            })
        })
        .collect();
    let candidates: Vec<_> = d
        .candidates
        .iter()
        .map(|c| json!({ "offer": catalog.offers[c.offer].id, "score": c.score }))
        .collect();
    let mut out = json!({
        "decision_id": d.id.to_string(),
        "at": rfc3339(d.at),
        "catalog_version": &*d.catalog_version,
        "customer": customer.id,
        "placement": p.id,
        "channel": p.channel,
        "experiment": experiment.map(|e| e.id.as_str()),
        "arm": experiment.zip(d.arm).map(|(e, a)| e.arms[a].id.as_str()),
        "epsilon": d.epsilon,
        "offers": offers,
        "candidates": candidates,
        "suppressed": d.suppressed,
    });
    if let Some(explanation) = &d.explanation {
        out["explanation"] = explanation
            .iter()
            .map(|e| json!({ "offer": catalog.offers[e.offer].id, "outcome": e.outcome.to_string() }))
            .collect();
    }
    out
}
