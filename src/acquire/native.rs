//! `--native`: Python stacks with the C frames between them (a C extension, the regex engine, the
//! GC), through py-spy's unwinder (its `unwind` feature, libunwind).
//!
//! Unwinding C frames needs each thread's registers and a stack that does not move while it is
//! walked, so py-spy stops the target's threads (ptrace) for each read: this is the one place
//! loopspy pauses its target, only when asked, and it says so on stderr. Reads are as rare as
//! the sampler's cost spacing makes them (a stopped-thread read takes about a millisecond, so
//! at most one every ~20 ms). py-spy's `PythonSpy` with `unwind` is not `Send`: it lives on a
//! thread of its own and answers requests over channels.

use std::collections::HashMap;
use std::sync::mpsc::{channel, Receiver, Sender};
use std::time::Duration;

use anyhow::{anyhow, Result};

use crate::sample::Frame;

/// What one read gives: OS thread id (as the target numbers it) → frames, innermost first.
pub type NativeFrames = HashMap<u32, Vec<Frame>>;

/// How long a read may take before it counts as failed.
const READ_TIMEOUT: Duration = Duration::from_secs(2);

/// The unwinder's thread, and the channels to ask it for stacks.
pub struct NativeStacks {
    ask: Sender<()>,
    answers: Receiver<Result<NativeFrames>>,
}

impl NativeStacks {
    /// Starts the unwinder for process `pid`. Errors when py-spy cannot read it (a version it
    /// does not support, no permission).
    pub fn start(pid: u32) -> Result<NativeStacks> {
        let (ask, asks) = channel::<()>();
        let (answer, answers) = channel::<Result<NativeFrames>>();
        let (ready_tx, ready) = channel::<Result<()>>();
        std::thread::Builder::new()
            .name("native-unwind".into())
            .spawn(move || {
                let config = py_spy::Config {
                    native: true,
                    blocking: py_spy::config::LockingStrategy::Lock,
                    lineno: py_spy::config::LineNo::LastInstruction,
                    ..py_spy::Config::default()
                };
                let mut spy = match py_spy::PythonSpy::new(pid as py_spy::Pid, &config) {
                    Ok(s) => {
                        let _ = ready_tx.send(Ok(()));
                        s
                    }
                    Err(e) => {
                        let _ = ready_tx.send(Err(e));
                        return;
                    }
                };
                while asks.recv().is_ok() {
                    let read = spy.get_stack_traces().map(|traces| {
                        traces
                            .iter()
                            .filter_map(|t| {
                                let tid = t.os_thread_id? as u32;
                                Some((tid, t.frames.iter().map(frame).collect()))
                            })
                            .collect()
                    });
                    if answer.send(read).is_err() {
                        return;
                    }
                }
            })?;
        ready
            .recv_timeout(Duration::from_secs(10))
            .map_err(|_| anyhow!("py-spy's native unwinder did not start"))??;
        Ok(NativeStacks { ask, answers })
    }

    /// One read of every thread's merged stack; the target's threads are stopped meanwhile.
    pub fn read(&self) -> Result<NativeFrames> {
        self.ask
            .send(())
            .map_err(|_| anyhow!("the native unwinder stopped"))?;
        self.answers
            .recv_timeout(READ_TIMEOUT)
            .map_err(|_| anyhow!("the native unwinder did not answer"))?
    }
}

/// Our frame from py-spy's; a C frame's file is its shared object when no source is known.
fn frame(f: &py_spy::Frame) -> Frame {
    let file = if f.filename.is_empty() {
        f.module.clone().unwrap_or_default()
    } else {
        f.filename.clone()
    };
    Frame {
        function: f.name.clone(),
        file,
        line: u32::try_from(f.line).unwrap_or(0),
    }
}
