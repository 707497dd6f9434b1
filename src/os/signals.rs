//! loopspy's own signals: one process-wide stop flag raised by SIGINT, SIGTERM or SIGHUP, and
//! the temporary files to remove if a second signal forces an immediate exit.
//!
//! The first signal only raises the flag: `record` stops sampling and writes its outputs,
//! `report` stops replaying and writes nothing, and an output waiting for a FIFO reader gives
//! up. Every exit path then drops its temporary files normally. A second signal means the user
//! does not want to wait (a write blocked on a pipe nobody reads, say): the registered
//! temporary files are removed, the processes loopspy launched are killed and reaped, and
//! loopspy exits at once with status 1. SIGHUP only ever raises the flag: a closed terminal
//! sends it more than once (the terminal's owner, e.g. tmux or sshd, and the kernel's
//! hang-up), and that is one event, not an impatient user.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, Once};

static STOP: AtomicBool = AtomicBool::new(false);
static INSTALL: Once = Once::new();
/// Temporary files alive now, removed by a forced exit.
static TEMPORARY: Mutex<Vec<PathBuf>> = Mutex::new(Vec::new());
/// Processes loopspy launched and has not reaped yet: killed and reaped by a forced exit.
static CHILDREN: Mutex<Vec<i32>> = Mutex::new(Vec::new());

/// Install the handler (once per process; later calls only return the flag) and return the
/// stop flag, raised by the first SIGINT, SIGTERM or SIGHUP.
pub fn stop_flag() -> &'static AtomicBool {
    INSTALL.call_once(|| {
        // The handler runs on ctrlc's own thread, not in signal context, so it may lock and
        // remove files. Failing to install (another handler already set) leaves the default
        // dispositions, which is still safe.
        let _ = ctrlc::set_handler(|| {
            if STOP.swap(true, Ordering::SeqCst) {
                forced_exit();
            }
        });
        // SIGHUP gets its own handler, which only raises the flag (an atomic store is safe
        // in a signal handler): repeated hang-ups never force an exit.
        unsafe {
            let mut action: libc::sigaction = std::mem::zeroed();
            action.sa_sigaction = on_hangup as *const () as libc::sighandler_t;
            action.sa_flags = libc::SA_RESTART;
            libc::sigemptyset(&mut action.sa_mask);
            libc::sigaction(libc::SIGHUP, &action, std::ptr::null_mut());
        }
    });
    &STOP
}

extern "C" fn on_hangup(_: libc::c_int) {
    STOP.store(true, Ordering::SeqCst);
}

/// Whether a stop was asked for. False when no handler was installed (library use, tests).
pub fn stop_requested() -> bool {
    STOP.load(Ordering::SeqCst)
}

/// Raise the stop flag from inside loopspy (`q` in `top` stops its sampler this way). Unlike a
/// signal it starts no count: a signal after it is still the first.
pub fn request_stop() {
    STOP.store(true, Ordering::SeqCst);
}

/// Kill and reap process `pid` (launched by loopspy) if loopspy is forced to exit before
/// [`reaped`] is called for it: a forced exit leaves no zombie and no orphan running.
pub fn kill_on_forced_exit(pid: u32) {
    if let Ok(mut list) = CHILDREN.lock() {
        list.push(pid as i32);
    }
}

/// `pid` was reaped: a forced exit leaves it alone.
pub fn reaped(pid: u32) {
    if let Ok(mut list) = CHILDREN.lock() {
        list.retain(|p| *p != pid as i32);
    }
}

/// Remove `path` if loopspy is forced to exit before [`forget`] is called for it.
pub fn remove_on_forced_exit(path: &Path) {
    if let Ok(mut list) = TEMPORARY.lock() {
        list.push(path.to_path_buf());
    }
}

/// `path` was renamed into place or removed: a forced exit leaves it alone.
pub fn forget(path: &Path) {
    if let Ok(mut list) = TEMPORARY.lock() {
        list.retain(|p| p != path);
    }
}

fn forced_exit() -> ! {
    let list = match TEMPORARY.lock() {
        Ok(list) => list.clone(),
        Err(poisoned) => poisoned.into_inner().clone(),
    };
    for path in &list {
        let _ = std::fs::remove_file(path);
    }
    let children = match CHILDREN.lock() {
        Ok(list) => list.clone(),
        Err(poisoned) => poisoned.into_inner().clone(),
    };
    for pid in children {
        unsafe {
            libc::kill(pid, libc::SIGKILL);
            libc::waitpid(pid, std::ptr::null_mut(), 0);
        }
    }
    use std::io::Write;
    let _ = writeln!(
        std::io::stderr(),
        "loopspy: error: interrupted twice: stopped at once; the outputs not yet written are lost"
    );
    std::process::exit(1);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registry_forgets_committed_files() {
        let a = Path::new("/nonexistent/.a.tmp");
        let b = Path::new("/nonexistent/.b.tmp");
        remove_on_forced_exit(a);
        remove_on_forced_exit(b);
        forget(a);
        let list = TEMPORARY.lock().unwrap().clone();
        assert!(list.iter().any(|p| p == b));
        assert!(!list.iter().any(|p| p == a));
        forget(b);
    }
}
