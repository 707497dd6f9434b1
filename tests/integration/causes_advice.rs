//! More blocking causes, live on every CPython the suite runs (tests/py/causes_advice.py):
//! work that holds the GIL (no `to_thread` in the advice) or releases it (`to_thread`), what a
//! blocked call waits on (a pipe is not a file; a socket read with read(2) is network; a call to
//! the process's own server), the driver under an ORM, machinery that runs blocking code (a
//! logging handler of the application's own, finalizers), code generated at run time, and GIL
//! holders whose own code is named. The checks are `causes::check_episode`'s.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use crate::causes::{check_cases, check_durations, check_widths, marker, run, Case, BASE};
use crate::support::pythons;

const HELD: Case = Case {
    gil: Some(true),
    ..BASE
};

#[test]
fn work_that_holds_the_gil_is_never_sent_to_a_thread() {
    check_cases(&[
        Case {
            scenario: "regex",
            source: Some("re"),
            culprit: "block_regex",
            advice: &["bound the input"],
            ..HELD
        },
        Case {
            scenario: "regex_compiled",
            source: Some("re"),
            culprit: "block_regex_compiled",
            advice: &["bound the input"],
            ..HELD
        },
        Case {
            scenario: "gc",
            source: Some("gc"),
            culprit: "block_gc",
            advice: &["gc.freeze()"],
            ..HELD
        },
        // `collect()` names nothing: the interpreter's GC state does.
        Case {
            scenario: "gc_flag",
            source: Some("gc"),
            culprit: "block_gc_flag",
            advice: &["gc.freeze()"],
            ..HELD
        },
        // The module's own code runs once, at the import: the import line is to blame.
        Case {
            scenario: "import",
            source: Some("import"),
            culprit: "block_import",
            advice: &["at start-up"],
            ..HELD
        },
        Case {
            scenario: "json",
            source: Some("json"),
            culprit: "block_json",
            advice: &["orjson"],
            ..HELD
        },
        Case {
            scenario: "pickle",
            source: Some("pickle"),
            culprit: "block_pickle",
            advice: &["process pool"],
            ..HELD
        },
        Case {
            scenario: "base64",
            source: Some("base64"),
            culprit: "block_base64",
            advice: &["in chunks"],
            ..HELD
        },
        Case {
            scenario: "yaml",
            source: Some("yaml"),
            culprit: "block_yaml",
            advice: &["CSafeLoader"],
            module: Some("yaml"),
            ..HELD
        },
        Case {
            scenario: "fastapi",
            source: Some("fastapi"),
            culprit: "block_fastapi",
            advice: &["pre-serialised"],
            module: Some("fastapi"),
            ..HELD
        },
        Case {
            scenario: "pydantic",
            source: Some("pydantic"),
            culprit: "block_pydantic",
            advice: &["TypeAdapter"],
            module: Some("pydantic"),
            ..HELD
        },
    ]);
}

#[test]
fn work_that_releases_the_gil_may_go_to_a_thread() {
    check_cases(&[
        Case {
            scenario: "hashlib",
            source: Some("hashlib"),
            culprit: "block_hashlib",
            ..BASE
        },
        Case {
            scenario: "zlib",
            source: Some("zlib"),
            culprit: "block_zlib",
            ..BASE
        },
    ]);
}

/// A full stdout pipe is not disk I/O; a pipe to a child is a pipe; read(2) on a socket is
/// network.
#[test]
fn the_fd_names_what_was_waited_on() {
    check_cases(&[
        Case {
            scenario: "stdout_pipe",
            kind: &["pipe"],
            source: Some("stdout"),
            culprit: "block_stdout_pipe",
            offload: false,
            advice: &["full pipe"],
            fd: Some("pipe"),
            ..BASE
        },
        Case {
            scenario: "child_pipe",
            kind: &["pipe"],
            source: Some("pipe"),
            culprit: "block_child_pipe",
            fd: Some("pipe"),
            ..BASE
        },
        Case {
            scenario: "socket_read",
            kind: &["network"],
            source: Some("socket"),
            culprit: "block_socket_read",
            fd: Some("socket"),
            ..BASE
        },
    ]);
}

