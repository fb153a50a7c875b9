//! `ExactSum` against an independent oracle (Shewchuk's exact summation with a correctly rounded
//! result, as Python's `math.fsum`), across random orders and splits, and on the edges: special
//! values, subnormals, overflow past the largest `f64`, the inline form's bounds.

use proptest::prelude::*;

use super::*;

/// Shewchuk's algorithm: the exact sum kept as non-overlapping partials, rounded once (with the
/// half-even correction across partials). Independent of the fixed-point code above; valid while
/// no partial overflows (the tests keep values below 2^1000 for it).
pub(crate) fn fsum(values: &[f64]) -> f64 {
    let mut partials: Vec<f64> = Vec::new();
    for &v in values {
        let mut x = v;
        let mut i = 0;
        for j in 0..partials.len() {
            let mut y = partials[j];
            if x.abs() < y.abs() {
                std::mem::swap(&mut x, &mut y);
            }
            let hi = x + y;
            let lo = y - (hi - x);
            if lo != 0.0 {
                partials[i] = lo;
                i += 1;
            }
            x = hi;
        }
        partials.truncate(i);
        partials.push(x);
    }
    let mut n = partials.len();
    let mut hi = 0.0;
    if n > 0 {
        n -= 1;
        hi = partials[n];
        let mut lo = 0.0;
        while n > 0 {
            let x = hi;
            n -= 1;
            let y = partials[n];
            hi = x + y;
            let yr = hi - x;
            lo = y - yr;
            if lo != 0.0 {
                break;
            }
        }
        if n > 0 && ((lo < 0.0 && partials[n - 1] < 0.0) || (lo > 0.0 && partials[n - 1] > 0.0)) {
            let y = lo * 2.0;
            let x = hi + y;
            let yr = x - hi;
            if y == yr {
                hi = x;
            }
        }
    }
    hi + 0.0 // -0.0 becomes +0.0, as the exact sum's zero is.
}

fn sum_of(values: &[f64]) -> ExactSum {
    let mut s = ExactSum::new();
    for v in values {
        s.add(*v);
    }
    s
}

fn canonical_bytes(s: &ExactSum) -> Vec<u8> {
    let mut out = Vec::new();
    s.write_canonical(|b| out.extend_from_slice(b));
    out
}

/// Doubles across the whole finite range (below 2^1000 so the oracle cannot overflow), with
/// many that fit the inline form and many that do not.
fn value() -> impl Strategy<Value = f64> {
    prop_oneof![
        4 => (-4000i32..4000).prop_map(|n| f64::from(n) / 4.0),
        2 => (any::<u64>(), -60i32..60).prop_map(|(m, e)| {
            (m >> 11) as f64 * (f64::from(e) - 52.0).exp2() * if m & 1 == 0 { 1.0 } else { -1.0 }
        }),
        2 => (any::<u64>(), -1074i32..1000).prop_map(|(m, e)| {
            let v = (m >> 11) as f64 * f64::from(e.max(-1074) - 52).exp2();
            if m & 2 == 0 { v } else { -v }
        }),
        1 => prop_oneof![Just(0.1), Just(1e16), Just(-1e16), Just(1.0), Just(5e-324),
            Just(-5e-324), Just(2.2250738585072014e-308), Just(1e300), Just(-0.0),
            Just(9.223372036854775e18), Just(f64::EPSILON)],
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 400, ..ProptestConfig::default() })]

    /// Any order, any split into merged partials: the same value (correctly rounded, equal to the
    /// oracle's) and the same canonical bytes.
    #[test]
    fn split_merged_sums_equal_the_serial_sum_and_the_oracle(
        values in proptest::collection::vec(value(), 0..60),
        cuts in proptest::collection::vec(any::<prop::sample::Index>(), 0..5),
        rotate in any::<prop::sample::Index>(),
    ) {
        let serial = sum_of(&values);
        prop_assert_eq!(serial.value().to_bits(), fsum(&values).to_bits(), "{:?}", values);
        let mut points: Vec<usize> = cuts.iter().map(|c| c.index(values.len() + 1)).collect();
        points.sort_unstable();
        let mut merged = ExactSum::new();
        let mut from = 0;
        for to in points.into_iter().chain([values.len()]) {
            merged.merge(&sum_of(&values[from..to]));
            from = to;
        }
        prop_assert_eq!(&merged, &serial);
        prop_assert_eq!(canonical_bytes(&merged), canonical_bytes(&serial));
        prop_assert_eq!(merged.value().to_bits(), serial.value().to_bits());
        // Another order of the same values.
        let mut turned = values.clone();
        if !turned.is_empty() {
            let r = rotate.index(turned.len());
            turned.rotate_left(r);
            turned.reverse();
        }
        let other = sum_of(&turned);
        prop_assert_eq!(canonical_bytes(&other), canonical_bytes(&serial));
    }
}

