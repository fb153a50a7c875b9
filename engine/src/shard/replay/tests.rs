//! The controller's decisions on made-up windows: it halves over budget (append, tail delivery
//! or what clients saw), climbs back under it, never lowers a starving replay, and a lowered
//! concurrency takes effect as tasks finish; the window holds a sample for exactly one second of
//! ticks. At the floor and still over budget the duty cycle rises (replay rests part of every
//! period), falls under budget or below the minimum rate, and drops at once for a replay behind
//! the tail.

use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use super::*;
use crate::shard::client::ClientLatency;

fn config() -> ReplayConfig {
    ReplayConfig {
        concurrency_max: 4,
        read_ahead_max: 16,
        shares_max: 1000,
        min_records_per_s: 1_000,
        duty_max_percent: 90,
        ..ReplayConfig::default()
    }
}

/// A controller with a 5 ms budget and a client window of its own.
fn control5() -> ReplayControl {
    ReplayControl::new(config(), Duration::from_millis(5), Arc::default())
}

/// The same without duty trials: the duty rises on every tick at the floor and over budget.
fn control5_untried() -> ReplayControl {
    ReplayControl::new(
        ReplayConfig { duty_trials: false, ..config() },
        Duration::from_millis(5),
        Arc::default(),
    )
}

fn on_executor(f: impl FnOnce() + Send + 'static) {
    glommio::LocalExecutorBuilder::new(glommio::Placement::Unbound)
        .spawn(move || async move { f() })
        .expect("executor starts")
        .join()
        .expect("test body");
}

/// Fills the current tick's window slot with `n` samples of `us` microseconds.
fn live(control: &ReplayControl, n: usize, us: u64) {
    for _ in 0..n {
        control.record_live(us * 1_000);
    }
}

/// Fills the current tick's tail-delivery window slot with `n` samples of `us` microseconds.
fn tail(control: &ReplayControl, n: usize, us: u64) {
    for _ in 0..n {
        control.record_tail(us * 1_000);
    }
}

/// Drives `n` ticks, each with 100 append samples of `us` microseconds in its window slot and
/// `records` folded by replay (100,000: fast, never starving; 10: below the minimum rate); the
/// metrics after each tick.
fn ticks(control: &ReplayControl, n: usize, us: u64, records: u64) -> Vec<ReplayMetrics> {
    (0..n)
        .map(|_| {
            live(control, 100, us);
            control.folded(records);
            control.tick();
            control.metrics()
        })
        .collect()
}

#[test]
fn the_window_holds_a_sample_for_one_second_of_ticks() {
    let mut window = LiveWindow::new();
    for _ in 0..100 {
        window.record(9_000_000);
    }
    for tick in 0..SLOTS {
        // The slow samples, and one fast sample per tick since.
        let (p99, samples) = window.advance();
        assert_eq!(samples, 100 + tick as u64, "tick {tick}: still inside the second");
        assert!((8_900_000..=9_100_000).contains(&p99), "tick {tick}: {p99}");
        window.record(1_000_000);
    }
    // A second later the slow samples' slot came round and was reset; the fast ones stay.
    let (p99, samples) = window.advance();
    assert_eq!(samples, SLOTS as u64, "the slow samples left the window");
    assert!(p99 <= 1_010_000, "{p99}");
    for _ in 0..SLOTS {
        window.advance();
    }
    assert_eq!(window.advance(), (0, 0), "a second without samples: empty");
}

#[test]
fn a_slow_tail_lowers_the_level_even_when_appends_are_fast() {
    on_executor(|| {
        let control = Rc::new(control5());
        let _active = control.active();
        live(&control, 100, 500);
        tail(&control, 100, 9_000);
        control.folded(100_000);
        control.tick();
        let m = control.metrics();
        assert_eq!(m.level, 0.5, "tail delivery over budget halves: {m:?}");
        assert!(m.append_p99_us <= 510 && m.tail_p99_us >= 8_900, "{m:?}");
        assert_eq!(m.live_p99_us, m.tail_p99_us, "live p99 is the worse of the two");
        assert_eq!((m.append_samples, m.tail_samples, m.live_samples), (100, 100, 200));
        assert_eq!(m.ticks_over_budget, 1);
        // Too few tail samples in the window to judge: they have no say, fast appends do.
        let control = Rc::new(control5());
        let _active = control.active();
        live(&control, 100, 500);
        tail(&control, SAMPLES_MIN as usize - 1, 9_000);
        control.folded(100_000);
        control.tick();
        let m = control.metrics();
        assert_eq!(m.level, 1.0, "{m:?}");
        assert!(m.tail_p99_us >= 8_900, "still reported: {m:?}");
    });
}

