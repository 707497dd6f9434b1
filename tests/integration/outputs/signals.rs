//! Stop signals: Ctrl-C (SIGTERM, SIGHUP) during `report` writes nothing and leaves no
//! temporary file; a second one while a write blocks ends loopspy at once, cleaning up too.

use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use super::{error_lines, fixture, mkfifo, names_in, stderr, temporary_files, tmp};
use crate::support::loopspy;

/// Whether `signal` waits to be delivered to process `pid` (its ShdPnd or SigPnd mask).
fn signal_pending(pid: u32, signal: i32) -> bool {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .filter(|l| l.starts_with("ShdPnd:") || l.starts_with("SigPnd:"))
        .filter_map(|l| u64::from_str_radix(l.split_whitespace().nth(1)?, 16).ok())
        .any(|mask| mask & (1 << (signal - 1)) != 0)
}

/// A recording long enough to interrupt: the demo fixture 60 times over, each copy shifted
/// in time after the last.
fn large_recording(path: &Path) {
    use std::io::Write;
    let text = std::fs::read_to_string(fixture("demo")).unwrap();
    let mut lines = text.lines();
    let header = lines.next().unwrap();
    let samples: Vec<serde_json::Value> = lines
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v.get("mono").is_some())
        .collect();
    let span = samples.last().unwrap()["mono"].as_f64().unwrap() + 0.01;
    let mut out = std::io::BufWriter::new(std::fs::File::create(path).unwrap());
    writeln!(out, "{header}").unwrap();
    for copy in 0..60 {
        for s in &samples {
            let mut s = s.clone();
            for key in ["mono", "wall"] {
                s[key] = (s[key].as_f64().unwrap() + copy as f64 * span).into();
            }
            serde_json::to_writer(&mut out, &s).unwrap();
            out.write_all(b"\n").unwrap();
        }
    }
    out.flush().unwrap();
}

/// Ctrl-C (or SIGTERM, SIGHUP) while `report` replays: exit 1, one line, and no temporary
/// file left (they exist from the start, so their presence says the replay is running).
#[test]
fn ctrl_c_during_report_leaves_no_temporary_files() {
    let (_dir, d) = tmp();
    let rec = d.join("big.jsonl");
    large_recording(&rec);
    for signal in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
        let child = Command::new(loopspy())
            .current_dir(&d)
            .args([
                "report",
                "big.jsonl",
                "-o",
                "big.svg",
                "--episodes",
                "big.ep",
            ])
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        while temporary_files(&d).len() < 2 {
            assert!(
                Instant::now() < deadline,
                "no temporary files appeared: {:?}",
                names_in(&d)
            );
            std::thread::sleep(Duration::from_millis(2));
        }
        unsafe { libc::kill(child.id() as i32, signal) };
        let o = child.wait_with_output().unwrap();
        let err = stderr(&o);
        assert_eq!(o.status.code(), Some(1), "signal {signal}: {err}");
        // Caught in the replay (nearly always) or, on a slow machine, while rendering.
        let lines = error_lines(&err);
        assert!(
            lines == ["loopspy: error: interrupted (Ctrl-C, SIGTERM or SIGHUP) while replaying big.jsonl: nothing was written"]
                || lines == ["loopspy: error: interrupted (Ctrl-C, SIGTERM or SIGHUP) while writing the outputs: nothing was written"],
            "signal {signal}: {err}"
        );
        assert_eq!(names_in(&d), ["big.jsonl"], "signal {signal}");
    }
}

/// A second Ctrl-C while a write blocks (a FIFO whose reader does not read) ends loopspy at
/// once, and still removes the temporary files.
#[test]
fn a_second_ctrl_c_while_a_write_blocks_exits_at_once() {
    let (_dir, d) = tmp();
    let fifo = d.join("fifo");
    mkfifo(&fifo);
    // A reader that holds the FIFO open and reads nothing (non-blocking open: no writer yet),
    // with a small pipe, which the SVG fills.
    let reader = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(&fifo)
        .unwrap();
    let capacity = unsafe { libc::fcntl(reader.as_raw_fd(), libc::F_SETPIPE_SZ, 4096) };
    assert!(capacity > 0, "{}", std::io::Error::last_os_error());
    let child = Command::new(loopspy())
        .current_dir(&d)
        .arg("report")
        .arg(fixture("demo"))
        .args(["-o", "fifo", "--episodes", "e.jsonl"])
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Wait until the pipe is full: loopspy is blocked writing the SVG.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let mut queued: libc::c_int = 0;
        unsafe { libc::ioctl(reader.as_raw_fd(), libc::FIONREAD, &mut queued) };
        if queued >= capacity {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the pipe never filled ({queued} of {capacity})"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    assert_eq!(temporary_files(&d).len(), 1, "{:?}", names_in(&d));
    // The first signal cannot end a blocked write; the second ends loopspy. Two signals sent
    // at once may merge into one, so the second waits until the first was delivered.
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    while signal_pending(child.id(), libc::SIGINT) {
        std::thread::sleep(Duration::from_millis(1));
    }
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    let o = child.wait_with_output().unwrap();
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert_eq!(
        error_lines(&err),
        ["loopspy: error: interrupted twice: stopped at once; the outputs not yet written are lost"]
    );
    assert_eq!(names_in(&d), ["fifo"]);
    drop(reader);
}
