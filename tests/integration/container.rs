//! A target in its own PID and mount namespaces (as in a container), addressed from the host
//! by its host PID: thread ids inside differ from the host's, and loopspy must report host
//! tids, read the right /proc entries and still find the loop, the culprit and the timing.

use std::collections::HashMap;
use std::process::Command;

use serde_json::Value;

use crate::support::{loopspy, pythons, repo, wait_for_sampling, Target};

/// inner tid → host tid of a process's threads, from NSpid.
fn inner_to_host(pid: u32) -> HashMap<u64, u64> {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .flatten()
        .filter_map(|e| {
            let host: u64 = e.file_name().to_str()?.parse().ok()?;
            let status = std::fs::read_to_string(e.path().join("status")).ok()?;
            let line = status.lines().find(|l| l.starts_with("NSpid:"))?;
            Some((line.split_whitespace().last()?.parse().ok()?, host))
        })
        .collect()
}

#[test]
fn target_in_its_own_pid_namespace() {
    if Command::new("unshare")
        .args(["--pid", "--mount-proc", "--fork", "true"])
        .status()
        .map_or(true, |s| !s.success())
    {
        eprintln!("SKIPPED: cannot create PID namespaces here (unshare --pid needs root)");
        return;
    }
    for (v, py) in pythons() {
        let label = format!("{v} container");
        let mut cmd = Command::new("unshare");
        cmd.args(["--pid", "--mount-proc", "--fork"])
            .arg(&py)
            .arg(repo().join("tests/py/scenarios.py"))
            .arg("thread_loop");
        let mut target = Target::start_command(cmd);
        // unshare forks the namespace's first process: that is the Python, with host pid P.
        let unshare = target.pid();
        let children =
            std::fs::read_to_string(format!("/proc/{unshare}/task/{unshare}/children")).unwrap();
        let pid: u32 = children.split_whitespace().next().unwrap().parse().unwrap();
        let inner_loop_tid = target.ready["threads"]["loop-thread"].as_u64().unwrap();
        let host = inner_to_host(pid);
        let host_loop_tid = host[&inner_loop_tid];
        assert_ne!(
            inner_loop_tid, host_loop_tid,
            "{label}: the namespace numbers threads differently"
        );

        let dir = tempfile::tempdir().unwrap();
        let mut spy = Command::new(loopspy())
            .args(["record", "--pid", &pid.to_string(), "--rate", "200", "-o"])
            .arg(dir.path().join("c.svg"))
            .arg("--episodes")
            .arg(dir.path().join("c.jsonl"))
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let mut err = std::io::BufReader::new(spy.stderr.take().unwrap());
        wait_for_sampling(&mut err);
        target.go();
        let blocks = target.finish();
        let status = spy.wait().unwrap();
        let mut rest = String::new();
        std::io::Read::read_to_string(&mut err, &mut rest).unwrap();
        assert!(status.success(), "{label}: {rest}");
        let episodes: Vec<Value> = std::fs::read_to_string(dir.path().join("c.jsonl"))
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(episodes.len(), blocks.len(), "{label}: {rest}");
        assert!(
            rest.contains("with full stacks"),
            "{label}: the cheap probe must run in the namespace too: {rest}"
        );
        for (ep, b) in episodes.iter().zip(&blocks) {
            assert_eq!(
                ep["tid"].as_u64(),
                Some(host_loop_tid),
                "{label}: host tid expected\n{ep}"
            );
            assert_eq!(ep["thread"].as_str(), Some("loop-thread"), "{label}");
            assert_eq!(
                ep["culprit"]["function"].as_str(),
                Some("sleepy_handler"),
                "{label}"
            );
            assert!(
                ep["culprit"]["file"]
                    .as_str()
                    .unwrap()
                    .ends_with("tests/py/scenarios.py"),
                "{label}"
            );
            let (got, want) = (
                ep["duration_ms"].as_f64().unwrap(),
                b["ms"].as_f64().unwrap(),
            );
            assert!((got - want).abs() <= 9.0, "{label}: {got} vs {want}");
        }
    }
}
