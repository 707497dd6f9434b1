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
        "poll" | "ppoll" | "recvfrom" | "recvmsg" | "sendto" | "sendmsg" | "connect"
        | "accept" | "accept4" => "network",
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
    inner.iter().rev().filter(|f| origin(f) != Origin::User).find_map(|f| {
        SOURCE_RULES.iter().find(|r| {
            f.file.contains(r.file) && (r.function.is_empty() || f.function.starts_with(r.function))
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

/// Combine the dominant OS kind with the frames. The library rule names the source; the OS kind
/// wins where it is precise (a `requests` call that spends its time on CPU is `cpu`).
pub fn verdict(os_kind: Option<&str>, inner: &[Frame]) -> Verdict {
    let rule = source_rule(inner);
    let kind = match (os_kind, rule) {
        (Some(k), _) if k != "unknown" => k,
        (_, Some(r)) => r.kind,
        _ => "unknown",
    };
    let source = match rule {
        Some(r) => Some(r.source),
        None if kind == "sleep" => Some("time.sleep"),
        None => None,
    };
    let advice = match rule {
        Some(r) => Some(r.advice),
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
        Frame { function: function.into(), file: file.into(), line: 1 }
    }

    #[test]
    fn requests_is_blamed_over_the_socket_it_uses() {
        let inner = vec![
            f("recv_into", "/py/lib/python3.11/socket.py"),
            f("HTTPResponse.begin", "/py/lib/python3.11/http/client.py"),
            f("HTTPAdapter.send", "/venv/lib/python3.11/site-packages/requests/adapters.py"),
            f("get", "/venv/lib/python3.11/site-packages/requests/api.py"),
        ];
        let v = verdict(Some("network"), &inner);
        assert_eq!(v.source.as_deref(), Some("requests"));
        assert_eq!(v.kind, "network");
        assert!(v.advice.unwrap().contains("httpx.AsyncClient"));
    }

    #[test]
    fn bare_sleep_is_time_sleep() {
        let v = verdict(Some("sleep"), &[]);
        assert_eq!(v.source.as_deref(), Some("time.sleep"));
        assert!(v.advice.unwrap().contains("asyncio.sleep"));
    }

    #[test]
    fn cpu_without_library_gets_to_thread_advice() {
        let v = verdict(Some("cpu"), &[]);
        assert_eq!((v.kind.as_str(), v.source), ("cpu", None));
        assert!(v.advice.unwrap().contains("to_thread"));
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
