//! `loopspy diff BEFORE AFTER`: did the fix work? Two raw recordings (replayed through the
//! same analysis as `report`) or two episodes logs (or one of each) go in; out come, per
//! culprit, the episodes and blocked time before and after with a status (fixed, new, better,
//! worse, same), the blocked time per minute and the episode duration percentiles of each
//! side, and a one-line verdict. `--fail-on-regression` turns a regression into exit code 3.
//!
//! Culprits are matched by function and file, not line: a fix usually moves lines.
//! Rates are per minute of the input's span: a recording's sampled time, or for an episodes
//! log the time from its first episode's start to its last one's end.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufRead, BufReader, Write};
use std::path::Path;

use anyhow::Result;
use serde::Serialize;

use crate::acquire::sampler::SamplerStats;
use crate::analysis::detector::Detector;
use crate::cli::DiffArgs;
use crate::commands::report::replay_with;
use crate::episode::Episode;
use crate::error::UserError;
use crate::os::source_files::SourceFiles;
use crate::pipeline::{Observer, Sinks};
use crate::recording::Header;
use crate::sample::{short_path, Sample};

/// The exit code of a regression under `--fail-on-regression`.
pub const REGRESSION_EXIT: u8 = 3;

/// Blocked time per minute is `better` or `worse` when it changes by more than this factor and
/// by more than `MIN_CHANGE_MS_PER_MIN`; a culprit's change must also reach `MIN_SHARE` of the
/// total blocked time per minute (the larger side's), so a rare culprit seen once before and
/// twice after is not called a regression.
const CHANGE_FACTOR: f64 = 1.25;
const MIN_CHANGE_MS_PER_MIN: f64 = 10.0;
const MIN_SHARE: f64 = 0.05;

/// One input: its episodes and the time it covers.
#[derive(Debug, Clone)]
pub struct Side {
    pub path: String,
    /// `recording` or `episodes`.
    pub kind: &'static str,
    /// Minutes covered.
    pub minutes: f64,
    pub episodes: Vec<Episode>,
}

/// What a replay gave: every episode, and the first and last sample times (monotonic s).
type Collected = (Vec<Episode>, Option<f64>, f64);

/// Collects every episode (no cap) and the sampled span of a replayed recording.
#[derive(Default)]
struct Collect {
    episodes: std::sync::Arc<std::sync::Mutex<Collected>>,
}

impl Observer for Collect {
    fn on_sample(&mut self, sample: &Sample, _detector: &Detector) {
        let mut g = self.episodes.lock().unwrap_or_else(|e| e.into_inner());
        if g.1.is_none() {
            g.1 = Some(sample.mono);
        }
        g.2 = g.2.max(sample.mono);
    }
    fn on_episode(&mut self, episode: &Episode) {
        let mut g = self.episodes.lock().unwrap_or_else(|e| e.into_inner());
        g.0.push(episode.clone());
    }
    fn finish(
        &mut self,
        _header: &Header,
        _stats: &SamplerStats,
        _out: Option<&mut dyn Write>,
    ) -> Result<()> {
        Ok(())
    }
    fn what(&self) -> &'static str {
        "episodes"
    }
}

fn input_error(path: &Path, reason: impl std::fmt::Display) -> anyhow::Error {
    UserError::Recording {
        path: path.display().to_string(),
        reason: format!(
            "{reason}: diff takes recordings (record --format raw) or episodes logs (--episodes)"
        ),
    }
    .into()
}

/// Read one input. `sources`: read culprits' source lines from this machine (recordings only).
pub fn load(path: &Path, threshold_ms: f64, sources: bool) -> Result<Side> {
    let file = File::open(path).map_err(|e| input_error(path, e))?;
    let mut lines = BufReader::new(file).lines();
    let first = loop {
        match lines.next() {
            Some(Ok(l)) if l.trim().is_empty() => continue,
            Some(Ok(l)) => break l,
            Some(Err(e)) => return Err(input_error(path, e)),
            None => return Err(input_error(path, "the file is empty")),
        }
    };
    let value: serde_json::Value = serde_json::from_str(&first)
        .map_err(|_| input_error(path, "the first line is not JSON"))?;
    if value.get("loopspy_recording").is_some() {
        drop(lines);
        let collect = Collect::default();
        let shared = collect.episodes.clone();
        let sinks = Sinks {
            flamegraph: None,
            speedscope: false,
            raw: None,
            episodes: None,
            live_hangs: false,
            by_task: false,
        };
        replay_with(
            path,
            threshold_ms,
            false,
            sinks,
            vec![(Box::new(collect), None)],
            sources.then(SourceFiles::local),
            &mut std::io::sink(),
        )?;
        let (episodes, first, last) =
            std::mem::take(&mut *shared.lock().unwrap_or_else(|e| e.into_inner()));
        return Ok(Side {
            path: path.display().to_string(),
            kind: "recording",
            minutes: (last - first.unwrap_or(last)).max(0.0) / 60.0,
            episodes,
        });
    }
    let mut episodes = Vec::new();
    let parse = |n: usize, line: &str| -> Result<Episode> {
        serde_json::from_str(line)
            .map_err(|e| input_error(path, format!("line {n} is not an episode ({e})")))
    };
    episodes.push(parse(1, &first)?);
    for (i, line) in lines.enumerate() {
        let line = line.map_err(|e| input_error(path, e))?;
        if !line.trim().is_empty() {
            episodes.push(parse(i + 2, &line)?);
        }
    }
    let start = episodes
        .iter()
        .map(|e| e.start)
        .fold(f64::INFINITY, f64::min);
    let end = episodes
        .iter()
        .map(|e| e.start + e.duration_ms / 1000.0)
        .fold(f64::NEG_INFINITY, f64::max);
    Ok(Side {
        path: path.display().to_string(),
        kind: "episodes",
        minutes: (end - start).max(0.0) / 60.0,
        episodes,
    })
}

