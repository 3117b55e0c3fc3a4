//! TLS termination (`[listen.tls]`): rustls with ALPN `h2` and `http/1.1`, the certificate
//! chain and key read from PEM files, and reloaded on demand ([`TlsCert::reload`], on
//! SIGHUP) without touching open connections: the resolver hands each new handshake the
//! certificate current at that moment.
//!
//! After the handshake a connection is served like a plain one (`server.rs`): the HTTP/2
//! preface (which a client that negotiated `h2` sends) goes to `h2.rs`, anything else to
//! `h1conn.rs`; `X-Forwarded-Proto` is `https`.

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
    pub hint: std::borrow::Cow<'static, str>,
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
                hint: "this build of turnout cannot serve TLS".into(),
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
        hint: hint.into(),
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

/// TLS to upstreams (`[upstream] tls = true`): the rustls client configuration, trusting
/// only the configured CA, and the name the upstreams' certificates are checked against.
#[derive(Clone)]
pub struct UpstreamTls {
    connector: tokio_rustls::TlsConnector,
    server_name: Option<rustls::pki_types::ServerName<'static>>,
    ca_path: PathBuf,
}

impl fmt::Debug for UpstreamTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("UpstreamTls")
            .field("ca", &self.ca_path)
            .field("server_name", &self.server_name)
            .finish()
    }
}

impl UpstreamTls {
    /// Reads the PEM CA certificate(s) at `ca`; `server_name` (a DNS name or an IP
    /// address) overrides the host of each upstream's address as the name checked.
    pub fn load(ca: &Path, server_name: Option<&str>) -> Result<UpstreamTls, TlsError> {
        let err = |problem: String, hint: &'static str| TlsError {
            path: ca.to_owned(),
            problem,
            hint: hint.into(),
        };
        let roots = load_roots(ca, "[upstream] ca", false)?;
        let server_name = server_name
            .map(|n| {
                rustls::pki_types::ServerName::try_from(n.to_owned()).map_err(|e| {
                    err(
                        format!("server_name {n:?} is not a DNS name or IP address: {e}"),
                        "set [upstream] server_name to the name in the upstreams' certificates",
                    )
                })
            })
            .transpose()?;
        Ok(UpstreamTls {
            connector: connector(roots, ca)?,
            server_name,
            ca_path: ca.to_owned(),
        })
    }

    /// The TLS handshake on a new connection to `addr` (`host:port`).
    pub(crate) async fn connect(&self, addr: &str, tcp: TcpStream) -> io::Result<UpstreamStream> {
        let name = match &self.server_name {
            Some(n) => n.clone(),
            None => {
                let host = host_of(addr);
                rustls::pki_types::ServerName::try_from(host.to_owned()).map_err(|e| {
                    io::Error::new(
                        io::ErrorKind::InvalidInput,
                        format!("{host:?} is not a valid TLS server name ({e}); set [upstream] server_name"),
                    )
                })?
            }
        };
        let tls = self.connector.connect(name, tcp).await?;
        Ok(UpstreamStream::Tls(Box::new(tls)))
    }
}

/// The CA certificates of a PEM file, as rustls roots; `key` names the setting in errors.
///
/// `lenient`: skip certificates rustls cannot use (a system bundle may hold some) as long
/// as one is usable; a configured `ca` file is checked strictly.
fn load_roots(
    ca: &Path,
    key: &'static str,
    lenient: bool,
) -> Result<rustls::RootCertStore, TlsError> {
    let err = |problem: String, hint: String| TlsError {
        path: ca.to_owned(),
        problem,
        hint: hint.into(),
    };
    let pem = std::fs::read(ca).map_err(|e| {
        err(
            format!("cannot read the CA certificate: {e}"),
            format!("check {key} and the file's permissions"),
        )
    })?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| {
            err(
                format!("not a valid PEM certificate file: {e}"),
                format!("{key} must be PEM (-----BEGIN CERTIFICATE-----)"),
            )
        })?;
    if certs.is_empty() {
        return Err(err(
            "no certificate found (no -----BEGIN CERTIFICATE----- section)".into(),
            format!("{key} must hold the PEM certificate of the CA that signed the servers' certificates"),
        ));
    }
    let mut roots = rustls::RootCertStore::empty();
    if !lenient {
        for cert in certs {
            roots.add(cert).map_err(|e| {
                err(
                    format!("unusable CA certificate: {e}"),
                    format!("{key} must hold X.509 CA certificates"),
                )
            })?;
        }
        return Ok(roots);
    }
    let (_, unusable) = roots.add_parsable_certificates(certs);
    if roots.is_empty() {
        return Err(err(
            format!("none of the certificates is usable ({unusable} refused)"),
            format!("{key} must hold X.509 CA certificates"),
        ));
    }
    Ok(roots)
}

