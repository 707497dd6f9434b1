//! Worker processes for real: `uvicorn --workers 2` and `gunicorn -k uvicorn.workers.
//! UvicornWorker -w 2`, attached by the master's pid with `--subprocesses`. Episodes come from
//! both workers, each with its pid and route; `dump --subprocesses` lists every worker's loop and
//! tasks; a worker killed and restarted by the master is followed again.

use std::collections::BTreeSet;
use std::process::Command;

use serde_json::Value;

use super::services::{full_stack_minors, server_pythons};
use super::{check_episode, pair, request, Expect, Recording, Server};
use crate::support::loopspy;

/// How a master names its workers on stderr.
struct Flavor {
    name: &'static str,
    args: &'static [&'static str],
    /// The text before a worker's pid in the master's log.
    worker_line: &'static str,
}

const FLAVORS: &[Flavor] = &[
    Flavor {
        name: "uvicorn",
        args: &[
            "-m",
            "uvicorn",
            "fastapi_app:app",
            "--port",
            "{port}",
            "--workers",
            "2",
        ],
        worker_line: "Started server process [",
    },
    Flavor {
        name: "gunicorn",
        args: &[
            "-m",
            "gunicorn",
            "-k",
            "uvicorn.workers.UvicornWorker",
            "-w",
            "2",
            "-b",
            "127.0.0.1:{port}",
            "fastapi_app:app",
        ],
        worker_line: "Booting worker with pid: ",
    },
];

/// The next worker pid the master announces.
fn next_worker(server: &mut Server, f: &Flavor) -> u32 {
    let line = server
        .err
        .until(f.worker_line)
        .unwrap_or_else(|| panic!("{}: no worker announced:\n{}", f.name, server.err.text()));
    let rest = &line[line.find(f.worker_line).unwrap() + f.worker_line.len()..];
    rest.trim_end_matches(']')
        .split(|c: char| !c.is_ascii_digit())
        .next()
        .and_then(|d| d.parse().ok())
        .unwrap_or_else(|| panic!("{}: no pid in {line:?}", f.name))
}

/// Waits until `n` workers in all have said "Application startup complete." (uvicorn's
/// lifespan, in both flavors): the app is imported and the worker serves.
fn wait_started(server: &mut Server, n: usize) {
    const READY: &str = "Application startup complete.";
    while server.err.seen.iter().filter(|l| l.contains(READY)).count() < n {
        assert!(
            server.err.until(READY).is_some(),
            "workers did not start:\n{}",
            server.err.text()
        );
    }
}

/// Sends pairs of concurrent blocking requests until every pid in `want` has reported a block;
/// `sent` counts the blocking requests.
fn blocks_from(server: &mut Server, want: &[u32], sent: &mut usize) {
    for _ in 0..40 {
        let seen: BTreeSet<u64> = server
            .wait_blocks(*sent)
            .iter()
            .filter_map(|b| b["pid"].as_u64())
            .collect();
        if want.iter().all(|p| seen.contains(&(*p as u64))) {
            return;
        }
        *sent += 2;
        // Two at once: while one worker blocks, the other accepts.
        let port = server.port;
        let other = std::thread::spawn(move || request(port, "GET", "/sleep/0.12"));
        request(port, "GET", "/sleep/0.12");
        other.join().unwrap();
    }
    panic!(
        "workers {want:?} never served a request: {:?}",
        server.blocks()
    );
}

fn dump_workers(master: u32) -> Value {
    let out = Command::new(loopspy())
        .args([
            "dump",
            "--subprocesses",
            "--json",
            "--pid",
            &master.to_string(),
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "dump --subprocesses: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("dump --json is JSON")
}

#[test]
fn workers_are_followed_and_dumped() {
    for minor in full_stack_minors() {
        for (v, py) in server_pythons(&[&minor], "fastapi, uvicorn, gunicorn") {
            for f in FLAVORS {
                let label = format!("{v} {}", f.name);
                let mut server = Server::start(&py, f.args, &[]);
                let workers = [next_worker(&mut server, f), next_worker(&mut server, f)];
                wait_started(&mut server, 2);
                let mut rec = Recording::start(
                    server.pid(),
                    &["--subprocesses", "--rate", "200", "--stack-rate", "10"],
                );
                rec.wait_following(&workers);
                let mut sent = 0;
                blocks_from(&mut server, &workers, &mut sent);

                let d = dump_workers(server.pid());
                let procs = d["processes"].as_array().expect("processes");
                for w in workers {
                    let p = procs
                        .iter()
                        .find(|p| p["pid"] == w)
                        .unwrap_or_else(|| panic!("{label}: worker {w} not dumped: {d:#}"));
                    assert_eq!(
                        p["loops"].as_array().map(Vec::len),
                        Some(1),
                        "{label}: {p:#}"
                    );
                    assert!(
                        !p["tasks"].as_array().unwrap().is_empty(),
                        "{label}: worker {w} has tasks (its server's): {p:#}"
                    );
                }

                // A worker dies; the master starts another, which loopspy follows.
                unsafe { libc::kill(workers[0] as i32, libc::SIGKILL) };
                let restarted = next_worker(&mut server, f);
                wait_started(&mut server, 3);
                rec.wait_following(&[restarted]);
                blocks_from(&mut server, &[restarted], &mut sent);
                let (episodes, stderr) = rec.stop();

                let blocks = server.wait_blocks(sent);
                // A worker loads the app inside its event loop (uvicorn in `Server.serve`,
                // gunicorn's UvicornWorker in `_serve`): when loopspy sees that (the restarted
                // worker), it blocks the loop too, serving no request.
                let (served, startup): (Vec<Value>, Vec<Value>) =
                    episodes.into_iter().partition(|e| !e["request"].is_null());
                for e in &startup {
                    // Only a worker's own start: never a served block that lost its request.
                    assert!(
                        [workers[0], workers[1], restarted]
                            .iter()
                            .any(|w| e["pid"] == *w),
                        "{label}: an episode outside a request in a non-worker: {e}"
                    );
                    assert!(
                        e["culprit"]["function"] != "nap",
                        "{label}: a request's block without its request: {e}"
                    );
                    eprintln!(
                        "NOTE: {label}: pid {} blocked {:.1} ms outside a request, in {}",
                        e["pid"], e["duration_ms"], e["coroutine"]
                    );
                }

                let episodes = served;
                let by_pid: BTreeSet<u64> =
                    episodes.iter().filter_map(|e| e["pid"].as_u64()).collect();
                for w in [workers[0], workers[1], restarted] {
                    assert!(
                        by_pid.contains(&(w as u64)),
                        "{label}: no episode of {w}:\n{stderr}"
                    );
                }
                // A killed worker may have been mid-request: only the blocks it reported count.
                let what = format!("{label} (workers {workers:?}, then {restarted})\n{stderr}");
                for (ep, b) in pair(&episodes, &blocks, &what) {
                    let e = Expect {
                        label: format!("{label} pid {}", b["pid"]),
                        route: "/sleep/{seconds}",
                        method: "GET",
                        path: "/sleep/0.12",
                        culprit: "nap",
                        line: super::block_line("fastapi_app.py", "sleep"),
                        kinds: &["sleep"],
                        source: Some("time.sleep"),
                        source_today: None,
                        advice: "asyncio.sleep",
                    };
                    check_episode(&e, ep, b["ms"].as_f64().unwrap(), 5.0);
                    assert_eq!(ep["tid"], ep["pid"], "{label}: a worker's main thread");
                }
                drop(server);
            }
        }
    }
}