/// A handler calling the server that runs on its own loop waits for its timeout.
#[test]
fn a_call_to_the_process_own_server_is_named() {
    let own = Case {
        kind: &["network"],
        offload: false,
        advice: &["its own server", "self-call deadlock"],
        fd: Some("socket"),
        self_call: true,
        ..BASE
    };
    check_cases(&[
        Case {
            scenario: "self_call_http",
            source: Some("urllib"),
            culprit: "block_self_call_http",
            ..own
        },
        Case {
            scenario: "self_call_socket",
            source: Some("socket"),
            culprit: "block_self_call_socket",
            ..own
        },
    ]);
}

/// A sync SQLAlchemy session is a database query on its driver, not ORM overhead; sqlite3
/// releases the GIL while the query runs.
#[test]
fn the_driver_under_an_orm_is_named() {
    let orm = Case {
        source: Some("sqlalchemy"),
        driver: Some("sqlite3"),
        advice: &["AsyncSession", "aiosqlite"],
        module: Some("sqlalchemy"),
        ..BASE
    };
    check_cases(&[
        Case {
            scenario: "sqlalchemy_session",
            culprit: "block_sqlalchemy_session",
            ..orm
        },
        Case {
            scenario: "sqlalchemy_core",
            culprit: "block_sqlalchemy_core",
            ..orm
        },
    ]);
}

/// PostgreSQL, started by the test on a unix socket in a temporary directory, as the
/// `postgres` user (initdb refuses root).
struct Postgres {
    server: Child,
    dir: tempfile::TempDir,
    port: u16,
}

impl Drop for Postgres {
    fn drop(&mut self) {
        // SIGINT: PostgreSQL's fast shutdown.
        unsafe { libc::kill(self.server.id() as i32, libc::SIGINT) };
        let _ = self.server.wait();
    }
}

fn pg_bin(name: &str) -> Option<PathBuf> {
    let on_path = std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .map(|d| d.join(name));
    let debian = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path().join("bin").join(name));
    on_path.chain(debian).find(|p| p.is_file())
}

fn start_postgres() -> Result<Postgres, String> {
    let (initdb, postgres) = (pg_bin("initdb"), pg_bin("postgres"));
    let (Some(initdb), Some(postgres)) = (initdb, postgres) else {
        return Err("PostgreSQL's initdb/postgres are not installed".into());
    };
    let uid = |flag: &str| -> Result<u32, String> {
        let out = Command::new("id")
            .args([flag, "postgres"])
            .output()
            .map_err(|e| e.to_string())?;
        String::from_utf8_lossy(&out.stdout)
            .trim()
            .parse()
            .map_err(|_| "no `postgres` user to run PostgreSQL as".to_string())
    };
    let (user, group) = (uid("-u")?, uid("-g")?);
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    std::os::unix::fs::chown(dir.path(), Some(user), Some(group)).map_err(|e| e.to_string())?;
    let as_postgres = |bin: &Path| {
        let mut c = Command::new("setpriv");
        c.args(["--reuid=postgres", "--regid=postgres", "--init-groups"])
            .arg(bin)
            .env("HOME", dir.path());
        c
    };
    let data = dir.path().join("data");
    let ok = as_postgres(&initdb)
        .arg("-D")
        .arg(&data)
        .args(["-A", "trust", "-U", "postgres"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        return Err("initdb failed".into());
    }
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map_err(|e| e.to_string())?
        .port();
    let mut server = as_postgres(&postgres)
        .arg("-D")
        .arg(&data)
        .arg("-k")
        .arg(dir.path())
        .args(["-p", &port.to_string(), "-c", "listen_addresses="])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| e.to_string())?;
    // Its READY: the log line saying it accepts connections.
    let log = BufReader::new(server.stderr.take().unwrap());
    let mut ready = false;
    for line in log.lines().map_while(Result::ok) {
        if line.contains("ready to accept connections") {
            ready = true;
            break;
        }
    }
    let pg = Postgres { server, dir, port };
    if !ready {
        return Err("postgres exited before it was ready".into());
    }
    Ok(pg)
}

