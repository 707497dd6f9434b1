//! `loopspy dump --pid PID [--json]`: one read of a live target, never pausing it: every
//! thread with its stack, every event loop with its queues and running task, every task with
//! its await chain. Like CPython 3.14's `python -m asyncio ps`, for 3.8–3.14 and with loop
//! state.
//!
//! `build` reads the target into the `model`; `render` turns the model into text, and the
//! JSON output is the model itself.

pub mod model;
pub mod render;

use std::collections::HashMap;
use std::io::Write;

use anyhow::{Context, Result};

use crate::acquire::attach::{attach, Target};
use crate::acquire::sampler::SampleSource;
use crate::cli::DumpArgs;
use crate::error::UserError;
use crate::os::signals;
use crate::output::target::{Mode, OutputTarget};
use crate::remote::{AwaitTarget, CoroState, TaskInfo, TaskState};
use crate::sample::ThreadSample;
use model::{AwaitFrame, Awaiting, Dump, LoopDump, TaskDump, ThreadDump};

/// Read the target once and write the dump to stdout or `-o FILE` (opened before attaching,
/// written whole; see `output::target`).
pub fn run(args: &DumpArgs) -> Result<()> {
    signals::stop_flag();
    let path = args.output.clone().unwrap_or_else(|| "-".into());
    let mut out = OutputTarget::resolve(&path)?.open(Mode::Whole)?;
    let mut target = attach(args.pid)?;
    if args.native {
        if let Some(spy) = target.spy.as_mut() {
            spy.enable_native()?;
        }
        eprintln!("loopspy: note: --native stops the target's threads for about a millisecond");
    }
    let dump = build(&mut target)?;
    if signals::stop_requested() {
        return Err(UserError::Interrupted {
            during: "while reading the process".into(),
        }
        .into());
    }
    let written = if args.json {
        serde_json::to_writer_pretty(&mut out, &dump)
            .map_err(std::io::Error::from)
            .and_then(|()| writeln!(out))
    } else {
        render::text(&dump, &mut out)
    };
    let name = out.name().to_string();
    let result = match written.and_then(|()| out.flush()) {
        Ok(()) => out.commit(),
        Err(e) => {
            let e = out.take_error().unwrap_or(e);
            out.abandon();
            Err(e)
        }
    };
    match result {
        // A closed pipe (`loopspy dump | head`) is the reader's choice, not a failure.
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        Err(e) => Err(UserError::Output {
            path: name,
            reason: e.to_string(),
        }
        .into()),
        Ok(()) => Ok(()),
    }
}

fn hex(addr: u64) -> String {
    format!("0x{addr:x}")
}

/// Reads the attached target once into a [`Dump`].
pub fn build(target: &mut Target) -> Result<Dump> {
    let spy = target
        .spy
        .as_mut()
        .context("the target was attached without a reader")?;
    spy.prepare();
    let samples = spy
        .sample()
        .with_context(|| format!("cannot read the threads of process {}", target.pid))?;
    let mut notes = Vec::new();
    let mut threads: Vec<ThreadDump> = samples.iter().map(thread_dump).collect();
    threads.sort_by_key(|t| t.tid);
    let by_tid: HashMap<u32, &ThreadSample> = samples.iter().map(|t| (t.tid, t)).collect();
    let (process, pythreads, reader) = spy.asyncio_parts();
    let Some(reader) = reader else {
        notes.push("asyncio's state is not readable in this interpreter: threads only".into());
        return Ok(Dump {
            pid: target.pid,
            python_version: target.python_version.clone(),
            command: target.command.clone(),
            threads,
            loops: Vec::new(),
            tasks: Vec::new(),
            notes,
        });
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
    let addrs = reader.task_addresses(process, &tstates);
    let current: HashMap<u64, u64> = running
        .iter()
        .filter_map(|r| Some((r.2, reader.current_task(process, r.0, r.2)?.address)))
        .collect();
    reader.calibrate_on(process, &addrs, &loop_addrs);
    if !addrs.is_empty() && !reader.task_offsets().1 {
        notes.push("task layout not confirmed on a live task: task names not shown".into());
    }
    let infos: Vec<TaskInfo> = addrs
        .iter()
        .filter_map(|&a| reader.task_info(process, a))
        .collect();
    let loop_tid: HashMap<u64, u32> = running.iter().map(|r| (r.2, r.1)).collect();
    let running_tasks: HashMap<u64, u64> = current.iter().map(|(l, t)| (*t, *l)).collect();
    let loops = running
        .iter()
        .map(|(_, tid, addr, loop_type)| {
            let sample = by_tid.get(tid);
            let pending = infos
                .iter()
                .filter(|t| t.loop_ == *addr && t.state == Some(TaskState::Pending))
                .count() as u64;
            let running = current
                .get(addr)
                .and_then(|t| infos.iter().find(|i| i.address == *t));
            LoopDump {
                tid: *tid,
                thread: sample.and_then(|s| s.name.clone()),
                loop_type: loop_type.clone(),
                address: hex(*addr),
                ready: sample.and_then(|s| s.ready).map(|r| r.len),
                timers: reader.timers(process, *addr),
                tasks: Some(pending),
                running_task: running.and_then(|t| t.name.clone()),
                running_coroutine: running.and_then(|t| t.coroutine.clone()),
            }
        })
        .collect();
    let mut tasks: Vec<TaskDump> = infos
        .iter()
        .map(|t| task_dump(t, running_tasks.contains_key(&t.address), &loop_tid))
        .collect();
    tasks.sort_by_key(task_order);
    Ok(Dump {
        pid: target.pid,
        python_version: target.python_version.clone(),
        command: target.command.clone(),
        threads,
        loops,
        tasks,
        notes,
    })
}

fn thread_dump(t: &ThreadSample) -> ThreadDump {
    let active = match &t.os {
        Some(os) => os.state == 'R' || os.state == 'D',
        None => t.active,
    };
    ThreadDump {
        tid: t.tid,
        name: t.name.clone(),
        gil: t.gil,
        state: if active { "active" } else { "idle" }.into(),
        syscall: t.os.as_ref().and_then(|o| o.syscall.clone()),
        event_loop: t.event_loop.clone(),
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

/// Tasks by loop thread, running first, then by name (`Task-N` numerically), then address.
fn task_order(t: &TaskDump) -> (u32, bool, u64, String, String) {
    let n = t
        .name
        .as_deref()
        .and_then(|n| n.strip_prefix("Task-"))
        .and_then(|n| n.parse().ok())
        .unwrap_or(u64::MAX);
    (
        t.loop_tid.unwrap_or(u32::MAX),
        t.state != "running",
        n,
        t.name.clone().unwrap_or_default(),
        t.address.clone(),
    )
}
