//! Forwarding: the upstream servers of the host's resolv.conf, asked the way glibc's stub
//! resolver asks them.
//!
//! - Upstreams: the `nameserver` lines of the resolv.conf the resolver process sees (at most
//!   three, as glibc takes; none or no file: 127.0.0.1, as glibc does), port 53. The file's
//!   identity (device, inode, size, mtime) is checked before each forwarded query (one
//!   `stat`) and the file re-read when it changed, so an edit, a new DHCP lease or
//!   systemd-resolved re-pointing the symlink shows in the next query. Our own listening
//!   addresses are skipped (a resolv.conf naming the bridge's gateway would loop).
//! - Order and time: upstreams are tried in file order, each try with its own random ID and
//!   source port, over UDP for a UDP client and over TCP for a TCP client. A reply with
//!   SERVFAIL, NOTIMP or REFUSED sends us to the next upstream (glibc does the same), and
//!   goes to the client only if no upstream does better, and then not at all when it is a
//!   REFUSED or SERVFAIL over UDP to a query without EDNS0 options: dnsmasq, which the Go
//!   dnsname runs, answers nothing then, and we match it (see
//!   [`ClientQuery::dnsmasq_withholds`]). Every query gets [`BUDGET`] (4 s):
//!   each try gets `BUDGET / number of upstreams`, at most [`MAX_TRY`] (2 s), and when every
//!   upstream stayed silent and time is left, the silent ones are asked again. glibc waits
//!   5 s for an answer before it resends (musl and busybox 2.5 s and 1-2 s but they resend,
//!   and every resend gets the same treatment), so the client sees our SERVFAIL, not its
//!   own timeout. SERVFAIL is only ever ours when no upstream answered at all.

use std::{
    net::{IpAddr, Ipv4Addr, SocketAddr, SocketAddrV6},
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpStream, UdpSocket},
    time::Instant,
};

use crate::wire::{self, Checked, ClientQuery};

/// The whole time a forwarded query may take before the client gets our SERVFAIL.
pub const BUDGET: Duration = Duration::from_secs(4);
/// The longest one try may take.
pub const MAX_TRY: Duration = Duration::from_secs(2);
/// glibc's MAXNS: it ignores `nameserver` lines after the third.
const MAXNS: usize = 3;

/// The upstream servers named by `text` (a resolv.conf), on `port`, minus `ours` (our own
/// listening sockets).
pub fn servers_of(text: &[u8], port: u16, ours: &[SocketAddr]) -> Vec<SocketAddr> {
    // Lenient, as glibc is: a line it cannot parse is skipped, not the file.
    let (conf, errors) = resolv_conf::Config::parse_with_errors(text);
    for e in errors {
        log::debug!("resolv.conf: skipped: {e}");
    }
    let mut out: Vec<SocketAddr> = conf
        .nameservers
        .iter()
        .take(MAXNS)
        .map(|ns| match ns {
            resolv_conf::ScopedIp::V4(a) => SocketAddr::new(IpAddr::V4(*a), port),
            resolv_conf::ScopedIp::V6(a, scope) => {
                let scope_id = scope
                    .as_deref()
                    .and_then(|s| {
                        s.parse::<u32>()
                            .ok()
                            .or_else(|| nix::net::if_::if_nametoindex(s).ok())
                    })
                    .unwrap_or(0);
                SocketAddr::V6(SocketAddrV6::new(*a, port, 0, scope_id))
            }
        })
        .collect();
    if out.is_empty() {
        out.push(SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), port));
    }
    out.retain(|s| {
        !ours
            .iter()
            .any(|o| o.ip() == s.ip() && o.port() == s.port())
    });
    out
}

/// The time each try gets with `n` upstreams.
pub fn per_try(n: usize) -> Duration {
    let n = u32::try_from(n.max(1)).unwrap_or(u32::MAX);
    (BUDGET / n).min(MAX_TRY)
}

type Stamp = Option<(u64, u64, u64, i64, i64)>;

fn stamp(path: &Path) -> Stamp {
    std::fs::metadata(path)
        .ok()
        .map(|m| (m.dev(), m.ino(), m.size(), m.mtime(), m.mtime_nsec()))
}

/// The upstreams of one resolv.conf, re-read when the file changes.
#[derive(Debug)]
pub struct Upstreams {
    path: PathBuf,
    port: u16,
    ours: Vec<SocketAddr>,
    stamp: Stamp,
    read: bool,
    servers: Arc<Vec<SocketAddr>>,
}

impl Upstreams {
    pub fn new(path: PathBuf, port: u16, ours: Vec<SocketAddr>) -> Self {
        Self {
            path,
            port,
            ours,
            stamp: None,
            read: false,
            servers: Arc::new(Vec::new()),
        }
    }

