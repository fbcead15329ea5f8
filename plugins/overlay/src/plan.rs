//! The overlay's plan, pure: the bridge plugin's plan ([`bridge_plugin::plan::build_shaped`])
//! shaped for a routed overlay, plus the network's own host ops ([`network_ops`]).
//!
//! On every host, for network N with VNI v (table T = [`cluster::route_table`]):
//!
//! ```text
//! cnirsbrV   bridge, MAC 02:63:6e:VNI, the range's gateway (GW/range prefix), send_redirects 0
//! cnirsvxV   VXLAN, not a bridge port, MAC from (VNI, VTEP), local VTEP, nolearning
//! table T    RANGE dev cnirsbrV; unreachable default; (the agent adds the remote blocks)
//! rules      11: to RANGE lookup T                     (internal: 8: iif cnirsbrV / cnirsvxV / lo
//!                                                       to RANGE lookup T; 10: iif cnirsvxV
//!                                                       unreachable, and the bridge's seal)
//! pod        ADDR/block-prefix, default via GW onlink  (or RANGE via GW onlink)
//! ```

use std::net::IpAddr;

use bridge_plugin::{
    config::BridgeSpec,
    plan::{self, Ids, KernelView, Plan, Shape},
};
use cluster::{
    ipam::{BLOCK_PREFIX_V4, BLOCK_PREFIX_V6},
    route_table, vxlan_mac, INTERNAL_NET_RULE_PRIORITY, NET_RULE_PRIORITY,
};
use cni_core::{CniResult, IfName};
use ipnetwork::IpNetwork;
use netops::{
    MacAddr, Op, RuleAction, RuleSpec, SysctlKey, TableRoute, TableTarget, VxlanSpec,
    SEAL_RULE_PRIORITY,
};

use crate::{config::OverlaySpec, error::OverlayError};

/// The host's underlay: its interface and this host's VTEP address on it.
#[derive(Debug, Clone)]
pub struct Underlay {
    pub link: netops::Link,
    pub vtep: IpAddr,
}

/// What the plan depends on besides the bridge's view: the network's VXLAN device on this host.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HostView {
    pub bridge: KernelView,
    /// The VXLAN device, if it exists: (VNI, local address, MAC).
    pub vxlan: Option<(Option<u32>, Option<IpAddr>, Option<MacAddr>)>,
}

/// The VXLAN device this host's network needs.
pub fn vxlan_spec(spec: &OverlaySpec, ul: &Underlay, mtu: u32) -> VxlanSpec {
    VxlanSpec {
        name: spec.vxlan.clone(),
        vni: spec.vni,
        local: ul.vtep,
        underlay: Some(ul.link.index),
        port: netops::VXLAN_PORT,
        learning: false,
        mtu: Some(mtu),
        mac: Some(MacAddr(vxlan_mac(spec.vni, ul.vtep))),
    }
}

/// A device of that name that is not this network's is refused before anything is done.
pub fn preflight(spec: &OverlaySpec, ul: &Underlay, view: &HostView) -> Result<(), OverlayError> {
    let Some((vni, local, mac)) = view.vxlan else {
        return Ok(());
    };
    let want_mac = MacAddr(vxlan_mac(spec.vni, ul.vtep));
    if vni != Some(spec.vni) || local != Some(ul.vtep) || mac != Some(want_mac) {
        return Err(OverlayError::DeviceMismatch {
            name: spec.vxlan.clone(),
            want: format!("vxlan id {} local {} address {want_mac}", spec.vni, ul.vtep),
            have: format!("id {vni:?} local {local:?} address {mac:?}"),
        });
    }
    Ok(())
}

fn families(spec: &OverlaySpec) -> Vec<bool> {
    let mut f = Vec::new();
    for v6 in [false, true] {
        if spec.subnets.iter().any(|s| s.is_ipv6() == v6) {
            f.push(v6);
        }
    }
    f
}

/// `0.0.0.0/0` or `::/0`.
fn default_of(v6: bool) -> IpNetwork {
    let ip = if v6 {
        IpAddr::from([0u16; 8])
    } else {
        IpAddr::from([0u8; 4])
    };
    // A /0 of an address is always valid; the fallback is never taken.
    IpNetwork::new(ip, 0).unwrap_or_else(|_| IpNetwork::from(ip))
}

/// The network's routes in its table: its range on the bridge, nothing else reachable.
pub fn table_routes(spec: &OverlaySpec) -> Vec<TableRoute> {
    let table = route_table(spec.vni);
    let mut out: Vec<TableRoute> = spec
        .subnets
        .iter()
        .map(|s| TableRoute {
            table,
            dst: *s,
            target: TableTarget::Dev(spec.bridge.clone()),
        })
        .collect();
    for v6 in families(spec) {
        out.push(TableRoute {
            table,
            dst: default_of(v6),
            target: TableTarget::Unreachable,
        });
    }
    out
}

