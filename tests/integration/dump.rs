//! asyncio tasks through the binary, on every CPython 3.8–3.13 on the machine
//! (tests/py/dump_tasks.py): `loopspy dump` (text and `--json`) on a program with nested awaits,
//! and `loopspy record` naming the task (explicit and default names) that blocked the loop.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::Value;

use crate::support::{loopspy, pythons, record_scenario, repo, Target};

fn script() -> PathBuf {
    repo().join("tests/py/dump_tasks.py")
}

fn dump(pid: u32, json: bool) -> Output {
    let mut cmd = Command::new(loopspy());
    cmd.args(["dump", "--pid", &pid.to_string()]);
    if json {
        cmd.arg("--json");
    }
    cmd.output().expect("run loopspy dump")
}

fn named<'a>(tasks: &'a [Value], name: &str) -> &'a Value {
    tasks
        .iter()
        .find(|t| t["name"] == name)
        .unwrap_or_else(|| panic!("no task {name} in {tasks:#?}"))
}

fn check_json(label: &str, d: &Value, ready: &Value) {
    let tid = ready["tid"].as_u64();
    let tasks = d["tasks"].as_array().expect("tasks");
    let fetcher = named(tasks, "fetcher");
    assert_eq!(fetcher["state"], "pending", "{label}");
    assert_eq!(fetcher["coroutine"], "a", "{label}");
    assert_eq!(fetcher["loop_tid"].as_u64(), tid, "{label}");
    let chain = fetcher["await_chain"].as_array().unwrap();
    let functions: Vec<&str> = chain
        .iter()
        .map(|f| f["function"].as_str().unwrap())
        .collect();
    assert_eq!(functions, ["a", "b", "sleep"], "{label}: {fetcher:#}");
    assert_eq!(chain[0]["line"], ready["lines"]["a"], "{label}: a's await");
    assert_eq!(chain[1]["line"], ready["lines"]["b"], "{label}: b's await");
    assert!(chain[0]["file"]
        .as_str()
        .unwrap()
        .ends_with("dump_tasks.py"));
    assert_eq!(fetcher["awaiting"]["kind"], "future", "{label}");
    assert_eq!(
        fetcher["awaiting"]["type_name"], "_asyncio.Future",
        "{label}"
    );
    let worker = named(tasks, ready["worker"].as_str().unwrap());
    assert_eq!(worker["coroutine"], "idle_worker", "{label}");
    let loops = d["loops"].as_array().unwrap();
    assert_eq!(loops.len(), 1, "{label}: {loops:#?}");
    let l = &loops[0];
    assert_eq!(l["tid"].as_u64(), tid, "{label}");
    assert_eq!(l["thread"], "MainThread", "{label}");
    assert_eq!(l["loop_type"], "_UnixSelectorEventLoop", "{label}");
    assert_eq!(l["timers"], ready["timers"], "{label}");
    assert_eq!(l["tasks"], ready["pending"], "{label}");
    assert_eq!(l["ready"], 0, "{label}");
    assert!(l["running_task"].is_null(), "{label}: the loop is idle");
    let main = d["threads"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["tid"].as_u64() == tid)
        .expect("main thread");
    assert_eq!(main["event_loop"], "_UnixSelectorEventLoop", "{label}");
    assert_eq!(main["state"], "idle", "{label}");
    assert!(!main["stack"].as_array().unwrap().is_empty(), "{label}");
}

/// The text form: the fetcher's chain with `b` indented under `a`.
fn check_text(label: &str, text: &str, ready: &Value) {
    assert!(text.contains("fetcher  pending  a"), "{label}:\n{text}");
    let a = format!("    a  py/dump_tasks.py:{}", ready["lines"]["a"]);
    let b = format!("      b  py/dump_tasks.py:{}", ready["lines"]["b"]);
    let lines: Vec<&str> = text.lines().collect();
    let at = lines
        .iter()
        .position(|l| *l == a)
        .unwrap_or_else(|| panic!("{label}: no line {a:?} in\n{text}"));
    assert_eq!(lines.get(at + 1), Some(&b.as_str()), "{label}:\n{text}");
    assert!(
        lines[at + 2]
            .trim_start()
            .starts_with("sleep  asyncio/tasks.py:"),
        "{label}"
    );
    assert_eq!(lines[at + 3].trim(), "awaiting _asyncio.Future", "{label}");
    assert!(text.contains("Event loops (1)"), "{label}");
    assert!(
        text.contains("runs event loop _UnixSelectorEventLoop"),
        "{label}"
    );
}

#[test]
fn dump_shows_tasks_and_nested_awaits() {
    for (v, py) in pythons() {
        let label = format!("{v} dump");
        let mut target = Target::start(&py, &script(), &["nested"]);
        let ready = target.ready.clone();
        let text = dump(target.pid(), false);
        let json = dump(target.pid(), true);
        target.go();
        target.finish();
        let err = String::from_utf8_lossy(&text.stderr);
        assert!(text.status.success(), "{label}: {err}");
        assert!(json.status.success(), "{label}");
        let d: Value = serde_json::from_slice(&json.stdout).expect("dump --json is JSON");
        check_json(&label, &d, &ready);
        check_text(&label, &String::from_utf8_lossy(&text.stdout), &ready);
    }
}

#[test]
fn dump_errors_are_one_line() {
    let out = Command::new(loopspy())
        .args(["dump", "--pid", "999999999"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("no process with PID 999999999"), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
    let out = Command::new(loopspy()).args(["dump"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2), "--pid is required");
}

fn check_blocking(label: &str, py: &Path) {
    let run = record_scenario(py, &script(), &["blocking"], &[]);
    assert!(run.status.success(), "{label}: {}", run.stderr);
    assert_eq!(run.blocks.len(), 3, "{label}");
    assert_eq!(
        run.episodes.len(),
        run.blocks.len(),
        "{label}: {:#?}\n{}",
        run.episodes,
        run.stderr
    );
    for (ep, block) in run.episodes.iter().zip(&run.blocks) {
        assert_eq!(ep["task"], block["task"], "{label}: {ep}");
        assert_eq!(ep["coroutine"], block["coroutine"], "{label}: {ep}");
    }
    assert_eq!(run.episodes[0]["task"], "fetcher", "{label}");
    assert_eq!(run.episodes[0]["coroutine"], "fetch", "{label}");
    let default = run.episodes[2]["task"].as_str().unwrap_or_default();
    assert!(default.starts_with("Task-"), "{label}: {default}");
    assert_eq!(run.episodes[2]["coroutine"], "crunch", "{label}");
}

#[test]
fn episodes_name_the_blocking_task() {
    for (v, py) in pythons() {
        check_blocking(&format!("{v} blocking task"), &py);
    }
}
