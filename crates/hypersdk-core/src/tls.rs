//! Certificate thumbprints and the pinning verifier, shared by every
//! provider that talks TLS to a self-signed host (vSphere, the OVM
//! exporter).
//!
//! vSphere shows a server's certificate as a thumbprint: the SHA-1 (older
//! UIs, `sslThumbprint` of NFC leases) or SHA-256 of the DER certificate,
//! in colon-separated upper-case hex. A [`Thumbprint`] parses either form
//! (colons, spaces and case do not matter; a `sha1:`/`sha256:` prefix is
//! allowed) and the length tells which hash it is.
//!
//! With a pin, the TLS handshake accepts exactly a leaf certificate whose
//! thumbprint matches, instead of checking the chain against CAs (the
//! vSphere trust model for self-signed hosts). The handshake signature is
//! still verified with the certificate's key, so a peer must hold the
//! pinned certificate's private key. A mismatch fails the handshake: no
//! HTTP request, and so no credential, is ever sent.
//!
//! ```
//! use hypersdk_core::tls::Thumbprint;
//!
//! let t: Thumbprint = "aa:bb:cc:dd:ee:ff:00:11:22:33:44:55:66:77:88:99:AA:BB:CC:DD".parse()?;
//! assert!(matches!(t, Thumbprint::Sha1(_)));
//! assert_eq!(t.to_string(), "AA:BB:CC:DD:EE:FF:00:11:22:33:44:55:66:77:88:99:AA:BB:CC:DD");
//! # Ok::<(), hypersdk_core::Error>(())
//! ```

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

use crate::{Error, Result};
use rustls::DigitallySignedStruct;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use sha1::Digest;

/// A certificate fingerprint: SHA-1 or SHA-256 of the DER certificate.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Thumbprint {
    /// SHA-1 (20 bytes), as older vSphere UIs and NFC leases show it.
    Sha1([u8; 20]),
    /// SHA-256 (32 bytes).
    Sha256([u8; 32]),
}

impl Thumbprint {
    /// The SHA-1 thumbprint of a DER certificate.
    pub fn sha1_of(der: &[u8]) -> Self {
        Thumbprint::Sha1(sha1::Sha1::digest(der).into())
    }

    /// The SHA-256 thumbprint of a DER certificate.
    pub fn sha256_of(der: &[u8]) -> Self {
        Thumbprint::Sha256(sha2::Sha256::digest(der).into())
    }

    /// Whether `der` has this thumbprint.
    pub fn matches(&self, der: &[u8]) -> bool {
        match self {
            Thumbprint::Sha1(_) => Thumbprint::sha1_of(der) == *self,
            Thumbprint::Sha256(_) => Thumbprint::sha256_of(der) == *self,
        }
    }

    fn bytes(&self) -> &[u8] {
        match self {
            Thumbprint::Sha1(b) => b,
            Thumbprint::Sha256(b) => b,
        }
    }
}

impl fmt::Display for Thumbprint {
    /// Colon-separated upper-case hex, as vSphere shows it.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, b) in self.bytes().iter().enumerate() {
            if i > 0 {
                f.write_str(":")?;
            }
            write!(f, "{b:02X}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for Thumbprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Thumbprint::Sha1(_) => write!(f, "Sha1({self})"),
            Thumbprint::Sha256(_) => write!(f, "Sha256({self})"),
        }
    }
}

impl FromStr for Thumbprint {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        let trimmed = s.trim();
        let lower = trimmed.to_ascii_lowercase();
        let (want, rest) = if let Some(r) = lower.strip_prefix("sha256:") {
            (Some(32), r)
        } else if let Some(r) = lower.strip_prefix("sha1:") {
            (Some(20), r)
        } else {
            (None, lower.as_str())
        };
        let hex_digits: String = rest
            .chars()
            .filter(|c| !matches!(c, ':' | ' ' | '-'))
            .collect();
        let bytes = hex::decode(&hex_digits).map_err(|_| {
            Error::invalid_input(format!(
                "certificate thumbprint '{trimmed}' is not hex (expected AA:BB:… as vSphere shows it)"
            ))
        })?;
        if want.is_some_and(|w| w != bytes.len()) {
            return Err(Error::invalid_input(format!(
                "certificate thumbprint '{trimmed}' has {} bytes, not what its prefix says",
                bytes.len()
            )));
        }
        match bytes.len() {
            20 => {
                let mut a = [0u8; 20];
                a.copy_from_slice(&bytes);
                Ok(Thumbprint::Sha1(a))
            }
            32 => {
                let mut a = [0u8; 32];
                a.copy_from_slice(&bytes);
                Ok(Thumbprint::Sha256(a))
            }
            n => Err(Error::invalid_input(format!(
                "certificate thumbprint '{trimmed}' has {n} bytes; expected 20 (SHA-1) or 32 (SHA-256)"
            ))),
        }
    }
}

/// The handshake failed because the server's certificate matches no pin.
#[derive(Debug)]
pub(crate) struct PinMismatch {
    sha1: Thumbprint,
    sha256: Thumbprint,
}

