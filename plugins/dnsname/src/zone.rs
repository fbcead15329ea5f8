//! What the resolver answers itself: the names of one network (pure, unit-tested).
//!
//! - A name of the network (container name or alias, bare or under the domain, any case):
//!   A and AAAA from its addresses, ANY both. A type it has no record of (AAAA of an IPv4-only
//!   pod, MX, TXT, ...) is NOERROR with no answer and the zone's SOA in the authority section
//!   (NODATA, RFC 2308): an NXDOMAIN there would tell the client the name does not exist at
//!   all, and resolvers drop the A they already have (musl, busybox).
//! - The domain itself: its SOA (and NODATA + SOA for other types).
//! - Any other name under the domain, and any single-label name: NXDOMAIN + SOA (never sent
//!   upstream: they are ours or nobody's).
//! - PTR for a pod's address (`in-addr.arpa`, `ip6.arpa`): the pod's names under the domain.
//! - Anything else: not ours (forwarded, or REFUSED when the network does not forward).
//!
//! Every answer of ours is authoritative (AA) and has TTL [`TTL`].

use std::{
    collections::BTreeMap,
    net::IpAddr,
    time::{SystemTime, UNIX_EPOCH},
};

use hickory_proto::rr::{
    rdata::{self, SOA},
    Name, RData, Record, RecordType,
};

use crate::store::Entries;

/// TTL of our own answers (and the negative TTL of our SOA): short, names come and go with
/// containers.
pub const TTL: u32 = 5;

/// The names of one network, as the resolver answers them.
#[derive(Debug, Clone, Default)]
pub struct Zone {
    /// The network's domain (lower case, no final dot).
    domain: String,
    /// name (lower case, no final dot) -> addresses.
    names: BTreeMap<String, Vec<IpAddr>>,
    /// address -> the names of its pod under the domain, fully qualified.
    reverse: BTreeMap<IpAddr, Vec<String>>,
    /// SOA serial: changes when the names change (seconds of the entries file's mtime).
    serial: u32,
}

/// What [`Zone::answer`] decided.
#[derive(Debug, Clone, PartialEq)]
pub enum Local {
    /// Ours: NOERROR (answers may be empty: NODATA) or NXDOMAIN, with these sections.
    Answer {
        nxdomain: bool,
        answers: Vec<Record>,
        authority: Vec<Record>,
    },
    /// Not a name of this network.
    NotOurs,
}

impl Zone {
    /// The zone of `entries` under `domain`; `serial` for the SOA.
    pub fn new(entries: &Entries, domain: &str, serial: u32) -> Self {
        Self {
            domain: domain.to_ascii_lowercase(),
            names: entries.table(domain),
            reverse: entries.reverse(domain),
            serial,
        }
    }

    /// How many names it answers (bare and qualified).
    pub fn len(&self) -> usize {
        self.names.len()
    }

    pub fn is_empty(&self) -> bool {
        self.names.is_empty()
    }

    /// The zone's SOA record (owner: the domain).
    fn soa(&self) -> Vec<Record> {
        let Ok(apex) = Name::from_ascii(format!("{}.", self.domain)) else {
            return Vec::new();
        };
        let Ok(rname) = Name::from_ascii(format!("hostmaster.{}.", self.domain)) else {
            return Vec::new();
        };
        // refresh/retry/expire mean nothing without secondaries; minimum is the negative TTL.
        let soa = SOA::new(apex.clone(), rname, self.serial, 60, 10, 600, TTL);
        vec![Record::from_rdata(apex, TTL, RData::SOA(soa))]
    }