/// The network's rules: its range is looked up in its table (from anywhere; an internal
/// network only from its bridge, its VXLAN device and the host itself, and nothing routed out
/// of its VXLAN device).
pub fn rules(spec: &OverlaySpec) -> Vec<RuleSpec> {
    let table = route_table(spec.vni);
    let mut out = Vec::new();
    for s in &spec.subnets {
        let iifs: Vec<Option<String>> = if spec.internal {
            vec![
                Some(spec.bridge.clone()),
                Some(spec.vxlan.clone()),
                Some("lo".to_string()),
            ]
        } else {
            vec![None]
        };
        let priority = if spec.internal {
            INTERNAL_NET_RULE_PRIORITY
        } else {
            NET_RULE_PRIORITY
        };
        for iif in iifs {
            out.push(RuleSpec {
                v6: s.is_ipv6(),
                priority,
                iif,
                dst: Some(*s),
                action: RuleAction::Lookup(table),
            });
        }
    }
    if spec.internal {
        for v6 in [false, true] {
            out.push(RuleSpec {
                v6,
                priority: SEAL_RULE_PRIORITY,
                iif: Some(spec.vxlan.clone()),
                dst: None,
                action: RuleAction::Unreachable,
            });
        }
    }
    out
}

/// The network's host ops: the bridge routes between blocks (no redirects), the VXLAN device
/// when it is missing, its table and its rules. Each exists-already is kept and not undone.
pub fn network_ops(
    spec: &OverlaySpec,
    ul: &Underlay,
    mtu: u32,
    view: &HostView,
) -> Result<Vec<Op>, OverlayError> {
    let mut ops = Vec::new();
    // Pods of different blocks on one bridge are routed through the host and back: no ICMP
    // redirect (the kernel sends one if the bridge's or `all`'s switch is on).
    for key in [
        format!("net.ipv4.conf.{}.send_redirects", spec.bridge),
        "net.ipv4.conf.all.send_redirects".to_string(),
    ] {
        ops.push(Op::SetSysctl {
            key: SysctlKey::parse(&key)?,
            value: "0".into(),
        });
    }
    let vx = IfName::new(&spec.vxlan).map_err(netops::NetopsError::from)?;
    if view.vxlan.is_none() {
        ops.push(Op::CreateVxlan {
            spec: vxlan_spec(spec, ul, mtu),
        });
    }
    ops.push(Op::SetUp {
        ns: netops::Ns::Host,
        link: vx,
    });
    ops.extend(
        table_routes(spec)
            .into_iter()
            .map(|route| Op::AddTableRoute { route }),
    );
    ops.extend(rules(spec).into_iter().map(|rule| Op::AddRule { rule }));
    Ok(ops)
}

/// What removes the network from this host with its last pod: its rules, its table's routes,
/// its VXLAN device (its FDB entries, neighbours and block routes go with it).
pub fn teardown_ops(spec: &OverlaySpec) -> Vec<Op> {
    let mut ops: Vec<Op> = rules(spec)
        .into_iter()
        .map(|rule| Op::DelRule { rule })
        .collect();
    ops.extend(
        table_routes(spec)
            .into_iter()
            .map(|route| Op::DelTableRoute { route }),
    );
    if let Ok(link) = IfName::new(&spec.vxlan) {
        ops.push(Op::DeleteLink {
            ns: netops::Ns::Host,
            link,
        });
    }
    ops
}

