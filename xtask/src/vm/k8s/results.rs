//! A conformance run's record: the tests that ran and how each ended, read
//! from ginkgo's JUnit report. Each data path's last record is kept in
//! docs/k8s-conformance/<data path>.json, and results.md beside it shows
//! both side by side: written by the run, never by hand.
use std::{
    collections::BTreeSet,
    fmt::Write as _,
    path::{Path, PathBuf},
};

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

use crate::{output_of, workspace_root};

/// The data paths, in the order results.md shows them.
const DATA_PATHS: [(&str, &str); 2] = [("netplane", "netplane"), ("classic", "kubenet-classic")];

/// Where and what a run ran, written to its report directory as it starts
/// (run.json), so that its record can be made again from the directory.
#[derive(Serialize, Deserialize)]
pub struct Provenance {
    pub data_path: String,
    pub date_utc: String,
    /// `git describe --always --dirty` of the tree that ran.
    pub commit: String,
    pub kubernetes: String,
    pub guest_kernel: String,
}

#[derive(Serialize, Deserialize)]
pub struct Record {
    #[serde(flatten)]
    pub run: Provenance,
    /// The suite's own time, from its report.
    pub seconds: f64,
    pub tests: Vec<TestResult>,
}

#[derive(Serialize, Deserialize)]
pub struct TestResult {
    pub name: String,
    pub passed: bool,
    pub seconds: f64,
    /// The failure's first line, when it failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure: Option<String>,
}

/// ginkgo's JUnit report: one suite, a case per spec, skipped ones marked.
#[derive(Deserialize)]
struct Suite {
    #[serde(rename = "@time", default)]
    time: f64,
    #[serde(rename = "testcase", default)]
    cases: Vec<Case>,
}

#[derive(Deserialize)]
struct Case {
    #[serde(rename = "@name")]
    name: String,
    #[serde(rename = "@time", default)]
    time: f64,
    failure: Option<Failure>,
    skipped: Option<serde::de::IgnoredAny>,
}

#[derive(Deserialize)]
struct Failure {
    #[serde(rename = "$text", default)]
    text: String,
}

/// The specs that ran and the suite's seconds, from a JUnit report's text.
pub fn tests_of_junit(xml: &str) -> Result<(Vec<TestResult>, f64)> {
    let suite: Suite = quick_xml::de::from_str(xml).context("reading the JUnit report")?;
    let tests = suite
        .cases
        .into_iter()
        .filter(|c| c.skipped.is_none())
        .map(|c| TestResult {
            name: c.name.trim().to_string(),
            passed: c.failure.is_none(),
            seconds: c.time,
            failure: c.failure.map(|f| first_message_line(&f.text)),
        })
        .collect();
    Ok((tests, suite.time))
}

/// ginkgo writes a failure as code location, message, location: the
/// message's first line says what went wrong.
fn first_message_line(text: &str) -> String {
    let is_location = |l: &str| {
        l.starts_with('/')
            && l.rsplit_once(':')
                .is_some_and(|(_, n)| n.parse::<u32>().is_ok())
    };
    let line = text
        .lines()
        .map(str::trim)
        .find(|l| !l.is_empty() && !is_location(l))
        .unwrap_or("failed");
    line.chars().take(160).collect()
}

fn docs_dir() -> PathBuf {
    workspace_root().join("docs/k8s-conformance")
}

/// A run's provenance, into its report directory before it starts.
pub fn start(report_dir: &Path, classic: bool, guest_kernel: &str) -> Result<()> {
    let run = Provenance {
        data_path: DATA_PATHS[usize::from(classic)].0.into(),
        date_utc: output_of(&["date", "-u", "+%Y-%m-%d %H:%M"]),
        commit: output_of(&["git", "describe", "--always", "--dirty"]),
        kubernetes: crate::kubernetes::VERSION.into(),
        guest_kernel: guest_kernel.into(),
    };
    std::fs::write(
        report_dir.join("run.json"),
        serde_json::to_string_pretty(&run)?,
    )?;
    Ok(())
}

/// Records the run in `report_dir` (its run.json and JUnit report) in
/// docs/k8s-conformance/, rewrites results.md, and returns the record.
pub fn record(report_dir: &Path) -> Result<Record> {
    let read = |name: &str| {
        let path = report_dir.join(name);
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))
    };
    let run: Provenance = serde_json::from_str(&read("run.json")?)?;
    let (tests, seconds) = tests_of_junit(&read("junit_01.xml")?)?;
    let record = Record {
        run,
        seconds: seconds.round(),
        tests,
    };
    std::fs::create_dir_all(docs_dir())?;
    std::fs::write(
        docs_dir().join(format!("{}.json", record.run.data_path)),
        serde_json::to_string_pretty(&record)? + "\n",
    )?;
    let records: Vec<Option<Record>> = DATA_PATHS
        .iter()
        .map(|(k, _)| {
            std::fs::read_to_string(docs_dir().join(format!("{k}.json")))
                .ok()
                .and_then(|t| serde_json::from_str(&t).ok())
        })
        .collect();
    std::fs::write(docs_dir().join("results.md"), side_by_side(&records))?;
    Ok(record)
}

