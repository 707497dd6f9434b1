//! Live tests: real Python processes (every CPython 3.8–3.13 on the machine) running one
//! scenario each from tests/py/scenarios.py, recorded by `loopspy record --pid`. Each checks the
//! episodes against the target's own timing: callback, culprit line, thread and duration.

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

use crate::support::{
    check_error_bars, duration_tolerance, marker_line, pythons, record_scenario, repo,
    wait_for_sampling, Run,
};

/// Sampling rate of the live tests; durations must be within the episode's error bar (one
/// interval when the sampler keeps time) plus scheduling slack on this 2-core machine, where
/// target, sampler and the other test share the CPUs.
const RATE: f64 = 200.0;
const SLACK_MS: f64 = 4.0;

fn script() -> PathBuf {
    repo().join("tests/py/scenarios.py")
}

fn run(python: &Path, scenario: &str) -> Run {
    let run = record_scenario(
        python,
        &script(),
        &[scenario],
        &["--rate", &RATE.to_string()],
    );
    assert!(
        run.status.success(),
        "loopspy failed on {scenario}:\n{}",
        run.stderr
    );
    run
}

fn s<'a>(v: &'a Value, key: &str) -> &'a str {
    v[key]
        .as_str()
        .unwrap_or_else(|| panic!("{key} missing in {v}"))
}

/// Every episode matches one blocking call of the target, in order, within tolerance.
fn check_durations(run: &Run, label: &str) {
    assert_eq!(
        run.episodes.len(),
        run.blocks.len(),
        "{label}: episodes {:#?}\nblocks {:#?}\n{}",
        run.episodes,
        run.blocks,
        run.stderr
    );
    check_error_bars(label, &run.episodes, RATE);
    for (ep, block) in run.episodes.iter().zip(&run.blocks) {
        let got = ep["duration_ms"].as_f64().unwrap();
        let want = block["ms"].as_f64().unwrap();
        let tolerance = duration_tolerance(ep, RATE, SLACK_MS);
        assert!((got - want).abs() <= tolerance, "{label}: episode {got:.1} ms vs measured {want:.1} ms (tolerance {tolerance:.1} ms)\n{ep}");
        assert_eq!(
            ep["tid"].as_u64(),
            block["tid"].as_u64(),
            "{label}: wrong thread blamed\n{ep}"
        );
        assert_eq!(ep["thread"].as_str(), block["thread"].as_str(), "{label}");
        assert_eq!(ep["complete"], Value::Bool(true), "{label}");
        assert_eq!(ep["samples"].as_u64().map(|n| n > 0), Some(true), "{label}");
    }
}

fn check_culprit(run: &Run, label: &str, function: &str, line: Option<u64>, kind: &str) {
    for ep in &run.episodes {
        assert_eq!(s(&ep["culprit"], "function"), function, "{label}: {ep}");
        assert!(
            s(&ep["culprit"], "file").ends_with("scenarios.py"),
            "{label}: {ep}"
        );
        if let Some(line) = line {
            assert_eq!(
                ep["culprit"]["line"].as_u64(),
                Some(line),
                "{label}: culprit line\n{ep}"
            );
        }
        assert_eq!(s(ep, "kind"), kind, "{label}: {ep}");
    }
}

#[test]
fn time_sleep_in_a_task() {
    let line = marker_line(&script(), "sleep");
    for (v, py) in pythons() {
        let r = run(&py, "sleep_task");
        let label = format!("{v} sleep_task");
        assert_eq!(r.blocks.len(), 3, "{label}");
        check_durations(&r, &label);
        check_culprit(&r, &label, "sleepy_handler", Some(line), "sleep");
        for ep in &r.episodes {
            assert_eq!(
                s(ep, "coroutine"),
                "single_main",
                "{label}: the task's coroutine"
            );
            assert_eq!(s(ep, "source"), "time.sleep", "{label}");
            assert!(s(ep, "advice").contains("asyncio.sleep"), "{label}");
        }
        assert!(
            r.svg.contains("BLOCKED in sleepy_handler"),
            "{label}: flame graph lacks the episode root"
        );
        assert!(
            r.stderr.contains("3 blocking episodes"),
            "{label}: {}",
            r.stderr
        );
    }
}

