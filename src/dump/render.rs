//! The text form of a dump: pure, from the model only (golden-tested on a constructed model).
//! Stacks are innermost first, like py-spy's dump; an await chain is indented one step per
//! await, outermost coroutine first, so `b` awaited by `a` sits under `a`.

use std::io::{self, Write};

use super::model::{Dump, LoopDump, Processes, TaskDump, ThreadDump};
use crate::output::escape::escape;
use crate::sample::{short_path, thread_label};

/// Write one line. Its names come from the target: escaped, so none can move the cursor,
/// retitle the terminal or forge a line (the line's own text has no control characters).
fn put(out: &mut dyn Write, line: &str) -> io::Result<()> {
    writeln!(out, "{}", escape(line))
}

/// `20000` → `20,000`.
pub fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// `dump --subprocesses`: each process in turn.
pub fn processes(p: &Processes, out: &mut dyn Write) -> io::Result<()> {
    for (i, d) in p.processes.iter().enumerate() {
        if i > 0 {
            writeln!(out, "\n{}", "=".repeat(60))?;
        }
        text(d, out)?;
    }
    for n in &p.notes {
        put(out, &format!("note: {n}"))?;
    }
    Ok(())
}

pub fn text(d: &Dump, out: &mut dyn Write) -> io::Result<()> {
    put(out, &format!("Process {}: {}", d.pid, d.command))?;
    put(out, &format!("Python {}", d.python_version))?;
    writeln!(out, "\nThreads ({})", d.threads.len())?;
    for t in &d.threads {
        thread(t, out)?;
    }
    writeln!(out, "\nEvent loops ({})", d.loops.len())?;
    for l in &d.loops {
        event_loop(l, out)?;
    }
    if d.tasks.len() as u64 == d.task_count {
        writeln!(out, "\nTasks ({})", thousands(d.task_count))?;
    } else {
        writeln!(
            out,
            "\nTasks ({} in {} groups of the same await chain; --all-tasks lists each)",
            thousands(d.task_count),
            thousands(d.tasks.len() as u64)
        )?;
    }
    for t in &d.tasks {
        task(d, t, out)?;
    }
    if !d.notes.is_empty() {
        writeln!(out)?;
        for n in &d.notes {
            put(out, &format!("note: {n}"))?;
        }
    }
    Ok(())
}

fn thread(t: &ThreadDump, out: &mut dyn Write) -> io::Result<()> {
    let state = match t.blocked_ms {
        Some(ms) => format!("blocked in a callback for ≥ {ms:.0} ms"),
        None => t.state.clone(),
    };
    let mut head = format!("  {}: {state}", thread_label(t.name.as_deref(), t.tid));
    if let Some(sc) = &t.syscall {
        head.push_str(&format!(" [{sc}]"));
    }
    if t.gil {
        head.push_str(", holds the GIL");
    }
    if let Some(l) = &t.event_loop {
        head.push_str(&format!(", runs event loop {l}"));
    }
    put(out, &head)?;
    for f in &t.stack {
        put(out, &format!("      {}  {}", f.function, f.location()))?;
    }
    Ok(())
}

fn event_loop(l: &LoopDump, out: &mut dyn Write) -> io::Result<()> {
    let mut parts = Vec::new();
    for (what, n) in [("ready", l.ready), ("timers", l.timers), ("tasks", l.tasks)] {
        if let Some(n) = n {
            parts.push(format!("{what} {n}"));
        }
    }
    let now = match (&l.running_task, &l.running_coroutine) {
        (Some(t), Some(c)) => format!("running {t} ({c})"),
        (Some(t), None) => format!("running {t}"),
        (None, Some(c)) => format!("running a task ({c})"),
        (None, None) => "no task running".into(),
    };
    parts.push(now);
    if let Some(r) = &l.request {
        let path = match &r.route {
            Some(route) if *route != r.path => format!("{route} ({})", r.path),
            _ => r.path.clone(),
        };
        parts.push(format!("serving {} {path}", r.method));
    }
    if let Some(ms) = l.callback_ms_at_least {
        let mut blocked = format!("blocked in a callback for ≥ {ms:.0} ms");
        if let Some(poll) = l.since_poll_ms {
            blocked.push_str(&format!(
                " (last polled {} ms ago)",
                thousands(poll.round() as u64)
            ));
        }
        parts.push(blocked);
    }
    put(
        out,
        &format!(
            "  {} on {} at {}: {}",
            l.loop_type,
            thread_label(l.thread.as_deref(), l.tid),
            l.address,
            parts.join(", ")
        ),
    )
}

