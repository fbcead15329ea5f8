//! The `ipam` section the reference reads (`daemonSocketPath`, `provide`, `request`,
//! `priority`), the client id it derives, and the DHCP options it sends (`prepareOptions`).
//! Pure: unit-tested without root.

use std::path::PathBuf;

use cni_core::CniError;
use dhcproto::v4::{DhcpOption, OptionCode, UnknownOption};
use serde::Deserialize;

/// The reference daemon's socket (`defaultSocketPath`).
pub const DEFAULT_SOCKET_PATH: &str = "/run/cni/dhcp.sock";

#[derive(Debug, Default, Deserialize)]
struct RawNet {
    #[serde(default)]
    name: String,
    ipam: Option<RawIpam>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawIpam {
    daemon_socket_path: Option<String>,
    provide: Option<Vec<ProvideOption>>,
    request: Option<Vec<RequestOption>>,
    priority: Option<i64>,
}

/// `provide`: an option sent to the server, with a fixed `value` and/or one taken from
/// `CNI_ARGS` (`fromArg`), e.g. `{"option": "host-name", "fromArg": "K8S_POD_NAME"}`.
#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
pub struct ProvideOption {
    #[serde(default)]
    pub option: String,
    #[serde(default)]
    pub value: String,
    #[serde(default, rename = "fromArg")]
    pub from_arg: String,
}

/// `request`: an option asked for in the parameter request list; `skipDefault` drops the
/// default ones (routers, subnet-mask).
#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct RequestOption {
    #[serde(default)]
    pub skip_default: bool,
    #[serde(default)]
    pub option: String,
}

/// What the plugin and the daemon read from one config.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DhcpConfig {
    /// The network name (part of the client id).
    pub network: String,
    pub socket_path: PathBuf,
    pub provide: Vec<ProvideOption>,
    pub request: Vec<RequestOption>,
    /// `priority`: the metric of the routes in the result (0: none).
    pub priority: u32,
}

/// Parse the config (keys matched as Go matches them). `ipam` must be there.
pub fn parse(stdin: &[u8]) -> Result<DhcpConfig, CniError> {
    let net: RawNet = cni_core::conf::parse(stdin)?;
    let ipam = net
        .ipam
        .ok_or_else(|| CniError::config("ipam", "IPAM config missing 'ipam' key"))?;
    let priority = match ipam.priority {
        None => 0,
        Some(p) => u32::try_from(p)
            .map_err(|_| CniError::config("ipam.priority", format!("{p} is out of range")))?,
    };
    Ok(DhcpConfig {
        network: net.name,
        socket_path: ipam
            .daemon_socket_path
            .filter(|s| !s.is_empty())
            .unwrap_or_else(|| DEFAULT_SOCKET_PATH.to_string())
            .into(),
        provide: ipam.provide.unwrap_or_default(),
        request: ipam.request.unwrap_or_default(),
        priority,
    })
}

/// The client id the reference sends (`generateClientID`): `<container>/<network>/<ifname>`,
/// cut to 254 bytes (RFC 2132 gives the option one length octet).
pub fn client_id(container_id: &str, network: &str, ifname: &str) -> String {
    let mut id = format!("{container_id}/{network}/{ifname}");
    if id.len() > 254 {
        let mut cut = 254;
        while !id.is_char_boundary(cut) {
            cut -= 1;
        }
        id.truncate(cut);
    }
    id
}

/// Option 61 as the reference builds it: type 0 (not a hardware address), then the id.
pub fn client_id_option(client_id: &str) -> DhcpOption {
    let mut v = Vec::with_capacity(client_id.len() + 1);
    v.push(0);
    v.extend_from_slice(client_id.as_bytes());
    DhcpOption::ClientIdentifier(v)
}

/// The option names the reference knows (`optionNameToID`), else a number 0-255.
pub fn option_code(name: &str) -> Result<u8, String> {
    Ok(match name {
        "dhcp-client-identifier" => 61,
        "subnet-mask" => 1,
        "routers" => 3,
        "host-name" => 12,
        "user-class" => 77,
        "vendor-class-identifier" => 60,
        other => other
            .parse::<u8>()
            .map_err(|e| format!("Can not parse option {other:?}: {e}"))?,
    })
}

