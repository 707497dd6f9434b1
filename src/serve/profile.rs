//! The window of recent labeled stack samples behind `/debug/pprof/profile?seconds=N`: the
//! last [`RETENTION`] of them, at most [`MAX_ENTRIES`], so memory stays flat however long
//! `monitor` runs.

use std::collections::VecDeque;

use anyhow::Result;

use crate::episode::Episode;
use crate::output::labeled::{episode_span, LabeledStack};
use crate::output::pprof::{write_gzipped, PprofBuilder};

/// How far back a profile can reach, in seconds.
pub const RETENTION: f64 = 300.0;
/// Samples kept at most (about 100 bytes each, stacks shared).
pub const MAX_ENTRIES: usize = 200_000;
/// `seconds` when the request gives none (Go's net/http/pprof default).
pub const DEFAULT_SECONDS: f64 = 30.0;

#[derive(Debug, Default)]
pub struct ProfileWindow {
    entries: VecDeque<LabeledStack>,
}

impl ProfileWindow {
    pub fn new() -> ProfileWindow {
        ProfileWindow::default()
    }

    pub fn push(&mut self, s: LabeledStack) {
        let horizon = s.wall - RETENTION;
        self.entries.push_back(s);
        while self.entries.len() > MAX_ENTRIES
            || self.entries.front().is_some_and(|f| f.wall < horizon)
        {
            self.entries.pop_front();
        }
    }

    /// An episode ended: samples of its thread inside it, released early as blocked with the
    /// kind seen so far, take the episode's final kind.
    pub fn on_episode(&mut self, ep: &Episode) {
        let (start, end) = episode_span(ep);
        for s in self.entries.iter_mut().rev() {
            if s.wall < start {
                break;
            }
            if s.pid == ep.pid && s.tid == ep.tid && s.wall <= end {
                s.blocked = true;
                if s.kind.as_deref() != Some(ep.kind.as_str()) {
                    s.kind = Some(ep.kind.as_str().into());
                }
            }
        }
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The gzipped pprof profile of the samples in the last `seconds` before `now` (Unix
    /// seconds); `seconds` is capped at [`RETENTION`].
    pub fn profile(&self, seconds: f64, now: f64) -> Result<Vec<u8>> {
        let seconds = seconds.min(RETENTION);
        let from = now - seconds;
        let mut builder = PprofBuilder::new();
        for s in self.entries.iter().rev() {
            if s.wall < from {
                break;
            }
            builder.add(s);
        }
        let mut out = Vec::new();
        write_gzipped(&builder.build(Some((from, now))), &mut out)?;
        Ok(out)
    }
}

/// A task name as the live profile labels it: asyncio's default names lose their counter
/// (`Task-4711` → `Task-N`), so Pyroscope does not make a series per task; names given with
/// `create_task(name=...)` stay.
pub fn task_label(name: &str) -> String {
    match name.strip_prefix("Task-") {
        Some(n) if !n.is_empty() && n.chars().all(|c| c.is_ascii_digit()) => "Task-N".into(),
        _ => name.to_string(),
    }
}

/// The `seconds` of a `/debug/pprof/profile` query string: a positive number, at most
/// [`RETENTION`] (larger asks get the whole window); absent means [`DEFAULT_SECONDS`].
pub fn seconds_param(query: Option<&str>) -> std::result::Result<f64, String> {
    let Some(query) = query else {
        return Ok(DEFAULT_SECONDS);
    };
    for pair in query.split('&') {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        if k == "seconds" {
            return match v.parse::<f64>() {
                Ok(s) if s > 0.0 && s.is_finite() => Ok(s.min(RETENTION)),
                _ => Err(format!(
                    "seconds must be a number greater than 0 (at most {RETENTION} are kept), not `{v}`"
                )),
            };
        }
    }
    Ok(DEFAULT_SECONDS)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::output::pprof::{decode, to_text};
    use crate::sample::Frame;
    use std::sync::Arc;

    fn stack(wall: f64) -> LabeledStack {
        LabeledStack {
            wall,
            mono: wall,
            pid: 1,
            tid: 1,
            thread: None,
            task: None,
            frames: Arc::from(vec![Frame {
                function: "f".into(),
                file: "a.py".into(),
                line: 1,
            }]),
            weight_ms: 100,
            loop_thread: true,
            blocked: false,
            kind: Some("cpu".into()),
            route: None,
        }
    }

    #[test]
    fn keeps_a_bounded_window_and_serves_the_last_seconds() {
        let mut w = ProfileWindow::new();
        // 500 s of samples at 8 Hz (binary fractions: exact times): the last 300 s are kept.
        for i in 0..4000 {
            w.push(stack(i as f64 * 0.125));
        }
        assert_eq!(w.len(), 2401);
        // The last 10 s before t=500: samples at 490.0 ... 499.875.
        let p = decode(&w.profile(10.0, 500.0).unwrap()).unwrap();
        assert_eq!(p.sample[0].value, vec![80, 8_000_000_000]);
        assert_eq!(p.duration_nanos, 10_000_000_000);
        assert!(to_text(&p).contains("blocked=false kind=cpu"));
    }

    #[test]
    fn default_task_names_lose_their_counter() {
        assert_eq!(task_label("Task-4711"), "Task-N");
        assert_eq!(task_label("fetcher"), "fetcher");
        assert_eq!(task_label("Task-x"), "Task-x");
    }

    #[test]
    fn parses_seconds() {
        assert_eq!(seconds_param(None), Ok(30.0));
        assert_eq!(seconds_param(Some("seconds=5")), Ok(5.0));
        assert_eq!(seconds_param(Some("x=1&seconds=9999")), Ok(RETENTION));
        assert!(seconds_param(Some("seconds=-1")).is_err());
        assert!(seconds_param(Some("seconds=abc")).is_err());
    }
}
