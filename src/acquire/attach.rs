//! Find or launch the target and attach to it: checks that turn the usual failures into clear
//! errors (no such process, zombie, not Python, permission, unsupported version), then our own
//! reader finds the interpreter (`crate::remote`; loopspy never pauses the target).

use std::process::{Child, Command};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};

use crate::acquire::spy::{process_alive, Spy};
use crate::error::{is_permission, UserError};
use crate::remote::{AttachError, DiscoverError, Interpreter};

/// How long a launched interpreter gets to become readable.
const LAUNCH_TIMEOUT: Duration = Duration::from_secs(10);

/// An attached target.
pub struct Target {
    /// The sampling handle; `top` moves it to its sampling thread.
    pub spy: Option<Spy>,
    pub pid: u32,
    /// The target's command line, for titles and summaries.
    pub command: String,
    pub python_version: String,
    /// Set when loopspy launched the target itself.
    pub child: Option<Child>,
    /// A one-line notice about reduced functionality, if any.
    pub notice: Option<String>,
}

fn comm(pid: u32) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/comm"))
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

fn cmdline(pid: u32) -> String {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|b| {
            b.split(|c| *c == 0)
                .filter(|s| !s.is_empty())
                .map(|s| String::from_utf8_lossy(s).into_owned())
                .collect::<Vec<_>>()
                .join(" ")
        })
        .unwrap_or_default()
}

/// Check the PID before reading it, so the common failures get their own message.
fn precheck(pid: u32) -> Result<()> {
    let stat = match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(s) => s,
        Err(_) => return Err(UserError::NoSuchProcess(pid).into()),
    };
    if matches!(
        crate::os::thread_state::parse_stat_state(&stat),
        Some('Z' | 'X')
    ) {
        return Err(UserError::Zombie(pid).into());
    }
    match std::fs::read_to_string(format!("/proc/{pid}/maps")) {
        Ok(maps) if maps.is_empty() && !process_alive(pid) => Err(UserError::Zombie(pid).into()),
        Ok(maps) if !maps.contains("python") => Err(UserError::NotPython {
            pid,
            comm: comm(pid),
        }
        .into()),
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => {
            Err(UserError::PermissionDenied(pid).into())
        }
        Err(_) => Err(UserError::NoSuchProcess(pid).into()),
    }
}

/// Turn our reader's attach error into one of ours where the cause is known.
fn classify_attach_error(pid: u32, err: AttachError) -> anyhow::Error {
    match err {
        AttachError::Discover(DiscoverError::Unsupported(v)) => UserError::UnsupportedVersion {
            pid,
            version: v.to_string(),
        }
        .into(),
        AttachError::Discover(DiscoverError::NotFound(_)) if process_alive(pid) => {
            UserError::NotPython {
                pid,
                comm: comm(pid),
            }
            .into()
        }
        err => {
            let err = anyhow::Error::new(err);
            if is_permission(&err) {
                return UserError::PermissionDenied(pid).into();
            }
            if !process_alive(pid) {
                return UserError::NoSuchProcess(pid).into();
            }
            err.context(format!(
                "could not read the Python interpreter of process {pid}"
            ))
        }
    }
}

/// Our reader's first look at the interpreter's threads.
fn open(pid: u32) -> Result<Spy, anyhow::Error> {
    let spy = Interpreter::attach(pid as i32).map_err(|e| classify_attach_error(pid, e))?;
    Spy::new(spy).map_err(|e| {
        if !process_alive(pid) {
            return UserError::NoSuchProcess(pid).into();
        }
        e.context(format!(
            "could not read the Python threads of process {pid}"
        ))
    })
}

fn finish(pid: u32, spy: Spy, child: Option<Child>) -> Result<Target> {
    let notice = spy.notice().map(str::to_string);
    Ok(Target {
        python_version: spy.python_version(),
        spy: Some(spy),
        pid,
        command: cmdline(pid),
        child,
        notice,
    })
}

/// Attach to a running process.
pub fn attach(pid: u32) -> Result<Target> {
    precheck(pid)?;
    let spy = open(pid)?;
    finish(pid, spy, None)
}

/// Where a launched command's output goes. Its stdin is never touched.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChildOutput {
    /// loopspy's own stdout and stderr.
    Inherit,
    /// /dev/null (a full-screen view owns the terminal).
    Discard,
    /// stdout to loopspy's stderr: loopspy's stdout carries data (`--episodes -`, `-o -`).
    StdoutToStderr,
}

/// Launch `command` and attach once its interpreter is readable.
/// With `quiet`, the command's stdout and stderr go to /dev/null (a full-screen view owns the
/// terminal); its stdin is never touched.
pub fn launch(command: &[String], quiet: bool) -> Result<Target> {
    let output = if quiet {
        ChildOutput::Discard
    } else {
        ChildOutput::Inherit
    };
    launch_with(command, output)
}

/// [`launch`], saying where the command's output goes.
pub fn launch_with(command: &[String], output: ChildOutput) -> Result<Target> {
    let shown = command.join(" ");
    let (program, args) = command.split_first().context("no command given after --")?;
    let mut cmd = Command::new(program);
    cmd.args(args);
    match output {
        ChildOutput::Inherit => {}
        ChildOutput::Discard => {
            cmd.stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null());
        }
        ChildOutput::StdoutToStderr => {
            cmd.stdout(std::io::stderr());
        }
    }
    let mut child = cmd.spawn().map_err(|e| UserError::LaunchFailed {
        command: shown.clone(),
        reason: e.to_string(),
    })?;
    let pid = child.id();
    let started = Instant::now();
    loop {
        if let Some(status) = child.try_wait()? {
            return Err(UserError::ExitedBeforeAttach {
                command: shown,
                status: status.to_string(),
            }
            .into());
        }
        let err = match open(pid) {
            Ok(spy) => return finish(pid, spy, Some(child)),
            Err(e) => e,
        };
        // A Python this reader does not support will not become one by waiting.
        let unsupported = matches!(
            err.downcast_ref::<UserError>(),
            Some(UserError::UnsupportedVersion { .. })
        );
        if unsupported || started.elapsed() > LAUNCH_TIMEOUT {
            let _ = child.kill();
            let _ = child.wait();
            return Err(err);
        }
        // The interpreter is still starting up: its runtime is not in memory yet.
        std::thread::sleep(Duration::from_millis(10));
    }
}

impl Target {
    /// Stop a target loopspy launched (at the end of the recording) and reap it.
    pub fn stop_child(&mut self) {
        if let Some(child) = self.child.as_mut() {
            if child.try_wait().ok().flatten().is_none() {
                // SIGINT first, like Ctrl-C, so the program can clean up; then insist.
                unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
                let deadline = Instant::now() + Duration::from_secs(2);
                while Instant::now() < deadline && child.try_wait().ok().flatten().is_none() {
                    std::thread::sleep(Duration::from_millis(10));
                }
                let _ = child.kill();
            }
            let _ = child.wait();
        }
    }
}
