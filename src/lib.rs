//! nextbest: a real-time next-best-action decisioning engine.
//!
//! A catalog of offers and rules (YAML under `rules/`) is loaded, validated whole and
//! compiled once ([`catalog::Catalog::load`]); its rules are expressions in a small typed
//! language ([`expr`]) checked against the attribute [`schema`] and compiled to slot-indexed
//! closures that evaluate in nanoseconds without locks, I/O or allocation. [`decide`] picks
//! the offers one customer ([`state`]) sees in one placement, exploring with stable hash
//! draws ([`explore`]) and recording the exact propensity of every offer shown.
//!
//! ```
//! use nextbest::catalog::Catalog;
//! use nextbest::decide::{Context, Options, decide};
//! use nextbest::schema::Value;
//! use nextbest::state::CustomerState;
//!
//! let catalog = Catalog::from_yaml(
//!     "customer:\n  age: { type: int }\ncontext:\n  channel: { type: enum, values: [web] }\n",
//!     "placements:\n  - { id: banner, channel: web, slots: 1 }\n",
//!     "experiments: []\n",
//!     &["offers:\n  - id: adults_only\n    eligibility: customer.age >= 18\n    value: 10\n    content: { banner: { title: For grown-ups } }\n  \
//!        - id: anyone\n    content: { banner: { title: For everyone } }\n"],
//! )
//! .map_err(|e| e.render())?;
//!
//! let banner = catalog.placement("banner").expect("declared above");
//! let customer = CustomerState { id: Some("c1".into()), attributes: vec![Value::Int(30)], ..Default::default() };
//! let context = Context::for_placement(&catalog, banner, vec![]);
//! let options = Options::new(uuid::Uuid::nil());
//! let decision = decide(&catalog, &customer, &context, banner, 1_795_428_000_000, &options);
//!
//! let shown = &catalog.offers[decision.offers[0].offer];
//! assert_eq!(shown.id, "adults_only");
//! assert_eq!(decision.offers[0].propensity, 1.0); // no experiment: no exploration
//! # Ok::<(), String>(())
//! ```

pub mod adaptive;
pub mod catalog;
pub mod cli;
pub mod cluster;
pub mod db;
pub mod decide;
pub mod explore;
pub mod expr;
pub mod journal;
pub mod learn;
pub mod loadgen;
pub mod schema;
pub mod server;
pub mod setup;
pub mod state;
pub mod storage;
