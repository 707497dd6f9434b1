//! The raw recording: a versioned JSON Lines file, one header line, then one [`Sample`] per line,
//! then (when the recording ended normally) one line of sampler stats. `loopspy report` replays
//! it through the same analysis and outputs as a live run; the test fixtures are recordings.

use std::io::{BufRead, Write};

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};

use crate::acquire::sampler::SamplerStats;
use crate::sample::Sample;

/// The version of the format this build writes and reads.
pub const FORMAT_VERSION: u32 = 1;

/// The first line of a recording.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Header {
    /// Format version; its presence marks the file as a loopspy recording.
    pub loopspy_recording: u32,
    pub pid: u32,
    pub command: String,
    pub python_version: String,
    /// The sampling rate asked for, in Hz.
    pub rate: f64,
    /// Wall-clock Unix seconds when sampling started.
    pub start_wall: f64,
    /// Free-form note on how the recording was made (for test fixtures).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

/// The closing line.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Trailer {
    stats: SamplerStats,
}

/// Streams a recording.
pub struct RecordingWriter<W: Write> {
    out: W,
}

impl<W: Write> RecordingWriter<W> {
    pub fn new(mut out: W, header: &Header) -> Result<Self> {
        serde_json::to_writer(&mut out, header)?;
        out.write_all(b"\n")?;
        Ok(RecordingWriter { out })
    }

    pub fn write(&mut self, sample: &Sample) -> Result<()> {
        serde_json::to_writer(&mut self.out, sample)?;
        self.out.write_all(b"\n")?;
        Ok(())
    }

    /// The writer, for its name and error after a failed write.
    pub fn get_mut(&mut self) -> &mut W {
        &mut self.out
    }

    /// The writer, given up (after a failed write).
    pub fn into_inner(self) -> W {
        self.out
    }

    pub fn finish(mut self, stats: &SamplerStats) -> Result<W> {
        self.write_trailer(stats)?;
        Ok(self.out)
    }

    /// The closing stats line, flushed; the writer stays here (for its error, if any).
    pub fn write_trailer(&mut self, stats: &SamplerStats) -> Result<()> {
        serde_json::to_writer(
            &mut self.out,
            &Trailer {
                stats: stats.clone(),
            },
        )?;
        self.out.write_all(b"\n")?;
        self.out.flush()?;
        Ok(())
    }
}

/// Reads a recording: the header now, the samples as an iterator.
pub struct RecordingReader<R: BufRead> {
    pub header: Header,
    lines: std::io::Lines<R>,
    line_no: usize,
    /// The sampler stats, once the trailer line has been read.
    pub stats: Option<SamplerStats>,
    /// Lines that could not be parsed (a recording cut short ends in a partial line).
    pub skipped: usize,
}

impl<R: BufRead> RecordingReader<R> {
    pub fn new(input: R) -> Result<Self> {
        let mut lines = input.lines();
        let first = lines
            .next()
            .context("the file is empty")?
            .context("cannot read the first line")?;
        let header: Header = serde_json::from_str(&first)
            .ok()
            .context("the first line is not a loopspy recording header")?;
        if header.loopspy_recording > FORMAT_VERSION {
            bail!("recording format version {} is newer than this loopspy reads ({FORMAT_VERSION}): upgrade loopspy", header.loopspy_recording);
        }
        Ok(RecordingReader {
            header,
            lines,
            line_no: 1,
            stats: None,
            skipped: 0,
        })
    }
}

impl<R: BufRead> Iterator for RecordingReader<R> {
    type Item = Result<Sample>;