#[test]
fn pure_python_cpu_in_a_task() {
    let line = marker_line(&script(), "burn");
    for (v, py) in pythons() {
        let r = run(&py, "cpu_task");
        let label = format!("{v} cpu_task");
        check_durations(&r, &label);
        check_culprit(&r, &label, "burn", None, "cpu");
        // The sampled line is inside burn's loop: the loop header or its body.
        for ep in &r.episodes {
            let got = ep["culprit"]["line"].as_u64().unwrap();
            assert!(
                got == line || got == line + 1,
                "{label}: line {got}, want {line}"
            );
        }
    }
}

#[test]
fn blocking_call_later_callback() {
    let line = marker_line(&script(), "call_later");
    for (v, py) in pythons() {
        let r = run(&py, "call_later");
        let label = format!("{v} call_later");
        check_durations(&r, &label);
        check_culprit(&r, &label, "slow_callback", Some(line), "sleep");
        for ep in &r.episodes {
            assert_eq!(s(ep, "coroutine"), "slow_callback", "{label}");
        }
    }
}

#[test]
fn loop_in_a_non_main_thread() {
    for (v, py) in pythons() {
        let r = run(&py, "thread_loop");
        let label = format!("{v} thread_loop");
        check_durations(&r, &label);
        let tid = r.ready["threads"]["loop-thread"].as_u64().unwrap();
        for ep in &r.episodes {
            assert_eq!(ep["tid"].as_u64(), Some(tid), "{label}");
            assert_eq!(s(ep, "thread"), "loop-thread", "{label}");
        }
    }
}

#[test]
fn two_loops_only_one_blocks() {
    for (v, py) in pythons() {
        let r = run(&py, "two_loops");
        let label = format!("{v} two_loops");
        check_durations(&r, &label);
        let blocking = r.ready["threads"]["blocking-loop"].as_u64().unwrap();
        assert!(
            r.episodes
                .iter()
                .all(|ep| ep["tid"].as_u64() == Some(blocking)),
            "{label}"
        );
        assert!(
            r.stderr.contains("calm-loop"),
            "{label}: the calm loop was not seen:\n{}",
            r.stderr
        );
    }
}

fn has_uvloop(py: &Path) -> bool {
    Command::new(py)
        .args(["-c", "import uvloop"])
        .status()
        .is_ok_and(|s| s.success())
}

#[test]
fn uvloop_task_blocking() {
    let line = marker_line(&script(), "sleep");
    for (v, py) in pythons() {
        if !has_uvloop(&py) {
            eprintln!(
                "SKIPPED: uvloop is not installed for CPython {v} ({} -m pip install uvloop)",
                py.display()
            );
            continue;
        }
        let r = run(&py, "uvloop");
        let label = format!("{v} uvloop");
        check_durations(&r, &label);
        check_culprit(&r, &label, "sleepy_handler", Some(line), "sleep");
        assert!(
            r.stderr.contains("event loops seen on MainThread"),
            "{label}: {}",
            r.stderr
        );
    }
}

fn expect_no_episodes(scenario: &str) {
    for (v, py) in pythons() {
        let r = run(&py, scenario);
        let label = format!("{v} {scenario}");
        assert!(r.episodes.is_empty(), "{label}: {:#?}", r.episodes);
        assert!(
            r.stderr.contains("no blocking episodes"),
            "{label}: {}",
            r.stderr
        );
        assert!(
            r.stderr.contains("event loops seen on MainThread"),
            "{label}: {}",
            r.stderr
        );
    }
}

#[test]
fn idle_loop_has_no_episodes() {
    expect_no_episodes("idle");
}

