//! Output files of live runs: `record` (and `dump`) against a real Python target running
//! tests/py/scenarios.py `sleep_task` (three 150 ms `time.sleep` blocks), with its READY / GO
//! handshake: GO is sent once loopspy says it samples.

use std::ffi::OsStr;
use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStderr, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use super::{assert_whole_svg, error_lines, kind, mkfifo, mknod_char, names_in, root, stderr, tmp};
use crate::support::{launch_scenario, loopspy, pythons, repo, wait_for_sampling, Target};

fn python() -> PathBuf {
    pythons().pop().unwrap().1
}

fn sleep_task() -> Target {
    Target::start(
        &python(),
        &repo().join("tests/py/scenarios.py"),
        &["sleep_task"],
    )
}

/// `loopspy record --pid TARGET ARGS` sampling a `sleep_task` target that was told to go.
struct Recording {
    target: Target,
    spy: Child,
    err: BufReader<ChildStderr>,
}

fn record(dir: &Path, args: &[&str], stdout: Stdio) -> Recording {
    let mut target = sleep_task();
    let mut spy = Command::new(loopspy())
        .current_dir(dir)
        .args(["record", "--pid", &target.pid().to_string()])
        .args(args)
        .stdout(stdout)
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut err = BufReader::new(spy.stderr.take().unwrap());
    wait_for_sampling(&mut err);
    target.go();
    Recording { target, spy, err }
}

impl Recording {
    /// Wait for the target and loopspy to end: loopspy's exit status and the rest of its
    /// stderr, and the target's BLOCK lines.
    fn finish(mut self) -> (ExitStatus, String, Vec<Value>) {
        let blocks = self.target.finish();
        let status = self.spy.wait().unwrap();
        let mut rest = String::new();
        self.err.read_to_string(&mut rest).unwrap();
        (status, rest, blocks)
    }
}

/// The number of episodes the summary reports (at least one: the target blocks three times).
/// Outputs are checked against it, not against the target's count: which episodes a loaded
/// machine detects is the detector's business (tests/integration/live.rs), that every output
/// has all of them is ours.
fn summary_count(err: &str) -> usize {
    let n = err
        .lines()
        .find_map(|l| l.strip_prefix("loopspy: ")?.split_once(" blocking episode"))
        .and_then(|(n, _)| n.parse().ok())
        .unwrap_or_else(|| panic!("no episode count in the summary:\n{err}"));
    assert!(n >= 1, "{err}");
    n
}

fn episodes(text: &str) -> Vec<Value> {
    text.lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect()
}

/// Each `args` (plus `--pid` of a real target) fails with `want` as its only error line,
/// before attaching (loopspy never says it samples) and leaving `dir` as it was.
pub fn refused_before_attaching(dir: &Path, cases: &[&[&str]], want: &str) {
    let mut target = sleep_task();
    let before = names_in(dir);
    for args in cases {
        let o = Command::new(loopspy())
            .current_dir(dir)
            .args(*args)
            .args(["--pid", &target.pid().to_string()])
            .output()
            .unwrap();
        let err = stderr(&o);
        assert_eq!(o.status.code(), Some(1), "{args:?}: {err}");
        assert_eq!(error_lines(&err), [want], "{args:?}");
        assert!(!err.contains("sampling process"), "{args:?}: {err}");
        assert_eq!(names_in(dir), before, "{args:?}");
    }
    target.go();
    target.finish();
}

#[test]
fn bad_paths_fail_before_attaching() {
    let (_dir, d) = tmp();
    std::fs::create_dir(d.join("sub")).unwrap();
    let cannot = |path: &str, reason: &str| {
        format!("loopspy: error: cannot write {path}: {reason}: choose a writable path with -o / --episodes")
    };
    for (args, want) in [
        (&["record", "-o", "sub"][..], cannot("sub", "Is a directory (os error 21)")),
        (&["record", "-o", "sub/"], cannot("sub/", "Is a directory (os error 21)")),
        (&["record", "-o", "new/"], cannot("new/", "it names a directory (it ends with /), not a file")),
        (&["record", "-o", "missing/x.svg"], cannot("missing/x.svg", "No such file or directory (os error 2)")),
        (&["record", "--episodes", "missing/e.jsonl"], cannot("missing/e.jsonl", "No such file or directory (os error 2)")),
        (&["record", "--format", "raw", "-o", "sub/."], cannot("sub/.", "Is a directory (os error 21)")),
        (
            &["record", "-o", "x", "--episodes", "x"],
            "loopspy: error: refusing to write x: it is the same file as the other output x: give each output its own path, apart from the input".into(),
        ),
        (&["dump", "-o", "sub/"], cannot("sub/", "Is a directory (os error 21)")),
    ] {
        refused_before_attaching(&d, &[args], &want);
    }
}

