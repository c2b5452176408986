//! Closing the loop: a simulated world with a known truth (`scenario`, `simulate`),
//! replaying the journal through catalogs (`replay`), off-policy estimates with
//! confidence intervals (`estimate`, `evaluate`), and response models learned from the
//! journal and written back as rules (`model`, `train`); key metrics across channels and
//! the champion/challenger verdict (`report`). docs/learning.md shows them at work.

pub mod estimate;
pub mod evaluate;
pub mod model;
pub mod replay;
pub mod report;
pub mod scenario;
pub mod simulate;
pub mod train;
