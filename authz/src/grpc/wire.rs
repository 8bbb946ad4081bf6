//! A decision's `CheckResponse` as its wire bytes, written from the [`Decision`] itself: no
//! `CheckResponse` is built first, so no header, name or metadata string is copied into a
//! message and no `HashMap` is made for the metadata `Struct`. The bytes decode as the message
//! [`super::response`] describes (a test checks one against the other for every shape).
//!
//! Field numbers, from Envoy's and Google's `.proto` files:
//! - `CheckResponse { google.rpc.Status status = 1; oneof http_response { DeniedHttpResponse
//!   denied_response = 2; OkHttpResponse ok_response = 3; } google.protobuf.Struct
//!   dynamic_metadata = 4; }`, `google.rpc.Status { int32 code = 1; }`;
//! - `OkHttpResponse { repeated HeaderValueOption headers = 2; repeated string
//!   headers_to_remove = 5; repeated HeaderValueOption response_headers_to_add = 6; repeated
//!   string query_parameters_to_remove = 8; }`;
//! - `DeniedHttpResponse { HttpStatus status = 1; repeated HeaderValueOption headers = 2;
//!   string body = 3; }`, `HttpStatus { StatusCode code = 1; }`;
//! - `HeaderValueOption { HeaderValue header = 1; HeaderAppendAction append_action = 3; }`,
//!   `HeaderValue { string key = 1; string value = 2; }`;
//! - `Struct { map<string, Value> fields = 1; }` (each entry `{ string key = 1; Value value =
//!   2; }`), `Value { double number_value = 2; string string_value = 3; Struct struct_value =
//!   5; ListValue list_value = 6; }`, `ListValue { repeated Value values = 1; }`.
//!
//! As prost does, a singular field at its default (an empty string, a zero code) is left out,
//! and every element of a repeated field and the chosen member of a oneof is written.

use prost::bytes::{Buf, BufMut};
use prost::encoding::{
    DecodeContext, WireType, encode_key, encode_varint, encoded_len_varint, key_len, skip_field,
};
use tollgate_proto::auth::http_status_code;
use tollgate_proto::pb::envoy::config::core::v3::header_value_option::HeaderAppendAction;

use super::status_code;
use crate::check::{Decision, MetadataValue};

/// The encoded answer to one Check: what the server's codec writes.
#[derive(Debug, Default)]
pub struct Answer(Vec<u8>);

impl Answer {
    pub fn of(decision: &Decision) -> Self {
        let metadata = decision.metadata();
        let lens = Lens::of(decision, &metadata);
        let mut out = Vec::with_capacity(lens.total());
        put_response(&mut out, decision, &metadata, &lens);
        debug_assert_eq!(out.len(), lens.total());
        Answer(out)
    }

    pub fn bytes(&self) -> &[u8] {
        &self.0
    }
}

// Only ever encoded: a server never decodes its own answers.
impl prost::Message for Answer {
    fn encode_raw(&self, buf: &mut impl BufMut) {
        buf.put_slice(&self.0);
    }

    fn merge_field(
        &mut self,
        tag: u32,
        wire_type: WireType,
        buf: &mut impl Buf,
        ctx: DecodeContext,
    ) -> Result<(), prost::DecodeError> {
        skip_field(wire_type, tag, buf, ctx)
    }

    fn encoded_len(&self) -> usize {
        self.0.len()
    }

    fn clear(&mut self) {
        self.0.clear();
    }
}

const OVERWRITE_IF_EXISTS_OR_ADD: u64 = HeaderAppendAction::OverwriteIfExistsOrAdd as u64;

/// A length-delimited field of `len` bytes, with its key and length.
fn field_len(tag: u32, len: usize) -> usize {
    key_len(tag) + encoded_len_varint(len as u64) + len
}

fn put_field_head(out: &mut Vec<u8>, tag: u32, len: usize) {
    encode_key(tag, WireType::LengthDelimited, out);
    encode_varint(len as u64, out);
}

/// A string that is an element of a repeated field or a oneof member (always written).
fn element_len(tag: u32, s: &str) -> usize {
    field_len(tag, s.len())
}

fn put_element(out: &mut Vec<u8>, tag: u32, s: &str) {
    put_field_head(out, tag, s.len());
    out.extend_from_slice(s.as_bytes());
}

/// A singular string (left out when empty).
fn string_len(tag: u32, s: &str) -> usize {
    if s.is_empty() { 0 } else { element_len(tag, s) }
}

fn put_string(out: &mut Vec<u8>, tag: u32, s: &str) {
    if !s.is_empty() {
        put_element(out, tag, s);
    }
}

/// A singular non-negative integer or enum (left out when zero).
fn varint_len(tag: u32, v: u64) -> usize {
    if v == 0 {
        0
    } else {
        key_len(tag) + encoded_len_varint(v)
    }
}

fn put_varint(out: &mut Vec<u8>, tag: u32, v: u64) {
    if v != 0 {
        encode_key(tag, WireType::Varint, out);
        encode_varint(v, out);
    }
}

/// `HeaderValueOption { header: { key, value }, append_action: OVERWRITE_IF_EXISTS_OR_ADD }`.
fn option_len(key: &str, value: &str) -> usize {
    field_len(1, string_len(1, key) + string_len(2, value))
        + varint_len(3, OVERWRITE_IF_EXISTS_OR_ADD)
}

fn put_option(out: &mut Vec<u8>, tag: u32, key: &str, value: &str) {
    put_field_head(out, tag, option_len(key, value));
    put_field_head(out, 1, string_len(1, key) + string_len(2, value));
    put_string(out, 1, key);
    put_string(out, 2, value);
    put_varint(out, 3, OVERWRITE_IF_EXISTS_OR_ADD);
}

