//! The event hooks Envoy resolves in the module by name (`envoy_dynamic_module_on_*`): program
//! init, the HTTP filter config and per-route config lifecycles, and the twenty stream hooks.
//! Each converts Envoy's pointers into the module's objects (see the ownership rules in
//! [`super`]), calls the safe stream layer, and catches any panic.

use std::ffi::{c_char, c_void};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;

use super::abi::{
    self, ConfigEnvoyPtr, EnvoyBuffer, EnvoyHeader, FilterEnvoyPtr, ModulePtr, body_status,
    headers_status, trailers_status,
};
use super::envoy::{self, EnvoyScheduler, EnvoyStream, MetricIds, copy_envoy_buffer};
use crate::config::{FilterConfig, RouteSettings};
use crate::stream::{BodyFlow, Flow, Stream};

/// A filter config as the module keeps it: the config and its metric ids in Envoy.
struct ModuleConfig {
    filter: Arc<FilterConfig>,
    metrics: MetricIds,
}

/// One stream's module object.
struct StreamState {
    config: Arc<ModuleConfig>,
    stream: Stream<EnvoyScheduler>,
}

/// Runs a hook body, turning a panic into `fallback` (the panic hook has logged it).
fn guard<T>(fallback: T, body: impl FnOnce() -> T) -> T {
    catch_unwind(AssertUnwindSafe(body)).unwrap_or(fallback)
}

/// The stream behind a module pointer, borrowed for the running hook.
///
/// # Safety
/// `module` must be a pointer `on_http_filter_new` returned and `destroy` has not freed.
unsafe fn stream_state<'a>(module: ModulePtr) -> Option<&'a StreamState> {
    // SAFETY: per the caller, a live `Box<StreamState>`; only shared borrows are made.
    unsafe { module.cast::<StreamState>().as_ref() }
}

