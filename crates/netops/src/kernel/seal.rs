//! The kernel-level seal of an internal bridge: policy routing rules that answer "unreachable"
//! to anything routed from the bridge, IPv4 and IPv6. They do not depend on any nftables table,
//! so a `nft flush ruleset` cannot open an internal network.
//!
//! ```text
//! ip -4 rule add priority 10 iif BR unreachable
//! ip -6 rule add priority 10 iif BR unreachable
//! ```
//! Rules are consulted after the `local` table (priority 0), so the pod still reaches the
//! bridge's own addresses; traffic between pods of the bridge is switched, not routed, and is
//! not affected. Everything else the pod sends off the bridge gets ICMP unreachable.

use rtnetlink::packet_route::rule::{RuleAction, RuleAttribute, RuleMessage};
use rtnetlink::packet_route::AddressFamily;

use super::{is_nl_exists, is_nl_not_found, Netlink};
use crate::{validate_ifname, NetopsError};

/// Priority of the seal rules: before `main` (32766) and any usual policy rule.
pub const SEAL_RULE_PRIORITY: u32 = 10;

fn seal_message(bridge: &str, family: AddressFamily) -> RuleMessage {
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

impl Netlink<'_> {
    fn rule_err(&self, op: &'static str, bridge: &str, source: rtnetlink::Error) -> NetopsError {
        NetopsError::Rule {
            op,
            iif: bridge.to_string(),
            netns: self.label.clone(),
            source: Box::new(source),
        }
    }

    /// Make sure both seal rules of `bridge` exist (EEXIST is fine); true when one was added.
    /// Equivalent: `ip -4 rule add priority 10 iif BR unreachable` and the same with `-6`.
    pub fn seal_bridge(&self, bridge: &str) -> Result<bool, NetopsError> {
        validate_ifname(bridge)?;
        let mut added = false;
        for v6 in [false, true] {
            let req = self
                .handle
                .rule()
                .add()
                .input_interface(bridge)
                .table_id(0) // no table: the action decides
                .priority(SEAL_RULE_PRIORITY)
                .action(RuleAction::Unreachable);
            let res = if v6 {
                self.rt.block_on(req.v6().execute())
            } else {
                self.rt.block_on(req.v4().execute())
            };
            match res {
                Ok(()) => added = true,
                Err(e) if is_nl_exists(&e) => {}
                Err(e) => return Err(self.rule_err("add", bridge, e)),
            }
        }
        Ok(added)
    }

    /// Remove the seal rules of `bridge`; absent rules are fine (DEL is idempotent).
    /// Equivalent: `ip -4 rule del priority 10 iif BR unreachable` and `-6`.
    pub fn unseal_bridge(&self, bridge: &str) -> Result<bool, NetopsError> {
        validate_ifname(bridge)?;
        let mut removed = false;
        for family in [AddressFamily::Inet, AddressFamily::Inet6] {
            let msg = seal_message(bridge, family);
            match self.rt.block_on(self.handle.rule().del(msg).execute()) {
                Ok(()) => removed = true,
                Err(e) if is_nl_not_found(&e) => {}
                Err(e) => return Err(self.rule_err("delete", bridge, e)),
            }
        }
        Ok(removed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seal_rule_is_iif_unreachable_at_its_priority_in_both_families() {
        for fam in [AddressFamily::Inet, AddressFamily::Inet6] {
            let m = seal_message("cnirs-int", fam);
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
}
