//! `loopspy monitor`, live, against tests/py/monitor_target.py (a service that blocks when told
//! to): a real Prometheus server scrapes it and counts the episodes; `/metrics` shows a hang
//! while it lasts; `go tool pprof` reads `/debug/pprof/profile`; SIGTERM ends it at once.
//! Prometheus and go come from scripts/deps/ecosystem.sh; without them those tests print a
//! SKIPPED line.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::formats::go_pprof_raw;
use crate::support::{loopspy, pythons, repo, tagged};

/// The target service: commands on stdin, READY/BLOCKED/TASKS lines on stdout.
struct Service {
    child: Child,
    stdin: ChildStdin,
    lines: mpsc::Receiver<String>,
}

impl Service {
    fn start() -> Service {
        let (_, py) = pythons().pop().unwrap();
        let mut child = Command::new(py)
            .arg(repo().join("tests/py/monitor_target.py"))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let lines = spawn_lines(child.stdout.take().unwrap());
        let stdin = child.stdin.take().unwrap();
        let s = Service {
            child,
            stdin,
            lines,
        };
        s.expect("READY");
        s
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn expect(&self, tag: &str) -> Value {
        loop {
            let line = self
                .lines
                .recv_timeout(Duration::from_secs(60))
                .unwrap_or_else(|_| panic!("the target never said {tag}"));
            if let Some(v) = tagged(&line, tag) {
                return v;
            }
        }
    }

    fn send(&mut self, command: &str) {
        writeln!(self.stdin, "{command}").unwrap();
        self.stdin.flush().unwrap();
    }

    /// Block the loop for `ms` and wait until the target says it is over.
    fn block(&mut self, ms: u32) -> f64 {
        self.send(&format!("block {ms}"));
        self.expect("BLOCKED")["ms"].as_f64().unwrap()
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn spawn_lines(r: impl Read + Send + 'static) -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(r).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

/// A running `loopspy monitor`, with the address it serves on.
struct Monitor {
    child: Child,
    addr: String,
    stderr: mpsc::Receiver<String>,
}

impl Monitor {
    fn start(pid: u32, extra: &[&str]) -> Monitor {
        let mut child = Command::new(loopspy())
            .args([
                "monitor",
                "--pid",
                &pid.to_string(),
                "--listen",
                "127.0.0.1:0",
            ])
            .args(extra)
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stderr = spawn_lines(child.stderr.take().unwrap());
        let mut addr = None;
        loop {
            let line = stderr
                .recv_timeout(Duration::from_secs(60))
                .expect("loopspy monitor ended before sampling");
            if let Some(rest) = line.strip_prefix("loopspy: serving http://") {
                addr = rest.split('/').next().map(String::from);
            }
            if line.starts_with("loopspy: sampling process") {
                break;
            }
        }
        Monitor {
            child,
            addr: addr.expect("the serving line names the address"),
            stderr,
        }
    }

    fn get(&self, path: &str) -> (u16, Vec<u8>) {
        http_get(&self.addr, path)
    }

    fn metrics(&self) -> String {
        let (code, body) = self.get("/metrics");
        assert_eq!(code, 200);
        String::from_utf8(body).unwrap()
    }
}

impl Drop for Monitor {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A plain HTTP/1.0 GET: (status, body).
fn http_get(addr: &str, path: &str) -> (u16, Vec<u8>) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").unwrap();
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).unwrap();
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("an HTTP response");
    let head = String::from_utf8_lossy(&raw[..split]).into_owned();
    let code = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    (code, raw[split + 4..].to_vec())
}

/// The value of a metric line `name{labels} value` whose labels contain `with`.
fn metric(text: &str, name: &str, with: &str) -> Option<f64> {
    text.lines()
        .filter(|l| l.starts_with(&format!("{name}{{")) && l.contains(with))
        .find_map(|l| l.rsplit(' ').next()?.parse().ok())
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Poll `f` every 100 ms until it gives `Some`, for at most `limit`.
fn wait_for<T>(limit: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if Instant::now() > deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A Prometheus server of its own: config, storage and port made by the test.
struct Prometheus {
    child: Child,
    addr: String,
    _dir: tempfile::TempDir,
}

impl Prometheus {
    fn start(target: &str) -> Prometheus {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nscrape_configs:\n  - job_name: loopspy\n    static_configs:\n      - targets: ['{target}']\n"
            ),
        )
        .unwrap();
        let addr = format!("127.0.0.1:{}", free_port());
        let child = Command::new("prometheus")
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address={addr}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let p = Prometheus {
            child,
            addr,
            _dir: dir,
        };
        wait_for(Duration::from_secs(60), || {
            TcpStream::connect(&p.addr)
                .ok()
                .and_then(|_| (http_get(&p.addr, "/-/ready").0 == 200).then_some(()))
        })
        .expect("prometheus did not become ready");
        p
    }

    /// The value of an instant query that returns one number, if any.
    fn query(&self, q: &str) -> Option<f64> {
        let (code, body) = http_get(&self.addr, &format!("/api/v1/query?query={q}"));
        if code != 200 {
            return None;
        }
        let v: Value = serde_json::from_slice(&body).ok()?;
        v["data"]["result"][0]["value"][1].as_str()?.parse().ok()
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn have(tool: &str, arg: &str) -> bool {
    Command::new(tool)
        .arg(arg)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok()
}

/// A real Prometheus scrapes `monitor`; after the target blocks N times, Prometheus's API says
/// N episodes (and N in the duration histogram).
#[test]
fn prometheus_counts_the_episodes() {
    if !have("prometheus", "--version") {
        eprintln!("SKIPPED: prometheus is not installed (scripts/deps/ecosystem.sh installs it): monitor scrape test");
        return;
    }
    let mut service = Service::start();
    let monitor = Monitor::start(service.pid(), &[]);
    let prom = Prometheus::start(&monitor.addr);
    // Prometheus has scraped the target at least once before anything blocks.
    wait_for(Duration::from_secs(60), || {
        prom.query("up%7Bjob%3D%22loopspy%22%7D")
            .filter(|v| *v == 1.0)
    })
    .expect("prometheus never scraped loopspy monitor");
    const N: usize = 4;
    for _ in 0..N {
        service.block(150);
    }
    let counted = wait_for(Duration::from_secs(60), || {
        prom.query("sum(loopspy_blocking_episodes_total)")
            .filter(|v| *v >= N as f64)
    });
    assert_eq!(
        counted,
        Some(N as f64),
        "prometheus counted {counted:?} episodes"
    );
    assert_eq!(
        prom.query("sum(loopspy_blocking_duration_seconds_count)"),
        Some(N as f64)
    );
    // Every 150 ms block lands in the 0.1-0.25 s bucket.
    let le_01 = prom.query("sum(loopspy_blocking_duration_seconds_bucket%7Ble%3D%220.1%22%7D)");
    assert_eq!(le_01, Some(0.0));
    let le_025 = prom.query("sum(loopspy_blocking_duration_seconds_bucket%7Ble%3D%220.25%22%7D)");
    assert_eq!(le_025, Some(N as f64));
}

/// `loopspy_eventloop_blocked_seconds` counts up while a hang lasts and drops to 0 after it;
/// the pprof endpoint names the blocking function; the task gauge counts tasks.
#[test]
fn live_hang_gauge_pprof_endpoint_and_tasks() {
    let mut service = Service::start();
    let dir = tempfile::tempdir().unwrap();
    let episodes = dir.path().join("episodes.jsonl");
    let monitor = Monitor::start(
        service.pid(),
        &["--episodes", &episodes.display().to_string()],
    );
    service.send("block 3000");
    let gauge = |m: &Monitor| {
        metric(
            &m.metrics(),
            "loopspy_eventloop_blocked_seconds",
            "MainThread",
        )
    };
    let first = wait_for(Duration::from_secs(10), || {
        gauge(&monitor).filter(|v| *v > 0.3)
    })
    .expect("the gauge never showed the hang");
    let later = wait_for(Duration::from_secs(10), || {
        gauge(&monitor).filter(|v| *v > first + 0.5)
    })
    .expect("the gauge did not count up while the hang lasted");
    assert!(later < 3.5, "{later}");
    let measured = service.expect("BLOCKED")["ms"].as_f64().unwrap();
    assert!(measured >= 3000.0);
    wait_for(Duration::from_secs(10), || {
        gauge(&monitor).filter(|v| *v == 0.0)
    })
    .expect("the gauge did not go back to 0 after the hang");
    let text = monitor.metrics();
    assert_eq!(
        metric(&text, "loopspy_blocking_episodes_total", "kind=\"sleep\""),
        Some(1.0),
        "{text}"
    );
    assert!(metric(&text, "loopspy_samples_total", "result=\"ok\"").unwrap() > 100.0);
    // The episode went to the log too.
    let log = std::fs::read_to_string(&episodes).unwrap();
    let ep: Value = serde_json::from_str(log.lines().next().unwrap()).unwrap();
    assert_eq!(ep["culprit"]["function"], "blocking_handler");
    assert!(
        (ep["duration_ms"].as_f64().unwrap() - measured).abs() < 20.0,
        "{ep} vs {measured}"
    );

    // Tasks: the poller reads them every 10 s.
    service.send("tasks 40");
    service.expect("TASKS");
    let tasks = wait_for(Duration::from_secs(30), || {
        metric(&monitor.metrics(), "loopspy_asyncio_tasks", "MainThread").filter(|n| *n >= 40.0)
    });
    assert!(tasks.is_some(), "{}", monitor.metrics());

    let (code, body) = monitor.get("/debug/pprof/profile?seconds=abc");
    assert_eq!(code, 400, "{}", String::from_utf8_lossy(&body));
    if !have("go", "version") {
        eprintln!("SKIPPED: go is not installed (scripts/deps/ecosystem.sh installs golang-go): pprof endpoint read by go tool pprof");
        return;
    }
    let url = format!("http://{}/debug/pprof/profile?seconds=60", monitor.addr);
    let raw = go_pprof_raw(&url, dir.path());
    assert!(raw.contains("blocking_handler"), "{raw}");
    assert!(raw.contains("blocked:[true]"), "{raw}");
    assert!(raw.contains("kind:[sleep]"), "{raw}");
}

/// SIGTERM ends `monitor` within a second, with its summary.
#[test]
fn sigterm_ends_monitor_promptly() {
    let mut service = Service::start();
    let mut monitor = Monitor::start(service.pid(), &[]);
    service.block(100);
    let t0 = Instant::now();
    unsafe { libc::kill(monitor.child.id() as i32, libc::SIGTERM) };
    let status = monitor.child.wait().unwrap();
    let took = t0.elapsed();
    assert!(status.success(), "{status}");
    assert!(took < Duration::from_secs(1), "took {took:?}");
    let rest: Vec<String> = monitor.stderr.iter().collect();
    assert!(
        rest.iter().any(|l| l.contains("1 blocking episode")),
        "{rest:?}"
    );
}
