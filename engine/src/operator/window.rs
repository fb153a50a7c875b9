//! Event-time windows: which windows a record falls in, and the bounds a definition must respect
//! so that every window bound is an exact `i64` (no overflow, no rounding; docs/semantics.md).

/// A view's windowing. Every window is half-open, `[start, end)`, in event-time milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Window {
    /// One window for all time (a plain keyed table): `[ALL_TIME, i64::MAX)`.
    None,
    /// Fixed, non-overlapping windows `[k * size_ms, (k + 1) * size_ms)`, aligned to the epoch.
    Tumbling { size_ms: i64 },
    /// Windows `[k * hop_ms, k * hop_ms + size_ms)` for every integer `k`: a record is in each one
    /// holding its event time (`ceil(size / hop)` or `floor(size / hop)` of them).
    Hopping { size_ms: i64, hop_ms: i64 },
    /// Per key, the union of `[t, t + gap_ms)` over the key's event times `t`: each connected
    /// piece is one session, `[first t, last t + gap_ms)`. Events exactly `gap_ms` apart are in
    /// different sessions (the intervals touch but do not overlap).
    Session { gap_ms: i64 },
}

/// Start of the single window of `Window::None`.
pub const ALL_TIME: i64 = i64::MIN;

/// The event times a view folds: `[-2^62, 2^62]` ms, about 146 million years either side of the
/// epoch. Records outside are counted (`time_out_of_range`) and skipped: with this bound and
/// `DURATION_MS_MAX`, every window start, end, session end and watermark is an exact `i64`.
pub const EVENT_TIME_MIN: i64 = -(1 << 62);
/// See `EVENT_TIME_MIN`.
pub const EVENT_TIME_MAX: i64 = 1 << 62;
/// The largest window size, hop, session gap or allowed lateness: 2^61 ms.
pub const DURATION_MS_MAX: i64 = 1 << 61;
/// A record updates at most this many hopping windows (`ceil(size / hop)`): each one is a group
/// to update per record, so the bound keeps a record's cost and a view's memory finite.
pub const HOPPING_WINDOWS_PER_RECORD_MAX: i64 = 10_000;

impl Window {
    /// Calls `visit(start, end)` for every window (other than sessions) holding event time `ts`,
    /// oldest first, so state updates happen in a fixed order. No allocation, however many
    /// windows. `ts` must be within `[EVENT_TIME_MIN, EVENT_TIME_MAX]`.
    pub fn assign(&self, ts: i64, mut visit: impl FnMut(i64, i64)) {
        debug_assert!((EVENT_TIME_MIN..=EVENT_TIME_MAX).contains(&ts));
        match *self {
            Window::None => visit(ALL_TIME, i64::MAX),
            Window::Tumbling { size_ms } => {
                let start = ts.div_euclid(size_ms) * size_ms;
                visit(start, start + size_ms);
            }
            Window::Hopping { size_ms, hop_ms } => {
                // Starts are the multiples of `hop_ms` in `(ts - size_ms, ts]`.
                let last = ts.div_euclid(hop_ms) * hop_ms;
                let mut start = ((ts - size_ms).div_euclid(hop_ms) + 1) * hop_ms;
                while start <= last {
                    visit(start, start + size_ms);
                    start += hop_ms;
                }
            }
            Window::Session { .. } => unreachable!("sessions are assigned by the view state"),
        }
    }

    /// The definition's field that is out of bounds, and why.
    pub(crate) fn validate(&self) -> Result<(), (&'static str, String)> {
        let positive = |field: &'static str, v: i64| {
            if v <= 0 || v > DURATION_MS_MAX {
                Err((field, format!("{v} must be in 1..={DURATION_MS_MAX} ms")))
            } else {
                Ok(())
            }
        };
        match *self {
            Window::None => Ok(()),
            Window::Tumbling { size_ms } => positive("window.size_ms", size_ms),
            Window::Hopping { size_ms, hop_ms } => {
                positive("window.size_ms", size_ms)?;
                positive("window.hop_ms", hop_ms)?;
                if hop_ms > size_ms {
                    return Err((
                        "window.hop_ms",
                        format!(
                            "hop {hop_ms} ms exceeds size {size_ms} ms: records between windows \
                             would fall in none"
                        ),
                    ));
                }
                // Rounded up: a record can fall in ceil(size / hop) windows, and every one counts.
                let per_record = (size_ms + hop_ms - 1) / hop_ms;
                if per_record > HOPPING_WINDOWS_PER_RECORD_MAX {
                    return Err((
                        "window.hop_ms",
                        format!(
                            "size {size_ms} / hop {hop_ms} puts a record in up to {per_record} \
                             windows; the limit is {HOPPING_WINDOWS_PER_RECORD_MAX}"
                        ),
                    ));
                }
                Ok(())
            }
            Window::Session { gap_ms } => positive("window.gap_ms", gap_ms),
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
        assert_eq!(windows(Window::Tumbling { size_ms: 10 }, 20), vec![(20, 30)]);
        assert_eq!(
            windows(Window::Hopping { size_ms: 10, hop_ms: 5 }, 12),
            vec![(5, 15), (10, 20)]
        );
        assert_eq!(
            windows(Window::Hopping { size_ms: 10, hop_ms: 5 }, 10),
            vec![(5, 15), (10, 20)]
        );
        assert_eq!(windows(Window::Hopping { size_ms: 10, hop_ms: 10 }, 10), vec![(10, 20)]);
        assert_eq!(
            windows(Window::Hopping { size_ms: 10, hop_ms: 4 }, -1),
            vec![(-8, 2), (-4, 6)],
            "negative times, a hop that does not divide the size"
        );
        assert_eq!(windows(Window::None, 5), vec![(ALL_TIME, i64::MAX)]);
    }