/// The options every message carries besides the client id (`prepareOptions`): each
/// `provide` option (its `value`, then the `CNI_ARGS` value named by `fromArg`, which wins),
/// and the parameter request list: the `request` options, then routers and subnet-mask unless
/// one entry says `skipDefault`.
pub fn prepare_options(
    cni_args: &str,
    provide: &[ProvideOption],
    request: &[RequestOption],
) -> Result<Vec<DhcpOption>, CniError> {
    // The reference splits CNI_ARGS itself, loosely: pairs without '=' are skipped.
    let args: Vec<(&str, &str)> = cni_args
        .split(';')
        .filter_map(|p| p.split_once('='))
        .collect();
    let arg = |k: &str| {
        args.iter()
            .rev()
            .find(|(key, _)| *key == k)
            .map(|(_, v)| *v)
    };
    let mut opts: Vec<DhcpOption> = Vec::new();
    let mut put = |code: u8, value: &str| {
        let opt = DhcpOption::Unknown(UnknownOption::new(
            OptionCode::from(code),
            value.as_bytes().to_vec(),
        ));
        opts.retain(|o| u8::from(OptionCode::from(o)) != code);
        opts.push(opt);
    };
    for (i, p) in provide.iter().enumerate() {
        let field = format!("ipam.provide[{i}]");
        let code = option_code(&p.option).map_err(|e| CniError::config(&field, e))?;
        if !p.value.is_empty() {
            if p.value.len() > 255 {
                return Err(CniError::config(
                    &format!("{field}.value"),
                    format!("value too long for option {:?}", p.option),
                ));
            }
            put(code, &p.value);
        }
        if let Some(v) = arg(&p.from_arg) {
            if v.len() > 255 {
                return Err(CniError::config(
                    &format!("{field}.fromArg"),
                    format!(
                        "value too long for option {:?} from CNI_ARGS {:?}",
                        p.option, p.from_arg
                    ),
                ));
            }
            put(code, v);
        }
    }
    let mut list: Vec<u8> = Vec::new();
    let mut skip_default = false;
    for (i, r) in request.iter().enumerate() {
        skip_default |= r.skip_default;
        if r.option.is_empty() {
            continue;
        }
        let code = option_code(&r.option)
            .map_err(|e| CniError::config(&format!("ipam.request[{i}]"), e))?;
        if !list.contains(&code) {
            list.push(code);
        }
    }
    if !skip_default {
        for code in [3, 1] {
            if !list.contains(&code) {
                list.push(code);
            }
        }
    }
    if !list.is_empty() {
        opts.push(DhcpOption::ParameterRequestList(
            list.into_iter().map(OptionCode::from).collect(),
        ));
    }
    Ok(opts)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn defaults_and_go_cased_keys() {
        let c = parse(br#"{"name":"n","ipam":{"type":"dhcp"}}"#).unwrap();
        assert_eq!(c.socket_path, PathBuf::from(DEFAULT_SOCKET_PATH));
        assert_eq!((c.network.as_str(), c.priority), ("n", 0));
        let c = parse(
            br#"{"Name":"n","IPAM":{"DaemonSocketPath":"/tmp/d.sock","Priority":7,
                "Provide":[{"Option":"host-name","FromArg":"K8S_POD_NAME"}],
                "Request":[{"SkipDefault":true,"Option":"42"}]}}"#,
        )
        .unwrap();
        assert_eq!(c.socket_path, PathBuf::from("/tmp/d.sock"));
        assert_eq!(c.priority, 7);
        assert_eq!(c.provide[0].from_arg, "K8S_POD_NAME");
        assert!(c.request[0].skip_default);
        assert_eq!(parse(br#"{"name":"n"}"#).unwrap_err().code(), 7);
        assert_eq!(parse(br#"{"ipam":{"priority":-1}}"#).unwrap_err().code(), 7);
    }

    #[test]
    fn client_id_is_container_network_ifname_cut_to_254_bytes() {
        assert_eq!(client_id("c1", "net", "eth0"), "c1/net/eth0");
        let long = "x".repeat(300);
        assert_eq!(client_id(&long, "net", "eth0").len(), 254);
        assert_eq!(
            client_id_option("c1/net/eth0"),
            DhcpOption::ClientIdentifier(b"\0c1/net/eth0".to_vec())
        );
    }

    fn raw(o: &DhcpOption) -> (u8, Vec<u8>) {
        match o {
            DhcpOption::Unknown(u) => (u8::from(u.code()), u.data().to_vec()),
            DhcpOption::ParameterRequestList(l) => (55, l.iter().map(|c| u8::from(*c)).collect()),
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn default_request_list_is_routers_and_subnet_mask() {
        let o = prepare_options("", &[], &[]).unwrap();
        assert_eq!(
            o.iter().map(raw).collect::<Vec<_>>(),
            vec![(55, vec![3, 1])]
        );
        let o = prepare_options(
            "",
            &[],
            &[RequestOption {
                skip_default: true,
                option: String::new(),
            }],
        )
        .unwrap();
        assert!(o.is_empty(), "skipDefault with nothing asked: no list");
        let o = prepare_options(
            "",
            &[],
            &[RequestOption {
                skip_default: false,
                option: "host-name".into(),
            }],
        )
        .unwrap();
        assert_eq!(raw(&o[0]), (55, vec![12, 3, 1]));
    }

    #[test]
    fn provided_options_take_cni_args_over_the_fixed_value() {
        let provide = vec![
            ProvideOption {
                option: "host-name".into(),
                value: "fixed".into(),
                from_arg: "K8S_POD_NAME".into(),
            },
            ProvideOption {
                option: "60".into(),
                value: "vendor".into(),
                from_arg: String::new(),
            },
        ];
        let o = prepare_options("IgnoreUnknown=1;K8S_POD_NAME=web-0;junk", &provide, &[]).unwrap();
        let got: Vec<_> = o.iter().map(raw).collect();
        assert!(got.contains(&(12, b"web-0".to_vec())), "{got:?}");
        assert!(got.contains(&(60, b"vendor".to_vec())), "{got:?}");
        assert!(!got.contains(&(12, b"fixed".to_vec())), "{got:?}");
        let o = prepare_options("", &provide, &[]).unwrap();
        assert!(o.iter().map(raw).any(|x| x == (12, b"fixed".to_vec())));
    }

    #[test]
    fn bad_options_are_code_7() {
        for name in ["no-such-option", "256", "-1"] {
            let p = [ProvideOption {
                option: name.into(),
                value: "v".into(),
                from_arg: String::new(),
            }];
            assert_eq!(
                prepare_options("", &p, &[]).unwrap_err().code(),
                7,
                "{name}"
            );
        }
        let p = [ProvideOption {
            option: "host-name".into(),
            value: "v".repeat(256),
            from_arg: String::new(),
        }];
        assert_eq!(prepare_options("", &p, &[]).unwrap_err().code(), 7);
    }
}
