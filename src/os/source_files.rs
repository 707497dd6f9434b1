//! Source lines of the target's Python files, to name C-level calls (`sqlite3`'s `execute`,
//! `socket.recv`, `os.fsync`) that leave no Python frame of their own. For a live target the
//! files are read only inside its own root (`/proc/PID/root`, never the host's file of the same
//! path); `report` reads this machine's files. Either way through [`safe_read`], on a reader
//! thread the caller waits on for at most [`WAIT`]: a file that takes longer (a hung network
//! mount) costs its line, never the sampler's time.
//!
//! A file modified after the process started (after the recording, for `report`) may not hold
//! the code that runs: its lines are not used, and [`SourceFiles::notes`] says which files.
//!
//! [`safe_read`]: crate::os::safe_read

use std::collections::{BTreeSet, HashMap};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::sync::Arc;
use std::time::Duration;

use crate::os::safe_read::{self, Base};

/// One file's lines.
pub type Lines = Arc<Vec<String>>;

/// Files larger than this are not read (they are not hand-written source).
const MAX_FILE: u64 = 4 << 20;
/// How long a live sampler waits for a read before going on without the file. A regular file
/// answers in microseconds once the reader thread runs; the bound is for a read that hangs (a
/// dead network mount), and is paid once: while that read is stuck, no other file is waited
/// for. Generous, so a loaded machine's scheduling delay does not cost a line.
pub const WAIT: Duration = Duration::from_millis(200);
/// How long a replay waits: no sampler to keep on time, but a hung file must not hang it.
const WAIT_REPLAY: Duration = Duration::from_secs(1);
/// Bounds on what is kept: a target can name any number of files.
const MAX_CACHED_FILES: usize = 4096;
const MAX_CACHED_BYTES: usize = 64 << 20;
/// A file modified this long after the process started counts as changed: the start time is
/// known to one clock tick (10 ms).
const START_SLACK: f64 = 0.05;

/// Where files are read and which ones are trusted.
#[derive(Debug, Clone, Copy)]
enum Scope {
    Local,
    Process(u32),
}

/// What the reader thread found for one path.
#[derive(Debug)]
enum Found {
    Lines(Lines),
    /// Modified after `not_after`: not trusted.
    Changed,
    Unreadable,
}

#[derive(Debug)]
struct Reader {
    ask: Sender<String>,
    answers: Receiver<(String, Found)>,
    /// A path asked for and not answered in time; while set, no other is asked.
    waiting: Option<String>,
}

#[derive(Debug)]
pub struct SourceFiles {
    scope: Scope,
    /// Files modified after this time (Unix seconds) are not trusted.
    not_after: Option<f64>,
    /// How long `file` waits for a read.
    wait: Duration,
    cache: HashMap<String, Option<Lines>>,
    cached_bytes: usize,
    /// Files whose lines were not used because they changed.
    changed: BTreeSet<String>,
    reader: Option<Reader>,
}

impl Default for SourceFiles {
    fn default() -> SourceFiles {
        SourceFiles::new(Scope::Local, None)
    }
}

impl SourceFiles {
    fn new(scope: Scope, not_after: Option<f64>) -> SourceFiles {
        SourceFiles {
            scope,
            not_after,
            wait: match scope {
                Scope::Local => WAIT_REPLAY,
                Scope::Process(_) => WAIT,
            },
            cache: HashMap::new(),
            cached_bytes: 0,
            changed: BTreeSet::new(),
            reader: None,
        }
    }

    /// The files of live process `pid`, inside its root; files modified after it started are
    /// not trusted.
    pub fn for_pid(pid: u32) -> SourceFiles {
        let start = crate::os::process::start_time(pid).map(|t| t + START_SLACK);
        SourceFiles::new(Scope::Process(pid), start)
    }

    /// This machine's files, as named (`report`).
    pub fn local() -> SourceFiles {
        SourceFiles::default()
    }

    /// Do not trust files modified after `time` (Unix seconds): for `report`, the start of
    /// the recording.
    pub fn trusting_until(mut self, time: f64) -> SourceFiles {
        self.not_after = Some(time).filter(|t| t.is_finite());
        self
    }

    fn start_reader(&self) -> Reader {
        let (ask, questions) = mpsc::channel::<String>();
        let (tell, answers) = mpsc::channel();
        let (scope, not_after) = (self.scope, self.not_after);
        // Without a thread (the system refuses one), the channel's far end is dropped and
        // every file is unreadable.
        let _ = std::thread::Builder::new()
            .name("loopspy-sources".into())
            .spawn(move || {
                // The target's root is opened once: if the target exits, its files are gone
                // with it, and nothing is read from the host in their place.
                let base = match scope {
                    Scope::Local => Some(Base::Local),
                    Scope::Process(pid) => Base::of_process(pid).ok(),
                };
                for path in questions {
                    let found = match &base {
                        Some(b) => read(b, &path, not_after),
                        None => Found::Unreadable,
                    };
                    if tell.send((path, found)).is_err() {
                        break;
                    }
                }
            });
        Reader {
            ask,
            answers,
            waiting: None,
        }
    }

