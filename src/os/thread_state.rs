//! Cheap reads of one thread's scheduler state and current syscall. The files are kept open and
//! re-read with `pread` at offset 0 (the kernel regenerates them), about a microsecond each.

use std::fs::File;
use std::os::unix::fs::FileExt;

use crate::os::fd::FdResolver;
use crate::sample::OsState;

/// Open `/proc/PID/task/TID/{stat,syscall}` of one thread.
#[derive(Debug)]
pub struct ThreadProc {
    stat: Option<File>,
    syscall: Option<File>,
    /// The scheduler state at the last `stat` read.
    last_state: Option<char>,
    /// Resolves the fd a blocked syscall waits on.
    fds: FdResolver,
}

impl ThreadProc {
    pub fn open(pid: u32, tid: u32) -> ThreadProc {
        let dir = format!("/proc/{pid}/task/{tid}");
        ThreadProc {
            stat: File::open(format!("{dir}/stat")).ok(),
            syscall: File::open(format!("{dir}/syscall")).ok(),
            last_state: None,
            fds: FdResolver::new(pid),
        }
    }

    /// Read the state now; `None` when the thread is gone or the files are unreadable.
    /// `gil` is the address range of the interpreter's GIL: a futex wait inside it is a wait
    /// for the GIL, anything else a lock. Without `with_stat` only the syscall is read (the
    /// cheapest file, for fast ticks): the scheduler state is then inferred (`running` is R)
    /// or carried over, and CPU times are not reported. A syscall that waits on an fd has it
    /// resolved (`OsState::fd`): one `readlink` when the thread entered that call, none while
    /// it stays in it.
    pub fn read(&mut self, gil: Option<std::ops::Range<u64>>, with_stat: bool) -> Option<OsState> {
        let mut buf = [0u8; 512];
        let mut cpu_ticks = None;
        if with_stat || self.last_state.is_none() {
            let n = self.stat.as_ref()?.read_at(&mut buf, 0).ok()?;
            let stat = std::str::from_utf8(&buf[..n]).ok()?;
            self.last_state = Some(parse_stat_state(stat)?);
            cpu_ticks = parse_stat_cpu(stat);
        }
        let call = match &self.syscall {
            Some(f) => {
                let n = f.read_at(&mut buf, 0).ok()?;
                parse_syscall(std::str::from_utf8(&buf[..n]).ok()?)
            }
            None => None,
        };
        let gil_wait = matches!((&call, gil), (Some((name, args)), Some(range))
            if name == "futex" && args.first().is_some_and(|a| range.contains(a)));
        let state = match &call {
            Some((name, _)) if name == "running" => 'R',
            _ => self.last_state.unwrap_or('S'),
        };
        let fd = match &call {
            Some((name, args)) => self.fds.resolve(name, args),
            None => None,
        };
        if fd.is_none() {
            self.fds.forget_last();
        }
        Some(OsState {
            state,
            syscall: call.map(|(name, _)| name),
            gil_wait,
            cpu_ticks,
            fd,
        })
    }
}

/// The state letter of a `stat` line: the field after the `(comm)`, which may contain spaces.
pub fn parse_stat_state(stat: &str) -> Option<char> {
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.trim_start().chars().next()
}

/// User and system CPU ticks of a `stat` line (fields 14 and 15, counted from the pid).
pub fn parse_stat_cpu(stat: &str) -> Option<(u64, u64)> {
    let mut rest = stat[stat.rfind(')')? + 1..].split_whitespace();
    // After the comm: state is field 3, so utime (14) is the 12th from here.
    let utime = rest.nth(11)?.parse().ok()?;
    let stime = rest.next()?.parse().ok()?;
    Some((utime, stime))
}

/// `running`, or the name of the syscall the thread is blocked in with its arguments (up to
/// the six the kernel prints; fewer when a field is unreadable). A thread that is blocked
/// outside any syscall reads `-1`, which we report as `None`.
pub fn parse_syscall(text: &str) -> Option<(String, Vec<u64>)> {
    let mut fields = text.split_whitespace();
    let first = fields.next()?;
    if first == "running" {
        return Some(("running".to_string(), Vec::new()));
    }
    let nr: i64 = first.parse().ok()?;
    let args = fields
        .take(6)
        .map_while(|a| u64::from_str_radix(a.trim_start_matches("0x"), 16).ok())
        .collect();
    (nr >= 0).then(|| (super::syscalls::name(nr), args))
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
    fn stat_cpu_ticks() {
        let line = "42 (a b) S 1 42 42 0 -1 4194560 100 0 0 0 17 5 0 0 20 0 1 0 100 0 0";
        assert_eq!(parse_stat_cpu(line), Some((17, 5)));
        assert_eq!(parse_stat_cpu("42 (x) S 1"), None);
    }

    #[test]
    fn syscall_lines() {
        assert_eq!(
            parse_syscall("running\n"),
            Some(("running".into(), Vec::new()))
        );
        assert_eq!(parse_syscall("-1 0x7ffc 0x7f00\n"), None);
        let (_, args) = parse_syscall("202 0x7f12 0x2 0x3 0x4 0x5 0x6 0x7ffc 0x7f00\n").unwrap();
        assert_eq!(
            args,
            vec![0x7f12, 2, 3, 4, 5, 6],
            "the stack and pc are not arguments"
        );
        assert_eq!(parse_syscall(""), None);
    }

    /// A thread of ours blocked reading a pipe: its OsState says `read` on a pipe.
    #[test]
    fn a_thread_blocked_on_a_pipe() {
        use std::io::{Read, Write};
        let (mut reader, mut writer) = std::io::pipe().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        let blocked = std::thread::spawn(move || {
            tx.send(unsafe { libc::gettid() } as u32).unwrap();
            let mut b = [0u8; 1];
            reader.read_exact(&mut b).unwrap();
        });
        let tid = rx.recv().unwrap();
        let mut proc_ = ThreadProc::open(std::process::id(), tid);
        // Until the thread has entered read(2); bounded, not timed.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        let st = loop {
            let st = proc_.read(None, true).expect("thread readable");
            if st.syscall.as_deref() == Some("read") || std::time::Instant::now() > deadline {
                break st;
            }
            std::thread::yield_now();
        };
        writer.write_all(b"x").unwrap();
        blocked.join().unwrap();
        assert_eq!(st.syscall.as_deref(), Some("read"), "{st:?}");
        let fd = st.fd.expect("the fd is resolved");
        assert_eq!(fd.kind, crate::os::fd::FdType::Pipe);
    }

    #[test]
    fn reads_own_thread() {
        let me = std::process::id();
        let st = ThreadProc::open(me, me)
            .read(None, true)
            .expect("own thread readable");
        assert!(st.state.is_ascii_uppercase());
    }
}
