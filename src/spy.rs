//! The boundary with py-spy: reads the live target through py-spy's `PythonSpy` (never pausing
//! it) and our own thread scanner, adds the OS view from `/proc`, and returns our own
//! [`ThreadSample`]s. Nothing past this module sees a py-spy type.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use anyhow::Result;
use py_spy::PythonSpy;

use crate::os::thread_state::{parse_stat_state, ThreadProc};
use crate::remote::{PyThread, ThreadScanner};
use crate::sample::{Frame, ThreadSample};
use crate::sampler::SampleSource;

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
}

impl Spy {
    /// Wrap an attached `PythonSpy`. When our own reader does not understand this interpreter's
    /// layout, loops are still found from their stacks; `notice` tells why.
    pub fn new(spy: PythonSpy) -> (Spy, Option<String>) {
        let (scanner, notice) = match ThreadScanner::new(&spy) {
            Ok(s) => (Some(s), None),
            Err(e) => (None, Some(format!("event-loop slots not readable ({e:#}); finding loops from stacks only"))),
        };
        let spy = Spy { spy, scanner, threads: HashMap::new(), last_scan: None, procs: HashMap::new() };
        (spy, notice)
    }

    /// `3.11.7`
    pub fn python_version(&self) -> String {
        let v = &self.spy.version;
        format!("{}.{}.{}", v.major, v.minor, v.patch)
    }

    fn rescan(&mut self) {
        let Some(scanner) = self.scanner.as_mut() else { return };
        if let Ok(found) = scanner.scan(&self.spy.process) {
            self.threads = found.into_iter().map(|t| (t.pthread_id, t)).collect();
        }
        self.last_scan = Some(Instant::now());
    }

    fn os_state(&mut self, tid: u32) -> Option<crate::sample::OsState> {
        let pid = self.spy.pid as u32;
        let proc_ = self.procs.entry(tid).or_insert_with(|| ThreadProc::open(pid, tid));
        proc_.read()
    }
}

impl SampleSource for Spy {
    fn pid(&self) -> u32 {
        self.spy.pid as u32
    }

    fn sample(&mut self) -> Result<Vec<ThreadSample>> {
        let traces = self.spy.get_stack_traces()?;
        let stale = self.last_scan.is_none_or(|t| t.elapsed() >= RESCAN);
        if stale || traces.iter().any(|t| !self.threads.contains_key(&t.thread_id)) {
            self.rescan();
        }
        let single = traces.len() == 1;
        let mut out = Vec::with_capacity(traces.len());
        for trace in &traces {
            let scanned = self.threads.get(&trace.thread_id);
            let tid = trace
                .os_thread_id
                .map(|t| t as u32)
                .or_else(|| scanned.and_then(|s| s.native_tid))
                .or_else(|| single.then_some(self.spy.pid as u32))
                .unwrap_or(0);
            let event_loop = scanned.and_then(|s| s.running_loop.as_ref()).map(|l| l.type_name.clone());
            let os = if tid != 0 { self.os_state(tid) } else { None };
            out.push(ThreadSample {
                tid,
                name: trace.thread_name.clone(),
                event_loop,
                gil: trace.owns_gil,
                active: trace.active,
                os,
                ready: None,
                frames: trace.frames.iter().map(Frame::from_py_spy).collect(),
            });
        }
        // Forget the /proc handles of threads that are gone.
        if self.procs.len() > out.len() {
            self.procs.retain(|tid, _| out.iter().any(|t| t.tid == *tid));
        }
        Ok(out)
    }

    fn alive(&mut self) -> bool {
        process_alive(self.spy.pid as u32)
    }
}

/// Whether the process exists and is not a zombie.
pub fn process_alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => !matches!(parse_stat_state(&stat), Some('Z' | 'X') | None),
        Err(_) => false,
    }
}
