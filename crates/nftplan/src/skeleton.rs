//! The skeleton: our tables with the sets of [`crate::schema::SETS`], the chains
//! ([`CHAINS`]) and their rules ([`RULES`]), rendered as one nft script
//! ([`skeleton_text`]) that is loaded through nft (libnftables or the program).

use std::sync::LazyLock;

use crate::schema::{Family, SETS};

/// A chain of our tables: a base chain has its hook line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChainDef {
    /// The table's family.
    pub family: Family,
    /// The chain's name.
    pub name: &'static str,
    /// `type filter hook forward priority filter; policy accept;` (base chains).
    pub hook: Option<&'static str>,
}

const fn chain(family: Family, name: &'static str, hook: Option<&'static str>) -> ChainDef {
    ChainDef { family, name, hook }
}

const I: Family = Family::Inet;
const B: Family = Family::Bridge;

/// Every chain, in skeleton order.
pub const CHAINS: &[ChainDef] = &[
    chain(I, "portmap", None),
    chain(I, "np_ingress", None),
    chain(I, "np_egress", None),
    // NetworkPolicy, before `forward` (priority filter): its drops are final, its accepts
    // only end this chain (`forward` still decides).
    chain(
        I,
        "netpol",
        Some("type filter hook forward priority -5; policy accept;"),
    ),
    chain(
        I,
        "forward",
        Some("type filter hook forward priority filter; policy accept;"),
    ),
    chain(
        I,
        "prerouting",
        Some("type nat hook prerouting priority dstnat; policy accept;"),
    ),
    // nft 1.0.6 wants the numeric priority for an inet nat output chain.
    chain(
        I,
        "output",
        Some("type nat hook output priority -100; policy accept;"),
    ),
    chain(
        I,
        "postrouting",
        Some("type nat hook postrouting priority srcnat; policy accept;"),
    ),
    chain(
        I,
        "raw_pre",
        Some("type filter hook prerouting priority raw; policy accept;"),
    ),
    chain(
        I,
        "input",
        Some("type filter hook input priority filter; policy accept;"),
    ),
    chain(
        B,
        "prerouting",
        Some("type filter hook prerouting priority -300; policy accept;"),
    ),
];

/// Rules appended to one chain, in nft's rule language (sets referred to as `@name`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChainRules {
    /// The table's family.
    pub family: Family,
    /// The chain.
    pub chain: &'static str,
    /// Its rules, in order.
    pub rules: &'static [&'static str],
}

