use super::*;

/// A sample record as the kernel writes it for our sample_type.
fn sample(id: u64, tid: u32, time: u64, raw: Option<&[u8]>) -> Vec<u8> {
    let mut body = Vec::new();
    body.extend_from_slice(&id.to_ne_bytes());
    body.extend_from_slice(&tid.to_ne_bytes()); // pid
    body.extend_from_slice(&tid.to_ne_bytes());
    body.extend_from_slice(&time.to_ne_bytes());
    if let Some(raw) = raw {
        // u32 size, then the data padded so the record stays 8-byte aligned.
        let padded = (raw.len() + 4).div_ceil(8) * 8 - 4;
        body.extend_from_slice(&(padded as u32).to_ne_bytes());
        body.extend_from_slice(raw);
        body.resize(body.len() + padded - raw.len(), 0);
    }
    let mut rec = Vec::new();
    rec.extend_from_slice(&RECORD_SAMPLE.to_ne_bytes());
    rec.extend_from_slice(&0u16.to_ne_bytes());
    rec.extend_from_slice(&((body.len() + 8) as u16).to_ne_bytes());
    rec.extend_from_slice(&body);
    rec
}

/// The futex entry's raw record: common fields, then uaddr at 16 and op at 24.
fn futex_raw(uaddr: u64, op: u64) -> Vec<u8> {
    let mut raw = vec![0u8; 64];
    raw[16..24].copy_from_slice(&uaddr.to_ne_bytes());
    raw[24..32].copy_from_slice(&op.to_ne_bytes());
    raw
}

/// The epoll_wait entry's raw record: common fields, then `int timeout` at 40 (as a long).
fn epoll_raw(timeout: i64) -> Vec<u8> {
    let mut raw = vec![0u8; 48];
    raw[40..48].copy_from_slice(&timeout.to_ne_bytes());
    raw
}

const IDS: &[(u64, Point)] = &[
    (11, Point::EpollEnter),
    (15, Point::EpollEnterTimeout { at: 40 }),
    (12, Point::EpollExit { ret_at: None }),
    (16, Point::EpollExit { ret_at: Some(16) }),
    (13, Point::FutexEnter),
    (14, Point::FutexExit),
];

fn parse(buf: &[u8]) -> (Vec<Record>, u64) {
    let mut got = Vec::new();
    let lost = parse_records(buf, IDS, (16, 24), &mut |r| got.push(r));
    (got, lost)
}

#[test]
fn parses_epoll_and_futex_records() {
    let mut buf = sample(12, 7, 1_000, None);
    buf.extend(sample(13, 7, 2_000, Some(&futex_raw(0x5000, 128 | 9))));
    buf.extend(sample(13, 7, 2_500, Some(&futex_raw(0x5000, 1)))); // FUTEX_WAKE: dropped
    buf.extend(sample(14, 7, 3_000, None));
    buf.extend(sample(11, 7, 4_000, None));
    let (got, lost) = parse(&buf);
    assert_eq!(lost, 0);
    let calls: Vec<(u64, Call)> = got.iter().map(|r| (r.time_ns, r.call)).collect();
    assert_eq!(
        calls,
        vec![
            (1_000, Call::EpollExit),
            (2_000, Call::FutexWait { uaddr: 0x5000 }),
            (3_000, Call::FutexExit),
            (4_000, Call::EpollEnter),
        ]
    );
    assert!(got.iter().all(|r| r.tid == 7));
}

/// An epoll_wait entry with a zero timeout is a poll; 5 ms is a wait that ends by then at the
/// latest; -1 (forever) and an entry whose raw record is missing are waits of unknown end.
#[test]
fn a_zero_timeout_is_a_poll() {
    let mut buf = sample(15, 7, 1_000, Some(&epoll_raw(0)));
    buf.extend(sample(15, 7, 2_000, Some(&epoll_raw(-1))));
    buf.extend(sample(15, 7, 3_000, Some(&epoll_raw(5))));
    buf.extend(sample(15, 7, 4_000, Some(&[0u8; 8])));
    buf.extend(sample(11, 7, 5_000, None));
    let (got, _) = parse(&buf);
    let calls: Vec<Call> = got.iter().map(|r| r.call).collect();
    assert_eq!(
        calls,
        vec![
            Call::EpollPoll,
            Call::EpollEnter,
            Call::EpollWait { timeout_ms: 5 },
            Call::EpollEnter,
            Call::EpollEnter
        ]
    );
}

