use super::*;

struct Fake {
    left: u32,
    fail_every: u32,
    n: u32,
}

impl SampleSource for Fake {
    fn pid(&self) -> u32 {
        42
    }
    fn sample(&mut self) -> Result<Vec<ThreadSample>> {
        self.n += 1;
        if self.left == 0 {
            bail!("gone");
        }
        self.left -= 1;
        if self.fail_every > 0 && self.n % self.fail_every == 0 {
            bail!("torn read");
        }
        Ok(vec![])
    }
    fn alive(&mut self) -> bool {
        self.left > 0
    }
}

#[test]
fn counts_errors_and_ends_when_target_exits() {
    let stop = AtomicBool::new(false);
    let mut src = Fake {
        left: 30,
        fail_every: 3,
        n: 0,
    };
    let mut got = vec![];
    let stats = run(
        &mut src,
        &Limits {
            rate: 1000.0,
            stack_rate: 1000.0,
            threshold: 0.05,
            duration: None,
            stop: &stop,
            clock: ClockChoice::Probe,
            kernel_rate: 1000.0,
        },
        &mut |s, _| {
            got.push(s);
            Ok(())
        },
    )
    .unwrap();
    assert_eq!(stats.end, "target exited");
    assert_eq!(stats.samples, 20);
    // Every third read fails; the last one (the 30th) finds the target gone and ends the run.
    assert_eq!(stats.errors, 10);
    assert!(got
        .windows(2)
        .all(|w| w[1].mono > w[0].mono && w[0].pid == 42));
}

/// A source of pid 42 that counts its reads in `reads`, where the test can watch them while
/// sampling runs, and exits after `left` reads.
struct Counted<'a> {
    reads: &'a std::sync::atomic::AtomicU32,
    left: u32,
}

impl SampleSource for Counted<'_> {
    fn pid(&self) -> u32 {
        42
    }
    fn sample(&mut self) -> Result<Vec<ThreadSample>> {
        self.reads.fetch_add(1, Ordering::Relaxed);
        if self.left == 0 {
            bail!("gone");
        }
        self.left -= 1;
        Ok(vec![])
    }
    fn alive(&mut self) -> bool {
        self.left > 0
    }
}

/// The ticks go on while an output is held up (a slow pipe, a disk write waiting on the
/// journal): the sink holds the first sample until the source has been read 20 more times.
/// With the sink on the tick thread, no read came while it waited. Every sample still reaches
/// the sink, in order.
#[test]
fn a_held_up_sink_does_not_hold_up_the_ticks() {
    let stop = AtomicBool::new(false);
    let reads = std::sync::atomic::AtomicU32::new(0);
    let mut src = Counted {
        reads: &reads,
        left: 40,
    };
    let mut read_while_held = None;
    let mut got: Vec<f64> = Vec::new();
    let stats = run(&mut src, &probe_limits(1000.0, None, &stop), &mut |s, _| {
        if read_while_held.is_none() {
            let deadline = Instant::now() + Duration::from_secs(10);
            while reads.load(Ordering::Relaxed) < 21 && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(1));
            }
            read_while_held = Some(reads.load(Ordering::Relaxed));
        }
        got.push(s.mono);
        Ok(())
    })
    .unwrap();
    assert!(
        read_while_held.is_some_and(|n| n >= 21),
        "reads while the sink held the first sample: {read_while_held:?}"
    );
    assert_eq!(stats.end, "target exited");
    assert_eq!(got.len() as u64, stats.samples);
    assert_eq!(got.len(), 40);
    assert!(got.windows(2).all(|w| w[1] > w[0]));
}

/// A sink that fails ends the sampling with its error, although the ticks run elsewhere.
#[test]
fn a_failing_sink_ends_sampling_with_its_error() {
    let stop = AtomicBool::new(false);
    let reads = std::sync::atomic::AtomicU32::new(0);
    let mut src = Counted {
        reads: &reads,
        left: u32::MAX,
    };
    let mut seen = 0;
    let err = run(&mut src, &probe_limits(1000.0, None, &stop), &mut |_, _| {
        seen += 1;
        if seen == 3 {
            bail!("disk full");
        }
        Ok(())
    })
    .unwrap_err();
    assert_eq!(format!("{err:#}"), "disk full");
    assert_eq!(seen, 3);
}

/// Probe-clock limits ticking (and reading stacks) at `rate`, threshold 50 ms.
fn probe_limits(rate: f64, duration: Option<Duration>, stop: &AtomicBool) -> Limits<'_> {
    Limits {
        rate,
        stack_rate: rate,
        threshold: 0.05,
        duration,
        stop,
        clock: ClockChoice::Probe,
        kernel_rate: rate,
    }
}

