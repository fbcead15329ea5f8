//! `cnirs ls` and `cnirs inspect NETWORK`: the networks of this network namespace, who is
//! attached, and whether the kernel agrees.
//!
//! What is known comes from the plugins' records ([`nftplan::Firewall::inventory`]); what the
//! kernel lacks (`drift`) from the same checks as CHECK and `cnirs reconcile --check`: the
//! table and its skeleton rules, each of the network's elements (`nft get element`), an
//! internal network's kernel-level seal rules, and the bridge with its pods' host veths
//! (netlink).

use std::{io::Write, process::ExitCode};

use nftplan::{
    Firewall, IfName, IpNetwork, NetworkView, NftBackend, NftCli, NftError, PortView, TABLE,
};
use serde::Serialize;

use crate::reconcile::missing_rules;

/// Why `ls` or `inspect` could not answer.
#[derive(Debug, thiserror::Error)]
pub enum InspectError {
    /// No such network in this namespace's state.
    #[error(
        "no network {0:?} in this network namespace (`cnirs ls` lists them; \
         `ip netns exec NS cnirs inspect ...` for another namespace)"
    )]
    Unknown(String),
    /// State or nft.
    #[error(transparent)]
    Nft(#[from] NftError),
    /// netlink.
    #[error(transparent)]
    Netops(#[from] netops::NetopsError),
    /// stdout.
    #[error("writing the output: {0}")]
    Output(#[from] std::io::Error),
}

/// `cnirs ls [--json]`.
pub fn ls(json: bool) -> ExitCode {
    exit(list(json).and_then(|s| out(&s)))
}

/// `cnirs inspect NETWORK [--json] [--no-trunc]`.
pub fn inspect(network: &str, json: bool, no_trunc: bool) -> ExitCode {
    exit(show(network, json, no_trunc).and_then(|s| out(&s)))
}

fn exit(r: Result<(), InspectError>) -> ExitCode {
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            log::error!("{e}");
            ExitCode::from(1)
        }
    }
}

fn out(s: &str) -> Result<(), InspectError> {
    let mut o = std::io::stdout().lock();
    o.write_all(s.as_bytes())?;
    o.flush()?;
    Ok(())
}

fn list(json: bool) -> Result<String, InspectError> {
    let nets = Firewall::open()?.inventory()?;
    Ok(if json {
        let rows: Vec<LsRow<'_>> = nets.iter().map(LsRow::from).collect();
        pretty(&rows)
    } else {
        ls_table(&nets)
    })
}

fn show(name: &str, json: bool, no_trunc: bool) -> Result<String, InspectError> {
    let fw = Firewall::open()?;
    let mut net = fw
        .inventory()?
        .into_iter()
        .find(|n| n.name == name)
        .ok_or_else(|| InspectError::Unknown(name.to_owned()))?;
    net.drift = drift(&fw, &net)?;
    Ok(if json {
        pretty(&net)
    } else {
        inspect_text(&net, no_trunc)
    })
}

/// JSON in the struct's field order (`name` first), newline-terminated.
fn pretty<T: Serialize + ?Sized>(v: &T) -> String {
    let mut s = serde_json::to_string_pretty(v).unwrap_or_default();
    s.push('\n');
    s
}

/// What the kernel lacks for `net`: table and skeleton (as `reconcile --check`), the
/// network's elements (as CHECK), the bridge and its pods' host veths.
fn drift(fw: &Firewall, net: &NetworkView) -> Result<Vec<String>, InspectError> {
    let mut out = Vec::new();
    let (family, table) = TABLE.split_once(' ').unwrap_or(("inet", "cnirs"));
    match NftCli::new().query(&["list", "table", family, table])? {
        None => out.push(format!("table {TABLE}")),
        Some(listing) => out.extend(missing_rules(&listing)),
    }
    out.extend(fw.drift(net)?.iter().map(|e| format!("element {e}")));
    if let Some(br) = &net.bridge {
        let kernel = netops::Kernel::new()?;
        let host = kernel.host();
        if net.internal {
            let missing = host.missing_seal(br.as_str(), &net.subnets)?;
            out.extend(missing.into_iter().map(|r| format!("seal rule {r}")));
        }
        match host.link(br.as_str())? {
            Some(l) if l.is_bridge() => {
                for a in &net.attachments {
                    let Some(veth) = &a.host_ifname else { continue };
                    match host.link(veth.as_str())? {
                        Some(v) if v.master == Some(l.index) => {}
                        Some(_) => out.push(format!(
                            "link {veth} (host end of {}/{}) is not a port of {br}",
                            a.container_id, a.ifname
                        )),
                        None => out.push(format!(
                            "link {veth} (host end of {}/{})",
                            a.container_id, a.ifname
                        )),
                    }
                }
            }
            Some(_) => out.push(format!("link {br} is not a bridge")),
            None => out.push(format!("link {br} (bridge)")),
        }
    }
    Ok(out)
}

