//! The short human summary printed on stderr at the end of a recording: what was found, the
//! worst episodes with their culprit, the culprits by total blocked time, and sampling health.

use std::collections::BTreeMap;
use std::io::Write;

use anyhow::Result;

use crate::acquire::sampler::SamplerStats;
use crate::episode::Episode;
use crate::output::escape::escape;

/// Everything the summary reports.
pub struct Summary<'a> {
    pub episodes: &'a EpisodeTally,
    pub stats: &'a SamplerStats,
    /// Event-loop threads seen: `name (tid)` labels.
    pub loops: &'a [String],
    pub threshold_ms: f64,
    /// Files written, in order.
    pub outputs: &'a [String],
    /// Things the reader should know about how the results were made (one line each), e.g.
    /// source files whose text was not trusted.
    pub notes: &'a [String],
}

const WORST_SHOWN: usize = 5;
const CULPRITS_SHOWN: usize = 5;
const ENDPOINTS_SHOWN: usize = 10;
/// Distinct endpoints tallied; later ones (paths without a route can be many) are merged.
const MAX_ENDPOINTS: usize = 1000;
/// The row of episodes that served no (readable) request.
const NO_REQUEST: &str = "(no request)";
const OTHER_ENDPOINTS: &str = "(other endpoints)";

/// One endpoint's episodes: count, total and worst ms, and blocked ms per culprit.
#[derive(Debug, Default)]
struct EndpointTally {
    count: usize,
    total_ms: f64,
    worst_ms: f64,
    culprits: BTreeMap<String, f64>,
}

/// What the summary needs of the episodes, kept as they come: totals, the worst few, and one
/// entry per culprit. Bounded however long the recording runs.
#[derive(Debug, Default)]
pub struct EpisodeTally {
    count: usize,
    total_ms: f64,
    /// Episodes whose duration is only a lower bound (start not seen, or still running).
    lower_bounds: usize,
    /// The largest error bar of any episode, in ms.
    max_error_ms: f64,
    worst: Vec<Episode>,
    /// culprit label → (count, total ms, worst ms, advice).
    by_culprit: BTreeMap<String, (usize, f64, f64, Option<String>)>,
    /// `GET /orders/{order_id}` (the route, else the path) → its episodes.
    by_endpoint: BTreeMap<String, EndpointTally>,
    /// Whether any episode served a request (the endpoint table is shown then).
    any_request: bool,
}

impl EpisodeTally {
    pub fn add(&mut self, e: &Episode) {
        self.count += 1;
        self.total_ms += e.duration_ms;
        self.lower_bounds += usize::from(e.duration_is_lower_bound());
        self.max_error_ms = self.max_error_ms.max(e.duration_error_ms.unwrap_or(0.0));
        // Names and paths come from the target: escaped before they reach a terminal.
        let label = escape(&format!("{}  [{}]", e.culprit_label(), why(e))).into_owned();
        self.any_request |= e.request.is_some();
        let mut endpoint = e
            .endpoint()
            .map_or_else(|| NO_REQUEST.to_string(), |p| escape(&p).into_owned());
        if self.by_endpoint.len() >= MAX_ENDPOINTS && !self.by_endpoint.contains_key(&endpoint) {
            endpoint = OTHER_ENDPOINTS.to_string();
        }
        let ep = self.by_endpoint.entry(endpoint).or_default();
        ep.count += 1;
        ep.total_ms += e.duration_ms;
        ep.worst_ms = ep.worst_ms.max(e.duration_ms);
        if ep.culprits.len() < MAX_ENDPOINTS || ep.culprits.contains_key(&label) {
            *ep.culprits.entry(label.clone()).or_insert(0.0) += e.duration_ms;
        }
        let entry = self
            .by_culprit
            .entry(label)
            .or_insert((0, 0.0, 0.0, e.advice.clone()));
        entry.0 += 1;
        entry.1 += e.duration_ms;
        entry.2 = entry.2.max(e.duration_ms);
        self.worst.push(e.clone());
        self.worst.sort_by(|a, b| {
            b.duration_ms
                .total_cmp(&a.duration_ms)
                .then(a.start.total_cmp(&b.start))
        });
        self.worst.truncate(WORST_SHOWN);
    }

    pub fn count(&self) -> usize {
        self.count
    }
}