    fn next(&mut self) -> Option<Result<Sample>> {
        loop {
            let line = match self.lines.next()? {
                Ok(l) => l,
                // Bytes that are not UTF-8 (a damaged file): that line is lost, not the rest.
                Err(e) if e.kind() == std::io::ErrorKind::InvalidData => {
                    self.line_no += 1;
                    self.skipped += 1;
                    continue;
                }
                Err(e) => return Some(Err(e.into())),
            };
            self.line_no += 1;
            if line.trim().is_empty() {
                continue;
            }
            if let Ok(sample) = serde_json::from_str::<Sample>(&line) {
                return Some(Ok(sample));
            }
            match serde_json::from_str::<Trailer>(&line) {
                Ok(t) => self.stats = Some(t.stats),
                Err(_) => self.skipped += 1,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sample::{Frame, ThreadSample};

    fn header() -> Header {
        Header {
            loopspy_recording: 1,
            pid: 7,
            command: "python3 app.py".into(),
            python_version: "3.11.7".into(),
            rate: 100.0,
            start_wall: 1000.0,
            note: None,
        }
    }

    #[test]
    fn round_trip_and_cut_short() {
        let sample = Sample {
            probe: false,
            wall: 1000.5,
            mono: 0.5,
            pid: 7,
            threads: vec![ThreadSample {
                gc: false,
                loop_ended: false,
                tid: 7,
                name: Some("MainThread".into()),
                event_loop: None,
                gil: true,
                active: true,
                os: None,
                ready: None,
                task: None,
                coroutine: None,
                timers: None,
                timer_overdue_us: None,
                request: None,
                frames: vec![Frame {
                    function: "f".into(),
                    file: "a.py".into(),
                    line: 3,
                }],
            }],
            events: Vec::new(),
        };
        let mut w = RecordingWriter::new(Vec::new(), &header()).unwrap();
        w.write(&sample).unwrap();
        w.write(&sample).unwrap();
        let mut bytes = w
            .finish(&SamplerStats {
                samples: 2,
                ..Default::default()
            })
            .unwrap();
        let r = RecordingReader::new(&bytes[..]).unwrap();
        assert_eq!(r.header, header());
        let mut r = r;
        let got: Vec<Sample> = r.by_ref().map(|s| s.unwrap()).collect();
        assert_eq!(got, vec![sample.clone(), sample]);
        assert_eq!(r.stats.unwrap().samples, 2);
        // A recording cut in the middle of a line still yields its whole samples.
        bytes.truncate(bytes.len() - 30);
        let mut r = RecordingReader::new(&bytes[..]).unwrap();
        assert_eq!(r.by_ref().count(), 2);
        assert_eq!(r.skipped, 1);
    }

    /// A torn or damaged recording never panics the reader: every line it yields is a whole
    /// sample, and damage costs the damaged lines, not the rest of the file.
    #[test]
    fn corrupt_recordings_never_panic() {
        let mut seed = 0x2545_F491_4F6C_DD1Du64;
        let mut rand = move |n: usize| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            (seed % n.max(1) as u64) as usize
        };
        let mut w = RecordingWriter::new(Vec::new(), &header()).unwrap();
        for i in 0..40 {
            w.write(&Sample {
                probe: i % 3 != 0,
                wall: 1000.0 + i as f64 * 0.001,
                mono: i as f64 * 0.001,
                pid: 7,
                threads: Vec::new(),
                events: Vec::new(),
            })
            .unwrap();
        }
        let clean = w.finish(&SamplerStats::default()).unwrap();
        let header_len = clean.iter().position(|b| *b == b'\n').unwrap() + 1;
        for round in 0..5000 {
            let mut bytes = clean.clone();
            for _ in 0..1 + rand(4) {
                let at = rand(bytes.len() + 1);
                match rand(6) {
                    0 => bytes.truncate(at),
                    1 if at < bytes.len() => bytes[at] = rand(256) as u8,
                    2 => bytes
                        .splice(at..at, [0xff, 0xfe, 0x00, b'{'])
                        .for_each(drop),
                    3 => {
                        let end = (at + rand(200)).min(bytes.len());
                        bytes.drain(at..end);
                    }
                    4 => bytes
                        .splice(at..at, *b"\n{\"mono\":1e999}\n")
                        .for_each(drop),
                    _ => bytes.splice(at..at, *b"\n").for_each(drop),
                }
            }
            let intact_header = bytes.get(..header_len) == clean.get(..header_len);
            let mut r = match RecordingReader::new(&bytes[..]) {
                Ok(r) => r,
                Err(_) => {
                    assert!(!intact_header, "round {round}: a whole header was refused");
                    continue;
                }
            };
            let mut n = 0;
            for item in r.by_ref() {
                let s = item.unwrap_or_else(|e| panic!("round {round}: {e:#}"));
                assert!(s.mono.is_finite() && s.wall.is_finite(), "round {round}");
                n += 1;
            }
            assert!(n <= 40 + 4 * 4, "round {round}: {n} samples");
        }
    }

    #[test]
    fn rejects_other_files() {
        assert!(RecordingReader::new(&b"hello\n"[..]).is_err());
        assert!(RecordingReader::new(&b""[..]).is_err());
    }
}
