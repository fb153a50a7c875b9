//! `ExactSum`: the exact, order-independent sum of `f64` values behind `Sum` and `Mean`.
//!
//! Why: replay splits one partition's history into ranges folded on several cores and merges the
//! partial states, and the result must equal a serial fold byte for byte. `f64` addition is not
//! associative (`(1e16 + 1) - 1e16` is 0, `1e16 + (1 - 1e16)` is 2), so partial `f64` sums cannot
//! merge exactly. An exact sum can: every finite `f64` is an integer multiple of 2^-1074 below
//! 2^1024, so the sum of any number of them is an integer count of 2^-1074 units, and integer
//! addition is associative and commutative. The result is rounded to `f64` once, correctly (to
//! nearest, ties to even), when a query reads it.
//!
//! Two representations, one value:
//! * **Inline** (the fast path, no allocation): an `i128` count of 2^-64 units. It holds every
//!   finite value whose magnitude is in `[2^-12, 2^63)` exactly (those are multiples of 2^-64),
//!   and every other multiple of 2^-64 below 2^63: integers, cents, sensor readings. Adding one
//!   is a few integer instructions and a checked add.
//! * **Wide**: 34 little-endian 64-bit limbs in two's complement counting 2^-1074 units: 2176
//!   bits, enough for 2^64 addends of the largest finite `f64`. A sum moves there (one
//!   allocation per group, once) when an addend or the running sum does not fit inline.
//!
//! NaN and infinities are kept as flags: the result is NaN if a NaN was added or both
//! infinities were, else the infinity that was added, else the rounded finite sum. An exact zero
//! is `+0.0` (also for `-0.0` addends).
//!
//! The representation depends on the order of additions (a sum may go wide on a large partial
//! and stay wide after it shrinks back), the value never does. Equality and the digest bytes
//! (`write_canonical`) use the canonical form: inline exactly when the value fits inline.

/// Limbs of the wide form.
const LIMBS: usize = 34;
/// The wide form counts units of 2^-1074 (the smallest subnormal); the inline form of 2^-64:
/// inline `k` is wide `k << INLINE_SHIFT`.
const INLINE_SHIFT: u32 = 1074 - 64;

/// 2^-64: the unit of the inline form.
const TWO_POW_MINUS_64: f64 = f64::from_bits((1023 - 64) << 52);

const NAN: u8 = 1;
const POS_INF: u8 = 2;
const NEG_INF: u8 = 4;

/// An exact sum of `f64` values (see the module doc).
#[derive(Debug, Clone, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct ExactSum {
    /// NaN, +infinity and -infinity seen (`NAN | POS_INF | NEG_INF`).
    specials: u8,
    fixed: Fixed,
}

#[derive(Debug, Clone, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
enum Fixed {
    /// The finite sum is `k * 2^-64`.
    Inline(i128),
    /// The finite sum is this many 2^-1074 units (two's complement, least significant limb first).
    Wide(Box<[u64; LIMBS]>),
}

/// The canonical form of a value: inline exactly when it fits. A transient on the stack while
/// the digest is written, never stored, so its size does not matter.
#[allow(clippy::large_enum_variant)]
enum Canonical {
    Inline(i128),
    Wide([u64; LIMBS]),
}

impl Default for ExactSum {
    fn default() -> Self {
        ExactSum::new()
    }
}

impl PartialEq for ExactSum {
    fn eq(&self, other: &Self) -> bool {
        self.specials == other.specials && self.wide() == other.wide()
    }
}

impl ExactSum {
    pub const fn new() -> ExactSum {
        ExactSum { specials: 0, fixed: Fixed::Inline(0) }
    }

    /// Adds one value. No allocation unless the sum moves to the wide form (once per sum).
    #[inline]
    pub fn add(&mut self, v: f64) {
        if let Fixed::Inline(k) = &mut self.fixed {
            if let Some(x) = inline_of(v) {
                if let Some(sum) = k.checked_add(x) {
                    *k = sum;
                    return;
                }
            }
        }
        self.add_slow(v);
    }

    #[cold]
    fn add_slow(&mut self, v: f64) {
        if v.is_nan() {
            self.specials |= NAN;
            return;
        }
        if v.is_infinite() {
            self.specials |= if v > 0.0 { POS_INF } else { NEG_INF };
            return;
        }
        let bits = v.to_bits();
        let exponent = ((bits >> 52) & 0x7ff) as u32;
        let fraction = bits & ((1 << 52) - 1);
        // v = mantissa * 2^(position - 1074): a subnormal has exponent field 0 and no hidden bit.
        let (mantissa, position) =
            if exponent == 0 { (fraction, 0) } else { (fraction | (1 << 52), exponent - 1) };
        let limbs = self.widen();
        add_shifted(limbs, u128::from(mantissa), position, bits >> 63 == 1);
    }

