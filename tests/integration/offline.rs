//! Offline tests: recorded samples (tests/fixtures, made from real runs; see its README) replayed
//! through `report`'s code path. The episodes, the summary and the SVG are compared with golden
//! files in tests/golden; `LOOPSPY_BLESS=1` rewrites them.

use std::path::{Path, PathBuf};

use loopspy::commands::report::replay;
use loopspy::episode::Episode;
use loopspy::output::episodes::EpisodeLog;
use loopspy::output::target::{Mode, OutputFile};
use loopspy::pipeline::Sinks;

use crate::support::repo;

pub(crate) struct Replayed {
    pub episodes: Vec<Episode>,
    pub jsonl: String,
    pub svg: String,
    pub summary: String,
}

pub(crate) fn replay_fixture(name: &str, threshold_ms: f64) -> Replayed {
    replay_fixture_with(name, threshold_ms, false)
}

/// `replay_fixture`, with `--by-task` on or off.
pub(crate) fn replay_fixture_with(name: &str, threshold_ms: f64, by_task: bool) -> Replayed {
    let dir = tempfile::tempdir().unwrap();
    let svg = dir.path().join("out.svg");
    let jsonl = dir.path().join("out.jsonl");
    let sinks = Sinks {
        by_task,
        speedscope: false,
        flamegraph: Some(OutputFile::create(&svg, Mode::Whole).unwrap()),
        raw: None,
        episodes: Some(EpisodeLog::new(
            OutputFile::create(&jsonl, Mode::Whole).unwrap(),
        )),
        live_hangs: false,
    };
    let mut summary = Vec::new();
    let fixture = repo().join("tests/fixtures").join(format!("{name}.jsonl"));
    let episodes = replay(&fixture, threshold_ms, false, sinks, None, &mut summary).unwrap();
    let summary = String::from_utf8(summary).unwrap();
    // The list of files written names temporary paths: keep the summary machine-independent.
    let summary = summary
        .lines()
        .filter(|l| !l.starts_with("loopspy: wrote"))
        .collect::<Vec<_>>()
        .join("\n")
        + "\n";
    Replayed {
        episodes,
        jsonl: std::fs::read_to_string(jsonl).unwrap(),
        svg: std::fs::read_to_string(svg).unwrap(),
        summary,
    }
}

pub fn golden(path: &Path, actual: &str) {
    if std::env::var_os("LOOPSPY_BLESS").is_some() {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, actual).unwrap();
        return;
    }
    let expected = std::fs::read_to_string(path).unwrap_or_else(|_| {
        panic!(
            "missing golden file {} (run with LOOPSPY_BLESS=1)",
            path.display()
        )
    });
    if expected != actual {
        let wrote = path.with_extension(format!(
            "{}.actual",
            path.extension().unwrap().to_string_lossy()
        ));
        std::fs::write(&wrote, actual).unwrap();
        panic!(
            "{} differs from the golden file; actual output in {} (LOOPSPY_BLESS=1 to accept)",
            path.display(),
            wrote.display()
        );
    }
}

pub(crate) fn check_goldens(name: &str, r: &Replayed) {
    let dir: PathBuf = repo().join("tests/golden");
    golden(&dir.join(format!("{name}.episodes.jsonl")), &r.jsonl);
    golden(&dir.join(format!("{name}.summary.txt")), &r.summary);
    golden(&dir.join(format!("{name}.svg")), &r.svg);
}

fn durations(r: &Replayed) -> Vec<f64> {
    r.episodes.iter().map(|e| e.duration_ms).collect()
}

/// Two tasks' short bursts (`reader_edges.py tasks`): with `--by-task` the flame graph draws
/// each under its task (`task poller`, named; `task crunch`, the coroutine of a `Task-N`);
/// without it, no task frame.
#[test]
fn tasks_recording_by_task() {
    let grouped = replay_fixture_with("tasks", 50.0, true);
    assert!(grouped.episodes.is_empty());
    assert!(
        grouped.svg.contains("<title>task poller ("),
        "no poller task frame"
    );
    assert!(
        grouped.svg.contains("<title>task crunch ("),
        "no crunch task frame"
    );
    check_goldens("tasks_by_task", &grouped);
    let plain = replay_fixture("tasks", 50.0);
    assert!(
        !plain.svg.contains("<title>task "),
        "a task frame without --by-task"
    );
    assert!(plain.svg.contains("<title>poll_work ("));
}