/// Runs `body` with the stream and its host for one hook; `None` for a null module pointer.
///
/// # Safety
/// `filter` and `module` must be the pointers Envoy passed to the running hook.
unsafe fn with_stream<T>(
    filter: FilterEnvoyPtr,
    module: ModulePtr,
    body: impl FnOnce(&Stream<EnvoyScheduler>, &mut EnvoyStream<'_>) -> T,
) -> Option<T> {
    // SAFETY: forwarded from the caller.
    let state = unsafe { stream_state(module) }?;
    // SAFETY: `filter` is this hook's filter pointer, per the caller.
    let mut host = unsafe { EnvoyStream::new(filter, &state.config.metrics) };
    Some(body(&state.stream, &mut host))
}

/// The module's log line for a panic, written into Envoy's log instead of stderr.
fn install_panic_hook() {
    std::panic::set_hook(Box::new(|info| {
        let payload = info
            .payload()
            .downcast_ref::<&str>()
            .copied()
            .or_else(|| info.payload().downcast_ref::<String>().map(String::as_str))
            .unwrap_or("(no message)");
        let at = info
            .location()
            .map(|l| format!("{}:{}", l.file(), l.line()))
            .unwrap_or_default();
        // One line: the module recovers (failure mode) and Envoy keeps serving.
        envoy::log(
            tracing::Level::ERROR,
            &format!("tollgate: panic at {at}: {payload}; answered with the failure mode"),
        );
    }));
}

/// Keeps the module mapped for the life of the process. Its background threads outlive any
/// one filter config, so Envoy unloading the library when the last config using it goes
/// (`do_not_close: false`) would pull their code from under them.
fn pin_in_memory() -> bool {
    // SAFETY: `Dl_info` is plain data; zeroed is a valid initial value for `dladdr` to fill.
    let mut info: libc::Dl_info = unsafe { std::mem::zeroed() };
    let here = pin_in_memory as *const c_void;
    // SAFETY: `here` is an address inside this library and `info` is writable.
    if unsafe { libc::dladdr(here, &mut info) } == 0 || info.dli_fname.is_null() {
        return false;
    }
    // SAFETY: `dli_fname` is the NUL-terminated path of this already-loaded library; NOLOAD
    // only re-opens it and NODELETE makes its unloading a no-op. The handle is deliberately
    // never closed.
    let handle = unsafe {
        libc::dlopen(
            info.dli_fname,
            libc::RTLD_NOW | libc::RTLD_NOLOAD | libc::RTLD_NODELETE,
        )
    };
    !handle.is_null()
}

#[unsafe(no_mangle)]
extern "C" fn envoy_dynamic_module_on_program_init() -> *const c_char {
    guard(std::ptr::null(), || {
        install_panic_hook();
        crate::log::install(crate::log::Sink {
            write: envoy::log,
            enabled: envoy::log_enabled,
        });
        if !pin_in_memory() {
            envoy::log(
                tracing::Level::ERROR,
                "tollgate: cannot pin the module in memory; refusing to load",
            );
            return std::ptr::null();
        }
        abi::ABI_VERSION.as_ptr()
    })
}

#[unsafe(no_mangle)]
extern "C" fn envoy_dynamic_module_on_http_filter_config_new(
    config_envoy: ConfigEnvoyPtr,
    name: EnvoyBuffer,
    config: EnvoyBuffer,
) -> ModulePtr {
    guard(std::ptr::null(), || {
        // SAFETY: both buffers are Envoy's views for this hook; they are copied.
        let (name, text) = unsafe { (copy_envoy_buffer(name), copy_envoy_buffer(config)) };
        let name = String::from_utf8_lossy(&name);
        match FilterConfig::build(&name, &text) {
            Ok(filter) => {
                // SAFETY: `config_envoy` is this hook's filter config pointer.
                let metrics = unsafe { MetricIds::define(config_envoy) };
                let config = ModuleConfig {
                    filter: Arc::new(filter),
                    metrics,
                };
                Arc::into_raw(Arc::new(config)).cast()
            }
            Err(e) => {
                envoy::log(
                    tracing::Level::ERROR,
                    &format!("tollgate: filter config rejected: {e}"),
                );
                std::ptr::null()
            }
        }
    })
}

#[unsafe(no_mangle)]
extern "C" fn envoy_dynamic_module_on_http_filter_config_destroy(config: ModulePtr) {
    guard((), || {
        if !config.is_null() {
            // SAFETY: `config` came from `Arc::into_raw` in `config_new`; Envoy destroys it
            // once, so this releases exactly the reference handed to Envoy.
            drop(unsafe { Arc::from_raw(config.cast::<ModuleConfig>()) });
        }
    })
}

#[unsafe(no_mangle)]
extern "C" fn envoy_dynamic_module_on_http_filter_per_route_config_new(
    name: EnvoyBuffer,
    config: EnvoyBuffer,
) -> ModulePtr {
    guard(std::ptr::null(), || {
        // SAFETY: both buffers are Envoy's views for this hook; they are copied.
        let (name, text) = unsafe { (copy_envoy_buffer(name), copy_envoy_buffer(config)) };
        let name = String::from_utf8_lossy(&name);
        match RouteSettings::build(&name, &text) {
            Ok(settings) => Box::into_raw(Box::new(Arc::new(settings)))
                .cast_const()
                .cast(),
            Err(e) => {
                envoy::log(
                    tracing::Level::ERROR,
                    &format!("tollgate: per-route config rejected: {e}"),
                );
                std::ptr::null()
            }
        }
    })
}

#[unsafe(no_mangle)]
extern "C" fn envoy_dynamic_module_on_http_filter_per_route_config_destroy(config: ModulePtr) {
    guard((), || {
        if !config.is_null() {
            // SAFETY: `config` came from `Box::into_raw` in `per_route_config_new` and Envoy
            // destroys it once.
            drop(unsafe { Box::from_raw(config.cast::<Arc<RouteSettings>>().cast_mut()) });
        }
    })
}

#[unsafe(no_mangle)]
extern "C" fn envoy_dynamic_module_on_http_filter_new(
    config: ModulePtr,
    _filter: FilterEnvoyPtr,
) -> ModulePtr {
    guard(std::ptr::null(), || {
        if config.is_null() {
            return std::ptr::null();
        }
        let config = config.cast::<ModuleConfig>();
        // SAFETY: `config` came from `Arc::into_raw` and Envoy keeps it until every stream
        // created from it is destroyed; this takes one more reference for the stream.
        let config = unsafe {
            Arc::increment_strong_count(config);
            Arc::from_raw(config)
        };
        let stream = Stream::new(Arc::clone(&config.filter));
        Box::into_raw(Box::new(StreamState { config, stream }))
            .cast_const()
            .cast()
    })
}

#[unsafe(no_mangle)]
extern "C" fn envoy_dynamic_module_on_http_filter_request_headers(
    filter: FilterEnvoyPtr,
    module: ModulePtr,
    _end_of_stream: bool,
) -> u32 {
    guard(headers_status::STOP_ITERATION, || {
        // SAFETY: the pointers are this hook's.
        let flow = unsafe {
            with_stream(filter, module, |stream, host| {
                catch_unwind(AssertUnwindSafe(|| stream.request_headers(host)))
                    .unwrap_or_else(|_| stream.fail(host, false))
            })
        };
        match flow {
            Some(Flow::Continue) | None => headers_status::CONTINUE,
            Some(Flow::Stop) => headers_status::STOP_ITERATION,
        }
    })
}

#[unsafe(no_mangle)]
extern "C" fn envoy_dynamic_module_on_http_filter_request_body(
    filter: FilterEnvoyPtr,
    module: ModulePtr,
    _end_of_stream: bool,
) -> u32 {
    guard(body_status::CONTINUE, || {
        // SAFETY: the pointers are this hook's.
        match unsafe { with_stream(filter, module, |stream, _| stream.request_data()) } {
            Some(BodyFlow::Hold) => body_status::STOP_ITERATION_AND_WATERMARK,
            _ => body_status::CONTINUE,
        }
    })
}

#[unsafe(no_mangle)]
extern "C" fn envoy_dynamic_module_on_http_filter_request_trailers(
    filter: FilterEnvoyPtr,
    module: ModulePtr,
) -> u32 {
    guard(trailers_status::CONTINUE, || {
        // SAFETY: the pointers are this hook's.
        match unsafe { with_stream(filter, module, |stream, _| stream.request_data()) } {
            Some(BodyFlow::Hold) => trailers_status::STOP_ITERATION,
            _ => trailers_status::CONTINUE,
        }
    })
}

#[unsafe(no_mangle)]
extern "C" fn envoy_dynamic_module_on_http_filter_response_headers(
    filter: FilterEnvoyPtr,
    module: ModulePtr,
    _end_of_stream: bool,
) -> u32 {
    guard(headers_status::CONTINUE, || {
        // SAFETY: the pointers are this hook's.
        unsafe { with_stream(filter, module, |stream, host| stream.response_headers(host)) };
        headers_status::CONTINUE
    })
}

#[unsafe(no_mangle)]
extern "C" fn envoy_dynamic_module_on_http_filter_response_body(
    _filter: FilterEnvoyPtr,
    _module: ModulePtr,
    _end_of_stream: bool,
) -> u32 {
    body_status::CONTINUE
}

#[unsafe(no_mangle)]
extern "C" fn envoy_dynamic_module_on_http_filter_response_trailers(
    _filter: FilterEnvoyPtr,
    _module: ModulePtr,
) -> u32 {
    trailers_status::CONTINUE
}

#[unsafe(no_mangle)]
extern "C" fn envoy_dynamic_module_on_http_filter_scheduled(
    filter: FilterEnvoyPtr,
    module: ModulePtr,
    event_id: u64,
) {
    guard((), || {
        // SAFETY: the pointers are this hook's.
        unsafe {
            with_stream(filter, module, |stream, host| {
                if catch_unwind(AssertUnwindSafe(|| stream.scheduled(host, event_id))).is_err() {
                    stream.fail(host, true);
                }
            })
        };
    })
}

#[unsafe(no_mangle)]
extern "C" fn envoy_dynamic_module_on_http_filter_stream_complete(
    filter: FilterEnvoyPtr,
    module: ModulePtr,
) {
    guard((), || {
        // SAFETY: the pointers are this hook's.
        unsafe { with_stream(filter, module, |_, host| host.flush_counts()) };
    })
}

#[unsafe(no_mangle)]
extern "C" fn envoy_dynamic_module_on_http_filter_destroy(module: ModulePtr) {
    guard((), || {
        if !module.is_null() {
            // SAFETY: `module` came from `Box::into_raw` in `filter_new`; Envoy calls destroy
            // once, with no other hook of this stream on the stack.
            drop(unsafe { Box::from_raw(module.cast::<StreamState>().cast_mut()) });
        }
    })
}

// The module starts no HTTP callouts or streams of its own and is never a terminal filter, so
// Envoy never calls these; they exist because Envoy requires every HTTP filter hook.

#[unsafe(no_mangle)]
extern "C" fn envoy_dynamic_module_on_http_filter_http_callout_done(
    _filter: FilterEnvoyPtr,
    _module: ModulePtr,
    _callout_id: u64,
    _result: u32,
    _headers: *mut EnvoyHeader,
    _headers_size: usize,
    _body_chunks: *mut EnvoyBuffer,
    _body_chunks_size: usize,
) {
}

#[unsafe(no_mangle)]
extern "C" fn envoy_dynamic_module_on_http_filter_http_stream_headers(
    _filter: FilterEnvoyPtr,
    _module: ModulePtr,
    _stream_id: u64,
    _headers: *mut EnvoyHeader,
    _headers_size: usize,
    _end_stream: bool,
) {
}

#[unsafe(no_mangle)]
extern "C" fn envoy_dynamic_module_on_http_filter_http_stream_data(
    _filter: FilterEnvoyPtr,
    _module: ModulePtr,
    _stream_id: u64,
    _data: *const EnvoyBuffer,
    _data_count: usize,
    _end_stream: bool,
) {
}

#[unsafe(no_mangle)]
extern "C" fn envoy_dynamic_module_on_http_filter_http_stream_trailers(
    _filter: FilterEnvoyPtr,
    _module: ModulePtr,
    _stream_id: u64,
    _trailers: *mut EnvoyHeader,
    _trailers_size: usize,
) {
}

#[unsafe(no_mangle)]
extern "C" fn envoy_dynamic_module_on_http_filter_http_stream_complete(
    _filter: FilterEnvoyPtr,
    _module: ModulePtr,
    _stream_id: u64,
) {
}

#[unsafe(no_mangle)]
extern "C" fn envoy_dynamic_module_on_http_filter_http_stream_reset(
    _filter: FilterEnvoyPtr,
    _module: ModulePtr,
    _stream_id: u64,
    _reason: u32,
) {
}

#[unsafe(no_mangle)]
extern "C" fn envoy_dynamic_module_on_http_filter_downstream_above_write_buffer_high_watermark(
    _filter: FilterEnvoyPtr,
    _module: ModulePtr,
) {
}

#[unsafe(no_mangle)]
extern "C" fn envoy_dynamic_module_on_http_filter_downstream_below_write_buffer_low_watermark(
    _filter: FilterEnvoyPtr,
    _module: ModulePtr,
) {
}
