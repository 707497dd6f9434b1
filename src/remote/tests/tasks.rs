//! Live task-reader tests: `tests/py/remote_tasks.py` runs named and default-named tasks, one
//! with a nested await chain and one awaiting another task; we check names, coroutines, states,
//! chains with their lines, counts and timers, then block the loop inside a task and read it as
//! the loop's current task (and time that per-sample read).

use std::time::Instant;

use serde_json::Value;

use super::{attach, by_tid, python, spawn_script, Target};
use crate::remote::{AsyncioReader, AwaitTarget, CoroState, TaskInfo, TaskState, ThreadScanner};

struct Session {
    target: Target,
    ready: Value,
    spy: crate::remote::Interpreter,
    scanner: ThreadScanner,
    reader: AsyncioReader,
}

impl Session {
    fn start(py: &std::path::PathBuf, args: &[&str]) -> Session {
        let (target, line) = spawn_script(py, "remote_tasks.py", args);
        let ready: Value =
            serde_json::from_str(line.strip_prefix("READY ").expect("READY")).expect("READY json");
        let spy = attach(target.child.id());
        let scanner = ThreadScanner::new(&spy).expect("ThreadScanner::new");
        let reader = AsyncioReader::new(&spy, scanner.layout()).expect("AsyncioReader::new");
        Session {
            target,
            ready,
            spy,
            scanner,
            reader,
        }
    }

    /// (thread state, loop address) of the main thread's loop. A thread state that was just
    /// created (the loop's executor starting a thread) carries its creator's ids until its
    /// thread runs, so the main thread is the one of that tid with a loop.
    fn main_loop(&mut self) -> (u64, u64) {
        let tid = self.ready["tid"].as_u64().unwrap() as u32;
        let threads = self.scanner.scan(&self.spy.process).expect("scan");
        let t = threads
            .iter()
            .find(|t| t.native_tid == Some(tid) && t.running_loop.is_some())
            .unwrap_or_else(|| by_tid(&threads, tid));
        let l = t.running_loop.as_ref().expect("main runs a loop");
        (t.tstate, l.address)
    }

    fn tasks(&mut self) -> Vec<TaskInfo> {
        let threads = self.scanner.scan(&self.spy.process).expect("scan");
        let tstates: Vec<u64> = threads.iter().map(|t| t.tstate).collect();
        let loops: Vec<u64> = threads
            .iter()
            .filter_map(|t| t.running_loop.as_ref().map(|l| l.address))
            .collect();
        self.reader.refresh(&self.spy.process);
        let (addrs, _) = self.reader.task_addresses(&self.spy.process, &tstates);
        self.reader.calibrate_on(&self.spy.process, &addrs, &loops);
        addrs
            .iter()
            .filter_map(|&a| self.reader.task_info(&self.spy.process, a))
            .collect()
    }
}

fn named<'a>(tasks: &'a [TaskInfo], name: &str) -> &'a TaskInfo {
    tasks
        .iter()
        .find(|t| t.name.as_deref() == Some(name))
        .unwrap_or_else(|| panic!("no task named {name} in {tasks:#?}"))
}

fn check_tasks(version: &str, s: &mut Session) {
    let tasks = s.tasks();
    let label = version;
    let fetcher = named(&tasks, "fetcher");
    assert_eq!(fetcher.coroutine.as_deref(), Some("outer"), "{label}");
    assert_eq!(fetcher.state, Some(TaskState::Pending), "{label}");
    let chain: Vec<&str> = fetcher.chain.iter().map(|l| l.function.as_str()).collect();
    assert_eq!(chain, ["outer", "inner", "sleep"], "{label}: {fetcher:#?}");
    let lines = &s.ready["lines"];
    assert_eq!(
        fetcher.chain[0].line.map(u64::from),
        lines["outer"].as_u64(),
        "{label}: outer's await line"
    );
    assert_eq!(
        fetcher.chain[1].line.map(u64::from),
        lines["inner"].as_u64(),
        "{label}: inner's await line"
    );
    assert!(fetcher.chain[0].file.ends_with("remote_tasks.py"));
    assert!(fetcher.chain[2].file.ends_with("asyncio/tasks.py"));
    assert!(fetcher
        .chain
        .iter()
        .all(|l| l.state == CoroState::Suspended));
    assert_eq!(
        fetcher.awaiting,
        Some(AwaitTarget::Future("_asyncio.Future".into())),
        "{label}"
    );
    for w in s.ready["workers"].as_array().unwrap() {
        let t = named(&tasks, w.as_str().unwrap());
        assert_eq!(t.coroutine.as_deref(), Some("idle_worker"), "{label}");
    }
    let waiter = named(&tasks, "waiter");
    assert_eq!(
        waiter.awaiting,
        Some(AwaitTarget::Task {
            address: fetcher.address,
            name: Some("fetcher".into())
        }),
        "{label}: {waiter:#?}"
    );
    let pending = tasks
        .iter()
        .filter(|t| t.state == Some(TaskState::Pending))
        .count();
    assert_eq!(Some(pending as u64), s.ready["pending"].as_u64(), "{label}");
    let (_, loop_) = s.main_loop();
    assert!(tasks.iter().all(|t| t.loop_ == loop_), "{label}");
}

