//! Output files (issue 14): a device, FIFO or socket is written in place and never replaced, a
//! symlink writes its target, a planted symlink is refused, the input is never an output, and
//! one failed output never costs the others. Safe as root: every node these tests write to is
//! made inside a temp dir (mknod, mkfifo, ln -s), so even a wrong loopspy touches nothing else.
//! `report` runs on tests/fixtures; the live tests (in `live`) record real Python targets.

mod live;
mod signals;

use std::ffi::{CString, OsStr};
use std::io::Read;
use std::os::unix::fs::{symlink, FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use crate::support::{loopspy, repo};

pub fn fixture(name: &str) -> PathBuf {
    repo().join("tests/fixtures").join(format!("{name}.jsonl"))
}

/// A temp dir and its real path (the kinds of nodes below are made in it).
pub fn tmp() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().canonicalize().unwrap();
    (dir, path)
}

pub fn root() -> bool {
    let root = unsafe { libc::geteuid() } == 0;
    if !root {
        eprintln!("SKIPPED: this output test needs root (mknod, setpriv, mount namespaces)");
    }
    root
}

fn cstr(path: &Path) -> CString {
    CString::new(path.as_os_str().as_encoded_bytes()).unwrap()
}

/// A character device node: null is 1 3, full is 1 7.
pub fn mknod_char(path: &Path, major: u32, minor: u32) {
    let rc = unsafe {
        libc::mknod(
            cstr(path).as_ptr(),
            libc::S_IFCHR | 0o666,
            libc::makedev(major, minor),
        )
    };
    assert_eq!(rc, 0, "mknod: {}", std::io::Error::last_os_error());
}

pub fn mkfifo(path: &Path) {
    assert_eq!(unsafe { libc::mkfifo(cstr(path).as_ptr(), 0o644) }, 0);
}

/// What a node is now: `char 1:7`, `fifo`, `symlink -> T`, `file`, `dir`, `missing`.
pub fn kind(path: &Path) -> String {
    let Ok(m) = std::fs::symlink_metadata(path) else {
        return "missing".into();
    };
    let t = m.file_type();
    if t.is_symlink() {
        format!("symlink -> {}", std::fs::read_link(path).unwrap().display())
    } else if t.is_char_device() {
        format!("char {}:{}", libc::major(m.rdev()), libc::minor(m.rdev()))
    } else if t.is_fifo() {
        "fifo".into()
    } else if t.is_dir() {
        "dir".into()
    } else {
        "file".into()
    }
}

