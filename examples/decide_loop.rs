//! A loop of decisions over the synthetic catalog, for instruction counts, which unlike
//! times are stable on a shared machine:
//!
//! ```text
//! cargo build --release --example decide_loop
//! valgrind --tool=callgrind --callgrind-out-file=/tmp/cg.out \
//!     target/release/examples/decide_loop 1000 200
//! callgrind_annotate /tmp/cg.out | head
//! ```
//! Arguments: offers (default 1000), decisions (default 200). BENCHMARKS.md quotes
//! instructions per decision as the difference between runs of 300 and 100 decisions,
//! divided by 200, so that building the catalog drops out.

use nextbest::decide::{Context, Options, decide, synthetic};

fn main() {
    let mut args = std::env::args().skip(1).map(|a| a.parse::<usize>());
    let offers = args.next().and_then(Result::ok).unwrap_or(1000);
    let decisions = args.next().and_then(Result::ok).unwrap_or(200);
    let catalog = synthetic::catalog(offers);
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
