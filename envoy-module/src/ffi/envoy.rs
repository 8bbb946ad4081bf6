//! Safe wrappers over Envoy's callbacks: header maps, local replies, dynamic metadata,
//! attributes, the scheduler, metrics and the log. Each wrapper is built from a pointer Envoy
//! handed to the current hook and must not outlive that hook (the `'hook` lifetime).

use std::ffi::c_char;
use std::marker::PhantomData;
use std::sync::Arc;

use super::abi::{self, EnvoyBuffer, ModuleBuffer, ModuleHeader};
use crate::config::RouteSettings;
use crate::filter::{LocalReply, Metadata, MetadataValue};
use crate::host::{Attribute, Counter, Histogram, Host, Scheduler};

/// A module-owned byte view for one call.
fn buf(bytes: &[u8]) -> ModuleBuffer {
    ModuleBuffer {
        ptr: bytes.as_ptr().cast::<c_char>(),
        length: bytes.len(),
    }
}

/// The bytes behind an Envoy buffer, or `None` for a null one.
///
/// # Safety
/// `b` must come from Envoy in the current hook and point to `length` readable bytes that stay
/// valid and unmodified for `'a`.
unsafe fn envoy_bytes<'a>(b: EnvoyBuffer) -> Option<&'a [u8]> {
    if b.ptr.is_null() {
        return None;
    }
    // SAFETY: non-null, and the caller guarantees `length` bytes valid for 'a.
    Some(unsafe { std::slice::from_raw_parts(b.ptr.cast::<u8>(), b.length) })
}

/// Copies an Envoy buffer that Envoy handed to a hook (a config, a name).
///
/// # Safety
/// As for [`envoy_bytes`], for the duration of this call.
pub(super) unsafe fn copy_envoy_buffer(b: EnvoyBuffer) -> Vec<u8> {
    // SAFETY: forwarded from the caller.
    unsafe { envoy_bytes(b) }
        .map(<[u8]>::to_vec)
        .unwrap_or_default()
}

/// Writes a line into Envoy's log (logger `dynamic_modules`).
pub(super) fn log(level: tracing::Level, message: &str) {
    // SAFETY: the buffer points into `message`, alive for the call; Envoy copies it.
    unsafe { abi::envoy_dynamic_module_callback_log(log_level(level), buf(message.as_bytes())) }
}

/// Whether Envoy currently keeps log lines at `level`.
pub(super) fn log_enabled(level: tracing::Level) -> bool {
    // SAFETY: takes a plain integer.
    unsafe { abi::envoy_dynamic_module_callback_log_enabled(log_level(level)) }
}

fn log_level(level: tracing::Level) -> u32 {
    match level {
        tracing::Level::TRACE => abi::log_level::TRACE,
        tracing::Level::DEBUG => abi::log_level::DEBUG,
        tracing::Level::INFO => abi::log_level::INFO,
        tracing::Level::WARN => abi::log_level::WARN,
        tracing::Level::ERROR => abi::log_level::ERROR,
    }
}

/// The ids Envoy assigned to the module's metrics for one filter config (`None`: Envoy refused
/// to define it; the metric is then not recorded).
#[derive(Debug, Default)]
pub(super) struct MetricIds {
    /// Tells filter configs apart in [`PENDING_COUNTS`].
    config: u64,
    counters: [Option<usize>; Counter::ALL.len()],
    histograms: [Option<usize>; Histogram::ALL.len()],
}

/// Counts made on one worker and not yet added to Envoy's counters.
struct PendingCount {
    config: u64,
    counter: Counter,
    label: &'static str,
    count: u64,
}

thread_local! {
    /// What this worker thread has counted since a stream of the same filter config last
    /// completed: a labelled counter costs Envoy a stat lookup per increment (about 2.8k
    /// instructions), so the counts of the streams decoded in between go in one increment
    /// each. A stream flushes when it completes (`stream_complete`, before Envoy writes the
    /// end of its response to the client), so what a client was answered is counted by then.
    static PENDING_COUNTS: std::cell::RefCell<Vec<PendingCount>> =
        const { std::cell::RefCell::new(Vec::new()) };
}

