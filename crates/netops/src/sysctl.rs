//! `net.*` sysctls, read and written through `/proc/sys/net`.
//!
//! Files under `/proc/sys/net` belong to the netns of the thread that opens
//! them, so a sysctl of another netns is written with [`write_in`] (which
//! enters the netns on this thread for the open and comes back).

use std::{fs, path::PathBuf};

use crate::{validate_ifname, NetNs, NetopsError};

/// A validated sysctl key under `net.`. Interface names are kept as one
/// path component, so names with dots (`br.100`) work.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SysctlKey {
    parts: Vec<String>,
}

fn check_component(key: &str, c: &str) -> Result<(), NetopsError> {
    let bad = |reason| {
        Err(NetopsError::InvalidSysctlKey {
            key: key.to_string(),
            reason,
        })
    };
    if c.is_empty() {
        return bad("empty component");
    }
    if c == "." || c == ".." {
        return bad("'.' or '..' component");
    }
    if c.contains('/') || c.contains('\0') {
        return bad("'/' or NUL in key");
    }
    if c.chars().any(|ch| ch.is_whitespace()) {
        return bad("whitespace in key");
    }
    Ok(())
}

impl SysctlKey {
    /// Parse a dotted key such as `net.ipv4.ip_forward`. Refuses keys outside
    /// `net.`, empty components, `..`, `/` and whitespace.
    pub fn parse(key: &str) -> Result<Self, NetopsError> {
        if key.contains('/') {
            return Err(NetopsError::InvalidSysctlKey {
                key: key.to_string(),
                reason: "'/' in key",
            });
        }
        let parts: Vec<String> = key.split('.').map(str::to_string).collect();
        if parts.first().map(String::as_str) != Some("net") || parts.len() < 3 {
            return Err(NetopsError::InvalidSysctlKey {
                key: key.to_string(),
                reason: "not under net.",
            });
        }
        for p in &parts {
            check_component(key, p)?;
        }
        Ok(Self { parts })
    }

    /// `net.<family>.conf.<ifname>.<leaf>`, e.g.
    /// `SysctlKey::conf("ipv4", "cni0", "route_localnet")`. The interface
    /// name may contain dots; `family` is `ipv4` or `ipv6`.
    pub fn conf(family: &str, ifname: &str, leaf: &str) -> Result<Self, NetopsError> {
        let key = format!("net.{family}.conf.{ifname}.{leaf}");
        if family != "ipv4" && family != "ipv6" {
            return Err(NetopsError::InvalidSysctlKey {
                key,
                reason: "family must be ipv4 or ipv6",
            });
        }
        if ifname != "all" && ifname != "default" {
            validate_ifname(ifname)?;
        }
        check_component(&key, ifname)?;
        check_component(&key, leaf)?;
        if leaf.contains('.') {
            return Err(NetopsError::InvalidSysctlKey {
                key,
                reason: "'.' in leaf",
            });
        }
        Ok(Self {
            parts: vec![
                "net".into(),
                family.into(),
                "conf".into(),
                ifname.into(),
                leaf.into(),
            ],
        })
    }

    /// The file under `/proc/sys`.
    pub fn path(&self) -> PathBuf {
        let mut p = PathBuf::from("/proc/sys");
        for c in &self.parts {
            p.push(c);
        }
        p
    }
}

impl std::fmt::Display for SysctlKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.parts.join("."))
    }
}

/// Read a sysctl of the calling thread's netns (`sysctl -n KEY`), trimmed.
pub fn read(key: &SysctlKey) -> Result<String, NetopsError> {
    fs::read_to_string(key.path())
        .map(|s| s.trim().to_string())
        .map_err(|source| NetopsError::Sysctl {
            key: key.to_string(),
            netns: "current".into(),
            source,
        })
}

