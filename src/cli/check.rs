//! `nextbest check`: load and validate a catalog.

use std::io::IsTerminal;
use std::process::ExitCode;

use clap::ValueEnum;

use super::RulesDir;
use crate::catalog::{self, Catalog};

#[derive(Debug, clap::Args)]
pub(super) struct CheckArgs {
    #[command(flatten)]
    rules: RulesDir,
    #[arg(long, value_enum, default_value_t = Format::Text)]
    format: Format,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Format {
    Text,
    Json,
}

impl CheckArgs {
    /// Prints a summary and exits 0, or every error (on stderr as text, on stdout as
    /// JSON) and exits 1.
    pub(super) fn run(self) -> anyhow::Result<ExitCode> {
        let rules = &self.rules.path;
        match Catalog::load(rules) {
            Ok(catalog) => {
                match self.format {
                    Format::Text => print!(
                        "{}",
                        catalog::summary(&catalog, &rules.display().to_string())
                    ),
                    Format::Json => println!("{}", catalog::summary_json(&catalog)),
                }
                Ok(ExitCode::SUCCESS)
            }
            Err(errors) => {
                match self.format {
                    Format::Text if std::io::stderr().is_terminal() => {
                        eprint!("{}", errors.render_ansi());
                    }
                    Format::Text => eprint!("{}", errors.render()),
                    Format::Json => println!("{}", errors.to_json()),
                }
                Ok(ExitCode::FAILURE)
            }
        }
    }
}
