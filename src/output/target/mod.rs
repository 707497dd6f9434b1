//! Where loopspy may write, and how: every file any command writes (`-o`, `--episodes`,
//! `dump -o`, and whatever command comes next) goes through here.
//!
//! 1. [`OutputTarget::resolve`] turns what the user typed into a destination, walking the path
//!    the way the kernel does and applying its `protected_symlinks` / `protected_regular`
//!    rules itself ([`resolve`]): `-` and `/dev/stdout` are loopspy's stdout; an existing
//!    character device, FIFO or socket is written in place; a regular file, or a name that
//!    does not exist yet, is written whole (a temporary file beside it, renamed over it). A
//!    symlink is followed and its target written: the link stays a link. A directory, a block
//!    device, or a planted symlink is refused.
//! 2. [`check_distinct`] refuses two outputs that are one file, or an output that is an input
//!    (device and inode, after resolving).
//! 3. [`OutputTarget::open`] makes the [`OutputFile`], before any sampling, so a bad path costs
//!    no recording: the temporary file is created, a FIFO waits (a bounded time, answering
//!    Ctrl-C) for its reader.
//! 4. A sink whose write fails is [`lost`] alone: one line says what is lost; a reader that
//!    closed its pipe ends that sink quietly.
//!
//! [`open_all`] does steps 1 to 3 for a command's outputs at once.

mod file;
pub mod resolve;

use std::ffi::OsStr;
use std::fs::Metadata;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use anyhow::Result;

use crate::error::UserError;
pub use file::{Mode, OutputFile, FIFO_WAIT};
use resolve::{Refusal, Resolved};

/// A resolved output, not opened yet.
#[derive(Debug)]
pub struct OutputTarget {
    /// What the user typed (`stdout` for `-`), for messages.
    name: String,
    dest: Dest,
    id: Identity,
}

#[derive(Debug)]
enum Dest {
    /// One of loopspy's descriptors: `-` and `/dev/stdout` are 1.
    Descriptor(i32),
    /// An existing FIFO, character device or socket, written in place.
    Special {
        path: PathBuf,
        kind: Special,
        meta: Metadata,
    },
    /// A regular file (`existing`) or a new one.
    File {
        path: PathBuf,
        existing: Option<Metadata>,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Special {
    Fifo,
    CharDevice,
    Socket,
}

/// What makes two outputs the same file.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Identity {
    Inode {
        dev: u64,
        ino: u64,
        null: bool,
    },
    /// A file that does not exist yet, by its real path.
    New(PathBuf),
}

impl Identity {
    fn of(meta: &Metadata) -> Identity {
        Identity::Inode {
            dev: meta.dev(),
            ino: meta.ino(),
            null: is_null_device(meta),
        }
    }

    /// `/dev/null` may take any number of outputs: nothing is kept to mix up.
    fn clashes(&self, other: &Identity) -> bool {
        match (self, other) {
            (Identity::Inode { null: true, .. }, _) | (_, Identity::Inode { null: true, .. }) => {
                false
            }
            _ => self == other,
        }
    }
}

/// The character device 1:3.
fn is_null_device(meta: &Metadata) -> bool {
    meta.file_type().is_char_device() && meta.rdev() == libc::makedev(1, 3)
}

fn euid() -> u32 {
    unsafe { libc::geteuid() }
}

impl OutputTarget {
    /// Resolve `user` (`-` for stdout). Nothing is created. Errors are [`UserError`]s: the
    /// OS's reason (no such directory, permission), a directory, a block device, a planted
    /// symlink or someone else's file in a world-writable sticky directory, a descriptor that
    /// is not open for writing.
    pub fn resolve(user: impl AsRef<OsStr>) -> Result<OutputTarget> {
        let raw = user.as_ref();
        if raw == "-" {
            return OutputTarget::descriptor("stdout".into(), 1);
        }
        let name = raw.to_string_lossy().into_owned();
        let resolved = resolve::resolve(Path::new(raw), euid()).map_err(|r| refused(&name, r))?;
        let (path, meta) = match resolved {
            Resolved::Descriptor(fd) => return OutputTarget::descriptor(name, fd),
            Resolved::Path(path, meta) => (path, meta),
        };
        let Some(meta) = meta else {
            return Ok(OutputTarget {
                name,
                id: Identity::New(path.clone()),
                dest: Dest::File {
                    path,
                    existing: None,
                },
            });
        };
        let t = meta.file_type();
        let kind = if t.is_file() {
            None
        } else if t.is_fifo() {
            Some(Special::Fifo)
        } else if t.is_char_device() {
            Some(Special::CharDevice)
        } else if t.is_socket() {
            Some(Special::Socket)
        } else if t.is_dir() {
            return Err(cannot(
                &name,
                std::io::Error::from_raw_os_error(libc::EISDIR),
            ));
        } else {
            return Err(UserError::UnsafeOutput {
                path: name,
                reason: "it is a block device (a disk or a partition), which loopspy never writes"
                    .into(),
            }
            .into());
        };
        let id = Identity::of(&meta);
        let dest = match kind {
            None => Dest::File {
                path,
                existing: Some(meta),
            },
            Some(kind) => Dest::Special { path, kind, meta },
        };
        Ok(OutputTarget { name, dest, id })
    }

