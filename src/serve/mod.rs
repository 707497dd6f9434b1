//! The HTTP side of `loopspy monitor` (tiny_http, one thread): `/metrics` (OpenMetrics text,
//! for Prometheus) and `/debug/pprof/profile?seconds=N` (a gzipped pprof profile of the last N
//! seconds, for Parca, or Pyroscope through Grafana Alloy). Requests are served one at a time;
//! each takes a few milliseconds.

pub mod metrics;
pub mod profile;

use std::net::{SocketAddr, TcpListener};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{anyhow, Result};
use tiny_http::{Header, Request, Response, Server};

use metrics::Metrics;
use profile::{seconds_param, ProfileWindow};

/// What the server reads.
#[derive(Clone)]
pub struct Shared {
    pub metrics: Arc<Metrics>,
    pub window: Arc<Mutex<ProfileWindow>>,
}

/// Bind `addr` now, so a busy or forbidden address fails before attaching.
pub fn bind(addr: SocketAddr) -> Result<TcpListener> {
    TcpListener::bind(addr).map_err(|e| {
        anyhow!("cannot listen on {addr}: {e}: pass a free address with --listen (e.g. --listen 127.0.0.1:9465)")
    })
}

/// Serve until `stop` is set (checked every 100 ms).
pub fn run(listener: TcpListener, shared: Shared, stop: &AtomicBool) -> Result<()> {
    let server = Server::from_listener(listener, None)
        .map_err(|e| anyhow!("cannot start the HTTP server: {e}"))?;
    while !stop.load(Ordering::Relaxed) {
        match server.recv_timeout(Duration::from_millis(100)) {
            Ok(Some(request)) => handle(request, &shared),
            Ok(None) => {}
            // A broken connection is that client's problem, not the server's.
            Err(_) => std::thread::sleep(Duration::from_millis(10)),
        }
    }
    Ok(())
}

fn header(name: &str, value: &str) -> Header {
    Header::from_bytes(name.as_bytes(), value.as_bytes()).expect("static header is valid")
}

fn now_wall() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

const INDEX: &str = "loopspy monitor\n\n/metrics                           Prometheus metrics (OpenMetrics text)\n/debug/pprof/profile?seconds=N     gzipped pprof profile of the last N seconds (default 30, at most 300)\n";

fn handle(request: Request, shared: &Shared) {
    let url = request.url().to_string();
    let (path, query) = match url.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (url.as_str(), None),
    };
    let response = match path {
        "/metrics" => Response::from_string(shared.metrics.encode())
            .with_header(header("Content-Type", metrics::CONTENT_TYPE)),
        "/debug/pprof/profile" => match seconds_param(query) {
            Ok(seconds) => {
                let bytes = shared
                    .window
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .profile(seconds, now_wall());
                match bytes {
                    Ok(b) => Response::from_data(b)
                        .with_header(header("Content-Type", "application/octet-stream"))
                        .with_header(header(
                            "Content-Disposition",
                            "attachment; filename=\"profile.pb.gz\"",
                        )),
                    Err(e) => Response::from_string(format!("cannot build the profile: {e:#}\n"))
                        .with_status_code(500),
                }
            }
            Err(msg) => Response::from_string(msg + "\n").with_status_code(400),
        },
        "/" => Response::from_string(INDEX),
        _ => Response::from_string(format!("not found: {path}\n{INDEX}")).with_status_code(404),
    };
    // The client may have gone away; nothing to do about it.
    let _ = request.respond(response);
}