impl fmt::Display for PinMismatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "the server certificate matches no pinned thumbprint (it has SHA-1 {} and SHA-256 {})",
            self.sha1, self.sha256
        )
    }
}

impl std::error::Error for PinMismatch {}

/// Accepts exactly the leaf certificates whose thumbprint is pinned.
#[derive(Debug)]
pub(crate) struct PinVerifier {
    pins: Vec<Thumbprint>,
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for PinVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> std::result::Result<ServerCertVerified, rustls::Error> {
        if self.pins.iter().any(|p| p.matches(end_entity)) {
            return Ok(ServerCertVerified::assertion());
        }
        let mismatch = PinMismatch {
            sha1: Thumbprint::sha1_of(end_entity),
            sha256: Thumbprint::sha256_of(end_entity),
        };
        Err(rustls::Error::InvalidCertificate(
            rustls::CertificateError::Other(rustls::OtherError(Arc::new(mismatch))),
        ))
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// A rustls client configuration that trusts exactly `pins`.
pub fn pinned_config(pins: Vec<Thumbprint>) -> Result<rustls::ClientConfig> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let verifier = Arc::new(PinVerifier {
        pins,
        provider: Arc::clone(&provider),
    });
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::Other {
            message: format!("building the TLS configuration: {e}"),
            source: Some(Box::new(e)),
        })?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

/// How a client checks a server's certificate: the system's roots (the
/// default), only given CA certificates, only leaf certificates with given
/// thumbprints, or nothing at all. One policy per client: mixing CAs, pins
/// and accept-invalid is refused, since it is never what the caller meant.
///
/// Providers keep one in their client builders and [`TlsTrust::apply`] it
/// to the `reqwest` builder.
///
/// ```
/// use hypersdk_core::tls::TlsTrust;
///
/// let mut trust = TlsTrust::default();
/// assert!(trust.is_system_roots());
/// trust.pin("AB".repeat(32).parse()?)?;
/// assert!(trust.accept_invalid().is_err()); // a pin and accept-any do not mix
/// let http = trust.apply(reqwest::Client::builder(), "example")?.build();
/// assert!(http.is_ok());
/// # Ok::<(), hypersdk_core::Error>(())
/// ```
#[derive(Clone, Default)]
pub struct TlsTrust {
    kind: Trust,
}

#[derive(Clone, Default)]
enum Trust {
    #[default]
    SystemRoots,
    Cas(Vec<Vec<u8>>),
    Pins(Vec<Thumbprint>),
    Insecure,
}

impl fmt::Debug for TlsTrust {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.kind {
            Trust::SystemRoots => f.write_str("SystemRoots"),
            Trust::Cas(c) => write!(f, "Cas({} PEM bundles)", c.len()),
            Trust::Pins(p) => f.debug_tuple("Pins").field(p).finish(),
            Trust::Insecure => f.write_str("Insecure"),
        }
    }
}

impl TlsTrust {
    /// Whether nothing was set: the system's roots are trusted.
    pub fn is_system_roots(&self) -> bool {
        matches!(self.kind, Trust::SystemRoots)
    }

    /// Whether any certificate is accepted.
    pub fn is_insecure(&self) -> bool {
        matches!(self.kind, Trust::Insecure)
    }

    /// Trusts the CA certificates of this PEM bundle instead of the
    /// system's roots; may be called several times. The bundle is parsed
    /// by [`TlsTrust::apply`].
    ///
    /// # Errors
    ///
    /// [`Error::InvalidInput`] when pins or accept-invalid were set.
    pub fn add_ca_pem(&mut self, pem: &[u8]) -> Result<()> {
        match &mut self.kind {
            Trust::Cas(v) => v.push(pem.to_vec()),
            Trust::SystemRoots => self.kind = Trust::Cas(vec![pem.to_vec()]),
            _ => return Err(self.conflict("a CA certificate")),
        }
        Ok(())
    }

    /// Trusts exactly the leaf certificates with this thumbprint (any of
    /// the pins matches), checked in the handshake before any request.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidInput`] when CAs or accept-invalid were set.
    pub fn pin(&mut self, thumbprint: Thumbprint) -> Result<()> {
        match &mut self.kind {
            Trust::Pins(v) => v.push(thumbprint),
            Trust::SystemRoots => self.kind = Trust::Pins(vec![thumbprint]),
            _ => return Err(self.conflict("a thumbprint pin")),
        }
        Ok(())
    }

    /// Accepts any certificate (labs only: an impostor then receives the
    /// credentials).
    ///
    /// # Errors
    ///
    /// [`Error::InvalidInput`] when CAs or pins were set.
    pub fn accept_invalid(&mut self) -> Result<()> {
        match self.kind {
            Trust::SystemRoots | Trust::Insecure => self.kind = Trust::Insecure,
            _ => return Err(self.conflict("accepting invalid certificates")),
        }
        Ok(())
    }

