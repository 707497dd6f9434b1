//! The other frameworks: Django's async view on the sync ORM (PostgreSQL) under uvicorn,
//! aiohttp with blocking file I/O, and a standard-library ASGI server (tests/py/servers/
//! mini_asgi.py, shaped like uvicorn + Starlette) on every CPython, with `--no-request`.

use std::process::{Command, Stdio};

use serde_json::Value;

use super::services::{self, full_stack_minors, server_pythons, Lines};
use super::{block_line, check_episode, pair, request, Expect, Recording, Server};
use crate::support::{pythons, tagged, VERSIONS};

const RATE: f64 = 500.0;

#[test]
fn django_async_view_on_the_sync_orm() {
    let Some(pg) = services::postgres() else {
        return;
    };
    for minor in full_stack_minors() {
        for (v, py) in server_pythons(&[&minor], "django, uvicorn, psycopg2") {
            let env = [("LOOPSPY_PG", format!("127.0.0.1:{}", pg.port))];
            let mut server = Server::start(
                &py,
                &[
                    "-m",
                    "uvicorn",
                    "django_app:application",
                    "--port",
                    "{port}",
                ],
                &env,
            );
            request(server.port, "GET", "/orders/1/");
            let warm = server.wait_blocks(1).len();
            let rec = Recording::start(server.pid(), &["--rate", &RATE.to_string()]);
            for _ in 0..2 {
                request(server.port, "GET", "/orders/1/?page=2");
            }
            let (episodes, stderr) = rec.stop();
            let blocks = server.wait_blocks(warm + 2).split_off(warm);
            let label = format!("{v} django");
            let line = block_line("django_app.py", "django");
            for (ep, b) in pair(&episodes, &blocks, &format!("{label}\n{stderr}")) {
                let e = Expect {
                    label: label.clone(),
                    route: "/orders/<int:order_id>/",
                    method: "GET",
                    path: "/orders/1/",
                    culprit: "order_detail",
                    line,
                    kinds: &["network"],
                    source: Some("django"),
                    source_today: None,
                    advice: "sync_to_async",
                };
                check_episode(&e, ep, b["ms"].as_f64().unwrap(), 1000.0 / RATE);
                // Django 5 runs the view in a task of its own, which holds no scope: the
                // request comes from the view's `request`; later versions run it in the
                // server's task.
                let coroutine = ep["coroutine"].as_str().unwrap_or("");
                assert!(
                    [
                        "ASGIHandler.handle.<locals>.process_request",
                        "RequestResponseCycle.run_asgi"
                    ]
                    .contains(&coroutine),
                    "{label}: {ep}"
                );
            }
        }
    }
}

#[test]
fn aiohttp_handler_with_blocking_file_io() {
    for (v, py) in server_pythons(VERSIONS, "aiohttp") {
        let label = format!("{v} aiohttp");
        let data = tempfile::tempdir().unwrap();
        let mut target = Command::new(&py)
            .arg(services::servers_dir().join("aiohttp_app.py"))
            .arg(data.path())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut out = Lines::stdout(&mut target);
        let ready = out.until("READY").and_then(|l| tagged(&l, "READY"));
        let ready = ready.unwrap_or_else(|| panic!("{label}: no READY:\n{}", out.text()));
        let port = ready["port"].as_u64().unwrap() as u16;
        let rec = Recording::start(target.id(), &["--rate", &RATE.to_string()]);
        for name in ["daily", "weekly"] {
            services::http(port, "POST", &format!("/reports/{name}?user=secret-user")).unwrap();
        }
        let (episodes, stderr) = rec.stop();
        drop(target.stdin.take());
        target.wait().unwrap();
        out.drain();
        let blocks: Vec<Value> = out.seen.iter().filter_map(|l| tagged(l, "BLOCK")).collect();
        let line = block_line("aiohttp_app.py", "aiohttp");
        for ((ep, b), name) in pair(&episodes, &blocks, &format!("{label}\n{stderr}"))
            .into_iter()
            .zip(["daily", "weekly"])
        {
            let path = format!("/reports/{name}");
            let e = Expect {
                label: label.clone(),
                route: "/reports/{name}",
                method: "POST",
                path: &path,
                culprit: "save_report",
                line,
                // fsync on a fast virtual disk is partly on-CPU in the kernel.
                kinds: &["file", "cpu"],
                source: Some("os.fsync"),
                source_today: None,
                advice: "to_thread",
            };
            check_episode(&e, ep, b["ms"].as_f64().unwrap(), 1000.0 / RATE);
            assert!(!ep.to_string().contains("secret-user"), "{label}: {ep}");
        }
    }
}

/// The standard-library ASGI server on every CPython: the route of an HTTP request, a
/// websocket-typed scope, and `--no-request`.
#[test]
fn asgi_scope_on_every_python() {
    let script = services::servers_dir().join("mini_asgi.py");
    let line = block_line("mini_asgi.py", "get_order");
    for (v, py) in pythons() {
        for no_request in [false, true] {
            let label = format!(
                "{v} mini_asgi{}",
                if no_request { " --no-request" } else { "" }
            );
            let mut target = Command::new(&py)
                .arg(&script)
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .spawn()
                .unwrap();
            let mut out = Lines::stdout(&mut target);
            let ready = out.until("READY").and_then(|l| tagged(&l, "READY"));
            let port = ready.expect("READY")["port"].as_u64().unwrap() as u16;
            let mut extra = vec!["--rate", "500", "--format", "raw"];
            if no_request {
                extra.push("--no-request");
            }
            let rec = Recording::start(target.id(), &extra);
            request(port, "GET", "/orders/42?token=secret-token");
            request(port, "GET", "/ws-like");
            let (episodes, stderr, recording) = rec.stop_with_output();
            assert!(recording.contains("\"probe\""), "{label}: no raw recording");
            drop(target.stdin.take());
            target.wait().unwrap();
            out.drain();
            let blocks: Vec<Value> = out.seen.iter().filter_map(|l| tagged(l, "BLOCK")).collect();
            assert_eq!(episodes.len(), 2, "{label}: {episodes:#?}\n{stderr}");
            assert_eq!(blocks.len(), 2, "{label}");
            if no_request {
                for ep in &episodes {
                    assert!(ep["request"].is_null(), "{label}: {ep}");
                }
                assert!(
                    !recording.contains("\"request\""),
                    "{label}: a request was read"
                );
                continue;
            }
            let e = Expect {
                label: label.clone(),
                route: "/orders/{order_id}",
                method: "GET",
                path: "/orders/42",
                culprit: "get_order",
                line,
                kinds: &["sleep"],
                source: Some("time.sleep"),
                source_today: None,
                advice: "asyncio.sleep",
            };
            check_episode(&e, &episodes[0], blocks[0]["ms"].as_f64().unwrap(), 2.0);
            assert!(!episodes[0].to_string().contains("secret"), "{label}");
            let ws = &episodes[1]["request"];
            assert_eq!(ws["method"], "WEBSOCKET", "{label}: {}", episodes[1]);
            assert_eq!(ws["route"], "/ws-like", "{label}");
        }
    }
}
