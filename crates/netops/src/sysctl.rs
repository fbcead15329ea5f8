//! `net.*` sysctls, read and written through `/proc/sys/net`, and the few the plugins touch on
//! every call read over rtnetlink instead ([`forwarding`], [`ipv4_conf`]).
//!
//! Files under `/proc/sys/net` belong to the netns of the thread that opens
//! them, so a sysctl of another netns is written with [`write_in`] (which
//! enters the netns on this thread for the open and comes back).
//!
//! Why not `/proc/sys` on the hot path: the kernel keeps the `ipv4` (and `ipv6`, `core`, ...)
//! directory of every netns as a dentry of the one `/proc/sys/net`, all with the same name, so
//! they share one hash chain; a lookup from a netns compares its way past the entries of every
//! netns that opened that directory after its own (`proc_sys_compare`, under a global
//! spinlock). The host's netns is the oldest: with many pod namespaces that once touched a
//! sysctl (a runtime or another plugin writing the pod's `accept_dad`, say), each open on the
//! host costs far more than in a young netns (docs/performance.md). A request over rtnetlink does not
//! walk paths; the one write per pod that has no netlink form ([`write_fresh`], IPv6's
//! `disable_ipv6`) goes through a procfs instance of its own, whose dcache starts empty.

use std::{
    fs,
    io::{self, Write},
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
    path::PathBuf,
};

use netbase::nlwire::{self, attr, attr_bytes, NLA_F_NESTED, NLM_F_ACK, NLM_F_REQUEST};

use crate::{validate_ifname, Family, NetNs, NetopsError};

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

const RTM_NEWLINK: u16 = 16;
const RTM_GETLINK: u16 = 18;
const RTM_SETLINK: u16 = 19;
const RTM_NEWNETCONF: u16 = 80;
const RTM_GETNETCONF: u16 = 82;
const NETCONFA_IFINDEX: u16 = 1;
const NETCONFA_FORWARDING: u16 = 2;
const NETCONFA_IFINDEX_ALL: i32 = -1;
const IFLA_IFNAME: u16 = 3;
const IFLA_AF_SPEC: u16 = 26;
const IFLA_INET_CONF: u16 = 1;

fn family_byte(f: Family) -> u8 {
    match f {
        Family::V4 => libc::AF_INET as u8,
        Family::V6 => libc::AF_INET6 as u8,
    }
}

fn sysctl_err(key: impl Into<String>, source: io::Error) -> NetopsError {
    NetopsError::Sysctl {
        key: key.into(),
        netns: "current".into(),
        source,
    }
}

/// One request on a fresh `NETLINK_ROUTE` socket of the calling thread's netns; the body of
/// the first answer of type `answer` (None: the kernel acked without one).
fn route_request(kind: u16, flags: u16, body: &[u8], answer: u16) -> io::Result<Option<Vec<u8>>> {
    let sock = nlwire::Socket::open(libc::NETLINK_ROUTE)?;
    sock.send(&nlwire::message(kind, flags, 1, body))?;
    let mut out = None;
    sock.read(1, flags & NLM_F_ACK == 0, |ty, b| {
        if ty == answer && out.is_none() {
            out = Some(b.to_vec());
        }
    })?;
    Ok(out)
}

/// `net.ipv4.ip_forward` (`Family::V4`; the kernel keeps it as `conf.all.forwarding`) or
/// `net.ipv6.conf.all.forwarding` of the calling thread's netns, read with `RTM_GETNETCONF`
/// (`ip -4 netconf show dev all`): no path walk under `/proc/sys` (module doc). `None`: the
/// kernel has no such family (IPv6 disabled at boot).
pub fn forwarding(family: Family) -> Result<Option<bool>, NetopsError> {
    let key = match family {
        Family::V4 => "net.ipv4.ip_forward",
        Family::V6 => "net.ipv6.conf.all.forwarding",
    };
    let body = [
        &[family_byte(family), 0, 0, 0][..],
        &attr_bytes(NETCONFA_IFINDEX, &NETCONFA_IFINDEX_ALL.to_ne_bytes()),
    ]
    .concat();
    let answer = match route_request(RTM_GETNETCONF, NLM_F_REQUEST, &body, RTM_NEWNETCONF) {
        Ok(a) => a,
        // No handler for the family: IPv6 disabled (ipv6.disable=1).
        Err(e)
            if matches!(
                e.raw_os_error(),
                Some(libc::EOPNOTSUPP | libc::EAFNOSUPPORT)
            ) =>
        {
            return Ok(None)
        }
        Err(e) => return Err(sysctl_err(key, e)),
    };
    let value = answer.as_deref().and_then(|b| {
        let p = attr(b.get(4..)?, NETCONFA_FORWARDING)?;
        Some(i32::from_ne_bytes(p.get(..4)?.try_into().ok()?))
    });
    match value {
        Some(v) => Ok(Some(v != 0)),
        None => Err(sysctl_err(key, io::ErrorKind::InvalidData.into())),
    }
}

