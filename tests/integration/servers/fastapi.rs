//! FastAPI `async def` routes under uvicorn calling blocking clients of real servers: requests
//! (a slow HTTP server), time.sleep, a SQLAlchemy session and psycopg2 on PostgreSQL, redis-py,
//! boto3 on moto's S3, Celery's `AsyncResult.get()` (Redis broker and backend, a worker
//! started here), numpy (a large matmul, a Python loop over an array) and pymysql on MariaDB.
//! On CPython 3.11 and the newest version with a servers venv.

use super::services::{self, full_stack_minors, server_pythons, Service};
use super::{block_line, check_episode, pair, request, Expect, Recording, Server};

const RATE: f64 = 500.0;
const SCRIPT: &str = "fastapi_app.py";

/// One route of tests/py/servers/fastapi_app.py.
pub struct Case {
    pub name: &'static str,
    pub method: &'static str,
    /// What is sent (may carry a query string).
    pub target: &'static str,
    pub path: &'static str,
    pub route: &'static str,
    pub culprit: &'static str,
    pub kinds: &'static [&'static str],
    pub source: Option<&'static str>,
    pub source_today: Option<Option<&'static str>>,
    pub advice: &'static str,
    /// The service it needs: "pg", "redis", "s3", "slow", "mysql" or "".
    pub needs: &'static str,
}

pub const CASES: &[Case] = &[
    Case {
        name: "sleep",
        method: "GET",
        target: "/sleep/0.15?token=secret-token",
        path: "/sleep/0.15",
        route: "/sleep/{seconds}",
        culprit: "nap",
        kinds: &["sleep"],
        source: Some("time.sleep"),
        source_today: None,
        advice: "asyncio.sleep",
        needs: "",
    },
    Case {
        name: "requests",
        method: "GET",
        target: "/quotes/ACME",
        path: "/quotes/ACME",
        route: "/quotes/{symbol}",
        culprit: "get_quote",
        kinds: &["network"],
        source: Some("requests"),
        source_today: None,
        advice: "async HTTP client",
        needs: "slow",
    },
    Case {
        name: "sqlalchemy",
        method: "GET",
        target: "/orders/7",
        path: "/orders/7",
        route: "/orders/{order_id}",
        culprit: "get_order",
        kinds: &["network"],
        source: Some("sqlalchemy"),
        source_today: None,
        advice: "AsyncSession",
        needs: "pg",
    },
    Case {
        name: "psycopg2",
        method: "GET",
        target: "/invoices/9",
        path: "/invoices/9",
        route: "/invoices/{invoice_id}",
        culprit: "get_invoice",
        kinds: &["network"],
        source: Some("psycopg2"),
        // The C call leaves no frame; the line's `.execute(` is matched to the file's first
        // database import, which is sqlalchemy in this module.
        source_today: Some(Some("sqlalchemy")),
        advice: "async",
        needs: "pg",
    },
    Case {
        name: "redis",
        method: "GET",
        target: "/sessions/abc",
        path: "/sessions/abc",
        route: "/sessions/{key}",
        culprit: "get_session",
        kinds: &["network"],
        source: Some("redis"),
        source_today: None,
        advice: "redis.asyncio",
        needs: "redis",
    },
    Case {
        name: "boto3",
        method: "PUT",
        target: "/uploads/report.bin",
        path: "/uploads/report.bin",
        route: "/uploads/{name}",
        culprit: "upload",
        kinds: &["network"],
        source: Some("boto3"),
        source_today: None,
        advice: "aioboto3",
        needs: "s3",
    },
    Case {
        name: "celery",
        method: "GET",
        target: "/reports/3",
        path: "/reports/3",
        route: "/reports/{report_id}",
        culprit: "build_report",
        kinds: &["network"],
        source: Some("celery"),
        source_today: None,
        advice: ".get()",
        needs: "redis",
    },
    Case {
        name: "numpy_matmul",
        method: "GET",
        target: "/matrix/1600",
        path: "/matrix/1600",
        route: "/matrix/{size}",
        culprit: "multiply",
        kinds: &["cpu"],
        source: Some("numpy"),
        // `a @ a` runs in C with no numpy frame and no `np.` on the line.
        source_today: Some(None),
        advice: "to_thread",
        needs: "",
    },
    Case {
        name: "numpy_loop",
        method: "GET",
        target: "/scores/100000",
        path: "/scores/100000",
        route: "/scores/{n}",
        culprit: "score",
        // The loop's header or body line is sampled: see `line_ok`.
        kinds: &["cpu"],
        source: None,
        source_today: None,
        // A Python-level loop holds the GIL: a thread would stall the loop too.
        advice: "process pool",
        needs: "",
    },
    Case {
        name: "pymysql",
        method: "GET",
        target: "/customers/5",
        path: "/customers/5",
        route: "/customers/{customer_id}",
        culprit: "get_customer",
        kinds: &["network"],
        source: Some("pymysql"),
        source_today: None,
        advice: "aiomysql",
        needs: "mysql",
    },
];

