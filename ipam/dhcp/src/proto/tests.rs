#![allow(clippy::unwrap_used)]

use std::collections::VecDeque;

use super::*;
use crate::config;

/// A DHCP server in memory: answers DISCOVER with an OFFER of `offer`, REQUEST with an ACK
/// (or a NAK when `nak`), records every message it got with the addresses it came to.
pub(crate) struct FakeServer {
    pub offer: Ipv4Addr,
    pub nak: bool,
    pub silent: bool,
    pub extra: Vec<DhcpOption>,
    pub got: Vec<(Message, [u8; 6], Ipv4Addr, Ipv4Addr)>,
    queue: VecDeque<Vec<u8>>,
}

pub(crate) const SERVER: Ipv4Addr = Ipv4Addr::new(10, 99, 0, 1);
pub(crate) const SERVER_MAC: [u8; 6] = [2, 0, 0, 0, 0, 1];

impl FakeServer {
    pub(crate) fn new(offer: Ipv4Addr) -> Self {
        Self {
            offer,
            nak: false,
            silent: false,
            extra: Vec::new(),
            got: Vec::new(),
            queue: VecDeque::new(),
        }
    }
}

impl Transport for FakeServer {
    fn send(&mut self, to: Dest, payload: &[u8]) -> std::io::Result<()> {
        let m = Message::decode(&mut Decoder::new(payload)).unwrap();
        self.got.push((m.clone(), to.mac, to.src, to.dst));
        if self.silent {
            return Ok(());
        }
        let kind = match m.opts().msg_type().unwrap() {
            MessageType::Discover => MessageType::Offer,
            MessageType::Request if self.nak => MessageType::Nak,
            MessageType::Request => MessageType::Ack,
            _ => return Ok(()),
        };
        let mut r = Message::new_with_id(
            m.xid(),
            Ipv4Addr::UNSPECIFIED,
            self.offer,
            SERVER,
            Ipv4Addr::UNSPECIFIED,
            &m.chaddr()[..6],
        );
        r.set_opcode(Opcode::BootReply);
        let o = r.opts_mut();
        o.insert(DhcpOption::MessageType(kind));
        o.insert(DhcpOption::ServerIdentifier(SERVER));
        o.insert(DhcpOption::SubnetMask(Ipv4Addr::new(255, 255, 255, 0)));
        o.insert(DhcpOption::Router(vec![SERVER]));
        o.insert(DhcpOption::AddressLeaseTime(120));
        for e in &self.extra {
            o.insert(e.clone());
        }
        // Something for another client first: it must be skipped.
        let mut other = r.clone();
        other.set_xid(m.xid().wrapping_add(1));
        self.queue.push_back(other.to_vec().unwrap());
        self.queue.push_back(r.to_vec().unwrap());
        Ok(())
    }

    fn recv(&mut self, _deadline: Instant) -> std::io::Result<Option<(Vec<u8>, [u8; 6])>> {
        Ok(self.queue.pop_front().map(|b| (b, SERVER_MAC)))
    }
}

pub(crate) fn client() -> Client {
    Client {
        mac: [2, 0, 0, 0, 0, 9],
        client_id: config::client_id_option("ctr1/net/eth0"),
        options: config::prepare_options("", &[], &[]).unwrap(),
        broadcast: false,
        timeout: Duration::from_millis(10),
    }
}

#[test]
fn acquire_runs_discover_offer_request_ack_with_the_client_id() {
    let mut s = FakeServer::new(Ipv4Addr::new(10, 99, 0, 50));
    let lease = client().acquire(&mut s).unwrap();
    assert_eq!(lease.address.to_string(), "10.99.0.50/24");
    assert_eq!(lease.router, Some(SERVER));
    assert_eq!(lease.server_mac, SERVER_MAC);
    assert_eq!(lease.lease_time, Duration::from_secs(120));
    assert_eq!(lease.renew_after, Duration::from_secs(60));
    assert_eq!(lease.rebind_after, Duration::from_secs(102));
    let kinds: Vec<_> = s
        .got
        .iter()
        .map(|(m, ..)| m.opts().msg_type().unwrap())
        .collect();
    assert_eq!(kinds, vec![MessageType::Discover, MessageType::Request]);
    for (m, mac, src, dst) in &s.got {
        assert_eq!(
            (*mac, *src, *dst),
            (BROADCAST_MAC, Ipv4Addr::UNSPECIFIED, Ipv4Addr::BROADCAST)
        );
        assert_eq!(
            m.opts().get(OptionCode::ClientIdentifier),
            Some(&DhcpOption::ClientIdentifier(b"\0ctr1/net/eth0".to_vec()))
        );
        assert!(!m.flags().broadcast());
    }
    let req = &s.got[1].0;
    assert_eq!(
        req.opts().get(OptionCode::RequestedIpAddress),
        Some(&DhcpOption::RequestedIpAddress(Ipv4Addr::new(
            10, 99, 0, 50
        )))
    );
    assert_eq!(
        req.opts().get(OptionCode::ServerIdentifier),
        Some(&DhcpOption::ServerIdentifier(SERVER))
    );
}

