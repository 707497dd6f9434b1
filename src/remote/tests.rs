//! Live tests: spawn `tests/py/remote_threads.py` under each pyenv interpreter, attach with
//! py-spy (NonBlocking) and check every thread's OS tid, pthread id and running loop.
//! The churn tests scan a target whose threads keep starting and ending loops, to exercise
//! torn reads. The ready-queue tests (`ready`) hold handles in a loop's `_ready` deque and
//! check its length and mutation counter. A missing interpreter (or uvloop) skips its test with a
//! message instead of failing.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use super::{PyThread, ThreadScanner};

mod ready;
mod tasks;

/// Whether `py` can import `module`.
fn has_module(py: &PathBuf, module: &str) -> bool {
    Command::new(py)
        .args(["-c", &format!("import {module}")])
        .status()
        .is_ok_and(|s| s.success())
}

/// The child is ended when the test ends, also on a failed assertion: closing its stdin
/// makes the script exit; kill (by our child's own handle) is the fallback.
struct Target {
    child: Child,
    /// The child's stdout, line by line.
    lines: mpsc::Receiver<String>,
}

impl Target {
    fn next_line(&self) -> String {
        self.lines
            .recv_timeout(Duration::from_secs(60))
            .expect("no line from the target within 60 s")
    }

    fn send(&mut self, line: &str) {
        let stdin = self.child.stdin.as_mut().unwrap();
        writeln!(stdin, "{line}").unwrap();
        stdin.flush().unwrap();
    }
}

