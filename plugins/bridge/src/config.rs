//! The bridge plugin's config: the reference plugin's keys, typed and validated before any
//! side effect.

use cni_core::{conf::parse_value, gokeys, CniError, IfName, MacAddr, Request};
use serde::Deserialize;

/// The reference bridge plugin's keys (plugins/main/bridge/bridge.go `NetConf`).
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawConf {
    #[serde(default)]
    bridge: Option<String>,
    #[serde(default)]
    is_gateway: bool,
    #[serde(default)]
    is_default_gateway: bool,
    #[serde(default)]
    force_address: bool,
    #[serde(default)]
    ip_masq: bool,
    #[serde(default)]
    mtu: Option<u32>,
    #[serde(default)]
    hairpin_mode: bool,
    #[serde(default)]
    promisc_mode: bool,
    #[serde(default)]
    vlan: Option<u32>,
    #[serde(default)]
    vlan_trunk: Option<serde_json::Value>,
    #[serde(default)]
    macspoofchk: bool,
    #[serde(default)]
    enabledad: bool,
    #[serde(default)]
    port_isolation: bool,
    #[serde(default)]
    disable_container_interface: bool,
    #[serde(default)]
    runtime_config: Option<serde_json::Value>,
    #[serde(default)]
    args: Option<serde_json::Value>,
    /// Ours (the reference has no such key): IGMP/MLD snooping on a bridge this plugin
    /// creates. Off by default (see `netops::NewBridge`).
    #[serde(default)]
    multicast_snooping: bool,
}

#[derive(Debug, Default, Deserialize)]
struct RuntimeConfig {
    #[serde(default)]
    mac: Option<String>,
}

/// Which kind of network the plugin builds: the difference between `bridge` and
/// `internal-bridge` is this policy, not a copy of the code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Routed to the outside, optionally masqueraded.
    External,
    /// Pods reach each other and nothing else; enforced on the host.
    Internal,
}

/// A validated bridge attachment spec.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BridgeSpec {
    pub mode: Mode,
    pub bridge: IfName,
    pub is_gateway: bool,
    pub is_default_gateway: bool,
    pub force_address: bool,
    pub ip_masq: bool,
    pub mtu: Option<u32>,
    pub hairpin: bool,
    pub promisc: bool,
    pub vlan: Option<u16>,
    pub enable_dad: bool,
    pub port_isolation: bool,
    /// Drop frames from the pod whose source MAC is not the pod interface's.
    pub macspoofchk: bool,
    pub mac: Option<MacAddr>,
    pub has_ipam: bool,
    /// `mcast_snooping` of a bridge created by this plugin.
    pub mcast_snooping: bool,
}

pub fn parse(req: &Request, mode: Mode) -> Result<BridgeSpec, CniError> {
    let raw: RawConf = req.parse_conf()?;
    // The one interface-name rule, here at parse time: a name the kernel would take but nft
    // text cannot hold (`br"x`, `brü`) is refused before anything exists.
    let bridge = IfName::new(raw.bridge.as_deref().unwrap_or("cni0"))
        .map_err(|e| CniError::config("bridge", e))?;
    if let Some(mtu) = raw.mtu {
        if !(68..=65535).contains(&mtu) {
            return Err(CniError::config(
                "mtu",
                format!("{mtu} is outside 68..65535"),
            ));
        }
    }
    let vlan = match raw.vlan {
        None | Some(0) => None,
        Some(v) if v <= 4094 => Some(v as u16),
        Some(v) => return Err(CniError::config("vlan", format!("{v} is outside 0..4094"))),
    };
    if vlan.is_some() {
        return Err(CniError::config(
            "vlan",
            "VLAN tagging is not supported by this suite yet",
        ));
    }
    if raw.vlan_trunk.is_some() {
        return Err(CniError::config(
            "vlanTrunk",
            "VLAN trunks are not supported by this suite",
        ));
    }
    if raw.disable_container_interface {
        return Err(CniError::config(
            "disableContainerInterface",
            "not supported: the pod interface is always brought up",
        ));
    }
    if raw.hairpin_mode && raw.promisc_mode {
        // The reference refuses this too: the two are alternatives for the same purpose.
        return Err(CniError::config(
            "hairpinMode",
            "cannot be combined with promiscMode",
        ));
    }
    let mac = mac_request(req, &raw)?;
    let (is_gateway, is_default_gateway, ip_masq) = match mode {
        // isDefaultGateway implies isGateway, as in the reference.
        Mode::External => (
            raw.is_gateway || raw.is_default_gateway,
            raw.is_default_gateway,
            raw.ip_masq,
        ),
        Mode::Internal => {
            if raw.ip_masq || raw.is_default_gateway {
                log::info!("internal-bridge ignores ipMasq and isDefaultGateway");
            }
            (raw.is_gateway, false, false)
        }
    };
    Ok(BridgeSpec {
        mode,
        bridge,
        is_gateway,
        is_default_gateway,
        force_address: raw.force_address,
        ip_masq,
        mtu: raw.mtu,
        hairpin: raw.hairpin_mode,
        promisc: raw.promisc_mode,
        vlan,
        enable_dad: raw.enabledad,
        port_isolation: raw.port_isolation,
        macspoofchk: raw.macspoofchk,
        mac,
        mcast_snooping: raw.multicast_snooping,
        has_ipam: req
            .conf
            .ipam
            .as_ref()
            .is_some_and(|i| !i.plugin_type.is_empty()),
    })
}

/// The MAC the runtime asks for: `runtimeConfig.mac` or `CNI_ARGS` `MAC=` (reference order:
/// CNI_ARGS, then args, then runtimeConfig wins).
fn mac_request(req: &Request, raw: &RawConf) -> Result<Option<MacAddr>, CniError> {
    let mut found: Option<(String, &str)> =
        req.args.get("MAC").map(|m| (m.to_string(), "CNI_ARGS MAC"));
    if let Some(m) = raw
        .args
        .as_ref()
        .and_then(|a| gokeys::pointer(a, &["cni", "mac"]))
        .and_then(|v| v.as_str())
    {
        found = Some((m.to_string(), "args.cni.mac"));
    }
    if let Some(rc) = &raw.runtime_config {
        let rc: RuntimeConfig = parse_value(rc, "runtimeConfig")?;
        if let Some(m) = rc.mac {
            found = Some((m, "runtimeConfig.mac"));
        }
    }
    match found {
        None => Ok(None),
        Some((s, field)) => parse_mac(&s)
            .map(Some)
            .ok_or_else(|| CniError::config(field, format!("{s:?} is not a unicast MAC address"))),
    }
}

/// `aa:bb:cc:dd:ee:ff`, unicast only.
pub fn parse_mac(s: &str) -> Option<MacAddr> {
    s.parse::<MacAddr>().ok().filter(MacAddr::is_unicast)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requested_mac_must_be_a_unicast_colon_address() {
        assert_eq!(
            parse_mac("0a:58:0a:00:00:05"),
            Some(MacAddr([0x0a, 0x58, 0x0a, 0, 0, 5]))
        );
        for bad in [
            "",
            "0a:58:0a:00:00",
            "0a:58:0a:00:00:05:01",
            "01:00:5e:00:00:01",
            "zz:58:0a:00:00:05",
        ] {
            assert_eq!(parse_mac(bad), None, "{bad}");
        }
    }
}
