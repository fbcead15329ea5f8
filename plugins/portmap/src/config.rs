//! portmap's config: `runtimeConfig.portMappings` plus the reference plugin's keys, validated,
//! and the pure step that turns mappings + the pod's addresses into DNAT entries.

use std::net::IpAddr;

use cni_core::{conf::parse_value, CniError, CniResult, Request};
use serde::Deserialize;

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawConf {
    #[serde(default)]
    snat: Option<bool>,
    #[serde(default)]
    masq_all: Option<bool>,
    #[serde(default, rename = "conditionsV4")]
    conditions_v4: Option<Vec<String>>,
    #[serde(default, rename = "conditionsV6")]
    conditions_v6: Option<Vec<String>>,
    #[serde(default)]
    external_set_mark_chain: Option<String>,
    #[serde(default)]
    backend: Option<String>,
    #[serde(default)]
    runtime_config: Option<serde_json::Value>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct RuntimeConfig {
    #[serde(default)]
    port_mappings: Vec<RawMapping>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawMapping {
    host_port: i64,
    container_port: i64,
    #[serde(default)]
    protocol: Option<String>,
    #[serde(default, rename = "hostIP")]
    host_ip: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Protocol {
    Tcp,
    Udp,
    Sctp,
}

impl Protocol {
    fn parse(s: &str) -> Option<Self> {
        match s.to_ascii_lowercase().as_str() {
            "" | "tcp" => Some(Self::Tcp),
            "udp" => Some(Self::Udp),
            "sctp" => Some(Self::Sctp),
            _ => None,
        }
    }
}

/// One validated mapping as the runtime asked for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mapping {
    /// `None` for every address (`""`, `0.0.0.0`, `::`); the family of a wildcard is kept in
    /// `wildcard_family` (None = both).
    pub host_ip: Option<IpAddr>,
    pub wildcard_v4_only: bool,
    pub wildcard_v6_only: bool,
    pub host_port: u16,
    pub container_port: u16,
    pub protocol: Protocol,
}

/// One DNAT entry: a mapping bound to one of the pod's addresses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dnat {
    pub host_ip: Option<IpAddr>,
    pub host_port: u16,
    pub protocol: Protocol,
    pub container_ip: IpAddr,
    pub container_port: u16,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PortmapSpec {
    pub mappings: Vec<Mapping>,
}

pub fn parse(req: &Request) -> Result<PortmapSpec, CniError> {
    let raw: RawConf = req.parse_conf()?;
    if raw.snat == Some(false) {
        return Err(CniError::config(
            "snat",
            "false is not supported: hairpin and localhost publishing need masquerade",
        ));
    }
    if raw.masq_all == Some(true) {
        return Err(CniError::config("masqAll", "true is not supported"));
    }
    for (field, c) in [
        ("conditionsV4", &raw.conditions_v4),
        ("conditionsV6", &raw.conditions_v6),
    ] {
        if c.as_ref().is_some_and(|c| !c.is_empty()) {
            return Err(CniError::config(
                field,
                "iptables match conditions are not supported (rules are nftables maps)",
            ));
        }
    }
    if raw.external_set_mark_chain.is_some() {
        return Err(CniError::config(
            "externalSetMarkChain",
            "iptables chains are not supported",
        ));
    }
    if let Some(b) = &raw.backend {
        if b != "nftables" && b != "iptables" {
            return Err(CniError::config(
                "backend",
                format!("{b:?} is not iptables or nftables"),
            ));
        }
        // Either way the rules live in our nftables table: accept the key so reference
        // conflists load unchanged.
    }
    let rc: RuntimeConfig = match &raw.runtime_config {
        Some(v) => parse_value(v, "runtimeConfig")?,
        None => RuntimeConfig::default(),
    };
    let mut mappings = Vec::with_capacity(rc.port_mappings.len());
    for (i, m) in rc.port_mappings.iter().enumerate() {
        mappings.push(validate(i, m)?);
    }
    Ok(PortmapSpec { mappings })
}

fn validate(i: usize, m: &RawMapping) -> Result<Mapping, CniError> {
    let field = |k: &str| format!("runtimeConfig.portMappings[{i}].{k}");
    let port = |v: i64, k: &str| -> Result<u16, CniError> {
        u16::try_from(v)
            .ok()
            .filter(|p| *p != 0)
            .ok_or_else(|| CniError::config(&field(k), format!("{v} is not a port (1..65535)")))
    };
    let host_port = port(m.host_port, "hostPort")?;
    let container_port = port(m.container_port, "containerPort")?;
    let proto_s = m.protocol.clone().unwrap_or_default();
    let protocol = Protocol::parse(&proto_s).ok_or_else(|| {
        CniError::config(
            &field("protocol"),
            format!("{proto_s:?} is not tcp, udp or sctp"),
        )
    })?;
    let host_ip_s = m.host_ip.clone().unwrap_or_default();
    let (host_ip, v4_only, v6_only) = if host_ip_s.is_empty() {
        (None, false, false)
    } else {
        let ip: IpAddr = host_ip_s.parse().map_err(|_| {
            CniError::config(
                &field("hostIP"),
                format!("{host_ip_s:?} is not an IP address"),
            )
        })?;
        match ip {
            IpAddr::V4(v4) if v4.is_unspecified() => (None, true, false),
            IpAddr::V6(v6) if v6.is_unspecified() => (None, false, true),
            IpAddr::V6(v6) if v6.is_loopback() => return Err(CniError::config(
                &field("hostIP"),
                "::1 cannot be published: the kernel has no route_localnet for IPv6; use 127.0.0.1",
            )),
            IpAddr::V4(v4) if v4.is_multicast() || v4.is_broadcast() => {
                return Err(CniError::config(
                    &field("hostIP"),
                    format!("{v4} is not a unicast address"),
                ))
            }
            IpAddr::V6(v6) if v6.is_multicast() => {
                return Err(CniError::config(
                    &field("hostIP"),
                    format!("{v6} is not a unicast address"),
                ))
            }
            ip => (Some(ip), false, false),
        }
    };
    Ok(Mapping {
        host_ip,
        wildcard_v4_only: v4_only,
        wildcard_v6_only: v6_only,
        host_port,
        container_port,
        protocol,
    })
}

/// Bind each mapping to the pod's address of the matching family: a wildcard publishes on
/// every family the pod has (like the reference), a specific host address only on its own.
pub fn plan(spec: &PortmapSpec, prev: &CniResult, ifname: &str) -> Vec<Dnat> {
    let ips = prev.container_ips(ifname);
    let v4 = ips.iter().map(|c| c.address.ip()).find(|a| a.is_ipv4());
    let v6 = ips.iter().map(|c| c.address.ip()).find(|a| a.is_ipv6());
    let mut out = Vec::new();
    for m in &spec.mappings {
        let targets: Vec<IpAddr> = match m.host_ip {
            Some(h) if h.is_ipv4() => v4.into_iter().collect(),
            Some(_) => v6.into_iter().collect(),
            None if m.wildcard_v4_only => v4.into_iter().collect(),
            None if m.wildcard_v6_only => v6.into_iter().collect(),
            None => v4.into_iter().chain(v6).collect(),
        };
        for container_ip in targets {
            out.push(Dnat {
                host_ip: m.host_ip,
                host_port: m.host_port,
                protocol: m.protocol,
                container_ip,
                container_port: m.container_port,
            });
        }
    }
    out
}

/// The host-side bridge the pod hangs off (the first host interface of the result).
pub fn bridge_of(prev: &CniResult) -> Option<&str> {
    prev.interfaces
        .iter()
        .find(|i| i.sandbox.is_empty())
        .map(|i| i.name.as_str())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(host_port: i64, proto: &str, host_ip: &str) -> RawMapping {
        RawMapping {
            host_port,
            container_port: 80,
            protocol: Some(proto.into()),
            host_ip: Some(host_ip.into()),
        }
    }

    #[test]
    fn bad_mappings_name_the_field() {
        for (m, field) in [
            (raw(0, "tcp", ""), "portMappings[0].hostPort"),
            (raw(65536, "tcp", ""), "hostPort"),
            (raw(-1, "tcp", ""), "hostPort"),
            (raw(80, "icmp", ""), "protocol"),
            (raw(80, "tcp", "10.0.0"), "hostIP"),
            (raw(80, "tcp", "::1"), "hostIP"),
            (raw(80, "tcp", "224.0.0.1"), "hostIP"),
        ] {
            let e = validate(0, &m).unwrap_err();
            assert_eq!(e.code(), 7);
            assert!(e.msg.contains(field), "{} should name {field}", e.msg);
        }
    }

    #[test]
    fn wildcards_and_families() {
        let spec = PortmapSpec {
            mappings: vec![
                validate(0, &raw(8080, "tcp", "")).unwrap(),
                validate(1, &raw(8081, "udp", "0.0.0.0")).unwrap(),
                validate(2, &raw(8082, "tcp", "127.0.0.1")).unwrap(),
                validate(3, &raw(8083, "tcp", "::")).unwrap(),
            ],
        };
        let prev = CniResult::from_json(
            &serde_json::json!({"cniVersion":"1.0.0",
                "interfaces":[{"name":"cni0"},{"name":"eth0","sandbox":"/run/netns/p"}],
                "ips":[{"address":"10.1.0.5/24","interface":1},{"address":"fd00::5/64","interface":1}]}),
            "prevResult",
        )
        .unwrap();
        let d = plan(&spec, &prev, "eth0");
        let got: Vec<(u16, String)> = d
            .iter()
            .map(|d| (d.host_port, d.container_ip.to_string()))
            .collect();
        assert_eq!(
            got,
            vec![
                (8080, "10.1.0.5".into()),
                (8080, "fd00::5".into()),
                (8081, "10.1.0.5".into()),
                (8082, "10.1.0.5".into()),
                (8083, "fd00::5".into()),
            ]
        );
        assert_eq!(bridge_of(&prev), Some("cni0"));
    }

    fn conf(rc: &str) -> String {
        format!(r#"{{"cniVersion":"1.0.0","name":"n","type":"portmap","runtimeConfig":{rc}}}"#)
    }

    fn parse_conf(conf: &str) -> Result<PortmapSpec, CniError> {
        parse(
            &Request::build(
                cni_core::Command::Add,
                "c",
                Some("/run/netns/p"),
                "eth0",
                conf.as_bytes(),
            )
            .unwrap(),
        )
    }

    /// containerd's CRI (go-cni) sends portMappings with Go's field names: the key that made
    /// every hostPort pod fail under Kubernetes.
    #[test]
    fn cri_go_field_names_are_mappings() {
        let spec = parse_conf(&conf(
            r#"{"portMappings":[{"HostPort":8080,"ContainerPort":80,"Protocol":"tcp","HostIP":"127.0.0.1"},
                {"HostPort":5353,"ContainerPort":53,"Protocol":"UDP","HostIP":""}]}"#,
        ))
        .unwrap();
        assert_eq!(spec.mappings.len(), 2);
        assert_eq!(spec.mappings[0].host_port, 8080);
        assert_eq!(spec.mappings[0].container_port, 80);
        assert_eq!(spec.mappings[0].host_ip, Some("127.0.0.1".parse().unwrap()));
        assert_eq!(spec.mappings[1].protocol, Protocol::Udp);
        assert_eq!(spec.mappings[1].host_ip, None);
        // The capability key itself, and the reference's own config keys, fold too.
        let spec = parse_conf(
            r#"{"cniVersion":"1.0.0","name":"n","type":"portmap","RuntimeConfig":{"PortMappings":[{"hostPort":1,"containerPort":2}]}}"#,
        )
        .unwrap();
        assert_eq!(spec.mappings[0].host_port, 1);
        let e = parse_conf(r#"{"cniVersion":"1.0.0","name":"n","type":"portmap","SNAT":false}"#)
            .unwrap_err();
        assert!(e.msg.contains("snat"), "{}", e.msg);
        let e = parse_conf(r#"{"cniVersion":"1.0.0","name":"n","type":"portmap","MasqAll":true}"#)
            .unwrap_err();
        assert!(e.msg.contains("masqAll"), "{}", e.msg);
    }

    #[test]
    fn bad_values_under_go_names_are_code_7_naming_the_field() {
        for (rc, field) in [
            (
                r#"{"portMappings":[{"HostPort":"x","ContainerPort":80}]}"#,
                "runtimeConfig.portMappings[0].hostPort",
            ),
            (
                r#"{"portMappings":[{"HostPort":0,"ContainerPort":80}]}"#,
                "runtimeConfig.portMappings[0].hostPort",
            ),
            (
                r#"{"portMappings":[{"HostPort":80,"ContainerPort":80,"HostIP":"nope"}]}"#,
                "runtimeConfig.portMappings[0].hostIP",
            ),
            (r#"{"portMappings":[{"HostPort":80}]}"#, "containerPort"),
        ] {
            let e = parse_conf(&conf(rc)).unwrap_err();
            assert_eq!(e.code(), 7, "{rc}");
            assert!(e.msg.contains(field), "{rc}: {} should name {field}", e.msg);
        }
    }

    #[test]
    fn cri_capability_args_are_accepted() {
        let spec = parse_conf(&conf(r#"{"portMappings":[{"HostPort":8080,"ContainerPort":80,"Protocol":"tcp","HostIP":""}],
    "ipRanges":[[{"Subnet":"10.9.0.0/24","RangeStart":"","RangeEnd":"","Gateway":""}]],
    "bandwidth":{"IngressRate":1000000,"IngressBurst":2000000,"EgressRate":1000000,"EgressBurst":2000000},
    "dns":{"Servers":["10.96.0.10"],"Searches":["default.svc.cluster.local"],"Options":["ndots:5"]},
    "io.kubernetes.cri.pod-annotations":{"kubernetes.io/ingress-bandwidth":"1M","a":"b"}}"#)).unwrap();
        assert_eq!(spec.mappings.len(), 1);
        assert_eq!(spec.mappings[0].host_port, 8080);
    }
}
