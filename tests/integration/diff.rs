//! `loopspy diff`: golden text and JSON on real before/after recordings of the demo service
//! (tests/fixtures/demo_before.jsonl and demo_fixed.jsonl, the latter with `--fixed`), episodes
//! logs as input, and the exit codes CI uses.

use std::process::{Command, Stdio};

use loopspy::commands::diff::{compare, load, write_text};

use crate::offline::golden;
use crate::support::{loopspy, repo};

fn fixture(name: &str) -> std::path::PathBuf {
    repo().join("tests/fixtures").join(name)
}

/// Paths in outputs are relative to the repository, so goldens do not depend on the checkout.
fn relative(text: &str) -> String {
    text.replace(&format!("{}/", repo().display()), "")
}

#[test]
fn before_and_after_the_demo_fix() {
    let before = load(&fixture("demo_before.jsonl"), 50.0, false).unwrap();
    let after = load(&fixture("demo_fixed.jsonl"), 50.0, false).unwrap();
    let d = compare(&before, &after);
    let status = |f: &str| {
        d.culprits
            .iter()
            .find(|c| c.culprit.starts_with(f))
            .map(|c| c.status)
    };
    assert_eq!(status("compress_export"), Some("fixed"));
    assert_eq!(status("legacy_user_lookup"), Some("fixed"));
    assert!(!d.verdict.regression, "{}", d.verdict.text);
    assert!(d.before.blocked_ms_per_min > d.after.blocked_ms_per_min);
    let mut text = Vec::new();
    write_text(&d, &mut text).unwrap();
    let text = relative(&String::from_utf8(text).unwrap());
    golden(&repo().join("tests/golden/diff_demo.txt"), &text);
    let json = relative(&serde_json::to_string_pretty(&d).unwrap()) + "\n";
    golden(&repo().join("tests/golden/diff_demo.json"), &json);

    // The other way round, the fixes are undone: a regression with two new culprits.
    let d = compare(&after, &before);
    assert!(d.verdict.regression);
    assert!(
        d.verdict.text.starts_with("REGRESSION"),
        "{}",
        d.verdict.text
    );
    let mut text = Vec::new();
    write_text(&d, &mut text).unwrap();
    golden(
        &repo().join("tests/golden/diff_demo_reversed.txt"),
        &relative(&String::from_utf8(text).unwrap()),
    );
}

/// Episodes logs give the same per-culprit counts as the recordings they came from.
#[test]
fn episodes_logs_as_input() {
    let dir = tempfile::tempdir().unwrap();
    let mut paths = Vec::new();
    for name in ["demo_before", "demo_fixed"] {
        let log = dir.path().join(format!("{name}.episodes.jsonl"));
        let status = Command::new(loopspy())
            .args(["report", "-o"])
            .arg(dir.path().join(format!("{name}.svg")))
            .arg("--episodes")
            .arg(&log)
            .arg(fixture(&format!("{name}.jsonl")))
            .stderr(Stdio::null())
            .status()
            .unwrap();
        assert!(status.success());
        paths.push(log);
    }
    let from_logs = compare(
        &load(&paths[0], 50.0, false).unwrap(),
        &load(&paths[1], 50.0, false).unwrap(),
    );
    let from_recordings = compare(
        &load(&fixture("demo_before.jsonl"), 50.0, false).unwrap(),
        &load(&fixture("demo_fixed.jsonl"), 50.0, false).unwrap(),
    );
    let counts = |d: &loopspy::commands::diff::Diff| {
        d.culprits
            .iter()
            .map(|c| {
                (
                    c.culprit.clone(),
                    c.before.episodes,
                    c.after.episodes,
                    c.status,
                )
            })
            .collect::<Vec<_>>()
    };
    let logs = counts(&from_logs);
    for (culprit, b, a, _) in counts(&from_recordings) {
        assert!(
            logs.iter().any(|l| l.0 == culprit && l.1 == b && l.2 == a),
            "{culprit}: {logs:?}"
        );
    }
    assert_eq!(from_logs.before.input, "episodes");
}

fn diff(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(loopspy())
        .arg("diff")
        .args(args)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn exit_codes() {
    let before = fixture("demo_before.jsonl").display().to_string();
    let after = fixture("demo_fixed.jsonl").display().to_string();
    let (code, out, _) = diff(&[&before, &after, "--fail-on-regression"]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("verdict: "), "{out}");
    // A regression is only an error when asked.
    let (code, out, _) = diff(&[&after, &before]);
    assert_eq!(code, 0, "{out}");
    let (code, out, _) = diff(&[&after, &before, "--fail-on-regression", "--json"]);
    assert_eq!(code, 3, "{out}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["verdict"]["regression"], true);
    // Unreadable input: exit 1 with one line saying what to pass.
    let (code, _, err) = diff(&["/nonexistent/before.jsonl", &after]);
    assert_eq!(code, 1);
    assert!(
        err.starts_with("loopspy: error: cannot read recording /nonexistent/before.jsonl"),
        "{err}"
    );
    assert_eq!(err.lines().count(), 1, "{err}");
    let dir = tempfile::tempdir().unwrap();
    let junk = dir.path().join("junk.txt");
    std::fs::write(&junk, "hello\n").unwrap();
    let (code, _, err) = diff(&[&junk.display().to_string(), &after]);
    assert_eq!(code, 1);
    assert!(err.contains("diff takes recordings"), "{err}");
    let (code, _, _) = diff(&[&before]);
    assert_eq!(code, 2);
}
