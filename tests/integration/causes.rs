//! Blocking causes, live on every CPython 3.8–3.13 here: each scenario of tests/py/causes.py
//! blocks the loop twice in one way; the episodes must carry the right kind, source, culprit
//! line and duration. Third-party libraries that need a server (psycopg2, redis, ...) are
//! covered by the classifier's unit tests on constructed stacks.

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

use crate::support::{marker_line, pythons, record_scenario, repo, Run};

const RATE: f64 = 200.0;

fn script() -> PathBuf {
    repo().join("tests/py/causes.py")
}

fn marker(name: &str) -> u64 {
    let text = std::fs::read_to_string(script()).unwrap();
    let tag = format!("# CAUSE {name}");
    text.lines()
        .position(|l| l.trim_end().ends_with(&tag))
        .unwrap() as u64
        + 1
}

struct Case {
    scenario: &'static str,
    /// Accepted kinds: fsync on a fast virtual disk is partly on-CPU in the kernel.
    kind: &'static [&'static str],
    source: Option<&'static str>,
    culprit: &'static str,
    /// Extra duration error allowed beyond one sampling interval, in ms.
    slack_ms: f64,
}

/// A Python loop is sampled on its header or its body: the marker line or the next.
fn line_ok(scenario: &str, got: Option<u64>, marker: u64) -> bool {
    got == Some(marker) || (scenario == "cpu" && got == Some(marker + 1))
}

const CASES: &[Case] = &[
    Case {
        scenario: "sleep",
        kind: &["sleep"],
        source: Some("time.sleep"),
        culprit: "block_sleep",
        slack_ms: 4.0,
    },
    Case {
        scenario: "urllib",
        kind: &["network"],
        source: Some("urllib"),
        culprit: "block_urllib",
        slack_ms: 4.0,
    },
    Case {
        scenario: "socket",
        kind: &["network"],
        source: Some("socket"),
        culprit: "block_socket",
        slack_ms: 4.0,
    },
    Case {
        scenario: "fsync",
        kind: &["file", "cpu"],
        source: Some("os.fsync"),
        culprit: "block_fsync",
        slack_ms: 8.0,
    },
    Case {
        scenario: "file_read",
        kind: &["file"],
        source: Some("open"),
        culprit: "block_file_read",
        slack_ms: 6.0,
    },
    Case {
        scenario: "sqlite",
        kind: &["cpu"],
        source: Some("sqlite3"),
        culprit: "block_sqlite",
        slack_ms: 8.0,
    },
    Case {
        scenario: "subprocess",
        kind: &["subprocess"],
        source: Some("subprocess"),
        culprit: "block_subprocess",
        slack_ms: 8.0,
    },
    Case {
        scenario: "logging",
        kind: &["network"],
        source: Some("logging"),
        culprit: "block_logging",
        slack_ms: 4.0,
    },
    Case {
        scenario: "cpu",
        kind: &["cpu"],
        source: None,
        culprit: "block_cpu",
        slack_ms: 8.0,
    },
    Case {
        scenario: "c_call",
        kind: &["cpu"],
        source: None,
        culprit: "block_c_call",
        slack_ms: 8.0,
    },
    Case {
        scenario: "lock",
        kind: &["lock"],
        source: Some("threading"),
        culprit: "block_lock",
        slack_ms: 4.0,
    },
    Case {
        scenario: "requests",
        kind: &["network"],
        source: Some("requests"),
        culprit: "block_requests",
        slack_ms: 4.0,
    },
];

fn has_module(py: &Path, module: &str) -> bool {
    Command::new(py)
        .args(["-c", &format!("import {module}")])
        .status()
        .is_ok_and(|s| s.success())
}

fn run(py: &Path, scenario: &str) -> Run {
    let r = record_scenario(py, &script(), &[scenario], &["--rate", &RATE.to_string()]);
    assert!(r.status.success(), "{scenario}: {}", r.stderr);
    r
}

fn check_durations(label: &str, r: &Run, loop_blocks: &[Value], slack_ms: f64) {
    assert_eq!(
        r.episodes.len(),
        loop_blocks.len(),
        "{label}: {:#?}\n{}",
        r.episodes,
        r.stderr
    );
    for (ep, b) in r.episodes.iter().zip(loop_blocks) {
        let (got, want) = (
            ep["duration_ms"].as_f64().unwrap(),
            b["ms"].as_f64().unwrap(),
        );
        assert!(
            (got - want).abs() <= 1000.0 / RATE + slack_ms,
            "{label}: {got:.1} ms vs {want:.1} ms\n{ep}"
        );
    }
}

#[test]
fn each_cause_is_named() {
    for (v, py) in pythons() {
        for case in CASES {
            if case.scenario == "requests" && !has_module(&py, "requests") {
                eprintln!("SKIPPED: requests is not installed for CPython {v} ({} -m pip install requests)", py.display());
                continue;
            }
            let label = format!("{v} {}", case.scenario);
            let r = run(&py, case.scenario);
            check_durations(&label, &r, &r.blocks, case.slack_ms);
            let line = marker(case.scenario);
            for ep in &r.episodes {
                assert!(
                    case.kind.contains(&ep["kind"].as_str().unwrap_or("")),
                    "{label}: {ep}"
                );
                assert_eq!(ep["source"].as_str(), case.source, "{label}: {ep}");
                assert_eq!(
                    ep["culprit"]["function"].as_str(),
                    Some(case.culprit),
                    "{label}: {ep}"
                );
                assert!(
                    line_ok(case.scenario, ep["culprit"]["line"].as_u64(), line),
                    "{label}: line {line}: {ep}"
                );
                assert!(
                    ep["advice"].as_str().is_some_and(|a| !a.is_empty()),
                    "{label}: {ep}"
                );
            }
        }
    }
}

/// A thread holding the GIL in one long C call starves an idle loop: kind `gil`, the holder
/// named, its code blamed, although the loop's own stack shows it in the selector.
#[test]
fn gil_starvation_blames_the_holder() {
    let line = marker("gil");
    for (v, py) in pythons() {
        let label = format!("{v} gil");
        let r = run(&py, "gil");
        // The hog starts ~0-5 ms before the loop next wants to wake up.
        check_durations(&label, &r, &r.blocks, 12.0);
        let loop_tid = r.ready["tid"].as_u64();
        for ep in &r.episodes {
            assert_eq!(ep["kind"].as_str(), Some("gil"), "{label}: {ep}");
            assert_eq!(
                ep["tid"].as_u64(),
                loop_tid,
                "{label}: the loop thread is the one blocked"
            );
            assert_eq!(
                ep["gil_holder"]["thread"].as_str(),
                Some("gil-hog"),
                "{label}: {ep}"
            );
            assert_eq!(
                ep["culprit"]["function"].as_str(),
                Some("gil_hog"),
                "{label}: {ep}"
            );
            assert_eq!(ep["culprit"]["line"].as_u64(), Some(line), "{label}: {ep}");
            assert!(ep["advice"].as_str().unwrap().contains("GIL"), "{label}");
        }
        assert!(
            r.svg.contains("GIL held by gil-hog"),
            "{label}: the flame graph shows the holder"
        );
    }
}

#[test]
fn markers_exist() {
    // The culprit lines of scenarios.py and causes.py are found by their markers.
    assert!(marker_line(&repo().join("tests/py/scenarios.py"), "sleep") > 0);
    for case in CASES {
        assert!(marker(case.scenario) > 0);
    }
}
