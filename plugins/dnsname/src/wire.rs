//! DNS messages on the wire: the client's query as received, our own answers, and an
//! upstream's reply made the client's (pure, unit-tested).
//!
//! A forwarded query goes upstream as the client's bytes with only the ID replaced; the reply
//! comes back as the upstream's bytes with only the ID (and the question's letter case, for
//! clients that randomise it) made the client's again. So the response code, every section
//! (the SOA of a NODATA or NXDOMAIN included), the flags (AA, RA, AD, TC) and EDNS0 reach the
//! client as the upstream gave them, whatever record types they hold.

use std::ops::Range;

use hickory_proto::{
    op::{Edns, Header, Message, MessageType, Metadata, OpCode, Query, ResponseCode},
    rr::{RData, Record, RecordType},
    serialize::binary::{BinDecodable, BinDecoder},
};

/// The UDP payload we advertise in our own EDNS0 answers (the DNS flag day 2020 value).
pub const OUR_UDP_PAYLOAD: u16 = 1232;
/// The most we send over UDP, whatever a client advertises.
const MAX_UDP: usize = 4096;
/// A DNS message over TCP has a 16-bit length.
pub const MAX_TCP: usize = u16::MAX as usize;

/// A client's query, as received.
#[derive(Debug, Clone)]
pub struct ClientQuery {
    /// The packet as received.
    pub packet: Vec<u8>,
    pub metadata: Metadata,
    pub query: Query,
    /// Where the question is in `packet`.
    pub question: Range<usize>,
    /// The client's EDNS0 OPT, if it sent one.
    pub edns: Option<Edns>,
    /// The OPT record carries data (EDNS0 options: dig's COOKIE, ECS, ...), measured as
    /// dnsmasq measures it (see [`ClientQuery::dnsmasq_withholds`]).
    pub edns_options: bool,
}

/// What to do with a packet that came in.
#[derive(Debug)]
pub enum Incoming {
    Query(Box<ClientQuery>),
    /// Answer this at once (FORMERR, NOTIMP).
    Reply(Vec<u8>),
    /// Not a query (a response, or too short to have an ID): no answer.
    Ignore,
}

/// The header and the first question of `packet`, and where the question ends.
fn head(packet: &[u8]) -> Option<(Header, Option<(Query, usize)>)> {
    let mut d = BinDecoder::new(packet);
    let header = Header::read(&mut d).ok()?;
    if header.counts.queries == 0 {
        return Some((header, None));
    }
    let q = Query::read(&mut d).ok().map(|q| (q, d.index()));
    Some((header, q))
}

/// A header-only error answer to `metadata`'s query, the question echoed when there is one.
fn error_reply(metadata: &Metadata, query: Option<&Query>, rcode: ResponseCode) -> Vec<u8> {
    let mut m = Message::new(metadata.id, MessageType::Response, metadata.op_code);
    m.metadata.recursion_desired = metadata.recursion_desired;
    m.metadata.response_code = rcode;
    if let Some(q) = query {
        m.add_query(q.clone());
    }
    m.to_vec().unwrap_or_default()
}

/// Classifies an incoming packet.
pub fn parse(packet: &[u8]) -> Incoming {
    let Some((header, first)) = head(packet) else {
        return Incoming::Ignore;
    };
    let md = header.metadata;
    if md.message_type != MessageType::Query {
        return Incoming::Ignore;
    }
    if md.op_code != OpCode::Query {
        return Incoming::Reply(error_reply(
            &md,
            first.as_ref().map(|(q, _)| q),
            ResponseCode::NotImp,
        ));
    }
    let (Some((query, end)), 1) = (first, header.counts.queries) else {
        return Incoming::Reply(error_reply(&md, None, ResponseCode::FormErr));
    };
    let Ok(msg) = Message::from_vec(packet) else {
        return Incoming::Reply(error_reply(&md, Some(&query), ResponseCode::FormErr));
    };
    Incoming::Query(Box::new(ClientQuery {
        packet: packet.to_vec(),
        metadata: md,
        query,
        question: 12..end,
        edns: msg.edns,
        edns_options: opt_len(packet).is_some_and(|n| n > OPT_BARE),
    }))
}