#[test]
fn over_budget_halves_under_budget_climbs_back() {
    on_executor(|| {
        let control = Rc::new(control5());
        let active = control.active();
        // A second of p99 at 9 ms, with replay making fast progress (not starving).
        for (tick, m) in ticks(&control, 12, 9_000, 100_000).iter().enumerate() {
            assert!(m.live_p99_us >= 8_900, "tick {tick}: {m:?}");
        }
        let m = control.metrics();
        assert_eq!(m.level, FLOOR, "{m:?}");
        assert_eq!((m.concurrency, m.read_ahead), (1, 1), "{m:?}");
        assert_eq!(m.shares, (1000.0 * FLOOR).round() as usize);
        assert_eq!(m.ticks_over_budget, 12);
        assert!((m.budget_burn() - 1.0).abs() < 1e-9);
        // At the floor from the sixth tick on: a duty trial runs, nothing settled before it ends.
        assert_eq!(m.duty_percent, 0, "{m:?}");
        // Quiet again: the slow samples leave the window after a second, the duty unwinds,
        // then the level climbs.
        ticks(&control, 60, 500, 100_000);
        let m = control.metrics();
        assert_eq!(m.level, 1.0, "{m:?}");
        assert_eq!(m.duty_percent, 0, "{m:?}");
        assert_eq!((m.concurrency, m.read_ahead, m.shares), (4, 16, 1000));
        drop(active);
    });
}

#[test]
fn a_starving_replay_is_not_lowered() {
    on_executor(|| {
        let control = Rc::new(control5());
        let _active = control.active();
        ticks(&control, 12, 9_000, 10); // 100 records/s, below the 1,000 minimum.
        assert_eq!(control.metrics().level, 1.0, "replay below its minimum rate is never cut");
        // Without replay work, the same latencies lower the level (nothing to starve).
        let control = Rc::new(control5());
        assert_eq!(ticks(&control, 1, 9_000, 0)[0].level, 0.5);
    });
}

#[test]
fn a_lowered_concurrency_waits_for_running_tasks() {
    glommio::LocalExecutorBuilder::new(glommio::Placement::Unbound)
        .spawn(|| async {
            let control = Rc::new(control5());
            let slots =
                [control.task_slot().await, control.task_slot().await, control.task_slot().await];
            assert_eq!(control.permits.available(), 1);
            control.set_concurrency(1);
            assert_eq!(control.permits.available(), 0, "the free permit is taken back at once");
            drop(slots);
            assert_eq!(control.permits.available(), 1, "two were kept as their tasks ended");
            assert_eq!(control.metrics().tasks_done, 3);
            control.set_concurrency(3);
            assert_eq!(control.permits.available(), 3);
        })
        .expect("executor starts")
        .join()
        .expect("test body");
}

#[test]
fn a_chase_is_judged_once_a_second_and_promoted_only_at_the_full_level() {
    let mut chase = Chase::new(0, 1_000);
    assert_eq!(chase.look(CHASE_TICKS - 1, 5_000, true), None, "not a second yet");
    assert_eq!(chase.look(CHASE_TICKS, 900, true), Some(ChaseStep::Gaining));
    assert_eq!(chase.look(2 * CHASE_TICKS - 1, 9_000, true), None);
    assert_eq!(chase.look(2 * CHASE_TICKS, 900, false), Some(ChaseStep::Behind), "no gain");
    assert_eq!(chase.look(3 * CHASE_TICKS, 950, true), Some(ChaseStep::Promote));
    assert_eq!(chase.look(4 * CHASE_TICKS, 0, true), Some(ChaseStep::Gaining));
}

#[test]
fn a_replay_behind_the_tail_climbs_even_over_budget() {
    on_executor(|| {
        let control = Rc::new(control5());
        let _active = control.active();
        ticks(&control, 12, 9_000, 100_000);
        assert_eq!(control.metrics().level, FLOOR);
        // Over budget still, but the replay does not gain on the tail: the level climbs for a
        // second after each mark, and stops climbing when the marks stop.
        let mut levels = Vec::new();
        for _ in 0..3 {
            control.mark_behind();
            ticks(&control, CHASE_TICKS as usize, 9_000, 100_000);
            levels.push(control.level());
        }
        assert_eq!(levels, [FLOOR + STEP * CHASE_TICKS as f64, 1.0, 1.0]);
        ticks(&control, 1, 9_000, 100_000);
        assert!(control.level() < levels[2], "over budget and no mark: halved again");
    });
}

