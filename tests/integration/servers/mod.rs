//! Real web stacks, servers and drivers (issue 11): FastAPI, Django and aiohttp under real
//! servers (uvicorn, gunicorn), blocking on real PostgreSQL, Redis, MariaDB, S3 (moto), HTTP and
//! Celery, all started by the tests on 127.0.0.1 (`services`). Each case checks the episode, its
//! culprit line, kind, source, advice and `request` (method, path, route template).
//!
//! Handshakes: a server is ready when its port accepts connections (or its own log says so);
//! loopspy is ready when it prints "sampling process"; a recording ends with SIGINT once every
//! response came back. Durations are compared with the blocks the handlers time themselves
//! (`BLOCK` lines on their stdout).

mod apps;
mod fastapi;
mod fixture;
mod services;
mod workers;

use std::collections::HashMap;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::Value;

use crate::support::{loopspy, tagged};
use services::{free_port, servers_dir, wait_listening, Lines};

/// A web server under test (uvicorn, gunicorn or a script), with its stdout's BLOCK lines.
pub struct Server {
    pub child: Child,
    pub port: u16,
    pub out: Lines,
    pub err: Lines,
}

impl Server {
    /// `python -m MODULE ARGS` in tests/py/servers with `env`, on a free port given as
    /// `{port}` in the arguments; ready once the port accepts connections.
    pub fn start(py: &Path, args: &[&str], env: &[(&str, String)]) -> Server {
        use std::os::unix::process::CommandExt;
        let port = free_port();
        let args: Vec<String> = args
            .iter()
            .map(|a| a.replace("{port}", &port.to_string()))
            .collect();
        let mut cmd = Command::new(py);
        cmd.args(&args)
            .current_dir(servers_dir())
            .env("PYTHONUNBUFFERED", "1")
            .process_group(0)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        // The apps connect at startup to every service named in their environment: only the
        // ones this test started, never a variable another test left in ours (the tests share
        // one process, and a dead server's address would fail the app's startup).
        for (k, _) in std::env::vars_os() {
            if k.to_str().is_some_and(|k| k.starts_with("LOOPSPY_")) {
                cmd.env_remove(&k);
            }
        }
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("start the server");
        let out = Lines::stdout(&mut child);
        let err = Lines::stderr(&mut child);
        let mut server = Server {
            child,
            port,
            out,
            err,
        };
        if !wait_listening(port, &mut server.child) {
            server.err.drain();
            panic!(
                "server {args:?} did not listen on {port}:\n{}",
                server.err.text()
            );
        }
        server
    }

    /// The `BLOCK` lines, once at least `n` have arrived (each is printed before its response
    /// is sent, but reaches us through a pipe and a thread).
    pub fn wait_blocks(&mut self, n: usize) -> Vec<Value> {
        let deadline = std::time::Instant::now() + services::START_TIMEOUT;
        loop {
            let blocks = self.blocks();
            if blocks.len() >= n {
                return blocks;
            }
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            assert!(
                !left.is_zero(),
                "only {} of {n} BLOCK lines came: {blocks:?}",
                blocks.len()
            );
            self.out.next(left);
        }
    }

    /// The `BLOCK` lines printed so far.
    pub fn blocks(&mut self) -> Vec<Value> {
        self.out.drain();
        self.out
            .seen
            .iter()
            .filter_map(|l| tagged(l, "BLOCK"))
            .collect()
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        // The whole group: gunicorn/uvicorn workers too.
        unsafe { libc::kill(-(self.child.id() as i32), libc::SIGKILL) };
        let _ = self.child.wait();
    }
}

/// A `loopspy record` attached to a server.
pub struct Recording {
    child: Child,
    pub err: Lines,
    pub dir: tempfile::TempDir,
    /// The process whose main thread runs the loop, when it is the recorded one (not with
    /// `--subprocesses`, where the recorded process is a master).
    loop_pid: Option<u32>,
}

