//! Client-certificate identity (`mtls`): the certificate the proxy verified on the client's TLS
//! connection, read from what it forwards (Envoy's ext_authz `include_peer_certificate`: the
//! URL-encoded PEM), with its subject, SANs, SPIFFE ID and SHA-256 fingerprint.
//!
//! The chain was verified by the proxy's listener (its trusted CA); this service does not see
//! the CA and does not verify it again. It does refuse a certificate that does not parse, is
//! outside its validity period, carries more than one SPIFFE ID, or (when `trust_domains` is
//! set) a SPIFFE ID of another trust domain.
//!
//! The identity's subject is the SPIFFE ID when the certificate has one, else its subject DN
//! (RFC 4514 form).

use std::time::{Duration, SystemTime};

use serde::Deserialize;
use sha2::{Digest, Sha256};
use tollgate_common::config::{Errors, Validate, join};
use x509_parser::extensions::GeneralName;
use x509_parser::time::ASN1Time;

use super::{Identity, Method, PeerCert, Rejection};
use crate::reason::Reason;

/// The `mtls:` section (present: the `mtls` identity method is on).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MtlsConfig {
    /// SPIFFE trust domains accepted (`example.org` for `spiffe://example.org/...`); empty
    /// accepts any, and certificates without a SPIFFE ID.
    #[serde(default)]
    pub trust_domains: Vec<String>,
    /// Longest forwarded certificate (URL-encoded PEM) read; a longer one is refused.
    #[serde(default = "default_max_bytes")]
    pub max_certificate_bytes: usize,
}

impl Default for MtlsConfig {
    fn default() -> Self {
        Self {
            trust_domains: Vec::new(),
            max_certificate_bytes: default_max_bytes(),
        }
    }
}

fn default_max_bytes() -> usize {
    16 * 1024
}

impl Validate for MtlsConfig {
    fn validate(&self, at: &str, errors: &mut Errors) {
        for (i, d) in self.trust_domains.iter().enumerate() {
            if d.is_empty() || d.contains(['/', ':']) || d != &d.to_ascii_lowercase() {
                errors.push(
                    format!("{}[{i}]", join(at, "trust_domains")),
                    "expected a lower-case trust domain name (`example.org`), without `spiffe://`",
                );
            }
        }
        if self.max_certificate_bytes < 512 {
            errors.push(
                join(at, "max_certificate_bytes"),
                "must be at least 512 (a certificate does not fit in less)",
            );
        }
    }
}

/// Verifies the forwarded certificate of a client.
#[derive(Clone)]
pub struct MtlsVerifier {
    cfg: MtlsConfig,
    clock: super::Clock,
}

impl std::fmt::Debug for MtlsVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MtlsVerifier")
            .field("cfg", &self.cfg)
            .finish_non_exhaustive()
    }
}

impl MtlsVerifier {
    pub fn new(cfg: MtlsConfig, clock: super::Clock) -> Self {
        Self { cfg, clock }
    }

    /// The identity of the client whose certificate the proxy forwarded as `pem`
    /// (URL-encoded), under the proxy's `principal` for it.
    pub fn verify(&self, principal: &str, pem: &str) -> Result<Identity, Rejection> {
        if pem.len() > self.cfg.max_certificate_bytes {
            return Err(Rejection::Invalid(Reason::CertificateTooLarge));
        }
        let cert = parse(principal, pem, self.clock.now())?;
        if !self.cfg.trust_domains.is_empty() {
            let domain = cert
                .spiffe_id
                .as_deref()
                .and_then(|s| s.strip_prefix("spiffe://"))
                .map(|s| s.split('/').next().unwrap_or_default());
            if !domain.is_some_and(|d| self.cfg.trust_domains.iter().any(|t| t == d)) {
                return Err(Rejection::Invalid(Reason::CertificateTrustDomain));
            }
        }
        let subject = cert
            .spiffe_id
            .clone()
            .unwrap_or_else(|| cert.subject.clone());
        let mut id = Identity::new(Method::Mtls, subject);
        id.cert = Some(std::sync::Arc::new(cert));
        Ok(id)
    }
}

