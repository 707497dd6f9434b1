//! Errors the user can act on, each one line: what is wrong and how to fix it. Everything else is
//! an `anyhow` chain; `main` prints either and maps it to an exit code.

use std::fmt;

/// Hint shared by every permission failure.
pub const PERMISSION_HINT: &str = "run loopspy as root (sudo) or give it CAP_SYS_PTRACE; if that is not enough, lower kernel.yama.ptrace_scope (sysctl kernel.yama.ptrace_scope=1); in a container add --cap-add SYS_PTRACE; or launch the target under loopspy: `loopspy record -- python3 app.py`";

/// A failure with a known cause. Outputs: `Output` cannot be written (the OS's reason);
/// `UnsafeOutput` will not be (a planted symlink, a block device); `SameFile` is the input or
/// another output; `NoReader` is a FIFO nobody opened; `OutputLost` failed while writing
/// (`why`: the OS's reason, then what is lost). `Interrupted`: a stop signal ended a run that
/// writes nothing partial.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UserError {
    NoSuchProcess(u32),
    Zombie(u32),
    NotPython { pid: u32, comm: String },
    UnsupportedVersion { pid: u32, version: String },
    PermissionDenied(u32),
    LaunchFailed { command: String, reason: String },
    ExitedBeforeAttach { command: String, status: String },
    Output { path: String, reason: String },
    UnsafeOutput { path: String, reason: String },
    SameFile { path: String, other: String },
    NoReader { path: String, secs: u64 },
    OutputLost { path: String, why: String },
    Interrupted { during: String },
    Recording { path: String, reason: String },
    KernelClock { reason: String },
}

impl fmt::Display for UserError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            UserError::NoSuchProcess(pid) => write!(f, "no process with PID {pid}: check the PID with `pgrep -af python`"),
            UserError::Zombie(pid) => write!(f, "process {pid} has exited (it is a zombie waiting for its parent): nothing left to sample"),
            UserError::NotPython { pid, comm } => write!(f, "process {pid} ({comm}) is not a Python process: pass the PID of the python interpreter (e.g. a uvicorn/gunicorn worker, `pgrep -af python`)"),
            UserError::UnsupportedVersion { pid, version } => write!(f, "process {pid} runs Python {version}, which loopspy does not support: it reads CPython 3.8 to 3.15"),
            UserError::PermissionDenied(pid) => write!(f, "permission denied reading process {pid}: {PERMISSION_HINT}"),
            UserError::LaunchFailed { command, reason } => write!(f, "could not start `{command}`: {reason}"),
            UserError::ExitedBeforeAttach { command, status } => write!(f, "`{command}` exited ({status}) before loopspy could attach to it"),
            UserError::Output { path, reason } => write!(f, "cannot write {path}: {}: choose a writable path with -o / --episodes", os_reason(reason)),
            UserError::UnsafeOutput { path, reason } => write!(f, "refusing to write {path}: {reason}"),
            UserError::SameFile { path, other } => write!(f, "refusing to write {path}: it is the same file as {other}: give each output its own path, apart from the input"),
            UserError::NoReader { path, secs } => write!(f, "cannot write {path}: it is a FIFO and no process opened it for reading within {secs} s: start the reader first (e.g. `cat {path} &`)"),
            UserError::OutputLost { path, why } => write!(f, "cannot write {path}: {why}"),
            UserError::Interrupted { during } => write!(f, "interrupted (Ctrl-C, SIGTERM or SIGHUP) {during}: nothing was written"),
            UserError::KernelClock { reason } => write!(f, "the kernel clock is not available: {reason}; use --clock auto to fall back to /proc probe ticks, or --clock probe"),
            UserError::Recording { path, reason } => write!(f, "cannot read recording {path}: {reason}: pass a file written by `loopspy record --format raw`"),
        }
    }
}

impl std::error::Error for UserError {}

/// Failures already printed where they happened, one line each (a lost output): `main` adds
/// nothing and exits 1.
#[derive(Debug)]
pub struct AlreadyReported;

impl fmt::Display for AlreadyReported {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "an output was lost (reported above)")
    }
}

impl std::error::Error for AlreadyReported {}

/// Print `loopspy: error: MESSAGE` on stderr; a closed stderr is ignored (never a panic).
/// Messages quote what the target named (its `comm`, paths): escaped for the terminal.
pub fn print(message: &dyn fmt::Display) {
    use std::io::Write;
    let text = message.to_string();
    let _ = writeln!(
        std::io::stderr(),
        "loopspy: error: {}",
        crate::output::escape::escape(&text)
    );
}

/// The OS's reason alone: the `tempfile` crate appends ` at path "<dir>/.<name>.XXXXXX.tmp"`,
/// a temporary file the user never asked for.
pub(crate) fn os_reason(reason: &str) -> &str {
    reason.split(" at path \"").next().unwrap_or(reason)
}

/// The message to print for any error: a known cause as is, else the whole context chain.
pub fn message(err: &anyhow::Error) -> String {
    match err.downcast_ref::<UserError>() {
        Some(e) => e.to_string(),
        None => format!("{err:#}"),
    }
}

/// Whether an error chain contains an OS permission error (EPERM/EACCES).
pub fn is_permission(err: &anyhow::Error) -> bool {
    err.chain().any(|c| {
        let text = c.to_string();
        c.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::PermissionDenied)
            || text.contains("Operation not permitted")
            || text.contains("Permission denied")
            || text.contains("os error 1)")
            || text.contains("os error 13)")
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn output_error_names_the_users_path_only() {
        let e = UserError::Output {
            path: "out/x.svg".into(),
            reason: "No such file or directory (os error 2) at path \"out/.x.svg.Ab12.tmp\"".into(),
        };
        assert_eq!(
            e.to_string(),
            "cannot write out/x.svg: No such file or directory (os error 2): choose a writable path with -o / --episodes"
        );
    }
}
