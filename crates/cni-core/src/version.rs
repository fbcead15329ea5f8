//! CNI spec versions: which we speak, how they compare, what each verb needs.

use std::fmt;

use crate::error::{CniError, ErrorCode};

/// Every version the reference plugins accept, oldest first.
pub const SUPPORTED: &[&str] = &[
    "0.1.0", "0.2.0", "0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0",
];

/// The newest version we speak.
pub const CURRENT: &str = "1.1.0";

/// A parsed `major.minor.patch` spec version.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Version {
    pub major: u16,
    pub minor: u16,
    pub patch: u16,
}

impl Version {
    pub const V0_1_0: Version = Version::new(0, 1, 0);
    pub const V0_3_0: Version = Version::new(0, 3, 0);
    pub const V0_4_0: Version = Version::new(0, 4, 0);
    pub const V1_0_0: Version = Version::new(1, 0, 0);
    pub const V1_1_0: Version = Version::new(1, 1, 0);

    pub const fn new(major: u16, minor: u16, patch: u16) -> Self {
        Self {
            major,
            minor,
            patch,
        }
    }

    /// Parse `a.b.c`; anything else is `None`.
    pub fn parse(s: &str) -> Option<Self> {
        let mut it = s.split('.');
        let mut num = || -> Option<u16> {
            let p = it.next()?;
            if p.is_empty() || p.len() > 5 || !p.bytes().all(|b| b.is_ascii_digit()) {
                return None;
            }
            p.parse().ok()
        };
        let v = Self::new(num()?, num()?, num()?);
        if it.next().is_some() {
            return None;
        }
        Some(v)
    }

    /// Negotiate the config's `cniVersion`: missing means 0.1.0 (as libcni), unknown is code 1.
    pub fn negotiate(requested: Option<&str>) -> Result<Self, CniError> {
        let s = requested.unwrap_or("0.1.0");
        match Self::parse(s) {
            Some(v) if SUPPORTED.contains(&s) => Ok(v),
            _ => Err(CniError::new(
                ErrorCode::IncompatibleVersion,
                format!(
                    "incompatible CNI versions: config is {s:?}, plugin supports {}",
                    SUPPORTED.join(", ")
                ),
            )),
        }
    }

    /// Results before 0.3.0 use the `ip4`/`ip6` form.
    pub fn is_legacy_result(self) -> bool {
        self < Self::V0_3_0
    }
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}.{}", self.major, self.minor, self.patch)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_orders() {
        let v: Vec<Version> = SUPPORTED
            .iter()
            .map(|s| Version::parse(s).unwrap())
            .collect();
        assert!(v.windows(2).all(|w| w[0] < w[1]));
        assert_eq!(Version::parse("1.1.0"), Some(Version::V1_1_0));
        for bad in [
            "",
            "1",
            "1.0",
            "1.0.0.0",
            "a.b.c",
            "1.-1.0",
            "1..0",
            "99999999.0.0",
        ] {
            assert_eq!(Version::parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn missing_version_is_0_1_0() {
        assert_eq!(Version::negotiate(None).unwrap(), Version::V0_1_0);
    }

    #[test]
    fn unknown_version_is_code_1() {
        for bad in ["0.5.0", "2.0.0", "1.0", "garbage"] {
            let e = Version::negotiate(Some(bad)).unwrap_err();
            assert_eq!(e.code(), 1, "{bad}");
            assert!(e.msg.contains(bad));
        }
    }

    #[test]
    fn every_supported_version_negotiates() {
        for s in SUPPORTED {
            assert_eq!(Version::negotiate(Some(s)).unwrap().to_string(), *s);
        }
    }
}
