//! Write a file whole or not at all: into a temporary file beside it, renamed into place on
//! commit. Dropped without commit, the temporary file is removed.

use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use anyhow::Result;
use tempfile::NamedTempFile;

use crate::error::UserError;

pub struct AtomicFile {
    path: PathBuf,
    file: BufWriter<NamedTempFile>,
}

fn output_error(path: &Path, e: impl std::fmt::Display) -> anyhow::Error {
    UserError::Output {
        path: path.display().to_string(),
        reason: e.to_string(),
    }
    .into()
}

impl AtomicFile {
    /// Create the temporary file now, so an unwritable path fails before any sampling.
    pub fn create(path: &Path) -> Result<AtomicFile> {
        let dir = match path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d,
            _ => Path::new("."),
        };
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let tmp = tempfile::Builder::new()
            .prefix(&format!(".{name}."))
            .suffix(".tmp")
            .tempfile_in(dir)
            .map_err(|e| output_error(path, e))?;
        Ok(AtomicFile {
            path: path.to_path_buf(),
            file: BufWriter::new(tmp),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Flush and move the file into place.
    pub fn commit(self) -> Result<()> {
        let path = self.path;
        let tmp = self
            .file
            .into_inner()
            .map_err(|e| output_error(&path, e.error()))?;
        // Temporary files are private (0600); the result is an ordinary output file.
        use std::os::unix::fs::PermissionsExt;
        tmp.as_file()
            .set_permissions(std::fs::Permissions::from_mode(0o644))
            .ok();
        tmp.as_file().sync_all().ok();
        tmp.persist(&path)
            .map_err(|e| output_error(&path, e.error))?;
        Ok(())
    }
}

impl Write for AtomicFile {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.file.write(buf)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.file.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn whole_or_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("out.svg");
        let mut f = AtomicFile::create(&path).unwrap();
        f.write_all(b"half").unwrap();
        drop(f);
        assert!(!path.exists());
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
        let mut f = AtomicFile::create(&path).unwrap();
        f.write_all(b"whole").unwrap();
        f.commit().unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "whole");
    }

    #[test]
    fn unwritable_directory_is_a_clear_error() {
        let err = AtomicFile::create(Path::new("/nonexistent-dir/out.svg"))
            .err()
            .unwrap();
        assert!(err
            .to_string()
            .starts_with("cannot write /nonexistent-dir/out.svg"));
    }
}