/// Drives a replaying controller to the floor with slow appends (fast replay: not starving).
fn to_the_floor(control: &ReplayControl) {
    ticks(control, 6, 9_000, 100_000);
    assert_eq!(control.metrics().level, FLOOR);
    assert_eq!(control.metrics().duty_percent, 0, "the duty starts only at the floor");
}

/// Drives a replaying controller to the floor, then on over budget to its duty's maximum (90).
fn to_the_full_duty(control: &ReplayControl) {
    to_the_floor(control);
    ticks(control, 9, 9_000, 100_000);
    assert_eq!(control.metrics().duty_percent, 90);
}

#[test]
fn at_the_floor_and_over_budget_the_duty_rises_and_falls_back_under_budget() {
    on_executor(|| {
        let control = Rc::new(control5_untried());
        let _active = control.active();
        to_the_floor(&control);
        let duties: Vec<_> =
            ticks(&control, 12, 9_000, 100_000).iter().map(|m| m.duty_percent).collect();
        assert_eq!(duties, [10, 20, 30, 40, 50, 60, 70, 80, 90, 90, 90, 90], "capped at the max");
        assert_eq!(control.metrics().level, FLOOR, "the level stays at the floor meanwhile");
        // Under budget (once the slow second has left the window): the duty falls by
        // `DUTY_DOWN` a tick, and only then does the level climb.
        let under = ticks(&control, 30, 500, 100_000);
        let duties: Vec<_> = under.iter().map(|m| m.duty_percent).collect();
        let levels: Vec<_> = under.iter().map(|m| m.level).collect();
        let falling = duties.iter().skip_while(|d| **d == 90).copied().collect::<Vec<_>>();
        assert_eq!(falling[..3], [85, 80, 75], "{duties:?}");
        let zero_at = duties.iter().position(|d| *d == 0).expect("the duty went");
        assert!(levels[..zero_at].iter().all(|l| *l == FLOOR), "{levels:?}");
        assert!(levels[zero_at + 1] > FLOOR, "then the level climbs: {levels:?}");
        // Without replay work there is nothing to pace.
        let idle = Rc::new(control5());
        ticks(&idle, 12, 9_000, 0);
        assert_eq!((idle.metrics().level, idle.metrics().duty_percent), (FLOOR, 0));
    });
}

#[test]
fn a_duty_of_zero_percent_max_turns_the_cycle_off() {
    on_executor(|| {
        let control = Rc::new(ReplayControl::new(
            ReplayConfig { duty_max_percent: 0, ..config() },
            Duration::from_millis(5),
            Arc::default(),
        ));
        let _active = control.active();
        to_the_floor(&control);
        ticks(&control, 5, 9_000, 100_000);
        assert_eq!(control.metrics().duty_percent, 0);
    });
}

#[test]
fn the_duty_falls_while_replay_is_below_its_minimum_rate() {
    on_executor(|| {
        let control = Rc::new(control5_untried());
        let _active = control.active();
        to_the_full_duty(&control);
        // Still over budget, but replay slows below its minimum (1,000 records/s): once the
        // fast second has left the rate's window the duty falls, then the level climbs.
        let duties: Vec<_> =
            ticks(&control, 40, 9_000, 10).iter().map(|m| m.duty_percent).collect();
        assert!(duties.windows(2).all(|w| w[1] <= w[0]), "never raised: {duties:?}");
        assert_eq!(duties.last(), Some(&0), "{duties:?}");
        assert!(control.level() > FLOOR, "then the level climbs");
    });
}

#[test]
fn a_replay_behind_the_tail_drops_the_duty_at_once() {
    on_executor(|| {
        let control = Rc::new(control5_untried());
        let _active = control.active();
        to_the_full_duty(&control);
        control.mark_behind();
        let m = ticks(&control, 1, 9_000, 100_000)[0];
        assert_eq!((m.duty_percent, m.level), (0, FLOOR + STEP), "{m:?}");
    });
}

#[test]
fn what_clients_saw_lowers_the_level_when_the_shard_side_is_fast() {
    on_executor(|| {
        let client = Arc::new(ClientLatency::default());
        let control =
            Rc::new(ReplayControl::new(config(), Duration::from_millis(5), client.clone()));
        let _active = control.active();
        // The shard acknowledged in 0.5 ms; the callers had their acks 20 ms after sending.
        live(&control, 100, 500);
        for _ in 0..100 {
            client.ack.record(Duration::from_millis(20));
        }
        control.folded(100_000);
        control.tick();
        let m = control.metrics();
        assert_eq!(m.level, 0.5, "{m:?}");
        assert!(m.client_p99_us >= 20_000 && m.append_p99_us <= 510, "{m:?}");
        assert_eq!(m.client_samples, 100);
        assert_eq!(m.live_p99_us, m.client_p99_us);
        // Drained: the next tick's window holds the same samples (one second), not twice.
        control.tick();
        assert_eq!(control.metrics().client_samples, 100);
    });
}

