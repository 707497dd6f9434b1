//! Kernel timestamps of one thread's system calls, from perf tracepoints: `perf_event_open` on
//! the `syscalls:sys_{enter,exit}_*` tracepoints of one thread of another process, read through
//! a shared mmap ring buffer. No eBPF and no polling: the kernel writes a record, with a
//! CLOCK_MONOTONIC timestamp in nanoseconds, each time the thread enters or leaves one of the
//! traced calls.
//!
//! Layouts are from the kernel's `include/uapi/linux/perf_event.h` (stable ABI; the struct sizes
//! are versioned by `size`): `struct perf_event_attr` (we use `PERF_ATTR_SIZE_VER5`, 112 bytes,
//! kernel 4.1+ is needed for `use_clockid`), `struct perf_event_mmap_page` (the ring buffer's
//! control page: `data_head` at 1024, `data_tail` at 1032) and the `PERF_RECORD_SAMPLE` body
//! for our `sample_type` (IDENTIFIER, TID, TIME and, for the futex entry, the epoll_wait and
//! epoll_pwait entries and the epoll returns, RAW). Tracepoint ids and the field offsets
//! (`uaddr`, `op`, `timeout`, `ret`) come from tracefs (`events/syscalls/*/{id,format}`).
//!
//! Everything here fails softly: any refusal (no tracefs, EACCES/EPERM from the kernel, a
//! seccomp filter) is an error with a one-line reason, and the caller falls back to /proc.

use std::ffi::CString;
use std::fs;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU64, Ordering};

use anyhow::{anyhow, bail, Context, Result};

/// `PERF_TYPE_TRACEPOINT`.
const PERF_TYPE_TRACEPOINT: u32 = 2;
/// `PERF_ATTR_SIZE_VER5`: the attr up to `aux_watermark` and its padding.
const ATTR_SIZE: u32 = 112;
/// `enum perf_event_sample_format` bits.
const SAMPLE_TID: u64 = 1 << 1;
const SAMPLE_TIME: u64 = 1 << 2;
const SAMPLE_RAW: u64 = 1 << 10;
const SAMPLE_IDENTIFIER: u64 = 1 << 16;
/// Bits of the attr's flag word (offset 40), in declaration order in the header.
const FLAG_DISABLED: u64 = 1 << 0;
const FLAG_EXCLUDE_HV: u64 = 1 << 6;
const FLAG_USE_CLOCKID: u64 = 1 << 25;
/// `_IO('$', n)` / `_IOW` / `_IOR` of `PERF_EVENT_IOC_*` (same on x86-64 and aarch64).
const IOC_ENABLE: libc::c_ulong = 0x2400;
const IOC_DISABLE: libc::c_ulong = 0x2401;
const IOC_SET_OUTPUT: libc::c_ulong = 0x2405;
const IOC_SET_FILTER: libc::c_ulong = 0x4008_2406;
const IOC_ID: libc::c_ulong = 0x8008_2407;
/// `PERF_FLAG_FD_CLOEXEC`.
const PERF_FLAG_FD_CLOEXEC: libc::c_ulong = 1 << 3;
/// `PERF_RECORD_LOST` and `PERF_RECORD_SAMPLE` (`enum perf_event_type`).
const RECORD_LOST: u32 = 2;
const RECORD_SAMPLE: u32 = 9;
/// `perf_event_mmap_page.data_head` / `data_tail`.
const DATA_HEAD: usize = 1024;
const DATA_TAIL: usize = 1032;
/// `FUTEX_CMD_MASK` and the wait commands (`FUTEX_WAIT`, `FUTEX_WAIT_BITSET`).
const FUTEX_CMD_MASK: u64 = !(128 | 256);
const FUTEX_WAIT: u64 = 0;
const FUTEX_WAIT_BITSET: u64 = 9;

