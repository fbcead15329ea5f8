//! The DHCPv4 client side of one lease: the messages (built and read with `dhcproto`), the
//! exchanges (DISCOVER/OFFER/REQUEST/ACK, renew, release) over a [`Transport`], and the lease
//! an ACK gives, turned into the CNI result the reference answers.
//!
//! Pure apart from the transport, so the exchanges are unit-tested against a fake server.

use std::{
    net::{IpAddr, Ipv4Addr},
    time::{Duration, Instant},
};

use cni_core::{CniResult, IpConfig, Route};
use dhcproto::{
    v4::{DhcpOption, Flags, Message, MessageType, Opcode, OptionCode},
    Decodable, Decoder, Encodable,
};
use ipnetwork::{IpNetwork, Ipv4Network};

/// The reference's default when the server gives no lease time (`defaultLeaseTime`).
pub const DEFAULT_LEASE_TIME: Duration = Duration::from_secs(3600);
/// Route scope "link" (`RT_SCOPE_LINK`), for classless routes without a router.
pub const SCOPE_LINK: u32 = 253;

pub const BROADCAST_MAC: [u8; 6] = [0xff; 6];

#[derive(Debug, thiserror::Error)]
pub enum ProtoError {
    #[error("packet I/O on the container interface: {0}")]
    Io(#[from] std::io::Error),
    #[error("encoding a DHCP message: {0}")]
    Encode(String),
    #[error("no {0} from a DHCP server within the timeout")]
    Timeout(&'static str),
    #[error("the DHCP server refused the request (DHCPNAK)")]
    Nak,
    #[error("DHCP option Subnet Mask not found in DHCPACK")]
    NoSubnetMask,
    #[error("DHCPACK gives no address")]
    NoAddress,
    #[error("stopped")]
    Stopped,
}

/// Where a datagram to the server goes: from `src` to `dst`, to the link-layer address `mac`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Dest {
    pub mac: [u8; 6],
    pub src: Ipv4Addr,
    pub dst: Ipv4Addr,
}

impl Dest {
    /// Broadcast from 0.0.0.0 (no address yet).
    pub const BROADCAST: Dest = Dest {
        mac: BROADCAST_MAC,
        src: Ipv4Addr::UNSPECIFIED,
        dst: Ipv4Addr::BROADCAST,
    };

    /// Unicast from the leased address to the server that gave the lease.
    pub fn server(lease: &Lease) -> Dest {
        Dest {
            mac: lease.server_mac,
            src: lease.address.ip(),
            dst: lease.server,
        }
    }
}

/// Sends IPv4/UDP datagrams from port 68 to port 67 and receives what arrives for port 68 on
/// the container interface (an `AF_PACKET` socket in the daemon, a fake server in tests).
pub trait Transport {
    /// Send `payload` as `to` says (to port 67).
    fn send(&mut self, to: Dest, payload: &[u8]) -> std::io::Result<()>;
    /// The next DHCP payload for port 68 and the sender's link-layer address, or `None` at
    /// `deadline`.
    fn recv(&mut self, deadline: Instant) -> std::io::Result<Option<(Vec<u8>, [u8; 6])>>;
}

/// Who we are on the wire: the interface's MAC, the client id, and the options every
/// message carries (`provide`, the parameter request list).
#[derive(Debug, Clone)]
pub struct Client {
    pub mac: [u8; 6],
    pub client_id: DhcpOption,
    pub options: Vec<DhcpOption>,
    pub broadcast: bool,
    /// How long to wait for each answer (`-timeout`).
    pub timeout: Duration,
}

/// A bound lease.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    pub address: Ipv4Network,
    pub router: Option<Ipv4Addr>,
    pub server: Ipv4Addr,
    /// Where to unicast renewals: the server's (or relay's) link-layer address.
    pub server_mac: [u8; 6],
    pub lease_time: Duration,
    pub renew_after: Duration,
    pub rebind_after: Duration,
    pub classless_routes: Vec<(Ipv4Network, Ipv4Addr)>,
    pub static_routes: Vec<(Ipv4Addr, Ipv4Addr)>,
    /// When the ACK arrived.
    pub bound_at: Instant,
}

impl Lease {
    pub fn renew_at(&self) -> Instant {
        self.bound_at + self.renew_after
    }
    pub fn rebind_at(&self) -> Instant {
        self.bound_at + self.rebind_after
    }
    pub fn expires_at(&self) -> Instant {
        self.bound_at + self.lease_time
    }

