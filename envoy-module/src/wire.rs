//! Dynamic metadata as the bytes of a serialized `google.protobuf.Struct`, written straight from
//! [`Metadata`] entries: what `envoy_dynamic_module_callback_http_set_dynamic_metadata_struct`
//! takes. Writing the wire format directly (field tags and lengths of `struct.proto`) costs one
//! buffer per namespace, where building `prost_types` values first copied every key and string
//! into maps and allocated per value on every request.
//!
//! The messages (field numbers from `google/protobuf/struct.proto`):
//! - `Struct { map<string, Value> fields = 1; }`: each entry a length-delimited field 1 holding
//!   `{ string key = 1; Value value = 2; }`;
//! - `Value { oneof kind { NullValue null_value = 1; double number_value = 2; string
//!   string_value = 3; bool bool_value = 4; Struct struct_value = 5; ListValue list_value = 6; } }`;
//! - `ListValue { repeated Value values = 1; }`.

use crate::filter::{Metadata, MetadataValue};

/// Wire types.
const VARINT: u8 = 0;
const FIXED64: u8 = 1;
const LEN: u8 = 2;

const fn tag(field: u8, wire: u8) -> u8 {
    (field << 3) | wire
}

/// The serialized `Struct` of `entries` (keys and values; their namespace is the caller's).
pub(crate) fn encode_struct(entries: &[Metadata]) -> Vec<u8> {
    let len: usize = entries
        .iter()
        .map(|e| field_len(entry_len(&e.key, &e.value)))
        .sum();
    let mut out = Vec::with_capacity(len);
    for e in entries {
        put_entry(&mut out, &e.key, &e.value);
    }
    debug_assert_eq!(out.len(), len);
    out
}

fn varint_len(mut v: usize) -> usize {
    let mut n = 1;
    while v >= 0x80 {
        v >>= 7;
        n += 1;
    }
    n
}

fn put_varint(out: &mut Vec<u8>, mut v: usize) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// A length-delimited field of `len` bytes, with its tag and length.
fn field_len(len: usize) -> usize {
    1 + varint_len(len) + len
}

fn put_bytes(out: &mut Vec<u8>, field: u8, bytes: &[u8]) {
    out.push(tag(field, LEN));
    put_varint(out, bytes.len());
    out.extend_from_slice(bytes);
}

/// A map entry: key (field 1) and value (field 2).
fn entry_len(key: &str, value: &MetadataValue) -> usize {
    field_len(key.len()) + field_len(value_len(value))
}

fn put_entry(out: &mut Vec<u8>, key: &str, value: &MetadataValue) {
    out.push(tag(1, LEN));
    put_varint(out, entry_len(key, value));
    put_bytes(out, 1, key.as_bytes());
    out.push(tag(2, LEN));
    put_varint(out, value_len(value));
    put_value(out, value);
}

/// A `Value` message's length (without its own tag and length).
fn value_len(value: &MetadataValue) -> usize {
    match value {
        MetadataValue::Number(_) => 1 + 8,
        MetadataValue::String(s) => field_len(s.len()),
        MetadataValue::Bool(_) => 2,
        MetadataValue::Struct(map) => {
            field_len(map.iter().map(|(k, v)| field_len(entry_len(k, v))).sum())
        }
        MetadataValue::List(items) => field_len(list_len(items)),
    }
}

fn list_len(items: &[MetadataValue]) -> usize {
    items.iter().map(|v| field_len(value_len(v))).sum()
}

fn put_value(out: &mut Vec<u8>, value: &MetadataValue) {
    match value {
        MetadataValue::Number(n) => {
            out.push(tag(2, FIXED64));
            out.extend_from_slice(&n.to_le_bytes());
        }
        MetadataValue::String(s) => put_bytes(out, 3, s.as_bytes()),
        MetadataValue::Bool(b) => {
            out.push(tag(4, VARINT));
            out.push(u8::from(*b));
        }
        MetadataValue::Struct(map) => {
            out.push(tag(5, LEN));
            put_varint(
                out,
                map.iter().map(|(k, v)| field_len(entry_len(k, v))).sum(),
            );
            for (k, v) in map {
                put_entry(out, k, v);
            }
        }
        MetadataValue::List(items) => {
            out.push(tag(6, LEN));
            put_varint(out, list_len(items));
            for v in items {
                out.push(tag(1, LEN));
                put_varint(out, value_len(v));
                put_value(out, v);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use prost::Message;
    use prost_types::value::Kind;

    use super::*;

    fn entry(key: &'static str, value: MetadataValue) -> Metadata {
        Metadata {
            namespace: "ns".into(),
            key: key.into(),
            value,
        }
    }

    fn to_proto(value: &MetadataValue) -> prost_types::Value {
        let kind = match value {
            MetadataValue::String(s) => Kind::StringValue(s.clone()),
            MetadataValue::Number(n) => Kind::NumberValue(*n),
            MetadataValue::Bool(b) => Kind::BoolValue(*b),
            MetadataValue::List(items) => Kind::ListValue(prost_types::ListValue {
                values: items.iter().map(to_proto).collect(),
            }),
            MetadataValue::Struct(map) => Kind::StructValue(prost_types::Struct {
                fields: map.iter().map(|(k, v)| (k.clone(), to_proto(v))).collect(),
            }),
        };
        prost_types::Value { kind: Some(kind) }
    }

    #[test]
    fn the_bytes_decode_as_the_struct_of_the_entries() {
        let long = "x".repeat(300); // a length needing two varint bytes
        let nested: BTreeMap<String, MetadataValue> = [
            ("domain".to_string(), MetadataValue::String("api".into())),
            ("remaining".to_string(), MetadataValue::Number(41.0)),
            (
                "shadow_limits".to_string(),
                MetadataValue::List(vec![
                    MetadataValue::String("a".into()),
                    MetadataValue::String(long.clone()),
                ]),
            ),
            ("empty".to_string(), MetadataValue::Struct(BTreeMap::new())),
        ]
        .into();
        let entries = vec![
            entry("subject", MetadataValue::String("alice".into())),
            entry("method", MetadataValue::String(String::new())),
            entry("ratio", MetadataValue::Number(-0.25)),
            entry("ok", MetadataValue::Bool(true)),
            entry("no", MetadataValue::Bool(false)),
            entry("long", MetadataValue::String(long)),
            entry("rate_limit", MetadataValue::Struct(nested)),
            entry("none", MetadataValue::List(Vec::new())),
        ];
        let decoded = prost_types::Struct::decode(&encode_struct(&entries)[..]).unwrap();
        let expected = prost_types::Struct {
            fields: entries
                .iter()
                .map(|e| (e.key.to_string(), to_proto(&e.value)))
                .collect(),
        };
        assert_eq!(decoded, expected);
        // The same size as prost's own encoding of it (prost sorts map keys; sizes agree).
        assert_eq!(
            encode_struct(&entries).len(),
            expected.encode_to_vec().len()
        );
    }

    #[test]
    fn no_entries_is_the_empty_struct() {
        assert!(encode_struct(&[]).is_empty());
    }
}
