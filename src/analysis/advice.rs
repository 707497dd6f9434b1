//! The fix to suggest for an episode: from its source (or kind), and from what the blocking
//! code did with the GIL. Work that holds the GIL stalls the loop from a worker thread as much
//! as from the loop itself (a backtracking regex in `asyncio.to_thread` still froze a 5 ms
//! heartbeat for 1.8 s), so `to_thread` is only offered when the samples saw the GIL released,
//! or when the work is of a kind that releases it. Where a linter finds the same call pattern
//! statically, the rule is named, so the other call sites can be found before they run.

/// What to suggest for one source or kind.
struct Fix {
    /// The specific fix, whatever the GIL evidence (used alone when the work releases the GIL
    /// and `offload` is false).
    fix: &'static str,
    /// The fix when the blocking thread held the GIL; `None`: `fix` and the generic
    /// process-pool clause.
    held: Option<&'static str>,
    /// Whether the work releases the GIL by its nature (`Some(true)`: I/O, zlib, hashlib on
    /// large inputs), holds it (`Some(false)`: regex, JSON, the GC), or only the samples can
    /// tell (`None`). Used when the samples did not settle it.
    releases: Option<bool>,
    /// Whether to add a clause about offloading the call at all. A wait whose fix already is
    /// the async replacement (`time.sleep`, a lock) needs none.
    offload: bool,
    /// A static lint rule that finds the same call pattern.
    lint: Option<&'static str>,
}

const HELD: &str = "it holds the GIL, so a thread would stall the loop too: use a process pool (`loop.run_in_executor(ProcessPoolExecutor(), fn)`)";
const RELEASED: &str = "or run it in `await asyncio.to_thread(...)`: the call releases the GIL, so a thread frees the loop";
/// Computation no library names, which released the GIL (a C extension's call).
const RELEASED_CPU: &str = "move the computation to a thread, `await asyncio.to_thread(fn)`: it runs in C code that releases the GIL, so the loop goes on";
const UNKNOWN_CPU: &str = "a process pool (`ProcessPoolExecutor`) frees the loop from Python code, which holds the GIL; `asyncio.to_thread` only helps C calls that release it";

const HTTP_LINT: &str = "ruff ASYNC210 (blocking-http-call-in-async-function) finds others";

const fn io(fix: &'static str, lint: Option<&'static str>) -> Fix {
    Fix {
        fix,
        held: None,
        releases: Some(true),
        offload: true,
        lint,
    }
}

const fn wait(fix: &'static str, lint: Option<&'static str>) -> Fix {
    Fix {
        fix,
        held: None,
        releases: Some(true),
        offload: false,
        lint,
    }
}

const fn compute(fix: &'static str, held: Option<&'static str>) -> Fix {
    Fix {
        fix,
        held,
        releases: Some(false),
        offload: true,
        lint: None,
    }
}

