//! Worker processes: with `--subprocesses`, the target's Python descendants are sampled too,
//! including workers started or restarted after loopspy attached (uvicorn/gunicorn workers,
//! `multiprocessing`). Found through `/proc/PID/task/TID/children`, attached like the root, on a
//! thread of its own so attaching never delays the samples of the processes already followed.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::Arc;
use std::time::Duration;

use crate::acquire::attach::attach;
use crate::acquire::sampler::SampleSource;

/// Give up on a child that could not be attached after this many rounds (a process that is
/// not Python, or never finishes starting).
const MAX_ATTEMPTS: u32 = 5;

/// All descendants of `root`, breadth first.
pub fn descendants(root: u32) -> Vec<u32> {
    let mut out = Vec::new();
    let mut queue = vec![root];
    while let Some(pid) = queue.pop() {
        let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
            continue;
        };
        for task in tasks.flatten() {
            let Ok(children) = std::fs::read_to_string(task.path().join("children")) else {
                continue;
            };
            for child in children
                .split_whitespace()
                .filter_map(|c| c.parse::<u32>().ok())
            {
                if !out.contains(&child) && out.len() < 4096 {
                    out.push(child);
                    queue.push(child);
                }
            }
        }
    }
    out
}

/// Finds and attaches the root's Python descendants. Attaching a process takes a while (its
/// binaries are parsed: 100–300 ms here), so it happens on a thread of its own and never
/// stalls the sampler's ticks for the processes already followed: `discover` only collects
/// what that thread has attached since the last call.
pub struct WorkerFinder {
    root: u32,
    /// Whether workers' samples read the request a blocked task serves (`--no-request`).
    read_requests: bool,
    found: Option<Receiver<Found>>,
    stop: Arc<AtomicBool>,
}

/// A worker the finder thread attached.
struct Found {
    pid: u32,
    command: String,
    spy: Box<dyn SampleSource + Send>,
}

/// How often the finder thread looks for new descendants.
const LOOK_EVERY: Duration = Duration::from_secs(1);

impl WorkerFinder {
    pub fn new(root: u32) -> WorkerFinder {
        WorkerFinder {
            root,
            read_requests: true,
            found: None,
            stop: Arc::new(AtomicBool::new(false)),
        }
    }

    /// Read requests in the workers found (off with `--no-request`).
    pub fn reading_requests(mut self, on: bool) -> WorkerFinder {
        self.read_requests = on;
        self
    }

    /// The Python descendants attached since the last call, each with the line that says it
    /// is followed (printed by the sampler once its first sample is read); the first call
    /// starts the finder thread, which skips `known` (the pids already sampled).
    pub fn discover(&mut self, known: &[u32]) -> Vec<(Box<dyn SampleSource + Send>, String)> {
        if self.found.is_none() {
            let (tx, rx) = mpsc::channel();
            let (root, requests, stop) = (self.root, self.read_requests, self.stop.clone());
            let known = known.to_vec();
            let spawned = std::thread::Builder::new()
                .name("loopspy-workers".into())
                .spawn(move || find(root, requests, known, tx, &stop));
            if spawned.is_err() {
                return Vec::new();
            }
            self.found = Some(rx);
        }
        let Some(rx) = self.found.as_ref() else {
            return Vec::new();
        };
        rx.try_iter()
            .map(|f| {
                let line = format!(
                    "loopspy: following worker process {} ({})",
                    f.pid,
                    crate::output::escape::escape(&f.command)
                );
                (f.spy, line)
            })
            .collect()
    }
}

impl Drop for WorkerFinder {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// The finder thread: every `LOOK_EVERY`, attach the descendants not attached yet, until
/// `stop` or the sampler is gone.
fn find(root: u32, requests: bool, known: Vec<u32>, tx: Sender<Found>, stop: &AtomicBool) {
    let mut attached: HashSet<u32> = known.into_iter().collect();
    // Children that could not be attached yet, and how many times that was tried.
    let mut attempts: HashMap<u32, u32> = HashMap::new();
    while !stop.load(Ordering::Relaxed) {
        let found = descendants(root);
        attempts.retain(|pid, _| found.contains(pid));
        attached.retain(|pid| *pid == root || found.contains(pid));
        let new: Vec<u32> = found
            .into_iter()
            .filter(|p| !attached.contains(p))
            .collect();
        for pid in new {
            let tries = attempts.entry(pid).or_insert(0);
            if *tries >= MAX_ATTEMPTS {
                continue;
            }
            *tries += 1;
            if let Ok(mut target) = attach(pid) {
                if let Some(mut spy) = target.spy.take() {
                    spy.set_read_requests(requests);
                    // The attach's own work (mapping the threads, finding the loop and
                    // asyncio's globals, reading every code object once) is done here, not
                    // on the sampler's thread: there it delayed the ticks of every process
                    // sampled, and the worker's first sample came tens of milliseconds after
                    // "following" was said. The sample itself is dropped: the sampler's
                    // first one starts the worker's timeline.
                    spy.prepare();
                    let _ = spy.sample();
                    attempts.remove(&pid);
                    attached.insert(pid);
                    let found = Found {
                        pid,
                        command: target.command,
                        spy: Box::new(spy),
                    };
                    if tx.send(found).is_err() {
                        return;
                    }
                }
            }
        }
        let mut waited = Duration::ZERO;
        while waited < LOOK_EVERY && !stop.load(Ordering::Relaxed) {
            std::thread::sleep(Duration::from_millis(50));
            waited += Duration::from_millis(50);
        }
    }
}
