//! The Prometheus metrics of `loopspy monitor` (design.md, "Prometheus metrics"), kept in a
//! `prometheus-client` registry and exposed as OpenMetrics text at `/metrics`.
//!
//! | metric | type | labels |
//! |---|---|---|
//! | loopspy_blocking_duration_seconds | histogram (0.01–60 s) | pid, thread_name, kind, source, route |
//! | loopspy_blocking_episodes_total | counter | pid, thread_name, kind, source, route |
//! | loopspy_eventloop_blocked_seconds | gauge: the block in progress now, 0 when none | pid, thread_name |
//! | loopspy_eventloop_ready_handles | gauge | pid, thread_name |
//! | loopspy_eventloop_scheduled_timers | gauge | pid, thread_name |
//! | loopspy_asyncio_tasks | gauge | pid, thread_name |
//! | loopspy_samples_total | counter | result = ok, error, late |
//!
//! Label values stay bounded: thread names (not tids), kinds, sources, route templates, and
//! `none`/`unnamed` for what is unknown. The series of a loop thread that is gone, or of a
//! process gone for a while, are removed, so worker restarts do not grow memory for ever.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::AtomicU64;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use prometheus_client::encoding::text::encode;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use crate::acquire::sampler::SamplerStats;
use crate::episode::Episode;

/// The histogram's bucket bounds, in seconds.
pub const BUCKETS: [f64; 12] = [
    0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];

/// How long the episode series of a process that is gone are kept (a restarted worker gets a
/// new pid).
const GONE_PROCESS_KEPT: Duration = Duration::from_secs(600);

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct EpisodeLabels {
    pub pid: String,
    pub thread_name: String,
    pub kind: String,
    pub source: String,
    pub route: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, PartialOrd, Ord, EncodeLabelSet)]
pub struct LoopLabels {
    pub pid: String,
    pub thread_name: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabels {
    result: String,
}

type FloatGauge = Gauge<f64, AtomicU64>;

fn histogram() -> Histogram {
    Histogram::new(BUCKETS)
}

/// What one loop thread shows now, for the gauges. `None` leaves a gauge as it was.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LoopNow {
    pub blocked_seconds: f64,
    pub ready_handles: Option<f64>,
    pub scheduled_timers: Option<f64>,
}

/// The metrics and their registry. Shared between the sampling thread (which updates them)
/// and the HTTP thread (which encodes them); every metric is internally synchronised.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    duration: Family<EpisodeLabels, Histogram, fn() -> Histogram>,
    episodes: Family<EpisodeLabels, Counter>,
    blocked: Family<LoopLabels, FloatGauge>,
    ready: Family<LoopLabels, FloatGauge>,
    timers: Family<LoopLabels, FloatGauge>,
    tasks: Family<LoopLabels, FloatGauge>,
    samples: Family<ResultLabels, Counter>,
    /// Bookkeeping for removing series: the loop label sets per pid with a gauge now, episode
    /// label sets per pid, and when each pid was last seen.
    state: Mutex<SeriesState>,
}

#[derive(Debug, Default)]
struct SeriesState {
    loops: HashMap<u32, HashSet<LoopLabels>>,
    episode_sets: HashMap<u32, HashSet<EpisodeLabels>>,
    last_seen: HashMap<u32, Instant>,
    /// Per pid, the thread names given out as labels (at most `MAX_THREAD_NAMES`).
    names: HashMap<u32, HashSet<String>>,
    /// The sampler's counts already added to `loopspy_samples_total`.
    counted: (u64, u64, u64),
}

/// Distinct thread names per process in the labels; later ones are `other`.
const MAX_THREAD_NAMES: usize = 32;

