//! The boundary where raw reads of the live target become our own [`ThreadSample`]s: our CPython
//! reader (`crate::remote`, never pausing the target) for threads, loops, tasks and stacks, and
//! the OS view from `/proc`.
//!
//! What is read when:
//! - [`SampleSource::probe`] (every tick): each loop thread's syscall and ready queue, no stack;
//! - [`SampleSource::sample_loops`] (while a loop runs a long callback): the loop threads'
//!   stacks, and the GIL holder's while a loop waits for the GIL;
//! - [`SampleSource::sample`] (the background stack rate): every thread.
//!
//! The thread list, loops and thread names are re-read about once a second, and at once when
//! a thread appears or a thread state stops matching its thread.

use std::collections::{HashMap, HashSet};
use std::ops::Range;
use std::time::{Duration, Instant};

use anyhow::{anyhow, Result};

use crate::acquire::sampler::SampleSource;
use crate::os::thread_state::ThreadProc;
use crate::remote::gc_state::{mark_collector, GcFlag};
use crate::remote::{
    AsyncioReader, Gil, Interpreter, Prefetched, Process, PyThread, StackError, StackOf,
    StackReader, ThreadScanner, Version,
};
use crate::sample::{Frame, OsState, ReadyQueue, ThreadSample};

/// How often the thread scan (running loops, thread ids) is redone even when nothing changed.
const RESCAN: Duration = Duration::from_secs(1);
/// How often thread names are re-read from `threading`.
const RENAME: Duration = Duration::from_secs(1);
/// A thread without a name is looked up again this often, this many times.
const NAME_RETRY: Duration = Duration::from_millis(20);
const NAME_TRIES: u32 = 5;

/// A live, attached target.
pub struct Spy {
    spy: Interpreter,
    scanner: ThreadScanner,
    stacks: StackReader,
    gil: Gil,
    gil_range: Option<Range<u64>>,
    /// Our reader of asyncio's own state (current tasks, timers), when its layout reads.
    asyncio: Option<AsyncioReader>,
    /// The interpreter's "GC is collecting" flag, when its layout is known.
    gc: Option<GcFlag>,
    /// pthread id → what the last scan found.
    threads: HashMap<u64, PyThread>,
    last_scan: Option<Instant>,
    procs: HashMap<u32, ThreadProc>,
    /// pthread id → `(OS thread, name)` as `threading` named it when last read.
    names: HashMap<u64, (Option<u32>, String)>,
    names_read: Option<Instant>,
    /// pthread ids the name reads found no name for (not started through `threading`, or not
    /// registered in it yet), with how many reads missed them.
    unnamed: HashMap<(u64, Option<u32>), u32>,
    /// Probe ticks so far.
    probes: u64,
    /// Stacks dropped since the last [`SampleSource::take_dropped`] (torn reads of threads that
    /// run no loop).
    dropped: u64,
    version: Version,
    notice: Option<String>,
    /// `--native`: py-spy's unwinder, whose stacks (C frames included) replace ours.
    #[cfg(feature = "native")]
    native: Option<crate::acquire::native::NativeStacks>,
    /// Threads (OS tid) whose loop stopped (and maybe restarted) since the last sample: the
    /// next sample that has the thread says so once (`loop_ended`), so the detector ends what
    /// they ran there.
    ended: HashSet<u32>,
    /// pthread ids of the threads that run or ran a loop: their running-loop slots are
    /// watched at every tick.
    loop_threads: HashSet<u64>,
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
    /// When the last read began to read the threads (after any scan): what its sample
    /// describes (see [`SampleSource::read_at`]).
    read_at: Option<Instant>,
}

/// What a full read adds to the stacks: the loops' task and timers (not on the loop-only reads
/// of every tick, which need the task but not the timers).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Extras {
    TaskAndTimers,
    Task,
}