#[test]
fn stops_at_duration() {
    let stop = AtomicBool::new(false);
    let mut src = Fake {
        left: u32::MAX,
        fail_every: 0,
        n: 0,
    };
    let limits = probe_limits(200.0, Some(Duration::from_millis(100)), &stop);
    let stats = run(&mut src, &limits, &mut |_, _| Ok(())).unwrap();
    assert_eq!(stats.end, "duration");
    assert!(
        stats.samples >= 10 && stats.samples <= 22,
        "{}",
        stats.samples
    );
}

/// A loop thread inside one callback from the start, never back in epoll.
struct Busy {
    stacks: Vec<Instant>,
    until: Instant,
}

impl Busy {
    fn thread(&self) -> ThreadSample {
        ThreadSample {
            gc: false,
            loop_ended: false,
            tid: 7,
            name: None,
            event_loop: Some("_UnixSelectorEventLoop".into()),
            gil: false,
            active: true,
            os: Some(crate::sample::OsState {
                state: 'S',
                syscall: Some("clock_nanosleep".into()),
                gil_wait: false,
                cpu_ticks: None,
                fd: None,
            }),
            ready: Some(ReadyQueue { len: 0, state: 1 }),
            task: None,
            coroutine: None,
            timers: None,
            timer_overdue_us: None,
            request: None,
            frames: Vec::new(),
        }
    }
}

impl SampleSource for Busy {
    fn pid(&self) -> u32 {
        42
    }
    fn sample(&mut self) -> Result<Vec<ThreadSample>> {
        if Instant::now() >= self.until {
            bail!("gone");
        }
        self.stacks.push(Instant::now());
        Ok(vec![self.thread()])
    }
    fn probe(&mut self) -> Option<Result<Vec<ThreadSample>>> {
        if Instant::now() >= self.until {
            return Some(Err(anyhow::anyhow!("gone")));
        }
        Some(Ok(vec![self.thread()]))
    }
    fn alive(&mut self) -> bool {
        Instant::now() < self.until
    }
}

/// Regression: the sampler slept a whole interval at once, so `--rate 1e-9` never
/// answered Ctrl-C and `--rate 0.05` took up to 20 s to stop.
#[test]
fn answers_a_stop_within_a_nap_at_any_rate() {
    for rate in [1e-9, 0.05, 1.0] {
        let stop = AtomicBool::new(false);
        let mut src = Fake {
            left: u32::MAX,
            fail_every: 0,
            n: 0,
        };
        let limits = probe_limits(rate, None, &stop);
        let started = Instant::now();
        let stats = std::thread::scope(|scope| {
            scope.spawn(|| {
                std::thread::sleep(Duration::from_millis(30));
                stop.store(true, Ordering::SeqCst);
            });
            run(&mut src, &limits, &mut |_, _| Ok(())).unwrap()
        });
        let took = started.elapsed();
        assert_eq!(stats.end, "interrupted", "rate {rate}");
        assert!(took < Duration::from_millis(130), "rate {rate}: {took:?}");
    }
}

#[test]
fn stacks_are_read_before_a_callback_reaches_the_threshold() {
    // Background stacks once a second; a callback running from the start. The loop stacks
    // must be read from `BUSY_STACKS` (5 ms), well before half the threshold (100 ms), so
    // the run is named before it becomes an episode, however late a tick or two may be.
    let stop = AtomicBool::new(false);
    let start = Instant::now();
    let mut src = Busy {
        stacks: Vec::new(),
        until: start + Duration::from_millis(400),
    };
    let limits = Limits {
        stack_rate: 1.0,
        threshold: 0.2,
        kernel_rate: 100.0,
        ..probe_limits(1000.0, None, &stop)
    };
    run(&mut src, &limits, &mut |_, _| Ok(())).unwrap();
    let second = src.stacks.get(1).expect("a burst read a stack");
    let after = second.duration_since(src.stacks[0]);
    assert!(
        after >= BUSY_STACKS && after < Duration::from_millis(100),
        "{after:?}"
    );
    // Then one at every tick (spaced by their cost).
    assert!(src.stacks.len() >= 10, "{}", src.stacks.len());
}

#[test]
fn ends_at_the_duration_even_between_slow_ticks() {
    let stop = AtomicBool::new(false);
    let mut src = Fake {
        left: u32::MAX,
        fail_every: 0,
        n: 0,
    };
    let limits = probe_limits(0.05, Some(Duration::from_millis(120)), &stop);
    let started = Instant::now();
    let stats = run(&mut src, &limits, &mut |_, _| Ok(())).unwrap();
    assert_eq!(stats.end, "duration");
    assert_eq!(stats.samples, 1);
    assert!(started.elapsed() < Duration::from_millis(220));
}

/// A source whose process exec()s after `left` reads; `next` says what attaching again
/// gives: `None` a new program that is not Python, `Some(n)` one readable after n tries.
struct Execing {
    left: u32,
    next: Option<u32>,
    replaced: bool,
}

