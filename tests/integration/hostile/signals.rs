//! Every command ends within a second of SIGINT, SIGTERM or SIGHUP with its outputs whole;
//! `top` ends when its terminal goes away, and stops and reaps what it launched; no input
//! panics.

use std::process::Command;
use std::time::{Duration, Instant};

use super::{loopspy, python, reaped, script, stopped, target, within, Proc};
use crate::support::repo;

fn tmux(args: &[&str]) -> String {
    let out = Command::new("tmux").args(args).output().expect("tmux");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn have_tmux() -> bool {
    if Command::new("tmux").arg("-V").output().is_err() {
        eprintln!("SKIPPED: tmux is not installed (apt-get install tmux)");
        return false;
    }
    true
}

/// Poll a tmux pane until `pred` holds, or fail after `limit`.
fn pane_shows(session: &str, limit: Duration, pred: impl Fn(&str) -> bool) -> String {
    let start = Instant::now();
    loop {
        let screen = tmux(&["capture-pane", "-p", "-t", session]);
        if pred(&screen) {
            return screen;
        }
        if start.elapsed() > limit {
            tmux(&["kill-session", "-t", session]);
            panic!("timed out; screen:\n{screen}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The children of `pid`.
fn children(pid: u32) -> Vec<u32> {
    std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .collect()
}

/// Regression: with its tmux session killed (an ssh disconnect does the same), `top` spun at
/// 100% of a core reading the dead terminal, ignored SIGTERM and SIGHUP, and left its target
/// a zombie. Now it ends within 2 s, and the target it launched is stopped and reaped.
#[test]
fn top_ends_when_its_terminal_is_gone() {
    if !have_tmux() {
        return;
    }
    let session = format!("loopspy-hup-{}", std::process::id());
    let cmd = format!(
        "exec {} top -- {} {} loop",
        crate::support::loopspy().display(),
        python().display(),
        script().display()
    );
    tmux(&[
        "new-session",
        "-d",
        "-s",
        &session,
        "-x",
        "120",
        "-y",
        "40",
        &cmd,
    ]);
    pane_shows(&session, Duration::from_secs(30), |s| {
        s.contains("loopspy top  pid") && s.contains("handler")
    });
    let top: u32 = tmux(&["display", "-p", "-t", &session, "#{pane_pid}"])
        .trim()
        .parse()
        .unwrap();
    let launched = children(top);
    assert_eq!(launched.len(), 1, "top's children: {launched:?}");
    tmux(&["kill-session", "-t", &session]);
    let gone = within(Duration::from_secs(2), || stopped(top));
    let cpu = std::fs::read_to_string(format!("/proc/{top}/stat")).unwrap_or_default();
    if !gone {
        unsafe { libc::kill(top as i32, libc::SIGKILL) };
    }
    assert!(
        gone,
        "top still runs 2 s after its terminal went away: {cpu}"
    );
    assert!(
        within(Duration::from_millis(200), || reaped(launched[0])),
        "the target top launched was not reaped"
    );
}

/// Regression: plain-mode `top` said "q quits" but read no keys. With stdin a terminal and
/// stdout a pipe, `q` then Enter quits it.
#[test]
fn plain_top_quits_on_q() {
    if !have_tmux() {
        return;
    }
    let session = format!("loopspy-q-{}", std::process::id());
    let cmd = format!(
        "{} top -- {} {} loop | cat; echo LOOPSPY-EXIT=${{PIPESTATUS[0]}}; sleep 60",
        crate::support::loopspy().display(),
        python().display(),
        script().display()
    );
    tmux(&[
        "new-session",
        "-d",
        "-s",
        &session,
        "-x",
        "150",
        "-y",
        "50",
        "bash",
        "-c",
        &cmd,
    ]);
    let screen = pane_shows(&session, Duration::from_secs(30), |s| {
        s.contains("---- loopspy top: pid") && s.contains("handler")
    });
    assert!(
        screen.contains("q then Enter, or Ctrl-C, quits"),
        "{screen}"
    );
    tmux(&["send-keys", "-t", &session, "q", "Enter"]);
    let after = pane_shows(&session, Duration::from_secs(5), |s| {
        s.contains("LOOPSPY-EXIT=")
    });
    tmux(&["kill-session", "-t", &session]);
    assert!(after.contains("LOOPSPY-EXIT=0"), "{after}");
}

/// Regression: `top | head -2` ended with "error: Broken pipe" (exit 1). Now a closed pipe
/// ends it quietly, and it stops its target.
#[test]
fn top_into_a_closed_pipe_ends_quietly() {
    use std::io::BufRead;
    let mut top = loopspy(&[
        "top",
        "--",
        python().to_str().unwrap(),
        script().to_str().unwrap(),
        "loop",
    ])
    .stdin(std::process::Stdio::null())
    .stdout(std::process::Stdio::piped())
    .stderr(std::process::Stdio::piped())
    .spawn()
    .unwrap();
    // The target shares top's stdout here: its READY comes first, then the snapshots. Read
    // like `head -2` after READY, then close the pipe.
    let mut out = std::io::BufReader::new(top.stdout.take().unwrap());
    let mut pid = None;
    let mut line = String::new();
    let mut snapshot_lines = 0;
    while snapshot_lines < 2 {
        line.clear();
        assert!(out.read_line(&mut line).unwrap() > 0, "top ended early");
        if let Some(ready) = crate::support::tagged(line.trim(), "READY") {
            pid = ready["pid"].as_u64();
        } else if pid.is_some() {
            snapshot_lines += 1;
        }
    }
    drop(out);
    let mut err = String::new();
    std::io::Read::read_to_string(&mut top.stderr.take().unwrap(), &mut err).unwrap();
    let status = top.wait().unwrap();
    assert!(status.success(), "{status}: {err}");
    assert!(!err.contains("Broken pipe"), "{err}");
    let pid = pid.unwrap() as u32;
    assert!(within(Duration::from_secs(1), || reaped(pid) || stopped(pid)));
}

/// SIGINT, SIGTERM and SIGHUP each end `record` within a second, with every output whole.
#[test]
fn record_ends_within_a_second_of_any_signal() {
    let py = python();
    let mut app = Proc::spawn(target(&py, &["loop"]));
    let pid = app.tagged("READY", Duration::from_secs(30))["pid"]
        .as_u64()
        .unwrap()
        .to_string();
    for (sig, name) in [
        (libc::SIGINT, "SIGINT"),
        (libc::SIGTERM, "SIGTERM"),
        (libc::SIGHUP, "SIGHUP"),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let svg = dir.path().join("out.svg");
        let eps = dir.path().join("e.jsonl");
        let mut rec = Proc::spawn(loopspy(&[
            "record",
            "--pid",
            &pid,
            "-o",
            svg.to_str().unwrap(),
            "--episodes",
            eps.to_str().unwrap(),
        ]));
        rec.sampling();
        let sent = Instant::now();
        rec.signal(sig);
        let status = rec.wait_for(Duration::from_secs(1));
        let took = sent.elapsed();
        let err = rec.rest_of_stderr();
        assert!(status.is_some(), "{name}: still running 1 s later: {err}");
        assert!(status.unwrap().success(), "{name}: {err}");
        assert!(err.contains("ended: interrupted"), "{name}: {err}");
        let text = std::fs::read_to_string(&svg).unwrap();
        assert!(text.trim_end().ends_with("</svg>"), "{name}: SVG not whole");
        let left: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .flatten()
            .map(|e| e.file_name())
            .collect();
        assert_eq!(left.len(), 2, "{name}: {left:?}");
        eprintln!("{name}: record ended {took:?} after the signal");
    }
}

/// SIGINT, SIGTERM and SIGHUP each end `monitor` (sampler and HTTP server) within a second,
/// with its episodes log whole.
#[test]
fn monitor_ends_within_a_second_of_any_signal() {
    let mut app = Proc::spawn(target(&python(), &["loop"]));
    let pid = app.tagged("READY", Duration::from_secs(30))["pid"]
        .as_u64()
        .unwrap()
        .to_string();
    for (sig, name) in [
        (libc::SIGINT, "SIGINT"),
        (libc::SIGTERM, "SIGTERM"),
        (libc::SIGHUP, "SIGHUP"),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let eps = dir.path().join("e.jsonl");
        let mut mon = Proc::spawn(loopspy(&[
            "monitor",
            "--pid",
            &pid,
            "--listen",
            "127.0.0.1:0",
            "--episodes",
            eps.to_str().unwrap(),
        ]));
        mon.sampling();
        // The loop blocks 80 ms in every 130: wait for one episode, so the log has content.
        let has_line = || std::fs::read_to_string(&eps).is_ok_and(|t| t.contains('\n'));
        assert!(
            within(Duration::from_secs(10), has_line),
            "{name}: no episode"
        );
        let sent = Instant::now();
        mon.signal(sig);
        let status = mon.wait_for(Duration::from_secs(1));
        let took = sent.elapsed();
        let err = mon.rest_of_stderr();
        assert!(status.is_some(), "{name}: still running 1 s later: {err}");
        assert!(status.unwrap().success(), "{name}: {err}");
        let text = std::fs::read_to_string(&eps).unwrap();
        assert!(!text.is_empty() && text.ends_with('\n'), "{name}: {text:?}");
        for line in text.lines() {
            serde_json::from_str::<serde_json::Value>(line).expect("whole JSON lines");
        }
        eprintln!("{name}: monitor ended {took:?} after the signal");
    }
}

/// `top` in plain mode ends within a second of SIGTERM or SIGHUP and reaps its target.
#[test]
fn top_ends_within_a_second_of_a_signal() {
    for sig in [libc::SIGTERM, libc::SIGHUP, libc::SIGINT] {
        let mut top = Proc::spawn(loopspy(&[
            "top",
            "--",
            python().to_str().unwrap(),
            script().to_str().unwrap(),
            "loop",
        ]));
        let pid = top.tagged("READY", Duration::from_secs(30))["pid"]
            .as_u64()
            .unwrap() as u32;
        top.out_line(Duration::from_secs(10), |l| {
            l.starts_with("---- loopspy top")
        });
        top.signal(sig);
        let status = top.wait_for(Duration::from_secs(1));
        let err = top.rest_of_stderr();
        assert!(
            status.is_some_and(|s| s.success()),
            "signal {sig}: {status:?} {err}"
        );
        assert!(reaped(pid), "signal {sig}: target not reaped");
    }
}

/// `report` ends within a second of each signal; a replay stopped by the user writes
/// nothing, and leaves no temporary file (see also outputs::signals).
#[test]
fn report_ends_within_a_second_of_a_signal() {
    let dir = tempfile::tempdir().unwrap();
    let rec = dir.path().join("big.jsonl");
    write_big_recording(&rec, 400_000);
    let svg = dir.path().join("out.svg");
    for sig in [libc::SIGTERM, libc::SIGINT, libc::SIGHUP] {
        let mut report = Proc::spawn(loopspy(&[
            "report",
            rec.to_str().unwrap(),
            "-o",
            svg.to_str().unwrap(),
        ]));
        // Replaying has begun once the output's temporary file exists.
        assert!(within(Duration::from_secs(10), || std::fs::read_dir(
            dir.path()
        )
        .unwrap()
        .flatten()
        .any(|e| e.file_name().to_string_lossy().ends_with(".tmp"))));
        let sent = Instant::now();
        report.signal(sig);
        let status = report.wait_for(Duration::from_secs(1));
        let err = report.rest_of_stderr();
        assert_eq!(
            status.and_then(|s| s.code()),
            Some(1),
            "signal {sig}: still running or wrong status {:?} after the signal: {err}",
            sent.elapsed()
        );
        assert!(err.contains("interrupted"), "{err}");
        let left: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n != "big.jsonl")
            .collect();
        assert!(left.is_empty(), "left behind: {left:?}");
    }
}

/// A recording long enough that replaying it takes seconds.
fn write_big_recording(path: &std::path::Path, samples: usize) {
    use std::io::Write;
    let mut w = std::io::BufWriter::new(std::fs::File::create(path).unwrap());
    writeln!(
        w,
        r#"{{"loopspy_recording":1,"pid":7,"command":"python3 app.py","python_version":"3.11.7","rate":1000.0,"start_wall":1000.0}}"#
    )
    .unwrap();
    for i in 0..samples {
        let t = i as f64 / 1000.0;
        writeln!(
            w,
            r#"{{"wall":{},"mono":{t},"pid":7,"threads":[{{"tid":7,"name":"MainThread","active":true,"frames":[{{"function":"work","file":"/app/a.py","line":{}}},{{"function":"main","file":"/app/a.py","line":1}}]}}]}}"#,
            1000.0 + t,
            i % 50
        )
        .unwrap();
    }
}

/// Regression: `--duration 1e30` panicked converting to a Duration (exit 101, an empty
/// episodes file), and rates below 1 Hz slept through Ctrl-C. Out-of-range numbers are
/// refused at parse time: exit 2, one reason, no file.
#[test]
fn out_of_range_numbers_are_refused_before_anything_runs() {
    let dir = tempfile::tempdir().unwrap();
    for (flag, value) in [
        ("--duration", "1e30"),
        ("--duration", "-1"),
        ("--rate", "1e-9"),
        ("--rate", "0.05"),
        ("--rate", "1e12"),
        ("--stack-rate", "1e-300"),
        ("--threshold", "1e300"),
        ("--threshold", "0"),
    ] {
        let arg = format!("{flag}={value}");
        let out = Command::new(crate::support::loopspy())
            .current_dir(dir.path())
            .args(["record", "--episodes", "e.jsonl", &arg, "--"])
            .arg(python())
            .arg(repo().join("tests/py/scenarios.py"))
            .arg("sleep_task")
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{arg}: {err}");
        let first = err.lines().next().unwrap_or_default();
        // A rate too low for the threshold is refused by the check across flags (`--rate`
        // must resolve `--threshold`), the rest by their own flag's range.
        let low_rate = flag == "--rate" && value.parse::<f64>().is_ok_and(|v| v < 1.0);
        if low_rate {
            assert!(
                first.starts_with("error: --rate ") && first.contains("cannot time"),
                "{arg}: {err}"
            );
        } else {
            assert!(
                first.starts_with(&format!("error: invalid value '{value}' for '{flag}"))
                    && first.contains("must be"),
                "{arg}: {err}"
            );
        }
        assert!(!err.contains("panicked"), "{err}");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0, "{arg}");
    }
}
