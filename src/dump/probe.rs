//! How long each loop has been inside its current callback, as far as dump can tell without
//! pausing the target: a few milliseconds of the sampler's cheap probe (each loop thread's
//! system call and ready-queue counter, every millisecond). A loop that never polls and never
//! dispatches during the whole probe is inside one callback for at least that long.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use crate::acquire::sampler::SampleSource;
use crate::acquire::spy::Spy;
use crate::sample::{ReadyQueue, ThreadSample};

/// Longest probe; idle loops end it at the first read.
pub const PROBE: Duration = Duration::from_millis(20);
const STEP: Duration = Duration::from_millis(1);

fn polling(t: &ThreadSample) -> bool {
    matches!(
        t.os.as_ref().and_then(|o| o.syscall.as_deref()),
        Some("epoll_wait" | "epoll_pwait" | "epoll_pwait2") | None
    )
}

/// Loop thread tid → milliseconds it was seen inside one callback, for every loop that stayed
/// in one callback for the whole probe.
pub fn blocked_loops(spy: &mut Spy) -> HashMap<u32, f64> {
    let start = Instant::now();
    // tid → the ready queue at the first read, for loops in a callback so far.
    let mut busy: HashMap<u32, Option<ReadyQueue>> = HashMap::new();
    let mut first = true;
    loop {
        let Some(Ok(threads)) = spy.probe() else {
            return HashMap::new();
        };
        for t in &threads {
            let in_callback = !polling(t) && !t.os.as_ref().is_some_and(|o| o.gil_wait);
            if first {
                if in_callback {
                    busy.insert(t.tid, t.ready);
                }
                continue;
            }
            let same = busy.get(&t.tid).is_some_and(|q| match (q, &t.ready) {
                (Some(a), Some(b)) => !a.popped_before(b),
                _ => true,
            });
            if !(in_callback && same) {
                busy.remove(&t.tid);
            }
        }
        busy.retain(|tid, _| threads.iter().any(|t| t.tid == *tid));
        first = false;
        if busy.is_empty() || start.elapsed() >= PROBE {
            break;
        }
        std::thread::sleep(STEP);
    }
    let ms = start.elapsed().as_secs_f64() * 1000.0;
    busy.into_keys().map(|tid| (tid, ms)).collect()
}

/// `CLOCK_MONOTONIC` in seconds: the clock asyncio's `loop.time()` reads (the same for every
/// process outside a time namespace).
pub fn monotonic_now() -> Option<f64> {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    (rc == 0).then(|| ts.tv_sec as f64 + ts.tv_nsec as f64 / 1e9)
}