impl SampleSource for Execing {
    fn pid(&self) -> u32 {
        7
    }
    fn sample(&mut self) -> Result<Vec<ThreadSample>> {
        if self.left == 0 {
            self.replaced = true;
            // What the new program's memory gives: garbage, which must not be used.
            return Ok(vec![loop_thread(999)]);
        }
        self.left -= 1;
        Ok(vec![loop_thread(7)])
    }
    fn alive(&mut self) -> bool {
        true
    }
    fn replaced(&mut self) -> Option<String> {
        self.replaced.then(|| "called exec()".to_string())
    }
    fn reattach(&mut self) -> Result<Option<Reattached>> {
        match self.next.as_mut() {
            None => bail!("`sleep` is not Python"),
            Some(0) => Ok(Some(Reattached {
                source: Box::new(Fake {
                    left: 5,
                    fail_every: 0,
                    n: 0,
                }),
                what: "python3 next.py".into(),
            })),
            Some(n) => {
                *n -= 1;
                Ok(None)
            }
        }
    }
}

fn loop_thread(tid: u32) -> ThreadSample {
    ThreadSample {
        gc: false,
        loop_ended: false,
        tid,
        name: None,
        event_loop: Some("loop".into()),
        gil: false,
        active: true,
        os: None,
        ready: None,
        task: None,
        coroutine: None,
        timers: None,
        timer_overdue_us: None,
        request: None,
        frames: Vec::new(),
    }
}

fn limits(stop: &AtomicBool) -> Limits<'_> {
    Limits {
        rate: 1000.0,
        stack_rate: 1000.0,
        threshold: 0.05,
        duration: Some(Duration::from_secs(5)),
        stop,
        clock: ClockChoice::Probe,
        kernel_rate: 1000.0,
    }
}

#[test]
fn exec_into_a_program_that_is_not_python_ends_sampling() {
    let stop = AtomicBool::new(false);
    let mut src = Execing {
        left: 3,
        next: None,
        replaced: false,
    };
    let mut got = Vec::new();
    let stats = run(&mut src, &limits(&stop), &mut |s, _| {
        got.push(s);
        Ok(())
    })
    .unwrap();
    assert!(
        stats.end.starts_with("target replaced by exec"),
        "{}",
        stats.end
    );
    // Three reads of the old program, then one empty sample that closes its episodes;
    // nothing read after the exec.
    assert_eq!(got.len(), 4);
    assert!(got[..3].iter().all(|s| s.threads[0].tid == 7));
    assert!(got[3].threads.is_empty() && !got[3].probe);
}

#[test]
fn exec_into_python_attaches_again() {
    let stop = AtomicBool::new(false);
    let mut src = Execing {
        left: 2,
        next: Some(2),
        replaced: false,
    };
    let mut got = Vec::new();
    let stats = run(&mut src, &limits(&stop), &mut |s, _| {
        got.push(s);
        Ok(())
    })
    .unwrap();
    // The new source (a `Fake` of pid 42) is read until it exits.
    assert_eq!(stats.end, "target exited");
    assert_eq!(got.len(), 2 + 1 + 5);
    assert!(got[3..].iter().all(|s| s.pid == 42));
    assert!(!got.iter().any(|s| s.threads.iter().any(|t| t.tid == 999)));
}

/// A source whose one loop thread is a thread of this test process (`tid`), known (as after an
/// attach or an exec) only once a read has found it.
struct OwnLoop {
    tid: u32,
    read: bool,
}

impl SampleSource for OwnLoop {
    fn pid(&self) -> u32 {
        std::process::id()
    }
    fn sample(&mut self) -> Result<Vec<ThreadSample>> {
        self.read = true;
        Ok(vec![loop_thread(self.tid)])
    }
    fn alive(&mut self) -> bool {
        true
    }
    fn loop_tids(&self) -> Vec<u32> {
        if self.read {
            vec![self.tid]
        } else {
            Vec::new()
        }
    }
}

