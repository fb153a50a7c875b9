//! The request loop (`serve`) against a replay task on the same shard: requests that never let
//! the loop's queue run dry must not take the whole thread.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use super::replay::tests::spin_for;
use super::{Request, Shard};

/// A client thread keeps the shard's request queue full of jobs, each 300 µs of work done inside
/// the request loop's own poll (a `Request::Run` job's closure runs there), while a task in the
/// replay queue spins in 20 µs steps. With equal shares (live 1000, replay's `shares_max`
/// 1000) replay gets about half of the shard's thread; without the loop's yield point between
/// requests, `recv_async` was always ready, the loop served every request in one poll and
/// replay ran only once the client had stopped: 0% of the busy time while the client sent.
#[test]
fn a_request_loop_that_never_runs_dry_leaves_replay_its_share() {
    const JOBS: u64 = 400;
    const JOB_WORK: Duration = Duration::from_micros(300);
    let dir = tempfile::tempdir().expect("test setup");
    let engine =
        crate::Engine::builder().data_dir(dir.path()).shards(1).build().expect("test setup");
    let link = engine.inner.link(0).clone();
    let stop = Arc::new(AtomicBool::new(false));
    let replay_ns = Arc::new(AtomicU64::new(0));
    let live_ns = Arc::new(AtomicU64::new(0));
    // Replay's busy time while the jobs run: from the first job to the last.
    let replay_ns_at_first = Arc::new(AtomicU64::new(0));
    let replay_ns_at_last = Arc::new(AtomicU64::new(0));
    // `Result`s, so `Link::recv` ends the wait with the shard's error if it dies.
    let (started_tx, started) = flume::bounded::<Result<(), crate::Error>>(1);
    {
        let (stop, replay_ns) = (stop.clone(), replay_ns.clone());
        let job = move |shard: std::rc::Rc<Shard>| {
            let task = async move {
                let _ = started_tx.send(Ok(()));
                while !stop.load(Ordering::Acquire) {
                    let d = spin_for(Duration::from_micros(20));
                    replay_ns.fetch_add(d.as_nanos() as u64, Ordering::Relaxed);
                    glommio::yield_if_needed().await;
                }
            };
            glommio::spawn_local_into(task, shard.replay_queue())
                .expect("the replay queue exists")
                .detach();
            Box::pin(async {}) as std::pin::Pin<Box<dyn std::future::Future<Output = ()>>>
        };
        link.send(Request::Run(Box::new(job))).expect("the shard listens");
    }
    link.recv(&started).expect("the replay task started");
    let (done_tx, done) = flume::bounded::<Result<(), crate::Error>>(1);
    for i in 0..JOBS {
        let live_ns = live_ns.clone();
        let first = (i == 0).then(|| (replay_ns.clone(), replay_ns_at_first.clone()));
        let last = (i + 1 == JOBS)
            .then(|| (done_tx.clone(), replay_ns.clone(), replay_ns_at_last.clone()));
        let job = move |_shard: std::rc::Rc<Shard>| {
            if let Some((replay_ns, snapshot)) = first {
                snapshot.store(replay_ns.load(Ordering::Relaxed), Ordering::Relaxed);
            }
            let d = spin_for(JOB_WORK);
            live_ns.fetch_add(d.as_nanos() as u64, Ordering::Relaxed);
            if let Some((done, replay_ns, snapshot)) = last {
                snapshot.store(replay_ns.load(Ordering::Relaxed), Ordering::Relaxed);
                let _ = done.send(Ok(()));
            }
            Box::pin(async {}) as std::pin::Pin<Box<dyn std::future::Future<Output = ()>>>
        };
        link.send(Request::Run(Box::new(job))).expect("the shard listens");
    }
    drop(done_tx);
    link.recv(&done).expect("the last job ran");
    stop.store(true, Ordering::Release);
    let live = live_ns.load(Ordering::Relaxed) as f64;
    let replay = (replay_ns_at_last.load(Ordering::Relaxed)
        - replay_ns_at_first.load(Ordering::Relaxed)) as f64;
    let share = replay / (live + replay);
    assert!(
        share >= 0.2,
        "replay ran {:.0}% of the shard's busy time while {JOBS} requests of {} µs each kept the \
         request loop busy (live {:.0} ms, replay {:.0} ms): the loop did not let it have its share",
        share * 100.0,
        JOB_WORK.as_micros(),
        live / 1e6,
        replay / 1e6
    );
    drop(engine);
}
