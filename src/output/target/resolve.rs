//! From the path a user typed to the real file behind it, one component at a time, the way
//! the kernel walks it, with the kernel's `fs.protected_symlinks` and `fs.protected_regular` /
//! `fs.protected_fifos` rules applied by loopspy itself (they are off in many containers, and
//! loopspy usually runs as root): in a world-writable sticky directory such as `/tmp`, a
//! symlink, or an existing file, owned by neither the user running loopspy nor the directory's
//! owner is refused. Nothing is created here.

use std::collections::VecDeque;
use std::ffi::{OsStr, OsString};
use std::fs::Metadata;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Component, Path, PathBuf};

/// Symlinks followed before giving up, as the kernel's ELOOP limit.
const MAX_LINKS: usize = 40;

/// The owner and mode bits of a file or directory: what the protection rules look at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Owner {
    pub uid: u32,
    pub mode: u32,
}

impl Owner {
    pub fn of(meta: &Metadata) -> Owner {
        Owner {
            uid: meta.uid(),
            mode: meta.mode(),
        }
    }
}

/// Whether a node owned by `node_uid`, found in directory `dir`, may be followed (a symlink)
/// or opened for writing (an existing file) by a process whose effective uid is `euid`.
/// The kernel's rule for both (fs/namei.c `may_follow_link`, `may_create_in_sticky`, level 1):
/// allowed unless the directory is sticky and world-writable and the node belongs to neither
/// `euid` nor the directory's owner.
pub fn trusted(dir: Owner, node_uid: u32, euid: u32) -> bool {
    let sticky_world_writable = dir.mode & 0o1002 == 0o1002;
    !sticky_world_writable || node_uid == euid || node_uid == dir.uid
}

/// Why a path cannot be used.
#[derive(Debug)]
pub enum Refusal {
    /// The OS's own error (no such directory, not a directory, permission, loop).
    Os(io::Error),
    /// A symlink in a world-writable sticky directory owned by someone else.
    PlantedLink { link: PathBuf, uid: u32 },
    /// An existing file in a world-writable sticky directory owned by someone else.
    ForeignFile { file: PathBuf, uid: u32 },
    /// A `/proc` link that names no file (another process's pipe or socket).
    NotAFile { link: PathBuf, target: String },
    /// The path ends with `/` (or `.`, `..`) but names no directory: there is no file name.
    DirectoryName,
}

impl From<io::Error> for Refusal {
    fn from(e: io::Error) -> Refusal {
        Refusal::Os(e)
    }
}

/// What a path leads to.
#[derive(Debug)]
pub enum Resolved {
    /// A real path (no symlink, `.` or `..` left in it) and the node's metadata, `None` when
    /// the file does not exist yet (its directory does).
    Path(PathBuf, Option<Metadata>),
    /// One of loopspy's own open descriptors, named through `/proc/self/fd/N` (which is where
    /// `/dev/stdout`, `/dev/stderr` and `/dev/fd/N` lead).
    Descriptor(i32),
}