/// Duration percentiles (nearest rank), in ms.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Default)]
pub struct Percentiles {
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub max: f64,
}

fn percentiles(durations: &[f64]) -> Option<Percentiles> {
    if durations.is_empty() {
        return None;
    }
    let mut d = durations.to_vec();
    d.sort_by(f64::total_cmp);
    let rank = |p: f64| d[((p * d.len() as f64).ceil() as usize).clamp(1, d.len()) - 1];
    Some(Percentiles {
        p50: rank(0.50),
        p90: rank(0.90),
        p99: rank(0.99),
        max: d[d.len() - 1],
    })
}

/// One side's totals.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Totals {
    pub path: String,
    /// `recording` or `episodes`.
    pub input: &'static str,
    pub minutes: f64,
    pub episodes: usize,
    pub blocked_ms: f64,
    pub blocked_ms_per_min: f64,
    pub duration_ms: Option<Percentiles>,
}

/// One culprit on one side.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Default)]
pub struct Count {
    pub episodes: usize,
    pub blocked_ms: f64,
    pub blocked_ms_per_min: f64,
    pub worst_ms: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CulpritDiff {
    /// `function (file:line)`, with the line of the latest side that has it.
    pub culprit: String,
    pub kind: String,
    pub source: Option<String>,
    pub before: Count,
    pub after: Count,
    /// `fixed`, `new`, `better`, `worse` or `same`.
    pub status: &'static str,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Verdict {
    /// `fixed` (no episodes left), `better`, `worse`, `same`, or `none` (no episodes on
    /// either side).
    pub status: &'static str,
    pub regression: bool,
    pub text: String,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Diff {
    pub before: Totals,
    pub after: Totals,
    pub culprits: Vec<CulpritDiff>,
    pub verdict: Verdict,
}

fn per_min(ms: f64, minutes: f64) -> f64 {
    if minutes > 0.0 {
        ms / minutes
    } else {
        ms
    }
}

fn totals(side: &Side) -> Totals {
    let durations: Vec<f64> = side.episodes.iter().map(|e| e.duration_ms).collect();
    let blocked: f64 = durations.iter().sum();
    Totals {
        path: side.path.clone(),
        input: side.kind,
        minutes: side.minutes,
        episodes: durations.len(),
        blocked_ms: blocked,
        blocked_ms_per_min: per_min(blocked, side.minutes),
        duration_ms: percentiles(&durations),
    }
}

/// Compare rates (ms per minute): `better`, `worse` or `same`; `min_change`: the smallest
/// difference that counts.
fn change(before: f64, after: f64, min_change: f64) -> &'static str {
    let min_change = min_change.max(MIN_CHANGE_MS_PER_MIN);
    if after > before * CHANGE_FACTOR && after - before > min_change {
        "worse"
    } else if after * CHANGE_FACTOR < before && before - after > min_change {
        "better"
    } else {
        "same"
    }
}

fn pct(before: f64, after: f64) -> String {
    if before > 0.0 {
        format!(" ({:+.0}%)", 100.0 * (after - before) / before)
    } else {
        String::new()
    }
}

/// The comparison (pure).
pub fn compare(before: &Side, after: &Side) -> Diff {
    // (function, short file) → (label, kind, source, before, after)
    type Entry = (String, String, Option<String>, Count, Count);
    let mut by: BTreeMap<(String, String), Entry> = BTreeMap::new();
    for (side, is_after) in [(before, false), (after, true)] {
        for e in &side.episodes {
            let key = (
                e.culprit.function.clone(),
                short_path(&e.culprit.file).to_string(),
            );
            let entry = by.entry(key).or_insert_with(|| {
                (
                    e.culprit_label(),
                    e.kind.clone(),
                    e.source.clone(),
                    Count::default(),
                    Count::default(),
                )
            });
            if is_after {
                entry.0 = e.culprit_label();
                entry.1.clone_from(&e.kind);
                entry.2.clone_from(&e.source);
            }
            let c = if is_after { &mut entry.4 } else { &mut entry.3 };
            c.episodes += 1;
            c.blocked_ms += e.duration_ms;
            c.worst_ms = c.worst_ms.max(e.duration_ms);
        }
    }
    let (tb, ta) = (totals(before), totals(after));
    let material = MIN_SHARE * tb.blocked_ms_per_min.max(ta.blocked_ms_per_min);
    let mut culprits: Vec<CulpritDiff> = by
        .into_values()
        .map(|(culprit, kind, source, mut b, mut a)| {
            b.blocked_ms_per_min = per_min(b.blocked_ms, before.minutes);
            a.blocked_ms_per_min = per_min(a.blocked_ms, after.minutes);
            let status = match (b.episodes, a.episodes) {
                (0, _) => "new",
                (_, 0) => "fixed",
                _ => change(b.blocked_ms_per_min, a.blocked_ms_per_min, material),
            };
            CulpritDiff {
                culprit,
                kind,
                source,
                before: b,
                after: a,
                status,
            }
        })
        .collect();
    culprits.sort_by(|x, y| {
        let weight = |c: &CulpritDiff| c.before.blocked_ms_per_min.max(c.after.blocked_ms_per_min);
        weight(y)
            .total_cmp(&weight(x))
            .then(x.culprit.cmp(&y.culprit))
    });
    let verdict = verdict(&tb, &ta, &culprits);
    Diff {
        before: tb,
        after: ta,
        culprits,
        verdict,
    }
}

fn verdict(b: &Totals, a: &Totals, culprits: &[CulpritDiff]) -> Verdict {
    let count = |s: &str| culprits.iter().filter(|c| c.status == s).count();
    let (fixed, new, worse, better) = (
        count("fixed"),
        count("new"),
        count("worse"),
        count("better"),
    );
    let overall = change(b.blocked_ms_per_min, a.blocked_ms_per_min, 0.0);
    let regression = new > 0 || worse > 0 || overall == "worse";
    let p99 = |t: &Totals| {
        t.duration_ms
            .map_or("-".to_string(), |p| format!("{:.0} ms", p.p99))
    };
    let rate = format!(
        "blocked {:.0} → {:.0} ms per minute{}, p99 {} → {}",
        b.blocked_ms_per_min,
        a.blocked_ms_per_min,
        pct(b.blocked_ms_per_min, a.blocked_ms_per_min),
        p99(b),
        p99(a)
    );
    let culprit_counts = format!(
        "{fixed} fixed, {better} better, {worse} worse, {new} new culprit{}",
        if new == 1 { "" } else { "s" }
    );
    let (status, text) = if b.episodes == 0 && a.episodes == 0 {
        ("none", "no blocking episodes before or after".to_string())
    } else if regression {
        ("worse", format!("REGRESSION: {rate}; {culprit_counts}"))
    } else if a.episodes == 0 {
        (
            "fixed",
            format!(
                "FIXED: no blocking episodes after (before: {} episodes, {:.0} ms per minute)",
                b.episodes, b.blocked_ms_per_min
            ),
        )
    } else if overall == "better" || fixed + better > 0 {
        ("better", format!("BETTER: {rate}; {culprit_counts}"))
    } else {
        ("same", format!("NO CHANGE: {rate}; {culprit_counts}"))
    };
    Verdict {
        status,
        regression,
        text,
    }
}

fn count_cell(c: &Count) -> String {
    if c.episodes == 0 {
        "-".into()
    } else {
        format!(
            "{}x {:.0} ms ({:.0}/min)",
            c.episodes, c.blocked_ms, c.blocked_ms_per_min
        )
    }
}

/// The text report.
pub fn write_text(d: &Diff, out: &mut dyn Write) -> std::io::Result<()> {
    let side = |t: &Totals| format!("{} ({}, {:.2} min)", t.path, t.input, t.minutes);
    writeln!(
        out,
        "loopspy diff: {} → {}",
        side(&d.before),
        side(&d.after)
    )?;
    writeln!(out)?;
    writeln!(out, "{:<28}{:>16}{:>16}", "", "before", "after")?;
    let row = |out: &mut dyn Write, name: &str, f: &dyn Fn(&Totals) -> String| {
        writeln!(out, "{:<28}{:>16}{:>16}", name, f(&d.before), f(&d.after))
    };
    row(out, "episodes", &|t| t.episodes.to_string())?;
    row(out, "blocked per minute", &|t| {
        format!("{:.0} ms", t.blocked_ms_per_min)
    })?;
    let p = |f: fn(&Percentiles) -> f64| {
        move |t: &Totals| {
            t.duration_ms
                .map_or("-".to_string(), |p| format!("{:.0} ms", f(&p)))
        }
    };
    row(out, "episode duration p50", &p(|p| p.p50))?;
    row(out, "episode duration p90", &p(|p| p.p90))?;
    row(out, "episode duration p99", &p(|p| p.p99))?;
    row(out, "episode duration max", &p(|p| p.max))?;
    if !d.culprits.is_empty() {
        writeln!(out)?;
        let width = d
            .culprits
            .iter()
            .map(|c| c.culprit.chars().count())
            .max()
            .unwrap_or(0)
            .clamp(7, 60);
        writeln!(
            out,
            "{:<width$}  {:>24}  {:>24}  status",
            "culprit", "before", "after"
        )?;
        for c in &d.culprits {
            writeln!(
                out,
                "{:<width$}  {:>24}  {:>24}  {}",
                c.culprit,
                count_cell(&c.before),
                count_cell(&c.after),
                c.status
            )?;
        }
    }
    writeln!(out)?;
    writeln!(out, "verdict: {}", d.verdict.text)?;
    Ok(())
}

/// Returns the process exit code: 0, or `REGRESSION_EXIT` for a regression under
/// `--fail-on-regression`.
pub fn run(args: &DiffArgs) -> Result<u8> {
    let before = load(&args.before, args.threshold, true)?;
    let after = load(&args.after, args.threshold, true)?;
    let d = compare(&before, &after);
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    let written = if args.json {
        serde_json::to_writer_pretty(&mut out, &d)
            .map_err(std::io::Error::from)
            .and_then(|()| writeln!(out))
    } else {
        write_text(&d, &mut out)
    };
    match written.and_then(|()| out.flush()) {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => {}
        other => other?,
    }
    Ok(if args.fail_on_regression && d.verdict.regression {
        REGRESSION_EXIT
    } else {
        0
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::episode::Location;

    fn ep(function: &str, line: u32, start: f64, ms: f64) -> Episode {
        let loc = Location {
            function: function.into(),
            file: "/srv/app/main.py".into(),
            line,
        };
        Episode {
            pid: 1,
            tid: 1,
            thread: None,
            start,
            duration_ms: ms,
            duration_error_ms: Some(1.0),
            start_seen: true,
            samples: 1,
            kind: "sleep".into(),
            source: Some("time.sleep".into()),
            task: None,
            coroutine: None,
            culprit: loc.clone(),
            stack: vec![loc],
            gil_holder: None,
            advice: None,
            complete: true,
            ..Default::default()
        }
    }

    fn side(episodes: Vec<Episode>) -> Side {
        Side {
            path: "x".into(),
            kind: "episodes",
            minutes: 1.0,
            episodes,
        }
    }

    #[test]
    fn statuses_and_verdicts() {
        let before = side(vec![
            ep("a", 10, 0.0, 100.0),
            ep("a", 10, 1.0, 100.0),
            ep("b", 20, 2.0, 500.0),
        ]);
        // a moved a line and got faster; b is gone.
        let after = side(vec![ep("a", 12, 0.0, 60.0)]);
        let d = compare(&before, &after);
        let st: Vec<(&str, &str)> = d
            .culprits
            .iter()
            .map(|c| (c.culprit.as_str(), c.status))
            .collect();
        assert_eq!(
            st,
            [
                ("b (app/main.py:20)", "fixed"),
                ("a (app/main.py:12)", "better")
            ]
        );
        assert_eq!(d.verdict.status, "better");
        assert!(!d.verdict.regression);
        let d = compare(&after, &before);
        assert_eq!(d.verdict.status, "worse");
        assert!(d.verdict.regression);
        assert!(
            d.verdict.text.starts_with("REGRESSION"),
            "{}",
            d.verdict.text
        );
        let d = compare(&before, &side(vec![]));
        assert_eq!(d.verdict.status, "fixed");
    }

    #[test]
    fn nearest_rank_percentiles() {
        let d: Vec<f64> = (1..=100).map(|i| i as f64).collect();
        let p = percentiles(&d).unwrap();
        assert_eq!((p.p50, p.p90, p.p99, p.max), (50.0, 90.0, 99.0, 100.0));
        assert_eq!(percentiles(&[7.0]).unwrap().p99, 7.0);
        assert!(percentiles(&[]).is_none());
    }
}
