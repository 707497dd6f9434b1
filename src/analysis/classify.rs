//! Why a callback blocked: `kind` (where the time went, from the thread's OS state and the fd it
//! waited on) and `source` (the call or library to blame, from the frames, the culprit's line,
//! the machinery that dispatched it, the GC flag and the fd). The rules live in tables so a new
//! library is one line; the fixes are in `advice`.

use crate::analysis::culprit::{origin, Dispatcher, Origin};
use crate::os::fd::{FdTarget, FdType};
use crate::sample::{Frame, OsState};

/// One blocking source recognised by a frame of its own code.
#[derive(Debug)]
pub struct SourceRule {
    /// The `source` name written into episodes.
    pub source: &'static str,
    /// Matches a frame's file path (substring) ...
    pub file: &'static str,
    /// ... and, when not empty, the function name's prefix.
    pub function: &'static str,
    /// The kind to report when the OS state says nothing more precise.
    pub kind: &'static str,
}

const fn rule(source: &'static str, file: &'static str, kind: &'static str) -> SourceRule {
    SourceRule {
        source,
        file,
        function: "",
        kind,
    }
}

/// Ordered from the most specific library to the most generic module: the outermost matching
/// frame below the user's code wins, so `requests` is blamed rather than the socket it uses, and
/// FastAPI's encoder rather than the pydantic models it dumps.
pub const SOURCE_RULES: &[SourceRule] = &[
    rule("fastapi", "/fastapi/", "cpu"),
    rule("pydantic", "/pydantic/", "cpu"),
    rule("requests", "/requests/", "network"),
    rule("httpx", "/httpx/", "network"),
    rule("urllib3", "/urllib3/", "network"),
    rule("boto3", "/boto3/", "network"),
    rule("boto3", "/botocore/", "network"),
    rule("sqlalchemy", "/sqlalchemy/", "network"),
    rule("django", "/django/db/", "network"),
    rule("psycopg2", "/psycopg2/", "network"),
    rule("psycopg", "/psycopg/", "network"),
    rule("pymysql", "/pymysql/", "network"),
    rule("MySQLdb", "/MySQLdb/", "network"),
    rule("redis", "/redis/", "network"),
    rule("celery", "/celery/", "network"),
    rule("numpy", "/numpy/", "cpu"),
    rule("torch", "/torch/", "cpu"),
    rule("logging", "/logging/", "file"),
    rule("subprocess", "/subprocess.py", "subprocess"),
    rule("sqlite3", "/sqlite3/", "file"),
    rule("yaml", "/yaml/", "cpu"),
    rule("json", "/json/", "cpu"),
    rule("pickle", "/pickle.py", "cpu"),
    rule("base64", "/base64.py", "cpu"),
    rule("zlib", "/gzip.py", "cpu"),
    rule("hashlib", "/hashlib.py", "cpu"),
    rule("re", "/re/", "cpu"),
    rule("re", "/re.py", "cpu"),
    rule("re", "/sre_compile.py", "cpu"),
    rule("re", "/sre_parse.py", "cpu"),
    rule("import", "<frozen importlib._bootstrap", "cpu"),
    rule("import", "/importlib/__init__.py", "cpu"),
    rule("urllib", "/urllib/request.py", "network"),
    rule("http.client", "/http/client.py", "network"),
    rule("socket", "/socket.py", "network"),
    rule("ssl", "/ssl.py", "network"),
    rule("threading", "/threading.py", "lock"),
    rule("queue", "/queue.py", "lock"),
    rule("concurrent.futures", "/concurrent/futures/", "lock"),
];

/// A C-level call recognised from the text of the culprit's line, for calls that leave no
/// Python frame (`time.sleep`, `socket.recv`, `os.fsync`, `sqlite3`'s `execute`, a compiled
/// regex's `match`, `pickle.dumps`, `hashlib.pbkdf2_hmac`, `Lock.acquire`).
pub struct LineRule {
    /// Any of these substrings of the line.
    pub needles: &'static [&'static str],
    /// The source; `DATABASE` is resolved from the file's imports.
    pub source: &'static str,
    pub kind: &'static str,
    /// When not empty, the rule holds only in a file that imports this module: for method names
    /// other types share (`.match(`).
    pub imported: &'static str,
    /// When not empty, the rule holds only while the OS showed one of these kinds (or nothing):
    /// `.join(` waits on a thread only when the thread waits on a lock, not in `", ".join(x)`.
    pub only_when: &'static [&'static str],
}

