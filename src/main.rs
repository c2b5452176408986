//! The `nextbest` command line: parses arguments and hands over to the library.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context as _, anyhow, bail};
use clap::{Parser, Subcommand, ValueEnum};
use std::sync::Arc;

use nextbest::catalog::Catalog;
use nextbest::db::import::{self, ImportFormat};
use nextbest::db::{Db, DbOptions};
use nextbest::decide::{self, Context, Decision, Options};
use nextbest::journal::export::{self, ExportOptions};
use nextbest::state::{self, CustomerState, Event, EventKind, History, HistoryLimits};

/// mimalloc rather than the system allocator: the journal thread frees what request
/// threads allocate, which glibc's malloc handles poorly (BENCHMARKS.md, `journal`).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

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
    /// Serve decisions, outcomes and customers over gRPC until Ctrl-C or SIGTERM;
    /// SIGHUP reloads the catalog.
    Serve(ServeArgs),
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
        /// Fill this many slots (1 to 64) instead of the placement's number.
        #[arg(long, value_parser = clap::value_parser!(u32).range(1..=i64::from(nextbest::catalog::MAX_SLOTS)))]
        slots: Option<u32>,
        /// Say for every offer of the placement where it stopped and why.
        #[arg(long)]
        explain: bool,
    },
    /// Import customers from JSON Lines or CSV (by extension) into the data directory.
    Import {
        #[arg(long, env = "NEXTBEST_RULES", default_value = "rules")]
        rules: PathBuf,
        /// The data directory (journal and snapshots).
        #[arg(long, env = "NEXTBEST_DATA", default_value = "data")]
        data: PathBuf,
        /// Check the whole file first; import nothing if any line is bad.
        #[arg(long)]
        strict: bool,
        /// One customer per line (`.jsonl`) or row (`.csv`); `-` for JSON Lines on stdin.
        file: PathBuf,
    },
    /// Export the journal's decisions joined with their outcomes, for retraining and
    /// off-policy evaluation; prints a summary as JSON.
    Export {
        #[arg(long, env = "NEXTBEST_RULES", default_value = "rules")]
        rules: PathBuf,
        #[arg(long, env = "NEXTBEST_DATA", default_value = "data")]
        data: PathBuf,
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
    },
    /// Simulate a scenario's customers and traffic through the real decide pipeline,
    /// journal and outcomes, into a fresh data directory.
    Simulate {
        /// The scenario: population, traffic and true response model (YAML).
        #[arg(long)]
        scenario: PathBuf,
        #[arg(long, env = "NEXTBEST_RULES", default_value = "rules")]
        rules: PathBuf,
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
    },
    /// Estimate off-policy what candidate catalogs would earn on the logged traffic:
    /// IPS, SNIPS and doubly robust with 95% intervals, beside the logging policy, a
    /// uniformly random one and the champion alone.
    Evaluate {
        #[arg(long, env = "NEXTBEST_DATA", default_value = "data")]
        data: PathBuf,
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
    },
    /// Fit per-offer response models from the journal and write a catalog whose
    /// propensities carry them.
    Train {
        #[arg(long, env = "NEXTBEST_DATA", default_value = "data")]
        data: PathBuf,
        /// The catalog to start from (the one the journal was logged with).
        #[arg(long, env = "NEXTBEST_RULES", default_value = "rules")]
        rules: PathBuf,
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
    },
    /// Key metrics across channels, offers and experiment arms with 95% intervals, and
    /// whether each challenger beats its champion; a table, JSON, or an HTML page.
    Report {
        #[arg(long, env = "NEXTBEST_DATA", default_value = "data")]
        data: PathBuf,
        /// The catalog (which arm of each experiment is the champion: the first).
        #[arg(long, env = "NEXTBEST_RULES", default_value = "rules")]
        rules: PathBuf,
        #[command(flatten)]
        range: TimeRange,
        /// Also write the report as a self-contained HTML page with plots.
        #[arg(long)]
        html: Option<PathBuf>,
        /// Print the report as JSON instead of tables.
        #[arg(long)]
        json: bool,
    },
    /// Snapshot the state and erase forgotten customers from the journal.
    Compact {
        #[arg(long, env = "NEXTBEST_RULES", default_value = "rules")]
        rules: PathBuf,
        #[arg(long, env = "NEXTBEST_DATA", default_value = "data")]
        data: PathBuf,
    },
    /// Forget customers (erasure): their state goes now, their journal records at the
    /// compaction this command runs afterwards.
    Forget {
        #[arg(long, env = "NEXTBEST_RULES", default_value = "rules")]
        rules: PathBuf,
        #[arg(long, env = "NEXTBEST_DATA", default_value = "data")]
        data: PathBuf,
        #[arg(required = true)]
        customers: Vec<String>,
    },
    /// Load a running server and measure it with HDR histograms: closed loop (callers as
    /// fast as answers come) or open loop (--rate, latency from when each request was due).
    Loadgen(LoadgenArgs),
}