fn fix_for_source(source: &str) -> Option<Fix> {
    Some(match source {
        "requests" | "urllib" | "urllib3" | "http.client" => io(
            "use an async HTTP client (httpx.AsyncClient or aiohttp)",
            Some(HTTP_LINT),
        ),
        "httpx" => io(
            "use `httpx.AsyncClient`",
            Some("ruff ASYNC212 (blocking-http-call-httpx-in-async-function, preview) finds others"),
        ),
        "boto3" => io("use aioboto3 (or aiobotocore)", None),
        "sqlalchemy" => io(
            "use SQLAlchemy's asyncio extension (`AsyncSession` with an async driver)",
            None,
        ),
        "django" => io(
            "use Django's async ORM calls (`await Model.objects.aget(...)`, `async for`), or wrap the query in `sync_to_async`",
            None,
        ),
        "psycopg2" => io("use asyncpg or psycopg 3's `AsyncConnection`", None),
        "psycopg" => io("use psycopg's `AsyncConnection`", None),
        "pymysql" | "MySQLdb" => io("use aiomysql (or asyncmy)", None),
        "redis" => io("use `redis.asyncio`", None),
        "sqlite3" => io("use aiosqlite", None),
        "celery" => wait(
            "never block on a result's `.get()` in async code: use `.apply_async()` and poll or await via a callback",
            None,
        ),
        "numpy" | "torch" => Fix {
            fix: "run large array work outside the loop",
            held: None,
            releases: None,
            offload: true,
            lint: None,
        },
        "logging" => wait(
            "log through `logging.handlers.QueueHandler` + `QueueListener`, so a background thread runs the handlers' `emit`",
            None,
        ),
        "subprocess" => wait(
            "use `asyncio.create_subprocess_exec()` and await it",
            Some("ruff ASYNC220-222 (create-, run-, wait-for-process-in-async-function) find others"),
        ),
        "socket" | "ssl" => io(
            "use asyncio streams (`asyncio.open_connection`) or the loop's `sock_*` methods",
            None,
        ),
        "threading" => wait(
            "don't wait on threads or thread locks in async code: use `asyncio.Lock` or `asyncio.Event`, or do the wait in `await asyncio.to_thread(...)`",
            None,
        ),
        "queue" => wait("use `asyncio.Queue`, or `await asyncio.to_thread(q.get)`", None),
        "concurrent.futures" => wait(
            "await the future with `asyncio.wrap_future` instead of calling `.result()`",
            None,
        ),
        "time.sleep" => wait(
            "replace `time.sleep(...)` with `await asyncio.sleep(...)`",
            Some("ruff ASYNC251 (blocking-sleep-in-async-function) finds others"),
        ),
        "open" => io(
            "use aiofiles (or anyio's `open_file`)",
            Some("ruff ASYNC230 (blocking-open-call-in-async-function) finds others"),
        ),
        "os.fsync" => io("fsync less often (batch the writes), or use aiofiles' `os.fsync`", None),
        "re" => compute(
            "a regular expression that backtracks: bound the input's length, rewrite the pattern without nested or overlapping quantifiers (such as `(a+)+` or `(a|a)*`), or use an engine with a timeout or linear-time matching (`regex` with `timeout=`, google-re2)",
            Some("a regular expression that backtracks: bound the input's length, rewrite the pattern without nested or overlapping quantifiers (such as `(a+)+` or `(a|a)*`), or use an engine with a timeout or linear-time matching (`regex` with `timeout=`, google-re2); matching holds the GIL, so a worker thread would stall the loop just the same (a process pool can at least bound it with a timeout)"),
        ),
        "gc" => compute(
            "a garbage collection over a large heap: call `gc.freeze()` once start-up is done so long-lived objects are not scanned again, raise the thresholds (`gc.set_threshold`), and keep `gc.collect()` off the request path",
            Some("a garbage collection over a large heap: call `gc.freeze()` once start-up is done so long-lived objects are not scanned again, raise the thresholds (`gc.set_threshold`), and keep `gc.collect()` off the request path; the collector holds the GIL, so no thread can help"),
        ),
        "import" => compute(
            "import the module at start-up (at the top of the file), not inside the handler",
            Some("import the module at start-up (at the top of the file), not inside the handler; an import holds the GIL while the module's code runs, so a thread would not help"),
        ),
        "json" => compute(
            "serialise with a faster library (orjson, msgspec), send a pre-serialised response, or shrink the payload",
            None,
        ),
        "pickle" => compute(
            "pickle less (only the fields needed), or use a faster format (msgspec)",
            None,
        ),
        "hashlib" => Fix {
            fix: "hash in `await asyncio.to_thread(...)`: hashlib releases the GIL on inputs over 2 KiB and in `pbkdf2_hmac`/`scrypt`",
            held: Some("many small inputs hold the GIL: hash fewer, larger buffers, or run the work in a process pool (`loop.run_in_executor(ProcessPoolExecutor(), fn)`)"),
            releases: Some(true),
            offload: false,
            lint: None,
        },
        "base64" => compute(
            "encode or decode large payloads in chunks (the loop gets the GIL between chunks), or keep big binary data out of base64",
            Some("encode or decode large payloads in chunks (the loop gets the GIL between chunks), or keep big binary data out of base64; binascii holds the GIL for a whole call, so a worker thread would stall the loop just the same"),
        ),
        "zlib" => Fix {
            fix: "compress in `await asyncio.to_thread(...)`: zlib releases the GIL while it works; or lower the compression level",
            held: Some("compress smaller pieces or at a lower level, or in a process pool (`loop.run_in_executor(ProcessPoolExecutor(), fn)`)"),
            releases: Some(true),
            offload: false,
            lint: None,
        },
        "yaml" => compute(
            "load YAML with the C loader (`yaml.CSafeLoader`, libyaml), parse it once at start-up, or use JSON",
            None,
        ),
        "fastapi" => compute(
            "FastAPI's `jsonable_encoder` walks the whole payload in Python: return a `Response` with pre-serialised JSON (`ORJSONResponse`, or `Response(orjson.dumps(data))`), or paginate",
            None,
        ),
        "pydantic" => compute(
            "validating a large payload is CPU work: validate with a cached `TypeAdapter`, skip validation for trusted data (`model_construct`), or shrink the payload",
            None,
        ),
        "stdout" | "stderr" => wait(
            "the process reading this program's output is slow or stopped, and a full pipe blocks every write: print less from handlers, log through `QueueHandler` + `QueueListener` (a background thread writes), or make the reader keep up",
            None,
        ),
        "pipe" => io(
            "the process at the other end of the pipe is slow: use asyncio's pipes (`asyncio.create_subprocess_exec` with `PIPE`, `loop.connect_read_pipe`/`connect_write_pipe`)",
            None,
        ),
        "tty" => wait(
            "writes to a terminal block while it is slow or paused (Ctrl-S, a stopped pager): don't print from handlers; log through `QueueHandler` + `QueueListener`",
            None,
        ),
        "finalizer" => wait(
            "a finalizer (`__del__` or a `weakref.finalize` callback) ran blocking work on the loop thread when an object was released: close such resources explicitly (`async with`, `await obj.aclose()`)",
            None,
        ),
        _ => return None,
    })
}

