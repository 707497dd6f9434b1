//! Why a callback blocked: `kind` (where the time went, from the thread's OS state) and `source`
//! (the call or library to blame, from the frames), with the fix to suggest. The rules live in
//! one table so a new library is one line.

use crate::analysis::culprit::{origin, Origin};
use crate::sample::Frame;

/// One blocking source: how to recognise it in a frame and what to do about it.
pub struct SourceRule {
    /// The `source` name written into episodes.
    pub source: &'static str,
    /// Matches a frame's file path (substring) ...
    pub file: &'static str,
    /// ... and, when not empty, the function name's prefix.
    pub function: &'static str,
    /// The kind to report when the OS state says nothing more precise.
    pub kind: &'static str,
    pub advice: &'static str,
}

const HTTP: &str = "use an async HTTP client (httpx.AsyncClient or aiohttp), or wrap the call in `await asyncio.to_thread(...)`";
const SQL: &str = "use SQLAlchemy's asyncio extension (AsyncSession with an async driver), or run the query in `asyncio.to_thread`";

/// Ordered from the most specific library to the most generic module: the outermost matching
/// frame below the user's code wins, so `requests` is blamed rather than the socket it uses.
pub const SOURCE_RULES: &[SourceRule] = &[
    SourceRule { source: "requests", file: "/requests/", function: "", kind: "network", advice: HTTP },
    SourceRule { source: "urllib3", file: "/urllib3/", function: "", kind: "network", advice: HTTP },
    SourceRule { source: "boto3", file: "/boto3/", function: "", kind: "network", advice: "use aioboto3 (or aiobotocore), or run the call in `asyncio.to_thread`" },
    SourceRule { source: "boto3", file: "/botocore/", function: "", kind: "network", advice: "use aioboto3 (or aiobotocore), or run the call in `asyncio.to_thread`" },
    SourceRule { source: "sqlalchemy", file: "/sqlalchemy/", function: "", kind: "network", advice: SQL },
    SourceRule { source: "psycopg2", file: "/psycopg2/", function: "", kind: "network", advice: "use asyncpg or psycopg 3's async connection" },
    SourceRule { source: "pymysql", file: "/pymysql/", function: "", kind: "network", advice: "use aiomysql (or asyncmy)" },
    SourceRule { source: "redis", file: "/redis/", function: "", kind: "network", advice: "use `redis.asyncio`" },
    SourceRule { source: "celery", file: "/celery/", function: "", kind: "network", advice: "never block on a result's `.get()` in async code: use `.apply_async()` and poll or await via a callback" },
    SourceRule { source: "numpy", file: "/numpy/", function: "", kind: "cpu", advice: "run large array work in `asyncio.to_thread` or a separate process" },
    SourceRule { source: "torch", file: "/torch/", function: "", kind: "cpu", advice: "run large tensor work in `asyncio.to_thread` or a separate process" },
    SourceRule { source: "logging", file: "/logging/", function: "", kind: "file", advice: "log through `logging.handlers.QueueHandler` + `QueueListener` so a background thread does the writing" },
    SourceRule { source: "subprocess", file: "/subprocess.py", function: "", kind: "subprocess", advice: "use `asyncio.create_subprocess_exec()`" },
    SourceRule { source: "sqlite3", file: "/sqlite3/", function: "", kind: "file", advice: "use aiosqlite, or run the query in `asyncio.to_thread`" },
    SourceRule { source: "urllib", file: "/urllib/request.py", function: "", kind: "network", advice: HTTP },
    SourceRule { source: "http.client", file: "/http/client.py", function: "", kind: "network", advice: HTTP },
    SourceRule { source: "socket", file: "/socket.py", function: "", kind: "network", advice: "use asyncio streams (`asyncio.open_connection`) or `loop.sock_*` methods" },
    SourceRule { source: "ssl", file: "/ssl.py", function: "", kind: "network", advice: "use asyncio streams with `ssl=` instead of blocking sockets" },
    SourceRule { source: "threading", file: "/threading.py", function: "", kind: "lock", advice: "don't wait on threads or thread locks in async code: use `asyncio.Lock`, or `await asyncio.to_thread(...)` for the wait" },
    SourceRule { source: "queue", file: "/queue.py", function: "", kind: "lock", advice: "use `asyncio.Queue`, or `await asyncio.to_thread(q.get)`" },
    SourceRule { source: "concurrent.futures", file: "/concurrent/futures/", function: "", kind: "lock", advice: "await the future with `asyncio.wrap_future` instead of calling `.result()`" },
];