/// The services every case needs, started once.
pub struct Services {
    pub pg: Option<Service>,
    pub redis: Option<Service>,
    pub mysql: Option<Service>,
    pub slow: Service,
    pub s3: Service,
    pub celery: Option<Service>,
}

impl Services {
    pub fn start(py: &std::path::Path) -> Services {
        let redis = services::redis();
        let celery = redis
            .as_ref()
            .map(|r| services::celery_worker(py, &redis_url(r)));
        Services {
            pg: services::postgres(),
            mysql: services::mariadb(),
            slow: services::slow_http(),
            s3: services::moto(py),
            redis,
            celery,
        }
    }

    pub fn env(&self) -> Vec<(&'static str, String)> {
        let mut env = vec![
            (
                "LOOPSPY_SLOW",
                format!("http://127.0.0.1:{}", self.slow.port),
            ),
            ("LOOPSPY_S3", format!("http://127.0.0.1:{}", self.s3.port)),
        ];
        if let Some(pg) = &self.pg {
            env.push(("LOOPSPY_PG", format!("127.0.0.1:{}", pg.port)));
        }
        if let Some(r) = &self.redis {
            env.push(("LOOPSPY_REDIS", redis_url(r)));
        }
        if let Some(m) = &self.mysql {
            env.push(("LOOPSPY_MYSQL", format!("127.0.0.1:{}", m.port)));
        }
        env
    }

    pub fn has(&self, needs: &str) -> bool {
        match needs {
            "pg" => self.pg.is_some(),
            "redis" => self.redis.is_some() && self.celery.is_some(),
            "mysql" => self.mysql.is_some(),
            _ => true,
        }
    }
}

fn redis_url(r: &Service) -> String {
    format!("redis://127.0.0.1:{}/0", r.port)
}

/// The line a case blames: the marker, or for a Python loop its header or body.
fn line_ok(case: &Case, got: u64, marker: u64) -> bool {
    got == marker || (case.name == "numpy_loop" && got == marker + 1)
}

pub fn expect(case: &Case, label: &str, line: u64) -> Expect<'static> {
    Expect {
        label: label.to_string(),
        route: case.route,
        method: case.method,
        path: case.path,
        culprit: case.culprit,
        line,
        kinds: case.kinds,
        source: case.source,
        source_today: case.source_today,
        advice: case.advice,
    }
}

#[test]
fn fastapi_routes_blocking_on_real_servers() {
    for minor in full_stack_minors() {
        for (v, py) in server_pythons(&[&minor], "fastapi, uvicorn, sqlalchemy, celery, moto") {
            let svc = Services::start(&py);
            let mut server = Server::start(
                &py,
                &["-m", "uvicorn", "fastapi_app:app", "--port", "{port}"],
                &svc.env(),
            );
            let cases: Vec<&Case> = CASES
                .iter()
                .filter(|c| {
                    let ok = svc.has(c.needs);
                    if !ok {
                        eprintln!(
                            "SKIPPED: {v} fastapi {}: its server is not installed",
                            c.name
                        );
                    }
                    ok
                })
                .collect();
            // Warm every route once (first calls import and connect), before loopspy attaches.
            for c in &cases {
                request(server.port, c.method, c.target);
            }
            let warm = server.wait_blocks(cases.len()).len();
            let rec = Recording::start(server.pid(), &["--rate", &RATE.to_string()]);
            for c in &cases {
                for _ in 0..2 {
                    request(server.port, c.method, c.target);
                }
            }
            let (episodes, stderr) = rec.stop();
            let blocks: Vec<_> = server.wait_blocks(warm + 2 * cases.len()).split_off(warm);
            let pairs = pair(&episodes, &blocks, &format!("{v} fastapi\n{stderr}"));
            for (ep, b) in pairs {
                let case = cases
                    .iter()
                    .find(|c| b["name"] == c.name)
                    .expect("a known case");
                let label = format!("{v} fastapi {}", case.name);
                let marker = block_line(SCRIPT, &format!("{}", case.name));
                let got = ep["culprit"]["line"].as_u64().unwrap_or(0);
                let line = if line_ok(case, got, marker) {
                    got
                } else {
                    marker
                };
                check_episode(
                    &expect(case, &label, line),
                    ep,
                    b["ms"].as_f64().unwrap(),
                    1000.0 / RATE,
                );
                assert!(
                    !ep.to_string().contains("secret-token"),
                    "{label}: the query string was read: {ep}"
                );
            }
            assert!(
                stderr.contains("blocked time by endpoint")
                    && stderr.contains("GET /sleep/{seconds}"),
                "{v}: the summary's endpoint table:\n{stderr}"
            );
        }
    }
}