impl MetricIds {
    /// Defines every metric of [`Counter`] and [`Histogram`] on a filter config.
    ///
    /// # Safety
    /// `config` must be the filter config pointer Envoy passed to the running `config_new` hook.
    pub(super) unsafe fn define(config: abi::ConfigEnvoyPtr) -> MetricIds {
        static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let mut ids = MetricIds {
            config: NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
            ..MetricIds::default()
        };
        for (slot, counter) in ids.counters.iter_mut().zip(Counter::ALL) {
            let (name, label) = counter.name_and_label();
            let mut labels = [buf(label.as_bytes())];
            let mut id = 0usize;
            // SAFETY: `config` is valid per the caller; the name and label buffers and `id`
            // outlive the call, and Envoy copies the names.
            let result = unsafe {
                abi::envoy_dynamic_module_callback_http_filter_config_define_counter(
                    config,
                    buf(name.as_bytes()),
                    labels.as_mut_ptr(),
                    labels.len(),
                    &mut id,
                )
            };
            *slot = (result == abi::METRICS_SUCCESS).then_some(id);
        }
        for (slot, histogram) in ids.histograms.iter_mut().zip(Histogram::ALL) {
            let mut id = 0usize;
            // SAFETY: as above; no labels (null with length 0 is allowed by the ABI).
            let result = unsafe {
                abi::envoy_dynamic_module_callback_http_filter_config_define_histogram(
                    config,
                    buf(histogram.name().as_bytes()),
                    std::ptr::null_mut(),
                    0,
                    &mut id,
                )
            };
            *slot = (result == abi::METRICS_SUCCESS).then_some(id);
        }
        ids
    }
}

/// One of a stream's header maps (request or response headers).
pub(super) struct HeaderMap<'hook> {
    filter: abi::FilterEnvoyPtr,
    kind: u32,
    _hook: PhantomData<&'hook ()>,
}

impl HeaderMap<'_> {
    /// The value at `index` of header `name`, and how many values it has.
    fn value_at(&self, name: &str, index: usize) -> (Option<&[u8]>, usize) {
        let mut out = EnvoyBuffer {
            ptr: std::ptr::null(),
            length: 0,
        };
        let mut count = 0usize;
        // SAFETY: `filter` is valid for 'hook; `out` and `count` are writable locals; the key
        // buffer is alive for the call.
        unsafe {
            abi::envoy_dynamic_module_callback_http_get_header(
                self.filter,
                self.kind,
                buf(name.as_bytes()),
                &mut out,
                index,
                &mut count,
            );
        }
        // SAFETY: Envoy's view stays valid until this map is modified, which needs `&mut self`,
        // so it cannot happen while the returned borrow of `self` lives.
        (unsafe { envoy_bytes(out) }, count)
    }

    /// The first value of header `name`.
    pub(super) fn get(&self, name: &str) -> Option<&[u8]> {
        self.value_at(name, 0).0
    }

    /// Every value of header `name`, in order.
    pub(super) fn get_all(&self, name: &str) -> Vec<&[u8]> {
        let (first, count) = self.value_at(name, 0);
        let Some(first) = first else {
            return Vec::new();
        };
        let mut values = Vec::with_capacity(count);
        values.push(first);
        values.extend((1..count).filter_map(|i| self.value_at(name, i).0));
        values
    }

    /// Every entry of the map, in order, as (name, value) views.
    pub(super) fn entries(&self) -> Vec<(&[u8], &[u8])> {
        // SAFETY: `filter` is valid for 'hook.
        let size = unsafe {
            abi::envoy_dynamic_module_callback_http_get_headers_size(self.filter, self.kind)
        };
        if size == 0 {
            return Vec::new();
        }
        let empty = abi::EnvoyHeader {
            key_ptr: std::ptr::null(),
            key_length: 0,
            value_ptr: std::ptr::null(),
            value_length: 0,
        };
        let mut raw = vec![empty; size];
        // SAFETY: `filter` is valid for 'hook and `raw` has room for the `size` entries Envoy
        // fills; nothing modifies the map between the two calls (both take `&self`).
        let filled = unsafe {
            abi::envoy_dynamic_module_callback_http_get_headers(
                self.filter,
                self.kind,
                raw.as_mut_ptr(),
            )
        };
        if !filled {
            return Vec::new();
        }
        // By value: the views are collected into `raw`'s own allocation (an entry and a pair of
        // slices have one size and alignment), so a request's header list is one allocation.
        raw.into_iter()
            .filter_map(|h| {
                let name = EnvoyBuffer {
                    ptr: h.key_ptr,
                    length: h.key_length,
                };
                let value = EnvoyBuffer {
                    ptr: h.value_ptr,
                    length: h.value_length,
                };
                // SAFETY: views into the map, valid until it is modified, which needs
                // `&mut self` and so cannot happen while the borrow of `self` lives.
                let name = unsafe { envoy_bytes(name) }?;
                Some((name, unsafe { envoy_bytes(value) }.unwrap_or_default()))
            })
            .collect()
    }

    /// Replaces every value of `name` with `value`.
    pub(super) fn set(&mut self, name: &str, value: &str) {
        // SAFETY: `filter` is valid for 'hook; both buffers are alive for the call and copied.
        unsafe {
            abi::envoy_dynamic_module_callback_http_set_header(
                self.filter,
                self.kind,
                buf(name.as_bytes()),
                buf(value.as_bytes()),
            );
        }
    }

    /// Appends a value of `name` after any existing ones.
    pub(super) fn add(&mut self, name: &str, value: &str) {
        // SAFETY: as for `set`.
        unsafe {
            abi::envoy_dynamic_module_callback_http_add_header(
                self.filter,
                self.kind,
                buf(name.as_bytes()),
                buf(value.as_bytes()),
            );
        }
    }

    /// Removes every value of `name` (the ABI's "set with a null value").
    pub(super) fn remove(&mut self, name: &str) {
        let null = ModuleBuffer {
            ptr: std::ptr::null(),
            length: 0,
        };
        // SAFETY: as for `set`; a null value buffer is the ABI's removal.
        unsafe {
            abi::envoy_dynamic_module_callback_http_set_header(
                self.filter,
                self.kind,
                buf(name.as_bytes()),
                null,
            );
        }
    }
}