fn fix_for_kind(kind: &str) -> Option<Fix> {
    Some(match kind {
        "cpu" => Fix {
            fix: "move the computation off the loop",
            held: None,
            releases: None,
            offload: true,
            lint: None,
        },
        "sleep" => return fix_for_source("time.sleep"),
        "network" => io("use an asyncio-native client for this service", None),
        "file" => return fix_for_source("open"),
        "pipe" => return fix_for_source("pipe"),
        "tty" => return fix_for_source("tty"),
        "subprocess" => return fix_for_source("subprocess"),
        "lock" => return fix_for_source("threading"),
        _ => return None,
    })
}

/// The async driver to name for an ORM's sync driver.
fn async_driver(driver: &str) -> Option<&'static str> {
    Some(match driver {
        "sqlite3" => "aiosqlite",
        "psycopg2" | "psycopg" => "asyncpg or psycopg's async mode",
        "pymysql" | "MySQLdb" => "aiomysql",
        _ => return None,
    })
}

/// Everything the advice depends on.
#[derive(Debug, Default, Clone, Copy)]
pub struct Situation<'a> {
    pub kind: &'a str,
    pub source: Option<&'a str>,
    /// The database driver under an ORM source.
    pub driver: Option<&'a str>,
    /// Whether the blocking thread held the GIL through the episode (`Some(true)`), released
    /// it (`Some(false)`), or the samples could not tell.
    pub holds_gil: Option<bool>,
    /// The call went to one of the process's own listening sockets.
    pub self_call: bool,
    /// For a starved loop (`kind == "gil"`): the thread that held the GIL.
    pub holder: Option<&'a str>,
}