#[derive(Debug, clap::Args)]
struct LoadgenArgs {
    /// The server.
    #[arg(
        long,
        env = "NEXTBEST_TARGET",
        default_value = "http://127.0.0.1:50051"
    )]
    target: String,
    /// The catalog the server runs: requests use its placements and attributes.
    #[arg(long, env = "NEXTBEST_RULES", default_value = "rules")]
    rules: PathBuf,
    /// Sent with upserts, when the server needs it.
    #[arg(long, env = "NEXTBEST_ADMIN_TOKEN", hide_env_values = true)]
    admin_token: Option<String>,
    /// Request kinds and their weights: decide, batch (DecideBatch of two placements),
    /// outcome (for a recent decision), upsert, ping (an empty call).
    #[arg(long, default_value = "decide=70,batch=10,outcome=15,upsert=5")]
    mix: String,
    /// Closed loop: this many callers.
    #[arg(long, default_value_t = 16)]
    concurrency: usize,
    /// Open loop instead: this many requests a second.
    #[arg(long, conflicts_with_all = ["concurrency", "ceiling"])]
    rate: Option<f64>,
    /// How long to measure, after the warm-up.
    #[arg(long, default_value = "10s")]
    duration: String,
    /// Sent first, not measured.
    #[arg(long, default_value = "2s")]
    warmup: String,
    /// HTTP/2 connections to spread the requests over.
    #[arg(long, default_value_t = 4)]
    connections: usize,
    /// Requests name customers c0..cN.
    #[arg(long, default_value_t = 10_000)]
    customers: u64,
    /// Upsert those customers (every attribute) before the run.
    #[arg(long)]
    populate: bool,
    /// Run pings with the same load first, and give the mix's throughput as a share of
    /// that ceiling.
    #[arg(long)]
    ceiling: bool,
    /// With --ceiling: alternate ping and mix runs this many times and give the median
    /// share, steadier on a noisy machine than one pair of runs.
    #[arg(long, default_value_t = 1, requires = "ceiling")]
    rounds: u32,
    /// Also write the figures here as JSON.
    #[arg(long)]
    json: Option<PathBuf>,
    /// The same seed sends the same requests.
    #[arg(long, default_value_t = 1)]
    seed: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum ExportFormat {
    Dsjson,
    Obp,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Format {
    Text,
    Json,
}

#[derive(Debug, clap::Args)]
struct ServeArgs {
    #[arg(long, env = "NEXTBEST_RULES", default_value = "rules")]
    rules: PathBuf,
    #[arg(long, env = "NEXTBEST_DATA", default_value = "data")]
    data: PathBuf,
    /// The gRPC address; anything but loopback needs --admin-token.
    #[arg(long, env = "NEXTBEST_LISTEN", default_value = "127.0.0.1:50051")]
    listen: std::net::SocketAddr,
    /// Where Prometheus scrapes `/metrics` (plain HTTP; no customer data).
    #[arg(
        long,
        env = "NEXTBEST_METRICS_LISTEN",
        default_value = "127.0.0.1:9464"
    )]
    metrics_listen: std::net::SocketAddr,
    /// How often to look for changed rule files (`0s` to not watch).
    #[arg(long, env = "NEXTBEST_WATCH_INTERVAL", default_value = "1s")]
    watch_interval: String,
    /// How often to snapshot the state and erase forgotten customers (`0s`: never).
    #[arg(long, env = "NEXTBEST_COMPACT_INTERVAL", default_value = "1h")]
    compact_interval: String,
    /// Also compact once this many MB of journal were written since the last snapshot:
    /// a restart replays them, so this bounds restart time on a busy node (`0`: by
    /// interval only).
    #[arg(long, env = "NEXTBEST_COMPACT_JOURNAL_MB", default_value_t = 256)]
    compact_journal_mb: u64,
    /// Customer and admin calls must carry `authorization: Bearer <token>`. Required
    /// to listen on anything but loopback.
    #[arg(long, env = "NEXTBEST_ADMIN_TOKEN", hide_env_values = true)]
    admin_token: Option<String>,
    /// Serve TLS with this PEM certificate chain (with --tls-key).
    #[arg(long, env = "NEXTBEST_TLS_CERT", requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// The PEM private key of --tls-cert.
    #[arg(long, env = "NEXTBEST_TLS_KEY", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// Larger request messages are refused with RESOURCE_EXHAUSTED.
    #[arg(long, env = "NEXTBEST_MAX_MESSAGE_BYTES", default_value_t = nextbest::server::MAX_MESSAGE_BYTES)]
    max_message_bytes: usize,
    /// Calls running longer are cancelled (a client's shorter deadline wins).
    #[arg(long, env = "NEXTBEST_REQUEST_TIMEOUT", default_value = "10s")]
    request_timeout: String,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Serve(args) => run_serve(args).map_or_else(|e| fail(&e), |()| ExitCode::SUCCESS),
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
            Err(e) => fail(&e),
        },
        Command::Import {
            rules,
            data,
            strict,
            file,
        } => run_import(&rules, &data, strict, &file).unwrap_or_else(|e| fail(&e)),
        Command::Export {
            rules,
            data,
            format,
            range,
            reward,
            window,
            out,
        } => {
            let options = (|| {
                let (from, to) = range.ms()?;
                Ok::<_, anyhow::Error>(ExportOptions {
                    format: match format {
                        ExportFormat::Dsjson => export::Format::Dsjson,
                        ExportFormat::Obp => export::Format::Obp,
                    },
                    from,
                    to,
                    reward: reward
                        .parse()
                        .map_err(|e: String| anyhow!("--reward: {e}"))?,
                    window: window.ms()?,
                })
            })();
            options
                .and_then(|o| run_export(&rules, &data, &o, &out))
                .map_or_else(|e| fail(&e), |()| ExitCode::SUCCESS)
        }
        Command::Simulate {
            scenario,
            rules,
            data,
            seed,
            customers,
            days,
            json,
        } => run_simulate(&scenario, &rules, &data, seed, (customers, days), json)
            .map_or_else(|e| fail(&e), |()| ExitCode::SUCCESS),
        Command::Evaluate {
            data,
            candidates,
            baseline,
            reward,
            window,
            range,
            scenario,
            seed,
            json,
        } => (|| {
            let options = nextbest::learn::evaluate::EvaluateOptions {
                reward: reward
                    .parse()
                    .map_err(|e: String| anyhow!("--reward: {e}"))?,
                window: window.ms()?,
                range: range.ms()?,
                seed,
                ..Default::default()
            };
            run_evaluate(
                &data,
                &baseline,
                &candidates,
                scenario.as_deref(),
                &options,
                json.as_deref(),
            )
        })()
        .map_or_else(|e| fail(&e), |()| ExitCode::SUCCESS),
        Command::Train {
            data,
            rules,
            out,
            window,
            range,
            seed,
            json,
        } => (|| {
            let options = nextbest::learn::train::TrainOptions {
                window: window.ms()?,
                range: range.ms()?,
                seed,
                ..Default::default()
            };
            let summary = nextbest::learn::train::train(&data, &rules, &out, &options)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&summary)?);
            } else {
                print!("{}", nextbest::learn::train::render(&summary));
            }
            Ok(())
        })()
        .map_or_else(|e| fail(&e), |()| ExitCode::SUCCESS),
        Command::Report {
            data,
            rules,
            range,
            html,
            json,
        } => (|| {
            use nextbest::learn::report;
            let range = range.ms()?;
            let catalog = load_catalog(&rules)?;
            let r = report::report(&data, &catalog, range)?;
            if let Some(path) = &html {
                std::fs::write(path, report::html(&r))
                    .with_context(|| format!("writing `{}`", path.display()))?;
            }
            if json {
                println!("{}", serde_json::to_string_pretty(&r)?);
            } else {
                print!("{}", report::render(&r));
                if let Some(path) = &html {
                    println!("\nHTML report: {}", path.display());
                }
            }
            Ok(())
        })()
        .map_or_else(|e| fail(&e), |()| ExitCode::SUCCESS),
        Command::Compact { rules, data } => {
            run_compact(&rules, &data, &[]).map_or_else(|e| fail(&e), |()| ExitCode::SUCCESS)
        }
        Command::Forget {
            rules,
            data,
            customers,
        } => {
            run_compact(&rules, &data, &customers).map_or_else(|e| fail(&e), |()| ExitCode::SUCCESS)
        }
        Command::Loadgen(args) => {
            run_loadgen(args).map_or_else(|e| fail(&e), |()| ExitCode::SUCCESS)
        }
    }
}