/// Envoy's side of one stream during one hook: the [`Host`] the stream layer drives.
pub(super) struct EnvoyStream<'hook> {
    filter: abi::FilterEnvoyPtr,
    request: HeaderMap<'hook>,
    response: HeaderMap<'hook>,
    metrics: &'hook MetricIds,
}

impl<'hook> EnvoyStream<'hook> {
    /// Adds what this worker counted for this stream's filter config to Envoy's counters (see
    /// [`PENDING_COUNTS`]).
    pub(super) fn flush_counts(&self) {
        let config = self.metrics.config;
        PENDING_COUNTS.with_borrow_mut(|pending| {
            pending.retain(|p| {
                if p.config != config {
                    return true;
                }
                if let Some(id) = self.metrics.counters[p.counter as usize] {
                    let mut labels = [buf(p.label.as_bytes())];
                    // SAFETY: `filter` is valid for 'hook; the label buffer is alive for the
                    // call; the id was defined on this stream's config (`p.config` is its)
                    // with exactly one label. Envoy does not call back into the module here.
                    unsafe {
                        abi::envoy_dynamic_module_callback_http_filter_increment_counter(
                            self.filter,
                            id,
                            labels.as_mut_ptr(),
                            labels.len(),
                            p.count,
                        );
                    }
                }
                false
            });
        });
    }

    /// # Safety
    /// `filter` must be the filter pointer Envoy passed to the running hook.
    pub(super) unsafe fn new(filter: abi::FilterEnvoyPtr, metrics: &'hook MetricIds) -> Self {
        let map = |kind| HeaderMap {
            filter,
            kind,
            _hook: PhantomData,
        };
        EnvoyStream {
            filter,
            request: map(abi::header_type::REQUEST),
            response: map(abi::header_type::RESPONSE),
            metrics,
        }
    }

