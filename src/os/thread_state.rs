//! Cheap reads of one thread's scheduler state and current syscall. The files are kept open and
//! re-read with `pread` at offset 0 (the kernel regenerates them), about a microsecond each.

use std::fs::File;
use std::os::unix::fs::FileExt;

use crate::sample::OsState;

/// Open `/proc/PID/task/TID/{stat,syscall}` of one thread.
#[derive(Debug)]
pub struct ThreadProc {
    stat: Option<File>,
    syscall: Option<File>,
}

impl ThreadProc {
    pub fn open(pid: u32, tid: u32) -> ThreadProc {
        let dir = format!("/proc/{pid}/task/{tid}");
        ThreadProc {
            stat: File::open(format!("{dir}/stat")).ok(),
            syscall: File::open(format!("{dir}/syscall")).ok(),
        }
    }

    /// Read the state now; `None` when the thread is gone or the files are unreadable.
    pub fn read(&self) -> Option<OsState> {
        let mut buf = [0u8; 512];
        let n = self.stat.as_ref()?.read_at(&mut buf, 0).ok()?;
        let state = parse_stat_state(std::str::from_utf8(&buf[..n]).ok()?)?;
        let syscall = self.syscall.as_ref().and_then(|f| {
            let n = f.read_at(&mut buf, 0).ok()?;
            parse_syscall(std::str::from_utf8(&buf[..n]).ok()?)
        });
        Some(OsState { state, syscall })
    }
}

/// The state letter of a `stat` line: the field after the `(comm)`, which may contain spaces.
pub fn parse_stat_state(stat: &str) -> Option<char> {
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.trim_start().chars().next()
}

/// `running`, or the name of the syscall the thread is blocked in. A thread that is blocked
/// outside any syscall reads `-1`, which we report as `None`.
pub fn parse_syscall(text: &str) -> Option<String> {
    let first = text.split_whitespace().next()?;
    if first == "running" {
        return Some("running".to_string());
    }
    let nr: i64 = first.parse().ok()?;
    (nr >= 0).then(|| super::syscalls::name(nr))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_state_after_comm_with_spaces() {
        assert_eq!(parse_stat_state("123 (my (odd) name) S 1 2 3"), Some('S'));
        assert_eq!(parse_stat_state("garbage"), None);
    }

    #[test]
    fn syscall_lines() {
        assert_eq!(parse_syscall("running\n").as_deref(), Some("running"));
        assert_eq!(parse_syscall("-1 0x7ffc 0x7f00\n"), None);
        assert!(parse_syscall("202 0x1 0x2 0x3 0x4 0x5 0x6 0x7ffc 0x7f00\n").is_some());
        assert_eq!(parse_syscall(""), None);
    }

    #[test]
    fn reads_own_thread() {
        let me = std::process::id();
        let st = ThreadProc::open(me, me).read().expect("own thread readable");
        assert!(st.state.is_ascii_uppercase());
    }
}