/// The source of a DB-API call (`.execute(`), resolved to the driver the file imports.
pub(crate) const DATABASE: &str = "<database>";

const fn line(
    needles: &'static [&'static str],
    source: &'static str,
    kind: &'static str,
) -> LineRule {
    LineRule {
        needles,
        source,
        kind,
        imported: "",
        only_when: &[],
    }
}

/// Checked in order; the first rule with a needle in the line wins.
pub const LINE_RULES: &[LineRule] = &[
    line(&["requests."], "requests", "network"),
    line(&["urlopen("], "urllib", "network"),
    line(
        &["subprocess.", "os.system(", "os.waitpid("],
        "subprocess",
        "subprocess",
    ),
    line(&["gc.collect("], "gc", "cpu"),
    line(
        &[
            "pickle.dumps(",
            "pickle.loads(",
            "pickle.dump(",
            "pickle.load(",
        ],
        "pickle",
        "cpu",
    ),
    line(&["hashlib.", "pbkdf2_hmac(", "scrypt("], "hashlib", "cpu"),
    line(&["base64.", "binascii."], "base64", "cpu"),
    line(
        &["zlib.", "gzip.compress(", "gzip.decompress("],
        "zlib",
        "cpu",
    ),
    line(
        &["json.dumps(", "json.loads(", "orjson.", "ujson."],
        "json",
        "cpu",
    ),
    line(&["import_module(", "__import__("], "import", "cpu"),
    line(
        &[
            ".execute(",
            ".executemany(",
            ".executescript(",
            ".fetchone(",
            ".fetchall(",
            ".fetchmany(",
            ".commit(",
        ],
        DATABASE,
        "network",
    ),
    line(&[" np.", "(np.", "=np.", "[np.", "numpy."], "numpy", "cpu"),
    line(
        &[" torch.", "(torch.", "=torch.", "[torch."],
        "torch",
        "cpu",
    ),
    line(&["time.sleep(", "sleep("], "time.sleep", "sleep"),
    line(
        &[
            ".recv(",
            ".recv_into(",
            ".recvfrom(",
            ".sendall(",
            ".accept(",
            ".connect(",
            "create_connection(",
        ],
        "socket",
        "network",
    ),
    line(
        &["os.fsync(", "os.fdatasync(", "fsync("],
        "os.fsync",
        "file",
    ),
    LineRule {
        only_when: &["lock"],
        ..line(&[".acquire(", ".wait(", ".join("], "threading", "lock")
    },
    // A compiled pattern's methods: only in a file that imports `re`, while computing.
    LineRule {
        needles: &[
            ".match(",
            ".fullmatch(",
            ".search(",
            ".findall(",
            ".finditer(",
            ".sub(",
            ".subn(",
        ],
        source: "re",
        kind: "cpu",
        imported: "re",
        only_when: &["cpu"],
    },
    line(
        &[
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
        "open",
        "file",
    ),
];

/// Database modules a file may import, most specific first: the one imported names the driver
/// behind an `.execute(` line.
const DATABASE_MODULES: &[&str] = &["sqlalchemy", "psycopg2", "pymysql", "redis", "sqlite3"];

/// Whether the file's lines import `module` (`import m`, `import m as x`, `from m import ...`).
pub fn imports(file: &[String], module: &str) -> bool {
    file.iter().any(|l| {
        let l = l.trim_start();
        let rest = l
            .strip_prefix("import ")
            .or_else(|| l.strip_prefix("from "))
            .map(str::trim_start);
        rest.is_some_and(|r| {
            r.strip_prefix(module)
                .is_some_and(|after| after.is_empty() || after.starts_with([' ', '.', ',', '\t']))
        })
    })
}

/// Whether `rule` names the call on `code` (a line without its comment).
pub(crate) fn applies(rule: &LineRule, code: &str, file: &[String], os_kind: Option<&str>) -> bool {
    rule.needles.iter().any(|n| code.contains(n))
        && (rule.imported.is_empty() || imports(file, rule.imported))
        && (rule.only_when.is_empty()
            || os_kind.is_none_or(|k| k == "unknown" || rule.only_when.contains(&k)))
}

/// The source named by the culprit's line (`line`), with the whole file for its imports.
/// `os_kind` is the episode's kind from the OS (rules for shared method names need `cpu`).
pub fn line_rule(
    line: &str,
    file: &[String],
    os_kind: Option<&str>,
) -> Option<(&'static str, &'static str)> {
    let code = line.split('#').next().unwrap_or("");
    let rule = LINE_RULES
        .iter()
        .find(|r| applies(r, code, file, os_kind))?;
    if rule.source != DATABASE {
        return Some((rule.source, rule.kind));
    }
    let module = DATABASE_MODULES.iter().find(|m| imports(file, m))?;
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
        "socket" | "ssl" | "urllib" | "http.client" | "requests" | "urllib3" | "httpx" => {
            Some("network")
        }
        "subprocess" => Some("subprocess"),
        "stdout" | "stderr" | "pipe" => Some("pipe"),
        _ => None,
    }
}

