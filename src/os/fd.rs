//! What a blocked thread waits on: the file descriptor of its syscall, resolved through
//! `/proc/PID/fd/N` into a pipe, a socket (with its protocol, addresses and whether its peer is
//! one of the process's own listening sockets), a file or a terminal.
//!
//! The fd is the first argument of `read`/`write`/`send*`/`recv*`/`connect`/`fsync`... in
//! `/proc/PID/task/TID/syscall`; for `poll`/`ppoll` it is in the `pollfd` array the first
//! argument points to, read from `/proc/PID/mem` (a read, never a stop); for `openat` (which has
//! no fd yet) the path the second argument points to is looked up instead. Socket addresses come
//! from the target's own network namespace: `/proc/PID/net/{tcp,tcp6,udp,udp6,unix}`.
//!
//! Parsing is pure and unit-tested; [`FdResolver`] does the reads and caches per link target, so
//! a thread blocked for a long time in one call costs one `readlink` per sample.

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::os::net::{
    listener_accepts, parse_inet_table, show, socket_inodes, unix_socket_path, InetEntry,
    TCP_LISTEN,
};

/// What kind of object a file descriptor is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FdType {
    /// An anonymous pipe or a named FIFO.
    Pipe,
    Socket,
    /// A regular file or a block device.
    File,
    /// A terminal (`/dev/pts/N`, `/dev/ttyN`, `/dev/console`).
    Tty,
    /// Anything else (eventfd, a character device, a newer type in a recording).
    #[serde(other)]
    Other,
}

/// The object a blocked syscall waits on, as seen when the sample was taken.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct FdTarget {
    /// The file descriptor number; `None` for an `openat` that has no fd yet.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fd: Option<i32>,
    #[serde(rename = "type")]
    pub kind: FdType,
    /// The file's, FIFO's, terminal's or unix socket's path, when it has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// `tcp`, `tcp6`, `udp`, `udp6` or `unix` for a socket.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protocol: Option<String>,
    /// Local `address:port` of an internet socket (`[v6]:port` for IPv6).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub local: Option<String>,
    /// Remote `address:port` of a connected internet socket.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peer: Option<String>,
    /// The peer is one of the target's own listening sockets: the process is calling itself.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub peer_is_self: bool,
}

impl FdTarget {
    fn new(kind: FdType) -> FdTarget {
        FdTarget {
            fd: None,
            kind,
            path: None,
            protocol: None,
            local: None,
            peer: None,
            peer_is_self: false,
        }
    }

    /// A short human description: `pipe (fd 1)`, `tcp 127.0.0.1:5432`, `/var/log/app.log`.
    pub fn describe(&self) -> String {
        let what = match (self.kind, &self.peer, &self.path, &self.protocol) {
            (FdType::Socket, Some(peer), _, Some(p)) => format!("{p} {peer}"),
            (FdType::Socket, None, Some(path), _) => format!("unix socket {path}"),
            (FdType::Socket, None, None, Some(p)) => format!("{p} socket"),
            (FdType::Socket, ..) => "socket".to_string(),
            (FdType::Pipe, _, Some(path), _) => format!("FIFO {path}"),
            (FdType::Pipe, ..) => "pipe".to_string(),
            (FdType::Tty, _, Some(path), _) => format!("terminal {path}"),
            (FdType::Tty, ..) => "terminal".to_string(),
            (_, _, Some(path), _) => path.clone(),
            (FdType::File, ..) => "file".to_string(),
            (FdType::Other, ..) => "fd".to_string(),
        };
        match self.fd {
            Some(fd) => format!("{what} (fd {fd})"),
            None => what,
        }
    }
}

/// Where the fd of a blocked syscall is found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FdArg {
    /// The first argument is the fd.
    First,
    /// The first argument points to a `struct pollfd` array, the second is its length.
    PollFds,
    /// The second argument points to a path (no fd yet).
    OpenAt,
}

