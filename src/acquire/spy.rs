//! The boundary with py-spy: reads the live target through py-spy's `PythonSpy` (never pausing
//! it) and our own thread scanner, adds the OS view from `/proc`, and returns our own
//! [`ThreadSample`]s. Nothing past this module sees a py-spy type.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use anyhow::Result;
use py_spy::PythonSpy;

use crate::acquire::sampler::SampleSource;
use crate::os::thread_state::ThreadProc;
use crate::remote::gc_state::{mark_collector, GcFlag};
use crate::remote::{AsyncioReader, PyThread, ThreadScanner};
use crate::sample::{Frame, ReadyQueue, Request, ThreadSample};

/// How often the thread scan (running loops, thread ids) is redone even when nothing changed.
const RESCAN: Duration = Duration::from_secs(1);

/// A live, attached target.
pub struct Spy {
    spy: PythonSpy,
    scanner: Option<ThreadScanner>,
    /// pthread id → what the last scan found.
    threads: HashMap<u64, PyThread>,
    last_scan: Option<Instant>,
    procs: HashMap<u32, ThreadProc>,
    /// The OS thread each pthread id was last seen on.
    tid_of: HashMap<u64, u32>,
    /// Probe ticks so far.
    probes: u64,
    /// Last known Python name of each OS thread, for probe ticks (which read no names).
    names: HashMap<u32, String>,
    /// Address range of the GIL's state: a futex wait inside it is a wait for the GIL.
    gil: Option<std::ops::Range<u64>>,
    /// Our reader of asyncio's own state (current tasks, timers), when the layout is known.
    asyncio: Option<AsyncioReader>,
    /// The interpreter's "GC is collecting" flag, when its layout is known.
    gc: Option<GcFlag>,
    /// Threads (OS tid) whose loop stopped (and maybe restarted) since the last sample: the
    /// next sample says so once (`loop_ended`), so the detector ends what they ran there.
    ended: std::collections::HashSet<u32>,
    /// pthread ids of the threads that run or ran a loop: their running-loop slots are
    /// watched at every tick.
    loop_threads: std::collections::HashSet<u64>,
    /// A ready queue the last scan found did not read at the last probe.
    suspect: bool,
    /// The process (thread group) id; reads go through `spy.pid`, which is a live thread's
    /// id instead when the main thread has exited.
    pid: u32,
    /// The program image attached to: gone after an `exec()`.
    image: Option<crate::os::process::Image>,
    /// Whether the last full read failed (then a leader that exited is looked for).
    failing: bool,
    /// Read the request a loop's running task serves (on by default; `--no-request`).
    read_requests: bool,
}

/// What a loop thread's running task is, for one stack sample.
#[derive(Default)]
struct LoopTask {
    task: Option<String>,
    coroutine: Option<String>,
    timers: Option<u64>,
    request: Option<Request>,
}

impl Spy {
    /// Wrap an attached `PythonSpy`. When our own reader does not understand this interpreter's
    /// layout, loops are still found from their stacks; `notice` tells why.
    pub fn new(spy: PythonSpy) -> (Spy, Option<String>) {
        let (scanner, notice) = match ThreadScanner::new(&spy) {
            Ok(s) => (Some(s), None),
            Err(e) => (
                None,
                Some(format!(
                    "event-loop slots not readable ({e:#}); finding loops from stacks only"
                )),
            ),
        };
        let gil = gil_range(&spy);
        let asyncio = scanner
            .as_ref()
            .and_then(|s| AsyncioReader::new(&spy, s.layout()).ok());
        let v = (spy.version.major, spy.version.minor);
        let runtime = crate::remote::pyruntime_address(&spy.process).ok();
        let interp = spy.addresses.interpreter_address as u64;
        let gc = GcFlag::locate(&spy.process, interp, runtime, v);
        let pid = spy.pid as u32;
        let spy = Spy {
            gc,
            image: crate::os::process::Image::open(pid),
            pid,
            failing: false,
            asyncio,
            spy,
            scanner,
            threads: HashMap::new(),
            last_scan: None,
            procs: HashMap::new(),
            gil,
            tid_of: HashMap::new(),
            names: HashMap::new(),
            probes: 0,
            ended: Default::default(),
            loop_threads: Default::default(),
            suspect: false,
            read_requests: true,
        };
        (spy, notice)
    }

