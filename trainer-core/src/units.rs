//! Durations, sizes and bandwidths as people write them in scenario files: `"10min"`, `"2GiB"`,
//! `"400Gb/s"`. Each parser says what it would have accepted. It lives here, beside the logic
//! both backends run, so that the simulator and the GPU runner read scenarios the same way
//! from one copy.

/// Parses a duration into nanoseconds: a number and one of `ns`, `us`, `ms`, `s`, `min`, `h`,
/// The longest model time a run can represent: 2^50 ns, about 13 days. Scenario durations
/// are refused above it; computed durations (a transfer at a tiny bandwidth, compute at a
/// tiny rate) are capped at it with [`capped_ns`], and a run whose clock would pass it stops
/// with an error that says so. Sums of two such times stay far below `u64::MAX`.
pub const MAX_MODEL_TIME_NS: u64 = 1 << 50;

/// A computed duration in nanoseconds, rounded up, and capped at [`MAX_MODEL_TIME_NS`] (never
/// a wrapped or saturated `u64`); zero for a negative or not-a-number input.
pub fn capped_ns(ns: f64) -> u64 {
    if ns.is_nan() || ns <= 0.0 {
        return 0;
    }
    ns.ceil().min(MAX_MODEL_TIME_NS as f64) as u64
}

/// `d`. A bare number is refused, since nobody can tell which unit was meant.
pub fn parse_duration_ns(text: &str) -> Result<u64, String> {
    const UNITS: [(&str, f64); 7] = [
        ("ns", 1.0),
        ("us", 1e3),
        ("ms", 1e6),
        ("min", 60e9),
        ("s", 1e9),
        ("h", 3600e9),
        ("d", 86400e9),
    ];
    let expected =
        "a duration such as \"500ns\", \"10us\", \"5ms\", \"30s\", \"10min\", \"2h\" or \"54d\"";
    let (number, scale) = split_unit(text, &UNITS).ok_or_else(|| expected.to_string())?;
    let ns = number * scale;
    if !ns.is_finite() || ns < 0.0 {
        return Err(format!("{expected}, not negative"));
    }
    if ns > 1e18 {
        return Err(format!("{expected}, at most about 31 years"));
    }
    Ok(ns.round() as u64)
}

/// Parses a size into bytes: `B`, `KB`, `MB`, `GB`, `TB` (powers of 1000) or `KiB`, `MiB`,
/// `GiB`, `TiB` (powers of 1024).
pub fn parse_bytes(text: &str) -> Result<u64, String> {
    const UNITS: [(&str, f64); 9] = [
        ("KiB", 1024.0),
        ("MiB", 1048576.0),
        ("GiB", 1073741824.0),
        ("TiB", 1099511627776.0),
        ("KB", 1e3),
        ("MB", 1e6),
        ("GB", 1e9),
        ("TB", 1e12),
        ("B", 1.0),
    ];
    let expected = "a size such as \"512B\", \"64KiB\", \"2GiB\" or \"16GB\"";
    let (number, scale) = split_unit(text, &UNITS).ok_or_else(|| expected.to_string())?;
    let bytes = number * scale;
    if !bytes.is_finite() || !(0.0..=1e18).contains(&bytes) {
        return Err(format!("{expected}, between 0 and 1EB"));
    }
    Ok(bytes.round() as u64)
}

/// Parses a bandwidth into bytes per second: `Gb/s` and `Tb/s` (bits) or `GB/s`, `MB/s`,
/// `TB/s` (bytes).
pub fn parse_bandwidth_bytes_per_s(text: &str) -> Result<f64, String> {
    const UNITS: [(&str, f64); 6] = [
        ("Mb/s", 1e6 / 8.0),
        ("Gb/s", 1e9 / 8.0),
        ("Tb/s", 1e12 / 8.0),
        ("MB/s", 1e6),
        ("GB/s", 1e9),
        ("TB/s", 1e12),
    ];
    let expected = "a bandwidth such as \"400Gb/s\" or \"450GB/s\"";
    let (number, scale) = split_unit(text, &UNITS).ok_or_else(|| expected.to_string())?;
    let value = number * scale;
    if !value.is_finite() || value <= 0.0 {
        return Err(format!("{expected}, above zero"));
    }
    Ok(value)
}

/// Splits `"12.5GB/s"` into 12.5 and the scale of the longest matching unit.
fn split_unit(text: &str, units: &[(&str, f64)]) -> Option<(f64, f64)> {
    let text = text.trim();
    let split =
        text.find(|c: char| !(c.is_ascii_digit() || c == '.' || c == '-' || c == '+' || c == 'e'))?;
    let (number, unit) = text.split_at(split);
    let unit = unit.trim();
    let scale = units.iter().find(|(name, _)| *name == unit)?.1;
    let number: f64 = number.parse().ok()?;
    Some((number, scale))
}

/// Formats nanoseconds for people: `1.25 s`, `3 min 12 s`.
pub fn format_duration_ns(ns: u64) -> String {
    let s = ns as f64 / 1e9;
    if ns < 1_000 {
        format!("{ns} ns")
    } else if ns < 1_000_000 {
        format!("{:.2} us", ns as f64 / 1e3)
    } else if ns < 1_000_000_000 {
        format!("{:.2} ms", ns as f64 / 1e6)
    } else if s < 120.0 {
        format!("{s:.3} s")
    } else if s < 7200.0 {
        format!("{:.0} min {:.0} s", (s / 60.0).floor(), s % 60.0)
    } else {
        format!("{:.2} h", s / 3600.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_what_people_write() {
        assert_eq!(parse_duration_ns("10min"), Ok(600_000_000_000));
        assert_eq!(parse_duration_ns("1.5us"), Ok(1500));
        assert_eq!(parse_duration_ns("54d"), Ok(54 * 86_400_000_000_000));
        assert!(parse_duration_ns("10").is_err());
        assert!(parse_duration_ns("-1s").is_err());
        assert!(parse_duration_ns("10 parsecs").is_err());
        assert_eq!(parse_bytes("2GiB"), Ok(2 << 30));
        assert_eq!(parse_bytes("16GB"), Ok(16_000_000_000));
        assert_eq!(parse_bandwidth_bytes_per_s("400Gb/s"), Ok(50e9));
        assert_eq!(parse_bandwidth_bytes_per_s("450GB/s"), Ok(450e9));
        assert!(parse_bandwidth_bytes_per_s("-5GB/s").is_err());
        assert!(parse_bandwidth_bytes_per_s("0GB/s").is_err());
    }
}