/// Where the syscall `name` keeps the fd it waits on, if it waits on one.
pub fn fd_arg(name: &str) -> Option<FdArg> {
    Some(match name {
        "read" | "write" | "pread64" | "pwrite64" | "readv" | "writev" | "sendto" | "recvfrom"
        | "sendmsg" | "recvmsg" | "recvmmsg" | "sendmmsg" | "connect" | "accept" | "accept4"
        | "fsync" | "fdatasync" | "sync_file_range" | "flock" | "sendfile" | "ftruncate"
        | "fallocate" => FdArg::First,
        "poll" | "ppoll" => FdArg::PollFds,
        "openat" => FdArg::OpenAt,
        _ => return None,
    })
}

/// Classify the target of a `/proc/PID/fd/N` link. `mode` is the file type (`S_IFMT` bits) of
/// what a path link points to (a FIFO is a pipe, a character device may be a terminal).
/// Returns the target and, for a socket, its inode.
pub fn classify_link(link: &str, mode: Option<u32>) -> (FdTarget, Option<u64>) {
    let inode = |prefix: &str| {
        link.strip_prefix(prefix)
            .and_then(|r| r.strip_suffix(']'))
            .and_then(|n| n.parse::<u64>().ok())
    };
    if inode("pipe:[").is_some() {
        return (FdTarget::new(FdType::Pipe), None);
    }
    if let Some(ino) = inode("socket:[") {
        return (FdTarget::new(FdType::Socket), Some(ino));
    }
    if !link.starts_with('/') {
        // anon_inode:[eventfd], anon_inode:[timerfd], ...
        let mut t = FdTarget::new(FdType::Other);
        t.path = Some(link.to_string());
        return (t, None);
    }
    (classify_path(link, mode), None)
}

/// Classify a path by the type of what is there (`mode`'s `S_IFMT` bits, when they could be
/// read): a FIFO is a pipe, a terminal device a tty, anything else a file.
pub fn classify_path(path: &str, mode: Option<u32>) -> FdTarget {
    let path = path.strip_suffix(" (deleted)").unwrap_or(path);
    let is_tty_path =
        path.starts_with("/dev/pts/") || path.starts_with("/dev/tty") || path == "/dev/console";
    let kind = match mode {
        Some(libc::S_IFIFO) => FdType::Pipe,
        Some(libc::S_IFCHR) if is_tty_path => FdType::Tty,
        Some(libc::S_IFCHR) => FdType::Other,
        Some(libc::S_IFSOCK) => FdType::Socket,
        None if is_tty_path => FdType::Tty,
        _ => FdType::File,
    };
    let mut t = FdTarget::new(kind);
    t.path = Some(path.to_string());
    if kind == FdType::Socket {
        t.protocol = Some("unix".into());
    }
    t
}

/// The first fd of a `struct pollfd` array (`{int fd; short events; short revents}`, 8 bytes
/// each) that is not negative (poll ignores negative fds).
pub fn first_poll_fd(bytes: &[u8]) -> Option<i32> {
    bytes
        .chunks_exact(8)
        .map(|c| i32::from_ne_bytes([c[0], c[1], c[2], c[3]]))
        .find(|fd| *fd >= 0)
}

/// How many `pollfd`s are read; a blocked Python socket call polls one.
const MAX_POLL_FDS: u64 = 8;
/// Cached targets kept before the cache is emptied (bounded memory on long recordings).
const MAX_CACHED: usize = 512;
/// The `dirfd` value meaning the current directory.
const AT_FDCWD: i64 = -100;
/// The network tables are parsed at most this often: a busy server's tables are megabytes, and
/// a program that blocks on a new connection per request would otherwise parse them per sample.
const TABLES_EVERY: Duration = Duration::from_millis(200);
/// The process's own socket inodes are listed at most this often.
const OWN_EVERY: Duration = Duration::from_secs(1);

