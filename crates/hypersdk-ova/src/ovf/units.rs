//! Allocation units: `byte * 2^30`, `MegaBytes`, `byte*10^9`, …

/// The number of bytes in one unit of `units`, for the byte-based
/// programmatic units of DMTF DSP0004 (`byte`, `byte * 2^20`,
/// `byte * 10^6`, `byte * 1024`, products of those) and the legacy names
/// older tools write (`KiloBytes`, `MegaBytes`, `GigaBytes`, `MB`, `GB`,
/// `MiB`, …). Case and spaces do not matter. `None` for anything else,
/// including non-byte units such as `hertz * 10^6`, and on overflow.
///
/// ```
/// use hypersdk_ova::ovf::units::byte_multiplier;
/// assert_eq!(byte_multiplier("byte * 2^30"), Some(1 << 30));
/// assert_eq!(byte_multiplier("byte*10^3"), Some(1000));
/// assert_eq!(byte_multiplier("MegaBytes"), Some(1 << 20));
/// assert_eq!(byte_multiplier("hertz * 10^6"), None);
/// ```
pub fn byte_multiplier(units: &str) -> Option<u64> {
    let norm: String = units
        .chars()
        .filter(|c| !c.is_whitespace())
        .collect::<String>()
        .to_ascii_lowercase();
    let legacy = match norm.as_str() {
        "byte" | "bytes" | "b" => Some(1u64),
        "kilobyte" | "kilobytes" | "kb" | "kib" | "kbyte" | "kbytes" => Some(1 << 10),
        "megabyte" | "megabytes" | "mb" | "mib" | "mbyte" | "mbytes" => Some(1 << 20),
        "gigabyte" | "gigabytes" | "gb" | "gib" | "gbyte" | "gbytes" => Some(1 << 30),
        "terabyte" | "terabytes" | "tb" | "tib" | "tbyte" | "tbytes" => Some(1 << 40),
        _ => None,
    };
    if legacy.is_some() {
        return legacy;
    }
    let mut parts = norm.split('*');
    let base = parts.next()?;
    if base != "byte" && base != "bytes" {
        return None;
    }
    let mut mult: u64 = 1;
    for p in parts {
        let factor = if let Some((b, e)) = p.split_once('^') {
            let b: u64 = b.parse().ok()?;
            let e: u32 = e.parse().ok()?;
            b.checked_pow(e)?
        } else {
            p.parse::<u64>().ok()?
        };
        mult = mult.checked_mul(factor)?;
    }
    Some(mult)
}

/// `quantity` in `units` as bytes; `units` `None` means bytes.
///
/// ```
/// use hypersdk_ova::ovf::units::to_bytes;
/// assert_eq!(to_bytes("16", Some("byte * 2^30")), Some(16 << 30));
/// assert_eq!(to_bytes("${disk_size}", Some("byte * 2^30")), None);
/// ```
pub fn to_bytes(quantity: &str, units: Option<&str>) -> Option<u64> {
    let q: u64 = quantity.trim().parse().ok()?;
    let m = match units {
        Some(u) if !u.trim().is_empty() => byte_multiplier(u)?,
        _ => 1,
    };
    q.checked_mul(m)
}

/// The units string ovftool writes for a capacity of `bytes`: the largest
/// `byte * 2^N` (N in 30, 20, 10) that divides it, else `byte`; returns
/// `(quantity, units)`.
///
/// ```
/// use hypersdk_ova::ovf::units::capacity_units;
/// assert_eq!(capacity_units(16 << 30), (16, "byte * 2^30"));
/// assert_eq!(capacity_units(51200), (50, "byte * 2^10"));
/// assert_eq!(capacity_units(1000), (1000, "byte"));
/// ```
pub fn capacity_units(bytes: u64) -> (u64, &'static str) {
    for (shift, units) in [
        (30u32, "byte * 2^30"),
        (20, "byte * 2^20"),
        (10, "byte * 2^10"),
    ] {
        let unit = 1u64 << shift;
        if bytes >= unit && bytes.is_multiple_of(unit) {
            return (bytes >> shift, units);
        }
    }
    (bytes, "byte")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn units() {
        assert_eq!(byte_multiplier("byte"), Some(1));
        assert_eq!(byte_multiplier("byte * 2^20"), Some(1 << 20));
        assert_eq!(byte_multiplier("BYTE*2^10*2^10"), Some(1 << 20));
        assert_eq!(byte_multiplier("byte * 1024"), Some(1024));
        assert_eq!(byte_multiplier("GigaBytes"), Some(1 << 30));
        assert_eq!(byte_multiplier("byte * 2^64"), None);
        assert_eq!(byte_multiplier("bit"), None);
        assert_eq!(to_bytes(" 8 ", Some("byte * 2^20")), Some(8 << 20));
        assert_eq!(to_bytes("18446744073709551615", Some("byte * 2^1")), None);
        assert_eq!(to_bytes("10", None), Some(10));
    }
}
