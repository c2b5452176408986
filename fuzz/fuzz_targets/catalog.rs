//! Any bytes as a catalog: the input is split at `\n---8<---\n` into schema.yaml,
//! placements.yaml, experiments.yaml and an offers file (missing parts are the synthetic
//! catalog's). Loading never panics: it yields a catalog or errors with locations.
#![no_main]

use libfuzzer_sys::fuzz_target;
use nextbest::catalog::Catalog;

const SEPARATOR: &str = "\n---8<---\n";

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let mut parts = text.split(SEPARATOR);
    let schema = parts.next().unwrap_or_default();
    let placements = parts.next().unwrap_or("placements: []\n");
    let experiments = parts.next().unwrap_or("experiments: []\n");
    let offers = parts.next().unwrap_or("offers: []\n");
    match Catalog::from_yaml(schema, placements, experiments, &[offers]) {
        Ok(catalog) => assert!(!catalog.version.to_string().is_empty()),
        Err(errors) => assert!(!errors.render().is_empty()),
    }
});
