//! The descriptors a request is rate-limited by, built in this one function so that the
//! descriptor builder shared with single-call mode (identity, request and constants, as
//! Envoy's route `rate_limits` actions) replaces it in one place.
//!
//! Until then the mapping is fixed: `[(rule, R)]` and `[(rule, R), (remote_address, IP)]`, where
//! `R` is the route's per-route `rule` (`default` when the route names none) and `IP` the
//! downstream address Envoy trusts (its `remote_address`, without the port).

use tollgate_limiter::Descriptor;

use crate::filter::Request;

/// The rule name of routes whose per-route config names none.
pub(crate) const DEFAULT_RULE: &str = "default";

/// The descriptors for `request`, in the order the limiter reports their statuses.
pub(crate) fn build(request: &dyn Request) -> Vec<Descriptor> {
    let rule = request.route_rule().unwrap_or(DEFAULT_RULE);
    let mut out = vec![Descriptor::new([("rule", rule)])];
    if let Some(ip) = request.source_address().map(address_without_port) {
        out.push(Descriptor::new([("rule", rule), ("remote_address", ip)]));
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
                Descriptor::new([("rule", "orders")]),
                Descriptor::new([("rule", "orders"), ("remote_address", "10.0.0.7")]),
            ]
        );
        req.rule = None;
        req.source = None;
        assert_eq!(build(&req), vec![Descriptor::new([("rule", "default")])]);
    }

    #[test]
    fn ports_are_stripped_from_v4_and_v6_addresses() {
        assert_eq!(address_without_port("1.2.3.4:5"), "1.2.3.4");
        assert_eq!(address_without_port("[::1]:443"), "::1");
        assert_eq!(address_without_port("::1"), "::1");
        assert_eq!(address_without_port("host"), "host");
    }
}