/// A C-level call recognised from the text of the culprit's line, for calls that leave no
/// Python frame (`time.sleep`, `socket.recv`, `os.fsync`, `sqlite3`'s `execute`, `Lock.acquire`).
pub struct LineRule {
    /// Any of these substrings of the line.
    pub needles: &'static [&'static str],
    /// The source; `DATABASE` is resolved from the file's imports.
    pub source: &'static str,
    pub kind: &'static str,
}

const DATABASE: &str = "<database>";

/// Checked in order; the first rule with a needle in the line wins.
pub const LINE_RULES: &[LineRule] = &[
    LineRule {
        needles: &["requests."],
        source: "requests",
        kind: "network",
    },
    LineRule {
        needles: &["urlopen("],
        source: "urllib",
        kind: "network",
    },
    LineRule {
        needles: &["subprocess.", "os.system(", "os.waitpid("],
        source: "subprocess",
        kind: "subprocess",
    },
    LineRule {
        needles: &[
            ".execute(",
            ".executemany(",
            ".executescript(",
            ".fetchone(",
            ".fetchall(",
            ".fetchmany(",
            ".commit(",
        ],
        source: DATABASE,
        kind: "network",
    },
    LineRule {
        needles: &[" np.", "(np.", "=np.", "[np.", "numpy."],
        source: "numpy",
        kind: "cpu",
    },
    LineRule {
        needles: &[" torch.", "(torch.", "=torch.", "[torch."],
        source: "torch",
        kind: "cpu",
    },
    LineRule {
        needles: &["time.sleep(", "sleep("],
        source: "time.sleep",
        kind: "sleep",
    },
    LineRule {
        needles: &[
            ".recv(",
            ".recv_into(",
            ".recvfrom(",
            ".sendall(",
            ".accept(",
            ".connect(",
            "create_connection(",
        ],
        source: "socket",
        kind: "network",
    },
    LineRule {
        needles: &["os.fsync(", "os.fdatasync(", "fsync("],
        source: "os.fsync",
        kind: "file",
    },
    LineRule {
        needles: &[".acquire(", ".wait(", ".join("],
        source: "threading",
        kind: "lock",
    },
    LineRule {
        needles: &[
            "open(",
            ".write(",
            ".flush(",
            ".read(",
            ".readlines(",
            "read_text(",
            "write_text(",
            "read_bytes(",
            "write_bytes(",
        ],
        source: "open",
        kind: "file",
    },
];

/// Database modules a file may import, most specific first: the one imported names the driver
/// behind an `.execute(` line.
const DATABASE_MODULES: &[&str] = &["sqlalchemy", "psycopg2", "pymysql", "redis", "sqlite3"];

/// The source named by the culprit's line (`line`), with the whole file for its imports.
pub fn line_rule(line: &str, file: &[String]) -> Option<(&'static str, &'static str)> {
    let code = line.split('#').next().unwrap_or("");
    let rule = LINE_RULES
        .iter()
        .find(|r| r.needles.iter().any(|n| code.contains(n)))?;
    if rule.source != DATABASE {
        return Some((rule.source, rule.kind));
    }
    let imported = |m: &str| {
        file.iter().any(|l| {
            let l = l.trim_start();
            l.starts_with(&format!("import {m}")) || l.starts_with(&format!("from {m}"))
        })
    };
    let module = DATABASE_MODULES.iter().find(|m| imported(m))?;
    let kind = if *module == "sqlite3" {
        "file"
    } else {
        "network"
    };
    Some((module, kind))
}

/// The I/O kind of a source whose calls do their work in the kernel, if it is one.
pub fn io_kind_of_source(source: &str) -> Option<&'static str> {
    match source {
        "os.fsync" | "open" | "logging" => Some("file"),
        "socket" | "ssl" | "urllib" | "http.client" | "requests" | "urllib3" => Some("network"),
        "subprocess" => Some("subprocess"),
        _ => None,
    }
}