    fn conflict(&self, what: &str) -> Error {
        Error::invalid_input(format!(
            "{what} conflicts with the TLS policy already set ({self:?}): choose CA \
             certificates, thumbprint pins or accept-invalid, not several"
        ))
    }

    /// Configures `builder` to check certificates this way; `peer` names
    /// the server in the warning logged for an insecure client.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidInput`] for a CA bundle that is not PEM or holds no
    /// certificate; [`Error::Other`] when the TLS configuration cannot be
    /// built.
    pub fn apply(
        &self,
        builder: reqwest::ClientBuilder,
        peer: &str,
    ) -> Result<reqwest::ClientBuilder> {
        Ok(match &self.kind {
            Trust::SystemRoots => builder,
            Trust::Cas(pems) => {
                let mut certs = Vec::new();
                for pem in pems {
                    let found = reqwest::Certificate::from_pem_bundle(pem).map_err(|e| {
                        Error::invalid_input(format!("CA bundle is not valid PEM: {e}"))
                    })?;
                    if found.is_empty() {
                        return Err(Error::invalid_input("CA bundle holds no certificate"));
                    }
                    certs.extend(found);
                }
                builder.tls_certs_only(certs)
            }
            Trust::Pins(pins) => builder.tls_backend_preconfigured(pinned_config(pins.clone())?),
            Trust::Insecure => {
                tracing::warn!(
                    peer,
                    "client built with danger_accept_invalid_certs: the server is not authenticated"
                );
                builder.tls_danger_accept_invalid_certs(true)
            }
        })
    }
}

/// The TLS failure inside a transport error, if there is one: walks the
/// source chain, looking inside `io::Error`s too (their `source()` skips
/// the wrapped error, and hyper wraps an `io::Error` in another).
pub fn tls_failure(e: &(dyn std::error::Error + 'static)) -> Option<String> {
    tls_failure_at(e, 0)
}

fn tls_failure_at(e: &(dyn std::error::Error + 'static), depth: usize) -> Option<String> {
    if depth > 32 {
        return None;
    }
    if let Some(r) = e.downcast_ref::<rustls::Error>() {
        return Some(describe(r));
    }
    if let Some(inner) = e
        .downcast_ref::<std::io::Error>()
        .and_then(|io| io.get_ref())
        && let Some(found) = tls_failure_at(inner, depth + 1)
    {
        return Some(found);
    }
    tls_failure_at(e.source()?, depth + 1)
}

fn describe(e: &rustls::Error) -> String {
    if let rustls::Error::InvalidCertificate(rustls::CertificateError::Other(other)) = e
        && let Some(m) = other.0.downcast_ref::<PinMismatch>()
    {
        return m.to_string();
    }
    e.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_forms() {
        let sha1 = "01:23:45:67:89:AB:CD:EF:01:23:45:67:89:AB:CD:EF:01:23:45:67";
        let t: Thumbprint = sha1.parse().unwrap();
        assert_eq!(t.to_string(), sha1);
        assert_eq!(
            sha1.to_lowercase()
                .replace(':', "")
                .parse::<Thumbprint>()
                .unwrap(),
            t
        );
        assert_eq!(format!("sha1:{sha1}").parse::<Thumbprint>().unwrap(), t);
        let sha256 = "AB".repeat(32);
        assert!(matches!(
            sha256.parse::<Thumbprint>().unwrap(),
            Thumbprint::Sha256(_)
        ));
        assert!(format!("sha1:{sha256}").parse::<Thumbprint>().is_err());
        assert!("AB:CD".parse::<Thumbprint>().is_err());
        assert!("zz".repeat(20).parse::<Thumbprint>().is_err());
    }

    #[test]
    fn trust_policies_do_not_mix() {
        let pin: Thumbprint = "AB".repeat(32).parse().unwrap();
        let mut t = TlsTrust::default();
        t.add_ca_pem(b"x").unwrap();
        t.add_ca_pem(b"y").unwrap();
        let e = t.pin(pin).unwrap_err();
        assert!(e.to_string().contains("conflicts"), "{e}");
        assert!(t.accept_invalid().is_err());
        let mut t = TlsTrust::default();
        t.accept_invalid().unwrap();
        t.accept_invalid().unwrap();
        assert!(t.is_insecure());
        assert!(t.add_ca_pem(b"x").is_err());
        let mut t = TlsTrust::default();
        t.pin(pin).unwrap();
        t.pin(pin).unwrap();
        assert!(format!("{t:?}").starts_with("Pins("));
    }

    #[test]
    fn bad_ca_bundles_are_named() {
        let mut t = TlsTrust::default();
        t.add_ca_pem(b"no certificate here").unwrap();
        let e = t.apply(reqwest::Client::builder(), "test").unwrap_err();
        assert!(e.to_string().contains("CA bundle"), "{e}");
    }

    #[test]
    fn matches_der() {
        let der = b"not really a certificate";
        assert!(Thumbprint::sha1_of(der).matches(der));
        assert!(Thumbprint::sha256_of(der).matches(der));
        assert!(!Thumbprint::sha256_of(der).matches(b"other"));
    }
}
