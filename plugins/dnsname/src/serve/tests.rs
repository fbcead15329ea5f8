//! The resolver on 127.0.0.1 (no device binding, no root): what it answers itself, that a
//! change of its entries file shows in the next answer, and what it makes of the answers of
//! scripted upstreams (on 127.0.0.x, one port of their own).

use std::{
    io::{Read, Write as _},
    net::{TcpListener as StdTcpListener, TcpStream as StdTcpStream, UdpSocket as StdUdp},
    sync::atomic::{AtomicBool, Ordering},
    thread::JoinHandle,
};

use hickory_proto::{
    op::{Edns, Message, MessageType, OpCode, Query},
    rr::{rdata, rdata::opt::EdnsOption, Name, RData, Record, RecordType},
};

use super::*;
use crate::store::Entry;

fn message(name: &str, qtype: RecordType, edns: Option<u16>) -> Message {
    let mut m = Message::new(7, MessageType::Query, OpCode::Query);
    m.metadata.recursion_desired = true;
    m.add_query(Query::query(Name::from_ascii(name).unwrap(), qtype));
    if let Some(size) = edns {
        let mut e = Edns::new();
        e.set_max_payload(size);
        m.set_edns(e);
    }
    m
}

fn udp_ask(port: u16, m: &Message) -> Message {
    let s = StdUdp::bind("127.0.0.1:0").unwrap();
    s.set_read_timeout(Some(Duration::from_secs(6))).unwrap();
    s.send_to(&m.to_vec().unwrap(), ("127.0.0.1", port))
        .unwrap();
    let mut buf = vec![0u8; 65535];
    let n = s.recv(&mut buf).unwrap();
    Message::from_vec(&buf[..n]).unwrap()
}

fn tcp_ask(port: u16, m: &Message) -> Message {
    let mut s = StdTcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(6))).unwrap();
    let b = m.to_vec().unwrap();
    s.write_all(&(b.len() as u16).to_be_bytes()).unwrap();
    s.write_all(&b).unwrap();
    let mut len = [0u8; 2];
    s.read_exact(&mut len).unwrap();
    let mut buf = vec![0u8; usize::from(u16::from_be_bytes(len))];
    s.read_exact(&mut buf).unwrap();
    Message::from_vec(&buf).unwrap()
}

/// `m` with an EDNS0 COOKIE option, as dig sends its queries.
fn with_cookie(mut m: Message) -> Message {
    let mut e = m.edns.clone().unwrap_or_else(|| {
        let mut e = Edns::new();
        e.set_max_payload(1232);
        e
    });
    e.options_mut().insert(EdnsOption::Unknown(10, vec![7; 8]));
    m.set_edns(e);
    m
}

/// Sends each of `queries` over UDP from a socket of its own and asserts that none gets an
/// answer within 5 s (longer than the resolver's budget for a forwarded query).
#[track_caller]
fn no_answer(port: u16, queries: &[Message]) {
    let socks: Vec<StdUdp> = queries
        .iter()
        .map(|m| {
            let s = StdUdp::bind("127.0.0.1:0").unwrap();
            s.send_to(&m.to_vec().unwrap(), ("127.0.0.1", port))
                .unwrap();
            s
        })
        .collect();
    let until = std::time::Instant::now() + BUDGET_AND_SOME;
    let mut buf = vec![0u8; 65535];
    for (s, m) in socks.iter().zip(queries) {
        let left = until.saturating_duration_since(std::time::Instant::now());
        s.set_read_timeout(Some(left.max(Duration::from_millis(1))))
            .unwrap();
        if let Ok(n) = s.recv(&mut buf) {
            panic!(
                "{:?}: answered {:?}",
                m.queries[0],
                Message::from_vec(&buf[..n]).map(|r| r.metadata.response_code)
            );
        }
    }
}

/// Longer than a forwarded query may take ([`forward::BUDGET`]).
const BUDGET_AND_SOME: Duration = Duration::from_secs(5);

fn query(port: u16, name: &str, qtype: RecordType) -> Message {
    udp_ask(port, &message(name, qtype, None))
}

