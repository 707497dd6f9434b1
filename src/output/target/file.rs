//! An opened output: written whole (a temporary file beside it, renamed over it on commit,
//! removed otherwise), or in place (stdout, a device, a FIFO, a socket, a streamed log). Opening
//! never blocks signals: a FIFO is opened non-blocking and waited for, and every open checks
//! that the node is still the one resolved (no symlink or other file swapped in since).

use std::fs::{File, Metadata, OpenOptions};
use std::io::{self, BufWriter, Write};
use std::os::fd::{AsRawFd, FromRawFd};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::Result;
use tempfile::NamedTempFile;

use super::{cannot, Dest, OutputTarget, Special};
use crate::error::UserError;
use crate::os::signals;

/// How long opening a FIFO waits for a process to open it for reading.
pub const FIFO_WAIT: Duration = Duration::from_secs(10);
/// After this long without a reader, say on stderr what loopspy waits for.
const FIFO_NOTICE: Duration = Duration::from_millis(500);

/// How a file (a regular file or a new one) is written; devices, FIFOs, sockets and stdout are
/// always written in place.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Whole or not at all: a temporary file beside it, renamed over it by
    /// [`OutputFile::commit`]. For outputs written at the end (the flame graph, a replayed
    /// episodes log, a dump) and the raw recording.
    Whole,
    /// In place as data comes, so `tail -f` sees it (a live episodes log). An existing file is
    /// truncated only when the first data or the commit comes: a run that fails before that
    /// leaves it as it was, and a file created for the run is removed if nothing was written.
    Stream,
}

/// An open output. Dropped without [`commit`](OutputFile::commit), a whole file's temporary
/// file is removed.
pub struct OutputFile {
    name: String,
    listed: bool,
    stdout: bool,
    inner: Inner,
    /// The OS error of the first write that failed, kept because wrappers (inferno,
    /// serde_json) may report it in their own words.
    error: Option<io::Error>,
}

enum Inner {
    Whole(Box<Whole>),
    Stream(Stream),
}

struct Whole {
    out: Option<BufWriter<NamedTempFile>>,
    temp: PathBuf,
    path: PathBuf,
    /// The file replaced, whose mode and owner the new one keeps.
    replaced: Option<Metadata>,
}

impl Drop for Whole {
    fn drop(&mut self) {
        // Renamed or about to be removed (by NamedTempFile's own drop): not for a forced exit.
        signals::forget(&self.temp);
    }
}

struct Stream {
    file: File,
    /// Data not yet handed to the OS (our own buffer, so a failed line can be dropped).
    buf: Vec<u8>,
    /// Bytes the OS accepted.
    written: u64,
    /// A regular file, which may be truncated back to the last whole line on failure.
    regular: bool,
    /// Truncate before the first data (an existing file, opened before the run started).
    truncate: bool,
    /// Set when loopspy created the file: removed again if the run writes nothing.
    created: Option<PathBuf>,
    /// Bytes in the file at the last [`OutputFile::line_done`].
    checkpoint: u64,
    /// Committed or abandoned: nothing more to do on drop.
    done: bool,
}

const BUFFER: usize = 64 * 1024;

impl Stream {
    fn new(file: File, regular: bool, truncate: bool, created: Option<PathBuf>) -> Stream {
        Stream {
            file,
            buf: Vec::new(),
            written: 0,
            regular,
            truncate,
            created,
            checkpoint: 0,
            done: false,
        }
    }

