//! Targets that change under loopspy: one that exec()s (into `sleep`, into another Python),
//! one whose main thread calls `pthread_exit` while its loop thread runs on, a command that
//! is a wrapper around Python, and a recording whose samples cannot be read.

use std::process::Command;
use std::time::Duration;

use serde_json::Value;

use super::{episodes, loopspy, python, target, Proc};
use crate::support::{check_error_bars, error_ms, pythons, repo};

/// loopspy's default tick rate on the kernel clock (Hz): these tests record with defaults.
const KERNEL_RATE: f64 = 100.0;

/// `record --pid` of a running `hostile.py` target (READY already read): returns the
/// recorder and the episodes file's dir.
fn record_pid(pid: &str, extra: &[&str]) -> (Proc, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let eps = dir.path().join("e.jsonl");
    let mut args = vec![
        "record",
        "--pid",
        pid,
        "-o",
        "/dev/null",
        "--format",
        "raw",
        "--episodes",
    ];
    let eps = eps.to_str().unwrap().to_string();
    args.push(&eps);
    args.extend_from_slice(extra);
    let mut rec = Proc::spawn(loopspy(&args));
    rec.sampling();
    (rec, dir)
}

/// The blocks `seen` (their BLOCK lines, waited for while the target ran), each timed by the
/// loop gap that contains it once the target has ended.
fn loop_timed(target: &mut Proc, seen: Vec<Value>) -> Vec<Value> {
    let timed = target.loop_timed_blocks();
    assert_eq!(timed.len(), seen.len(), "{timed:?}");
    timed
}

/// Every episode matches its block's loop gap (the call's own time where there is none) within
/// its error bar and 4 ms. An episode timed by the kernel at both ends has no bar, and matches
/// its gap to a few hundredths of a millisecond on a quiet machine; one whose start came before
/// the loop was traced (the first after an exec or an attach) is placed between two stack reads
/// and says so in its bar. Most bars must be narrow, or the check would pass for nothing.
fn durations_match(label: &str, eps: &[Value], blocks: &[Value]) {
    assert_eq!(eps.len(), blocks.len(), "{label}: {eps:#?}");
    check_error_bars(label, eps, KERNEL_RATE);
    for (e, b) in eps.iter().zip(blocks) {
        let (got, want) = (
            e["duration_ms"].as_f64().unwrap(),
            b["ms"].as_f64().unwrap(),
        );
        assert!(
            (got - want).abs() <= error_ms(e) + 4.0,
            "{label}: {got} vs {want} (call {:?} ms; error bar {:?} ms)\n{eps:#?}\n{blocks:#?}",
            b["call_ms"],
            e["duration_error_ms"]
        );
    }
}

/// Regression: after the target exec()'d `/bin/sleep`, loopspy reported "blocked for 1/2 s
/// so far" and an episode the length of the sleep. Now the exec is seen, the episode in
/// progress ends there, and sampling ends with a line saying why.
#[test]
fn exec_into_a_program_that_is_not_python_ends_sampling() {
    let mut app = Proc::spawn(target(&python(), &["exec", "sleep"]));
    let pid = app.tagged("READY", Duration::from_secs(30))["pid"]
        .as_u64()
        .unwrap()
        .to_string();
    let (mut rec, dir) = record_pid(&pid, &[]);
    app.send("go");
    let status = rec.wait_for(Duration::from_secs(10));
    let err = rec.rest_of_stderr();
    assert!(status.is_some_and(|s| s.success()), "{err}");
    // loopspy ended while `sleep` still ran (it runs 2.5 s).
    assert!(app.child.try_wait().unwrap().is_none(), "{err}");
    assert!(!err.contains("blocked for"), "{err}");
    assert!(
        err.contains(&format!(
            "loopspy: process {pid} called exec(): the episode in progress ends here"
        )),
        "{err}"
    );
    assert!(
        err.contains(&format!(
            "loopspy: stopped sampling process {pid}: it now runs `sleep`, which is not Python"
        )),
        "{err}"
    );
    assert!(err.contains("ended: target replaced by exec"), "{err}");
    let eps = episodes(&dir.path().join("e.jsonl"));
    assert!(eps.is_empty(), "{eps:#?}");
}

