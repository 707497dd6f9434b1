//! The blocking-episode record: the contract of `--episodes` (design.md, "Episode JSON").

use serde::{Deserialize, Serialize};

use crate::sample::Frame;

/// The innermost frame of the user's own code to blame, or a frame of a stack.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
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
}

/// One blocking episode: the loop thread stayed inside one callback for at least the threshold.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Episode {
    pub pid: u32,
    pub tid: u32,
    pub thread: Option<String>,
    /// Wall-clock Unix seconds at which the episode began.
    pub start: f64,
    pub duration_ms: f64,
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
}

impl Episode {
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
