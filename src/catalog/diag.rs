//! Where a catalog error is, and how it is shown: `path:line:col: error: message`, then
//! the source line with a caret under the offending token, as rustc does.
//!
//! Rule errors carry byte spans inside an expression string; [`scalar_location`] maps them
//! back through the YAML scalar (plain, quoted or block) to the file's line and column.

use std::fmt::Write as _;
use std::sync::Arc;

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
}

/// Every error found while loading a catalog, with the files they point into.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{} error(s) in the catalog", diagnostics.len())]
pub struct LoadErrors {
    pub diagnostics: Vec<Diagnostic>,
    pub files: Vec<SourceFile>,
}

impl LoadErrors {
    fn path(&self, loc: &Location) -> &str {
        self.files.get(loc.file).map_or("?", |f| f.path.as_str())
    }

    /// `path:line:col: error: message`, then a snippet; one block per error.
    pub fn render(&self) -> String {
        let mut out = String::new();
        for d in &self.diagnostics {
            let help = d.error.help();
            let Some(loc) = d.location else {
                let _ = writeln!(out, "error: {}", d.error);
                if let Some(help) = help {
                    let _ = writeln!(out, "  = help: {help}");
                }
                out.push('\n');
                continue;
            };
            let _ = writeln!(
                out,
                "{}:{}:{}: error: {}",
                self.path(&loc),
                loc.line,
                loc.column,
                d.error
            );
            let line_text = self
                .files
                .get(loc.file)
                .and_then(|f| f.text.lines().nth(loc.line - 1))
                .unwrap_or("");
            let number = loc.line.to_string();
            let gutter = " ".repeat(number.len());
            let _ = writeln!(out, "{gutter} |");
            let _ = writeln!(out, "{number} | {}", line_text.trim_end());
            // Tabs keep their width in the caret line so the caret stays under the token.
            let pad: String = line_text
                .chars()
                .take(loc.column - 1)
                .map(|c| if c == '\t' { '\t' } else { ' ' })
                .collect();
            let _ = write!(out, "{gutter} | {pad}{}", "^".repeat(loc.len.max(1)));
            match help {
                Some(help) => {
                    let _ = writeln!(out, " help: {help}");
                }
                None => out.push('\n'),
            }
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
                obj
            })
            .collect();
        serde_json::json!({ "ok": false, "errors": errors })
    }
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

    #[test]
    fn line_and_column_count_characters() {
        assert_eq!(line_col("ab\ncé d", 7), (2, 4));
        assert_eq!(line_col("", 0), (1, 1));
    }
}