/// The fix for a source named by a line rule or a frame rule.
pub fn source_advice(source: &str) -> Option<&'static str> {
    if let Some(rule) = SOURCE_RULES.iter().find(|r| r.source == source) {
        return Some(rule.advice);
    }
    Some(match source {
        "time.sleep" => "replace `time.sleep(...)` with `await asyncio.sleep(...)`",
        "os.fsync" | "open" => {
            "use aiofiles, or run the file work in `await asyncio.to_thread(...)`"
        }
        _ => return None,
    })
}

/// The fix for a kind when no library rule matched.
pub fn kind_advice(kind: &str) -> Option<&'static str> {
    Some(match kind {
        "cpu" => "move the computation off the loop: `await asyncio.to_thread(fn)` or a process pool (`loop.run_in_executor(ProcessPoolExecutor(), fn)`)",
        "sleep" => "replace `time.sleep(...)` with `await asyncio.sleep(...)`",
        "network" => "use an asyncio-native client for this service, or wrap the call in `await asyncio.to_thread(...)`",
        "file" => "use aiofiles, or run the file work in `await asyncio.to_thread(...)`",
        "subprocess" => "use `asyncio.create_subprocess_exec()` and await it",
        "lock" => "don't block on thread locks in async code: use `asyncio.Lock`, or acquire it in `asyncio.to_thread`",
        "gil" => "the GIL holder starves the loop: move that work to a process, or use a C extension that releases the GIL",
        _ => return None,
    })
}

/// Kind from one OS observation: a syscall name (or `running`) and the scheduler state.
pub fn kind_of_syscall(syscall: &str, state: char) -> &'static str {
    match syscall {
        "running" => "cpu",
        "clock_nanosleep" | "nanosleep" | "pselect6" | "select" => "sleep",
        "poll" | "ppoll" | "recvfrom" | "recvmsg" | "sendto" | "sendmsg" | "connect" | "accept"
        | "accept4" => "network",
        "fsync" | "fdatasync" | "sync_file_range" | "openat" | "read" | "write" | "pread64"
        | "pwrite64" => "file",
        "wait4" | "waitid" => "subprocess",
        "futex" => "lock",
        _ if state == 'D' => "file",
        _ => "unknown",
    }
}

/// The library rule to blame: the outermost matching frame among the frames inside the culprit
/// (`inner`: innermost first, ending just before the user's frame).
pub fn source_rule(inner: &[Frame]) -> Option<&'static SourceRule> {
    inner
        .iter()
        .rev()
        .filter(|f| origin(f) != Origin::User)
        .find_map(|f| {
            SOURCE_RULES.iter().find(|r| {
                f.file.contains(r.file)
                    && (r.function.is_empty() || f.function.starts_with(r.function))
            })
        })
}

/// The verdict for one episode.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verdict {
    pub kind: String,
    pub source: Option<String>,
    pub advice: Option<String>,
}