    fn descriptor(name: String, fd: i32) -> Result<OutputTarget> {
        let flags = unsafe { libc::fcntl(fd, libc::F_GETFL) };
        if flags < 0 {
            return Err(cannot(&name, format!("descriptor {fd} is not open")));
        }
        if flags & libc::O_ACCMODE == libc::O_RDONLY {
            return Err(cannot(
                &name,
                format!("descriptor {fd} is open for reading only"),
            ));
        }
        let mut st: libc::stat = unsafe { std::mem::zeroed() };
        if unsafe { libc::fstat(fd, &mut st) } != 0 {
            return Err(cannot(&name, std::io::Error::last_os_error()));
        }
        let null = st.st_mode & libc::S_IFMT == libc::S_IFCHR && st.st_rdev == libc::makedev(1, 3);
        Ok(OutputTarget {
            name,
            dest: Dest::Descriptor(fd),
            id: Identity::Inode {
                dev: st.st_dev,
                ino: st.st_ino,
                null,
            },
        })
    }

    /// The name the user gave (`stdout` for `-`), for messages and the summary.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Whether the data goes to loopspy's own stdout (`-`, `/dev/stdout`, `/proc/self/fd/1`).
    pub fn is_stdout(&self) -> bool {
        matches!(self.dest, Dest::Descriptor(1))
    }
}

/// Refuse an output that is the same file as another output, or as one of `inputs` (each a
/// path and what it is, e.g. "the recording"): both are compared by device and inode after
/// resolving, new files by their real path. `/dev/null` may be given to several outputs.
pub fn check_distinct(outputs: &[&OutputTarget], inputs: &[(&Path, &str)]) -> Result<()> {
    for (i, a) in outputs.iter().enumerate() {
        for (path, what) in inputs {
            // An input that cannot be read is reported by its reader.
            let Ok(meta) = std::fs::metadata(path) else {
                continue;
            };
            if a.id.clashes(&Identity::of(&meta)) {
                return Err(UserError::SameFile {
                    path: a.name.clone(),
                    other: format!("{what} {}", path.display()),
                }
                .into());
            }
        }
        for b in &outputs[..i] {
            if a.id.clashes(&b.id) {
                return Err(UserError::SameFile {
                    path: a.name.clone(),
                    other: format!("the other output {}", b.name),
                }
                .into());
            }
        }
    }
    Ok(())
}

/// The usual way to open a command's outputs: resolve each `(path, mode)` (`-` for stdout),
/// refuse clashes with each other and with `inputs` ([`check_distinct`]), and open them in
/// order ([`OutputTarget::open`]). All of it happens before the command's real work, so a bad
/// path costs nothing.
pub fn open_all(outputs: &[(&OsStr, Mode)], inputs: &[(&Path, &str)]) -> Result<Vec<OutputFile>> {
    let targets = outputs
        .iter()
        .map(|(path, _)| OutputTarget::resolve(path))
        .collect::<Result<Vec<_>>>()?;
    check_distinct(&targets.iter().collect::<Vec<_>>(), inputs)?;
    targets
        .iter()
        .zip(outputs)
        .map(|(t, (_, mode))| t.open(*mode))
        .collect()
}

fn cannot(name: &str, reason: impl std::fmt::Display) -> anyhow::Error {
    UserError::Output {
        path: name.to_string(),
        reason: reason.to_string(),
    }
    .into()
}

fn refused(name: &str, r: Refusal) -> anyhow::Error {
    let reason = match r {
        Refusal::Os(e) => return cannot(name, e),
        Refusal::DirectoryName => {
            return cannot(name, "it names a directory (it ends with /), not a file")
        }
        Refusal::PlantedLink { link, uid } => format!(
            "{} is a symbolic link owned by uid {uid} in a world-writable sticky directory, which loopspy does not follow (the kernel's fs.protected_symlinks rule): remove the link or choose another path",
            link.display()
        ),
        Refusal::ForeignFile { file, uid } => format!(
            "{} belongs to uid {uid}, in a world-writable sticky directory, so loopspy does not write it (the kernel's fs.protected_regular rule): remove it or choose another path",
            file.display()
        ),
        Refusal::NotAFile { link, target } => format!(
            "{} leads to {target}, which is not a file loopspy can open: choose a file path, or `-` for stdout",
            link.display()
        ),
    };
    UserError::UnsafeOutput {
        path: name.to_string(),
        reason,
    }
    .into()
}

/// A sink's write failed: unless its reader simply closed a pipe (which ends it quietly, like
/// `head` closing `rg`'s output), say in one line on stderr that `what` ("the flame graph is
/// lost", ...) and return true: the run must exit 1. The other sinks go on.
pub fn lost(file: &str, what: &str, err: &anyhow::Error) -> bool {
    // serde_json and inferno keep the io::Error as their source, so the chain reaches it.
    let io = err.chain().find_map(|c| c.downcast_ref::<std::io::Error>());
    if io.is_some_and(|e| e.kind() == std::io::ErrorKind::BrokenPipe) {
        return false;
    }
    let reason = match io {
        Some(e) => e.to_string(),
        None => format!("{err:#}"),
    };
    let reason = crate::error::os_reason(&reason);
    crate::error::print(&UserError::OutputLost {
        path: file.to_string(),
        why: format!("{reason}: {what}"),
    });
    true
}

#[cfg(test)]
mod tests;
