//! The classifier's rules on constructed stacks, lines and OS states: one case per library,
//! per C call named by its line, per fd kind, and the machinery and GC that override them.

use super::classify::*;
use crate::analysis::culprit::Dispatcher;
use crate::os::fd::FdTarget;
use crate::sample::{Frame, OsState};

fn f(function: &str, file: &str) -> Frame {
    Frame {
        function: function.into(),
        file: file.into(),
        line: 1,
    }
}

fn lines(text: &str) -> Vec<String> {
    text.lines().map(String::from).collect()
}

fn judge(os_kind: Option<&str>, inner: &[Frame], line: Option<(&str, &[String])>) -> Verdict {
    verdict(&Clues {
        os_kind,
        inner,
        line,
        ..Default::default()
    })
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
    let v = judge(Some("network"), &inner, None);
    assert_eq!(v.source.as_deref(), Some("requests"));
    assert_eq!(v.kind, "network");
}

#[test]
fn bare_sleep_is_time_sleep() {
    let v = judge(Some("sleep"), &[], None);
    assert_eq!(v.source.as_deref(), Some("time.sleep"));
}

#[test]
fn c_calls_named_by_their_line() {
    let file = lines("import sqlite3\nimport socket\nimport re\n");
    let v = judge(
        Some("cpu"),
        &[],
        Some(("    conn.execute(q).fetchone()", &file)),
    );
    assert_eq!(
        (v.kind.as_str(), v.source.as_deref()),
        ("cpu", Some("sqlite3"))
    );
    let v = judge(
        Some("network"),
        &[],
        Some(("    s.recv(100)  # wait", &file)),
    );
    assert_eq!(v.source.as_deref(), Some("socket"));
    let v = judge(Some("file"), &[], Some(("os.fsync(f.fileno())", &file)));
    assert_eq!(v.source.as_deref(), Some("os.fsync"));
    let v = judge(Some("lock"), &[], Some(("LOCK.acquire()", &file)));
    assert_eq!(
        (v.kind.as_str(), v.source.as_deref()),
        ("lock", Some("threading"))
    );
    let v = judge(Some("cpu"), &[], Some(("return ', '.join(rows)", &file)));
    assert_eq!(v.source, None, "str.join is not a thread join");
    let v = judge(
        Some("cpu"),
        &[],
        Some(("return sum(range(n))  # .execute( in a comment", &file)),
    );
    assert_eq!(v.source, None);
    for (code, want) in [
        ("gc.collect()", "gc"),
        ("data = pickle.dumps(big)", "pickle"),
        ("hashlib.pbkdf2_hmac('sha256', pw, salt, 10**6)", "hashlib"),
        ("raw = binascii.a2b_base64(blob)", "base64"),
        ("zlib.compress(blob, 9)", "zlib"),
        ("body = orjson.dumps(payload)", "json"),
        ("mod = importlib.import_module(name)", "import"),
        ("m = PATTERN.match(text)", "re"),
    ] {
        let v = judge(Some("cpu"), &[], Some((code, &file)));
        assert_eq!(v.source.as_deref(), Some(want), "{code}");
    }
}

#[test]
fn shared_method_names_need_the_import_and_cpu() {
    let with_re = lines("import re");
    let without = lines("import elasticsearch");
    let line = "hits = es.search(index='x')";
    let v = judge(Some("cpu"), &[], Some((line, &without)));
    assert_eq!(v.source, None, "no `import re`");
    let v = judge(Some("network"), &[], Some((line, &with_re)));
    assert_eq!(v.source, None, "a regex does not wait on the network");
    let v = judge(Some("cpu"), &[], Some((line, &with_re)));
    assert_eq!(v.source.as_deref(), Some("re"));
    assert!(imports(&lines("from re import compile"), "re"));
    assert!(imports(&lines("    import re as regex"), "re"));
    assert!(!imports(&lines("import requests"), "re"));
    assert!(!imports(&lines("# import re"), "re"));
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
        let v = judge(Some("network"), &[], Some(("cur.execute(sql)", &file)));
        assert_eq!(v.source.as_deref(), Some(want), "{import}");
    }
    let v = judge(Some("network"), &[], Some(("cur.execute(sql)", &[])));
    assert_eq!(v.source, None, "an unknown driver is not guessed");
}

#[test]
fn gil_kind_keeps_the_holders_library() {
    let inner = vec![f(
        "dot",
        "/venv/lib/python3.11/site-packages/numpy/core/x.py",
    )];
    let v = judge(Some("gil"), &inner, None);
    assert_eq!(
        (v.kind.as_str(), v.source.as_deref()),
        ("gil", Some("numpy"))
    );
    // The holder's line: a compiled regex computing while the loop waits.
    let file = lines("import re");
    let v = judge(Some("gil"), &[], Some(("PATTERN.match(text)", &file)));
    assert_eq!(v.source.as_deref(), Some("re"));
}

/// One constructed frame per rule, at the path a real install has.
#[test]
fn every_source_rule_matches_its_library() {
    for rule in SOURCE_RULES {
        let file = if rule.file.starts_with('<') {
            format!("{}>", rule.file)
        } else if rule.file.ends_with(".py") {
            format!("/usr/lib/python3.11{}", rule.file)
        } else {
            format!("/venv/lib/python3.11/site-packages{}core.py", rule.file)
        };
        let v = judge(None, &[f("call", &file)], None);
        assert_eq!(v.source.as_deref(), Some(rule.source), "{file}");
        assert_eq!(v.kind, rule.kind, "{file}");
    }
}