    /// Name the process `pid` (its thread group) when reads go through another of its
    /// threads (`PythonSpy::new` was given a live thread's id because the leader exited).
    pub fn with_process_id(mut self, pid: u32) -> Spy {
        self.pid = pid;
        self
    }

    /// `3.11.7`
    pub fn python_version(&self) -> String {
        let v = &self.spy.version;
        format!("{}.{}.{}", v.major, v.minor, v.patch)
    }

    fn rescan(&mut self) {
        self.rescan_after(&[]);
    }

    /// Scan again; `changed` are the threads whose running-loop slot was seen to change.
    fn rescan_after(&mut self, changed: &[u64]) {
        let Some(scanner) = self.scanner.as_mut() else {
            return;
        };
        if let Ok(found) = scanner.scan(&self.spy.process) {
            let threads: HashMap<u64, PyThread> =
                found.into_iter().map(|t| (t.pthread_id, t)).collect();
            // Loops that stopped: their thread runs no loop now or another one, or is gone,
            // or its slot changed in place since the last scan (run_forever returned, even if
            // the same loop runs again now: asyncio.run's teardown runs it a few more times).
            // A slot found elsewhere (the thread's dict grew) is no change by itself.
            for (pthread, old) in &self.threads {
                let (Some(tid), Some(old_loop)) = (old.native_tid, &old.running_loop) else {
                    continue;
                };
                let new = threads.get(pthread);
                let same_loop = new
                    .and_then(|t| t.running_loop.as_ref())
                    .is_some_and(|l| l.address == old_loop.address);
                let in_place = changed.contains(pthread)
                    && new.and_then(|t| t.loop_slot).map(|w| w.addr)
                        == old.loop_slot.map(|w| w.addr);
                if !same_loop || in_place {
                    self.ended.insert(tid);
                }
            }
            self.loop_threads.retain(|p| threads.contains_key(p));
            self.loop_threads.extend(
                threads
                    .values()
                    .filter(|t| t.running_loop.is_some())
                    .map(|t| t.pthread_id),
            );
            self.threads = threads;
        }
        if let Some(a) = self.asyncio.as_mut() {
            a.refresh(&self.spy.process);
        }
        self.last_scan = Some(Instant::now());
    }

    /// For the thread `pthread`, when it runs a loop: the task that loop is stepping (name and
    /// coroutine), the loop's timer count, and (unless `--no-request`) the HTTP request that
    /// task serves. About 7 `process_vm_readv` calls, plus the request's first read in each
    /// callback (`remote::request`). `ready` is the loop's ready-queue counter.
    fn loop_tasks(&mut self, pthread: u64, ready: Option<u64>) -> LoopTask {
        let (Some(a), Some(t)) = (self.asyncio.as_mut(), self.threads.get(&pthread)) else {
            return LoopTask::default();
        };
        let Some(l) = t.running_loop.as_ref() else {
            return LoopTask::default();
        };
        let mem = &self.spy.process;
        let timers = a.timers(mem, l.address);
        match a.current_task(mem, t.tstate, l.address) {
            Some(c) => LoopTask {
                request: self
                    .read_requests
                    .then(|| a.request(mem, t.tstate, c.address, ready))
                    .flatten(),
                task: c.name,
                coroutine: c.coroutine,
                timers,
            },
            None => LoopTask {
                timers,
                ..LoopTask::default()
            },
        }
    }

    /// For the thread `pthread`, when its loop waits outside any callback (for the GIL): the
    /// task it will step for its due timer (see `remote::waiting`).
    fn waiting_task(&mut self, pthread: u64) -> Option<crate::remote::CurrentTask> {
        let (a, t) = (self.asyncio.as_mut()?, self.threads.get(&pthread)?);
        let l = t.running_loop.as_ref()?;
        a.due_timer_task(&self.spy.process, l.address, monotonic_now())
    }

    /// Whether stack samples read the HTTP request of a loop's running task (`--no-request`
    /// turns it off).
    pub fn set_read_requests(&mut self, on: bool) {
        self.read_requests = on;
    }

    /// Map the threads and their loops now rather than at the next sample, for a one-shot read
    /// (`loopspy dump`).
    pub fn prepare(&mut self) {
        self.rescan();
    }

    /// The attached process and our asyncio reader, for `loopspy dump`.
    pub fn asyncio_parts(
        &mut self,
    ) -> (
        &remoteprocess::Process,
        &HashMap<u64, PyThread>,
        Option<&mut AsyncioReader>,
    ) {
        (&self.spy.process, &self.threads, self.asyncio.as_mut())
    }

