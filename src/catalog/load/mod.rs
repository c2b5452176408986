//! YAML files to a [`Catalog`]: read, parse with positions, decode, validate, compile.
//!
//! Decoding walks `marked_yaml` nodes by hand rather than through serde so that one pass
//! can report every error (an unknown key, a wrong type, a dangling reference) with its
//! own position instead of stopping at the first.
//!
//! [`yaml`] is the decoding toolkit (parsing, locations, the typed getters
//! `required::<T>()` and `optional::<T>()`); each file's grammar is a module of its own
//! ([`schema`], [`placements`], [`experiments`], [`offers`], with [`policy`] for the contact
//! policies of placements.yaml and of offers, and [`rules`] for the rules any of them
//! holds). This module reads the files, parses each once, and puts the parts together in
//! the order their references need.

mod experiments;
mod models;
mod offers;
mod placements;
mod policy;
mod rules;
mod schema;
mod yaml;

use std::path::Path;
use std::sync::Arc;

use sha2::{Digest, Sha256};

use self::offers::Offers;
use self::placements::Placements;
use self::rules::Rules;
use self::yaml::Decoder;
use super::*;
use crate::expr;
use crate::schema::EntitySchema;

pub use self::yaml::{parse_duration, parse_timestamp};

/// The catalog files, by role. `path`s are what messages show.
#[derive(Debug, Clone, Default)]
pub struct Sources {
    pub schema: Option<SourceFile>,
    pub placements: Option<SourceFile>,
    pub experiments: Option<SourceFile>,
    pub models: Option<SourceFile>,
    pub offers: Vec<SourceFile>,
}

impl Sources {
    /// Reads the files of the catalog in `dir`, and the errors of reading them (a missing
    /// required file, an unreadable one).
    pub fn read(dir: &Path) -> (Sources, Vec<CatalogError>) {
        let mut io_errors = Vec::new();
        let mut read = |name: &Path, required: bool| -> Option<SourceFile> {
            let path = dir.join(name);
            match std::fs::read_to_string(&path) {
                Ok(text) => Some(SourceFile {
                    path: path.display().to_string(),
                    text: text.into(),
                }),
                Err(e) if !required && e.kind() == std::io::ErrorKind::NotFound => None,
                Err(e) => {
                    io_errors.push(CatalogError::Io {
                        path: path.display().to_string(),
                        source: e.into(),
                    });
                    None
                }
            }
        };
        let mut sources = Sources {
            schema: read(Path::new("schema.yaml"), true),
            placements: read(Path::new("placements.yaml"), true),
            experiments: read(Path::new("experiments.yaml"), false),
            models: read(Path::new("models.yaml"), false),
            offers: Vec::new(),
        };
        let offers_dir = dir.join("offers");
        match std::fs::read_dir(&offers_dir) {
            Ok(entries) => {
                let mut names: Vec<_> = entries
                    .filter_map(Result::ok)
                    .map(|e| e.path())
                    .filter(|p| p.extension().is_some_and(|x| x == "yaml" || x == "yml"))
                    .collect();
                names.sort();
                for p in names {
                    let rel = p.strip_prefix(dir).unwrap_or(&p).to_path_buf();
                    sources.offers.extend(read(&rel, true));
                }
            }
            Err(e) => io_errors.push(CatalogError::Io {
                path: offers_dir.display().to_string(),
                source: e.into(),
            }),
        }
        (sources, io_errors)
    }

    /// Every file, in the order the version hashes them.
    pub fn files(&self) -> impl Iterator<Item = &SourceFile> {
        [
            &self.schema,
            &self.placements,
            &self.experiments,
            &self.models,
        ]
        .into_iter()
        .flatten()
        .chain(&self.offers)
    }
}

impl Catalog {
    /// Loads the catalog in `dir` (`schema.yaml`, `placements.yaml`, optional
    /// `experiments.yaml`, `offers/*.yaml`), or every error it has.
    pub fn load(dir: impl AsRef<Path>) -> Result<Catalog, LoadErrors> {
        let (sources, io_errors) = Sources::read(dir.as_ref());
        Catalog::from_read(sources, io_errors)
    }

    /// A catalog from sources [`Sources::read`] gave, with the errors of reading them
    /// first.
    pub fn from_read(
        sources: Sources,
        io_errors: Vec<CatalogError>,
    ) -> Result<Catalog, LoadErrors> {
        let result = Catalog::from_sources(sources);
        if io_errors.is_empty() {
            return result;
        }
        let mut errors = result.err().unwrap_or(LoadErrors {
            diagnostics: Vec::new(),
            files: Vec::new(),
        });
        let io = io_errors.into_iter().map(|error| Diagnostic {
            error,
            location: None,
            related: None,
        });
        errors.diagnostics.splice(0..0, io);
        Err(errors)
    }