/// Parses a URL-encoded PEM certificate, valid at `now`.
fn parse(principal: &str, pem: &str, now: SystemTime) -> Result<PeerCert, Rejection> {
    let bad = || Rejection::Invalid(Reason::CertificateInvalid);
    let text = percent_decode(pem);
    let (_, pem) = x509_parser::pem::parse_x509_pem(&text).map_err(|_| bad())?;
    if pem.label != "CERTIFICATE" {
        return Err(bad());
    }
    let x509 = pem.parse_x509().map_err(|_| bad())?;
    let secs = now
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or(Duration::ZERO)
        .as_secs();
    let at =
        ASN1Time::from_timestamp(i64::try_from(secs).unwrap_or(i64::MAX)).map_err(|_| bad())?;
    if !x509.validity().is_valid_at(at) {
        return Err(Rejection::Invalid(Reason::CertificateExpired));
    }
    let mut cert = PeerCert {
        subject: x509.subject().to_string(),
        principal: principal.to_string(),
        dns: Vec::new(),
        uris: Vec::new(),
        emails: Vec::new(),
        spiffe_id: None,
        fingerprint: hex(&Sha256::digest(&pem.contents)),
    };
    if let Ok(Some(san)) = x509.subject_alternative_name() {
        for name in &san.value.general_names {
            match name {
                GeneralName::DNSName(d) => cert.dns.push(d.to_string()),
                GeneralName::URI(u) => cert.uris.push(u.to_string()),
                GeneralName::RFC822Name(e) => cert.emails.push(e.to_string()),
                _ => {}
            }
        }
    } else if x509.subject_alternative_name().is_err() {
        return Err(bad());
    }
    if cert.principal.is_empty() {
        // Not named by the proxy (HTTP mode): Envoy's choice, first URI SAN, else DNS SAN,
        // else the subject.
        cert.principal = cert
            .uris
            .first()
            .or(cert.dns.first())
            .unwrap_or(&cert.subject)
            .clone();
    }
    let mut spiffe = cert.uris.iter().filter(|u| u.starts_with("spiffe://"));
    cert.spiffe_id = spiffe.next().cloned();
    if spiffe.next().is_some() {
        // The SPIFFE X.509-SVID rules: exactly one; two would make the identity a guess.
        return Err(Rejection::Invalid(Reason::CertificateInvalid));
    }
    Ok(cert)
}

