//! What every command starts from, below both `cli/` and `server/`: the wall clock, the
//! catalog of a rules directory (its errors rendered once, with the directory), and a
//! data directory opened on it.
//!
//! The decision core never calls these: time and catalogs come into it as arguments.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::catalog::{Catalog, LoadErrors};
use crate::db::{Db, DbError, DbOptions, Recovery};

/// The wall clock, in ms since the Unix epoch: what a request that names no time is
/// stamped with.
pub fn now_ms() -> i64 {
    jiff::Timestamp::now().as_millisecond()
}

/// A rules directory whose catalog has errors: all of them, one line each.
#[derive(Debug, thiserror::Error)]
#[error("the catalog in `{}` has errors:\n{}", dir.display(), errors.render())]
pub struct RulesError {
    pub dir: PathBuf,
    pub errors: LoadErrors,
}

/// Loads the catalog of `rules`, or says everything that is wrong with it.
pub fn load_catalog(rules: &Path) -> Result<Arc<Catalog>, RulesError> {
    Catalog::load(rules)
        .map(Arc::new)
        .map_err(|errors| RulesError {
            dir: rules.to_path_buf(),
            errors,
        })
}

/// A data directory that could not be opened, and why.
#[derive(Debug, thiserror::Error)]
// The cause is in the message, not a `source`: shown once, however it is printed.
#[error("opening the data directory `{}`: {error}", dir.display())]
pub struct DataError {
    pub dir: PathBuf,
    pub error: DbError,
}

/// Opens (creating if needed) the data directory `data` on `catalog`, recovering it:
/// the newest snapshot, then the journal after it.
pub fn open_data(
    data: &Path,
    catalog: Arc<Catalog>,
    options: DbOptions,
) -> Result<(Db, Recovery), DataError> {
    Db::open(data, catalog, options).map_err(|error| DataError {
        dir: data.to_path_buf(),
        error,
    })
}
