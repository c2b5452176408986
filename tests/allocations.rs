//! Heap allocations per decision: a small constant, whatever the catalog's size.
//!
//! Counted with dhat's allocator in this test binary only. Prints the counts so
//! BENCHMARKS.md can quote them (`cargo test --test allocations -- --nocapture`).

use nextbest::decide::synthetic::{self, NOW};
use nextbest::decide::{Context, Options, decide};
use nextbest::state::CustomerState;
use uuid::Uuid;

#[global_allocator]
static ALLOC: dhat::Alloc = dhat::Alloc;

/// Blocks allocated by one decide (after a warm-up call).
fn allocations(n: usize, customer: &CustomerState, explain: bool) -> u64 {
    let catalog = synthetic::catalog(n);
    let p = catalog.placement("web").expect("placement");
    let context = Context::for_placement(&catalog, p, vec![]);
    let options = Options {
        explain,
        ..Options::new(Uuid::from_u128(3))
    };
    let _warm = decide(&catalog, customer, &context, p, NOW, &options);
    let before = dhat::HeapStats::get().total_blocks;
    let d = decide(&catalog, customer, &context, p, NOW, &options);
    let after = dhat::HeapStats::get().total_blocks;
    assert_eq!(d.offers.len(), 3);
    after - before
}

#[test]
fn allocations_per_decide_do_not_grow_with_the_catalog() {
    let _profiler = dhat::Profiler::builder().testing().build();
    let known = synthetic::customer(1000);
    let anonymous = CustomerState::anonymous(known.attributes.clone());
    let mut counts = Vec::new();
    for n in [10, 100, 1000] {
        let with_history = allocations(n, &known, false);
        let without = allocations(n, &anonymous, false);
        println!(
            "{n} offers: {with_history} allocations with 50 history events, {without} for an anonymous caller"
        );
        counts.push((with_history, without));
    }
    assert!(
        counts.windows(2).all(|w| w[0] == w[1]),
        "allocations grow with the catalog: {counts:?}"
    );
    let (with_history, _) = counts[0];
    assert!(with_history <= 4, "{with_history} allocations per decide");
    // Explaining allocates per offer, by design: it is for people, not the hot path.
    assert!(allocations(100, &known, true) > with_history);
}
