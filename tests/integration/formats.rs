//! `--format pprof` and `--format perfetto`, offline: recorded fixtures replayed through
//! `report`'s code path, compared with golden files (the pprof as the text form of the decoded
//! profile, the Perfetto trace as written), and the pprof read back by `go tool pprof`.

use std::path::{Path, PathBuf};
use std::process::Command;

use loopspy::commands::report::replay_with;
use loopspy::output::perfetto::PerfettoFile;
use loopspy::output::pprof::{decode, to_text, PprofFile, LABELS};
use loopspy::output::target::{Mode, OutputFile};
use loopspy::pipeline::Sinks;
use serde_json::Value;

use crate::offline::golden;
use crate::support::{loopspy, repo};

fn no_sinks() -> Sinks {
    Sinks {
        speedscope: false,
        flamegraph: None,
        raw: None,
        episodes: None,
        live_hangs: false,
        by_task: false,
    }
}

/// Replay a fixture into a pprof file and a Perfetto trace; returns their bytes.
fn render(name: &str) -> (Vec<u8>, String) {
    let dir = tempfile::tempdir().unwrap();
    let pb = dir.path().join("out.pb.gz");
    let trace = dir.path().join("out.perfetto.json");
    let fixture = repo().join("tests/fixtures").join(format!("{name}.jsonl"));
    replay_with(
        &fixture,
        50.0,
        false,
        no_sinks(),
        vec![
            (
                Box::new(PprofFile::new(false)),
                Some(OutputFile::create(&pb, Mode::Whole).unwrap()),
            ),
            (
                Box::new(PerfettoFile::new(50.0)),
                Some(OutputFile::create(&trace, Mode::Whole).unwrap()),
            ),
        ],
        None,
        &mut std::io::sink(),
    )
    .unwrap();
    (
        std::fs::read(pb).unwrap(),
        std::fs::read_to_string(trace).unwrap(),
    )
}

fn golden_dir() -> PathBuf {
    repo().join("tests/golden")
}

fn check(name: &str) -> (loopspy::output::pprof::Profile, Value) {
    let (pb, trace) = render(name);
    let profile = decode(&pb).expect("the pprof file decodes");
    golden(
        &golden_dir().join(format!("{name}.pprof.txt")),
        &to_text(&profile),
    );
    golden(&golden_dir().join(format!("{name}.perfetto.json")), &trace);
    let trace: Value = serde_json::from_str(&trace).expect("the trace is one JSON document");
    (profile, trace)
}

fn episode_slices(trace: &Value) -> Vec<&Value> {
    trace["traceEvents"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["ph"] == "X" && e["cat"] == "episode")
        .collect()
}

#[test]
fn sleep_task_pprof_and_perfetto() {
    let (profile, trace) = check("sleep_task");
    let text = to_text(&profile);
    // The three 150 ms sleeps, labeled blocked with their kind.
    assert!(
        text.lines().any(|l| l.contains("blocked=true kind=sleep")
            && l.ends_with("sleepy_handler (py/scenarios.py:58)")),
        "{text}"
    );
    for l in &profile.sample {
        for label in &l.label {
            let key = &profile.string_table[label.key as usize];
            assert!(LABELS.contains(&key.as_str()), "label {key}");
        }
    }
    let eps = episode_slices(&trace);
    assert_eq!(eps.len(), 3);
    for e in eps {
        assert_eq!(e["name"], "sleepy_handler (py/scenarios.py:58)");
        assert_eq!(e["args"]["kind"], "sleep");
        assert_eq!(e["args"]["source"], "time.sleep");
        assert!(e["args"]["advice"]
            .as_str()
            .unwrap()
            .contains("asyncio.sleep"));
        let dur = e["dur"].as_i64().unwrap();
        assert!((145_000..=155_000).contains(&dur), "{dur}");
    }
}

#[test]
fn workers_get_one_process_each() {
    let (profile, trace) = check("workers_merged");
    let pids: std::collections::BTreeSet<i64> = episode_slices(&trace)
        .iter()
        .map(|e| e["pid"].as_i64().unwrap())
        .collect();
    assert_eq!(pids.len(), 2, "episodes in both processes");
    let names: Vec<&str> = trace["traceEvents"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["name"] == "process_name")
        .map(|e| e["args"]["name"].as_str().unwrap())
        .collect();
    assert_eq!(names.len(), 2);
    let text = to_text(&profile);
    assert!(text.contains("thread_name=blocking-loop"), "{text}");
}

#[test]
fn demo_pprof_and_perfetto() {
    let (_, trace) = check("demo_before");
    let culprits: std::collections::BTreeSet<&str> = episode_slices(&trace)
        .iter()
        .map(|e| e["name"].as_str().unwrap())
        .collect();
    assert!(
        culprits.iter().any(|c| c.starts_with("compress_export")),
        "{culprits:?}"
    );
    // Stacks sit on their own track beside the episodes, nested exactly.
    let stacks: Vec<&Value> = trace["traceEvents"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["ph"] == "X" && e["cat"] == "stack")
        .collect();
    assert!(!stacks.is_empty());
    assert!(stacks
        .iter()
        .all(|e| e["tid"].as_u64().unwrap() > loopspy::output::perfetto::STACKS_TID_OFFSET));
}

/// `go tool pprof -raw` reads the file `record`/`report --format pprof` write.
#[test]
fn go_tool_pprof_reads_the_file() {
    if Command::new("go").arg("version").output().is_err() {
        eprintln!("SKIPPED: go is not installed (scripts/deps/ecosystem.sh installs golang-go): go tool pprof test");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let pb = dir.path().join("sleep_task.pb.gz");
    let status = Command::new(loopspy())
        .args(["report", "--format", "pprof", "-o"])
        .arg(&pb)
        .arg(repo().join("tests/fixtures/sleep_task.jsonl"))
        .stderr(std::process::Stdio::null())
        .status()
        .unwrap();
    assert!(status.success());
    let raw = go_pprof_raw(&pb.display().to_string(), dir.path());
    assert!(raw.contains("sleepy_handler"), "{raw}");
    assert!(raw.contains("blocked:[true]"), "{raw}");
    assert!(raw.contains("kind:[sleep]"), "{raw}");
    assert!(raw.contains("samples/count wall/nanoseconds"), "{raw}");
}

/// `go tool pprof -raw SOURCE` (a file or a URL); its own files go to `tmp`.
pub fn go_pprof_raw(source: &str, tmp: &Path) -> String {
    let out = Command::new("go")
        .args(["tool", "pprof", "-raw", source])
        .env("PPROF_TMPDIR", tmp)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "go tool pprof failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}
