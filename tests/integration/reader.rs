//! Live edge cases of our CPython reader, on every interpreter: stacks thousands of frames deep
//! (each block still one episode of the right length, and attaching to a process that deep), and
//! names the target makes odd (a module in a directory whose name is not UTF-8, a function
//! whose name has 5000 characters): the frame stays, with a lossy, capped name. Also the task
//! each stack sample belongs to: `--by-task` draws ordinary work under its task.

use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;
use std::process::Command;

use serde_json::Value;

use crate::support::{loopspy, marker_line, pythons, record_scenario, repo, Run, Target};

const RATE: f64 = 1000.0;
/// The same allowance as the other live tests: one tick plus scheduling noise.
const SLACK_MS: f64 = 8.0;

fn script() -> PathBuf {
    repo().join("tests/py/reader_edges.py")
}

/// Every episode matches one blocking call of the target, in order, within tolerance.
fn check_durations(run: &Run, label: &str) {
    assert_eq!(
        run.episodes.len(),
        run.blocks.len(),
        "{label}: episodes {:?}\nblocks {:?}\n{}",
        run.episodes
            .iter()
            .map(|e| (e["duration_ms"].clone(), e["culprit"]["function"].clone()))
            .collect::<Vec<_>>(),
        run.blocks,
        run.stderr
    );
    let tolerance = 1000.0 / RATE + SLACK_MS;
    for (ep, block) in run.episodes.iter().zip(&run.blocks) {
        let got = ep["duration_ms"].as_f64().unwrap();
        let want = block["ms"].as_f64().unwrap();
        assert!(
            (got - want).abs() <= tolerance,
            "{label}: episode {got:.1} ms vs measured {want:.1} ms (tolerance {tolerance} ms)\n{}",
            run.stderr
        );
        assert_eq!(ep["tid"].as_u64(), block["tid"].as_u64(), "{label}");
        assert_eq!(ep["complete"], Value::Bool(true), "{label}");
    }
}

fn function(frame: &Value) -> &str {
    frame["function"].as_str().unwrap_or_default()
}

/// A 300 ms block at the bottom of 1000, 5000 and 15,000 frames is one ~300 ms episode, whose
/// culprit is the blocking function and whose stack keeps both ends with a marker between.
#[test]
fn deep_stacks_keep_their_episodes() {
    let line = marker_line(&script(), "deep");
    for (v, py) in pythons() {
        for depth in [1000, 5000, 15_000] {
            let label = format!("{v} depth {depth}");
            let run = record_scenario(
                &py,
                &script(),
                &["deep", &depth.to_string()],
                &["--rate", &RATE.to_string()],
            );
            assert!(run.status.success(), "{label}: {}", run.stderr);
            check_durations(&run, &label);
            for ep in &run.episodes {
                assert_eq!(
                    function(&ep["culprit"]),
                    "bottom",
                    "{label}: {}",
                    ep["culprit"]
                );
                assert_eq!(ep["culprit"]["line"].as_u64(), Some(line), "{label}");
                let stack = ep["stack"].as_array().unwrap();
                assert!(
                    stack
                        .iter()
                        .any(|f| function(f).ends_with("frames not shown]")),
                    "{label}: no marker in a stack {depth} deep"
                );
                // The outermost frames (the loop's own) are kept.
                assert!(
                    stack.iter().any(|f| function(f).ends_with("_run_once")),
                    "{label}: the loop's frames are gone"
                );
            }
        }
    }
}

/// `loopspy dump` attaches to a process whose only Python thread but the main one is 4100+
/// frames deep, and shows both ends of its stack.
#[test]
fn attach_to_a_deep_process() {
    for (v, py) in pythons() {
        let target = Target::start(&py, &script(), &["parked", "4200"]);
        let out = Command::new(loopspy())
            .args(["dump", "--json", "--pid", &target.pid().to_string()])
            .output()
            .unwrap();
        let mut child = target.child;
        let _ = child.kill();
        let _ = child.wait();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{v}: {stderr}");
        let dump: Value = serde_json::from_slice(&out.stdout).expect("dump --json is JSON");
        let deep = dump["threads"]
            .as_array()
            .unwrap()
            .iter()
            .find(|t| t["name"] == "deep-loop")
            .unwrap_or_else(|| panic!("{v}: no deep-loop thread in {dump}"));
        let stack = deep["stack"].as_array().unwrap();
        let names: Vec<&str> = stack.iter().map(function).collect();
        // `wait` up to 3.10, its qualified name `parked.<locals>.wait` from 3.11.
        assert!(
            names[0].ends_with("wait"),
            "{v}: innermost frame: {:?}",
            &names[..3]
        );
        assert!(
            names.iter().any(|n| n.ends_with("frames not shown]")),
            "{v}: no marker in {} frames",
            names.len()
        );
        assert!(
            names.last().is_some_and(|n| n.ends_with("_bootstrap")),
            "{v}: outermost frame"
        );
    }
}

