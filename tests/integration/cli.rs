//! Bad input: one clear line on stderr, the documented exit code, no output file left behind.
//! Also real bad targets (a zombie, a Python without a loop, one we may not read, one that exits
//! while we attach or sample) and the outputs they leave.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use serde_json::Value;

use crate::support::{
    loopspy, marker_line, pythons, record_scenario, repo, wait_for_sampling, Run, Target,
};

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

/// Bad flags: clap's message (its first line says what is wrong), exit 2, nothing written.
#[test]
fn bad_flags_exit_2() {
    let dir = tempfile::tempdir().unwrap();
    let cases: &[(&[&str], &str)] = &[
        (
            &["record", "--pid", "1", "--rate", "0"],
            "error: invalid value '0' for '--rate <RATE>': must be a number greater than 0",
        ),
        (
            &["record", "--pid", "1", "--rate", "nan"],
            "error: invalid value 'nan' for '--rate <RATE>': must be a number greater than 0",
        ),
        (
            &["record", "--pid", "1", "--stack-rate", "0"],
            "error: invalid value '0' for '--stack-rate <STACK_RATE>'",
        ),
        (
            &["record", "--pid", "1", "--duration", "0"],
            "error: invalid value '0' for '--duration <DURATION>'",
        ),
        (
            &["record", "--pid", "1", "--threshold=-5"],
            "error: invalid value '-5' for '--threshold <THRESHOLD>': must be from 1 to 3600000 (ms)",
        ),
        // Without `=`, clap may take `-5` for a flag ("unexpected argument '-5' found") unless
        // the argument allows negative numbers: either way the first line names `-5`.
        (&["record", "--pid", "1", "--threshold", "-5"], "error: "),
        (
            &["record", "--pid", "1", "--threshold", "abc"],
            "error: invalid value 'abc' for '--threshold <THRESHOLD>': `abc` is not a number",
        ),
        (
            &["record", "--pid", "abc"],
            "error: invalid value 'abc' for '--pid <PID>'",
        ),
        (
            &["record", "--pid", "1", "--format", "svg"],
            "error: invalid value 'svg' for '--format <FORMAT>'",
        ),
        (
            &["record"],
            "error: the following required arguments were not provided:",
        ),
        (
            &["record", "--"],
            "error: the following required arguments were not provided:",
        ),
        (
            &["record", "--pid", "1", "--", "python3"],
            "error: the argument '--pid <PID>' cannot be used with '[CMD]...'",
        ),
        (
            &["top"],
            "error: the following required arguments were not provided:",
        ),
        (
            &["dump"],
            "error: the following required arguments were not provided:",
        ),
        (&["report"], "error: the following required arguments were not provided:"),
        // A recording is already raw.
        (
            &["report", "rec.jsonl", "--format", "raw"],
            "error: invalid value 'raw' for '--format <FORMAT>'",
        ),
        (
            &["record", "--pid", "1", "--rate", "2"],
            "error: --rate 2 cannot time 50 ms episodes (--threshold)",
        ),
    ];
    for (args, first_line) in cases {
        let o = loopspy_in(dir.path(), args);
        assert_clean_failure(dir.path(), &o, 2, "");
        let err = stderr(&o);
        let first = err.lines().next().unwrap_or_default();
        assert!(first.starts_with(first_line), "{args:?}: {err}");
        // A bad negative number is named on that first line.
        if let Some(bad) = args
            .iter()
            .find(|a| a.starts_with('-') && a[1..].parse::<f64>().is_ok())
        {
            assert!(first.contains(&format!("'{bad}'")), "{args:?}: {err}");
        }
        assert!(!err.contains("panicked"), "{err}");
    }
    // loopspy's own checks across flags show the subcommand's usage line, as clap's do.
    for args in [
        &["record", "--pid", "1", "--rate", "2"][..],
        &["record", "--pid", "1", "-o", "-", "--episodes", "-"][..],
    ] {
        let o = loopspy_in(dir.path(), args);
        assert_clean_failure(dir.path(), &o, 2, "");
        let err = stderr(&o);
        assert!(err.contains("Usage: loopspy record "), "{args:?}: {err}");
    }
}

