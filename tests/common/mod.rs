//! `nextbest serve` as a child process, for the tests that signal or kill it.

// Each test binary uses a part of this module.
#![allow(dead_code)]

pub mod nats;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, ChildStderr, Command, Stdio};

/// A test that cannot run on this machine says why and passes, except under CI
/// (`CI=true`), where it fails: a CI machine that lacks what the test needs (root, loop
/// devices, nats-server) must be noticed, not counted as tested.
#[track_caller]
pub fn not_run(why: &str) {
    if std::env::var("CI").as_deref() == Ok("true") {
        panic!("could not run: {why}; CI (CI=true) requires this test to run");
    }
    eprintln!("NOT RUN: {why}");
}

/// A running `nextbest serve` on 127.0.0.1:0; killed when dropped.
pub struct Serve {
    pub child: Child,
    /// `127.0.0.1:PORT` of gRPC, from the server's `--ready-file`.
    pub addr: String,
    /// `127.0.0.1:PORT` of `/metrics`, from the same file.
    pub metrics_addr: String,
    /// What it prints, until [`Serve::drain`] hands it to a thread.
    stderr: Option<BufReader<ChildStderr>>,
    /// Holds the ready file.
    _ready: tempfile::TempDir,
}

impl Serve {
    /// Starts `nextbest serve` with these directories (no file watching) and waits
    /// until its `--ready-file` says where it serves.
    pub fn start(rules: &Path, data: &Path) -> Serve {
        Serve::start_with(rules, data, &[])
    }

    /// As [`Serve::start`], with more flags.
    pub fn start_with(rules: &Path, data: &Path, flags: &[&str]) -> Serve {
        let command = Command::new(env!("CARGO_BIN_EXE_nextbest"));
        Serve::start_command(command, "127.0.0.1", rules, data, flags)
    }

    /// As [`Serve::start_with`], run by `command` (`nextbest` itself, or a wrapper such
    /// as `ip netns exec NAME nextbest`) and listening on `host` (port 0).
    pub fn start_command(
        mut command: Command,
        host: &str,
        rules: &Path,
        data: &Path,
        flags: &[&str],
    ) -> Serve {
        let ready_dir = tempfile::tempdir().expect("tempdir");
        let ready = ready_dir.path().join("ready.json");
        let (grpc, metrics) = (format!("{host}:0"), format!("{host}:0"));
        let mut child = command
            .args(["serve", "--listen", &grpc, "--metrics-listen", &metrics])
            .args(["--watch-interval", "0s", "--rules"])
            .arg(rules)
            .arg("--data")
            .arg(data)
            .arg("--ready-file")
            .arg(&ready)
            .args(flags)
            .env_remove("NEXTBEST_ADMIN_TOKEN")
            .stderr(Stdio::piped())
            .spawn()
            .expect("run nextbest serve");
        let stderr = BufReader::new(child.stderr.take().expect("stderr"));
        let mut serve = Serve {
            child,
            addr: String::new(),
            metrics_addr: String::new(),
            stderr: Some(stderr),
            _ready: ready_dir,
        };
        let given_up = std::time::Instant::now() + std::time::Duration::from_secs(120);
        let addrs: serde_json::Value = loop {
            if let Ok(text) = std::fs::read_to_string(&ready) {
                break serde_json::from_str(&text).expect("the ready file is JSON");
            }
            if let Some(status) = serve.child.try_wait().expect("wait") {
                panic!(
                    "serve exited ({status}) before it was ready: {}",
                    serve.rest()
                );
            }
            assert!(
                std::time::Instant::now() < given_up,
                "serve not ready in 120 s"
            );
            std::thread::sleep(std::time::Duration::from_millis(10));
        };
        let addr = |key: &str| addrs[key].as_str().expect("an address").to_string();
        serve.addr = addr("grpc");
        serve.metrics_addr = addr("metrics");
        serve
    }

    /// The next line the server prints; panics if it exited.
    pub fn next_line(&mut self) -> String {
        let mut line = String::new();
        assert!(
            self.stderr
                .as_mut()
                .expect("not drained")
                .read_line(&mut line)
                .expect("read")
                > 0,
            "serve exited"
        );
        line
    }

    /// Everything the server prints until it exits.
    pub fn rest(&mut self) -> String {
        let mut rest = String::new();
        if let Some(stderr) = self.stderr.as_mut() {
            std::io::Read::read_to_string(stderr, &mut rest).expect("read");
        }
        rest
    }

    /// Reads what the server prints from now on in a thread of its own, keeping the last
    /// 200 lines: a server that logs much (reconnecting, say) never blocks on a full pipe.
    pub fn drain(
        &mut self,
    ) -> std::sync::Arc<std::sync::Mutex<std::collections::VecDeque<String>>> {
        let lines = std::sync::Arc::new(std::sync::Mutex::new(std::collections::VecDeque::new()));
        if let Some(stderr) = self.stderr.take() {
            let kept = std::sync::Arc::clone(&lines);
            std::thread::spawn(move || {
                for line in stderr.lines().map_while(Result::ok) {
                    let mut kept = kept.lock().unwrap_or_else(|e| e.into_inner());
                    if kept.len() == 200 {
                        kept.pop_front();
                    }
                    kept.push_back(line);
                }
            });
        }
        lines
    }

    /// Sends a signal by name (`TERM`, `HUP`, `KILL`).
    pub fn signal(&self, name: &str) {
        let sent = Command::new("kill")
            .arg(format!("-{name}"))
            .arg(self.child.id().to_string())
            .status()
            .expect("kill");
        assert!(sent.success(), "kill -{name}");
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The most common catalog change, in the rules directory `rules`: a new customer
/// attribute (`loyalty_points`, first, so every slot moves) and a new offer whose rule
/// reads it (`loyalty_reward`, on `web.home_banner`, for more than 100 points).
pub fn add_loyalty(rules: &Path) {
    let schema = rules.join("schema.yaml");
    let text = std::fs::read_to_string(&schema).expect("schema");
    std::fs::write(
        &schema,
        text.replacen(
            "customer:\n",
            "customer:\n  loyalty_points:\n    type: int\n    description: Points in the loyalty programme.\n",
            1,
        ),
    )
    .expect("write");
    std::fs::write(
        rules.join("offers/loyalty.yaml"),
        "offers:\n  - id: loyalty_reward\n    name: Loyalty reward\n    group: service\n    propensity: 0.9\n    value: 500\n    eligibility: customer.loyalty_points > 100\n    content:\n      web.home_banner:\n        title: Your points are worth a reward\n        cta: Redeem\n",
    )
    .expect("write");
}

/// `GET /metrics` of a server at `addr`, over a plain socket.
pub fn scrape(addr: &str) -> String {
    use std::io::{Read, Write};
    let mut socket = std::net::TcpStream::connect(addr).expect("connect to /metrics");
    socket
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .expect("request");
    let mut reply = String::new();
    socket.read_to_string(&mut reply).expect("reply");
    assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");
    reply
}