impl Spy {
    /// Reads the attached interpreter's threads for the first time. Errors when its thread
    /// list does not read with its version's layout. [`Spy::notice`] tells of reduced
    /// functionality.
    pub fn new(spy: Interpreter) -> Result<Spy> {
        let scanner = ThreadScanner::new(&spy)?;
        let mut notice = None;
        let asyncio = match AsyncioReader::new(&spy, scanner.layout()) {
            Ok(a) => Some(a),
            Err(e) => {
                notice = Some(format!("asyncio's tasks are not readable ({e:#})"));
                None
            }
        };
        let gil = Gil::new(&spy.process, &spy);
        let version = spy.version();
        let stacks = spy.stack_reader();
        let gc = GcFlag::locate(
            &spy.process,
            spy.interp,
            Some(spy.runtime.address),
            (version.major, version.minor),
        );
        let pid = spy.pid as u32;
        let mut out = Spy {
            gc,
            image: crate::os::process::Image::open(pid),
            pid,
            failing: false,
            read_requests: true,
            read_at: None,
            gil_range: gil.range(),
            gil,
            stacks,
            scanner,
            asyncio,
            spy,
            threads: HashMap::new(),
            last_scan: None,
            procs: HashMap::new(),
            names: HashMap::new(),
            names_read: None,
            unnamed: HashMap::new(),
            probes: 0,
            dropped: 0,
            version,
            notice,
            #[cfg(feature = "native")]
            native: None,
            ended: HashSet::new(),
            loop_threads: HashSet::new(),
            suspect: false,
        };
        if out.version.patch.is_none() {
            // 3.8–3.10 images may not say their patch level: `sys.version` does.
            let mem = &out.spy.process;
            if let Some(v) = out.asyncio.as_mut().and_then(|a| a.sys_version(mem)) {
                out.version.patch = patch_of(&v, out.version);
            }
        }
        Ok(out)
    }

    /// Name the process `pid` (its thread group) when reads go through another of its
    /// threads (the reader was attached through a live thread because the leader exited).
    pub fn with_process_id(mut self, pid: u32) -> Spy {
        self.pid = pid;
        self
    }

    /// Whether stack samples read the HTTP request of a loop's running task (`--no-request`
    /// turns it off).
    pub fn set_read_requests(&mut self, on: bool) {
        self.read_requests = on;
    }

    /// `3.11.7`
    pub fn python_version(&self) -> String {
        self.version.to_string()
    }

    /// Read C frames too (`--native`), through py-spy's unwinder, which stops the target's
    /// threads for each read. Errors when this build has no unwinder or py-spy cannot read the
    /// target.
    pub fn enable_native(&mut self) -> Result<()> {
        #[cfg(feature = "native")]
        {
            let n = crate::acquire::native::NativeStacks::start(self.spy.pid as u32)
                .map_err(|e| anyhow!("--native: py-spy cannot unwind this process: {e:#}"))?;
            self.native = Some(n);
            Ok(())
        }
        #[cfg(not(feature = "native"))]
        {
            anyhow::bail!("--native is not in this build of loopspy: build it with the default features (they need libunwind, Debian's libunwind-dev)")
        }
    }

    /// With `--native`: every thread's stack with its C frames, by host thread id.
    fn native_stacks(&mut self) -> Option<HashMap<u32, Vec<Frame>>> {
        #[cfg(feature = "native")]
        {
            let read = self.native.as_ref()?.read();
            match read {
                Ok(by_inner) => Some(
                    by_inner
                        .into_iter()
                        .map(|(inner, f)| (self.scanner.host_tid(inner).unwrap_or(inner), f))
                        .collect(),
                ),
                Err(_) => {
                    self.dropped += 1;
                    None
                }
            }
        }
        #[cfg(not(feature = "native"))]
        None
    }

    /// Every thread's stack and nothing else (no OS state, queues or tasks), for
    /// `loopspy bench-stacks`: the frames read in all.
    pub fn bench_stacks(&mut self) -> Result<usize> {
        if self.stale() {
            self.rescan()?;
        }
        let reqs: Vec<StackOf> = self
            .threads
            .values()
            .map(|t| StackOf {
                tstate: t.tstate,
                pthread_id: t.pthread_id,
            })
            .collect();
        let stacks = self.stacks.read(&self.spy.process, &reqs);
        Ok(stacks.iter().flatten().map(Vec::len).sum())
    }

