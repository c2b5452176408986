//! The log of the commands that log (`serve`): `--log-level` (or `RUST_LOG`) and
//! `--log-format`, set up once as the process's tracing subscriber, writing to stderr.
//!
//! The library only emits events (`tracing::info!` and friends, with fields); choosing
//! what is kept and how it is written is the binary's, here. What a command prints as
//! its result, or its usage error, is plain stdout and stderr, not the log.

use tracing_subscriber::EnvFilter;

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(super) enum LogFormat {
    /// `2026-12-01T16:00:00.123456Z  INFO call{method=Decide}: nextbest::server: message key=value`
    Text,
    /// One JSON object a line: `timestamp`, `level`, `message`, the event's fields,
    /// `target` and the span it happened in (`span`, with the call's method).
    Json,
}

/// `--log-level` and `--log-format`, flattened into each command that logs.
#[derive(Debug, Clone, clap::Args)]
pub(super) struct Logging {
    /// What to log: a level (error, warn, info, debug, trace) or directives as `RUST_LOG`
    /// takes them (`info,nextbest::server=debug`). The flag wins over `RUST_LOG`.
    #[arg(
        long,
        env = "RUST_LOG",
        value_name = "FILTER",
        default_value = "info",
        value_parser = filter
    )]
    log_level: String,
    /// Log lines as text, or as JSON objects one a line (for a log pipeline).
    #[arg(
        long,
        env = "NEXTBEST_LOG_FORMAT",
        value_enum,
        default_value_t = LogFormat::Text
    )]
    log_format: LogFormat,
}

/// The value parser of `--log-level`: a bad filter is a usage error (exit 2), not a
/// filter silently ignored.
fn filter(text: &str) -> Result<String, String> {
    EnvFilter::builder()
        .parse(text)
        .map(|_| text.to_string())
        .map_err(|e| format!("`{text}` is not a log level or filter: {e}"))
}

impl Logging {
    /// Installs the process's subscriber; every event after this is written to stderr
    /// with its UTC timestamp (RFC 3339, microseconds). Called once, before the command
    /// logs anything; a second call leaves the first subscriber in place.
    pub(super) fn init(&self) {
        let filter = EnvFilter::builder().parse_lossy(&self.log_level);
        let builder = tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_writer(std::io::stderr);
        let installed = match self.log_format {
            LogFormat::Text => builder.try_init(),
            LogFormat::Json => builder
                .json()
                .flatten_event(true)
                .with_current_span(true)
                .with_span_list(false)
                .try_init(),
        };
        // Only a subscriber installed already (a test's) can refuse: it stays.
        drop(installed);
    }
}

#[cfg(test)]
mod tests {
    use super::filter;

    #[test]
    fn log_levels_and_filters_are_checked_when_parsed() {
        for good in ["info", "debug", "warn,nextbest::server=trace", "off"] {
            assert_eq!(filter(good).as_deref(), Ok(good));
        }
        for bad in ["nextbest=loud", "nextbest[{=info"] {
            assert!(filter(bad).is_err(), "{bad}");
        }
    }
}
