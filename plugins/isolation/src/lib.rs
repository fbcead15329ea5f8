//! `isolation`: a chained plugin that puts the pod's bridge in the firewall table's
//! `isolated_br` set. Traffic between two isolated bridges is dropped in both directions;
//! traffic inside one bridge, published ports and return traffic keep working. The element is
//! refcounted per network: the last DEL (or GC) of a network removes it. No rules per pod or
//! per network: one set element per network.

use cni_core::{CniError, CniResult, Plugin, Request};
use nftplan::{Attachment, Feature, Firewall, IfName};

pub struct Isolation;

/// The host-side bridge the pod hangs off: the first host interface of the previous result
/// (`bridge` and `internal-bridge` list the bridge first, like the reference bridge plugin).
pub fn bridge_of(prev: &CniResult) -> Result<IfName, CniError> {
    let name = prev
        .interfaces
        .iter()
        .find(|i| i.sandbox.is_empty())
        .map(|i| i.name.as_str())
        .ok_or_else(|| {
            CniError::config(
                "prevResult.interfaces",
                "no host-side interface: isolation must follow bridge or internal-bridge",
            )
        })?;
    Ok(IfName::new(name)?)
}

impl Plugin for Isolation {
    fn name(&self) -> &'static str {
        "isolation"
    }

    fn add(&self, req: &Request) -> Result<CniResult, CniError> {
        let prev = req.require_prev_result()?;
        let bridge = bridge_of(&prev)?;
        Firewall::open()?.attach_isolation(&Attachment::of(req)?, &bridge)?;
        Ok(prev)
    }

    fn del(&self, req: &Request) -> Result<(), CniError> {
        Ok(Firewall::open()?.detach_isolation(&Attachment::of(req)?)?)
    }

    fn check(&self, req: &Request) -> Result<(), CniError> {
        let prev = req.require_prev_result()?;
        bridge_of(&prev)?;
        let att = Attachment::of(req)?;
        let missing = Firewall::open()?.check_isolation(&att)?;
        nftplan::missing_error("isolation elements", &att, &missing)
    }

    fn gc(&self, req: &Request) -> Result<(), CniError> {
        Ok(Firewall::open()?.gc_request(Feature::Isolation, req)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bridge_comes_from_the_first_host_interface() {
        let prev = CniResult::from_json(&serde_json_value(), "prevResult").unwrap();
        assert_eq!(bridge_of(&prev).unwrap().as_str(), "br-a");
        let none = CniResult::default();
        assert_eq!(bridge_of(&none).unwrap_err().code(), 7);
    }

    fn serde_json_value() -> serde_json::Value {
        serde_json::json!({"cniVersion":"1.0.0","interfaces":[
            {"name":"eth0","sandbox":"/run/netns/x"},{"name":"br-a"},{"name":"vethx"}]})
    }
}
