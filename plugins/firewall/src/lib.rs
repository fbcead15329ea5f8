//! `firewall`: a drop-in for the reference firewall plugin's config, on the suite's nftables
//! table (no iptables binary, no firewalld).
//!
//! - Forwarding on hosts whose FORWARD policy is drop: the bridge's traffic is accepted in the
//!   host's own `filter FORWARD` chains (per bridge, see `nftplan::Firewall::attach_forward`),
//!   removed with the network's last attachment.
//! - `ingressPolicy`: `open` (default) or `same-bridge`: the pod's bridge cannot be reached
//!   from other `same-bridge`/isolated bridges: the `isolation` plugin's guarantee, with its
//!   code and its set element.
//! - `backend: firewalld` is refused (we do not talk to firewalld: ignoring it would leave
//!   the pod unreachable where the user expects a zone); `backend: iptables`,
//!   `iptablesAdminChainName` and `firewalldZone` are accepted and ignored with a log line.

//!
//! Its one side effect, the firewall table, is handed to the verbs ([`FirewallCell`]).

use cni_core::{CniError, CniResult, Plugin, Request};
use nftplan::{Attachment, Feature, FirewallCell, NftError};
use serde::Deserialize;

pub struct Firewall;

cni_core::plugin_error! {
    /// The plugin's errors, each with its cause; CNI codes are chosen once, by the macro's
    /// `From<FirewallError> for CniError`.
    pub enum FirewallError {
        Nft(NftError),
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawConf {
    #[serde(default)]
    backend: Option<String>,
    #[serde(default)]
    iptables_admin_chain_name: Option<String>,
    #[serde(default)]
    firewalld_zone: Option<String>,
    #[serde(default)]
    ingress_policy: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ingress {
    Open,
    SameBridge,
}

pub fn parse(req: &Request) -> Result<Ingress, CniError> {
    let raw: RawConf = req.parse_conf()?;
    match raw.backend.as_deref() {
        None | Some("") | Some("iptables") | Some("nftables") => {}
        Some("firewalld") => {
            return Err(CniError::config(
                "backend",
                "firewalld is not supported: this plugin manages nftables rules itself (use \"iptables\" or leave it out)",
            ))
        }
        Some(other) => {
            return Err(CniError::config("backend", format!("{other:?} is not iptables or firewalld")))
        }
    }
    if raw.iptables_admin_chain_name.is_some() || raw.firewalld_zone.is_some() {
        log::info!("firewall: iptablesAdminChainName/firewalldZone are ignored (no iptables chains, no firewalld)");
    }
    match raw.ingress_policy.as_deref() {
        None | Some("") | Some("open") => Ok(Ingress::Open),
        Some("same-bridge") => Ok(Ingress::SameBridge),
        Some(other) => Err(CniError::config(
            "ingressPolicy",
            format!("{other:?} is not \"open\" or \"same-bridge\""),
        )),
    }
}

fn add(fw: &FirewallCell, req: &Request) -> Result<CniResult, FirewallError> {
    let ingress = parse(req)?;
    let prev = req.require_prev_result()?;
    if prev.container_ips(&req.ifname).is_empty() {
        return Err(CniError::config("prevResult", "no container addresses to let through").into());
    }
    let bridge = prev.bridge()?;
    let fw = fw.get()?;
    let att = Attachment::of(req)?;
    fw.attach_forward(&att, &bridge)?;
    if ingress == Ingress::SameBridge {
        if let Err(e) = fw.attach_isolation(&att, &bridge) {
            // Undo the step before, then answer with the original error.
            if let Err(u) = fw.detach_forward(&att) {
                log::warn!("{}: rollback of the FORWARD accept: {u}", req.tag());
            }
            return Err(e.into());
        }
    }
    Ok(prev)
}

/// DEL goes on past a failure: both features are released, every failure is reported.
fn del(fw: &FirewallCell, req: &Request) -> Result<(), CniError> {
    // An unknown policy must not block DEL: always release what this attachment may own.
    let _ = parse(req);
    let fw = fw.get().map_err(FirewallError::from)?;
    let att = Attachment::of(req).map_err(FirewallError::from)?;
    let errors: Vec<CniError> = [fw.detach_isolation(&att), fw.detach_forward(&att)]
        .into_iter()
        .filter_map(Result::err)
        .map(|e| FirewallError::from(e).into())
        .collect();
    cni_core::error::combine(errors)
}

fn check(fw: &FirewallCell, req: &Request) -> Result<(), FirewallError> {
    let ingress = parse(req)?;
    let prev = req.require_prev_result()?;
    prev.bridge()?;
    if ingress == Ingress::Open {
        return Ok(());
    }
    let att = Attachment::of(req)?;
    let missing = fw.get()?.check_isolation(&att)?;
    Ok(nftplan::missing_error(
        "same-bridge isolation",
        &att,
        &missing,
    )?)
}

/// GC goes on past a failure too.
fn gc(fw: &FirewallCell, req: &Request) -> Result<(), CniError> {
    let fw = fw.get().map_err(FirewallError::from)?;
    let valid = req.valid_pairs();
    let errors: Vec<CniError> = [Feature::Isolation, Feature::Firewall]
        .into_iter()
        .filter_map(|f| fw.gc(f, &req.conf.name, &valid).err())
        .map(|e| FirewallError::from(e).into())
        .collect();
    cni_core::error::combine(errors)
}

impl Plugin for Firewall {
    fn name(&self) -> &'static str {
        "firewall"
    }

    fn add(&self, req: &Request) -> Result<CniResult, CniError> {
        Ok(add(&FirewallCell::lazy(&req.detach), req)?)
    }

    fn del(&self, req: &Request) -> Result<(), CniError> {
        del(&FirewallCell::lazy(&req.detach), req)
    }

    fn check(&self, req: &Request) -> Result<(), CniError> {
        Ok(check(&FirewallCell::lazy(&req.detach), req)?)
    }

    fn gc(&self, req: &Request) -> Result<(), CniError> {
        gc(&FirewallCell::lazy(&req.detach), req)
    }
}

#[cfg(test)]
mod tests {
    use cni_core::Command;

    use super::*;

    fn parse_with(extra: &str) -> Result<Ingress, CniError> {
        let conf = format!(r#"{{"cniVersion":"1.0.0","name":"n","type":"firewall"{extra}}}"#);
        parse(
            &Request::build(
                Command::Add,
                "c",
                Some("/run/netns/p"),
                "eth0",
                conf.as_bytes(),
            )
            .unwrap(),
        )
    }

    #[test]
    fn keys_of_the_reference_config() {
        assert_eq!(parse_with("").unwrap(), Ingress::Open);
        assert_eq!(
            parse_with(r#","ingressPolicy":"same-bridge""#).unwrap(),
            Ingress::SameBridge
        );
        assert_eq!(
            parse_with(r#","backend":"iptables","iptablesAdminChainName":"X""#).unwrap(),
            Ingress::Open
        );
        for (extra, field) in [
            (r#","backend":"firewalld""#, "backend"),
            (r#","ingressPolicy":"closed""#, "ingressPolicy"),
            (r#","ingressPolicy":5"#, "ingressPolicy"),
        ] {
            let e = parse_with(extra).unwrap_err();
            assert_eq!(e.code(), 7, "{extra}");
            assert!(e.msg.contains(field), "{}", e.msg);
        }
    }

    #[test]
    fn keys_match_case_insensitively_as_go_does() {
        assert_eq!(
            parse_with(r#","IngressPolicy":"same-bridge""#).unwrap(),
            Ingress::SameBridge
        );
        let e = parse_with(r#","Backend":"firewalld""#).unwrap_err();
        assert_eq!(e.code(), 7);
        assert!(e.msg.contains("backend"), "{}", e.msg);
    }

    #[test]
    fn cri_capability_args_are_accepted() {
        let rc = r#"{"portMappings":[{"HostPort":8080,"ContainerPort":80,"Protocol":"tcp","HostIP":""}],
    "ipRanges":[[{"Subnet":"10.9.0.0/24","RangeStart":"","RangeEnd":"","Gateway":""}]],
    "bandwidth":{"IngressRate":1000000,"IngressBurst":2000000,"EgressRate":1000000,"EgressBurst":2000000},
    "dns":{"Servers":["10.96.0.10"],"Searches":["default.svc.cluster.local"],"Options":["ndots:5"]},
    "io.kubernetes.cri.pod-annotations":{"kubernetes.io/ingress-bandwidth":"1M","a":"b"}}"#;
        assert_eq!(
            parse_with(&format!(r#","runtimeConfig":{rc}"#)).unwrap(),
            Ingress::Open
        );
    }

    /// Orchestration over the in-memory firewall (no root): a host whose FORWARD policy
    /// drops, the pod's bridge accepted there and, with `same-bridge`, isolated.
    mod orchestration {
        use std::sync::Arc;

        use nftplan::{FakeNft, FirewallCell, IpFamily};

        use super::*;

        fn world() -> (Arc<FakeNft>, FirewallCell, tempfile::TempDir) {
            let nft = FakeNft::new();
            nft.add_forward_chain(IpFamily::V4, true);
            let dir = tempfile::tempdir().unwrap();
            let fw = FirewallCell::ready(nftplan::Firewall::with_backend(
                dir.path().join("netns-1"),
                Box::new(nft.clone()),
            ));
            (nft, fw, dir)
        }

        fn req(cmd: Command, policy: &str) -> Request {
            let conf = format!(
                r#"{{"cniVersion":"1.1.0","name":"n","type":"firewall","ingressPolicy":"{policy}",
                "prevResult":{{"cniVersion":"1.1.0",
                  "interfaces":[{{"name":"br-a"}},{{"name":"eth0","sandbox":"/run/netns/p"}}],
                  "ips":[{{"address":"10.1.0.5/24","interface":1}}]}}}}"#
            );
            Request::build(cmd, "c1", Some("/run/netns/p"), "eth0", conf.as_bytes()).unwrap()
        }

        #[test]
        fn add_accepts_the_bridge_and_isolates_it_and_del_removes_both() {
            let (nft, fw, _d) = world();
            add(&fw, &req(Command::Add, "same-bridge")).unwrap();
            assert!(!nft.forward_rules(IpFamily::V4).is_empty());
            assert!(!nft.elems_of("isolated_br").is_empty(), "{}", nft.dump());
            check(&fw, &req(Command::Check, "same-bridge")).unwrap();
            del(&fw, &req(Command::Del, "same-bridge")).unwrap();
            assert!(nft.forward_rules(IpFamily::V4).is_empty());
            assert!(nft.elems_of("isolated_br").is_empty());
            let e = check(&fw, &req(Command::Check, "same-bridge")).unwrap_err();
            assert_eq!(
                CniError::from(e).code(),
                cni_core::ErrorCode::CheckFailed.as_u32()
            );
        }

        #[test]
        fn a_failed_isolation_undoes_the_forward_accept() {
            // How many batches the forward accept alone takes.
            let (nft, fw, _d) = world();
            add(&fw, &req(Command::Add, "open")).unwrap();
            let forward = nft.batches().len();
            assert!(!nft.forward_rules(IpFamily::V4).is_empty());

            let (nft, fw, _d) = world();
            let mut outcomes = vec![false; forward];
            // The isolation batch and its retry with the skeleton.
            outcomes.extend([true; 2]);
            nft.fail_next(&outcomes);
            let e = add(&fw, &req(Command::Add, "same-bridge")).unwrap_err();
            assert_eq!(CniError::from(e).code(), 101);
            assert!(
                nft.forward_rules(IpFamily::V4).is_empty(),
                "the accept is undone: {:?}",
                nft.forward_rules(IpFamily::V4)
            );
        }

        #[test]
        fn del_goes_on_past_a_failure_and_gc_releases_stale_attachments() {
            let (nft, fw, _d) = world();
            add(&fw, &req(Command::Add, "same-bridge")).unwrap();
            // The isolation release fails (every batch of it): the forward release still
            // runs, the failure is reported.
            // (the batch, its retry with the skeleton, the element on its own).
            nft.fail_next(&[true; 3]);
            assert!(del(&fw, &req(Command::Del, "same-bridge")).is_err());
            assert!(nft.forward_rules(IpFamily::V4).is_empty());
            assert!(!nft.elems_of("isolated_br").is_empty());
            del(&fw, &req(Command::Del, "same-bridge")).unwrap();
            assert!(nft.elems_of("isolated_br").is_empty());

            add(&fw, &req(Command::Add, "same-bridge")).unwrap();
            gc(&fw, &req(Command::Gc, "same-bridge")).unwrap();
            assert!(nft.forward_rules(IpFamily::V4).is_empty());
            assert!(nft.elems_of("isolated_br").is_empty());
        }
    }
}