pub fn write(out: &mut dyn Write, s: &Summary) -> Result<()> {
    let st = s.stats;
    let error_share = if st.samples + st.errors > 0 {
        100.0 * st.errors as f64 / (st.samples + st.errors) as f64
    } else {
        0.0
    };
    // On the kernel clock ticks run only inside long callbacks: fewer than asked is the design.
    let rate = if st.clock == "kernel" {
        format!(
            "{:.0} Hz; ticks at {:.0} Hz only in callbacks past 5 ms",
            st.achieved_rate(),
            st.rate
        )
    } else {
        format!("{:.0} Hz of {:.0} asked", st.achieved_rate(), st.rate)
    };
    let plural = |n: u64| if n == 1 { "" } else { "s" };
    writeln!(
        out,
        "loopspy: {} samples in {:.1} s ({rate}{}), {} error{} ({:.1}%), {} late tick{} (worst {:.1} ms); ended: {}",
        st.samples,
        st.elapsed,
        if st.stacks > 0 && st.stacks < st.samples { format!("; {} with full stacks", st.stacks) } else { String::new() },
        st.errors,
        plural(st.errors),
        error_share,
        st.late,
        plural(st.late),
        st.max_late_ms,
        escape(&st.end)
    )?;
    match (st.clock.as_str(), &st.clock_note) {
        ("", _) => {}
        ("kernel", note) => writeln!(
            out,
            "loopspy: clock: kernel (perf tracepoints on the loop threads' epoll and futex calls), {} boundaries{}",
            st.events,
            note.as_ref().map(|n| format!("; {n}")).unwrap_or_default()
        )?,
        (clock, Some(note)) => writeln!(out, "loopspy: clock: {clock} ({note})")?,
        (clock, None) => writeln!(out, "loopspy: clock: {clock} (asked with --clock {clock})")?,
    }
    if s.loops.is_empty() {
        writeln!(out, "loopspy: no asyncio event loop was found in the target (is it running one? loops are found while they run)")?;
    } else {
        writeln!(
            out,
            "loopspy: event loops seen on {}",
            escape(&s.loops.join(", "))
        )?;
    }
    let t = s.episodes;
    if t.count == 0 {
        writeln!(
            out,
            "loopspy: no blocking episodes (no callback ran {:.0} ms or more)",
            s.threshold_ms
        )?;
    } else {
        writeln!(
            out,
            "loopspy: {} blocking episode{} (callbacks running {:.0} ms or more), {}{:.0} ms blocked in total",
            t.count,
            if t.count == 1 { "" } else { "s" },
            s.threshold_ms,
            if t.lower_bounds > 0 { "at least " } else { "" },
            t.total_ms
        )?;
        // Normally each episode is timed to one tick interval; a late sampler widens that.
        let tick_ms = if st.rate > 0.0 { 1000.0 / st.rate } else { 0.0 };
        if t.max_error_ms > 2.0 * tick_ms {
            writeln!(
                out,
                "loopspy: the sampler ran late, so some durations are only known to within ±{:.0} ms (duration_error_ms in the episodes log)",
                t.max_error_ms
            )?;
        }
        writeln!(out, "  worst:")?;
        for e in &t.worst {
            writeln!(
                out,
                "    {}  {}  [{}]  on {}{}{}{}",
                duration_label(e, tick_ms),
                escape(&e.culprit_label()),
                escape(&why(e)),
                escape(&crate::sample::thread_label(e.thread.as_deref(), e.tid)),
                match &e.gil_holder {
                    Some(h) => format!(
                        ", GIL held by {}",
                        escape(&crate::sample::thread_label(h.thread.as_deref(), h.tid))
                    ),
                    None => String::new(),
                },
                if e.start_seen {
                    ""
                } else {
                    "  (already running when loopspy first saw its thread)"
                },
                if e.complete {
                    ""
                } else {
                    "  (still running when the recording stopped)"
                }
            )?;
        }
        writeln!(out, "  by culprit:")?;
        let mut by: Vec<_> = t.by_culprit.iter().collect();
        by.sort_by(|a, b| b.1 .1.total_cmp(&a.1 .1).then(a.0.cmp(b.0)));
        for (label, (n, total, worst, advice)) in by.into_iter().take(CULPRITS_SHOWN) {
            writeln!(
                out,
                "    {n:>4}x  total {total:>8.0} ms  worst {worst:>7.0} ms  {label}"
            )?;
            if let Some(a) = advice {
                writeln!(out, "           fix: {}", escape(a))?;
            }
        }
        if t.any_request {
            endpoints(out, t)?;
        }
    }
    for n in s.notes {
        writeln!(out, "loopspy: note: {}", escape(n))?;
    }
    if !s.outputs.is_empty() {
        writeln!(out, "loopspy: wrote {}", escape(&s.outputs.join(", ")))?;
    }
    Ok(())
}

