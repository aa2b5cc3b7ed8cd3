//! The generated certificate chain: a CA and a leaf it signed for
//! `IP:127.0.0.1` and `DNS:localhost`, served with rustls (aws-lc-rs).

use std::io;
use std::sync::Arc;

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use rustls::ServerConfig;
use rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};
use sha2::{Digest, Sha256};

/// The generated chain and the server configuration that serves it.
pub(crate) struct Tls {
    pub(crate) ca_pem: String,
    pub(crate) leaf_der: Vec<u8>,
    pub(crate) config: Arc<ServerConfig>,
}

fn tls_error(what: &str, error: impl std::fmt::Display) -> io::Error {
    io::Error::other(format!("OVM exporter test server: {what}: {error}"))
}

/// Generates a CA and a leaf signed by it and builds the server config.
pub(crate) fn generate() -> io::Result<Tls> {
    let ca_key = KeyPair::generate().map_err(|e| tls_error("CA key", e))?;
    let mut ca_params =
        CertificateParams::new(Vec::<String>::new()).map_err(|e| tls_error("CA parameters", e))?;
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "hypersdk OVM exporter test CA");
    ca_params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let ca_cert = ca_params
        .self_signed(&ca_key)
        .map_err(|e| tls_error("CA certificate", e))?;
    let issuer = Issuer::new(ca_params, ca_key);

    let leaf_key = KeyPair::generate().map_err(|e| tls_error("leaf key", e))?;
    let mut leaf_params =
        CertificateParams::new(vec!["127.0.0.1".to_owned(), "localhost".to_owned()])
            .map_err(|e| tls_error("leaf parameters", e))?;
    leaf_params
        .distinguished_name
        .push(DnType::CommonName, "coriolis-ovm-exporter");
    leaf_params.use_authority_key_identifier_extension = true;
    leaf_params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    leaf_params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let leaf_cert = leaf_params
        .signed_by(&leaf_key, &issuer)
        .map_err(|e| tls_error("leaf certificate", e))?;

    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(leaf_key.serialize_der()));
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| tls_error("protocol versions", e))?
        .with_no_client_auth()
        .with_single_cert(vec![leaf_cert.der().clone(), ca_cert.der().clone()], key)
        .map_err(|e| tls_error("server certificate", e))?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Tls {
        ca_pem: ca_cert.pem(),
        leaf_der: leaf_cert.der().to_vec(),
        config: Arc::new(config),
    })
}

/// `AB:CD:...`: the upper-case, colon-separated SHA-256 of `der`.
pub(crate) fn thumbprint_sha256(der: &[u8]) -> String {
    Sha256::digest(der)
        .iter()
        .map(|b| format!("{b:02X}"))
        .collect::<Vec<_>>()
        .join(":")
}
