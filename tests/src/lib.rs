//! `kappa-tests`: shared pieces of the cross-crate, crash and fault tests in `tests/it`.
//!
//! The crash test runs the `kappa-crash-writer` binary (in this package) as a child process that
//! appends with `synced` acks and prints every acknowledgement; the parent kills it with SIGKILL
//! and checks the log. Both sides derive record bytes from `crash::value`, so the parent knows the
//! exact bytes of every acknowledged record without the child sending them.

pub mod crash {
    /// The bytes of record `index` of batch `batch` of `producer` in crash round `round`.
    /// Lengths vary (1..=700 bytes) so frames straddle blocks and buffers.
    pub fn value(round: u32, producer: u32, batch: u64, index: u32) -> Vec<u8> {
        let mut state = (u64::from(round) << 48)
            ^ (u64::from(producer) << 40)
            ^ (batch << 8)
            ^ u64::from(index);
        state = state.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        let len = 1 + (state >> 7) as usize % 700;
        (0..len)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                state as u8
            })
            .collect()
    }

    /// Records per batch for a batch number (1..=40).
    pub fn batch_len(producer: u32, batch: u64) -> u32 {
        1 + ((batch.wrapping_mul(31) + u64::from(producer) * 7) % 40) as u32
    }

    /// One acknowledgement line: `ack <base_offset> <count> <round> <producer> <batch>`.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub struct Ack {
        pub base_offset: u64,
        pub count: u32,
        pub round: u32,
        pub producer: u32,
        pub batch: u64,
    }

    impl Ack {
        pub fn line(&self) -> String {
            format!(
                "ack {} {} {} {} {}",
                self.base_offset, self.count, self.round, self.producer, self.batch
            )
        }

        /// Parses a whole line; a line cut by the kill parses as `None`.
        pub fn parse(line: &str) -> Option<Ack> {
            let mut parts = line.strip_prefix("ack ")?.split(' ');
            let ack = Ack {
                base_offset: parts.next()?.parse().ok()?,
                count: parts.next()?.parse().ok()?,
                round: parts.next()?.parse().ok()?,
                producer: parts.next()?.parse().ok()?,
                batch: parts.next()?.parse().ok()?,
            };
            parts.next().is_none().then_some(ack)
        }
    }

    /// The log configuration both sides use: small segments so rounds cross many rolls.
    pub fn log_config() -> kappa_storage::LogConfig {
        kappa_storage::LogConfig {
            segment_size_bytes_max: 256 * 1024,
            index_interval_bytes: 8 * 1024,
            write_buffer_size_bytes: 64 * 1024,
            ..kappa_storage::LogConfig::default()
        }
    }
}

/// The view and workload shared by the view tests and the `kappa-view-writer` child process.
pub mod views {
    use kappa_engine::operator::{Aggregate, LatePolicy, Window};
    use kappa_engine::{Durability, Engine, ProducerBatch, ViewDef};

    /// Sum of `v` per key per 100 ms tumbling window, 50 ms lateness, late records dropped.
    pub fn sums(revision: &str) -> ViewDef {
        ViewDef::new("events")
            .revision(revision)
            .map_json("v")
            .window(Window::Tumbling { size_ms: 100 })
            .aggregate(Aggregate::Sum)
            .lateness(50, LatePolicy::Drop)
            .checkpoint_every(500)
    }

    /// Produces `n` records (batches of 50) from `seed`: 20 keys, out-of-order event times, some
    /// very late. `start` numbers the records (event times grow with it).
    pub fn produce(
        engine: &Engine,
        n: u64,
        seed: u64,
        start: u64,
        durability: Durability,
    ) -> Result<(), kappa_engine::Error> {
        let producer = engine.producer().with_durability(durability);
        let mut state = seed | 1;
        let mut i = start;
        while i < start + n {
            let mut batch = ProducerBatch::new();
            for _ in 0..50 {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                let late = if state.is_multiple_of(50) { 400 } else { (state % 30) as i64 };
                let ts = 10_000 + i as i64 * 2 - late;
                let key = format!("key-{}", state % 20);
                let value = format!("{{\"v\":{}}}", state % 1000);
                batch.push(Some(key.as_bytes()), value.as_bytes(), Some(ts));
                i += 1;
            }
            producer.send_packed("events", batch)?;
        }
        Ok(())
    }
}