fn ips(m: &Message) -> Vec<String> {
    let mut v: Vec<String> = m.answers.iter().map(|r| r.data.to_string()).collect();
    v.sort();
    v
}

/// A port free on 127.0.0.1 for both UDP and TCP (bind 0, read it, free it).
fn free_port() -> u16 {
    loop {
        let u = StdUdp::bind("127.0.0.1:0").unwrap();
        let port = u.local_addr().unwrap().port();
        if StdTcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

/// A resolver of network `n` on 127.0.0.1:`port`, its upstreams on `upstream_port`; stops
/// when its directory is removed.
fn start(
    dir: &NetDir,
    port: u16,
    resolv_conf: PathBuf,
    forward: bool,
    upstream_port: u16,
) -> JoinHandle<Result<(), ServeError>> {
    let cfg = DaemonConfig {
        network: "n".into(),
        domain: "dns.test".into(),
        listen: vec!["127.0.0.1".parse().unwrap()],
        port,
        device: None,
        resolv_conf,
        forward,
    };
    let (tx, rx) = std::sync::mpsc::channel();
    let dir2 = dir.clone();
    let h = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(run(dir2, cfg, upstream_port, move || {
            tx.send(()).unwrap();
            Ok(())
        }))
    });
    rx.recv_timeout(Duration::from_secs(10)).unwrap();
    h
}

fn entry(id: &str, name: &str, ips: &[&str]) -> Entry {
    Entry {
        container_id: id.into(),
        ifname: "eth0".into(),
        name: name.into(),
        aliases: vec!["db".into()],
        ips: ips.iter().map(|s| s.parse().unwrap()).collect(),
    }
}

#[test]
fn answers_names_aliases_and_nxdomain_and_follows_the_entries_file() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = NetDir::at(tmp.path().join("n"));
    let _l = dir.lock(true).unwrap();
    let port = free_port();
    let mut entries = Entries::default();
    entries.upsert(entry("c1", "api", &["10.0.0.2", "fd00::2"]));
    entries.upsert(entry("c3", "v4only", &["10.0.0.4"]));
    dir.write_entries(&entries).unwrap();
    let server = start(&dir, port, "/nonexistent".into(), false, 53);

    let a = query(port, "API.dns.test.", RecordType::A);
    assert_eq!(a.metadata.response_code, ResponseCode::NoError);
    assert!(a.metadata.authoritative);
    assert_eq!(ips(&a), ["10.0.0.2"]);
    assert_eq!(
        a.answers[0].name.to_ascii(),
        "API.dns.test.",
        "the name as asked"
    );
    assert_eq!(ips(&query(port, "api.", RecordType::AAAA)), ["fd00::2"]);
    assert_eq!(
        ips(&query(port, "db.dns.test.", RecordType::A)),
        ["10.0.0.2", "10.0.0.4"]
    );
    // An IPv4-only name: AAAA is NODATA with the zone's SOA, not NXDOMAIN.
    let aaaa = query(port, "v4only.dns.test.", RecordType::AAAA);
    assert_eq!(aaaa.metadata.response_code, ResponseCode::NoError);
    assert!(aaaa.answers.is_empty());
    assert_eq!(aaaa.authorities.len(), 1);
    assert_eq!(aaaa.authorities[0].record_type(), RecordType::SOA);
    // PTR of a pod's address.
    let ptr = query(port, "4.0.0.10.in-addr.arpa.", RecordType::PTR);
    assert_eq!(ips(&ptr), ["db.dns.test.", "v4only.dns.test."]);
    for nx in ["web.dns.test.", "web."] {
        assert_eq!(
            query(port, nx, RecordType::A).metadata.response_code,
            ResponseCode::NXDomain,
            "{nx}"
        );
    }
    // forward: false -> the rest is refused, and recursion is not offered.
    let refused = query(port, "example.org.", RecordType::A);
    assert_eq!(refused.metadata.response_code, ResponseCode::Refused);
    assert!(!refused.metadata.recursion_available);
    // Over TCP, with EDNS0: the same answers, and our OPT back.
    let t = tcp_ask(port, &message("api.dns.test.", RecordType::A, Some(1232)));
    assert_eq!(ips(&t), ["10.0.0.2"]);
    assert_eq!(
        t.edns.as_ref().unwrap().max_payload(),
        wire::OUR_UDP_PAYLOAD
    );
    // A new entry answers at once (no signal: the file changed), a removed one is gone.
    entries.upsert(entry("c2", "web", &["10.0.0.3"]));
    entries.remove("c1", "eth0");
    dir.write_entries(&entries).unwrap();
    assert_eq!(ips(&query(port, "web.", RecordType::A)), ["10.0.0.3"]);
    assert_eq!(
        query(port, "api.", RecordType::A).metadata.response_code,
        ResponseCode::NXDomain
    );
    // The resolver exits when its directory goes.
    dir.remove().unwrap();
    server.join().unwrap().unwrap();
}