fn run_loadgen(args: LoadgenArgs) -> anyhow::Result<()> {
    use nextbest::loadgen::{self, Config, Load, Mix, Target};
    let duration = |flag: &str, text: &str| {
        if matches!(text.trim(), "0" | "0s") {
            return Ok(std::time::Duration::ZERO);
        }
        nextbest::catalog::parse_duration(text)
            .filter(|ms| *ms >= 0)
            .map(|ms| std::time::Duration::from_millis(ms.unsigned_abs()))
            .ok_or_else(|| anyhow!("{flag}: `{text}` is not a duration such as 10s"))
    };
    let config = Config {
        mix: Mix::parse(&args.mix).map_err(|e| anyhow!("--mix: {e}"))?,
        load: match args.rate {
            Some(rate) if rate > 0.0 && rate.is_finite() => Load::Open { rate },
            Some(rate) => bail!("--rate: {rate} is not a positive number of requests a second"),
            None => Load::Closed {
                concurrency: args.concurrency.max(1),
            },
        },
        duration: duration("--duration", &args.duration)?,
        warmup: duration("--warmup", &args.warmup)?,
        customers: args.customers.max(1),
        seed: args.seed,
    };
    let catalog = Catalog::load(&args.rules).map_err(|errors| {
        anyhow!(
            "the catalog in `{}` has errors:\n{}",
            args.rules.display(),
            errors.render()
        )
    })?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the runtime")?;
    if args.rounds == 0 {
        bail!("--rounds must be at least 1");
    }
    let (ceiling, report, rounds) = runtime.block_on(async {
        let target = Arc::new(
            Target::connect(
                &args.target,
                args.connections,
                args.admin_token.as_deref(),
                &catalog,
            )
            .await?,
        );
        if args.populate {
            let started = std::time::Instant::now();
            target.populate(config.customers, 64, config.seed).await?;
            eprintln!(
                "populated {} customers in {:.1?}",
                config.customers,
                started.elapsed()
            );
        }
        // Ping and mix runs alternate, so a slow spell of the machine hits both alike.
        let mut rounds = Vec::new();
        let mut last = None;
        for round in 0..args.rounds {
            let ceiling = if args.ceiling {
                let pings = Config {
                    mix: Mix::ping(),
                    ..config.clone()
                };
                let report = loadgen::run(Arc::clone(&target), &pings).await;
                if round + 1 == args.rounds {
                    println!("ceiling (ping)\n{}", report.table());
                }
                Some(report)
            } else {
                None
            };
            let report = loadgen::run(Arc::clone(&target), &config).await;
            if let Some(c) = &ceiling {
                let share = report.per_second / c.per_second.max(f64::MIN_POSITIVE);
                if args.rounds > 1 {
                    eprintln!(
                        "round {}: {:.0}/s of {:.0}/s pings: {:.1}%",
                        round + 1,
                        report.per_second,
                        c.per_second,
                        share * 100.0
                    );
                }
                rounds.push(serde_json::json!({
                    "ceiling_per_second": c.per_second,
                    "per_second": report.per_second,
                    "share": share,
                }));
            }
            last = Some((ceiling, report));
        }
        let (ceiling, report) = last.expect("at least one round");
        Ok::<_, anyhow::Error>((ceiling, report, rounds))
    })?;
    println!("{}", report.table());
    // The median share over the rounds (one round: its share).
    let mut shares: Vec<f64> = rounds.iter().filter_map(|r| r["share"].as_f64()).collect();
    shares.sort_by(f64::total_cmp);
    let share = (!shares.is_empty()).then(|| {
        let n = shares.len();
        if n % 2 == 1 {
            shares[n / 2]
        } else {
            (shares[n / 2 - 1] + shares[n / 2]) / 2.0
        }
    });
    if let Some(share) = share {
        if shares.len() > 1 {
            println!(
                "throughput: {:.1}% of the ping ceiling (median of {} rounds; {:.1}% to {:.1}%)",
                share * 100.0,
                shares.len(),
                shares[0] * 100.0,
                shares[shares.len() - 1] * 100.0
            );
        } else {
            println!("throughput: {:.1}% of the ping ceiling", share * 100.0);
        }
    }
    if let Some(path) = &args.json {
        let cpu = std::fs::read_to_string("/proc/cpuinfo")
            .ok()
            .and_then(|s| {
                s.lines().find_map(|l| {
                    l.strip_prefix("model name")
                        .map(|m| m.trim_start_matches([' ', '\t', ':']).to_string())
                })
            })
            .unwrap_or_default();
        let json = serde_json::json!({
            "date": jiff::Timestamp::now().to_string(),
            "machine": {
                "cores": std::thread::available_parallelism().map_or(0, |n| n.get()),
                "cpu": cpu,
            },
            "target": args.target,
            "mix": args.mix,
            "customers": config.customers,
            "ceiling": ceiling,
            "run": report,
            "rounds": rounds,
            "share_of_ceiling": share,
        });
        std::fs::write(path, serde_json::to_string_pretty(&json)? + "\n")
            .with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}

fn run_serve(args: ServeArgs) -> anyhow::Result<()> {
    let ServeArgs {
        rules,
        data,
        listen,
        metrics_listen,
        ..
    } = &args;
    let (rules, data, listen, metrics_listen) =
        (rules.as_path(), data.as_path(), *listen, *metrics_listen);
    let every = |flag: &str, text: &str| -> anyhow::Result<Option<std::time::Duration>> {
        if matches!(text.trim(), "0" | "0s") {
            return Ok(None);
        }
        let ms = nextbest::catalog::parse_duration(text)
            .ok_or_else(|| anyhow!("{flag}: `{text}` is not a duration such as 1s or 1h"))?;
        Ok(Some(std::time::Duration::from_millis(ms.unsigned_abs())))
    };
    let intervals = Intervals {
        watch: every("--watch-interval", &args.watch_interval)?,
        compact: every("--compact-interval", &args.compact_interval)?,
        compact_journal_bytes: (args.compact_journal_mb > 0)
            .then(|| args.compact_journal_mb.saturating_mul(1 << 20)),
    };
    let mut transport = nextbest::server::Transport::default();
    transport.max_message_bytes = args.max_message_bytes;
    transport.request_timeout = every("--request-timeout", &args.request_timeout)?
        .ok_or_else(|| anyhow!("--request-timeout: must be more than 0s"))?;
    if let (Some(cert), Some(key)) = (&args.tls_cert, &args.tls_key) {
        transport = transport.with_tls(cert, key)?;
    }
    let admin_token = args.admin_token.clone().filter(|t| !t.is_empty());
    if !listen.ip().is_loopback() {
        if admin_token.is_none() {
            bail!(
                "--listen {listen} is not a loopback address: set --admin-token (or NEXTBEST_ADMIN_TOKEN) so that customer data and administration need it"
            );
        }
        if !transport.tls() {
            eprintln!(
                "warning: serving {listen} without TLS; set --tls-cert and --tls-key or terminate TLS in front of nextbest, the admin token travels in clear otherwise"
            );
        }
    }
    let (node, recovery) = nextbest::server::Node::open(rules, data)?;
    let node = node.with_admin_token(admin_token);
    eprintln!("{}: {recovery}", data.display());
    let node = Arc::new(node);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the runtime")?;
    runtime.block_on(async {
        let listener = tokio::net::TcpListener::bind(listen)
            .await
            .with_context(|| format!("listening on {listen}"))?;
        eprintln!(
            "serving catalog {} from `{}`{} on {}",
            node.db().catalog().version,
            rules.display(),
            if transport.tls() { " over TLS" } else { "" },
            listener.local_addr().unwrap_or(listen)
        );
        let registry = prometheus::Registry::new();
        let metrics = Arc::new(nextbest::server::Metrics::new(&registry)?);
        let metrics_listener = tokio::net::TcpListener::bind(metrics_listen)
            .await
            .with_context(|| format!("listening on {metrics_listen} for metrics"))?;
        eprintln!(
            "metrics on http://{}/metrics",
            metrics_listener.local_addr().unwrap_or(metrics_listen)
        );
        let (stop, stopped) = tokio::sync::watch::channel(false);
        let until_stopped = move || {
            let mut stopped = stopped.clone();
            async move {
                let _ = stopped.wait_for(|s| *s).await;
            }
        };
        tokio::spawn(async move {
            shutdown_signal().await;
            let _ = stop.send(true);
        });
        tokio::spawn(reload_on_sighup(Arc::clone(&node), Arc::clone(&metrics)));
        if let Some(interval) = intervals.watch {
            tokio::spawn(nextbest::server::watch::watch(
                Arc::clone(&node),
                Arc::clone(&metrics),
                interval,
                until_stopped(),
            ));
        }
        if intervals.compact.is_some() || intervals.compact_journal_bytes.is_some() {
            tokio::spawn(compact_when_due(
                Arc::clone(&node),
                intervals,
                until_stopped(),
            ));
        }
        let scrapes = tokio::spawn(nextbest::server::metrics::serve(
            metrics_listener,
            registry,
            Arc::clone(&node),
            until_stopped(),
        ));
        nextbest::server::run(
            listener,
            Arc::clone(&node),
            metrics,
            &transport,
            until_stopped(),
        )
        .await?;
        scrapes.await.context("the metrics server")??;
        eprintln!("draining: no new calls, the ones in flight finished");
        Ok::<_, anyhow::Error>(())
    })?;
    drop(runtime);
    let node = Arc::try_unwrap(node)
        .map_err(|_| anyhow!("the server still holds the node after shutdown"))?;
    node.close().context("flushing the journal")?;
    eprintln!("journal flushed; stopped");
    Ok(())
}

/// Background periods of `serve`.
#[derive(Debug, Clone, Copy)]
struct Intervals {
    watch: Option<std::time::Duration>,
    compact: Option<std::time::Duration>,
    /// Compact once the journal since the last snapshot has this many bytes.
    compact_journal_bytes: Option<u64>,
}

/// Compacts every `intervals.compact`, and whenever the journal since the last snapshot
/// passes `intervals.compact_journal_bytes` (looked at every second): a snapshot for fast
/// restarts, and erasure of forgotten customers from the journal.
async fn compact_when_due(
    node: Arc<nextbest::server::Node>,
    intervals: Intervals,
    shutdown: impl Future<Output = ()>,
) {
    const LOOK: std::time::Duration = std::time::Duration::from_secs(1);
    // After a failed compaction, the journal's size does not call for another one for
    // this long (the interval still does).
    const BACK_OFF: std::time::Duration = std::time::Duration::from_secs(60);
    tokio::pin!(shutdown);
    let mut last = tokio::time::Instant::now();
    let mut failed: Option<tokio::time::Instant> = None;
    loop {
        let next = match (intervals.compact, intervals.compact_journal_bytes) {
            (Some(every), None) => last + every,
            (Some(every), Some(_)) => (last + every).min(tokio::time::Instant::now() + LOOK),
            (None, _) => tokio::time::Instant::now() + LOOK,
        };
        tokio::select! {
            () = &mut shutdown => return,
            () = tokio::time::sleep_until(next) => {}
        }
        let timed = intervals
            .compact
            .is_some_and(|every| last.elapsed() >= every);
        let grown = match intervals.compact_journal_bytes {
            Some(limit) if !timed && failed.is_none_or(|at| at.elapsed() >= BACK_OFF) => {
                let db = Arc::clone(&node);
                match tokio::task::spawn_blocking(move || db.db().journal_since_snapshot()).await {
                    Ok(Ok(bytes)) if bytes >= limit => Some(bytes),
                    _ => None,
                }
            }
            _ => None,
        };
        if !timed && grown.is_none() {
            continue;
        }
        last = tokio::time::Instant::now();
        if let Some(bytes) = grown {
            eprintln!(
                "compacting: {} MB of journal since the last snapshot",
                bytes >> 20
            );
        }
        let node = Arc::clone(&node);
        failed = None;
        match tokio::task::spawn_blocking(move || node.db().compact(now_ms())).await {
            Ok(Ok(done)) => eprintln!(
                "compacted: {} customers in `{}`, {} records of {} forgotten customers erased",
                done.customers,
                done.snapshot.display(),
                done.records_erased,
                done.forgotten
            ),
            Ok(Err(e)) => {
                failed = Some(tokio::time::Instant::now());
                eprintln!("compaction failed (the journal is intact): {e}");
            }
            Err(e) => {
                failed = Some(tokio::time::Instant::now());
                eprintln!("the compaction task failed: {e}");
            }
        }
    }
}

/// Resolves on Ctrl-C or SIGTERM.
async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        () = ctrl_c => {}
        () = term => {}
    }
    eprintln!("shutting down");
}

