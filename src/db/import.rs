//! Bulk import of customers from JSON Lines or CSV, one customer per line or row.
//!
//! JSON Lines: `{"id": "c1", "attributes": {"age": 38, ...}}`, or flat,
//! `{"id": "c1", "age": 38, ...}`. CSV: a header row with an `id` column and one column
//! per attribute, values written as `nextbest decide --context` takes them (sets as
//! `a,b`), an empty cell for "unset". Every line is checked against the schema; a bad
//! line is reported by number and attribute and skipped, the others are imported. With
//! `strict`, the whole file is checked first and nothing is imported if any line is bad.
//! The import is acknowledged (durable) once, at the end: one fsync for the whole file.

use std::io::{BufRead, Read};

use super::{Db, DbError};
use crate::catalog::Catalog;
use crate::schema::Value;
use crate::state::{parse_attributes, parse_text_attribute};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ImportFormat {
    JsonLines,
    Csv,
}

impl ImportFormat {
    /// From a file name: `.csv` is CSV, anything else JSON Lines.
    pub fn of_path(path: &std::path::Path) -> ImportFormat {
        match path.extension().and_then(|e| e.to_str()) {
            Some(e) if e.eq_ignore_ascii_case("csv") => ImportFormat::Csv,
            _ => ImportFormat::JsonLines,
        }
    }
}

/// A file `import` refuses whole, before importing any of it.
#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    #[error("line 1: the CSV header has no `id` column")]
    NoIdColumn,
    /// A header naming no customer attribute: every row would fail alike.
    #[error("line 1: {0}")]
    UnknownColumn(#[source] crate::state::StateError),
    /// The CSV header does not read.
    #[error(transparent)]
    Csv(#[from] csv::Error),
}

/// A refused line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LineError {
    /// 1-based line number in the file (for CSV, the row's line; the header is line 1).
    pub line: u64,
    pub message: String,
}

impl std::fmt::Display for LineError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "line {}: {}", self.line, self.message)
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ImportReport {
    /// Customers read (good and bad).
    pub read: u64,
    pub imported: u64,
    pub errors: Vec<LineError>,
}

/// One customer from the file: its id and values in slot order, or why not.
type Parsed = Result<(String, Vec<Value>), String>;

/// Reads customers from `input` and calls `each(line, parsed, bytes_read)`.
fn read_customers(
    catalog: &Catalog,
    format: ImportFormat,
    input: impl Read,
    mut each: impl FnMut(u64, Parsed, u64) -> Result<(), DbError>,
) -> Result<(), DbError> {
    let schema = &catalog.schema.customer;
    match format {
        ImportFormat::JsonLines => {
            let mut reader = std::io::BufReader::new(input);
            let mut line = String::new();
            let (mut number, mut bytes) = (0u64, 0u64);
            loop {
                line.clear();
                let n = reader
                    .read_line(&mut line)
                    .map_err(super::io("reading the import file"))?;
                if n == 0 {
                    return Ok(());
                }
                number += 1;
                bytes += n as u64;
                if line.trim().is_empty() {
                    continue;
                }
                each(number, parse_json_line(schema, &line), bytes)?;
            }
        }
        ImportFormat::Csv => {
            let mut reader = csv::ReaderBuilder::new().flexible(false).from_reader(input);
            let headers = reader
                .headers()
                .map_err(ImportError::Csv)?
                .iter()
                .map(str::to_string)
                .collect::<Vec<_>>();
            let Some(id_column) = headers.iter().position(|h| h == "id") else {
                return Err(ImportError::NoIdColumn.into());
            };
            // An unknown column would fail every row the same way: refuse the file.
            for h in headers.iter().filter(|h| *h != "id") {
                if schema.slot(h).is_none() {
                    let e = crate::state::unknown("customer", schema, h);
                    return Err(ImportError::UnknownColumn(e).into());
                }
            }
            let mut record = csv::StringRecord::new();
            loop {
                match reader.read_record(&mut record) {
                    Ok(false) => return Ok(()),
                    Ok(true) => {
                        let pos = record.position().map_or((0, 0), |p| (p.line(), p.byte()));
                        each(
                            pos.0,
                            parse_csv_row(schema, &headers, id_column, &record),
                            pos.1,
                        )?;
                    }
                    Err(e) => {
                        let line = e.position().map_or(0, |p| p.line());
                        each(line, Err(e.to_string()), 0)?;
                        if !matches!(e.kind(), csv::ErrorKind::UnequalLengths { .. }) {
                            return Ok(());
                        }
                    }
                }
            }
        }
    }
}