/// The file type bits (`S_IFMT`) of what `path` names, without making a network filesystem
/// revalidate it (`AT_STATX_DONT_SYNC`): a dead NFS server must not hang the sampler.
fn file_mode(path: &str) -> Option<u32> {
    let c = std::ffi::CString::new(path).ok()?;
    // SAFETY: `c` is a valid NUL-terminated path and `buf` a properly sized out-parameter.
    let mut buf: libc::statx = unsafe { std::mem::zeroed() };
    let rc = unsafe {
        libc::statx(
            libc::AT_FDCWD,
            c.as_ptr(),
            libc::AT_STATX_DONT_SYNC,
            libc::STATX_TYPE,
            &mut buf,
        )
    };
    (rc == 0).then_some(u32::from(buf.stx_mode) & libc::S_IFMT)
}

/// The process's network tables, as last parsed.
#[derive(Debug, Default)]
struct Tables {
    at: Option<Instant>,
    inet: Vec<(&'static str, Vec<InetEntry>)>,
    unix: String,
}

/// Resolves the fds of one process's blocked syscalls, caching what does not change.
#[derive(Debug)]
pub struct FdResolver {
    pid: u32,
    mem: Option<File>,
    /// link text (`socket:[123]`, a path) → what it resolved to, without the fd number.
    cache: HashMap<String, FdTarget>,
    /// The last syscall line resolved and its answer: a thread blocked in one call is looked up
    /// once.
    last: Option<(String, Vec<u64>, Option<FdTarget>)>,
    tables: Tables,
    /// The inodes of the process's own sockets, and when they were listed.
    own: Option<(Instant, HashSet<u64>)>,
}

impl FdResolver {
    pub fn new(pid: u32) -> FdResolver {
        FdResolver {
            pid,
            mem: None,
            cache: HashMap::new(),
            last: None,
            tables: Tables::default(),
            own: None,
        }
    }

    /// What the syscall `name` with arguments `args` waits on, or `None` when it waits on no
    /// fd or the fd cannot be resolved (closed meanwhile, unreadable).
    pub fn resolve(&mut self, name: &str, args: &[u64]) -> Option<FdTarget> {
        let how = fd_arg(name)?;
        if let Some((n, a, hit)) = &self.last {
            if n == name && a.as_slice() == args {
                return hit.clone();
            }
        }
        let found = match how {
            FdArg::First => args
                .first()
                .and_then(|a| i32::try_from(*a as i64).ok())
                .filter(|fd| *fd >= 0)
                .and_then(|fd| self.resolve_fd(fd)),
            FdArg::PollFds => {
                let (ptr, n) = (*args.first()?, *args.get(1)?);
                let n = n.min(MAX_POLL_FDS) as usize;
                let bytes = self.read_mem(ptr, 8 * n)?;
                first_poll_fd(&bytes).and_then(|fd| self.resolve_fd(fd))
            }
            FdArg::OpenAt => {
                let (dirfd, ptr) = (*args.first()? as i64 as i32 as i64, *args.get(1)?);
                self.resolve_open(dirfd, ptr)
            }
        };
        self.last = Some((name.to_string(), args.to_vec(), found.clone()));
        found
    }

    /// Forget the last syscall resolved: the thread left it, and the same fd number may name
    /// another object next time.
    pub fn forget_last(&mut self) {
        self.last = None;
    }

    fn read_mem(&mut self, addr: u64, len: usize) -> Option<Vec<u8>> {
        if self.mem.is_none() {
            self.mem = File::open(format!("/proc/{}/mem", self.pid)).ok();
        }
        let mut buf = vec![0u8; len];
        let n = self.mem.as_ref()?.read_at(&mut buf, addr).ok()?;
        buf.truncate(n);
        Some(buf)
    }