/// Write a sysctl of the calling thread's netns (`sysctl -w KEY=VALUE`).
pub fn write(key: &SysctlKey, value: &str) -> Result<(), NetopsError> {
    fs::write(key.path(), value.as_bytes()).map_err(|source| NetopsError::Sysctl {
        key: key.to_string(),
        netns: "current".into(),
        source,
    })
}

/// Set a sysctl of the calling thread's netns to 1 unless it already is: a read is cheaper
/// than a write (writing `ip_forward` resets every interface's forwarding flags in the
/// kernel), and most calls find it set. Returns true when it was written here.
/// Equivalent: `[ "$(sysctl -n KEY)" = 1 ] || sysctl -w KEY=1`.
pub fn ensure_one(key: &SysctlKey) -> Result<bool, NetopsError> {
    if read(key)? == "1" {
        return Ok(false);
    }
    write(key, "1")?;
    Ok(true)
}

fn in_ns<T>(ns: &NetNs, f: impl FnOnce() -> Result<T, NetopsError>) -> Result<T, NetopsError> {
    let netns = ns.path().display().to_string();
    ns.run(f)?.map_err(|e| match e {
        NetopsError::Sysctl { key, source, .. } => NetopsError::Sysctl { key, netns, source },
        other => other,
    })
}

/// Read a sysctl in `ns` (`ip netns exec NS sysctl -n KEY`).
pub fn read_in(ns: &NetNs, key: &SysctlKey) -> Result<String, NetopsError> {
    in_ns(ns, || read(key))
}

/// Write a sysctl in `ns` (`ip netns exec NS sysctl -w KEY=VALUE`).
pub fn write_in(ns: &NetNs, key: &SysctlKey, value: &str) -> Result<(), NetopsError> {
    in_ns(ns, || write(key, value))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_plain_net_keys() {
        let k = SysctlKey::parse("net.ipv4.ip_forward").unwrap();
        assert_eq!(k.path(), PathBuf::from("/proc/sys/net/ipv4/ip_forward"));
        assert_eq!(k.to_string(), "net.ipv4.ip_forward");
    }

    #[test]
    fn refuses_keys_outside_net_and_traversal() {
        for bad in [
            "kernel.hostname",
            "net",
            "net.ipv4",
            "netx.ipv4.ip_forward",
            "net.ipv4..ip_forward",
            "net.ipv4.conf/../../kernel/hostname",
            "net/ipv4/ip_forward",
            "net.ipv4.ip_forward.",
            ".net.ipv4.ip_forward",
            "net.ipv4.conf.a b.x",
        ] {
            let e = SysctlKey::parse(bad).unwrap_err();
            assert!(
                matches!(e, NetopsError::InvalidSysctlKey { .. }),
                "{bad}: {e}"
            );
        }
    }

    #[test]
    fn conf_keeps_dotted_ifname_as_one_component() {
        let k = SysctlKey::conf("ipv4", "br.100", "route_localnet").unwrap();
        assert_eq!(
            k.path(),
            PathBuf::from("/proc/sys/net/ipv4/conf/br.100/route_localnet")
        );
        assert!(SysctlKey::conf("ipv6", "all", "disable_ipv6").is_ok());
    }

    #[test]
    fn conf_refuses_bad_parts() {
        assert!(SysctlKey::conf("ipv4", "..", "x").is_err());
        assert!(SysctlKey::conf("ipv4", "a/b", "x").is_err());
        assert!(SysctlKey::conf("ipv4", "eth0", "../x").is_err());
        assert!(SysctlKey::conf("ipv4", "eth0", "a.b").is_err());
        assert!(SysctlKey::conf("kernel", "eth0", "x").is_err());
        assert!(SysctlKey::conf("ipv4", "abcdefghijklmnop", "x").is_err());
    }

    #[test]
    fn reads_a_real_key() {
        let v = read(&SysctlKey::parse("net.ipv4.ip_forward").unwrap()).unwrap();
        assert!(v == "0" || v == "1", "{v}");
    }
}
