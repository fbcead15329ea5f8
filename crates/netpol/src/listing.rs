//! What `cnirs policy ls` prints.

use std::{collections::BTreeSet, net::IpAddr};

use nftplan::Elem;

use crate::compile::World;

/// What `cnirs policy ls` prints: each policy with its types and the pods it selects (those
/// with an attachment on this host and those only applied), then the element count.
pub fn listing(w: &World, elems: &BTreeSet<Elem>) -> String {
    let mut s = String::new();
    for p in &w.policies {
        let types: Vec<&str> = [
            p.ingress.as_ref().map(|_| "Ingress"),
            p.egress.as_ref().map(|_| "Egress"),
        ]
        .into_iter()
        .flatten()
        .collect();
        let selected: Vec<String> = w
            .pods
            .iter()
            .filter(|pod| pod.namespace == p.namespace && p.pod_selector.matches(&pod.labels))
            .map(|pod| {
                let ips: Vec<String> = pod.ips.iter().map(IpAddr::to_string).collect();
                if ips.is_empty() {
                    format!("{} (not on this host)", pod.name)
                } else {
                    format!("{} ({})", pod.name, ips.join(", "))
                }
            })
            .collect();
        s.push_str(&format!(
            "{}/{}  types={}  podSelector={}  rules: ingress={} egress={}\n  selects: {}\n",
            p.namespace,
            p.name,
            types.join(","),
            p.pod_selector,
            p.ingress.as_ref().map_or(0, Vec::len),
            p.egress.as_ref().map_or(0, Vec::len),
            if selected.is_empty() {
                "-".to_owned()
            } else {
                selected.join(", ")
            }
        ));
    }
    let iso = elems
        .iter()
        .filter(|e| matches!(e, Elem::NpIsolated { .. }))
        .count();
    s.push_str(&format!(
        "{} policies, {} pods known, {} isolations, {} elements in table inet cnirs\n",
        w.policies.len(),
        w.pods.len(),
        iso,
        elems.len()
    ));
    s
}