/// Combine the dominant OS kind with the frames and the culprit's line (`line`: the line's text
/// and the whole file). The source comes from a library frame, else from the line, else from the
/// kind; the OS kind wins where it is precise (a `requests` call that spends its time on CPU is
/// `cpu`).
pub fn verdict(os_kind: Option<&str>, inner: &[Frame], line: Option<(&str, &[String])>) -> Verdict {
    let named = source_rule(inner)
        .map(|r| (r.source, r.kind))
        .or_else(|| line.and_then(|(text, file)| line_rule(text, file)));
    let kind = match (os_kind, named) {
        (Some(k), _) if k != "unknown" => k,
        (_, Some((_, k))) => k,
        _ => "unknown",
    };
    let source = match named {
        Some((s, _)) => Some(s),
        None if kind == "sleep" => Some("time.sleep"),
        None => None,
    };
    let advice = match source {
        // Starvation is fixed in the holder, whatever library it runs.
        _ if kind == "gil" => kind_advice(kind),
        Some(s) => source_advice(s).or_else(|| kind_advice(kind)),
        None => kind_advice(kind),
    };
    Verdict {
        kind: kind.to_string(),
        source: source.map(String::from),
        advice: advice.map(String::from),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn f(function: &str, file: &str) -> Frame {
        Frame {
            function: function.into(),
            file: file.into(),
            line: 1,
        }
    }

    #[test]
    fn requests_is_blamed_over_the_socket_it_uses() {
        let inner = vec![
            f("recv_into", "/py/lib/python3.11/socket.py"),
            f("HTTPResponse.begin", "/py/lib/python3.11/http/client.py"),
            f(
                "HTTPAdapter.send",
                "/venv/lib/python3.11/site-packages/requests/adapters.py",
            ),
            f("get", "/venv/lib/python3.11/site-packages/requests/api.py"),
        ];
        let v = verdict(Some("network"), &inner, None);
        assert_eq!(v.source.as_deref(), Some("requests"));
        assert_eq!(v.kind, "network");
        assert!(v.advice.unwrap().contains("httpx.AsyncClient"));
    }

    #[test]
    fn bare_sleep_is_time_sleep() {
        let v = verdict(Some("sleep"), &[], None);
        assert_eq!(v.source.as_deref(), Some("time.sleep"));
        assert!(v.advice.unwrap().contains("asyncio.sleep"));
    }

    #[test]
    fn cpu_without_library_gets_to_thread_advice() {
        let v = verdict(Some("cpu"), &[], None);
        assert_eq!((v.kind.as_str(), v.source), ("cpu", None));
        assert!(v.advice.unwrap().contains("to_thread"));
    }

    fn lines(text: &str) -> Vec<String> {
        text.lines().map(String::from).collect()
    }

    #[test]
    fn c_calls_named_by_their_line() {
        let file = lines("import sqlite3\nimport socket\n");
        let v = verdict(
            Some("cpu"),
            &[],
            Some(("    conn.execute(q).fetchone()", &file)),
        );
        assert_eq!(
            (v.kind.as_str(), v.source.as_deref()),
            ("cpu", Some("sqlite3"))
        );
        assert!(v.advice.unwrap().contains("aiosqlite"));
        let v = verdict(
            Some("network"),
            &[],
            Some(("    s.recv(100)  # wait", &file)),
        );
        assert_eq!(v.source.as_deref(), Some("socket"));
        let v = verdict(Some("file"), &[], Some(("os.fsync(f.fileno())", &file)));
        assert_eq!(v.source.as_deref(), Some("os.fsync"));
        let v = verdict(Some("lock"), &[], Some(("LOCK.acquire()", &file)));
        assert_eq!(
            (v.kind.as_str(), v.source.as_deref()),
            ("lock", Some("threading"))
        );
        let v = verdict(
            Some("cpu"),
            &[],
            Some(("return sum(range(n))  # .execute( in a comment", &file)),
        );
        assert_eq!(v.source, None);
    }

    #[test]
    fn database_driver_comes_from_the_imports() {
        for (import, want) in [
            ("import psycopg2", "psycopg2"),
            ("import pymysql", "pymysql"),
            ("from sqlalchemy.orm import Session", "sqlalchemy"),
            ("import redis", "redis"),
        ] {
            let file = lines(import);
            let v = verdict(Some("network"), &[], Some(("cur.execute(sql)", &file)));
            assert_eq!(v.source.as_deref(), Some(want), "{import}");
        }
        let v = verdict(Some("network"), &[], Some(("cur.execute(sql)", &[])));
        assert_eq!(v.source, None, "an unknown driver is not guessed");
    }

    #[test]
    fn gil_advice_wins_over_library_advice() {
        let inner = vec![f(
            "dot",
            "/venv/lib/python3.11/site-packages/numpy/core/x.py",
        )];
        let v = verdict(Some("gil"), &inner, None);
        assert_eq!(
            (v.kind.as_str(), v.source.as_deref()),
            ("gil", Some("numpy"))
        );
        assert!(v.advice.unwrap().contains("GIL"));
    }

    /// One constructed frame per rule, at the path a real install has.
    #[test]
    fn every_source_rule_matches_its_library() {
        for rule in SOURCE_RULES {
            let file = if rule.file.ends_with(".py") {
                format!("/usr/lib/python3.11{}", rule.file)
            } else {
                format!("/venv/lib/python3.11/site-packages{}core.py", rule.file)
            };
            let v = verdict(None, &[f("call", &file)], None);
            assert_eq!(v.source.as_deref(), Some(rule.source), "{file}");
            assert_eq!(v.kind, rule.kind, "{file}");
            assert_eq!(v.advice.as_deref(), Some(rule.advice), "{file}");
        }
    }

    #[test]
    fn every_line_rule_matches_its_call() {
        let file = lines("import sqlite3");
        for rule in LINE_RULES {
            for needle in rule.needles {
                let line = format!("    x = {needle}arg)");
                let (source, _) = line_rule(&line, &file).unwrap_or_else(|| panic!("{line}"));
                // The first rule with a needle in the line wins (`time.sleep(` before `sleep(`).
                let first = LINE_RULES
                    .iter()
                    .find(|r| r.needles.iter().any(|n| line.contains(n)))
                    .unwrap();
                let want = if first.source == DATABASE {
                    "sqlite3"
                } else {
                    first.source
                };
                assert_eq!(source, want, "{line}");
            }
        }
    }

    /// Stacks shaped like the third-party libraries' own, for those that need a server to run:
    /// (frames inside the user's call, the culprit line and the file's import, source, advice).
    #[test]
    fn third_party_stacks() {
        let sp = "/venv/lib/python3.11/site-packages";
        let p = |rest: &str| format!("{sp}/{rest}");
        let cases: Vec<(Vec<Frame>, Option<(&str, &str)>, &str, &str)> = vec![
            // SQLAlchemy sync session → engine → the DBAPI driver.
            (
                vec![
                    f("do_execute", &p("sqlalchemy/engine/default.py")),
                    f("Session.execute", &p("sqlalchemy/orm/session.py")),
                ],
                None,
                "sqlalchemy",
                "AsyncSession",
            ),
            // redis-py: command → connection → socket.
            (
                vec![
                    f("SocketBuffer._read_from_socket", &p("redis/connection.py")),
                    f("Redis.get", &p("redis/commands/core.py")),
                ],
                None,
                "redis",
                "redis.asyncio",
            ),
            // boto3 → botocore → urllib3.
            (
                vec![
                    f(
                        "HTTPConnectionPool.urlopen",
                        &p("urllib3/connectionpool.py"),
                    ),
                    f("Endpoint._send", &p("botocore/endpoint.py")),
                    f(
                        "ServiceResource.put_object",
                        &p("boto3/resources/factory.py"),
                    ),
                ],
                None,
                "boto3",
                "aioboto3",
            ),
            // celery: AsyncResult.get waits on the result backend.
            (
                vec![
                    f("BaseBackend.wait_for", &p("celery/backends/base.py")),
                    f("AsyncResult.get", &p("celery/result.py")),
                ],
                None,
                "celery",
                "apply_async",
            ),
            // numpy: a Python-level wrapper over C.
            (
                vec![f("solve", &p("numpy/linalg/linalg.py"))],
                None,
                "numpy",
                "to_thread",
            ),
            // psycopg2, pymysql and numpy's C functions leave no frame: the line and imports name them.
            (
                vec![],
                Some(("cur.execute(sql)", "import psycopg2")),
                "psycopg2",
                "asyncpg",
            ),
            (
                vec![],
                Some(("cur.execute(sql)", "import pymysql")),
                "pymysql",
                "aiomysql",
            ),
            (
                vec![],
                Some(("total = np.dot(a, b)", "import numpy as np")),
                "numpy",
                "to_thread",
            ),
        ];
        for (frames, line, source, advice) in cases {
            let file = line.map(|(_, import)| lines(import)).unwrap_or_default();
            let v = verdict(None, &frames, line.map(|(l, _)| (l, file.as_slice())));
            assert_eq!(v.source.as_deref(), Some(source), "{frames:?} {line:?}");
            assert!(
                v.advice.as_deref().unwrap_or("").contains(advice),
                "{source}: {:?}",
                v.advice
            );
        }
    }

    #[test]
    fn syscall_kinds() {
        assert_eq!(kind_of_syscall("running", 'R'), "cpu");
        assert_eq!(kind_of_syscall("clock_nanosleep", 'S'), "sleep");
        assert_eq!(kind_of_syscall("wait4", 'S'), "subprocess");
        assert_eq!(kind_of_syscall("fsync", 'D'), "file");
        assert_eq!(kind_of_syscall("poll", 'S'), "network");
        assert_eq!(kind_of_syscall("whatever", 'S'), "unknown");
    }
}
