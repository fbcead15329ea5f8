//! The reference plugin-to-daemon protocol: Go's `net/rpc` over HTTP on a unix socket.
//!
//! The client writes `CONNECT /_goRPC_ HTTP/1.0` and a blank line; the server answers
//! `HTTP/1.0 200 Connected to Go RPC` and a blank line; from there each side runs one gob
//! stream (`encoding/gob`, types defined once per stream). A call is a `rpc.Request`
//! (`ServiceMethod`, `Seq`) and its argument, a `skel.CmdArgs`; the answer a `rpc.Response`
//! (`ServiceMethod`, `Seq`, `Error`) and its reply: a `current.Result` for `DHCP.Allocate`,
//! an empty struct for `DHCP.Release` and for any error. gob matches struct fields by Go field
//! name, so the structs below carry the Go names; fields one side lacks are skipped by the
//! other (Debian's 1.1 reference has no `NetnsOverride`, no route `MTU`...).
//!
//! With this, our `dhcp` plugin talks to the reference daemon and the reference plugin to our
//! daemon (both tested in `conformance/tests/dhcp.rs`).

use std::{
    io::{BufRead, BufReader, BufWriter, Write},
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    os::unix::net::UnixStream,
    path::Path,
};

use cni_core::{CniResult, IpConfig, Route};
use gobwire::{Gob, StreamDecoder, StreamEncoder};
use ipnetwork::IpNetwork;

/// net/rpc's HTTP path (`rpc.DefaultRPCPath`).
pub const RPC_PATH: &str = "/_goRPC_";
/// The status line a Go client insists on (`connected` in net/rpc).
pub const CONNECTED: &str = "HTTP/1.0 200 Connected to Go RPC";

pub const ALLOCATE: &str = "DHCP.Allocate";
pub const RELEASE: &str = "DHCP.Release";

