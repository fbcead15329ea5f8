//! `portmap`: publish hostIP:hostPort -> pod:port as nftables map elements.
//!
//! parse ([`config`]) -> bind mappings to the pod's addresses (pure) -> one element batch.
//! Ownership is tracked per (network, container id, ifname): a port held by another pod is
//! refused (code 103), DEL removes exactly this pod's elements, GC drops stale owners.

pub mod config;

use std::process::{Command as Process, Stdio};

use cni_core::{CniError, CniResult, Plugin, Request};
use config::{Dnat, Protocol};
use nftplan::{Attachment, Feature, Firewall, PortMapping};

pub struct Portmap;

fn to_nft(d: &Dnat) -> PortMapping {
    PortMapping {
        host_ip: d.host_ip,
        host_port: d.host_port,
        protocol: match d.protocol {
            Protocol::Tcp => nftplan::Protocol::Tcp,
            Protocol::Udp => nftplan::Protocol::Udp,
            Protocol::Sctp => nftplan::Protocol::Sctp,
        },
        container_ip: d.container_ip,
        container_port: d.container_port,
    }
}

/// 127.0.0.1 publishing: DNAT'd packets from the loopback address are routed out of the
/// bridge, which the kernel only allows with `route_localnet` on it. The firewall table
/// masquerades them and drops 127/8 arriving from anywhere but lo.
fn enable_route_localnet(bridge: &str) -> Result<(), CniError> {
    let key = netops::SysctlKey::conf("ipv4", bridge, "route_localnet")?;
    if netops::sysctl::read(&key)?.trim() != "1" {
        netops::sysctl::write(&key, "1")?;
    }
    Ok(())
}

fn reaches_loopback(d: &Dnat) -> bool {
    d.container_ip.is_ipv4() && d.host_ip.is_none_or(|h| h.is_loopback())
}

/// Forget the conntrack entries of removed UDP mappings, so a new pod on the same port gets
/// the traffic instead of a dead flow (the reference does the same). Best effort.
fn flush_udp_conntrack(dnats: &[Dnat]) {
    for d in dnats.iter().filter(|d| d.protocol == Protocol::Udp) {
        let family = if d.container_ip.is_ipv4() {
            "ipv4"
        } else {
            "ipv6"
        };
        let port = d.host_port.to_string();
        let status = Process::new("conntrack")
            .args(["-D", "-f", family, "-p", "udp", "--orig-port-dst", &port])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        // conntrack exits 1 when nothing matched: that is the normal case.
        if let Err(e) = status {
            log::info!("conntrack not run for udp/{port}: {e}");
        }
    }
}

impl Plugin for Portmap {
    fn name(&self) -> &'static str {
        "portmap"
    }

    fn add(&self, req: &Request) -> Result<CniResult, CniError> {
        let spec = config::parse(req)?;
        let prev = req.require_prev_result()?;
        let dnats = config::plan(&spec, &prev, &req.ifname);
        if dnats.is_empty() {
            return Ok(prev);
        }
        if dnats.iter().any(reaches_loopback) {
            match config::bridge_of(&prev) {
                Some(br) => enable_route_localnet(br)?,
                None => log::info!(
                    "{}: no host interface in prevResult: 127.0.0.1 not published",
                    req.tag()
                ),
            }
        }
        let mappings: Vec<PortMapping> = dnats.iter().map(to_nft).collect();
        Firewall::open()?.add_ports(&Attachment::of(req)?, &mappings)?;
        Ok(prev)
    }

    fn del(&self, req: &Request) -> Result<(), CniError> {
        // Mappings from the config are a hint (they need the pod address from prevResult);
        // the firewall state knows this attachment's elements without them. A config ADD
        // refused must not fail DEL too: a runtime's DEL of the chain stops at the first
        // plugin that fails (libcni), so bridge's veth and host-local's lease would stay.
        let spec = match config::parse(req) {
            Ok(spec) => Some(spec),
            Err(e) => {
                log::info!("{}: DEL goes on without the mappings: {}", req.tag(), e.msg);
                None
            }
        };
        let dnats = match (spec, req.prev_result()) {
            (Some(spec), Ok(Some(prev))) => config::plan(&spec, &prev, &req.ifname),
            _ => Vec::new(),
        };
        let mappings: Vec<PortMapping> = dnats.iter().map(to_nft).collect();
        Firewall::open()?.del_ports(&Attachment::of(req)?, &mappings)?;
        flush_udp_conntrack(&dnats);
        Ok(())
    }

    fn check(&self, req: &Request) -> Result<(), CniError> {
        let spec = config::parse(req)?;
        let prev = req.require_prev_result()?;
        if config::plan(&spec, &prev, &req.ifname).is_empty() {
            return Ok(());
        }
        let att = Attachment::of(req)?;
        let missing = Firewall::open()?.check_ports(&att)?;
        nftplan::missing_error("published ports", &att, &missing)
    }

    fn gc(&self, req: &Request) -> Result<(), CniError> {
        Ok(Firewall::open()?.gc_request(Feature::Portmap, req)?)
    }
}