    /// A one-line notice about reduced functionality, if any.
    pub fn notice(&self) -> Option<&str> {
        self.notice.as_deref()
    }

    fn mem(&self) -> &Process {
        &self.spy.process
    }

    /// Maps the threads again. An error when the thread list cannot be read (the process is
    /// gone): the previous map is kept.
    fn rescan(&mut self) -> Result<()> {
        self.rescan_after(&[])
    }

    /// Maps the threads again; `changed` are the threads whose running-loop slot was seen to
    /// change (`loops_changed`). Loops that stopped are noted in `ended`.
    fn rescan_after(&mut self, changed: &[u64]) -> Result<()> {
        let mem = &self.spy.process;
        let scanned = self.scanner.scan(mem);
        if let Ok(found) = &scanned {
            let threads: HashMap<u64, PyThread> =
                found.iter().map(|t| (t.pthread_id, t.clone())).collect();
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
            let live: HashSet<u64> = self.threads.values().map(|t| t.tstate).collect();
            self.stacks.retain(&live);
        }
        if let Some(a) = self.asyncio.as_mut() {
            a.refresh(mem);
        }
        self.last_scan = Some(Instant::now());
        if self.names_read.is_none_or(|t| t.elapsed() >= RENAME) || self.names_wanted() {
            self.read_names();
        }
        scanned.map(|_| ())
    }

    /// Whether a thread of the last scan has no name yet and could get one by reading again: a
    /// thread appears in the interpreter a moment before `threading` registers it, so a new
    /// thread is looked up a few times, 20 ms apart.
    fn names_wanted(&self) -> bool {
        let missing = self.threads.values().any(|t| {
            let p = t.pthread_id;
            let named = self
                .names
                .get(&p)
                .is_some_and(|(tid, _)| tid.is_none() || *tid == t.native_tid);
            let tries = self.unnamed.get(&(p, t.native_tid));
            !named && tries.is_none_or(|&n| n < NAME_TRIES)
        });
        missing && self.names_read.is_none_or(|t| t.elapsed() >= NAME_RETRY)
    }

    /// Re-reads the thread names from `threading`.
    fn read_names(&mut self) {
        self.names_read = Some(Instant::now());
        let mem = &self.spy.process;
        let Some(found) = self.asyncio.as_mut().and_then(|a| a.thread_names(mem)) else {
            return;
        };
        self.names = found
            .into_iter()
            .map(|(p, n)| (p, (self.threads.get(&p).and_then(|t| t.native_tid), n)))
            .collect();
        // Counted per pthread id and OS thread: a reused pthread id is a new thread.
        let mut unnamed = HashMap::new();
        for t in self.threads.values() {
            if !self.names.contains_key(&t.pthread_id) {
                let key = (t.pthread_id, t.native_tid);
                unnamed.insert(key, self.unnamed.get(&key).copied().unwrap_or(0) + 1);
            }
        }
        self.unnamed = unnamed;
    }

    /// The name of a thread: `threading`'s, unless its pthread id has moved to another OS
    /// thread since it was read (pthread ids are reused); the main thread is `MainThread`.
    fn name_of(&self, t: &PyThread) -> Option<String> {
        let named = self
            .names
            .get(&t.pthread_id)
            .filter(|(tid, _)| tid.is_none() || *tid == t.native_tid)
            .map(|(_, n)| n.clone());
        named.or_else(|| (t.native_tid == Some(self.pid)).then(|| "MainThread".into()))
    }

    fn stale(&self) -> bool {
        self.last_scan.is_none_or(|t| t.elapsed() >= RESCAN)
    }

    /// The threads that started or stopped an event loop since the last scan: one 8-byte read
    /// of the running-loop slot of each thread that runs or ran one. A loop closed and a new
    /// one started (`asyncio.run` called again) must not be read through the old loop's
    /// ready queue and task records for up to a second.
    fn loops_changed(&self) -> Vec<u64> {
        self.loop_threads
            .iter()
            .filter(|p| {
                self.threads
                    .get(p)
                    .and_then(|t| t.loop_slot.as_ref())
                    .is_some_and(|w| !self.scanner.loop_slot_unchanged(self.mem(), w))
            })
            .copied()
            .collect()
    }