impl Drop for Target {
    fn drop(&mut self) {
        drop(self.child.stdin.take());
        for _ in 0..50 {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn python(version: &str) -> Option<PathBuf> {
    let home = std::env::var_os("HOME")?;
    let p = PathBuf::from(home)
        .join(".pyenv/versions")
        .join(version)
        .join("bin/python3");
    p.exists().then_some(p)
}

/// Role → (native tid, pthread ident), from the READY line.
type Ids = HashMap<String, (u32, u64)>;

fn parse_ready(line: &str) -> Ids {
    line.trim()
        .strip_prefix("READY ")
        .unwrap_or_else(|| panic!("unexpected line {line:?}"))
        .split_whitespace()
        .map(|kv| {
            let (role, ids) = kv.split_once('=').unwrap();
            let (tid, ident) = ids.split_once(':').unwrap();
            (
                role.to_string(),
                (tid.parse().unwrap(), ident.parse().unwrap()),
            )
        })
        .collect()
}

/// Starts `tests/py/<script>` and waits for its READY line (no fixed sleeps).
fn spawn_script(py: &PathBuf, script: &str, args: &[&str]) -> (Target, String) {
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/py")
        .join(script);
    let mut child = Command::new(py)
        .arg(script)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn python");
    let stdout = child.stdout.take().unwrap();
    let (tx, lines) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let target = Target { child, lines };
    let line = target.next_line();
    (target, line)
}

/// Starts a script whose READY line is `READY <tid>`.
fn spawn_with_tid(py: &PathBuf, script: &str, args: &[&str]) -> (Target, u32) {
    let (target, line) = spawn_script(py, script, args);
    let tid = line
        .trim()
        .strip_prefix("READY ")
        .and_then(|s| s.parse().ok())
        .expect("READY <tid>");
    (target, tid)
}

fn spawn(py: &PathBuf, args: &[&str]) -> (Target, Ids) {
    let (target, line) = spawn_script(py, "remote_threads.py", args);
    (target, parse_ready(&line))
}

fn attach(pid: u32) -> super::Interpreter {
    super::Interpreter::attach(pid as i32).expect("attach")
}

fn by_tid(threads: &[PyThread], tid: u32) -> &PyThread {
    threads
        .iter()
        .find(|t| t.native_tid == Some(tid))
        .unwrap_or_else(|| panic!("no thread with native tid {tid} in {threads:#?}"))
}

fn check_threads(threads: &[PyThread], ids: &Ids, loop_type: &str) {
    assert_eq!(
        threads.len(),
        ids.len(),
        "thread count: {threads:#?} vs {ids:?}"
    );
    for (role, &(tid, ident)) in ids {
        let t = by_tid(threads, tid);
        assert_eq!(t.pthread_id, ident, "pthread id of {role}");
        let want_loop = role == "main" || role == "loop";
        match &t.running_loop {
            Some(l) if want_loop => assert_eq!(l.type_name, loop_type, "{role}: {t:?}"),
            None if !want_loop => {}
            other => panic!("{role} ({tid}): running_loop {other:?}"),
        }
    }
    let main = by_tid(threads, ids["main"].0)
        .running_loop
        .as_ref()
        .unwrap();
    let other = by_tid(threads, ids["loop"].0)
        .running_loop
        .as_ref()
        .unwrap();
    assert_ne!(
        main.address, other.address,
        "two threads cannot run the same loop"
    );
}

/// Selector loops have a readable ready deque, idle here (len 0 or a few handles in flight);
/// uvloop's loops have none.
fn check_ready(
    scanner: &ThreadScanner,
    process: &super::Process,
    threads: &[PyThread],
    loop_type: &str,
) {
    for l in threads.iter().filter_map(|t| t.running_loop.as_ref()) {
        if loop_type == "Loop" {
            assert_eq!(l.ready, None, "uvloop has no _ready we read: {l:?}");
            continue;
        }
        let deque = l.ready.unwrap_or_else(|| panic!("no _ready for {l:?}"));
        let (len, _) = scanner
            .read_ready(process, deque)
            .unwrap_or_else(|| panic!("read_ready failed for {l:?}"));
        assert!(len < 100, "implausible ready length {len} for {l:?}");
    }
}

fn live(version: &str, args: &[&str], loop_type: &str) {
    let Some(py) = python(version) else {
        eprintln!("skipping live test: ~/.pyenv/versions/{version}/bin/python3 not found");
        return;
    };
    if args.contains(&"--uvloop") {
        let ok = Command::new(&py)
            .args(["-c", "import uvloop"])
            .status()
            .map(|s| s.success());
        if ok.ok() != Some(true) {
            eprintln!("skipping uvloop live test: uvloop not installed for {version}");
            return;
        }
    }
    let (target, ids) = spawn(&py, args);
    let spy = attach(target.child.id());
    let mut scanner = ThreadScanner::new(&spy).expect("ThreadScanner::new");
    // Several scans: results must be stable while the target keeps running.
    let start = Instant::now();
    for i in 0..20 {
        let threads = scanner.scan(&spy.process).expect("scan");
        if i == 0 {
            eprintln!("{version} {args:?}: {threads:?}");
        }
        check_threads(&threads, &ids, loop_type);
        check_ready(&scanner, &spy.process, &threads, loop_type);
    }
    eprintln!(
        "{version}: {:?} per scan of {} threads",
        start.elapsed() / 20,
        ids.len()
    );
    if scanner.layout().ts_native_tid.is_none() {
        eprintln!(
            "{version}: struct pthread tid offset 0x{:x}",
            scanner.pthread_tid_offset().unwrap()
        );
    }
}

#[test]
fn live_3_8() {
    live("3.8.18", &[], "_UnixSelectorEventLoop");
}

#[test]
fn live_3_9() {
    live("3.9.18", &[], "_UnixSelectorEventLoop");
}

#[test]
fn live_3_10() {
    live("3.10.13", &[], "_UnixSelectorEventLoop");
}

#[test]
fn live_3_11() {
    live("3.11.7", &[], "_UnixSelectorEventLoop");
}

#[test]
fn live_3_12() {
    live("3.12.1", &[], "_UnixSelectorEventLoop");
}

#[test]
fn live_3_13() {
    live("3.13.0", &[], "_UnixSelectorEventLoop");
}

#[test]
fn live_3_11_uvloop() {
    live("3.11.7", &["--uvloop"], "Loop");
}

/// The scanner is built for one pid and refuses another process handle.
#[test]
fn refuses_other_pid() {
    let Some(py) = python("3.11.7") else {
        eprintln!("skipping: 3.11.7 not found");
        return;
    };
    let (target, _) = spawn(&py, &[]);
    let spy = attach(target.child.id());
    let mut scanner = ThreadScanner::new(&spy).unwrap();
    let other = super::Process::new(std::process::id() as i32);
    assert!(scanner.scan(&other).is_err());
}

/// Threads keep starting, running a loop and exiting while we scan: every scan must succeed,
/// the main thread must always be found with its loop, and no garbage may come out (every
/// loop seen is a real selector loop).
fn churn(version: &str) {
    let Some(py) = python(version) else {
        eprintln!("skipping churn test: ~/.pyenv/versions/{version}/bin/python3 not found");
        return;
    };
    let (target, main_tid) = spawn_with_tid(&py, "remote_churn.py", &[]);
    let spy = attach(target.child.id());
    let mut scanner = ThreadScanner::new(&spy).expect("ThreadScanner::new");
    let (mut max_threads, mut max_loops) = (0, 0);
    for _ in 0..2000 {
        let threads = scanner.scan(&spy.process).expect("scan");
        let main = by_tid(&threads, main_tid);
        assert!(
            main.running_loop.is_some(),
            "main thread lost its loop: {main:?}"
        );
        let loops: Vec<_> = threads
            .iter()
            .filter_map(|t| t.running_loop.as_ref())
            .collect();
        for l in &loops {
            assert_eq!(l.type_name, "_UnixSelectorEventLoop", "{threads:?}");
        }
        max_threads = max_threads.max(threads.len());
        max_loops = max_loops.max(loops.len());
    }
    eprintln!("{version} churn: up to {max_threads} threads and {max_loops} running loops seen in one scan");
    assert!(max_loops > 1, "never saw a short-lived thread's loop");
}

#[test]
fn churn_3_8() {
    churn("3.8.18");
}

#[test]
fn churn_3_11() {
    churn("3.11.7");
}

#[test]
fn churn_3_12() {
    churn("3.12.1");
}

#[test]
fn churn_3_13() {
    churn("3.13.0");
}