#[test]
fn many_short_callbacks_have_no_episodes() {
    expect_no_episodes("short_callbacks");
}

#[test]
fn executor_threads_are_not_loop_blocking() {
    expect_no_episodes("to_thread");
}

#[test]
fn threshold_separates_20ms_from_70ms() {
    let line = marker_line(&script(), "threshold");
    for (v, py) in pythons() {
        let mut r = run(&py, "threshold");
        let label = format!("{v} threshold");
        // Only the 70 ms blocks pass the 50 ms threshold.
        r.blocks.retain(|b| b["ms"].as_f64().unwrap() >= 50.0);
        assert_eq!(r.blocks.len(), 2, "{label}");
        check_durations(&r, &label);
        check_culprit(&r, &label, "threshold_main", Some(line), "sleep");
    }
}

/// `record -- CMD`: loopspy launches the target (whose stdio passes through) and ends with it.
#[test]
fn launch_a_command() {
    use std::io::{BufReader, Write};
    let dir = tempfile::tempdir().unwrap();
    let mut spy = crate::support::launch_scenario(
        &["record", "--rate", "200", "--episodes", "e.jsonl"],
        "sleep_task",
        dir.path(),
    );
    let mut err = BufReader::new(spy.stderr.take().unwrap());
    let line = wait_for_sampling(&mut err);
    let pid: u32 = line.split_whitespace().nth(3).unwrap().parse().unwrap();
    // The target's stdin is loopspy's: tell it to go.
    spy.stdin.take().unwrap().write_all(b"go\n").unwrap();
    let out = spy.wait_with_output().unwrap();
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut err, &mut rest).unwrap();
    assert!(out.status.success(), "{rest}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        stdout.matches("BLOCK ").count(),
        3,
        "the target's stdout passes through: {stdout}"
    );
    let episodes = std::fs::read_to_string(dir.path().join("e.jsonl")).unwrap();
    assert_eq!(episodes.lines().count(), 3, "{episodes}\n{rest}");
    assert!(
        dir.path().join(format!("loopspy-{pid}.svg")).exists(),
        "default output name carries the pid"
    );
}

/// Ctrl-C ends a recording and still writes every output, with the open episode incomplete.
#[test]
fn ctrl_c_writes_complete_outputs() {
    use std::io::{BufRead, BufReader};
    use std::process::Stdio;
    let (_, py) = pythons().pop().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut target = crate::support::Target::start(&py, &script(), &["long_block"]);
    let mut spy = Command::new(crate::support::loopspy())
        .current_dir(dir.path())
        .args([
            "record",
            "--pid",
            &target.pid().to_string(),
            "-o",
            "out.svg",
            "--episodes",
            "e.jsonl",
        ])
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut err = BufReader::new(spy.stderr.take().unwrap());
    let mut line = wait_for_sampling(&mut err);
    target.go();
    // Interrupt once the block is long under way: loopspy reports it passing one second.
    while !line.contains("blocked for 1 s so far") {
        line.clear();
        assert!(err.read_line(&mut line).unwrap() > 0, "no live hang report");
    }
    unsafe { libc::kill(spy.id() as i32, libc::SIGINT) };
    let status = spy.wait().unwrap();
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut err, &mut rest).unwrap();
    let _ = target.child.kill();
    let _ = target.child.wait();
    assert!(status.success(), "{rest}");
    assert!(rest.contains("ended: interrupted"), "{rest}");
    let episodes = std::fs::read_to_string(dir.path().join("e.jsonl")).unwrap();
    let ep: Value = serde_json::from_str(episodes.lines().next().unwrap()).unwrap();
    assert_eq!(ep["complete"], Value::Bool(false));
    assert!(ep["duration_ms"].as_f64().unwrap() >= 1000.0);
    let svg = std::fs::read_to_string(dir.path().join("out.svg")).unwrap();
    assert!(
        svg.ends_with("</svg>\n") || svg.trim_end().ends_with("</svg>"),
        "SVG is whole"
    );
}
