//! Real services for the endpoint tests, each started by the test on 127.0.0.1 (a free port,
//! a temp dir) and stopped when dropped: PostgreSQL (Debian's, `initdb` + `postgres` run as the
//! `postgres` user), Redis (`redis-server`), MariaDB (`mariadbd`), S3 (moto's server), a slow
//! HTTP server, and a Celery worker. Each waits for the server's own readiness line (a bounded
//! wait, never a fixed sleep). A service that is not installed yields `None` and a SKIPPED line
//! naming the script that installs it (scripts/deps/servers.sh).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStderr, ChildStdout, Command, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

use crate::support::repo;

/// How long a server gets to say it is ready.
pub const START_TIMEOUT: Duration = Duration::from_secs(90);

/// Where scripts/deps/servers.sh puts one virtualenv per CPython minor.
pub fn venvs_root() -> PathBuf {
    std::env::var_os("LOOPSPY_SERVERS")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/opt/loopspy-servers"))
}

/// The interpreter of the servers venv for `minor`, when it can import every module in
/// `modules`.
pub fn venv_python(minor: &str, modules: &str) -> Option<PathBuf> {
    let py = venvs_root().join(minor).join("bin/python");
    let ok = Command::new(&py)
        .args(["-c", &format!("import {modules}")])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    ok.then_some(py)
}

/// The venvs that import `modules`, among the minors in `wanted` (`LOOPSPY_TEST_PYTHONS`
/// narrows them); each one missing is reported.
pub fn server_pythons(wanted: &[&str], modules: &str) -> Vec<(String, PathBuf)> {
    let narrowed: Option<Vec<String>> = std::env::var("LOOPSPY_TEST_PYTHONS")
        .ok()
        .filter(|v| !v.is_empty())
        .map(|v| v.split(',').map(|s| s.trim().to_string()).collect());
    let mut out = Vec::new();
    for minor in wanted {
        if narrowed
            .as_ref()
            .is_some_and(|n| !n.iter().any(|m| m == minor))
        {
            continue;
        }
        match venv_python(minor, modules) {
            Some(py) => out.push((minor.to_string(), py)),
            None => eprintln!(
                "SKIPPED: no venv for CPython {minor} with {modules} under {} (run scripts/deps/servers.sh)",
                venvs_root().display()
            ),
        }
    }
    out
}

/// The minors the full web stack is tested on: 3.11 and the newest the suite has.
pub fn full_stack_minors() -> Vec<String> {
    let mut found: Vec<(u32, String)> = std::fs::read_dir(venvs_root())
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().to_string();
            let minor: u32 = name.strip_prefix("3.")?.parse().ok()?;
            Some((minor, name))
        })
        .filter(|(_, name)| venv_python(name, "fastapi, uvicorn").is_some())
        .collect();
    found.sort();
    let mut out = vec!["3.11".to_string()];
    if let Some((_, newest)) = found.last() {
        if newest != "3.11" {
            out.push(newest.clone());
        }
    }
    out
}

/// A port nobody listens on now (the OS picks it).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("bind 127.0.0.1:0")
}

/// Whether something accepts connections on the port.
pub fn listening(port: u16) -> bool {
    TcpStream::connect(("127.0.0.1", port)).is_ok()
}

