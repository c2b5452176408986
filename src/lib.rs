//! nextbest: a real-time next-best-action decisioning engine.
//!
//! A catalog of offers and rules (YAML under `rules/`) is loaded, validated whole and
//! compiled once ([`catalog::Catalog::load`]); its rules are expressions in a small typed
//! language ([`expr`]) checked against the attribute [`schema`] and compiled to slot-indexed
//! nodes that evaluate in nanoseconds without locks, I/O or allocation.

pub mod catalog;
pub mod decide;
pub mod explore;
pub mod expr;
pub mod schema;
pub mod state;