#[test]
fn replay_rests_duty_percent_of_the_time_whatever_its_steps() {
    let ms = Duration::from_millis;
    assert_eq!(pause_after(ms(0), 0), None);
    assert_eq!(pause_after(ms(9), 0), None, "no duty: never");
    assert_eq!(pause_after(ms(4), 50), None, "half a period not run yet");
    assert_eq!(pause_after(ms(5), 50), Some(ms(5)));
    assert_eq!(pause_after(Duration::from_micros(999), 90), None);
    assert_eq!(pause_after(ms(1), 90), Some(ms(9)));
    // A step of a whole period (or more) still rests its share, not only one whose call
    // happened to fall in the period's last part.
    assert_eq!(pause_after(ms(10), 10), Some(Duration::from_nanos(1_111_111)));
    assert_eq!(pause_after(ms(10), 50), Some(ms(10)));
    assert_eq!(pause_after(ms(50), 90), Some(PAUSE_MAX), "one pause is at most a tick");
    assert_eq!(pause_after(ms(1), 100), pause_after(ms(1), DUTY_MAX_PERCENT), "capped");
}

#[test]
fn pace_sleeps_on_a_timer_and_counts_overlapping_pauses_once() {
    glommio::LocalExecutorBuilder::new(glommio::Placement::Unbound)
        .spawn(|| async {
            let control = Rc::new(control5());
            control.pace().await;
            assert_eq!(control.paused_ns.get(), 0, "no duty: no pause");
            // A full duty rests the whole rest of the period, on a timer: the task is away for
            // at least the pause it counted (a timer never fires early).
            control.duty.set(100);
            glommio::timer::sleep(DUTY_PERIOD).await; // It ran (at least) a period.
            #[allow(clippy::disallowed_methods)] // How long the task slept, nothing decided.
            let before = std::time::Instant::now();
            control.pace().await;
            let paused = control.paused_ns.get();
            assert!(paused > 0 && paused <= PAUSE_MAX.as_nanos() as u64, "{paused}");
            assert!(before.elapsed() >= Duration::from_nanos(paused), "slept {paused} ns");
            // Tasks pausing together: the time is counted once.
            let control = control5();
            let t0 = control.paused_until.get();
            let ms = Duration::from_millis;
            control.count_pause(t0, t0 + ms(9));
            control.count_pause(t0 + ms(2), t0 + ms(9));
            control.count_pause(t0 + ms(5), t0 + ms(12));
            assert_eq!(control.paused_ns.get(), ms(12).as_nanos() as u64);
            control.count_pause(t0 + ms(20), t0 + ms(21));
            assert_eq!(control.paused_ns.get(), ms(13).as_nanos() as u64);
            assert_eq!(control.metrics().paused_ms, 13);
        })
        .expect("executor starts")
        .join()
        .expect("test body");
}

/// Drives `ticks` ticks of a replaying controller (fast replay: not starving) whose live latency
/// answers the duty in force: each tick 100 samples of `model(duty)` microseconds. Returns the
/// duty in force during each tick and the settled duty after it.
fn drive(control: &ReplayControl, ticks: usize, model: impl Fn(u32) -> u64) -> Vec<(u32, u32)> {
    (0..ticks)
        .map(|_| {
            let in_force = control.duty.get();
            live(control, 100, model(in_force));
            control.folded(100_000);
            control.tick();
            (in_force, control.metrics().duty_percent)
        })
        .collect()
}

#[test]
fn the_duty_rises_while_its_pause_lowers_the_live_p99_and_stops_inside_the_budget() {
    on_executor(|| {
        let control = Rc::new(control5());
        let _active = control.active();
        to_the_floor(&control);
        // Replay is the cause: each 10 points of pause take 1.5 ms off the p99 (10 ms at 0).
        let model = |duty: u32| 10_000 - 150 * u64::from(duty.min(60));
        let seen = drive(&control, 80, model);
        // The first tick starts a trial; it alternates the duty in force lo, hi, hi, lo over
        // `TRIAL_TICKS` ticks.
        let first: Vec<u32> = seen[1..=TRIAL_TICKS as usize].iter().map(|s| s.0).collect();
        assert_eq!(first, [0, 10, 10, 0, 0, 10, 10, 0], "{seen:?}");
        let settled: Vec<u32> = seen.iter().map(|s| s.1).collect();
        assert!(settled.windows(2).all(|w| w[1] >= w[0]), "only up: {settled:?}");
        // 40 is the first duty inside the budget (4 ms); there it stays, no more trials.
        assert_eq!(settled.last(), Some(&40), "{settled:?}");
        assert!(seen[60..].iter().all(|s| *s == (40, 40)), "{seen:?}");
        let m = control.metrics();
        assert_eq!((m.duty_trials, m.duty_trials_helped), (4, 4), "{m:?}");
        assert!(m.live_p99_us <= m.budget_us, "{m:?}");
        assert_eq!(m.level, FLOOR);
    });
}

