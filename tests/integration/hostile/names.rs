//! Names from the target carry terminal escapes and line breaks: a function, its file and the
//! loop's thread are all named `\x1b]0;PWNED\x07\r\nFAKE LINE \x1b[31mred`. Nothing of it may
//! reach a terminal raw (the summary, the live "blocked for" line, `dump`, `top`'s plain
//! mode, error messages), and the SVG must stay valid XML.

use std::process::Command;
use std::time::Duration;

use super::{episodes, loopspy, target, Proc};
use crate::support::pythons;

/// What the escaped name looks like.
const SHOWN: &str = "\\x1b]0;PWNED\\x07\\r\\nFAKE LINE \\x1b[31mred";

/// No raw control character (but line ends), and no line forged by the name's `\r\n`.
fn assert_clean(what: &str, text: &str) {
    for (i, line) in text.lines().enumerate() {
        assert!(
            !line.chars().any(|c| c.is_control() && c != '\t'),
            "{what}: line {i} has a raw control character: {line:?}"
        );
        assert!(
            !line.trim_start().starts_with("FAKE LINE"),
            "{what}: a forged line: {line:?}"
        );
    }
}

/// Whether python3's XML parser accepts the file.
fn xml_ok(path: &std::path::Path) -> Result<(), String> {
    let out = Command::new("python3")
        .args([
            "-c",
            "import sys, xml.etree.ElementTree as E; E.parse(sys.argv[1])",
        ])
        .arg(path)
        .output()
        .unwrap();
    if out.status.success() {
        Ok(())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

/// Regression: a function named with `\x1b]0;...\x07` and `\r\nFAKE LINE` retitled the
/// terminal and forged a line of the summary; the same name made the SVG invalid XML.
#[test]
fn hostile_names_are_escaped_on_every_terminal_output() {
    for (v, py) in pythons() {
        let dir = tempfile::tempdir().unwrap();
        let svg = dir.path().join("out.svg");
        let eps = dir.path().join("e.jsonl");
        // Blocks of 1.3 s: long enough for the live "blocked for 1 s" line.
        let mut app = Proc::spawn(target(&py, &["names", "1.3"]));
        let pid = app.tagged("READY", Duration::from_secs(30))["pid"]
            .as_u64()
            .unwrap()
            .to_string();
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
        let mut top = Proc::spawn(loopspy(&["top", "--pid", &pid]));
        top.out_line(Duration::from_secs(30), |l| {
            l.starts_with("---- loopspy top")
        });
        app.send("go");
        app.out_line(Duration::from_secs(10), |l| l.starts_with("START"));
        // `dump` while the hostile function runs.
        let dump = Command::new(crate::support::loopspy())
            .args(["dump", "--pid", &pid])
            .output()
            .unwrap();
        let dump_text = String::from_utf8_lossy(&dump.stdout).into_owned();
        assert!(dump.status.success(), "{v}: {dump_text}");
        let status = app.wait_for(Duration::from_secs(30));
        assert!(status.is_some(), "{v}: target did not finish");
        let rec_status = rec.wait_for(Duration::from_secs(10)).expect("record ends");
        let summary = rec.rest_of_stderr();
        assert!(rec_status.success(), "{v}: {summary}");
        let top_status = top.wait_for(Duration::from_secs(10)).expect("top ends");
        let top_text = top.rest_of_stdout();
        assert!(top_status.success(), "{v}: {}", top.rest_of_stderr());

        assert_clean("summary", &summary);
        assert_clean("dump", &dump_text);
        assert_clean("top", &top_text);
        assert!(
            summary.contains(&format!("{SHOWN} (")),
            "{v}: the culprit is shown escaped: {summary}"
        );
        assert!(
            summary
                .lines()
                .any(|l| l.contains("blocked for 1 s so far") && l.contains(SHOWN)),
            "{v}: the live line names the callback, escaped: {summary}"
        );
        assert!(dump_text.contains(SHOWN), "{v}: {dump_text}");
        assert!(top_text.contains("\\x1b]0;PWNED"), "{v}: {top_text}");
        // The JSON keeps the name exactly (JSON escapes it itself).
        let eps = episodes(&eps);
        assert_eq!(eps.len(), 2, "{v}: {summary}");
        let raw = "\u{1b}]0;PWNED\u{7}\r\nFAKE LINE \u{1b}[31mred";
        assert_eq!(eps[0]["culprit"]["function"].as_str(), Some(raw), "{v}");
        assert_eq!(eps[0]["task"].as_str(), Some(raw), "{v}");
        assert!(
            dump_text
                .lines()
                .any(|l| l.trim_start().starts_with(SHOWN) && l.contains("running")),
            "{v}: the task is named, escaped: {dump_text}"
        );
        if let Err(e) = xml_ok(&svg) {
            panic!("{v}: the SVG is not valid XML: {e}");
        }
        assert!(std::fs::read_to_string(&svg).unwrap().contains("PWNED"));
    }
}

/// Error messages quote what the target named: a process whose `comm` carries an escape is
/// named escaped in "is not a Python process".
#[test]
fn error_messages_escape_the_targets_names() {
    // Only a process may rename itself: the shell does, then waits on its stdin.
    let mut shell = Proc::spawn({
        let mut c = Command::new("sh");
        c.args([
            "-c",
            r"printf '\033]0;X\007\r\nFAKE' > /proc/self/comm; echo READY; read x",
        ]);
        c
    });
    shell.out_line(Duration::from_secs(10), |l| l == "READY");
    let pid = shell.pid();
    let out = Command::new(crate::support::loopspy())
        .args(["dump", "--pid", &pid.to_string()])
        .output()
        .unwrap();
    shell.kill();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert_clean("error", &err);
    assert!(
        err.contains("(\\x1b]0;X\\x07\\r\\nFAKE) is not a Python process"),
        "{err}"
    );
}