fn task(d: &Dump, t: &TaskDump, out: &mut dyn Write) -> io::Result<()> {
    let name = t
        .name
        .clone()
        .unwrap_or_else(|| format!("task at {}", t.address));
    let mut head = if t.count > 1 {
        format!("  {} × {}", thousands(t.count), t.state)
    } else {
        format!("  {name}  {}", t.state)
    };
    if let Some(c) = &t.coroutine {
        head.push_str(&format!("  {c}"));
    }
    if let Some(tid) = t.loop_tid {
        let tname = d
            .threads
            .iter()
            .find(|x| x.tid == tid)
            .and_then(|x| x.name.as_deref());
        head.push_str(&format!("  (loop on {})", thread_label(tname, tid)));
    }
    if t.count > 1 {
        head.push_str(&format!(", e.g. {name}"));
    }
    put(out, &head)?;
    for (depth, f) in t.await_chain.iter().enumerate() {
        let at = match f.line {
            Some(line) => format!("{}:{line}", short_path(&f.file)),
            None => short_path(&f.file).to_string(),
        };
        let state = match f.state.as_str() {
            "suspended" => String::new(),
            other => format!("  ({other})"),
        };
        put(
            out,
            &format!("    {}{}  {at}{state}", "  ".repeat(depth), f.function),
        )?;
    }
    if let Some(a) = &t.awaiting {
        let depth = t.await_chain.len();
        put(
            out,
            &format!("    {}awaiting {}", "  ".repeat(depth), a.label()),
        )?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::super::model::{AwaitFrame, Awaiting};
    use super::*;
    use crate::sample::Frame;

    fn frame(function: &str, file: &str, line: u32) -> Frame {
        Frame {
            function: function.into(),
            file: file.into(),
            line,
        }
    }

    fn link(function: &str, file: &str, line: Option<u32>, state: &str) -> AwaitFrame {
        AwaitFrame {
            function: function.into(),
            file: file.into(),
            line,
            state: state.into(),
        }
    }

    /// A service blocked in a handler task, with a fetcher two awaits deep and a worker
    /// waiting on it.
    pub fn model() -> Dump {
        let py = "/usr/lib/python3.11";
        Dump {
            pid: 4242,
            python_version: "3.11.7".into(),
            command: "python3 app.py".into(),
            threads: vec![
                ThreadDump {
                    tid: 4242,
                    name: Some("MainThread".into()),
                    gil: true,
                    state: "blocked".into(),
                    syscall: Some("clock_nanosleep".into()),
                    event_loop: Some("_UnixSelectorEventLoop".into()),
                    blocked_ms: Some(20.4),
                    stack: vec![
                        frame("handler", "/srv/app/handlers.py", 41),
                        frame("Handle._run", &format!("{py}/asyncio/events.py"), 80),
                        frame(
                            "BaseEventLoop._run_once",
                            &format!("{py}/asyncio/base_events.py"),
                            1922,
                        ),
                    ],
                },
                ThreadDump {
                    tid: 4250,
                    name: Some("asyncio_0".into()),
                    gil: false,
                    state: "idle".into(),
                    syscall: Some("futex".into()),
                    event_loop: None,
                    blocked_ms: None,
                    stack: vec![frame(
                        "_worker",
                        &format!("{py}/concurrent/futures/thread.py"),
                        81,
                    )],
                },
            ],
            loops: vec![
                LoopDump {
                    tid: 4242,
                    thread: Some("MainThread".into()),
                    loop_type: "_UnixSelectorEventLoop".into(),
                    address: "0x7f00aa001000".into(),
                    ready: Some(2),
                    timers: Some(3),
                    tasks: Some(3),
                    running_task: Some("handler-7".into()),
                    running_coroutine: Some("handler".into()),
                    request: Some(crate::sample::Request {
                        method: "GET".into(),
                        path: "/orders/7".into(),
                        route: Some("/orders/{order_id}".into()),
                    }),
                    callback_ms_at_least: Some(20.4),
                    since_poll_ms: Some(2345.2),
                },
                LoopDump {
                    tid: 4260,
                    thread: None,
                    loop_type: "Loop".into(),
                    address: "0x7f00bb002000".into(),
                    ready: None,
                    timers: None,
                    tasks: Some(0),
                    running_task: None,
                    running_coroutine: None,
                    request: None,
                    callback_ms_at_least: None,
                    since_poll_ms: None,
                },
            ],
            tasks: vec![
                TaskDump {
                    count: 1,
                    address: "0x7f00cc000100".into(),
                    name: Some("handler-7".into()),
                    state: "running".into(),
                    coroutine: Some("handler".into()),
                    loop_tid: Some(4242),
                    await_chain: vec![link("handler", "/srv/app/handlers.py", Some(41), "running")],
                    awaiting: None,
                },
                TaskDump {
                    count: 1,
                    address: "0x7f00cc000200".into(),
                    name: Some("fetcher".into()),
                    state: "pending".into(),
                    coroutine: Some("outer".into()),
                    loop_tid: Some(4242),
                    await_chain: vec![
                        link("outer", "/srv/app/fetch.py", Some(12), "suspended"),
                        link("inner", "/srv/app/fetch.py", Some(7), "suspended"),
                        link(
                            "sleep",
                            &format!("{py}/asyncio/tasks.py"),
                            Some(649),
                            "suspended",
                        ),
                    ],
                    awaiting: Some(Awaiting::Future {
                        type_name: "_asyncio.Future".into(),
                    }),
                },
                TaskDump {
                    count: 19_998,
                    address: "0x7f00cc000300".into(),
                    name: Some("Task-3".into()),
                    state: "pending".into(),
                    coroutine: Some("wait_for_fetcher".into()),
                    loop_tid: Some(4242),
                    await_chain: vec![link(
                        "wait_for_fetcher",
                        "/srv/app/main.py",
                        Some(20),
                        "suspended",
                    )],
                    awaiting: Some(Awaiting::Task {
                        name: Some("fetcher".into()),
                        address: "0x7f00cc000200".into(),
                    }),
                },
                TaskDump {
                    count: 1,
                    address: "0x7f00cc000400".into(),
                    name: None,
                    state: "unknown".into(),
                    coroutine: None,
                    loop_tid: None,
                    await_chain: vec![link("later", "/srv/app/main.py", None, "created")],
                    awaiting: None,
                },
            ],
            task_count: 20_001,
            notes: vec!["task layout not confirmed on a live task: task names not shown".into()],
        }
    }

    /// `LOOPSPY_BLESS=1` rewrites the golden file.
    #[test]
    fn golden_text() {
        let mut out = Vec::new();
        text(&model(), &mut out).unwrap();
        let got = String::from_utf8(out).unwrap();
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden/dump.txt");
        if std::env::var_os("LOOPSPY_BLESS").is_some() {
            std::fs::write(&path, &got).unwrap();
        }
        let want = std::fs::read_to_string(&path).unwrap_or_default();
        assert_eq!(
            got,
            want,
            "golden {} differs (LOOPSPY_BLESS=1 to rewrite)",
            path.display()
        );
    }

    /// Every string the target named, with a terminal escape and a line break in it, comes
    /// out escaped: one line each, no control character.
    #[test]
    fn names_from_the_target_are_escaped() {
        const BAD: &str = "x\x1b]0;T\x07\r\nFAKE";
        let mut m = model();
        m.command = BAD.into();
        m.threads[0].name = Some(BAD.into());
        m.threads[0].stack[0] = frame(BAD, BAD, 1);
        m.loops[0].loop_type = BAD.into();
        m.tasks[1].name = Some(BAD.into());
        m.tasks[1].coroutine = Some(BAD.into());
        m.tasks[1].await_chain[0] = link(BAD, BAD, Some(3), "suspended");
        m.tasks[1].awaiting = Some(Awaiting::Future {
            type_name: BAD.into(),
        });
        let mut out = Vec::new();
        text(&m, &mut out).unwrap();
        let got = String::from_utf8(out).unwrap();
        let mut plain = Vec::new();
        text(&model(), &mut plain).unwrap();
        assert_eq!(
            got.lines().count(),
            String::from_utf8(plain).unwrap().lines().count()
        );
        assert!(!got.chars().any(|c| c.is_control() && c != '\n'), "{got}");
        assert!(!got.lines().any(|l| l.starts_with("FAKE")), "{got}");
        assert!(
            got.matches("x\\x1b]0;T\\x07\\r\\nFAKE").count() >= 10,
            "{got}"
        );
    }

    #[test]
    fn json_round_trips() {
        let m = model();
        let json = serde_json::to_string(&m).unwrap();
        assert!(json
            .contains(r#""awaiting":{"kind":"task","name":"fetcher","address":"0x7f00cc000200"}"#));
        let back: Dump = serde_json::from_str(&json).unwrap();
        assert_eq!(back, m);
    }
}