#[test]
fn a_pause_that_buys_nothing_is_given_back_and_probed_ever_less_often() {
    on_executor(|| {
        let control = Rc::new(control5());
        let _active = control.active();
        to_the_floor(&control);
        // The live tail is slow whatever replay does (the disk's own latency): 9 ms at any duty.
        let seen = drive(&control, 400, |_| 9_000);
        assert!(seen.iter().all(|s| s.1 == 0), "the duty never settles above zero: {seen:?}");
        // Each trial pauses half its ticks at one step; the pause between trials doubles.
        let paused = seen.iter().filter(|s| s.0 > 0).count();
        assert!(paused <= 400 / 16, "{paused} ticks of 400 paused");
        assert!(seen[..4].iter().any(|s| s.0 == DUTY_UP), "the first trial probes at once");
        let late = seen[200..].iter().filter(|s| s.0 > 0).count();
        assert!(late <= 2 * TRIAL_TICKS as usize / 2, "backed off: {late} in the last 200 ticks");
        let m = control.metrics();
        assert!(m.duty_trials >= 4 && m.duty_trials_helped == 0, "{m:?}");
        // Without trials the same latencies drive the duty to its max: the rate a sixth.
        let untried = Rc::new(control5_untried());
        let _active = untried.active();
        to_the_floor(&untried);
        let seen = drive(&untried, 40, |_| 9_000);
        assert_eq!(seen.last().map(|s| s.1), Some(90));
    });
}

#[test]
fn the_duty_stops_rising_where_its_pause_stops_buying_latency() {
    on_executor(|| {
        let control = Rc::new(control5());
        let _active = control.active();
        to_the_floor(&control);
        // Pausing helps down to 6 ms and no further (the rest is the disk's): over budget at
        // every duty, yet pausing past 30 buys nothing.
        let model = |duty: u32| (10_000 - 150 * u64::from(duty)).max(6_000);
        let seen = drive(&control, 200, model);
        assert!(seen.iter().all(|s| s.0 <= 40 && s.1 <= 30), "{seen:?}");
        assert_eq!(seen.last().map(|s| s.1), Some(30), "{seen:?}");
        let m = control.metrics();
        assert!(m.duty_trials > m.duty_trials_helped, "some trials found no gain: {m:?}");
    });
}

/// Review 20: where pausing stops buying latency but the p99 stays over budget, the duty used to
/// be re-trialled without end (49 trials in 400 ticks, the duty in force cycling 20/30/40). Once
/// settled, trials come ever less often (the back-off doubles to `BACKOFF_MAX_TICKS`).
#[test]
fn a_settled_duty_is_trialled_ever_less_often() {
    on_executor(|| {
        let control = Rc::new(control5());
        let _active = control.active();
        to_the_floor(&control);
        let model = |duty: u32| (10_000 - 150 * u64::from(duty)).max(6_000);
        let seen = drive(&control, 400, model);
        assert_eq!(seen.last().map(|s| s.1), Some(30), "{seen:?}");
        let m = control.metrics();
        // Climbing to 30 and finding 40 useless takes 4 trials; after that at most one per
        // back-off (20, 40, 80, 160, 160 ticks).
        assert!(m.duty_trials <= 12, "trials without end: {m:?}");
        // The last 160 ticks hold at most one trial: the duty in force leaves 30 for at most
        // `TRIAL_TICKS` of them.
        let off = seen[240..].iter().filter(|s| s.0 != 30).count() as u64;
        assert!(off <= TRIAL_TICKS, "{off} of the last 160 ticks off the settled duty: {seen:?}");
    });
}

