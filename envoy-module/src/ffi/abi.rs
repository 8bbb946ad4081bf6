//! Envoy's dynamic-module ABI as this module uses it: the C types, enum values and the
//! callbacks Envoy exports, declared by hand from the ABI that Envoy 1.40.0 ships (ABI version
//! `v0.2.0`). Only what the module calls is declared; the e2e symbol test checks every name
//! against the pinned binary.
//!
//! Ownership, as the ABI defines it:
//! - [`EnvoyBuffer`] points into Envoy's memory (a header value, an attribute, a config). It is
//!   valid until the current event hook returns, and a header view only until the same header
//!   map is next modified. The module copies what it keeps.
//! - [`ModuleBuffer`] / [`ModuleHeader`] point into the module's memory. Envoy reads (copies)
//!   them during the call and keeps no pointer afterwards.
//! - Enum values cross as C `int`s. Values Envoy passes in are read as plain integers, never
//!   as Rust enums, so an unexpected value cannot be undefined behaviour.

use std::ffi::{c_char, c_void};

/// Envoy's `DynamicModuleHttpFilterConfig` (owned by Envoy).
pub(crate) type ConfigEnvoyPtr = *mut c_void;
/// Envoy's `DynamicModuleHttpFilter` for one stream (owned by Envoy, valid until the filter's
/// destroy hook).
pub(crate) type FilterEnvoyPtr = *mut c_void;
/// A scheduler created by Envoy for one stream and owned by the module until it deletes it.
pub(crate) type SchedulerPtr = *mut c_void;
/// A module-owned object (filter config, per-route config, stream) handed to Envoy as an
/// opaque pointer and given back in later hooks.
pub(crate) type ModulePtr = *const c_void;

/// A view of bytes owned by Envoy.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub(crate) struct EnvoyBuffer {
    pub(crate) ptr: *const c_char,
    pub(crate) length: usize,
}

/// A view of bytes owned by the module, read by Envoy during the call.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub(crate) struct ModuleBuffer {
    pub(crate) ptr: *const c_char,
    pub(crate) length: usize,
}

/// A header owned by the module.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub(crate) struct ModuleHeader {
    pub(crate) key_ptr: *const c_char,
    pub(crate) key_length: usize,
    pub(crate) value_ptr: *const c_char,
    pub(crate) value_length: usize,
}

/// A header owned by Envoy: in hook signatures the module ignores, and filled in by
/// `http_get_headers` (valid like an [`EnvoyBuffer`] of a header view).
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub(crate) struct EnvoyHeader {
    pub(crate) key_ptr: *const c_char,
    pub(crate) key_length: usize,
    pub(crate) value_ptr: *const c_char,
    pub(crate) value_length: usize,
}

/// The ABI version this module is built against, returned by `on_program_init`.
pub(crate) const ABI_VERSION: &std::ffi::CStr = c"v0.2.0";

/// `envoy_dynamic_module_type_http_header_type`.
pub(crate) mod header_type {
    pub(crate) const REQUEST: u32 = 0;
    pub(crate) const RESPONSE: u32 = 2;
}

/// `envoy_dynamic_module_type_log_level`.
pub(crate) mod log_level {
    pub(crate) const TRACE: u32 = 0;
    pub(crate) const DEBUG: u32 = 1;
    pub(crate) const INFO: u32 = 2;
    pub(crate) const WARN: u32 = 3;
    pub(crate) const ERROR: u32 = 4;
}

/// The `*_headers_status` enums (request and response share the values).
pub(crate) mod headers_status {
    pub(crate) const CONTINUE: u32 = 0;
    pub(crate) const STOP_ITERATION: u32 = 1;
}

/// The `*_body_status` enums.
pub(crate) mod body_status {
    pub(crate) const CONTINUE: u32 = 0;
    pub(crate) const STOP_ITERATION_AND_WATERMARK: u32 = 2;
}

/// The `*_trailers_status` enums.
pub(crate) mod trailers_status {
    pub(crate) const CONTINUE: u32 = 0;
    pub(crate) const STOP_ITERATION: u32 = 1;
}

/// `envoy_dynamic_module_type_metrics_result`.
pub(crate) const METRICS_SUCCESS: u32 = 0;

/// `envoy_dynamic_module_type_attribute_id` values the module reads.
pub(crate) mod attribute_id {
    pub(crate) const REQUEST_PATH: u32 = 0;
    pub(crate) const REQUEST_HOST: u32 = 2;
    pub(crate) const REQUEST_METHOD: u32 = 4;
    pub(crate) const SOURCE_ADDRESS: u32 = 24;
    pub(crate) const CONNECTION_SUBJECT_PEER_CERTIFICATE: u32 = 33;
    pub(crate) const CONNECTION_DNS_SAN_PEER_CERTIFICATE: u32 = 35;
    pub(crate) const CONNECTION_URI_SAN_PEER_CERTIFICATE: u32 = 37;
    pub(crate) const CONNECTION_SHA256_PEER_CERTIFICATE_DIGEST: u32 = 38;
}

