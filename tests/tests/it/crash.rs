//! Crash test: SIGKILL a process appending with `synced` acks at random moments; after each kill
//! the log reopens, every acknowledged record is there with the right bytes, and `kappa verify`
//! finds nothing wrong. 20 rounds by default; `KAPPA_CRASH_ROUNDS=N` asks for more and
//! `KAPPA_CRASH_SEED=S` replays a run (the seed is printed).

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use kappa_storage::{PartitionLog, Seek};
use kappa_tests::crash::{log_config, value, Ack};

fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name).ok().and_then(|v| v.parse().ok())
}

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

#[test]
fn synced_acks_survive_sigkill() {
    let rounds = env_u64("KAPPA_CRASH_ROUNDS").unwrap_or(20) as u32;
    let seed = env_u64("KAPPA_CRASH_SEED")
        .unwrap_or_else(|| u64::from(std::process::id()).wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1);
    eprintln!("crash test: {rounds} rounds, KAPPA_CRASH_SEED={seed}");
    let mut rng = Rng(seed | 1);
    let temp = tempfile::tempdir().expect("tempdir");
    let dir = temp.path().join("topics").join("crash").join("0");
    // offset -> (round, producer, batch, index) of every acknowledged record.
    let mut acked: BTreeMap<u64, (u32, u32, u64, u32)> = BTreeMap::new();

    for round in 0..rounds {
        let mut child = Command::new(env!("CARGO_BIN_EXE_kappa-crash-writer"))
            .arg(&dir)
            .arg(round.to_string())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn crash writer");
        let stdout = child.stdout.take().expect("stdout");
        // Lines are forwarded as they arrive, so the kill can wait for the writer to have started
        // acknowledging: on a loaded machine a fixed delay after spawn can end before the child's
        // first append (then the round tests nothing and the total can stay too small).
        let (line_tx, line_rx) = std::sync::mpsc::channel::<String>();
        let reader = std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if line_tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut lines = Vec::new();
        #[allow(clippy::disallowed_methods)] // A test deadline, not engine time.
        let started = std::time::Instant::now();
        // Every fourth round kills at a random moment from the start instead (often during the
        // reopen's recovery, which must survive a crash too).
        let early = round % 4 == 3;
        while !early && !lines.iter().any(|l: &String| Ack::parse(l).is_some()) {
            match line_rx.recv_timeout(Duration::from_secs(60)) {
                Ok(line) => lines.push(line),
                Err(e) => panic!(
                    "round {round}: the writer acknowledged nothing within {:?} ({e}; seed {seed})",
                    started.elapsed()
                ),
            }
        }
        let delay_ms = rng.next() % 300;
        std::thread::sleep(Duration::from_millis(delay_ms));
        // SAFETY: plain libc call on a pid we own; SIGKILL cannot be caught.
        unsafe {
            libc::kill(child.id() as i32, libc::SIGKILL);
        }
        let status = child.wait().expect("wait");
        assert!(!status.success(), "the child was killed, round {round} (seed {seed})");
        reader.join().expect("reader thread");
        lines.extend(line_rx.try_iter());
        let mut new_acks = 0;
        for line in &lines {
            if let Some(ack) = Ack::parse(line) {
                assert_eq!(ack.round, round);
                for i in 0..ack.count {
                    acked.insert(
                        ack.base_offset + u64::from(i),
                        (ack.round, ack.producer, ack.batch, i),
                    );
                }
                new_acks += 1;
            }
        }
        let checked = check_log(&dir, &acked, round, seed);
        let code = kappa_tools::cli::main_with_args([
            "kappa",
            "verify",
            "--strict",
            temp.path().to_str().expect("utf-8"),
        ]);
        assert_eq!(code, 0, "kappa verify after round {round} (seed {seed})");
        eprintln!("round {round}: killed {delay_ms} ms after {}, {new_acks} new acks, {checked} records checked", if early { "the start" } else { "the first ack" });
    }
    assert!(
        acked.len() > 100,
        "the writer acknowledged too little to test anything: {}",
        acked.len()
    );
}

/// Reopens the log and checks every acknowledged record; returns how many were checked.
fn check_log(
    dir: &std::path::Path,
    acked: &BTreeMap<u64, (u32, u32, u64, u32)>,
    round: u32,
    seed: u64,
) -> usize {
    let dir = dir.to_path_buf();
    let acked = acked.clone();
    glommio::LocalExecutorBuilder::new(glommio::Placement::Unbound)
        .io_memory(4 << 20)
        .spawn(move || async move {
            let log = PartitionLog::open(&dir, log_config()).await.expect("reopen after kill");
            let end = log.end_offset();
            if let Some((&last, _)) = acked.iter().next_back() {
                assert!(
                    end > last,
                    "acked offset {last} lost: log ends at {end} (round {round}, seed {seed})"
                );
            }
            let mut reader = log.reader(Seek::Beginning).expect("reader");
            let mut checked = 0;
            let mut next_expected = 0;
            while let Some(batch) = reader.next_batch().await.expect("read after kill") {
                for record in batch.records() {
                    assert_eq!(record.offset(), next_expected, "dense offsets");
                    next_expected += 1;
                    if let Some(&(r, p, b, i)) = acked.get(&record.offset()) {
                        assert_eq!(
                            record.value(),
                            &value(r, p, b, i)[..],
                            "bytes of acked offset {} (round {round}, seed {seed})",
                            record.offset()
                        );
                        checked += 1;
                    }
                }
            }
            assert_eq!(checked, acked.len(), "every acked record is readable (seed {seed})");
            log.close().await.expect("close");
            checked
        })
        .expect("executor")
        .join()
        .expect("join")
}