/// The whole ADD plan: the bridge's, shaped (the gateway MAC, the pod's block as its on-link
/// prefix, the range through the gateway without isDefaultGateway, the network's host ops,
/// the VXLAN device as the bridge's peer in the firewall).
#[allow(clippy::too_many_arguments)]
pub fn build(
    spec: &OverlaySpec,
    bspec: &BridgeSpec,
    ids: &Ids,
    ipam: &CniResult,
    view: &HostView,
    ul: &Underlay,
    mtu: u32,
) -> Result<Plan, OverlayError> {
    let shape = Shape {
        bridge_mac: Some(MacAddr(cluster::gateway_mac(spec.vni))),
        pod_prefix: Some((BLOCK_PREFIX_V4, BLOCK_PREFIX_V6)),
        route_subnets: !spec.default_gateway,
        host_ops: network_ops(spec, ul, mtu, view)?,
        peers: vec![IfName::new(&spec.vxlan).map_err(netops::NetopsError::from)?],
    };
    Ok(plan::build_shaped(bspec, ids, ipam, &view.bridge, &shape)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use cni_core::{Command, Request};

    fn spec(extra: serde_json::Value) -> OverlaySpec {
        let mut conf = serde_json::json!({"cniVersion": "1.0.0", "name": "ov", "type": "overlay",
            "vni": 42, "ipam": {"type": "etcd-ipam", "etcdEndpoints": ["http://127.0.0.1:1"],
            "ranges": [[{"subnet": "10.64.0.0/12"}], [{"subnet": "fd64::/64"}]]}});
        for (k, v) in extra.as_object().unwrap() {
            conf[k] = v.clone();
        }
        let r = Request::build(
            Command::Add,
            "c",
            Some("/x"),
            "eth0",
            conf.to_string().as_bytes(),
        )
        .unwrap();
        crate::config::parse(&r).unwrap()
    }

    fn texts(ops: &[Op]) -> Vec<String> {
        ops.iter().map(|o| o.command("POD")).collect()
    }

    #[test]
    fn a_networks_range_is_looked_up_in_its_table_in_both_families() {
        let s = spec(serde_json::json!({}));
        let t = route_table(42);
        let r: Vec<String> = rules(&s).iter().map(RuleSpec::text).collect();
        assert_eq!(
            r,
            [
                format!("ip -4 rule priority 11 to 10.64.0.0/12 lookup {t}"),
                format!("ip -6 rule priority 11 to fd64::/64 lookup {t}"),
            ]
        );
        let routes: Vec<String> = table_routes(&s).iter().map(TableRoute::text).collect();
        assert_eq!(
            routes,
            [
                format!("ip -4 route add 10.64.0.0/12 dev cnirsbr42 table {t}"),
                format!("ip -6 route add fd64::/64 dev cnirsbr42 table {t}"),
                format!("ip -4 route add unreachable default table {t}"),
                format!("ip -6 route add unreachable default table {t}"),
            ]
        );
    }

    #[test]
    fn an_internal_network_is_reached_only_from_its_devices_and_its_device_routes_nothing_out() {
        let s = spec(serde_json::json!({"internal": true}));
        let t = route_table(42);
        let r: Vec<String> = rules(&s).iter().map(RuleSpec::text).collect();
        for want in [
            format!("ip -4 rule priority 8 to 10.64.0.0/12 iif cnirsbr42 lookup {t}"),
            format!("ip -4 rule priority 8 to 10.64.0.0/12 iif cnirsvx42 lookup {t}"),
            format!("ip -4 rule priority 8 to 10.64.0.0/12 iif lo lookup {t}"),
            format!("ip -6 rule priority 8 to fd64::/64 iif cnirsvx42 lookup {t}"),
            "ip -4 rule priority 10 iif cnirsvx42 unreachable".to_string(),
            "ip -6 rule priority 10 iif cnirsvx42 unreachable".to_string(),
        ] {
            assert!(r.contains(&want), "{want}: {r:?}");
        }
        assert!(!r.iter().any(|x| !x.contains(" iif ")), "{r:?}");
    }

    #[test]
    fn the_device_is_created_only_when_missing_and_torn_down_with_its_table_and_rules() {
        let s = spec(serde_json::json!({}));
        let ul = Underlay {
            link: netops::Link {
                name: "ul0".into(),
                index: 2,
                mtu: 1500,
                ..Default::default()
            },
            vtep: "fd40::1".parse().unwrap(),
        };
        let first = texts(&network_ops(&s, &ul, 1430, &HostView::default()).unwrap());
        let mac = MacAddr(vxlan_mac(42, ul.vtep));
        assert!(
            first.contains(&format!(
                "ip link add cnirsvx42 address {mac} mtu 1430 type vxlan id 42 local fd40::1 dev #2 dstport 4789 nolearning"
            )),
            "{first:?}"
        );
        let view = HostView {
            vxlan: Some((Some(42), Some(ul.vtep), Some(mac))),
            ..HostView::default()
        };
        let later = texts(&network_ops(&s, &ul, 1430, &view).unwrap());
        assert!(!later.iter().any(|t| t.contains("type vxlan")), "{later:?}");
        assert_eq!(later.len() + 1, first.len());
        preflight(&s, &ul, &view).unwrap();
        let other = HostView {
            vxlan: Some((Some(43), Some(ul.vtep), Some(mac))),
            ..HostView::default()
        };
        assert!(matches!(
            preflight(&s, &ul, &other),
            Err(OverlayError::DeviceMismatch { .. })
        ));
        let down = texts(&teardown_ops(&s));
        assert_eq!(
            down.last().map(String::as_str),
            Some("ip link del cnirsvx42")
        );
        assert!(
            down.iter()
                .any(|t| t.starts_with("ip -4 rule del priority 11")),
            "{down:?}"
        );
        assert!(
            down.iter()
                .any(|t| t.contains("route del unreachable default")),
            "{down:?}"
        );
    }
}
