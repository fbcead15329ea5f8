//! `isolation`: a chained plugin that puts the pod's bridge in the firewall table's
//! `isolated_br` set. Traffic between two isolated bridges is dropped in both directions;
//! traffic inside one bridge, published ports and return traffic keep working. The element is
//! refcounted per network: the last DEL (or GC) of a network removes it. No rules per pod or
//! per network: one set element per network.

use cni_core::{CniError, CniResult, Plugin, Request};
use nftplan::{Attachment, Feature, Firewall};

pub struct Isolation;

impl Plugin for Isolation {
    fn name(&self) -> &'static str {
        "isolation"
    }

    fn add(&self, req: &Request) -> Result<CniResult, CniError> {
        let prev = req.require_prev_result()?;
        let bridge = prev.bridge()?;
        Firewall::open()?.attach_isolation(&Attachment::of(req)?, &bridge)?;
        Ok(prev)
    }

    fn del(&self, req: &Request) -> Result<(), CniError> {
        Ok(Firewall::open()?.detach_isolation(&Attachment::of(req)?)?)
    }

    fn check(&self, req: &Request) -> Result<(), CniError> {
        let prev = req.require_prev_result()?;
        prev.bridge()?;
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
        assert_eq!(prev.bridge().unwrap().as_str(), "br-a");
        let none = CniResult::default();
        assert_eq!(none.bridge().unwrap_err().code(), 7);
    }

    fn serde_json_value() -> serde_json::Value {
        serde_json::json!({"cniVersion":"1.0.0","interfaces":[
            {"name":"eth0","sandbox":"/run/netns/x"},{"name":"br-a"},{"name":"vethx"}]})
    }
}
