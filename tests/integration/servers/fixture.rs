//! The FastAPI recording the offline tests replay (tests/fixtures/fastapi.jsonl): made from a
//! real run by this test, which is ignored by default because it rewrites the fixture:
//! `cargo test --release --test integration record_fastapi_fixture -- --ignored`, then
//! `LOOPSPY_BLESS=1 cargo test --release --test integration fastapi` for the golden files.

use super::services::{self, server_pythons};
use super::{request, Recording, Server};
use crate::support::repo;

#[test]
#[ignore = "rewrites tests/fixtures/fastapi.jsonl"]
fn record_fastapi_fixture() {
    let (_, py) = server_pythons(&["3.11"], "fastapi, uvicorn, sqlalchemy, psycopg2")
        .pop()
        .expect("the CPython 3.11 servers venv (scripts/deps/servers.sh)");
    let pg = services::postgres().expect("PostgreSQL");
    let slow = services::slow_http();
    let env = [
        ("LOOPSPY_PG", format!("127.0.0.1:{}", pg.port)),
        ("LOOPSPY_SLOW", format!("http://127.0.0.1:{}", slow.port)),
    ];
    let mut server = Server::start(
        &py,
        &["-m", "uvicorn", "fastapi_app:app", "--port", "{port}"],
        &env,
    );
    let routes = [
        ("GET", "/sleep/0.15"),
        ("GET", "/orders/7"),
        ("GET", "/quotes/ACME"),
    ];
    for (m, p) in routes {
        request(server.port, m, p);
    }
    let rec = Recording::start(server.pid(), &["--rate", "200", "--format", "raw"]);
    for (m, p) in routes {
        request(server.port, m, p);
    }
    request(server.port, "GET", "/orders/8");
    request(server.port, "POST", "/housekeeping");
    // The background task reports its block once it ran.
    while !server.blocks().iter().any(|b| b["name"] == "housekeeping") {
        server.out.next(std::time::Duration::from_secs(10));
    }
    request(server.port, "GET", "/health");
    let (_, stderr, raw) = rec.stop_with_output();
    assert!(raw.lines().count() > 10, "no recording:\n{stderr}");
    std::fs::write(repo().join("tests/fixtures/fastapi.jsonl"), raw).unwrap();
}
