//! Object keys matched the way Go's `encoding/json` matches them: the exact key first, else
//! a case-insensitive match.
//!
//! The reference plugins decode their config with Go's `encoding/json`, and runtimes rely on
//! it: containerd's CRI (go-cni) sends `runtimeConfig.portMappings` entries with Go field
//! names (`HostPort`, `ContainerPort`, `Protocol`, `HostIP`), and hand-written conflists say
//! `IsGateway` or `IPRanges`. [`GoKeys`] is a serde `Deserializer` over a parsed
//! `serde_json::Value`: when a `#[derive(Deserialize)]` struct asks for its fields
//! (`deserialize_struct`), each incoming key that is not one of the struct's field names
//! (renames and aliases included) is replaced by the field name it equals case-insensitively.
//! Nested values are wrapped again, so every struct at every depth gets the same rule.
//!
//! Where both spellings of one field are present, the exact one wins (Go keeps the last one in
//! document order; serde_json's map does not keep that order). Keys of maps (`sysctl`) and of
//! raw `Value`s are left as they are: only struct fields fold. `#[serde(flatten)]` makes serde
//! ask for a map instead of a struct, which hides the field names: config types do not use it.

use serde::de::{
    self, value::BorrowedStrDeserializer, DeserializeSeed, Deserializer, EnumAccess,
    IntoDeserializer, MapAccess, SeqAccess, VariantAccess, Visitor,
};
use serde_json::{Map, Value};

type Error = serde_json::Error;

/// A `Deserializer` over `&Value` whose structs match their keys as Go does.
#[derive(Clone, Copy)]
pub struct GoKeys<'de>(pub &'de Value);

/// The struct field `key` stands for: itself when it is a field name, else the first field
/// equal to it case-insensitively, else itself (an unknown key, ignored or refused by the
/// struct).
fn field_for<'de>(key: &'de str, fields: &'static [&'static str]) -> &'de str {
    if fields.contains(&key) {
        return key;
    }
    fields
        .iter()
        .find(|f| fold_eq(f, key))
        .copied()
        .unwrap_or(key)
}

/// Case-insensitive equality as Go's `encoding/json` folds names (simple Unicode folding; for
/// the ASCII names configs use, ASCII case).
fn fold_eq(a: &str, b: &str) -> bool {
    if a.is_ascii() && b.is_ascii() {
        return a.eq_ignore_ascii_case(b);
    }
    a.chars()
        .flat_map(char::to_lowercase)
        .eq(b.chars().flat_map(char::to_lowercase))
}

/// The object's entries with keys renamed to `fields`; an exact key beats a folded one.
fn fold_object<'de>(
    m: &'de Map<String, Value>,
    fields: &'static [&'static str],
) -> Vec<(&'de str, &'de Value)> {
    let mut out: Vec<(&'de str, &'de Value, bool)> = Vec::with_capacity(m.len());
    for (k, v) in m {
        let key = field_for(k.as_str(), fields);
        let exact = key == k.as_str();
        match out.iter_mut().find(|(seen, _, _)| *seen == key) {
            Some(slot) => {
                if exact || !slot.2 {
                    *slot = (key, v, exact);
                }
            }
            None => out.push((key, v, exact)),
        }
    }
    out.into_iter().map(|(k, v, _)| (k, v)).collect()
}

impl<'de> Deserializer<'de> for GoKeys<'de> {
    type Error = Error;

    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        match self.0 {
            Value::Array(a) => visitor.visit_seq(Seq(a.iter())),
            Value::Object(m) => visitor.visit_map(Entries {
                iter: m
                    .iter()
                    .map(|(k, v)| (k.as_str(), v))
                    .collect::<Vec<_>>()
                    .into_iter(),
                value: None,
            }),
            other => other.deserialize_any(visitor),
        }
    }

    fn deserialize_option<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        match self.0 {
            Value::Null => visitor.visit_none(),
            _ => visitor.visit_some(self),
        }
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        visitor: V,
    ) -> Result<V::Value, Error> {
        visitor.visit_newtype_struct(self)
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        name: &'static str,
        fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, Error> {
        match self.0 {
            Value::Object(m) => visitor.visit_map(Entries {
                iter: fold_object(m, fields).into_iter(),
                value: None,
            }),
            Value::Array(a) => visitor.visit_seq(Seq(a.iter())),
            // Let serde_json word the type error ("invalid type: string, expected struct X").
            other => other.deserialize_struct(name, fields, visitor),
        }
    }

    fn deserialize_enum<V: Visitor<'de>>(
        self,
        name: &'static str,
        variants: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, Error> {
        match self.0 {
            Value::Object(m) if m.len() == 1 => {
                let Some((variant, value)) = m.iter().next() else {
                    return self.0.deserialize_enum(name, variants, visitor);
                };
                visitor.visit_enum(Enum { variant, value })
            }
            other => other.deserialize_enum(name, variants, visitor),
        }
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes byte_buf
        unit unit_struct seq tuple tuple_struct map identifier ignored_any
    }
}