/// The length of an OPT record with no options: root name (1), type, class, TTL, RDLENGTH.
const OPT_BARE: usize = 11;

/// The length in bytes of the first OPT record in `packet`'s additional section, as
/// dnsmasq's `find_pseudoheader` gives it.
fn opt_len(packet: &[u8]) -> Option<usize> {
    let mut d = BinDecoder::new(packet);
    let c = Header::read(&mut d).ok()?.counts;
    for _ in 0..c.queries {
        Query::read(&mut d).ok()?;
    }
    for i in 0..u32::from(c.answers) + u32::from(c.authorities) + u32::from(c.additionals) {
        let start = d.index();
        let r = Record::<RData>::read(&mut d).ok()?;
        let additional = i >= u32::from(c.answers) + u32::from(c.authorities);
        if additional && r.record_type() == RecordType::OPT {
            return Some(d.index() - start);
        }
    }
    None
}

impl ClientQuery {
    /// The largest answer this client takes over UDP (RFC 6891: 512 without EDNS0).
    pub fn udp_limit(&self) -> usize {
        match &self.edns {
            Some(e) => usize::from(e.max_payload()).clamp(512, MAX_UDP),
            None => 512,
        }
    }

    /// The frame of our answers: the client's ID, opcode, RD and CD, and its question; an OPT
    /// of ours when the client sent one.
    fn response(&self, rcode: ResponseCode, recursion_available: bool) -> Message {
        let mut m = Message::new(self.metadata.id, MessageType::Response, OpCode::Query);
        m.metadata.recursion_desired = self.metadata.recursion_desired;
        m.metadata.checking_disabled = self.metadata.checking_disabled;
        m.metadata.recursion_available = recursion_available;
        m.metadata.response_code = rcode;
        m.add_query(self.query.clone());
        if let Some(client) = &self.edns {
            let mut e = Edns::new();
            e.set_max_payload(OUR_UDP_PAYLOAD);
            e.set_dnssec_ok(client.flags().dnssec_ok);
            m.set_edns(e);
        }
        m
    }

    /// Does dnsmasq (2.90, as the Go dnsname runs it: `strict-order`) answer nothing when the
    /// last upstream's reply to this query carries `rcode`? Its rule (`reply_query` in
    /// `src/forward.c`): a UDP reply of REFUSED or SERVFAIL to a query it can re-create from
    /// the reply sends the query to the next upstream and, with none left, to nobody: the
    /// client gets no answer and waits for its own timeout. It can re-create the query when
    /// the OPT record it forwarded carries no options (`edns0_len > 11` marks one that does:
    /// dig's COOKIE, ECS) and the question is not TKEY (a signed exchange). So busybox, glibc
    /// and musl (no EDNS0), glibc's `options edns0` and `dig +nocookie` (an empty OPT) get
    /// nothing; dig (COOKIE) gets the REFUSED. Over TCP the first upstream's reply is passed
    /// on, REFUSED included (`tcp_talk`). Other codes (NOTIMP, NXDOMAIN...) are passed on.
    pub fn dnsmasq_withholds(&self, rcode: ResponseCode, tcp: bool) -> bool {
        /// TKEY (RFC 2930), which hickory has no name for.
        const TKEY: u16 = 249;
        !tcp && matches!(rcode, ResponseCode::Refused | ResponseCode::ServFail)
            && !self.edns_options
            && u16::from(self.query.query_type()) != TKEY
    }

    /// An EDNS version we do not speak (RFC 6891 6.1.3: BADVERS).
    pub fn bad_edns_version(&self) -> bool {
        self.edns.as_ref().is_some_and(|e| e.version() > 0)
    }

    /// Our own answer (authoritative), encoded within `limit` bytes: TC and no records when
    /// the records do not fit.
    pub fn local_answer(
        &self,
        rcode: ResponseCode,
        answers: Vec<Record>,
        authority: Vec<Record>,
        recursion_available: bool,
        limit: usize,
    ) -> Vec<u8> {
        let mut m = self.response(rcode, recursion_available);
        m.metadata.authoritative = true;
        m.insert_answers(answers);
        m.insert_authorities(authority);
        let full = m.to_vec().unwrap_or_default();
        if full.len() <= limit {
            return full;
        }
        m.truncate().to_vec().unwrap_or_default()
    }