    fn attribute_id(attribute: Attribute) -> u32 {
        use abi::attribute_id as id;
        match attribute {
            Attribute::Path => id::REQUEST_PATH,
            Attribute::Method => id::REQUEST_METHOD,
            Attribute::Host => id::REQUEST_HOST,
            Attribute::SourceAddress => id::SOURCE_ADDRESS,
            Attribute::PeerSubject => id::CONNECTION_SUBJECT_PEER_CERTIFICATE,
            Attribute::PeerDnsSan => id::CONNECTION_DNS_SAN_PEER_CERTIFICATE,
            Attribute::PeerUriSan => id::CONNECTION_URI_SAN_PEER_CERTIFICATE,
            Attribute::PeerSha256 => id::CONNECTION_SHA256_PEER_CERTIFICATE_DIGEST,
        }
    }

    /// Every entry in one call: a `Struct` of their keys, merged into the namespace.
    fn set_metadata_struct(&mut self, entries: &[Metadata]) {
        let Some(first) = entries.first() else {
            return;
        };
        let encoded = crate::wire::encode_struct(entries);
        // SAFETY: `filter` is valid for 'hook; the buffers are alive for the call and copied.
        unsafe {
            abi::envoy_dynamic_module_callback_http_set_dynamic_metadata_struct(
                self.filter,
                buf(first.namespace.as_bytes()),
                buf(&encoded),
            );
        }
    }
}

