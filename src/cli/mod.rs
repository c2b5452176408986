//! The `nextbest` command line: one clap `Args` struct per subcommand, each with a
//! `run(self)` that does the command and says how the process exits; the flags several
//! commands share (the rules and data directories, time ranges, outcome windows) are
//! structs of their own, flattened into each command that takes them, and every
//! duration goes through one value parser ([`duration`]).
//!
//! Only `main.rs` uses this module: nothing else in the library may depend on it. It
//! holds parsing, printing and progress bars; the work is the library's, below.

mod check;
mod data;
mod decide;
mod learn;
mod loadgen;
mod logging;
mod serve;

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, anyhow};
use clap::{Parser, Subcommand};

use crate::catalog::Catalog;
use crate::db::{Db, DbOptions};

/// The command line, parsed.
#[derive(Debug, Parser)]
#[command(
    name = "nextbest",
    version,
    about = "Real-time next-best-action decisioning"
)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

impl Cli {
    /// Runs the command; an error is printed as `error: ...` and exits 1.
    pub fn run(self) -> ExitCode {
        let run = match self.command {
            Command::Serve(args) => args.run(),
            Command::Check(args) => args.run(),
            Command::Decide(args) => args.run(),
            Command::Import(args) => args.run(),
            Command::Export(args) => args.run(),
            Command::Simulate(args) => args.run(),
            Command::Evaluate(args) => args.run(),
            Command::Train(args) => args.run(),
            Command::Report(args) => args.run(),
            Command::Compact(args) => args.run(),
            Command::Forget(args) => args.run(),
            Command::Loadgen(args) => args.run(),
        };
        run.unwrap_or_else(|e| {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        })
    }
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Serve decisions, outcomes and customers over gRPC until Ctrl-C or SIGTERM;
    /// SIGHUP reloads the catalog.
    Serve(serve::ServeArgs),
    /// Load and validate a catalog; print a summary, or every error with its location.
    Check(check::CheckArgs),
    /// Decide which offers a customer sees in a placement; prints the decision as JSON.
    Decide(decide::DecideArgs),
    /// Import customers from JSON Lines or CSV (by extension) into the data directory.
    Import(data::ImportArgs),
    /// Export the journal's decisions joined with their outcomes, for retraining and
    /// off-policy evaluation; prints a summary as JSON.
    Export(data::ExportArgs),
    /// Simulate a scenario's customers and traffic through the real decide pipeline,
    /// journal and outcomes, into a fresh data directory.
    Simulate(learn::SimulateArgs),
    /// Estimate off-policy what candidate catalogs would earn on the logged traffic:
    /// IPS, SNIPS and doubly robust with 95% intervals, beside the logging policy, a
    /// uniformly random one and the champion alone.
    Evaluate(learn::EvaluateArgs),
    /// Fit per-offer response models from the journal and write a catalog whose
    /// propensities carry them.
    Train(learn::TrainArgs),
    /// Key metrics across channels, offers and experiment arms with 95% intervals, and
    /// whether each challenger beats its champion; a table, JSON, or an HTML page.
    Report(learn::ReportArgs),
    /// Snapshot the state and erase forgotten customers from the journal.
    Compact(data::CompactArgs),
    /// Forget customers (erasure): their state goes now, their journal records at the
    /// compaction this command runs afterwards.
    Forget(data::ForgetArgs),
    /// Load a running server and measure it with HDR histograms: closed loop (callers as
    /// fast as answers come) or open loop (--rate, latency from when each request was due).
    Loadgen(loadgen::LoadgenArgs),
}

/// `--rules`: the catalog directory a command reads.
#[derive(Debug, Clone, clap::Args)]
struct RulesDir {
    /// The catalog directory (schema.yaml, placements.yaml, experiments.yaml, offers/).
    #[arg(
        id = "rules",
        long = "rules",
        value_name = "RULES",
        env = "NEXTBEST_RULES",
        default_value = "rules"
    )]
    path: PathBuf,
}

impl RulesDir {
    /// The catalog, or every error in it.
    fn load(&self) -> anyhow::Result<Arc<Catalog>> {
        Ok(crate::setup::load_catalog(&self.path)?)
    }
}

/// `--data`: the data directory (journal and snapshots) a command reads or writes.
#[derive(Debug, Clone, clap::Args)]
struct DataDir {
    /// The data directory (journal and snapshots).
    #[arg(
        id = "data",
        long = "data",
        value_name = "DATA",
        env = "NEXTBEST_DATA",
        default_value = "data"
    )]
    path: PathBuf,
}

impl DataDir {
    /// Opens the data directory on the catalog of `rules`, saying what it recovered.
    fn open(&self, rules: &RulesDir) -> anyhow::Result<Db> {
        let (db, recovery) =
            crate::setup::open_data(&self.path, rules.load()?, DbOptions::default())?;
        eprintln!("{}: {recovery}", self.path.display());
        Ok(db)
    }
}

/// `--cluster` on the commands that read a journal: read the cluster's instead of --data's.
#[derive(Debug, Clone, clap::Args)]
struct ClusterJournal {
    /// Read the journal of the cluster at these NATS servers (`nats://HOST:PORT`,
    /// comma-separated) instead of --data's: its write and decisions streams are copied
    /// to a temporary journal first (docs/cluster.md).
    #[arg(
        id = "cluster",
        long = "cluster",
        value_name = "URLS",
        value_delimiter = ','
    )]
    servers: Vec<String>,
}