#[derive(Debug, thiserror::Error)]
pub enum RpcError {
    #[error("dialing the DHCP daemon at {path}: {source}")]
    Dial {
        path: String,
        source: std::io::Error,
    },
    #[error("talking to the DHCP daemon: {0}")]
    Io(#[from] std::io::Error),
    #[error("DHCP daemon stream: {0}")]
    Gob(#[from] gobwire::Error),
    #[error("not a Go RPC peer: {0}")]
    Handshake(String),
    #[error("error calling {method}: {msg}")]
    Remote { method: String, msg: String },
    #[error("bad answer from the DHCP daemon: {0}")]
    Answer(String),
}

impl RpcError {
    /// The daemon is not there (no socket, or nobody listening): nothing it could hold.
    pub fn is_absent(&self) -> bool {
        matches!(self, RpcError::Dial { source, .. }
            if matches!(source.raw_os_error(), Some(libc::ENOENT | libc::ECONNREFUSED)))
    }
}

/// net/rpc's request header.
#[derive(Gob, Debug, Default, Clone, PartialEq)]
#[gob(name = "Request")]
pub struct RpcRequest {
    #[gob(name = "ServiceMethod")]
    pub service_method: String,
    #[gob(name = "Seq")]
    pub seq: u64,
}

/// net/rpc's response header.
#[derive(Gob, Debug, Default, Clone, PartialEq)]
#[gob(name = "Response")]
pub struct RpcResponse {
    #[gob(name = "ServiceMethod")]
    pub service_method: String,
    #[gob(name = "Seq")]
    pub seq: u64,
    #[gob(name = "Error")]
    pub error: String,
}

/// `skel.CmdArgs`: the plugin's whole call, as the daemon receives it.
#[derive(Gob, Debug, Default, Clone, PartialEq)]
#[gob(name = "CmdArgs")]
pub struct CmdArgs {
    #[gob(name = "ContainerID")]
    pub container_id: String,
    #[gob(name = "Netns")]
    pub netns: String,
    #[gob(name = "IfName")]
    pub ifname: String,
    #[gob(name = "Args")]
    pub args: String,
    #[gob(name = "Path")]
    pub path: String,
    #[gob(name = "NetnsOverride")]
    pub netns_override: String,
    #[gob(name = "StdinData")]
    pub stdin_data: Vec<u8>,
}

/// Go's `struct{}`: Release's reply, and the body of every error answer.
#[derive(Gob, Debug, Default, Clone, PartialEq)]
#[gob(name = "Empty")]
pub struct Empty {}

/// `net.IPNet`: 4- or 16-byte address, 4- or 16-byte mask.
#[derive(Gob, Debug, Default, Clone, PartialEq)]
#[gob(name = "IPNet")]
pub struct GoIpNet {
    #[gob(name = "IP")]
    pub ip: Vec<u8>,
    #[gob(name = "Mask")]
    pub mask: Vec<u8>,
}

#[derive(Gob, Debug, Default, Clone, PartialEq)]
#[gob(name = "Interface")]
pub struct GoInterface {
    #[gob(name = "Name")]
    pub name: String,
    #[gob(name = "Mac")]
    pub mac: String,
    #[gob(name = "Mtu")]
    pub mtu: i64,
    #[gob(name = "Sandbox")]
    pub sandbox: String,
    #[gob(name = "SocketPath")]
    pub socket_path: String,
    #[gob(name = "PciID")]
    pub pci_id: String,
}

#[derive(Gob, Debug, Default, Clone, PartialEq)]
#[gob(name = "IPConfig")]
pub struct GoIpConfig {
    #[gob(name = "Interface")]
    pub interface: Option<i64>,
    #[gob(name = "Address")]
    pub address: GoIpNet,
    #[gob(name = "Gateway")]
    pub gateway: Vec<u8>,
}

#[derive(Gob, Debug, Default, Clone, PartialEq)]
#[gob(name = "Route")]
pub struct GoRoute {
    #[gob(name = "Dst")]
    pub dst: GoIpNet,
    #[gob(name = "GW")]
    pub gw: Vec<u8>,
    #[gob(name = "MTU")]
    pub mtu: i64,
    #[gob(name = "AdvMSS")]
    pub advmss: i64,
    #[gob(name = "Priority")]
    pub priority: i64,
    #[gob(name = "Table")]
    pub table: Option<i64>,
    #[gob(name = "Scope")]
    pub scope: Option<i64>,
}

#[derive(Gob, Debug, Default, Clone, PartialEq)]
#[gob(name = "DNS")]
pub struct GoDns {
    #[gob(name = "Nameservers")]
    pub nameservers: Vec<String>,
    #[gob(name = "Domain")]
    pub domain: String,
    #[gob(name = "Search")]
    pub search: Vec<String>,
    #[gob(name = "Options")]
    pub options: Vec<String>,
}

/// `current.Result` (types/100).
#[derive(Gob, Debug, Default, Clone, PartialEq)]
#[gob(name = "Result")]
pub struct GoResult {
    #[gob(name = "CNIVersion")]
    pub cni_version: String,
    #[gob(name = "Interfaces")]
    pub interfaces: Vec<GoInterface>,
    #[gob(name = "IPs")]
    pub ips: Vec<GoIpConfig>,
    #[gob(name = "Routes")]
    pub routes: Vec<GoRoute>,
    #[gob(name = "DNS")]
    pub dns: GoDns,
}

fn ip_bytes(ip: IpAddr) -> Vec<u8> {
    match ip {
        IpAddr::V4(a) => a.octets().to_vec(),
        IpAddr::V6(a) => a.octets().to_vec(),
    }
}

/// A Go `net.IP` (nil, 4 or 16 bytes; an IPv4-mapped 16-byte form is IPv4).
fn go_ip(b: &[u8]) -> Result<Option<IpAddr>, RpcError> {
    match b.len() {
        0 => Ok(None),
        4 => Ok(Some(IpAddr::V4(Ipv4Addr::new(b[0], b[1], b[2], b[3])))),
        16 => {
            let mut o = [0u8; 16];
            o.copy_from_slice(b);
            let v6 = Ipv6Addr::from(o);
            Ok(Some(match v6.to_ipv4_mapped() {
                Some(v4) => IpAddr::V4(v4),
                None => IpAddr::V6(v6),
            }))
        }
        n => Err(RpcError::Answer(format!("an IP address of {n} bytes"))),
    }
}

impl GoIpNet {
    pub fn from_network(n: &IpNetwork) -> Self {
        let mask = match n.mask() {
            IpAddr::V4(m) => m.octets().to_vec(),
            IpAddr::V6(m) => m.octets().to_vec(),
        };
        Self {
            ip: ip_bytes(n.ip()),
            mask,
        }
    }

    pub fn to_network(&self) -> Result<IpNetwork, RpcError> {
        let ip = go_ip(&self.ip)?.ok_or_else(|| RpcError::Answer("an empty address".into()))?;
        // The mask may be 16 bytes for an IPv4 address: its last 4 count.
        let mask = if ip.is_ipv4() && self.mask.len() == 16 {
            &self.mask[12..]
        } else {
            &self.mask[..]
        };
        let ones: u32 = mask.iter().map(|b| b.count_ones()).sum();
        let contiguous = mask
            .iter()
            .flat_map(|b| (0..8).rev().map(move |i| b >> i & 1))
            .skip_while(|bit| *bit == 1)
            .all(|bit| bit == 0);
        let want = if ip.is_ipv4() { 4 } else { 16 };
        if mask.len() != want || !contiguous {
            return Err(RpcError::Answer(format!(
                "bad mask {:?} for {ip}",
                self.mask
            )));
        }
        let prefix = u8::try_from(ones).map_err(|_| RpcError::Answer("mask".into()))?;
        IpNetwork::new(ip, prefix).map_err(|e| RpcError::Answer(e.to_string()))
    }
}

fn opt_u32(v: i64) -> Option<u32> {
    u32::try_from(v).ok().filter(|n| *n != 0)
}

impl GoResult {
    /// Our result as the reference daemon sends it (no interfaces, no DNS).
    pub fn from_result(r: &CniResult) -> Self {
        Self {
            cni_version: "1.0.0".into(),
            interfaces: Vec::new(),
            ips: r
                .ips
                .iter()
                .map(|ip| GoIpConfig {
                    interface: ip.interface.and_then(|i| i64::try_from(i).ok()),
                    address: GoIpNet::from_network(&ip.address),
                    gateway: ip.gateway.map(ip_bytes).unwrap_or_default(),
                })
                .collect(),
            routes: r
                .routes
                .iter()
                .map(|rt| GoRoute {
                    dst: GoIpNet::from_network(&rt.dst),
                    gw: rt.gw.map(ip_bytes).unwrap_or_default(),
                    mtu: rt.mtu.map(i64::from).unwrap_or_default(),
                    advmss: rt.advmss.map(i64::from).unwrap_or_default(),
                    priority: rt.priority.map(i64::from).unwrap_or_default(),
                    table: rt.table.map(i64::from),
                    scope: rt.scope.map(i64::from),
                })
                .collect(),
            dns: GoDns {
                nameservers: r.dns.nameservers.clone(),
                domain: r.dns.domain.clone(),
                search: r.dns.search.clone(),
                options: r.dns.options.clone(),
            },
        }
    }

    /// The daemon's answer as our result. A gateway of `0.0.0.0` (the newer reference's
    /// on-link classless route) is no gateway.
    pub fn to_result(&self) -> Result<CniResult, RpcError> {
        let mut out = CniResult::default();
        for ip in &self.ips {
            out.ips.push(IpConfig {
                address: ip.address.to_network()?,
                gateway: go_ip(&ip.gateway)?,
                interface: None,
            });
        }
        for r in &self.routes {
            let mut route = Route::new(
                r.dst.to_network()?,
                go_ip(&r.gw)?.filter(|g| !g.is_unspecified()),
            );
            route.mtu = opt_u32(r.mtu);
            route.advmss = opt_u32(r.advmss);
            route.priority = opt_u32(r.priority);
            route.table = r.table.and_then(|t| u32::try_from(t).ok());
            route.scope = r.scope.and_then(|s| u32::try_from(s).ok());
            out.routes.push(route);
        }
        out.dns.nameservers = self.dns.nameservers.clone();
        out.dns.domain = self.dns.domain.clone();
        out.dns.search = self.dns.search.clone();
        out.dns.options = self.dns.options.clone();
        Ok(out)
    }
}

/// Read HTTP header lines up to the blank line; the first line is returned. Bounded, so a peer
/// that never ends its header cannot make us buffer without limit.
pub fn read_head<R: BufRead>(r: &mut R) -> Result<String, RpcError> {
    let mut first = None;
    let mut total = 0usize;
    loop {
        let mut line = String::new();
        let n = r.read_line(&mut line)?;
        if n == 0 {
            return Err(RpcError::Handshake(
                "connection closed in the HTTP header".into(),
            ));
        }
        total += n;
        if total > 8192 {
            return Err(RpcError::Handshake("HTTP header over 8 KiB".into()));
        }
        let line = line.trim_end_matches(['\r', '\n']).to_string();
        if line.is_empty() {
            return first.ok_or_else(|| RpcError::Handshake("empty HTTP header".into()));
        }
        if first.is_none() {
            first = Some(line);
        }
    }
}

/// One call to the daemon at `socket`: dial, CONNECT, send `method` with `args`, read the
/// answer into `reply`.
pub fn call<T: gobwire::Decode + Default>(
    socket: &Path,
    method: &str,
    args: &CmdArgs,
) -> Result<T, RpcError> {
    let stream = UnixStream::connect(socket).map_err(|source| RpcError::Dial {
        path: socket.display().to_string(),
        source,
    })?;
    let mut w = BufWriter::new(&stream);
    write!(w, "CONNECT {RPC_PATH} HTTP/1.0\n\n")?;
    w.flush()?;
    let mut r = BufReader::new(&stream);
    let status = read_head(&mut r)?;
    if status != CONNECTED {
        return Err(RpcError::Handshake(format!(
            "unexpected HTTP response {status:?}"
        )));
    }
    drop(w);
    // Each encode is one write of a whole message.
    let mut enc = StreamEncoder::new(&stream);
    enc.encode(&RpcRequest {
        service_method: method.to_string(),
        seq: 0,
    })?;
    enc.encode(args)?;
    let mut dec = StreamDecoder::new(r);
    let resp: RpcResponse = dec
        .decode()?
        .ok_or_else(|| RpcError::Answer("connection closed before the answer".into()))?;
    if !resp.error.is_empty() {
        return Err(RpcError::Remote {
            method: method.to_string(),
            msg: resp.error,
        });
    }
    dec.decode::<T>()?
        .ok_or_else(|| RpcError::Answer("connection closed before the reply".into()))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use gobwire::Encoder;

    use super::*;

    #[test]
    fn ipnet_round_trips_and_reads_go_forms() {
        for s in ["10.1.2.3/24", "fd00::5/64", "0.0.0.0/0"] {
            let n: IpNetwork = s.parse().unwrap();
            assert_eq!(GoIpNet::from_network(&n).to_network().unwrap(), n);
        }
        // Go's net.ParseIP gives 16 bytes for IPv4; masks from ParseCIDR are 4 bytes.
        let mut ip = vec![0u8; 10];
        ip.extend_from_slice(&[0xff, 0xff, 10, 0, 0, 7]);
        let n = GoIpNet {
            ip,
            mask: vec![255, 255, 255, 0],
        };
        assert_eq!(n.to_network().unwrap().to_string(), "10.0.0.7/24");
        let bad = GoIpNet {
            ip: vec![10, 0, 0, 7],
            mask: vec![255, 0, 255, 0],
        };
        assert!(bad.to_network().is_err());
    }

    #[test]
    fn result_round_trips_through_gob() {
        let mut r = CniResult::default();
        r.ips.push(IpConfig {
            address: "10.9.0.50/24".parse().unwrap(),
            gateway: Some("10.9.0.1".parse().unwrap()),
            interface: None,
        });
        let mut rt = Route::new("0.0.0.0/0".parse().unwrap(), "10.9.0.1".parse().ok());
        rt.priority = Some(100);
        r.routes.push(rt);
        let mut link = Route::new("10.8.0.0/16".parse().unwrap(), None);
        link.scope = Some(253);
        r.routes.push(link);
        let bytes = Encoder::new().encode(&GoResult::from_result(&r)).unwrap();
        let back: GoResult = StreamDecoder::new(&bytes[..]).decode().unwrap().unwrap();
        assert_eq!(back.to_result().unwrap(), r);
    }

    /// The first bytes of a net/rpc call as Go writes them: the request header's type, then
    /// its value. Checked against the layout of encoding/gob's documentation (a wireType with
    /// a StructT of two fields, `ServiceMethod` string and `Seq` uint).
    #[test]
    fn request_header_is_framed_as_go_frames_it() {
        let bytes = Encoder::new()
            .encode(&RpcRequest {
                service_method: ALLOCATE.into(),
                seq: 3,
            })
            .unwrap();
        let text = String::from_utf8_lossy(&bytes);
        assert!(
            text.contains("ServiceMethod") && text.contains("Seq"),
            "{bytes:?}"
        );
        assert!(text.contains(ALLOCATE));
        let back: RpcRequest = StreamDecoder::new(&bytes[..]).decode().unwrap().unwrap();
        assert_eq!(back.seq, 3);
    }
}
