//! Ethernet addresses.

use std::{fmt, str::FromStr};

use serde::{Deserialize, Serialize};

/// A text that is not `aa:bb:cc:dd:ee:ff` (or `aa-bb-...`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid MAC address {0:?}")]
pub struct InvalidMac(pub String);

/// An Ethernet address, printed `aa:bb:cc:dd:ee:ff` (lower case, as CNI results want).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct MacAddr(pub [u8; 6]);

impl MacAddr {
    /// From the raw bytes of `IFLA_ADDRESS`; `None` unless exactly 6 bytes.
    pub fn from_slice(b: &[u8]) -> Option<Self> {
        <[u8; 6]>::try_from(b).ok().map(Self)
    }

    /// The group bit (bit 0 of the first byte) is clear: an address one interface may own.
    pub fn is_unicast(&self) -> bool {
        self.0[0] & 1 == 0
    }
}

impl fmt::Display for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = self.0;
        write!(
            f,
            "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            b[0], b[1], b[2], b[3], b[4], b[5]
        )
    }
}

impl FromStr for MacAddr {
    type Err = InvalidMac;
    /// Six two-digit hex groups separated by `:` or `-` (either case).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || InvalidMac(s.to_string());
        let mut out = [0u8; 6];
        let mut n = 0;
        for part in s.split([':', '-']) {
            if n == 6 || part.len() != 2 || !part.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(bad());
            }
            out[n] = u8::from_str_radix(part, 16).map_err(|_| bad())?;
            n += 1;
        }
        if n != 6 {
            return Err(bad());
        }
        Ok(Self(out))
    }
}

impl TryFrom<String> for MacAddr {
    type Error = InvalidMac;
    fn try_from(s: String) -> Result<Self, InvalidMac> {
        s.parse()
    }
}

impl From<MacAddr> for String {
    fn from(m: MacAddr) -> String {
        m.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mac_round_trips_through_text_in_lower_case() {
        let m: MacAddr = "0A:58:0a:00:00:02".parse().unwrap();
        assert_eq!(m.0, [0x0a, 0x58, 0x0a, 0, 0, 2]);
        assert_eq!(m.to_string(), "0a:58:0a:00:00:02");
        assert_eq!("0a-58-0a-00-00-02".parse::<MacAddr>().unwrap(), m);
    }

    #[test]
    fn wrong_group_counts_and_digits_are_refused() {
        for bad in [
            "",
            "0a:58:0a:00:00",
            "0a:58:0a:00:00:02:03",
            "0a:58:0a:00:00:zz",
            "0a:58:0a:00:00:+1",
            "0a:58:0a:00:00:002",
        ] {
            assert!(bad.parse::<MacAddr>().is_err(), "{bad:?}");
        }
        assert_eq!(MacAddr::from_slice(&[1, 2, 3]), None);
    }

    #[test]
    fn multicast_is_not_unicast() {
        assert!(!"01:00:5e:00:00:01".parse::<MacAddr>().unwrap().is_unicast());
        assert!("0a:58:0a:00:00:05".parse::<MacAddr>().unwrap().is_unicast());
    }
}
