//! Choosing a volume size from a CSI capacity range and a backend's rules.

use crate::error::{CsiError, CsiResult};

pub const KIB: u64 = 1 << 10;
pub const MIB: u64 = 1 << 20;
pub const GIB: u64 = 1 << 30;

/// A backend's size rules.
#[derive(Clone, Copy, Debug)]
pub struct SizeRules {
    /// Sizes are multiples of this.
    pub step: u64,
    pub minimum: u64,
    pub maximum: u64,
    /// Size when the request gives none.
    pub default: u64,
}

/// The smallest size that obeys the rules, is at least `required` and
/// `floor` (e.g. a snapshot's size), and at most `limit` (0 = none).
pub fn choose(rules: SizeRules, required: u64, limit: u64, floor: u64) -> CsiResult<u64> {
    let wanted = if required == 0 && limit == 0 {
        rules.default
    } else if required == 0 {
        rules.default.min(limit)
    } else {
        required
    };
    let wanted = wanted.max(rules.minimum).max(floor);
    let size = wanted
        .checked_next_multiple_of(rules.step)
        .ok_or_else(|| CsiError::OutOfRange(format!("{wanted} bytes is too large")))?;
    if limit > 0 && size > limit {
        return Err(CsiError::OutOfRange(format!(
            "no size fits: at least {wanted} bytes in steps of {} is {size}, above limit_bytes {limit}",
            human(rules.step)
        )));
    }
    if size > rules.maximum {
        return Err(CsiError::OutOfRange(format!(
            "{size} bytes is above the largest volume this backend makes ({})",
            human(rules.maximum)
        )));
    }
    Ok(size)
}

/// Bytes as a short human string (binary units).
pub fn human(bytes: u64) -> String {
    const UNITS: [(&str, u64); 4] = [("TiB", 1 << 40), ("GiB", GIB), ("MiB", MIB), ("KiB", KIB)];
    for (unit, size) in UNITS {
        if bytes >= size && bytes.is_multiple_of(size) {
            return format!("{} {unit}", bytes / size);
        }
    }
    format!("{bytes} B")
}

#[cfg(test)]
mod tests {
    use super::*;

    const RULES: SizeRules = SizeRules {
        step: MIB,
        minimum: MIB,
        maximum: 1 << 40,
        default: GIB,
    };

    #[test]
    fn sizes_round_up_and_respect_limits() {
        assert_eq!(choose(RULES, 0, 0, 0).unwrap(), GIB);
        assert_eq!(choose(RULES, 1, 0, 0).unwrap(), MIB);
        assert_eq!(choose(RULES, MIB + 1, 0, 0).unwrap(), 2 * MIB);
        assert_eq!(choose(RULES, 0, 10 * MIB, 0).unwrap(), 10 * MIB);
        assert_eq!(choose(RULES, 0, 0, 5 * MIB).unwrap(), GIB);
        assert_eq!(choose(RULES, MIB, 0, 5 * MIB).unwrap(), 5 * MIB);
        assert!(matches!(
            choose(RULES, MIB + 1, MIB + 2, 0),
            Err(CsiError::OutOfRange(_))
        ));
        assert!(matches!(
            choose(RULES, 2 << 40, 0, 0),
            Err(CsiError::OutOfRange(_))
        ));
    }

    #[test]
    fn human_sizes() {
        assert_eq!(human(GIB), "1 GiB");
        assert_eq!(human(100 * GIB), "100 GiB");
        assert_eq!(human(1500), "1500 B");
    }
}
