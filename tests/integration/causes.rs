//! Blocking causes, live on every CPython the suite runs: each scenario of tests/py/causes.py
//! blocks the loop twice in one way; the episodes must carry the right kind, source, culprit
//! line and duration, advice that matches what the blocking code did with the GIL (held: never
//! `to_thread`; released: `to_thread` where offloading is the fix), and a flame-graph frame as
//! wide as the episode lasted. Third-party libraries that need a server of their own (redis,
//! boto3, ...) are covered by the classifier's unit tests on constructed stacks; more kinds are
//! in `causes_advice`.

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

use crate::support::{duration_tolerance, marker_line, pythons, record_scenario, repo, Run};

pub const RATE: f64 = 200.0;

pub fn script() -> PathBuf {
    repo().join("tests/py/causes.py")
}

/// The line of `# CAUSE name` in causes.py or causes_advice.py.
pub fn marker(name: &str) -> u64 {
    let tag = format!("# CAUSE {name}");
    for file in ["tests/py/causes.py", "tests/py/causes_advice.py"] {
        let text = std::fs::read_to_string(repo().join(file)).unwrap();
        if let Some(i) = text.lines().position(|l| l.trim_end().ends_with(&tag)) {
            return i as u64 + 1;
        }
    }
    panic!("no marker {tag}")
}

/// What one scenario's episodes must say.
pub struct Case {
    pub scenario: &'static str,
    /// Accepted kinds: fsync on a fast virtual disk is partly on-CPU in the kernel.
    pub kind: &'static [&'static str],
    pub source: Option<&'static str>,
    /// The culprit's function (its last dotted component: `emit` is `SlowHandler.emit` on
    /// 3.11+).
    pub culprit: &'static str,
    /// Extra duration error allowed beyond one sampling interval, in ms.
    pub slack_ms: f64,
    /// `holds_gil`: whether the blocking thread held the GIL (`None`: not settled).
    pub gil: Option<bool>,
    /// Whether offloading is the fix when the GIL was released (so the advice names
    /// `to_thread`); false for fixes that replace the call (`asyncio.sleep`, QueueHandler).
    pub offload: bool,
    /// Words the advice must contain.
    pub advice: &'static [&'static str],
    pub driver: Option<&'static str>,
    /// The `type` of the fd the episode waited on (not checked when `None`).
    pub fd: Option<&'static str>,
    pub self_call: bool,
    /// A module the scenario needs; without it the case is SKIPPED for that interpreter.
    pub module: Option<&'static str>,
}

pub const BASE: Case = Case {
    scenario: "",
    kind: &["cpu"],
    source: None,
    culprit: "",
    slack_ms: 8.0,
    gil: Some(false),
    offload: true,
    advice: &[],
    driver: None,
    fd: None,
    self_call: false,
    module: None,
};

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
        offload: false,
        advice: &["asyncio.sleep", "ASYNC251"],
        ..BASE
    },
    Case {
        scenario: "urllib",
        kind: &["network"],
        source: Some("urllib"),
        culprit: "block_urllib",
        slack_ms: 4.0,
        advice: &["httpx.AsyncClient", "ASYNC210"],
        fd: Some("socket"),
        ..BASE
    },
    Case {
        scenario: "socket",
        kind: &["network"],
        source: Some("socket"),
        culprit: "block_socket",
        slack_ms: 4.0,
        advice: &["open_connection"],
        fd: Some("socket"),
        ..BASE
    },
    Case {
        scenario: "fsync",
        kind: &["file", "cpu"],
        source: Some("os.fsync"),
        culprit: "block_fsync",
        gil: None,
        ..BASE
    },
    // A FIFO is a pipe, although `open` is the same call as for a file.
    Case {
        scenario: "file_read",
        kind: &["pipe"],
        source: Some("pipe"),
        culprit: "block_file_read",
        slack_ms: 6.0,
        fd: Some("pipe"),
        ..BASE
    },
    // sqlite3 releases the GIL while the query runs.
    Case {
        scenario: "sqlite",
        kind: &["cpu"],
        source: Some("sqlite3"),
        culprit: "block_sqlite",
        advice: &["aiosqlite"],
        ..BASE
    },
    Case {
        scenario: "subprocess",
        kind: &["subprocess"],
        source: Some("subprocess"),
        culprit: "block_subprocess",
        offload: false,
        advice: &["create_subprocess_exec", "ASYNC220-222"],
        ..BASE
    },
    Case {
        scenario: "logging",
        kind: &["network"],
        source: Some("logging"),
        culprit: "block_logging",
        slack_ms: 4.0,
        offload: false,
        advice: &["QueueHandler"],
        ..BASE
    },
    // Python code holds the GIL: a process pool, never `to_thread`.
    Case {
        scenario: "cpu",
        culprit: "block_cpu",
        gil: Some(true),
        advice: &["process pool"],
        ..BASE
    },
    Case {
        scenario: "c_call",
        culprit: "block_c_call",
        gil: Some(true),
        advice: &["process pool"],
        ..BASE
    },
    Case {
        scenario: "lock",
        kind: &["lock"],
        source: Some("threading"),
        culprit: "block_lock",
        slack_ms: 4.0,
        offload: false,
        advice: &["asyncio.Lock"],
        ..BASE
    },
    Case {
        scenario: "requests",
        kind: &["network"],
        source: Some("requests"),
        culprit: "block_requests",
        slack_ms: 4.0,
        advice: &["httpx.AsyncClient", "ASYNC210"],
        module: Some("requests"),
        ..BASE
    },
];

pub fn has_module(py: &Path, module: &str) -> bool {
    Command::new(py)
        .args(["-c", &format!("import {module}")])
        .status()
        .is_ok_and(|s| s.success())
}