// Callbacks exported by the Envoy binary. Every pointer argument must be valid for the call;
// the wrappers in `envoy.rs` are the only callers and state why at each call.
unsafe extern "C" {
    pub(crate) fn envoy_dynamic_module_callback_log(level: u32, message: ModuleBuffer);
    pub(crate) fn envoy_dynamic_module_callback_log_enabled(level: u32) -> bool;

    pub(crate) fn envoy_dynamic_module_callback_http_get_header(
        filter: FilterEnvoyPtr,
        header_type: u32,
        key: ModuleBuffer,
        result: *mut EnvoyBuffer,
        index: usize,
        optional_size: *mut usize,
    ) -> bool;
    /// How many entries the header map has (a header sent twice counts twice).
    pub(crate) fn envoy_dynamic_module_callback_http_get_headers_size(
        filter: FilterEnvoyPtr,
        header_type: u32,
    ) -> usize;
    /// Fills `result` (room for `get_headers_size` entries) with views of every entry.
    pub(crate) fn envoy_dynamic_module_callback_http_get_headers(
        filter: FilterEnvoyPtr,
        header_type: u32,
        result: *mut EnvoyHeader,
    ) -> bool;
    pub(crate) fn envoy_dynamic_module_callback_http_set_header(
        filter: FilterEnvoyPtr,
        header_type: u32,
        key: ModuleBuffer,
        value: ModuleBuffer,
    ) -> bool;
    pub(crate) fn envoy_dynamic_module_callback_http_add_header(
        filter: FilterEnvoyPtr,
        header_type: u32,
        key: ModuleBuffer,
        value: ModuleBuffer,
    ) -> bool;

    pub(crate) fn envoy_dynamic_module_callback_http_send_response(
        filter: FilterEnvoyPtr,
        status_code: u32,
        headers: *mut ModuleHeader,
        headers_size: usize,
        body: ModuleBuffer,
        details: ModuleBuffer,
    );

    pub(crate) fn envoy_dynamic_module_callback_http_set_dynamic_metadata_string(
        filter: FilterEnvoyPtr,
        namespace: ModuleBuffer,
        key: ModuleBuffer,
        value: ModuleBuffer,
    );
    pub(crate) fn envoy_dynamic_module_callback_http_set_dynamic_metadata_number(
        filter: FilterEnvoyPtr,
        namespace: ModuleBuffer,
        key: ModuleBuffer,
        value: f64,
    );
    pub(crate) fn envoy_dynamic_module_callback_http_set_dynamic_metadata_bool(
        filter: FilterEnvoyPtr,
        namespace: ModuleBuffer,
        key: ModuleBuffer,
        value: bool,
    );
    /// `serialized` is a binary `google.protobuf.Struct`, merged into the namespace.
    pub(crate) fn envoy_dynamic_module_callback_http_set_dynamic_metadata_struct(
        filter: FilterEnvoyPtr,
        namespace: ModuleBuffer,
        serialized: ModuleBuffer,
    );

    pub(crate) fn envoy_dynamic_module_callback_http_filter_get_attribute_string(
        filter: FilterEnvoyPtr,
        attribute_id: u32,
        result: *mut EnvoyBuffer,
    ) -> bool;

    pub(crate) fn envoy_dynamic_module_callback_http_filter_scheduler_new(
        filter: FilterEnvoyPtr,
    ) -> SchedulerPtr;
    /// Safe from any thread; a no-op once the stream's filter is destroyed.
    pub(crate) fn envoy_dynamic_module_callback_http_filter_scheduler_commit(
        scheduler: SchedulerPtr,
        event_id: u64,
    );
    pub(crate) fn envoy_dynamic_module_callback_http_filter_scheduler_delete(
        scheduler: SchedulerPtr,
    );
    pub(crate) fn envoy_dynamic_module_callback_http_filter_continue_decoding(
        filter: FilterEnvoyPtr,
    );

    /// The per-route config object the module returned from `per_route_config_new` for the
    /// most specific route level that has one, or null.
    pub(crate) fn envoy_dynamic_module_callback_get_most_specific_route_config(
        filter: FilterEnvoyPtr,
    ) -> ModulePtr;

    pub(crate) fn envoy_dynamic_module_callback_http_filter_config_define_counter(
        config: ConfigEnvoyPtr,
        name: ModuleBuffer,
        label_names: *mut ModuleBuffer,
        label_names_length: usize,
        counter_id: *mut usize,
    ) -> u32;
    pub(crate) fn envoy_dynamic_module_callback_http_filter_config_define_histogram(
        config: ConfigEnvoyPtr,
        name: ModuleBuffer,
        label_names: *mut ModuleBuffer,
        label_names_length: usize,
        histogram_id: *mut usize,
    ) -> u32;
    pub(crate) fn envoy_dynamic_module_callback_http_filter_increment_counter(
        filter: FilterEnvoyPtr,
        id: usize,
        label_values: *mut ModuleBuffer,
        label_values_length: usize,
        value: u64,
    ) -> u32;
    pub(crate) fn envoy_dynamic_module_callback_http_filter_record_histogram_value(
        filter: FilterEnvoyPtr,
        id: usize,
        label_values: *mut ModuleBuffer,
        label_values_length: usize,
        value: u64,
    ) -> u32;
}
