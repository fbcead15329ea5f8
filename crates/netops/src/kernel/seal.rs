//! The kernel-level seal of an internal bridge: policy routing rules, IPv4 and IPv6, that do
//! not depend on any nftables table, so a `nft flush ruleset` cannot open an internal network.
//!
//! ```text
//! ip -4 rule add priority 10 iif BR unreachable              # out of the network
//! ip rule add priority 9 to SUBNET iif lo lookup main       # the host itself still reaches it
//! ip rule add priority 10 to SUBNET unreachable             # into the network, routed
//! ```
//! (and the same with `-6`; one pair of subnet rules per subnet of the network). Rules are
//! consulted after the `local` table (priority 0), so the pod still reaches the bridge's own
//! addresses; traffic between pods of the bridge is switched, not routed, and is not affected.
//! Everything else the pod sends off the bridge, and everything routed towards the network's
//! subnets from another interface, gets ICMP unreachable.

use ipnetwork::IpNetwork;
use rtnetlink::packet_route::route::RouteHeader;
use rtnetlink::packet_route::rule::{RuleAction, RuleAttribute, RuleMessage};
use rtnetlink::packet_route::AddressFamily;

use super::policy::{attr_dst, attr_iif, attr_priority, same_rule};
use super::{is_nl_exists, is_nl_not_found, Netlink};
use crate::{validate_ifname, NetopsError};

/// Priority of the seal rules: before `main` (32766) and any usual policy rule.
pub use crate::ops::SEAL_RULE_PRIORITY;

/// Priority of the rule that lets the host's own traffic reach a sealed subnet.
pub const SEAL_HOST_RULE_PRIORITY: u32 = SEAL_RULE_PRIORITY - 1;

fn family_of(v6: bool) -> AddressFamily {
    if v6 {
        AddressFamily::Inet6
    } else {
        AddressFamily::Inet
    }
}

fn iif_message(bridge: &str, family: AddressFamily) -> RuleMessage {
    let mut m = RuleMessage::default();
    m.header.family = family;
    m.header.action = RuleAction::Unreachable;
    m.header.table = 0;
    m.attributes
        .push(RuleAttribute::Priority(SEAL_RULE_PRIORITY));
    m.attributes
        .push(RuleAttribute::Iifname(bridge.to_string()));
    m
}

/// `to SUBNET iif lo lookup main` at priority 9, then `to SUBNET unreachable` at 10.
fn subnet_messages(subnet: IpNetwork) -> [RuleMessage; 2] {
    let net = netbase::subnet(subnet);
    let base = || {
        let mut m = RuleMessage::default();
        m.header.family = family_of(net.is_ipv6());
        m.header.dst_len = net.prefix();
        m.attributes.push(RuleAttribute::Destination(net.network()));
        m
    };
    let mut host = base();
    host.header.action = RuleAction::ToTable;
    host.header.table = RouteHeader::RT_TABLE_MAIN;
    host.attributes
        .push(RuleAttribute::Priority(SEAL_HOST_RULE_PRIORITY));
    host.attributes.push(RuleAttribute::Iifname("lo".into()));
    host.attributes
        .push(RuleAttribute::Table(u32::from(RouteHeader::RT_TABLE_MAIN)));
    let mut seal = base();
    seal.header.action = RuleAction::Unreachable;
    seal.header.table = 0;
    seal.attributes
        .push(RuleAttribute::Priority(SEAL_RULE_PRIORITY));
    [host, seal]
}

/// Every rule of the seal of `bridge` over `subnets`, IPv4 and IPv6.
pub fn seal_messages(bridge: &str, subnets: &[IpNetwork]) -> Vec<RuleMessage> {
    let mut out = vec![
        iif_message(bridge, AddressFamily::Inet),
        iif_message(bridge, AddressFamily::Inet6),
    ];
    for s in subnets {
        out.extend(subnet_messages(*s));
    }
    out
}

/// The `ip rule` text of one seal rule, for reports.
pub fn rule_text(m: &RuleMessage) -> String {
    let fam = if m.header.family == AddressFamily::Inet6 {
        "-6"
    } else {
        "-4"
    };
    let mut s = format!("ip {fam} rule priority {}", attr_priority(m).unwrap_or(0));
    if let Some(d) = attr_dst(m) {
        s += &format!(" to {d}/{}", m.header.dst_len);
    }
    if let Some(i) = attr_iif(m) {
        s += &format!(" iif {i}");
    }
    if m.header.action == RuleAction::Unreachable {
        s += " unreachable";
    } else {
        s += " lookup main";
    }
    s
}