    fn truncate_now(&mut self) -> io::Result<()> {
        if self.truncate {
            self.file.set_len(0)?;
            self.truncate = false;
        }
        Ok(())
    }

    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        self.truncate_now()?;
        if self.buf.len() + data.len() > BUFFER {
            self.flush_buf()?;
        }
        self.buf.extend_from_slice(data);
        Ok(data.len())
    }

    fn flush_buf(&mut self) -> io::Result<()> {
        while !self.buf.is_empty() {
            match self.file.write(&self.buf) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => {
                    self.written += n as u64;
                    self.buf.drain(..n);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }
}

impl Drop for Stream {
    fn drop(&mut self) {
        if self.done {
            return;
        }
        // An error path elsewhere: keep what was written, as a crash-free `tail -f` would.
        let _ = self.flush_buf();
        if self.written == 0 {
            if let Some(path) = &self.created {
                let _ = std::fs::remove_file(path);
            }
        }
    }
}

impl OutputTarget {
    /// Open the output now, before any sampling, so a path that cannot be written fails early.
    /// A FIFO waits up to [`FIFO_WAIT`] for its reader (saying so on stderr after a moment)
    /// and gives up at once on Ctrl-C, SIGTERM or SIGHUP.
    pub fn open(&self, mode: Mode) -> Result<OutputFile> {
        let name = self.name.clone();
        let (inner, listed, stdout) = match &self.dest {
            Dest::Descriptor(fd) => (Inner::Stream(dup(&name, *fd)?), false, *fd == 1),
            Dest::Special { path, kind, meta } => {
                let file = match kind {
                    Special::Socket => connect(&name, path, meta)?,
                    _ => open_special(&name, path, *kind, meta)?,
                };
                (
                    Inner::Stream(Stream::new(file, false, false, None)),
                    true,
                    false,
                )
            }
            Dest::File { path, existing } => match mode {
                Mode::Whole => (
                    Inner::Whole(Box::new(temporary(&name, path, existing.clone())?)),
                    true,
                    false,
                ),
                Mode::Stream => (
                    Inner::Stream(in_place(&name, path, existing.as_ref())?),
                    true,
                    false,
                ),
            },
        };
        Ok(OutputFile {
            name,
            listed,
            stdout,
            inner,
            error: None,
        })
    }
}

impl OutputFile {
    /// Resolve and open `path` in one step (tests and one-output commands).
    pub fn create(path: impl AsRef<std::ffi::OsStr>, mode: Mode) -> Result<OutputFile> {
        OutputTarget::resolve(path)?.open(mode)
    }

    /// The name the user gave, for messages.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Whether the summary lists this output as written (files and devices; not stdout or
    /// another of loopspy's descriptors).
    pub fn listed(&self) -> bool {
        self.listed
    }

    pub fn is_stdout(&self) -> bool {
        self.stdout
    }

    /// Written in place as data comes (stdout, a device, a FIFO, a socket, a streamed log),
    /// rather than whole at the end.
    pub fn written_in_place(&self) -> bool {
        matches!(self.inner, Inner::Stream(_))
    }

    /// The OS error of the first failed write, if any.
    pub fn take_error(&mut self) -> Option<io::Error> {
        self.error.take()
    }

    /// Flush; a whole file gets its final mode (the replaced file's, or 0644) and owner, is
    /// synced, and renamed into place. An error leaves no temporary file behind.
    pub fn commit(mut self) -> io::Result<()> {
        let result = match &mut self.inner {
            Inner::Whole(w) => commit_whole(w),
            Inner::Stream(s) => {
                let r = s.truncate_now().and_then(|()| s.flush_buf());
                s.done = r.is_ok();
                r
            }
        };
        result.map_err(|e| self.error.take().unwrap_or(e))
    }

    /// A whole line (episode) was written and flushed: a later failure truncates back to here.
    pub fn line_done(&mut self) {
        if let Inner::Stream(s) = &mut self.inner {
            s.checkpoint = s.written;
        }
    }

    /// Give up after a failed write: a whole file's temporary file is removed; a streamed
    /// regular file keeps its whole lines and loses the partial one.
    pub fn abandon(mut self) {
        if let Inner::Stream(s) = &mut self.inner {
            s.buf.clear();
            if s.regular && s.written > s.checkpoint {
                let _ = s.file.set_len(s.checkpoint);
            }
            // What is kept stays, even if that is nothing of an existing file.
            s.done = true;
        }
    }

    fn note<T>(&mut self, r: io::Result<T>) -> io::Result<T> {
        if let Err(e) = &r {
            if self.error.is_none() {
                self.error = Some(copy_error(e));
            }
        }
        r
    }
}

impl Write for OutputFile {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let r = match &mut self.inner {
            Inner::Whole(w) => match w.out.as_mut() {
                Some(out) => out.write(buf),
                None => Err(io::Error::other("output already committed")),
            },
            Inner::Stream(s) => s.write(buf),
        };
        self.note(r)
    }

    fn flush(&mut self) -> io::Result<()> {
        let r = match &mut self.inner {
            Inner::Whole(w) => match w.out.as_mut() {
                Some(out) => out.flush(),
                None => Ok(()),
            },
            Inner::Stream(s) => s.flush_buf(),
        };
        self.note(r)
    }
}

