//! The v3 JSON gateway's wire format (etcd 3.4, grpc-gateway v1).
//!
//! Quirks this module absorbs: keys and values are base64; int64 fields are JSON strings;
//! proto3 defaults are omitted (`succeeded` is absent when false, a PUT event has no `type`,
//! a missing count is 0); field names are the proto's snake_case (`create_revision`), except
//! the lease messages' `ID` and `TTL`.

use base64::{engine::general_purpose::STANDARD, Engine as _};
use serde::{de, Deserialize, Deserializer, Serialize};
use serde_json::{json, Value};

use crate::{Compare, CompareOp, CompareTarget, Kv, Op};

/// Base64 for a key or value.
pub(crate) fn b64(bytes: &[u8]) -> String {
    STANDARD.encode(bytes)
}

/// An int64 sent as a string (the gateway's encoding) or as a plain number.
pub(crate) fn de_i64<'de, D: Deserializer<'de>>(d: D) -> Result<i64, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Int {
        S(String),
        N(i64),
    }
    match Int::deserialize(d)? {
        Int::N(n) => Ok(n),
        Int::S(s) => s.parse().map_err(de::Error::custom),
    }
}

/// Base64 bytes.
pub(crate) fn de_b64<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
    let s = String::deserialize(d)?;
    STANDARD.decode(s.as_bytes()).map_err(de::Error::custom)
}

#[derive(Debug, Default, Deserialize)]
pub(crate) struct Header {
    #[serde(default, deserialize_with = "de_i64")]
    pub revision: i64,
}

#[derive(Debug, Default, Deserialize)]
pub(crate) struct WireKv {
    #[serde(default, deserialize_with = "de_b64")]
    key: Vec<u8>,
    #[serde(default, deserialize_with = "de_b64")]
    value: Vec<u8>,
    #[serde(default, deserialize_with = "de_i64")]
    create_revision: i64,
    #[serde(default, deserialize_with = "de_i64")]
    mod_revision: i64,
    #[serde(default, deserialize_with = "de_i64")]
    version: i64,
    #[serde(default, deserialize_with = "de_i64")]
    lease: i64,
}

impl From<WireKv> for Kv {
    fn from(w: WireKv) -> Kv {
        Kv {
            key: w.key,
            value: w.value,
            create_revision: w.create_revision,
            mod_revision: w.mod_revision,
            version: w.version,
            lease: w.lease,
        }
    }
}

#[derive(Debug, Default, Deserialize)]
pub(crate) struct RangeResponse {
    #[serde(default)]
    pub header: Header,
    #[serde(default)]
    pub kvs: Vec<WireKv>,
}

#[derive(Debug, Default, Deserialize)]
pub(crate) struct PutResponse {
    #[serde(default)]
    pub header: Header,
}

#[derive(Debug, Default, Deserialize)]
pub(crate) struct DeleteRangeResponse {
    #[serde(default, deserialize_with = "de_i64")]
    pub deleted: i64,
}

#[derive(Debug, Default, Deserialize)]
pub(crate) struct ResponseOp {
    pub response_range: Option<RangeResponse>,
    pub response_put: Option<PutResponse>,
    pub response_delete_range: Option<DeleteRangeResponse>,
}

#[derive(Debug, Default, Deserialize)]
pub(crate) struct TxnResponse {
    #[serde(default)]
    pub header: Header,
    /// Omitted by the gateway when false.
    #[serde(default)]
    pub succeeded: bool,
    #[serde(default)]
    pub responses: Vec<ResponseOp>,
}

#[derive(Debug, Default, Deserialize)]
pub(crate) struct LeaseGrantResponse {
    #[serde(rename = "ID", default, deserialize_with = "de_i64")]
    pub id: i64,
    #[serde(rename = "TTL", default, deserialize_with = "de_i64")]
    pub ttl: i64,
    #[serde(default)]
    pub error: String,
}

#[derive(Debug, Default, Deserialize)]
pub(crate) struct StatusHeader {
    #[serde(default, deserialize_with = "de_u64")]
    pub member_id: u64,
}

#[derive(Debug, Default, Deserialize)]
pub(crate) struct StatusResponse {
    #[serde(default)]
    pub header: StatusHeader,
    #[serde(default, deserialize_with = "de_u64")]
    pub leader: u64,
}

/// A uint64 sent as a string (member ids use the whole range).
pub(crate) fn de_u64<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Int {
        S(String),
        N(u64),
    }
    match Int::deserialize(d)? {
        Int::N(n) => Ok(n),
        Int::S(s) => s.parse().map_err(de::Error::custom),
    }
}