impl ClusterJournal {
    /// The data directory to read: `data`, or with --cluster a temporary one holding the
    /// cluster's journal (removed when the returned guard drops).
    fn data(&self, data: &Path) -> anyhow::Result<(PathBuf, Option<tempfile::TempDir>)> {
        if self.servers.is_empty() {
            return Ok((data.to_path_buf(), None));
        }
        let dir = tempfile::tempdir().context("making a directory for the cluster's journal")?;
        let config = crate::cluster::ClusterConfig {
            servers: self.servers.clone(),
            ..crate::cluster::ClusterConfig::default()
        };
        let journal = dir.path().join("journal");
        std::fs::create_dir_all(&journal).context("making the journal directory")?;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("starting the runtime")?;
        let fetched = runtime.block_on(crate::cluster::fetch_journal(&config, &journal))?;
        eprintln!(
            "read the cluster's journal: {} writes and {} decisions",
            fetched.writes, fetched.decisions
        );
        Ok((dir.path().to_path_buf(), Some(dir)))
    }
}

/// The decisions a journal command reads, by time.
#[derive(clap::Args, Debug)]
struct TimeRange {
    /// Only decisions at or after this time (RFC 3339).
    #[arg(long, value_name = "TIME")]
    from: Option<String>,
    /// Only decisions before this time (RFC 3339).
    #[arg(long, value_name = "TIME")]
    to: Option<String>,
}

impl TimeRange {
    /// `--from` and `--to` as milliseconds.
    fn ms(&self) -> anyhow::Result<(Option<i64>, Option<i64>)> {
        let at = |flag: &str, text: &Option<String>| {
            text.as_deref()
                .map(|t| parse_time(t).with_context(|| flag.to_string()))
                .transpose()
        };
        Ok((at("--from", &self.from)?, at("--to", &self.to)?))
    }
}

/// How long after a decision its outcomes count.
#[derive(clap::Args, Debug)]
struct Window {
    /// Outcomes count within this long after their decision.
    #[arg(long = "window", value_name = "DURATION", default_value = "7d", value_parser = duration)]
    length: Duration,
}

impl Window {
    fn ms(&self) -> anyhow::Result<i64> {
        match i64::try_from(self.length.as_millis()) {
            Ok(ms) if ms > 0 => Ok(ms),
            _ => Err(anyhow!("--window: must be more than 0s")),
        }
    }
}

/// The value parser of every duration flag: `500ms`, `10s`, `30m`, `1h`, `7d`, as the
/// rule language writes them, or `0` (and `0s`), which a flag may take to mean "never".
fn duration(text: &str) -> Result<Duration, String> {
    if matches!(text.trim(), "0" | "0s") {
        return Ok(Duration::ZERO);
    }
    crate::catalog::parse_duration(text)
        .map(|ms| Duration::from_millis(ms.unsigned_abs()))
        .ok_or_else(|| format!("`{text}` is not a duration such as 500ms, 10s, 1h or 7d"))
}

/// An RFC 3339 timestamp, in ms since the epoch.
fn parse_time(text: &str) -> anyhow::Result<i64> {
    let ts: jiff::Timestamp = text
        .parse()
        .with_context(|| format!("`{text}` is not an RFC 3339 timestamp"))?;
    Ok(ts.as_millisecond())
}

/// A progress bar on stderr when it is a terminal, hidden otherwise.
fn progress_bar(total: u64, what: &str) -> indicatif::ProgressBar {
    use std::io::IsTerminal;
    if !std::io::stderr().is_terminal() {
        return indicatif::ProgressBar::hidden();
    }
    let bar = indicatif::ProgressBar::new(total);
    bar.set_style(
        indicatif::ProgressStyle::with_template(&format!(
            "{what} [{{bar:40}}] {{bytes}}/{{total_bytes}} ({{eta}})"
        ))
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    bar
}

/// Writes `text` to `path`, naming the file if that fails.
fn write_file(path: &Path, text: impl AsRef<[u8]>) -> anyhow::Result<()> {
    std::fs::write(path, text).with_context(|| format!("writing `{}`", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_command_line_is_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }

    /// The command line sits above the whole library: no module outside `cli/` names it
    /// (as rust-analyzer's tidy tests hold its layering).
    #[test]
    fn only_the_binary_uses_the_command_line() {
        fn walk(dir: &Path, offenders: &mut Vec<PathBuf>) {
            for entry in std::fs::read_dir(dir).expect("read src") {
                let path = entry.expect("entry").path();
                if path.is_dir() {
                    if path.file_name() != Some("cli".as_ref()) {
                        walk(&path, offenders);
                    }
                } else if path.extension() == Some("rs".as_ref())
                    && path.file_name() != Some("main.rs".as_ref())
                {
                    let text = std::fs::read_to_string(&path).expect("read");
                    if text.contains("crate::cli") || text.contains("super::cli") {
                        offenders.push(path);
                    }
                }
            }
        }
        let mut offenders = Vec::new();
        walk(
            &Path::new(env!("CARGO_MANIFEST_DIR")).join("src"),
            &mut offenders,
        );
        assert!(offenders.is_empty(), "{offenders:?} use cli/");
    }

    #[test]
    fn durations_are_read_as_the_rule_language_writes_them() {
        assert_eq!(duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(duration("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(duration("7d"), Ok(Duration::from_secs(7 * 86_400)));
        assert_eq!(duration("0"), Ok(Duration::ZERO));
        assert_eq!(duration("0s"), Ok(Duration::ZERO));
        for bad in ["", "10", "-1s", "ten seconds", "1x"] {
            assert!(duration(bad).is_err(), "{bad}");
        }
    }
}
