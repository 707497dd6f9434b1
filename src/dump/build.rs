//! Reads a live target into the dump model: threads and their stacks, running loops with their
//! queues, running task, request and callback time, and every task (grouped, see `group`).

use std::collections::HashMap;

use anyhow::{Context, Result};

use super::group::Grouper;
use super::model::{AwaitFrame, Awaiting, Dump, LoopDump, TaskDump, ThreadDump};
use super::probe::{blocked_loops, monotonic_now};
use super::{hex, task_order};
use crate::acquire::attach::Target;
use crate::acquire::sampler::SampleSource;
use crate::remote::{AwaitTarget, CoroState, TaskInfo, TaskState, MAX_TASKS};
use crate::sample::ThreadSample;

/// What to read.
#[derive(Debug, Clone, Copy)]
pub struct Options {
    /// Every task on its own line instead of groups.
    pub all_tasks: bool,
    /// Read the request each running task serves.
    pub requests: bool,
}

impl Default for Options {
    fn default() -> Options {
        Options {
            all_tasks: false,
            requests: true,
        }
    }
}

/// How many times a dump reads a process's threads before giving up on it.
const READ_ATTEMPTS: usize = 5;

/// Every thread of the source, read again when a read fails: a read torn by the running target
/// (its frames changed under it) yields nothing, and a dump is one look, so one unlucky read
/// must not cost a process its threads. The last error after [`READ_ATTEMPTS`] reads.
fn read_threads(source: &mut dyn SampleSource) -> Result<Vec<ThreadSample>> {
    let mut last = None;
    for _ in 0..READ_ATTEMPTS {
        match source.sample() {
            Ok(threads) => return Ok(threads),
            Err(e) => last = Some(e),
        }
    }
    Err(last.expect("READ_ATTEMPTS is at least 1"))
}

/// Reads the attached target once into a [`Dump`].
pub fn build(target: &mut Target, opts: &Options) -> Result<Dump> {
    let spy = target
        .spy
        .as_mut()
        .context("the target was attached without a reader")?;
    spy.prepare();
    // First, while nothing else is read: which loops stay inside one callback.
    let blocked = blocked_loops(spy);
    let samples = read_threads(spy)
        .with_context(|| format!("cannot read the threads of process {}", target.pid))?;
    let now = monotonic_now();
    let mut notes = Vec::new();
    let mut threads: Vec<ThreadDump> = samples
        .iter()
        .map(|t| thread_dump(t, blocked.get(&t.tid).copied()))
        .collect();
    // The main thread (tid == pid) first, then by tid: after the kernel's pid counter wraps,
    // a later thread can have a lower tid than the main one.
    threads.sort_by_key(|t| (t.tid != target.pid, t.tid));
    let by_tid: HashMap<u32, &ThreadSample> = samples.iter().map(|t| (t.tid, t)).collect();
    let (process, pythreads, reader) = spy.asyncio_parts();
    let mut dump = Dump {
        pid: target.pid,
        python_version: target.python_version.clone(),
        command: target.command.clone(),
        threads,
        loops: Vec::new(),
        tasks: Vec::new(),
        task_count: 0,
        notes: Vec::new(),
    };
    let Some(reader) = reader else {
        notes.push("asyncio's state is not readable in this interpreter: threads only".into());
        dump.notes = notes;
        return Ok(dump);
    };
    // (thread state, tid, loop address, loop type) of every running loop.
    let mut running: Vec<(u64, u32, u64, String)> = pythreads
        .values()
        .filter_map(|t| {
            let l = t.running_loop.as_ref()?;
            Some((t.tstate, t.native_tid?, l.address, l.type_name.clone()))
        })
        .collect();
    running.sort_by_key(|r| r.1);
    let tstates: Vec<u64> = pythreads.values().map(|t| t.tstate).collect();
    let loop_addrs: Vec<u64> = running.iter().map(|r| r.2).collect();
    let (addrs, cut) = reader.task_addresses(process, &tstates);
    if cut {
        notes.push(format!(
            "the target has more than {MAX_TASKS} tasks: only the first {MAX_TASKS} were read"
        ));
    }
    // Loop address → (running task address, its request, seconds since the last poll).
    let mut current = HashMap::new();
    for (tstate, tid, addr, _) in &running {
        let Some(task) = reader.current_task(process, *tstate, *addr) else {
            continue;
        };
        let request = opts
            .requests
            .then(|| reader.request(process, *tstate, task.address, None))
            .flatten();
        let since_poll = blocked
            .contains_key(tid)
            .then(|| Some(now? - reader.last_poll(process, *tstate)?))
            .flatten()
            .filter(|s| (0.0..86_400.0).contains(s));
        current.insert(*addr, (task.address, request, since_poll));
    }
    reader.calibrate_on(process, &addrs, &loop_addrs);
    if !addrs.is_empty() && !reader.task_offsets().1 {
        notes.push("task layout not confirmed on a live task: task names not shown".into());
    }
    let loop_tid: HashMap<u64, u32> = running.iter().map(|r| (r.2, r.1)).collect();
    let running_tasks: HashMap<u64, u64> = current.iter().map(|(l, t)| (t.0, *l)).collect();
    // Tasks are read one at a time and folded into groups as they come.
    let mut groups = Grouper::new(opts.all_tasks);
    let mut pending: HashMap<u64, u64> = HashMap::new();
    let mut running_info: HashMap<u64, (Option<String>, Option<String>)> = HashMap::new();
    for &a in &addrs {
        let Some(info) = reader.task_info(process, a) else {
            continue;
        };
        if info.state == Some(TaskState::Pending) {
            *pending.entry(info.loop_).or_insert(0) += 1;
        }
        let is_running = running_tasks.contains_key(&info.address);
        if is_running {
            running_info.insert(info.address, (info.name.clone(), info.coroutine.clone()));
        }
        groups.add(task_dump(&info, is_running, &loop_tid));
    }
    dump.task_count = groups.total;
    dump.loops = running
        .iter()
        .map(|(_, tid, addr, loop_type)| {
            let sample = by_tid.get(tid);
            let now = current.get(addr);
            let task = now.and_then(|c| running_info.get(&c.0));
            LoopDump {
                tid: *tid,
                thread: sample.and_then(|s| s.name.clone()),
                loop_type: loop_type.clone(),
                address: hex(*addr),
                ready: sample.and_then(|s| s.ready).map(|r| r.len),
                timers: reader.timers(process, *addr),
                tasks: Some(pending.get(addr).copied().unwrap_or(0)),
                running_task: task.and_then(|t| t.0.clone()),
                running_coroutine: task.and_then(|t| t.1.clone()),
                request: now.and_then(|c| c.1.clone()),
                callback_ms_at_least: blocked.get(tid).copied(),
                since_poll_ms: now.and_then(|c| c.2).map(|s| s * 1000.0),
            }
        })
        .collect();
    let mut tasks = groups.finish();
    tasks.sort_by_key(task_order);
    dump.tasks = tasks;
    dump.notes = notes;
    Ok(dump)
}

