//! The descriptors a request is rate-limited by, built in this one function so that the
//! descriptor builder shared with single-call mode (identity, request and constants, as
//! Envoy's route `rate_limits` actions) replaces it in one place.
//!
//! Until then the mapping is fixed, and mirrors the example Envoy config's route
//! `rate_limits` (so the same limits file serves both shapes): `[(route, R)]` when the route's
//! per-route config names a `rule` R (Envoy: `generic_key {descriptor_key: route}`), and
//! `[(remote_address, IP)]` for the downstream address Envoy trusts, without the port (Envoy:
//! `remote_address`).

use tollgate_limiter::Descriptor;

use crate::filter::Request;

/// The descriptors for `request`, in the order the limiter reports their statuses.
pub(crate) fn build(request: &dyn Request) -> Vec<Descriptor> {
    let mut out = Vec::with_capacity(2);
    if let Some(rule) = request.route_rule() {
        out.push(Descriptor::new([("route", rule)]));
    }
    if let Some(ip) = request.source_address().map(address_without_port) {
        out.push(Descriptor::new([("remote_address", ip)]));
    }
    out
}

/// `1.2.3.4:5` → `1.2.3.4`, `[::1]:5` → `::1`; anything else as it is.
fn address_without_port(address: &str) -> &str {
    if let Some(rest) = address.strip_prefix('[') {
        return rest.split(']').next().unwrap_or(rest);
    }
    match address.rsplit_once(':') {
        Some((ip, port)) if !ip.contains(':') && port.bytes().all(|b| b.is_ascii_digit()) => ip,
        _ => address,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::filter::testing::FakeRequest;

    #[test]
    fn the_route_rule_and_the_client_address_make_the_descriptors() {
        let mut req = FakeRequest::get("/");
        req.rule = Some("orders".into());
        req.source = Some("10.0.0.7:51234".into());
        assert_eq!(
            build(&req),
            vec![
                Descriptor::new([("route", "orders")]),
                Descriptor::new([("remote_address", "10.0.0.7")]),
            ]
        );
        req.rule = None;
        assert_eq!(
            build(&req),
            vec![Descriptor::new([("remote_address", "10.0.0.7")])]
        );
        req.source = None;
        assert!(build(&req).is_empty());
    }

    #[test]
    fn ports_are_stripped_from_v4_and_v6_addresses() {
        assert_eq!(address_without_port("1.2.3.4:5"), "1.2.3.4");
        assert_eq!(address_without_port("[::1]:443"), "::1");
        assert_eq!(address_without_port("::1"), "::1");
        assert_eq!(address_without_port("host"), "host");
    }
}