/// Regression: after the target exec()'d another Python, loopspy said "target exited" while
/// it ran on, and missed its blocks. Now it attaches again and times them.
#[test]
fn exec_into_python_attaches_again() {
    for (v, py) in pythons() {
        let mut app = Proc::spawn(target(&py, &["exec", "python"]));
        let pid = app.tagged("READY", Duration::from_secs(30))["pid"]
            .as_u64()
            .unwrap()
            .to_string();
        let (mut rec, dir) = record_pid(&pid, &[]);
        app.send("go");
        let ready2 = app.tagged("READY", Duration::from_secs(30));
        assert_eq!(ready2["stage"].as_u64(), Some(2));
        assert_eq!(
            ready2["pid"].as_u64().map(|p| p.to_string()),
            Some(pid.clone())
        );
        rec.err_line(Duration::from_secs(15), |l| {
            l.starts_with(&format!("loopspy: attached to process {pid} again"))
        });
        app.send("go");
        let blocks: Vec<Value> = (0..3)
            .map(|_| app.tagged("BLOCK", Duration::from_secs(30)))
            .collect();
        app.wait_for(Duration::from_secs(10)).expect("target ends");
        let blocks = loop_timed(&mut app, blocks);
        let status = rec.wait_for(Duration::from_secs(10));
        let err = rec.rest_of_stderr();
        assert!(status.is_some_and(|s| s.success()), "{v}: {err}");
        assert!(err.contains("ended: target exited"), "{v}: {err}");
        assert!(
            err.contains(&format!("loopspy: process {pid} called exec()")),
            "{v}: {err}"
        );
        durations_match(&v, &episodes(&dir.path().join("e.jsonl")), &blocks);
    }
}

/// Regression: a main thread that called `pthread_exit` while a loop thread ran made
/// loopspy say "target exited" (it was attached) or "it is a zombie" (attaching then). The
/// process lives while any of its threads does: both ways work.
#[test]
fn a_main_thread_that_exits_does_not_end_the_process() {
    for (v, py) in pythons() {
        // Attach after the main thread exited.
        let mut app = Proc::spawn(target(&py, &["pthread_exit", "early"]));
        let ready = app.tagged("READY", Duration::from_secs(30));
        let pid = ready["pid"].as_u64().unwrap().to_string();
        let (mut rec, dir) = record_pid(&pid, &[]);
        app.send("go");
        let blocks: Vec<Value> = (0..3)
            .map(|_| app.tagged("BLOCK", Duration::from_secs(30)))
            .collect();
        let status = rec.wait_for(Duration::from_secs(10));
        let blocks = loop_timed(&mut app, blocks);
        let err = rec.rest_of_stderr();
        assert!(status.is_some_and(|s| s.success()), "{v} early: {err}");
        let eps = episodes(&dir.path().join("e.jsonl"));
        durations_match(&format!("{v} early"), &eps, &blocks);
        assert_eq!(eps[0]["pid"].as_u64().map(|p| p.to_string()), Some(pid));
        assert_eq!(eps[0]["tid"], ready["tid"], "{v}");

        // Attached while the main thread exits.
        let mut app = Proc::spawn(target(&py, &["pthread_exit", "late"]));
        let pid = app.tagged("READY", Duration::from_secs(30))["pid"]
            .as_u64()
            .unwrap()
            .to_string();
        let (mut rec, dir) = record_pid(&pid, &[]);
        app.send("go");
        app.tagged("READY", Duration::from_secs(30));
        rec.err_line(Duration::from_secs(10), |l| {
            l.starts_with(&format!("loopspy: attached to process {pid} again"))
        });
        app.send("go");
        let blocks: Vec<Value> = (0..3)
            .map(|_| app.tagged("BLOCK", Duration::from_secs(30)))
            .collect();
        let status = rec.wait_for(Duration::from_secs(10));
        let blocks = loop_timed(&mut app, blocks);
        let err = rec.rest_of_stderr();
        assert!(status.is_some_and(|s| s.success()), "{v} late: {err}");
        assert!(
            err.contains(&format!(
                "loopspy: process {pid} lost its main thread (pthread_exit)"
            )),
            "{v} late: {err}"
        );
        durations_match(
            &format!("{v} late"),
            &episodes(&dir.path().join("e.jsonl")),
            &blocks,
        );
    }
}

