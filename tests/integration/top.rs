//! `loopspy top`: golden screens rendered from recorded samples at 80×24 and 120×40, and a live
//! end-to-end run in tmux against the demo app.

use std::fs::File;
use std::io::BufReader;
use std::process::Command;
use std::time::{Duration, Instant};

use loopspy::acquire::sampler::SamplerStats;
use loopspy::analysis::detector::{Detector, DetectorConfig};
use loopspy::recording::RecordingReader;
use loopspy::top::model::TopModel;
use loopspy::top::render::to_text;
use loopspy::top::{feed_end, feed_sample};

use crate::support::{loopspy, repo};

/// Replay a fixture into a model: the first `take` samples (all when None), then, with
/// `end`, the end of sampling.
fn model_from(fixture: &str, take: Option<usize>, end: Option<&str>) -> TopModel {
    let path = repo()
        .join("tests/fixtures")
        .join(format!("{fixture}.jsonl"));
    let mut reader = RecordingReader::new(BufReader::new(File::open(&path).unwrap())).unwrap();
    let h = reader.header.clone();
    // The command line names the machine that recorded it: keep screens machine-independent.
    let mut model = TopModel::new(h.pid, "python3 app.py", &h.python_version, 50.0);
    let mut detector = Detector::new(DetectorConfig { threshold: 0.05 });
    // The clock the recording was made on, from its final stats line (absent in older ones).
    let clock = {
        let mut all = RecordingReader::new(BufReader::new(File::open(&path).unwrap())).unwrap();
        all.by_ref().for_each(drop);
        all.stats.map(|s| s.clock).unwrap_or_default()
    };
    let mut stats = SamplerStats {
        rate: h.rate,
        clock,
        ..Default::default()
    };
    for s in reader.by_ref().take(take.unwrap_or(usize::MAX)) {
        let s = s.unwrap();
        stats.samples += 1;
        stats.elapsed = s.mono;
        feed_sample(&mut detector, &mut model, &s, &stats);
    }
    if let Some(why) = end {
        feed_end(&mut detector, &mut model, why);
    }
    model
}

fn check(name: &str, model: &TopModel) {
    for (w, h) in [(80u16, 24u16), (120, 40)] {
        let text = to_text(model, w, h, false);
        let path = repo()
            .join("tests/golden")
            .join(format!("top-{name}-{w}x{h}.txt"));
        if std::env::var_os("LOOPSPY_BLESS").is_some() {
            std::fs::write(&path, &text).unwrap();
            continue;
        }
        let want = std::fs::read_to_string(&path)
            .unwrap_or_else(|_| panic!("missing {} (LOOPSPY_BLESS=1)", path.display()));
        assert_eq!(
            text,
            want,
            "{} differs; LOOPSPY_BLESS=1 to accept",
            path.display()
        );
    }
}

/// The FastAPI recording: the endpoint column, and the culprit's stack from its own frame.
#[test]
fn screen_endpoints() {
    let m = model_from("fastapi", None, Some("target exited"));
    let text = to_text(&m, 120, 40, false);
    assert!(text.contains("GET /orders/{order_id}"), "{text}");
    assert!(
        text.contains("→ get_order (servers/fastapi_app.py:"),
        "{text}"
    );
    check("endpoints", &m);
}

/// The header names the clock: on the kernel clock ticks run only inside long callbacks, so
/// their rate is not "of" the rate asked.
#[test]
fn screen_kernel_clock() {
    let mut m = model_from("kernel_sleep_task", None, Some("target exited"));
    let text = to_text(&m, 80, 24, false);
    let second = text.lines().nth(1).unwrap_or_default();
    assert!(
        second.starts_with("clock kernel, ") && second.contains(" Hz (200 in long callbacks), "),
        "{text}"
    );
    check("kernel", &m);
    m.stats.clock = "probe".into();
    let text = to_text(&m, 80, 24, false);
    assert!(
        text.lines()
            .nth(1)
            .is_some_and(|l| l.starts_with("clock probe, ") && l.contains(" Hz of 200, ")),
        "{text}"
    );
}

#[test]
fn screen_idle_loop() {
    let m = model_from("idle", None, None);
    assert!(to_text(&m, 120, 40, false).contains("idle"));
    check("idle", &m);
}

#[test]
fn screen_block_in_progress() {
    // exit_mid_block: the process is 300 ms into a 2 s block at its last sample.
    let m = model_from("exit_mid_block", None, None);
    let text = to_text(&m, 120, 40, false);
    assert!(
        text.contains("BLOCKED for 0.3 s in exit_mid_block_main"),
        "{text}"
    );
    check("blocked", &m);
}

