//! The `nextbest` command line: parses arguments and hands over to the library.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};
use nextbest::catalog::Catalog;

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
    }
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
