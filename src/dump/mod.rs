//! `loopspy dump --pid PID [--json] [--native] [--subprocesses] [--all-tasks] [--no-request]`: one read
//! of a live target, never pausing it: every thread with its stack, every event loop with its
//! queues, running task, the request it serves and how long its callback has run, and every
//! task with its await chain, grouped by shape. Like CPython 3.14's `python -m asyncio ps`,
//! for 3.8–3.14 and with loop state.
//!
//! `build` reads the target into the `model` (`probe` times callbacks, `group` folds tasks of
//! the same shape); `render` turns the model into text, and the JSON output is the model itself.

pub mod build;
pub mod group;
pub mod model;
pub mod probe;
pub mod render;

use std::io::Write;

use anyhow::Result;

use crate::acquire::attach::attach;
use crate::acquire::tree::descendants;
use crate::cli::DumpArgs;
use crate::error::UserError;
use crate::os::signals;
use crate::output::target::{Mode, OutputTarget};
use model::{Dump, Processes, TaskDump};

pub use build::{build, Options};

/// Read the target once and write the dump to stdout or `-o FILE` (opened before attaching,
/// written whole; see `output::target`).
pub fn run(args: &DumpArgs) -> Result<()> {
    signals::stop_flag();
    let opts = Options {
        all_tasks: args.all_tasks,
        requests: !args.no_request,
    };
    let path = args.output.clone().unwrap_or_else(|| "-".into());
    let mut out = OutputTarget::resolve(&path)?.open(Mode::Whole)?;
    let mut target = attach(args.pid)?;
    if args.native {
        if let Some(spy) = target.spy.as_mut() {
            spy.enable_native()?;
        }
        eprintln!("loopspy: note: --native stops the target's threads for about a millisecond");
    }
    let dump = build(&mut target, &opts)?;
    let written = if args.subprocesses {
        let all = with_workers(dump, args.pid, &opts);
        interrupted()?;
        if args.json {
            json(&mut out, &all)
        } else {
            render::processes(&all, &mut out)
        }
    } else {
        interrupted()?;
        if args.json {
            json(&mut out, &dump)
        } else {
            render::text(&dump, &mut out)
        }
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

/// A Ctrl-C while reading the target(s) ends the dump with nothing written.
fn interrupted() -> Result<()> {
    if signals::stop_requested() {
        return Err(UserError::Interrupted {
            during: "while reading the process".into(),
        }
        .into());
    }
    Ok(())
}

fn json<T: serde::Serialize>(out: &mut dyn Write, value: &T) -> std::io::Result<()> {
    serde_json::to_writer_pretty(&mut *out, value)
        .map_err(std::io::Error::from)
        .and_then(|()| writeln!(out))
}

/// The root's dump and one per Python descendant (workers), in pid order; descendants that
/// are not Python or exit meanwhile are noted, not fatal.
fn with_workers(root: Dump, pid: u32, opts: &Options) -> Processes {
    let mut processes = vec![root];
    let mut notes = Vec::new();
    let mut children = descendants(pid);
    children.sort_unstable();
    for child in children {
        match attach(child).and_then(|mut t| build(&mut t, opts)) {
            Ok(d) => processes.push(d),
            Err(e) => notes.push(format!("process {child}: {e:#}")),
        }
    }
    Processes { processes, notes }
}

fn hex(addr: u64) -> String {
    format!("0x{addr:x}")
}

/// Tasks by loop thread, running first, then the biggest groups, then by name (`Task-N`
/// numerically), then address.
pub(crate) fn task_order(t: &TaskDump) -> (u32, bool, std::cmp::Reverse<u64>, u64, String, String) {
    let n = t
        .name
        .as_deref()
        .and_then(|n| n.strip_prefix("Task-"))
        .and_then(|n| n.parse().ok())
        .unwrap_or(u64::MAX);
    (
        t.loop_tid.unwrap_or(u32::MAX),
        t.state != "running",
        std::cmp::Reverse(t.count),
        n,
        t.name.clone().unwrap_or_default(),
        t.address.clone(),
    )
}