    /// Regression (issue 9): hopping windows were collected into a fixed array of 64 and the rest
    /// dropped, while the definition check rounded size / hop down, so `size 6450, hop 100` (65
    /// windows for some records) was accepted and the oldest window of such records skipped:
    /// 7,862 of 56,775 rows wrong. Now windows are visited without an array, and the check rounds
    /// up against a named limit.
    #[test]
    fn hopping_windows_past_64_are_all_visited() {
        let w = Window::Hopping { size_ms: 6450, hop_ms: 100 };
        assert!(w.validate().is_ok());
        let got = windows(w, 6449);
        assert_eq!(got.len(), 65);
        assert_eq!(got.first(), Some(&(0, 6450)));
        assert_eq!(got.last(), Some(&(6400, 12850)));
        assert_eq!(windows(w, 6450).len(), 64, "(0, 6450) no longer holds 6450");
        // Every window holding ts, and only those, for a spread of times and shapes.
        for (size, hop) in [(6450, 100), (7, 3), (10, 10), (100, 1), (5, 2)] {
            let w = Window::Hopping { size_ms: size, hop_ms: hop };
            for ts in -50..50 {
                let want: Vec<(i64, i64)> = (-200..200)
                    .map(|k| (k * hop, k * hop + size))
                    .filter(|(s, e)| *s <= ts && ts < *e)
                    .collect();
                assert_eq!(windows(w, ts), want, "size {size} hop {hop} ts {ts}");
            }
        }
    }

    #[test]
    fn definitions_out_of_bounds_name_their_field() {
        let field = |w: Window| w.validate().err().map(|(f, _)| f);
        assert_eq!(field(Window::Tumbling { size_ms: 0 }), Some("window.size_ms"));
        assert_eq!(
            field(Window::Tumbling { size_ms: DURATION_MS_MAX + 1 }),
            Some("window.size_ms")
        );
        assert_eq!(field(Window::Hopping { size_ms: 10, hop_ms: 0 }), Some("window.hop_ms"));
        assert_eq!(field(Window::Hopping { size_ms: 10, hop_ms: 11 }), Some("window.hop_ms"));
        let limit = HOPPING_WINDOWS_PER_RECORD_MAX;
        assert_eq!(field(Window::Hopping { size_ms: limit, hop_ms: 1 }), None);
        assert_eq!(
            field(Window::Hopping { size_ms: limit + 1, hop_ms: 1 }),
            Some("window.hop_ms"),
            "one window past the limit"
        );
        assert_eq!(
            field(Window::Hopping { size_ms: 2 * limit + 1, hop_ms: 2 }),
            Some("window.hop_ms"),
            "rounded up, not down"
        );
        assert_eq!(field(Window::Session { gap_ms: -1 }), Some("window.gap_ms"));
        // The extremes of the accepted ranges stay exact.
        let w = Window::Hopping { size_ms: DURATION_MS_MAX, hop_ms: DURATION_MS_MAX };
        assert_eq!(windows(w, EVENT_TIME_MAX).len(), 1);
        assert_eq!(
            windows(w, EVENT_TIME_MIN),
            vec![(EVENT_TIME_MIN, EVENT_TIME_MIN + DURATION_MS_MAX)]
        );
        let t = Window::Tumbling { size_ms: 3 };
        assert_eq!(windows(t, EVENT_TIME_MIN).len(), 1);
    }
}