/// An epoll return of 0 is a timeout; events, an error (-EINTR) or a record without its
/// return value are plain returns.
#[test]
fn a_zero_return_is_a_timeout() {
    let ret = |r: i64| {
        let mut raw = vec![0u8; 24];
        raw[16..24].copy_from_slice(&r.to_ne_bytes());
        raw
    };
    let mut buf = sample(16, 7, 1_000, Some(&ret(0)));
    buf.extend(sample(16, 7, 2_000, Some(&ret(3))));
    buf.extend(sample(16, 7, 3_000, Some(&ret(-4))));
    buf.extend(sample(16, 7, 4_000, Some(&[0u8; 8])));
    buf.extend(sample(12, 7, 5_000, None));
    let (got, _) = parse(&buf);
    let calls: Vec<Call> = got.iter().map(|r| r.call).collect();
    assert_eq!(
        calls,
        vec![
            Call::EpollTimedOut,
            Call::EpollExit,
            Call::EpollExit,
            Call::EpollExit,
            Call::EpollExit
        ]
    );
}

#[test]
fn counts_lost_records_and_skips_unknown_ids() {
    let mut buf = Vec::new();
    buf.extend_from_slice(&RECORD_LOST.to_ne_bytes());
    buf.extend_from_slice(&0u16.to_ne_bytes());
    buf.extend_from_slice(&24u16.to_ne_bytes());
    buf.extend_from_slice(&12u64.to_ne_bytes());
    buf.extend_from_slice(&5u64.to_ne_bytes());
    buf.extend(sample(99, 7, 1, None));
    buf.extend(sample(11, 7, 2, None));
    let (got, lost) = parse(&buf);
    assert_eq!(lost, 5);
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].call, Call::EpollEnter);
}

#[test]
fn malformed_or_cut_records_never_panic() {
    let mut whole = sample(12, 7, 1_000, None);
    whole.extend(sample(13, 7, 2_000, Some(&futex_raw(0x5000, 0))));
    for cut in 0..whole.len() {
        let _ = parse(&whole[..cut]);
    }
    // A size field of 0 or past the end stops the parse.
    let mut bad = whole.clone();
    bad[6] = 0;
    bad[7] = 0;
    assert_eq!(parse(&bad).0.len(), 0);
    let mut seed = 0x9E37_79B9_7F4A_7C15u64;
    for _ in 0..2000 {
        let mut b = whole.clone();
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        let at = (seed as usize) % b.len();
        b[at] = (seed >> 32) as u8;
        let _ = parse(&b);
    }
}

#[test]
fn reads_offsets_from_a_tracefs_format() {
    let format = "name: sys_enter_futex\nID: 522\nformat:\n\
        \tfield:unsigned short common_type;\toffset:0;\tsize:2;\tsigned:0;\n\
        \tfield:int __syscall_nr;\toffset:8;\tsize:4;\tsigned:1;\n\
        \tfield:u32 * uaddr;\toffset:16;\tsize:8;\tsigned:0;\n\
        \tfield:int op;\toffset:24;\tsize:8;\tsigned:0;\n\
        \tfield:u32 * uaddr2;\toffset:48;\tsize:8;\tsigned:0;\n";
    assert_eq!(field_offset(format, "uaddr"), Some(16));
    assert_eq!(field_offset(format, "op"), Some(24));
    assert_eq!(field_offset(format, "uaddr2"), Some(48));
    assert_eq!(field_offset(format, "val"), None);
}