#[test]
fn renew_and_release_are_unicast_to_the_server_from_the_lease() {
    let mut s = FakeServer::new(Ipv4Addr::new(10, 99, 0, 51));
    let c = client();
    let lease = c.acquire(&mut s).unwrap();
    let renewed = c.renew(&mut s, &lease).unwrap();
    assert_eq!(renewed.address, lease.address);
    c.release(&mut s, &renewed).unwrap();
    let (renew, mac, src, dst) = &s.got[2];
    assert_eq!(renew.ciaddr(), Ipv4Addr::new(10, 99, 0, 51));
    assert_eq!(
        (*mac, *src, *dst),
        (SERVER_MAC, Ipv4Addr::new(10, 99, 0, 51), SERVER)
    );
    let (rel, mac, _, dst) = &s.got[3];
    assert_eq!(rel.opts().msg_type(), Some(MessageType::Release));
    assert_eq!((*mac, *dst), (SERVER_MAC, SERVER));
    assert!(rel.opts().get(OptionCode::ClientIdentifier).is_some());
}

#[test]
fn nak_silence_and_a_missing_mask_are_errors() {
    let mut s = FakeServer::new(Ipv4Addr::new(10, 99, 0, 52));
    s.nak = true;
    assert!(matches!(client().acquire(&mut s), Err(ProtoError::Nak)));
    let mut s = FakeServer::new(Ipv4Addr::new(10, 99, 0, 52));
    s.silent = true;
    assert!(matches!(
        client().acquire(&mut s),
        Err(ProtoError::Timeout("DHCPOFFER"))
    ));
    let mut ack = Message::default();
    ack.set_yiaddr(Ipv4Addr::new(10, 0, 0, 2));
    assert!(matches!(
        Lease::from_ack(&ack, SERVER_MAC, Instant::now()),
        Err(ProtoError::NoSubnetMask)
    ));
}

#[test]
fn broadcast_flag_when_asked() {
    let mut s = FakeServer::new(Ipv4Addr::new(10, 99, 0, 53));
    let mut c = client();
    c.broadcast = true;
    c.acquire(&mut s).unwrap();
    assert!(s.got.iter().all(|(m, ..)| m.flags().broadcast()));
}

#[test]
fn result_routes_follow_the_reference() {
    let mut s = FakeServer::new(Ipv4Addr::new(10, 99, 0, 54));
    s.extra.push(DhcpOption::StaticRoutingTable(vec![(
        Ipv4Addr::new(172, 16, 0, 0),
        Ipv4Addr::new(10, 99, 0, 9),
    )]));
    let lease = client().acquire(&mut s).unwrap();
    let r = lease.result(0).to_json(cni_core::Version::V1_0_0);
    assert_eq!(
        r,
        serde_json::json!({"cniVersion": "1.0.0",
                "ips": [{"address": "10.99.0.54/24", "gateway": "10.99.0.1"}],
                "routes": [{"dst": "172.16.0.0/16", "gw": "10.99.0.9"},
                           {"dst": "0.0.0.0/0", "gw": "10.99.0.1"}],
                "dns": {}})
    );
    // Option 121 present: it alone, on-link routes with scope link; priority on each.
    let mut s = FakeServer::new(Ipv4Addr::new(10, 99, 0, 55));
    s.extra.push(DhcpOption::ClasslessStaticRoute(vec![
        ("10.50.0.0/16".parse().unwrap(), Ipv4Addr::new(10, 99, 0, 7)),
        ("10.60.0.0/24".parse().unwrap(), Ipv4Addr::UNSPECIFIED),
    ]));
    let lease = client().acquire(&mut s).unwrap();
    let r = lease.result(42);
    assert_eq!(r.routes.len(), 2);
    assert_eq!(r.routes[0].gw, Some("10.99.0.7".parse().unwrap()));
    assert_eq!(
        (r.routes[1].gw, r.routes[1].scope),
        (None, Some(SCOPE_LINK))
    );
    assert!(r.routes.iter().all(|x| x.priority == Some(42)));
}