    /// Read an ACK (`IPNet`, `Gateway`, timers as the reference's `commit`).
    pub fn from_ack(ack: &Message, server_mac: [u8; 6], now: Instant) -> Result<Self, ProtoError> {
        let opts = ack.opts();
        let mask = match opts.get(OptionCode::SubnetMask) {
            Some(DhcpOption::SubnetMask(m)) => *m,
            _ => return Err(ProtoError::NoSubnetMask),
        };
        let prefix = u32::from(mask).leading_ones() as u8;
        if ack.yiaddr().is_unspecified() {
            return Err(ProtoError::NoAddress);
        }
        let address =
            Ipv4Network::new(ack.yiaddr(), prefix).map_err(|_| ProtoError::NoSubnetMask)?;
        let router = match opts.get(OptionCode::Router) {
            Some(DhcpOption::Router(r)) => r.first().copied(),
            _ => None,
        };
        let server = match opts.get(OptionCode::ServerIdentifier) {
            Some(DhcpOption::ServerIdentifier(s)) => *s,
            _ => ack.siaddr(),
        };
        let secs = |code| match opts.get(code) {
            Some(
                DhcpOption::AddressLeaseTime(s) | DhcpOption::Renewal(s) | DhcpOption::Rebinding(s),
            ) => Some(Duration::from_secs(u64::from(*s))),
            _ => None,
        };
        let lease_time = secs(OptionCode::AddressLeaseTime).unwrap_or(DEFAULT_LEASE_TIME);
        let rebind_after = secs(OptionCode::Rebinding).unwrap_or(lease_time * 85 / 100);
        let renew_after = secs(OptionCode::Renewal).unwrap_or(lease_time / 2);
        let classless_routes = match opts.get(OptionCode::ClasslessStaticRoute) {
            Some(DhcpOption::ClasslessStaticRoute(v)) => v
                .iter()
                .filter_map(|(net, gw)| {
                    Ipv4Network::new(net.addr(), net.prefix_len())
                        .ok()
                        .map(|n| (n, *gw))
                })
                .collect(),
            _ => Vec::new(),
        };
        let static_routes = match opts.get(OptionCode::StaticRoutingTable) {
            Some(DhcpOption::StaticRoutingTable(v)) => v.clone(),
            _ => Vec::new(),
        };
        Ok(Self {
            address,
            router,
            server,
            server_mac,
            lease_time,
            renew_after,
            rebind_after,
            classless_routes,
            static_routes,
            bound_at: now,
        })
    }

    /// The ADD result as the reference's `Allocate` builds it: one address with the first
    /// router as gateway; routes from option 121 alone when present (on-link ones get scope
    /// link), else option 33's (classful destinations) and a default route via the router;
    /// `priority`, when not 0, on every route. No DNS (the reference gives none).
    pub fn result(&self, priority: u32) -> CniResult {
        let mut routes = Vec::new();
        if !self.classless_routes.is_empty() {
            for (net, gw) in &self.classless_routes {
                let mut r = Route::new(IpNetwork::V4(*net), None);
                if gw.is_unspecified() {
                    r.scope = Some(SCOPE_LINK);
                } else {
                    r.gw = Some(IpAddr::V4(*gw));
                }
                routes.push(r);
            }
        } else {
            for (dst, gw) in &self.static_routes {
                let prefix = classful_prefix(*dst);
                if let Ok(net) = Ipv4Network::new(*dst, prefix) {
                    routes.push(Route::new(IpNetwork::V4(net), Some(IpAddr::V4(*gw))));
                }
            }
            // The spec wants the default route listed even with a gateway given.
            if let (Some(gw), Ok(default)) =
                (self.router, Ipv4Network::new(Ipv4Addr::UNSPECIFIED, 0))
            {
                routes.push(Route::new(IpNetwork::V4(default), Some(IpAddr::V4(gw))));
            }
        }
        if priority != 0 {
            for r in &mut routes {
                r.priority = Some(priority);
            }
        }
        CniResult {
            interfaces: Vec::new(),
            ips: vec![IpConfig {
                address: IpNetwork::V4(self.address),
                gateway: self.router.map(IpAddr::V4),
                interface: None,
            }],
            routes,
            dns: Default::default(),
        }
    }
}

/// Go's `IP.DefaultMask` for option 33's destinations: class A /8, B /16, C /24, else /32...
/// Go returns no mask (nil) for class D/E; the reference then prints an invalid route, we keep
/// the host route.
fn classful_prefix(ip: Ipv4Addr) -> u8 {
    match ip.octets()[0] {
        0..=127 => 8,
        128..=191 => 16,
        192..=223 => 24,
        _ => 32,
    }
}