/// `struct perf_event_attr`, the first `PERF_ATTR_SIZE_VER5` bytes, field by field.
#[repr(C)]
#[derive(Default)]
struct Attr {
    type_: u32,
    size: u32,
    config: u64,
    sample_period: u64,
    sample_type: u64,
    read_format: u64,
    flags: u64,
    /// `wakeup_events` (or `wakeup_watermark` with the watermark flag).
    wakeup_events: u32,
    bp_type: u32,
    config1: u64,
    config2: u64,
    branch_sample_type: u64,
    sample_regs_user: u64,
    sample_stack_user: u32,
    clockid: i32,
    sample_regs_intr: u64,
    aux_watermark: u32,
    sample_max_stack: u16,
    reserved_2: u16,
}

const _: () = assert!(std::mem::size_of::<Attr>() == ATTR_SIZE as usize);

/// What one traced call did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Call {
    /// Entered `epoll_wait`, `epoll_pwait` or `epoll_pwait2` to wait, with no timeout or one
    /// not in the record: the loop goes idle.
    EpollEnter,
    /// Entered `epoll_wait` or `epoll_pwait` to wait at most `timeout_ms` (> 0) milliseconds:
    /// the loop goes idle until an fd is ready or that timeout (its next timer) expires.
    EpollWait { timeout_ms: u32 },
    /// Entered `epoll_wait` or `epoll_pwait` with a zero timeout: the call returns at once, so
    /// the loop has work waiting (asyncio polls so when its ready queue is not empty or a timer
    /// is already due). It does not go idle, whatever the call then takes.
    EpollPoll,
    /// Returned from one: the loop has work.
    EpollExit,
    /// Returned 0 from a wait whose return value is in the record: its timeout expired (no fd
    /// was ready), so the thread was woken at its entry plus the timeout, whenever it ran again.
    EpollTimedOut,
    /// Started a futex wait on `uaddr` (other futex commands are not reported).
    FutexWait { uaddr: u64 },
    /// A futex call returned.
    FutexExit,
}

impl Call {
    /// An epoll return, whatever it returned.
    pub fn is_epoll_exit(self) -> bool {
        matches!(self, Call::EpollExit | Call::EpollTimedOut)
    }

    /// An epoll entry that waits (not a poll), with or without a known timeout.
    pub fn is_epoll_wait(self) -> bool {
        matches!(self, Call::EpollEnter | Call::EpollWait { .. })
    }
}

/// One record of the ring buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Record {
    pub tid: u32,
    /// CLOCK_MONOTONIC, nanoseconds.
    pub time_ns: u64,
    pub call: Call,
}

/// Which tracepoint an event was opened on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Point {
    /// An epoll entry whose timeout is not in its record (`epoll_pwait2` takes a pointer).
    EpollEnter,
    /// An `epoll_wait` or `epoll_pwait` entry; its `int timeout` is at this offset of the raw
    /// record (from the tracepoint's `format`).
    EpollEnterTimeout {
        at: usize,
    },
    /// An epoll return; its `long ret` is at `ret_at` of the raw record when the format has it.
    EpollExit {
        ret_at: Option<usize>,
    },
    FutexEnter,
    FutexExit,
}

/// The tracepoints found in tracefs.
#[derive(Debug, Clone)]
pub struct Tracepoints {
    /// (tracepoint id, what it is); the epoll calls the kernel has.
    points: Vec<(u64, Point)>,
    /// Offsets of `uaddr` and `op` in the futex entry's raw record.
    futex_fields: (usize, usize),
    /// Where tracefs is, for messages.
    pub root: PathBuf,
}

/// Where tracefs is usually mounted, newest first.
const TRACEFS: &[&str] = &["/sys/kernel/tracing", "/sys/kernel/debug/tracing"];

