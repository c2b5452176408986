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
pub mod retrain;
pub mod scenario;
pub mod simulate;
pub mod train;

use std::path::PathBuf;

use crate::catalog::LoadErrors;

/// What can stop an evaluation or a training run.
#[derive(Debug, thiserror::Error)]
pub enum LearnError {
    /// A catalog to evaluate or train on does not load: every error, as `check` shows
    /// them.
    #[error("{}", .0.render())]
    Catalog(LoadErrors),
    /// The catalog `train` wrote does not load (a bug in the rewrite of its rules).
    #[error("the trained catalog in `{}` does not load:\n{}", out.display(), errors.render())]
    TrainedCatalog { out: PathBuf, errors: LoadErrors },
    #[error("`{}` is not empty: train writes a new catalog directory", .0.display())]
    OutputNotEmpty(PathBuf),
    /// `train` fitted an offer it cannot find in the copied offer files.
    #[error("offer `{offer}` is not in `{}`: cannot write its propensity", dir.display())]
    OfferNotInFiles { offer: String, dir: PathBuf },
    /// Reading the journal or the rules, or writing the trained catalog.
    #[error(transparent)]
    Io(#[from] std::io::Error),
    /// The node a simulation drives refused a write.
    #[error(transparent)]
    Db(#[from] crate::db::DbError),
}