#[test]
fn sleep_task_recording() {
    let r = replay_fixture("sleep_task", 50.0);
    assert_eq!(r.episodes.len(), 3);
    for e in &r.episodes {
        assert!((e.duration_ms - 150.0).abs() <= 5.0, "{}", e.duration_ms);
        assert_eq!(e.culprit.function, "sleepy_handler");
        assert!(e.complete);
    }
    assert!(r.svg.contains("BLOCKED in sleepy_handler"));
    check_goldens("sleep_task", &r);
}

#[test]
fn replay_is_deterministic_and_threshold_applies() {
    let a = replay_fixture("sleep_task", 50.0);
    let b = replay_fixture("sleep_task", 50.0);
    assert_eq!(a.jsonl, b.jsonl);
    assert_eq!(a.svg, b.svg);
    assert!(replay_fixture("sleep_task", 200.0).episodes.is_empty());
}

#[test]
fn jitter_and_gaps() {
    let r = replay_fixture("jitter_gaps", 50.0);
    // 200 Hz with ±2 ms jitter, one sample in seven dropped and a 60 ms stall: the boundaries
    // move by at most half the gap around them.
    assert_eq!(r.episodes.len(), 3, "{:?}", durations(&r));
    for e in &r.episodes {
        assert!((e.duration_ms - 150.0).abs() <= 12.0, "{:?}", durations(&r));
    }
    check_goldens("jitter_gaps", &r);
}

#[test]
fn two_loops_blame_the_right_thread() {
    let r = replay_fixture("two_loops", 50.0);
    assert_eq!(r.episodes.len(), 3);
    assert!(r
        .episodes
        .iter()
        .all(|e| e.thread.as_deref() == Some("blocking-loop")));
    assert!(r.summary.contains("calm-loop"), "{}", r.summary);
    check_goldens("two_loops", &r);
}

#[test]
fn back_to_back_callbacks_are_separate_episodes() {
    let r = replay_fixture("back_to_back", 50.0);
    let names: Vec<_> = r
        .episodes
        .iter()
        .map(|e| e.culprit.function.as_str())
        .collect();
    assert_eq!(
        names,
        ["first_callback", "second_callback", "twin", "twin"],
        "{:?}",
        durations(&r)
    );
    for e in &r.episodes {
        assert!((e.duration_ms - 100.0).abs() <= 5.0, "{:?}", durations(&r));
    }
    check_goldens("back_to_back", &r);
}

#[test]
fn a_thread_that_disappears() {
    let r = replay_fixture("thread_ends", 50.0);
    assert_eq!(r.episodes.len(), 3);
    assert!(r
        .episodes
        .iter()
        .all(|e| e.complete && e.thread.as_deref() == Some("short-lived-loop")));
    check_goldens("thread_ends", &r);
}

#[test]
fn process_exiting_mid_episode() {
    let r = replay_fixture("exit_mid_block", 50.0);
    assert_eq!(r.episodes.len(), 1);
    let e = &r.episodes[0];
    assert!(!e.complete, "the block was cut by the exit");
    assert_eq!(e.culprit.function, "exit_mid_block_main");
    // The process lived ~300 ms after the block began.
    assert!(
        e.duration_ms > 250.0 && e.duration_ms < 320.0,
        "{}",
        e.duration_ms
    );
    assert!(
        r.summary
            .contains("still running when the recording stopped"),
        "{}",
        r.summary
    );
    check_goldens("exit_mid_block", &r);
}

