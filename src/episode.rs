//! The blocking-episode record: the contract of `--episodes` (design.md, "Episode JSON").

use serde::{Deserialize, Serialize};

use crate::sample::{Frame, Request};

/// The innermost frame of the user's own code to blame, or a frame of a stack.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Location {
    pub function: String,
    pub file: String,
    pub line: u32,
}

impl From<&Frame> for Location {
    fn from(f: &Frame) -> Self {
        Location {
            function: f.function.clone(),
            file: f.file.clone(),
            line: f.line,
        }
    }
}

impl From<&Location> for Frame {
    fn from(l: &Location) -> Self {
        Frame {
            function: l.function.clone(),
            file: l.file.clone(),
            line: l.line,
        }
    }
}

/// The thread that held the GIL while the loop thread waited for it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GilHolder {
    pub tid: u32,
    pub thread: Option<String>,
    pub stack: Vec<Location>,
    /// The holder's own frame to blame (absent in older recordings' episodes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub culprit: Option<Location>,
    /// The call or library the holder ran (`base64`, `re`, `gc`, ...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
}

/// One blocking episode: the loop thread stayed inside one callback for at least the threshold.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Episode {
    pub pid: u32,
    pub tid: u32,
    pub thread: Option<String>,
    /// Wall-clock Unix seconds at which the episode began.
    pub start: f64,
    pub duration_ms: f64,
    /// How far `duration_ms` may be from the truth, in ms: each boundary lies between two
    /// samples and is placed in the middle of that gap, so this is half of the two gaps. About
    /// one tick interval normally; larger when the sampler was late. `None` in episodes written
    /// before loopspy reported it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration_error_ms: Option<f64>,
    /// `false` when the callback was already running at the first sample of its thread
    /// (loopspy attached, or found the worker, mid-block): `start` is then only the moment it was
    /// first seen and `duration_ms` the least it lasted.
    #[serde(default = "yes", skip_serializing_if = "is_true")]
    pub start_seen: bool,
    pub samples: u32,
    pub kind: String,
    pub source: Option<String>,
    pub task: Option<String>,
    pub coroutine: Option<String>,
    pub culprit: Location,
    /// Innermost first, the stack seen most often during the episode.
    pub stack: Vec<Location>,
    pub gil_holder: Option<GilHolder>,
    pub advice: Option<String>,
    pub complete: bool,
    /// The database driver under an ORM `source` (`sqlite3`, `psycopg2`, `pymysql`, ...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub driver: Option<String>,
    /// Whether the blocking thread (the GIL holder, for `kind == "gil"`) held the GIL through
    /// the episode (`true`) or released it (`false`); absent when the samples did not settle
    /// it. The advice follows it: work that holds the GIL is not sent to `to_thread`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub holds_gil: Option<bool>,
    /// What the blocking syscalls waited on most: a pipe, a socket (with its peer), a file or a
    /// terminal.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fd: Option<crate::os::fd::FdTarget>,
    /// The loop waited on a connection to one of the process's own listening sockets: a
    /// handler calling its own server synchronously.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub self_call: bool,
    /// The HTTP request the blocked task was serving (`{method, path, route}`), when one was
    /// read; absent from recordings made before it existed.
    #[serde(default)]
    pub request: Option<Request>,
}

fn yes() -> bool {
    true
}

fn is_true(b: &bool) -> bool {
    *b
}

impl Episode {
    /// Whether `duration_ms` is only a lower bound: the start was not seen or the recording
    /// stopped during the episode.
    pub fn duration_is_lower_bound(&self) -> bool {
        !self.start_seen || !self.complete
    }

    /// `GET /orders/{order_id}` for an episode that served a request.
    pub fn endpoint(&self) -> Option<String> {
        self.request.as_ref().map(Request::endpoint)
    }

    /// `function (file:line)` of the culprit, for summaries and flame-graph labels.
    pub fn culprit_label(&self) -> String {
        format!(
            "{} ({}:{})",
            self.culprit.function,
            crate::sample::short_path(&self.culprit.file),
            self.culprit.line
        )
    }
}