async fn reload_on_sighup(
    node: Arc<nextbest::server::Node>,
    metrics: Arc<nextbest::server::Metrics>,
) {
    let Ok(mut hup) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) else {
        return;
    };
    while hup.recv().await.is_some() {
        let node = Arc::clone(&node);
        let reloading = Arc::clone(&node);
        let started = std::time::Instant::now();
        match tokio::task::spawn_blocking(move || reloading.reload()).await {
            Ok(Ok(catalog)) => {
                metrics.reload(true, &catalog.version);
                eprintln!(
                    "SIGHUP: catalog {} in force, loaded and swapped in {:.1?}",
                    catalog.version,
                    started.elapsed()
                );
            }
            Ok(Err(e)) => {
                metrics.reload(false, &node.db().catalog().version);
                eprintln!("SIGHUP: reload refused, the running catalog stays: {e}");
            }
            Err(e) => eprintln!("SIGHUP: the reload task failed: {e}"),
        }
    }
}

fn fail(e: &anyhow::Error) -> ExitCode {
    eprintln!("error: {e:#}");
    ExitCode::FAILURE
}

fn load_catalog(rules: &std::path::Path) -> anyhow::Result<Arc<Catalog>> {
    Catalog::load(rules).map(Arc::new).map_err(|e| {
        anyhow!(
            "the catalog in `{}` has errors:\n{}",
            rules.display(),
            e.render()
        )
    })
}