struct Seq<'de>(std::slice::Iter<'de, Value>);

impl<'de> SeqAccess<'de> for Seq<'de> {
    type Error = Error;

    fn next_element_seed<T: DeserializeSeed<'de>>(
        &mut self,
        seed: T,
    ) -> Result<Option<T::Value>, Error> {
        self.0
            .next()
            .map(|v| seed.deserialize(GoKeys(v)))
            .transpose()
    }

    fn size_hint(&self) -> Option<usize> {
        Some(self.0.len())
    }
}

struct Entries<'de> {
    iter: std::vec::IntoIter<(&'de str, &'de Value)>,
    value: Option<&'de Value>,
}

impl<'de> MapAccess<'de> for Entries<'de> {
    type Error = Error;

    fn next_key_seed<K: DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, Error> {
        match self.iter.next() {
            Some((k, v)) => {
                self.value = Some(v);
                seed.deserialize(BorrowedStrDeserializer::new(k)).map(Some)
            }
            None => Ok(None),
        }
    }

    fn next_value_seed<V: DeserializeSeed<'de>>(&mut self, seed: V) -> Result<V::Value, Error> {
        match self.value.take() {
            Some(v) => seed.deserialize(GoKeys(v)),
            None => Err(de::Error::custom("value asked for before its key")),
        }
    }

    fn size_hint(&self) -> Option<usize> {
        Some(self.iter.len())
    }
}

struct Enum<'de> {
    variant: &'de str,
    value: &'de Value,
}

impl<'de> EnumAccess<'de> for Enum<'de> {
    type Error = Error;
    type Variant = GoKeys<'de>;

    fn variant_seed<V: DeserializeSeed<'de>>(
        self,
        seed: V,
    ) -> Result<(V::Value, GoKeys<'de>), Error> {
        let v = seed.deserialize(self.variant.into_deserializer())?;
        Ok((v, GoKeys(self.value)))
    }
}

impl<'de> VariantAccess<'de> for GoKeys<'de> {
    type Error = Error;

    fn unit_variant(self) -> Result<(), Error> {
        de::Deserialize::deserialize(self)
    }

    fn newtype_variant_seed<T: DeserializeSeed<'de>>(self, seed: T) -> Result<T::Value, Error> {
        seed.deserialize(self)
    }

    fn tuple_variant<V: Visitor<'de>>(self, _len: usize, visitor: V) -> Result<V::Value, Error> {
        self.deserialize_any(visitor)
    }

    fn struct_variant<V: Visitor<'de>>(
        self,
        fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, Error> {
        self.deserialize_struct("", fields, visitor)
    }
}