#[test]
fn unwritable_output() {
    let dir = tempfile::tempdir().unwrap();
    for (args, path) in [
        (
            &["record", "--pid", "1", "-o", "/nonexistent-dir/x.svg"][..],
            "/nonexistent-dir/x.svg",
        ),
        (
            &[
                "record",
                "--pid",
                "1",
                "--episodes",
                "/nonexistent-dir/e.jsonl",
            ][..],
            "/nonexistent-dir/e.jsonl",
        ),
        (
            &["report", "rec.jsonl", "-o", "/nonexistent-dir/x.svg"][..],
            "/nonexistent-dir/x.svg",
        ),
    ] {
        let o = loopspy_in(dir.path(), args);
        assert_clean_failure(
            dir.path(),
            &o,
            1,
            &format!("cannot write {path}: No such file or directory (os error 2): choose a writable path with -o / --episodes"),
        );
        assert_one_line(&o);
    }
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
    // An SVG given by mistake: its default output would be itself, but the input is the error.
    let svg = out.path().join("demo.svg");
    std::fs::write(&svg, "<?xml version=\"1.0\"?>\n<svg></svg>\n").unwrap();
    let o = loopspy_in(out.path(), &["report", "demo.svg"]);
    assert_eq!(o.status.code(), Some(1));
    assert_one_line(&o);
    assert!(
        stderr(&o).contains(
            "cannot read recording demo.svg: the first line is not a loopspy recording header"
        ),
        "{}",
        stderr(&o)
    );
    assert_eq!(
        std::fs::read(&svg).unwrap(),
        b"<?xml version=\"1.0\"?>\n<svg></svg>\n"
    );
}

// --- bad input against real processes -----------------------------------------------------

fn bad_targets() -> PathBuf {
    repo().join("tests/py/bad_targets.py")
}

fn newest_python() -> PathBuf {
    pythons().pop().unwrap().1
}

fn files_in(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

/// A failure is one line on stderr, and never a panic.
fn assert_one_line(o: &Output) {
    let err = stderr(o);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.starts_with("loopspy: error: "), "{err}");
    assert!(!err.contains("panicked"), "{err}");
}

fn assert_whole_svg(path: &Path) {
    let svg = std::fs::read_to_string(path).unwrap();
    assert!(svg.starts_with("<?xml"), "{}", path.display());
    assert!(
        svg.trim_end().ends_with("</svg>"),
        "{} is cut",
        path.display()
    );
}

#[test]
fn zombie_process() {
    let dir = tempfile::tempdir().unwrap();
    let mut parent = Target::start(&newest_python(), &bad_targets(), &["zombie"]);
    let zombie = parent.ready["zombie"].as_u64().unwrap().to_string();
    // It stays a zombie until its parent is told to reap it, after the checks.
    let stat = std::fs::read_to_string(format!("/proc/{zombie}/stat")).unwrap();
    assert!(stat.contains(") Z "), "{stat}");
    let runs: Vec<(&str, Output)> = ["record", "dump", "top"]
        .into_iter()
        .map(|cmd| (cmd, loopspy_in(dir.path(), &[cmd, "--pid", &zombie])))
        .collect();
    parent.go();
    parent.child.wait().unwrap();
    for (cmd, o) in runs {
        let want = format!(
            "process {zombie} has exited (it is a zombie waiting for its parent): nothing left to sample"
        );
        assert_clean_failure(dir.path(), &o, 1, &want);
        assert_one_line(&o);
        assert!(!stderr(&o).is_empty(), "{cmd}");
    }
}

/// A Python process that never runs an event loop: the recording works, and says so.
#[test]
fn python_without_an_event_loop() {
    let dir = tempfile::tempdir().unwrap();
    let mut target = Target::start(&newest_python(), &bad_targets(), &["no_loop"]);
    let pid = target.pid().to_string();
    let o = loopspy_in(dir.path(), &["record", "--pid", &pid, "--duration", "1"]);
    target.go();
    target.child.wait().unwrap();
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(0), "{err}");
    assert!(
        err.contains("no asyncio event loop was found in the target"),
        "{err}"
    );
    assert!(err.contains("ended: duration"), "{err}");
    assert!(!err.contains("panicked"), "{err}");
    let svg = format!("loopspy-{pid}.svg");
    assert_eq!(files_in(dir.path()), [svg.clone()]);
    assert_whole_svg(&dir.path().join(svg));
}

/// How to run a command as `nobody`, when this test runs as root and the tools are there.
fn as_nobody() -> Option<Vec<&'static str>> {
    if unsafe { libc::geteuid() } != 0 {
        eprintln!(
            "SKIPPED: permission_denied_for_an_unprivileged_user needs root to drop to nobody"
        );
        return None;
    }
    let has = |tool: &str| {
        Command::new(tool)
            .arg("--help")
            .output()
            .is_ok_and(|o| o.status.success())
    };
    if has("setpriv") {
        Some(vec![
            "setpriv",
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
        ])
    } else if has("runuser") {
        Some(vec!["runuser", "-u", "nobody", "--"])
    } else {
        eprintln!("SKIPPED: permission_denied_for_an_unprivileged_user needs setpriv or runuser (util-linux)");
        None
    }
}