#[test]
fn a_traced_thread_that_exits_hangs_up_its_poll() {
    let Ok(points) = Tracepoints::discover() else {
        eprintln!("SKIPPED: perf tracepoints are not available here (needs root and tracefs)");
        return;
    };
    let (tx, rx) = std::sync::mpsc::channel();
    let (go_tx, go_rx) = std::sync::mpsc::channel::<()>();
    let worker = std::thread::spawn(move || {
        // SAFETY: gettid has no preconditions.
        tx.send(unsafe { libc::gettid() } as u32).unwrap();
        go_rx.recv().unwrap();
    });
    let tid = rx.recv().unwrap();
    let trace = ThreadTrace::open(tid, &points, None).unwrap();
    let fd = trace.poll_fd();
    let quiet = poll_readable(&[fd], std::time::Duration::from_millis(20)).unwrap();
    assert!(quiet.is_empty(), "a live thread's fd does not hang up");
    go_tx.send(()).unwrap();
    worker.join().unwrap();
    let gone = poll_readable(&[fd], std::time::Duration::from_secs(5)).unwrap();
    assert_eq!(gone, vec![fd], "the exited thread's fd hangs up");
}

/// Tracing must begin on all of a thread's tracepoints at one instant. When they were enabled
/// one `ioctl` at a time, a thread that entered epoll between the entry's enable and the exit's
/// had its entry recorded and its exit not: the kernel clock then took the loop for idle in
/// epoll through the callback that followed (a 150 ms block lost under CPU contention). Here a
/// thread makes `epoll_wait(timeout 0)` calls back to back while traces open on it: in every
/// trace each entry is followed by its exit before the next entry.
#[test]
fn tracing_begins_on_entry_and_exit_at_once() {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    let Ok(points) =
        crate::acquire::kernel_clock::KernelClock::check().and(Tracepoints::discover())
    else {
        eprintln!("SKIPPED: perf tracepoints are not available here (needs root and tracefs)");
        return;
    };
    let stop = Arc::new(AtomicBool::new(false));
    let spin_stop = stop.clone();
    let (tx, rx) = std::sync::mpsc::channel();
    let spinner = std::thread::spawn(move || {
        // SAFETY: plain syscalls on an epoll fd this thread owns.
        unsafe {
            tx.send(libc::gettid() as u32).unwrap();
            let ep = libc::epoll_create1(libc::EPOLL_CLOEXEC);
            assert!(ep >= 0);
            let mut ev = libc::epoll_event { events: 0, u64: 0 };
            while !spin_stop.load(Ordering::Relaxed) {
                libc::epoll_wait(ep, &mut ev, 1, 0);
            }
            libc::close(ep);
        }
    });
    let tid = rx.recv().unwrap();
    let mut torn = 0;
    let mut seen = 0;
    for _ in 0..50 {
        let mut trace = ThreadTrace::open(tid, &points, None).unwrap();
        std::thread::sleep(std::time::Duration::from_micros(300));
        let mut calls = Vec::new();
        let lost = trace.drain(&mut |r| calls.push(r.call));
        assert_eq!(lost, 0, "the ring held 300 µs of calls");
        seen += calls.len();
        // An exit first is the call that was going on as tracing began. Every entry is a
        // poll: the timeout is 0.
        let first_entry = calls.iter().position(|c| *c == Call::EpollPoll);
        let paired = calls[first_entry.unwrap_or(calls.len())..]
            .chunks(2)
            .all(|p| {
                p[0] == Call::EpollPoll
                    && p.get(1)
                        .is_none_or(|c| matches!(c, Call::EpollExit | Call::EpollTimedOut))
            });
        if !paired {
            torn += 1;
        }
    }
    stop.store(true, Ordering::Relaxed);
    spinner.join().unwrap();
    assert!(seen > 1000, "the spinner was traced: {seen} records");
    assert_eq!(
        torn, 0,
        "traces with an entry but not its exit (or a poll read as a wait), of 50"
    );
}