    /// Builds a catalog from file contents already in memory.
    pub fn from_sources(sources: Sources) -> Result<Catalog, LoadErrors> {
        let mut d = Decoder::default();
        let version = version(&sources);
        let schema_file = sources.schema.map(|f| d.add(f));
        let placements_file = sources.placements.map(|f| d.add(f));
        let experiments_file = sources.experiments.map(|f| d.add(f));
        let models_file = sources.models.map(|f| d.add(f));
        let offer_files: Vec<usize> = sources.offers.into_iter().map(|f| d.add(f)).collect();

        let schema = schema_file
            .and_then(|f| d.parse(f).ok())
            .map(|top| schema::decode(&mut d, &top));
        // Rules are only checked against a schema that loaded cleanly (it is read first, so
        // every error so far is its own); against a broken one every rule would report the
        // schema's mistakes again.
        let schema_ok = schema.is_some() && d.diags.is_empty();
        let schema =
            schema.unwrap_or_else(|| Schema::new(EntitySchema::default(), EntitySchema::default()));
        // Each offers file is parsed here, once: its names are needed by rules of every
        // file before its offers are decoded.
        let offer_tops: Vec<_> = offer_files.iter().map(|&f| (f, d.parse(f))).collect();
        // Models before any rule: `adaptive('id')` names them.
        let models: Vec<Arc<crate::adaptive::Model>> = models_file
            .filter(|_| schema_ok)
            .and_then(|f| d.parse(f).ok())
            .map(|top| models::decode(&mut d, &top, &schema))
            .unwrap_or_default()
            .into_iter()
            .map(Arc::new)
            .collect();
        let mut vocabulary = offers::vocabulary(&d, &offer_tops);
        vocabulary.models = models.clone();
        let rules = Rules {
            schema: &schema,
            check: schema_ok,
            vocabulary,
        };

        let experiments = experiments_file
            .and_then(|f| d.parse(f).ok())
            .map(|top| experiments::decode(&mut d, &top, &rules))
            .unwrap_or_default();
        let (placements, policy) = placements_file.and_then(|f| d.parse(f).ok()).map_or_else(
            || (Placements::unread(), Policy::default()),
            |top| placements::decode(&mut d, &top, &rules, &experiments),
        );
        let mut offers = Offers::new();
        for (_, top) in &offer_tops {
            offers.file(&mut d, top.as_ref().ok(), &rules, &placements);
        }
        offers.key_collisions(&mut d);
        let mut placements =
            placements::resolve(&mut d, placements, &offers.items, offers.complete);

        if !d.diags.is_empty() {
            // In file order, then by position, as a reader goes through them.
            d.diags
                .sort_by_key(|d| d.location.map(|loc| (loc.file, loc.line, loc.column)));
            return Err(LoadErrors {
                diagnostics: d.diags,
                files: d.files,
            });
        }
        // Every rule compiled: split them into clauses shared across offers.
        let mut clauses = expr::SharedClauses::default();
        let mut offers = offers.items;
        for offer in &mut offers {
            if let Some(src) = &offer.eligibility_src {
                offer.clauses =
                    clauses.split(&offer.eligibility, src, &schema, Some(&rules.vocabulary));
            }
        }
        let mut formulas = expr::SharedFormulas::default();
        plan::build(&mut placements, &offers, &policy, &mut formulas);
        let (by_id, by_key) = Catalog::index_offers(&offers);
        set_cells(&models, &offers, &placements);
        Ok(Catalog {
            by_id,
            by_key,
            version: version.into(),
            schema,
            offers,
            placements,
            experiments,
            models,
            policy,
            clauses,
            formulas,
        })
    }

    /// Builds a catalog from YAML strings (tests and tools); paths are named after roles.
    pub fn from_yaml(
        schema: &str,
        placements: &str,
        experiments: &str,
        offers: &[&str],
    ) -> Result<Catalog, LoadErrors> {
        let file = |path: String, text: &str| SourceFile {
            path,
            text: Arc::from(text),
        };
        Catalog::from_sources(Sources {
            schema: Some(file("schema.yaml".into(), schema)),
            placements: Some(file("placements.yaml".into(), placements)),
            experiments: Some(file("experiments.yaml".into(), experiments)),
            models: None,
            offers: offers
                .iter()
                .enumerate()
                .map(|(i, t)| file(format!("offers/{i}.yaml"), t))
                .collect(),
        })
    }
}

/// Gives every model a cell per offer whose formulas read it (per channel the offer is
/// placed in, for a model that learns per channel).
fn set_cells(models: &[Arc<crate::adaptive::Model>], offers: &[Offer], placements: &[Placement]) {
    for model in models {
        let mut keys = Vec::new();
        for o in offers {
            let reads = [&o.propensity, &o.value, &o.weight, &o.context_weight]
                .iter()
                .any(|f| f.models().iter().any(|m| Arc::ptr_eq(m, model)));
            if !reads {
                continue;
            }
            if model.per_channel {
                for &p in o.content.keys() {
                    keys.push((o.key, placements[p].channel_key));
                }
            } else {
                keys.push((o.key, 0));
            }
        }
        keys.sort_unstable();
        keys.dedup();
        model.set_cells(keys);
    }
}

/// A short content hash over every file, names included, in a fixed order.
fn version(sources: &Sources) -> String {
    let mut h = Sha256::new();
    let files = [
        &sources.schema,
        &sources.placements,
        &sources.experiments,
        &sources.models,
    ]
    .into_iter()
    .flatten()
    .chain(&sources.offers);
    for f in files {
        let name = Path::new(&f.path)
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        h.update(name.as_bytes());
        h.update([0]);
        h.update(f.text.as_bytes());
        h.update([0]);
    }
    let digest = h.finalize();
    digest[..6].iter().map(|b| format!("{b:02x}")).collect()
}