    /// Before a stack read: maps the threads again when the map is old or a loop started or
    /// stopped, so that nothing reads the old loop's ready queue or task records.
    fn refresh_map(&mut self) -> Result<()> {
        let changed = self.loops_changed();
        if self.stale() || !changed.is_empty() {
            self.rescan_after(&changed)?;
        }
        Ok(())
    }

    /// Map the threads and their loops now rather than at the next sample, for a one-shot read
    /// (`loopspy dump`).
    pub fn prepare(&mut self) {
        let _ = self.rescan();
    }

    /// The attached process and our asyncio reader, for `loopspy dump`.
    pub fn asyncio_parts(
        &mut self,
    ) -> (
        &Process,
        &HashMap<u64, PyThread>,
        Option<&mut AsyncioReader>,
    ) {
        (&self.spy.process, &self.threads, self.asyncio.as_mut())
    }

    /// The ready queue of the loop `t` runs, when readable.
    fn ready_of(&self, t: &PyThread) -> Option<ReadyQueue> {
        let deque = t.running_loop.as_ref()?.ready?;
        let (len, state) = self.scanner.read_ready(self.mem(), deque)?;
        Some(ReadyQueue { len, state })
    }

    /// The cheap tick: for each loop thread the last scan found, its ready queue and its OS
    /// state, no stack. A few microseconds per loop. An error when none of them reads.
    fn probe_loops(&mut self) -> Option<Result<Vec<ThreadSample>>> {
        // No loop known yet (the program has not started one): look again, often, since a
        // scan is a handful of reads; until one runs, ticks read stacks instead.
        let no_loop = !self.threads.values().any(|t| t.running_loop.is_some());
        let since_scan = self.last_scan.map(|t| t.elapsed());
        // A loop started or stopped (one read per loop thread), or a ready queue stopped
        // reading (the loop was closed, or replaced at the same address): look again.
        let changed = self.loops_changed();
        if (no_loop && since_scan.is_none_or(|t| t >= Duration::from_millis(100)))
            || (self.suspect && since_scan.is_none_or(|t| t >= Duration::from_millis(10)))
            || !changed.is_empty()
        {
            if let Err(e) = self.rescan_after(&changed) {
                return Some(Err(e));
            }
        }
        let ended = std::mem::take(&mut self.ended);
        // A loop that stopped, on a thread that runs none now: the thread, once, with no loop.
        let mut out: Vec<ThreadSample> = Vec::new();
        let running: HashSet<u32> = self
            .threads
            .values()
            .filter(|t| t.running_loop.is_some())
            .filter_map(|t| t.native_tid)
            .collect();
        let mut stopped: Vec<u32> = ended.difference(&running).copied().collect();
        stopped.sort_unstable();
        for tid in stopped {
            let name = self
                .threads
                .values()
                .find(|t| t.native_tid == Some(tid))
                .and_then(|t| self.name_of(t));
            out.push(ThreadSample {
                gc: false,
                loop_ended: true,
                tid,
                name,
                event_loop: None,
                gil: false,
                active: true,
                os: self.os_state(tid, false),
                ready: None,
                task: None,
                coroutine: None,
                timers: None,
                timer_overdue_us: None,
                request: None,
                frames: Vec::new(),
            });
        }
        self.read_at = Some(Instant::now());
        let mut loops: Vec<(u32, String, Option<ReadyQueue>, Option<String>)> = Vec::new();
        let mut suspect = false;
        for t in self.threads.values() {
            let (Some(tid), Some(lp)) = (t.native_tid, t.running_loop.as_ref()) else {
                continue;
            };
            let ready = self.ready_of(t);
            // The deque the scan found is gone: the loop was closed (or replaced at the same
            // address); look again soon.
            suspect |= lp.ready.is_some() && ready.is_none();
            loops.push((tid, lp.type_name.clone(), ready, self.name_of(t)));
        }
        self.suspect = suspect;
        if loops.is_empty() {
            return (!out.is_empty()).then_some(Ok(out));
        }
        loops.sort_by_key(|l| l.0);
        // `stat` (scheduler state, CPU times) on one tick in ten; the syscall on every tick.
        self.probes += 1;
        let with_stat = self.probes.is_multiple_of(10);
        let loop_samples: Vec<ThreadSample> = loops
            .into_iter()
            .map(|(tid, event_loop, ready, name)| ThreadSample {
                gc: false,
                loop_ended: ended.contains(&tid),
                tid,
                name,
                event_loop: Some(event_loop),
                gil: false,
                active: true,
                os: self.os_state(tid, with_stat),
                ready,
                task: None,
                coroutine: None,
                timers: None,
                timer_overdue_us: None,
                request: None,
                frames: Vec::new(),
            })
            .collect();
        if loop_samples.iter().all(|t| t.os.is_none()) {
            // Every loop thread is gone: the process exited, or they did (a rescan will tell).
            self.last_scan = None;
            return Some(Err(anyhow!("no loop thread could be read")));
        }
        out.extend(loop_samples);
        Some(Ok(out))
    }

