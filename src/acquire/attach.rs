//! Find or launch the target and attach to it: checks that turn the usual failures into clear
//! errors (no such process, zombie, not Python, permission, unsupported version), then our own
//! reader finds the interpreter (`crate::remote`; loopspy never pauses the target).

use std::process::{Child, Command};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};

use crate::acquire::sampler::Reattached;
use crate::acquire::spy::{process_alive, Spy};
use crate::error::{is_permission, UserError};
use crate::os::process::live_thread;
use crate::os::signals;
use crate::output::escape::escape;
use crate::remote::{AttachError, DiscoverError, Interpreter};

/// How long a launched interpreter gets to become readable.
const LAUNCH_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a launched target gets to end after SIGINT before it is killed: short enough that
/// loopspy itself ends within a second of a signal.
const STOP_GRACE: Duration = Duration::from_millis(700);

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
    // A zombie leader shows an empty command line: read it through a live thread.
    let reader = live_thread(pid).unwrap_or(pid);
    std::fs::read(format!("/proc/{reader}/cmdline"))
        .map(|b| {
            b.split(|c| *c == 0)
                .filter(|s| !s.is_empty())
                .map(|s| String::from_utf8_lossy(s).into_owned())
                .collect::<Vec<_>>()
                .join(" ")
        })
        .unwrap_or_default()
}

/// Check the PID before reading it, so the common failures get their own message. Returns
/// the thread to read the process through: the leader, or a live thread when the main thread
/// has exited (`pthread_exit`) and the others run on.
fn precheck(pid: u32) -> Result<u32> {
    if std::fs::metadata(format!("/proc/{pid}/stat")).is_err() {
        return Err(UserError::NoSuchProcess(pid).into());
    }
    let Some(reader) = live_thread(pid) else {
        return Err(UserError::Zombie(pid).into());
    };
    match std::fs::read_to_string(format!("/proc/{reader}/maps")) {
        Ok(maps) if maps.is_empty() && !process_alive(pid) => Err(UserError::Zombie(pid).into()),
        Ok(maps) if !maps.contains("python") => Err(UserError::NotPython {
            pid,
            comm: comm(pid),
        }
        .into()),
        Ok(_) => Ok(reader),
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
        err => classify_error(pid, anyhow::Error::new(err)),
    }
}

