//! The learning loop's commands: `simulate`, `evaluate`, `train` and `report`.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{anyhow, bail};

use super::{ClusterJournal, DataDir, RulesDir, TimeRange, Window, progress_bar, write_file};
use crate::db::DbOptions;
use crate::learn::scenario::Scenario;
use crate::learn::{evaluate, report, simulate, train};
use crate::setup::{load_catalog, open_data};

const DAY: i64 = 86_400_000;

#[derive(Debug, clap::Args)]
pub(super) struct SimulateArgs {
    /// The scenario: population, traffic and true response model (YAML).
    #[arg(long)]
    scenario: PathBuf,
    #[command(flatten)]
    rules: RulesDir,
    /// A new or empty directory.
    #[arg(long)]
    data: PathBuf,
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Override the scenario's number of customers.
    #[arg(long)]
    customers: Option<u64>,
    /// Override the scenario's number of days.
    #[arg(long)]
    days: Option<u64>,
    /// Print the summary as JSON.
    #[arg(long)]
    json: bool,
    /// Retrain every so many whole days (`7d`): `train` on the journal of that many days
    /// before, and take the result into the node; off by default.
    #[arg(long, value_name = "DURATION", value_parser = super::duration)]
    retrain_every: Option<std::time::Duration>,
    /// With --retrain-every, take a candidate only if the lower bound of its 95% interval
    /// (SNIPS, value per slot) beats the running catalog's measured value on those days.
    #[arg(long, requires = "retrain_every")]
    gate: bool,
}

impl SimulateArgs {
    pub(super) fn run(self) -> anyhow::Result<ExitCode> {
        let data = &self.data;
        if data.exists() && std::fs::read_dir(data)?.next().is_some() {
            bail!(
                "`{}` is not empty: simulate writes a fresh data directory",
                data.display()
            );
        }
        let catalog = self.rules.load()?;
        let mut scenario = Scenario::load(&self.scenario, &catalog)?;
        if self.customers == Some(0) || self.days == Some(0) {
            bail!("--customers and --days must be positive");
        }
        scenario.customers = self.customers.unwrap_or(scenario.customers);
        scenario.days = self.days.unwrap_or(scenario.days);
        // A simulation's journal needs no fsync: it is rebuilt from the seed if lost.
        let mut options = DbOptions::default();
        options.writer.sync = crate::storage::writer::SyncMode::Never;
        let (db, _) = open_data(data, Arc::clone(&catalog), options)?;
        let retraining = match self.retrain_every {
            None => None,
            Some(every) => {
                let ms = every.as_millis() as i64;
                if ms < DAY || ms % DAY != 0 {
                    bail!("--retrain-every: must be a whole number of days, such as 7d");
                }
                Some(simulate::Retraining {
                    every_days: (ms / DAY) as u64,
                    options: crate::learn::retrain::RetrainOptions {
                        window: ms,
                        gate: self.gate,
                        seed: self.seed,
                    },
                    rules: self.rules.path.clone(),
                    work: data.join("retrained"),
                })
            }
        };
        let bar = progress_bar(scenario.days, "days");
        let summary = simulate::run_with(
            &db,
            &scenario,
            self.seed,
            retraining.as_ref(),
            &mut |day, _| {
                bar.set_position(day);
            },
        )?;
        bar.finish_and_clear();
        db.close()?;
        if self.json {
            println!("{}", serde_json::to_string_pretty(&summary)?);
        } else {
            println!(
                "seed {}: {} customers over {} days: {} decisions ({} showed nothing), {} impressions, \
                 {} accepts worth {:.1} (expected {:.1}); journal in `{}`",
                summary.seed,
                summary.customers,
                summary.days,
                summary.decisions,
                summary.empty,
                summary.impressions,
                summary.accepts,
                summary.value,
                summary.expected_value,
                data.display()
            );
        }
        Ok(ExitCode::SUCCESS)
    }
}

#[derive(Debug, clap::Args)]
pub(super) struct EvaluateArgs {
    #[command(flatten)]
    data: DataDir,
    #[command(flatten)]
    cluster: ClusterJournal,
    /// A candidate catalog directory; repeatable.
    #[arg(long = "rules", required = true)]
    candidates: Vec<PathBuf>,
    /// The catalog the journal was logged with (its champion alone is judged too).
    #[arg(long, default_value = "rules")]
    baseline: PathBuf,
    /// The reward of a shown slot: an outcome kind (1 if it happened) or `value`.
    #[arg(long, default_value = "accept")]
    reward: String,
    #[command(flatten)]
    window: Window,
    #[command(flatten)]
    range: TimeRange,
    /// The simulated data's scenario: also print each policy's true value.
    #[arg(long)]
    scenario: Option<PathBuf>,
    /// Splits the decisions for cross-fitting the reward model.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Write the evaluation as JSON here (`-` for stdout, instead of the table).
    #[arg(long)]
    json: Option<PathBuf>,
}