/// An IPv4 per-link setting, `net.ipv4.conf.LINK.NAME`, by its number in the kernel's
/// `IPV4_DEVCONF_*` (the index rtnetlink carries it under).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ipv4Conf {
    RouteLocalnet,
}

impl Ipv4Conf {
    fn id(self) -> u16 {
        match self {
            Ipv4Conf::RouteLocalnet => 26,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Ipv4Conf::RouteLocalnet => "route_localnet",
        }
    }

    fn key(self, link: &str) -> String {
        format!("net.ipv4.conf.{link}.{}", self.name())
    }
}

/// ifinfomsg for a link named by `IFLA_IFNAME` (index 0), then `more` attributes.
fn link_by_name(link: &str, more: &[u8]) -> Vec<u8> {
    let mut name = link.as_bytes().to_vec();
    name.push(0);
    let mut b = vec![0u8; 16];
    b.extend_from_slice(&attr_bytes(IFLA_IFNAME, &name));
    b.extend_from_slice(more);
    b
}

/// The value of `conf` in the `IFLA_INET_CONF` array of an `RTM_NEWLINK` body.
fn inet_conf_of(newlink: &[u8], conf: Ipv4Conf) -> Option<u32> {
    let spec = attr(newlink.get(16..)?, IFLA_AF_SPEC)?;
    let inet = attr(spec, libc::AF_INET as u16)?;
    let arr = attr(inet, IFLA_INET_CONF)?;
    let at = (usize::from(conf.id()) - 1) * 4;
    Some(u32::from_ne_bytes(arr.get(at..at + 4)?.try_into().ok()?))
}

/// `sysctl -n net.ipv4.conf.LINK.NAME` in the calling thread's netns, read with
/// `RTM_GETLINK` (`IFLA_AF_SPEC`, `IFLA_INET_CONF`): no path walk under `/proc/sys`.
pub fn ipv4_conf(link: &str, conf: Ipv4Conf) -> Result<u32, NetopsError> {
    validate_ifname(link)?;
    let key = conf.key(link);
    let body = link_by_name(link, &[]);
    let answer = route_request(RTM_GETLINK, NLM_F_REQUEST, &body, RTM_NEWLINK)
        .map_err(|e| sysctl_err(key.clone(), e))?;
    answer
        .as_deref()
        .and_then(|b| inet_conf_of(b, conf))
        .ok_or_else(|| sysctl_err(key, io::ErrorKind::InvalidData.into()))
}

/// `sysctl -w net.ipv4.conf.LINK.NAME=VALUE` in the calling thread's netns, with
/// `RTM_SETLINK` (`IFLA_AF_SPEC` / `AF_INET` / `IFLA_INET_CONF`).
pub fn set_ipv4_conf(link: &str, conf: Ipv4Conf, value: u32) -> Result<(), NetopsError> {
    validate_ifname(link)?;
    let one = attr_bytes(conf.id(), &value.to_ne_bytes());
    let inet = attr_bytes(IFLA_INET_CONF | NLA_F_NESTED, &one);
    let spec = attr_bytes(
        IFLA_AF_SPEC | NLA_F_NESTED,
        &attr_bytes(libc::AF_INET as u16 | NLA_F_NESTED, &inet),
    );
    route_request(
        RTM_SETLINK,
        NLM_F_REQUEST | NLM_F_ACK,
        &link_by_name(link, &spec),
        0,
    )
    .map(drop)
    .map_err(|e| sysctl_err(conf.key(link), e))
}

/// Set an IPv4 per-link setting to 1 unless it already is, over rtnetlink: most calls find it
/// set, and a read changes nothing. True when it was set here.
pub fn ensure_ipv4_conf_one(link: &str, conf: Ipv4Conf) -> Result<bool, NetopsError> {
    if ipv4_conf(link, conf)? == 1 {
        return Ok(false);
    }
    set_ipv4_conf(link, conf, 1)?;
    Ok(true)
}