    /// An answer with no records: SERVFAIL (no upstream answered), REFUSED (we do not
    /// forward), BADVERS.
    pub fn bare_answer(&self, rcode: ResponseCode, recursion_available: bool) -> Vec<u8> {
        self.response(rcode, recursion_available)
            .to_vec()
            .unwrap_or_default()
    }

    /// The client's packet with `id` instead of its own: what goes upstream.
    pub fn upstream_packet(&self, id: u16) -> Vec<u8> {
        let mut p = self.packet.clone();
        p[..2].copy_from_slice(&id.to_be_bytes());
        p
    }

    /// What an upstream's `reply` (already [`check`]ed) becomes for this client: its ID and
    /// question (letter case), and over UDP within `limit` bytes: a reply too large comes
    /// with TC set, the upstream's header and no records, so the client asks again over TCP.
    pub fn from_upstream(&self, reply: &[u8], checked: &Checked, limit: usize) -> Vec<u8> {
        if reply.len() > limit {
            let mut m = self.response(checked.metadata.response_code, false);
            m.metadata = checked.metadata;
            m.metadata.id = self.metadata.id;
            m.metadata.truncation = true;
            return m.to_vec().unwrap_or_default();
        }
        let mut out = reply.to_vec();
        out[..2].copy_from_slice(&self.metadata.id.to_be_bytes());
        let ours = &self.packet[self.question.clone()];
        if checked.question.len() == ours.len() {
            out[checked.question.clone()].copy_from_slice(ours);
        }
        out
    }
}

/// What [`check`] found in an upstream's reply.
#[derive(Debug, Clone)]
pub struct Checked {
    pub metadata: Metadata,
    /// Where its question is.
    pub question: Range<usize>,
}

impl Checked {
    /// SERVFAIL, NOTIMP or REFUSED: that server could not answer; the next one is asked (as
    /// glibc's stub resolver does), and this reply goes to the client only if none does better.
    pub fn try_next(&self) -> bool {
        matches!(
            self.metadata.response_code,
            ResponseCode::ServFail | ResponseCode::NotImp | ResponseCode::Refused
        )
    }
}

/// Is `reply` the answer to our query `id` for `query`: a response, same ID, one question,
/// same name (any case), type and class? Anything else is ignored (a late answer to an
/// earlier try, or a spoofing attempt).
pub fn check(reply: &[u8], id: u16, query: &Query) -> Option<Checked> {
    let (header, first) = head(reply)?;
    let md = header.metadata;
    if md.message_type != MessageType::Response || md.id != id || header.counts.queries != 1 {
        return None;
    }
    let (q, end) = first?;
    let same = q.name() == query.name()
        && q.query_type() == query.query_type()
        && q.query_class() == query.query_class();
    same.then_some(Checked {
        metadata: md,
        question: 12..end,
    })
}

#[cfg(test)]
mod tests {
    use hickory_proto::rr::{rdata, Name, RData, RecordType};

    use super::*;

    fn query(name: &str, t: RecordType, edns: Option<u16>) -> Vec<u8> {
        let mut m = Message::new(0x1234, MessageType::Query, OpCode::Query);
        m.metadata.recursion_desired = true;
        m.add_query(Query::query(Name::from_ascii(name).unwrap(), t));
        if let Some(size) = edns {
            let mut e = Edns::new();
            e.set_max_payload(size);
            m.set_edns(e);
        }
        m.to_vec().unwrap()
    }

    fn client(p: &[u8]) -> ClientQuery {
        match parse(p) {
            Incoming::Query(q) => *q,
            other => panic!("{other:?}"),
        }
    }