const fn rules(family: Family, chain: &'static str, rules: &'static [&'static str]) -> ChainRules {
    ChainRules {
        family,
        chain,
        rules,
    }
}

/// Every rule, chain by chain in skeleton order (order matters within a chain only).
pub const RULES: &[ChainRules] = &[
    rules(
        I,
        "forward",
        &[
            // br_netfilter makes bridged traffic cross this hook with iif == oif: first.
            "iifname . oifname @same_br accept",
            "ct state established,related accept",
            "oifname @internal_br drop",
            "iifname @internal_br drop",
            "ct status dnat oifname @managed_br accept",
            "iifname @isolated_br oifname @isolated_br drop",
        ],
    ),
    // NetworkPolicy: replies pass; an egress-isolated source must be allowed by np_out*, an
    // ingress-isolated destination by np_in* (both when both are isolated).
    rules(
        I,
        "netpol",
        &[
            // 0x01000000: crate::guard::NP_PASS_MARK, what the guard table (`cnirs watch`)
            // wants on every packet to or from an isolated pod (see guard.rs).
            "ct state established,related meta mark set meta mark | 0x01000000 accept",
            "ip saddr @np_eiso4 jump np_egress",
            "ip6 saddr @np_eiso6 jump np_egress",
            "ip daddr @np_iiso4 jump np_ingress",
            "ip6 daddr @np_iiso6 jump np_ingress",
            "meta mark set meta mark | 0x01000000",
        ],
    ),
    rules(
        I,
        "np_egress",
        &[
            "ip saddr . ip daddr . meta l4proto . th dport @np_out_one4 return",
            "ip saddr . ip daddr @np_out_any4 return",
            "ip saddr . ip daddr . meta l4proto . th dport @np_out4 return",
            "ip saddr . ip daddr @np_out_pp4 return",
            "ip saddr . ip daddr . meta l4proto . th dport @np_out_pr4 return",
            "ip6 saddr . ip6 daddr . meta l4proto . th dport @np_out_one6 return",
            "ip6 saddr . ip6 daddr @np_out_any6 return",
            "ip6 saddr . ip6 daddr . meta l4proto . th dport @np_out6 return",
            "ip6 saddr . ip6 daddr @np_out_pp6 return",
            "ip6 saddr . ip6 daddr . meta l4proto . th dport @np_out_pr6 return",
            "drop",
        ],
    ),
    rules(
        I,
        "np_ingress",
        &[
            "ip daddr . ip saddr . meta l4proto . th dport @np_in_one4 return",
            "ip daddr . ip saddr @np_in_any4 return",
            "ip daddr . ip saddr . meta l4proto . th dport @np_in4 return",
            "ip daddr . ip saddr @np_in_pp4 return",
            "ip daddr . ip saddr . meta l4proto . th dport @np_in_pr4 return",
            "ip6 daddr . ip6 saddr . meta l4proto . th dport @np_in_one6 return",
            "ip6 daddr . ip6 saddr @np_in_any6 return",
            "ip6 daddr . ip6 saddr . meta l4proto . th dport @np_in6 return",
            "ip6 daddr . ip6 saddr @np_in_pp6 return",
            "ip6 daddr . ip6 saddr . meta l4proto . th dport @np_in_pr6 return",
            "drop",
        ],
    ),
    rules(I, "prerouting", &["fib daddr type local jump portmap"]),
    rules(I, "output", &["fib daddr type local jump portmap"]),
    rules(
        I,
        "portmap",
        &[
            "meta nfproto ipv4 dnat ip to ip daddr . meta l4proto . th dport map @pm4",
            "meta nfproto ipv4 dnat ip to meta l4proto . th dport map @pm4_any",
            "meta nfproto ipv6 dnat ip6 to ip6 daddr . meta l4proto . th dport map @pm6",
            "meta nfproto ipv6 dnat ip6 to meta l4proto . th dport map @pm6_any",
        ],
    ),
    rules(
        I,
        "postrouting",
        &[
            // Hairpin: with br_netfilter the packet is bridged back at layer 2 and postrouting
            // sees no input interface, so the test rests on the source and the output bridge.
            "ct status dnat oifname . ip saddr @br_net4 masquerade",
            "ct status dnat oifname . ip6 saddr @br_net6 masquerade",
            "ct status dnat ip saddr 127.0.0.0/8 oifname @managed_br masquerade",
            "ip saddr @masq4 ip daddr != 224.0.0.0/4 oifname != @managed_br masquerade",
            "ip6 saddr @masq6 ip6 daddr != ff00::/8 oifname != @managed_br masquerade",
        ],
    ),
    // Docker's guard: 127/8 from anywhere but lo (route_localnet is on for 127.0.0.1 ports).
    rules(
        I,
        "raw_pre",
        &["iifname != \"lo\" ip daddr 127.0.0.0/8 fib daddr type local drop"],
    ),
    // A pod on an internal bridge reaches the host only at the bridge's own addresses.
    rules(
        I,
        "input",
        &[
            "iifname @internal_br fib daddr . iif type != { local, broadcast, multicast } drop",
            // The overlay gate: VXLAN from anything but a member VTEP, before decapsulation.
            "udp dport @vtep_ports ip saddr != @vtep4 drop",
            "udp dport @vtep_ports ip6 saddr != @vtep6 drop",
        ],
    ),
    rules(
        B,
        "prerouting",
        &["iifname @spoof_ports iifname . ether saddr != @spoof_ok drop"],
    ),
];

/// Number of rules in `family`'s table.
pub const fn rule_count(family: Family) -> usize {
    let mut n = 0;
    let mut i = 0;
    while i < RULES.len() {
        if RULES[i].family as u8 == family as u8 {
            n += RULES[i].rules.len();
        }
        i += 1;
    }
    n
}

/// The rules of one chain, in order.
pub fn chain_rules(family: Family, chain: &str) -> impl Iterator<Item = &'static str> + '_ {
    RULES
        .iter()
        .filter(move |r| r.family == family && r.chain == chain)
        .flat_map(|r| r.rules.iter().copied())
}

/// The skeleton as an nft script: per table, the table, its sets, its chains, a flush of each
/// chain and its rules. Loading it is idempotent and race-safe without a lock: `add
/// table/set/map/chain` keep what exists (and set elements), each chain is flushed and its
/// rules re-added in the same transaction. So concurrent first calls converge to exactly one
/// copy of every rule, and a second load repairs rules somebody changed.
///
/// Text, not JSON and not netlink: nft 1.0.6 turns a JSON-declared map whose value is a
/// concatenation (`ipv4_addr . inet_service`) into a plain set, and a dnat through it
/// segfaults nft; rule expressions are nft's business.
pub fn skeleton_text() -> String {
    let mut s = String::with_capacity(4096);
    let mut line = |l: &str| {
        s.push_str(l);
        s.push('\n');
    };
    for family in Family::ALL {
        let table = family.table();
        line(&format!("add table {table}"));
        for d in SETS.iter().filter(|d| d.family == family) {
            line(&d.declaration());
        }
        let chains = || CHAINS.iter().filter(|c| c.family == family);
        for c in chains() {
            match c.hook {
                Some(hook) => line(&format!("add chain {table} {} {{ {hook} }}", c.name)),
                None => line(&format!("add chain {table} {}", c.name)),
            }
        }
        for c in chains() {
            line(&format!("flush chain {table} {}", c.name));
        }
        for r in RULES.iter().filter(|r| r.family == family) {
            for rule in r.rules {
                line(&format!("add rule {table} {} {rule}", r.chain));
            }
        }
    }
    s
}

/// [`skeleton_text`], rendered once per process (when first used).
pub static SKELETON: LazyLock<String> = LazyLock::new(skeleton_text);

#[cfg(test)]
mod tests {
    use super::*;

    /// `@name` references of a rule.
    fn refs(rule: &str) -> Vec<&str> {
        rule.split_whitespace()
            .filter_map(|w| w.strip_prefix('@'))
            .collect()
    }

    #[test]
    fn rules_use_only_sets_of_their_table_and_every_set_is_used() {
        for r in RULES {
            assert!(
                CHAINS
                    .iter()
                    .any(|c| c.family == r.family && c.name == r.chain),
                "rules for an undeclared chain {}",
                r.chain
            );
            for rule in r.rules {
                for name in refs(rule) {
                    assert!(
                        SETS.iter().any(|d| d.family == r.family && d.name == name),
                        "{rule}: no set {name} in {}",
                        r.family.table()
                    );
                }
            }
        }
        for d in SETS {
            let used = RULES
                .iter()
                .filter(|r| r.family == d.family)
                .flat_map(|r| r.rules.iter())
                .any(|rule| refs(rule).contains(&d.name));
            assert!(used, "set {} is used by no rule", d.name);
        }
    }

    #[test]
    fn declarations_follow_the_schema() {
        let text = skeleton_text();
        for want in [
            "add set inet cnirs same_br { type ifname . ifname; }",
            "add set inet cnirs masq6 { type ipv6_addr; flags interval; }",
            "add set inet cnirs br_net4 { type ifname . ipv4_addr; flags interval; }",
            "add map inet cnirs pm6_any { type inet_proto . inet_service : ipv6_addr . inet_service; }",
            "add set bridge cnirs spoof_ok { type ifname . ether_addr; }",
        ] {
            assert!(text.lines().any(|l| l == want), "{want}");
        }
        assert_eq!(rule_count(Family::Bridge), 1);
        assert_eq!(chain_rules(Family::Inet, "forward").count(), 6);
    }
}
