//! Any text as an eligibility rule and as a score formula: parsing, type checking and
//! compiling never panic, and a rule that compiles evaluates without panicking.
#![no_main]

use libfuzzer_sys::fuzz_target;
use nextbest::decide::synthetic;
use nextbest::expr::{Env, Formula, Predicate};
use std::sync::OnceLock;

type World = (
    nextbest::catalog::Catalog,
    nextbest::state::CustomerState,
    Vec<nextbest::schema::Value>,
);

fuzz_target!(|data: &[u8]| {
    static WORLD: OnceLock<World> = OnceLock::new();
    let (catalog, customer, context) = WORLD.get_or_init(|| {
        (
            synthetic::catalog(3),
            synthetic::customer(3),
            vec![nextbest::schema::Value::Enum(0)],
        )
    });
    let Ok(src) = std::str::from_utf8(data) else {
        return;
    };
    let env = Env::new(&customer.attributes, &context, &[], synthetic::NOW)
        .with_history(customer.history.events(), 1, 2, 3);
    if let Ok(rule) = Predicate::compile(src, &catalog.schema, "eligibility") {
        let _ = rule.eval(&env);
    }
    if let Ok(formula) = Formula::compile(src, &catalog.schema, "propensity", false) {
        let _ = formula.eval(&env);
    }
});