/// Permission denied, for real: loopspy run as `nobody` against a root-owned Python.
#[test]
fn permission_denied_for_an_unprivileged_user() {
    use std::os::unix::fs::PermissionsExt;
    let Some(nobody) = as_nobody() else { return };
    let run_as_nobody = |binary: &Path, dir: &Path, args: &[&str]| {
        Command::new(nobody[0])
            .args(&nobody[1..])
            .arg(binary)
            .args(args)
            .current_dir(dir)
            .output()
            .unwrap()
    };
    // Output goes to a directory nobody may write, so only the target is out of reach.
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
    // The binary must be reachable by nobody; if a parent directory is not, use a copy.
    let bin_dir = tempfile::tempdir().unwrap();
    let mut binary = loopspy();
    if !run_as_nobody(&binary, dir.path(), &["--version"])
        .status
        .success()
    {
        std::fs::set_permissions(bin_dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        binary = bin_dir.path().join("loopspy");
        std::fs::copy(loopspy(), &binary).unwrap();
        std::fs::set_permissions(&binary, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    let mut target = Target::start(&newest_python(), &bad_targets(), &["no_loop"]);
    let pid = target.pid().to_string();
    let runs: Vec<Output> = [
        &["record", "--pid", &pid, "--episodes", "e.jsonl"][..],
        &["dump", "--pid", &pid][..],
    ]
    .into_iter()
    .map(|args| run_as_nobody(&binary, dir.path(), args))
    .collect();
    target.go();
    target.child.wait().unwrap();
    for o in runs {
        assert_clean_failure(
            dir.path(),
            &o,
            1,
            &format!("permission denied reading process {pid}"),
        );
        assert!(stderr(&o).contains("CAP_SYS_PTRACE"), "{}", stderr(&o));
        assert_one_line(&o);
    }
}

/// The target exits while loopspy samples it, between episodes: a normal end, every output
/// whole (the raw recording ends with its stats line).
#[test]
fn target_exits_during_sampling() {
    use std::io::BufReader;
    let dir = tempfile::tempdir().unwrap();
    let mut target = Target::start(&newest_python(), &bad_targets(), &["no_loop"]);
    let pid = target.pid().to_string();
    let mut spy = Command::new(loopspy())
        .current_dir(dir.path())
        .args([
            "record",
            "--pid",
            &pid,
            "--format",
            "raw",
            "-o",
            "rec.jsonl",
        ])
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut err = BufReader::new(spy.stderr.take().unwrap());
    wait_for_sampling(&mut err);
    // Closing its stdin ends the target.
    target.go();
    target.child.wait().unwrap();
    let status = spy.wait().unwrap();
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut err, &mut rest).unwrap();
    assert!(status.success(), "{rest}");
    assert!(rest.contains("ended: target exited"), "{rest}");
    assert_eq!(files_in(dir.path()), ["rec.jsonl"]);
    let text = std::fs::read_to_string(dir.path().join("rec.jsonl")).unwrap();
    let last: Value = serde_json::from_str(text.lines().last().unwrap()).unwrap();
    assert_eq!(last["stats"]["end"], "target exited", "{last}");
    assert!(last["stats"]["samples"].as_u64().unwrap() > 0, "{last}");
}

/// The target exits (os._exit from another thread) 300 ms into a 2 s block: every output is
/// whole, the episode is written with `complete: false`, and the raw recording replays to it.
#[test]
fn target_exits_in_the_middle_of_an_episode() {
    let py = newest_python();
    let script = repo().join("tests/py/scenarios.py");
    let line = marker_line(&script, "exit");
    let check = |run: &Run| -> Value {
        assert!(run.status.success(), "{}", run.stderr);
        assert!(
            run.stderr.contains("ended: target exited"),
            "{}",
            run.stderr
        );
        assert_eq!(run.episodes.len(), 1, "{}", run.stderr);
        let ep = run.episodes[0].clone();
        assert_eq!(ep["complete"], Value::Bool(false), "{ep}");
        let ms = ep["duration_ms"].as_f64().unwrap();
        assert!(
            (250.0..1000.0).contains(&ms),
            "{ms} ms for a 300 ms block\n{ep}"
        );
        assert_eq!(ep["culprit"]["function"], "exit_mid_block_main", "{ep}");
        assert_eq!(ep["culprit"]["line"].as_u64(), Some(line), "{ep}");
        ep
    };
    // The flame graph and the episodes log.
    let run = record_scenario(&py, &script, &["exit_mid_block"], &[]);
    check(&run);
    assert!(run.svg.trim_end().ends_with("</svg>"), "SVG is cut");
    assert!(run.svg.contains("still running at the end"));
    // The raw recording (record_scenario's `-o` file): whole, and replayed to the same episode.
    let raw = record_scenario(&py, &script, &["exit_mid_block"], &["--format", "raw"]);
    let live = check(&raw);
    let last: Value = serde_json::from_str(raw.svg.lines().last().unwrap()).unwrap();
    assert_eq!(last["stats"]["end"], "target exited", "{last}");
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("rec.jsonl"), &raw.svg).unwrap();
    let o = loopspy_in(
        dir.path(),
        &["report", "rec.jsonl", "--episodes", "e.jsonl"],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    assert_whole_svg(&dir.path().join("rec.svg"));
    let replayed: Value = serde_json::from_str(
        std::fs::read_to_string(dir.path().join("e.jsonl"))
            .unwrap()
            .trim(),
    )
    .unwrap();
    for key in ["tid", "samples", "culprit", "complete"] {
        assert_eq!(replayed[key], live[key], "{key}: {replayed}\nvs {live}");
    }
    // Times agree to a rounding error (serde_json's default float parsing may differ from the
    // written value in the last bit).
    for (key, tolerance) in [("start", 1e-6), ("duration_ms", 1e-3)] {
        let (a, b) = (replayed[key].as_f64().unwrap(), live[key].as_f64().unwrap());
        assert!((a - b).abs() <= tolerance, "{key}: {a} vs {b}");
    }
}

/// A launched command that exits before it can be read: one line, nothing written.
#[test]
fn launched_command_exits_before_attach() {
    let dir = tempfile::tempdir().unwrap();
    let o = loopspy_in(
        dir.path(),
        &["record", "--episodes", "e.jsonl", "--", "false"],
    );
    assert_clean_failure(
        dir.path(),
        &o,
        1,
        "`false` exited (exit status: 1) before loopspy could attach to it",
    );
    assert_one_line(&o);
}

/// A launched Python that exits at once races loopspy's attach. Either documented outcome is
/// clean: the error above with nothing written, or a short recording with whole outputs.
#[test]
fn launched_python_exits_at_once() {
    let py = newest_python();
    let dir = tempfile::tempdir().unwrap();
    let py_str = py.to_str().unwrap();
    let o = loopspy_in(
        dir.path(),
        &[
            "record",
            "--episodes",
            "e.jsonl",
            "--",
            py_str,
            "-c",
            "pass",
        ],
    );
    let err = stderr(&o);
    assert!(!err.contains("panicked"), "{err}");
    match o.status.code() {
        Some(1) => {
            assert!(err.contains("before loopspy could attach to it"), "{err}");
            assert_one_line(&o);
            assert!(files_in(dir.path()).is_empty());
        }
        Some(0) => {
            assert!(err.contains("ended: target exited"), "{err}");
            let files = files_in(dir.path());
            assert_eq!(files.len(), 2, "{files:?}");
            assert_eq!(files[0], "e.jsonl");
            assert!(files[1].starts_with("loopspy-") && files[1].ends_with(".svg"));
            assert_whole_svg(&dir.path().join(&files[1]));
        }
        other => panic!("exit {other:?}: {err}"),
    }
}

/// A Python older than 3.8, when pyenv has one (3.7 or 3.6): refused by version.
#[test]
fn unsupported_python_version() {
    let root = std::env::var("PYENV_ROOT")
        .map(PathBuf::from)
        .unwrap_or_else(|_| {
            PathBuf::from(std::env::var("HOME").unwrap_or_else(|_| "/root".into())).join(".pyenv")
        });
    let old = std::fs::read_dir(root.join("versions"))
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            let name = p.file_name().unwrap().to_string_lossy().into_owned();
            name.starts_with("3.7.") || name.starts_with("3.6.")
        })
        .map(|p| p.join("bin/python3"))
        .find(|p| p.exists());
    let Some(python) = old else {
        eprintln!(
            "SKIPPED: unsupported_python_version needs CPython 3.6 or 3.7 (pyenv install 3.7)"
        );
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let mut target = Target::start(&python, &bad_targets(), &["no_loop"]);
    let pid = target.pid().to_string();
    let runs: Vec<Output> = ["record", "dump"]
        .into_iter()
        .map(|cmd| loopspy_in(dir.path(), &[cmd, "--pid", &pid]))
        .collect();
    target.go();
    target.child.wait().unwrap();
    for o in runs {
        assert_clean_failure(
            dir.path(),
            &o,
            1,
            "which loopspy does not support: it reads CPython 3.8 to 3.15",
        );
        assert!(stderr(&o).contains(&format!("process {pid} runs Python 3.")));
        assert_one_line(&o);
    }
}