impl Tracepoints {
    /// Find the tracepoints, mounting tracefs at /sys/kernel/tracing when it is not mounted and
    /// the mount is allowed (root). The error says why they are not available.
    pub fn discover() -> Result<Tracepoints> {
        for root in TRACEFS {
            let root = Path::new(root);
            match fs::metadata(root.join("events/syscalls")) {
                Ok(m) if m.is_dir() => return Tracepoints::read(root),
                // tracefs is root's alone (0700) on most systems.
                Err(e) if e.kind() == io::ErrorKind::PermissionDenied => {
                    return Err(e).with_context(|| format!("reading tracefs at {}", root.display()))
                }
                _ => {}
            }
        }
        let root = Path::new(TRACEFS[0]);
        // An empty mount point: tracefs is configured but not mounted (as after some boots).
        if root.is_dir()
            && fs::read_dir(root)
                .map(|mut d| d.next().is_none())
                .unwrap_or(false)
        {
            mount_tracefs(root).with_context(|| {
                format!(
                    "tracefs is not mounted and mounting it at {} failed",
                    root.display()
                )
            })?;
            if root.join("events/syscalls").is_dir() {
                return Tracepoints::read(root);
            }
        }
        if Path::new("/sys/kernel/tracing").exists() || Path::new("/sys/kernel/debug").exists() {
            bail!("no syscall tracepoints in tracefs (a kernel without CONFIG_FTRACE_SYSCALLS, or tracefs not readable)");
        }
        bail!("tracefs is not available")
    }

    fn read(root: &Path) -> Result<Tracepoints> {
        let dir = root.join("events/syscalls");
        let id = |name: &str| -> Result<Option<u64>> {
            match fs::read_to_string(dir.join(name).join("id")) {
                Ok(s) => Ok(Some(s.trim().parse().context("tracepoint id")?)),
                Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
                Err(e) => Err(e).with_context(|| format!("reading {}", dir.join(name).display())),
            }
        };
        let mut points = Vec::new();
        for call in ["epoll_wait", "epoll_pwait", "epoll_pwait2"] {
            if let (Some(enter), Some(exit)) = (
                id(&format!("sys_enter_{call}"))?,
                id(&format!("sys_exit_{call}"))?,
            ) {
                // `int timeout` in epoll_wait and epoll_pwait; epoll_pwait2's is a pointer.
                let timeout_at = fs::read_to_string(dir.join(format!("sys_enter_{call}/format")))
                    .ok()
                    .filter(|f| f.contains("int timeout;"))
                    .and_then(|f| field_offset(&f, "timeout"));
                let point = match timeout_at {
                    Some(at) => Point::EpollEnterTimeout { at },
                    None => Point::EpollEnter,
                };
                let ret_at = fs::read_to_string(dir.join(format!("sys_exit_{call}/format")))
                    .ok()
                    .and_then(|f| field_offset(&f, "ret"));
                points.push((enter, point));
                points.push((exit, Point::EpollExit { ret_at }));
            }
        }
        if points.is_empty() {
            bail!("no epoll tracepoints under {}", dir.display());
        }
        let (Some(enter), Some(exit)) = (id("sys_enter_futex")?, id("sys_exit_futex")?) else {
            bail!("no futex tracepoints under {}", dir.display());
        };
        points.push((enter, Point::FutexEnter));
        points.push((exit, Point::FutexExit));
        let format = fs::read_to_string(dir.join("sys_enter_futex/format"))
            .context("reading the futex entry's format")?;
        let futex_fields = (
            field_offset(&format, "uaddr").context("no uaddr in the futex entry format")?,
            field_offset(&format, "op").context("no op in the futex entry format")?,
        );
        Ok(Tracepoints {
            points,
            futex_fields,
            root: root.to_path_buf(),
        })
    }
}

/// The offset of field `name` in a tracefs `format` file (`field:u32 * uaddr;\toffset:16;...`).
fn field_offset(format: &str, name: &str) -> Option<usize> {
    format.lines().find_map(|line| {
        let decl = line.trim().strip_prefix("field:")?;
        let (decl, rest) = decl.split_once(';')?;
        let ident = decl.rsplit([' ', '*']).next()?;
        if ident != name {
            return None;
        }
        let off = rest.trim().strip_prefix("offset:")?.split(';').next()?;
        off.parse().ok()
    })
}

