//! Where a catalog error is, and how it is shown: `path:line:col: error: message`, then
//! the source line with a caret under the offending token, as rustc does, and, where the
//! error involves a second place (the first definition of a duplicate id or key), that
//! place with its label, in the same snippet or in one of its own file.
//!
//! The first line is ours (editors and the tests jump to `path:line:col`, which
//! annotate-snippets' header would put on a line of its own); the snippet under it is
//! drawn by annotate-snippets, rustc's renderer, from the diagnostic's location: the
//! gutter, tabs and wide characters measured the way a terminal shows them.
//!
//! Rule errors carry byte spans inside an expression string; [`scalar_location`] maps them
//! back through the YAML scalar (plain, quoted or block) to the file's line and column.

use std::fmt::Write as _;
use std::sync::Arc;

use annotate_snippets::renderer::{AnsiColor, Effects};
use annotate_snippets::{AnnotationKind, Group, Level, Renderer, Snippet};

use super::CatalogError;

/// A file of the catalog, kept so errors can quote it.
#[derive(Debug, Clone)]
pub struct SourceFile {
    /// The path as the user gave it (e.g. `rules/offers/cards.yaml`).
    pub path: String,
    pub text: Arc<str>,
}

/// A position in a catalog file. Lines and columns count from 1; columns count characters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Location {
    pub file: usize,
    pub line: usize,
    pub column: usize,
    /// How many characters to underline (at least 1).
    pub len: usize,
}

/// One error, with where it is when that is known.
#[derive(Debug, Clone)]
pub struct Diagnostic {
    pub error: CatalogError,
    pub location: Option<Location>,
    /// A second place the error involves, drawn as a secondary label under the primary
    /// one: where a duplicate id or key was first defined.
    pub related: Option<Related>,
}

/// A place an error involves besides its own location, and what it is there.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Related {
    pub location: Location,
    /// What the place is, drawn under it: `first defined here`.
    pub label: &'static str,
}

impl Related {
    /// Where the first of two items with one id (or of two keys) is.
    pub fn first_defined(location: Location) -> Related {
        Related {
            location,
            label: "first defined here",
        }
    }
}

/// Every error found while loading a catalog, with the files they point into.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{} error(s) in the catalog", diagnostics.len())]
pub struct LoadErrors {
    pub diagnostics: Vec<Diagnostic>,
    pub files: Vec<SourceFile>,
}

/// The escapes a rendering is marked up with: none, or rustc's colours for a terminal.
#[derive(Debug, Clone)]
struct Paint {
    bold: &'static str,
    error: &'static str,
    reset: &'static str,
    /// What draws the snippet under the first line.
    snippet: Renderer,
}

impl Paint {
    const PLAIN: Paint = Paint {
        bold: "",
        error: "",
        reset: "",
        snippet: Renderer::plain(),
    };
    const ANSI: Paint = Paint {
        bold: "\x1b[1m",
        error: "\x1b[1;31m",
        reset: "\x1b[0m",
        // Carets and their help in yellow, as this rendering always had them.
        snippet: Renderer::styled()
            .hyperlink(false)
            .error(AnsiColor::Yellow.on_default().effects(Effects::BOLD)),
    };
}

impl LoadErrors {
    fn path(&self, loc: &Location) -> &str {
        self.files.get(loc.file).map_or("?", |f| f.path.as_str())
    }

    /// Each error on one line: `path:line:col: error: message` where it has a location,
    /// `error: message` where it has none (a file that cannot be read, two offer ids with
    /// one history key). What a reply or a log line carries; [`render`](Self::render)
    /// starts each of its blocks with the same line.
    pub fn lines(&self) -> Vec<String> {
        self.diagnostics
            .iter()
            .map(|d| self.headline(d, &Paint::PLAIN))
            .collect()
    }

    /// `path:line:col: error: message`, then a snippet; one block per error.
    pub fn render(&self) -> String {
        self.render_with(&Paint::PLAIN)
    }

