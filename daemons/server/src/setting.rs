//! One numeric setting of the configuration file: its value or default, checked against the
//! range it may take, with an error naming the key. Shared by every section (`relay:`,
//! `console:`, `limits:`, the top level) so their range errors read the same.

use std::fmt::Display;
use std::ops::RangeInclusive;

/// `value`, or `default` when absent, if it lies in `range`; otherwise the error
/// `"{key} {value} is outside {start}..={end}"`.
pub(crate) fn bounded<T>(
    key: &str,
    value: Option<T>,
    default: T,
    range: RangeInclusive<T>,
) -> Result<T, String>
where
    T: PartialOrd + Display,
{
    let value = value.unwrap_or(default);
    if range.contains(&value) {
        Ok(value)
    } else {
        Err(format!(
            "{key} {value} is outside {}..={}",
            range.start(),
            range.end()
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::bounded;

    #[test]
    fn the_default_fills_in_and_the_range_is_inclusive() {
        assert_eq!(bounded("a.b", None, 5_u64, 1..=10), Ok(5));
        assert_eq!(bounded("a.b", Some(10_u64), 5, 1..=10), Ok(10));
        assert_eq!(bounded("a.b", Some(1_u32), 5, 1..=10), Ok(1));
        assert_eq!(
            bounded("a.b", Some(0_usize), 5, 1..=10),
            Err("a.b 0 is outside 1..=10".to_owned())
        );
        assert_eq!(
            bounded("a.b", None, 11_u64, 1..=10),
            Err("a.b 11 is outside 1..=10".to_owned())
        );
    }
}