/// Walk `user` from the current directory (or `/`), following symlinks under the rules above.
pub fn resolve(user: &Path, euid: u32) -> Result<Resolved, Refusal> {
    let bytes = user.as_os_str().as_bytes();
    if bytes.is_empty() {
        return Err(Refusal::Os(io::Error::from_raw_os_error(libc::ENOENT)));
    }
    let names_a_directory = bytes.ends_with(b"/")
        || matches!(
            user.components().next_back(),
            Some(Component::CurDir | Component::ParentDir)
        )
        || bytes.ends_with(b"/.");
    let mut cur = if user.is_absolute() {
        PathBuf::from("/")
    } else {
        // getcwd gives a real path, so `..` below can simply pop.
        std::env::current_dir()?
    };
    let mut rest: VecDeque<OsString> = names(user);
    let mut links = 0;
    while let Some(name) = rest.pop_front() {
        if name == ".." {
            cur.pop();
            continue;
        }
        let next = cur.join(&name);
        let last = rest.is_empty();
        let meta = match std::fs::symlink_metadata(&next) {
            Ok(m) => m,
            Err(e) if e.kind() == io::ErrorKind::NotFound && last => {
                if names_a_directory {
                    return Err(Refusal::DirectoryName);
                }
                return Ok(Resolved::Path(next, None));
            }
            Err(e) => return Err(e.into()),
        };
        if meta.file_type().is_symlink() {
            if let Some(fd) = own_descriptor(&cur, &name) {
                if !last {
                    return Err(Refusal::Os(io::Error::from_raw_os_error(libc::ENOTDIR)));
                }
                return Ok(Resolved::Descriptor(fd));
            }
            let dir = Owner::of(&std::fs::metadata(&cur)?);
            if !trusted(dir, meta.uid(), euid) {
                return Err(Refusal::PlantedLink {
                    link: next,
                    uid: meta.uid(),
                });
            }
            links += 1;
            if links > MAX_LINKS {
                return Err(Refusal::Os(io::Error::from_raw_os_error(libc::ELOOP)));
            }
            let target = std::fs::read_link(&next)?;
            if cur.starts_with("/proc") && !target.is_absolute() && target_is_not_a_path(&target) {
                return Err(Refusal::NotAFile {
                    link: next,
                    target: target.to_string_lossy().into_owned(),
                });
            }
            if target.is_absolute() {
                cur = PathBuf::from("/");
            }
            for n in names(&target).into_iter().rev() {
                rest.push_front(n);
            }
            continue;
        }
        if !last {
            if !meta.is_dir() {
                return Err(Refusal::Os(io::Error::from_raw_os_error(libc::ENOTDIR)));
            }
            cur = next;
            continue;
        }
        if !meta.is_dir() {
            if names_a_directory {
                return Err(Refusal::Os(io::Error::from_raw_os_error(libc::ENOTDIR)));
            }
            let dir = Owner::of(&std::fs::metadata(&cur)?);
            if !trusted(dir, meta.uid(), euid) {
                return Err(Refusal::ForeignFile {
                    file: next,
                    uid: meta.uid(),
                });
            }
        }
        return Ok(Resolved::Path(next, Some(meta)));
    }
    // Nothing left to walk: the path was `/`, `.` or ended in `..`, a directory.
    let meta = std::fs::metadata(&cur)?;
    Ok(Resolved::Path(cur, Some(meta)))
}

/// The path's names in order, without `.` (`..` is kept: it is applied to the real path).
fn names(path: &Path) -> VecDeque<OsString> {
    path.components()
        .filter_map(|c| match c {
            Component::Normal(n) => Some(n.to_os_string()),
            Component::ParentDir => Some(OsString::from("..")),
            Component::RootDir | Component::CurDir | Component::Prefix(_) => None,
        })
        .collect()
}

/// `/proc/<our pid>/fd/N` or `/proc/<our pid>/task/<tid>/fd/N`: descriptor N of loopspy itself
/// (threads share one descriptor table). Its link text may be `pipe:[123]`, which is no path,
/// so it is written through the descriptor, not by name.
fn own_descriptor(dir: &Path, name: &OsStr) -> Option<i32> {
    let fd: i32 = name.to_str()?.parse().ok()?;
    let pid = std::process::id().to_string();
    let parts: Vec<&OsStr> = dir.iter().collect();
    let ours = match parts.as_slice() {
        [root, proc, p, fd_dir] => {
            *root == "/" && *proc == "proc" && *p == pid.as_str() && *fd_dir == "fd"
        }
        [root, proc, p, task, _tid, fd_dir] => {
            *root == "/"
                && *proc == "proc"
                && *p == pid.as_str()
                && *task == "task"
                && *fd_dir == "fd"
        }
        _ => false,
    };
    ours.then_some(fd)
}

