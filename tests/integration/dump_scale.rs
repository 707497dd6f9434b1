//! The task reader at production scale and in odd shapes (tests/py/scale_tasks.py; issues 11
//! and 15 §4): 20,000 pending tasks grouped by await chain (`--all-tasks` lists each), more
//! than 100,000 tasks all counted, more than 4096 entries in `sys.modules`, pure-Python tasks,
//! a task whose first step blocks right after launch, and a loop blocked in a callback while
//! dump reads it.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Instant;

use serde_json::Value;

use crate::support::{loopspy, pythons, record_scenario, repo, Target};

fn script() -> PathBuf {
    repo().join("tests/py/scale_tasks.py")
}

fn dump(pid: u32, args: &[&str]) -> Output {
    let out = Command::new(loopspy())
        .args(["dump", "--pid", &pid.to_string()])
        .args(args)
        .output()
        .expect("run loopspy dump");
    assert!(
        out.status.success(),
        "dump {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn dump_json(pid: u32, args: &[&str]) -> Value {
    let mut all = vec!["--json"];
    all.extend_from_slice(args);
    serde_json::from_slice(&dump(pid, &all).stdout).expect("dump --json is JSON")
}

fn group<'a>(d: &'a Value, coroutine: &str) -> &'a Value {
    d["tasks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["coroutine"] == coroutine)
        .unwrap_or_else(|| panic!("no {coroutine} task in {d:#}"))
}

#[test]
fn dump_groups_tasks_by_await_chain() {
    for (v, py) in pythons() {
        let label = format!("{v} 20000 tasks");
        let mut target = Target::start(&py, &script(), &["many", "20000"]);
        let pending = target.ready["pending"].as_u64().unwrap();
        let text = String::from_utf8(dump(target.pid(), &[]).stdout).unwrap();
        let d = dump_json(target.pid(), &[]);
        let all = dump_json(target.pid(), &["--all-tasks"]);
        target.go();
        target.finish();
        assert_eq!(d["task_count"].as_u64(), Some(pending), "{label}");
        let idle = group(&d, "idle");
        assert_eq!(idle["count"], 20000, "{label}: {idle:#}");
        let chain: Vec<&str> = idle["await_chain"]
            .as_array()
            .unwrap()
            .iter()
            .map(|f| f["function"].as_str().unwrap())
            .collect();
        assert_eq!(chain, ["idle", "sleep"], "{label}");
        assert_eq!(group(&d, "a")["name"], "fetcher", "{label}: its own group");
        assert!(d["tasks"].as_array().unwrap().len() <= 4, "{label}");
        assert!(
            text.contains("20,000 × pending  idle")
                && text.contains(&format!("Tasks ({}", commas(pending))),
            "{label}:\n{text}"
        );
        assert!(
            text.lines().count() < 100,
            "{label}: {} lines",
            text.lines().count()
        );
        let every = all["tasks"].as_array().unwrap();
        assert_eq!(every.len() as u64, pending, "{label}: --all-tasks");
        assert!(every.iter().all(|t| t["count"] == 1), "{label}");
    }
}

pub fn commas(n: u64) -> String {
    loopspy::dump::render::thousands(n)
}

/// 150,001 tasks: every one counted (the reader used to stop at 100,000 without a word).
#[test]
fn dump_counts_past_a_hundred_thousand_tasks() {
    let Some((v, py)) = pythons().into_iter().find(|(v, _)| v == "3.11") else {
        eprintln!("SKIPPED: dump_counts_past_a_hundred_thousand_tasks runs on CPython 3.11");
        return;
    };
    let mut target = Target::start(&py, &script(), &["many", "150001"]);
    let pending = target.ready["pending"].as_u64().unwrap();
    let d = dump_json(target.pid(), &[]);
    target.go();
    target.finish();
    assert_eq!(
        d["task_count"].as_u64(),
        Some(pending),
        "{v}: {:#}",
        d["notes"]
    );
    assert_eq!(group(&d, "idle")["count"], 150_001, "{v}");
    assert!(
        d["notes"].is_null(),
        "{v}: nothing was cut: {:#}",
        d["notes"]
    );
}

/// More than 4096 entries in `sys.modules`: tasks are still found, and episodes name them.
#[test]
fn many_modules_do_not_hide_tasks() {
    for (v, py) in pythons() {
        let label = format!("{v} many modules");
        let mut target = Target::start(&py, &script(), &["many_modules"]);
        assert!(target.ready["modules"].as_u64().unwrap() > 4096);
        let pending = target.ready["pending"].as_u64().unwrap();
        let d = dump_json(target.pid(), &[]);
        target.go();
        target.finish();
        assert_eq!(d["task_count"].as_u64(), Some(pending), "{label}: {d:#}");
        let r = record_scenario(&py, &script(), &["many_modules"], &[]);
        assert_eq!(r.episodes.len(), 1, "{label}: {}", r.stderr);
        assert_eq!(
            r.episodes[0]["task"], "blocker",
            "{label}: {}",
            r.episodes[0]
        );
    }
}