    /// The thread's OS state; `None` when it is gone (a zombie included: a launched target
    /// that exited stays one until loopspy reaps it).
    fn os_state(&mut self, tid: u32, with_stat: bool) -> Option<OsState> {
        let pid = self.pid;
        let proc_ = self
            .procs
            .entry(tid)
            .or_insert_with(|| ThreadProc::open(pid, tid));
        proc_
            .read(self.gil_range.clone(), with_stat)
            .filter(|o| !matches!(o.state, 'Z' | 'X'))
    }

    /// Full samples of `which` threads (pthread ids), with their stacks. A thread whose stack
    /// reads torn is left out and counted, unless it runs a loop: then the whole read fails
    /// (the sampler falls back to a probe tick), since a loop thread missing from a sample
    /// would end its run. The loops' ready queues, the GIL's holder and the loops' current-task
    /// records are fetched in the stacks' first batched read.
    fn full(&mut self, which: &[u64], extras: Extras) -> Result<Vec<ThreadSample>> {
        let threads: Vec<PyThread> = which
            .iter()
            .filter_map(|p| self.threads.get(p).cloned())
            .collect();
        self.read_at = Some(Instant::now());
        let os: Vec<Option<OsState>> = threads
            .iter()
            .map(|t| t.native_tid.and_then(|tid| self.os_state(tid, true)))
            .collect();
        // Ready queues first in the batch: a pop seen between two samples splits a callback in
        // two, so a queue read older than its stack errs on the side of splitting.
        let mut regions: Vec<(u64, usize)> = Vec::new();
        for t in &threads {
            if let Some(deque) = t.running_loop.as_ref().and_then(|l| l.ready) {
                regions.push(self.scanner.ready_region(deque));
            }
        }
        regions.extend(self.gil.holder_region());
        if let Some(a) = self.asyncio.as_ref() {
            for t in threads.iter().filter(|t| t.running_loop.is_some()) {
                regions.extend(a.current_task_region(t.tstate));
            }
        }
        let reqs: Vec<StackOf> = threads
            .iter()
            .map(|t| StackOf {
                tstate: t.tstate,
                pthread_id: t.pthread_id,
            })
            .collect();
        let (stacks, fetched) = self.stacks.read_with(&self.spy.process, &reqs, &regions);
        let prefetched: Vec<(u64, Vec<u8>)> = regions
            .iter()
            .zip(fetched)
            .filter_map(|(r, b)| Some((r.0, b?)))
            .collect();
        let mut native = self.native_stacks();
        if self.names_wanted() {
            self.read_names();
        }
        let mem = Prefetched::new(&self.spy.process, prefetched);
        let holder = self.gil.holder(&mem);
        let single = threads.len() == 1;
        let mut out = Vec::with_capacity(threads.len());
        for ((t, os), stack) in threads.iter().zip(os).zip(stacks) {
            let frames: Vec<Frame> = match stack {
                Ok(f) => f,
                Err(e) => {
                    // The thread exited or its state moved: map the threads again.
                    if e == StackError::Gone {
                        self.last_scan = None;
                    }
                    if t.running_loop.is_some() && e != StackError::Gone {
                        return Err(anyhow!("stack of loop thread {:?}: {e}", t.native_tid));
                    }
                    self.dropped += 1;
                    continue;
                }
            };
            let tid = t
                .native_tid
                .or_else(|| single.then_some(self.pid))
                .unwrap_or(0);
            let frames = match native.as_mut().and_then(|n| n.remove(&tid)) {
                Some(with_c) if !with_c.is_empty() => with_c,
                _ => frames,
            };
            if tid != 0 && os.is_none() {
                // The thread id came from a scan that predates a thread exiting and its
                // pthread id being reused: map the threads again at the next sample.
                self.last_scan = None;
            }
            let ready = t
                .running_loop
                .as_ref()
                .and_then(|l| l.ready)
                .and_then(|d| self.scanner.read_ready(&mem, d))
                .map(|(len, state)| ReadyQueue { len, state });
            let (task, coroutine, timers, timer_overdue_us, request) =
                match (self.asyncio.as_mut(), &t.running_loop) {
                    (Some(a), Some(l)) => {
                        let timers = match extras {
                            Extras::TaskAndTimers => a.timers(&mem, l.address),
                            Extras::Task => None,
                        };
                        // The request the running task serves, read from this thread's frames
                        // (`remote::request`); `ready`'s counter tells one callback from the next.
                        // The task record is read after the stack: when the loop stepped another
                        // task in between, the record is not this stack's and is dropped.
                        let walked = self.stacks.walked_outside_chunks(t.tstate);
                        let running = a
                            .current_task(&mem, t.tstate, l.address)
                            .filter(|c| a.runs_in(&mem, c, walked));
                        let request = match &running {
                            Some(c) if self.read_requests => {
                                a.request(&mem, t.tstate, c.address, ready.map(|q| q.state))
                            }
                            _ => None,
                        };
                        // Waiting for the GIL outside any callback: its due timer, and the task
                        // that timer will step (the starved one; see `remote::waiting`).
                        let now = monotonic_now();
                        let due = match running {
                            None if waits_outside_callback(&os, &frames) => {
                                a.due_timer(&mem, l.address, now)
                            }
                            _ => None,
                        };
                        let overdue = due.as_ref().map(|d| ((now - d.when).max(0.0) * 1e6) as u64);
                        match running.or_else(|| due.and_then(|d| d.task)) {
                            Some(c) => (c.name, c.coroutine, timers, overdue, request),
                            None => (None, None, timers, overdue, request),
                        }
                    }
                    _ => (None, None, None, None, None),
                };
            let active = os.as_ref().is_none_or(|o| matches!(o.state, 'R' | 'D'));
            out.push(ThreadSample {
                gc: false,
                loop_ended: self.ended.remove(&tid),
                tid,
                name: self.name_of(t),
                event_loop: t.running_loop.as_ref().map(|l| l.type_name.clone()),
                gil: holder == Some(t.tstate),
                active,
                os,
                ready,
                task,
                coroutine,
                timers,
                timer_overdue_us,
                request,
                frames,
            });
        }
        if out.is_empty() && !threads.is_empty() {
            return Err(anyhow!("no thread of the target could be read"));
        }
        let collecting = self.gc.and_then(|g| g.collecting(&self.spy.process));
        mark_collector(&mut out, collecting);
        // Forget the /proc handles of threads that are gone.
        if self.procs.len() > self.threads.len() {
            let live: HashSet<u32> = self.threads.values().filter_map(|t| t.native_tid).collect();
            self.procs.retain(|tid, _| live.contains(tid));
        }
        Ok(out)
    }
}