    fn keep(&mut self, path: String, found: Found) -> Option<Lines> {
        let lines = match found {
            Found::Lines(l) => Some(l),
            Found::Changed => {
                if self.changed.len() < 100 {
                    self.changed.insert(path.clone());
                }
                None
            }
            Found::Unreadable => None,
        };
        let size: usize = lines
            .as_ref()
            .map_or(0, |l| l.iter().map(|s| s.len() + 1).sum());
        if self.cache.len() >= MAX_CACHED_FILES || self.cached_bytes + size > MAX_CACHED_BYTES {
            self.cache.clear();
            self.cached_bytes = 0;
        }
        self.cached_bytes += size;
        self.cache.insert(path, lines.clone());
        lines
    }

    /// The whole file, or None when it cannot be read, is not trusted, or takes longer than
    /// [`WAIT`] to read (1 s for a replay; then a later call may have it).
    pub fn file(&mut self, path: &str) -> Option<Lines> {
        if let Some(hit) = self.cache.get(path) {
            return hit.clone();
        }
        let mut reader = match self.reader.take() {
            Some(r) => r,
            None => self.start_reader(),
        };
        let found = self.ask(&mut reader, path);
        self.reader = Some(reader);
        found
    }

    fn ask(&mut self, reader: &mut Reader, path: &str) -> Option<Lines> {
        // Answers that came after their caller stopped waiting.
        while let Ok((p, found)) = reader.answers.try_recv() {
            if reader.waiting.as_deref() == Some(p.as_str()) {
                reader.waiting = None;
            }
            self.keep(p, found);
        }
        if let Some(hit) = self.cache.get(path) {
            return hit.clone();
        }
        if reader.waiting.is_some() || reader.ask.send(path.to_string()).is_err() {
            return None;
        }
        match reader.answers.recv_timeout(self.wait) {
            Ok((p, found)) => self.keep(p, found),
            Err(RecvTimeoutError::Timeout) => {
                reader.waiting = Some(path.to_string());
                None
            }
            Err(RecvTimeoutError::Disconnected) => None,
        }
    }

    /// Line `line` (1-based) of `path`.
    pub fn line(&mut self, path: &str, line: u32) -> Option<String> {
        let lines = self.file(path)?;
        lines.get((line as usize).checked_sub(1)?).cloned()
    }

    /// One line for the summary when files were not trusted, naming them.
    pub fn notes(&self) -> Vec<String> {
        if self.changed.is_empty() {
            return Vec::new();
        }
        let when = match self.scope {
            Scope::Process(_) => "after the process started",
            Scope::Local => "after the recording started",
        };
        let names: Vec<&str> = self.changed.iter().map(String::as_str).collect();
        vec![format!(
            "{} source file{} changed on disk {when}, so {} lines were not used to name calls made in C (kind and source come from the OS and the stack alone): {}",
            names.len(),
            if names.len() == 1 { "" } else { "s" },
            if names.len() == 1 { "its" } else { "their" },
            names.join(", ")
        )]
    }
}

fn read(base: &Base, path: &str, not_after: Option<f64>) -> Found {
    match safe_read::read(base, path, MAX_FILE) {
        Ok(c) if not_after.is_some_and(|t| c.mtime > t) => Found::Changed,
        Ok(c) => Found::Lines(Arc::new(
            String::from_utf8_lossy(&c.bytes)
                .lines()
                .map(String::from)
                .collect(),
        )),
        Err(_) => Found::Unreadable,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_lines_and_caches_misses() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("a.py");
        std::fs::write(&p, "import sqlite3\nconn.execute(q)\n").unwrap();
        let mut files = SourceFiles::for_pid(std::process::id()).trusting_until(f64::MAX);
        let path = p.to_str().unwrap();
        assert_eq!(files.line(path, 2).as_deref(), Some("conn.execute(q)"));
        assert_eq!(files.line(path, 3), None);
        assert_eq!(files.line(path, 0), None);
        assert_eq!(files.line("/nonexistent/x.py", 1), None);
        assert!(files.notes().is_empty());
    }

    /// Regression: a frame's file that is not a regular file (`python3 /dev/stdin` reads its
    /// script from a pipe) was read, and loopspy blocked on its own stdin.
    #[test]
    fn reads_only_regular_files() {
        let mut files = SourceFiles::for_pid(std::process::id());
        assert_eq!(files.file("/dev/null"), None);
        assert_eq!(files.file("/dev/stdin"), None);
    }

    /// A file written after the process started may not be the code that runs.
    #[test]
    fn files_changed_since_the_start_are_not_trusted() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("new.py");
        std::fs::write(&p, "import psycopg2\ncur.execute(q)\n").unwrap();
        let path = p.to_str().unwrap();
        // Written a minute after this test process started (it may have started just now).
        let later = std::time::SystemTime::now() + Duration::from_secs(60);
        std::fs::File::options()
            .write(true)
            .open(&p)
            .unwrap()
            .set_modified(later)
            .unwrap();
        let mut files = SourceFiles::for_pid(std::process::id());
        assert_eq!(files.line(path, 2), None);
        let notes = files.notes();
        assert!(
            notes[0].contains("1 source file changed on disk after the process started")
                && notes[0].ends_with(path),
            "{notes:?}"
        );
        let mut replay = SourceFiles::local().trusting_until(0.0);
        assert_eq!(replay.line(path, 2), None);
        assert!(replay.notes()[0].contains("after the recording started"));
        let mut old = SourceFiles::local();
        assert_eq!(old.line(path, 2).as_deref(), Some("cur.execute(q)"));
    }
}