/// `--episodes - | head -1`: head gets its line and closes the pipe; the flame graph and the
/// summary are still written, with no error and exit 0 (as `rg ... | head` does).
#[test]
fn head_closing_the_episodes_pipe_loses_nothing_else() {
    let (_dir, d) = tmp();
    let mut rec = record(&d, &["-o", "out.svg", "--episodes", "-"], Stdio::piped());
    let head = Command::new("head")
        .arg("-1")
        .stdin(Stdio::from(rec.spy.stdout.take().unwrap()))
        .output()
        .unwrap();
    let (status, err, blocks) = rec.finish();
    assert!(status.success(), "{err}");
    assert!(error_lines(&err).is_empty(), "{err}");
    assert_eq!(blocks.len(), 3);
    let first = episodes(&String::from_utf8_lossy(&head.stdout));
    assert_eq!(first.len(), 1);
    assert_eq!(first[0]["culprit"]["function"], "sleepy_handler");
    let n = summary_count(&err);
    assert!(err.contains("loopspy: wrote out.svg\n"), "{err}");
    let svg = std::fs::read_to_string(d.join("out.svg")).unwrap();
    assert_whole_svg(&svg, "out.svg");
    let plural = if n == 1 { "" } else { "s" };
    assert!(
        svg.contains(&format!("{n} episode{plural}")),
        "the flame graph lost episodes"
    );
}

/// ENOSPC on one live output (a `/dev/full` node): one line says what is lost, the other
/// output and the summary are written, exit 1, and the node is still the device.
#[test]
fn a_full_device_loses_only_that_output() {
    if !root() {
        return;
    }
    let (_dir, d) = tmp();
    mknod_char(&d.join("full"), 1, 7);
    let mut found = 0;
    for (args, lost) in [
        (
            &["-o", "out.svg", "--episodes", "full"][..],
            "the episodes log ends here",
        ),
        (
            &["-o", "full", "--episodes", "e.jsonl"],
            "the flame graph is lost",
        ),
    ] {
        let (status, err, _) = record(&d, args, Stdio::null()).finish();
        found = summary_count(&err);
        assert_eq!(status.code(), Some(1), "{err}");
        assert_eq!(
            error_lines(&err),
            [format!("loopspy: error: cannot write full: No space left on device (os error 28): {lost} (the other outputs are not affected)")],
        );
        assert!(!err.contains("wrote full"), "{err}");
        assert_eq!(kind(&d.join("full")), "char 1:7");
    }
    assert_whole_svg(
        &std::fs::read_to_string(d.join("out.svg")).unwrap(),
        "out.svg",
    );
    assert_eq!(
        episodes(&std::fs::read_to_string(d.join("e.jsonl")).unwrap()).len(),
        found
    );
    assert_eq!(names_in(&d), ["e.jsonl", "full", "out.svg"]);
}

/// With `--episodes -` (or `-o -`), a launched command's stdout goes to loopspy's stderr, so
/// loopspy's stdout holds the data alone.
#[test]
fn launched_command_stdout_goes_to_stderr_when_stdout_carries_data() {
    let (_dir, d) = tmp();
    for (args, svg) in [
        (&["record", "--episodes", "-", "-o", "out.svg"][..], false),
        (&["record", "-o", "-"], true),
    ] {
        let mut spy = launch_scenario(args, "sleep_task", &d);
        let mut err = BufReader::new(spy.stderr.take().unwrap());
        let said = wait_for_sampling(&mut err);
        assert!(said.starts_with("loopspy: sampling process"));
        spy.stdin.take().unwrap().write_all(b"go\n").unwrap();
        let mut out = String::new();
        spy.stdout.take().unwrap().read_to_string(&mut out).unwrap();
        let mut rest = String::new();
        err.read_to_string(&mut rest).unwrap();
        assert!(spy.wait().unwrap().success(), "{rest}");
        // The target's own lines went to stderr.
        assert!(rest.contains("BLOCK {"), "{args:?}: {rest}");
        if svg {
            assert_whole_svg(&out, "stdout");
            assert!(!out.contains("BLOCK {"));
        } else {
            assert_eq!(episodes(&out).len(), summary_count(&rest), "{out}");
        }
    }
}