    /// Adds another partial sum: the result is the sum of both sets of values, exactly.
    pub fn merge(&mut self, other: &ExactSum) {
        self.specials |= other.specials;
        if let (Fixed::Inline(a), Fixed::Inline(b)) = (&mut self.fixed, &other.fixed) {
            if let Some(sum) = a.checked_add(*b) {
                *a = sum;
                return;
            }
        }
        let limbs = self.widen();
        match &other.fixed {
            Fixed::Inline(k) => add_shifted(limbs, k.unsigned_abs(), INLINE_SHIFT, *k < 0),
            Fixed::Wide(other) => {
                let mut carry = false;
                for (a, b) in limbs.iter_mut().zip(other.iter()) {
                    let (s1, c1) = a.overflowing_add(*b);
                    let (s2, c2) = s1.overflowing_add(u64::from(carry));
                    *a = s2;
                    carry = c1 || c2;
                }
            }
        }
    }

    /// The sum rounded once to the nearest `f64` (ties to even); NaN or an infinity when one was
    /// added (NaN for both infinities); `+0.0` for an exact zero.
    pub fn value(&self) -> f64 {
        if self.specials & NAN != 0 || self.specials & (POS_INF | NEG_INF) == POS_INF | NEG_INF {
            return f64::NAN;
        }
        if self.specials & POS_INF != 0 {
            return f64::INFINITY;
        }
        if self.specials & NEG_INF != 0 {
            return f64::NEG_INFINITY;
        }
        match &self.fixed {
            // `as` rounds to nearest, ties to even; the scaling by 2^-64 is exact (the result is
            // 0 or at least 2^-64, a normal number).
            Fixed::Inline(k) => *k as f64 * TWO_POW_MINUS_64,
            Fixed::Wide(limbs) => round_wide(limbs),
        }
    }

    /// The bytes that identify the value (whatever the order of additions that produced it):
    /// the special flags, then the canonical form, tagged. For digests.
    pub fn write_canonical(&self, mut sink: impl FnMut(&[u8])) {
        sink(&[self.specials]);
        match self.canonical() {
            Canonical::Inline(k) => {
                sink(&[0]);
                sink(&k.to_le_bytes());
            }
            Canonical::Wide(limbs) => {
                sink(&[1]);
                for limb in limbs {
                    sink(&limb.to_le_bytes());
                }
            }
        }
    }

    /// True while the sum is in the inline form (for tests and allocation accounting).
    pub fn is_inline(&self) -> bool {
        matches!(self.fixed, Fixed::Inline(_))
    }

    fn widen(&mut self) -> &mut [u64; LIMBS] {
        if let Fixed::Inline(k) = self.fixed {
            let mut limbs = Box::new([0u64; LIMBS]);
            add_shifted(&mut limbs, k.unsigned_abs(), INLINE_SHIFT, k < 0);
            self.fixed = Fixed::Wide(limbs);
        }
        match &mut self.fixed {
            Fixed::Wide(limbs) => limbs,
            Fixed::Inline(_) => unreachable!("widened above"),
        }
    }

    /// The value in the wide form, on the stack.
    fn wide(&self) -> [u64; LIMBS] {
        match &self.fixed {
            Fixed::Inline(k) => {
                let mut limbs = [0u64; LIMBS];
                add_shifted(&mut limbs, k.unsigned_abs(), INLINE_SHIFT, *k < 0);
                limbs
            }
            Fixed::Wide(limbs) => **limbs,
        }
    }

    fn canonical(&self) -> Canonical {
        match &self.fixed {
            Fixed::Inline(k) => Canonical::Inline(*k),
            Fixed::Wide(limbs) => match inline_of_wide(limbs) {
                Some(k) => Canonical::Inline(k),
                None => Canonical::Wide(**limbs),
            },
        }
    }
}

/// `v` as a count of 2^-64 units, when it is finite and such a count fits an `i128` exactly.
#[inline]
fn inline_of(v: f64) -> Option<i128> {
    let bits = v.to_bits();
    let exponent = ((bits >> 52) & 0x7ff) as i32;
    let fraction = bits & ((1 << 52) - 1);
    if exponent == 0 {
        // Zeros (either sign) are 0; subnormals are far below 2^-64.
        return (fraction == 0).then_some(0);
    }
    if exponent == 0x7ff {
        return None;
    }
    let mantissa = i128::from(fraction | (1 << 52));
    // v = mantissa * 2^(exponent - 1075) = (mantissa * 2^shift) * 2^-64.
    let shift = exponent - 1075 + 64;
    let k = if shift >= 0 {
        if shift > 74 {
            // |v| >= 2^63: k would not fit with room for a sum.
            return None;
        }
        mantissa << shift
    } else {
        let down = -shift;
        if down > 52 || mantissa & ((1 << down) - 1) != 0 {
            return None; // Bits below 2^-64.
        }
        mantissa >> down
    };
    Some(if bits >> 63 == 1 { -k } else { k })
}

