//! The episodes log: one JSON object per line (design.md's schema), flushed as each episode ends
//! so `tail -f` and pipes see it at once. Where it goes (a file written in place or whole,
//! stdout, a FIFO) is the [`OutputFile`]'s business.

use std::io::{self, Write};

use crate::episode::Episode;
use crate::output::target::OutputFile;

pub struct EpisodeLog {
    out: OutputFile,
}

impl EpisodeLog {
    pub fn new(out: OutputFile) -> EpisodeLog {
        EpisodeLog { out }
    }

    /// The output's name, for messages.
    pub fn name(&self) -> &str {
        self.out.name()
    }

    /// Write one episode as one line and flush it. After an error the log is done: pass it to
    /// [`OutputFile::abandon`] (through [`into_file`](EpisodeLog::into_file)), which keeps the whole lines only.
    pub fn write(&mut self, episode: &Episode) -> io::Result<()> {
        let mut line = serde_json::to_vec(episode).map_err(io::Error::other)?;
        line.push(b'\n');
        self.out.write_all(&line)?;
        self.out.flush()?;
        self.out.line_done();
        Ok(())
    }

    /// The output itself: to commit it (flush; a whole file moves into place), or to give it
    /// up after a failed write.
    pub fn into_file(self) -> OutputFile {
        self.out
    }
}