#[derive(Debug, Default, Deserialize)]
pub(crate) struct LeaseKeepAliveFrame {
    pub result: Option<LeaseGrantResponse>,
}

/// A gateway error body: `{"error","message","code"}` (code is the gRPC status code).
#[derive(Debug, Default, Deserialize)]
pub(crate) struct ErrorBody {
    #[serde(default)]
    pub message: String,
    #[serde(default)]
    pub error: String,
    #[serde(default)]
    pub code: i64,
}

/// An error frame inside a stream: `{"error":{"grpc_code","http_code","message"}}`.
#[derive(Debug, Default, Deserialize)]
pub(crate) struct StreamError {
    #[serde(default)]
    pub grpc_code: i64,
    #[serde(default)]
    pub message: String,
}

#[derive(Debug, Default, Deserialize)]
pub(crate) struct WireEvent {
    /// "PUT" is the proto default and is omitted; "DELETE" is spelled out.
    #[serde(rename = "type", default)]
    pub kind: String,
    #[serde(default)]
    pub kv: WireKv,
    pub prev_kv: Option<WireKv>,
}

#[derive(Debug, Default, Deserialize)]
pub(crate) struct WatchResult {
    #[serde(default)]
    pub header: Header,
    #[serde(default)]
    pub created: bool,
    #[serde(default)]
    pub canceled: bool,
    #[serde(default, deserialize_with = "de_i64")]
    pub compact_revision: i64,
    #[serde(default)]
    pub cancel_reason: String,
    #[serde(default)]
    pub events: Vec<WireEvent>,
}

#[derive(Debug, Default, Deserialize)]
pub(crate) struct WatchFrame {
    pub result: Option<WatchResult>,
    pub error: Option<StreamError>,
}

/// `{"key","range_end"?}` for range and deleterange.
pub(crate) fn range_body(key: &[u8], range_end: Option<&[u8]>) -> Value {
    let mut v = json!({ "key": b64(key) });
    if let Some(end) = range_end {
        v["range_end"] = json!(b64(end));
    }
    v
}

pub(crate) fn put_body(key: &[u8], value: &[u8], lease: Option<i64>) -> Value {
    let mut v = json!({ "key": b64(key), "value": b64(value) });
    if let Some(l) = lease {
        v["lease"] = json!(l.to_string());
    }
    v
}

fn compare_body(c: &Compare) -> Value {
    let result = match c.op {
        CompareOp::Equal => "EQUAL",
        CompareOp::Greater => "GREATER",
        CompareOp::Less => "LESS",
        CompareOp::NotEqual => "NOT_EQUAL",
    };
    let mut v = json!({ "key": b64(&c.key), "result": result });
    if let Some(end) = &c.range_end {
        v["range_end"] = json!(b64(end));
    }
    match &c.target {
        CompareTarget::Version(n) => {
            v["target"] = json!("VERSION");
            v["version"] = json!(n.to_string());
        }
        CompareTarget::CreateRevision(n) => {
            v["target"] = json!("CREATE");
            v["create_revision"] = json!(n.to_string());
        }
        CompareTarget::ModRevision(n) => {
            v["target"] = json!("MOD");
            v["mod_revision"] = json!(n.to_string());
        }
        CompareTarget::Value(bytes) => {
            v["target"] = json!("VALUE");
            v["value"] = json!(b64(bytes));
        }
        CompareTarget::Lease(n) => {
            v["target"] = json!("LEASE");
            v["lease"] = json!(n.to_string());
        }
    }
    v
}

fn op_body(op: &Op) -> Value {
    match op {
        Op::Get { key, range_end } => {
            json!({ "request_range": range_body(key, range_end.as_deref()) })
        }
        Op::Put { key, value, lease } => json!({ "request_put": put_body(key, value, *lease) }),
        Op::Delete { key, range_end } => {
            json!({ "request_delete_range": range_body(key, range_end.as_deref()) })
        }
    }
}

/// A read-only txn of `ops` (gets) answered by the member from its own state, without the
/// quorum round of a linearizable read (`serializable` on every range).
pub(crate) fn serializable_read_body(ops: &[Op]) -> Value {
    let mut v = txn_body(&[], ops, &[]);
    if let Some(ops) = v["success"].as_array_mut() {
        for op in ops {
            if let Some(r) = op.get_mut("request_range") {
                r["serializable"] = json!(true);
            }
        }
    }
    v
}

pub(crate) fn txn_body(compares: &[Compare], success: &[Op], failure: &[Op]) -> Value {
    json!({
        "compare": compares.iter().map(compare_body).collect::<Vec<_>>(),
        "success": success.iter().map(op_body).collect::<Vec<_>>(),
        "failure": failure.iter().map(op_body).collect::<Vec<_>>(),
    })
}