fn parse_json_line(schema: &crate::schema::EntitySchema, line: &str) -> Parsed {
    let value: serde_json::Value =
        serde_json::from_str(line).map_err(|e| format!("not JSON: {e}"))?;
    let serde_json::Value::Object(mut object) = value else {
        return Err("expected a JSON object".into());
    };
    let id = match object.remove("id") {
        Some(serde_json::Value::String(id)) if !id.is_empty() => checked_id(id)?,
        Some(other) => {
            return Err(format!(
                "`id` must be a non-empty string, found {}",
                crate::state::shown(&other.to_string())
            ));
        }
        None => return Err("no `id`".into()),
    };
    let attributes = match object.remove("attributes") {
        Some(serde_json::Value::Object(a)) if object.is_empty() => a,
        Some(_) if !object.is_empty() => {
            return Err("either `attributes` or flat attributes, not both".into());
        }
        Some(other) => return Err(format!("`attributes` must be an object, found {other}")),
        None => object,
    };
    let values = parse_attributes("customer", schema, &attributes).map_err(|e| e.to_string())?;
    Ok((id, values))
}

fn parse_csv_row(
    schema: &crate::schema::EntitySchema,
    headers: &[String],
    id_column: usize,
    record: &csv::StringRecord,
) -> Parsed {
    let mut values = vec![Value::Missing; schema.len()];
    let mut id = None;
    for (i, cell) in record.iter().enumerate() {
        if i == id_column {
            id = Some(cell.trim().to_string()).filter(|s| !s.is_empty());
            continue;
        }
        if cell.is_empty() {
            continue;
        }
        let (slot, value) = parse_text_attribute("customer", schema, &headers[i], cell)
            .map_err(|e| e.to_string())?;
        values[slot as usize] = value;
    }
    Ok((checked_id(id.ok_or("empty `id`")?)?, values))
}

/// An id as long as the service allows ([`MAX_ID_BYTES`](crate::schema::MAX_ID_BYTES)).
fn checked_id(id: String) -> Result<String, String> {
    if id.len() > crate::schema::MAX_ID_BYTES {
        return Err(format!(
            "`id` is {} bytes long; ids have at most {}",
            id.len(),
            crate::schema::MAX_ID_BYTES
        ));
    }
    Ok(id)
}

/// Imports customers into `db`. `progress` is called with the bytes read so far.
pub fn import(
    db: &Db,
    format: ImportFormat,
    mut open: impl FnMut() -> std::io::Result<Box<dyn Read>>,
    strict: bool,
    now: i64,
    progress: &mut dyn FnMut(u64),
) -> Result<ImportReport, DbError> {
    let catalog = db.catalog();
    let mut report = ImportReport::default();
    if strict {
        let input = open().map_err(super::io("opening the import file"))?;
        read_customers(&catalog, format, input, |line, parsed, bytes| {
            if let Err(message) = parsed {
                report.errors.push(LineError { line, message });
            }
            if line.is_multiple_of(1024) {
                progress(bytes);
            }
            Ok(())
        })?;
        if !report.errors.is_empty() {
            return Ok(report);
        }
    }
    let input = open().map_err(super::io("opening the import file"))?;
    read_customers(&catalog, format, input, |line, parsed, bytes| {
        report.read += 1;
        match parsed {
            Ok((id, values)) => {
                db.upsert(&catalog, &id, values, now, false)?;
                report.imported += 1;
            }
            Err(message) => report.errors.push(LineError { line, message }),
        }
        if line.is_multiple_of(1024) {
            progress(bytes);
        }
        Ok(())
    })?;
    db.sync()?;
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A node on the sample catalog in a new directory.
    fn sample_db() -> (Db, tempfile::TempDir) {
        let dir = tempfile::tempdir().expect("tempdir");
        let catalog = std::sync::Arc::new(
            Catalog::load(std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("rules"))
                .expect("sample catalog"),
        );
        let (db, _) =
            Db::open(dir.path(), catalog, super::super::DbOptions::default()).expect("open");
        (db, dir)
    }

    fn run(
        format: ImportFormat,
        text: &'static str,
        strict: bool,
    ) -> (ImportReport, Db, tempfile::TempDir) {
        let (db, dir) = sample_db();
        let report = import(
            &db,
            format,
            || Ok(Box::new(text.as_bytes())),
            strict,
            0,
            &mut |_| {},
        )
        .expect("import");
        (report, db, dir)
    }

    #[test]
    fn a_csv_header_without_id_or_with_an_unknown_column_refuses_the_file() {
        let (db, _dir) = sample_db();
        let refuse = |text: &'static str| {
            let open = || -> std::io::Result<Box<dyn Read>> { Ok(Box::new(text.as_bytes())) };
            import(&db, ImportFormat::Csv, open, false, 0, &mut |_| {}).expect_err("refused whole")
        };
        let e = refuse("age,segment\n38,premium\n");
        assert!(
            matches!(e, DbError::Import(ImportError::NoIdColumn)),
            "{e:?}"
        );
        assert_eq!(
            e.to_string(),
            "reading the import file: line 1: the CSV header has no `id` column"
        );
        let e = refuse("id,agee\nc1,38\n");
        assert!(
            matches!(e, DbError::Import(ImportError::UnknownColumn(_))),
            "{e:?}"
        );
        assert!(
            e.to_string()
                .starts_with("reading the import file: line 1: unknown attribute `customer.agee`"),
            "{e}"
        );
        assert!(db.store().is_empty());
    }

    const JSONL: &str = r#"{"id": "c1", "attributes": {"age": 38, "segment": "premium"}}
{"id": "c2", "age": 41, "products": ["tv"]}