/// A rustls client (ring, safe defaults, HTTP/1.1 by ALPN) trusting `roots`.
fn connector(
    roots: rustls::RootCertStore,
    ca: &Path,
) -> Result<tokio_rustls::TlsConnector, TlsError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError {
            path: ca.to_owned(),
            problem: format!("no usable TLS protocol version: {e}"),
            hint: "this build of turnout cannot speak TLS".into(),
        })?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(tokio_rustls::TlsConnector::from(Arc::new(config)))
}

/// A TLS client for turnout's own HTTPS calls (`https://` webhooks), trusting the CA
/// certificates of one PEM file: a configured one, or the system's bundle.
#[derive(Clone)]
pub struct TlsClient {
    connector: tokio_rustls::TlsConnector,
}

impl std::fmt::Debug for TlsClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TlsClient")
    }
}

impl TlsClient {
    /// Trusts the CA certificates in the PEM file `ca`; `key` names the setting in errors.
    pub fn load(ca: &Path, key: &'static str) -> Result<TlsClient, TlsError> {
        Ok(TlsClient {
            connector: connector(load_roots(ca, key, false)?, ca)?,
        })
    }

    /// Trusts the system's CA bundle at `bundle` (see [`TlsClient::system_bundle`]),
    /// skipping certificates rustls cannot use.
    pub fn load_system(bundle: &Path) -> Result<TlsClient, TlsError> {
        Ok(TlsClient {
            connector: connector(load_roots(bundle, "the system CA bundle", true)?, bundle)?,
        })
    }

    /// The system's CA bundle: `$SSL_CERT_FILE`, else the first of the usual places
    /// (Debian/Ubuntu, Fedora/RHEL, Alpine/macOS ports) that exists.
    pub fn system_bundle() -> Option<PathBuf> {
        let env = std::env::var_os("SSL_CERT_FILE").map(PathBuf::from);
        let known = [
            "/etc/ssl/certs/ca-certificates.crt",
            "/etc/pki/tls/certs/ca-bundle.crt",
            "/etc/ssl/cert.pem",
        ]
        .map(PathBuf::from);
        env.into_iter().chain(known).find(|p| p.is_file())
    }

    /// The handshake with `host` (a DNS name or an IP address) over `tcp`.
    pub async fn connect(
        &self,
        host: &str,
        tcp: TcpStream,
    ) -> io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
        let host = host
            .strip_prefix('[')
            .and_then(|h| h.strip_suffix(']'))
            .unwrap_or(host);
        let name = rustls::pki_types::ServerName::try_from(host.to_owned()).map_err(|e| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{host:?} is not a valid TLS server name ({e})"),
            )
        })?;
        self.connector.connect(name, tcp).await
    }
}

/// The host part of `host:port` (brackets of an IPv6 literal removed).
fn host_of(addr: &str) -> &str {
    let host = addr.rsplit_once(':').map_or(addr, |(h, _)| h);
    host.strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host)
}

/// A connection to an upstream: plain TCP, or TLS (`[upstream] tls = true`).
pub(crate) enum UpstreamStream {
    /// Plain TCP.
    Plain(TcpStream),
    /// TLS over TCP.
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

impl UpstreamStream {
    /// The TCP socket underneath.
    pub(crate) fn tcp(&self) -> &TcpStream {
        match self {
            UpstreamStream::Plain(s) => s,
            UpstreamStream::Tls(s) => s.get_ref().0,
        }
    }
}

impl tokio::io::AsyncRead for UpstreamStream {
    fn poll_read(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<io::Result<()>> {
        match self.get_mut() {
            UpstreamStream::Plain(s) => std::pin::Pin::new(s).poll_read(cx, buf),
            UpstreamStream::Tls(s) => std::pin::Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl tokio::io::AsyncWrite for UpstreamStream {
    fn poll_write(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<io::Result<usize>> {
        match self.get_mut() {
            UpstreamStream::Plain(s) => std::pin::Pin::new(s).poll_write(cx, buf),
            UpstreamStream::Tls(s) => std::pin::Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> std::task::Poll<io::Result<usize>> {
        match self.get_mut() {
            UpstreamStream::Plain(s) => std::pin::Pin::new(s).poll_write_vectored(cx, bufs),
            UpstreamStream::Tls(s) => std::pin::Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            UpstreamStream::Plain(s) => s.is_write_vectored(),
            UpstreamStream::Tls(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<io::Result<()>> {
        match self.get_mut() {
            UpstreamStream::Plain(s) => std::pin::Pin::new(s).poll_flush(cx),
            UpstreamStream::Tls(s) => std::pin::Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<io::Result<()>> {
        match self.get_mut() {
            UpstreamStream::Plain(s) => std::pin::Pin::new(s).poll_shutdown(cx),
            UpstreamStream::Tls(s) => std::pin::Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}
