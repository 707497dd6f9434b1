//! Bad input: one clear line on stderr, the documented exit code, no output file left behind.

use std::process::{Command, Output};

use crate::support::loopspy;

fn loopspy_in(dir: &std::path::Path, args: &[&str]) -> Output {
    Command::new(loopspy())
        .current_dir(dir)
        .args(args)
        .output()
        .unwrap()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn assert_clean_failure(dir: &std::path::Path, o: &Output, code: i32, needle: &str) {
    assert_eq!(o.status.code(), Some(code), "{}", stderr(o));
    assert!(
        stderr(o).contains(needle),
        "stderr lacks {needle:?}: {}",
        stderr(o)
    );
    let left: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .map(|e| e.file_name())
        .collect();
    assert!(left.is_empty(), "files left behind: {left:?}");
}

#[test]
fn no_such_pid() {
    let dir = tempfile::tempdir().unwrap();
    let o = loopspy_in(
        dir.path(),
        &["record", "--pid", "999999999", "--episodes", "e.jsonl"],
    );
    assert_clean_failure(dir.path(), &o, 1, "no process with PID 999999999");
    assert_eq!(stderr(&o).lines().count(), 1, "{}", stderr(&o));
}

#[test]
fn not_a_python_process() {
    let dir = tempfile::tempdir().unwrap();
    let mut child = Command::new("sleep").arg("30").spawn().unwrap();
    let pid = child.id().to_string();
    let o = loopspy_in(dir.path(), &["record", "--pid", &pid]);
    let _ = child.kill();
    let _ = child.wait();
    assert_clean_failure(dir.path(), &o, 1, "is not a Python process");
}

#[test]
fn bad_flags_exit_2() {
    let dir = tempfile::tempdir().unwrap();
    for args in [
        &["record", "--pid", "1", "--rate", "0"][..],
        &["record", "--pid", "1", "--threshold", "-5"][..],
        &["record"][..],
        &["record", "--"][..],
    ] {
        let o = loopspy_in(dir.path(), args);
        assert_clean_failure(dir.path(), &o, 2, "");
    }
}

#[test]
fn unwritable_output() {
    let dir = tempfile::tempdir().unwrap();
    let o = loopspy_in(
        dir.path(),
        &["record", "--pid", "1", "-o", "/nonexistent-dir/x.svg"],
    );
    assert_clean_failure(dir.path(), &o, 1, "cannot write /nonexistent-dir/x.svg");
}

#[test]
fn launch_missing_command() {
    let dir = tempfile::tempdir().unwrap();
    let o = loopspy_in(dir.path(), &["record", "--", "/nonexistent/python3"]);
    assert_clean_failure(dir.path(), &o, 1, "could not start `/nonexistent/python3`");
}

#[test]
fn report_of_a_non_recording() {
    let dir = tempfile::tempdir().unwrap();
    let bogus = dir.path().join("bogus.txt");
    std::fs::write(&bogus, "hello\n").unwrap();
    let out = tempfile::tempdir().unwrap();
    let o = loopspy_in(out.path(), &["report", bogus.to_str().unwrap()]);
    assert_clean_failure(out.path(), &o, 1, "is not a loopspy recording header");
}