#[test]
fn uvloop_recording() {
    let r = replay_fixture("uvloop", 50.0);
    assert_eq!(r.episodes.len(), 3, "{:?}", durations(&r));
    assert!(r
        .episodes
        .iter()
        .all(|e| e.culprit.function == "sleepy_handler"));
    check_goldens("uvloop", &r);
}

#[test]
fn gil_starvation_recording() {
    let r = replay_fixture("gil", 50.0);
    assert_eq!(r.episodes.len(), 2, "{:?}", durations(&r));
    for e in &r.episodes {
        assert_eq!(e.kind, "gil");
        assert_eq!(e.culprit.function, "gil_hog");
        let holder = e.gil_holder.as_ref().unwrap();
        assert_eq!(holder.thread.as_deref(), Some("gil-hog"));
        assert_eq!(holder.culprit.as_ref(), Some(&e.culprit));
        assert_eq!(e.holds_gil, Some(true));
    }
    assert!(r.svg.contains("GIL held by gil-hog"));
    assert!(r.summary.contains("GIL held by gil-hog"), "{}", r.summary);
    check_goldens("gil", &r);
}

/// A backtracking regex held the GIL through each episode: the advice is the regex's own fix,
/// never a thread. Each episode's frame is as wide as it lasted.
#[test]
fn gil_held_advice() {
    let r = replay_fixture("gil_held_regex", 50.0);
    assert_eq!(r.episodes.len(), 2, "{:?}", durations(&r));
    for e in &r.episodes {
        assert_eq!(
            (e.kind.as_str(), e.source.as_deref(), e.holds_gil),
            ("cpu", Some("re"), Some(true))
        );
        let advice = e.advice.as_deref().unwrap();
        assert!(advice.contains("bound the input"), "{advice}");
        assert!(!advice.contains("to_thread"), "{advice}");
    }
    crate::causes::check_widths("gil_held_regex", &r.svg);
    check_goldens("gil_held_regex", &r);
}

/// `hashlib.pbkdf2_hmac` released the GIL: a thread frees the loop, and the advice says so.
/// (Offline there is no source line to name `hashlib` by.)
#[test]
fn gil_released_advice() {
    let r = replay_fixture("gil_released_hashlib", 50.0);
    assert_eq!(r.episodes.len(), 2, "{:?}", durations(&r));
    for e in &r.episodes {
        assert_eq!((e.kind.as_str(), e.holds_gil), ("cpu", Some(false)));
        assert!(e.advice.as_deref().unwrap().contains("to_thread"));
    }
    crate::causes::check_widths("gil_released_hashlib", &r.svg);
    check_goldens("gil_released_hashlib", &r);
}

#[test]
fn worker_processes_get_a_root_each() {
    let r = replay_fixture("workers_merged", 50.0);
    let pids: std::collections::BTreeSet<u32> = r.episodes.iter().map(|e| e.pid).collect();
    assert_eq!(pids.len(), 2, "{:?}", durations(&r));
    assert_eq!(r.episodes.len(), 6);
    for pid in &pids {
        assert!(
            r.svg.contains(&format!("process {pid}")),
            "no root for {pid}"
        );
    }
    check_goldens("workers_merged", &r);
}

#[test]
fn speedscope_output_from_a_recording() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("s.speedscope.json");
    let o = std::process::Command::new(crate::support::loopspy())
        .args(["report", "--format", "speedscope", "-o"])
        .arg(&out)
        .arg(repo().join("tests/fixtures/sleep_task.jsonl"))
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&out).unwrap()).unwrap();
    assert_eq!(v["profiles"][0]["type"], "sampled");
    let names: Vec<&str> = v["shared"]["frames"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|f| f["name"].as_str())
        .collect();
    assert!(
        names
            .iter()
            .any(|n| n.starts_with("BLOCKED in sleepy_handler")),
        "{names:?}"
    );
}

