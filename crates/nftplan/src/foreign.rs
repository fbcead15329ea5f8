//! Rules in chains that are not ours: the host's own `filter FORWARD` chains.
//!
//! An `accept` in our table does not stop another table's base chain from dropping the same
//! packet. Docker (and many hardened hosts) set the iptables FORWARD policy to DROP; with
//! iptables-nft that is `table ip filter { chain FORWARD { policy drop } }`. For bridges the
//! `firewall` plugin manages, we insert three rules at the top of such a chain, tagged with
//! the comment `cnirs:<bridge>`: traffic from the bridge, return traffic to it, and published
//! (DNAT'd) connections to it. Per bridge, never per pod; the network's last DEL (or GC)
//! removes them and `reconcile` puts them back after a reload. Hosts on iptables-legacy keep their rules out of nft's sight and are not handled.

use serde_json::Value;

use crate::{
    backend::NftBackend,
    batch::{Batch, Cmd, IpFamily},
    error::NftError,
    types::IfName,
};

pub(crate) fn tag(bridge: &IfName) -> String {
    format!("cnirs:{}", bridge.as_str())
}

/// The `filter FORWARD` chains with a drop policy, from one `nft -j list chains`.
pub(crate) fn dropping_forward_chains(nft: &dyn NftBackend) -> Result<Vec<IpFamily>, NftError> {
    let Some(text) = nft.query(&["list", "chains"])? else {
        return Ok(Vec::new());
    };
    let v: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
    let mut out = Vec::new();
    for item in v
        .get("nftables")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let Some(c) = item.get("chain") else { continue };
        let family = c.get("family").and_then(Value::as_str).unwrap_or_default();
        let is_forward = c.get("table").and_then(Value::as_str) == Some("filter")
            && c.get("name").and_then(Value::as_str) == Some("FORWARD")
            && c.get("policy").and_then(Value::as_str) == Some("drop");
        if let Some(f) = IpFamily::ALL.into_iter().find(|f| f.keyword() == family) {
            if is_forward && !out.contains(&f) {
                out.push(f);
            }
        }
    }
    Ok(out)
}

/// Handles of the rules tagged for `bridge` in `family filter FORWARD`.
fn tagged_handles(
    nft: &dyn NftBackend,
    family: IpFamily,
    bridge: &IfName,
) -> Result<Vec<u64>, NftError> {
    let args = ["-a", "list", "chain", family.keyword(), "filter", "FORWARD"];
    let Some(text) = nft.query(&args)? else {
        return Ok(Vec::new());
    };
    let v: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
    let want = tag(bridge);
    Ok(v.get("nftables")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|i| i.get("rule"))
        .filter(|r| r.get("comment").and_then(Value::as_str) == Some(want.as_str()))
        .filter_map(|r| r.get("handle").and_then(Value::as_u64))
        .collect())
}

/// The three rules [`Cmd::AllowForward`] inserts for `bridge`, each tagged with its comment,
/// in the order they end up in the chain (each `insert` goes on top).
pub(crate) fn allow_rules(bridge: &IfName) -> [String; 3] {
    let (b, t) = (bridge.as_str(), tag(bridge));
    [
        format!("iifname \"{b}\" accept comment \"{t}\""),
        format!("oifname \"{b}\" ct state established,related accept comment \"{t}\""),
        format!("oifname \"{b}\" ct status dnat accept comment \"{t}\""),
    ]
}

/// The text of [`Cmd::AllowForward`] (pure, golden-tested).
pub(crate) fn insert_text(family: IpFamily, bridge: &IfName) -> String {
    allow_rules(bridge)
        .iter()
        .rev()
        .map(|r| format!("insert rule {} filter FORWARD {r}\n", family.keyword()))
        .collect()
}

pub(crate) fn allow(nft: &dyn NftBackend, bridge: &IfName) -> Result<(), NftError> {
    for family in dropping_forward_chains(nft)? {
        if tagged_handles(nft, family, bridge)?.is_empty() {
            let bridge = bridge.clone();
            nft.apply(Batch::new().push(Cmd::AllowForward { family, bridge }))?;
        }
    }
    Ok(())
}

pub(crate) fn remove(nft: &dyn NftBackend, bridge: &IfName) -> Result<(), NftError> {
    for family in IpFamily::ALL {
        let handles = tagged_handles(nft, family, bridge)?;
        if handles.is_empty() {
            continue;
        }
        let mut b = Batch::new();
        for handle in handles {
            b.push(Cmd::DeleteForwardRule { family, handle });
        }
        nft.apply(&b)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn insert_script_is_tagged_per_bridge() {
        let bridge = IfName::new("cni0").unwrap();
        let mut b = Batch::new();
        b.push(Cmd::AllowForward {
            family: IpFamily::V4,
            bridge,
        })
        .push(Cmd::DeleteForwardRule {
            family: IpFamily::V6,
            handle: 7,
        });
        assert_eq!(
            b.text(),
            "insert rule ip filter FORWARD oifname \"cni0\" ct status dnat accept comment \"cnirs:cni0\"\n\
             insert rule ip filter FORWARD oifname \"cni0\" ct state established,related accept comment \"cnirs:cni0\"\n\
             insert rule ip filter FORWARD iifname \"cni0\" accept comment \"cnirs:cni0\"\n\
             delete rule ip6 filter FORWARD handle 7\n"
        );
    }

    struct Listing(&'static str);
    impl NftBackend for Listing {
        fn apply(&self, _: &Batch) -> Result<(), NftError> {
            Ok(())
        }
        fn query(&self, _: &[&str]) -> Result<Option<String>, NftError> {
            Ok(Some(self.0.to_string()))
        }
    }

    #[test]
    fn finds_only_dropping_filter_forward_chains() {
        let l = Listing(
            r#"{"nftables":[{"metainfo":{}},
            {"chain":{"family":"ip","table":"filter","name":"FORWARD","policy":"drop"}},
            {"chain":{"family":"ip6","table":"filter","name":"FORWARD","policy":"accept"}},
            {"chain":{"family":"inet","table":"cnirs","name":"forward","policy":"accept"}}]}"#,
        );
        assert_eq!(dropping_forward_chains(&l).unwrap(), vec![IpFamily::V4]);
    }
}