impl Netlink<'_> {
    fn rule_err(&self, op: &'static str, bridge: &str, source: rtnetlink::Error) -> NetopsError {
        NetopsError::Rule {
            op,
            iif: bridge.to_string(),
            netns: self.label.clone(),
            source: Box::new(source),
        }
    }

    /// Make sure every seal rule of `bridge` and its `subnets` exists (EEXIST is fine); true
    /// when one was added. Equivalent: the `ip rule add` commands of the module docs.
    pub fn seal_bridge(&self, bridge: &str, subnets: &[IpNetwork]) -> Result<bool, NetopsError> {
        validate_ifname(bridge)?;
        let mut added = false;
        for msg in seal_messages(bridge, subnets) {
            let mut req = self.handle.rule().add();
            *req.message_mut() = msg;
            match self.rt.block_on(req.execute()) {
                Ok(()) => added = true,
                Err(e) if is_nl_exists(&e) => {}
                Err(e) => return Err(self.rule_err("add", bridge, e)),
            }
        }
        Ok(added)
    }

    /// Remove the seal rules of `bridge` and its `subnets`; absent rules are fine (DEL is
    /// idempotent). Equivalent: the `ip rule del` of each rule of the module docs.
    pub fn unseal_bridge(&self, bridge: &str, subnets: &[IpNetwork]) -> Result<bool, NetopsError> {
        validate_ifname(bridge)?;
        let mut removed = false;
        for msg in seal_messages(bridge, subnets) {
            match self.rt.block_on(self.handle.rule().del(msg).execute()) {
                Ok(()) => removed = true,
                Err(e) if is_nl_not_found(&e) => {}
                Err(e) => return Err(self.rule_err("delete", bridge, e)),
            }
        }
        Ok(removed)
    }

    /// The seal rules of `bridge` and its `subnets` the kernel lacks, as `ip rule` text
    /// (empty = sealed). One dump per family. Equivalent: `ip -4 rule; ip -6 rule`.
    pub fn missing_seal(
        &self,
        bridge: &str,
        subnets: &[IpNetwork],
    ) -> Result<Vec<String>, NetopsError> {
        validate_ifname(bridge)?;
        let have = self.rule_dump()?;
        Ok(seal_messages(bridge, subnets)
            .iter()
            .filter(|w| !have.iter().any(|h| same_rule(w, h)))
            .map(rule_text)
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seal_rule_is_iif_unreachable_at_its_priority_in_both_families() {
        for fam in [AddressFamily::Inet, AddressFamily::Inet6] {
            let m = iif_message("cnirs-int", fam);
            assert_eq!(m.header.family, fam);
            assert_eq!(m.header.action, RuleAction::Unreachable);
            assert_eq!(m.header.table, 0);
            assert!(m
                .attributes
                .contains(&RuleAttribute::Priority(SEAL_RULE_PRIORITY)));
            assert!(m
                .attributes
                .contains(&RuleAttribute::Iifname("cnirs-int".into())));
        }
    }

    #[test]
    fn subnet_rules_let_the_host_in_then_refuse_routed_traffic() {
        let s: IpNetwork = "10.9.0.7/24".parse().unwrap();
        let all = seal_messages("br0", &[s, "fd00:9::5/64".parse().unwrap()]);
        let text: Vec<String> = all.iter().map(rule_text).collect();
        assert_eq!(
            text,
            [
                "ip -4 rule priority 10 iif br0 unreachable",
                "ip -6 rule priority 10 iif br0 unreachable",
                "ip -4 rule priority 9 to 10.9.0.0/24 iif lo lookup main",
                "ip -4 rule priority 10 to 10.9.0.0/24 unreachable",
                "ip -6 rule priority 9 to fd00:9::/64 iif lo lookup main",
                "ip -6 rule priority 10 to fd00:9::/64 unreachable",
            ]
        );
        // A kernel rule with one field off is not ours.
        let mut other = all[3].clone();
        other.header.dst_len = 16;
        assert!(!same_rule(&all[3], &other));
        assert!(same_rule(&all[3], &all[3].clone()));
    }
}