/// Kernel-clock recordings (perf tracepoints): episodes start and end at the kernel's event
/// times, so the durations match the target's own timing to the loop's bookkeeping.
#[test]
fn kernel_clock_recording_has_exact_boundaries() {
    let r = replay_fixture("kernel_sleep_task", 50.0);
    // What the target measured around each time.sleep (tests/fixtures/README.md); the callback
    // also prints its BLOCK line, about 0.25 ms here.
    let measured = [150.099, 150.526, 150.125];
    assert_eq!(r.episodes.len(), 3, "{:?}", durations(&r));
    for (e, want) in r.episodes.iter().zip(measured) {
        assert!(
            e.duration_ms >= want && e.duration_ms - want < 0.5,
            "{:?}",
            durations(&r)
        );
        assert_eq!(e.culprit.function, "sleepy_handler");
    }
    assert!(
        r.summary.contains("loopspy: clock: kernel"),
        "{}",
        r.summary
    );
    check_goldens("kernel_sleep_task", &r);
}

#[test]
fn kernel_clock_splits_callbacks_of_one_iteration() {
    let r = replay_fixture("kernel_back_to_back", 50.0);
    let names: Vec<_> = r
        .episodes
        .iter()
        .map(|e| e.culprit.function.as_str())
        .collect();
    assert_eq!(
        names,
        ["first_callback", "second_callback", "twin", "twin"],
        "{:?}",
        durations(&r)
    );
    // The split inside one iteration lies between two 5 ms ticks.
    for e in &r.episodes {
        assert!((e.duration_ms - 100.0).abs() <= 5.0, "{:?}", durations(&r));
    }
    check_goldens("kernel_back_to_back", &r);
}

#[test]
fn kernel_clock_gil_starvation() {
    let r = replay_fixture("kernel_gil", 50.0);
    assert_eq!(r.episodes.len(), 2, "{:?}", durations(&r));
    for e in &r.episodes {
        assert_eq!(e.kind, "gil");
        assert_eq!(e.culprit.function, "gil_hog");
        assert_eq!(
            e.gil_holder.as_ref().and_then(|h| h.thread.as_deref()),
            Some("gil-hog")
        );
    }
    check_goldens("kernel_gil", &r);
}

/// A FastAPI service under uvicorn (tests/integration/servers/fixture.rs): every episode names
/// the request its task served, replayed offline, and one background task served none.
#[test]
fn fastapi_recording_names_endpoints() {
    let r = replay_fixture("fastapi", 50.0);
    let routes: Vec<Option<&str>> = r
        .episodes
        .iter()
        .map(|e| e.request.as_ref().and_then(|q| q.route.as_deref()))
        .collect();
    assert_eq!(
        routes,
        [
            Some("/sleep/{seconds}"),
            Some("/orders/{order_id}"),
            Some("/quotes/{symbol}"),
            Some("/orders/{order_id}"),
            None
        ]
    );
    let paths: Vec<&str> = r
        .episodes
        .iter()
        .filter_map(|e| e.request.as_ref().map(|q| q.path.as_str()))
        .collect();
    assert_eq!(
        paths,
        ["/sleep/0.15", "/orders/7", "/quotes/ACME", "/orders/8"]
    );
    assert!(
        r.summary.contains("blocked time by endpoint"),
        "{}",
        r.summary
    );
    assert!(r.summary.contains("GET /orders/{order_id}"));
    assert!(r.summary.contains("(no request)"));
    assert!(r
        .svg
        .contains("[network, sqlalchemy] [GET /orders/{order_id}]"));
    assert!(r
        .jsonl
        .contains(r#""request":{"method":"GET","path":"/orders/8","route":"/orders/{order_id}"}"#));
    assert!(r.jsonl.contains(r#""request":null"#));
    check_goldens("fastapi", &r);
}

/// Recordings made before episodes carried requests replay with `request: null`, and an
/// episode line without the field still parses.
#[test]
fn old_recordings_have_no_request() {
    let r = replay_fixture("sleep_task", 50.0);
    assert!(r.episodes.iter().all(|e| e.request.is_none()));
    let line = r
        .jsonl
        .lines()
        .next()
        .unwrap()
        .replace(r#","request":null"#, "");
    let e: Episode = serde_json::from_str(&line).unwrap();
    assert!(e.request.is_none());
}