/// Kind from one OS observation: a syscall name (or `running`) and the scheduler state.
pub fn kind_of_syscall(syscall: &str, state: char) -> &'static str {
    match syscall {
        "running" => "cpu",
        "clock_nanosleep" | "nanosleep" | "pselect6" | "select" => "sleep",
        "poll" | "ppoll" | "recvfrom" | "recvmsg" | "sendto" | "sendmsg" | "connect" | "accept"
        | "accept4" | "recvmmsg" | "sendmmsg" => "network",
        "fsync" | "fdatasync" | "sync_file_range" | "openat" | "read" | "write" | "pread64"
        | "pwrite64" | "readv" | "writev" | "sendfile" | "flock" | "ftruncate" | "fallocate" => {
            "file"
        }
        "wait4" | "waitid" => "subprocess",
        "futex" => "lock",
        _ if state == 'D' => "file",
        _ => "unknown",
    }
}

/// The kind of waiting on an fd: a pipe is not disk I/O, and a `read` on a socket is network.
pub fn kind_of_fd(fd: &FdTarget) -> Option<&'static str> {
    match fd.kind {
        FdType::Pipe => Some("pipe"),
        FdType::Socket => Some("network"),
        FdType::Tty => Some("tty"),
        FdType::File => Some("file"),
        FdType::Other => None,
    }
}

/// Kind from one sample's OS state: a wait for the GIL, else the fd waited on, else the
/// syscall; `None` when the syscall was unreadable.
pub fn kind_of_os(os: &OsState) -> Option<&'static str> {
    if os.gil_wait {
        return Some("gil");
    }
    let syscall = os.syscall.as_deref()?;
    Some(
        os.fd
            .as_ref()
            .and_then(kind_of_fd)
            .unwrap_or_else(|| kind_of_syscall(syscall, os.state)),
    )
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

/// The source an fd names when nothing more specific did: the standard streams, a pipe, a
/// terminal; a socket when the line only said "a file call".
fn fd_source(fd: &FdTarget) -> Option<&'static str> {
    match (fd.kind, fd.fd) {
        (FdType::Pipe | FdType::Tty, Some(1)) => Some("stdout"),
        (FdType::Pipe | FdType::Tty, Some(2)) => Some("stderr"),
        (FdType::Pipe, _) => Some("pipe"),
        (FdType::Tty, _) => Some("tty"),
        (FdType::Socket, _) => Some("socket"),
        _ => None,
    }
}

