//! The episodes log: one JSON object per line (design.md's schema), flushed as each episode ends
//! so `tail -f` and pipes see it at once.

use std::fs::File;
use std::io::{BufWriter, Write};

use anyhow::Result;

use crate::episode::Episode;
use crate::output::atomic::AtomicFile;

/// Where the log goes.
pub enum LogTarget {
    Stdout,
    /// A file written as episodes happen (a live recording).
    File(BufWriter<File>),
    /// A file that appears whole at the end (a replayed recording).
    Atomic(AtomicFile),
}

pub struct EpisodeLog {
    out: LogTarget,
}

impl EpisodeLog {
    pub fn new(out: LogTarget) -> EpisodeLog {
        EpisodeLog { out }
    }

    pub fn write(&mut self, episode: &Episode) -> Result<()> {
        match &mut self.out {
            LogTarget::Stdout => {
                let mut out = std::io::stdout().lock();
                write_line(&mut out, episode)?;
                out.flush()?;
            }
            LogTarget::File(f) => {
                write_line(f, episode)?;
                f.flush()?;
            }
            LogTarget::Atomic(f) => write_line(f, episode)?,
        }
        Ok(())
    }

    /// Flush, and move an atomic file into place.
    pub fn finish(self) -> Result<()> {
        match self.out {
            LogTarget::Stdout => std::io::stdout().flush()?,
            LogTarget::File(mut f) => f.flush()?,
            LogTarget::Atomic(f) => f.commit()?,
        }
        Ok(())
    }
}

/// One episode as one JSON line.
pub fn write_line(out: &mut dyn Write, episode: &Episode) -> Result<()> {
    serde_json::to_writer(&mut *out, episode)?;
    out.write_all(b"\n")?;
    Ok(())
}