pub fn run(py: &Path, scenario: &str) -> Run {
    let r = record_scenario(py, &script(), &[scenario], &["--rate", &RATE.to_string()]);
    assert!(r.status.success(), "{scenario}: {}", r.stderr);
    r
}

pub fn check_durations(label: &str, r: &Run, loop_blocks: &[Value], slack_ms: f64) {
    assert_eq!(
        r.episodes.len(),
        loop_blocks.len(),
        "{label}: {:#?}\n{}\ntarget's output:\n{}",
        r.episodes,
        r.stderr,
        r.output.join("\n")
    );
    for (ep, b) in r.episodes.iter().zip(loop_blocks) {
        let (got, want) = (
            ep["duration_ms"].as_f64().unwrap(),
            b["ms"].as_f64().unwrap(),
        );
        assert!(
            (got - want).abs() <= duration_tolerance(ep, RATE, slack_ms),
            "{label}: {got:.1} ms vs {want:.1} ms\n{ep}"
        );
    }
}

/// Each episode's frame in the flame graph is as wide as the episode lasted: its stacks are
/// weighed by the episode's own time (`episode #N: X ms at ... (W ms, P%)`).
pub fn check_widths(label: &str, svg: &str) {
    let mut seen = 0;
    for title in svg.split("<title>episode #").skip(1) {
        let title = title.split("</title>").next().unwrap();
        let drawn = |s: &str| -> f64 { s.trim().replace(',', "").parse().unwrap_or(f64::NAN) };
        let lasted = drawn(
            title
                .split(": ")
                .nth(1)
                .unwrap()
                .split(" ms")
                .next()
                .unwrap(),
        );
        let width = drawn(
            title
                .rsplit('(')
                .next()
                .unwrap()
                .split(" ms")
                .next()
                .unwrap(),
        );
        assert!(
            (lasted - width).abs() <= 1.0,
            "{label}: an episode of {lasted} ms is drawn {width} ms wide: {title}"
        );
        seen += 1;
    }
    assert!(seen > 0, "{label}: no episode in the flame graph");
}

/// The checks every episode of a case must pass.
pub fn check_episode(label: &str, case: &Case, ep: &Value) {
    let s = |k: &str| ep[k].as_str();
    assert!(
        case.kind.contains(&s("kind").unwrap_or("")),
        "{label}: kind: {ep}"
    );
    assert_eq!(s("source"), case.source, "{label}: source: {ep}");
    assert_eq!(s("driver"), case.driver, "{label}: driver: {ep}");
    let function = ep["culprit"]["function"].as_str().unwrap_or("");
    assert_eq!(
        function.rsplit('.').next(),
        Some(case.culprit),
        "{label}: culprit: {ep}"
    );
    let line = marker(case.scenario);
    assert!(
        line_ok(case.scenario, ep["culprit"]["line"].as_u64(), line),
        "{label}: line {line}: {ep}"
    );
    let advice = s("advice").unwrap_or("");
    for word in case.advice {
        assert!(
            advice.contains(word),
            "{label}: advice lacks {word:?}: {ep}"
        );
    }
    if case.gil.is_some() {
        assert_eq!(
            ep["holds_gil"].as_bool(),
            case.gil,
            "{label}: holds_gil: {ep}"
        );
    }
    // The advice follows the evidence recorded in the episode itself.
    match ep["holds_gil"].as_bool() {
        Some(true) => assert!(!advice.contains("to_thread"), "{label}: held: {ep}"),
        Some(false) if case.offload => {
            assert!(advice.contains("to_thread"), "{label}: released: {ep}")
        }
        _ => {}
    }
    if case.fd.is_some() {
        assert_eq!(ep["fd"]["type"].as_str(), case.fd, "{label}: fd: {ep}");
    }
    assert_eq!(
        ep["self_call"].as_bool().unwrap_or(false),
        case.self_call,
        "{label}: self_call: {ep}"
    );
}

/// Run each case on each interpreter and check it.
pub fn check_cases(cases: &[Case]) {
    for (v, py) in pythons() {
        for case in cases {
            if let Some(m) = case.module.filter(|m| !has_module(&py, m)) {
                eprintln!(
                    "SKIPPED: {} needs {m}, not installed for CPython {v} ({}; bash scripts/deps/causes.sh)",
                    case.scenario,
                    py.display()
                );
                continue;
            }
            let label = format!("{v} {}", case.scenario);
            let r = run(&py, case.scenario);
            check_durations(&label, &r, &r.blocks, case.slack_ms);
            for ep in &r.episodes {
                check_episode(&label, case, ep);
            }
            check_widths(&label, &r.svg);
        }
    }
}

#[test]
fn each_cause_is_named() {
    check_cases(CASES);
}

/// A thread holding the GIL in one long C call starves an idle loop: kind `gil`, the holder
/// named, its code blamed, although the loop's own stack shows it in the selector. More
/// holders (base64, the GC, a regex) are in `causes_advice`.
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
            for culprit in [&ep["culprit"], &ep["gil_holder"]["culprit"]] {
                assert_eq!(
                    culprit["function"].as_str(),
                    Some("long_c_call"),
                    "{label}: {ep}"
                );
                assert_eq!(culprit["line"].as_u64(), Some(line), "{label}: {ep}");
            }
            let advice = ep["advice"].as_str().unwrap();
            assert!(advice.contains("GIL"), "{label}");
            assert!(!advice.contains("to_thread"), "{label}: {advice}");
            assert_eq!(ep["holds_gil"].as_bool(), Some(true), "{label}: {ep}");
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
