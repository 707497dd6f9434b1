//! The target as a whole, from `/proc`: whether its thread group still lives (a main thread
//! that called `pthread_exit` leaves a zombie leader beside running threads), which thread can
//! stand in for the leader, when the process started, and whether the program image we
//! attached to is still the one running (an `exec()` replaces it under the same PID).

use std::fs::File;
use std::os::unix::fs::FileExt;

use crate::os::thread_state::parse_stat_state;

/// Whether thread `tid` of process `pid` is alive (neither a zombie nor dead).
fn thread_alive(pid: u32, tid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/stat")) {
        Ok(stat) => !matches!(parse_stat_state(&stat), Some('Z' | 'X') | None),
        Err(_) => false,
    }
}

/// The leader's scheduler state letter, `None` when the process is gone.
fn leader_state(pid: u32) -> Option<char> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    parse_stat_state(&stat)
}

/// A live thread of the process, the leader first: the thread whose `/proc/TID` entries and
/// memory reads still work when the leader has exited. `None` when every thread is gone.
pub fn live_thread(pid: u32) -> Option<u32> {
    match leader_state(pid)? {
        'Z' | 'X' => {}
        _ => return Some(pid),
    }
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).ok()?;
    let mut tids: Vec<u32> = tasks
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse().ok())
        .filter(|&tid| tid != pid)
        .collect();
    tids.sort_unstable();
    tids.into_iter().find(|&tid| thread_alive(pid, tid))
}

/// Whether the process lives: some thread of its group is neither a zombie nor dead. The
/// leader alone is not enough: after the main thread calls `pthread_exit`, the leader is a
/// zombie while the other threads (an event loop among them) run on.
pub fn alive(pid: u32) -> bool {
    live_thread(pid).is_some()
}

/// Whether the leader has exited while other threads still run.
pub fn leader_gone(pid: u32) -> bool {
    matches!(leader_state(pid), Some('Z' | 'X')) && alive(pid)
}

/// When the process started, in Unix seconds, to about 10 ms: `stat`'s `starttime` (clock
/// ticks since boot, on the boot-time clock) placed on the wall clock.
pub fn start_time(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name, which may itself hold spaces and parentheses.
    let rest = &stat[stat.rfind(')')? + 1..];
    // `starttime` is field 22; `rest` starts at field 3.
    let ticks: f64 = rest.split_whitespace().nth(19)?.parse().ok()?;
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if hz <= 0 {
        return None;
    }
    let since_boot = ticks / hz as f64;
    let now = |clock| {
        let mut ts = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        let ok = unsafe { libc::clock_gettime(clock, &mut ts) } == 0;
        ok.then_some(ts.tv_sec as f64 + ts.tv_nsec as f64 * 1e-9)
    };
    let (wall, boot) = (now(libc::CLOCK_REALTIME)?, now(libc::CLOCK_BOOTTIME)?);
    Some(wall - boot + since_boot)
}

/// Whether thread `tid` has an address space now (`/proc/TID/maps` is empty once it is gone,
/// as in a process that is exiting).
pub fn has_image(tid: u32) -> bool {
    use std::io::Read;
    let mut byte = [0u8; 1];
    std::fs::File::open(format!("/proc/{tid}/maps"))
        .and_then(|mut f| f.read(&mut byte))
        .is_ok_and(|n| n > 0)
}

/// The program image (address space) a reader attached to. `exec()` gives the process a new
/// one under the same PID; from then on, reads of the old addresses would read the new
/// program. A `/proc/PID/mem` kept open holds on to the image it was opened on: once that
/// image is gone, reading it gives 0 bytes, where an address that is merely unmapped gives an
/// error. About a microsecond a check.
#[derive(Debug)]
pub struct Image {
    mem: File,
    /// An address that was mapped when the image was opened.
    probe: u64,
}

impl Image {
    /// The image process `pid` runs now, opened through its thread `reader` (the leader, or a
    /// live thread when the leader has exited). `None` when `/proc` cannot be read.
    pub fn open(reader: u32) -> Option<Image> {
        let maps = std::fs::read_to_string(format!("/proc/{reader}/maps")).ok()?;
        let first = maps.lines().next()?;
        let probe = u64::from_str_radix(first.split('-').next()?, 16).ok()?;
        let mem = File::open(format!("/proc/{reader}/mem")).ok()?;
        let image = Image { mem, probe };
        (!image.gone()).then_some(image)
    }

    /// Whether the image has been replaced (`exec`) or torn down (exit).
    pub fn gone(&self) -> bool {
        let mut byte = [0u8; 1];
        matches!(self.mem.read_at(&mut byte, self.probe), Ok(0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_process_is_alive_and_started_in_the_past() {
        let me = std::process::id();
        assert!(alive(me));
        assert_eq!(live_thread(me), Some(me));
        assert!(!leader_gone(me));
        let start = start_time(me).unwrap();
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs_f64();
        assert!(start <= now + 0.05 && start > now - 3600.0, "{start} {now}");
        assert!(!alive(999_999_999));
    }

    /// An image kept open reads while its program runs and reads nothing once the program
    /// has exec'd another: the check behind "the target called exec()".
    #[test]
    fn image_is_gone_after_exec() {
        use std::io::Write;
        let mut child = std::process::Command::new("sh")
            .args(["-c", "read x; exec sleep 5"])
            .stdin(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let pid = child.id();
        let image = Image::open(pid).unwrap();
        assert!(!image.gone());
        child.stdin.take().unwrap().write_all(b"go\n").unwrap();
        // Wait for the exec: `comm` becomes `sleep`.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default() != "sleep\n"
        {
            assert!(std::time::Instant::now() < deadline, "no exec");
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        assert!(image.gone());
        assert!(alive(pid));
        let _ = child.kill();
        let _ = child.wait();
    }
}