    /// The servers, re-reading the file first if it changed (or `force`).
    pub fn current(&mut self, force: bool) -> Arc<Vec<SocketAddr>> {
        let now = stamp(&self.path);
        if force || !self.read || now != self.stamp {
            let text = match std::fs::read(&self.path) {
                Ok(t) => t,
                Err(e) => {
                    log::warn!("{}: {e}: asking 127.0.0.1 (as glibc)", self.path.display());
                    Vec::new()
                }
            };
            let servers = servers_of(&text, self.port, &self.ours);
            log::info!("upstreams from {}: {servers:?}", self.path.display());
            self.servers = Arc::new(servers);
            self.stamp = now;
            self.read = true;
        }
        self.servers.clone()
    }
}

/// A random 16-bit query ID.
fn random_id() -> u16 {
    let mut b = [0u8; 2];
    if getrandom::fill(&mut b).is_err() {
        // The kernel's RNG does not fail after boot; the source port is random anyway.
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        return (t & 0xffff) as u16;
    }
    u16::from_be_bytes(b)
}

/// Why one try got no usable reply.
#[derive(Debug)]
enum TryError {
    Io(std::io::Error),
    Timeout,
    /// A TCP reply that is not the answer to our query.
    Mismatch,
}

impl std::fmt::Display for TryError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Io(e) => write!(f, "{e}"),
            Self::Timeout => write!(f, "no answer in time"),
            Self::Mismatch => write!(f, "answer to another question"),
        }
    }
}

/// One UDP try: a fresh socket (random source port) connected to `server`; replies that are
/// not ours are dropped and we keep listening until `deadline`. A reply is read into `limit`
/// + 1 bytes (the client's UDP size): anything longer goes to the client truncated anyway.
async fn try_udp(
    server: SocketAddr,
    q: &ClientQuery,
    limit: usize,
    deadline: Instant,
) -> Result<(Vec<u8>, Checked), TryError> {
    let id = random_id();
    let bind: SocketAddr = match server {
        SocketAddr::V4(_) => (Ipv4Addr::UNSPECIFIED, 0).into(),
        SocketAddr::V6(_) => (std::net::Ipv6Addr::UNSPECIFIED, 0).into(),
    };
    let s = UdpSocket::bind(bind).await.map_err(TryError::Io)?;
    s.connect(server).await.map_err(TryError::Io)?;
    s.send(&q.upstream_packet(id)).await.map_err(TryError::Io)?;
    let mut buf = vec![0u8; limit.saturating_add(1).min(wire::MAX_TCP)];
    loop {
        let n = tokio::time::timeout_at(deadline, s.recv(&mut buf))
            .await
            .map_err(|_| TryError::Timeout)?
            .map_err(TryError::Io)?;
        if let Some(c) = wire::check(&buf[..n], id, &q.query) {
            buf.truncate(n);
            return Ok((buf, c));
        }
        log::debug!("{server}: dropped a reply that is not ours");
    }
}

/// One TCP try: connect, one length-framed query, one length-framed reply.
async fn try_tcp(
    server: SocketAddr,
    q: &ClientQuery,
    deadline: Instant,
) -> Result<(Vec<u8>, Checked), TryError> {
    let id = random_id();
    let exchange = async {
        let mut s = TcpStream::connect(server).await?;
        let packet = q.upstream_packet(id);
        let len = u16::try_from(packet.len()).unwrap_or(u16::MAX);
        let mut framed = Vec::with_capacity(packet.len() + 2);
        framed.extend_from_slice(&len.to_be_bytes());
        framed.extend_from_slice(&packet);
        s.write_all(&framed).await?;
        let n = usize::from(s.read_u16().await?);
        let mut buf = vec![0u8; n];
        s.read_exact(&mut buf).await?;
        Ok::<_, std::io::Error>(buf)
    };
    let buf = tokio::time::timeout_at(deadline, exchange)
        .await
        .map_err(|_| TryError::Timeout)?
        .map_err(TryError::Io)?;
    let c = wire::check(&buf, id, &q.query).ok_or(TryError::Mismatch)?;
    Ok((buf, c))
}

/// What the upstreams made of a forwarded query.
#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The answer for the client.
    Reply(Vec<u8>),
    /// Every upstream that answered refused or failed the query (REFUSED, SERVFAIL) and it is
    /// one dnsmasq gives no answer to then ([`ClientQuery::dnsmasq_withholds`]): nor do we.
    Withheld,
    /// No upstream answered at all.
    Silent,
}