fn thread_dump(t: &ThreadSample, blocked_ms: Option<f64>) -> ThreadDump {
    let active = match &t.os {
        Some(os) => os.state == 'R' || os.state == 'D',
        None => t.active,
    };
    let state = match (blocked_ms, active) {
        (Some(_), _) => "blocked",
        (None, true) => "active",
        (None, false) => "idle",
    };
    ThreadDump {
        tid: t.tid,
        name: t.name.clone(),
        gil: t.gil,
        state: state.into(),
        syscall: t.os.as_ref().and_then(|o| o.syscall.clone()),
        event_loop: t.event_loop.clone(),
        blocked_ms,
        stack: t.frames.clone(),
    }
}

fn task_dump(t: &TaskInfo, running: bool, loop_tid: &HashMap<u64, u32>) -> TaskDump {
    let state = match (running, t.state) {
        (true, _) => "running",
        (_, Some(TaskState::Pending)) => "pending",
        (_, Some(TaskState::Cancelled)) => "cancelled",
        (_, Some(TaskState::Finished)) => "finished",
        (_, None) => "unknown",
    };
    TaskDump {
        count: 1,
        address: hex(t.address),
        name: t.name.clone(),
        state: state.into(),
        coroutine: t.coroutine.clone(),
        loop_tid: loop_tid.get(&t.loop_).copied(),
        await_chain: t
            .chain
            .iter()
            .map(|l| AwaitFrame {
                function: l.function.clone(),
                file: l.file.clone(),
                line: l.line,
                state: match l.state {
                    CoroState::Created => "created",
                    CoroState::Suspended => "suspended",
                    CoroState::Running => "running",
                }
                .into(),
            })
            .collect(),
        awaiting: t.awaiting.as_ref().map(|a| match a {
            AwaitTarget::Task { address, name } => Awaiting::Task {
                name: name.clone(),
                address: hex(*address),
            },
            AwaitTarget::Future(n) => Awaiting::Future {
                type_name: n.clone(),
            },
            AwaitTarget::Other(n) => Awaiting::Other {
                type_name: n.clone(),
            },
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Fails its first `torn` reads, as a read racing the target's frames does.
    struct Torn {
        torn: usize,
        reads: usize,
    }

    impl SampleSource for Torn {
        fn pid(&self) -> u32 {
            1
        }
        fn sample(&mut self) -> Result<Vec<ThreadSample>> {
            self.reads += 1;
            if self.reads <= self.torn {
                anyhow::bail!("inconsistent read (frame code)");
            }
            Ok(Vec::new())
        }
        fn alive(&mut self) -> bool {
            true
        }
    }

    #[test]
    fn a_torn_read_is_read_again() {
        let mut src = Torn { torn: 2, reads: 0 };
        assert!(read_threads(&mut src).is_ok());
        assert_eq!(src.reads, 3);
    }

    #[test]
    fn a_read_that_keeps_failing_gives_its_error() {
        let mut src = Torn {
            torn: usize::MAX,
            reads: 0,
        };
        let e = read_threads(&mut src).unwrap_err();
        assert!(format!("{e:#}").contains("inconsistent read"), "{e:#}");
        assert_eq!(src.reads, READ_ATTEMPTS);
    }
}