    /// As [`render`](Self::render), coloured for a terminal as rustc does: `error:` in
    /// red, the location and message in bold, the gutter in blue, carets and help in
    /// yellow.
    pub fn render_ansi(&self) -> String {
        self.render_with(&Paint::ANSI)
    }

    fn headline(&self, d: &Diagnostic, paint: &Paint) -> String {
        let Paint {
            bold, error, reset, ..
        } = *paint;
        match d.location {
            Some(loc) => format!(
                "{bold}{}:{}:{}:{reset} {error}error:{reset} {bold}{}{reset}",
                self.path(&loc),
                loc.line,
                loc.column,
                d.error
            ),
            None => format!("{error}error:{reset} {bold}{}{reset}", d.error),
        }
    }

    fn render_with(&self, paint: &Paint) -> String {
        let mut out = String::new();
        for d in &self.diagnostics {
            let help = d.error.help();
            let _ = writeln!(out, "{}", self.headline(d, paint));
            let located = d
                .location
                .and_then(|loc| Some((loc, self.files.get(loc.file)?)));
            let Some((loc, file)) = located else {
                if let Some(help) = help {
                    let _ = writeln!(out, "  = help: {help}");
                }
                out.push('\n');
                continue;
            };
            // The help goes on the caret line, where the eye already is.
            let label = help.map(|h| format!("help: {h}"));
            let primary = AnnotationKind::Primary
                .span(byte_span(&file.text, &loc))
                .label(label);
            let mut snippet = Snippet::source(&*file.text).annotation(primary);
            // A related place in the same file is a second label in the same snippet; in
            // another file, a snippet of its own headed by that file's path.
            let mut elsewhere = None;
            let related = d
                .related
                .and_then(|r| Some((r, self.files.get(r.location.file)?)));
            if let Some((r, other)) = related {
                let secondary = AnnotationKind::Context
                    .span(byte_span(&other.text, &r.location))
                    .label(r.label);
                if r.location.file == loc.file {
                    snippet = snippet.annotation(secondary);
                } else {
                    elsewhere = Some(
                        Snippet::source(&*other.text)
                            .path(other.path.as_str())
                            .annotation(secondary),
                    );
                }
            }
            let report = [Group::with_level(Level::ERROR)
                .element(snippet)
                .elements(elsewhere)];
            let _ = writeln!(out, "{}", paint.snippet.render(&report));
            out.push('\n');
        }
        let _ = writeln!(
            out,
            "{} error(s); the catalog was not loaded",
            self.diagnostics.len()
        );
        out
    }

    /// The errors as JSON objects, for tools.
    pub fn to_json(&self) -> serde_json::Value {
        let errors: Vec<serde_json::Value> = self
            .diagnostics
            .iter()
            .map(|d| {
                let mut obj = serde_json::json!({
                    "message": d.error.to_string(),
                    "help": d.error.help(),
                });
                if let Some(loc) = d.location {
                    obj["path"] = self.path(&loc).into();
                    obj["line"] = loc.line.into();
                    obj["column"] = loc.column.into();
                    obj["length"] = loc.len.into();
                }
                if let Some(r) = d.related {
                    let loc = r.location;
                    obj["related"] = serde_json::json!({
                        "label": r.label,
                        "path": self.path(&loc),
                        "line": loc.line,
                        "column": loc.column,
                        "length": loc.len,
                    });
                }
                obj
            })
            .collect();
        serde_json::json!({ "ok": false, "errors": errors })
    }
}

/// The byte range in `text` of `loc` (a line, a column and a length in characters), cut
/// to the end of its line: a location past the last character points just after it.
fn byte_span(text: &str, loc: &Location) -> std::ops::Range<usize> {
    let line_start: usize = text
        .split_inclusive('\n')
        .take(loc.line.saturating_sub(1))
        .map(str::len)
        .sum();
    let line = text.get(line_start..).unwrap_or("");
    let line = &line[..line.find('\n').unwrap_or(line.len())];
    let byte = |chars: usize| {
        line.char_indices()
            .nth(chars)
            .map_or(line.len(), |(i, _)| i)
    };
    let start = byte(loc.column.saturating_sub(1));
    let end = byte(loc.column.saturating_sub(1) + loc.len.max(1)).max(start);
    line_start + start..line_start + end
}

