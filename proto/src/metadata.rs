//! Helpers for `google.protobuf.Struct`, the shape of Envoy's dynamic metadata.

use envoy_types::pb::google::protobuf::{ListValue, Struct, Value, value::Kind};

/// A string value.
pub fn string(s: impl Into<String>) -> Value {
    Value {
        kind: Some(Kind::StringValue(s.into())),
    }
}

/// A number value.
pub fn number(n: f64) -> Value {
    Value {
        kind: Some(Kind::NumberValue(n)),
    }
}

/// A list of strings.
pub fn string_list<I, S>(items: I) -> Value
where
    I: IntoIterator<Item = S>,
    S: Into<String>,
{
    Value {
        kind: Some(Kind::ListValue(ListValue {
            values: items.into_iter().map(string).collect(),
        })),
    }
}

/// A nested struct as a value.
pub fn struct_value(s: Struct) -> Value {
    Value {
        kind: Some(Kind::StructValue(s)),
    }
}

/// A struct built from `(key, value)` pairs.
pub fn structure<I, K>(fields: I) -> Struct
where
    I: IntoIterator<Item = (K, Value)>,
    K: Into<String>,
{
    Struct {
        fields: fields.into_iter().map(|(k, v)| (k.into(), v)).collect(),
    }
}

/// Reads a string field of a struct.
pub fn get_str<'a>(s: &'a Struct, key: &str) -> Option<&'a str> {
    match s.fields.get(key)?.kind.as_ref()? {
        Kind::StringValue(v) => Some(v),
        _ => None,
    }
}