/// One element of `cnirs ls --json`.
#[derive(Debug, Serialize)]
struct LsRow<'a> {
    name: &'a str,
    bridge: Option<&'a IfName>,
    /// How many attachments.
    attachments: usize,
    subnets: &'a [IpNetwork],
    internal: bool,
    isolated: bool,
}

impl<'a> From<&'a NetworkView> for LsRow<'a> {
    fn from(n: &'a NetworkView) -> Self {
        LsRow {
            name: &n.name,
            bridge: n.bridge.as_ref(),
            attachments: n.attachments.len(),
            subnets: &n.subnets,
            internal: n.internal,
            isolated: n.isolated,
        }
    }
}

fn yes_no(b: bool) -> String {
    if b { "yes" } else { "no" }.to_owned()
}

fn join<T: ToString>(v: &[T]) -> String {
    if v.is_empty() {
        return "-".to_owned();
    }
    v.iter().map(T::to_string).collect::<Vec<_>>().join(",")
}

fn bridge_of(n: &NetworkView) -> String {
    n.bridge
        .as_ref()
        .map_or_else(|| "-".to_owned(), |b| b.to_string())
}

fn ls_table(nets: &[NetworkView]) -> String {
    let mut rows = vec![cells(&[
        "NAME",
        "BRIDGE",
        "ATTACHMENTS",
        "SUBNETS",
        "INTERNAL",
        "ISOLATED",
    ])];
    for n in nets {
        rows.push(vec![
            n.name.clone(),
            bridge_of(n),
            n.attachments.len().to_string(),
            join(&n.subnets),
            yes_no(n.internal),
            yes_no(n.isolated),
        ]);
    }
    columns(&rows)
}

/// `0.0.0.0:8080->80/tcp`, `127.0.0.1:8080->80/tcp`, `[::]:8080->80/tcp`; a port waiting
/// behind another attachment of the container gets ` (standby)`.
fn port_text(p: &PortView) -> String {
    let host = match p.host_ip {
        Some(std::net::IpAddr::V6(a)) => format!("[{a}]"),
        Some(a) => a.to_string(),
        None if p.container_ip.is_ipv6() => "[::]".to_owned(),
        None => "0.0.0.0".to_owned(),
    };
    format!(
        "{host}:{}->{}/{}{}",
        p.host_port,
        p.container_port,
        p.protocol.as_str(),
        if p.standby { " (standby)" } else { "" }
    )
}

fn inspect_text(n: &NetworkView, no_trunc: bool) -> String {
    let drift = if n.drift.is_empty() {
        "none".to_owned()
    } else {
        format!(
            "{} thing(s) missing from the kernel (`cnirs reconcile` repairs the table)",
            n.drift.len()
        )
    };
    let mut head = vec![
        cells(&["Network", &n.name]),
        cells(&["Bridge", &bridge_of(n)]),
        cells(&["Subnets", &join(&n.subnets)]),
        cells(&["Internal", &yes_no(n.internal)]),
        cells(&["Isolated", &yes_no(n.isolated)]),
        cells(&["Masquerade", &join(&n.masquerade)]),
        cells(&["Attachments", &n.attachments.len().to_string()]),
        cells(&["Drift", &drift]),
    ];
    for d in &n.drift {
        head.push(cells(&["", &format!("  missing: {d}")]));
    }
    let mut s = columns(&head);
    if n.attachments.is_empty() {
        return s;
    }
    let mut rows = vec![cells(&[
        "CONTAINER",
        "IFNAME",
        "IPS",
        "MAC",
        "HOST IFNAME",
        "PORTS",
    ])];
    for a in &n.attachments {
        let cid = if no_trunc {
            a.container_id.clone()
        } else {
            short_id(&a.container_id)
        };
        let ports: Vec<String> = a.ports.iter().map(port_text).collect();
        rows.push(vec![
            cid,
            a.ifname.clone(),
            join(&a.ips),
            a.mac.clone().unwrap_or_else(|| "-".to_owned()),
            a.host_ifname
                .as_ref()
                .map_or_else(|| "-".to_owned(), |h| h.to_string()),
            join(&ports),
        ]);
    }
    s.push('\n');
    s.push_str(&columns(&rows));
    s
}

/// A runtime's hex container id (docker, containerd, podman: 64 hex digits) shortened to 12
/// characters, as `docker ps` shows it; any other id in full (a prefix of a name may be
/// ambiguous).
fn short_id(id: &str) -> String {
    if id.len() >= 32 && id.bytes().all(|b| b.is_ascii_hexdigit()) {
        id[..12].to_owned()
    } else {
        id.to_owned()
    }
}

fn cells(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| (*s).to_owned()).collect()
}

