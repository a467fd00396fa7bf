//! Durations and bandwidths in scenario files, parsed exactly as the simulator parses them (a
//! copy of `faultline-sim`'s units, which this crate must not depend on; the conformance test
//! that reads every scenario both ways keeps the two in step).

/// Parses a duration into nanoseconds: a number and one of `ns`, `us`, `ms`, `s`, `min`, `h`,
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

/// Parses a bandwidth into bytes per second: bits (`Gb/s`) or bytes (`GB/s`), powers of 1000.
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