/// Adds (or subtracts) `magnitude * 2^shift` units to a two's complement number, in place.
fn add_shifted(limbs: &mut [u64; LIMBS], magnitude: u128, shift: u32, negative: bool) {
    let (index, bit) = ((shift / 64) as usize, shift % 64);
    // `magnitude << bit` over three limbs.
    let parts = [
        (magnitude << bit) as u64,
        ((magnitude << bit) >> 64) as u64,
        if bit == 0 { 0 } else { (magnitude >> (128 - bit)) as u64 },
    ];
    let mut carry = false;
    for (i, limb) in limbs.iter_mut().enumerate().skip(index) {
        let part = parts.get(i - index).copied().unwrap_or(0);
        if part == 0 && !carry && i >= index + 3 {
            break;
        }
        let (r, c) = if negative {
            let (a, b1) = limb.overflowing_sub(part);
            let (a, b2) = a.overflowing_sub(u64::from(carry));
            (a, b1 || b2)
        } else {
            let (a, c1) = limb.overflowing_add(part);
            let (a, c2) = a.overflowing_add(u64::from(carry));
            (a, c1 || c2)
        };
        *limb = r;
        carry = c;
    }
}

/// The wide value as an inline count of 2^-64 units, if it is one and fits.
fn inline_of_wide(limbs: &[u64; LIMBS]) -> Option<i128> {
    let (index, bit) = ((INLINE_SHIFT / 64) as usize, INLINE_SHIFT % 64);
    if limbs[..index].iter().any(|l| *l != 0) || limbs[index] & ((1 << bit) - 1) != 0 {
        return None;
    }
    // Bits [INLINE_SHIFT, INLINE_SHIFT + 128) of the number.
    let k = (u128::from(limbs[index]) >> bit)
        | (u128::from(limbs[index + 1]) << (64 - bit))
        | (u128::from(limbs[index + 2]) << (128 - bit));
    let k = k as i128;
    // Everything above must be the sign extension of `k`.
    let fill = if k < 0 { u64::MAX } else { 0 };
    let top_bits = 128 - (64 - bit) - 64; // Bits of limbs[index + 2] inside `k`.
    let above = limbs[index + 2] >> top_bits;
    let above_fill = fill >> top_bits;
    (above == above_fill && limbs[index + 3..].iter().all(|l| *l == fill)).then_some(k)
}

/// A wide value rounded to the nearest `f64`, ties to even.
fn round_wide(limbs: &[u64; LIMBS]) -> f64 {
    let negative = limbs[LIMBS - 1] >> 63 == 1;
    let mut magnitude = *limbs;
    if negative {
        // Two's complement negation: invert, add one.
        let mut carry = true;
        for limb in magnitude.iter_mut() {
            let (r, c) = (!*limb).overflowing_add(u64::from(carry));
            *limb = r;
            carry = c;
        }
    }
    let Some(top_limb) = magnitude.iter().rposition(|l| *l != 0) else {
        return 0.0;
    };
    // The highest set bit, counted in 2^-1074 units.
    let top = top_limb as u32 * 64 + 63 - magnitude[top_limb].leading_zeros();
    let sign = u64::from(negative) << 63;
    if top <= 52 {
        // Below 2^-1021: exactly a subnormal (or the smallest normals), whose encoding is the
        // unit count itself.
        return f64::from_bits(sign | magnitude[0]);
    }
    let bits_at = |lo: u32| -> u64 {
        // 64 bits of the magnitude starting at bit `lo`.
        let (i, b) = ((lo / 64) as usize, lo % 64);
        let low = magnitude[i] >> b;
        let high = if b == 0 { 0 } else { magnitude.get(i + 1).map_or(0, |h| h << (64 - b)) };
        low | high
    };
    let mut mantissa = bits_at(top - 52) & ((1 << 53) - 1);
    let mut top = top;
    if top >= 53 {
        let round = bits_at(top - 53) & 1 == 1;
        let below = top - 53;
        let sticky = magnitude[..(below / 64) as usize].iter().any(|l| *l != 0)
            || magnitude[(below / 64) as usize] & ((1u64 << (below % 64)) - 1) != 0;
        if round && (sticky || mantissa & 1 == 1) {
            mantissa += 1;
            if mantissa == 1 << 53 {
                mantissa = 1 << 52;
                top += 1;
            }
        }
    }
    let exponent = u64::from(top - 51);
    if exponent >= 0x7ff {
        return if negative { f64::NEG_INFINITY } else { f64::INFINITY };
    }
    f64::from_bits(sign | exponent << 52 | (mantissa & ((1 << 52) - 1)))
}

#[cfg(test)]
pub(crate) mod tests;
