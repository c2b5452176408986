//! The data directory's commands: `import`, `export`, `compact` and `forget`.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context as _, anyhow, bail};
use clap::ValueEnum;

use super::{ClusterJournal, DataDir, RulesDir, TimeRange, Window, progress_bar};
use crate::db::Db;
use crate::db::import::{self, ImportFormat};
use crate::journal::export::{self, ExportOptions};
use crate::setup::now_ms;

#[derive(Debug, clap::Args)]
pub(super) struct ImportArgs {
    #[command(flatten)]
    rules: RulesDir,
    #[command(flatten)]
    data: DataDir,
    /// Check the whole file first; import nothing if any line is bad.
    #[arg(long)]
    strict: bool,
    /// One customer per line (`.jsonl`) or row (`.csv`); `-` for JSON Lines on stdin.
    file: PathBuf,
}

impl ImportArgs {
    /// Exits 1 if any line was bad (with `--strict`, having imported nothing).
    pub(super) fn run(self) -> anyhow::Result<ExitCode> {
        let db = self.data.open(&self.rules)?;
        let (file, strict) = (&self.file, self.strict);
        let stdin = file.as_os_str() == "-";
        let total = if stdin {
            0
        } else {
            std::fs::metadata(file)
                .with_context(|| format!("reading `{}`", file.display()))?
                .len()
        };
        let bar = progress_bar(total, "importing");
        let started = std::time::Instant::now();
        let format = ImportFormat::of_path(file);
        let mut stdin_used = false;
        let report = import::import(
            &db,
            format,
            || -> std::io::Result<Box<dyn std::io::Read>> {
                if stdin {
                    if std::mem::replace(&mut stdin_used, true) {
                        return Err(std::io::Error::other("--strict cannot read stdin twice"));
                    }
                    Ok(Box::new(std::io::stdin().lock()))
                } else {
                    Ok(Box::new(std::fs::File::open(file)?))
                }
            },
            strict,
            now_ms(),
            &mut |bytes| bar.set_position(bytes),
        )
        .with_context(|| format!("importing `{}`", file.display()))?;
        bar.finish_and_clear();
        for e in report.errors.iter().take(100) {
            eprintln!("{}:{e}", file.display());
        }
        if report.errors.len() > 100 {
            eprintln!("... and {} more bad lines", report.errors.len() - 100);
        }
        let secs = started.elapsed().as_secs_f64();
        if strict && !report.errors.is_empty() {
            eprintln!(
                "imported nothing: {} bad lines (--strict)",
                report.errors.len()
            );
            return Ok(ExitCode::FAILURE);
        }
        eprintln!(
            "imported {} customers, {} bad lines, in {secs:.1}s ({:.0}/s); {} customers in `{}`",
            report.imported,
            report.errors.len(),
            report.imported as f64 / secs.max(1e-9),
            db.store().len(),
            self.data.path.display()
        );
        db.close()?;
        Ok(if report.errors.is_empty() {
            ExitCode::SUCCESS
        } else {
            ExitCode::FAILURE
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum ExportFormat {
    Dsjson,
    Obp,
}

#[derive(Debug, clap::Args)]
pub(super) struct ExportArgs {
    #[command(flatten)]
    rules: RulesDir,
    #[command(flatten)]
    data: DataDir,
    #[command(flatten)]
    cluster: ClusterJournal,
    /// `dsjson` (Vowpal Wabbit, --cb_explore_adf) or `obp` (Open Bandit Pipeline .npz).
    #[arg(long, value_enum)]
    format: ExportFormat,
    #[command(flatten)]
    range: TimeRange,
    /// The reward of a shown offer: an outcome kind (1 if it happened, else 0) or
    /// `value` (the sum of its outcomes' values).
    #[arg(long, default_value = "accept")]
    reward: String,
    #[command(flatten)]
    window: Window,
    #[arg(long)]
    out: PathBuf,
}

impl ExportArgs {
    pub(super) fn run(self) -> anyhow::Result<ExitCode> {
        let (from, to) = self.range.ms()?;
        let options = ExportOptions {
            format: match self.format {
                ExportFormat::Dsjson => export::Format::Dsjson,
                ExportFormat::Obp => export::Format::Obp,
            },
            from,
            to,
            reward: self
                .reward
                .parse()
                .map_err(|e: String| anyhow!("--reward: {e}"))?,
            window: self.window.ms()?,
        };
        let catalog = self.rules.load()?;
        let (data, _fetched) = self.cluster.data(&self.data.path)?;
        let journal = data.join("journal");
        if !journal.is_dir() {
            bail!("`{}` has no journal", data.display());
        }
        let out = &self.out;
        let bar = progress_bar(export::journal_bytes(&journal)?, "exporting");
        let summary = export::export(&journal, &catalog, &options, out, &mut |b| {
            bar.set_position(b)
        })
        .with_context(|| format!("exporting to `{}`", out.display()))?;
        bar.finish_and_clear();
        println!("{}", serde_json::to_string_pretty(&summary)?);
        Ok(ExitCode::SUCCESS)
    }
}

#[derive(Debug, clap::Args)]
pub(super) struct CompactArgs {
    #[command(flatten)]
    rules: RulesDir,
    #[command(flatten)]
    data: DataDir,
}

impl CompactArgs {
    pub(super) fn run(self) -> anyhow::Result<ExitCode> {
        compact(self.data.open(&self.rules)?, &[])
    }
}

#[derive(Debug, clap::Args)]
pub(super) struct ForgetArgs {
    #[command(flatten)]
    rules: RulesDir,
    #[command(flatten)]
    data: DataDir,
    #[arg(required = true)]
    customers: Vec<String>,
}

impl ForgetArgs {
    pub(super) fn run(self) -> anyhow::Result<ExitCode> {
        compact(self.data.open(&self.rules)?, &self.customers)
    }
}

/// Forgets `forget`, then compacts (which erases their journal records) and closes.
fn compact(db: Db, forget: &[String]) -> anyhow::Result<ExitCode> {
    for id in forget {
        if !db.forget(id, now_ms())? {
            eprintln!("`{id}` was not in the state; its journal records are erased anyway");
        }
    }
    let done = db.compact(now_ms())?;
    eprintln!(
        "snapshot `{}` with {} customers; erased {} records of {} forgotten customers from {} segments",
        done.snapshot.display(),
        done.customers,
        done.records_erased,
        done.forgotten,
        done.segments_rewritten
    );
    db.close()?;
    Ok(ExitCode::SUCCESS)
}
