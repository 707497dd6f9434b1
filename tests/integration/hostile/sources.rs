//! Source lines are read as root from paths the target names (`compile(src, NAME, "exec")`).
//! The code as loaded sleeps at line 3 (`time.sleep`); where loopspy must not look, a planted
//! file says `cur.execute(...)` under `import psycopg2` at that line, and a reader that looked
//! there blames `psycopg2`. Every hostile file is made by the test in a temp dir.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::Value;

use super::{episodes, loopspy, python, script, target, Proc};

const DECOY: &str =
    "import psycopg2\ndef handler(seconds):\n    cur.execute('select pg_sleep(1)')\n";

/// What one recording of a `source` target gave.
struct Recorded {
    episodes: Vec<Value>,
    stderr: String,
    /// From the target's exit to loopspy's.
    lag: Duration,
}

/// Record the `source` scenario started by `cmd` (whose READY names the Python's pid), with
/// a bound on how long loopspy may take once the target is done.
fn record(cmd: Command, limit: Duration) -> Recorded {
    let dir = tempfile::tempdir().unwrap();
    let eps = dir.path().join("e.jsonl");
    let mut app = Proc::spawn(cmd);
    let pid = app.tagged("READY", Duration::from_secs(30))["pid"]
        .as_u64()
        .unwrap()
        .to_string();
    let mut rec = Proc::spawn(loopspy(&[
        "record",
        "--pid",
        &pid,
        "-o",
        dir.path().join("o.svg").to_str().unwrap(),
        "--episodes",
        eps.to_str().unwrap(),
    ]));
    rec.sampling();
    app.send("go");
    let blocks: Vec<Value> = (0..2)
        .map(|_| app.tagged("BLOCK", Duration::from_secs(30)))
        .collect();
    assert_eq!(blocks.len(), 2);
    app.close_stdin();
    app.wait_for(Duration::from_secs(10)).expect("target ends");
    let done = Instant::now();
    let status = rec.wait_for(limit);
    let lag = done.elapsed();
    if status.is_none() {
        rec.kill();
    }
    let stderr = rec.rest_of_stderr();
    assert!(
        status.is_some(),
        "loopspy still ran {lag:?} after the target exited: {stderr}"
    );
    assert!(status.unwrap().success(), "{stderr}");
    Recorded {
        episodes: episodes(&eps),
        stderr,
        lag,
    }
}

fn sources(r: &Recorded) -> Vec<Option<&str>> {
    r.episodes.iter().map(|e| e["source"].as_str()).collect()
}

/// Regression: a file whose open waits (here a file the target holds a write lease on; the
/// issue's was `/sys/kernel/tracing/trace_pipe`) hung `record` past its end, SIGINT and
/// SIGTERM (45 s here, the lease-break time). Also a FIFO and an 8 GiB sparse file: neither
/// may stall the sampler, and the episodes are still found and named from the OS.
#[test]
fn files_that_block_or_never_end_do_not_stall_the_sampler() {
    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join("fifo.py");
    let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
    let sparse = dir.path().join("sparse.py");
    std::fs::File::create(&sparse)
        .unwrap()
        .set_len(8 << 30)
        .unwrap();
    let leased = dir.path().join("leased.py");
    std::fs::write(&leased, DECOY).unwrap();
    for (file, mode) in [(&leased, "lease"), (&fifo, "plain"), (&sparse, "plain")] {
        let r = record(
            target(&python(), &["source", file.to_str().unwrap(), mode]),
            Duration::from_secs(5),
        );
        assert_eq!(r.episodes.len(), 2, "{}: {}", file.display(), r.stderr);
        assert_eq!(
            sources(&r),
            [Some("time.sleep"); 2],
            "{}: {}",
            file.display(),
            r.stderr
        );
        eprintln!(
            "{}: loopspy ended {:?} after the target",
            file.display(),
            r.lag
        );
    }
}

/// Regression: a source file changed on disk after the target started (a deploy under a
/// running process) was trusted: the new text at the culprit's line named `psycopg2` for a
/// `time.sleep`. Its lines are not used now, and the summary says so.
#[test]
fn source_changed_after_the_start_is_not_trusted() {
    let dir = tempfile::tempdir().unwrap();
    let app = dir.path().join("app.py");
    std::fs::write(
        &app,
        "import time\ndef handler(seconds):\n    time.sleep(seconds)\n",
    )
    .unwrap();
    let r = record(
        target(&python(), &["source", app.to_str().unwrap(), "rewrite"]),
        Duration::from_secs(5),
    );
    assert_eq!(sources(&r), [Some("time.sleep"); 2], "{}", r.stderr);
    assert!(
        r.stderr.contains(&format!(
            "1 source file changed on disk after the process started, so its lines were not used to name calls made in C (kind and source come from the OS and the stack alone): {}",
            app.display()
        )),
        "{}",
        r.stderr
    );
}

/// `unshare --mount` with private tmpfs mounts over `hidden` dirs, then `setup` (shell), then
/// the `source` scenario on `name`: the target's own mount namespace, where the files the
/// host has under those dirs do not exist.
fn in_own_mounts(hidden: &[&Path], setup: &str, name: &Path) -> Command {
    let mut sh = String::from("set -e; ");
    for h in hidden {
        sh.push_str(&format!("mount -t tmpfs none '{}'; ", h.display()));
    }
    if !setup.is_empty() {
        sh.push_str(&format!("{setup}; "));
    }
    sh.push_str(&format!(
        "exec '{}' '{}' source '{}' plain",
        python().display(),
        script().display(),
        name.display()
    ));
    let mut cmd = Command::new("unshare");
    cmd.args(["--mount", "--propagation", "private", "sh", "-c", &sh]);
    cmd
}

/// Regression: a file missing from the target's mount namespace was read from the host's
/// file of the same path (a `time.sleep` classified as `psycopg2` from a host file). Also a
/// symlink the target plants, absolute, to a host-only path: as the last component, or as a
/// directory on the way. Paths resolve inside the target's root, or not at all.
#[test]
fn source_is_read_only_inside_the_targets_root() {
    if Command::new("unshare")
        .args(["--mount", "true"])
        .status()
        .map_or(true, |s| !s.success())
    {
        eprintln!("SKIPPED: cannot create mount namespaces here (unshare --mount needs root)");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    // Host-only: the decoy, hidden from the target by a tmpfs over its directory.
    let host_only = dir.path().join("host-only");
    std::fs::create_dir(&host_only).unwrap();
    let decoy = host_only.join("app.py");
    std::fs::write(&decoy, DECOY).unwrap();
    // The target's own: a tmpfs where it plants links.
    let own = dir.path().join("own");
    std::fs::create_dir(&own).unwrap();
    let cases = [
        ("missing in its namespace", String::new(), decoy.clone()),
        (
            "a symlink to a host-only file",
            format!("ln -s '{}' '{}/link.py'", decoy.display(), own.display()),
            own.join("link.py"),
        ),
        (
            "a directory symlink to a host-only dir",
            format!("ln -s '{}' '{}/dir'", host_only.display(), own.display()),
            own.join("dir/app.py"),
        ),
    ];
    for (what, setup, name) in cases {
        let cmd = in_own_mounts(&[&host_only, &own], &setup, &name);
        let r = record(cmd, Duration::from_secs(5));
        assert_eq!(r.episodes.len(), 2, "{what}: {}", r.stderr);
        assert_eq!(
            sources(&r),
            [Some("time.sleep"); 2],
            "{what}: a host file was read: {}",
            r.stderr
        );
    }
}