#[test]
fn every_line_rule_matches_its_call() {
    let file = lines("import sqlite3\nimport re");
    for rule in LINE_RULES {
        for needle in rule.needles {
            let line = format!("    x = {needle}arg)");
            let kind = Some(rule.kind);
            let (source, _) = line_rule(&line, &file, kind).unwrap_or_else(|| panic!("{line}"));
            // The first rule that applies wins (`time.sleep(` before `sleep(`).
            let first = LINE_RULES
                .iter()
                .find(|r| applies(r, &line, &file, kind))
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

fn sock(fd: i32) -> FdTarget {
    serde_json::from_str(&format!(
        r#"{{"fd":{fd},"type":"socket","protocol":"tcp"}}"#
    ))
    .unwrap()
}

fn pipe(fd: i32) -> FdTarget {
    serde_json::from_str(&format!(r#"{{"fd":{fd},"type":"pipe"}}"#)).unwrap()
}

#[test]
fn the_fd_tells_pipes_and_sockets_from_files() {
    let os = |syscall: &str, fd: Option<FdTarget>| OsState {
        state: 'S',
        syscall: Some(syscall.into()),
        fd,
        ..Default::default()
    };
    assert_eq!(kind_of_os(&os("write", None)), Some("file"));
    assert_eq!(kind_of_os(&os("write", Some(pipe(1)))), Some("pipe"));
    assert_eq!(kind_of_os(&os("read", Some(sock(5)))), Some("network"));
    assert_eq!(kind_of_os(&os("poll", Some(pipe(7)))), Some("pipe"));
    let mut gil = os("futex", None);
    gil.gil_wait = true;
    assert_eq!(kind_of_os(&gil), Some("gil"));

    // print() to a full stdout pipe: no rule names the line, the fd does.
    let stdout = pipe(1);
    let file: Vec<String> = Vec::new();
    let v = verdict(&Clues {
        os_kind: Some("pipe"),
        line: Some(("print(big_line, flush=True)", &file)),
        fd: Some(&stdout),
        ..Default::default()
    });
    assert_eq!(
        (v.kind.as_str(), v.source.as_deref()),
        ("pipe", Some("stdout"))
    );
    // `.write(` says "a file call"; the fd says it is a pipe to a child process.
    let child = pipe(9);
    let v = verdict(&Clues {
        os_kind: Some("pipe"),
        line: Some(("proc.stdin.write(data)", &file)),
        fd: Some(&child),
        ..Default::default()
    });
    assert_eq!(v.source.as_deref(), Some("pipe"));
    // `.read(` on a socket's file object is network.
    let s = sock(5);
    let v = verdict(&Clues {
        os_kind: Some("network"),
        line: Some(("body = conn.read()", &file)),
        fd: Some(&s),
        ..Default::default()
    });
    assert_eq!(
        (v.kind.as_str(), v.source.as_deref()),
        ("network", Some("socket"))
    );
}

#[test]
fn machinery_and_the_collector_name_the_source() {
    let file = lines("import time");
    let base = Clues {
        os_kind: Some("sleep"),
        line: Some(("time.sleep(0.2)", &file)),
        ..Default::default()
    };
    let v = verdict(&Clues {
        dispatcher: Some(Dispatcher::Logging),
        ..base
    });
    assert_eq!(
        (v.kind.as_str(), v.source.as_deref()),
        ("sleep", Some("logging"))
    );
    let v = verdict(&Clues {
        dispatcher: Some(Dispatcher::Finalizer),
        ..base
    });
    assert_eq!(v.source.as_deref(), Some("finalizer"));
    let json = [f("dumps", "/usr/lib/python3.11/json/__init__.py")];
    let v = verdict(&Clues {
        os_kind: Some("cpu"),
        inner: &json,
        collector: true,
        ..Default::default()
    });
    assert_eq!(
        v.source.as_deref(),
        Some("gc"),
        "the collector's time is GC"
    );
    let v = verdict(&Clues {
        os_kind: Some("cpu"),
        dispatcher: Some(Dispatcher::Import),
        ..Default::default()
    });
    assert_eq!(v.source.as_deref(), Some("import"));
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

/// Regression: a pydantic episode whose heaviest single stack sat between two validations
/// (no pydantic frame) was named nothing; the whole episode's stacks name it.
#[test]
fn the_library_most_of_the_episode_shows() {
    let pydantic = source_rule(&[f(
        "BaseModel.model_validate",
        "/venv/lib/python3.10/site-packages/pydantic/main.py",
    )])
    .unwrap();
    let source = |v: Option<(&SourceRule, bool)>| v.map(|(r, most)| (r.source, most));
    assert_eq!(
        source(library_vote([(Some(pydantic), 60), (None, 40)])),
        Some(("pydantic", true))
    );
    assert_eq!(
        source(library_vote([(None, 70), (Some(pydantic), 30)])),
        Some(("pydantic", false))
    );
    assert_eq!(
        source(library_vote([(Some(pydantic), 20), (None, 80)])),
        None
    );
    assert_eq!(source(library_vote([])), None);

    let file = lines("import time");
    // A quarter names the source only when nothing else does...
    let weak = Clues {
        os_kind: Some("cpu"),
        library: library_vote([(None, 70), (Some(pydantic), 30)]),
        ..Default::default()
    };
    assert_eq!(verdict(&weak).source.as_deref(), Some("pydantic"));
    let v = verdict(&Clues {
        os_kind: Some("sleep"),
        line: Some(("time.sleep(1)", &file)),
        ..weak
    });
    assert_eq!(v.source.as_deref(), Some("time.sleep"));
    // ... half of the episode names it before the top stack's line.
    let v = verdict(&Clues {
        os_kind: Some("cpu"),
        line: Some(("time.sleep(1)", &file)),
        library: library_vote([(Some(pydantic), 50), (None, 50)]),
        ..Default::default()
    });
    assert_eq!(v.source.as_deref(), Some("pydantic"));
}