/// Waits until `pid`'s main thread sleeps in epoll: the loop is idle, so the callback that
/// served the last response has ended. A response reaches the client before that callback
/// ends (the framework's work after the send); stopping then leaves the episode running at
/// the stop, rightly `complete: false`. Gives up after 10 s (the test's checks then say why).
fn wait_loop_idle(pid: u32) {
    let wchan = format!("/proc/{pid}/task/{pid}/wchan");
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while std::time::Instant::now() < deadline {
        match std::fs::read_to_string(&wchan) {
            Ok(w) if w.contains("epoll") || w == "ep_poll" => return,
            Ok(_) => std::thread::sleep(Duration::from_millis(1)),
            Err(_) => return,
        }
    }
}

impl Recording {
    /// `loopspy record --pid PID --episodes ... EXTRA`; returns once it samples.
    pub fn start(pid: u32, extra: &[&str]) -> Recording {
        let dir = tempfile::tempdir().unwrap();
        let mut child = Command::new(loopspy())
            .args(["record", "--pid", &pid.to_string(), "-o"])
            .arg(dir.path().join("out.svg"))
            .arg("--episodes")
            .arg(dir.path().join("episodes.jsonl"))
            .args(extra)
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut err = Lines::stderr(&mut child);
        assert!(
            err.until("loopspy: sampling process").is_some(),
            "loopspy did not start sampling:\n{}",
            err.text()
        );
        let loop_pid = (!extra.contains(&"--subprocesses")).then_some(pid);
        Recording {
            child,
            err,
            dir,
            loop_pid,
        }
    }

    /// Waits until loopspy says it follows each of `pids` (`--subprocesses`).
    pub fn wait_following(&mut self, pids: &[u32]) {
        for pid in pids {
            let needle = format!("following worker process {pid} ");
            // The line may have come while waiting for another pid.
            if self.err.seen.iter().any(|l| l.contains(&needle)) {
                continue;
            }
            assert!(
                self.err.until(&needle).is_some(),
                "loopspy never followed worker {pid}:\n{}",
                self.err.text()
            );
        }
    }

    /// Ctrl-C once the loop is idle, then the episodes and loopspy's stderr.
    pub fn stop(self) -> (Vec<Value>, String) {
        let (episodes, stderr, _) = self.stop_with_output();
        (episodes, stderr)
    }

    /// Ctrl-C, then the episodes, loopspy's stderr and its main output (`-o`).
    pub fn stop_with_output(mut self) -> (Vec<Value>, String, String) {
        if let Some(pid) = self.loop_pid {
            wait_loop_idle(pid);
        }
        unsafe { libc::kill(self.child.id() as i32, libc::SIGINT) };
        let status = self.child.wait().unwrap();
        while self.err.next(Duration::from_secs(5)).is_some() {}
        let stderr = self.err.text();
        assert!(status.success(), "loopspy failed:\n{stderr}");
        let episodes = std::fs::read_to_string(self.dir.path().join("episodes.jsonl"))
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).expect("an episode is JSON"))
            .collect();
        let output = std::fs::read_to_string(self.dir.path().join("out.svg")).unwrap_or_default();
        (episodes, stderr, output)
    }
}

/// Sends `method path` and asserts a 2xx answer.
pub fn request(port: u16, method: &str, path: &str) -> String {
    let (status, body) =
        services::http(port, method, path).unwrap_or_else(|e| panic!("{method} {path}: {e}"));
    assert!(
        (200..300).contains(&status),
        "{method} {path} answered {status}: {body}"
    );
    body
}

/// What one case expects of its episodes.
pub struct Expect<'a> {
    pub label: String,
    pub route: &'a str,
    pub method: &'a str,
    /// The concrete path (no query string).
    pub path: &'a str,
    pub culprit: &'a str,
    pub line: u64,
    pub kinds: &'a [&'a str],
    /// The right source.
    pub source: Option<&'a str>,
    /// What today's classifier says instead, when it is wrong (printed as a NOTE, accepted).
    pub source_today: Option<Option<&'a str>>,
    /// A piece of the advice.
    pub advice: &'a str,
}

