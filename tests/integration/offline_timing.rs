//! Episode timing on recorded fixtures (tests/fixtures, see its README), with golden outputs:
//! GIL starvation against the stalls the target's own heartbeat measured, a block already
//! under way when loopspy attached, and loops closed and started again.

use serde_json::Value;

use crate::offline::{check_goldens, replay_fixture};
use crate::support::repo;

/// The target's own measurements, kept beside a fixture (`NAME.blocks.jsonl`).
fn blocks(name: &str) -> Vec<Value> {
    let path = repo().join(format!("tests/fixtures/{name}.blocks.jsonl"));
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// Four base64 decodes in `to_thread` starving the loop of the GIL, at 1 kHz: each stall is
/// one episode whose ends are within 5 ms of the heartbeat's, named with the starved task.
#[test]
fn gil_starvation_matches_the_heartbeat() {
    let r = replay_fixture("gil_base64", 50.0);
    check_stalls("gil_base64", &r);
    for e in &r.episodes {
        assert!(e.duration_error_ms.unwrap() <= 1.5, "one tick: {e:?}");
    }
    check_goldens("gil_base64", &r);
}

/// The same on a loaded machine (the sampler ran up to 200 ms late), where stack samples
/// often caught the loop between two of CPython's GIL waits, frames in the selector: before
/// the OS won over the frames, these samples gave ten episodes, most of them cut short.
#[test]
fn gil_starvation_on_a_loaded_machine_is_not_split() {
    let r = replay_fixture("gil_base64_loaded", 50.0);
    check_stalls("gil_base64_loaded", &r);
    check_goldens("gil_base64_loaded", &r);
}

fn check_stalls(name: &str, r: &crate::offline::Replayed) {
    let stalls = blocks(name);
    assert_eq!(stalls.len(), 4);
    assert_eq!(r.episodes.len(), stalls.len(), "not split, not missed");
    for (e, s) in r.episodes.iter().zip(&stalls) {
        let err = e.duration_error_ms.unwrap();
        let tolerance = 5.0f64.max(err + 1.0);
        let start_off = (e.start - s["start"].as_f64().unwrap()) * 1000.0;
        let end_off = (e.start + e.duration_ms / 1000.0 - s["end"].as_f64().unwrap()) * 1000.0;
        assert!(
            start_off.abs() <= tolerance && end_off.abs() <= tolerance,
            "{start_off:+.1} / {end_off:+.1} ms (±{err:.1}) for {s}"
        );
        assert_eq!(e.kind, "gil");
        assert_eq!(e.culprit.function, "decode");
        assert!(e.gil_holder.is_some());
        assert_eq!(e.task.as_deref(), Some("heartbeat"), "the starved task");
        assert!(e.coroutine.as_deref().is_some_and(|c| c.ends_with("beat")));
    }
}

/// Attached about 50 ms into a 2 s block: the episode says its start was not seen, and the
/// summary gives its duration as a lower bound.
#[test]
fn attached_mid_block_is_a_lower_bound() {
    let r = replay_fixture("attached_mid_block", 50.0);
    let block = &blocks("attached_mid_block")[0];
    assert_eq!(r.episodes.len(), 1);
    let e = &r.episodes[0];
    assert!(!e.start_seen && e.complete, "{e:?}");
    assert!(e.duration_ms < block["ms"].as_f64().unwrap());
    assert!(r.jsonl.contains("\"start_seen\":false"), "{}", r.jsonl);
    assert!(r.summary.contains("≥ 1946.2 ms"), "{}", r.summary);
    assert!(r
        .summary
        .contains("already running when loopspy first saw its thread"));
    check_goldens("attached_mid_block", &r);
}

/// `asyncio.run()` three times, two blocks each: six episodes, each named with its own loop's
/// task.
#[test]
fn loops_started_again_keep_their_tasks() {
    let r = replay_fixture("restart_loops", 50.0);
    let measured = blocks("restart_loops");
    assert_eq!(r.episodes.len(), 6);
    let tasks: Vec<&str> = r
        .episodes
        .iter()
        .map(|e| e.task.as_deref().expect("every episode has its task"))
        .collect();
    assert_eq!(
        tasks,
        ["Task-1", "Task-1", "Task-4", "Task-4", "Task-7", "Task-7"]
    );
    for (e, b) in r.episodes.iter().zip(&measured) {
        let (got, want) = (e.duration_ms, b["ms"].as_f64().unwrap());
        assert!(
            (got - want).abs() <= e.duration_error_ms.unwrap() + 1.0,
            "{got} ± {:?} vs {want}",
            e.duration_error_ms
        );
    }
    check_goldens("restart_loops", &r);
}