/// Asks `servers` for `q` (over TCP when `tcp`) and returns what the client gets, within its
/// size limit `limit`.
pub async fn forward(servers: &[SocketAddr], q: &ClientQuery, tcp: bool, limit: usize) -> Outcome {
    let start = Instant::now();
    let end = start + BUDGET;
    let each = per_try(servers.len());
    // Per upstream: still worth asking (silent so far)?
    let mut open = vec![true; servers.len()];
    // The first error reply (SERVFAIL, NOTIMP, REFUSED) the client would get, else the first
    // one dnsmasq would withhold; with whether it withholds it.
    let mut fallback: Option<(Vec<u8>, bool)> = None;
    let done = |fallback: Option<(Vec<u8>, bool)>| match fallback {
        Some((_, true)) => Outcome::Withheld,
        Some((reply, false)) => Outcome::Reply(reply),
        None => Outcome::Silent,
    };
    while open.iter().any(|o| *o) {
        for (i, server) in servers.iter().enumerate() {
            if !open[i] {
                continue;
            }
            let now = Instant::now();
            if now >= end {
                return done(fallback);
            }
            let deadline = (now + each).min(end);
            let got = if tcp {
                try_tcp(*server, q, deadline).await
            } else {
                try_udp(*server, q, limit, deadline).await
            };
            match got {
                Ok((reply, c)) if c.try_next() => {
                    log::debug!(
                        "{server}: {} for {} {}: trying the next",
                        c.metadata.response_code,
                        q.query.name(),
                        q.query.query_type()
                    );
                    open[i] = false;
                    let withhold = q.dnsmasq_withholds(c.metadata.response_code, tcp);
                    if fallback.as_ref().is_none_or(|(_, w)| *w && !withhold) {
                        fallback = Some((q.from_upstream(&reply, &c, limit), withhold));
                    }
                }
                Ok((reply, c)) => return Outcome::Reply(q.from_upstream(&reply, &c, limit)),
                Err(TryError::Timeout) => {
                    log::debug!("{server}: no answer for {}", q.query.name());
                }
                Err(e) => {
                    log::debug!("{server}: {e}");
                    // Refused connection, unreachable: not worth a second round.
                    open[i] = false;
                }
            }
        }
    }
    done(fallback)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolv_conf_is_read_like_glibc() {
        let text = b"# comment\nsearch example.org\nnameserver 192.0.2.1\n\
                     options edns0 trust-ad\nnameserver bogus\nnameserver 2001:db8::1\n\
                     nameserver 127.0.0.53\nnameserver 192.0.2.4\n";
        let s = servers_of(text, 53, &[]);
        assert_eq!(
            s,
            [
                "192.0.2.1:53".parse::<SocketAddr>().unwrap(),
                "[2001:db8::1]:53".parse().unwrap(),
                "127.0.0.53:53".parse().unwrap(),
            ],
            "three at most, bad lines skipped"
        );
        assert_eq!(
            servers_of(b"", 53, &[]),
            ["127.0.0.1:53".parse::<SocketAddr>().unwrap()],
            "none: the local machine"
        );
        let ours: SocketAddr = "10.89.0.1:53".parse().unwrap();
        assert_eq!(
            servers_of(b"nameserver 10.89.0.1\nnameserver 192.0.2.9\n", 53, &[ours]),
            ["192.0.2.9:53".parse::<SocketAddr>().unwrap()],
            "never ourselves"
        );
        let link_local = servers_of(b"nameserver fe80::1%1\n", 53, &[]);
        let SocketAddr::V6(v6) = link_local[0] else {
            panic!()
        };
        assert_eq!(v6.scope_id(), 1);
    }

    #[test]
    fn tries_fit_in_the_budget_and_glibcs_timeout() {
        assert_eq!(per_try(1), MAX_TRY);
        assert_eq!(per_try(2), MAX_TRY);
        assert!(per_try(3) * 3 <= BUDGET);
        assert_eq!(per_try(0), MAX_TRY);
        // glibc's RES_TIMEOUT is 5 s: our worst case answers before it.
        assert!(BUDGET < Duration::from_secs(5));
    }

    #[test]
    fn upstreams_follow_the_file() {
        let tmp = tempfile::tempdir().unwrap();
        let p = tmp.path().join("resolv.conf");
        std::fs::write(&p, "nameserver 192.0.2.1\n").unwrap();
        let mut u = Upstreams::new(p.clone(), 53, vec![]);
        assert_eq!(u.current(false)[0].ip().to_string(), "192.0.2.1");
        // Replaced by rename (as resolvconf and systemd do): a new inode.
        let new = tmp.path().join("new");
        std::fs::write(&new, "nameserver 192.0.2.2\n").unwrap();
        std::fs::rename(&new, &p).unwrap();
        assert_eq!(u.current(false)[0].ip().to_string(), "192.0.2.2");
        std::fs::remove_file(&p).unwrap();
        assert_eq!(u.current(false)[0].ip().to_string(), "127.0.0.1");
    }
}