/// A procfs instance of this process's own, detached (`fsopen("proc")`, `fsmount`): its
/// dcache starts empty, so a path under `sys/net` is looked up without the shared chains of
/// `/proc` (module doc). Needs the mount API (5.2) and CAP_SYS_ADMIN; None otherwise.
pub(crate) fn fresh_proc() -> Option<OwnedFd> {
    const FSOPEN_CLOEXEC: libc::c_uint = 1;
    const FSCONFIG_CMD_CREATE: libc::c_uint = 6;
    const FSMOUNT_CLOEXEC: libc::c_uint = 1;
    const MOUNT_ATTR_NOSUID: libc::c_uint = 0x2;
    const MOUNT_ATTR_NODEV: libc::c_uint = 0x4;
    const MOUNT_ATTR_NOEXEC: libc::c_uint = 0x8;
    let own = |r: libc::c_long| -> Option<OwnedFd> {
        // SAFETY: a non-negative result of these syscalls is a new fd owned by nothing else.
        (r >= 0).then(|| unsafe { OwnedFd::from_raw_fd(r as libc::c_int) })
    };
    // SAFETY: fsopen(2) with a NUL-terminated name; the result is checked.
    let fs = own(unsafe { libc::syscall(libc::SYS_fsopen, c"proc".as_ptr(), FSOPEN_CLOEXEC) })?;
    // SAFETY: fsconfig(2) on our fs context fd with no key or value.
    let created = unsafe {
        libc::syscall(
            libc::SYS_fsconfig,
            fs.as_raw_fd(),
            FSCONFIG_CMD_CREATE,
            std::ptr::null::<libc::c_char>(),
            std::ptr::null::<libc::c_void>(),
            0,
        )
    };
    if created < 0 {
        return None;
    }
    let attrs = MOUNT_ATTR_NOSUID | MOUNT_ATTR_NODEV | MOUNT_ATTR_NOEXEC;
    // SAFETY: fsmount(2) on our configured context; the result is checked.
    own(unsafe { libc::syscall(libc::SYS_fsmount, fs.as_raw_fd(), FSMOUNT_CLOEXEC, attrs) })
}

/// [`write`], through a procfs instance of its own when the kernel lets us make one (module
/// doc: in an old netns, a plain open under `/proc/sys/net` costs a walk past every younger
/// netns); else through `/proc/sys`. For the one sysctl written on every ADD that rtnetlink
/// cannot set, a veth's `disable_ipv6`. A refusal on the private instance (a security module
/// that labels it apart, say) is retried through `/proc/sys`; a missing key is an answer.
pub fn write_fresh(key: &SysctlKey, value: &str) -> Result<(), NetopsError> {
    // One instance per process (a pod's ADD writes on the host and in the pod).
    static FRESH: std::sync::OnceLock<Option<OwnedFd>> = std::sync::OnceLock::new();
    let Some(mnt) = FRESH.get_or_init(fresh_proc) else {
        return write(key, value);
    };
    let rel = key.path();
    let rel = rel.strip_prefix("/proc").unwrap_or(&rel);
    let opened = nix::fcntl::openat(
        mnt,
        rel,
        nix::fcntl::OFlag::O_WRONLY | nix::fcntl::OFlag::O_CLOEXEC,
        nix::sys::stat::Mode::empty(),
    );
    let res = opened
        .map_err(io::Error::from)
        .and_then(|fd| fs::File::from(fd).write_all(value.as_bytes()));
    match res {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Err(sysctl_err(key.to_string(), e)),
        Err(e) => {
            log::debug!("{key} through a private procfs: {e}; through /proc/sys");
            write(key, value)
        }
    }
}

pub(crate) fn in_ns<T>(
    ns: &NetNs,
    f: impl FnOnce() -> Result<T, NetopsError>,
) -> Result<T, NetopsError> {
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
    fn a_fresh_procfs_is_made_when_root_and_shows_this_netns_sysctls() {
        // SAFETY: geteuid(2) has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            return;
        }
        let mnt = fresh_proc().expect("fsopen/fsmount of proc as root");
        let fd = nix::fcntl::openat(
            &mnt,
            "sys/net/ipv4/ip_forward",
            nix::fcntl::OFlag::O_RDONLY,
            nix::sys::stat::Mode::empty(),
        )
        .unwrap();
        let got = io::read_to_string(fs::File::from(fd)).unwrap();
        let key = SysctlKey::parse("net.ipv4.ip_forward").unwrap();
        assert_eq!(got.trim(), read(&key).unwrap());
    }

    #[test]
    fn inet_conf_is_read_from_its_index_in_the_af_spec_array() {
        let mut arr = vec![0u8; 4 * 32];
        arr[25 * 4..26 * 4].copy_from_slice(&1u32.to_ne_bytes());
        let inet = attr_bytes(libc::AF_INET as u16, &attr_bytes(IFLA_INET_CONF, &arr));
        let mut body = vec![0u8; 16];
        body.extend_from_slice(&attr_bytes(IFLA_IFNAME, b"br0\0"));
        body.extend_from_slice(&attr_bytes(IFLA_AF_SPEC, &inet));
        assert_eq!(inet_conf_of(&body, Ipv4Conf::RouteLocalnet), Some(1));
        assert_eq!(inet_conf_of(&body[..16], Ipv4Conf::RouteLocalnet), None);
    }

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