/// The patch level from `sys.version` (`3.9.18 (main, ...)`) when it is of `v`'s minor.
fn patch_of(text: &str, v: Version) -> Option<u64> {
    let head = text.split_whitespace().next()?;
    let mut parts = head.split('.');
    let (major, minor): (u64, u64) = (parts.next()?.parse().ok()?, parts.next()?.parse().ok()?);
    let patch: String = parts
        .next()?
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    ((major, minor) == (v.major, v.minor))
        .then(|| patch.parse().ok())
        .flatten()
}

impl SampleSource for Spy {
    fn pid(&self) -> u32 {
        self.pid
    }

    fn sample(&mut self) -> Result<Vec<ThreadSample>> {
        self.failing = true;
        self.refresh_map()?;
        if !self.threads.values().any(|t| t.running_loop.is_some()) {
            // No loop mapped yet (a program that just started): look for one at every stack
            // sample, so a callback that blocks as soon as the loop starts is named whole. The
            // thread walk is a few reads; asyncio's globals are looked up once a loop shows.
            if let Ok(found) = self.scanner.scan(&self.spy.process) {
                if found.iter().any(|t| t.running_loop.is_some()) {
                    self.rescan()?;
                }
            }
        }
        let mut all: Vec<&PyThread> = self.threads.values().collect();
        all.sort_by_key(|t| (t.native_tid, t.pthread_id));
        let which: Vec<u64> = all.iter().map(|t| t.pthread_id).collect();
        let read = self.full(&which, Extras::TaskAndTimers);
        self.failing = read.is_err();
        read
    }