impl EvaluateArgs {
    pub(super) fn run(self) -> anyhow::Result<ExitCode> {
        let options = evaluate::EvaluateOptions {
            reward: self
                .reward
                .parse()
                .map_err(|e: String| anyhow!("--reward: {e}"))?,
            window: self.window.ms()?,
            range: self.range.ms()?,
            seed: self.seed,
            ..Default::default()
        };
        let (data, _fetched) = self.cluster.data(&self.data.path)?;
        let data = &data;
        if !data.is_dir() {
            bail!("`{}` is not a data directory", data.display());
        }
        let scenario = match &self.scenario {
            Some(path) => Some(Scenario::load(path, &*load_catalog(&self.baseline)?)?),
            None => None,
        };
        let candidates: Vec<&Path> = self.candidates.iter().map(PathBuf::as_path).collect();
        let evaluation = evaluate::evaluate(
            data,
            &self.baseline,
            &candidates,
            scenario.as_ref(),
            &options,
        )?;
        match &self.json {
            Some(path) if path.as_os_str() == "-" => {
                println!("{}", serde_json::to_string_pretty(&evaluation)?);
            }
            Some(path) => {
                write_file(path, serde_json::to_string_pretty(&evaluation)?)?;
                print!("{}", evaluate::render(&evaluation));
            }
            None => print!("{}", evaluate::render(&evaluation)),
        }
        Ok(ExitCode::SUCCESS)
    }
}

#[derive(Debug, clap::Args)]
#[command(mut_arg("rules", |a| a.help("The catalog to start from (the one the journal was logged with)")))]
pub(super) struct TrainArgs {
    #[command(flatten)]
    data: DataDir,
    #[command(flatten)]
    cluster: ClusterJournal,
    #[command(flatten)]
    rules: RulesDir,
    /// A new or empty directory for the trained catalog.
    #[arg(long)]
    out: PathBuf,
    #[command(flatten)]
    window: Window,
    #[command(flatten)]
    range: TimeRange,
    /// Splits the decisions into training and held-out rows.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Print the summary as JSON.
    #[arg(long)]
    json: bool,
}

impl TrainArgs {
    pub(super) fn run(self) -> anyhow::Result<ExitCode> {
        let options = train::TrainOptions {
            window: self.window.ms()?,
            range: self.range.ms()?,
            seed: self.seed,
            ..Default::default()
        };
        let (data, _fetched) = self.cluster.data(&self.data.path)?;
        let summary = train::train(&data, &self.rules.path, &self.out, &options)?;
        if self.json {
            println!("{}", serde_json::to_string_pretty(&summary)?);
        } else {
            print!("{}", train::render(&summary));
        }
        Ok(ExitCode::SUCCESS)
    }
}

#[derive(Debug, clap::Args)]
#[command(mut_arg("rules", |a| a.help("The catalog (which arm of each experiment is the champion: the first)")))]
pub(super) struct ReportArgs {
    #[command(flatten)]
    data: DataDir,
    #[command(flatten)]
    cluster: ClusterJournal,
    #[command(flatten)]
    rules: RulesDir,
    #[command(flatten)]
    range: TimeRange,
    /// Also write the report as a self-contained HTML page with plots.
    #[arg(long)]
    html: Option<PathBuf>,
    /// Print the report as JSON instead of tables.
    #[arg(long)]
    json: bool,
}

impl ReportArgs {
    pub(super) fn run(self) -> anyhow::Result<ExitCode> {
        let range = self.range.ms()?;
        let catalog = self.rules.load()?;
        let (data, _fetched) = self.cluster.data(&self.data.path)?;
        let r = report::report(&data, &catalog, range)?;
        if let Some(path) = &self.html {
            write_file(path, report::html(&r))?;
        }
        if self.json {
            println!("{}", serde_json::to_string_pretty(&r)?);
        } else {
            print!("{}", report::render(&r));
            if let Some(path) = &self.html {
                println!("\nHTML report: {}", path.display());
            }
        }
        Ok(ExitCode::SUCCESS)
    }
}