    fn resolve_fd(&mut self, fd: i32) -> Option<FdTarget> {
        let proc_fd = format!("/proc/{}/fd/{fd}", self.pid);
        let link = std::fs::read_link(&proc_fd).ok()?;
        let link = link.to_string_lossy().into_owned();
        let mut t = match self.cache.get(&link) {
            Some(t) => t.clone(),
            None => {
                // For paths, the type of what the link points to (FIFO, character device),
                // through the magic link, in the target's own mount namespace.
                let mode = link.starts_with('/').then(|| file_mode(&proc_fd)).flatten();
                let (mut t, inode) = classify_link(&link, mode);
                let complete = match inode {
                    Some(inode) => self.describe_socket(inode, &mut t),
                    None => true,
                };
                if complete {
                    if self.cache.len() >= MAX_CACHED {
                        self.cache.clear();
                    }
                    self.cache.insert(link, t.clone());
                }
                t
            }
        };
        t.fd = Some(fd);
        Some(t)
    }

    /// The network tables, parsed again when the last parse is older than [`TABLES_EVERY`];
    /// `false` when they were parsed recently and may predate a new socket.
    fn refresh_tables(&mut self) -> bool {
        if self.tables.at.is_some_and(|at| at.elapsed() < TABLES_EVERY) {
            return false;
        }
        let read = |table: &str| {
            std::fs::read_to_string(format!("/proc/{}/net/{table}", self.pid)).unwrap_or_default()
        };
        self.tables.inet = ["tcp", "tcp6", "udp", "udp6"]
            .into_iter()
            .map(|proto| (proto, parse_inet_table(&read(proto))))
            .collect();
        self.tables.unix = read("unix");
        self.tables.at = Some(Instant::now());
        true
    }

    /// Fill in a socket's protocol and addresses from the process's network namespace. `false`
    /// when the socket was not found in tables parsed too recently to be reread (try again).
    fn describe_socket(&mut self, inode: u64, t: &mut FdTarget) -> bool {
        if self.find_socket(inode, t) {
            return true;
        }
        self.refresh_tables() && self.find_socket(inode, t)
    }

    fn find_socket(&mut self, inode: u64, t: &mut FdTarget) -> bool {
        let found = self.tables.inet.iter().find_map(|(proto, entries)| {
            entries
                .iter()
                .find(|e| e.inode == inode)
                .map(|e| (*proto, e.clone()))
        });
        if let Some((proto, e)) = found {
            t.protocol = Some(proto.to_string());
            t.local = Some(show(&e.local));
            let connected = !e.remote.0.is_unspecified() || e.remote.1 != 0;
            if connected {
                t.peer = Some(show(&e.remote));
                t.peer_is_self = proto.starts_with("tcp") && self.peer_is_own_listener(&e.remote);
            }
            return true;
        }
        if let Some(path) = unix_socket_path(&self.tables.unix, inode) {
            t.protocol = Some("unix".to_string());
            t.path = path;
            return true;
        }
        false
    }

    /// Whether a TCP listener of this process accepts connections to `peer`: a LISTEN entry
    /// for it whose socket inode is among the process's own fds.
    fn peer_is_own_listener(&mut self, peer: &(std::net::IpAddr, u16)) -> bool {
        let listeners: Vec<u64> = self
            .tables
            .inet
            .iter()
            .filter(|(proto, _)| proto.starts_with("tcp"))
            .flat_map(|(_, entries)| entries)
            .filter(|e| e.state == TCP_LISTEN && listener_accepts(&e.local, peer))
            .map(|e| e.inode)
            .collect();
        if listeners.is_empty() {
            return false;
        }
        if self
            .own
            .as_ref()
            .is_none_or(|(at, _)| at.elapsed() >= OWN_EVERY)
        {
            let links: Vec<String> = std::fs::read_dir(format!("/proc/{}/fd", self.pid))
                .into_iter()
                .flatten()
                .flatten()
                .filter_map(|e| std::fs::read_link(e.path()).ok())
                .map(|l| l.to_string_lossy().into_owned())
                .collect();
            self.own = Some((
                Instant::now(),
                socket_inodes(links.iter().map(String::as_str)),
            ));
        }
        let own = &self.own.as_ref().expect("listed above").1;
        listeners.iter().any(|i| own.contains(i))
    }

