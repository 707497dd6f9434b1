//! OS thread ids: `/proc/PID/task` and, for 3.8–3.10 (no `native_thread_id` in the
//! thread state), the `tid` field of glibc's `struct pthread`.
//!
//! On glibc, `pthread_t` is the address of the thread's `struct pthread`, whose `tid`
//! field sits at 0x2d0 on glibc 2.36 x86-64 (cpython-notes §7(a)). That offset is an ABI
//! detail of one glibc build, so we calibrate it against the live target instead of
//! trusting it: the right offset is the one where every thread's i32 is one of the
//! target's OS tids, all distinct, and one of them is the pid (the main thread).

use std::collections::HashSet;

use super::mem::Memory;

use super::mem::{plausible_addr, read_bytes, u32_at};

/// First guess (glibc 2.36 x86-64), then every 4-byte offset up to this bound.
const PREFERRED: u64 = 0x2d0;
const SCAN_LIMIT: u64 = 0x800;

/// The OS thread ids of `pid` (names of `/proc/PID/task/*`); `None` if unreadable.
/// The target's threads, numbered as the target sees them (its own PID namespace: a process
/// in a container calls its main thread 1) and as the host does (`/proc/PID/task/TID`).
/// `native_thread_id` and glibc's `struct pthread` hold the inner number.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TaskIds {
    inner_to_host: std::collections::HashMap<u32, u32>,
    /// The main thread's inner number (the pid inside the target's namespace).
    pub inner_pid: u32,
}

impl TaskIds {
    /// The inner tids.
    pub fn inner(&self) -> HashSet<u32> {
        self.inner_to_host.keys().copied().collect()
    }

    /// The host tid of an inner tid that is currently a thread of the target.
    pub fn host(&self, inner: u32) -> Option<u32> {
        self.inner_to_host.get(&inner).copied()
    }
}

/// The innermost value of a `status` file's `NSpid:` line (the id in the process's own
/// namespace); None when there is no such line.
fn inner_id(status: &str) -> Option<u32> {
    innermost(status, "NSpid:")
}

/// The innermost value of the `status` line starting with `key`.
fn innermost(status: &str, key: &str) -> Option<u32> {
    let line = status.lines().find(|l| l.starts_with(key))?;
    line.split_whitespace().last()?.parse().ok()
}

/// Read the target's threads with both numberings. Outside a PID namespace the two agree and
/// only the task list is read.
pub fn task_ids(pid: i32) -> Option<TaskIds> {
    let host = os_tids(pid)?;
    let own = std::fs::read_to_string(format!("/proc/{pid}/status")).ok();
    // The process's numbers (`NStgid`, `Tgid`), not the thread's: `pid` may be any of its
    // threads (the one reads go through when the main thread has exited).
    let inner_pid = own
        .as_deref()
        .and_then(|s| innermost(s, "NStgid:"))
        .unwrap_or(pid as u32);
    let host_pid = own
        .as_deref()
        .and_then(|s| innermost(s, "Tgid:"))
        .unwrap_or(pid as u32);
    let inner_to_host = if inner_pid == host_pid {
        host.into_iter().map(|t| (t, t)).collect()
    } else {
        host.into_iter()
            .filter_map(|t| {
                let status =
                    std::fs::read_to_string(format!("/proc/{pid}/task/{t}/status")).ok()?;
                Some((inner_id(&status)?, t))
            })
            .collect()
    };
    Some(TaskIds {
        inner_to_host,
        inner_pid,
    })
}

pub fn os_tids(pid: i32) -> Option<HashSet<u32>> {
    let rd = std::fs::read_dir(format!("/proc/{pid}/task")).ok()?;
    Some(
        rd.filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
            .collect(),
    )
}

/// The calibrated `struct pthread` tid offset.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PthreadTid {
    pub offset: Option<u64>,
    /// Confirmed by at least two threads. A single-thread match (the main thread only) could
    /// be a coincidental field equal to the pid, so it is re-checked once more threads exist.
    pub strong: bool,
}

impl PthreadTid {
    /// Whether a (re)calibration with `nthreads` distinct pthreads could improve things.
    pub fn wants_calibration(&self, nthreads: usize) -> bool {
        self.offset.is_none() || (!self.strong && nthreads >= 2)
    }