/// results.md: each data path's last run, and every test on both.
pub fn side_by_side(records: &[Option<Record>]) -> String {
    let mut md = String::from(
        "# Conformance results, both data paths\n\n\
         Written by `cargo xtask vm k8s --conformance [--classic]` from ginkgo's \
         JUnit report (docs/k8s-conformance.md says what runs and how).\n\n",
    );
    for ((_, label), r) in DATA_PATHS.iter().zip(records) {
        match r {
            Some(r) => {
                let passed = r.tests.iter().filter(|t| t.passed).count();
                let _ = writeln!(
                    md,
                    "- **{label}**: {} UTC, commit {}, Kubernetes {}, guest Linux {}: \
                     {passed} of {} passed in {:.0} s",
                    r.run.date_utc,
                    r.run.commit,
                    r.run.kubernetes,
                    r.run.guest_kernel,
                    r.tests.len(),
                    r.seconds
                );
            }
            None => {
                let _ = writeln!(md, "- **{label}**: not run yet");
            }
        }
    }
    md.push_str("\n| test |");
    for (_, label) in DATA_PATHS {
        let _ = write!(md, " {label} |");
    }
    md.push_str("\n|---|---|---|\n");
    let names: BTreeSet<&str> = records
        .iter()
        .flatten()
        .flat_map(|r| r.tests.iter().map(|t| t.name.as_str()))
        .collect();
    for name in names {
        let _ = write!(md, "| {} |", name.replace('|', "\\|"));
        for r in records {
            let cell = match r
                .as_ref()
                .and_then(|r| r.tests.iter().find(|t| t.name == name))
            {
                None => "not run".to_string(),
                Some(t) if t.passed => format!("passed ({:.0} s)", t.seconds),
                Some(t) => format!(
                    "**failed** ({:.0} s): {}",
                    t.seconds,
                    t.failure.as_deref().unwrap_or("").replace('|', "\\|")
                ),
            };
            let _ = write!(md, " {cell} |");
        }
        md.push('\n');
    }
    md
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The shape ginkgo v1 writes: skipped specs are left out, a failure
    /// keeps its first line.
    #[test]
    fn junit_report_gives_the_specs_that_ran() {
        let xml = r#"<?xml version="1.0" encoding="UTF-8"?>
  <testsuite name="Kubernetes e2e suite" tests="3" failures="1" errors="0" time="120.5">
      <testcase name="[sig-network] Services should serve a basic endpoint from pods  [Conformance]" classname="Kubernetes e2e suite" time="59.8">
      </testcase>
      <testcase name="[sig-network] Services should be able to create a functioning NodePort service [Conformance]" classname="Kubernetes e2e suite" time="60.1">
          <failure type="Failure">
/src/test/e2e/network/service.go:1234
Unexpected error: timed out
          </failure>
          <system-out>log</system-out>
      </testcase>
      <testcase name="[sig-storage] something else" classname="Kubernetes e2e suite" time="0">
          <skipped></skipped>
      </testcase>
  </testsuite>"#;
        let (tests, seconds) = tests_of_junit(xml).unwrap();
        assert_eq!(seconds, 120.5);
        assert_eq!(tests.len(), 2);
        assert!(tests[0].passed);
        assert_eq!(
            tests[0].name,
            "[sig-network] Services should serve a basic endpoint from pods  [Conformance]"
        );
        assert!(!tests[1].passed);
        assert_eq!(
            tests[1].failure.as_deref(),
            Some("Unexpected error: timed out")
        );
    }

    #[test]
    fn side_by_side_marks_what_one_data_path_did_not_run() {
        let r = Record {
            run: Provenance {
                data_path: "netplane".into(),
                date_utc: "2026-12-07 23:00".into(),
                commit: "abc1234".into(),
                kubernetes: "1.20.2".into(),
                guest_kernel: "6.12".into(),
            },
            seconds: 600.0,
            tests: vec![TestResult {
                name: "a | b".into(),
                passed: true,
                seconds: 12.0,
                failure: None,
            }],
        };
        let md = side_by_side(&[Some(r), None]);
        assert!(md.contains("1 of 1 passed in 600 s"), "{md}");
        assert!(md.contains("**kubenet-classic**: not run yet"), "{md}");
        assert!(md.contains("| a \\| b | passed (12 s) | not run |"), "{md}");
    }
}