/// The fix for an episode, or `None` when nothing specific can be said.
pub fn advise(s: &Situation) -> Option<String> {
    if s.self_call {
        let mut text = "the handler calls its own server synchronously: that server runs on this very loop and cannot answer until the call gives up (a self-call deadlock, broken only by the timeout): call the code behind that endpoint directly, or `await` an async client".to_string();
        if matches!(
            s.source,
            Some("requests" | "urllib" | "urllib3" | "http.client")
        ) {
            text.push_str("; ");
            text.push_str(HTTP_LINT);
        }
        return Some(text);
    }
    if s.kind == "gil" {
        return Some(starved(s));
    }
    let fix = s
        .source
        .and_then(fix_for_source)
        .or_else(|| fix_for_kind(s.kind))?;
    let mut text = match (s.source, s.driver.and_then(async_driver)) {
        (Some("sqlalchemy"), Some(d)) => {
            format!("use SQLAlchemy's asyncio extension (`AsyncSession` with {d})")
        }
        _ => fix.fix.to_string(),
    };
    // The samples decide; the nature of the work when they did not.
    let holds = s.holds_gil.or(fix.releases.map(|r| !r));
    match (holds, fix.held) {
        (Some(true), Some(held)) => text = held.to_string(),
        (Some(true), None) if fix.offload => {
            text.push_str("; ");
            text.push_str(HELD);
        }
        (Some(false), _) if s.source.is_none() && s.kind == "cpu" => {
            text = RELEASED_CPU.to_string()
        }
        (Some(false), _) if fix.offload => {
            text.push_str(", ");
            text.push_str(RELEASED);
        }
        (None, _) if fix.offload && s.kind == "cpu" => {
            text.push_str("; ");
            text.push_str(UNKNOWN_CPU);
        }
        (None, _) if fix.offload => {
            text.push_str(", ");
            text.push_str(RELEASED);
        }
        _ => {}
    }
    if let Some(lint) = fix.lint {
        text.push_str("; ");
        text.push_str(lint);
    }
    Some(text)
}