/// Line and column (1-based, in characters) of byte offset `at` in `text`.
pub fn line_col(text: &str, at: usize) -> (usize, usize) {
    let at = at.min(text.len());
    let before = text.get(..at).unwrap_or(text);
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let column = text
        .get(line_start..at)
        .map_or(1, |s| s.chars().count() + 1);
    (line, column)
}

/// The byte offset in the file of byte `offset` of a scalar's `value`, given the byte where
/// the scalar's source starts (its first character, quote or block indicator).
///
/// The value is walked against the source: a character of the value is matched with the
/// next equal character of the source, skipping what YAML strips (quotes, indentation,
/// escapes, block headers); a space or newline of the value may match a line break the
/// scalar folded. This is exact for plain and quoted single-line scalars and for literal
/// blocks, and stays on the right line for folded ones.
pub fn scalar_offset(text: &str, scalar_start: usize, value: &str, offset: usize) -> usize {
    let mut src = text.get(scalar_start..).unwrap_or("").char_indices();
    // One past the last matched character: where an offset at the end of the value points.
    let mut end = scalar_start;
    for (vi, vc) in value.char_indices() {
        let matched = src
            .by_ref()
            .find(|&(_, sc)| sc == vc || ((vc == ' ' || vc == '\n') && sc == '\n'));
        let Some((si, _)) = matched else { return end };
        if vi >= offset {
            return scalar_start + si;
        }
        end = scalar_start + si + vc.len_utf8();
    }
    end
}

