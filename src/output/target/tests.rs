//! What each kind of node gets: new and regular files written whole, symlinks written through,
//! devices, FIFOs and sockets written in place, never replaced. Every node lives in a temp
//! dir; device nodes are made with mknod (root only, else the test says SKIPPED).

use std::ffi::CString;
use std::io::{Read, Write};
use std::os::unix::fs::{symlink, FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use super::*;

fn root() -> bool {
    let root = unsafe { libc::geteuid() } == 0;
    if !root {
        eprintln!("SKIPPED: this test needs root (mknod, chown)");
    }
    root
}

fn mknod(path: &Path, mode: libc::mode_t, major: u32, minor: u32) {
    let c = CString::new(path.as_os_str().as_encoded_bytes()).unwrap();
    let rc = unsafe { libc::mknod(c.as_ptr(), mode | 0o644, libc::makedev(major, minor)) };
    assert_eq!(
        rc,
        0,
        "mknod {}: {}",
        path.display(),
        std::io::Error::last_os_error()
    );
}

fn names_in(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

fn tmp() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().canonicalize().unwrap();
    (dir, d)
}

#[test]
fn whole_or_nothing() {
    let (_dir, d) = tmp();
    let path = d.join("out.svg");
    let mut f = OutputFile::create(&path, Mode::Whole).unwrap();
    f.write_all(b"half").unwrap();
    drop(f);
    assert!(names_in(&d).is_empty(), "{:?}", names_in(&d));
    let mut f = OutputFile::create(&path, Mode::Whole).unwrap();
    f.write_all(b"whole").unwrap();
    assert!(!f.written_in_place() && f.listed() && !f.is_stdout());
    f.commit().unwrap();
    assert_eq!(std::fs::read_to_string(&path).unwrap(), "whole");
    assert_eq!(
        std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
        0o644
    );
    assert_eq!(names_in(&d), ["out.svg"]);
}

#[test]
fn a_symlink_writes_its_target_and_stays_a_link() {
    let (_dir, d) = tmp();
    std::fs::write(d.join("real.svg"), "old").unwrap();
    symlink("real.svg", d.join("link.svg")).unwrap();
    symlink("made.svg", d.join("dangling.svg")).unwrap();
    for (link, real, mode) in [
        ("link.svg", "real.svg", Mode::Whole),
        ("dangling.svg", "made.svg", Mode::Whole),
        ("link.svg", "real.svg", Mode::Stream),
    ] {
        let mut f = OutputFile::create(d.join(link), mode).unwrap();
        write!(f, "new {mode:?}").unwrap();
        f.commit().unwrap();
        let meta = std::fs::symlink_metadata(d.join(link)).unwrap();
        assert!(meta.file_type().is_symlink(), "{link} was replaced");
        assert_eq!(
            std::fs::read_to_string(d.join(real)).unwrap(),
            format!("new {mode:?}")
        );
    }
    assert_eq!(
        names_in(&d),
        ["dangling.svg", "link.svg", "made.svg", "real.svg"]
    );
}

#[test]
fn a_replaced_file_keeps_its_mode_and_owner() {
    if !root() {
        return;
    }
    let (_dir, d) = tmp();
    let path = d.join("theirs.svg");
    std::fs::write(&path, "old").unwrap();
    std::os::unix::fs::chown(&path, Some(65534), Some(65534)).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o640)).unwrap();
    let mut f = OutputFile::create(&path, Mode::Whole).unwrap();
    f.write_all(b"new").unwrap();
    f.commit().unwrap();
    let meta = std::fs::metadata(&path).unwrap();
    assert_eq!((meta.uid(), meta.gid()), (65534, 65534));
    assert_eq!(meta.mode() & 0o777, 0o640);
    assert_eq!(std::fs::read_to_string(&path).unwrap(), "new");
}

