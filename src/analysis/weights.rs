//! How much of an episode each of its stacks stands for. A stack sample stands for the time
//! around it inside the episode alone: from halfway after the previous stack sample (or the
//! episode's start) to halfway before the next one (or its end). The time since the previous
//! stack sample of the whole recording would let a background sample taken just before a short
//! episode weigh ~100 ms (at 10 Hz) and outvote the samples inside it. The widths are whole
//! milliseconds that add up to the episode's duration, so its flame-graph frame is exactly as
//! wide as it lasted.

use std::collections::HashMap;

use crate::sample::Frame;

/// The stack samples of one run, in time order, consecutive samples of one stack merged.
#[derive(Debug, Default)]
pub struct Timeline {
    /// Distinct stacks with the depth of their callback's part.
    distinct: Vec<(Vec<Frame>, usize)>,
    index: HashMap<Vec<Frame>, usize>,
    /// (first time, last time, stack): a stretch of consecutive samples of one stack.
    stretches: Vec<(f64, f64, usize)>,
}

impl Timeline {
    /// A stack sample at monotonic time `at` (seconds).
    pub fn push(&mut self, at: f64, frames: &[Frame], depth: usize) {
        let i = match self.index.get(frames) {
            Some(i) => *i,
            None => {
                self.distinct.push((frames.to_vec(), depth));
                self.index.insert(frames.to_vec(), self.distinct.len() - 1);
                self.distinct.len() - 1
            }
        };
        match self.stretches.last_mut() {
            Some(last) if last.2 == i && at >= last.1 => last.1 = at,
            _ => self.stretches.push((at, at, i)),
        }
    }

    /// Each distinct stack with its weight in whole milliseconds and its depth, the weights
    /// adding up to the span from `start` to `end` (seconds, rounded to the millisecond).
    /// Stacks that stand for no time are left out; an empty timeline gives nothing.
    pub fn weigh(self, start: f64, end: f64) -> Vec<(Vec<Frame>, (u32, usize))> {
        let n = self.stretches.len();
        if n == 0 {
            return Vec::new();
        }
        let (start, end) = (start.min(end), end.max(start));
        let clamp = |t: f64| t.clamp(start, end);
        let mut ms = vec![0.0f64; self.distinct.len()];
        for (k, &(first, last, i)) in self.stretches.iter().enumerate() {
            let lo = match k {
                0 => start,
                _ => (self.stretches[k - 1].1 + first) / 2.0,
            };
            let hi = match self.stretches.get(k + 1) {
                Some(next) => (last + next.0) / 2.0,
                None => end,
            };
            ms[i] += ((clamp(hi) - clamp(lo)) * 1000.0).max(0.0);
        }
        let total = ((end - start) * 1000.0).round().min(u32::MAX as f64) as u32;
        let weights = apportion(&ms, total);
        self.distinct
            .into_iter()
            .zip(weights)
            .filter(|(_, w)| *w > 0)
            .map(|((frames, depth), w)| (frames, (w, depth)))
            .collect()
    }
}

/// Whole numbers proportional to `shares` that add up to `total` (largest remainders; ties to
/// the earlier share, so the result is deterministic). All-zero shares give it all to the first.
fn apportion(shares: &[f64], total: u32) -> Vec<u32> {
    let sum: f64 = shares.iter().sum();
    if shares.is_empty() {
        return Vec::new();
    }
    if sum <= 0.0 || !sum.is_finite() {
        let mut out = vec![0; shares.len()];
        out[0] = total;
        return out;
    }
    let exact: Vec<f64> = shares.iter().map(|s| s / sum * f64::from(total)).collect();
    let mut out: Vec<u32> = exact.iter().map(|e| e.floor() as u32).collect();
    let given: u32 = out.iter().sum();
    let mut order: Vec<usize> = (0..shares.len()).collect();
    order.sort_by(|&a, &b| {
        let (ra, rb) = (exact[a] - exact[a].floor(), exact[b] - exact[b].floor());
        rb.total_cmp(&ra).then(a.cmp(&b))
    });
    for &i in order.iter().take(total.saturating_sub(given) as usize) {
        out[i] += 1;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stack(name: &str) -> Vec<Frame> {
        vec![Frame {
            function: name.into(),
            file: "/srv/app.py".into(),
            line: 1,
        }]
    }

    #[test]
    fn weights_add_up_to_the_duration() {
        let mut t = Timeline::default();
        // An 89 ms episode: stacks every 10 ms, `a` then `b`.
        for i in 0..9 {
            let name = if i < 3 { "a" } else { "b" };
            t.push(0.005 + 0.010 * i as f64, &stack(name), 1);
        }
        let w = t.weigh(0.0, 0.089);
        let total: u32 = w.iter().map(|(_, (n, _))| n).sum();
        assert_eq!(total, 89);
        let a = w.iter().find(|(f, _)| f == &stack("a")).unwrap().1 .0;
        assert_eq!(a, 30, "0 .. 30 ms: halfway to the first `b` sample");
    }

    /// The bug this pins: a stack sampled long before the episode no longer outweighs it.
    #[test]
    fn time_before_the_episode_does_not_count() {
        let mut t = Timeline::default();
        t.push(0.000, &stack("before"), 1);
        t.push(0.090, &stack("inside"), 1);
        t.push(0.100, &stack("inside"), 1);
        let w = t.weigh(0.085, 0.105);
        let total: u32 = w.iter().map(|(_, (n, _))| n).sum();
        assert_eq!(total, 20);
        assert_eq!(
            w,
            vec![(stack("inside"), (20, 1))],
            "`before` stands for no time inside"
        );
    }

    #[test]
    fn degenerate_spans() {
        assert!(Timeline::default().weigh(0.0, 1.0).is_empty());
        let mut t = Timeline::default();
        t.push(0.5, &stack("a"), 2);
        assert_eq!(t.weigh(0.5, 0.5), vec![]);
        let mut t = Timeline::default();
        t.push(0.5, &stack("a"), 2);
        assert_eq!(
            t.weigh(0.6, 0.4),
            vec![(stack("a"), (200, 2))],
            "reversed span"
        );
        assert_eq!(apportion(&[0.0, 0.0], 5), vec![5, 0]);
        assert_eq!(apportion(&[1.0, 1.0, 1.0], 10), vec![4, 3, 3]);
    }
}