/// A scripted upstream on `ip`:`port`, UDP and TCP, until dropped. Knows up.test:
/// `aonly` (A only: AAAA is NODATA + SOA), `nx*` (NXDOMAIN + SOA), `refused` (REFUSED),
/// `servfail` (SERVFAIL), `notimp` and `notimp-<label>` (NOTIMP), `big` (TXT, too large for UDP: TC there), `rude` (the same TXT, sent whole over UDP
/// whatever the client's size), `who` (TXT: `label`), `mine-<label>` (A);
/// stays silent for
/// `silent`; REFUSED for anything else.
struct Stub {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
}

impl Drop for Stub {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

fn stub_answer(q: &Message, label: &str) -> Option<Message> {
    let query = q.queries.first()?.clone();
    let name = query.name().to_ascii().to_ascii_lowercase();
    let mut m = Message::new(q.metadata.id, MessageType::Response, OpCode::Query);
    m.metadata.authoritative = true;
    m.metadata.recursion_desired = q.metadata.recursion_desired;
    m.add_query(query.clone());
    let apex = Name::from_ascii("up.test.").unwrap();
    let soa = Record::from_rdata(
        apex.clone(),
        30,
        RData::SOA(rdata::SOA::new(
            Name::from_ascii("ns.up.test.").unwrap(),
            Name::from_ascii("hostmaster.up.test.").unwrap(),
            7,
            1,
            1,
            1,
            30,
        )),
    );
    let qn = query.name().clone();
    match (name.as_str(), query.query_type()) {
        ("silent.up.test.", _) => return None,
        ("aonly.up.test.", RecordType::A) => {
            m.add_answer(Record::from_rdata(
                qn,
                30,
                RData::A(rdata::A([198, 51, 100, 10].into())),
            ));
        }
        ("aonly.up.test.", _) => {
            m.add_authority(soa);
        }
        ("servfail.up.test.", _) => m.metadata.response_code = ResponseCode::ServFail,
        (n, _) if n == "notimp.up.test." || n == format!("notimp-{label}.up.test.") => {
            m.metadata.response_code = ResponseCode::NotImp
        }
        (n, _) if n.starts_with("nx") => {
            m.metadata.response_code = ResponseCode::NXDomain;
            m.add_authority(soa);
        }
        ("big.up.test." | "rude.up.test.", RecordType::TXT) => {
            for i in 0..30 {
                m.add_answer(Record::from_rdata(
                    qn.clone(),
                    30,
                    RData::TXT(rdata::TXT::new(vec![format!("{i:03}{}", "x".repeat(197))])),
                ));
            }
        }
        (n, RecordType::A) if n == format!("mine-{label}.up.test.") => {
            m.add_answer(Record::from_rdata(
                qn,
                30,
                RData::A(rdata::A([198, 51, 100, 11].into())),
            ));
        }
        ("who.up.test.", RecordType::TXT) => {
            m.add_answer(Record::from_rdata(
                qn,
                30,
                RData::TXT(rdata::TXT::new(vec![label.to_owned()])),
            ));
        }
        _ => m.metadata.response_code = ResponseCode::Refused,
    }
    Some(m)
}

fn stub(ip: &str, port: u16, label: &'static str) -> Stub {
    let stop = Arc::new(AtomicBool::new(false));
    let udp = StdUdp::bind((ip, port)).unwrap();
    udp.set_read_timeout(Some(Duration::from_millis(20)))
        .unwrap();
    let tcp = StdTcpListener::bind((ip, port)).unwrap();
    tcp.set_nonblocking(true).unwrap();
    let s1 = stop.clone();
    let t1 = std::thread::spawn(move || {
        let mut buf = vec![0u8; 65535];
        while !s1.load(Ordering::SeqCst) {
            let Ok((n, peer)) = udp.recv_from(&mut buf) else {
                continue;
            };
            let q = Message::from_vec(&buf[..n]).unwrap();
            if let Some(m) = stub_answer(&q, label) {
                let mut b = m.to_vec().unwrap();
                // `rude`: an upstream that ignores the client's UDP size.
                let rude = m.queries[0].name().to_ascii().starts_with("rude");
                if b.len() > usize::from(q.max_payload()) && !rude {
                    b = m.truncate().to_vec().unwrap();
                }
                udp.send_to(&b, peer).unwrap();
            }
        }
    });
    let s2 = stop.clone();
    let t2 = std::thread::spawn(move || {
        while !s2.load(Ordering::SeqCst) {
            let Ok((mut c, _)) = tcp.accept() else {
                std::thread::sleep(Duration::from_millis(5));
                continue;
            };
            c.set_nonblocking(false).unwrap();
            let mut len = [0u8; 2];
            if c.read_exact(&mut len).is_err() {
                continue;
            }
            let mut b = vec![0u8; usize::from(u16::from_be_bytes(len))];
            c.read_exact(&mut b).unwrap();
            let q = Message::from_vec(&b).unwrap();
            if let Some(m) = stub_answer(&q, label) {
                let b = m.to_vec().unwrap();
                c.write_all(&(b.len() as u16).to_be_bytes()).unwrap();
                c.write_all(&b).unwrap();
            }
        }
    });
    Stub {
        stop,
        threads: vec![t1, t2],
    }
}

#[test]
fn forwarded_answers_pass_through_as_the_upstream_gave_them() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = NetDir::at(tmp.path().join("n"));
    let _l = dir.lock(true).unwrap();
    let mut entries = Entries::default();
    entries.upsert(entry("c1", "api", &["10.0.0.2"]));
    dir.write_entries(&entries).unwrap();
    let port = free_port();
    let up = free_port();
    let _first = stub("127.0.0.1", up, "first");
    let rc = tmp.path().join("resolv.conf");
    std::fs::write(&rc, "nameserver 127.0.0.1\n").unwrap();
    let server = start(&dir, port, rc.clone(), true, up);

