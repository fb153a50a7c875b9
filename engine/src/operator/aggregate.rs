//! Aggregates and their state. Every built-in aggregate merges partial results exactly and in
//! any order: merging the states of any split of a record sequence gives the state of the whole
//! sequence, bit for bit. That is what lets queries combine partitions and replay split one
//! partition's history across cores. Counts add; `Min`/`Max` take a total order on numbers (NaN
//! ignored, `-0.0` below `+0.0`); `Sum` and `Mean` keep an exact sum (`ExactSum`) rounded once
//! when read; HyperLogLog registers take their maximum.

use std::sync::Arc;

use kappa_storage::RecordRef;
use xxhash_rust::xxh3::xxh3_64;

use crate::operator::exact::ExactSum;

/// HyperLogLog precision: 2^10 registers, about 3% standard error, 1 KiB per (key, window).
const HLL_BITS: u32 = 10;
const HLL_REGISTERS: usize = 1 << HLL_BITS;

/// A user aggregate. Its state is bytes so checkpoints and digests cover it like the built-ins.
pub trait CustomAggregate: Send + Sync {
    /// State of an empty group.
    fn init(&self) -> Vec<u8>;
    /// Folds one record (with the mapped value, if the pipeline has one) into the state.
    fn update(&self, state: &mut Vec<u8>, record: &RecordRef<'_>, value: Option<f64>);
    /// Merges another partial state into `into`.
    fn merge(&self, into: &mut Vec<u8>, other: &[u8]);
    /// The number a query reports.
    fn result(&self, state: &[u8]) -> f64;
    /// Whether `merge` combines partial states exactly (what lets queries combine partitions and
    /// replay split history). Say `false` if it cannot; such a view must group by the record key.
    fn mergeable(&self) -> bool {
        true
    }
}

/// What a view computes per (key, window).
#[derive(Clone)]
pub enum Aggregate {
    Count,
    Sum,
    Min,
    Max,
    Mean,
    /// Approximate count of distinct values of the mapped number (HyperLogLog).
    DistinctCount,
    Custom(Arc<dyn CustomAggregate>),
}

impl std::fmt::Debug for Aggregate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Aggregate::Count => "Count",
            Aggregate::Sum => "Sum",
            Aggregate::Min => "Min",
            Aggregate::Max => "Max",
            Aggregate::Mean => "Mean",
            Aggregate::DistinctCount => "DistinctCount",
            Aggregate::Custom(_) => "Custom",
        })
    }
}

/// The state of one (key, window). Deterministic: the same records in the same order give the
/// same bits.
#[derive(Debug, Clone, PartialEq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub enum AggState {
    Count(u64),
    /// The exact sum; its result is rounded once to the nearest `f64`.
    Sum(ExactSum),
    Min(f64),
    Max(f64),
    Mean {
        sum: ExactSum,
        count: u64,
    },
    Hll(Vec<u8>),
    Custom(Vec<u8>),
}

impl Aggregate {
    /// True when partial results merge exactly: every built-in aggregate (HyperLogLog merges its
    /// registers), and custom ones that say so.
    pub fn is_mergeable(&self) -> bool {
        match self {
            Aggregate::Custom(c) => c.mergeable(),
            _ => true,
        }
    }

    /// True when the aggregate needs a mapped value (all but `Count` and custom ones).
    pub fn needs_value(&self) -> bool {
        !matches!(self, Aggregate::Count | Aggregate::Custom(_))
    }

    pub fn init(&self) -> AggState {
        match self {
            Aggregate::Count => AggState::Count(0),
            Aggregate::Sum => AggState::Sum(ExactSum::new()),
            Aggregate::Min => AggState::Min(f64::INFINITY),
            Aggregate::Max => AggState::Max(f64::NEG_INFINITY),
            Aggregate::Mean => AggState::Mean { sum: ExactSum::new(), count: 0 },
            Aggregate::DistinctCount => AggState::Hll(vec![0; HLL_REGISTERS]),
            Aggregate::Custom(c) => AggState::Custom(c.init()),
        }
    }