    /// The answer to (`qname`, `qtype`), or [`Local::NotOurs`]. Records carry `qname` as
    /// asked (case included).
    pub fn answer(&self, qname: &Name, qtype: RecordType) -> Local {
        let key = qname.to_ascii().trim_end_matches('.').to_ascii_lowercase();
        if let Some(ips) = self.names.get(&key) {
            let answers: Vec<Record> = ips
                .iter()
                .filter_map(|ip| match (ip, qtype) {
                    (IpAddr::V4(a), RecordType::A | RecordType::ANY) => {
                        Some(RData::A(rdata::A(*a)))
                    }
                    (IpAddr::V6(a), RecordType::AAAA | RecordType::ANY) => {
                        Some(RData::AAAA(rdata::AAAA(*a)))
                    }
                    _ => None,
                })
                .map(|rd| Record::from_rdata(qname.clone(), TTL, rd))
                .collect();
            let authority = if answers.is_empty() {
                self.soa()
            } else {
                Vec::new()
            };
            return Local::Answer {
                nxdomain: false,
                answers,
                authority,
            };
        }
        if key == self.domain {
            let soa = self.soa();
            return if matches!(qtype, RecordType::SOA | RecordType::ANY) {
                Local::Answer {
                    nxdomain: false,
                    answers: soa,
                    authority: Vec::new(),
                }
            } else {
                Local::Answer {
                    nxdomain: false,
                    answers: Vec::new(),
                    authority: soa,
                }
            };
        }
        if let Some(names) = self.reverse_of(qname) {
            let answers = if matches!(qtype, RecordType::PTR | RecordType::ANY) {
                names
                    .iter()
                    .filter_map(|n| Name::from_ascii(n).ok())
                    .map(|n| Record::from_rdata(qname.clone(), TTL, RData::PTR(rdata::PTR(n))))
                    .collect()
            } else {
                Vec::new()
            };
            return Local::Answer {
                nxdomain: false,
                answers,
                authority: Vec::new(),
            };
        }
        let in_domain = key.ends_with(&format!(".{}", self.domain));
        if in_domain || (!key.is_empty() && !key.contains('.')) {
            return Local::Answer {
                nxdomain: true,
                answers: Vec::new(),
                authority: self.soa(),
            };
        }
        Local::NotOurs
    }

    /// The names of the pod whose address `qname` is the reverse name of, if it is one.
    fn reverse_of(&self, qname: &Name) -> Option<&Vec<String>> {
        if self.reverse.is_empty() {
            return None;
        }
        let mut fqdn = qname.clone();
        fqdn.set_fqdn(true);
        let net = fqdn.parse_arpa_name().ok()?;
        let full = if net.addr().is_ipv4() { 32 } else { 128 };
        if net.prefix_len() != full {
            return None;
        }
        self.reverse.get(&net.addr())
    }
}