/// At `duty_max_percent` there is nothing higher to probe: the duty stays at the top and is not
/// trialled as [max - step, max] without end (which averaged max - step / 2).
#[test]
fn at_the_top_the_duty_stays_and_is_trialled_ever_less_often() {
    on_executor(|| {
        let control = Rc::new(control5());
        let _active = control.active();
        to_the_floor(&control);
        // Every step of pause takes 15% off the p99 and it never reaches the budget (9.2 ms at
        // 90).
        let model = |duty: u32| (40_000.0 * 0.85f64.powi((duty / 10) as i32)) as u64;
        let seen = drive(&control, 400, model);
        let max = seen.iter().map(|s| s.1).max().unwrap_or(0);
        assert_eq!(max, 90, "the duty climbs to the top: {seen:?}");
        assert_eq!(seen.last().map(|s| s.1), Some(max), "{seen:?}");
        let off = seen[240..].iter().filter(|s| s.0 != max).count() as u64;
        assert!(off <= TRIAL_TICKS, "{off} of the last 160 ticks below the top: {seen:?}");
    });
}

#[test]
fn while_a_live_write_waits_replay_hands_the_reactor_a_turn_every_io_turn_every() {
    let control = control5();
    let t0 = control.turn_until.get() + Duration::from_secs(1);
    let us = Duration::from_micros;
    assert_eq!(control.io_turn(t0, 0), None, "no live write: no turn");
    assert_eq!(control.io_turn(t0, 1), Some(IO_TURN), "a write waits: a turn at once");
    // Another replay task coming by during the turn sleeps to its end: the reactor runs only
    // once every replay task is asleep.
    assert_eq!(control.io_turn(t0 + us(2), 1), Some(IO_TURN - us(2)));
    let end = t0 + IO_TURN;
    assert_eq!(control.io_turn(end, 2), None, "replay runs between turns");
    assert_eq!(control.io_turn(end + IO_TURN_EVERY - us(1), 2), None);
    assert_eq!(control.io_turn(end + IO_TURN_EVERY, 2), Some(IO_TURN));
    assert_eq!(control.metrics().io_turns, 2);
}

/// Replay steps (the fold's `pace` calls) needed at most for a live append's write to be
/// acknowledged or a live request to be served; without the turn under test, never while
/// replay runs.
const STEPS_MAX: u64 = 20_000_000;

/// A live append's write, queued in glommio while replay folds, is submitted and its completion
/// reaped while replay goes on, not only at the next preempt timer. The executor's preempt timer
/// is a minute and nothing arms a timer that could fire meanwhile (the log's idle tail-cache
/// release is off; a `written` append never syncs, so no watermark timer), so glommio polls its
/// rings only when every task sleeps: without `pace`'s turns, replay's steps run out before the
/// append is acknowledged. Replay runs in a task queue of its own, as on a shard, so the write's
/// completion and the acknowledgement run in the other queue between its steps. (Counts steps
/// and turns, never time.)
#[test]
fn a_live_write_is_acknowledged_while_replay_folds() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("topics/t/0");
    glommio::LocalExecutorBuilder::new(glommio::Placement::Unbound)
        .preempt_timer(Duration::from_secs(60))
        .io_memory(4 << 20)
        .spawn(move || async move {
            let config = kappa_storage::LogConfig {
                tail_cache_idle_release: Duration::ZERO,
                ..kappa_storage::LogConfig::default()
            };
            let log =
                Rc::new(kappa_storage::PartitionLog::open(&path, config).await.expect("open"));
            // A first append opens the segment and preallocates: the next one's write is
            // queued without a trip to the blocking pool.
            let record = kappa_storage::Record::new(0, None, b"first");
            log.append(&[record], kappa_storage::Durability::Written).await.expect("append");
            let control = Rc::new(control5());
            let acked = Rc::new(std::cell::Cell::new(false));
            let live = {
                let (log, acked) = (log.clone(), acked.clone());
                glommio::spawn_local(async move {
                    let record = kappa_storage::Record::new(1, None, b"live");
                    log.append(&[record], kappa_storage::Durability::Written)
                        .await
                        .expect("append");
                    acked.set(true);
                })
            };
            // The append and the log's writer run until the write waits in glommio's queue.
            let mut yields = 0;
            while kappa_storage::writes_pending() == 0 {
                futures_lite::future::yield_now().await;
                yields += 1;
                assert!(yields < 1_000, "the live write never started");
            }
            // Replay folds (its steps do no I/O and never sleep but in `pace`).
            let queue = glommio::executor().create_task_queue(
                glommio::Shares::Static(1),
                glommio::Latency::NotImportant,
                "replay",
            );
            let replay = {
                let (control, acked) = (control.clone(), acked.clone());
                glommio::spawn_local_into(
                    async move {
                        let mut steps = 0u64;
                        while !acked.get() {
                            control.pace().await;
                            steps += 1;
                            assert!(
                                steps < STEPS_MAX,
                                "the live write was not acknowledged in {steps} replay steps \
                                 ({} turns)",
                                control.metrics().io_turns
                            );
                        }
                    },
                    queue,
                )
                .expect("the replay queue exists")
            };
            replay.await;
            assert!(control.metrics().io_turns > 0);
            live.await;
            log.close().await.expect("close");
        })
        .expect("executor starts")
        .join()
        .expect("test body");
}