fn open_db(rules: &std::path::Path, data: &std::path::Path) -> anyhow::Result<Db> {
    let (db, recovery) = Db::open(data, load_catalog(rules)?, DbOptions::default())
        .with_context(|| format!("opening the data directory `{}`", data.display()))?;
    eprintln!("{}: {recovery}", data.display());
    Ok(db)
}

/// A progress bar on stderr when it is a terminal, hidden otherwise.
fn progress_bar(total: u64, what: &str) -> indicatif::ProgressBar {
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

fn now_ms() -> i64 {
    jiff::Timestamp::now().as_millisecond()
}

fn run_import(
    rules: &std::path::Path,
    data: &std::path::Path,
    strict: bool,
    file: &std::path::Path,
) -> anyhow::Result<ExitCode> {
    let db = open_db(rules, data)?;
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
        data.display()
    );
    db.close()?;
    Ok(if report.errors.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

fn run_export(
    rules: &std::path::Path,
    data: &std::path::Path,
    options: &ExportOptions,
    out: &std::path::Path,
) -> anyhow::Result<()> {
    let catalog = load_catalog(rules)?;
    let journal = data.join("journal");
    if !journal.is_dir() {
        bail!("`{}` has no journal", data.display());
    }
    let bar = progress_bar(export::journal_bytes(&journal)?, "exporting");
    let summary = export::export(&journal, &catalog, options, out, &mut |b| {
        bar.set_position(b)
    })
    .with_context(|| format!("exporting to `{}`", out.display()))?;
    bar.finish_and_clear();
    println!("{}", serde_json::to_string_pretty(&summary)?);
    Ok(())
}

fn run_compact(
    rules: &std::path::Path,
    data: &std::path::Path,
    forget: &[String],
) -> anyhow::Result<()> {
    let db = open_db(rules, data)?;
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
    Ok(())
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
    #[arg(long = "window", value_name = "DURATION", default_value = "7d")]
    text: String,
}

impl Window {
    fn ms(&self) -> anyhow::Result<i64> {
        let text = &self.text;
        nextbest::catalog::parse_duration(text)
            .filter(|ms| *ms > 0)
            .ok_or_else(|| anyhow!("--window: `{text}` is not a duration such as 7d or 12h"))
    }
}

fn run_simulate(
    scenario: &std::path::Path,
    rules: &std::path::Path,
    data: &std::path::Path,
    seed: u64,
    (customers, days): (Option<u64>, Option<u64>),
    json: bool,
) -> anyhow::Result<()> {
    use nextbest::learn::{scenario::Scenario, simulate};
    if data.exists() && std::fs::read_dir(data)?.next().is_some() {
        anyhow::bail!(
            "`{}` is not empty: simulate writes a fresh data directory",
            data.display()
        );
    }
    let catalog = load_catalog(rules)?;
    let mut scenario = Scenario::load(scenario, &catalog)?;
    if customers == Some(0) || days == Some(0) {
        anyhow::bail!("--customers and --days must be positive");
    }
    scenario.customers = customers.unwrap_or(scenario.customers);
    scenario.days = days.unwrap_or(scenario.days);
    // A simulation's journal needs no fsync: it is rebuilt from the seed if lost.
    let mut options = DbOptions::default();
    options.writer.sync = nextbest::storage::writer::SyncMode::Never;
    let (db, _) = Db::open(data, Arc::clone(&catalog), options)
        .with_context(|| format!("opening the data directory `{}`", data.display()))?;
    let bar = progress_bar(scenario.days, "days");
    let summary = simulate::run(&db, &catalog, &scenario, seed, &mut |day, _| {
        bar.set_position(day);
    })?;
    bar.finish_and_clear();
    db.close()?;
    if json {
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
    Ok(())
}

fn run_evaluate(
    data: &std::path::Path,
    baseline: &std::path::Path,
    candidates: &[PathBuf],
    scenario: Option<&std::path::Path>,
    options: &nextbest::learn::evaluate::EvaluateOptions,
    json: Option<&std::path::Path>,
) -> anyhow::Result<()> {
    use nextbest::learn::{evaluate, scenario::Scenario};
    if !data.is_dir() {
        anyhow::bail!("`{}` is not a data directory", data.display());
    }
    let scenario = match scenario {
        Some(path) => Some(Scenario::load(path, &*load_catalog(baseline)?)?),
        None => None,
    };
    let candidates: Vec<&std::path::Path> = candidates.iter().map(PathBuf::as_path).collect();
    let evaluation = evaluate::evaluate(data, baseline, &candidates, scenario.as_ref(), options)?;
    match json {
        Some(path) if path.as_os_str() == "-" => {
            println!("{}", serde_json::to_string_pretty(&evaluation)?);
        }
        Some(path) => {
            std::fs::write(path, serde_json::to_string_pretty(&evaluation)?)
                .with_context(|| format!("writing `{}`", path.display()))?;
            print!("{}", evaluate::render(&evaluation));
        }
        None => print!("{}", evaluate::render(&evaluation)),
    }
    Ok(())
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
        Some(text) => {
            let at = parse_time(text)?;
            nextbest::schema::time::decision("--at", at)?;
            at
        }
        None => jiff::Timestamp::now().as_millisecond(),
    };
    let customer = match customer {
        None => CustomerState::anonymous(vec![]),
        Some(path) => read_customer(&catalog, path, now)?,
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
    if let Some(given) = Context::conflicting_channel(&catalog, p, &values) {
        bail!(
            "`--context channel={given}`: placement `{placement}` is in channel `{}`, and the channel is the placement's (leave it out)",
            catalog.placements[p].channel
        );
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

/// A customer file, its history trimmed as of the decision time `now`.
fn read_customer(
    catalog: &Catalog,
    path: &std::path::Path,
    now: i64,
) -> anyhow::Result<CustomerState> {
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
                    if std::io::stderr().is_terminal() {
                        eprint!("{}", errors.render_ansi());
                    } else {
                        eprint!("{}", errors.render());
                    }
                }
                Format::Json => println!("{}", errors.to_json()),
            }
            ExitCode::FAILURE
        }
    }
}