/// Checks one episode against its case and the block its handler timed.
pub fn check_episode(e: &Expect, ep: &Value, block_ms: f64, tick_ms: f64) {
    let label = &e.label;
    let req = &ep["request"];
    assert_eq!(req["route"].as_str(), Some(e.route), "{label}: {ep}");
    assert_eq!(req["method"].as_str(), Some(e.method), "{label}: {ep}");
    assert_eq!(req["path"].as_str(), Some(e.path), "{label}: {ep}");
    assert_eq!(
        ep["culprit"]["function"].as_str(),
        Some(e.culprit),
        "{label}: {ep}"
    );
    assert_eq!(
        ep["culprit"]["line"].as_u64(),
        Some(e.line),
        "{label}: {ep}"
    );
    let kind = ep["kind"].as_str().unwrap_or("");
    assert!(e.kinds.contains(&kind), "{label}: kind {kind}: {ep}");
    let source = ep["source"].as_str();
    if source != e.source {
        match e.source_today {
            Some(today) if today == source => eprintln!(
                "NOTE: {label}: source {source:?}, should be {:?} (known misclassification)",
                e.source
            ),
            _ => panic!("{label}: source {source:?}, want {:?}: {ep}", e.source),
        }
    }
    let advice = ep["advice"].as_str().unwrap_or("");
    assert!(advice.contains(e.advice), "{label}: advice {advice:?}");
    // The episode is the whole callback: the handler's block plus the framework's own work
    // around it in the same task step (parsing, serializing: a few ms once warm).
    let ms = ep["duration_ms"].as_f64().unwrap();
    assert!(
        ms >= block_ms - tick_ms - 2.0 && ms <= block_ms + tick_ms + 25.0,
        "{label}: episode {ms:.1} ms for a {block_ms:.1} ms block: {ep}"
    );
    assert_eq!(ep["complete"], true, "{label}");
}

/// The line of `# BLOCK-LINE name` in a server script.
pub fn block_line(script: &str, name: &str) -> u64 {
    crate::support::marker_line(&servers_dir().join(script), name)
}

/// Episodes by their BLOCK's position: pairs each BLOCK line with the episode of the same
/// route and pid, in order; panics when the counts differ.
pub fn pair<'a>(
    episodes: &'a [Value],
    blocks: &'a [Value],
    what: &str,
) -> Vec<(&'a Value, &'a Value)> {
    let mut by: HashMap<(u64, String), Vec<&Value>> = HashMap::new();
    for ep in episodes {
        let key = (
            ep["pid"].as_u64().unwrap_or(0),
            ep["request"]["route"].as_str().unwrap_or("").to_string(),
        );
        by.entry(key).or_default().push(ep);
    }
    let mut out = Vec::new();
    for b in blocks {
        let key = (
            b["pid"].as_u64().unwrap_or(0),
            b["route"].as_str().unwrap_or("").to_string(),
        );
        let list = by.get_mut(&key);
        let ep = list
            .filter(|l| !l.is_empty())
            .map(|l| l.remove(0))
            .unwrap_or_else(|| panic!("{what}: no episode for {b} in {episodes:#?}"));
        out.push((ep, b));
    }
    let extra: Vec<String> = by
        .values()
        .flatten()
        .map(|e| {
            let stack: Vec<&str> = e["stack"]
                .as_array()
                .map(|s| {
                    s.iter()
                        .take(6)
                        .filter_map(|f| f["function"].as_str())
                        .collect()
                })
                .unwrap_or_default();
            format!(
                "pid {} {:.1} ms in {} ({}): {} {stack:?}",
                e["pid"], e["duration_ms"], e["culprit"]["function"], e["kind"], e["request"]
            )
        })
        .collect();
    let count = |list: &[Value], key: &str| {
        let mut m: std::collections::BTreeMap<String, usize> = Default::default();
        for v in list {
            *m.entry(v[key].to_string()).or_default() += 1;
        }
        m
    };
    assert!(
        extra.is_empty(),
        "{what}: episodes that match no block:\n{}\nblocks by pid {:?}, episodes by pid {:?}",
        extra.join("\n"),
        count(blocks, "pid"),
        count(episodes, "pid")
    );
    out
}
