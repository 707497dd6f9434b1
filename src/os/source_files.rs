//! Source lines of the target's Python files, to name C-level calls (`sqlite3`'s `execute`,
//! `socket.recv`, `os.fsync`) that leave no Python frame of their own. Read through
//! `/proc/PID/root` for a live target (it may run in another mount namespace), cached per file.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;

/// One file's lines.
pub type Lines = Arc<Vec<String>>;

#[derive(Debug, Default)]
pub struct SourceFiles {
    /// `/proc/PID/root` of a live target; None to read paths as they are.
    root: Option<PathBuf>,
    cache: HashMap<String, Option<Lines>>,
}

/// Files larger than this are not read (they are not hand-written source).
const MAX_FILE: u64 = 4 << 20;

impl SourceFiles {
    pub fn for_pid(pid: u32) -> SourceFiles {
        SourceFiles {
            root: Some(PathBuf::from(format!("/proc/{pid}/root"))),
            cache: HashMap::new(),
        }
    }

    pub fn local() -> SourceFiles {
        SourceFiles::default()
    }

    /// The whole file, or None when it cannot be read.
    pub fn file(&mut self, path: &str) -> Option<Lines> {
        if let Some(hit) = self.cache.get(path) {
            return hit.clone();
        }
        let read = |p: PathBuf| -> Option<Lines> {
            // Only regular files: a script run as `python3 /dev/stdin` names a pipe or a
            // terminal (through /proc/PID/root, loopspy's own), and reading it would hang.
            let meta = std::fs::metadata(&p).ok()?;
            if !meta.is_file() || meta.len() > MAX_FILE {
                return None;
            }
            let text = std::fs::read_to_string(p).ok()?;
            Some(Arc::new(text.lines().map(String::from).collect()))
        };
        let found = path
            .starts_with('/')
            .then(|| self.root.as_ref().and_then(|r| read(r.join(&path[1..]))))
            .flatten()
            .or_else(|| read(PathBuf::from(path)));
        self.cache.insert(path.to_string(), found.clone());
        found
    }

    /// Line `line` (1-based) of `path`.
    pub fn line(&mut self, path: &str, line: u32) -> Option<String> {
        let lines = self.file(path)?;
        lines.get((line as usize).checked_sub(1)?).cloned()
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
        let mut files = SourceFiles::for_pid(std::process::id());
        let path = p.to_str().unwrap();
        assert_eq!(files.line(path, 2).as_deref(), Some("conn.execute(q)"));
        assert_eq!(files.line(path, 3), None);
        assert_eq!(files.line(path, 0), None);
        assert_eq!(files.line("/nonexistent/x.py", 1), None);
    }

    /// Regression: a frame's file that is not a regular file (`python3 /dev/stdin` reads its
    /// script from a pipe) was read, and loopspy blocked on its own stdin.
    #[test]
    fn reads_only_regular_files() {
        let mut files = SourceFiles::for_pid(std::process::id());
        assert_eq!(files.file("/dev/null"), None);
    }
}