/// The location of the byte span `span` of an expression held in a YAML scalar.
pub fn scalar_location(
    file: usize,
    text: &str,
    scalar_start: usize,
    value: &str,
    span: std::ops::Range<usize>,
) -> Location {
    let start = scalar_offset(text, scalar_start, value, span.start);
    let (line, column) = line_col(text, start);
    let chars = value.get(span.clone()).map_or(1, |s| s.chars().count());
    let single_line = value.get(span).is_some_and(|s| !s.contains('\n'));
    Location {
        file,
        line,
        column,
        len: if single_line { chars.max(1) } else { 1 },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Finds `needle` in the expression of the scalar at `scalar_start` and returns its
    /// line and column in the file.
    fn locate(text: &str, scalar_start: usize, value: &str, needle: &str) -> (usize, usize) {
        let at = value.find(needle).expect("needle in value");
        let loc = scalar_location(0, text, scalar_start, value, at..at + needle.len());
        (loc.line, loc.column)
    }

    #[test]
    fn positions_map_through_every_scalar_style() {
        let plain = "a:\n  eligibility: customer.age >= 18 && x.y\n";
        let start = plain.find("customer").expect("present");
        assert_eq!(
            locate(plain, start, "customer.age >= 18 && x.y", "x.y"),
            (2, 38)
        );

        let quoted = "eligibility: \"customer.segment in ['gold']\"\n";
        let start = quoted.find('"').expect("present");
        assert_eq!(
            locate(quoted, start, "customer.segment in ['gold']", "'gold'"),
            (1, 36)
        );

        let literal = "eligibility: |\n    customer.age >= 18\n    && customer.agee > 1\n";
        let start = literal.find('|').expect("present");
        assert_eq!(
            locate(
                literal,
                start,
                "customer.age >= 18\n&& customer.agee > 1\n",
                "customer.agee"
            ),
            (3, 8)
        );

        let folded = "eligibility: >\n    customer.age >= 18\n    && customer.agee > 1\n";
        let start = folded.find('>').expect("present");
        assert_eq!(
            locate(
                folded,
                start,
                "customer.age >= 18 && customer.agee > 1\n",
                "customer.agee"
            ),
            (3, 8)
        );
    }

    /// The text with its ANSI escapes (`ESC [ ... m`) taken out.
    fn unpainted(text: &str) -> String {
        let mut out = String::new();
        let mut rest = text;
        while let Some(at) = rest.find('\x1b') {
            out.push_str(&rest[..at]);
            let end = rest[at..].find('m').expect("an escape ends with `m`");
            rest = &rest[at + end + 1..];
        }
        out.push_str(rest);
        out
    }

    #[test]
    fn every_error_has_one_line_with_its_location_when_known() {
        let errors = LoadErrors {
            diagnostics: vec![
                Diagnostic {
                    error: CatalogError::Io {
                        path: "rules/offers/x.yaml".into(),
                        source: std::io::Error::from_raw_os_error(21).into(),
                    },
                    location: None,
                    related: None,
                },
                Diagnostic {
                    error: CatalogError::MissingKey {
                        key: "id",
                        context: crate::catalog::Context::Unnamed(crate::catalog::Kind::Offer),
                    },
                    location: Some(Location {
                        file: 0,
                        line: 2,
                        column: 5,
                        len: 4,
                    }),
                    related: None,
                },
            ],
            files: vec![SourceFile {
                path: "rules/offers/cards.yaml".into(),
                text: "offers:\n  - name: Gold\n".into(),
            }],
        };
        assert_eq!(
            errors.lines(),
            [
                "error: cannot read `rules/offers/x.yaml`: Is a directory (os error 21)",
                "rules/offers/cards.yaml:2:5: error: missing required key `id` in an offer",
            ]
        );
        // The rendering opens each error's block with its line.
        let rendered = errors.render();
        let firsts: Vec<&str> = rendered
            .split("\n\n")
            .filter_map(|block| block.lines().next())
            .collect();
        assert_eq!(firsts[..2], errors.lines(), "{rendered}");
        // Coloured, it is the same text, with `error:` red wherever it is.
        let ansi = errors.render_ansi();
        assert_eq!(unpainted(&ansi), rendered);
        assert_eq!(
            ansi.matches("\x1b[1;31merror:\x1b[0m").count(),
            2,
            "{ansi:?}"
        );
        // Carets in bold yellow (anstyle writes the two attributes apart).
        assert!(ansi.contains("\x1b[1m\x1b[33m^^^^\x1b[0m"), "{ansi:?}");
    }

    /// A one-error catalog whose file is `text`, the error at `line`, `column`, `len`.
    fn one_error(text: &str, line: usize, column: usize, len: usize) -> LoadErrors {
        LoadErrors {
            diagnostics: vec![Diagnostic {
                error: CatalogError::MissingKey {
                    key: "id",
                    context: crate::catalog::Context::Unnamed(crate::catalog::Kind::Offer),
                },
                location: Some(Location {
                    file: 0,
                    line,
                    column,
                    len,
                }),
                related: None,
            }],
            files: vec![SourceFile {
                path: "o.yaml".into(),
                text: text.into(),
            }],
        }
    }

    #[test]
    fn carets_stand_under_the_token_after_wide_characters_and_tabs() {
        // `日本` is two characters that a terminal shows four columns wide.
        let e = one_error("x:\n  a: '日本' && customer.agee\n", 2, 14, 13);
        // Thirteen characters before it, two of them double width: fifteen columns.
        let under = format!("{}{}", " ".repeat(15), "^".repeat(13));
        assert_eq!(
            e.render(),
            format!(
                "o.yaml:2:14: error: missing required key `id` in an offer\n  \
                 |\n\
                 2 |   a: '日本' && customer.agee\n  \
                 | {under}\n\
                 \n\
                 1 error(s); the catalog was not loaded\n"
            )
        );
        // A tab is drawn as four spaces, and the caret moves with it.
        let e = one_error("a:\tb\n", 1, 4, 1);
        assert!(
            e.render().contains("1 | a:    b\n  |       ^\n"),
            "{}",
            e.render()
        );
        // A location past the end of its line points just after the last character.
        let e = one_error("a: b\n", 1, 5, 1);
        assert!(
            e.render().contains("1 | a: b\n  |     ^\n"),
            "{}",
            e.render()
        );
    }

    #[test]
    fn line_and_column_count_characters() {
        assert_eq!(line_col("ab\ncé d", 7), (2, 4));
        assert_eq!(line_col("", 0), (1, 1));
    }
}