pub fn names_in(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

pub fn temporary_files(dir: &Path) -> Vec<String> {
    names_in(dir)
        .into_iter()
        .filter(|n| n.ends_with(".tmp"))
        .collect()
}

pub fn run_in(dir: &Path, args: &[&OsStr]) -> Output {
    Command::new(loopspy())
        .current_dir(dir)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

/// `loopspy report FIXTURE ARGS...` in `dir`.
fn report(dir: &Path, name: &str, args: &[&str]) -> Output {
    let fix = fixture(name);
    let mut all: Vec<&OsStr> = vec![OsStr::new("report"), fix.as_os_str()];
    all.extend(args.iter().map(OsStr::new));
    run_in(dir, &all)
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

pub fn error_lines(err: &str) -> Vec<&str> {
    err.lines()
        .filter(|l| l.starts_with("loopspy: error:"))
        .collect()
}

pub fn assert_whole_svg(text: &str, what: &str) {
    assert!(text.starts_with("<?xml"), "{what}: not an SVG");
    assert!(text.trim_end().ends_with("</svg>"), "{what}: SVG is cut");
}

/// A command run as `nobody`, when there is setpriv.
pub fn as_nobody(program: &Path) -> Option<Command> {
    let has = Command::new("setpriv").arg("--help").output();
    if !has.is_ok_and(|o| o.status.success()) {
        eprintln!("SKIPPED: needs setpriv (util-linux) to act as nobody");
        return None;
    }
    let mut cmd = Command::new("setpriv");
    cmd.args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg(program);
    Some(cmd)
}

/// loopspy where `nobody` may run it (a copy, when the build directory is closed to it).
fn loopspy_for_nobody(dir: &Path) -> PathBuf {
    let ok = as_nobody(&loopspy())
        .unwrap()
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if ok {
        return loopspy();
    }
    let copy = dir.join("loopspy");
    std::fs::copy(loopspy(), &copy).unwrap();
    std::fs::set_permissions(&copy, std::fs::Permissions::from_mode(0o755)).unwrap();
    copy
}

/// `sh -c SCRIPT` in a private mount namespace (its mounts vanish with it), or None when
/// this machine does not allow one.
fn in_mount_namespace(dir: &Path, script: &str, args: &[&OsStr]) -> Option<Output> {
    let probe = Command::new("unshare")
        .args(["-m", "true"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !probe {
        eprintln!("SKIPPED: needs `unshare -m` (a private mount namespace) for tmpfs mounts");
        return None;
    }
    Some(
        Command::new("unshare")
            .args(["-m", "--propagation", "private", "sh", "-c", script, "sh"])
            .args(args)
            .current_dir(dir)
            .output()
            .unwrap(),
    )
}

#[test]
fn special_files_are_written_in_place_not_replaced() {
    if !root() {
        return;
    }
    let (_dir, d) = tmp();
    mknod_char(&d.join("null"), 1, 3);
    mknod_char(&d.join("full"), 1, 7);
    std::fs::write(d.join("real.svg"), "old").unwrap();
    symlink("real.svg", d.join("link.svg")).unwrap();
    symlink("made.svg", d.join("dangling.svg")).unwrap();
    symlink("nowhere/x.svg", d.join("dangling-dir.svg")).unwrap();

    // `-o null`: exit 0, the device is still the device, nothing else appears.
    let o = report(&d, "sleep_task", &["-o", "null"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(kind(&d.join("null")), "char 1:3");

    // `-o full`: ENOSPC is one clear line, never "wrote full"; the episodes still written.
    let o = report(&d, "sleep_task", &["-o", "full", "--episodes", "e.jsonl"]);
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert_eq!(
        error_lines(&err),
        ["loopspy: error: cannot write full: No space left on device (os error 28): the flame graph is lost (the other outputs are not affected)"],
        "{err}"
    );
    assert!(err.contains("loopspy: wrote e.jsonl\n"), "{err}");
    assert!(err.contains("3 blocking episodes"), "{err}");
    assert_eq!(kind(&d.join("full")), "char 1:7");
    assert_eq!(
        std::fs::read_to_string(d.join("e.jsonl"))
            .unwrap()
            .lines()
            .count(),
        3
    );

    // A symlink: its target is written and it stays a link; a dangling one creates its target.
    for (link, real) in [("link.svg", "real.svg"), ("dangling.svg", "made.svg")] {
        let o = report(&d, "sleep_task", &["-o", link]);
        assert!(o.status.success(), "{}", stderr(&o));
        assert!(stderr(&o).contains(&format!("wrote {link}")));
        assert_eq!(kind(&d.join(link)), format!("symlink -> {real}"));
        assert_whole_svg(&std::fs::read_to_string(d.join(real)).unwrap(), real);
    }
    let o = report(&d, "sleep_task", &["-o", "dangling-dir.svg"]);
    assert_eq!(
        error_lines(&stderr(&o)),
        ["loopspy: error: cannot write dangling-dir.svg: No such file or directory (os error 2): choose a writable path with -o / --episodes"]
    );

    // A FIFO with a reader: the reader gets the whole SVG, the FIFO stays a FIFO.
    mkfifo(&d.join("fifo"));
    let mut reader = Command::new("cat")
        .arg(d.join("fifo"))
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let o = report(&d, "sleep_task", &["-o", "fifo"]);
    let mut got = String::new();
    reader
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut got)
        .unwrap();
    reader.wait().unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    assert_whole_svg(&got, "read from the FIFO");
    assert_eq!(kind(&d.join("fifo")), "fifo");

    // A link to loopspy's own stdout (what /dev/stdout is) writes to stdout, not over the link.
    symlink("/proc/self/fd/1", d.join("stdout")).unwrap();
    let o = report(&d, "sleep_task", &["-o", "stdout"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_whole_svg(&String::from_utf8_lossy(&o.stdout), "stdout");
    assert_eq!(kind(&d.join("stdout")), "symlink -> /proc/self/fd/1");

    assert_eq!(
        names_in(&d),
        [
            "dangling-dir.svg",
            "dangling.svg",
            "e.jsonl",
            "fifo",
            "full",
            "link.svg",
            "made.svg",
            "null",
            "real.svg",
            "stdout"
        ]
    );
}

#[test]
fn fifo_without_a_reader_times_out_with_one_line() {
    let (_dir, d) = tmp();
    mkfifo(&d.join("fifo"));
    let started = Instant::now();
    let o = report(&d, "sleep_task", &["-o", "fifo"]);
    let waited = started.elapsed();
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert_eq!(
        error_lines(&err),
        ["loopspy: error: cannot write fifo: it is a FIFO and no process opened it for reading within 10 s: start the reader first (e.g. `cat fifo &`)"]
    );
    assert!(
        err.contains("waiting up to 10 s for a process to read FIFO fifo"),
        "{err}"
    );
    assert!(
        waited >= Duration::from_secs(10) && waited < Duration::from_secs(20),
        "{waited:?}"
    );
    assert_eq!(names_in(&d), ["fifo"]);
    assert_eq!(kind(&d.join("fifo")), "fifo");
}

/// An unprivileged user plants symlinks to a root-owned file in a world-writable sticky
/// directory; root's loopspy refuses to follow them, for every command that writes a file.
#[test]
fn planted_symlink_in_a_sticky_directory_is_refused() {
    if !root() {
        return;
    }
    let (_dir, d) = tmp();
    std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o755)).unwrap();
    let shared = d.join("shared");
    std::fs::create_dir(&shared).unwrap();
    std::fs::set_permissions(&shared, std::fs::Permissions::from_mode(0o1777)).unwrap();
    let victim = d.join("victim");
    std::fs::write(&victim, "root's file\n").unwrap();
    let Some(mut ln) = as_nobody(Path::new("ln")) else {
        return;
    };
    let planted = shared.join("episodes.jsonl");
    assert!(ln
        .arg("-s")
        .arg(&victim)
        .arg(&planted)
        .status()
        .unwrap()
        .success());
    let Some(mut touch) = as_nobody(Path::new("touch")) else {
        return;
    };
    let theirs = shared.join("theirs.svg");
    assert!(touch.arg(&theirs).status().unwrap().success());
    assert_eq!(std::fs::symlink_metadata(&planted).unwrap().uid(), 65534);

    let p = planted.to_str().unwrap();
    let refusal = format!(
        "loopspy: error: refusing to write {p}: {p} is a symbolic link owned by uid 65534 in a world-writable sticky directory, which loopspy does not follow (the kernel's fs.protected_symlinks rule): remove the link or choose another path"
    );
    let out = d.join("x.svg");
    let out = out.to_str().unwrap();
    let o = report(&d, "sleep_task", &["-o", out, "--episodes", p]);
    assert_eq!(o.status.code(), Some(1));
    assert_eq!(error_lines(&stderr(&o)), [refusal.as_str()]);
    let o = report(&d, "sleep_task", &["-o", p]);
    assert_eq!(error_lines(&stderr(&o)), [refusal.as_str()]);
    let o = report(&d, "sleep_task", &["-o", theirs.to_str().unwrap()]);
    let err = stderr(&o);
    assert!(
        err.contains("belongs to uid 65534, in a world-writable sticky directory"),
        "{err}"
    );
    // record and dump refuse it too, before touching their (real) target.
    live::refused_before_attaching(
        &d,
        &[
            &["record", "--episodes", p][..],
            &["record", "-o", p],
            &["dump", "--json", "-o", p],
        ],
        &refusal,
    );
    assert_eq!(std::fs::read_to_string(&victim).unwrap(), "root's file\n");
    assert_eq!(kind(&planted), format!("symlink -> {}", victim.display()));
    assert_eq!(std::fs::read_to_string(&theirs).unwrap(), "");
    assert_eq!(names_in(&d), ["shared", "victim"]);
}

#[test]
fn dash_writes_the_main_output_to_stdout() {
    let (_dir, d) = tmp();
    let o = report(&d, "sleep_task", &["-o", "-", "--episodes", "e.jsonl"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_whole_svg(&String::from_utf8_lossy(&o.stdout), "stdout");
    // Messages stay on stderr; stdout is not listed as a file written.
    let err = stderr(&o);
    assert!(
        err.contains("3 blocking episodes") && err.contains("loopspy: wrote e.jsonl\n"),
        "{err}"
    );
    let o = report(&d, "sleep_task", &["-f", "speedscope", "-o", "-"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["profiles"][0]["type"], "sampled");
    assert_eq!(names_in(&d), ["e.jsonl"]);
    // Both on stdout: a usage error (exit 2), in clap's words.
    let o = report(&d, "sleep_task", &["-o", "-", "--episodes", "-"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        stderr(&o).starts_with(
            "error: `-o -` and `--episodes -` both ask for stdout: send one of them to a file"
        ),
        "{}",
        stderr(&o)
    );
    // By another name (a link to /proc/self/fd/1), found after resolving: exit 1.
    symlink("/proc/self/fd/1", d.join("stdout")).unwrap();
    let o = Command::new(loopspy())
        .current_dir(&d)
        .arg("report")
        .arg(fixture("sleep_task"))
        .args(["-o", "stdout", "--episodes", "-"])
        .stdout(Stdio::piped())
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1));
    assert_eq!(
        error_lines(&stderr(&o)),
        ["loopspy: error: refusing to write stdout: it is the same file as the other output stdout: give each output its own path, apart from the input"]
    );
    assert!(o.stdout.is_empty());
}

#[test]
fn an_output_is_never_the_input() {
    let (_dir, d) = tmp();
    let original = std::fs::read(fixture("sleep_task")).unwrap();
    // A recording named .svg: the default output (its name with .svg) would be itself.
    std::fs::write(d.join("rec.svg"), &original).unwrap();
    std::fs::write(d.join("rec.jsonl"), &original).unwrap();
    std::fs::hard_link(d.join("rec.jsonl"), d.join("hard.jsonl")).unwrap();
    symlink("rec.jsonl", d.join("link.jsonl")).unwrap();
    let same = |path: &str, input: &str| {
        format!("loopspy: error: refusing to write {path}: it is the same file as the recording {input}: give each output its own path, apart from the input")
    };
    let os = |s: &str| OsStr::new(s).to_owned();
    let cases: Vec<(Vec<&str>, String)> = vec![
        (vec!["rec.svg"], same("rec.svg", "rec.svg")),
        (vec!["rec.jsonl", "-o", "rec.jsonl"], same("rec.jsonl", "rec.jsonl")),
        (vec!["rec.jsonl", "--episodes", "rec.jsonl"], same("rec.jsonl", "rec.jsonl")),
        (vec!["rec.jsonl", "-o", "hard.jsonl"], same("hard.jsonl", "rec.jsonl")),
        (vec!["rec.jsonl", "--episodes", "link.jsonl"], same("link.jsonl", "rec.jsonl")),
        (vec!["link.jsonl", "-o", "./rec.jsonl"], same("./rec.jsonl", "link.jsonl")),
        (
            vec!["rec.jsonl", "-o", "x.svg", "--episodes", "x.svg"],
            "loopspy: error: refusing to write x.svg: it is the same file as the other output x.svg: give each output its own path, apart from the input".into(),
        ),
    ];
    for (args, want) in cases {
        let mut all = vec![os("report")];
        all.extend(args.iter().map(|a| os(a)));
        let refs: Vec<&OsStr> = all.iter().map(|a| a.as_os_str()).collect();
        let o = run_in(&d, &refs);
        assert_eq!(o.status.code(), Some(1), "{args:?}: {}", stderr(&o));
        assert_eq!(error_lines(&stderr(&o)), [want.as_str()], "{args:?}");
    }
    assert_eq!(std::fs::read(d.join("rec.svg")).unwrap(), original);
    assert_eq!(std::fs::read(d.join("rec.jsonl")).unwrap(), original);
    assert_eq!(
        names_in(&d),
        ["hard.jsonl", "link.jsonl", "rec.jsonl", "rec.svg"]
    );
    // The default name follows the format: speedscope does not overwrite an earlier SVG.
    std::fs::remove_file(d.join("rec.svg")).unwrap();
    let o = run_in(&d, &[OsStr::new("report"), OsStr::new("rec.jsonl")]);
    assert!(o.status.success(), "{}", stderr(&o));
    let svg = std::fs::read(d.join("rec.svg")).unwrap();
    let o = run_in(
        &d,
        &[
            OsStr::new("report"),
            OsStr::new("rec.jsonl"),
            OsStr::new("-f"),
            OsStr::new("speedscope"),
        ],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("wrote rec.speedscope.json"),
        "{}",
        stderr(&o)
    );
    assert_eq!(std::fs::read(d.join("rec.svg")).unwrap(), svg);
}

/// A directory closed to the user, and a read-only file system: one line, nothing written.
#[test]
fn read_only_directory_and_file_system() {
    if !root() {
        return;
    }
    let (_dir, d) = tmp();
    std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o755)).unwrap();
    let ro = d.join("ro");
    std::fs::create_dir(&ro).unwrap();
    std::fs::set_permissions(&ro, std::fs::Permissions::from_mode(0o555)).unwrap();
    let rec = d.join("rec.jsonl");
    std::fs::copy(fixture("sleep_task"), &rec).unwrap();
    std::fs::set_permissions(&rec, std::fs::Permissions::from_mode(0o644)).unwrap();
    let bin = loopspy_for_nobody(&d);
    let Some(mut cmd) = as_nobody(&bin) else {
        return;
    };
    let o = cmd
        .arg("report")
        .arg(&rec)
        .args(["-o", "ro/x.svg"])
        .current_dir(&d)
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert_eq!(
        error_lines(&stderr(&o)),
        ["loopspy: error: cannot write ro/x.svg: Permission denied (os error 13): choose a writable path with -o / --episodes"]
    );
    assert!(names_in(&ro).is_empty());
    // Root may write a mode-555 directory, but not a read-only file system.
    let script = r#"mount -t tmpfs -o ro,size=64k tmpfs ro || exit 99; "$1" report "$2" -o ro/x.svg; rc=$?; ls -A ro; exit $rc"#;
    let Some(o) = in_mount_namespace(&d, script, &[loopspy().as_os_str(), rec.as_os_str()]) else {
        return;
    };
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert_eq!(
        error_lines(&stderr(&o)),
        ["loopspy: error: cannot write ro/x.svg: Read-only file system (os error 30): choose a writable path with -o / --episodes"]
    );
    assert!(
        o.stdout.is_empty(),
        "left in ro: {}",
        String::from_utf8_lossy(&o.stdout)
    );
}

/// ENOSPC on one output loses that output only: the others and the summary are written.
#[test]
fn a_full_disk_loses_only_that_output() {
    if !root() {
        return;
    }
    let (_dir, d) = tmp();
    std::fs::create_dir(d.join("small")).unwrap();
    // The SVG (28 kB) on a 16 kB file system: lost, and no temporary file is left there.
    let script = r#"mount -t tmpfs -o size=16k tmpfs small || exit 99; "$1" report "$2" -o small/x.svg --episodes e.jsonl; rc=$?; ls -A small; exit $rc"#;
    let fix = fixture("sleep_task");
    if let Some(o) = in_mount_namespace(&d, script, &[loopspy().as_os_str(), fix.as_os_str()]) {
        let err = stderr(&o);
        assert_eq!(o.status.code(), Some(1), "{err}");
        assert_eq!(
            error_lines(&err),
            ["loopspy: error: cannot write small/x.svg: No space left on device (os error 28): the flame graph was not written (the other outputs are not affected)"]
        );
        assert!(
            err.contains("3 blocking episodes") && err.contains("loopspy: wrote e.jsonl\n"),
            "{err}"
        );
        assert!(!err.contains("wrote small/x.svg"), "{err}");
        assert!(
            o.stdout.is_empty(),
            "left on the full disk: {}",
            String::from_utf8_lossy(&o.stdout)
        );
        assert_eq!(
            std::fs::read_to_string(d.join("e.jsonl"))
                .unwrap()
                .lines()
                .count(),
            3
        );
    }
    // The episodes log on a full device: the SVG is still written.
    mknod_char(&d.join("full"), 1, 7);
    let o = report(&d, "sleep_task", &["-o", "x.svg", "--episodes", "full"]);
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert_eq!(
        error_lines(&err),
        ["loopspy: error: cannot write full: No space left on device (os error 28): the episodes log ends here (the other outputs are not affected)"]
    );
    assert!(err.contains("loopspy: wrote x.svg\n"), "{err}");
    assert_whole_svg(&std::fs::read_to_string(d.join("x.svg")).unwrap(), "x.svg");
    assert_eq!(kind(&d.join("full")), "char 1:7");
}