/// Waits until the port accepts connections or the process exits; false on timeout or exit.
pub fn wait_listening(port: u16, child: &mut Child) -> bool {
    let deadline = Instant::now() + START_TIMEOUT;
    while Instant::now() < deadline {
        if listening(port) {
            return true;
        }
        if child.try_wait().ok().flatten().is_some() {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    false
}

/// Lines of a child's pipe, read by a thread, with everything seen kept for messages.
pub struct Lines {
    rx: Receiver<String>,
    pub seen: Vec<String>,
}

impl Lines {
    pub fn of<R: Read + Send + 'static>(pipe: R) -> Lines {
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Lines {
            rx,
            seen: Vec::new(),
        }
    }

    pub fn stdout(child: &mut Child) -> Lines {
        Lines::of::<ChildStdout>(child.stdout.take().expect("piped stdout"))
    }

    pub fn stderr(child: &mut Child) -> Lines {
        Lines::of::<ChildStderr>(child.stderr.take().expect("piped stderr"))
    }

    /// The next line, waiting at most `wait`; `None` on timeout or end of the pipe.
    pub fn next(&mut self, wait: Duration) -> Option<String> {
        match self.rx.recv_timeout(wait) {
            Ok(l) => {
                self.seen.push(l.clone());
                Some(l)
            }
            Err(RecvTimeoutError::Timeout | RecvTimeoutError::Disconnected) => None,
        }
    }

    /// Reads lines until one contains `needle` (returned), within `START_TIMEOUT`.
    pub fn until(&mut self, needle: &str) -> Option<String> {
        let deadline = Instant::now() + START_TIMEOUT;
        while let Some(wait) = deadline.checked_duration_since(Instant::now()) {
            let line = self.next(wait)?;
            if line.contains(needle) {
                return Some(line);
            }
        }
        None
    }

    /// Every line that arrived so far, without waiting.
    pub fn drain(&mut self) -> Vec<String> {
        let mut out = Vec::new();
        while let Ok(l) = self.rx.try_recv() {
            self.seen.push(l.clone());
            out.push(l);
        }
        out
    }

    pub fn text(&self) -> String {
        self.seen.join("\n")
    }
}

/// A running service: killed (its whole process group) and its dir removed when dropped.
pub struct Service {
    pub child: Child,
    pub port: u16,
    pub _dir: tempfile::TempDir,
    pub log: Lines,
}

impl Drop for Service {
    fn drop(&mut self) {
        unsafe { libc::kill(-(self.child.id() as i32), libc::SIGKILL) };
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Start `cmd` in its own process group with stderr and stdout merged into one pipe, and wait
/// for `ready` in it.
fn start(name: &str, mut cmd: Command, port: u16, dir: tempfile::TempDir, ready: &str) -> Service {
    use std::os::unix::process::CommandExt;
    let (reader, writer) = std::io::pipe().unwrap();
    cmd.process_group(0)
        .stdin(Stdio::null())
        .stdout(writer.try_clone().unwrap())
        .stderr(writer);
    let child = cmd.spawn().unwrap_or_else(|e| panic!("start {name}: {e}"));
    // Our copies of the write end are gone with `cmd`: the pipe ends when the service does.
    drop(cmd);
    let mut service = Service {
        child,
        port,
        _dir: dir,
        log: Lines::of(reader),
    };
    let found = service.log.until(ready);
    assert!(
        found.is_some(),
        "{name} did not become ready:\n{}",
        service.log.text()
    );
    service
}

fn which(tool: &str, also: &[&str]) -> Option<PathBuf> {
    let path = std::env::var("PATH").unwrap_or_default();
    path.split(':')
        .map(PathBuf::from)
        .chain(also.iter().map(PathBuf::from))
        .map(|d| d.join(tool))
        .find(|p| p.is_file())
}

fn postgres_bin(tool: &str) -> Option<PathBuf> {
    let mut dirs: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path().join("bin"))
        .collect();
    dirs.sort();
    dirs.into_iter()
        .rev()
        .map(|d| d.join(tool))
        .find(|p| p.is_file())
        .or_else(|| which(tool, &[]))
}

/// `setpriv` arguments that run a command as the `postgres` user (initdb refuses root), or as
/// `nobody`; empty when not root.
fn unprivileged() -> (Vec<String>, u32, u32) {
    if unsafe { libc::geteuid() } != 0 {
        return (Vec::new(), unsafe { libc::geteuid() }, unsafe {
            libc::getegid()
        });
    }
    let passwd = std::fs::read_to_string("/etc/passwd").unwrap_or_default();
    let user = ["postgres", "nobody"]
        .into_iter()
        .find_map(|name| {
            let line = passwd
                .lines()
                .find(|l| l.starts_with(&format!("{name}:")))?;
            let f: Vec<&str> = line.split(':').collect();
            Some((name, f.get(2)?.parse().ok()?, f.get(3)?.parse().ok()?))
        })
        .expect("a postgres or nobody user");
    let (name, uid, gid): (&str, u32, u32) = user;
    let args = vec![
        "setpriv".to_string(),
        format!("--reuid={name}"),
        format!("--regid={gid}"),
        "--clear-groups".to_string(),
    ];
    (args, uid, gid)
}

/// PostgreSQL with trust auth for user `postgres` on database `postgres`.
pub fn postgres() -> Option<Service> {
    let (Some(initdb), Some(server)) = (postgres_bin("initdb"), postgres_bin("postgres")) else {
        eprintln!("SKIPPED: PostgreSQL is not installed (apt-get install postgresql; scripts/deps/servers.sh)");
        return None;
    };
    let dir = tempfile::Builder::new()
        .prefix("loopspy-pg")
        .tempdir()
        .unwrap();
    let (prefix, uid, gid) = unprivileged();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let c = std::ffi::CString::new(dir.path().as_os_str().as_encoded_bytes()).unwrap();
    unsafe { libc::chown(c.as_ptr(), uid, gid) };
    let run_as = |program: &Path| {
        let mut cmd = match prefix.split_first() {
            Some((first, rest)) => {
                let mut c = Command::new(first);
                c.args(rest).arg(program);
                c
            }
            None => Command::new(program),
        };
        cmd.current_dir(dir.path());
        cmd
    };
    let data = dir.path().join("data");
    let out = run_as(&initdb)
        .arg("-D")
        .arg(&data)
        .args(["-U", "postgres", "--auth=trust", "-E", "UTF8", "--no-sync"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "initdb failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let port = free_port();
    let mut cmd = run_as(&server);
    cmd.arg("-D")
        .arg(&data)
        .arg("-k")
        .arg(dir.path())
        .args(["-p", &port.to_string(), "-c", "listen_addresses=127.0.0.1"])
        .args(["-c", "fsync=off"]);
    Some(start(
        "postgres",
        cmd,
        port,
        dir,
        "ready to accept connections",
    ))
}

pub fn redis() -> Option<Service> {
    let Some(server) = which("redis-server", &["/usr/sbin"]) else {
        eprintln!("SKIPPED: redis-server is not installed (apt-get install redis-server; scripts/deps/servers.sh)");
        return None;
    };
    let dir = tempfile::Builder::new()
        .prefix("loopspy-redis")
        .tempdir()
        .unwrap();
    let port = free_port();
    let mut cmd = Command::new(server);
    cmd.args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
        .args(["--save", "", "--appendonly", "no", "--dir"])
        .arg(dir.path());
    Some(start(
        "redis",
        cmd,
        port,
        dir,
        "Ready to accept connections",
    ))
}

/// MariaDB with `root` allowed without a password over TCP.
pub fn mariadb() -> Option<Service> {
    let (Some(server), Some(install)) = (
        which("mariadbd", &["/usr/sbin"]),
        which("mariadb-install-db", &["/usr/bin"]),
    ) else {
        eprintln!("SKIPPED: MariaDB is not installed (apt-get install mariadb-server; scripts/deps/servers.sh): the pymysql case skips");
        return None;
    };
    let dir = tempfile::Builder::new()
        .prefix("loopspy-mariadb")
        .tempdir()
        .unwrap();
    let data = dir.path().join("data");
    let out = Command::new(install)
        .arg(format!("--datadir={}", data.display()))
        .args([
            "--user=root",
            "--auth-root-authentication-method=normal",
            "--skip-test-db",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "mariadb-install-db failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let port = free_port();
    let mut cmd = Command::new(server);
    cmd.arg("--no-defaults")
        .arg(format!("--datadir={}", data.display()))
        .arg(format!("--socket={}", dir.path().join("sock").display()))
        .arg(format!("--pid-file={}", dir.path().join("pid").display()))
        .args([
            &format!("--port={port}"),
            "--bind-address=127.0.0.1",
            "--user=root",
        ])
        .args(["--skip-log-bin", "--skip-name-resolve"]);
    Some(start("mariadb", cmd, port, dir, "ready for connections"))
}

/// moto's S3 (and every other AWS service) server, from the servers venv of `py`.
pub fn moto(py: &Path) -> Service {
    let dir = tempfile::Builder::new()
        .prefix("loopspy-moto")
        .tempdir()
        .unwrap();
    let port = free_port();
    let mut cmd = Command::new(py);
    cmd.args([
        "-m",
        "moto.server",
        "-H",
        "127.0.0.1",
        "-p",
        &port.to_string(),
    ]);
    start("moto", cmd, port, dir, "Running on")
}

/// tests/py/slow_server.py: every response takes 150 ms.
pub fn slow_http() -> Service {
    let dir = tempfile::Builder::new()
        .prefix("loopspy-slow")
        .tempdir()
        .unwrap();
    let mut child = Command::new("python3")
        .arg(repo().join("tests/py/slow_server.py"))
        .arg("0.15")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    out.read_line(&mut line).unwrap();
    let port = line.trim().parse().expect("slow server prints its port");
    Service {
        child,
        port,
        _dir: dir,
        log: Lines::of(std::io::empty()),
    }
}

/// A Celery worker for tests/py/servers/celery_app.py, on the Redis at `redis_url`.
pub fn celery_worker(py: &Path, redis_url: &str) -> Service {
    let dir = tempfile::Builder::new()
        .prefix("loopspy-celery")
        .tempdir()
        .unwrap();
    let mut cmd = Command::new(py);
    cmd.args([
        "-m",
        "celery",
        "-A",
        "celery_app",
        "worker",
        "--pool",
        "solo",
    ])
    .args([
        "--without-heartbeat",
        "--without-gossip",
        "--without-mingle",
    ])
    .args(["--loglevel", "INFO"])
    .current_dir(servers_dir())
    .env("LOOPSPY_REDIS", redis_url);
    start("celery", cmd, 0, dir, " ready.")
}

/// tests/py/servers.
pub fn servers_dir() -> PathBuf {
    repo().join("tests/py/servers")
}

/// One HTTP/1.1 request on its own connection: the status code and body.
pub fn http(port: u16, method: &str, path: &str) -> std::io::Result<(u16, String)> {
    let mut s = TcpStream::connect(("127.0.0.1", port))?;
    s.set_read_timeout(Some(Duration::from_secs(60)))?;
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    )?;
    let mut buf = String::new();
    s.read_to_string(&mut buf)?;
    let status = buf
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = buf.split_once("\r\n\r\n").map(|b| b.1).unwrap_or("");
    Ok((status, body.to_string()))
}
