//! Shared helpers for the integration tests: the interpreters to test against, and running a
//! scenario target under `loopspy record` with the READY / GO handshake (no fixed sleeps).

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc;

use serde_json::Value;

pub fn loopspy() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_loopspy"))
}

pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The interpreters the live tests run on, by label: pyenv's CPython 3.8-3.13 (labelled by
/// minor), Debian's own static `/usr/bin/python3` (`3.11-debian`) and Debian unstable's static
/// builds installed by `get-python` (`3.13-debian`, `3.14`, `3.15`; see scripts/deps/00-pythons.sh).
pub const VERSIONS: &[&str] = &[
    "3.8",
    "3.9",
    "3.10",
    "3.11",
    "3.12",
    "3.13",
    "3.11-debian",
    "3.13-debian",
    "3.14",
    "3.15",
];

/// The interpreter of a label, if this machine has it.
fn interpreter(label: &str, pyenv: &Path) -> Option<PathBuf> {
    let debian = std::env::var("LOOPSPY_PYTHONS")
        .map(PathBuf::from)
        .unwrap_or_else(|_| PathBuf::from("/opt/loopspy-pythons"));
    let unstable = |minor: &str| {
        let p = debian.join(minor).join(format!("usr/bin/python{minor}"));
        p.exists().then_some(p)
    };
    match label {
        "3.11-debian" => {
            let p = PathBuf::from("/usr/bin/python3.11");
            p.exists().then_some(p)
        }
        "3.13-debian" => unstable("3.13"),
        "3.14" | "3.15" => unstable(label),
        minor => {
            let mut candidates: Vec<PathBuf> = std::fs::read_dir(pyenv.join("versions"))
                .into_iter()
                .flatten()
                .flatten()
                .map(|e| e.path())
                .filter(|p| {
                    let name = p.file_name().unwrap().to_string_lossy().to_string();
                    name.strip_prefix(&format!("{minor}."))
                        .is_some_and(|rest| rest.chars().all(|c| c.is_ascii_digit()))
                })
                .collect();
            candidates.sort();
            candidates.pop().map(|dir| dir.join("bin/python3"))
        }
    }
}

/// The interpreters present on this machine, one per label of `VERSIONS`. A missing one is
/// reported, not silently dropped. `LOOPSPY_TEST_PYTHONS` (comma-separated labels, e.g.
/// `3.11,3.15`) narrows it.
pub fn pythons() -> Vec<(String, PathBuf)> {
    let wanted: Vec<String> = match std::env::var("LOOPSPY_TEST_PYTHONS") {
        Ok(v) if !v.is_empty() => v.split(',').map(|s| s.trim().to_string()).collect(),
        _ => VERSIONS.iter().map(|s| s.to_string()).collect(),
    };
    let root = std::env::var("PYENV_ROOT")
        .map(PathBuf::from)
        .unwrap_or_else(|_| {
            PathBuf::from(std::env::var("HOME").unwrap_or_else(|_| "/root".into())).join(".pyenv")
        });
    let mut found = Vec::new();
    for label in wanted {
        match interpreter(&label, &root) {
            Some(py) => found.push((label, py)),
            None => eprintln!(
                "SKIPPED: CPython {label} is not installed (pyenv install, or scripts/deps/00-pythons.sh) — live tests skip it"
            ),
        }
    }
    assert!(
        !found.is_empty(),
        "none of the test interpreters is installed (pyenv 3.8-3.13, scripts/deps/00-pythons.sh)"
    );
    found
}

/// A running scenario target that has printed READY.
pub struct Target {
    pub child: Child,
    stdin: Option<ChildStdin>,
    lines: mpsc::Receiver<String>,
    pub ready: Value,
}

pub fn tagged(line: &str, tag: &str) -> Option<Value> {
    line.strip_prefix(tag)
        .and_then(|rest| serde_json::from_str(rest.trim()).ok())
}

impl Target {
    pub fn start<S: AsRef<std::ffi::OsStr>>(python: &Path, script: &Path, args: &[S]) -> Target {
        let mut cmd = Command::new(python);
        cmd.arg(script).args(args);
        Target::start_command(cmd)
    }

