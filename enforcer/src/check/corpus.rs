//! The check corpus (`enforcer/tests/corpus`): real Istio configuration (istio/istio samples and
//! test data, istio/api examples and test data, istio.io tasks) and cases written from Istio's
//! validation rules. Each file starts with comments naming its source and the expected verdict:
//!
//! ```yaml
//! # Source: https://github.com/istio/istio/blob/<commit>/samples/external/github.yaml
//! # Verdict: valid | warning | invalid
//! # Expect: a substring of an expected error (invalid) or warning (warning); repeatable
//! ```
//!
//! The test runs `check`'s evaluation on every file and asserts the verdict and the substrings.

use std::path::{Path, PathBuf};

use super::{Verdict, evaluate};
use crate::config::Severity;

struct Case {
    path: PathBuf,
    verdict: Verdict,
    expects: Vec<String>,
}

fn corpus_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/corpus")
}

fn files(dir: &Path, out: &mut Vec<PathBuf>) {
    let mut entries: Vec<PathBuf> = std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().path()).collect();
    entries.sort();
    for p in entries {
        if p.is_dir() {
            files(&p, out);
        } else if p.extension().is_some_and(|e| e == "yaml") {
            out.push(p);
        }
    }
}

fn parse_case(path: PathBuf) -> Case {
    let text = std::fs::read_to_string(&path).unwrap();
    let mut verdict = None;
    let mut expects = Vec::new();
    let mut source = false;
    for line in text.lines().take_while(|l| l.starts_with('#')) {
        if let Some(s) = line.strip_prefix("# Source: ") {
            source = !s.trim().is_empty();
        } else if let Some(v) = line.strip_prefix("# Verdict: ") {
            verdict = Some(match v.trim() {
                "valid" => Verdict::Valid,
                "warning" => Verdict::Warning,
                "invalid" => Verdict::Invalid,
                other => panic!("{}: unknown verdict {other:?}", path.display()),
            });
        } else if let Some(e) = line.strip_prefix("# Expect: ") {
            expects.push(e.to_string());
        }
    }
    assert!(source, "{}: no `# Source:` line", path.display());
    let verdict = verdict.unwrap_or_else(|| panic!("{}: no `# Verdict:` line", path.display()));
    if verdict != Verdict::Valid {
        assert!(!expects.is_empty(), "{}: a {verdict:?} case needs `# Expect:` lines", path.display());
    }
    Case { path, verdict, expects }
}

#[test]
fn every_corpus_file_gets_its_expected_verdict() {
    let mut paths = Vec::new();
    files(&corpus_dir(), &mut paths);
    assert!(paths.len() >= 150, "corpus has only {} files", paths.len());
    let mut failures = Vec::new();
    let mut counts = [0usize; 3];
    for path in paths {
        let case = parse_case(path);
        let report = evaluate(std::slice::from_ref(&case.path));
        let got = report.verdict();
        counts[match case.verdict {
            Verdict::Valid => 0,
            Verdict::Warning => 1,
            Verdict::Invalid => 2,
        }] += 1;
        // What an expectation is matched against: errors for invalid files, warnings otherwise.
        let messages: Vec<String> = match case.verdict {
            Verdict::Invalid => report.errors.clone(),
            _ => report
                .registry
                .iter()
                .flat_map(|r| r.warnings.iter())
                .filter(|d| d.severity == Severity::Warning)
                .map(|d| d.to_string())
                .collect(),
        };
        let name = case.path.strip_prefix(corpus_dir()).unwrap_or(&case.path).display().to_string();
        if got != case.verdict {
            let shown: Vec<String> = report
                .errors
                .iter()
                .cloned()
                .chain(report.registry.iter().flat_map(|r| r.warnings.iter()).map(|d| format!("{}: {d}", d.severity)))
                .collect();
            failures.push(format!("{name}: expected {:?}, got {got:?}:\n    {}", case.verdict, shown.join("\n    ")));
            continue;
        }
        for e in &case.expects {
            if !messages.iter().any(|m| m.contains(e.as_str())) {
                failures.push(format!("{name}: no message contains {e:?}; got:\n    {}", messages.join("\n    ")));
            }
        }
        // Every error names its file and line, and says how to fix it.
        for m in &report.errors {
            if report.registry.is_none() {
                assert!(m.contains(&case.path.display().to_string()), "{name}: error without its file: {m}");
                assert!(m.contains("; fix: "), "{name}: error without a fix: {m}");
            }
        }
    }
    eprintln!("corpus: {} valid, {} with warnings, {} invalid", counts[0], counts[1], counts[2]);
    assert!(failures.is_empty(), "{} of the corpus disagree:\n{}", failures.len(), failures.join("\n"));
}
