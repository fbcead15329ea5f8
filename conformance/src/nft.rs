//! Reading our nft tables back in tests.

use serde_json::Value;

use crate::TestNet;

/// Elements of one set or map of our table as text (`"br"`, `"tcp . 8080 : 10.1.1.2 . 80"`).
pub fn nft_elems(net: &TestNet, kind: &str, name: &str) -> Vec<String> {
    let out = net
        .host()
        .exec("nft", &["-j", "list", kind, "inet", "cnirs", name]);
    if !out.success() {
        return Vec::new();
    }
    fn text(v: &Value) -> String {
        match v {
            Value::String(s) => s.clone(),
            Value::Object(o) if o.contains_key("concat") => o["concat"]
                .as_array()
                .into_iter()
                .flatten()
                .map(text)
                .collect::<Vec<_>>()
                .join(" . "),
            Value::Object(o) if o.contains_key("prefix") => {
                format!("{}/{}", text(&o["prefix"]["addr"]), o["prefix"]["len"])
            }
            Value::Object(o) if o.contains_key("elem") => text(&o["elem"]["val"]),
            Value::Array(kv) => kv.iter().map(text).collect::<Vec<_>>().join(" : "),
            other => other.to_string(),
        }
    }
    out.json()["nftables"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|o| o.get(kind))
        .flat_map(|s| s["elem"].as_array().cloned().unwrap_or_default())
        .map(|e| text(&e))
        .collect()
}