    fn sample_loops(&mut self) -> Option<Result<Vec<ThreadSample>>> {
        if let Err(e) = self.refresh_map() {
            return Some(Err(e));
        }
        // Threads whose loop stopped are read too, so the sample says so (`loop_ended`).
        let mut loops: Vec<&PyThread> = self
            .threads
            .values()
            .filter(|t| {
                t.running_loop.is_some() || t.native_tid.is_some_and(|n| self.ended.contains(&n))
            })
            .collect();
        if loops.is_empty() {
            return None;
        }
        loops.sort_by_key(|t| (t.native_tid, t.pthread_id));
        let mut which: Vec<u64> = loops.iter().map(|t| t.pthread_id).collect();
        let tids: Vec<u32> = loops.iter().filter_map(|t| t.native_tid).collect();
        // A loop waiting for the GIL is blamed on the holder: read the holder's stack too.
        let waiting = tids
            .iter()
            .any(|&tid| self.os_state(tid, false).is_some_and(|o| o.gil_wait));
        if waiting {
            if let Some(h) = self.gil.holder(self.mem()) {
                // A thread started since the last scan: map the threads now (not more often
                // than every 50 ms, should the holder be one no scan finds).
                let recent = self
                    .last_scan
                    .is_some_and(|t| t.elapsed() < Duration::from_millis(50));
                if !recent && !self.threads.values().any(|t| t.tstate == h) {
                    if let Err(e) = self.rescan() {
                        return Some(Err(e));
                    }
                }
                let held_by = self.threads.values().find(|t| t.tstate == h);
                if let Some(t) = held_by.filter(|t| !which.contains(&t.pthread_id)) {
                    which.push(t.pthread_id);
                }
            }
        }
        Some(self.full(&which, Extras::Task))
    }

    fn probe(&mut self) -> Option<Result<Vec<ThreadSample>>> {
        self.probe_loops()
    }

    fn take_dropped(&mut self) -> u64 {
        std::mem::take(&mut self.dropped)
    }

    fn read_at(&mut self) -> Option<Instant> {
        self.read_at.take()
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
        self.gil_range.clone()
    }
}

/// Whether a loop thread waits outside any callback: for the GIL (by the OS), or out of epoll
/// with its innermost frame still in the selector (between two of CPython's timed GIL waits).
fn waits_outside_callback(os: &Option<OsState>, frames: &[Frame]) -> bool {
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

/// Whether the process exists and one of its threads is neither a zombie nor dead (a main
/// thread that called `pthread_exit` leaves a zombie leader beside live threads).
pub fn process_alive(pid: u32) -> bool {
    crate::os::process::alive(pid)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patch_from_sys_version() {
        let v = Version {
            major: 3,
            minor: 9,
            patch: None,
        };
        assert_eq!(patch_of("3.9.18 (main, Oct 2 2023) [GCC]", v), Some(18));
        assert_eq!(patch_of("3.9.0rc1 (x)", v), Some(0));
        assert_eq!(patch_of("3.10.1 (x)", v), None);
        assert_eq!(patch_of("", v), None);
    }
}