/// A read error that is not one of ours yet: permission, a process gone, else context.
fn classify_error(pid: u32, err: anyhow::Error) -> anyhow::Error {
    if err.downcast_ref::<UserError>().is_some() {
        return err;
    }
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

/// Our reader's first look at the interpreter of process `pid`, read through its thread
/// `reader` (the leader, or a live thread when the main thread has exited).
fn open(pid: u32, reader: u32) -> Result<Spy> {
    let interp = Interpreter::attach(reader as i32).map_err(|e| classify_attach_error(pid, e))?;
    let spy = Spy::new(interp).map_err(|e| {
        if !process_alive(pid) {
            return UserError::NoSuchProcess(pid).into();
        }
        e.context(format!(
            "could not read the Python threads of process {pid}"
        ))
    })?;
    Ok(spy.with_process_id(pid))
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
    let reader = precheck(pid)?;
    let spy = open(pid, reader)?;
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

/// What one try at attaching to a process that may still be starting up gave.
enum Attempt {
    Attached(Box<Target>),
    /// Its interpreter is not readable yet, and why.
    NotYet(anyhow::Error),
}

/// One try at attaching to `pid`. An error when it will never work: gone, a zombie, not
/// Python (as far as can be told now), not ours to read, an unsupported version.
fn try_attach(pid: u32) -> Result<Attempt> {
    let reader = precheck(pid)?;
    let err = match open(pid, reader) {
        Ok(spy) => return finish(pid, spy, None).map(|t| Attempt::Attached(Box::new(t))),
        Err(e) => e,
    };
    // A Python this reader does not support will not become one by waiting, nor will a
    // process that is not ours to read.
    if matches!(
        err.downcast_ref::<UserError>(),
        Some(UserError::UnsupportedVersion { .. } | UserError::PermissionDenied(_))
    ) {
        return Err(err);
    }
    Ok(Attempt::NotYet(err))
}

/// Whether an attach error may go away while a process starts up (a shell or a shim that
/// will exec the interpreter, a process that just exited and will be seen as such).
fn may_change(err: &anyhow::Error) -> bool {
    matches!(
        err.downcast_ref::<UserError>(),
        Some(UserError::NotPython { .. } | UserError::Zombie(_) | UserError::NoSuchProcess(_))
    )
}

/// Attach afresh to `pid` after it exec'd a new program or lost its main thread (called by
/// the sampler every 50 ms until it gives up). `Ok(None)` while the new program is not
/// readable yet; an error saying why when it never will be.
pub fn reattach(pid: u32) -> Result<Option<Reattached>> {
    match try_attach(pid) {
        Ok(Attempt::Attached(mut t)) => {
            let spy = t.spy.take().context("attached without a reader")?;
            Ok(Some(Reattached {
                source: Box::new(spy),
                what: format!("`{}` (Python {})", t.command, t.python_version),
            }))
        }
        Ok(Attempt::NotYet(_)) => Ok(None),
        Err(e) => match e.downcast_ref::<UserError>() {
            Some(UserError::NotPython { comm, .. }) => {
                anyhow::bail!("it now runs `{comm}`, which is not Python")
            }
            _ => Err(e),
        },
    }
}

/// Whether `pid` runs a Python interpreter, by its mappings (the same test as `precheck`).
fn runs_python(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/maps")).is_ok_and(|m| m.contains("python"))
}

/// The first Python process below `pid` (a wrapper such as `sh -c`, `env` or `uv run` starts
/// the interpreter as its child).
fn python_descendant(pid: u32) -> Option<u32> {
    crate::acquire::tree::descendants(pid)
        .into_iter()
        .find(|&p| runs_python(p))
}

/// Launch `command` and attach once its interpreter is readable. When the command is not
/// Python itself (`sh -c 'python3 app.py; ...'`), its first Python descendant is followed,
/// and stderr says so. Gives up after 10 s, or when a stop (Ctrl-C) is asked for.
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
    // A second Ctrl-C exits at once: the command must not be left behind, running or a zombie.
    signals::kill_on_forced_exit(pid);
    let started = Instant::now();
    let mut last_error: Option<anyhow::Error> = None;
    loop {
        if let Some(status) = child.try_wait()? {
            signals::reaped(pid);
            return Err(UserError::ExitedBeforeAttach {
                command: shown,
                status: status.to_string(),
            }
            .into());
        }
        let interrupted = signals::stop_requested();
        if interrupted || started.elapsed() > LAUNCH_TIMEOUT {
            let _ = child.kill();
            let _ = child.wait();
            signals::reaped(pid);
            if interrupted {
                return Err(UserError::Interrupted {
                    during: format!("while waiting for `{shown}` to start Python"),
                }
                .into());
            }
            return Err(match last_error {
                Some(e) => classify_error(pid, e),
                None => classify_error(pid, anyhow::anyhow!("no Python interpreter found")),
            });
        }
        let reading = if runs_python(pid) {
            Some(pid)
        } else {
            python_descendant(pid)
        };
        if let Some(p) = reading {
            match try_attach(p) {
                Ok(Attempt::Attached(mut target)) => {
                    if p != pid {
                        signals::kill_on_forced_exit(p);
                        crate::output::escape::print_err(&format!(
                            "loopspy: `{}` is not Python; following its Python child process {p} (`{}`)",
                            escape(&shown),
                            escape(&target.command)
                        ));
                    }
                    target.child = Some(child);
                    return Ok(*target);
                }
                Ok(Attempt::NotYet(e)) => last_error = Some(e),
                // The process it ran may still exec the interpreter (a shell, a shim).
                Err(e) if may_change(&e) => last_error = Some(e),
                Err(e) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    signals::reaped(pid);
                    return Err(e);
                }
            }
        } else if std::fs::metadata(format!("/proc/{pid}/maps")).is_ok() {
            last_error = Some(
                UserError::NotPython {
                    pid,
                    comm: comm(pid),
                }
                .into(),
            );
        }
        // The interpreter is still starting up: its runtime is not in memory yet.
        std::thread::sleep(Duration::from_millis(10));
    }
}

impl Target {
    /// Stop a target loopspy launched (at the end of the recording) and reap it: SIGINT, like
    /// Ctrl-C, so the program can clean up; SIGKILL after `STOP_GRACE`. When loopspy follows
    /// a Python child of the command it launched (a wrapper), that child is stopped too.
    pub fn stop_child(&mut self) {
        let followed = self.pid;
        if let Some(child) = self.child.as_mut() {
            let also = (followed != child.id()).then_some(followed as i32);
            if child.try_wait().ok().flatten().is_none() {
                for p in also.into_iter().chain([child.id() as i32]) {
                    unsafe { libc::kill(p, libc::SIGINT) };
                }
                let deadline = Instant::now() + STOP_GRACE;
                while Instant::now() < deadline && child.try_wait().ok().flatten().is_none() {
                    std::thread::sleep(Duration::from_millis(10));
                }
                let _ = child.kill();
            }
            if let Some(p) = also.filter(|&p| process_alive(p as u32)) {
                unsafe { libc::kill(p, libc::SIGKILL) };
            }
            let _ = child.wait();
            signals::reaped(child.id());
            signals::reaped(followed);
        }
    }
}