/// A repeated `HeaderValueOption` field `tag`, one element per header.
fn options_len<K: AsRef<str>>(tag: u32, headers: &[(K, String)]) -> usize {
    headers
        .iter()
        .map(|(k, v)| field_len(tag, option_len(k.as_ref(), v)))
        .sum()
}

fn put_options<K: AsRef<str>>(out: &mut Vec<u8>, tag: u32, headers: &[(K, String)]) {
    for (k, v) in headers {
        put_option(out, tag, k.as_ref(), v);
    }
}

/// A repeated string field `tag`.
fn elements_len<S: AsRef<str>>(tag: u32, items: &[S]) -> usize {
    items.iter().map(|s| element_len(tag, s.as_ref())).sum()
}

fn put_elements<S: AsRef<str>>(out: &mut Vec<u8>, tag: u32, items: &[S]) {
    for s in items {
        put_element(out, tag, s.as_ref());
    }
}

fn body_len(decision: &Decision) -> usize {
    match decision {
        Decision::Allow(a) => {
            options_len(2, &a.set_headers)
                + elements_len(5, &a.remove_headers)
                + options_len(6, &a.response_headers)
                + elements_len(8, &a.remove_query)
        }
        Decision::Deny(d) => {
            field_len(1, varint_len(1, http_code(d.status)))
                + options_len(2, &d.headers)
                + string_len(3, &d.body)
        }
    }
}

fn put_body(out: &mut Vec<u8>, decision: &Decision) {
    match decision {
        Decision::Allow(a) => {
            put_options(out, 2, &a.set_headers);
            put_elements(out, 5, &a.remove_headers);
            put_options(out, 6, &a.response_headers);
            put_elements(out, 8, &a.remove_query);
        }
        Decision::Deny(d) => {
            let code = http_code(d.status);
            put_field_head(out, 1, varint_len(1, code));
            put_varint(out, 1, code);
            put_options(out, 2, &d.headers);
            put_string(out, 3, &d.body);
        }
    }
}

fn http_code(status: u16) -> u64 {
    u64::try_from(http_status_code(status)).unwrap_or(0)
}

/// The gRPC code of the answer's `status` (non-negative).
fn rpc_code(decision: &Decision) -> u64 {
    u64::try_from(status_code(decision)).unwrap_or(0)
}

/// The oneof member's tag: `denied_response` or `ok_response`.
fn body_tag(decision: &Decision) -> u32 {
    if decision.is_allowed() { 3 } else { 2 }
}

type Fields<'a> = [(&'static str, MetadataValue<'a>)];

/// The lengths of the answer's top-level parts, computed once for sizing and writing.
struct Lens {
    code: u64,
    body: usize,
    /// `None` when there is no metadata (the field is left out).
    metadata: Option<usize>,
    tag: u32,
}

impl Lens {
    fn of(decision: &Decision, metadata: &Fields<'_>) -> Self {
        Lens {
            code: rpc_code(decision),
            body: body_len(decision),
            metadata: (!metadata.is_empty()).then(|| struct_len(metadata)),
            tag: body_tag(decision),
        }
    }

    fn total(&self) -> usize {
        field_len(1, varint_len(1, self.code))
            + field_len(self.tag, self.body)
            + self.metadata.map_or(0, |len| field_len(4, len))
    }
}

fn put_response(out: &mut Vec<u8>, decision: &Decision, metadata: &Fields<'_>, lens: &Lens) {
    put_field_head(out, 1, varint_len(1, lens.code));
    put_varint(out, 1, lens.code);
    put_field_head(out, lens.tag, lens.body);
    put_body(out, decision);
    if let Some(len) = lens.metadata {
        put_field_head(out, 4, len);
        put_struct(out, metadata);
    }
}

/// A `Struct`'s fields (without the struct's own key and length).
fn struct_len(fields: &Fields<'_>) -> usize {
    fields
        .iter()
        .map(|(k, v)| field_len(1, entry_len(k, v)))
        .sum()
}

fn put_struct(out: &mut Vec<u8>, fields: &Fields<'_>) {
    for (k, v) in fields {
        put_field_head(out, 1, entry_len(k, v));
        put_string(out, 1, k);
        put_field_head(out, 2, value_len(v));
        put_value(out, v);
    }
}

fn entry_len(key: &str, value: &MetadataValue<'_>) -> usize {
    string_len(1, key) + field_len(2, value_len(value))
}

/// A `Value` (without its own key and length): its one `kind` member.
fn value_len(value: &MetadataValue<'_>) -> usize {
    match value {
        MetadataValue::Number(_) => key_len(2) + 8,
        MetadataValue::String(s) => element_len(3, s),
        MetadataValue::Struct(fields) => field_len(5, struct_len(fields)),
        MetadataValue::List(items) => field_len(6, list_len(items)),
    }
}

fn list_len(items: &[&str]) -> usize {
    items.iter().map(|s| field_len(1, element_len(3, s))).sum()
}

fn put_value(out: &mut Vec<u8>, value: &MetadataValue<'_>) {
    match value {
        MetadataValue::Number(n) => {
            encode_key(2, WireType::SixtyFourBit, out);
            out.put_f64_le(*n);
        }
        MetadataValue::String(s) => put_element(out, 3, s),
        MetadataValue::Struct(fields) => {
            put_field_head(out, 5, struct_len(fields));
            put_struct(out, fields);
        }
        MetadataValue::List(items) => {
            put_field_head(out, 6, list_len(items));
            for s in items {
                put_field_head(out, 1, element_len(3, s));
                put_element(out, 3, s);
            }
        }
    }
}
