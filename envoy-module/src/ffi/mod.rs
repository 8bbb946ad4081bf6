//! The only module of the crate where `unsafe` is allowed: Envoy's C ABI ([`abi`]), the event
//! hooks the module exports ([`hooks`]), and safe wrappers over Envoy's callbacks ([`envoy`]).
//! Everything outside works with safe types and never sees a raw pointer.
//!
//! Who owns what:
//! - Filter config: `config_new` returns `Arc::into_raw(Arc<ModuleConfig>)`; each stream holds
//!   a clone of that `Arc`; `config_destroy` releases Envoy's reference (the config itself goes
//!   when the last stream of it is destroyed).
//! - Per-route config: `per_route_config_new` returns `Box::into_raw(Box<Arc<RouteSettings>>)`,
//!   freed by `per_route_config_destroy`; a stream clones the inner `Arc`, never the pointer.
//! - Stream: `filter_new` returns `Box::into_raw(Box<StreamState>)`, freed by the `destroy` hook
//!   and by nothing else. Other hooks only borrow it, shared (`&StreamState`): some hooks
//!   re-enter while another is on the stack (see `crate::stream`).
//! - Envoy's buffers (names, configs, header values, attributes) are views valid during the
//!   hook only; anything kept is copied first.
//! - Schedulers: created by Envoy for the module, deleted by the module exactly once
//!   ([`envoy::EnvoyScheduler`]'s `Drop`).
//!
//! No panic crosses into Envoy: every hook runs under `catch_unwind` and answers a fixed safe
//! value (and the configured failure mode where a request is at stake).

#![allow(unsafe_code)]

mod abi;
mod envoy;
mod hooks;