#[test]
fn screen_many_culprits() {
    let m = model_from("demo", None, Some("target exited"));
    let text = to_text(&m, 120, 40, false);
    for culprit in [
        "legacy_user_lookup",
        "render_report",
        "write_audit",
        "compress_export",
    ] {
        assert!(text.contains(culprit), "{culprit} missing:\n{text}");
    }
    check("demo", &m);
}

#[test]
fn screen_two_loops() {
    let m = model_from("two_loops", Some(120), None);
    let text = to_text(&m, 120, 40, false);
    assert!(
        text.contains("blocking-loop") && text.contains("calm-loop"),
        "{text}"
    );
    check("two-loops", &m);
}

#[test]
fn screen_target_exited() {
    let m = model_from("exit_mid_block", None, Some("target exited"));
    let text = to_text(&m, 80, 24, false);
    assert!(text.contains("sampling ended: target exited"), "{text}");
    check("exited", &m);
}

#[test]
fn keys_change_the_model() {
    let mut m = model_from("demo", None, None);
    let first = m.culprits()[0].culprit.function.clone();
    m.cycle_sort();
    assert_eq!(m.sort, loopspy::top::model::SortKey::Count);
    m.select(1);
    assert_eq!(m.selected, 1);
    m.select(-5);
    assert_eq!(m.selected, 0);
    m.help = true;
    assert!(to_text(&m, 80, 24, false).contains("pause the display"));
    assert!(!first.is_empty());
}

fn tmux(args: &[&str]) -> String {
    let out = Command::new("tmux").args(args).output().expect("tmux");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Poll the pane until `pred` holds (the view refreshes 4 times a second), or fail after `limit`.
fn wait_for(session: &str, limit: Duration, pred: impl Fn(&str) -> bool) -> String {
    let start = Instant::now();
    loop {
        let screen = tmux(&["capture-pane", "-p", "-t", session]);
        if pred(&screen) {
            return screen;
        }
        assert!(start.elapsed() < limit, "timed out; screen:\n{screen}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn live_top_in_tmux() {
    if Command::new("tmux").arg("-V").output().is_err() {
        eprintln!("SKIPPED: tmux is not installed (apt-get install tmux)");
        return;
    }
    let session = format!("loopspy-test-{}", std::process::id());
    let cmd = format!(
        "cd {} && {} top -- python3 examples/demo_app.py --seconds 60; echo LOOPSPY-EXIT=$?; sleep 60",
        repo().display(),
        loopspy().display()
    );
    tmux(&[
        "new-session",
        "-d",
        "-s",
        &session,
        "-x",
        "120",
        "-y",
        "40",
        &cmd,
    ]);
    let screen = wait_for(&session, Duration::from_secs(30), |s| {
        s.contains("BLOCKED for") && s.contains("compress_export")
    });
    assert!(screen.contains("loopspy top  pid"), "{screen}");
    tmux(&["send-keys", "-t", &session, "q"]);
    let after = wait_for(&session, Duration::from_secs(10), |s| {
        s.contains("LOOPSPY-EXIT=")
    });
    tmux(&["kill-session", "-t", &session]);
    assert!(after.contains("LOOPSPY-EXIT=0"), "{after}");
    // The alternate screen is gone: the shell's own screen is back.
    assert!(
        !after.contains("loopspy top  pid"),
        "terminal not restored:\n{after}"
    );
}

/// With stdout not a terminal, `top` prints a plain snapshot at each refresh, and the last one
/// when the target exits.
#[test]
fn plain_snapshots_when_not_a_terminal() {
    use std::io::Write;
    let dir = tempfile::tempdir().unwrap();
    let mut top =
        crate::support::launch_scenario(&["top", "--rate", "200"], "sleep_task", dir.path());
    top.stdin.take().unwrap().write_all(b"go\n").unwrap();
    let out = top.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("---- loopspy top: pid"), "{stdout}");
    assert!(stdout.contains("sampling ended: target exited"), "{stdout}");
    assert!(stdout.contains("sleepy_handler"), "{stdout}");
}

#[test]
fn screen_worker_processes() {
    let m = model_from("workers_merged", Some(200), None);
    let text = to_text(&m, 120, 40, false);
    assert!(text.contains("all 2 processes"), "{text}");
    check("workers", &m);
}
