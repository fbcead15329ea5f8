//! The network configuration on stdin: the keys every plugin shares, and typed parsing of a
//! plugin's own keys with errors that name the field.
//!
//! Unknown keys are ignored (runtimes inject their own); bad values are refused with code 7 and
//! the JSON path of the field (`ipam.ranges[0][0].subnet: ...`), broken JSON with code 6.
//! Keys are matched as Go's `encoding/json` matches them (exact, else case-insensitive), so
//! `HostPort` from containerd's CRI fills `hostPort`: see [`crate::gokeys`].

use std::collections::HashMap;

use serde::{de::DeserializeOwned, Deserialize};
use serde_json::Value;

use crate::{
    error::{CniError, ErrorCode},
    gokeys::GoKeys,
    result::Dns,
};

/// The keys the spec gives every plugin config.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NetConf {
    pub cni_version: Option<String>,
    #[serde(default)]
    pub name: String,
    #[serde(default, rename = "type")]
    pub plugin_type: String,
    #[serde(default)]
    pub capabilities: HashMap<String, bool>,
    pub ipam: Option<IpamRef>,
    #[serde(default)]
    pub dns: Option<Dns>,
    /// The `args` object (e.g. `args.cni.ips`), left raw for the plugin.
    pub args: Option<Value>,
    /// The previous plugin's result, left raw: read it with `Request::prev_result`.
    pub prev_result: Option<Value>,
    /// Capability arguments the runtime filled in (`portMappings`, `ips`, `mac`, ...).
    pub runtime_config: Option<Value>,
    /// GC: the attachments that are still valid.
    #[serde(rename = "cni.dev/valid-attachments")]
    pub valid_attachments: Option<Vec<Attachment>>,
}

/// Just enough of `ipam` to find the plugin to delegate to.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct IpamRef {
    #[serde(default, rename = "type")]
    pub plugin_type: String,
}

/// One (container, interface) pair, as GC lists the valid ones.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Deserialize, serde::Serialize)]
pub struct Attachment {
    #[serde(rename = "containerID")]
    pub container_id: String,
    pub ifname: String,
}

/// Parse `bytes` as `T`, mapping syntax errors to code 6 and bad values to code 7 naming the
/// field's path. Keys match struct fields as Go's `encoding/json` matches them ([`GoKeys`]).
pub fn parse<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, CniError> {
    // One JSON document and nothing after it (the reference refuses `{..}garbage` too).
    let value: Value = serde_json::from_slice(bytes)
        .map_err(|e| CniError::new(ErrorCode::Decode, format!("decoding network config: {e}")))?;
    parse_value(&value, "")
}

/// serde_json appends "at line 1 column 42": useless once we name the field.
fn strip_position(e: &serde_json::Error) -> String {
    let s = e.to_string();
    match s.rfind(" at line ") {
        Some(i) => s[..i].to_string(),
        None => s,
    }
}

/// Parse a config object or sub-object (`runtimeConfig`, already a `Value`) as `T`, keys
/// matched as Go matches them; a bad value is code 7 naming `field` and the path under it
/// (`field` empty: the path alone, or `config` for the whole document).
pub fn parse_value<T: DeserializeOwned>(value: &Value, field: &str) -> Result<T, CniError> {
    serde_path_to_error::deserialize(GoKeys(value)).map_err(|e| {
        let path = e.path().to_string();
        let full = match (field.is_empty(), path == ".") {
            (true, true) => "config".to_string(),
            (true, false) => path,
            (false, true) => field.to_string(),
            (false, false) => format!("{field}.{path}"),
        };
        CniError::config(&full, strip_position(&e.into_inner()))
    })
}

/// A network name is a path component of host-local's dataDir and a key of our state: the
/// same rule as libcni's `ValidateNetworkName`.
pub fn validate_network_name(name: &str) -> Result<(), CniError> {
    if name.is_empty() {
        return Err(CniError::config("name", "missing network name"));
    }
    if !is_safe_name(name) {
        return Err(CniError::config(
            "name",
            format!("{name:?} is not a valid network name: use letters, digits, '_', '.', '-', starting with a letter or digit"),
        ));
    }
    Ok(())
}