/// The SHA-256 fingerprint (lower-case hex, of the DER) of a URL-encoded PEM certificate, as
/// Envoy reports a peer's (`%DOWNSTREAM_PEER_FINGERPRINT_256%`, the module's connection
/// attribute): what binds a certificate read from a header to the one the TLS handshake
/// verified. `None` when it is not one PEM certificate.
pub fn fingerprint(pem: &str) -> Option<String> {
    let text = percent_decode(pem);
    let (_, pem) = x509_parser::pem::parse_x509_pem(&text).ok()?;
    (pem.label == "CERTIFICATE").then(|| hex(&Sha256::digest(&pem.contents)))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn percent_decode(s: &str) -> Vec<u8> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hexd = |j: usize| b.get(j).and_then(|c| (*c as char).to_digit(16));
        match (b[i], hexd(i + 1), hexd(i + 2)) {
            (b'%', Some(h), Some(l)) => {
                out.push((h * 16 + l) as u8);
                i += 3;
            }
            (c, _, _) => {
                out.push(c);
                i += 1;
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use rcgen::{CertificateParams, DnType, KeyPair, SanType};

    fn url_encode(pem: &str) -> String {
        pem.bytes()
            .map(|b| match b {
                b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                    (b as char).to_string()
                }
                _ => format!("%{b:02X}"),
            })
            .collect()
    }

    fn cert(sans: Vec<SanType>) -> String {
        let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
        p.distinguished_name.push(DnType::CommonName, "web");
        p.distinguished_name.push(DnType::OrganizationName, "Acme");
        p.subject_alt_names = sans;
        let key = KeyPair::generate().unwrap();
        url_encode(&p.self_signed(&key).unwrap().pem())
    }

    fn verifier(domains: &[&str]) -> MtlsVerifier {
        MtlsVerifier::new(
            MtlsConfig {
                trust_domains: domains.iter().map(|d| d.to_string()).collect(),
                ..Default::default()
            },
            std::sync::Arc::new(tollgate_common::clock::SystemClock),
        )
    }

    #[test]
    fn subject_sans_spiffe_id_and_fingerprint() {
        let pem = cert(vec![
            SanType::URI("spiffe://acme.test/ns/web".try_into().unwrap()),
            SanType::URI("https://web.acme.test/".try_into().unwrap()),
            SanType::DnsName("web.acme.test".try_into().unwrap()),
            SanType::Rfc822Name("ops@acme.test".try_into().unwrap()),
        ]);
        let id = verifier(&[])
            .verify("spiffe://acme.test/ns/web", &pem)
            .unwrap();
        assert_eq!(id.method, Method::Mtls);
        assert_eq!(id.subject, "spiffe://acme.test/ns/web");
        let c = id.cert.as_deref().unwrap();
        assert_eq!(c.subject, "CN=web, O=Acme");
        assert_eq!(c.dns, ["web.acme.test"]);
        assert_eq!(c.uris.len(), 2);
        assert_eq!(c.emails, ["ops@acme.test"]);
        assert_eq!(c.spiffe_id.as_deref(), Some("spiffe://acme.test/ns/web"));
        assert_eq!(c.fingerprint.len(), 64);
        assert_eq!(c.principal, "spiffe://acme.test/ns/web");
    }

    #[test]
    fn the_fingerprint_is_the_identitys_and_needs_one_certificate() {
        let pem = cert(vec![]);
        let id = verifier(&[]).verify("", &pem).unwrap();
        assert_eq!(
            fingerprint(&pem),
            Some(id.cert.unwrap().fingerprint.clone())
        );
        assert_ne!(fingerprint(&cert(vec![])), fingerprint(&pem));
        assert_eq!(fingerprint("not a certificate"), None);
        let key = url_encode("-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n");
        assert_eq!(fingerprint(&key), None);
    }

    #[test]
    fn without_a_principal_from_the_proxy_it_is_envoys_choice() {
        let v = verifier(&[]);
        let principal = |sans| {
            v.verify("", &cert(sans))
                .unwrap()
                .cert
                .unwrap()
                .principal
                .clone()
        };
        let uri = || SanType::URI("spiffe://acme.test/ns/web".try_into().unwrap());
        let dns = || SanType::DnsName("web.acme.test".try_into().unwrap());
        assert_eq!(principal(vec![dns(), uri()]), "spiffe://acme.test/ns/web");
        assert_eq!(principal(vec![dns()]), "web.acme.test");
        assert_eq!(principal(vec![]), "CN=web, O=Acme");
    }

    #[test]
    fn without_a_spiffe_id_the_subject_is_the_dn() {
        let pem = cert(vec![SanType::DnsName("web.acme.test".try_into().unwrap())]);
        let id = verifier(&[]).verify("web.acme.test", &pem).unwrap();
        assert_eq!(id.subject, "CN=web, O=Acme");
        assert_eq!(
            verifier(&["acme.test"]).verify("web", &pem),
            Err(Rejection::Invalid(Reason::CertificateTrustDomain)),
            "trust domains set: a SPIFFE ID is required"
        );
    }

    #[test]
    fn trust_domains_and_bad_certificates_are_refused() {
        let pem = cert(vec![SanType::URI(
            "spiffe://other.test/x".try_into().unwrap(),
        )]);
        assert_eq!(
            verifier(&["acme.test"]).verify("x", &pem),
            Err(Rejection::Invalid(Reason::CertificateTrustDomain))
        );
        assert!(verifier(&["other.test"]).verify("x", &pem).is_ok());
        let two = cert(vec![
            SanType::URI("spiffe://acme.test/a".try_into().unwrap()),
            SanType::URI("spiffe://acme.test/b".try_into().unwrap()),
        ]);
        assert_eq!(
            verifier(&[]).verify("x", &two),
            Err(Rejection::Invalid(Reason::CertificateInvalid))
        );
        for junk in ["", "not a pem", "-----BEGIN%20CERTIFICATE-----%0Azz%0A"] {
            assert_eq!(
                verifier(&[]).verify("x", junk),
                Err(Rejection::Invalid(Reason::CertificateInvalid)),
                "{junk}"
            );
        }
        let mut v = verifier(&[]);
        v.cfg.max_certificate_bytes = pem.len() - 1;
        assert_eq!(
            v.verify("x", &pem),
            Err(Rejection::Invalid(Reason::CertificateTooLarge))
        );
    }

    #[test]
    fn expired_certificates_are_refused() {
        let mut p = CertificateParams::new(vec!["a.test".to_string()]).unwrap();
        p.not_before = rcgen::date_time_ymd(2001, 1, 1);
        p.not_after = rcgen::date_time_ymd(2002, 1, 1);
        let key = KeyPair::generate().unwrap();
        let pem = url_encode(&p.self_signed(&key).unwrap().pem());
        assert_eq!(
            verifier(&[]).verify("a.test", &pem),
            Err(Rejection::Invalid(Reason::CertificateExpired))
        );
    }
}
