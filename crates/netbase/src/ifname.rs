//! Interface names.

use std::{fmt, ops::Deref, str::FromStr};

use serde::{Deserialize, Serialize};

/// Longest interface name the kernel accepts (IFNAMSIZ - 1).
pub const IFNAMSIZ_MAX: usize = 15;

/// A name refused by [`IfName::new`], with the rule it broke.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid interface name {name:?}: {reason}")]
pub struct InvalidIfName {
    /// The name as given.
    pub name: String,
    /// The rule it broke.
    pub reason: &'static str,
}

/// A Linux interface name as the kernel accepts it (`dev_valid_name`: 1..=15 bytes, not `.` or
/// `..`, no `/`, `:` or whitespace), further limited to printable ASCII without `"` and `\`, so
/// that it can be written between double quotes in nft text and in file names as is. The
/// kernel would take `brü` or `br"x`; we refuse them before anything is created.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct IfName(String);

impl IfName {
    /// Validate `name`.
    pub fn new(name: &str) -> Result<Self, InvalidIfName> {
        let bad = |reason| InvalidIfName {
            name: name.to_owned(),
            reason,
        };
        if name.is_empty() {
            return Err(bad("empty"));
        }
        if name.len() > IFNAMSIZ_MAX {
            return Err(bad("longer than 15 bytes"));
        }
        if name == "." || name == ".." {
            return Err(bad("'.' or '..'"));
        }
        if !name
            .bytes()
            .all(|b| b.is_ascii_graphic() && !matches!(b, b'/' | b':' | b'"' | b'\\'))
        {
            return Err(bad(
                "contains '/', ':', '\"', '\\', whitespace or non-ASCII",
            ));
        }
        Ok(IfName(name.to_owned()))
    }

    /// The name.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl Deref for IfName {
    type Target = str;
    fn deref(&self) -> &str {
        &self.0
    }
}

impl AsRef<str> for IfName {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl PartialEq<str> for IfName {
    fn eq(&self, other: &str) -> bool {
        self.0 == other
    }
}

impl PartialEq<&str> for IfName {
    fn eq(&self, other: &&str) -> bool {
        self.0 == *other
    }
}

impl FromStr for IfName {
    type Err = InvalidIfName;
    fn from_str(s: &str) -> Result<Self, InvalidIfName> {
        IfName::new(s)
    }
}

impl TryFrom<String> for IfName {
    type Error = InvalidIfName;
    fn try_from(s: String) -> Result<Self, InvalidIfName> {
        IfName::new(&s)
    }
}

impl TryFrom<&str> for IfName {
    type Error = InvalidIfName;
    fn try_from(s: &str) -> Result<Self, InvalidIfName> {
        IfName::new(s)
    }
}

impl From<IfName> for String {
    fn from(n: IfName) -> String {
        n.0
    }
}

impl fmt::Display for IfName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fifteen_bytes_pass_and_sixteen_are_refused() {
        assert!(IfName::new("abcdefghijklmno").is_ok());
        assert_eq!(
            IfName::new("abcdefghijklmnop").unwrap_err().reason,
            "longer than 15 bytes"
        );
    }

    #[test]
    fn kernel_refusals_and_nft_unsafe_bytes_are_refused() {
        for bad in [
            "", ".", "..", "a/b", "a:b", "a b", "a\tb", "a\nb", "br\"x", "br\\x", "brü", "a\0b",
        ] {
            assert!(IfName::new(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn dots_dashes_and_at_signs_are_kept() {
        for good in [
            "br.100",
            "cni-podman0",
            "eth0",
            "veth0123456789a",
            "a@b",
            "x..y",
        ] {
            assert_eq!(IfName::new(good).unwrap().as_str(), good);
        }
    }

    #[test]
    fn serde_refuses_a_bad_name() {
        assert!(serde_json::from_str::<IfName>(r#""br\"x""#).is_err());
        let n: IfName = serde_json::from_str(r#""cni0""#).unwrap();
        assert_eq!(n, "cni0");
        assert_eq!(serde_json::to_string(&n).unwrap(), r#""cni0""#);
    }
}
