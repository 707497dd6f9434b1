//! Reading a file whose name the target chose, as root, without letting the target steer the
//! read: a path is resolved inside the target's own root (`/proc/PID/root`, with `openat2`'s
//! `RESOLVE_IN_ROOT`, so an absolute symlink cannot point out of a container), never through a
//! magic link (`/proc/self/fd/N`), never through a final symlink (`O_NOFOLLOW`); the open never
//! waits (`O_NONBLOCK`: a FIFO, a leased file); only a regular file is read (`fstat` after the
//! open, so what is checked is what is read), and never more than a bound.

use std::ffi::CString;
use std::fs::File;
use std::io::{self, Read};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::fs::MetadataExt;

/// Where a path is resolved.
#[derive(Debug)]
pub enum Base {
    /// This machine's files, as named (`loopspy report` reading a recording's sources).
    Local,
    /// Inside a process's root (its mount namespace and chroot) for absolute paths, and
    /// beneath its working directory for relative ones (3.8 names a script run as
    /// `python3 app.py` just `app.py`): directories kept open.
    Root { root: OwnedFd, cwd: Option<OwnedFd> },
}

fn open_dir(path: &str) -> io::Result<OwnedFd> {
    let path = CString::new(path).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    let fd = unsafe {
        libc::open(
            path.as_ptr(),
            libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

impl Base {
    /// The root and working directories of process `pid` (through `/proc/PID/root` and
    /// `/proc/PID/cwd`, which the kernel resolves in the process's own mount namespace).
    pub fn of_process(pid: u32) -> io::Result<Base> {
        Ok(Base::Root {
            root: open_dir(&format!("/proc/{pid}/root"))?,
            cwd: open_dir(&format!("/proc/{pid}/cwd")).ok(),
        })
    }
}

/// What a safe read found.
#[derive(Debug)]
pub struct Contents {
    pub bytes: Vec<u8>,
    /// Last modification, Unix seconds.
    pub mtime: f64,
}

const OPEN_FLAGS: libc::c_int =
    libc::O_RDONLY | libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_CLOEXEC | libc::O_NOCTTY;

fn open_local(path: &str) -> io::Result<File> {
    let c = CString::new(path).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    let fd = unsafe { libc::open(c.as_ptr(), OPEN_FLAGS) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(unsafe { File::from_raw_fd(fd) })
}

/// `openat2(dir, path, resolve | RESOLVE_NO_MAGICLINKS)`. With `RESOLVE_IN_ROOT`, `path` is
/// looked up as if `dir` were `/`, absolute symlinks and `..` included; with
/// `RESOLVE_BENEATH`, a path that would leave `dir` fails.
fn open_in(dir: &OwnedFd, path: &str, resolve: u64) -> io::Result<File> {
    let relative = path.trim_start_matches('/');
    if relative.is_empty() {
        return Err(io::ErrorKind::InvalidInput.into());
    }
    let c = CString::new(relative).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    // SAFETY: `open_how` is plain integers, for which zero is a valid value.
    let mut how: libc::open_how = unsafe { std::mem::zeroed() };
    how.flags = OPEN_FLAGS as u64;
    how.resolve = resolve | libc::RESOLVE_NO_MAGICLINKS;
    let fd = unsafe {
        libc::syscall(
            libc::SYS_openat2,
            dir.as_raw_fd(),
            c.as_ptr(),
            &how as *const libc::open_how,
            std::mem::size_of::<libc::open_how>(),
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(unsafe { File::from_raw_fd(fd as libc::c_int) })
}

/// Read `path` (resolved against `base`) if it is a regular file of at most `max` bytes.
/// Errors: the path does not resolve or crosses a symlink out of the root, a final symlink,
/// an open that would wait, not a regular file, too large.
pub fn read(base: &Base, path: &str, max: u64) -> io::Result<Contents> {
    let file = match base {
        Base::Local => open_local(path)?,
        Base::Root { root, .. } if path.starts_with('/') => {
            open_in(root, path, libc::RESOLVE_IN_ROOT)?
        }
        Base::Root { cwd: Some(cwd), .. } => open_in(cwd, path, libc::RESOLVE_BENEATH)?,
        Base::Root { cwd: None, .. } => return Err(io::ErrorKind::NotFound.into()),
    };
    let meta = file.metadata()?;
    if !meta.file_type().is_file() {
        return Err(io::Error::other("not a regular file"));
    }
    if meta.len() > max {
        return Err(io::Error::other("too large"));
    }
    // `/proc` and `sysfs` files say 0 bytes and may produce any amount: read at most `max`.
    let mut bytes = Vec::with_capacity(meta.len() as usize);
    file.take(max + 1).read_to_end(&mut bytes)?;
    if bytes.len() as u64 > max {
        return Err(io::Error::other("too large"));
    }
    Ok(Contents {
        bytes,
        mtime: meta.mtime() as f64 + meta.mtime_nsec() as f64 * 1e-9,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn me() -> Base {
        Base::of_process(std::process::id()).unwrap()
    }

    #[test]
    fn reads_regular_files_only() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("a.py");
        std::fs::write(&file, "x = 1\n").unwrap();
        let path = file.to_str().unwrap();
        for base in [Base::Local, me()] {
            assert_eq!(read(&base, path, 100).unwrap().bytes, b"x = 1\n");
            assert!(read(&base, path, 3).is_err(), "over the bound");
            assert!(read(&base, "/dev/null", 100).is_err(), "a device");
            assert!(read(&base, dir.path().to_str().unwrap(), 100).is_err());
        }
    }

    /// A FIFO nobody writes to would block a plain open forever.
    #[test]
    fn a_fifo_is_refused_without_waiting() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("f.py");
        let c = CString::new(fifo.to_str().unwrap()).unwrap();
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        for base in [Base::Local, me()] {
            assert!(read(&base, fifo.to_str().unwrap(), 100).is_err());
        }
    }

    /// A file of /proc that reports 0 bytes and produces more is cut at the bound.
    #[test]
    fn generated_files_are_bounded() {
        let e = read(&Base::Local, "/proc/self/maps", 16).unwrap_err();
        assert_eq!(e.to_string(), "too large");
    }

    /// Symlinks: never the last component, and never out of the root.
    #[test]
    fn symlinks_do_not_lead_out() {
        let dir = tempfile::tempdir().unwrap();
        let real = dir.path().join("real.py");
        std::fs::write(&real, "x = 1\n").unwrap();
        let link = dir.path().join("link.py");
        std::os::unix::fs::symlink(&real, &link).unwrap();
        for base in [Base::Local, me()] {
            assert!(read(&base, link.to_str().unwrap(), 100).is_err());
        }
        // A directory symlink in the middle resolves inside the root: here the root is `/`,
        // so it reads; the container test shows it does not leave another root.
        let sub = dir.path().join("sub");
        std::fs::create_dir(&sub).unwrap();
        std::fs::write(sub.join("m.py"), "y = 2\n").unwrap();
        let via = dir.path().join("via");
        std::os::unix::fs::symlink(&sub, &via).unwrap();
        let path = via.join("m.py");
        assert_eq!(
            read(&me(), path.to_str().unwrap(), 100).unwrap().bytes,
            b"y = 2\n"
        );
    }

    /// Relative paths are read beneath the process's working directory, never above it.
    #[test]
    fn relative_paths_stay_beneath_the_working_directory() {
        // Tests run in the crate's directory.
        assert!(read(&me(), "src/lib.rs", 1 << 20).is_ok());
        let cwd = std::env::current_dir().unwrap();
        let up = format!(
            "../{}/src/lib.rs",
            cwd.file_name().unwrap().to_str().unwrap()
        );
        assert!(read(&Base::Local, &up, 1 << 20).is_ok());
        assert!(read(&me(), &up, 1 << 20).is_err());
        assert!(read(&Base::Local, "src/lib.rs", 1 << 20).is_ok());
    }
}
