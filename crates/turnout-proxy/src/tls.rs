//! TLS termination (`[listen.tls]`): rustls with ALPN `h2` and `http/1.1`, the certificate
//! chain and key read from PEM files, and reloaded on demand ([`TlsCert::reload`], on
//! SIGHUP) without touching open connections: the resolver hands each new handshake the
//! certificate current at that moment.
//!
//! After the handshake a connection is served like a plain one (`h1server::serve_conn`):
//! the HTTP/2 preface (which a client that negotiated `h2` sends) goes to hyper, anything
//! else is HTTP/1.1; `X-Forwarded-Proto` is `https`.

use std::fmt;
use std::future::Future;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arc_swap::ArcSwap;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use tokio::net::TcpStream;

/// A TLS client connection, after its handshake.
pub(crate) type TlsStream = tokio_rustls::server::TlsStream<TcpStream>;

/// Why a certificate chain or key could not be loaded: the file, what is wrong with it,
/// and what to do.
#[derive(Debug, thiserror::Error)]
#[error("{path}: {problem}; {hint}")]
pub struct TlsError {
    /// The file concerned.
    pub path: PathBuf,
    /// What is wrong.
    pub problem: String,
    /// What to do about it.
    pub hint: &'static str,
}

/// The server's TLS settings: the rustls configuration and the certificate it serves,
/// which [`TlsCert::reload`] replaces for the handshakes that follow.
#[derive(Clone)]
pub struct TlsCert {
    resolver: Arc<Resolver>,
    config: Arc<rustls::ServerConfig>,
}

impl fmt::Debug for TlsCert {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsCert")
            .field("cert", &self.resolver.cert_path)
            .field("key", &self.resolver.key_path)
            .finish()
    }
}

struct Resolver {
    cert_path: PathBuf,
    key_path: PathBuf,
    provider: Arc<CryptoProvider>,
    current: ArcSwap<CertifiedKey>,
}

impl fmt::Debug for Resolver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Resolver")
            .field("cert", &self.cert_path)
            .finish()
    }
}

impl ResolvesServerCert for Resolver {
    fn resolve(&self, _client_hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current.load_full())
    }
}

impl TlsCert {
    /// Reads the PEM certificate chain (end-entity first) and private key (PKCS#8, PKCS#1
    /// or SEC1), and checks that they belong together.
    pub fn load(cert: &Path, key: &Path) -> Result<TlsCert, TlsError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let certified = load_pair(cert, key, &provider)?;
        let resolver = Arc::new(Resolver {
            cert_path: cert.to_owned(),
            key_path: key.to_owned(),
            provider: provider.clone(),
            current: ArcSwap::from_pointee(certified),
        });
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| TlsError {
                path: cert.to_owned(),
                problem: format!("no usable TLS protocol version: {e}"),
                hint: "this build of turnout cannot serve TLS",
            })?
            .with_no_client_auth()
            .with_cert_resolver(resolver.clone());
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(TlsCert {
            resolver,
            config: Arc::new(config),
        })
    }

    /// Reads the certificate chain and key files again. New handshakes use them; open
    /// connections keep theirs. On error the certificate in use stays.
    pub fn reload(&self) -> Result<(), TlsError> {
        let r = &self.resolver;
        let certified = load_pair(&r.cert_path, &r.key_path, &r.provider)?;
        r.current.store(Arc::new(certified));
        Ok(())
    }

    /// The certificate chain file.
    pub fn cert_path(&self) -> &Path {
        &self.resolver.cert_path
    }

    pub(crate) fn accept(
        &self,
        stream: TcpStream,
    ) -> impl Future<Output = io::Result<TlsStream>> + Send + 'static {
        tokio_rustls::TlsAcceptor::from(self.config.clone()).accept(stream)
    }
}

fn load_pair(cert: &Path, key: &Path, provider: &CryptoProvider) -> Result<CertifiedKey, TlsError> {
    let err = |path: &Path, problem: String, hint: &'static str| TlsError {
        path: path.to_owned(),
        problem,
        hint,
    };
    let read = |path: &Path, what: &str| {
        std::fs::read(path).map_err(|e| {
            err(
                path,
                format!("cannot read the {what}: {e}"),
                "check [listen.tls] and the file's permissions",
            )
        })
    };
    let cert_pem = read(cert, "certificate chain")?;
    let chain = CertificateDer::pem_slice_iter(&cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| {
            err(
                cert,
                format!("not a valid PEM certificate chain: {e}"),
                "[listen.tls] cert must be PEM (-----BEGIN CERTIFICATE-----), end-entity certificate first",
            )
        })?;
    if chain.is_empty() {
        return Err(err(
            cert,
            "no certificate found (no -----BEGIN CERTIFICATE----- section)".into(),
            "[listen.tls] cert must be the PEM certificate chain; is it the key file?",
        ));
    }
    let key_pem = read(key, "private key")?;
    let private = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| {
        err(
            key,
            format!("no private key found: {e}"),
            "[listen.tls] key must be an unencrypted PEM private key (PKCS#8, PKCS#1 or SEC1)",
        )
    })?;
    CertifiedKey::from_der(chain, private, provider).map_err(|e| {
        let (path, hint) = match e {
            rustls::Error::InconsistentKeys(_) => (
                key,
                "[listen.tls] key must be the private key of the first certificate in cert",
            ),
            _ => (key, "use an RSA, ECDSA (P-256/P-384) or Ed25519 key"),
        };
        err(path, format!("unusable private key: {e}"), hint)
    })
}
