//! Policy rules and the routes of routing tables of ours ([`RuleSpec`], [`TableRoute`]): what
//! the overlay's per-network table needs (see docs/overlay.md), over rtnetlink.
//!
//! ```text
//! ip rule add priority 8 to 10.64.0.0/12 lookup 1667506218        # a network's range
//! ip route add 10.64.0.0/12 dev cnirsbr42 table 1667506218        # its local delivery
//! ip route add unreachable default table 1667506218               # nothing else
//! ```

use futures::TryStreamExt;
use rtnetlink::{
    packet_route::{
        route::{RouteFlags, RouteHeader, RouteMessage, RouteProtocol, RouteScope, RouteType},
        rule::{RuleAction as NlAction, RuleAttribute, RuleMessage},
        AddressFamily,
    },
    IpVersion, RouteMessageBuilder,
};

use super::{is_nl_exists, is_nl_not_found, Netlink};
use crate::{
    types::{RuleAction, RuleSpec, TableRoute, TableTarget},
    NetopsError,
};

fn family(v6: bool) -> AddressFamily {
    if v6 {
        AddressFamily::Inet6
    } else {
        AddressFamily::Inet
    }
}

/// The kernel message of `r`.
pub fn rule_message(r: &RuleSpec) -> RuleMessage {
    let mut m = RuleMessage::default();
    let v6 = r.dst.map_or(r.v6, |d| d.is_ipv6());
    m.header.family = family(v6);
    m.attributes.push(RuleAttribute::Priority(r.priority));
    if let Some(i) = &r.iif {
        m.attributes.push(RuleAttribute::Iifname(i.clone()));
    }
    if let Some(d) = r.dst {
        let n = ipnetwork::IpNetwork::new(d.network(), d.prefix()).unwrap_or(d);
        m.header.dst_len = n.prefix();
        m.attributes.push(RuleAttribute::Destination(n.network()));
    }
    match r.action {
        RuleAction::Lookup(t) => {
            m.header.action = NlAction::ToTable;
            m.header.table = if t > 255 {
                RouteHeader::RT_TABLE_UNSPEC
            } else {
                t as u8
            };
            m.attributes.push(RuleAttribute::Table(t));
        }
        RuleAction::Unreachable => {
            m.header.action = NlAction::Unreachable;
            m.header.table = 0;
        }
    }
    m
}

pub(super) fn attr_priority(m: &RuleMessage) -> Option<u32> {
    m.attributes.iter().find_map(|a| match a {
        RuleAttribute::Priority(p) => Some(*p),
        _ => None,
    })
}

pub(super) fn attr_iif(m: &RuleMessage) -> Option<&str> {
    m.attributes.iter().find_map(|a| match a {
        RuleAttribute::Iifname(s) => Some(s.as_str()),
        _ => None,
    })
}

pub(super) fn attr_dst(m: &RuleMessage) -> Option<std::net::IpAddr> {
    m.attributes.iter().find_map(|a| match a {
        RuleAttribute::Destination(d) => Some(*d),
        _ => None,
    })
}

fn rule_table(m: &RuleMessage) -> u32 {
    m.attributes
        .iter()
        .find_map(|a| match a {
            RuleAttribute::Table(t) => Some(*t),
            _ => None,
        })
        .unwrap_or(u32::from(m.header.table))
}

/// Does the kernel's rule `have` implement `want` (the fields we set)?
pub fn same_rule(want: &RuleMessage, have: &RuleMessage) -> bool {
    want.header.family == have.header.family
        && want.header.action == have.header.action
        && want.header.dst_len == have.header.dst_len
        && want.header.src_len == have.header.src_len
        && attr_priority(want) == attr_priority(have)
        && attr_iif(want) == attr_iif(have)
        && attr_dst(want) == attr_dst(have)
        && (want.header.action != NlAction::ToTable || rule_table(want) == rule_table(have))
}

/// The kernel message of `r`.
pub fn table_route_message(r: &TableRoute, dev_index: Option<u32>) -> RouteMessage {
    let dst = ipnetwork::IpNetwork::new(r.dst.network(), r.dst.prefix()).unwrap_or(r.dst);
    let mut m = RouteMessageBuilder::<std::net::IpAddr>::new()
        .destination_prefix(dst.network(), dst.prefix())
        .map(|b| b.build())
        .unwrap_or_default();
    m.header.protocol = RouteProtocol::Static;
    if r.table > 255 {
        m.header.table = RouteHeader::RT_TABLE_UNSPEC;
        m.attributes
            .push(rtnetlink::packet_route::route::RouteAttribute::Table(
                r.table,
            ));
    } else {
        m.header.table = r.table as u8;
    }
    match &r.target {
        TableTarget::Dev(_) => {
            m.header.kind = RouteType::Unicast;
            m.header.scope = RouteScope::Link;
            if let Some(i) = dev_index {
                m.attributes
                    .push(rtnetlink::packet_route::route::RouteAttribute::Oif(i));
            }
        }
        TableTarget::Unreachable => {
            m.header.kind = RouteType::Unreachable;
            m.header.scope = RouteScope::Universe;
        }
    }
    m.header.flags = RouteFlags::empty();
    m
}