#[test]
fn cancellation_that_f64_loses_is_kept() {
    assert_eq!(sum_of(&[1e16, 1.0, -1e16]).value(), 1.0);
    assert_eq!(sum_of(&[1e16, -1e16, 1.0]).value(), 1.0);
    assert_eq!(sum_of(&[0.1, 0.2, -0.3]).value(), fsum(&[0.1, 0.2, -0.3]));
    assert_eq!(sum_of(&[1e300, 1.0, -1e300]).value(), 1.0);
    assert_eq!(sum_of(&[5e-324, 5e-324]).value(), 1e-323);
    assert_eq!(sum_of(&[1e-300, -1e-300, 1e-310]).value(), 1e-310);
}

#[test]
fn sums_past_the_largest_f64_round_to_infinity_and_can_come_back() {
    let big = f64::MAX;
    assert_eq!(sum_of(&[big, big]).value(), f64::INFINITY);
    assert_eq!(sum_of(&[-big, -big]).value(), f64::NEG_INFINITY);
    assert_eq!(sum_of(&[big, big, -big]).value(), big, "exact, not inf - MAX");
    // Just below MAX + half an ulp rounds to MAX; at it, to infinity (ties to even: MAX is odd).
    let half_ulp = 2f64.powi(970);
    assert_eq!(sum_of(&[big, half_ulp / 2.0]).value(), big);
    assert_eq!(sum_of(&[big, half_ulp]).value(), f64::INFINITY);
}

#[test]
fn ties_round_to_even() {
    // 2^53 + 1 is a tie between 2^53 and 2^53 + 2: even is 2^53.
    let two53 = 9_007_199_254_740_992.0;
    assert_eq!(sum_of(&[two53, 1.0]).value(), two53);
    assert_eq!(sum_of(&[two53, 3.0]).value(), two53 + 4.0);
    // The same tie broken by a tiny addend far below (sticky bits): rounds up.
    assert_eq!(sum_of(&[two53, 1.0, 1e-300]).value(), two53 + 2.0);
    assert_eq!(sum_of(&[-two53, -1.0]).value(), -two53);
    // The same ties in the wide form (a tiny addend and its negation move the sum there).
    let wide = |values: &[f64]| {
        let mut all = vec![1e-300];
        all.extend_from_slice(values);
        all.push(-1e-300);
        let s = sum_of(&all);
        assert!(!s.is_inline());
        s.value()
    };
    assert_eq!(wide(&[two53, 1.0]), two53);
    assert_eq!(wide(&[two53, 3.0]), two53 + 4.0);
    assert_eq!(wide(&[-two53, -1.0]), -two53);
    assert_eq!(wide(&[-two53, -3.0]), -two53 - 4.0);
}

#[test]
fn nan_and_infinities_decide_the_result_in_any_order() {
    assert!(sum_of(&[1.0, f64::NAN, 2.0]).value().is_nan());
    assert!(sum_of(&[f64::INFINITY, f64::NEG_INFINITY]).value().is_nan());
    assert_eq!(sum_of(&[f64::INFINITY, -1e308, -1e308]).value(), f64::INFINITY);
    assert_eq!(sum_of(&[-1.0, f64::NEG_INFINITY]).value(), f64::NEG_INFINITY);
    let mut a = sum_of(&[f64::INFINITY]);
    a.merge(&sum_of(&[f64::NEG_INFINITY]));
    assert!(a.value().is_nan());
    assert_eq!(ExactSum::new().value().to_bits(), 0.0f64.to_bits());
    assert_eq!(sum_of(&[-0.0, -0.0]).value().to_bits(), 0.0f64.to_bits(), "an exact zero is +0");
}

#[test]
fn the_inline_form_holds_what_the_module_doc_says() {
    for v in [1.0, -1.0, 0.1, 25.5, 2f64.powi(-12), 2f64.powi(62), 1e18, -9.2e18, 0.0, -0.0] {
        assert!(sum_of(&[v]).is_inline(), "{v} fits inline");
    }
    for v in [2f64.powi(63), 1e-5, 5e-324, 1e300, 2f64.powi(-65)] {
        assert!(!sum_of(&[v]).is_inline(), "{v} does not");
    }
    // The sum leaves the inline form on overflow, and its canonical bytes come back to it.
    let two62 = 2f64.powi(62);
    let mut s = sum_of(&[two62, two62]);
    assert!(!s.is_inline(), "2^63 overflowed the inline form");
    s.add(-two62);
    assert!(!s.is_inline(), "the representation stays wide");
    assert_eq!(s, sum_of(&[two62]), "the value is the same");
    assert_eq!(canonical_bytes(&s), canonical_bytes(&sum_of(&[two62])));
    assert_eq!(s.value(), two62);
}

#[test]
fn archived_sums_read_back_equal() {
    for values in [vec![1.5, 2.25], vec![1e-300, 3.0], vec![f64::NAN], vec![]] {
        let s = sum_of(&values);
        let bytes = rkyv::to_bytes::<rkyv::rancor::Error>(&s).expect("serializes");
        let back = rkyv::from_bytes::<ExactSum, rkyv::rancor::Error>(&bytes).expect("reads");
        assert_eq!(canonical_bytes(&back), canonical_bytes(&s));
    }
}
