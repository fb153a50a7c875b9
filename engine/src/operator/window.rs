//! Event-time windows: which windows a record falls in.

/// A view's windowing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Window {
    /// One window for all time (a plain keyed table).
    None,
    /// Fixed, non-overlapping windows of `size_ms`, aligned to the epoch.
    Tumbling { size_ms: i64 },
    /// Windows of `size_ms` starting every `hop_ms` (overlapping when `hop_ms < size_ms`).
    Hopping { size_ms: i64, hop_ms: i64 },
    /// Per key, records closer than `gap_ms` to each other form one session.
    Session { gap_ms: i64 },
}

/// Start of the single window of `Window::None`.
pub const ALL_TIME: i64 = i64::MIN;

impl Window {
    /// Calls `visit(start, end)` for every window (other than sessions) holding event time `ts`.
    pub fn assign(&self, ts: i64, mut visit: impl FnMut(i64, i64)) {
        match *self {
            Window::None => visit(ALL_TIME, i64::MAX),
            Window::Tumbling { size_ms } => {
                let start = ts.div_euclid(size_ms) * size_ms;
                visit(start, start + size_ms);
            }
            Window::Hopping { size_ms, hop_ms } => {
                let last = ts.div_euclid(hop_ms) * hop_ms;
                let mut start = last;
                let mut starts = [0i64; 64];
                let mut n = 0;
                while start > ts - size_ms && n < starts.len() {
                    starts[n] = start;
                    n += 1;
                    start -= hop_ms;
                }
                // Oldest first, so state updates happen in a fixed order.
                for s in starts[..n].iter().rev() {
                    visit(*s, *s + size_ms);
                }
            }
            Window::Session { .. } => unreachable!("sessions are assigned by the view state"),
        }
    }

    pub(crate) fn validate(&self) -> Result<(), &'static str> {
        match *self {
            Window::Tumbling { size_ms } if size_ms <= 0 => {
                Err("tumbling window size must be positive")
            }
            Window::Hopping { size_ms, hop_ms } if size_ms <= 0 || hop_ms <= 0 => {
                Err("hopping window size and hop must be positive")
            }
            Window::Hopping { size_ms, hop_ms } if size_ms / hop_ms > 64 => {
                Err("a hopping window may overlap at most 64 others (size / hop <= 64)")
            }
            Window::Session { gap_ms } if gap_ms <= 0 => Err("session gap must be positive"),
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn windows(w: Window, ts: i64) -> Vec<(i64, i64)> {
        let mut out = Vec::new();
        w.assign(ts, |s, e| out.push((s, e)));
        out
    }

    #[test]
    fn assignment() {
        assert_eq!(windows(Window::Tumbling { size_ms: 10 }, 25), vec![(20, 30)]);
        assert_eq!(windows(Window::Tumbling { size_ms: 10 }, -1), vec![(-10, 0)]);
        assert_eq!(
            windows(Window::Hopping { size_ms: 10, hop_ms: 5 }, 12),
            vec![(5, 15), (10, 20)]
        );
        assert_eq!(
            windows(Window::Hopping { size_ms: 10, hop_ms: 5 }, 10),
            vec![(5, 15), (10, 20)]
        );
        assert_eq!(windows(Window::Hopping { size_ms: 10, hop_ms: 10 }, 10), vec![(10, 20)]);
        assert_eq!(windows(Window::None, 5), vec![(ALL_TIME, i64::MAX)]);
    }
}
