//! A throwaway PKI for TLS tests: a CA, a server certificate for `localhost`/127.0.0.1, and a
//! client certificate, written as PEM files.

use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair, KeyUsagePurpose,
    SanType,
};

/// PEM files of one generated PKI.
#[derive(Debug, Clone)]
pub struct Pki {
    pub ca_cert: PathBuf,
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
    pub client_cert: PathBuf,
    pub client_key: PathBuf,
}

/// Generates a CA named `ca_name` and certificates it signed, into `dir`.
pub fn generate(dir: &Path, ca_name: &str) -> Pki {
    generate_for(dir, ca_name, &["localhost", "127.0.0.1"])
}

/// [`generate`] with a server certificate for `server_names` (DNS names or IP addresses).
pub fn generate_for(dir: &Path, ca_name: &str, server_names: &[&str]) -> Pki {
    generate_with_clients(dir, ca_name, server_names, &[]).0
}

/// [`generate_for`], and one more client certificate (PEM cert and key files) per URI SAN in
/// `client_uris` (a SPIFFE ID, say), signed by the same CA.
pub fn generate_with_clients(
    dir: &Path,
    ca_name: &str,
    server_names: &[&str],
    client_uris: &[&str],
) -> (Pki, Vec<(PathBuf, PathBuf)>) {
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params
        .distinguished_name
        .push(DnType::CommonName, ca_name);
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().unwrap()).unwrap();

    let leaf = |cn: &str, sans: Vec<String>| {
        let mut p = CertificateParams::new(sans).unwrap();
        p.distinguished_name.push(DnType::CommonName, cn);
        let key = KeyPair::generate().unwrap();
        let cert = p.signed_by(&key, &ca).unwrap();
        (cert.pem(), key.serialize_pem())
    };
    let sans: Vec<String> = server_names.iter().map(|s| s.to_string()).collect();
    let (server_cert, server_key) = leaf(server_names[0], sans);
    let (client_cert, client_key) = leaf("envoy-gateway", vec!["envoy-gateway".into()]);

    let write = |name: &str, text: &str| {
        let p = dir.join(name);
        std::fs::write(&p, text).unwrap();
        p
    };
    let clients = client_uris
        .iter()
        .enumerate()
        .map(|(i, uri)| {
            let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
            p.distinguished_name
                .push(DnType::CommonName, format!("client-{i}"));
            p.subject_alt_names = vec![SanType::URI((*uri).try_into().unwrap())];
            let key = KeyPair::generate().unwrap();
            let cert = p.signed_by(&key, &ca).unwrap();
            (
                write(&format!("client-{i}.pem"), &cert.pem()),
                write(&format!("client-{i}.key"), &key.serialize_pem()),
            )
        })
        .collect();
    let pki = Pki {
        ca_cert: write("ca.pem", &ca.pem()),
        server_cert: write("server.pem", &server_cert),
        server_key: write("server.key", &server_key),
        client_cert: write("client.pem", &client_cert),
        client_key: write("client.key", &client_key),
    };
    (pki, clients)
}