    // NODATA: NOERROR, no answer, the upstream's SOA; AA as the upstream set it, the
    // client's ID and question case.
    let mut q = message("AOnly.up.test.", RecordType::AAAA, None);
    q.metadata.id = 0x4242;
    let r = udp_ask(port, &q);
    assert_eq!(r.metadata.id, 0x4242);
    assert_eq!(r.queries[0].name().to_ascii(), "AOnly.up.test.");
    assert_eq!(r.metadata.response_code, ResponseCode::NoError);
    assert!(r.answers.is_empty());
    assert!(r.metadata.authoritative, "the upstream's AA");
    assert!(!r.metadata.recursion_available, "the upstream's RA");
    assert_eq!(r.authorities.len(), 1);
    assert_eq!(r.authorities[0].name.to_ascii(), "up.test.");
    assert_eq!(
        ips(&query(port, "aonly.up.test.", RecordType::A)),
        ["198.51.100.10"]
    );
    // NXDOMAIN with its SOA; REFUSED from the only upstream (to a query with an EDNS0
    // option, as dig sends it: see below for the others).
    let nx = query(port, "nx1.up.test.", RecordType::A);
    assert_eq!(nx.metadata.response_code, ResponseCode::NXDomain);
    assert_eq!(nx.authorities.len(), 1);
    assert_eq!(
        udp_ask(
            port,
            &with_cookie(message("refused.up.test.", RecordType::A, None))
        )
        .metadata
        .response_code,
        ResponseCode::Refused
    );
    // Too large for UDP: TC (the upstream's, for the client's EDNS0 size); whole over TCP.
    let big = udp_ask(port, &message("big.up.test.", RecordType::TXT, Some(1232)));
    assert!(big.metadata.truncation, "{big:?}");
    assert!(big.answers.is_empty());
    let big = tcp_ask(port, &message("big.up.test.", RecordType::TXT, Some(1232)));
    assert!(!big.metadata.truncation);
    assert_eq!(big.answers.len(), 30);
    // An upstream that sends it whole over UDP anyway: we cut it to the client's size, TC set.
    let rude = udp_ask(port, &message("rude.up.test.", RecordType::TXT, Some(1232)));
    assert!(
        rude.metadata.truncation && rude.answers.is_empty(),
        "{rude:?}"
    );
    assert!(rude.metadata.authoritative, "the upstream's header");
    // Our names are still ours.
    assert_eq!(ips(&query(port, "api.", RecordType::A)), ["10.0.0.2"]);