/// At the end of a recording the kernel clock's last records are read: a callback that
/// ended after the last drain ends there, not "still running at the stop". The loop thread
/// goes back to epoll at 60 ms; the recording lasts 64 ms, while the clock drains every 25 ms
/// (at about 0, 25 and 50 ms), so only a drain at the end sees that epoll entry.
#[test]
fn the_kernel_clock_is_read_once_more_at_the_end() {
    use crate::sample::LoopEventKind;
    if crate::acquire::kernel_clock::KernelClock::check().is_err() {
        eprintln!("SKIPPED: perf tracepoints are not available here (needs root and tracefs)");
        return;
    }
    let start = Instant::now();
    let idle_at = start + Duration::from_millis(60);
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        // SAFETY: plain syscalls on an epoll fd this thread owns.
        unsafe {
            tx.send(libc::gettid() as u32).unwrap();
            let ep = libc::epoll_create1(libc::EPOLL_CLOEXEC);
            while Instant::now() < idle_at {
                std::hint::spin_loop();
            }
            let mut ev = libc::epoll_event { events: 0, u64: 0 };
            libc::epoll_wait(ep, &mut ev, 1, 2000);
            libc::close(ep);
        }
    });
    let tid = rx.recv().unwrap();
    let stop = AtomicBool::new(false);
    let duration = Some(idle_at + Duration::from_millis(4) - Instant::now());
    let limits = Limits {
        threshold: 1.0,
        clock: ClockChoice::Kernel,
        ..probe_limits(1.0, duration, &stop)
    };
    let mut events = Vec::new();
    let mut src = OwnLoop { tid, read: false };
    run(&mut src, &limits, &mut |s, _| {
        events.extend(s.events.iter().map(|e| (e.kind, e.t)));
        Ok(())
    })
    .unwrap();
    assert_eq!(
        events.first().map(|e| e.0),
        Some(LoopEventKind::Traced),
        "{events:?}"
    );
    assert!(
        events.iter().any(|e| e.0 == LoopEventKind::Idle),
        "the epoll entry at 60 ms: {events:?}"
    );
}

/// A loop thread found by the first read is traced right after it, not at the next tick: a
/// callback that begins soon after an attach (or an exec) then gets an exact start. At 1 Hz the
/// next tick would come after this 150 ms recording has ended.
#[test]
fn a_loop_found_by_a_read_is_traced_at_once() {
    use crate::sample::LoopEventKind;
    if crate::acquire::kernel_clock::KernelClock::check().is_err() {
        eprintln!("SKIPPED: perf tracepoints are not available here (needs root and tracefs)");
        return;
    }
    let (tx, rx) = std::sync::mpsc::channel();
    let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
    std::thread::spawn(move || {
        // SAFETY: gettid has no preconditions.
        tx.send(unsafe { libc::gettid() } as u32).unwrap();
        let _ = done_rx.recv_timeout(Duration::from_secs(5));
    });
    let tid = rx.recv().unwrap();
    let stop = AtomicBool::new(false);
    let limits = Limits {
        clock: ClockChoice::Kernel,
        ..probe_limits(1.0, Some(Duration::from_millis(150)), &stop)
    };
    let mut traced = Vec::new();
    let mut src = OwnLoop { tid, read: false };
    run(&mut src, &limits, &mut |s, _| {
        traced.extend(
            s.events
                .iter()
                .filter(|e| e.kind == LoopEventKind::Traced)
                .map(|e| e.t),
        );
        Ok(())
    })
    .unwrap();
    drop(done_tx);
    assert!(
        traced.first().is_some_and(|t| *t < 0.05),
        "traced at {traced:?} s"
    );
}

/// A source that does 30 ms of bookkeeping (a scan, say) before every other read, and says when
/// each read looked at the target.
struct SlowStart {
    reads: Vec<Instant>,
    at: Option<Instant>,
}

impl SampleSource for SlowStart {
    fn pid(&self) -> u32 {
        42
    }
    fn sample(&mut self) -> Result<Vec<ThreadSample>> {
        if self.reads.len() >= 8 {
            bail!("gone");
        }
        if self.reads.len() % 2 == 0 {
            std::thread::sleep(Duration::from_millis(30));
        }
        let now = Instant::now();
        self.reads.push(now);
        self.at = Some(now);
        Ok(vec![])
    }
    fn read_at(&mut self) -> Option<Instant> {
        self.at.take()
    }
    fn alive(&mut self) -> bool {
        self.reads.len() < 8
    }
}

/// Regression: a sample was timed at its tick, however late its read began. A loop found by a
/// scan 6 ms after the tick was then seen "busy" 6 ms before it was, and the episode of the
/// callback it ran began 11 ms early, outside its 5.5 ms error bar. Samples are now timed when
/// their read looked: the gaps between them are the gaps between the reads.
#[test]
fn a_sample_is_timed_when_its_read_looked() {
    let stop = AtomicBool::new(false);
    let mut src = SlowStart {
        reads: Vec::new(),
        at: None,
    };
    let mut got = vec![];
    run(&mut src, &probe_limits(100.0, None, &stop), &mut |s, _| {
        got.push(s.mono);
        Ok(())
    })
    .unwrap();
    assert_eq!(got.len(), 8);
    for (i, (m, r)) in got.windows(2).zip(src.reads.windows(2)).enumerate() {
        let (sampled, read) = (m[1] - m[0], (r[1] - r[0]).as_secs_f64());
        assert!(
            (sampled - read).abs() < 0.002,
            "samples {i}, {}: {:.1} ms apart, their reads {:.1} ms",
            i + 1,
            sampled * 1000.0,
            read * 1000.0
        );
    }
}