    /// Calibrates from the given pthread addresses (duplicates and zeros ignored). Keeps the
    /// previous result when nothing fits (e.g. a thread exited between reads).
    pub fn calibrate<M: Memory + ?Sized>(
        &mut self,
        mem: &M,
        pid: i32,
        pthreads: &[u64],
        tids: &HashSet<u32>,
    ) {
        let mut uniq: Vec<u64> = pthreads
            .iter()
            .copied()
            .filter(|&p| plausible_addr(p))
            .collect();
        uniq.sort_unstable();
        uniq.dedup();
        // One copy per thread; every candidate offset is then checked locally.
        let bufs: Vec<Vec<u8>> = uniq
            .iter()
            .filter_map(|&p| {
                read_bytes(mem, p, SCAN_LIMIT as usize)
                    .or_else(|| read_bytes(mem, p, (PREFERRED + 4) as usize))
            })
            .collect();
        if bufs.is_empty() {
            return;
        }
        let candidates = std::iter::once(PREFERRED)
            .chain((0..SCAN_LIMIT).step_by(4).filter(|&o| o != PREFERRED));
        for off in candidates {
            let vals: Option<Vec<u32>> = bufs.iter().map(|b| u32_at(b, off)).collect();
            let Some(vals) = vals else { continue };
            // A thread that exited (a main thread that called `pthread_exit`, whose thread
            // state stays listed) has its `tid` cleared to 0 by the kernel: it proves nothing
            // either way, but it explains a lone live thread without the main one.
            let exited = vals.iter().filter(|v| **v == 0).count() == 1;
            let live: Vec<u32> = vals.into_iter().filter(|v| *v != 0).collect();
            let distinct: HashSet<u32> = live.iter().copied().collect();
            let all_known = !live.is_empty() && live.iter().all(|v| tids.contains(v));
            let has_main = live.contains(&(pid as u32));
            if all_known && distinct.len() == live.len() && (has_main || live.len() >= 2 || exited)
            {
                let strong = live.len() >= 2;
                // Never let a weaker result replace a strong one.
                if strong || !self.strong {
                    *self = PthreadTid {
                        offset: Some(off),
                        strong,
                    };
                }
                return;
            }
        }
    }

    /// The OS tid of the thread whose `pthread_t` is `pthread`, if calibrated, readable and
    /// currently a thread of the target.
    pub fn read<M: Memory + ?Sized>(
        &self,
        mem: &M,
        pthread: u64,
        tids: &HashSet<u32>,
    ) -> Option<u32> {
        let addr = pthread.checked_add(self.offset?)?;
        let v = u32_at(&read_bytes(mem, addr, 4)?, 0)?;
        tids.contains(&v).then_some(v)
    }
}

#[cfg(test)]
mod tests {
    use super::super::mem::fake::FakeMem;
    use super::*;

    fn pthread(fields: &[(u64, u32)]) -> Vec<u8> {
        let mut b = vec![0u8; SCAN_LIMIT as usize];
        for (o, v) in fields {
            b[*o as usize..][..4].copy_from_slice(&v.to_le_bytes());
        }
        b
    }

    #[test]
    fn nspid_innermost_value() {
        assert_eq!(
            super::inner_id("Name:\tpython3\nNSpid:\t11482\t1\nX: 1"),
            Some(1)
        );
        assert_eq!(super::inner_id("NSpid:\t42\n"), Some(42));
        assert_eq!(super::inner_id("Name: x\n"), None);
    }

    #[test]
    fn calibrates_by_content_and_upgrades_to_strong() {
        let mut m = FakeMem::default();
        // Main thread: the pid appears at 0x40 (a decoy) and at the real tid offset 0x2f0.
        m.put(0x10_0000, pthread(&[(0x40, 100), (0x2f0, 100)]));
        let tids: HashSet<u32> = [100, 101].into_iter().collect();
        let mut c = PthreadTid::default();
        c.calibrate(&m, 100, &[0x10_0000], &tids);
        assert_eq!(
            c,
            PthreadTid {
                offset: Some(0x40),
                strong: false
            }
        );
        assert!(c.wants_calibration(2));
        // A second thread disambiguates: the decoy holds something else there.
        m.put(0x20_0000, pthread(&[(0x40, 7), (0x2f0, 101)]));
        c.calibrate(&m, 100, &[0x10_0000, 0x20_0000, 0x20_0000, 0], &tids);
        assert_eq!(
            c,
            PthreadTid {
                offset: Some(0x2f0),
                strong: true
            }
        );
        assert_eq!(c.read(&m, 0x20_0000, &tids), Some(101));
        // A tid that is no longer a thread of the target is not reported.
        assert_eq!(c.read(&m, 0x20_0000, &[100].into_iter().collect()), None);
        // Garbage afterwards does not demote a strong calibration.
        c.calibrate(&m, 100, &[0x30_0000], &tids);
        assert_eq!(c.offset, Some(0x2f0));
    }

    /// A main thread that called `pthread_exit` stays listed with its `tid` cleared to 0:
    /// the live thread beside it still calibrates (weakly).
    #[test]
    fn an_exited_main_thread_does_not_stop_calibration() {
        let mut m = FakeMem::default();
        m.put(0x10_0000, pthread(&[(0x2f0, 0)]));
        m.put(0x20_0000, pthread(&[(0x2f0, 101)]));
        let tids: HashSet<u32> = [100, 101].into_iter().collect();
        let mut c = PthreadTid::default();
        c.calibrate(&m, 100, &[0x10_0000, 0x20_0000], &tids);
        assert_eq!(c.offset, Some(0x2f0));
        assert!(!c.strong);
        assert_eq!(c.read(&m, 0x20_0000, &tids), Some(101));
        assert_eq!(c.read(&m, 0x10_0000, &tids), None);
    }
}