impl Netlink<'_> {
    fn policy_err(&self, op: &'static str, what: String, source: rtnetlink::Error) -> NetopsError {
        NetopsError::Policy {
            op,
            what,
            netns: self.label.clone(),
            source: Box::new(source),
        }
    }

    /// Add a rule; `Ok(false)` when it exists already. Equivalent: `ip rule add ...`.
    pub fn add_rule(&self, r: &RuleSpec) -> Result<bool, NetopsError> {
        if let Some(i) = &r.iif {
            crate::validate_ifname(i)?;
        }
        let mut req = self.handle.rule().add();
        *req.message_mut() = rule_message(r);
        match self.rt.block_on(req.execute()) {
            Ok(()) => Ok(true),
            Err(e) if is_nl_exists(&e) => Ok(false),
            Err(e) => Err(self.policy_err("add", r.text(), e)),
        }
    }

    /// Delete a rule; `Ok(false)` when it was not there. Equivalent: `ip rule del ...`.
    pub fn delete_rule(&self, r: &RuleSpec) -> Result<bool, NetopsError> {
        match self
            .rt
            .block_on(self.handle.rule().del(rule_message(r)).execute())
        {
            Ok(()) => Ok(true),
            Err(e) if is_nl_not_found(&e) => Ok(false),
            Err(e) => Err(self.policy_err("delete", r.text(), e)),
        }
    }

    /// Every policy rule of both families (one dump per family).
    pub(crate) fn rule_dump(&self) -> Result<Vec<RuleMessage>, NetopsError> {
        let mut have = Vec::new();
        for ver in [IpVersion::V4, IpVersion::V6] {
            let rs: Vec<RuleMessage> = self
                .rt
                .block_on(self.handle.rule().get(ver).execute().try_collect())
                .map_err(|source| NetopsError::Dump {
                    what: "rules",
                    netns: self.label.clone(),
                    source: Box::new(source),
                })?;
            have.extend(rs);
        }
        Ok(have)
    }

    /// Which of `rules` the kernel lacks (one dump per family). Equivalent: `ip rule; ip -6 rule`.
    pub fn missing_rules(&self, rules: &[RuleSpec]) -> Result<Vec<RuleSpec>, NetopsError> {
        let have = self.rule_dump()?;
        Ok(rules
            .iter()
            .filter(|w| {
                let want = rule_message(w);
                !have.iter().any(|h| same_rule(&want, h))
            })
            .cloned()
            .collect())
    }

    /// Add a route to one of our tables; `Ok(false)` when it exists already.
    /// Equivalent: `ip route add [unreachable] DST [dev DEV] table T`.
    pub fn add_table_route(&self, r: &TableRoute) -> Result<bool, NetopsError> {
        let dev = match &r.target {
            TableTarget::Dev(d) => Some(self.require_link(d)?.index),
            TableTarget::Unreachable => None,
        };
        let msg = table_route_message(r, dev);
        match self.rt.block_on(self.handle.route().add(msg).execute()) {
            Ok(()) => Ok(true),
            Err(e) if is_nl_exists(&e) => Ok(false),
            Err(e) => Err(self.policy_err("add", r.text(), e)),
        }
    }

    /// Delete one; `Ok(false)` when it (or its device) was not there.
    /// Equivalent: `ip route del [unreachable] DST [dev DEV] table T`.
    pub fn delete_table_route(&self, r: &TableRoute) -> Result<bool, NetopsError> {
        let dev = match &r.target {
            TableTarget::Dev(d) => match self.link(d)? {
                Some(l) => Some(l.index),
                // Gone with its device.
                None => return Ok(false),
            },
            TableTarget::Unreachable => None,
        };
        let msg = table_route_message(r, dev);
        match self.rt.block_on(self.handle.route().del(msg).execute()) {
            Ok(()) => Ok(true),
            Err(e) if is_nl_not_found(&e) => Ok(false),
            Err(e) => Err(self.policy_err("delete", r.text(), e)),
        }
    }

    /// Which of `routes` the table lacks (one dump per family of the tables asked).
    pub fn missing_table_routes(
        &self,
        routes: &[TableRoute],
    ) -> Result<Vec<TableRoute>, NetopsError> {
        let mut missing = Vec::new();
        let mut dumps: std::collections::BTreeMap<(u32, bool), Vec<RouteMessage>> =
            std::collections::BTreeMap::new();
        for r in routes {
            let key = (r.table, r.dst.is_ipv6());
            if let std::collections::btree_map::Entry::Vacant(slot) = dumps.entry(key) {
                let mut q = RouteMessage::default();
                q.header.address_family = family(key.1);
                if key.0 > 255 {
                    q.attributes
                        .push(rtnetlink::packet_route::route::RouteAttribute::Table(key.0));
                } else {
                    q.header.table = key.0 as u8;
                }
                slot.insert(self.dump_routes_strict(q)?);
            }
            let dev = match &r.target {
                TableTarget::Dev(d) => self.link(d)?.map(|l| l.index),
                TableTarget::Unreachable => None,
            };
            let want = table_route_message(r, dev);
            let found = dumps[&key].iter().any(|h| same_route(&want, h));
            if !found {
                missing.push(r.clone());
            }
        }
        Ok(missing)
    }
}