    pub fn update(&self, state: &mut AggState, record: &RecordRef<'_>, value: Option<f64>) {
        let v = value.unwrap_or(0.0);
        match (self, state) {
            (Aggregate::Count, AggState::Count(n)) => *n += 1,
            (Aggregate::Sum, AggState::Sum(s)) => s.add(v),
            (Aggregate::Min, AggState::Min(m)) => *m = min(*m, v),
            (Aggregate::Max, AggState::Max(m)) => *m = max(*m, v),
            (Aggregate::Mean, AggState::Mean { sum, count }) => {
                sum.add(v);
                *count += 1;
            }
            (Aggregate::DistinctCount, AggState::Hll(registers)) => {
                let hash = xxh3_64(&v.to_bits().to_le_bytes());
                let index = (hash >> (64 - HLL_BITS)) as usize;
                let rank = ((hash << HLL_BITS) | (1 << (HLL_BITS - 1))).leading_zeros() as u8 + 1;
                registers[index] = registers[index].max(rank);
            }
            (Aggregate::Custom(c), AggState::Custom(s)) => c.update(s, record, value),
            (aggregate, state) => unreachable!("{aggregate:?} with state {state:?}"),
        }
    }

    pub fn merge(&self, into: &mut AggState, other: &AggState) {
        match (self, into, other) {
            (_, AggState::Count(a), AggState::Count(b)) => *a += b,
            (_, AggState::Sum(a), AggState::Sum(b)) => a.merge(b),
            (_, AggState::Min(a), AggState::Min(b)) => *a = min(*a, *b),
            (_, AggState::Max(a), AggState::Max(b)) => *a = max(*a, *b),
            (_, AggState::Mean { sum, count }, AggState::Mean { sum: s, count: c }) => {
                sum.merge(s);
                *count += c;
            }
            (_, AggState::Hll(a), AggState::Hll(b)) => {
                for (x, y) in a.iter_mut().zip(b) {
                    *x = (*x).max(*y);
                }
            }
            (Aggregate::Custom(c), AggState::Custom(a), AggState::Custom(b)) => c.merge(a, b),
            (aggregate, a, b) => unreachable!("{aggregate:?} merging {a:?} and {b:?}"),
        }
    }

    pub fn result(&self, state: &AggState) -> f64 {
        match (self, state) {
            (_, AggState::Count(n)) => *n as f64,
            (_, AggState::Sum(s)) => s.value(),
            (_, AggState::Min(m)) | (_, AggState::Max(m)) => *m,
            (_, AggState::Mean { sum, count }) => {
                if *count == 0 {
                    0.0
                } else {
                    sum.value() / *count as f64
                }
            }
            (_, AggState::Hll(registers)) => hll_estimate(registers),
            (Aggregate::Custom(c), AggState::Custom(s)) => c.result(s),
            (_, AggState::Custom(_)) => f64::NAN,
        }
    }
}

/// The smaller of two numbers in a total order: NaN never wins, `-0.0` is below `+0.0`. So the
/// minimum of a set is the same whatever the order of comparisons (`f64::min` leaves the sign of
/// a zero tie to the argument order).
fn min(m: f64, v: f64) -> f64 {
    if v < m || (v == m && v.is_sign_negative() && m.is_sign_positive()) {
        v
    } else {
        m
    }
}

/// The larger of two numbers in the same total order as `min`.
fn max(m: f64, v: f64) -> f64 {
    if v > m || (v == m && v.is_sign_positive() && m.is_sign_negative()) {
        v
    } else {
        m
    }
}

fn hll_estimate(registers: &[u8]) -> f64 {
    let m = registers.len() as f64;
    let sum: f64 = registers.iter().map(|r| 2f64.powi(-i32::from(*r))).sum();
    let alpha = 0.7213 / (1.0 + 1.079 / m);
    let estimate = alpha * m * m / sum;
    let zeros = registers.iter().filter(|r| **r == 0).count();
    if estimate <= 2.5 * m && zeros > 0 {
        m * (m / zeros as f64).ln() // Linear counting for small cardinalities.
    } else {
        estimate
    }
}
