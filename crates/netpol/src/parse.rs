//! Input files: one object, a multi-document YAML stream, or a `kind: List` (JSON is YAML).

use serde_json::Value;

use crate::{
    model::{Namespace, NetworkPolicy, Object, Pod},
    PolicyError,
};

/// The objects of `text`, in order. Empty documents are skipped; an unknown kind or
/// apiVersion, or a field a NetworkPolicy does not have, is an error naming the document.
pub fn parse(text: &str) -> Result<Vec<Object>, PolicyError> {
    let mut out = Vec::new();
    for (i, doc) in serde_norway::Deserializer::from_str(text).enumerate() {
        let value =
            <Value as serde::Deserialize>::deserialize(doc).map_err(|e| PolicyError::Parse {
                doc: i + 1,
                reason: e.to_string(),
            })?;
        if value.is_null() {
            continue;
        }
        objects(value, i + 1, &mut out)?;
    }
    Ok(out)
}

fn objects(value: Value, doc: usize, out: &mut Vec<Object>) -> Result<(), PolicyError> {
    let bad = |reason: String| PolicyError::Parse { doc, reason };
    let kind = value
        .get("kind")
        .and_then(Value::as_str)
        .ok_or_else(|| bad("no \"kind\"".to_owned()))?
        .to_owned();
    let api = value
        .get("apiVersion")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned();
    let want = |v: &str| -> Result<(), PolicyError> {
        if api == v {
            Ok(())
        } else {
            Err(bad(format!("{kind}: apiVersion {api:?}, expected {v:?}")))
        }
    };
    fn typed<T: serde::de::DeserializeOwned>(
        value: Value,
        doc: usize,
        kind: &str,
    ) -> Result<T, PolicyError> {
        serde_json::from_value(value).map_err(|e| PolicyError::Parse {
            doc,
            reason: format!("{kind}: {e}"),
        })
    }
    match kind.as_str() {
        "Namespace" => {
            want("v1")?;
            out.push(Object::Namespace(typed::<Namespace>(value, doc, &kind)?));
        }
        "Pod" => {
            want("v1")?;
            out.push(Object::Pod(typed::<Pod>(value, doc, &kind)?));
        }
        "NetworkPolicy" => {
            want("networking.k8s.io/v1")?;
            out.push(Object::NetworkPolicy(typed::<NetworkPolicy>(
                value, doc, &kind,
            )?));
        }
        k if k == "List" || k.ends_with("List") => {
            let Some(Value::Array(items)) = value.get("items").cloned() else {
                return Err(bad(format!("{kind} without \"items\"")));
            };
            for item in items {
                objects(item, doc, out)?;
            }
        }
        k => {
            return Err(bad(format!(
                "kind {k:?} is not Namespace, Pod, NetworkPolicy or List"
            )))
        }
    }
    Ok(())
}