    /// Start any command whose output follows the READY protocol.
    pub fn start_command(mut cmd: Command) -> Target {
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("start python");
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let ready = loop {
            let line = rx.recv().expect("target exited before READY");
            if let Some(v) = tagged(&line, "READY") {
                break v;
            }
        };
        let stdin = child.stdin.take();
        Target {
            child,
            stdin,
            lines: rx,
            ready,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Tell the target to run its scenario.
    pub fn go(&mut self) {
        let mut stdin = self.stdin.take().expect("go once");
        stdin.write_all(b"go\n").unwrap();
    }

    /// Wait for the target to exit; return every line it printed after READY.
    pub fn lines(mut self) -> Vec<String> {
        self.child.wait().unwrap();
        self.lines.iter().collect()
    }

    /// Wait for the target to exit; return its BLOCK lines, timed by the loop's own
    /// iterations where it printed them (see [`loop_timed_blocks`]).
    pub fn finish(mut self) -> Vec<Value> {
        self.child.wait().unwrap();
        let lines: Vec<String> = self.lines.iter().collect();
        loop_timed_blocks(&lines)
    }
}

/// `--clock CLOCK` when `LOOPSPY_TEST_CLOCK` is set (`kernel` or `probe`): the live suite runs
/// on either clock by this variable; unset, loopspy chooses (`auto`).
pub fn clock_args() -> Vec<String> {
    match std::env::var("LOOPSPY_TEST_CLOCK") {
        Ok(c) if !c.is_empty() => vec!["--clock".into(), c],
        _ => Vec::new(),
    }
}

/// The BLOCK lines of a target's output, each timed as the loop saw it when the target imports
/// `tests/py/loopgap.py`: the GAP of the block's loop thread (`loop_tid`, else the block's own
/// `tid`; from a selector return to the next selector call) that contains the block's `t0`
/// replaces `ms` (and shifts `start`), and the call's own time is kept as `call_ms`. That gap is
/// what an episode is: the whole callback, with the GIL hand-offs and CPU waits around the
/// blocking call, which the call's own timing misses on a loaded machine. A block run by another
/// thread (a GIL holder) names the loop it stalls in `loop_tid`: its call is not the loop's
/// stall, which ends when the holder first lets the GIL go. Blocks without a matching GAP
/// (uvloop, a thread's loop without one) keep the call's time.
pub fn loop_timed_blocks(lines: &[String]) -> Vec<Value> {
    let gaps: Vec<Value> = lines.iter().filter_map(|l| tagged(l, "GAP")).collect();
    lines
        .iter()
        .filter_map(|l| tagged(l, "BLOCK"))
        .map(|mut block| {
            let t0 = block["t0"].as_f64();
            let tid = match &block["loop_tid"] {
                Value::Null => block["tid"].clone(),
                tid => tid.clone(),
            };
            let gap = t0.and_then(|t0| {
                gaps.iter().find(|g| {
                    g["tid"] == tid
                        && g["start"].as_f64().is_some_and(|s| s <= t0)
                        && g["end"].as_f64().is_some_and(|e| e >= t0)
                })
            });
            if let (Some(t0), Some(gap)) = (t0, gap) {
                let (ms, start) = (gap["ms"].as_f64().unwrap(), gap["start"].as_f64().unwrap());
                block["call_ms"] = block["ms"].clone();
                block["ms"] = ms.into();
                if let Some(wall) = block["start"].as_f64() {
                    block["start"] = (wall + (start - t0)).into();
                }
            }
            block
        })
        .collect()
}

/// What one `loopspy record` run produced.
pub struct Run {
    pub episodes: Vec<Value>,
    pub blocks: Vec<Value>,
    /// Every line the target printed after READY, for failure messages.
    pub output: Vec<String>,
    pub stderr: String,
    pub svg: String,
    pub status: std::process::ExitStatus,
    pub ready: Value,
}

/// Start `script args` with `python`, attach `loopspy record --pid` to it, send GO once loopspy
/// samples, and return when the target has exited and loopspy has written its outputs.
pub fn record_scenario<S: AsRef<std::ffi::OsStr>>(
    python: &Path,
    script: &Path,
    args: &[S],
    extra: &[&str],
) -> Run {
    let dir = tempfile::tempdir().unwrap();
    let svg = dir.path().join("out.svg");
    let episodes = dir.path().join("episodes.jsonl");
    let mut target = Target::start(python, script, args);
    let mut spy = Command::new(loopspy())
        .args(["record", "--pid", &target.pid().to_string(), "-o"])
        .arg(&svg)
        .arg("--episodes")
        .arg(&episodes)
        .args(clock_args())
        .args(extra)
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = spy.stderr.take().unwrap();
    let (tx, rx) = mpsc::channel();
    let reader = std::thread::spawn(move || {
        let mut all = String::new();
        let mut told = false;
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if !told && line.starts_with("loopspy: sampling process") {
                told = true;
                let _ = tx.send(());
            }
            all.push_str(&line);
            all.push('\n');
        }
        all
    });
    // loopspy's own READY: it has attached and is sampling.
    let attached = rx.recv().is_ok();
    if attached {
        target.go();
    } else {
        let _ = target.child.kill();
    }
    let ready = target.ready.clone();
    let output = target.lines();
    let blocks = loop_timed_blocks(&output);
    let status = spy.wait().unwrap();
    let stderr = reader.join().unwrap();
    assert!(attached, "loopspy did not start sampling:\n{stderr}");
    let episodes = std::fs::read_to_string(&episodes)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).expect("episode line is JSON"))
        .collect();
    let svg = std::fs::read_to_string(&svg).unwrap_or_default();
    Run {
        episodes,
        blocks,
        output,
        stderr,
        svg,
        status,
        ready,
    }
}