/// `--episodes FIFO` with no reader: loopspy waits (saying so), and Ctrl-C ends the wait at
/// once, before attaching, leaving nothing behind.
#[test]
fn waiting_for_a_fifo_reader_answers_ctrl_c() {
    let (_dir, d) = tmp();
    mkfifo(&d.join("fifo"));
    let mut target = sleep_task();
    let mut spy = Command::new(loopspy())
        .current_dir(&d)
        .args([
            "record",
            "--pid",
            &target.pid().to_string(),
            "-o",
            "out.svg",
            "--episodes",
            "fifo",
        ])
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut err = BufReader::new(spy.stderr.take().unwrap());
    let mut line = String::new();
    err.read_line(&mut line).unwrap();
    assert_eq!(
        line,
        "loopspy: waiting up to 10 s for a process to read FIFO fifo\n"
    );
    let asked = Instant::now();
    unsafe { libc::kill(spy.id() as i32, libc::SIGINT) };
    let status = spy.wait().unwrap();
    let took = asked.elapsed();
    let mut rest = String::new();
    err.read_to_string(&mut rest).unwrap();
    target.go();
    target.finish();
    assert_eq!(status.code(), Some(1), "{rest}");
    assert_eq!(
        error_lines(&rest),
        ["loopspy: error: interrupted (Ctrl-C, SIGTERM or SIGHUP) while waiting for a reader on FIFO fifo: nothing was written"]
    );
    assert!(took < Duration::from_secs(2), "Ctrl-C took {took:?}");
    assert_eq!(names_in(&d), ["fifo"]);
}

/// The episodes log streams into a FIFO as episodes end; the FIFO stays a FIFO.
#[test]
fn episodes_stream_into_a_fifo_reader() {
    let (_dir, d) = tmp();
    mkfifo(&d.join("fifo"));
    let mut reader = Command::new("cat")
        .arg(d.join("fifo"))
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let (status, err, _) =
        record(&d, &["-o", "out.svg", "--episodes", "fifo"], Stdio::null()).finish();
    let mut got = String::new();
    reader
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut got)
        .unwrap();
    reader.wait().unwrap();
    assert!(status.success(), "{err}");
    assert!(err.contains("loopspy: wrote out.svg, fifo\n"), "{err}");
    assert_eq!(episodes(&got).len(), summary_count(&err), "{got}");
    assert_eq!(kind(&d.join("fifo")), "fifo");
}

/// `--format raw -o -`: the recording streams to stdout, whole, and replays.
#[test]
fn raw_recording_to_stdout_replays() {
    let (_dir, d) = tmp();
    let mut rec = record(&d, &["--format", "raw", "-o", "-"], Stdio::piped());
    let mut raw = String::new();
    rec.spy
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut raw)
        .unwrap();
    let (status, err, _) = rec.finish();
    assert!(status.success(), "{err}");
    assert!(!err.contains("wrote"), "stdout is not a file: {err}");
    let last: Value = serde_json::from_str(raw.lines().last().unwrap()).unwrap();
    assert_eq!(last["stats"]["end"], "target exited", "{last}");
    std::fs::write(d.join("rec.jsonl"), &raw).unwrap();
    let o = super::run_in(
        &d,
        &[
            OsStr::new("report"),
            OsStr::new("rec.jsonl"),
            OsStr::new("--episodes"),
            OsStr::new("-"),
            OsStr::new("-o"),
            OsStr::new("rec.svg"),
        ],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(
        episodes(&String::from_utf8_lossy(&o.stdout)).len(),
        summary_count(&err)
    );
}

/// `dump -o FILE`: the dump goes to the file (through a symlink to its target), not stdout.
#[test]
fn dump_writes_to_a_file() {
    let (_dir, d) = tmp();
    std::os::unix::fs::symlink("real.json", d.join("link.json")).unwrap();
    let mut target = sleep_task();
    let pid = target.pid().to_string();
    let runs: Vec<_> = [
        ("dump.json", true),
        ("link.json", true),
        ("dump.txt", false),
    ]
    .iter()
    .map(|(out, json)| {
        let mut cmd = Command::new(loopspy());
        cmd.current_dir(&d).args(["dump", "--pid", &pid, "-o", out]);
        if *json {
            cmd.arg("--json");
        }
        cmd.output().unwrap()
    })
    .collect();
    target.go();
    target.finish();
    for o in &runs {
        assert!(o.status.success(), "{}", stderr(o));
        assert!(o.stdout.is_empty(), "the dump went to stdout");
    }
    for json in ["dump.json", "real.json"] {
        let v: Value =
            serde_json::from_str(&std::fs::read_to_string(d.join(json)).unwrap()).unwrap();
        assert_eq!(v["pid"].as_u64(), Some(pid.parse().unwrap()), "{json}");
    }
    assert!(std::fs::read_to_string(d.join("dump.txt"))
        .unwrap()
        .contains("Threads"));
    assert_eq!(kind(&d.join("link.json")), "symlink -> real.json");
    assert_eq!(
        names_in(&d),
        ["dump.json", "dump.txt", "link.json", "real.json"]
    );
}