impl Host for EnvoyStream<'_> {
    type Scheduler = EnvoyScheduler;

    fn header(&self, name: &str) -> Option<&[u8]> {
        self.request.get(name)
    }

    fn header_values(&self, name: &str) -> Vec<&[u8]> {
        self.request.get_all(name)
    }

    fn headers(&self) -> Vec<(&[u8], &[u8])> {
        self.request.entries()
    }

    fn attribute(&self, attribute: Attribute) -> Option<String> {
        let mut out = EnvoyBuffer {
            ptr: std::ptr::null(),
            length: 0,
        };
        // SAFETY: `filter` is valid for 'hook and `out` is a writable local.
        let found = unsafe {
            abi::envoy_dynamic_module_callback_http_filter_get_attribute_string(
                self.filter,
                Self::attribute_id(attribute),
                &mut out,
            )
        };
        // SAFETY: Envoy's view is valid until its next attribute read; it is copied here.
        let bytes = if found {
            unsafe { envoy_bytes(out) }
        } else {
            None
        };
        bytes
            .filter(|b| !b.is_empty())
            .map(|b| String::from_utf8_lossy(b).into_owned())
    }

    fn route(&self) -> Option<Arc<RouteSettings>> {
        // SAFETY: `filter` is valid for 'hook.
        let ptr = unsafe {
            abi::envoy_dynamic_module_callback_get_most_specific_route_config(self.filter)
        };
        if ptr.is_null() {
            return None;
        }
        // SAFETY: a non-null per-route pointer is one `per_route_config_new` returned: a
        // `Box<Arc<RouteSettings>>` that Envoy keeps alive while the route (which this stream
        // holds) exists. The Arc is cloned, so nothing borrows Envoy's object past this call.
        let settings = unsafe { &*ptr.cast::<Arc<RouteSettings>>() };
        Some(Arc::clone(settings))
    }

    fn remove_header(&mut self, name: &str) {
        self.request.remove(name);
    }

    fn set_header(&mut self, name: &str, value: &str) {
        self.request.set(name, value);
    }

    fn add_header(&mut self, name: &str, value: &str) {
        self.request.add(name, value);
    }

    fn add_response_header(&mut self, name: &str, value: &str) {
        self.response.add(name, value);
    }

    fn set_metadata(&mut self, entries: &[Metadata]) {
        let [entry] = entries else {
            return self.set_metadata_struct(entries);
        };
        let (ns, key) = (buf(entry.namespace.as_bytes()), buf(entry.key.as_bytes()));
        // SAFETY (each arm): `filter` is valid for 'hook; every buffer is alive for the call
        // and Envoy copies it into the stream's metadata.
        match &entry.value {
            MetadataValue::String(s) => unsafe {
                abi::envoy_dynamic_module_callback_http_set_dynamic_metadata_string(
                    self.filter,
                    ns,
                    key,
                    buf(s.as_bytes()),
                )
            },
            MetadataValue::Number(n) => unsafe {
                abi::envoy_dynamic_module_callback_http_set_dynamic_metadata_number(
                    self.filter,
                    ns,
                    key,
                    *n,
                )
            },
            MetadataValue::Bool(b) => unsafe {
                abi::envoy_dynamic_module_callback_http_set_dynamic_metadata_bool(
                    self.filter,
                    ns,
                    key,
                    *b,
                )
            },
            MetadataValue::List(_) | MetadataValue::Struct(_) => self.set_metadata_struct(entries),
        }
    }

    fn send_response(&mut self, reply: &LocalReply) {
        let mut headers: Vec<ModuleHeader> = reply
            .headers
            .iter()
            .map(|(k, v)| ModuleHeader {
                key_ptr: k.as_ptr().cast::<c_char>(),
                key_length: k.len(),
                value_ptr: v.as_ptr().cast::<c_char>(),
                value_length: v.len(),
            })
            .collect();
        // SAFETY: `filter` is valid for 'hook; `headers` and the strings it points into, the
        // body and the details outlive the call, and Envoy copies them into its reply. Envoy
        // may run other hooks of this stream before returning (the stream layer allows it).
        unsafe {
            abi::envoy_dynamic_module_callback_http_send_response(
                self.filter,
                u32::from(reply.status),
                headers.as_mut_ptr(),
                headers.len(),
                buf(reply.body.as_bytes()),
                buf(reply.details.as_bytes()),
            );
        }
    }

    fn continue_decoding(&mut self) {
        // SAFETY: `filter` is valid for 'hook.
        unsafe { abi::envoy_dynamic_module_callback_http_filter_continue_decoding(self.filter) }
    }

    fn scheduler(&mut self) -> Option<EnvoyScheduler> {
        // SAFETY: `filter` is valid for 'hook; Envoy allocates the scheduler and the module
        // owns it from here (freed in `EnvoyScheduler::drop`).
        let ptr =
            unsafe { abi::envoy_dynamic_module_callback_http_filter_scheduler_new(self.filter) };
        (!ptr.is_null()).then_some(EnvoyScheduler(ptr))
    }

    fn count(&mut self, counter: Counter, label: &'static str) {
        if self.metrics.counters[counter as usize].is_none() {
            return;
        }
        let config = self.metrics.config;
        PENDING_COUNTS.with_borrow_mut(|pending| {
            match pending
                .iter_mut()
                .find(|p| p.config == config && p.counter == counter && p.label == label)
            {
                Some(p) => p.count += 1,
                None => pending.push(PendingCount {
                    config,
                    counter,
                    label,
                    count: 1,
                }),
            }
        });
    }

    fn record(&mut self, histogram: Histogram, value: u64) {
        let Some(id) = self.metrics.histograms[histogram as usize] else {
            return;
        };
        // SAFETY: `filter` is valid for 'hook; the id was defined without labels.
        unsafe {
            abi::envoy_dynamic_module_callback_http_filter_record_histogram_value(
                self.filter,
                id,
                std::ptr::null_mut(),
                0,
                value,
            );
        }
    }
}

/// An Envoy scheduler for one stream, owned by the module: `commit` from any thread wakes the
/// stream's `scheduled` hook on its worker; dropping it deletes Envoy's object.
pub(crate) struct EnvoyScheduler(abi::SchedulerPtr);

// SAFETY: the ABI allows `commit` and `delete` from any thread; the pointer is used by one owner
// at a time (the stream layer keeps it behind a mutex) and deleted exactly once, in `drop`.
unsafe impl Send for EnvoyScheduler {}

impl Scheduler for EnvoyScheduler {
    fn commit(&self, event: u64) {
        // SAFETY: the scheduler has not been deleted (that happens only in `drop`).
        unsafe { abi::envoy_dynamic_module_callback_http_filter_scheduler_commit(self.0, event) }
    }
}

impl Drop for EnvoyScheduler {
    fn drop(&mut self) {
        // SAFETY: created by `scheduler_new`, deleted exactly once here.
        unsafe { abi::envoy_dynamic_module_callback_http_filter_scheduler_delete(self.0) }
    }
}
