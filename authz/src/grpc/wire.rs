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
        let len = response_len(decision, &metadata);
        let mut out = Vec::with_capacity(len);
        put_response(&mut out, decision, &metadata);
        debug_assert_eq!(out.len(), len);
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

fn body_len(decision: &Decision) -> usize {
    match decision {
        Decision::Allow(a) => {
            let set: usize = a
                .set_headers
                .iter()
                .map(|(k, v)| field_len(2, option_len(k, v)))
                .sum();
            let removed: usize = a.remove_headers.iter().map(|n| element_len(5, n)).sum();
            let added: usize = a
                .response_headers
                .iter()
                .map(|(k, v)| field_len(6, option_len(k, v)))
                .sum();
            let query: usize = a.remove_query.iter().map(|q| element_len(8, q)).sum();
            set + removed + added + query
        }
        Decision::Deny(d) => {
            let status = field_len(1, varint_len(1, http_code(d.status)));
            let headers: usize = d
                .headers
                .iter()
                .map(|(k, v)| field_len(2, option_len(k, v)))
                .sum();
            status + headers + string_len(3, &d.body)
        }
    }
}

fn put_body(out: &mut Vec<u8>, decision: &Decision) {
    match decision {
        Decision::Allow(a) => {
            for (k, v) in &a.set_headers {
                put_option(out, 2, k, v);
            }
            for name in &a.remove_headers {
                put_element(out, 5, name);
            }
            for (k, v) in &a.response_headers {
                put_option(out, 6, k, v);
            }
            for q in &a.remove_query {
                put_element(out, 8, q);
            }
        }
        Decision::Deny(d) => {
            let code = http_code(d.status);
            put_field_head(out, 1, varint_len(1, code));
            put_varint(out, 1, code);
            for (k, v) in &d.headers {
                put_option(out, 2, k, v);
            }
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

fn response_len(decision: &Decision, metadata: &Fields<'_>) -> usize {
    let status = field_len(1, varint_len(1, rpc_code(decision)));
    let body = field_len(body_tag(decision), body_len(decision));
    let metadata = if metadata.is_empty() {
        0
    } else {
        field_len(4, struct_len(metadata))
    };
    status + body + metadata
}

fn put_response(out: &mut Vec<u8>, decision: &Decision, metadata: &Fields<'_>) {
    let code = rpc_code(decision);
    put_field_head(out, 1, varint_len(1, code));
    put_varint(out, 1, code);
    put_field_head(out, body_tag(decision), body_len(decision));
    put_body(out, decision);
    if !metadata.is_empty() {
        put_field_head(out, 4, struct_len(metadata));
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
