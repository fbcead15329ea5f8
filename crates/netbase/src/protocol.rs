//! L4 protocols of published ports.

use std::{fmt, str::FromStr};

use serde::{Deserialize, Serialize};

/// A protocol other than tcp, udp or sctp.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid protocol {0:?}: expected tcp, udp or sctp")]
pub struct InvalidProtocol(pub String);

/// L4 protocol of a published port.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    /// tcp
    Tcp,
    /// udp
    Udp,
    /// sctp
    Sctp,
}

impl Protocol {
    /// The keyword nft and CNI use.
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
            Protocol::Sctp => "sctp",
        }
    }

    /// IANA protocol number (`IPPROTO_*`).
    pub fn number(self) -> u8 {
        match self {
            Protocol::Tcp => 6,
            Protocol::Udp => 17,
            Protocol::Sctp => 132,
        }
    }

    /// Parse a CNI `portMappings[].protocol`: case-insensitive, empty means tcp.
    pub fn parse(s: &str) -> Result<Self, InvalidProtocol> {
        match s.to_ascii_lowercase().as_str() {
            "" | "tcp" => Ok(Protocol::Tcp),
            "udp" => Ok(Protocol::Udp),
            "sctp" => Ok(Protocol::Sctp),
            _ => Err(InvalidProtocol(s.to_owned())),
        }
    }
}

impl FromStr for Protocol {
    type Err = InvalidProtocol;
    fn from_str(s: &str) -> Result<Self, InvalidProtocol> {
        Protocol::parse(s)
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn protocol_is_case_insensitive_and_empty_means_tcp() {
        assert_eq!(Protocol::parse("UDP").unwrap(), Protocol::Udp);
        assert_eq!(Protocol::parse("").unwrap(), Protocol::Tcp);
        assert_eq!(Protocol::parse("Sctp").unwrap().number(), 132);
        assert!(Protocol::parse("icmp").is_err());
    }
}