/// Blocks the loop in a task and reads it as the loop's current task.
fn check_current(version: &str, s: &mut Session, cmd: &str) -> String {
    s.target.send(cmd);
    let line = s.target.next_line();
    let name = line
        .strip_prefix("BLOCKING ")
        .expect("BLOCKING")
        .to_string();
    let (tstate, loop_) = s.main_loop();
    let mem = &s.spy.process;
    let cur = s
        .reader
        .current_task(mem, tstate, loop_)
        .unwrap_or_else(|| panic!("{version}: no current task while blocked in {name}"));
    assert_eq!(cur.name.as_deref(), Some(name.as_str()), "{version}");
    assert_eq!(cur.coroutine.as_deref(), Some("blocker_coro"), "{version}");
    const N: u32 = 2000;
    let start = Instant::now();
    for _ in 0..N {
        assert_eq!(
            s.reader.current_task(mem, tstate, loop_).as_ref(),
            Some(&cur)
        );
    }
    eprintln!(
        "{version}: current_task {:?} per read ({cmd})",
        start.elapsed() / N
    );
    let start = Instant::now();
    for _ in 0..N {
        s.reader.timers(mem, loop_);
    }
    eprintln!("{version}: timers {:?} per read", start.elapsed() / N);
    let timers = s.reader.timers(mem, loop_);
    let want = match s.ready["uvloop"].as_bool() {
        Some(true) => None, // uvloop keeps its timers in C
        _ => s.ready["timers"].as_u64(),
    };
    assert_eq!(timers, want, "{version}: timers");
    s.target.send("go");
    name
}

fn live(version: &str, args: &[&str]) {
    let Some(py) = python(version) else {
        eprintln!("skipping task test: ~/.pyenv/versions/{version}/bin/python3 not found");
        return;
    };
    if args.contains(&"--uvloop") && !super::has_module(&py, "uvloop") {
        eprintln!("skipping uvloop task test: uvloop not installed for {version}");
        return;
    }
    let mut s = Session::start(&py, args);
    check_tasks(version, &mut s);
    check_current(version, &mut s, "block");
    let name = check_current(version, &mut s, "block_default");
    assert!(name.starts_with("Task-"), "{version}: {name}");
    let (offsets, calibrated) = s.reader.task_offsets();
    assert!(calibrated, "{version}");
    eprintln!("{version}: task offsets {offsets:?}");
    // Back to idle: no current task (the loop waits in its selector between commands).
    let (tstate, loop_) = s.main_loop();
    // The target needs the CPU to finish the step: poll until it has (a loaded machine can
    // take a while), not a fixed number of times.
    let deadline = Instant::now() + std::time::Duration::from_secs(10);
    let idle = std::iter::repeat(()).any(|_| {
        s.reader
            .current_task(&s.spy.process, tstate, loop_)
            .is_none()
            || Instant::now() > deadline
    }) && Instant::now() <= deadline;
    assert!(idle, "{version}: an idle loop has no current task");
    let start = Instant::now();
    for _ in 0..1000 {
        s.reader.current_task(&s.spy.process, tstate, loop_);
    }
    eprintln!(
        "{version}: current_task {:?} per read (idle loop)",
        start.elapsed() / 1000
    );
}

#[test]
fn tasks_3_8() {
    live("3.8.18", &[]);
}

#[test]
fn tasks_3_9() {
    live("3.9.18", &[]);
}

#[test]
fn tasks_3_10() {
    live("3.10.13", &[]);
}

#[test]
fn tasks_3_11() {
    live("3.11.7", &[]);
}

#[test]
fn tasks_3_12() {
    live("3.12.1", &[]);
}

#[test]
fn tasks_3_13() {
    live("3.13.0", &[]);
}

#[test]
fn tasks_3_11_uvloop() {
    live("3.11.7", &["--uvloop"]);
}