/// A loop starved of the GIL: the fix is in the holder's code, and no thread pool can be it.
fn starved(s: &Situation) -> String {
    let who = s.holder.unwrap_or("another thread");
    let specific = s.source.and_then(fix_for_source).and_then(|f| {
        (f.releases == Some(false) || f.held.is_some()).then(|| f.held.unwrap_or(f.fix))
    });
    match specific {
        Some(fix) => format!("{who} held the GIL while the loop waited for it: {fix}"),
        None => format!("{who} held the GIL while the loop waited for it: a thread cannot fix this, since a thread holding the GIL is the problem: move that work to a process pool (`ProcessPoolExecutor`), or use a C extension that releases the GIL"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn advice(kind: &str, source: Option<&str>, holds_gil: Option<bool>) -> String {
        advise(&Situation {
            kind,
            source,
            holds_gil,
            ..Default::default()
        })
        .unwrap_or_default()
    }

    /// The rule of the brief: a thread that held the GIL never gets `to_thread`; one that
    /// released it does, unless its fix already is the async replacement.
    #[test]
    fn offloading_follows_the_gil_evidence() {
        for source in [
            "re", "gc", "import", "json", "pickle", "hashlib", "base64", "zlib", "yaml", "fastapi",
            "pydantic", "numpy", "requests", "sqlite3", "open",
        ] {
            let held = advice("cpu", Some(source), Some(true));
            assert!(
                !held.is_empty() && !held.contains("to_thread"),
                "{source}: {held}"
            );
        }
        let held = advice("cpu", None, Some(true));
        assert!(
            held.contains("process pool") && !held.contains("to_thread"),
            "{held}"
        );
        for source in ["hashlib", "zlib", "sqlite3", "requests", "open", "numpy"] {
            let released = advice("cpu", Some(source), Some(false));
            assert!(released.contains("to_thread"), "{source}: {released}");
        }
        let released = advice("cpu", None, Some(false));
        assert!(released.contains("to_thread"), "{released}");
    }

    #[test]
    fn without_evidence_the_nature_of_the_work_decides() {
        for source in [
            "re", "gc", "json", "base64", "yaml", "fastapi", "pydantic", "import",
        ] {
            let a = advice("cpu", Some(source), None);
            assert!(!a.contains("to_thread"), "{source}: {a}");
        }
        assert!(advice("cpu", Some("zlib"), None).contains("to_thread"));
        assert!(advice("network", None, None).contains("to_thread"));
        // Plain CPU work without evidence: the honest both-ways answer.
        let a = advice("cpu", None, None);
        assert!(
            a.contains("process pool") && a.contains("only helps C calls"),
            "{a}"
        );
    }

    #[test]
    fn specific_fixes() {
        assert!(advice("cpu", Some("re"), Some(true)).contains("bound the input"));
        assert!(advice("cpu", Some("gc"), Some(true)).contains("gc.freeze()"));
        assert!(advice("cpu", Some("import"), Some(true)).contains("at start-up"));
        assert!(advice("cpu", Some("json"), Some(true)).contains("orjson"));
        assert!(advice("cpu", Some("fastapi"), Some(true)).contains("pre-serialised"));
        assert!(advice("cpu", Some("yaml"), Some(true)).contains("CSafeLoader"));
        assert!(advice("sleep", Some("logging"), Some(false)).contains("QueueHandler"));
        assert!(advice("pipe", Some("stdout"), Some(false)).contains("full pipe"));
        let a = advice("sleep", Some("time.sleep"), Some(false));
        assert!(
            a.contains("asyncio.sleep") && !a.contains("to_thread"),
            "{a}"
        );
    }

    #[test]
    fn linters_are_named_where_they_find_the_call() {
        assert!(advice("sleep", Some("time.sleep"), None).contains("ASYNC251"));
        assert!(advice("network", Some("requests"), None).contains("ASYNC210"));
        assert!(advice("network", Some("urllib"), None).contains("ASYNC210"));
        assert!(advice("file", Some("open"), None).contains("ASYNC230"));
        assert!(advice("subprocess", Some("subprocess"), None).contains("ASYNC220-222"));
        assert!(!advice("cpu", Some("re"), None).contains("ASYNC"));
    }

    #[test]
    fn the_driver_names_the_async_one() {
        let a = advise(&Situation {
            kind: "cpu",
            source: Some("sqlalchemy"),
            driver: Some("sqlite3"),
            holds_gil: Some(false),
            ..Default::default()
        })
        .unwrap();
        assert!(a.contains("`AsyncSession` with aiosqlite"), "{a}");
        assert!(
            a.contains("to_thread"),
            "sqlite releases the GIL while it runs: {a}"
        );
    }

    #[test]
    fn a_starved_loop_is_fixed_in_the_holder() {
        let starved = |source: Option<&str>| {
            advise(&Situation {
                kind: "gil",
                source,
                holds_gil: Some(true),
                holder: Some("decoder (4242)"),
                ..Default::default()
            })
            .unwrap()
        };
        for source in [
            None,
            Some("base64"),
            Some("re"),
            Some("gc"),
            Some("numpy"),
            Some("zlib"),
        ] {
            let a = starved(source);
            assert!(a.starts_with("decoder (4242) held the GIL"), "{a}");
            assert!(!a.contains("to_thread"), "{source:?}: {a}");
        }
        assert!(starved(Some("base64")).contains("in chunks"));
        assert!(starved(Some("re")).contains("backtracks"));
    }

    #[test]
    fn a_self_call_is_named() {
        let a = advise(&Situation {
            kind: "network",
            source: Some("urllib"),
            self_call: true,
            holds_gil: Some(false),
            ..Default::default()
        })
        .unwrap();
        assert!(
            a.contains("its own server") && a.contains("self-call deadlock"),
            "{a}"
        );
        assert!(a.contains("ASYNC210"));
    }
}
