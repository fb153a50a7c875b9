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