    /// An upstream's reply to `q` (with its id), `n` TXT records of 200 bytes, rcode, AA.
    fn upstream_reply(
        q: &ClientQuery,
        id: u16,
        qname: &str,
        n: usize,
        rcode: ResponseCode,
    ) -> Vec<u8> {
        let mut m = Message::new(id, MessageType::Response, OpCode::Query);
        m.metadata.authoritative = true;
        m.metadata.recursion_available = true;
        m.metadata.response_code = rcode;
        let name = Name::from_ascii(qname).unwrap();
        m.add_query(Query::query(name.clone(), q.query.query_type()));
        for i in 0..n {
            m.add_answer(Record::from_rdata(
                name.clone(),
                60,
                RData::TXT(rdata::TXT::new(vec![format!("{i:03}{}", "x".repeat(197))])),
            ));
        }
        m.to_vec().unwrap()
    }

    #[test]
    fn a_query_is_parsed_with_its_question_and_edns() {
        let p = query("Example.ORG.", RecordType::AAAA, Some(1232));
        let q = client(&p);
        assert_eq!(q.metadata.id, 0x1234);
        assert_eq!(q.query.query_type(), RecordType::AAAA);
        assert_eq!(q.udp_limit(), 1232);
        assert_eq!(&p[q.question.clone()][..8], b"\x07Example");
        assert_eq!(client(&query("a.", RecordType::A, None)).udp_limit(), 512);
        assert_eq!(
            client(&query("a.", RecordType::A, Some(100))).udp_limit(),
            512
        );
        assert_eq!(
            client(&query("a.", RecordType::A, Some(65000))).udp_limit(),
            4096
        );
    }

    #[test]
    fn responses_short_packets_and_other_opcodes_are_not_queries() {
        let mut p = query("a.", RecordType::A, None);
        assert!(matches!(parse(&p[..5]), Incoming::Ignore));
        p[2] |= 0x80; // QR
        assert!(matches!(parse(&p), Incoming::Ignore));
        p[2] = (p[2] & !0x80) | (4 << 3); // NOTIFY
        let Incoming::Reply(r) = parse(&p) else {
            panic!()
        };
        assert_eq!(
            Message::from_vec(&r).unwrap().metadata.response_code,
            ResponseCode::NotImp
        );
        let mut two = query("a.", RecordType::A, None);
        two[5] = 2; // QDCOUNT 2, one question present
        let Incoming::Reply(r) = parse(&two) else {
            panic!()
        };
        let m = Message::from_vec(&r).unwrap();
        assert_eq!(m.metadata.response_code, ResponseCode::FormErr);
        assert_eq!(m.metadata.id, 0x1234);
    }

    #[test]
    fn an_upstream_reply_becomes_the_clients_byte_for_byte_but_id_and_question_case() {
        let q = client(&query("Example.ORG.", RecordType::TXT, Some(1232)));
        let up = q.upstream_packet(0xbeef);
        assert_eq!(&up[..2], &[0xbe, 0xef]);
        assert_eq!(&up[2..], &q.packet[2..]);
        let reply = upstream_reply(&q, 0xbeef, "example.org.", 2, ResponseCode::NoError);
        let c = check(&reply, 0xbeef, &q.query).unwrap();
        assert!(!c.try_next());
        let out = q.from_upstream(&reply, &c, q.udp_limit());
        assert_eq!(&out[..2], &[0x12, 0x34]);
        assert_eq!(&out[c.question.clone()], &q.packet[q.question.clone()]);
        assert_eq!(&out[c.question.end..], &reply[c.question.end..]);
        let m = Message::from_vec(&out).unwrap();
        assert!(m.metadata.authoritative && m.metadata.recursion_available);
        assert_eq!(m.answers.len(), 2);
    }

    #[test]
    fn replies_to_another_id_or_question_are_ignored() {
        let q = client(&query("example.org.", RecordType::A, None));
        let reply = upstream_reply(&q, 7, "example.org.", 0, ResponseCode::NoError);
        assert!(check(&reply, 8, &q.query).is_none());
        let other = upstream_reply(&q, 7, "example.net.", 0, ResponseCode::NoError);
        assert!(check(&other, 7, &q.query).is_none());
        assert!(
            check(&q.packet, 0x1234, &q.query).is_none(),
            "a query is no reply"
        );
        let refused = upstream_reply(&q, 7, "example.org.", 0, ResponseCode::Refused);
        assert!(check(&refused, 7, &q.query).unwrap().try_next());
        let nx = upstream_reply(&q, 7, "example.org.", 0, ResponseCode::NXDomain);
        assert!(!check(&nx, 7, &q.query).unwrap().try_next());
    }