#[test]
fn devices_are_written_in_place_never_replaced() {
    if !root() {
        return;
    }
    let (_dir, d) = tmp();
    mknod(&d.join("null"), libc::S_IFCHR, 1, 3);
    mknod(&d.join("full"), libc::S_IFCHR, 1, 7);
    mknod(&d.join("disk"), libc::S_IFBLK, 7, 200);
    let mut null = OutputFile::create(d.join("null"), Mode::Whole).unwrap();
    assert!(null.written_in_place());
    null.write_all(&[b'x'; 100_000]).unwrap();
    null.commit().unwrap();
    // /dev/full: the write fails with ENOSPC, and says so.
    let mut full = OutputFile::create(d.join("full"), Mode::Whole).unwrap();
    let err = full
        .write_all(&[b'x'; 100_000])
        .and_then(|()| full.flush())
        .unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::ENOSPC), "{err}");
    assert_eq!(
        full.take_error().unwrap().raw_os_error(),
        Some(libc::ENOSPC)
    );
    full.abandon();
    // A block device is refused before anything is opened.
    let err = OutputTarget::resolve(d.join("disk")).unwrap_err();
    assert!(err.to_string().contains("block device"), "{err}");
    for (name, rdev) in [("null", (1, 3)), ("full", (1, 7)), ("disk", (7, 200))] {
        let meta = std::fs::symlink_metadata(d.join(name)).unwrap();
        let t = meta.file_type();
        assert!(t.is_char_device() || t.is_block_device(), "{name} replaced");
        assert_eq!(meta.rdev(), libc::makedev(rdev.0, rdev.1));
    }
    assert_eq!(names_in(&d), ["disk", "full", "null"]);
}

#[test]
fn a_fifo_with_a_reader_gets_the_data() {
    let (_dir, d) = tmp();
    let fifo = d.join("fifo");
    let c = CString::new(fifo.as_os_str().as_encoded_bytes()).unwrap();
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o644) }, 0);
    let reader_path = fifo.clone();
    let reader = std::thread::spawn(move || {
        let mut s = String::new();
        std::fs::File::open(reader_path)
            .unwrap()
            .read_to_string(&mut s)
            .unwrap();
        s
    });
    let mut f = OutputFile::create(&fifo, Mode::Whole).unwrap();
    assert!(f.written_in_place());
    f.write_all(b"through the fifo").unwrap();
    f.commit().unwrap();
    assert_eq!(reader.join().unwrap(), "through the fifo");
    assert!(std::fs::symlink_metadata(&fifo)
        .unwrap()
        .file_type()
        .is_fifo());
}

#[test]
fn a_socket_is_connected_to() {
    let (_dir, d) = tmp();
    let path = d.join("sock");
    let listener = std::os::unix::net::UnixListener::bind(&path).unwrap();
    let server = std::thread::spawn(move || {
        let (mut conn, _) = listener.accept().unwrap();
        let mut s = String::new();
        conn.read_to_string(&mut s).unwrap();
        s
    });
    let mut f = OutputFile::create(&path, Mode::Whole).unwrap();
    f.write_all(b"over the socket").unwrap();
    f.commit().unwrap();
    assert_eq!(server.join().unwrap(), "over the socket");
    assert!(std::fs::symlink_metadata(&path)
        .unwrap()
        .file_type()
        .is_socket());
    // Nobody listening any more: a clear error.
    let err = OutputFile::create(&path, Mode::Whole).err().unwrap();
    assert!(
        err.to_string()
            .contains("no process listens on this socket"),
        "{err}"
    );
}

#[test]
fn a_streamed_file_is_emptied_only_when_data_comes() {
    let (_dir, d) = tmp();
    let path = d.join("e.jsonl");
    std::fs::write(&path, "old log\n").unwrap();
    // Opened, then the run fails before writing: the old log is left as it was.
    drop(OutputFile::create(&path, Mode::Stream).unwrap());
    assert_eq!(std::fs::read_to_string(&path).unwrap(), "old log\n");
    // A run without episodes empties it at the end.
    OutputFile::create(&path, Mode::Stream)
        .unwrap()
        .commit()
        .unwrap();
    assert_eq!(std::fs::read_to_string(&path).unwrap(), "");
    // A file created for a run that fails before writing is removed again.
    let new = d.join("new.jsonl");
    drop(OutputFile::create(&new, Mode::Stream).unwrap());
    assert!(!new.exists());
    // A failure keeps the whole lines and drops the partial one.
    let mut f = OutputFile::create(&new, Mode::Stream).unwrap();
    f.write_all(b"line 1\n").unwrap();
    f.flush().unwrap();
    f.line_done();
    f.write_all(b"line 2, cut").unwrap();
    f.flush().unwrap();
    f.write_all(b" still buffered").unwrap();
    f.abandon();
    assert_eq!(std::fs::read_to_string(&new).unwrap(), "line 1\n");
}

