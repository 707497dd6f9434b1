//! The state of the top view: per process, per loop and per culprit, updated from samples,
//! the detector's live loop views and finished episodes. No I/O, no clock: time comes from the
//! samples, so a recording replays into the same screens.

use std::collections::{BTreeMap, HashMap, VecDeque};

use crate::acquire::sampler::SamplerStats;
use crate::analysis::detector::{LoopView, ViewState};
use crate::episode::{Episode, Location};

/// How long the busy share of a loop looks back.
pub const BUSY_WINDOW: f64 = 10.0;
/// Episodes counted as recent for the per-loop column.
pub const EPISODE_WINDOW: f64 = 60.0;
/// Seconds of blocked time each loop's sparkline covers.
pub const SPARK_SECONDS: usize = 60;
/// Distinct endpoints remembered per culprit.
const MAX_ENDPOINTS: usize = 64;
const RECENT_KEPT: usize = 50;

/// How the culprit table is sorted; `s` cycles through them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SortKey {
    Total,
    Count,
    Worst,
    Latest,
}

impl SortKey {
    pub fn next(self) -> SortKey {
        match self {
            SortKey::Total => SortKey::Count,
            SortKey::Count => SortKey::Worst,
            SortKey::Worst => SortKey::Latest,
            SortKey::Latest => SortKey::Total,
        }
    }

    pub fn label(self) -> &'static str {
        match self {
            SortKey::Total => "total blocked time",
            SortKey::Count => "count",
            SortKey::Worst => "worst",
            SortKey::Latest => "most recent",
        }
    }
}

/// How the view reaches the user, which decides what its footer says about keys.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ViewKind {
    /// The full-screen view, with keys.
    #[default]
    FullScreen,
    /// Plain-text snapshots (stdout is not a terminal); `reads_q` when stdin is a terminal
    /// from which `q` (then Enter) is read.
    Plain { reads_q: bool },
}

/// One event loop's row.
#[derive(Debug, Clone, PartialEq)]
pub struct LoopRow {
    pub view: LoopView,
    /// Share of the last `BUSY_WINDOW` seconds' samples spent inside callbacks.
    pub busy_share: f64,
    pub episodes_last_minute: usize,
    pub worst_ms: f64,
    /// Blocked milliseconds in each of the last `SPARK_SECONDS` seconds, oldest first: time
    /// inside episodes, and the block in progress.
    pub blocked_per_second: Vec<u64>,
}

/// One culprit: everything that blocked the loop at the same place.
#[derive(Debug, Clone, PartialEq)]
pub struct CulpritRow {
    pub culprit: Location,
    pub why: String,
    pub count: usize,
    pub total_ms: f64,
    pub worst_ms: f64,
    /// Monotonic end time of the latest episode.
    pub latest: f64,
    pub stack: Vec<Location>,
    pub advice: Option<String>,
    /// Blocked ms per endpoint (`GET /orders/{order_id}`) of the requests it blocked.
    pub endpoints: BTreeMap<String, f64>,
}

impl CulpritRow {
    /// The endpoint it blocked longest, with `+N` for the others; `-` for none.
    pub fn endpoint_label(&self) -> String {
        let top = self
            .endpoints
            .iter()
            .max_by(|a, b| a.1.total_cmp(b.1).then(b.0.cmp(a.0)));
        match top {
            None => "-".to_string(),
            Some((e, _)) if self.endpoints.len() == 1 => e.clone(),
            Some((e, _)) => format!("{e} +{}", self.endpoints.len() - 1),
        }
    }
}

#[derive(Debug, Clone, Default)]
struct LoopHistory {
    busy: VecDeque<(f64, bool)>,
    episodes: VecDeque<(f64, f64)>,
    worst_ms: f64,
    /// Whole second (monotonic) → blocked ms in it, from finished episodes.
    blocked: BTreeMap<i64, f64>,
}

/// Adds the part of `[start, end]` (monotonic seconds) in each whole second to `per_second`.
fn spread(per_second: &mut BTreeMap<i64, f64>, start: f64, end: f64) {
    if !(start.is_finite() && end.is_finite()) || end <= start {
        return;
    }
    // Bounded: only the last minute is ever shown.
    let first = (start.floor() as i64).max(end.floor() as i64 - SPARK_SECONDS as i64);
    for s in first..=end.floor() as i64 {
        let lo = start.max(s as f64);
        let hi = end.min(s as f64 + 1.0);
        if hi > lo {
            *per_second.entry(s).or_insert(0.0) += (hi - lo) * 1000.0;
        }
    }
}

/// Everything the view shows.
#[derive(Debug, Clone)]
pub struct TopModel {
    pub pid: u32,
    pub command: String,
    pub python_version: String,
    pub threshold_ms: f64,
    pub stats: SamplerStats,
    /// Monotonic time of the latest sample.
    pub now: f64,
    /// Wall minus monotonic time per process, to place episodes (which carry wall-clock
    /// starts); the same for every process of one live run, not of merged recordings.
    wall_offsets: HashMap<u32, f64>,
    wall_offset: f64,
    pub loops: Vec<LoopRow>,
    history: HashMap<(u32, u32), LoopHistory>,
    culprits: BTreeMap<String, CulpritRow>,
    pub recent: VecDeque<Episode>,
    pub sort: SortKey,
    pub selected: usize,
    pub help: bool,
    /// Set when sampling ended: why (target exited, error).
    pub ended: Option<String>,
    pub view: ViewKind,
}

