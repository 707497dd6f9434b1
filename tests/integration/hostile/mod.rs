//! Hostile conditions (issue 15): a lost terminal and signals (`signals`), names from the
//! target that carry terminal escapes (`names`), source files the target names (`sources`),
//! and targets that change under loopspy (`targets`). The targets are `tests/py/hostile.py`;
//! hostile files are planted only in temp dirs.

mod names;
mod signals;
mod sources;
mod targets;

use std::io::{BufRead, BufReader, Read, Write};
use std::path::PathBuf;
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::sync::mpsc::{self, Receiver};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::support::{pythons, repo, tagged};

pub fn script() -> PathBuf {
    repo().join("tests/py/hostile.py")
}

/// The newest interpreter of the tested ones (for tests that are not about versions).
pub fn python() -> PathBuf {
    pythons().pop().expect("a python").1
}

/// Lines of a stream on a channel; bytes that are not UTF-8 are kept lossily, control
/// characters as they came (the escape tests look for them).
fn lines_of(stream: impl Read + Send + 'static) -> Receiver<String> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut r = BufReader::new(stream);
        let mut buf = Vec::new();
        while r.read_until(b'\n', &mut buf).is_ok_and(|n| n > 0) {
            let line = String::from_utf8_lossy(&buf);
            if tx
                .send(line.strip_suffix('\n').unwrap_or(&line).to_string())
                .is_err()
            {
                break;
            }
            buf.clear();
        }
    });
    rx
}

/// A process with its stdin, and its stdout and stderr lines as they come.
pub struct Proc {
    pub child: Child,
    stdin: Option<ChildStdin>,
    out: Receiver<String>,
    err: Receiver<String>,
    /// Every line read so far.
    pub out_seen: Vec<String>,
    pub err_seen: Vec<String>,
}

impl Proc {
    pub fn spawn(mut cmd: Command) -> Proc {
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn");
        let out = lines_of(child.stdout.take().unwrap());
        let err = lines_of(child.stderr.take().unwrap());
        Proc {
            stdin: child.stdin.take(),
            child,
            out,
            err,
            out_seen: Vec::new(),
            err_seen: Vec::new(),
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    fn wait_line(
        rx: &Receiver<String>,
        seen: &mut Vec<String>,
        limit: Duration,
        pred: impl Fn(&str) -> bool,
    ) -> Option<String> {
        let deadline = Instant::now() + limit;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(line) => {
                    seen.push(line.clone());
                    if pred(&line) {
                        return Some(line);
                    }
                }
                Err(_) => return None,
            }
        }
    }

    /// The next stdout line that satisfies `pred`, within `limit`; panics with what was seen.
    pub fn out_line(&mut self, limit: Duration, pred: impl Fn(&str) -> bool) -> String {
        Self::wait_line(&self.out, &mut self.out_seen, limit, pred).unwrap_or_else(|| {
            self.kill();
            let err = self.rest_of_stderr();
            panic!(
                "no such stdout line; stdout: {:#?}\nstderr: {err}",
                self.out_seen
            )
        })
    }

    /// The JSON of the next `TAG {json}` line on stdout.
    pub fn tagged(&mut self, tag: &str, limit: Duration) -> Value {
        let line = self.out_line(limit, |l| tagged(l, tag).is_some());
        tagged(&line, tag).unwrap()
    }

    /// The next stderr line that satisfies `pred`, within `limit`; panics with what was seen.
    pub fn err_line(&mut self, limit: Duration, pred: impl Fn(&str) -> bool) -> String {
        Self::wait_line(&self.err, &mut self.err_seen, limit, pred).unwrap_or_else(|| {
            self.kill();
            panic!("no such stderr line; stderr: {:#?}", self.err_seen)
        })
    }

    /// Wait for loopspy's own READY: its "sampling process" line.
    pub fn sampling(&mut self) {
        self.err_line(Duration::from_secs(30), |l| {
            l.starts_with("loopspy: sampling process")
        });
    }

    pub fn send(&mut self, line: &str) {
        let stdin = self.stdin.as_mut().expect("stdin open");
        stdin.write_all(format!("{line}\n").as_bytes()).unwrap();
        stdin.flush().unwrap();
    }

    pub fn close_stdin(&mut self) {
        self.stdin = None;
    }

    /// Wait up to `limit` for the exit; `None` if it still runs then.
    pub fn wait_for(&mut self, limit: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    pub fn signal(&self, sig: i32) {
        unsafe { libc::kill(self.pid() as i32, sig) };
    }

    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Every stderr line: those seen so far and the rest (after the exit).
    pub fn rest_of_stderr(&mut self) -> String {
        while let Ok(l) = self.err.recv_timeout(Duration::from_secs(5)) {
            self.err_seen.push(l);
        }
        self.err_seen.join("\n")
    }

    /// The BLOCK lines of the target's stdout once it has ended, each timed by the loop gap
    /// that contains it (`support::loop_timed_blocks`): what an episode is, the whole callback.
    pub fn loop_timed_blocks(&mut self) -> Vec<Value> {
        self.rest_of_stdout();
        crate::support::loop_timed_blocks(&self.out_seen)
    }

    pub fn rest_of_stdout(&mut self) -> String {
        while let Ok(l) = self.out.recv_timeout(Duration::from_secs(5)) {
            self.out_seen.push(l);
        }
        self.out_seen.join("\n")
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            self.kill();
        }
    }
}

/// `PYTHON hostile.py ARGS...`
pub fn target(python: &std::path::Path, args: &[&str]) -> Command {
    let mut cmd = Command::new(python);
    cmd.arg(script()).args(args);
    cmd
}

/// `loopspy ARGS...`
pub fn loopspy(args: &[&str]) -> Command {
    let mut cmd = Command::new(crate::support::loopspy());
    cmd.args(args);
    cmd
}

/// Whether `pid` no longer runs (gone, or a zombie left to a parent that is not ours).
pub fn stopped(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => matches!(
            stat.rsplit(')')
                .next()
                .and_then(|r| r.split_whitespace().next()),
            Some("Z" | "X")
        ),
        Err(_) => true,
    }
}

/// Whether `pid` is gone altogether: exited and reaped.
pub fn reaped(pid: u32) -> bool {
    !std::path::Path::new(&format!("/proc/{pid}")).exists()
}

/// Poll `cond` every 10 ms for up to `limit`.
pub fn within(limit: Duration, cond: impl Fn() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// The episodes in a JSON Lines file.
pub fn episodes(path: &std::path::Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).expect("episode line is JSON"))
        .collect()
}