    /// The threads that started or stopped an event loop since the last scan: one 8-byte read
    /// of the running-loop slot of each thread that runs or ran one. A loop closed and a new
    /// one started (`asyncio.run` called again) must not be read through the old loop's
    /// ready queue and task records for up to a second.
    fn loops_changed(&self) -> Vec<u64> {
        let Some(scanner) = self.scanner.as_ref() else {
            return Vec::new();
        };
        self.loop_threads
            .iter()
            .filter(|p| {
                self.threads
                    .get(p)
                    .and_then(|t| t.loop_slot.as_ref())
                    .is_some_and(|w| !scanner.loop_slot_unchanged(&self.spy.process, w))
            })
            .copied()
            .collect()
    }

    /// pthread id → the ready queue of the loop it runs, for the loops the last scan found.
    fn ready_queues(&self) -> Vec<(u64, ReadyQueue)> {
        let Some(scanner) = self.scanner.as_ref() else {
            return Vec::new();
        };
        let read = |(&pthread, t): (&u64, &PyThread)| {
            let deque = t.running_loop.as_ref()?.ready?;
            let (len, state) = scanner.read_ready(&self.spy.process, deque)?;
            Some((pthread, ReadyQueue { len, state }))
        };
        self.threads.iter().filter_map(read).collect()
    }

    /// The cheap tick: for each loop thread the last scan found, its ready queue and its OS
    /// state, no stack. A few microseconds per loop.
    fn probe_loops(&mut self) -> Option<Vec<ThreadSample>> {
        self.scanner.as_ref()?;
        // No loop known yet (the program has not started one): look again, often, since a
        // scan is a handful of reads; until one runs, ticks read stacks instead.
        let no_loop = !self.threads.values().any(|t| t.running_loop.is_some());
        let since_scan = self.last_scan.map(|t| t.elapsed());
        let changed = self.loops_changed();
        if (no_loop && since_scan.is_none_or(|t| t >= Duration::from_millis(100)))
            || (self.suspect && since_scan.is_none_or(|t| t >= Duration::from_millis(10)))
            || !changed.is_empty()
        {
            self.rescan_after(&changed);
        }
        let mut out = Vec::new();
        let ended = std::mem::take(&mut self.ended);
        // A loop that stopped, on a thread that runs none now: the thread, once, with no loop.
        let running: Vec<u32> = self
            .threads
            .values()
            .filter(|t| t.running_loop.is_some())
            .filter_map(|t| t.native_tid)
            .collect();
        for &tid in ended.iter().filter(|t| !running.contains(t)) {
            let os = self.os_state(tid, false);
            out.push(ThreadSample {
                gc: false,
                loop_ended: true,
                tid,
                name: self.names.get(&tid).cloned(),
                event_loop: None,
                gil: false,
                active: true,
                os,
                ready: None,
                task: None,
                coroutine: None,
                timers: None,
                request: None,
                frames: Vec::new(),
            });
        }
        if !self.threads.values().any(|t| t.running_loop.is_some()) {
            return (!out.is_empty()).then_some(out);
        }
        let scanner = self.scanner.as_ref()?;
        let mut loops: Vec<(u32, String, Option<ReadyQueue>)> = Vec::new();
        let mut suspect = false;
        for t in self.threads.values() {
            let (Some(tid), Some(lp)) = (t.native_tid, t.running_loop.as_ref()) else {
                continue;
            };
            let ready = lp
                .ready
                .and_then(|d| scanner.read_ready(&self.spy.process, d))
                .map(|(len, state)| ReadyQueue { len, state });
            // The deque the scan found is gone: the loop was closed (or replaced at the same
            // address); look again soon.
            suspect |= lp.ready.is_some() && ready.is_none();
            loops.push((tid, lp.type_name.clone(), ready));
        }
        self.suspect = suspect;
        loops.sort_by_key(|l| l.0);
        // `stat` (scheduler state, CPU times) on one tick in ten; the syscall on every tick.
        self.probes += 1;
        let with_stat = self.probes % 10 == 0;
        for (tid, event_loop, ready) in loops {
            let os = self.os_state(tid, with_stat);
            out.push(ThreadSample {
                gc: false,
                loop_ended: ended.contains(&tid),
                tid,
                name: self.names.get(&tid).cloned(),
                event_loop: Some(event_loop),
                gil: false,
                active: true,
                os,
                ready,
                task: None,
                coroutine: None,
                timers: None,
                request: None,
                frames: Vec::new(),
            });
        }
        Some(out)
    }