pub(crate) fn watch_body(
    key: &[u8],
    range_end: &[u8],
    start_revision: i64,
    prev_kv: bool,
) -> Value {
    let mut create = json!({ "key": b64(key), "range_end": b64(range_end), "prev_kv": prev_kv,
        "progress_notify": true });
    if start_revision > 0 {
        create["start_revision"] = json!(start_revision.to_string());
    }
    json!({ "create_request": create })
}

/// Serializable helper so lease bodies read like the others.
#[derive(Serialize)]
pub(crate) struct LeaseId {
    #[serde(rename = "ID")]
    pub id: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kv_decodes_base64_and_string_ints() {
        let r: RangeResponse = serde_json::from_str(
            r#"{"header":{"revision":"7"},"kvs":[{"key":"YQ==","create_revision":"2",
            "mod_revision":"5","version":"3","value":"Yg==","lease":"1353509984524910601"}],"count":"1"}"#,
        )
        .unwrap();
        assert_eq!(r.header.revision, 7);
        let kv: Kv = r.kvs.into_iter().next().unwrap().into();
        assert_eq!(kv.key, b"a");
        assert_eq!(kv.value, b"b");
        assert_eq!((kv.create_revision, kv.mod_revision, kv.version), (2, 5, 3));
        assert_eq!(kv.lease, 1353509984524910601);
    }

    #[test]
    fn txn_succeeded_is_false_when_omitted() {
        let t: TxnResponse = serde_json::from_str(
            r#"{"header":{"revision":"2"},"responses":[{"response_range":{"header":{"revision":"2"},
            "kvs":[{"key":"YQ==","create_revision":"2","mod_revision":"2","version":"1","value":"Yg=="}],"count":"1"}}]}"#,
        )
        .unwrap();
        assert!(!t.succeeded);
        assert_eq!(t.responses[0].response_range.as_ref().unwrap().kvs.len(), 1);
        let t: TxnResponse = serde_json::from_str(
            r#"{"header":{"revision":"3"},"succeeded":true,"responses":[{"response_put":{"header":{"revision":"3"}}}]}"#,
        )
        .unwrap();
        assert!(t.succeeded);
        assert!(t.responses[0].response_put.is_some());
    }

    #[test]
    fn watch_frames_decode_put_and_delete() {
        let f: WatchFrame = serde_json::from_str(
            r#"{"result":{"header":{"revision":"6"},"events":[{"type":"DELETE","kv":{"key":"cDE=","mod_revision":"6"},
            "prev_kv":{"key":"cDE=","create_revision":"5","mod_revision":"5","version":"1","value":"Yg=="}}]}}"#,
        )
        .unwrap();
        let r = f.result.unwrap();
        assert_eq!(r.events[0].kind, "DELETE");
        assert_eq!(r.events[0].prev_kv.as_ref().unwrap().value, b"b");
        let f: WatchFrame =
            serde_json::from_str(r#"{"result":{"events":[{"kv":{"key":"cDE=","value":"Yg=="}}]}}"#)
                .unwrap();
        assert_eq!(f.result.unwrap().events[0].kind, "");
        let f: WatchFrame =
            serde_json::from_str(r#"{"error":{"grpc_code":14,"http_code":503,"message":"x"}}"#)
                .unwrap();
        assert_eq!(f.error.unwrap().grpc_code, 14);
    }

    #[test]
    fn a_serializable_read_marks_every_range() {
        let b = serializable_read_body(&[Op::get("a"), Op::get_prefix("b/")]);
        assert_eq!(b["compare"], json!([]));
        assert_eq!(b["success"][0]["request_range"]["serializable"], true);
        assert_eq!(b["success"][1]["request_range"]["serializable"], true);
        assert_eq!(b["success"][1]["request_range"]["key"], "Yi8=");
        assert_eq!(
            txn_body(&[], &[Op::get("a")], &[])["success"][0]["request_range"]["serializable"],
            Value::Null
        );
    }

    #[test]
    fn txn_body_spells_targets_and_ints_as_the_gateway_wants() {
        let b = txn_body(
            &[Compare::create_revision("k", CompareOp::Equal, 0)],
            &[Op::put("k", "v", Some(42))],
            &[Op::get("k")],
        );
        assert_eq!(b["compare"][0]["target"], "CREATE");
        assert_eq!(b["compare"][0]["create_revision"], "0");
        assert_eq!(b["compare"][0]["key"], "aw==");
        assert_eq!(b["success"][0]["request_put"]["lease"], "42");
        assert_eq!(b["failure"][0]["request_range"]["key"], "aw==");
    }
}