/// A label value for a thread: its Python name with the counters of Python's default names
/// taken out (`Thread-17 (worker)` → `Thread-N (worker)`, `ThreadPoolExecutor-0_3` →
/// `ThreadPoolExecutor-N_N`), or `unnamed`; never a tid. A service that starts a thread per
/// job then still has one series, not one per thread.
pub fn thread_name(name: Option<&str>) -> String {
    let Some(name) = name.filter(|n| !n.is_empty()) else {
        return "unnamed".into();
    };
    for prefix in ["Thread-", "Dummy-", "ThreadPoolExecutor-", "asyncio_"] {
        if let Some(rest) = name.strip_prefix(prefix) {
            let end = rest
                .find(|c: char| !(c.is_ascii_digit() || c == '_'))
                .unwrap_or(rest.len());
            if end > 0 {
                let counters: String = rest[..end]
                    .split('_')
                    .map(|part| if part.is_empty() { "" } else { "N" })
                    .collect::<Vec<_>>()
                    .join("_");
                return format!("{prefix}{counters}{}", &rest[end..]);
            }
        }
    }
    name.to_string()
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = Registry::default();
        let duration: Family<EpisodeLabels, Histogram, fn() -> Histogram> =
            Family::new_with_constructor(histogram);
        let episodes = Family::<EpisodeLabels, Counter>::default();
        let blocked = Family::<LoopLabels, FloatGauge>::default();
        let ready = Family::<LoopLabels, FloatGauge>::default();
        let timers = Family::<LoopLabels, FloatGauge>::default();
        let tasks = Family::<LoopLabels, FloatGauge>::default();
        let samples = Family::<ResultLabels, Counter>::default();
        registry.register(
            "loopspy_blocking_duration_seconds",
            "How long each blocking episode kept an event loop inside one callback",
            duration.clone(),
        );
        registry.register(
            "loopspy_blocking_episodes",
            "Blocking episodes: callbacks that ran at least the threshold",
            episodes.clone(),
        );
        registry.register(
            "loopspy_eventloop_blocked_seconds",
            "How long the event loop has been blocked in the callback running now (0 when none is past the threshold)",
            blocked.clone(),
        );
        registry.register(
            "loopspy_eventloop_ready_handles",
            "Callbacks waiting in the loop's ready queue (stdlib loops)",
            ready.clone(),
        );
        registry.register(
            "loopspy_eventloop_scheduled_timers",
            "Timers scheduled on the loop (stdlib loops)",
            timers.clone(),
        );
        registry.register(
            "loopspy_asyncio_tasks",
            "Pending asyncio tasks of the loop",
            tasks.clone(),
        );
        registry.register(
            "loopspy_samples",
            "Sampler ticks by result: ok, error (a failed read), late (started late)",
            samples.clone(),
        );
        for result in ["ok", "error", "late"] {
            // Each result is shown from the start, at 0.
            drop(samples.get_or_create(&ResultLabels {
                result: result.into(),
            }));
        }
        Metrics {
            registry,
            duration,
            episodes,
            blocked,
            ready,
            timers,
            tasks,
            samples,
            state: Mutex::new(SeriesState::default()),
        }
    }

    /// The label for thread `name` of `pid`: [`thread_name`], or `other` once the process
    /// has had `MAX_THREAD_NAMES` distinct ones.
    fn bounded_name(st: &mut SeriesState, pid: u32, name: Option<&str>) -> String {
        let name = thread_name(name);
        let names = st.names.entry(pid).or_default();
        if names.contains(&name) {
            return name;
        }
        if names.len() >= MAX_THREAD_NAMES {
            return "other".into();
        }
        names.insert(name.clone());
        name
    }

    /// The labels of an episode's series.
    fn episode_labels(st: &mut SeriesState, ep: &Episode) -> EpisodeLabels {
        EpisodeLabels {
            pid: ep.pid.to_string(),
            thread_name: Metrics::bounded_name(st, ep.pid, ep.thread.as_deref()),
            kind: ep.kind.clone(),
            source: ep.source.clone().unwrap_or_else(|| "none".into()),
            route: crate::output::route_of(ep).unwrap_or_else(|| "none".into()),
        }
    }

    pub fn on_episode(&self, ep: &Episode) {
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let labels = Metrics::episode_labels(&mut st, ep);
        self.duration
            .get_or_create(&labels)
            .observe(ep.duration_ms / 1000.0);
        self.episodes.get_or_create(&labels).inc();
        st.episode_sets.entry(ep.pid).or_default().insert(labels);
    }

    /// The sampler's running totals: the counters grow by what is new.
    pub fn on_stats(&self, stats: &SamplerStats) {
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let (ok, error, late) = st.counted;
        for (result, now, before) in [
            ("ok", stats.samples, ok),
            ("error", stats.errors, error),
            ("late", stats.late, late),
        ] {
            if now > before {
                self.samples
                    .get_or_create(&ResultLabels {
                        result: result.into(),
                    })
                    .inc_by(now - before);
            }
        }
        st.counted = (stats.samples, stats.errors, stats.late);
    }

    /// The loop threads of process `pid` as they are now (several threads with one name add
    /// up, the blocked time takes the longest). Series of its loop threads not listed are
    /// removed.
    pub fn set_loops(&self, pid: u32, loops: &[(Option<String>, LoopNow)]) {
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let mut merged: BTreeMap<LoopLabels, LoopNow> = BTreeMap::new();
        for (name, now) in loops {
            let labels = LoopLabels {
                pid: pid.to_string(),
                thread_name: Metrics::bounded_name(&mut st, pid, name.as_deref()),
            };
            let m = merged.entry(labels).or_default();
            m.blocked_seconds = m.blocked_seconds.max(now.blocked_seconds);
            let add = |a: Option<f64>, b: Option<f64>| match (a, b) {
                (None, None) => None,
                (a, b) => Some(a.unwrap_or(0.0) + b.unwrap_or(0.0)),
            };
            m.ready_handles = add(m.ready_handles, now.ready_handles);
            m.scheduled_timers = add(m.scheduled_timers, now.scheduled_timers);
        }
        st.last_seen.insert(pid, Instant::now());
        let current: HashSet<LoopLabels> = merged.keys().cloned().collect();
        let before = st.loops.insert(pid, current.clone()).unwrap_or_default();
        for gone in before.difference(&current) {
            self.remove_loop(gone);
        }
        for (labels, now) in merged {
            self.blocked.get_or_create(&labels).set(now.blocked_seconds);
            if let Some(v) = now.ready_handles {
                self.ready.get_or_create(&labels).set(v);
            }
            if let Some(v) = now.scheduled_timers {
                self.timers.get_or_create(&labels).set(v);
            }
        }
    }

    /// Pending tasks per loop thread of `pid`, from a periodic read of asyncio's task sets.
    pub fn set_tasks(&self, pid: u32, tasks: &[(Option<String>, u64)]) {
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let mut sums: BTreeMap<LoopLabels, f64> = BTreeMap::new();
        for (name, n) in tasks {
            let thread_name = Metrics::bounded_name(&mut st, pid, name.as_deref());
            *sums
                .entry(LoopLabels {
                    pid: pid.to_string(),
                    thread_name,
                })
                .or_default() += *n as f64;
        }
        let known = st.loops.get(&pid);
        for (labels, n) in sums {
            // Only for loops the sampler follows, so a gone loop's gauge is not revived.
            if known.is_some_and(|k| k.contains(&labels)) {
                self.tasks.get_or_create(&labels).set(n);
            }
        }
    }

    /// Drop every series of processes not seen for a while (exited workers).
    pub fn forget_gone(&self, alive: &[u32]) {
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        for pid in alive {
            st.last_seen.insert(*pid, now);
        }
        let gone: Vec<u32> = st
            .last_seen
            .iter()
            .filter(|(_, t)| now.duration_since(**t) > GONE_PROCESS_KEPT)
            .map(|(p, _)| *p)
            .collect();
        for pid in gone {
            st.last_seen.remove(&pid);
            st.names.remove(&pid);
            for l in st.loops.remove(&pid).unwrap_or_default() {
                self.remove_loop(&l);
            }
            for l in st.episode_sets.remove(&pid).unwrap_or_default() {
                self.duration.remove(&l);
                self.episodes.remove(&l);
            }
        }
    }

    fn remove_loop(&self, labels: &LoopLabels) {
        self.blocked.remove(labels);
        self.ready.remove(labels);
        self.timers.remove(labels);
        self.tasks.remove(labels);
    }

    /// The OpenMetrics text exposition of every metric.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = encode(&mut out, &self.registry);
        out
    }
}