    fn os_state(&mut self, tid: u32, with_stat: bool) -> Option<crate::sample::OsState> {
        let pid = self.spy.pid as u32;
        let proc_ = self
            .procs
            .entry(tid)
            .or_insert_with(|| ThreadProc::open(pid, tid));
        proc_.read(self.gil.clone(), with_stat)
    }
}

impl SampleSource for Spy {
    fn pid(&self) -> u32 {
        self.pid
    }

    fn sample(&mut self) -> Result<Vec<ThreadSample>> {
        // A loop started or stopped since the last scan: map the loops again first, so that
        // nothing below reads the old loop's ready queue or task records.
        let changed = self.loops_changed();
        if !changed.is_empty() {
            self.rescan_after(&changed);
        }
        // Ready queues before stacks: a pop seen between two samples splits a callback in two,
        // so a queue read older than its stack errs on the side of splitting, never merging.
        let ready = self.ready_queues();
        self.failing = true;
        let traces = self.spy.get_stack_traces()?;
        self.failing = false;
        let stale = self.last_scan.is_none_or(|t| t.elapsed() >= RESCAN);
        if stale
            || traces
                .iter()
                .any(|t| !self.threads.contains_key(&t.thread_id))
        {
            self.rescan();
        } else if !self.threads.values().any(|t| t.running_loop.is_some()) {
            // No loop mapped yet (a program that just started): look for one at every stack
            // sample, so a callback that blocks as soon as the loop starts is named whole. The
            // thread walk is a few reads; asyncio's globals are looked up once a loop shows.
            if let Some(scanner) = self.scanner.as_mut() {
                if let Ok(found) = scanner.scan(&self.spy.process) {
                    self.threads = found.into_iter().map(|t| (t.pthread_id, t)).collect();
                }
            }
            if self.threads.values().any(|t| t.running_loop.is_some()) {
                self.rescan();
            }
        }
        let single = traces.len() == 1;
        let ended = std::mem::take(&mut self.ended);
        let mut out = Vec::with_capacity(traces.len());
        for trace in &traces {
            let scanned = self.threads.get(&trace.thread_id);
            // Our scan gives host tids; py-spy's `os_thread_id` is the target's own number,
            // which differs inside a container.
            let tid = scanned
                .and_then(|s| s.native_tid)
                .or_else(|| {
                    let inner = trace.os_thread_id? as u32;
                    let scanner = self.scanner.as_ref();
                    Some(scanner.and_then(|sc| sc.host_tid(inner)).unwrap_or(inner))
                })
                .or_else(|| single.then_some(self.spy.pid as u32))
                .unwrap_or(0);
            let event_loop = scanned
                .and_then(|s| s.running_loop.as_ref())
                .map(|l| l.type_name.clone());
            let os = if tid != 0 {
                self.os_state(tid, true)
            } else {
                None
            };
            if tid != 0 && os.is_none() {
                // The thread id came from a scan that predates a thread exiting and its pthread
                // id being reused: map the threads again at the next sample.
                self.last_scan = None;
            }
            // py-spy caches names by pthread id, which a new thread can reuse: a pthread id now
            // on another OS thread means its cached name is stale.
            // py-spy learns names from `threading` and retries unnamed threads only once a
            // second: until then the main thread (tid == pid) is called what CPython calls it.
            let mut name = trace
                .thread_name
                .clone()
                .or_else(|| (tid == self.pid).then(|| "MainThread".to_string()));
            if tid != 0
                && self
                    .tid_of
                    .insert(trace.thread_id, tid)
                    .is_some_and(|old| old != tid)
            {
                self.spy.python_thread_names.clear();
                self.spy.python_thread_ids.clear();
                name = None;
            }
            if let Some(n) = &name {
                if tid != 0 && self.names.get(&tid) != Some(n) {
                    self.names.insert(tid, n.clone());
                }
            }
            let queue = ready
                .iter()
                .find(|(p, _)| *p == trace.thread_id)
                .map(|&(_, q)| q);
            let lt = self.loop_tasks(trace.thread_id, queue.map(|q| q.state));
            let (mut task, mut coroutine) = (lt.task, lt.coroutine);
            let frames: Vec<Frame> = trace.frames.iter().map(Frame::from_py_spy).collect();
            if task.is_none() && event_loop.is_some() && waits_outside_callback(&os, &frames) {
                if let Some(w) = self.waiting_task(trace.thread_id) {
                    (task, coroutine) = (w.name, w.coroutine);
                }
            }
            out.push(ThreadSample {
                gc: false,
                loop_ended: ended.contains(&tid),
                task,
                coroutine,
                timers: lt.timers,
                request: lt.request,
                tid,
                name,
                event_loop,
                gil: trace.owns_gil,
                active: trace.active,
                os,
                ready: queue,
                frames,
            });
        }
        let collecting = self.gc.and_then(|g| g.collecting(&self.spy.process));
        mark_collector(&mut out, collecting);
        // Forget the names and /proc handles of threads that are gone.
        if self.names.len() > out.len() {
            self.names
                .retain(|tid, _| out.iter().any(|t| t.tid == *tid));
        }
        if self.procs.len() > out.len() {
            self.procs
                .retain(|tid, _| out.iter().any(|t| t.tid == *tid));
        }
        Ok(out)
    }

