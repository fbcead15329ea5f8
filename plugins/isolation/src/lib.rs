//! `isolation`: a chained plugin that puts the pod's bridge in the firewall table's
//! `isolated_br` set. Traffic between two isolated bridges is dropped in both directions;
//! traffic inside one bridge, published ports and return traffic keep working. The element is
//! refcounted per network: the last DEL (or GC) of a network removes it. No rules per pod or
//! per network: one set element per network.

//!
//! Its one side effect, the firewall, is handed to the verbs ([`FirewallCell`]).

use cni_core::{CniError, CniResult, Plugin, Request};
use nftplan::{Attachment, Feature, FirewallCell, NftError};

pub struct Isolation;

cni_core::plugin_error! {
    /// The plugin's errors, each with its cause; CNI codes are chosen once, by the macro's
    /// `From<IsolationError> for CniError`.
    pub enum IsolationError {
        Firewall(NftError),
    }
}

fn add(fw: &FirewallCell, req: &Request) -> Result<CniResult, IsolationError> {
    let prev = req.require_prev_result()?;
    let bridge = prev.bridge()?;
    fw.get()?.attach_isolation(&Attachment::of(req)?, &bridge)?;
    Ok(prev)
}

fn del(fw: &FirewallCell, req: &Request) -> Result<(), IsolationError> {
    Ok(fw.get()?.detach_isolation(&Attachment::of(req)?)?)
}

fn check(fw: &FirewallCell, req: &Request) -> Result<(), IsolationError> {
    let prev = req.require_prev_result()?;
    prev.bridge()?;
    let att = Attachment::of(req)?;
    let missing = fw.get()?.check_isolation(&att)?;
    Ok(nftplan::missing_error(
        "isolation elements",
        &att,
        &missing,
    )?)
}

fn gc(fw: &FirewallCell, req: &Request) -> Result<(), IsolationError> {
    let fw = fw.get()?;
    Ok(fw.gc(Feature::Isolation, &req.conf.name, &req.valid_pairs())?)
}

impl Plugin for Isolation {
    fn name(&self) -> &'static str {
        "isolation"
    }

    fn add(&self, req: &Request) -> Result<CniResult, CniError> {
        Ok(add(&FirewallCell::lazy(&req.detach), req)?)
    }

    fn del(&self, req: &Request) -> Result<(), CniError> {
        Ok(del(&FirewallCell::lazy(&req.detach), req)?)
    }

    fn check(&self, req: &Request) -> Result<(), CniError> {
        Ok(check(&FirewallCell::lazy(&req.detach), req)?)
    }

    fn gc(&self, req: &Request) -> Result<(), CniError> {
        Ok(gc(&FirewallCell::lazy(&req.detach), req)?)
    }
}

#[cfg(test)]
mod tests {
    use cni_core::Command;

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

    /// Orchestration over the in-memory firewall (no root): the bridge's element is held
    /// while any attachment of the network holds it.
    #[test]
    fn the_bridge_is_isolated_until_the_last_attachment_goes() {
        let nft = nftplan::FakeNft::new();
        let dir = tempfile::tempdir().unwrap();
        let fw = FirewallCell::ready(nftplan::Firewall::with_backend(
            dir.path().join("netns-1"),
            Box::new(nft.clone()),
        ));
        let req = |cmd, cid: &str| {
            let mut conf = serde_json::json!({"cniVersion":"1.1.0","name":"n","type":"isolation"});
            conf["prevResult"] = serde_json_value();
            Request::build(
                cmd,
                cid,
                Some("/run/netns/x"),
                "eth0",
                conf.to_string().as_bytes(),
            )
            .unwrap()
        };
        add(&fw, &req(Command::Add, "c1")).unwrap();
        add(&fw, &req(Command::Add, "c2")).unwrap();
        check(&fw, &req(Command::Check, "c1")).unwrap();
        assert_eq!(nft.elems_of("isolated_br").len(), 1);
        del(&fw, &req(Command::Del, "c1")).unwrap();
        assert_eq!(nft.elems_of("isolated_br").len(), 1, "c2 still holds it");
        del(&fw, &req(Command::Del, "c2")).unwrap();
        assert!(nft.elems_of("isolated_br").is_empty());
        let e = check(&fw, &req(Command::Check, "c1")).unwrap_err();
        assert_eq!(
            CniError::from(e).code(),
            cni_core::ErrorCode::CheckFailed.as_u32()
        );
        // GC with nothing valid drops what a lost DEL left.
        add(&fw, &req(Command::Add, "c3")).unwrap();
        gc(&fw, &req(Command::Gc, "gc")).unwrap();
        assert!(nft.elems_of("isolated_br").is_empty());
    }
}
