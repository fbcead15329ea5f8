//! Names the resolver answers for: validated before anything is written.
//!
//! A container name is one DNS label; an alias or a `domainName` is one or more labels joined
//! by dots. A label is 1-63 bytes of ASCII letters, digits, `-` and `_`, not starting or ending
//! with `-` (`_` is legal in DNS, and podman allows it in container names). Names are matched
//! case-insensitively, so they are kept in lower case.

/// Longest name in presentation form without the final dot (RFC 1035: 255 octets on the wire).
const MAX_NAME: usize = 253;
const MAX_LABEL: usize = 63;

/// Why a name was refused.
pub fn label_problem(s: &str) -> Option<&'static str> {
    if s.is_empty() {
        return Some("is empty");
    }
    if s.len() > MAX_LABEL {
        return Some("is longer than 63 bytes");
    }
    if !s
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    {
        return Some("has a character other than letters, digits, '-' and '_'");
    }
    if s.starts_with('-') || s.ends_with('-') {
        return Some("starts or ends with '-'");
    }
    None
}

/// One label, lower-cased, or why not.
pub fn label(s: &str) -> Result<String, String> {
    match label_problem(s) {
        None => Ok(s.to_ascii_lowercase()),
        Some(p) => Err(format!("{s:?} is not a DNS label: it {p}")),
    }
}

/// A name of one or more labels (one final dot allowed), lower-cased, without the final dot.
pub fn name(s: &str) -> Result<String, String> {
    let bare = s.strip_suffix('.').unwrap_or(s);
    if bare.len() > MAX_NAME {
        return Err(format!("{s:?} is longer than {MAX_NAME} bytes"));
    }
    for l in bare.split('.') {
        if let Some(p) = label_problem(l) {
            return Err(format!("{s:?} is not a DNS name: label {l:?} {p}"));
        }
    }
    Ok(bare.to_ascii_lowercase())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_at_their_edges() {
        assert_eq!(label("Web").unwrap(), "web");
        assert!(label("my_app-1").is_ok());
        assert!(label(&"a".repeat(63)).is_ok());
        for bad in ["", "-a", "a-", "a.b", "a b", "ä", "a/b", &"a".repeat(64)] {
            assert!(label(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn names_are_dotted_labels() {
        assert_eq!(name("dns.podman").unwrap(), "dns.podman");
        assert_eq!(name("DB.Internal.").unwrap(), "db.internal");
        for bad in ["", ".", "a..b", ".a", "a.-b", "a.b.."] {
            assert!(name(bad).is_err(), "{bad:?}");
        }
        let long = ["a"; 127].join(".");
        assert_eq!(long.len(), 253);
        assert!(name(&long).is_ok());
        assert!(name(&format!("{long}a")).is_err());
    }
}
