//! What a run's samples say beyond its kind: did the blocking thread hold the GIL or release
//! it, did it run the garbage collector, and what did its blocked syscalls wait on. Counted per
//! sample by [`Evidence::observe`], read when the run becomes an episode.

use std::collections::HashMap;

use crate::os::fd::FdTarget;
use crate::sample::{Sample, ThreadSample};

/// A share of samples that settles a question: two in three. (A thread in a C call that
/// releases the GIL is still seen holding it between calls and at the episode's edges.)
fn most(part: u32, total: u32) -> bool {
    total > 0 && part * 3 >= total * 2
}

#[derive(Debug, Default)]
pub struct Evidence {
    /// Full samples of the loop thread (not waiting for the GIL) that held it / did not.
    held: u32,
    released: u32,
    /// Full samples of the loop thread, and those in which it ran the collector.
    full: u32,
    gc: u32,
    /// GIL-wait samples in which a holder was seen, and those in which it was collecting.
    holder_seen: u32,
    holder_gc: u32,
    /// What blocked syscalls waited on, by the kind the sample showed: (kind, target) → samples.
    fds: HashMap<(&'static str, FdTarget), u32>,
}

/// Targets kept per run (a run that cycles through many sockets keeps the first ones).
const MAX_FDS: usize = 64;

impl Evidence {
    /// One more sample of the run's thread; `kind` is what its OS state showed.
    pub fn observe(&mut self, sample: &Sample, thread: &ThreadSample, kind: Option<&'static str>) {
        let gil_wait = thread.os.as_ref().is_some_and(|o| o.gil_wait);
        if let (Some(fd), Some(kind)) = (thread.os.as_ref().and_then(|o| o.fd.as_ref()), kind) {
            let key = (kind, fd.clone());
            if self.fds.len() < MAX_FDS || self.fds.contains_key(&key) {
                *self.fds.entry(key).or_insert(0) += 1;
            }
        }
        // Probe ticks read no GIL holder and no GC flag.
        if sample.probe {
            return;
        }
        if gil_wait {
            if let Some(h) = sample.threads.iter().find(|t| t.gil && t.tid != thread.tid) {
                self.holder_seen += 1;
                self.holder_gc += u32::from(h.gc);
            }
            return;
        }
        self.full += 1;
        self.gc += u32::from(thread.gc);
        if thread.gil {
            self.held += 1;
        } else {
            self.released += 1;
        }
    }

    /// Whether the thread held the GIL through the run (`Some(true)`: in two samples in three
    /// or more), released it (`Some(false)`: likewise), or the samples do not settle it.
    pub fn holds_gil(&self) -> Option<bool> {
        let total = self.held + self.released;
        if most(self.held, total) {
            Some(true)
        } else if most(self.released, total) {
            Some(false)
        } else {
            None
        }
    }

    /// The loop thread ran the collector in at least half of its full samples.
    pub fn collector(&self) -> bool {
        self.full > 0 && self.gc * 2 >= self.full
    }

    /// The GIL holder was collecting in at least half of the samples that saw it.
    pub fn holder_collector(&self) -> bool {
        self.holder_seen > 0 && self.holder_gc * 2 >= self.holder_seen
    }

    /// The target most samples of `kind` waited on.
    pub fn fd(&self, kind: &str) -> Option<&FdTarget> {
        self.fds
            .iter()
            .filter(|((k, _), _)| *k == kind)
            .max_by(|a, b| a.1.cmp(b.1).then_with(|| b.0 .1.fd.cmp(&a.0 .1.fd)))
            .map(|((_, t), _)| t)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sample::OsState;

    fn sample(probe: bool, threads: Vec<ThreadSample>) -> Sample {
        Sample {
            wall: 0.0,
            mono: 0.0,
            pid: 1,
            probe,
            threads,
            events: Vec::new(),
        }
    }

    fn thread(tid: u32, gil: bool, gc: bool, syscall: &str) -> ThreadSample {
        ThreadSample {
            tid,
            gil,
            gc,
            os: Some(OsState {
                state: 'R',
                syscall: Some(syscall.into()),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn held_released_or_unsettled() {
        let mut e = Evidence::default();
        assert_eq!(e.holds_gil(), None);
        for i in 0..8 {
            let t = thread(1, i != 0, false, "running");
            e.observe(&sample(false, vec![t.clone()]), &t, Some("cpu"));
        }
        assert_eq!(e.holds_gil(), Some(true), "7 of 8 held");
        let mut e = Evidence::default();
        for i in 0..8 {
            let t = thread(1, i < 5, false, "running");
            e.observe(&sample(false, vec![t.clone()]), &t, Some("cpu"));
        }
        assert_eq!(e.holds_gil(), None, "5 of 8 is not settled");
        let mut e = Evidence::default();
        for i in 0..8 {
            let t = thread(1, i < 4, false, "running");
            e.observe(&sample(false, vec![t.clone()]), &t, Some("cpu"));
            // Probe ticks carry no GIL information and do not count.
            e.observe(&sample(true, vec![t.clone()]), &t, Some("cpu"));
        }
        assert_eq!(e.holds_gil(), None, "half and half");
        let mut e = Evidence::default();
        let t = thread(1, false, false, "write");
        e.observe(&sample(false, vec![t.clone()]), &t, Some("file"));
        assert_eq!(e.holds_gil(), Some(false));
    }

    #[test]
    fn the_collector_and_the_holder() {
        let mut e = Evidence::default();
        let t = thread(1, true, true, "running");
        e.observe(&sample(false, vec![t.clone()]), &t, Some("cpu"));
        assert!(e.collector());
        let mut waiting = thread(1, false, false, "futex");
        waiting.os.as_mut().unwrap().gil_wait = true;
        let holder = thread(2, true, true, "running");
        let mut e = Evidence::default();
        e.observe(
            &sample(false, vec![waiting.clone(), holder]),
            &waiting,
            Some("gil"),
        );
        assert!(e.holder_collector() && !e.collector());
        assert_eq!(
            e.holds_gil(),
            None,
            "the loop thread's own GIL is not evidence here"
        );
    }

    #[test]
    fn the_fd_waited_on_most() {
        let mut e = Evidence::default();
        let stdout: FdTarget = serde_json::from_str(r#"{"fd":1,"type":"pipe"}"#).unwrap();
        let log: FdTarget = serde_json::from_str(r#"{"fd":5,"type":"file"}"#).unwrap();
        for (target, kind, n) in [(&stdout, "pipe", 3), (&log, "file", 1)] {
            let mut t = thread(1, false, false, "write");
            t.os.as_mut().unwrap().fd = Some(target.clone());
            for _ in 0..n {
                e.observe(&sample(true, vec![t.clone()]), &t, Some(kind));
            }
        }
        assert_eq!(e.fd("pipe"), Some(&stdout));
        assert_eq!(e.fd("file"), Some(&log));
        assert_eq!(e.fd("network"), None);
    }
}