/// `^[a-zA-Z0-9][a-zA-Z0-9_.\-]*$`, the pattern libcni uses for network names and container ids.
pub fn is_safe_name(s: &str) -> bool {
    let mut bytes = s.bytes();
    match bytes.next() {
        Some(b) if b.is_ascii_alphanumeric() => {}
        _ => return false,
    }
    bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'.' || b == b'-')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Deserialize)]
    #[allow(dead_code)]
    struct Demo {
        mtu: Option<u32>,
        ipam: Option<DemoIpam>,
    }
    #[derive(Debug, Deserialize)]
    #[allow(dead_code)]
    struct DemoIpam {
        ranges: Vec<Vec<DemoRange>>,
    }
    #[derive(Debug, Deserialize)]
    #[allow(dead_code)]
    struct DemoRange {
        subnet: String,
    }

    #[test]
    fn wrong_type_is_code_7_naming_the_path() {
        let e = parse::<Demo>(br#"{"ipam":{"ranges":[[{"subnet":5}]]}}"#).unwrap_err();
        assert_eq!(e.code(), 7);
        assert!(e.msg.contains("ipam.ranges[0][0].subnet"), "{}", e.msg);
        let e = parse::<Demo>(br#"{"mtu":"big"}"#).unwrap_err();
        assert!(e.msg.contains("mtu"), "{}", e.msg);
    }

    #[test]
    fn broken_json_is_code_6() {
        for bad in [
            &b"{"[..],
            b"",
            b"not json",
            b"{\"mtu\": 1,",
            b"{}{}",
            b"{\"mtu\":1}garbage",
        ] {
            assert_eq!(parse::<Demo>(bad).unwrap_err().code(), 6);
        }
    }

    #[test]
    fn unknown_keys_are_ignored() {
        let d: Demo = parse(br#"{"mtu":1400,"nerdctlID":"x","whatever":{"a":1}}"#).unwrap();
        assert_eq!(d.mtu, Some(1400));
    }

    #[test]
    fn network_names() {
        for ok in ["a", "cni0", "my-net_1.2", "0net"] {
            assert!(validate_network_name(ok).is_ok(), "{ok}");
        }
        for bad in [
            "", ".", "..", "../etc", "a/b", "-x", "a b", "a\0b", ".hidden",
        ] {
            let e = validate_network_name(bad).unwrap_err();
            assert_eq!(e.code(), 7, "{bad}");
            assert!(e.msg.contains("name"));
        }
    }

    #[test]
    fn common_keys_parse() {
        let c: NetConf = parse(
            br#"{"cniVersion":"1.0.0","name":"n","type":"bridge","ipam":{"type":"host-local"},
                "cni.dev/valid-attachments":[{"containerID":"c1","ifname":"eth0"}]}"#,
        )
        .unwrap();
        assert_eq!(c.ipam.unwrap().plugin_type, "host-local");
        assert_eq!(c.valid_attachments.unwrap()[0].container_id, "c1");
    }

    /// libcni's NetConf is decoded by Go's encoding/json too: `CNIVersion`, `Type`, `IPAM`,
    /// `RuntimeConfig` reach every plugin (isolation reads nothing else).
    #[test]
    fn common_keys_match_case_insensitively_as_go_does() {
        let c: NetConf = parse(
            br#"{"CNIVersion":"1.0.0","Name":"n","Type":"isolation","IPAM":{"Type":"host-local"},
                "Capabilities":{"portMappings":true},"RuntimeConfig":{"PortMappings":[]},
                "PrevResult":{"cniVersion":"1.0.0"}}"#,
        )
        .unwrap();
        assert_eq!(c.cni_version.as_deref(), Some("1.0.0"));
        assert_eq!(
            (c.name.as_str(), c.plugin_type.as_str()),
            ("n", "isolation")
        );
        assert_eq!(c.ipam.unwrap().plugin_type, "host-local");
        assert_eq!(c.capabilities.get("portMappings"), Some(&true));
        assert!(c.runtime_config.is_some() && c.prev_result.is_some());
        let e = parse::<NetConf>(br#"{"Name":5}"#).unwrap_err();
        assert_eq!(e.code(), 7);
        assert!(e.msg.contains("name"), "{}", e.msg);
    }
}
