//! `--subprocesses`: a parent without a loop runs asyncio workers (multiprocessing, as a
//! gunicorn/uvicorn master does); loopspy follows the workers it finds at attach and one
//! started later, and blames each episode on the right process.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::sync::mpsc;

use serde_json::Value;

use crate::support::{
    duration_tolerance, loop_timed_blocks, loopspy, pythons, repo, tagged, wait_for_sampling,
};

#[test]
fn follows_workers_including_restarted_ones() {
    for (v, py) in pythons() {
        let label = format!("{v} workers");
        let mut target = Command::new(&py)
            .arg(repo().join("tests/py/workers.py"))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let (tx, lines) = mpsc::channel();
        let out = target.stdout.take().unwrap();
        std::thread::spawn(move || {
            for l in BufReader::new(out).lines().map_while(Result::ok) {
                let _ = tx.send(l);
            }
        });
        let ready = loop {
            if let Some(v) = tagged(&lines.recv().unwrap(), "READY") {
                break v;
            }
        };
        let workers: Vec<u64> = ready["workers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|w| w.as_u64().unwrap())
            .collect();
        let dir = tempfile::tempdir().unwrap();
        let mut spy = Command::new(loopspy())
            .args([
                "record",
                "--subprocesses",
                "--rate",
                "200",
                "--pid",
                &target.id().to_string(),
                "-o",
            ])
            .arg(dir.path().join("w.svg"))
            .arg("--episodes")
            .arg(dir.path().join("w.jsonl"))
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut err = BufReader::new(spy.stderr.take().unwrap());
        wait_for_sampling(&mut err);
        let mut log = String::new();
        // loopspy's own handshake for each worker: "following worker process PID".
        let mut wait_following = |pids: &[u64], log: &mut String| {
            let mut seen: Vec<u64> = Vec::new();
            while !pids.iter().all(|p| seen.contains(p)) {
                let mut line = String::new();
                assert!(
                    err.read_line(&mut line).unwrap() > 0,
                    "{label}: loopspy ended: {log}"
                );
                log.push_str(&line);
                if let Some(rest) = line.strip_prefix("loopspy: following worker process ") {
                    seen.push(rest.split_whitespace().next().unwrap().parse().unwrap());
                }
            }
        };
        wait_following(&workers, &mut log);
        let mut stdin = target.stdin.take().unwrap();
        stdin.write_all(b"go\n").unwrap();
        let mut output = Vec::new();
        let restarted = loop {
            let l = lines.recv().unwrap();
            if let Some(r) = tagged(&l, "RESTARTED") {
                break r["pid"].as_u64().unwrap();
            }
            output.push(l);
        };
        wait_following(&[restarted], &mut log);
        stdin.write_all(b"go\n").unwrap();
        drop(stdin);
        output.extend(lines.iter());
        target.wait().unwrap();
        let blocks = loop_timed_blocks(&output);
        let status = spy.wait().unwrap();
        let mut rest = String::new();
        std::io::Read::read_to_string(&mut err, &mut rest).unwrap();
        log.push_str(&rest);
        assert!(status.success(), "{label}: {log}");
        let episodes: Vec<Value> = std::fs::read_to_string(dir.path().join("w.jsonl"))
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        // Per pid: (duration, how far it may be off: its error bar, at least one 5 ms tick,
        // plus 4 ms of scheduling slack).
        let mut by_pid: BTreeMap<u64, Vec<(f64, f64)>> = BTreeMap::new();
        for ep in &episodes {
            // `main` on 3.8–3.10, the qualified `worker.<locals>.main` from 3.11.
            assert!(
                ep["culprit"]["function"]
                    .as_str()
                    .is_some_and(|f| f.ends_with("main")),
                "{label}: {ep}"
            );
            assert_eq!(ep["tid"], ep["pid"], "{label}: the worker's main thread");
            by_pid
                .entry(ep["pid"].as_u64().unwrap())
                .or_default()
                .push((
                    ep["duration_ms"].as_f64().unwrap(),
                    duration_tolerance(ep, 200.0, 4.0),
                ));
        }
        let mut want: BTreeMap<u64, Vec<f64>> = BTreeMap::new();
        for b in &blocks {
            want.entry(b["pid"].as_u64().unwrap())
                .or_default()
                .push(b["ms"].as_f64().unwrap());
        }
        assert_eq!(
            by_pid.keys().collect::<Vec<_>>(),
            want.keys().collect::<Vec<_>>(),
            "{label}: {episodes:#?}\n{log}"
        );
        assert!(want.contains_key(&restarted) && want.len() == 3, "{label}");
        // Each worker blocks exactly twice for 120 ms (tests/py/workers.py). Episodes and
        // blocks pair up per pid, each episode within its tolerance of its block as the
        // worker's loop timed it (its GAP line: the whole callback, with the time the worker
        // waited for a CPU on a loaded machine).
        for (pid, got) in &by_pid {
            let want = &want[pid];
            assert_eq!(
                got.len(),
                want.len(),
                "{label}: pid {pid}: {got:?} for {want:?}\n{episodes:#?}"
            );
            for (g, tol) in got {
                assert!(
                    want.iter().any(|w| (g - w).abs() <= *tol),
                    "{label}: pid {pid}: {g} ms (± {tol} ms) matches no block of {want:?}\n{}",
                    output.join("\n")
                );
            }
            for w in want {
                assert!(
                    got.iter().any(|(g, tol)| (g - w).abs() <= *tol),
                    "{label}: pid {pid}: no episode for {w} ms in {got:?}\n{}",
                    output.join("\n")
                );
            }
        }
        let svg = std::fs::read_to_string(dir.path().join("w.svg")).unwrap();
        assert!(
            svg.contains(&format!("process {restarted}")),
            "{label}: one root per process"
        );
    }
}