/// psycopg2 under SQLAlchemy waits on PostgreSQL's socket: network, `sqlalchemy` on
/// `psycopg2`.
#[test]
fn the_driver_under_an_orm_on_postgresql() {
    let pg = match start_postgres() {
        Ok(pg) => pg,
        Err(why) => {
            eprintln!("SKIPPED: sqlalchemy_postgres: {why}");
            return;
        }
    };
    // causes_advice.py connects to the server named here.
    std::env::set_var(
        "LOOPSPY_PG",
        format!("{}:{}", pg.dir.path().display(), pg.port),
    );
    let module = "sqlalchemy, psycopg2";
    check_cases(&[Case {
        scenario: "sqlalchemy_postgres",
        kind: &["network"],
        source: Some("sqlalchemy"),
        driver: Some("psycopg2"),
        culprit: "block_sqlalchemy_postgres",
        advice: &["AsyncSession", "asyncpg"],
        fd: Some("socket"),
        module: Some(module),
        ..BASE
    }]);
}

/// Blocking code run by machinery on the application's behalf: the fix is in how the machinery
/// is used.
#[test]
fn machinery_that_ran_the_blocking_code_is_named() {
    let logging = Case {
        source: Some("logging"),
        culprit: "emit",
        offload: false,
        advice: &["QueueHandler"],
        ..BASE
    };
    let finalizer = Case {
        kind: &["sleep"],
        source: Some("finalizer"),
        offload: false,
        advice: &["explicitly"],
        ..BASE
    };
    check_cases(&[
        Case {
            scenario: "log_handler_sleep",
            kind: &["sleep"],
            ..logging
        },
        Case {
            scenario: "log_handler_send",
            kind: &["network"],
            ..logging
        },
        Case {
            scenario: "finalizer",
            culprit: "__del__",
            ..finalizer
        },
        Case {
            scenario: "weakref_finalize",
            culprit: "slow_cleanup",
            ..finalizer
        },
    ]);
}

/// Code compiled at run time (`exec`, a dataclass's `__init__`) is never the culprit.
#[test]
fn generated_code_is_never_the_culprit() {
    let sleep = Case {
        kind: &["sleep"],
        source: Some("time.sleep"),
        offload: false,
        advice: &["asyncio.sleep"],
        ..BASE
    };
    check_cases(&[
        Case {
            scenario: "generated_exec",
            culprit: "block_generated_exec",
            ..sleep
        },
        Case {
            scenario: "dataclass",
            culprit: "block_dataclass",
            ..sleep
        },
    ]);
}

/// A worker thread holding the GIL starves the loop: the holder carries its own culprit and
/// source, and the advice is the holder's fix, never a thread.
#[test]
fn gil_holders_name_their_own_source() {
    for (v, py) in pythons() {
        for (scenario, source, function, word) in [
            ("gil_base64", "base64", "decode_in_worker", "in chunks"),
            ("gil_gc", "gc", "collect_in_worker", "gc.freeze()"),
            ("gil_regex", "re", "match_in_worker", "backtracks"),
        ] {
            let label = format!("{v} {scenario}");
            let r = run(&py, scenario);
            check_durations(&label, &r, &r.blocks, 12.0);
            for ep in &r.episodes {
                let holder = &ep["gil_holder"];
                assert_eq!(ep["kind"].as_str(), Some("gil"), "{label}: {ep}");
                // (The holder's name is `gil_starvation_blames_the_holder`'s to check.)
                assert_ne!(holder["tid"], ep["tid"], "{label}: {ep}");
                assert_eq!(holder["source"].as_str(), Some(source), "{label}: {ep}");
                assert_eq!(
                    holder["culprit"]["function"].as_str(),
                    Some(function),
                    "{label}: {ep}"
                );
                assert_eq!(
                    holder["culprit"]["line"].as_u64(),
                    Some(marker(scenario)),
                    "{label}: {ep}"
                );
                assert_eq!(ep["holds_gil"].as_bool(), Some(true), "{label}: {ep}");
                let advice = ep["advice"].as_str().unwrap_or("");
                assert!(
                    advice.contains("held the GIL") && advice.contains(word),
                    "{label}: {ep}"
                );
                assert!(!advice.contains("to_thread"), "{label}: {ep}");
            }
            check_widths(&label, &r.svg);
        }
    }
}

#[test]
fn advice_markers_exist() {
    for name in [
        "regex",
        "gc",
        "import",
        "stdout_pipe",
        "self_call_http",
        "sqlalchemy_session",
        "sqlalchemy_postgres",
        "log_handler_sleep",
        "finalizer",
        "dataclass",
        "gil_base64",
    ] {
        assert!(marker(name) > 0);
    }
}