fn copy_error(e: &io::Error) -> io::Error {
    match e.raw_os_error() {
        Some(code) => io::Error::from_raw_os_error(code),
        None => io::Error::new(e.kind(), e.to_string()),
    }
}

fn commit_whole(w: &mut Whole) -> io::Result<()> {
    let out = w
        .out
        .take()
        .ok_or_else(|| io::Error::other("output already committed"))?;
    let temp = out.into_inner().map_err(|e| copy_error(e.error()))?;
    let file = temp.as_file();
    match &w.replaced {
        Some(old) => {
            // Root replacing a user's file gives it back to that user, with its mode.
            if unsafe { libc::geteuid() } == 0 {
                let _ = std::os::unix::fs::fchown(file, Some(old.uid()), Some(old.gid()));
            }
            file.set_permissions(std::fs::Permissions::from_mode(old.mode() & 0o777))?;
        }
        // Temporary files are private (0600); a new output is an ordinary file.
        None => file.set_permissions(std::fs::Permissions::from_mode(0o644))?,
    }
    file.sync_all()?;
    temp.persist(&w.path).map_err(|e| e.error)?;
    Ok(())
}

/// A temporary file beside `path`, named `.NAME.XXXXXX.tmp`.
fn temporary(name: &str, path: &Path, replaced: Option<Metadata>) -> Result<Whole> {
    let dir = path.parent().unwrap_or(Path::new("/"));
    let file_name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let temp = tempfile::Builder::new()
        .prefix(&format!(".{file_name}."))
        .suffix(".tmp")
        .tempfile_in(dir)
        .map_err(|e| cannot(name, e))?;
    let temp_path = temp.path().to_path_buf();
    signals::remove_on_forced_exit(&temp_path);
    Ok(Whole {
        out: Some(BufWriter::new(temp)),
        temp: temp_path,
        path: path.to_path_buf(),
        replaced,
    })
}

/// Open a regular file to write in place: created new (O_EXCL), or the existing file
/// resolved, never through a symlink, and checked to be that same file.
fn in_place(name: &str, path: &Path, existing: Option<&Metadata>) -> Result<Stream> {
    let mut options = OpenOptions::new();
    options.write(true).custom_flags(libc::O_NOFOLLOW);
    let Some(old) = existing else {
        let file = options
            .create_new(true)
            .mode(0o644)
            .open(path)
            .map_err(|e| cannot(name, e))?;
        return Ok(Stream::new(file, true, false, Some(path.to_path_buf())));
    };
    let file = options.open(path).map_err(|e| cannot(name, e))?;
    let now = file.metadata().map_err(|e| cannot(name, e))?;
    if !now.is_file() || (now.dev(), now.ino()) != (old.dev(), old.ino()) {
        return Err(changed(name));
    }
    Ok(Stream::new(file, true, true, None))
}

fn changed(name: &str) -> anyhow::Error {
    cannot(
        name,
        "it was replaced by another file while loopspy opened it: check who else writes there",
    )
}

/// A duplicate of one of loopspy's descriptors, so closing the output leaves the original.
fn dup(name: &str, fd: i32) -> Result<Stream> {
    let new = unsafe { libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, 3) };
    if new < 0 {
        return Err(cannot(name, io::Error::last_os_error()));
    }
    let file = unsafe { File::from_raw_fd(new) };
    Ok(Stream::new(file, false, false, None))
}