/// Pure-Python tasks (`asyncio.tasks._PyTask`): listed by dump and named in episodes.
#[test]
fn pure_python_tasks_are_read() {
    for (v, py) in pythons() {
        let label = format!("{v} _PyTask");
        let mut target = Target::start(&py, &script(), &["py_tasks"]);
        let pending = target.ready["pending"].as_u64().unwrap();
        let d = dump_json(target.pid(), &["--all-tasks"]);
        target.go();
        target.finish();
        assert_eq!(d["task_count"].as_u64(), Some(pending), "{label}: {d:#}");
        let names: Vec<&str> = d["tasks"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|t| t["name"].as_str())
            .collect();
        for want in ["py-0", "py-1", "py-2", "c-task"] {
            assert!(names.contains(&want), "{label}: {names:?}");
        }
        let py0 = d["tasks"]
            .as_array()
            .unwrap()
            .iter()
            .find(|t| t["name"] == "py-0")
            .unwrap();
        assert_eq!(py0["state"], "pending", "{label}");
        assert_eq!(py0["coroutine"], "idle", "{label}");
        assert_eq!(d["loops"][0]["tasks"].as_u64(), Some(pending), "{label}");
        let r = record_scenario(&py, &script(), &["py_tasks"], &[]);
        assert_eq!(r.episodes.len(), 1, "{label}: {}", r.stderr);
        assert_eq!(
            r.episodes[0]["task"], "py-blocker",
            "{label}: {}",
            r.episodes[0]
        );
    }
}

fn launch(py: &Path, dir: &Path) -> Vec<Value> {
    let episodes = dir.join("e.jsonl");
    let out = Command::new(loopspy())
        .args(["record", "-o"])
        .arg(dir.join("o.svg"))
        .arg("--episodes")
        .arg(&episodes)
        .arg("--")
        .arg(py)
        .arg(script())
        .arg("first_launch")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    std::fs::read_to_string(episodes)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// A task whose first step blocks as soon as the program starts, before loopspy has mapped
/// the loop: its samples from before then say nothing about the task, so the episode still
/// names it (it used to be `null`, most runs).
#[test]
fn first_step_right_after_launch_names_the_task() {
    for (v, py) in pythons() {
        for run in 0..3 {
            let label = format!("{v} first step, run {run}");
            let dir = tempfile::tempdir().unwrap();
            let episodes = launch(&py, dir.path());
            let tasks: Vec<&str> = episodes
                .iter()
                .map(|e| e["task"].as_str().unwrap_or("null"))
                .collect();
            assert_eq!(tasks.len(), 4, "{label}: {episodes:#?}");
            assert_eq!(tasks[0], "Task-1", "{label}: {tasks:?}");
            assert_eq!(&tasks[1..], ["first-0", "first-1", "first-2"], "{label}");
        }
    }
}

fn monotonic() -> f64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as f64 + ts.tv_nsec as f64 / 1e9
}

/// A loop blocked in `time.sleep` inside a task while dump reads it: the thread is "blocked in
/// a callback", not idle, and the loop says since when it has not polled.
#[test]
fn dump_of_a_loop_blocked_in_a_callback() {
    for (v, py) in pythons() {
        let label = format!("{v} blocked dump");
        let mut target = Target::start(&py, &script(), &["blocked_dump"]);
        let since = target.ready["blocked_since"].as_f64().unwrap();
        let (before, t) = (monotonic(), Instant::now());
        let d = dump_json(target.pid(), &[]);
        let after = before + t.elapsed().as_secs_f64();
        let text = String::from_utf8(dump(target.pid(), &[]).stdout).unwrap();
        target.go();
        target.finish();
        let l = &d["loops"][0];
        assert_eq!(l["running_task"], "stuck", "{label}: {l:#}");
        let at_least = l["callback_ms_at_least"].as_f64().unwrap_or(0.0);
        assert!(at_least >= 15.0, "{label}: {l:#}");
        let polled = l["since_poll_ms"].as_f64().expect("since_poll_ms");
        // The loop polled just before the block began, and dump read it in [before, after].
        assert!(
            polled >= (before - since) * 1000.0 && polled <= (after - since) * 1000.0 + 5.0,
            "{label}: {polled} ms since the poll, block began {:.1}–{:.1} ms before",
            (before - since) * 1000.0,
            (after - since) * 1000.0
        );
        let main = &d["threads"][0];
        assert_eq!(
            main["tid"], d["pid"],
            "{label}: the main thread comes first"
        );
        assert_eq!(main["state"], "blocked", "{label}: {main:#}");
        assert!(
            text.contains("): blocked in a callback for ≥"),
            "{label}:\n{text}"
        );
    }
}