/// A live task woken from another thread (a client's request in the shard's flume channel) runs
/// at the reactor turn that takes the wake, before replay goes on. glommio preempts at once for
/// a wake of a task whose queue's latency matters (its eventfd completes in the latency ring);
/// the live queue woken at that turn then runs first (the vendored glommio's scheduler patch,
/// `third_party/glommio/KAPPA-PATCH.md`). Upstream placed it just behind replay, which ran one
/// more whole preempt slice first: about 1 ms per request on a shard; here, with a preempt timer
/// of a minute, until replay's steps run out. (Counts replay steps, never time.)
#[test]
fn a_request_from_another_thread_is_served_before_replay_goes_on() {
    use std::sync::atomic::{AtomicBool, Ordering};
    glommio::LocalExecutorBuilder::new(glommio::Placement::Unbound)
        .preempt_timer(Duration::from_secs(60))
        .spawn(|| async move {
            let executor = glommio::executor();
            let (live, replay) = live_and_replay_queues(Duration::from_secs(60));
            // The shard's request loop: waits on its channel in the live queue.
            let (requests, queue) = flume::bounded::<u64>(1);
            let listening = Rc::new(Cell::new(false));
            let served = Rc::new(Cell::new(None::<u64>));
            let serve = {
                let (listening, served) = (listening.clone(), served.clone());
                glommio::spawn_local_into(
                    async move {
                        listening.set(true);
                        served.set(queue.recv_async().await.ok());
                    },
                    live,
                )
                .expect("the live queue exists")
            };
            let mut yields = 0;
            while !listening.get() {
                executor.yield_task_queue_now().await;
                yields += 1;
                assert!(yields < 1_000, "the request loop never ran");
            }
            // A client thread sends once replay folds.
            let folding = Arc::new(AtomicBool::new(false));
            let sent = Arc::new(AtomicBool::new(false));
            let client = {
                let (folding, sent) = (folding.clone(), sent.clone());
                std::thread::spawn(move || {
                    while !folding.load(Ordering::Acquire) {
                        std::thread::yield_now();
                    }
                    requests.send(7).expect("the shard listens");
                    sent.store(true, Ordering::Release);
                })
            };
            let control = Rc::new(control5());
            let replay = {
                let served = served.clone();
                glommio::spawn_local_into(
                    async move {
                        // Steps taken after the request was in the channel and its wake sent.
                        let mut steps = 0u64;
                        while served.get().is_none() {
                            folding.store(true, Ordering::Release);
                            control.pace().await;
                            if sent.load(Ordering::Acquire) {
                                steps += 1;
                                assert!(
                                    steps < STEPS_MAX,
                                    "the request was not served in {steps} replay steps"
                                );
                            }
                        }
                        steps
                    },
                    replay,
                )
                .expect("the replay queue exists")
            };
            replay.await;
            serve.await;
            assert_eq!(served.get(), Some(7));
            client.join().expect("the client thread");
        })
        .expect("executor starts")
        .join()
        .expect("test body");
}

/// A shard's two queues as `shard::mod` makes them, with equal shares: live (its latency
/// matters, within `latency`) and replay.
fn live_and_replay_queues(
    latency: Duration,
) -> (glommio::TaskQueueHandle, glommio::TaskQueueHandle) {
    let executor = glommio::executor();
    let live = executor.create_task_queue(
        glommio::Shares::Static(1000),
        glommio::Latency::Matters(latency),
        "live",
    );
    let replay = executor.create_task_queue(
        glommio::Shares::Static(1000),
        glommio::Latency::NotImportant,
        "replay",
    );
    (live, replay)
}

/// Spins the thread for `d` (work that takes CPU time, as a fold or an append does) and says how
/// long it spun. Also used by `shard::serve_tests`.
#[allow(clippy::disallowed_methods)] // Measures CPU work done, decides nothing by the clock.
pub(crate) fn spin_for(d: Duration) -> Duration {
    let start = std::time::Instant::now();
    while start.elapsed() < d {
        std::hint::spin_loop();
    }
    start.elapsed()
}