fn mount_tracefs(at: &Path) -> io::Result<()> {
    let src = CString::new("nodev").unwrap();
    let fstype = CString::new("tracefs").unwrap();
    let target = CString::new(at.as_os_str().as_encoded_bytes()).map_err(io::Error::other)?;
    // SAFETY: plain mount(2) with NUL-terminated strings and no data.
    let rc = unsafe {
        libc::mount(
            src.as_ptr(),
            target.as_ptr(),
            fstype.as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Data pages of each thread's ring buffer (a power of two): 64 KiB, about 2000 records.
const DATA_PAGES: usize = 16;

/// The mmap'ed ring buffer: one control page, then `DATA_PAGES` of records.
struct Ring {
    base: NonNull<u8>,
    len: usize,
    data_size: usize,
    page: usize,
}

// SAFETY: the mapping is owned by this value alone; the kernel is the only other writer and the
// head/tail protocol is followed with atomics.
unsafe impl Send for Ring {}

impl Ring {
    fn map(fd: RawFd) -> io::Result<Ring> {
        // SAFETY: sysconf has no preconditions.
        let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) } as usize;
        let len = page * (1 + DATA_PAGES);
        // SAFETY: a fresh shared mapping of a perf fd, checked below.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                fd,
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        Ok(Ring {
            base: NonNull::new(ptr as *mut u8).ok_or_else(|| io::Error::other("mmap gave NULL"))?,
            len,
            data_size: page * DATA_PAGES,
            page,
        })
    }

    fn word(&self, off: usize) -> &AtomicU64 {
        // SAFETY: `off` is 1024 or 1032, inside the control page and 8-byte aligned.
        unsafe { &*(self.base.as_ptr().add(off) as *const AtomicU64) }
    }

    /// Copy out every complete record, then free their space. Records that wrap around the end
    /// of the buffer are joined.
    fn read_all(&mut self, out: &mut Vec<u8>) {
        out.clear();
        let head = self.word(DATA_HEAD).load(Ordering::Acquire);
        let tail = self.word(DATA_TAIL).load(Ordering::Relaxed);
        let avail = head.wrapping_sub(tail) as usize;
        if avail == 0 {
            return;
        }
        let avail = avail.min(self.data_size);
        let start = (tail as usize) % self.data_size;
        // SAFETY: the data area is `data_size` bytes after the control page.
        let data = unsafe {
            std::slice::from_raw_parts(self.base.as_ptr().add(self.page), self.data_size)
        };
        let first = avail.min(self.data_size - start);
        out.extend_from_slice(&data[start..start + first]);
        out.extend_from_slice(&data[..avail - first]);
        self.word(DATA_TAIL).store(head, Ordering::Release);
    }
}

impl Drop for Ring {
    fn drop(&mut self) {
        // SAFETY: unmapping what `map` mapped.
        unsafe {
            libc::munmap(self.base.as_ptr() as *mut libc::c_void, self.len);
        }
    }
}

/// The traced calls of one thread: one perf event per tracepoint, in one group led by the
/// first (so they start together), all writing into the leader's ring buffer. Closing (drop)
/// stops the tracing.
pub struct ThreadTrace {
    pub tid: u32,
    /// The event that owns the ring buffer, for `poll`.
    leader: OwnedFd,
    others: Vec<OwnedFd>,
    /// perf's event id → tracepoint.
    ids: Vec<(u64, Point)>,
    ring: Ring,
    futex_fields: (usize, usize),
    /// The GIL's address range: other futex waits are dropped (by the kernel when it took the
    /// filter, else here).
    gil: Option<std::ops::Range<u64>>,
    buf: Vec<u8>,
    /// Whether the kernel accepted the uaddr filter on the futex entry.
    pub filtered: bool,
}

/// `perf_event_open(attr, tid, cpu -1, group_fd, FD_CLOEXEC)`: `group` is the group leader's
/// fd, or none to open a leader.
fn perf_event_open(attr: &Attr, tid: u32, group: Option<&OwnedFd>) -> io::Result<OwnedFd> {
    let group_fd = group.map_or(-1, |g| g.as_raw_fd());
    // SAFETY: the attr is a valid, fully initialised `perf_event_attr` of `attr.size` bytes;
    // `group_fd` is -1 or an open perf fd.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_perf_event_open,
            attr as *const Attr,
            tid as libc::pid_t,
            -1 as libc::c_int,
            group_fd as libc::c_int,
            PERF_FLAG_FD_CLOEXEC,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a new fd we own.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

fn ioctl(fd: &OwnedFd, request: libc::c_ulong, arg: libc::c_ulong) -> io::Result<()> {
    // SAFETY: perf ioctls with an integer or a pointer argument that outlives the call.
    let rc = unsafe { libc::ioctl(fd.as_raw_fd(), request as _, arg) };
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

impl ThreadTrace {
    /// Trace the epoll and futex calls of thread `tid` (a host tid). `gil` is the GIL state's
    /// address range, when known: only futex waits inside it are reported. Errors are the
    /// kernel's refusal (EACCES/EPERM without perf rights, ESRCH for a gone thread, ...).
    /// Seen here: the events may only take effect when the kernel next schedules the thread
    /// in, so a boundary right after `open` can be missed; `KernelClock` reads the thread's
    /// state from /proc when it starts tracing, for that.
    pub fn open(
        tid: u32,
        points: &Tracepoints,
        gil: Option<std::ops::Range<u64>>,
    ) -> Result<ThreadTrace> {
        let mut fds: Vec<(OwnedFd, Point)> = Vec::new();
        for &(id, point) in &points.points {
            // Without a GIL range a futex wait cannot be told apart from a lock: skip futexes.
            if gil.is_none() && matches!(point, Point::FutexEnter | Point::FutexExit) {
                continue;
            }
            let mut sample_type = SAMPLE_IDENTIFIER | SAMPLE_TID | SAMPLE_TIME;
            if matches!(
                point,
                Point::FutexEnter
                    | Point::EpollEnterTimeout { .. }
                    | Point::EpollExit { ret_at: Some(_) }
            ) {
                sample_type |= SAMPLE_RAW;
            }
            let attr = Attr {
                type_: PERF_TYPE_TRACEPOINT,
                size: ATTR_SIZE,
                config: id,
                sample_period: 1,
                sample_type,
                // One group: the members are enabled, the leader not, so nothing is recorded
                // until the leader's enable below starts them all at once.
                flags: if fds.is_empty() { FLAG_DISABLED } else { 0 }
                    | FLAG_EXCLUDE_HV
                    | FLAG_USE_CLOCKID,
                // No wakeup per record: on a VM each one is a self-IPI in the traced thread, and
                // waking the reader at every epoll exit made a loop spinning on
                // `asyncio.sleep(0)` 10x slower here (130k -> 10k iterations/s). The reader
                // wakes on its own schedule and when the buffer is half full.
                wakeup_events: 0,
                clockid: libc::CLOCK_MONOTONIC,
                ..Default::default()
            };
            let fd = perf_event_open(&attr, tid, fds.first().map(|(l, _)| l))
                .with_context(|| format!("perf_event_open on thread {tid}"))?;
            fds.push((fd, point));
        }
        let (leader, _) = fds.first().context("no tracepoints to open")?;
        let ring = Ring::map(leader.as_raw_fd()).context("mmap of the perf ring buffer")?;
        let mut ids = Vec::new();
        let mut filtered = false;
        for (i, (fd, point)) in fds.iter().enumerate() {
            if i > 0 {
                ioctl(fd, IOC_SET_OUTPUT, leader.as_raw_fd() as libc::c_ulong)
                    .context("PERF_EVENT_IOC_SET_OUTPUT")?;
            }
            let mut id: u64 = 0;
            ioctl(fd, IOC_ID, &mut id as *mut u64 as libc::c_ulong).context("PERF_EVENT_IOC_ID")?;
            ids.push((id, *point));
            if *point == Point::FutexEnter {
                if let Some(g) = &gil {
                    // Let the kernel drop the loop thread's other futex calls (locks, queues).
                    let filter =
                        CString::new(format!("uaddr >= 0x{:x} && uaddr < 0x{:x}", g.start, g.end))
                            .unwrap();
                    filtered = ioctl(fd, IOC_SET_FILTER, filter.as_ptr() as libc::c_ulong).is_ok();
                }
            }
        }
        // Every tracepoint begins at this one instant. Enabled one at a time, an epoll entry
        // could be recorded and its exit not (the exit's event was not on yet), and the clock
        // took the loop for idle through the callback that followed.
        ioctl(leader, IOC_ENABLE, 0).context("PERF_EVENT_IOC_ENABLE")?;
        let mut fds = fds.into_iter().map(|(fd, _)| fd);
        let leader = fds.next().unwrap();
        Ok(ThreadTrace {
            tid,
            leader,
            others: fds.collect(),
            ids,
            ring,
            futex_fields: points.futex_fields,
            gil,
            buf: Vec::new(),
            filtered,
        })
    }

    /// The fd to `poll` for readability: readable when the loop left epoll or the buffer is
    /// half full.
    pub fn poll_fd(&self) -> RawFd {
        self.leader.as_raw_fd()
    }

    /// Hand every record written since the last call to `out`, oldest first. Returns how many
    /// records the kernel dropped because the buffer was full (then the thread's state between
    /// the records is unknown).
    pub fn drain(&mut self, out: &mut dyn FnMut(Record)) -> u64 {
        let mut buf = std::mem::take(&mut self.buf);
        self.ring.read_all(&mut buf);
        let lost = parse_records(&buf, &self.ids, self.futex_fields, &mut |r| match r.call {
            Call::FutexWait { uaddr } if !self.gil.as_ref().is_some_and(|g| g.contains(&uaddr)) => {
            }
            _ => out(r),
        });
        self.buf = buf;
        lost
    }
}

impl Drop for ThreadTrace {
    fn drop(&mut self) {
        // Stop the events before the fds close, so the kernel writes nothing into a buffer
        // being unmapped (closing alone would also do).
        let _ = ioctl(&self.leader, IOC_DISABLE, 0);
        for fd in &self.others {
            let _ = ioctl(fd, IOC_DISABLE, 0);
        }
    }
}

fn u16_at(b: &[u8], off: usize) -> Option<u16> {
    Some(u16::from_ne_bytes(b.get(off..off + 2)?.try_into().ok()?))
}
fn u32_at(b: &[u8], off: usize) -> Option<u32> {
    Some(u32::from_ne_bytes(b.get(off..off + 4)?.try_into().ok()?))
}
fn u64_at(b: &[u8], off: usize) -> Option<u64> {
    Some(u64::from_ne_bytes(b.get(off..off + 8)?.try_into().ok()?))
}

/// Parse the records copied out of a ring buffer: `struct perf_event_header { u32 type; u16
/// misc; u16 size; }`, then for samples `u64 id; u32 pid, tid; u64 time;` and for the futex
/// entry, the timed epoll entries and the epoll returns `u32 size; u8 data[size]` (the
/// tracepoint's raw record). Returns the count of lost records reported by `PERF_RECORD_LOST { header; u64 id; u64 lost; }`. A malformed record
/// ends the parse (nothing after it can be framed).
fn parse_records(
    buf: &[u8],
    ids: &[(u64, Point)],
    (uaddr_at, op_at): (usize, usize),
    out: &mut dyn FnMut(Record),
) -> u64 {
    let mut lost = 0;
    let mut at = 0;
    while at + 8 <= buf.len() {
        let (Some(kind), Some(size)) = (u32_at(buf, at), u16_at(buf, at + 6)) else {
            break;
        };
        let size = size as usize;
        if size < 8 || at + size > buf.len() {
            break;
        }
        let rec = &buf[at..at + size];
        at += size;
        match kind {
            RECORD_LOST => lost += u64_at(rec, 16).unwrap_or(0),
            RECORD_SAMPLE => {
                let (Some(id), Some(tid), Some(time_ns)) =
                    (u64_at(rec, 8), u32_at(rec, 20), u64_at(rec, 24))
                else {
                    continue;
                };
                let Some(&(_, point)) = ids.iter().find(|(i, _)| *i == id) else {
                    continue;
                };
                // u32 size at 32, then the raw tracepoint record.
                let raw = rec.get(36..).unwrap_or(&[]);
                let call = match point {
                    Point::EpollEnter => Call::EpollEnter,
                    // The int's low 32 bits (the kernel stores the argument as a long). An
                    // unreadable record is taken for a wait, as before timeouts were read.
                    Point::EpollEnterTimeout { at } => {
                        match u64_at(raw, at).map(|t| t as u32 as i32) {
                            Some(0) => Call::EpollPoll,
                            Some(t) if t > 0 => Call::EpollWait {
                                timeout_ms: t as u32,
                            },
                            _ => Call::EpollEnter,
                        }
                    }
                    // The long's value: 0 is a timeout; events, errors (EINTR) or an unreadable
                    // record say nothing of when the thread was woken.
                    Point::EpollExit { ret_at } => match ret_at.and_then(|at| u64_at(raw, at)) {
                        Some(0) => Call::EpollTimedOut,
                        _ => Call::EpollExit,
                    },
                    Point::FutexExit => Call::FutexExit,
                    Point::FutexEnter => {
                        let (Some(uaddr), Some(op)) = (u64_at(raw, uaddr_at), u64_at(raw, op_at))
                        else {
                            continue;
                        };
                        let cmd = op & FUTEX_CMD_MASK;
                        if cmd != FUTEX_WAIT && cmd != FUTEX_WAIT_BITSET {
                            continue;
                        }
                        Call::FutexWait { uaddr }
                    }
                };
                out(Record { tid, time_ns, call });
            }
            _ => {}
        }
    }
    lost
}

/// Why perf events cannot be used here, when they cannot: checked once before tracing any
/// thread, so the fallback notice names the real cause.
pub fn unavailable_reason(err: &anyhow::Error) -> String {
    let io = err.chain().find_map(|c| c.downcast_ref::<io::Error>());
    match io.and_then(|e| e.raw_os_error()) {
        Some(libc::EACCES) | Some(libc::EPERM) => {
            let paranoid = fs::read_to_string("/proc/sys/kernel/perf_event_paranoid")
                .map(|s| s.trim().to_string())
                .unwrap_or_else(|_| "?".into());
            format!("{err}: permission denied (perf_event_paranoid is {paranoid}; run as root, or with CAP_PERFMON and tracefs readable)")
        }
        Some(libc::ENOSYS) => "perf_event_open is not available (seccomp or an old kernel)".into(),
        _ => format!("{err:#}"),
    }
}

/// CLOCK_MONOTONIC now, in nanoseconds: the clock of the records' timestamps.
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: a valid timespec out-pointer.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// Wait until one of `fds` is readable or `timeout` passes (microsecond resolution); EINTR
/// counts as a timeout. Returns the fds that hung up: a traced thread that exited makes its
/// event poll as ready forever, so the caller must stop polling it.
pub fn poll_readable(fds: &[RawFd], timeout: std::time::Duration) -> Result<Vec<RawFd>> {
    let mut pfds: Vec<libc::pollfd> = fds
        .iter()
        .map(|&fd| libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        })
        .collect();
    let ts = libc::timespec {
        tv_sec: timeout.as_secs().min(i32::MAX as u64) as libc::time_t,
        tv_nsec: timeout.subsec_nanos() as libc::c_long,
    };
    // SAFETY: a valid array of `pfds.len()` pollfds and a valid timespec; no signal mask.
    let rc = unsafe {
        libc::ppoll(
            pfds.as_mut_ptr(),
            pfds.len() as libc::nfds_t,
            &ts,
            std::ptr::null(),
        )
    };
    if rc < 0 {
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(anyhow!(e).context("poll on perf events"));
        }
        return Ok(Vec::new());
    }
    Ok(pfds
        .iter()
        .filter(|p| p.revents & (libc::POLLHUP | libc::POLLERR | libc::POLLNVAL) != 0)
        .map(|p| p.fd)
        .collect())
}

#[cfg(test)]
#[path = "perf_tests.rs"]
mod tests;