/// `value` at `path` (object keys), each step matched as Go matches a struct field: exactly,
/// else case-insensitively. For the few places that read a raw `Value` (`args.cni.mac`).
pub fn pointer<'a>(value: &'a Value, path: &[&str]) -> Option<&'a Value> {
    let mut cur = value;
    for step in path {
        let m = cur.as_object()?;
        cur = match m.get(*step) {
            Some(v) => v,
            None => m.iter().find(|(k, _)| fold_eq(k, step)).map(|(_, v)| v)?,
        };
    }
    Some(cur)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use serde::Deserialize;
    use serde_json::json;

    use super::*;
    use crate::conf::parse_value;

    #[derive(Debug, Deserialize, PartialEq)]
    #[serde(rename_all = "camelCase")]
    struct Mapping {
        host_port: i64,
        #[serde(default, rename = "hostIP")]
        host_ip: Option<String>,
        #[serde(default, alias = "proto")]
        protocol: Option<String>,
    }

    #[derive(Debug, Deserialize, PartialEq)]
    #[serde(rename_all = "camelCase")]
    struct Conf {
        #[serde(default)]
        is_gateway: bool,
        #[serde(default)]
        port_mappings: Vec<Mapping>,
        #[serde(default)]
        ranges: Option<Vec<Vec<Mapping>>>,
        #[serde(default)]
        sysctl: BTreeMap<String, String>,
        #[serde(default)]
        raw: Option<Value>,
    }

    fn conf(v: Value) -> Result<Conf, crate::CniError> {
        parse_value(&v, "")
    }

    #[test]
    fn go_field_names_fill_camel_case_fields_at_every_depth() {
        let c = conf(json!({"IsGateway": true,
            "PortMappings": [{"HostPort": 80, "HostIP": "127.0.0.1", "Protocol": "tcp"}],
            "RANGES": [[{"hostport": 1}]]}))
        .unwrap();
        assert!(c.is_gateway);
        assert_eq!(
            c.port_mappings,
            vec![Mapping {
                host_port: 80,
                host_ip: Some("127.0.0.1".into()),
                protocol: Some("tcp".into())
            }]
        );
        assert_eq!(c.ranges.unwrap()[0][0].host_port, 1);
    }

    #[test]
    fn aliases_fold_too() {
        let c = conf(json!({"portMappings": [{"hostPort": 1, "PROTO": "udp"}]})).unwrap();
        assert_eq!(c.port_mappings[0].protocol.as_deref(), Some("udp"));
    }

    #[test]
    fn the_exact_key_wins_over_a_folded_one() {
        for v in [
            json!({"portMappings": [{"hostPort": 1, "HostPort": 2}]}),
            json!({"portMappings": [{"HostPort": 2, "hostPort": 1}]}),
        ] {
            assert_eq!(conf(v).unwrap().port_mappings[0].host_port, 1);
        }
        // Two folded spellings, no exact one: one of them, never a duplicate-field error.
        let c = conf(json!({"portMappings": [{"HOSTPORT": 2, "HostPort": 2}]})).unwrap();
        assert_eq!(c.port_mappings[0].host_port, 2);
    }

    #[test]
    fn map_keys_and_raw_values_keep_their_case() {
        let c = conf(json!({"Sysctl": {"net.ipv4.conf.IFNAME.Forwarding": "1"},
            "Raw": {"HostPort": 1}}))
        .unwrap();
        assert!(c.sysctl.contains_key("net.ipv4.conf.IFNAME.Forwarding"));
        assert_eq!(c.raw, Some(json!({"HostPort": 1})));
    }

    #[test]
    fn errors_name_the_field_by_its_canonical_name() {
        let e = conf(json!({"PortMappings": [{"HostPort": "eighty"}]})).unwrap_err();
        assert_eq!(e.code(), 7);
        assert!(e.msg.contains("portMappings[0].hostPort"), "{}", e.msg);
        let e = conf(json!({"portMappings": [{"HostIP": "x"}]})).unwrap_err();
        assert!(
            e.msg.contains("portMappings[0]") && e.msg.contains("hostPort"),
            "{}",
            e.msg
        );
        let e = parse_value::<Conf>(&json!({"isGateway": "yes"}), "runtimeConfig").unwrap_err();
        assert!(e.msg.contains("runtimeConfig.isGateway"), "{}", e.msg);
    }

    #[test]
    fn enums_and_newtypes_pass_through() {
        #[derive(Debug, Deserialize, PartialEq)]
        #[serde(rename_all = "lowercase")]
        enum Kind {
            Plain,
            Tagged { host_port: i64 },
        }
        #[derive(Debug, Deserialize, PartialEq)]
        struct Port(u16);
        #[derive(Debug, Deserialize, PartialEq)]
        struct W {
            kinds: Vec<Kind>,
            port: Port,
        }
        let w: W = parse_value(
            &json!({"Kinds": ["plain", {"tagged": {"host_port": 3}}], "PORT": 8}),
            "",
        )
        .unwrap();
        assert_eq!(w.kinds, vec![Kind::Plain, Kind::Tagged { host_port: 3 }]);
        assert_eq!(w.port, Port(8));
    }

    #[test]
    fn pointer_folds_each_step() {
        let v = json!({"CNI": {"Mac": "0a:58:00:00:00:01"}, "cni": {"mac": "exact"}});
        assert_eq!(pointer(&v, &["cni", "mac"]), Some(&json!("exact")));
        let v = json!({"CNI": {"Mac": "m"}});
        assert_eq!(pointer(&v, &["cni", "mac"]), Some(&json!("m")));
        assert_eq!(pointer(&v, &["cni", "ips"]), None);
        assert_eq!(pointer(&json!("x"), &["cni"]), None);
    }
}