    fn probe(&mut self) -> Option<Result<Vec<ThreadSample>>> {
        self.probe_loops().map(Ok)
    }

    fn alive(&mut self) -> bool {
        process_alive(self.pid)
    }

    fn replaced(&mut self) -> Option<String> {
        if self.image.as_ref().is_some_and(|i| i.gone()) {
            // Gone with a new image in its place: an exec. Without one, the process is
            // exiting (its memory goes before its threads do): not a replacement.
            let reader = self.spy.pid as u32;
            return crate::os::process::has_image(reader).then(|| "called exec()".into());
        }
        // Reads through an exited main thread fail although the process runs on.
        let through_leader = self.spy.pid as u32 == self.pid;
        (self.failing && through_leader && crate::os::process::leader_gone(self.pid))
            .then(|| "lost its main thread (pthread_exit)".into())
    }

    fn reattach(&mut self) -> Result<Option<crate::acquire::sampler::Reattached>> {
        crate::acquire::attach::reattach(self.pid)
    }

    fn loop_tids(&self) -> Vec<u32> {
        let mut tids: Vec<u32> = self
            .threads
            .values()
            .filter(|t| t.running_loop.is_some())
            .filter_map(|t| t.native_tid)
            .collect();
        tids.sort_unstable();
        tids
    }

    fn gil_range(&self) -> Option<std::ops::Range<u64>> {
        self.gil.clone()
    }
}

/// Whether a loop thread waits outside any callback: for the GIL (by the OS), or out of epoll
/// with its innermost frame still in the selector (between two of CPython's timed GIL waits).
fn waits_outside_callback(os: &Option<crate::sample::OsState>, frames: &[Frame]) -> bool {
    let Some(os) = os else { return false };
    let in_selector = frames
        .first()
        .is_some_and(|f| f.file.ends_with("selectors.py"));
    let in_epoll = matches!(
        os.syscall.as_deref(),
        Some("epoll_wait" | "epoll_pwait" | "epoll_pwait2")
    );
    os.gil_wait || (in_selector && os.syscall.is_some() && !in_epoll)
}

/// CLOCK_MONOTONIC now, in seconds: asyncio's `loop.time()`.
fn monotonic_now() -> f64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime only writes the timespec we pass.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as f64 + ts.tv_nsec as f64 / 1e9
}

/// Size of CPython's `struct _gil_runtime_state` (3.8–3.14, x86-64 and aarch64).
const GIL_STATE_SIZE: u64 = 208;

/// Where the GIL's state lives. py-spy's `threadstate_address` is the GIL itself on 3.12+
/// (`interp->ceval.gil`) and `&_PyRuntime.gilstate.tstate_current` on 3.8–3.11, which sits
/// 216 bytes after `_PyRuntime.ceval.gil` in each of those versions (cpython-notes §2.5).
fn gil_range(spy: &PythonSpy) -> Option<std::ops::Range<u64>> {
    let addr = spy.addresses.threadstate_address as u64;
    let start = match (spy.version.major, spy.version.minor) {
        _ if addr == 0 => return None,
        (3, 8..=11) => addr.checked_sub(216)?,
        (3, 12..=14) => addr,
        _ => return None,
    };
    Some(start..start + GIL_STATE_SIZE)
}

/// Whether the process exists and one of its threads is neither a zombie nor dead (a main
/// thread that called `pthread_exit` leaves a zombie leader beside live threads).
pub fn process_alive(pid: u32) -> bool {
    crate::os::process::alive(pid)
}