    // A second upstream after the first: REFUSED from the first -> the second is asked.
    let _second = stub("127.0.0.2", up, "second");
    std::fs::write(&rc, "nameserver 127.0.0.1\nnameserver 127.0.0.2\n").unwrap();
    let who = query(port, "who.up.test.", RecordType::TXT);
    assert_eq!(ips(&who), ["first"]);
    let mine = query(port, "mine-second.up.test.", RecordType::A);
    assert_eq!(mine.metadata.response_code, ResponseCode::NoError);
    assert_eq!(ips(&mine), ["198.51.100.11"]);
    // Both refuse: the first refusal goes to the client (it sent an EDNS0 option).
    assert_eq!(
        udp_ask(
            port,
            &with_cookie(message("refused.up.test.", RecordType::A, None))
        )
        .metadata
        .response_code,
        ResponseCode::Refused
    );
    // resolv.conf re-read without a signal: now the second comes first.
    std::fs::write(&rc, "nameserver 127.0.0.2\nnameserver 127.0.0.1\n").unwrap();
    assert_eq!(
        ips(&query(port, "who.up.test.", RecordType::TXT)),
        ["second"]
    );
    // An upstream that refuses the port (nothing on 127.0.0.3) is skipped at once.
    std::fs::write(&rc, "nameserver 127.0.0.3\nnameserver 127.0.0.1\n").unwrap();
    assert_eq!(
        ips(&query(port, "who.up.test.", RecordType::TXT)),
        ["first"]
    );
    // SERVFAIL only when no upstream answered: here none listens.
    std::fs::write(&rc, "nameserver 127.0.0.3\nnameserver 127.0.0.4\n").unwrap();
    let sf = query(port, "who.up.test.", RecordType::TXT);
    assert_eq!(sf.metadata.response_code, ResponseCode::ServFail);
    assert!(sf.metadata.recursion_available);

    dir.remove().unwrap();
    server.join().unwrap().unwrap();
}

