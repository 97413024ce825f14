//! libvirt/Linux cpuset lists: `0-3,8,10-11`.

use crate::error::{PlacementError, Result};

/// Largest CPU id accepted in a cpuset string (guards against `0-4000000000`).
pub const MAX_CPU_ID: u32 = 1 << 16;

/// Parses `0-3,8,^2` style lists into sorted, de-duplicated ids. Empty text is the empty set.
///
/// # Errors
/// [`PlacementError::Invalid`] for malformed text or ids above [`MAX_CPU_ID`].
pub fn parse(text: &str) -> Result<Vec<u32>> {
    let bad = || PlacementError::invalid(format!("bad cpuset {text:?}"));
    let mut set = std::collections::BTreeSet::new();
    let mut excluded = Vec::new();
    for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (negate, part) = match part.strip_prefix('^') {
            Some(rest) => (true, rest),
            None => (false, part),
        };
        let num = |s: &str| -> Result<u32> {
            let v: u32 = s.trim().parse().map_err(|_| bad())?;
            if v > MAX_CPU_ID {
                return Err(bad());
            }
            Ok(v)
        };
        let (lo, hi) = match part.split_once('-') {
            Some((a, b)) => (num(a)?, num(b)?),
            None => {
                let v = num(part)?;
                (v, v)
            }
        };
        if lo > hi {
            return Err(bad());
        }
        if negate {
            excluded.extend(lo..=hi);
        } else {
            set.extend(lo..=hi);
        }
    }
    for cpu in excluded {
        set.remove(&cpu);
    }
    Ok(set.into_iter().collect())
}

/// Formats sorted ids as the shortest range list: `[0,1,2,3,8]` → `0-3,8`.
#[must_use]
pub fn format(cpus: &[u32]) -> String {
    let mut sorted = cpus.to_vec();
    sorted.sort_unstable();
    sorted.dedup();
    let mut out = String::new();
    let mut i = 0;
    while i < sorted.len() {
        let start = sorted[i];
        let mut end = start;
        while i + 1 < sorted.len() && sorted[i + 1] == end + 1 {
            i += 1;
            end = sorted[i];
        }
        if !out.is_empty() {
            out.push(',');
        }
        if start == end {
            out.push_str(&start.to_string());
        } else {
            out.push_str(&format!("{start}-{end}"));
        }
        i += 1;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips() {
        assert_eq!(parse("0-3,8,10-11").unwrap(), vec![0, 1, 2, 3, 8, 10, 11]);
        assert_eq!(parse("0-7,^2-3").unwrap(), vec![0, 1, 4, 5, 6, 7]);
        assert_eq!(parse(" ").unwrap(), Vec::<u32>::new());
        assert_eq!(format(&[3, 0, 1, 2, 8, 10, 11]), "0-3,8,10-11");
        assert_eq!(format(&[]), "");
    }

    #[test]
    fn rejects_garbage() {
        for bad in ["a", "3-1", "1-", "-", "99999999", "0-70000", "1,,x"] {
            assert!(parse(bad).is_err(), "{bad}");
        }
    }
}