/// Regression: `record -- sh -c 'python3 app.py; true'` was silent for the whole run, then
/// said "exited before loopspy could attach". The Python child of a wrapper is followed, and
/// stderr says so.
#[test]
fn a_wrapper_command_is_followed_to_its_python() {
    let dir = tempfile::tempdir().unwrap();
    let py = python();
    let wrapped = format!(
        "'{}' '{}' sleep_task; true",
        py.display(),
        repo().join("tests/py/scenarios.py").display()
    );
    let eps = dir.path().join("e.jsonl");
    let mut rec = Proc::spawn(loopspy(&[
        "record",
        "-o",
        dir.path().join("o.svg").to_str().unwrap(),
        "--episodes",
        eps.to_str().unwrap(),
        "--",
        "sh",
        "-c",
        &wrapped,
    ]));
    let follow = rec.err_line(Duration::from_secs(30), |l| l.contains("is not Python"));
    rec.sampling();
    // The scenario reads its "go" from stdin, which it shares with loopspy.
    let ready = rec.tagged("READY", Duration::from_secs(5));
    rec.send("go");
    let blocks: Vec<Value> = (0..3)
        .map(|_| rec.tagged("BLOCK", Duration::from_secs(30)))
        .collect();
    let status = rec.wait_for(Duration::from_secs(15));
    let blocks = loop_timed(&mut rec, blocks);
    let err = rec.rest_of_stderr();
    assert!(status.is_some_and(|s| s.success()), "{err}");
    // The scenario's loop runs on its main thread: its tid is its pid.
    let python_pid = ready["tid"].as_u64().unwrap();
    assert_eq!(
        follow,
        format!(
            "loopspy: `sh -c {wrapped}` is not Python; following its Python child process {python_pid} (`{} {} sleep_task`)",
            py.display(),
            repo().join("tests/py/scenarios.py").display()
        ),
        "{err}"
    );
    durations_match("wrapper", &episodes(&eps), &blocks);
}

/// Regression: a recording whose every sample failed to parse still gave "531 samples ... no
/// blocking episodes" (the count from its trailer) and exit 0. Now the skipped lines are
/// counted and shown, and a recording with none readable fails with one line.
#[test]
fn report_counts_what_it_skipped_and_fails_when_nothing_was_read() {
    let dir = tempfile::tempdir().unwrap();
    let fixture = repo().join("tests/fixtures/demo.jsonl");
    let text = std::fs::read_to_string(&fixture).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    let (header, trailer) = (lines[0], lines[lines.len() - 1]);
    let samples = &lines[1..lines.len() - 1];
    // Every sample damaged: keep the header and the trailer.
    let damaged = dir.path().join("damaged.jsonl");
    let mut all_bad = vec![header.to_string()];
    all_bad.extend(
        samples
            .iter()
            .map(|l| l.replacen("\"mono\"", "\"m0no\"", 1)),
    );
    all_bad.push(trailer.to_string());
    std::fs::write(&damaged, all_bad.join("\n") + "\n").unwrap();
    let out = Command::new(crate::support::loopspy())
        .current_dir(dir.path())
        .args(["report", "damaged.jsonl", "-o", "d.svg"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert_eq!(
        err.trim(),
        format!(
            "loopspy: error: cannot read recording damaged.jsonl: none of its {} sample lines could be read (damaged, or not written by loopspy): pass a file written by `loopspy record --format raw`",
            samples.len()
        )
    );
    assert!(!dir.path().join("d.svg").exists());
    // Some damaged: the summary says how many.
    let partly = dir.path().join("partly.jsonl");
    let mut some_bad = vec![header.to_string()];
    some_bad.extend(samples.iter().enumerate().map(|(i, l)| {
        if i % 10 == 0 {
            "{not json".to_string()
        } else {
            l.to_string()
        }
    }));
    some_bad.push(trailer.to_string());
    std::fs::write(&partly, some_bad.join("\n") + "\n").unwrap();
    let out = Command::new(crate::support::loopspy())
        .current_dir(dir.path())
        .args(["report", "partly.jsonl", "-o", "p.svg"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    let skipped = samples.len().div_ceil(10);
    assert!(
        err.contains(&format!(
            "loopspy: note: {skipped} lines of the recording could not be read and were skipped: the episodes come from the {} samples read",
            samples.len() - skipped
        )),
        "{err}"
    );
}