/// Open a FIFO or character device without blocking: a FIFO with no reader fails with ENXIO,
/// so wait for one, a bounded time, watching the stop flag.
fn open_special(name: &str, path: &Path, kind: Special, meta: &Metadata) -> Result<File> {
    let started = Instant::now();
    let mut told = false;
    let file = loop {
        let opened = OpenOptions::new()
            .write(true)
            .custom_flags(libc::O_NONBLOCK | libc::O_NOFOLLOW | libc::O_NOCTTY)
            .open(path);
        match opened {
            Ok(f) => break f,
            Err(e) if e.raw_os_error() == Some(libc::EINTR) => continue,
            Err(e) if e.raw_os_error() == Some(libc::ENXIO) && kind == Special::Fifo => {
                if signals::stop_requested() {
                    return Err(UserError::Interrupted {
                        during: format!("while waiting for a reader on FIFO {name}"),
                    }
                    .into());
                }
                let waited = started.elapsed();
                if waited >= FIFO_WAIT {
                    return Err(UserError::NoReader {
                        path: name.to_string(),
                        secs: FIFO_WAIT.as_secs(),
                    }
                    .into());
                }
                if !told && waited >= FIFO_NOTICE {
                    told = true;
                    let _ = writeln!(
                        io::stderr(),
                        "loopspy: waiting up to {} s for a process to read FIFO {name}",
                        FIFO_WAIT.as_secs()
                    );
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(e) => return Err(cannot(name, e)),
        }
    };
    let now = file.metadata().map_err(|e| cannot(name, e))?;
    if (now.dev(), now.ino()) != (meta.dev(), meta.ino()) || now.is_file() {
        return Err(changed(name));
    }
    set_blocking(&file).map_err(|e| cannot(name, e))?;
    Ok(file)
}

/// Writes block (a full pipe waits for its reader) once the descriptor is open.
fn set_blocking(file: &File) -> io::Result<()> {
    let fd = file.as_raw_fd();
    let flags = unsafe { libc::fcntl(fd, libc::F_GETFL) };
    if flags < 0 || unsafe { libc::fcntl(fd, libc::F_SETFL, flags & !libc::O_NONBLOCK) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Connect to a Unix stream socket, through an O_PATH descriptor of the very node resolved
/// (`connect` would otherwise follow a symlink swapped in since).
fn connect(name: &str, path: &Path, meta: &Metadata) -> Result<File> {
    let node = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_PATH | libc::O_NOFOLLOW)
        .open(path)
        .map_err(|e| cannot(name, e))?;
    let now = node.metadata().map_err(|e| cannot(name, e))?;
    if (now.dev(), now.ino()) != (meta.dev(), meta.ino()) {
        return Err(changed(name));
    }
    let via = format!("/proc/self/fd/{}", node.as_raw_fd());
    let fd = unsafe {
        libc::socket(
            libc::AF_UNIX,
            libc::SOCK_STREAM | libc::SOCK_CLOEXEC | libc::SOCK_NONBLOCK,
            0,
        )
    };
    if fd < 0 {
        return Err(cannot(name, io::Error::last_os_error()));
    }
    let socket = unsafe { File::from_raw_fd(fd) };
    let mut addr: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    addr.sun_family = libc::AF_UNIX as libc::sa_family_t;
    for (dst, src) in addr.sun_path.iter_mut().zip(via.as_bytes()) {
        *dst = *src as libc::c_char;
    }
    let len = (std::mem::size_of::<libc::sa_family_t>() + via.len() + 1) as libc::socklen_t;
    let rc = unsafe {
        libc::connect(
            fd,
            &addr as *const libc::sockaddr_un as *const libc::sockaddr,
            len,
        )
    };
    if rc != 0 {
        let e = io::Error::last_os_error();
        let reason = match e.raw_os_error() {
            Some(libc::ECONNREFUSED) => "no process listens on this socket".to_string(),
            Some(libc::EAGAIN) => "the socket's listener has a full queue".to_string(),
            Some(libc::EPROTOTYPE) => "it is not a stream socket".to_string(),
            _ => e.to_string(),
        };
        return Err(cannot(name, reason));
    }
    set_blocking(&socket).map_err(|e| cannot(name, e))?;
    drop(node);
    Ok(socket)
}
