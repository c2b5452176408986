//! The `nextbest` command line: parses arguments and hands over to the library.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context as _, anyhow, bail};
use clap::{Parser, Subcommand, ValueEnum};
use nextbest::catalog::Catalog;
use nextbest::decide::{self, Context, Decision, Options};
use nextbest::state::{self, CustomerState, Event, EventKind, History, HistoryLimits};

#[derive(Debug, Parser)]
#[command(
    name = "nextbest",
    version,
    about = "Real-time next-best-action decisioning"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Load and validate a catalog; print a summary, or every error with its location.
    Check {
        /// The catalog directory (schema.yaml, placements.yaml, experiments.yaml, offers/).
        #[arg(long, env = "NEXTBEST_RULES", default_value = "rules")]
        rules: PathBuf,
        #[arg(long, value_enum, default_value_t = Format::Text)]
        format: Format,
    },
    /// Decide which offers a customer sees in a placement; prints the decision as JSON.
    Decide {
        /// The catalog directory.
        #[arg(long, env = "NEXTBEST_RULES", default_value = "rules")]
        rules: PathBuf,
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
        /// Fill this many slots instead of the placement's number.
        #[arg(long)]
        slots: Option<u32>,
        /// Say for every offer of the placement where it stopped and why.
        #[arg(long)]
        explain: bool,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Format {
    Text,
    Json,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Check { rules, format } => check(&rules, format),
        Command::Decide {
            rules,
            placement,
            customer,
            context,
            at,
            slots,
            explain,
        } => match run_decide(
            &rules,
            &placement,
            customer.as_deref(),
            &context,
            at.as_deref(),
            slots,
            explain,
        ) {
            Ok(json) => {
                println!("{json:#}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("error: {e:#}");
                ExitCode::FAILURE
            }
        },
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

fn parse_time(text: &str) -> anyhow::Result<i64> {
    let ts: jiff::Timestamp = text
        .parse()
        .with_context(|| format!("`{text}` is not an RFC 3339 timestamp"))?;
    Ok(ts.as_millisecond())
}

fn run_decide(
    rules: &std::path::Path,
    placement: &str,
    customer: Option<&std::path::Path>,
    context: &[String],
    at: Option<&str>,
    slots: Option<u32>,
    explain: bool,
) -> anyhow::Result<serde_json::Value> {
    let catalog = Catalog::load(rules).map_err(|e| {
        anyhow!(
            "the catalog in `{}` has errors:\n{}",
            rules.display(),
            e.render()
        )
    })?;
    let Some(p) = catalog.placement(placement) else {
        let ids: Vec<&str> = catalog.placements.iter().map(|p| p.id.as_str()).collect();
        bail!(
            "unknown placement `{placement}`; the catalog has {}",
            ids.join(", ")
        );
    };
    let now = match at {
        Some(text) => parse_time(text)?,
        None => jiff::Timestamp::now().as_millisecond(),
    };
    let customer = match customer {
        None => CustomerState::anonymous(vec![]),
        Some(path) => read_customer(&catalog, path)?,
    };
    let mut values = vec![nextbest::schema::Value::Missing; catalog.schema.context.len()];
    for pair in context {
        let (name, value) = pair
            .split_once('=')
            .ok_or_else(|| anyhow!("`--context {pair}`: expected NAME=VALUE"))?;
        let (slot, value) =
            state::parse_text_attribute("context", &catalog.schema.context, name, value)?;
        values[slot as usize] = value;
    }
    let context = Context::for_placement(&catalog, p, values);
    let seconds = u64::try_from(now.max(0) / 1000).unwrap_or(0);
    let nanos = u32::try_from(now.rem_euclid(1000) * 1_000_000).unwrap_or(0);
    let id = uuid::Uuid::new_v7(uuid::Timestamp::from_unix(uuid::NoContext, seconds, nanos));
    let options = Options {
        explain,
        slots,
        ..Options::new(id)
    };
    let decision = decide::decide(&catalog, &customer, &context, p, now, &options);
    Ok(decision_json(&catalog, &customer, &decision))
}

fn read_customer(catalog: &Catalog, path: &std::path::Path) -> anyhow::Result<CustomerState> {
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
        history.record(Event::new(at, &e.offer, group, &e.channel, e.kind), limits);
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

fn decision_json(catalog: &Catalog, customer: &CustomerState, d: &Decision) -> serde_json::Value {
    use serde_json::json;
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

fn check(rules: &std::path::Path, format: Format) -> ExitCode {
    match Catalog::load(rules) {
        Ok(catalog) => {
            match format {
                Format::Text => print!(
                    "{}",
                    nextbest::catalog::summary(&catalog, &rules.display().to_string())
                ),
                Format::Json => println!("{}", nextbest::catalog::summary_json(&catalog)),
            }
            ExitCode::SUCCESS
        }
        Err(errors) => {
            match format {
                Format::Text => {
                    let text = errors.render();
                    if std::io::stderr().is_terminal() {
                        eprint!("{}", highlight(&text));
                    } else {
                        eprint!("{text}");
                    }
                }
                Format::Json => println!("{}", errors.to_json()),
            }
            ExitCode::FAILURE
        }
    }
}

/// Colours `error:` red and carets with help yellow, as rustc does on a terminal.
fn highlight(text: &str) -> String {
    text.lines()
        .map(|line| {
            if let Some((head, rest)) = line.split_once(": error: ") {
                format!("\x1b[1m{head}:\x1b[0m \x1b[1;31merror:\x1b[0m \x1b[1m{rest}\x1b[0m\n")
            } else if line.trim_start_matches([' ', '|', '\t']).starts_with('^')
                || line.contains("| ^")
            {
                format!("\x1b[1;33m{line}\x1b[0m\n")
            } else {
                format!("{line}\n")
            }
        })
        .collect()
}