{"id": "c3", "age": "old"}
{"id": "c4", "segmnt": "premium"}
not json
{"id": "c5", "plan": "basic"}
"#;

    #[test]
    fn json_lines_keep_going_past_bad_lines_and_name_them() {
        let (report, db, _dir) = run(ImportFormat::JsonLines, JSONL, false);
        assert_eq!(report.imported, 3);
        let errors: Vec<String> = report.errors.iter().map(ToString::to_string).collect();
        assert_eq!(errors.len(), 3, "{errors:?}");
        assert_eq!(
            errors[0],
            "line 4: attribute `customer.age` must be a whole number, found `\"old\"`"
        );
        assert_eq!(
            errors[1],
            "line 5: unknown attribute `customer.segmnt` (did you mean `segment`?)"
        );
        assert!(errors[2].starts_with("line 6: not JSON"), "{}", errors[2]);
        assert_eq!(db.store().with("c5", |s| s.is_some()), Ok(true));
        assert_eq!(db.store().with("c3", |s| s.is_none()), Ok(true));
    }

    /// Import rows are held to the service's ranges: id length, timestamp values, and
    /// what an error shows of a cell is escaped.
    #[test]
    fn import_rows_are_checked_as_requests_are() {
        let long = "x".repeat(300);
        let jsonl = format!(
            "{{\"id\": \"{long}\", \"age\": 3}}\n{{\"id\": \"c1\", \"contract_end\": \"0000-01-01T00:00:00Z\"}}\n"
        );
        let (report, db, _dir) = run(
            ImportFormat::JsonLines,
            Box::leak(jsonl.into_boxed_str()),
            false,
        );
        let errors: Vec<String> = report.errors.iter().map(ToString::to_string).collect();
        assert_eq!(
            errors,
            [
                "line 1: `id` is 300 bytes long; ids have at most 256".to_string(),
                "line 2: attribute `customer.contract_end` is 0000-01-01T00:00:00Z, outside 0001-01-01T00:00:00Z to 9999-12-30T22:00:00Z".to_string(),
            ]
        );
        assert!(db.store().is_empty());
        let csv = "id,age\nc2,\"4\u{0}\n2\"\n";
        let (report, _db, _dir) = run(ImportFormat::Csv, csv, false);
        assert_eq!(
            report.errors[0].to_string(),
            "line 2: attribute `customer.age` must be a whole number, found `4\\0\\n2`"
        );
    }

    #[test]
    fn strict_imports_nothing_from_a_file_with_a_bad_line() {
        let (report, db, _dir) = run(ImportFormat::JsonLines, JSONL, true);
        assert_eq!(report.imported, 0);
        assert_eq!(report.errors.len(), 3);
        assert!(db.store().is_empty());
    }

    #[test]
    fn csv_rows_parse_by_column() {
        let csv = "id,age,segment,products,churn_risk\n\
                   c1,38,premium,\"mobile,tv\",0.4\n\
                   c2,,consumer,,\n\
                   c3,x,consumer,,\n";
        let (report, db, _dir) = run(ImportFormat::Csv, csv, false);
        assert_eq!(report.imported, 2);
        assert_eq!(report.errors.len(), 1);
        assert_eq!(
            report.errors[0].to_string(),
            "line 4: attribute `customer.age` must be a whole number, found `x`"
        );
        let c1 = db
            .store()
            .with("c1", |s| s.cloned())
            .expect("decodes")
            .expect("c1");
        let schema = &db.catalog().schema.customer;
        let slot = |n: &str| schema.slot(n).expect("attribute") as usize;
        assert_eq!(c1.attributes[slot("age")], Value::Int(38));
        assert_eq!(
            c1.attributes[slot("products")],
            Value::set(["mobile", "tv"])
        );
    }
}