/// A module in a directory whose name is not UTF-8, and a function with a 5000-character name:
/// each block is an episode whose culprit is that function (not its caller), with U+FFFD for
/// the undecodable byte and the long name cut at 1024 characters plus `…`.
#[test]
fn odd_names_keep_their_frames() {
    let dir = tempfile::tempdir().unwrap();
    let odd = dir.path().join(std::ffi::OsStr::from_bytes(b"lib_\xff"));
    std::fs::create_dir(&odd).unwrap();
    std::fs::write(
        odd.join("odd_module.py"),
        "import time\n\n\ndef odd_block(seconds):\n    time.sleep(seconds)\n",
    )
    .unwrap();
    let long: String = "f".repeat(1024) + "…";
    for (v, py) in pythons() {
        let args = [std::ffi::OsStr::new("names"), odd.as_os_str()];
        let run = record_scenario(&py, &script(), &args, &["--rate", &RATE.to_string()]);
        assert!(run.status.success(), "{v}: {}", run.stderr);
        check_durations(&run, &v);
        let culprits: Vec<(&str, &str)> = run
            .episodes
            .iter()
            .map(|ep| {
                (
                    function(&ep["culprit"]),
                    ep["culprit"]["file"].as_str().unwrap_or_default(),
                )
            })
            .collect();
        assert_eq!(culprits.len(), 2, "{v}: {culprits:?}");
        assert_eq!(culprits[0].0, "odd_block", "{v}: {culprits:?}");
        assert!(
            culprits[0].1.ends_with("lib_\u{fffd}/odd_module.py"),
            "{v}: {culprits:?}"
        );
        assert_eq!(
            culprits[1].0, long,
            "{v}: the long-named function is blamed"
        );
    }
}

/// The weight of each `(task frames, leaf)` pair in a speedscope profile: which `task <name>`
/// frames sit above the stacks whose innermost frames are `leaves`.
fn task_weights(speedscope: &Value, leaves: &[&str]) -> Vec<(Vec<String>, String, f64)> {
    let names: Vec<&str> = speedscope["shared"]["frames"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["name"].as_str().unwrap())
        .collect();
    let mut out: Vec<(Vec<String>, String, f64)> = Vec::new();
    for profile in speedscope["profiles"].as_array().unwrap() {
        let samples = profile["samples"].as_array().unwrap();
        let weights = profile["weights"].as_array().unwrap();
        for (stack, weight) in samples.iter().zip(weights) {
            let stack: Vec<&str> = stack
                .as_array()
                .unwrap()
                .iter()
                .map(|i| names[i.as_u64().unwrap() as usize])
                .collect();
            let Some(leaf) = leaves
                .iter()
                .find(|l| stack.iter().any(|n| n.starts_with(&format!("{l} ("))))
            else {
                continue;
            };
            let tasks: Vec<String> = stack
                .iter()
                .filter(|n| n.starts_with("task "))
                .map(|n| n.to_string())
                .collect();
            let w = weight.as_f64().unwrap();
            match out.iter_mut().find(|(t, l, _)| *t == tasks && l == leaf) {
                Some(entry) => entry.2 += w,
                None => out.push((tasks, leaf.to_string(), w)),
            }
        }
    }
    out
}

/// Two tasks run short CPU bursts (12 ms, under the threshold). With `--by-task`, the stacks of
/// each burst sit under its own task's frame (at least 90% of them; the rest, whose task read
/// found none, under no task frame, never under another's): `task poller` for the task given a
/// name, `task crunch` (its coroutine) for the one left with asyncio's `Task-N`. Without the
/// flag there is no task frame.
#[test]
fn by_task_groups_ordinary_work_under_its_task() {
    let leaves = ["poll_work", "crunch_work"];
    for (v, py) in pythons() {
        let run = record_scenario(&py, &script(), &["tasks", "60"], &["-f", "raw"]);
        assert!(run.status.success(), "{v}: {}", run.stderr);
        let dir = tempfile::tempdir().unwrap();
        let raw = dir.path().join("rec.jsonl");
        std::fs::write(&raw, &run.svg).unwrap();
        for by_task in [true, false] {
            let out = dir.path().join("s.json");
            let status = Command::new(loopspy())
                .arg("report")
                .arg(&raw)
                .args(["-f", "speedscope", "-o"])
                .arg(&out)
                .args(by_task.then_some("--by-task"))
                .output()
                .unwrap();
            assert!(status.status.success(), "{v}: {status:?}");
            let profile: Value =
                serde_json::from_str(&std::fs::read_to_string(&out).unwrap()).unwrap();
            let weights = task_weights(&profile, &leaves);
            let label = format!("{v} by_task={by_task}: {weights:?}");
            for (leaf, task) in [("poll_work", "task poller"), ("crunch_work", "task crunch")] {
                let total: f64 = weights
                    .iter()
                    .filter(|(_, l, _)| l == leaf)
                    .map(|w| w.2)
                    .sum();
                // 60 bursts of 12 ms: the sampler reads the loop's stack at every tick past
                // 5 ms into a callback, so each burst leaves several samples.
                assert!(total >= 100.0, "{label}: {leaf} has {total} ms of samples");
                // Never another task's frame, nor two. A task read that found none (torn, or
                // racing the step) leaves its work without a task frame, never with a wrong
                // one: with the flag, most of the work is under its own task.
                let mut under_own = 0.0;
                for (tasks, l, w) in &weights {
                    if l != leaf {
                        continue;
                    }
                    match (by_task, tasks.as_slice()) {
                        (true, [t]) if t == task => under_own += w,
                        (true, []) => {}
                        (false, []) => under_own += w,
                        _ => panic!("{label}: {w} ms of {leaf} under {tasks:?}"),
                    }
                }
                assert!(
                    under_own >= 0.9 * total,
                    "{label}: {under_own} of {total} ms of {leaf} under {task}"
                );
            }
        }
    }
}
