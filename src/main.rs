//! The `nextbest` binary: parses the command line and hands over to the library's
//! [`nextbest::cli`], where each subcommand is one `Args` struct with a `run(self)`.

use std::process::ExitCode;

use clap::Parser;

/// mimalloc rather than the system allocator: the journal thread frees what request
/// threads allocate, which glibc's malloc handles poorly (BENCHMARKS.md, `journal`).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    nextbest::cli::Cli::parse().run()
}
