//! `nextbest check` as a user runs it: on the sample catalog, and on copies of it with
//! mistakes, through the real binary.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn sample_rules() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("rules")
}

fn check(dir: &Path, extra: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_nextbest"))
        .arg("check")
        .arg("--rules")
        .arg(dir)
        .args(extra)
        .output()
        .expect("run nextbest")
}

/// A copy of the sample catalog in a fresh temporary directory, removed on drop.
struct Copy {
    dir: PathBuf,
}

impl Copy {
    fn new(name: &str) -> Copy {
        let dir = std::env::temp_dir().join(format!("nextbest-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        copy_dir(&sample_rules(), &dir);
        Copy { dir }
    }

    /// Replaces the first `from` in `file` with `to`, and returns the 1-based line and
    /// column where `to` starts.
    fn edit(&self, file: &str, from: &str, to: &str) -> (usize, usize) {
        let path = self.dir.join(file);
        let text = std::fs::read_to_string(&path).expect("read");
        let at = text
            .find(from)
            .unwrap_or_else(|| panic!("`{from}` not in {file}"));
        std::fs::write(&path, text.replacen(from, to, 1)).expect("write");
        let line = text[..at].matches('\n').count() + 1;
        let col = text[..at]
            .rsplit('\n')
            .next()
            .map_or(0, |l| l.chars().count())
            + 1;
        (line, col)
    }
}

impl Drop for Copy {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("mkdir");
    for entry in std::fs::read_dir(from).expect("read dir") {
        let entry = entry.expect("entry");
        let target = to.join(entry.file_name());
        if entry.file_type().expect("type").is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).expect("copy");
        }
    }
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[test]
fn the_sample_catalog_passes_with_a_summary() {
    let out = check(&sample_rules(), &[]);
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", text(&out.stderr));
    assert!(stdout.contains("version"), "{stdout}");
    // How much of the rules a decision shares: the sample's rules have 50 clauses.
    assert!(
        stdout.contains("  rules: 50 eligibility clause(s), "),
        "{stdout}"
    );
    for placement in [
        "call_center.next_best",
        "email.hero",
        "web.home_banner",
        "app.card",
    ] {
        assert!(
            stdout.contains(placement),
            "{placement} missing from:\n{stdout}"
        );
    }
}

#[test]
fn the_sample_catalog_is_as_large_as_promised() {
    let out = check(&sample_rules(), &["--format", "json"]);
    assert!(out.status.success());
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert!(v["counts"]["offers"].as_u64() >= Some(20), "{v}");
    assert!(
        v["counts"]["customer_attributes"].as_u64() >= Some(20),
        "{v}"
    );
    assert!(v["counts"]["placements"].as_u64() >= Some(4), "{v}");
    assert_eq!(v["counts"]["experiments"].as_u64(), Some(1), "{v}");
}

#[test]
fn a_misspelled_attribute_points_at_its_line_and_column() {
    let copy = Copy::new("typo");
    let (line, col) = copy.edit(
        "offers/upsell.yaml",
        "customer.roaming_days_90d >= 4",
        "customer.roaming_dayz_90d >= 4",
    );
    let out = check(&copy.dir, &[]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = text(&out.stderr);
    let expected = format!(
        "{}:{line}:{col}: error: unknown attribute `customer.roaming_dayz_90d` in eligibility of offer `roaming_pass`",
        copy.dir.join("offers/upsell.yaml").display()
    );
    assert!(
        stderr.contains(&expected),
        "expected `{expected}` in:\n{stderr}"
    );
    assert!(
        stderr
            .contains("^^^^^^^^^^^^^^^^^^^^^^^^^ help: did you mean `customer.roaming_days_90d`?"),
        "{stderr}"
    );
    assert!(stderr.contains("1 error(s)"), "{stderr}");
}

#[test]
fn three_mistakes_in_three_files_are_all_reported() {
    let copy = Copy::new("three");
    let a = copy.edit("placements.yaml", "slots: 3", "slotz: 3");
    let b = copy.edit("experiments.yaml", "epsilon: 0.1", "epsilon: 1.1");
    let c = copy.edit(
        "offers/service.yaml",
        "days_since(customer.last_contact) > 30",
        "days_since(customer.last_contact) > 'x'",
    );
    let out = check(&copy.dir, &["--format", "json"]);
    assert_eq!(out.status.code(), Some(1));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    let errors = v["errors"].as_array().expect("errors");
    let found: Vec<(String, u64, u64)> = errors
        .iter()
        .map(|e| {
            let path = e["path"].as_str().unwrap_or("").to_string();
            (
                path,
                e["line"].as_u64().unwrap_or(0),
                e["column"].as_u64().unwrap_or(0),
            )
        })
        .collect();
    let at = |file: &str, (line, col): (usize, usize), shift: &str| {
        (
            copy.dir.join(file).display().to_string(),
            line as u64,
            (col + shift.len()) as u64,
        )
    };
    assert_eq!(
        found,
        [
            at("placements.yaml", a, ""),
            at("experiments.yaml", b, "epsilon: "),
            // A type mismatch points at the operator.
            at(
                "offers/service.yaml",
                c,
                "days_since(customer.last_contact) "
            ),
        ],
        "{v}"
    );
}

#[test]
fn a_missing_directory_is_a_clear_error() {
    let out = check(Path::new("/nonexistent/nextbest-rules"), &[]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("cannot read `/nonexistent/nextbest-rules/schema.yaml`"),
        "{stderr}"
    );
}
