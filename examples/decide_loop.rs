//! A loop of decisions over the synthetic catalog, for instruction counts, which unlike
//! times are stable on a shared machine:
//!
//! ```text
//! cargo build --release --example decide_loop
//! valgrind --tool=callgrind --callgrind-out-file=/tmp/cg.out \
//!     target/release/examples/decide_loop 1000 200
//! callgrind_annotate /tmp/cg.out | head
//! ```
//! Arguments: offers (default 1000), decisions (default 200), and `targeted` for the
//! catalog whose offers target segments the customer mostly is not in
//! (`synthetic::targeted`, where the eligibility index skips offers). BENCHMARKS.md quotes
//! instructions per decision as the difference between runs of 300 and 100 decisions,
//! divided by 200, so that building the catalog drops out.

use nextbest::decide::{Context, Options, decide, synthetic};

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let number = |i: usize, default| args.get(i).and_then(|a| a.parse().ok()).unwrap_or(default);
    let offers = number(0, 1000);
    let decisions = number(1, 200);
    let catalog = match args.get(2).map(String::as_str) {
        Some("targeted") => synthetic::targeted(offers),
        _ => synthetic::catalog(offers),
    };
    let customer = synthetic::customer(offers);
    let context = Context::for_placement(&catalog, 0, vec![]);
    let mut shown = 0usize;
    for n in 0..decisions {
        let id = uuid::Uuid::from_u128(n as u128);
        let d = decide(
            &catalog,
            &customer,
            &context,
            0,
            synthetic::NOW,
            &Options::new(id),
        );
        shown += std::hint::black_box(d).offers.len();
    }
    println!("{decisions} decisions over {offers} offers, {shown} offers shown");
}