/// The media type of [`Metrics::encode`]'s output.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

#[cfg(test)]
mod tests {
    use super::*;
    use crate::episode::Location;

    fn episode(pid: u32, ms: f64) -> Episode {
        let loc = Location {
            function: "handler".into(),
            file: "/app/main.py".into(),
            line: 9,
        };
        Episode {
            pid,
            tid: pid,
            thread: Some("MainThread".into()),
            start: 1000.0,
            duration_ms: ms,
            duration_error_ms: Some(1.0),
            start_seen: true,
            samples: 3,
            kind: "sleep".into(),
            source: Some("time.sleep".into()),
            task: Some("Task-7".into()),
            coroutine: None,
            culprit: loc.clone(),
            stack: vec![loc],
            gil_holder: None,
            advice: None,
            complete: true,
            ..Default::default()
        }
    }

    #[test]
    fn route_label_is_the_route_template_never_the_path() {
        let m = Metrics::new();
        let mut routed = episode(7, 120.0);
        routed.request = Some(crate::sample::Request {
            method: "GET".into(),
            path: "/orders/7".into(),
            route: Some("/orders/{order_id}".into()),
        });
        // A request the router had not matched yet: its path must not become a label value.
        let mut unmatched = episode(7, 120.0);
        unmatched.request = Some(crate::sample::Request {
            method: "GET".into(),
            path: "/orders/8".into(),
            route: None,
        });
        m.on_episode(&routed);
        m.on_episode(&unmatched);
        let text = m.encode();
        let labels = |route: &str| {
            format!(
                r#"pid="7",thread_name="MainThread",kind="sleep",source="time.sleep",route="{route}""#
            )
        };
        for route in ["/orders/{order_id}", "none"] {
            let want = format!("loopspy_blocking_episodes_total{{{}}} 1", labels(route));
            assert!(text.contains(&want), "missing {want} in:\n{text}");
        }
        assert!(
            !text.contains("/orders/7") && !text.contains("/orders/8"),
            "{text}"
        );
    }