#[test]
fn stdout_by_any_name() {
    let dash = OutputTarget::resolve("-").unwrap();
    let dev = OutputTarget::resolve("/dev/stdout").unwrap();
    let proc = OutputTarget::resolve("/proc/self/fd/1").unwrap();
    assert!(dash.is_stdout() && dev.is_stdout() && proc.is_stdout());
    assert_eq!(dash.name(), "stdout");
    assert!(!OutputTarget::resolve("/dev/stderr").unwrap().is_stdout());
    // Two outputs on stdout are one file (unless stdout is /dev/null, as it may be under a
    // test harness: then any number may share it).
    let clash = check_distinct(&[&dash, &dev], &[]);
    if matches!(dash.id, Identity::Inode { null: false, .. }) {
        let err = clash.unwrap_err();
        assert!(err.to_string().contains("same file"), "{err}");
    }
    assert!(!dash.open(Mode::Whole).unwrap().listed());
}

#[test]
fn one_file_may_not_be_two_outputs_or_the_input() {
    let (_dir, d) = tmp();
    std::fs::create_dir(d.join("sub")).unwrap();
    std::fs::write(d.join("rec.jsonl"), "recording").unwrap();
    std::fs::hard_link(d.join("rec.jsonl"), d.join("hard.jsonl")).unwrap();
    symlink("rec.jsonl", d.join("rec-link.jsonl")).unwrap();
    let t = |p: &str| OutputTarget::resolve(d.join(p)).unwrap();
    let rec = d.join("rec.jsonl");
    let input = [(rec.as_path(), "the recording")];
    // New files: the same real path by two spellings.
    let err = check_distinct(&[&t("x.svg"), &t("sub/../x.svg")], &[]).unwrap_err();
    assert!(
        err.to_string().contains("same file as the other output"),
        "{err}"
    );
    // The input, by itself, a symlink or a hard link.
    for p in ["rec.jsonl", "rec-link.jsonl", "hard.jsonl"] {
        let err = check_distinct(&[&t("x.svg"), &t(p)], &input).unwrap_err();
        assert!(
            err.to_string().contains("same file as the recording"),
            "{p}: {err}"
        );
    }
    assert!(check_distinct(&[&t("x.svg"), &t("y.jsonl")], &input).is_ok());
    assert_eq!(std::fs::read_to_string(&rec).unwrap(), "recording");
    if root() {
        mknod(&d.join("null"), libc::S_IFCHR, 1, 3);
        mknod(&d.join("full"), libc::S_IFCHR, 1, 7);
        assert!(check_distinct(&[&t("null"), &t("null")], &[]).is_ok());
        assert!(check_distinct(&[&t("full"), &t("full")], &[]).is_err());
    }
}

#[test]
fn directories_and_missing_directories_are_clear_errors() {
    let (_dir, d) = tmp();
    let msg = |p: PathBuf| OutputTarget::resolve(&p).unwrap_err().to_string();
    let m = msg(d.clone());
    assert!(m.contains("Is a directory (os error 21)"), "{m}");
    let m = msg(d.join("newdir/"));
    assert!(m.contains("it names a directory (it ends with /)"), "{m}");
    let m = msg(d.join("no/such/dir.svg"));
    assert!(m.contains("No such file or directory (os error 2)"), "{m}");
    assert!(m.starts_with(&format!(
        "cannot write {}",
        d.join("no/such/dir.svg").display()
    )));
}
