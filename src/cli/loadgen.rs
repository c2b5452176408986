//! `nextbest loadgen`: the load generator's flags and its printing; the measuring is
//! [`crate::loadgen`]'s.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, anyhow, bail};

use super::{RulesDir, duration, write_file};
use crate::loadgen::{self, Config, Load, Mix, Round, Shares, Target};

#[derive(Debug, clap::Args)]
#[command(mut_arg("rules", |a| a.help("The catalog the server runs: requests use its placements and attributes")))]
pub(super) struct LoadgenArgs {
    /// The server.
    #[arg(
        long,
        env = "NEXTBEST_TARGET",
        default_value = "http://127.0.0.1:50051"
    )]
    target: String,
    #[command(flatten)]
    rules: RulesDir,
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
    #[arg(long, default_value = "10s", value_parser = duration)]
    duration: Duration,
    /// Sent first, not measured.
    #[arg(long, default_value = "2s", value_parser = duration)]
    warmup: Duration,
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

impl LoadgenArgs {
    pub(super) fn run(self) -> anyhow::Result<ExitCode> {
        let config = Config {
            mix: Mix::parse(&self.mix).map_err(|e| anyhow!("--mix: {e}"))?,
            load: match self.rate {
                Some(rate) if rate > 0.0 && rate.is_finite() => Load::Open { rate },
                Some(rate) => {
                    bail!("--rate: {rate} is not a positive number of requests a second")
                }
                None => Load::Closed {
                    concurrency: self.concurrency.max(1),
                },
            },
            duration: self.duration,
            warmup: self.warmup,
            customers: self.customers.max(1),
            seed: self.seed,
        };
        let catalog = self.rules.load()?;
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .context("starting the runtime")?;
        if self.rounds == 0 {
            bail!("--rounds must be at least 1");
        }
        let (ceiling, report, rounds) = runtime.block_on(async {
            let target = Arc::new(
                Target::connect(
                    &self.target,
                    self.connections,
                    self.admin_token.as_deref(),
                    &catalog,
                )
                .await?,
            );
            if self.populate {
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
            for round in 0..self.rounds {
                let ceiling = if self.ceiling {
                    let pings = Config {
                        mix: Mix::ping(),
                        ..config.clone()
                    };
                    let report = loadgen::run(Arc::clone(&target), &pings).await;
                    if round + 1 == self.rounds {
                        println!("ceiling (ping)\n{}", report.table());
                    }
                    Some(report)
                } else {
                    None
                };
                let report = loadgen::run(Arc::clone(&target), &config).await;
                if let Some(c) = &ceiling {
                    let r = Round::new(c, &report);
                    if self.rounds > 1 {
                        eprintln!(
                            "round {}: {:.0}/s of {:.0}/s pings: {:.1}%",
                            round + 1,
                            r.per_second,
                            r.ceiling_per_second,
                            r.share * 100.0
                        );
                    }
                    rounds.push(r);
                }
                last = Some((ceiling, report));
            }
            let (ceiling, report) = last.expect("at least one round");
            Ok::<_, anyhow::Error>((ceiling, report, rounds))
        })?;
        println!("{}", report.table());
        let shares = Shares::of(&rounds);
        match shares {
            Some(s) if s.rounds > 1 => println!(
                "throughput: {:.1}% of the ping ceiling (median of {} rounds; {:.1}% to {:.1}%)",
                s.median * 100.0,
                s.rounds,
                s.lowest * 100.0,
                s.highest * 100.0
            ),
            Some(s) => println!("throughput: {:.1}% of the ping ceiling", s.median * 100.0),
            None => {}
        }
        if let Some(path) = &self.json {
            let json = serde_json::json!({
                "date": jiff::Timestamp::now().to_string(),
                "machine": loadgen::machine(),
                "target": self.target,
                "mix": self.mix,
                "customers": config.customers,
                "ceiling": ceiling,
                "run": report,
                "rounds": rounds,
                "share_of_ceiling": shares.map(|s| s.median),
            });
            write_file(path, serde_json::to_string_pretty(&json)? + "\n")?;
        }
        Ok(ExitCode::SUCCESS)
    }
}