/// Live work first does not mean live work only: a live queue woken again and again, each time
/// with more work than its share, runs first only while it is within its share, so replay keeps
/// its share (the minimum rate the controller sets through shares). With a woken latency queue
/// placed first whatever it ran before, replay got only the moments the live queue was empty:
/// about a tenth of the thread here, where equal shares give it about half. (A ratio of CPU
/// time on one thread, judged far from both: at least a quarter; 13% without the placement rule
/// when run alone, while beside other tests it can pass without it.)
#[test]
fn a_live_queue_woken_again_and_again_leaves_replay_its_share() {
    assert_replay_keeps_its_share(None);
}

/// The same with the client on the shard's own CPU: its next request is often queued before the
/// live task looks for it, so the live queue never empties and is never woken; only the live
/// loop's yield point between requests (as `shard::serve` has) lets the scheduler weigh the
/// shares. Without it (the `yield_if_needed` in `assert_replay_keeps_its_share` deleted) the live task served every request in one poll
/// and replay ran 3-4% of the thread in most runs (a CI run failed the test above that way,
/// with the client on the shard's CPU); with it, 52-54%.
#[test]
fn a_live_queue_that_never_empties_leaves_replay_its_share() {
    let cpu = core_affinity::get_core_ids()
        .unwrap_or_default()
        .first()
        .map(|c| c.id)
        .expect("a CPU to pin to");
    assert_replay_keeps_its_share(Some(cpu));
}

/// A live queue serving requests from a client thread, 300 µs of work each, beside a replay
/// queue that never runs dry; replay must get at least a quarter of the thread's busy time.
/// `pin` puts the executor and the client on one CPU.
fn assert_replay_keeps_its_share(pin: Option<usize>) {
    use std::sync::atomic::{AtomicBool, Ordering};
    const CYCLES: usize = 300;
    const LIVE_WORK: Duration = Duration::from_micros(300);
    let placement = match pin {
        Some(cpu) => glommio::Placement::Fixed(cpu),
        None => glommio::Placement::Unbound,
    };
    let (live_ns, replay_ns) = glommio::LocalExecutorBuilder::new(placement)
        .preempt_timer(Duration::from_millis(1))
        .spawn(move || async move {
            let (live, replay) = live_and_replay_queues(Duration::from_millis(1));
            let (requests, queue) = flume::bounded::<()>(1);
            let (done, finished) = std::sync::mpsc::channel::<()>();
            let stop = Rc::new(Cell::new(false));
            let live_busy = Rc::new(Cell::new(Duration::ZERO));
            let serve = {
                let (stop, live_busy) = (stop.clone(), live_busy.clone());
                glommio::spawn_local_into(
                    async move {
                        while queue.recv_async().await.is_ok() {
                            live_busy.set(live_busy.get() + spin_for(LIVE_WORK));
                            let _ = done.send(());
                            // As `shard::serve` does between requests.
                            glommio::yield_if_needed().await;
                        }
                        stop.set(true);
                    },
                    live,
                )
                .expect("the live queue exists")
            };
            // A client thread sends the next request as soon as the last one is done, so the
            // live queue empties and is woken again each cycle (unless the request is there
            // before the live task looks).
            let started = Arc::new(AtomicBool::new(false));
            let client = {
                let started = started.clone();
                std::thread::spawn(move || {
                    if let Some(cpu) = pin {
                        // Unpinned, the test would quietly become the one above.
                        assert!(
                            core_affinity::set_for_current(core_affinity::CoreId { id: cpu }),
                            "pinning the client to CPU {cpu}"
                        );
                    }
                    while !started.load(Ordering::Acquire) {
                        std::thread::yield_now();
                    }
                    for _ in 0..CYCLES {
                        requests.send(()).expect("the shard listens");
                        finished.recv().expect("the request was served");
                    }
                })
            };
            let replay = {
                let stop = stop.clone();
                glommio::spawn_local_into(
                    async move {
                        let mut busy = Duration::ZERO;
                        while !stop.get() {
                            started.store(true, Ordering::Release);
                            busy += spin_for(Duration::from_micros(20));
                            glommio::yield_if_needed().await;
                        }
                        busy
                    },
                    replay,
                )
                .expect("the replay queue exists")
            };
            let replay_busy = replay.await;
            serve.await;
            client.join().expect("the client thread");
            (live_busy.get().as_nanos(), replay_busy.as_nanos())
        })
        .expect("executor starts")
        .join()
        .expect("test body");
    let share = replay_ns as f64 / (live_ns + replay_ns) as f64;
    assert!(
        share >= 0.25,
        "replay ran {:.0}% of the thread's busy time beside a live queue serving {CYCLES} \
         requests (live {} ms, replay {} ms, pinned to {pin:?}): it kept less than its share",
        share * 100.0,
        live_ns / 1_000_000,
        replay_ns / 1_000_000
    );
}