impl TopModel {
    pub fn new(pid: u32, command: &str, python_version: &str, threshold_ms: f64) -> TopModel {
        TopModel {
            pid,
            command: command.to_string(),
            python_version: python_version.to_string(),
            threshold_ms,
            stats: SamplerStats::default(),
            now: 0.0,
            wall_offset: 0.0,
            wall_offsets: HashMap::new(),
            loops: Vec::new(),
            history: HashMap::new(),
            culprits: BTreeMap::new(),
            recent: VecDeque::new(),
            sort: SortKey::Total,
            selected: 0,
            help: false,
            ended: None,
            view: ViewKind::FullScreen,
        }
    }

    /// A sample arrived: `views` is the detector's picture of every loop after it.
    pub fn on_sample(
        &mut self,
        pid: u32,
        mono: f64,
        wall: f64,
        views: Vec<LoopView>,
        stats: &SamplerStats,
    ) {
        self.now = mono;
        self.wall_offset = wall - mono;
        if self.wall_offsets.len() < 4096 || self.wall_offsets.contains_key(&pid) {
            self.wall_offsets.insert(pid, wall - mono);
        }
        self.stats = stats.clone();
        let now = self.now;
        let threshold = self.threshold_ms / 1000.0;
        self.loops = views
            .into_iter()
            .map(|view| {
                let h = self.history.entry((view.pid, view.tid)).or_default();
                let busy = matches!(view.state, ViewState::Running { .. } | ViewState::Machinery);
                h.busy.push_back((now, busy));
                while h.busy.front().is_some_and(|(t, _)| *t < now - BUSY_WINDOW) {
                    h.busy.pop_front();
                }
                while h
                    .episodes
                    .front()
                    .is_some_and(|(t, _)| *t < now - EPISODE_WINDOW)
                {
                    h.episodes.pop_front();
                }
                let n = h.busy.len().max(1) as f64;
                let last = now.floor() as i64;
                h.blocked = h.blocked.split_off(&(last - SPARK_SECONDS as i64 + 1));
                let mut seconds = h.blocked.clone();
                if let ViewState::Running { secs, .. } = &view.state {
                    if *secs >= threshold {
                        spread(&mut seconds, now - secs, now);
                    }
                }
                let blocked_per_second = (last - SPARK_SECONDS as i64 + 1..=last)
                    .map(|s| {
                        seconds
                            .get(&s)
                            .map_or(0, |ms| ms.round().min(1000.0) as u64)
                    })
                    .collect();
                LoopRow {
                    busy_share: h.busy.iter().filter(|(_, b)| *b).count() as f64 / n,
                    episodes_last_minute: h.episodes.len(),
                    worst_ms: h.worst_ms,
                    blocked_per_second,
                    view,
                }
            })
            .collect();
    }

    pub fn on_episode(&mut self, e: &Episode) {
        let offset = self
            .wall_offsets
            .get(&e.pid)
            .copied()
            .unwrap_or(self.wall_offset);
        let end = e.start - offset + e.duration_ms / 1000.0;
        let h = self.history.entry((e.pid, e.tid)).or_default();
        h.episodes.push_back((end, e.duration_ms));
        h.worst_ms = h.worst_ms.max(e.duration_ms);
        spread(&mut h.blocked, end - e.duration_ms / 1000.0, end);
        let why = match &e.source {
            Some(s) => format!("{}/{s}", e.kind),
            None => e.kind.clone(),
        };
        let key = format!(
            "{}:{}:{}:{why}",
            e.culprit.file, e.culprit.line, e.culprit.function
        );
        let row = self.culprits.entry(key).or_insert_with(|| CulpritRow {
            culprit: e.culprit.clone(),
            why,
            count: 0,
            total_ms: 0.0,
            worst_ms: 0.0,
            latest: end,
            stack: e.stack.clone(),
            advice: e.advice.clone(),
            endpoints: BTreeMap::new(),
        });
        if let Some(endpoint) = e.endpoint() {
            if row.endpoints.len() < MAX_ENDPOINTS || row.endpoints.contains_key(&endpoint) {
                *row.endpoints.entry(endpoint).or_insert(0.0) += e.duration_ms;
            }
        }
        row.count += 1;
        row.total_ms += e.duration_ms;
        row.worst_ms = row.worst_ms.max(e.duration_ms);
        row.latest = row.latest.max(end);
        row.stack.clone_from(&e.stack);
        self.recent.push_front(e.clone());
        self.recent.truncate(RECENT_KEPT);
    }

    pub fn on_end(&mut self, why: &str) {
        self.ended = Some(why.to_string());
    }

    /// The culprits in the current sort order.
    pub fn culprits(&self) -> Vec<&CulpritRow> {
        let mut rows: Vec<&CulpritRow> = self.culprits.values().collect();
        let key = |r: &CulpritRow| match self.sort {
            SortKey::Total => r.total_ms,
            SortKey::Count => r.count as f64,
            SortKey::Worst => r.worst_ms,
            SortKey::Latest => r.latest,
        };
        rows.sort_by(|a, b| {
            key(b)
                .total_cmp(&key(a))
                .then(b.total_ms.total_cmp(&a.total_ms))
        });
        rows
    }

    pub fn select(&mut self, delta: i64) {
        let n = self.culprits.len() as i64;
        if n > 0 {
            self.selected = (self.selected as i64 + delta).clamp(0, n - 1) as usize;
        }
    }

    pub fn cycle_sort(&mut self) {
        self.sort = self.sort.next();
        self.selected = 0;
    }
}