    #[test]
    fn exposition_has_the_contract_names_and_labels() {
        let m = Metrics::new();
        m.on_episode(&episode(7, 120.0));
        m.on_episode(&episode(7, 30_000.0));
        m.set_loops(
            7,
            &[(
                Some("MainThread".into()),
                LoopNow {
                    blocked_seconds: 2.5,
                    ready_handles: Some(3.0),
                    scheduled_timers: Some(1.0),
                },
            )],
        );
        m.set_tasks(7, &[(Some("MainThread".into()), 12)]);
        m.on_stats(&SamplerStats {
            samples: 10,
            errors: 1,
            late: 2,
            ..Default::default()
        });
        let text = m.encode();
        let labels =
            r#"pid="7",thread_name="MainThread",kind="sleep",source="time.sleep",route="none""#;
        for want in [
            "# TYPE loopspy_blocking_duration_seconds histogram".to_string(),
            format!("loopspy_blocking_duration_seconds_bucket{{le=\"0.25\",{labels}}} 1"),
            format!("loopspy_blocking_duration_seconds_bucket{{le=\"60.0\",{labels}}} 2"),
            format!("loopspy_blocking_duration_seconds_count{{{labels}}} 2"),
            "# TYPE loopspy_blocking_episodes counter".to_string(),
            format!("loopspy_blocking_episodes_total{{{labels}}} 2"),
            r#"loopspy_eventloop_blocked_seconds{pid="7",thread_name="MainThread"} 2.5"#.into(),
            r#"loopspy_eventloop_ready_handles{pid="7",thread_name="MainThread"} 3.0"#.into(),
            r#"loopspy_eventloop_scheduled_timers{pid="7",thread_name="MainThread"} 1.0"#.into(),
            r#"loopspy_asyncio_tasks{pid="7",thread_name="MainThread"} 12.0"#.into(),
            r#"loopspy_samples_total{result="ok"} 10"#.into(),
            r#"loopspy_samples_total{result="late"} 2"#.into(),
        ] {
            assert!(text.contains(&want), "missing {want} in:\n{text}");
        }
        assert!(!text.contains("Task-7"), "task names are not labels");
        // The loop thread goes away: its gauges go too.
        m.set_loops(7, &[]);
        assert!(!m.encode().contains("loopspy_eventloop_blocked_seconds{"));
    }

    #[test]
    fn thread_names_stay_bounded() {
        assert_eq!(thread_name(Some("Thread-17 (worker)")), "Thread-N (worker)");
        assert_eq!(thread_name(Some("Thread-3")), "Thread-N");
        assert_eq!(
            thread_name(Some("ThreadPoolExecutor-0_12")),
            "ThreadPoolExecutor-N_N"
        );
        assert_eq!(thread_name(Some("MainThread")), "MainThread");
        assert_eq!(thread_name(Some("loop-3")), "loop-3");
        assert_eq!(thread_name(None), "unnamed");
        let m = Metrics::new();
        for i in 0..100 {
            let mut e = episode(7, 60.0);
            e.thread = Some(format!("custom-loop-{i}"));
            m.on_episode(&e);
        }
        let text = m.encode();
        let series = text
            .lines()
            .filter(|l| l.starts_with("loopspy_blocking_episodes_total{"))
            .count();
        assert_eq!(series, MAX_THREAD_NAMES + 1, "{text}");
        assert!(text.contains(r#"thread_name="other""#));
    }
}