/// Left-aligned columns two spaces apart; the last column is not padded.
fn columns(rows: &[Vec<String>]) -> String {
    let n = rows.iter().map(Vec::len).max().unwrap_or(0);
    let mut width = vec![0; n];
    for r in rows {
        for (i, c) in r.iter().enumerate() {
            width[i] = width[i].max(c.chars().count());
        }
    }
    let mut s = String::new();
    for r in rows {
        let mut line = String::new();
        for (i, c) in r.iter().enumerate() {
            if i + 1 < r.len() {
                line.push_str(&format!("{c:<w$}  ", w = width[i]));
            } else {
                line.push_str(c);
            }
        }
        s.push_str(line.trim_end());
        s.push('\n');
    }
    s
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use nftplan::{AttachmentView, Protocol};
    use serde_json::json;

    fn net() -> NetworkView {
        NetworkView {
            name: "frontend".into(),
            bridge: Some(IfName::new("cni-front").unwrap()),
            subnets: vec!["10.89.1.0/24".parse().unwrap()],
            isolated: true,
            attachments: vec![AttachmentView {
                container_id: "0123456789abcdef0123456789abcdef0123".into(),
                ifname: "eth0".into(),
                ips: vec!["10.89.1.2/24".parse().unwrap()],
                mac: Some("0a:58:0a:59:01:02".into()),
                host_ifname: Some(IfName::new("veth1a2b3c4d").unwrap()),
                ports: vec![PortView {
                    host_ip: Some("127.0.0.1".parse().unwrap()),
                    host_port: 8080,
                    container_port: 80,
                    protocol: Protocol::Tcp,
                    container_ip: "10.89.1.2".parse().unwrap(),
                    standby: false,
                }],
            }],
            ..NetworkView::default()
        }
    }

    #[test]
    fn inspect_text_is_aligned_and_truncates_ids() {
        let t = inspect_text(&net(), false);
        let want = "\
Network      frontend
Bridge       cni-front
Subnets      10.89.1.0/24
Internal     no
Isolated     yes
Masquerade   -
Attachments  1
Drift        none

CONTAINER     IFNAME  IPS           MAC                HOST IFNAME   PORTS
0123456789ab  eth0    10.89.1.2/24  0a:58:0a:59:01:02  veth1a2b3c4d  127.0.0.1:8080->80/tcp
";
        assert_eq!(t, want);
        assert!(inspect_text(&net(), true).contains("0123456789abcdef0123456789abcdef0123 "));
        assert_eq!(
            short_id("cnirs-pod-a"),
            "cnirs-pod-a",
            "names are never cut"
        );
    }

    #[test]
    fn drift_lines_follow_the_drift_row() {
        let mut n = net();
        n.drift = vec!["table inet cnirs".into()];
        let t = inspect_text(&n, false);
        assert!(t.contains("Drift        1 thing(s) missing"), "{t}");
        assert!(
            t.contains("\n               missing: table inet cnirs\n"),
            "{t}"
        );
    }

    #[test]
    fn inspect_json_has_the_documented_fields() {
        let text = pretty(&net());
        assert!(
            text.starts_with("{\n  \"name\": \"frontend\","),
            "name first: {text}"
        );
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        for k in [
            "name",
            "bridge",
            "subnets",
            "internal",
            "isolated",
            "drift",
            "attachments",
        ] {
            assert!(v.get(k).is_some(), "{k} missing from {v}");
        }
        let a = &v["attachments"][0];
        assert_eq!(a["containerId"], "0123456789abcdef0123456789abcdef0123");
        assert_eq!(a["ips"][0], "10.89.1.2/24");
        assert_eq!(a["mac"], "0a:58:0a:59:01:02");
        let p = &a["ports"][0];
        assert_eq!(
            (
                &p["hostIP"],
                &p["hostPort"],
                &p["containerPort"],
                &p["protocol"]
            ),
            (&json!("127.0.0.1"), &json!(8080), &json!(80), &json!("tcp"))
        );
        assert!(p.get("standby").is_none());
    }

    #[test]
    fn ls_rows() {
        let t = ls_table(&[net()]);
        assert_eq!(
            t,
            "NAME      BRIDGE     ATTACHMENTS  SUBNETS       INTERNAL  ISOLATED\n\
             frontend  cni-front  1            10.89.1.0/24  no        yes\n"
        );
        let n = net();
        let j = pretty(&[LsRow::from(&n)]);
        assert!(
            j.starts_with("[\n  {\n    \"name\": \"frontend\","),
            "name first: {j}"
        );
        let j: serde_json::Value = serde_json::from_str(&j).unwrap();
        assert_eq!(j[0]["attachments"], 1);
        assert_eq!(j[0]["bridge"], "cni-front");
    }

    #[test]
    fn any_address_ports_name_the_family() {
        let mut p = net().attachments[0].ports[0].clone();
        p.host_ip = None;
        assert_eq!(port_text(&p), "0.0.0.0:8080->80/tcp");
        p.container_ip = "fd00::2".parse().unwrap();
        p.standby = true;
        assert_eq!(port_text(&p), "[::]:8080->80/tcp (standby)");
    }
}