/// The SOA serial for an entries file modified at `mtime` (seconds since the epoch, wrapping).
pub fn serial_of(mtime: Option<SystemTime>) -> u32 {
    mtime
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map(|d| (d.as_secs() & u64::from(u32::MAX)) as u32)
        .unwrap_or(1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Entry;

    fn zone() -> Zone {
        let mut e = Entries::default();
        e.upsert(Entry {
            container_id: "c1".into(),
            ifname: "eth0".into(),
            name: "api".into(),
            aliases: vec!["db".into(), "cache.internal".into()],
            ips: vec!["10.0.0.2".parse().unwrap()],
        });
        e.upsert(Entry {
            container_id: "c2".into(),
            ifname: "eth0".into(),
            name: "six".into(),
            aliases: vec![],
            ips: vec!["10.0.0.3".parse().unwrap(), "fd00::3".parse().unwrap()],
        });
        Zone::new(&e, "dns.test", 42)
    }

    fn ask(z: &Zone, name: &str, t: RecordType) -> Local {
        z.answer(&Name::from_ascii(name).unwrap(), t)
    }

    fn data(records: &[Record]) -> Vec<String> {
        records.iter().map(|r| r.data.to_string()).collect()
    }

    #[test]
    fn a_only_name_answers_aaaa_with_nodata_and_the_zone_soa() {
        let z = zone();
        let Local::Answer {
            nxdomain,
            answers,
            authority,
        } = ask(&z, "API.dns.test.", RecordType::AAAA)
        else {
            panic!("not ours")
        };
        assert!(!nxdomain);
        assert!(answers.is_empty());
        assert_eq!(authority.len(), 1);
        assert_eq!(authority[0].name.to_ascii(), "dns.test.");
        let RData::SOA(soa) = &authority[0].data else {
            panic!("{:?}", authority[0])
        };
        assert_eq!(soa.serial, 42);
        assert_eq!(soa.minimum, TTL);
        // The bare name too; and MX of a name is NODATA as well.
        for (n, t) in [
            ("api.", RecordType::AAAA),
            ("six.dns.test.", RecordType::MX),
        ] {
            let Local::Answer {
                nxdomain, answers, ..
            } = ask(&z, n, t)
            else {
                panic!("{n}")
            };
            assert!(!nxdomain && answers.is_empty(), "{n} {t}");
        }
    }

    #[test]
    fn names_answer_a_aaaa_any_with_the_name_as_asked() {
        let z = zone();
        let Local::Answer { answers, .. } = ask(&z, "Six.DNS.test.", RecordType::ANY) else {
            panic!()
        };
        assert_eq!(data(&answers), ["10.0.0.3", "fd00::3"]);
        assert_eq!(answers[0].name.to_ascii(), "Six.DNS.test.");
        let Local::Answer { answers, .. } = ask(&z, "cache.internal.", RecordType::A) else {
            panic!()
        };
        assert_eq!(data(&answers), ["10.0.0.2"]);
    }

    #[test]
    fn unknown_names_in_the_domain_and_single_labels_are_nxdomain_others_not_ours() {
        let z = zone();
        for n in ["web.dns.test.", "web.", "x.api.dns.test."] {
            let Local::Answer {
                nxdomain,
                authority,
                ..
            } = ask(&z, n, RecordType::A)
            else {
                panic!("{n}")
            };
            assert!(nxdomain, "{n}");
            assert_eq!(authority.len(), 1, "{n}: SOA");
        }
        assert_eq!(ask(&z, "example.org.", RecordType::A), Local::NotOurs);
        assert_eq!(ask(&z, "dns.test.example.", RecordType::A), Local::NotOurs);
        assert_eq!(ask(&z, ".", RecordType::NS), Local::NotOurs);
    }

    #[test]
    fn the_apex_has_a_soa() {
        let z = zone();
        let Local::Answer {
            nxdomain,
            answers,
            authority,
        } = ask(&z, "dns.test.", RecordType::SOA)
        else {
            panic!()
        };
        assert!(!nxdomain && authority.is_empty());
        assert_eq!(answers[0].record_type(), RecordType::SOA);
        let Local::Answer {
            nxdomain,
            answers,
            authority,
        } = ask(&z, "dns.test.", RecordType::A)
        else {
            panic!()
        };
        assert!(!nxdomain && answers.is_empty() && authority.len() == 1);
    }

    #[test]
    fn ptr_for_pods_addresses_v4_and_v6_others_not_ours() {
        let z = zone();
        let Local::Answer { answers, .. } = ask(&z, "2.0.0.10.IN-ADDR.arpa.", RecordType::PTR)
        else {
            panic!()
        };
        assert_eq!(
            data(&answers),
            ["api.dns.test.", "db.dns.test.", "cache.internal.dns.test."]
        );
        let v6 = "3.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.d.f.ip6.arpa.";
        let Local::Answer { answers, .. } = ask(&z, v6, RecordType::PTR) else {
            panic!()
        };
        assert_eq!(data(&answers), ["six.dns.test."]);
        for other in [
            "9.0.0.10.in-addr.arpa.",
            "0.0.10.in-addr.arpa.",
            "1.1.1.1.in-addr.arpa.",
        ] {
            assert_eq!(ask(&z, other, RecordType::PTR), Local::NotOurs, "{other}");
        }
    }
}