/// `  152.3 ms`; `≥ 1071.0 ms` when only a lower bound is known; `  152.3 ms ±12` when the
/// sampler was late around it.
fn duration_label(e: &Episode, tick_ms: f64) -> String {
    let mut label = if e.duration_is_lower_bound() {
        format!("≥{:>7.1} ms", e.duration_ms)
    } else {
        format!("{:>8.1} ms", e.duration_ms)
    };
    if let Some(err) = e.duration_error_ms.filter(|err| *err > 2.0 * tick_ms) {
        label.push_str(&format!(" ±{err:.0}"));
    }
    label
}

/// The "blocked time by endpoint" table: each endpoint's episodes and the culprit that blocked
/// it longest.
fn endpoints(out: &mut dyn Write, t: &EpisodeTally) -> Result<()> {
    writeln!(out, "  blocked time by endpoint:")?;
    let mut by: Vec<_> = t.by_endpoint.iter().collect();
    by.sort_by(|a, b| b.1.total_ms.total_cmp(&a.1.total_ms).then(a.0.cmp(b.0)));
    for (endpoint, e) in by.iter().take(ENDPOINTS_SHOWN) {
        writeln!(
            out,
            "    {:>4}x  total {:>8.0} ms  worst {:>7.0} ms  {endpoint}",
            e.count, e.total_ms, e.worst_ms
        )?;
        let top = e
            .culprits
            .iter()
            .max_by(|a, b| a.1.total_cmp(b.1).then(b.0.cmp(a.0)));
        if let Some((culprit, ms)) = top {
            writeln!(out, "           top culprit: {culprit}, {ms:.0} ms")?;
        }
    }
    if by.len() > ENDPOINTS_SHOWN {
        writeln!(
            out,
            "           and {} more endpoints",
            by.len() - ENDPOINTS_SHOWN
        )?;
    }
    Ok(())
}

/// `kind, source`: a database call reads as a query (on its driver, under an ORM), a wait on a
/// socket or file names its peer or path, and a call to the process's own server says so.
fn why(e: &Episode) -> String {
    let database = |s: &str| {
        matches!(
            s,
            "sqlalchemy" | "django" | "sqlite3" | "psycopg2" | "psycopg" | "pymysql" | "MySQLdb"
        )
    };
    let mut out = match (&e.source, &e.driver) {
        (Some(src), Some(driver)) => format!("{}, database query: {src} on {driver}", e.kind),
        (Some(src), None) if database(src) => format!("{}, database query: {src}", e.kind),
        (Some(src), None) => format!("{}, {src}", e.kind),
        (None, _) => e.kind.clone(),
    };
    if e.self_call {
        out.push_str(", calling its own server");
    } else if let Some(at) =
        e.fd.as_ref()
            .and_then(|f| f.peer.as_ref().or(f.path.as_ref()))
    {
        out.push_str(&format!(" on {at}"));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn episode(kind: &str, source: Option<&str>, driver: Option<&str>) -> Episode {
        Episode {
            kind: kind.into(),
            source: source.map(String::from),
            driver: driver.map(String::from),
            ..Default::default()
        }
    }

    #[test]
    fn a_query_under_an_orm_reads_as_a_database_query() {
        let e = episode("cpu", Some("sqlalchemy"), Some("sqlite3"));
        assert_eq!(why(&e), "cpu, database query: sqlalchemy on sqlite3");
        let e = episode("network", Some("psycopg2"), None);
        assert_eq!(why(&e), "network, database query: psycopg2");
        assert_eq!(
            why(&episode("sleep", Some("time.sleep"), None)),
            "sleep, time.sleep"
        );
    }

    #[test]
    fn the_peer_or_path_and_a_self_call_are_named() {
        let mut e = episode("network", Some("urllib"), None);
        e.fd = serde_json::from_str(r#"{"fd":5,"type":"socket","peer":"10.0.0.7:443"}"#).ok();
        assert_eq!(why(&e), "network, urllib on 10.0.0.7:443");
        e.self_call = true;
        assert_eq!(why(&e), "network, urllib, calling its own server");
    }
}