#[test]
fn refused_or_servfail_to_a_udp_query_without_edns_options_gets_no_answer_as_from_dnsmasq() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = NetDir::at(tmp.path().join("n"));
    let _l = dir.lock(true).unwrap();
    dir.write_entries(&Entries::default()).unwrap();
    let port = free_port();
    let up = free_port();
    let _first = stub("127.0.0.1", up, "first");
    let _second = stub("127.0.0.2", up, "second");
    let rc = tmp.path().join("resolv.conf");
    std::fs::write(&rc, "nameserver 127.0.0.1\n").unwrap();
    let server = start(&dir, port, rc.clone(), true, up);
    let rcode = |m: Message| m.metadata.response_code;

    // No OPT (busybox, glibc, musl) or an OPT without options (glibc `options edns0`,
    // dig +nocookie): REFUSED and SERVFAIL are not passed on, nothing is.
    no_answer(
        port,
        &[
            message("refused.up.test.", RecordType::AAAA, None),
            message("refused.up.test.", RecordType::A, Some(1232)),
            message("servfail.up.test.", RecordType::A, None),
        ],
    );
    // With an option (dig's COOKIE) they are; over TCP too, options or not.
    let cookie = |name| with_cookie(message(name, RecordType::A, None));
    assert_eq!(
        rcode(udp_ask(port, &cookie("refused.up.test."))),
        ResponseCode::Refused
    );
    assert_eq!(
        rcode(udp_ask(port, &cookie("servfail.up.test."))),
        ResponseCode::ServFail
    );
    let plain = message("refused.up.test.", RecordType::A, None);
    assert_eq!(rcode(tcp_ask(port, &plain)), ResponseCode::Refused);
    // Other codes are passed on to every client.
    assert_eq!(
        rcode(query(port, "notimp.up.test.", RecordType::A)),
        ResponseCode::NotImp
    );
    assert_eq!(
        rcode(query(port, "nx1.up.test.", RecordType::A)),
        ResponseCode::NXDomain
    );

    // Two upstreams: a refusal from the first sends the query on, the second's answer goes
    // to the client; both refusing: nothing, as dnsmasq with none left.
    std::fs::write(&rc, "nameserver 127.0.0.1\nnameserver 127.0.0.2\n").unwrap();
    let mine = query(port, "mine-second.up.test.", RecordType::A);
    assert_eq!(ips(&mine), ["198.51.100.11"]);
    no_answer(port, &[message("refused.up.test.", RecordType::A, None)]);
    // REFUSED from the first, NOTIMP from the second: dnsmasq passes the NOTIMP on.
    let notimp = query(port, "notimp-second.up.test.", RecordType::A);
    assert_eq!(rcode(notimp), ResponseCode::NotImp);
    // The resolver is still there, and still ours when no upstream answers at all.
    std::fs::write(&rc, "nameserver 127.0.0.3\n").unwrap();
    assert_eq!(
        rcode(query(port, "who.up.test.", RecordType::TXT)),
        ResponseCode::ServFail
    );

    dir.remove().unwrap();
    server.join().unwrap().unwrap();
}

#[test]
fn a_silent_upstream_is_given_up_in_time_for_the_next() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = NetDir::at(tmp.path().join("n"));
    let _l = dir.lock(true).unwrap();
    dir.write_entries(&Entries::default()).unwrap();
    let port = free_port();
    let up = free_port();
    let _first = stub("127.0.0.1", up, "first");
    // 127.0.0.5: a socket that takes the query and never answers.
    let silent = StdUdp::bind(("127.0.0.5", up)).unwrap();
    let rc = tmp.path().join("resolv.conf");
    std::fs::write(&rc, "nameserver 127.0.0.5\nnameserver 127.0.0.1\n").unwrap();
    let server = start(&dir, port, rc, true, up);
    let who = query(port, "who.up.test.", RecordType::TXT);
    assert_eq!(ips(&who), ["first"]);
    // The silent upstream did get the query first.
    silent.set_nonblocking(true).unwrap();
    let mut buf = [0u8; 512];
    assert!(
        silent.recv(&mut buf).is_ok(),
        "127.0.0.5 was not asked first"
    );
    // A query no upstream answers: the silent one, then the stub stays silent too.
    let sf = query(port, "silent.up.test.", RecordType::A);
    assert_eq!(sf.metadata.response_code, ResponseCode::ServFail);
    dir.remove().unwrap();
    server.join().unwrap().unwrap();
}

#[test]
fn loops_to_ourselves_are_not_forwarded() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = NetDir::at(tmp.path().join("n"));
    let _l = dir.lock(true).unwrap();
    dir.write_entries(&Entries::default()).unwrap();
    let port = free_port();
    let rc = tmp.path().join("resolv.conf");
    std::fs::write(&rc, "nameserver 127.0.0.1\n").unwrap();
    // The upstream is on our own address and port: the query is never sent to ourselves.
    let server = start(&dir, port, rc, true, port);
    let sf = query(port, "example.org.", RecordType::A);
    assert_eq!(sf.metadata.response_code, ResponseCode::ServFail);
    dir.remove().unwrap();
    server.join().unwrap().unwrap();
}

#[test]
fn log_lines_a_query_causes_are_limited_and_counted() {
    let l = LogLimit::default();
    assert_eq!(l.ready(), Some(0));
    assert_eq!(l.ready(), None);
    assert_eq!(l.ready(), None);
    // A minute later: the next line says two were held back.
    l.last.fetch_sub(LOG_EVERY_SECS, Ordering::Relaxed);
    assert_eq!(l.ready(), Some(2));
}
