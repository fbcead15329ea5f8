//! `isolation`: a chained plugin that puts the pod's bridge in the firewall table's
//! `isolated_br` set. Traffic between two isolated bridges is dropped in both directions;
//! traffic inside one bridge, published ports and return traffic keep working. The element is
//! refcounted per network: the last DEL (or GC) of a network removes it. No rules per pod or
//! per network: one set element per network.

use cni_core::{error::from_classified, CniError, CniResult, Plugin, Request};
use nftplan::{Attachment, Feature, Firewall, NftError};

pub struct Isolation;

/// The plugin's errors, each with its cause; CNI codes are chosen once, in the `From` below.
#[derive(Debug, thiserror::Error)]
pub enum IsolationError {
    #[error(transparent)]
    Cni(#[from] CniError),
    #[error(transparent)]
    Firewall(#[from] NftError),
}

impl From<IsolationError> for CniError {
    fn from(e: IsolationError) -> CniError {
        match e {
            IsolationError::Cni(c) => c,
            IsolationError::Firewall(f) => from_classified(f.class(), &f, None),
        }
    }
}

fn attachment(req: &Request) -> Result<Attachment, NftError> {
    Attachment::new(&req.conf.name, &req.container_id, &req.ifname)
}

fn add(req: &Request) -> Result<CniResult, IsolationError> {
    let prev = req.require_prev_result()?;
    let bridge = prev.bridge()?;
    Firewall::open_with(&req.detach)?.attach_isolation(&attachment(req)?, &bridge)?;
    Ok(prev)
}

fn del(req: &Request) -> Result<(), IsolationError> {
    Ok(Firewall::open_with(&req.detach)?.detach_isolation(&attachment(req)?)?)
}

fn check(req: &Request) -> Result<(), IsolationError> {
    let prev = req.require_prev_result()?;
    prev.bridge()?;
    let att = attachment(req)?;
    let missing = Firewall::open_with(&req.detach)?.check_isolation(&att)?;
    Ok(nftplan::missing_error(
        "isolation elements",
        &att,
        &missing,
    )?)
}

impl Plugin for Isolation {
    fn name(&self) -> &'static str {
        "isolation"
    }

    fn add(&self, req: &Request) -> Result<CniResult, CniError> {
        Ok(add(req)?)
    }

    fn del(&self, req: &Request) -> Result<(), CniError> {
        Ok(del(req)?)
    }

    fn check(&self, req: &Request) -> Result<(), CniError> {
        Ok(check(req)?)
    }

    fn gc(&self, req: &Request) -> Result<(), CniError> {
        let gc = |fw: Firewall| fw.gc(Feature::Isolation, &req.conf.name, &req.valid_pairs());
        Ok(Firewall::open_with(&req.detach)
            .and_then(gc)
            .map_err(IsolationError::from)?)
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