/// The library an episode's stacks show, weighed by the time each stood for: `stacks` are
/// `(library the stack's frames name, weight)`. The heaviest library with its share of the
/// total: `true` from half, `false` from a quarter, `None` below. A single most frequent stack
/// can miss the library's frame (samples between calls, an uneven gap), the whole episode not.
pub fn library_vote(
    stacks: impl IntoIterator<Item = (Option<&'static SourceRule>, u32)>,
) -> Option<(&'static SourceRule, bool)> {
    let mut total = 0u64;
    let mut by: Vec<(&'static SourceRule, u64)> = Vec::new();
    for (rule, w) in stacks {
        total += u64::from(w);
        if let Some(rule) = rule {
            match by.iter_mut().find(|(r, _)| std::ptr::eq(*r, rule)) {
                Some(e) => e.1 += u64::from(w),
                None => by.push((rule, u64::from(w))),
            }
        }
    }
    let (rule, w) = by.into_iter().max_by_key(|(_, w)| *w)?;
    if w * 2 >= total {
        Some((rule, true))
    } else if w * 4 >= total {
        Some((rule, false))
    } else {
        None
    }
}

/// Everything an episode's cause is read from.
#[derive(Debug, Default, Clone, Copy)]
pub struct Clues<'a> {
    /// The kind most samples showed (`dominant_kind`), `None` without OS state.
    pub os_kind: Option<&'a str>,
    /// Frames inside the culprit, innermost first, ending just before it.
    pub inner: &'a [Frame],
    /// The library the episode's stacks show, weighed by time ([`library_vote`]): `Some` with
    /// `true` when it ran at least half of the episode (it names the source before the top
    /// stack), `false` when at least a quarter (only when nothing else names one).
    pub library: Option<(&'static SourceRule, bool)>,
    /// The culprit's line and its whole file, when readable.
    pub line: Option<(&'a str, &'a [String])>,
    /// The machinery that called the culprit.
    pub dispatcher: Option<Dispatcher>,
    /// The blocking thread ran the garbage collector in most of its samples.
    pub collector: bool,
    /// What the blocking syscalls waited on, most often.
    pub fd: Option<&'a FdTarget>,
}

/// The cause of one episode: where the time went and what to blame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verdict {
    pub kind: String,
    pub source: Option<String>,
}

/// Combine the clues. The source comes from the GC flag, else the dispatching machinery, else a
/// library frame, else the line, else the fd, else the kind; the OS kind wins where it is
/// precise (a `requests` call that spends its time on CPU is `cpu`).
pub fn verdict(c: &Clues) -> Verdict {
    // For a starved loop the line is the GIL holder's, which computes while the loop waits.
    let line_kind = match c.os_kind {
        Some("gil") => Some("cpu"),
        k => k,
    };
    let line = c
        .line
        .and_then(|(text, file)| line_rule(text, file, line_kind));
    let (most, some) = match c.library {
        Some((r, true)) => (Some((r.source, r.kind)), None),
        Some((r, false)) => (None, Some((r.source, r.kind))),
        None => (None, None),
    };
    let mut named = most
        .or_else(|| source_rule(c.inner).map(|r| (r.source, r.kind)))
        .or(line)
        .or(some);
    // A generic file call (`.read(`, `.write(`) on what is not a file is named by the fd.
    if let (Some(("open", _)), Some(fd)) = (named, c.fd) {
        if fd.kind != FdType::File {
            named = fd_source(fd).map(|s| (s, kind_of_fd(fd).unwrap_or("file")));
        }
    }
    if c.collector {
        named = Some(("gc", "cpu"));
    } else if let Some(d) = c.dispatcher {
        named = Some(match d {
            Dispatcher::Logging => ("logging", "file"),
            Dispatcher::Import => ("import", "cpu"),
            Dispatcher::Finalizer => ("finalizer", named.map_or("cpu", |n| n.1)),
        });
    }
    let kind = match (c.os_kind, named) {
        (Some(k), _) if k != "unknown" => k,
        (_, Some((_, k))) => k,
        _ => "unknown",
    };
    let source = match named {
        Some((s, _)) => Some(s),
        None => match kind {
            "sleep" => Some("time.sleep"),
            "pipe" | "tty" | "network" => c.fd.and_then(fd_source),
            _ => None,
        },
    };
    Verdict {
        kind: kind.to_string(),
        source: source.map(String::from),
    }
}
