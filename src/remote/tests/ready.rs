//! Live ready-queue tests: `tests/py/remote_ready.py` blocks its loop inside a callback
//! with 5 handles queued behind it; we check `loop._ready`'s length and mutation counter
//! through `ThreadScanner::read_ready`, and time the per-sample read.

use std::time::Instant;

use super::{attach, by_tid, python, spawn_with_tid};
use crate::remote::ThreadScanner;

/// A loop blocked in a callback with 5 handles queued: `_ready` has length 5; after the loop
/// runs them (and queues and runs one more), the mutation counter grew by exactly 7.
/// `args` go to the script: none keeps the loop's attributes in its values array (3.11+),
/// `--dict` in a materialized dict, `--combined` in a combined dict (see the script).
fn ready_queue(version: &str, args: &[&str]) {
    let Some(py) = python(version) else {
        eprintln!("skipping ready test: ~/.pyenv/versions/{version}/bin/python3 not found");
        return;
    };
    let (mut target, tid) = spawn_with_tid(&py, "remote_ready.py", args);
    let spy = attach(target.child.id());
    let mut scanner = ThreadScanner::new(&spy).expect("ThreadScanner::new");
    let ready_of = |scanner: &mut ThreadScanner| {
        let threads = scanner.scan(&spy.process).expect("scan");
        let t = by_tid(&threads, tid);
        let l = t.running_loop.clone().expect("the main thread runs a loop");
        l.ready.unwrap_or_else(|| panic!("no _ready for {l:?}"))
    };
    let deque = ready_of(&mut scanner);
    let (len, state) = scanner.read_ready(&spy.process, deque).expect("read_ready");
    assert_eq!(
        len, 5,
        "{version}: handles queued behind the blocked callback"
    );

    // The hot path: many reads of an unchanged queue.
    const N: u32 = 10_000;
    let start = Instant::now();
    for _ in 0..N {
        assert_eq!(scanner.read_ready(&spy.process, deque), Some((len, state)));
    }
    eprintln!(
        "{version} {args:?}: read_ready {:?} per call",
        start.elapsed() / N
    );

    target.send("go");
    assert_eq!(target.next_line(), "HELD");
    // Rescanning revalidates the cached deque rather than resolving anew.
    assert_eq!(ready_of(&mut scanner), deque);
    let (len2, state2) = scanner.read_ready(&spy.process, deque).expect("read_ready");
    assert_eq!(len2, 0, "{version}: the loop ran every queued handle");
    assert_eq!(
        state2.wrapping_sub(state),
        7,
        "{version}: 5 pops, then 1 append and 1 pop"
    );
    // An address that is not the resolved deque is refused.
    assert_eq!(scanner.read_ready(&spy.process, deque + 8), None);
}

#[test]
fn ready_3_8() {
    ready_queue("3.8.18", &[]);
    ready_queue("3.8.18", &["--dict"]);
    ready_queue("3.8.18", &["--combined"]);
}

#[test]
fn ready_3_9() {
    ready_queue("3.9.18", &[]);
    ready_queue("3.9.18", &["--dict"]);
    ready_queue("3.9.18", &["--combined"]);
}

#[test]
fn ready_3_10() {
    ready_queue("3.10.13", &[]);
    ready_queue("3.10.13", &["--dict"]);
    ready_queue("3.10.13", &["--combined"]);
}

#[test]
fn ready_3_11() {
    ready_queue("3.11.7", &[]);
    ready_queue("3.11.7", &["--dict"]);
    ready_queue("3.11.7", &["--combined"]);
}

#[test]
fn ready_3_12() {
    ready_queue("3.12.1", &[]);
    ready_queue("3.12.1", &["--dict"]);
    ready_queue("3.12.1", &["--combined"]);
}

#[test]
fn ready_3_13() {
    ready_queue("3.13.0", &[]);
    ready_queue("3.13.0", &["--dict"]);
    ready_queue("3.13.0", &["--combined"]);
}
