//! Worker processes: with `--subprocesses`, the target's Python descendants are sampled too,
//! including workers started or restarted after loopspy attached (uvicorn/gunicorn workers,
//! `multiprocessing`). Found through `/proc/PID/task/TID/children`, attached like the root.

use std::collections::HashMap;

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

/// Finds and attaches the root's Python descendants.
pub struct WorkerFinder {
    root: u32,
    /// Children that could not be attached yet, and how many times that was tried.
    attempts: HashMap<u32, u32>,
    /// Whether workers' samples read the request a blocked task serves (`--no-request`).
    read_requests: bool,
}

impl WorkerFinder {
    pub fn new(root: u32) -> WorkerFinder {
        WorkerFinder {
            root,
            attempts: HashMap::new(),
            read_requests: true,
        }
    }

    /// Read requests in the workers found (off with `--no-request`).
    pub fn reading_requests(mut self, on: bool) -> WorkerFinder {
        self.read_requests = on;
        self
    }

    /// New Python descendants, attached; `known` are the pids already sampled.
    pub fn discover(&mut self, known: &[u32]) -> Vec<Box<dyn SampleSource + Send>> {
        let found = descendants(self.root);
        self.attempts.retain(|pid, _| found.contains(pid));
        let mut out: Vec<Box<dyn SampleSource + Send>> = Vec::new();
        for pid in found.into_iter().filter(|p| !known.contains(p)) {
            let tries = self.attempts.entry(pid).or_insert(0);
            if *tries >= MAX_ATTEMPTS {
                continue;
            }
            *tries += 1;
            if let Ok(mut target) = attach(pid) {
                if let Some(mut spy) = target.spy.take() {
                    spy.set_read_requests(self.read_requests);
                    crate::output::escape::print_err(&format!(
                        "loopspy: following worker process {pid} ({})",
                        crate::output::escape::escape(&target.command)
                    ));
                    self.attempts.remove(&pid);
                    out.push(Box::new(spy));
                }
            }
        }
        out
    }
}