/// `pipe:[123]`, `socket:[45]`, `anon_inode:[eventfd]`: what `/proc` shows for a descriptor
/// that has no path.
fn target_is_not_a_path(target: &Path) -> bool {
    let text = target.as_os_str().as_bytes();
    text.contains(&b':') && text.ends_with(b"]")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::{lchown, symlink, PermissionsExt};

    const NOBODY: u32 = 65534;

    #[test]
    fn the_kernel_rule() {
        let sticky = Owner {
            uid: 0,
            mode: 0o41777,
        };
        let plain = Owner {
            uid: 0,
            mode: 0o40777,
        };
        let private = Owner {
            uid: 1000,
            mode: 0o41755,
        };
        // Someone else's node in root's /tmp, as root: refused.
        assert!(!trusted(sticky, NOBODY, 0));
        // Our own node, or the directory owner's: allowed.
        assert!(trusted(sticky, 0, 0));
        assert!(trusted(sticky, 1000, 1000));
        assert!(trusted(
            Owner {
                uid: NOBODY,
                mode: 0o41777
            },
            NOBODY,
            0
        ));
        // Not sticky, or not world-writable: the rule does not apply.
        assert!(trusted(plain, NOBODY, 0));
        assert!(trusted(private, NOBODY, 0));
    }

    fn as_root() -> bool {
        let root = unsafe { libc::geteuid() } == 0;
        if !root {
            eprintln!("SKIPPED: ownership tests need root (lchown to nobody)");
        }
        root
    }

    fn path_of(r: Resolved) -> PathBuf {
        match r {
            Resolved::Path(p, _) => p,
            Resolved::Descriptor(fd) => panic!("descriptor {fd}"),
        }
    }

    #[test]
    fn symlinks_resolve_to_their_target() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().canonicalize().unwrap();
        std::fs::write(d.join("real.svg"), "x").unwrap();
        symlink("real.svg", d.join("link.svg")).unwrap();
        symlink(d.join("link.svg"), d.join("link2.svg")).unwrap();
        symlink("missing/../gone.svg", d.join("dangling.svg")).unwrap();
        std::fs::create_dir(d.join("sub")).unwrap();
        symlink("sub", d.join("subl")).unwrap();
        let r = |p: &str| path_of(resolve(&d.join(p), 0).unwrap());
        assert_eq!(r("link.svg"), d.join("real.svg"));
        assert_eq!(r("link2.svg"), d.join("real.svg"));
        assert_eq!(r("subl/../real.svg"), d.join("real.svg"));
        assert_eq!(r("sub/./x.svg"), d.join("sub/x.svg"));
        assert_eq!(r("subl/new.svg"), d.join("sub/new.svg"));
        // A dangling link leads to the file it names, in a directory that must exist.
        assert!(matches!(
            resolve(&d.join("dangling.svg"), 0),
            Err(Refusal::Os(e)) if e.raw_os_error() == Some(libc::ENOENT)
        ));
        symlink("sub/made.svg", d.join("dangling2.svg")).unwrap();
        match resolve(&d.join("dangling2.svg"), 0).unwrap() {
            Resolved::Path(p, None) => assert_eq!(p, d.join("sub/made.svg")),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn bad_paths_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().canonicalize().unwrap();
        std::fs::write(d.join("file"), "x").unwrap();
        symlink("loop", d.join("loop")).unwrap();
        let os = |p: &Path| match resolve(p, 0) {
            Err(Refusal::Os(e)) => e.raw_os_error(),
            other => panic!("{other:?}"),
        };
        assert_eq!(os(&d.join("nodir/x.svg")), Some(libc::ENOENT));
        assert_eq!(os(&d.join("file/x.svg")), Some(libc::ENOTDIR));
        assert_eq!(os(&d.join("file/")), Some(libc::ENOTDIR));
        assert_eq!(os(&d.join("loop")), Some(libc::ELOOP));
        assert_eq!(os(Path::new("")), Some(libc::ENOENT));
        assert!(matches!(
            resolve(&d.join("newdir/"), 0),
            Err(Refusal::DirectoryName)
        ));
        // An existing directory resolves; the caller refuses it by type.
        for p in [
            d.join("."),
            d.clone(),
            PathBuf::from(format!("{}/", d.display())),
        ] {
            match resolve(&p, 0).unwrap() {
                Resolved::Path(p, Some(m)) => assert!(m.is_dir(), "{}", p.display()),
                other => panic!("{other:?}"),
            }
        }
    }

    #[test]
    fn own_descriptors_are_written_through_the_descriptor() {
        for (p, fd) in [
            ("/dev/stdout", 1),
            ("/dev/stderr", 2),
            ("/proc/self/fd/1", 1),
            ("/proc/thread-self/fd/2", 2),
        ] {
            match resolve(Path::new(p), 0) {
                Ok(Resolved::Descriptor(n)) => assert_eq!(n, fd, "{p}"),
                other => panic!("{p}: {other:?}"),
            }
        }
        // Another process's pipe has no path to write.
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let link = format!("/proc/{}/fd/1", child.id());
        let got = resolve(Path::new(&link), 0);
        let _ = child.kill();
        let _ = child.wait();
        assert!(
            matches!(got, Err(Refusal::NotAFile { ref target, .. }) if target.starts_with("pipe:[")),
            "{got:?}"
        );
    }

    #[test]
    fn planted_links_and_foreign_files_in_sticky_directories() {
        if !as_root() {
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().canonicalize().unwrap();
        let shared = d.join("shared");
        std::fs::create_dir(&shared).unwrap();
        std::fs::set_permissions(&shared, std::fs::Permissions::from_mode(0o1777)).unwrap();
        let victim = d.join("victim");
        std::fs::write(&victim, "root's file").unwrap();
        symlink(&victim, shared.join("planted")).unwrap();
        lchown(shared.join("planted"), Some(NOBODY), Some(NOBODY)).unwrap();
        symlink(&victim, shared.join("mine")).unwrap();
        std::fs::write(shared.join("theirs.svg"), "x").unwrap();
        lchown(shared.join("theirs.svg"), Some(NOBODY), Some(NOBODY)).unwrap();
        // A planted link, directly or as a directory on the way, is refused for root.
        for p in ["planted", "planted/../x.svg"] {
            assert!(
                matches!(resolve(&shared.join(p), 0), Err(Refusal::PlantedLink { uid, .. }) if uid == NOBODY),
                "{p}"
            );
        }
        // ... but followed for its owner, who could write the target anyway.
        assert_eq!(
            path_of(resolve(&shared.join("planted"), NOBODY).unwrap()),
            victim
        );
        // Root's own link is followed.
        assert_eq!(path_of(resolve(&shared.join("mine"), 0).unwrap()), victim);
        // Someone else's existing file is refused; a new name is fine.
        assert!(matches!(
            resolve(&shared.join("theirs.svg"), 0),
            Err(Refusal::ForeignFile { .. })
        ));
        assert!(resolve(&shared.join("new.svg"), 0).is_ok());
        // The same nodes in a directory that is not sticky follow normally.
        std::fs::set_permissions(&shared, std::fs::Permissions::from_mode(0o777)).unwrap();
        assert_eq!(
            path_of(resolve(&shared.join("planted"), 0).unwrap()),
            victim
        );
        assert!(resolve(&shared.join("theirs.svg"), 0).is_ok());
        // A sticky world-writable directory owned by nobody trusts nobody's nodes.
        std::fs::set_permissions(&shared, std::fs::Permissions::from_mode(0o1777)).unwrap();
        std::os::unix::fs::chown(&shared, Some(NOBODY), Some(NOBODY)).unwrap();
        assert_eq!(
            path_of(resolve(&shared.join("planted"), 0).unwrap()),
            victim
        );
        assert_eq!(std::fs::read_to_string(&victim).unwrap(), "root's file");
    }
}