    /// The path an `openat` is opening (relative to the target's root or its working
    /// directory), classified by what is there: opening a FIFO blocks until the other end opens.
    fn resolve_open(&mut self, dirfd: i64, ptr: u64) -> Option<FdTarget> {
        let bytes = self.read_mem(ptr, 256)?;
        let end = bytes.iter().position(|b| *b == 0)?;
        let path = String::from_utf8(bytes[..end].to_vec()).ok()?;
        let seen = if path.starts_with('/') {
            format!("/proc/{}/root{path}", self.pid)
        } else if dirfd == AT_FDCWD {
            format!("/proc/{}/cwd/{path}", self.pid)
        } else {
            format!("/proc/{}/fd/{dirfd}/{path}", self.pid)
        };
        Some(classify_path(&path, file_mode(&seen)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};

    #[test]
    fn links_are_classified() {
        let (t, ino) = classify_link("pipe:[1234]", None);
        assert_eq!((t.kind, ino), (FdType::Pipe, None));
        let (t, ino) = classify_link("socket:[99]", None);
        assert_eq!((t.kind, ino), (FdType::Socket, Some(99)));
        let (t, _) = classify_link("/dev/pts/3", None);
        assert_eq!(t.kind, FdType::Tty);
        let (t, _) = classify_link("/srv/app/data.db", None);
        assert_eq!(
            (t.kind, t.path.as_deref()),
            (FdType::File, Some("/srv/app/data.db"))
        );
        let (t, _) = classify_link("/tmp/x.log (deleted)", None);
        assert_eq!(t.path.as_deref(), Some("/tmp/x.log"));
        let (t, _) = classify_link("anon_inode:[eventfd]", None);
        assert_eq!(t.kind, FdType::Other);
        // Malformed inode numbers are not sockets.
        let (t, ino) = classify_link("socket:[x]", None);
        assert_eq!((t.kind, ino), (FdType::Other, None));
    }

    #[test]
    fn fifo_and_devices_by_file_type() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("f");
        let status = std::process::Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .unwrap();
        assert!(status.success());
        let mode = file_mode(fifo.to_str().unwrap());
        assert_eq!(mode, Some(libc::S_IFIFO));
        let (t, _) = classify_link(fifo.to_str().unwrap(), mode);
        assert_eq!(t.kind, FdType::Pipe);
        assert_eq!(t.describe(), format!("FIFO {}", fifo.display()));
        let null = file_mode("/dev/null");
        assert_eq!(classify_link("/dev/null", null).0.kind, FdType::Other);
        assert_eq!(file_mode("/nonexistent/x"), None);
        assert_eq!(file_mode("nul\0inside"), None);
    }

    #[test]
    fn poll_fds() {
        let mut b = Vec::new();
        for fd in [-1i32, 7, 9] {
            b.extend_from_slice(&fd.to_ne_bytes());
            b.extend_from_slice(&[1, 0, 0, 0]);
        }
        assert_eq!(first_poll_fd(&b), Some(7));
        assert_eq!(first_poll_fd(&b[..8]), None);
        assert_eq!(first_poll_fd(&b[..5]), None);
    }

    #[test]
    fn syscalls_with_fds() {
        assert_eq!(fd_arg("write"), Some(FdArg::First));
        assert_eq!(fd_arg("recvfrom"), Some(FdArg::First));
        assert_eq!(fd_arg("poll"), Some(FdArg::PollFds));
        assert_eq!(fd_arg("openat"), Some(FdArg::OpenAt));
        assert_eq!(fd_arg("epoll_wait"), None);
        assert_eq!(fd_arg("futex"), None);
    }

    #[test]
    fn recorded_targets_round_trip() {
        let mut t = FdTarget::new(FdType::Socket);
        t.fd = Some(5);
        t.protocol = Some("tcp".into());
        t.peer = Some("127.0.0.1:8080".into());
        t.peer_is_self = true;
        let json = serde_json::to_string(&t).unwrap();
        assert_eq!(
            json,
            r#"{"fd":5,"type":"socket","protocol":"tcp","peer":"127.0.0.1:8080","peer_is_self":true}"#
        );
        assert_eq!(serde_json::from_str::<FdTarget>(&json).unwrap(), t);
        // A type written by a newer loopspy still reads.
        let t: FdTarget = serde_json::from_str(r#"{"type":"io_uring"}"#).unwrap();
        assert_eq!(t.kind, FdType::Other);
        assert_eq!(t.describe(), "fd");
    }

    /// Our own process: a pipe, a file, a connected TCP socket to our own listener, and a
    /// `poll` on it, all resolved through /proc like a target's.
    #[test]
    fn resolves_own_fds() {
        use std::os::fd::AsRawFd;
        let me = std::process::id();
        let mut r = FdResolver::new(me);

        let (reader, mut writer) = std::io::pipe().unwrap();
        let t = r
            .resolve("write", &[writer.as_raw_fd() as u64, 0, 1])
            .unwrap();
        assert_eq!((t.kind, t.fd), (FdType::Pipe, Some(writer.as_raw_fd())));
        writer.write_all(b"x").unwrap();
        drop((reader, writer));

        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("data.db");
        let mut f = std::fs::File::create(&path).unwrap();
        f.write_all(b"x").unwrap();
        let t = r.resolve("fsync", &[f.as_raw_fd() as u64]).unwrap();
        assert_eq!(t.kind, FdType::File);
        assert_eq!(t.path.as_deref(), Some(path.to_str().unwrap()));

        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let mut client = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        let (mut served, _) = listener.accept().unwrap();
        let t = r
            .resolve("recvfrom", &[client.as_raw_fd() as u64, 0, 100])
            .unwrap();
        assert_eq!(t.kind, FdType::Socket);
        assert_eq!(t.protocol.as_deref(), Some("tcp"));
        assert_eq!(t.peer, Some(format!("127.0.0.1:{port}")));
        assert!(t.peer_is_self, "{t:?}");
        assert_eq!(
            t.describe(),
            format!("tcp 127.0.0.1:{port} (fd {})", client.as_raw_fd())
        );
        // The accepted end's peer is the client's ephemeral port, which nobody listens on.
        let t = r.resolve("read", &[served.as_raw_fd() as u64]).unwrap();
        assert!(!t.peer_is_self, "{t:?}");
        client.write_all(b"ping").unwrap();
        let mut buf = [0u8; 4];
        served.read_exact(&mut buf).unwrap();

        // poll(2) on the client: the fd is found in the pollfd array in our memory.
        let pollfd: [i32; 2] = [client.as_raw_fd(), 1];
        let t = r
            .resolve("poll", &[pollfd.as_ptr() as u64, 1, 150])
            .unwrap();
        assert_eq!(t.fd, Some(client.as_raw_fd()));
        assert!(t.peer_is_self);

        // A closed fd resolves to nothing; a syscall without fd too.
        assert_eq!(r.resolve("read", &[100_000]), None);
        assert_eq!(r.resolve("futex", &[0]), None);
    }

    #[test]
    fn openat_on_a_fifo_is_a_pipe() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("late");
        assert!(std::process::Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .unwrap()
            .success());
        let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
        let mut r = FdResolver::new(std::process::id());
        let t = r
            .resolve("openat", &[AT_FDCWD as u64, c.as_ptr() as u64, 0])
            .unwrap();
        assert_eq!(t.kind, FdType::Pipe);
        assert_eq!(t.fd, None);
        assert_eq!(t.path.as_deref(), fifo.to_str());
    }
}
