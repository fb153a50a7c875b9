//! The controller's decisions on made-up windows: it halves over budget (append or tail
//! delivery), climbs back under it, never lowers a starving replay, and a lowered concurrency
//! takes effect as tasks finish; the window holds a sample for exactly one second of ticks.

use std::rc::Rc;
use std::time::Duration;

use super::*;

fn config() -> ReplayConfig {
    ReplayConfig {
        concurrency_max: 4,
        read_ahead_max: 16,
        shares_max: 1000,
        min_records_per_s: 1_000,
        ..ReplayConfig::default()
    }
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
        let control = Rc::new(ReplayControl::new(config(), Duration::from_millis(5)));
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
        let control = Rc::new(ReplayControl::new(config(), Duration::from_millis(5)));
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
        let control = Rc::new(ReplayControl::new(config(), Duration::from_millis(5)));
        let active = control.active();
        for tick in 0..12 {
            // A second of p99 at 9 ms, with replay making fast progress (not starving).
            live(&control, 100, 9_000);
            control.folded(100_000);
            control.tick();
            let m = control.metrics();
            assert!(m.live_p99_us >= 8_900, "tick {tick}: {m:?}");
        }
        let m = control.metrics();
        assert_eq!(m.level, FLOOR, "{m:?}");
        assert_eq!((m.concurrency, m.read_ahead), (1, 1), "{m:?}");
        assert_eq!(m.shares, (1000.0 * FLOOR).round() as usize);
        assert_eq!(m.ticks_over_budget, 12);
        assert!((m.budget_burn() - 1.0).abs() < 1e-9);
        // Quiet again: the slow samples leave the window after a second, then it climbs.
        for _ in 0..40 {
            live(&control, 100, 500);
            control.folded(100_000);
            control.tick();
        }
        let m = control.metrics();
        assert_eq!(m.level, 1.0, "{m:?}");
        assert_eq!((m.concurrency, m.read_ahead, m.shares), (4, 16, 1000));
        drop(active);
    });
}

#[test]
fn a_starving_replay_is_not_lowered() {
    on_executor(|| {
        let control = Rc::new(ReplayControl::new(config(), Duration::from_millis(5)));
        let _active = control.active();
        for _ in 0..12 {
            live(&control, 100, 9_000);
            control.folded(10); // 100 records/s, below the 1,000 minimum.
            control.tick();
        }
        assert_eq!(control.metrics().level, 1.0, "replay below its minimum rate is never cut");
        // Without replay work, the same latencies lower the level (nothing to starve).
        let control = Rc::new(ReplayControl::new(config(), Duration::from_millis(5)));
        live(&control, 100, 9_000);
        control.tick();
        assert_eq!(control.metrics().level, 0.5);
    });
}

#[test]
fn a_lowered_concurrency_waits_for_running_tasks() {
    glommio::LocalExecutorBuilder::new(glommio::Placement::Unbound)
        .spawn(|| async {
            let control = Rc::new(ReplayControl::new(config(), Duration::from_millis(5)));
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
        let control = Rc::new(ReplayControl::new(config(), Duration::from_millis(5)));
        let _active = control.active();
        for _ in 0..12 {
            live(&control, 100, 9_000);
            control.folded(100_000);
            control.tick();
        }
        assert_eq!(control.metrics().level, FLOOR);
        // Over budget still, but the replay does not gain on the tail: the level climbs for a
        // second after each mark, and stops climbing when the marks stop.
        let mut levels = Vec::new();
        for _ in 0..3 {
            control.mark_behind();
            for _ in 0..CHASE_TICKS {
                live(&control, 100, 9_000);
                control.folded(100_000);
                control.tick();
            }
            levels.push(control.level());
        }
        assert_eq!(levels, [FLOOR + STEP * CHASE_TICKS as f64, 1.0, 1.0]);
        live(&control, 100, 9_000);
        control.folded(100_000);
        control.tick();
        assert!(control.level() < levels[2], "over budget and no mark: halved again");
    });
}