fn route_table(m: &RouteMessage) -> u32 {
    m.attributes
        .iter()
        .find_map(|a| match a {
            rtnetlink::packet_route::route::RouteAttribute::Table(t) => Some(*t),
            _ => None,
        })
        .unwrap_or(u32::from(m.header.table))
}

fn route_oif(m: &RouteMessage) -> Option<u32> {
    m.attributes.iter().find_map(|a| match a {
        rtnetlink::packet_route::route::RouteAttribute::Oif(o) => Some(*o),
        _ => None,
    })
}

fn route_dst(m: &RouteMessage) -> Option<rtnetlink::packet_route::route::RouteAddress> {
    m.attributes.iter().find_map(|a| match a {
        rtnetlink::packet_route::route::RouteAttribute::Destination(d) => Some(d.clone()),
        _ => None,
    })
}

fn same_route(want: &RouteMessage, have: &RouteMessage) -> bool {
    want.header.address_family == have.header.address_family
        && want.header.destination_prefix_length == have.header.destination_prefix_length
        && want.header.kind == have.header.kind
        && route_table(want) == route_table(have)
        // IPv6 reports an unreachable route "dev lo".
        && (want.header.kind == RouteType::Unreachable || route_oif(want) == route_oif(have))
        && (want.header.destination_prefix_length == 0 || route_dst(want) == route_dst(have))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rules_carry_family_priority_iif_dst_and_table() {
        let r = RuleSpec {
            v6: false,
            priority: 8,
            iif: Some("cnirsbr42".into()),
            dst: Some("10.64.3.7/12".parse().unwrap()),
            action: RuleAction::Lookup(0x6300_002a),
        };
        assert_eq!(
            r.text(),
            "ip -4 rule priority 8 to 10.64.0.0/12 iif cnirsbr42 lookup 1660944426"
        );
        let m = rule_message(&r);
        assert_eq!(m.header.family, AddressFamily::Inet);
        assert_eq!(m.header.dst_len, 12);
        assert_eq!(rule_table(&m), 0x6300_002a);
        assert!(same_rule(&m, &m.clone()));
        let mut other = m.clone();
        other.header.dst_len = 16;
        assert!(!same_rule(&m, &other));
        let u = RuleSpec {
            v6: true,
            priority: 10,
            iif: Some("cnirsvx42".into()),
            dst: None,
            action: RuleAction::Unreachable,
        };
        assert_eq!(u.text(), "ip -6 rule priority 10 iif cnirsvx42 unreachable");
        assert_eq!(rule_message(&u).header.family, AddressFamily::Inet6);
    }

    #[test]
    fn table_routes_print_as_ip_commands() {
        let r = TableRoute {
            table: 7000,
            dst: "::/0".parse().unwrap(),
            target: TableTarget::Unreachable,
        };
        assert_eq!(r.text(), "ip -6 route add unreachable default table 7000");
        let m = table_route_message(&r, None);
        assert_eq!(m.header.kind, RouteType::Unreachable);
        assert_eq!(route_table(&m), 7000);
        let d = TableRoute {
            table: 7000,
            dst: "10.64.0.0/12".parse().unwrap(),
            target: TableTarget::Dev("cnirsbr42".into()),
        };
        assert_eq!(
            d.text(),
            "ip -4 route add 10.64.0.0/12 dev cnirsbr42 table 7000"
        );
        let m = table_route_message(&d, Some(5));
        assert_eq!(route_oif(&m), Some(5));
        assert_eq!(m.header.scope, RouteScope::Link);
    }
}