/// The line number of the `# BLOCK-LINE name` marker in a script.
pub fn marker_line(script: &Path, name: &str) -> u64 {
    let text = std::fs::read_to_string(script).unwrap();
    let marker = format!("# BLOCK-LINE {name}");
    text.lines()
        .position(|l| l.trim_end().ends_with(&marker))
        .expect("marker") as u64
        + 1
}

/// Read loopspy's stderr up to its "sampling process" line (its own READY) and return that line.
pub fn wait_for_sampling(err: &mut impl BufRead) -> String {
    let mut line = String::new();
    while !line.starts_with("loopspy: sampling process") {
        line.clear();
        assert!(
            err.read_line(&mut line).unwrap() > 0,
            "loopspy ended before sampling"
        );
    }
    line
}

/// `loopspy ARGS -- PYTHON tests/py/scenarios.py SCENARIO` with all stdio piped: loopspy
/// launches the scenario, whose stdin (for its "go") is loopspy's.
pub fn launch_scenario(args: &[&str], scenario: &str, dir: &Path) -> Child {
    let (_, py) = pythons().pop().unwrap();
    Command::new(loopspy())
        .current_dir(dir)
        .args(args)
        .args(
            if args.first() == Some(&"record") || args.first() == Some(&"top") {
                clock_args()
            } else {
                Vec::new()
            },
        )
        .arg("--")
        .arg(&py)
        .arg(repo().join("tests/py/scenarios.py"))
        .arg(scenario)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

/// An episode's error bar (`duration_error_ms`), which every episode must carry.
pub fn error_ms(ep: &Value) -> f64 {
    ep["duration_error_ms"]
        .as_f64()
        .unwrap_or_else(|| panic!("no duration_error_ms in {ep}"))
}

/// How far an episode's duration may be from the target's own measurement: its error bar
/// (one tick interval when the sampler kept time, wider when it ran late), never less than one
/// interval, plus `slack_ms` for the target's own timing (it measures its blocking call, not
/// the whole callback, on a machine it shares).
pub fn duration_tolerance(ep: &Value, rate: f64, slack_ms: f64) -> f64 {
    error_ms(ep).max(1000.0 / rate) + slack_ms
}

/// The error bars are honest only if they are small when the sampler keeps time: one tick
/// interval when every tick is on time (half of two one-tick gaps), a little more with the
/// wake-up jitter of a shared machine. The median bar of a run must stay within 1.5 intervals:
/// a late tick widens one bar now and then, and the duration checks may use it, but a bar
/// that is always wide would make them pass for nothing. (At 1 kHz, wake-up jitter alone is
/// a good part of an interval: 1 ms of it is allowed.)
pub fn check_error_bars(label: &str, episodes: &[Value], rate: f64) {
    let interval = 1000.0 / rate;
    let allowed = (1.5 * interval).max(interval + 1.0);
    let mut bars: Vec<f64> = episodes.iter().map(error_ms).collect();
    bars.sort_by(f64::total_cmp);
    if let Some(median) = bars.get(bars.len() / 2) {
        assert!(
            *median <= allowed,
            "{label}: the error bars are wider than a tick interval ({interval} ms) on most episodes: {bars:?}"
        );
    }
}