impl Client {
    fn message(&self, kind: MessageType, ciaddr: Ipv4Addr) -> Message {
        let mut m = Message::new(
            ciaddr,
            Ipv4Addr::UNSPECIFIED,
            Ipv4Addr::UNSPECIFIED,
            Ipv4Addr::UNSPECIFIED,
            &self.mac,
        );
        m.set_opcode(Opcode::BootRequest);
        if self.broadcast {
            m.set_flags(Flags::default().set_broadcast());
        }
        let opts = m.opts_mut();
        opts.insert(DhcpOption::MessageType(kind));
        opts.insert(self.client_id.clone());
        // `provide` options may replace the client id, as in the reference (applied last).
        for o in &self.options {
            opts.insert(o.clone());
        }
        m
    }

    fn send(&self, t: &mut dyn Transport, m: &Message, to: Dest) -> Result<(), ProtoError> {
        let bytes = m.to_vec().map_err(|e| ProtoError::Encode(e.to_string()))?;
        t.send(to, &bytes)?;
        Ok(())
    }

    /// Wait for an answer to `xid` of one of `kinds` (NAK always counts).
    fn wait(
        &self,
        t: &mut dyn Transport,
        xid: u32,
        kinds: &[MessageType],
        what: &'static str,
    ) -> Result<(Message, [u8; 6]), ProtoError> {
        let deadline = Instant::now() + self.timeout;
        loop {
            let Some((buf, mac)) = t.recv(deadline)? else {
                return Err(ProtoError::Timeout(what));
            };
            let Ok(m) = Message::decode(&mut Decoder::new(&buf)) else {
                continue;
            };
            if m.opcode() != Opcode::BootReply
                || m.xid() != xid
                || m.chaddr().get(..6) != Some(&self.mac[..])
            {
                continue;
            }
            match m.opts().msg_type() {
                Some(MessageType::Nak) => return Err(ProtoError::Nak),
                Some(k) if kinds.contains(&k) => return Ok((m, mac)),
                _ => continue,
            }
        }
    }

    /// DISCOVER, OFFER, REQUEST, ACK (`nclient4.Request`), broadcast from 0.0.0.0.
    pub fn acquire(&self, t: &mut dyn Transport) -> Result<Lease, ProtoError> {
        let discover = self.message(MessageType::Discover, Ipv4Addr::UNSPECIFIED);
        self.send(t, &discover, Dest::BROADCAST)?;
        let (offer, _) = self.wait(t, discover.xid(), &[MessageType::Offer], "DHCPOFFER")?;
        let mut request = self.message(MessageType::Request, Ipv4Addr::UNSPECIFIED);
        request.set_xid(discover.xid());
        request
            .opts_mut()
            .insert(DhcpOption::RequestedIpAddress(offer.yiaddr()));
        if let Some(DhcpOption::ServerIdentifier(s)) =
            offer.opts().get(OptionCode::ServerIdentifier)
        {
            request.opts_mut().insert(DhcpOption::ServerIdentifier(*s));
        }
        self.send(t, &request, Dest::BROADCAST)?;
        let (ack, mac) = self.wait(t, request.xid(), &[MessageType::Ack], "DHCPACK")?;
        Lease::from_ack(&ack, mac, Instant::now())
    }

    /// RENEWING: a REQUEST with `ciaddr`, unicast to the server that gave the lease.
    pub fn renew(&self, t: &mut dyn Transport, lease: &Lease) -> Result<Lease, ProtoError> {
        let ip = lease.address.ip();
        let request = self.message(MessageType::Request, ip);
        self.send(t, &request, Dest::server(lease))?;
        let (ack, mac) = self.wait(
            t,
            request.xid(),
            &[MessageType::Ack],
            "DHCPACK to a renewal",
        )?;
        Lease::from_ack(&ack, mac, Instant::now())
    }

    /// RELEASE, unicast to the server, `ciaddr` the leased address, no answer expected.
    pub fn release(&self, t: &mut dyn Transport, lease: &Lease) -> Result<(), ProtoError> {
        let ip = lease.address.ip();
        let mut m = self.message(MessageType::Release, ip);
        m.opts_mut().remove(OptionCode::ParameterRequestList);
        m.opts_mut()
            .insert(DhcpOption::ServerIdentifier(lease.server));
        self.send(t, &m, Dest::server(lease))
    }
}

#[cfg(test)]
pub(crate) mod tests;
