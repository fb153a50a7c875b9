//! How replay rests (the parent module's doc, on the duty and its trials): the pause point of every
//! replay task (`ReplayControl::pace`: the duty cycle's rest, the reactor's turn while a live
//! write waits), and each tick's step of a duty trial (`trial_step`). The trials' state (`Trial`,
//! `Arm`) stays in the parent, where each tick feeds it.

use super::*;

/// Whether a trial's higher duty bought latency: its p99 at least `TRIAL_GAIN` below the lower
/// duty's.
pub(crate) fn pause_helped(p99_lo: u64, p99_hi: u64) -> bool {
    (p99_hi as f64) <= p99_lo as f64 * (1.0 - TRIAL_GAIN)
}

/// The longest single pause: a fold step far longer than a period rests at most this long.
pub(crate) const PAUSE_MAX: Duration = TICK;

/// Whether replay, having run for `ran` since its last pause ended, rests now, and for how long:
/// once it has run its share of a period (`DUTY_PERIOD` less `duty` percent), it rests
/// `ran * duty / (100 - duty)` (up to `PAUSE_MAX`), so `duty` percent of the time goes to rest
/// however long the steps between two `pace` calls are. (A schedule by the phase of a fixed
/// period rested only a task whose call happened to fall in the period's last `duty` percent:
/// a fold whose step took about one period could go whole seconds without a pause.)
pub(crate) fn pause_after(ran: Duration, duty: u32) -> Option<Duration> {
    let duty = duty.min(DUTY_MAX_PERCENT);
    let run = DUTY_PERIOD * (100 - duty) / 100;
    (duty > 0 && ran >= run).then(|| (ran * duty / (100 - duty)).min(PAUSE_MAX))
}

impl ReplayControl {
    /// A replay task's pause point, between steps of its fold: rests (a timer) when the duty
    /// cycle says replay rests now (the CPU goes idle unless live work runs), sleeps for the
    /// reactor's turn while a live write waits on it (`io_turn`), otherwise yields if the live
    /// queue needs the shard. Replay tasks rest together: one that comes by while another
    /// rests sleeps to the same end.
    pub(crate) async fn pace(&self) {
        let duty = self.duty.get();
        let writes = kappa_storage::writes_pending();
        if duty > 0 || writes > 0 {
            let now = now();
            if duty > 0 {
                let until = self.paused_until.get();
                if now < until {
                    glommio::timer::sleep(until - now).await;
                    return;
                }
                if let Some(pause) = pause_after(now - until, duty) {
                    self.count_pause(now, now + pause);
                    glommio::timer::sleep(pause).await;
                    return;
                }
            }
            if let Some(turn) = self.io_turn(now, writes) {
                glommio::timer::sleep(turn).await;
                return;
            }
        }
        glommio::yield_if_needed().await;
    }

    /// Whether replay sleeps now so that glommio's reactor runs (it submits queued disk I/O and
    /// reaps completions only between task queues, when nothing runs or the preempt timer
    /// fired), and for how long: while `writes_pending` live writes wait, at most
    /// `IO_TURN_EVERY` after the last turn ended; a task that comes by during a turn sleeps to
    /// its end, so the turn happens once every replay task is asleep.
    pub(crate) fn io_turn(&self, now: Instant, writes_pending: usize) -> Option<Duration> {
        if writes_pending == 0 || !self.config.io_turns {
            return None;
        }
        let until = self.turn_until.get();
        if now < until {
            return Some(until - now);
        }
        if now - until < IO_TURN_EVERY {
            return None;
        }
        self.turn_until.set(now + IO_TURN);
        self.io_turns.set(self.io_turns.get() + 1);
        Some(IO_TURN)
    }

    /// Counts `[from, until)` as paused, once however many tasks pause together.
    pub(super) fn count_pause(&self, from: Instant, until: Instant) {
        let counted = self.paused_until.get();
        if until > counted {
            let start = from.max(counted);
            self.paused_ns.set(self.paused_ns.get() + (until - start).as_nanos() as u64);
            self.paused_until.set(until);
        }
    }

    /// One tick of duty trials at the floor and over budget, from the settled duty `duty`:
    /// counts the tick into the trial in progress, judges a finished one, starts the next when
    /// its time has come. Returns the settled duty.
    pub(super) fn trial_step(&self, duty: u32, duty_max: u32) -> u32 {
        let mut duty = duty.min(duty_max);
        let ticks = self.ticks.get();
        if let Some(mut trial) = self.trial.get() {
            trial.ticks += 1;
            if trial.ticks < TRIAL_TICKS {
                self.trial.set(Some(trial));
                return duty;
            }
            self.trial.set(None);
            let judged = {
                let arms = self.arms.borrow();
                arms[0].judged().zip(arms[1].judged())
            };
            if let Some((lo, hi)) = judged {
                self.trials.set(self.trials.get() + 1);
                let [duty_lo, duty_hi] = trial.duties;
                if pause_helped(lo, hi) {
                    // The higher duty bought latency: keep it. Still over budget there: look
                    // one step further up at once; else only once a window at it is over.
                    self.trials_helped.set(self.trials_helped.get() + 1);
                    // A climb (the higher duty was new) restarts the back-off; a trial that
                    // only confirmed the settled duty (probing below it, or at the top) does
                    // not, so a settled duty is re-trialled ever less often.
                    let climbed = duty_hi > duty;
                    duty = duty_hi;
                    self.climbing.set(true);
                    if climbed {
                        self.backoff.set(BACKOFF_MIN_TICKS);
                    }
                    if hi <= self.budget_ns {
                        self.trial_after.set(ticks + SLOTS as u64);
                    } else if !climbed || duty_hi >= duty_max {
                        self.back_off(ticks);
                    }
                } else if duty_lo > 0 {
                    // The last step of pause bought nothing: give it back and settle there;
                    // the next look waits (longer each time), so a duty that found where
                    // pausing stops buying latency is not re-trialled every second.
                    duty = duty_lo;
                    self.climbing.set(false);
                    self.back_off(ticks);
                } else {
                    // No pause helps: replay is not what makes the live tail slow. Full rate,
                    // and the next look waits (longer each time).
                    duty = 0;
                    self.climbing.set(true);
                    self.back_off(ticks);
                }
            }
            // An inconclusive trial (too few samples at either duty) changes nothing.
        }
        if ticks >= self.trial_after.get() {
            let duties = if self.climbing.get() || duty == 0 {
                if duty >= duty_max {
                    [duty.saturating_sub(DUTY_UP), duty]
                } else {
                    [duty, (duty + DUTY_UP).min(duty_max)]
                }
            } else {
                [duty.saturating_sub(DUTY_UP), duty]
            };
            let mut arms = self.arms.borrow_mut();
            for arm in arms.iter_mut() {
                arm.0.iter_mut().for_each(|h| h.reset());
            }
            self.trial.set(Some(Trial { duties, ticks: 0 }));
        }
        duty
    }

    /// The next trial waits the current back-off, which doubles up to `BACKOFF_MAX_TICKS`.
    fn back_off(&self, ticks: u64) {
        self.trial_after.set(ticks + self.backoff.get());
        self.backoff.set((self.backoff.get() * 2).min(BACKOFF_MAX_TICKS));
    }
}