    #[test]
    fn a_reply_too_large_for_the_client_comes_back_truncated_with_the_upstream_header() {
        let q = client(&query("big.test.", RecordType::TXT, Some(1232)));
        let reply = upstream_reply(&q, 9, "big.test.", 20, ResponseCode::NoError);
        assert!(reply.len() > 1232);
        let c = check(&reply, 9, &q.query).unwrap();
        let out = q.from_upstream(&reply, &c, q.udp_limit());
        assert!(out.len() <= 1232);
        let m = Message::from_vec(&out).unwrap();
        assert!(m.metadata.truncation && m.metadata.authoritative);
        assert_eq!(m.metadata.id, 0x1234);
        assert!(m.answers.is_empty());
        assert_eq!(m.queries.len(), 1);
        assert!(m.edns.is_some(), "the client sent EDNS0: our OPT goes back");
        // Over TCP the whole reply goes through.
        assert_eq!(q.from_upstream(&reply, &c, MAX_TCP).len(), reply.len());
    }

    #[test]
    fn dnsmasq_withholds_refused_and_servfail_over_udp_to_queries_without_edns_options() {
        use hickory_proto::rr::rdata::opt::EdnsOption;
        let bare = client(&query("x.example.", RecordType::A, None));
        let empty_opt = client(&query("x.example.", RecordType::A, Some(1232)));
        let mut m = Message::from_vec(&query("x.example.", RecordType::A, Some(1232))).unwrap();
        let mut e = m.edns.clone().unwrap();
        // dig's COOKIE: an option (8 bytes of client cookie).
        e.options_mut().insert(EdnsOption::Unknown(10, vec![7; 8]));
        m.set_edns(e);
        let cookie = client(&m.to_vec().unwrap());
        assert!(!bare.edns_options && !empty_opt.edns_options && cookie.edns_options);
        for rcode in [ResponseCode::Refused, ResponseCode::ServFail] {
            // busybox, glibc, musl (no OPT); glibc `options edns0`, dig +nocookie (empty OPT).
            assert!(bare.dnsmasq_withholds(rcode, false), "{rcode}");
            assert!(empty_opt.dnsmasq_withholds(rcode, false), "{rcode}");
            // dig: its cookie makes the query one dnsmasq cannot re-create: passed on.
            assert!(!cookie.dnsmasq_withholds(rcode, false), "{rcode}");
            // Over TCP dnsmasq passes the first upstream's reply on.
            assert!(!bare.dnsmasq_withholds(rcode, true), "{rcode}");
        }
        for rcode in [
            ResponseCode::NotImp,
            ResponseCode::NXDomain,
            ResponseCode::NoError,
            ResponseCode::FormErr,
        ] {
            assert!(!bare.dnsmasq_withholds(rcode, false), "{rcode}");
        }
        // A TKEY question (a signed exchange) is not re-created either.
        let tkey = client(&query("k.example.", RecordType::Unknown(249), None));
        assert!(!tkey.dnsmasq_withholds(ResponseCode::Refused, false));
    }

    #[test]
    fn local_answers_are_authoritative_and_truncated_when_too_large() {
        let q = client(&query("many.dns.test.", RecordType::A, None));
        let name = Name::from_ascii("many.dns.test.").unwrap();
        let recs: Vec<Record> = (0..40u8)
            .map(|i| Record::from_rdata(name.clone(), 5, RData::A(rdata::A([10, 0, 0, i].into()))))
            .collect();
        let out = q.local_answer(ResponseCode::NoError, recs.clone(), vec![], true, 512);
        let m = Message::from_vec(&out).unwrap();
        assert!(m.metadata.truncation && m.metadata.authoritative && m.answers.is_empty());
        let out = q.local_answer(ResponseCode::NoError, recs, vec![], true, MAX_TCP);
        let m = Message::from_vec(&out).unwrap();
        assert!(!m.metadata.truncation && m.metadata.recursion_available);
        assert_eq!(m.answers.len(), 40);
        assert_eq!(m.metadata.id, 0x1234);
        assert!(m.metadata.recursion_desired);
    }
}
