//! The cluster state in etcd, as one crate that every party to it uses: the overlay plugin and
//! etcd-ipam write it, the node agent (and so `cnirs agent`) reads it. Nothing here talks to
//! etcd or the kernel: record types, key names, the names and addresses every host derives the
//! same way (device names, the VXLAN device's MAC and link-local next hop, the network's
//! routing table), and the pure computation of what a host's VXLAN device needs ([`peers`]).
//!
//! - [`schema`]: `hosts/`, `networks/`, `blocks/` (what the agents watch);
//! - [`ipam`]: `ipam/<network>/...` (etcd-ipam's own keys, never watched);
//! - [`peers`]: the agent's view and the FDB entries, neighbours and routes it derives;
//! - [`node_state`]: the one local file the agent writes for the plugins of its host (its
//!   lease's last renewal, the networks, this node's blocks), read instead of etcd by an ADD.

use std::net::{IpAddr, Ipv6Addr};

pub mod ipam;
pub mod node_state;
pub mod peers;
pub mod schema;

/// `etcdPrefix` default (the conflists' key, the agent's `--etcd-prefix`).
pub const DEFAULT_PREFIX: &str = "/cnirs";

/// Largest VNI (24 bits).
pub const VNI_MAX: u32 = 16_777_215;

/// Priority of a network's lookup rule (`to RANGE lookup TABLE`): after the `local` table (0)
/// and after the internal networks' seals (9, 10: `iif BRIDGE unreachable` must stop an
/// internal network's traffic before any other network's range is looked up), before `main`
/// (32766).
pub const NET_RULE_PRIORITY: u32 = 11;

/// Priority of an internal network's lookup rules (`iif BRIDGE|VXLAN|lo to RANGE lookup
/// TABLE`): ahead of its own seal (9, 10), so its pods reach each other across hosts and
/// nothing else does.
pub const INTERNAL_NET_RULE_PRIORITY: u32 = 8;

/// `cnirsvx<vni>`: the VXLAN device of an overlay network on a host; at most 15 bytes for any
/// VNI. The agent finds the devices it programs by this name.
pub fn vxlan_name(vni: u32) -> String {
    format!("cnirsvx{vni}")
}

/// The VNI of a device named by [`vxlan_name`].
pub fn vni_of_name(name: &str) -> Option<u32> {
    name.strip_prefix("cnirsvx")?
        .parse()
        .ok()
        .filter(|v| (1..=VNI_MAX).contains(v))
}

/// The routing table of the network with `vni` on every host: its remote blocks, its range
/// on the bridge, `unreachable default`. `0x63` ('c') in the top byte keeps it clear of the
/// tables people number by hand (and of 253-255).
pub fn route_table(vni: u32) -> u32 {
    0x6300_0000 | (vni & 0x00ff_ffff)
}

fn fnv1a(parts: &[&[u8]]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for p in parts {
        for b in p.iter() {
            h ^= u64::from(*b);
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
    h
}

/// The MAC of the VXLAN device of the network `vni` on the host whose VTEP is `vtep`:
/// `02:` (locally administered, unicast) + 5 bytes of FNV-1a over (VNI, VTEP). Every host
/// computes every other host's, so nothing needs to publish it. Two hosts of one network
/// collide with a probability of n^2 / 2^41 (about 1e-5 at 5,000 hosts); the agent reports a
/// collision it sees.
pub fn vxlan_mac(vni: u32, vtep: IpAddr) -> [u8; 6] {
    let addr: Vec<u8> = match vtep {
        IpAddr::V4(v) => v.octets().to_vec(),
        IpAddr::V6(v) => v.octets().to_vec(),
    };
    let h = fnv1a(&[b"cnirs-vxlan", &vni.to_be_bytes(), &addr]).to_be_bytes();
    [0x02, h[0], h[1], h[2], h[3], h[4]]
}

/// The IPv6 link-local address the kernel gives a device with `mac` (EUI-64: the U/L bit
/// flipped, `ff:fe` in the middle). The next hop towards a remote host: IPv4 routes use it
/// too (`via inet6`), so one neighbour entry serves both families.
pub fn link_local(mac: [u8; 6]) -> Ipv6Addr {
    Ipv6Addr::new(
        0xfe80,
        0,
        0,
        0,
        u16::from_be_bytes([mac[0] ^ 0x02, mac[1]]),
        u16::from_be_bytes([mac[2], 0xff]),
        u16::from_be_bytes([0xfe, mac[3]]),
        u16::from_be_bytes([mac[4], mac[5]]),
    )
}

/// The gateway MAC every host gives the network's bridge: `02:63:6e:` + the VNI. With
/// `isGateway`, every host's bridge holds the same gateway address and this MAC: a pod's
/// gateway is always its own host.
pub fn gateway_mac(vni: u32) -> [u8; 6] {
    let v = vni.to_be_bytes();
    [0x02, 0x63, 0x6e, v[1], v[2], v[3]]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_names_round_trip_and_fit_ifnamsiz() {
        assert_eq!(vni_of_name(&vxlan_name(42)), Some(42));
        assert_eq!(vxlan_name(VNI_MAX).len(), 15);
        assert_eq!(vni_of_name("cnirsvx0"), None);
        assert_eq!(vni_of_name("cnirsvx16777216"), None);
        assert_eq!(vni_of_name("cnirsbr42"), None);
    }

    #[test]
    fn the_derived_mac_is_local_unicast_stable_and_per_vni_and_vtep() {
        let a = vxlan_mac(42, "10.240.0.1".parse().unwrap());
        assert_eq!(a[0], 0x02);
        assert_eq!(a, vxlan_mac(42, "10.240.0.1".parse().unwrap()));
        assert_ne!(a, vxlan_mac(43, "10.240.0.1".parse().unwrap()));
        assert_ne!(a, vxlan_mac(42, "10.240.0.2".parse().unwrap()));
        assert_ne!(a, vxlan_mac(42, "fd00::1".parse().unwrap()));
        // No collision among a thousand hosts of one network.
        let macs: std::collections::BTreeSet<[u8; 6]> = (0..1000u32)
            .map(|i| vxlan_mac(7, std::net::Ipv4Addr::from(0x0af1_0000 + i).into()))
            .collect();
        assert_eq!(macs.len(), 1000);
    }

    #[test]
    fn link_local_is_what_the_kernel_derives_from_the_mac() {
        // `ip link add x address 02:11:22:33:44:55 ...` gets fe80::11:22ff:fe33:4455.
        assert_eq!(
            link_local([0x02, 0x11, 0x22, 0x33, 0x44, 0x55]).to_string(),
            "fe80::11:22ff:fe33:4455"
        );
        assert_eq!(
            link_local([0x0a, 0x58, 0x0a, 0x01, 0x00, 0x02]).to_string(),
            "fe80::858:aff:fe01:2"
        );
    }

    #[test]
    fn tables_and_gateway_macs_derive_from_the_vni() {
        assert_eq!(route_table(42), 0x6300_002a);
        assert_ne!(route_table(1), route_table(2));
        assert_eq!(gateway_mac(0x01_02_03), [2, 0x63, 0x6e, 1, 2, 3]);
    }
}
